"""The placement policies and the two entry points, `choose` (one node) and `choose_node`."""

from __future__ import annotations

import math
from itertools import count
from typing import Callable, Sequence

from .model import MILLI, CardState, Demand, Node
from .workload import Workload, _Compiled, default_workload

POLICIES: tuple[str, ...] = ("best-fit", "fgd", "flexai")
DEFAULT_POLICY = "flexai"

# Best-fit weighs CPU against cards as the FGD paper's baseline does (128 cores : 8 GPUs).
CPU_MILLI_PER_CARD = 16_000

_NOTHING = object()  # memo marker for "does not fit on this node"
_NODE_MEMO_LIMIT = 512
_demand_ids = count(1)

CardKey = tuple[int, int, bool, "str | None"]


def choose(
    cards: Sequence[CardState],
    demand: Demand,
    policy: str = DEFAULT_POLICY,
    workload: Workload | None = None,
) -> tuple[int, ...] | None:
    """Indices (CardState.index) of the chosen card(s), or None when nothing fits.

    Deterministic: equal scores go to the lowest card index.
    """
    scorer = _scorer(policy)
    compiled = (workload or default_workload()).compiled()
    best = _best_on_node(cards, None, demand, 0, scorer, compiled, cluster=False)
    return None if best is None else best[1]


def choose_node(
    nodes: Sequence[Node],
    demand: Demand,
    cpu_milli: int = 0,
    policy: str = DEFAULT_POLICY,
    workload: Workload | None = None,
) -> tuple[str, tuple[int, ...]] | None:
    """(node name, card indices) for a request that also needs `cpu_milli`, or None.

    Deterministic: equal scores go to the lowest node name, then the lowest card index.
    Each node memoises its answer per request shape, so replaying a cluster where one node
    changed per decision recomputes only that node.
    """
    scorer = _scorer(policy)
    compiled = (workload or default_workload()).compiled()
    shape = (policy, demand, cpu_milli)
    did = compiled.demand_ids.get(shape)
    if did is None:
        if len(compiled.demand_ids) > 100_000:
            compiled.demand_ids.clear()
        did = compiled.demand_ids[shape] = next(_demand_ids)
    best_key, best_node = None, None
    for node in nodes:
        if node.cpu_milli_free < cpu_milli:
            continue
        memo = node._memo
        found = memo.get(did)
        if found is None:
            found = _best_on_node(node.cards, node.cpu_milli_free, demand, cpu_milli, scorer, compiled, cluster=True)
            if found is None:
                found = _NOTHING
            if len(memo) >= _NODE_MEMO_LIMIT:
                memo.clear()
            memo[did] = found
        if found is _NOTHING:
            continue
        key = (found[0], node.name, found[1])
        if best_key is None or key < best_key:
            best_key, best_node = key, node
    if best_key is None:
        return None
    return best_node.name, best_key[2]


# --- candidates ------------------------------------------------------------------------------


def _candidates(cards: Sequence[CardState], demand: Demand) -> list[tuple[tuple[int, ...], list[int]]]:
    """Feasible choices on one node: (card indices, positions in `cards` they take)."""
    if demand.cards == 0:
        return [((), [])]
    models = demand.models
    if demand.cards == 1:
        return [((c.index,), [i]) for i, c in enumerate(cards) if demand.fits(c)]
    # k whole cards: which empty cards does not change what is left, so take the lowest
    # indices (the pinned card first, when there is one)
    pool = sorted(
        (c.index, i) for i, c in enumerate(cards) if c.whole_free and (not models or c.model in models)
    )
    if demand.pin is not None:
        pinned = [p for p in pool if demand.pin in (str(p[0]), cards[p[1]].uuid)]
        if not pinned:
            return []
        pool = pinned[:1] + [p for p in pool if p != pinned[0]]
    if len(pool) < demand.cards:
        return []
    taken = pool[: demand.cards]
    return [(tuple(sorted(index for index, _ in taken)), [i for _, i in taken])]


def _after(card: CardState, demand: Demand, compiled: _Compiled) -> CardKey:
    """The card's key once `demand` is placed on it."""
    if demand.cards > 1:
        return (0, 0, False, card.model if compiled.uses_models else None)
    memory_free = card.memory_free - demand.memory
    share = memory_free * MILLI // card.memory_total if card.memory_total > 0 else 0
    return (share, card.compute_free - demand.compute, False, card.model if compiled.uses_models else None)


# --- scoring ---------------------------------------------------------------------------------
#
# A scorer sees one node's feasible choices and returns, for each, a key where smaller is
# better. Keys from different nodes are compared too (choose_node), so they must mean the same
# on every node.

Scorer = Callable[..., list[tuple]]


def _best_on_node(
    cards: Sequence[CardState],
    cpu_free: int | None,
    demand: Demand,
    cpu_demand: int,
    scorer: Scorer,
    compiled: _Compiled,
    *,
    cluster: bool,
) -> tuple[tuple, tuple[int, ...]] | None:
    """(score key, card indices) of the best choice on this node, or None."""
    if cpu_free is not None and cpu_free < cpu_demand:
        return None
    candidates = _candidates(cards, demand)
    if not candidates:
        return None
    keys = scorer(cards, cpu_free, demand, cpu_demand, candidates, compiled, cluster)
    best = min(range(len(candidates)), key=lambda i: (keys[i], candidates[i][0]))
    return keys[best], candidates[best][0]


def _best_fit(cards, cpu_free, demand, cpu_demand, candidates, compiled, cluster) -> list[tuple]:
    """Least capacity left after placement: on the node (CPU and cards), then on the card."""
    keys = []
    node_free = sum(c.memory_share_free + c.compute_free for c in cards)
    for _, positions in candidates:
        taken = sum(cards[i].memory_share_free + cards[i].compute_free for i in positions)
        left = [_after(cards[i], demand, compiled) for i in positions]
        card_left = sum(m + c for m, c, _, _ in left)
        if cluster:
            # in milli of CPU; free card capacity counts in half-milli, hence * 8 not * 16
            node_left = (node_free - taken + card_left) * (CPU_MILLI_PER_CARD // 2 // MILLI)
            node_left += (cpu_free or 0) - cpu_demand
            keys.append((node_left, card_left))
        else:
            keys.append((card_left,))
    return keys


def _fragmentation_growth(cards, cpu_free, demand, cpu_demand, candidates, compiled) -> list[int]:
    """FGD's score: how much the node's expected fragmentation grows with each choice."""
    before = sorted(compiled.card_key(c) for c in cards)
    rank_before = compiled.cpu_rank(cpu_free)
    rank_after = compiled.cpu_rank(None if cpu_free is None else cpu_free - cpu_demand)
    f_before = compiled.fragmentation(rank_before, tuple(before))
    growth = []
    for _, positions in candidates:
        after = [compiled.card_key(c) for c in cards]
        for i in positions:
            after[i] = _after(cards[i], demand, compiled)
        growth.append(compiled.fragmentation(rank_after, tuple(sorted(after))) - f_before)
    return growth


def _fgd(cards, cpu_free, demand, cpu_demand, candidates, compiled, cluster) -> list[tuple]:
    """Fragmentation gradient descent, scored as the published Kubernetes plugin does.

    The plugin turns the growth into an integer node score, 100 * sigmoid(-growth in cards),
    truncated; choices within one score point (about 0.04 of a card) tie and go to the lowest
    node name. That coarseness is part of the published results (it packs ties into one node
    order), so the baseline keeps it.
    """
    scale = 2 * MILLI * compiled.total_weight  # growth is in half-milli times weight
    keys = []
    for g in _fragmentation_growth(cards, cpu_free, demand, cpu_demand, candidates, compiled):
        x = g / scale
        keys.append((-int(100 / (1 + math.exp(x))) if x < 700 else 0,))
    return keys


def _fgd_exact(cards, cpu_free, demand, cpu_demand, candidates, compiled, cluster) -> list[tuple]:
    return [(g,) for g in _fragmentation_growth(cards, cpu_free, demand, cpu_demand, candidates, compiled)]


def _flexai(cards, cpu_free, demand, cpu_demand, candidates, compiled, cluster) -> list[tuple]:
    """FGD, with best-fit breaking its ties (placeholder while measuring)."""
    growth = _fragmentation_growth(cards, cpu_free, demand, cpu_demand, candidates, compiled)
    fit = _best_fit(cards, cpu_free, demand, cpu_demand, candidates, compiled, cluster)
    return [(g, *f) for g, f in zip(growth, fit)]


_SCORERS: dict[str, Scorer] = {"best-fit": _best_fit, "fgd": _fgd, "flexai": _flexai, "fgd-exact": _fgd_exact}


def _scorer(policy: str) -> Scorer:
    try:
        return _SCORERS[policy]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown placement policy {policy!r}; allowed: {', '.join(POLICIES)}"
        ) from None
