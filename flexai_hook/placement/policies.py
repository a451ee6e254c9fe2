"""The placement policies and the two entry points: `choose` (one node) and `choose_node`."""

from __future__ import annotations

import math
from itertools import count
from typing import Callable, Sequence

from .model import MILLI, CardState, Demand, Node
from .workload import Workload, _Compiled, default_workload

POLICIES: tuple[str, ...] = ("best-fit", "fgd", "flexai", "dra-first-fit", "dra-most-used-first")
DEFAULT_POLICY = "flexai"
# Baselines that model stock Kubernetes DRA (docs/placement.md, "With Kubernetes DRA"): the
# node is kube-scheduler's choice, which does not look at device capacity, and the card is
# the structured allocator's first device in ResourceSlice order that fits.
STOCK_NODE_CHOICE: frozenset[str] = frozenset({"dra-first-fit", "dra-most-used-first"})
# kube-scheduler's NodeResourcesFit scores 0..MaxNodeScore (100), in integers
MAX_NODE_SCORE = 100

# Best-fit weighs free CPU against free cards as the FGD paper's baseline does
# (0.5/128 cores : 0.5/8 GPUs, i.e. 16 cores count as much as one card).
CPU_MILLI_PER_CARD = 16_000

# FGD's published scheduler plugin turns the growth of fragmentation into a Kubernetes node
# score, an integer 0..100; this many score points span the whole sigmoid.
FGD_SCORE_POINTS = 100

_NOTHING = object()  # memo marker: the request does not fit on this node
_NODE_MEMO_LIMIT = 512
_SHARED_MEMO_LIMIT = 200_000
# choose's share of it (flexaid's one node): a compiled workload lives as long as the request
# mix stays the same, so its memo is kept smaller than a cluster replay's
_CHOOSE_MEMO_LIMIT = 4096
_demand_ids = count(1)

CardKey = tuple[int, int, bool, "str | None"]
Candidate = tuple[tuple[int, ...], list[int]]  # (card indices, positions in the node's cards)


def choose(
    cards: Sequence[CardState],
    demand: Demand,
    policy: str = DEFAULT_POLICY,
    workload: Workload | None = None,
) -> tuple[int, ...] | None:
    """Indices (CardState.index) of the chosen card(s), or None when nothing fits.

    `cards` are one node's cards; CPU is not considered. Deterministic: equal scores go to
    the lowest card index. Raises ValueError for an unknown policy.
    """
    scorer = _scorer(policy)
    compiled = (workload or default_workload()).compiled()
    # flexaid asks this on every reservation, mostly about states it has seen before (the
    # same few shapes coming and going): memoised per workload version like choose_node.
    state = ("choose", policy, demand, _cards_state(cards, with_uuid=demand.pin is not None))
    shared = compiled.node_results
    found = shared.get(state)
    if found is None:
        found = _best_on_node(cards, None, demand, 0, scorer, compiled)
        if found is None:
            found = _NOTHING
        if len(shared) >= _CHOOSE_MEMO_LIMIT:
            shared.clear()
        shared[state] = found
    return None if found is _NOTHING else found[1]


def choose_node(
    nodes: Sequence[Node],
    demand: Demand,
    cpu_milli: int = 0,
    policy: str = DEFAULT_POLICY,
    workload: Workload | None = None,
) -> tuple[str, tuple[int, ...]] | None:
    """(node name, card indices) for a request that also needs `cpu_milli`, or None.

    Deterministic: equal scores go to the lowest node name, then the lowest card index.
    Each Node memoises its answer per request shape and workload version, so a replay in
    which one node changes per decision recomputes one node per decision.
    """
    best = min(_node_keys(nodes, demand, cpu_milli, policy, workload), default=None)
    return None if best is None else (best[1], best[2])


def rank_nodes(
    nodes: Sequence[Node],
    demand: Demand,
    cpu_milli: int = 0,
    policy: str = DEFAULT_POLICY,
    workload: Workload | None = None,
) -> list[tuple[str, tuple[int, ...]]]:
    """Every node the request fits, best first, with its card indices: the order choose_node
    picks from (its answer is the first), for a scheduler extender's prioritize verb."""
    return [(name, cards) for _, name, cards in sorted(_node_keys(nodes, demand, cpu_milli, policy, workload))]


def _node_keys(
    nodes: Sequence[Node],
    demand: Demand,
    cpu_milli: int,
    policy: str,
    workload: Workload | None,
) -> list[tuple[tuple, str, tuple[int, ...]]]:
    """(policy key, node name, card indices) of each node the request fits; smaller is better."""
    scorer = _scorer(policy)
    compiled = (workload or default_workload()).compiled()
    shape = (policy, demand, cpu_milli)
    did = compiled.demand_ids.get(shape)
    if did is None:  # a small int keys the per-node memos: cheaper to hash than the Demand
        if len(compiled.demand_ids) > 100_000:
            compiled.demand_ids.clear()
        did = compiled.demand_ids[shape] = next(_demand_ids)
    shared = compiled.node_results
    stock = policy in STOCK_NODE_CHOICE
    keys = []
    for node in nodes:
        if node.cpu_milli_free < cpu_milli:
            continue
        memo = node._memo
        found = memo.get(did)
        if found is None:
            # A node object seen for the first time (an extender rebuilding its nodes per
            # call, or a node that just changed) may still be in a state seen before.
            state = (did, node.cpu_milli_free, _cards_state(node.cards, with_uuid=demand.pin is not None))
            found = shared.get(state)
            if found is None:
                found = _best_on_node(node.cards, node.cpu_milli_free, demand, cpu_milli, scorer, compiled)
                if found is None:
                    found = _NOTHING
                if len(shared) >= _SHARED_MEMO_LIMIT:
                    shared.clear()
                shared[state] = found
            if len(memo) >= _NODE_MEMO_LIMIT:
                memo.clear()
            memo[did] = found
        if found is _NOTHING:
            continue
        if stock:  # kube-scheduler picks the node; the allocator's card choice rides along
            keys.append((_least_allocated(node, cpu_milli), node.name, found[1]))
        else:
            keys.append((found[0], node.name, found[1]))
    return keys


def _cards_state(cards: Sequence[CardState], with_uuid: bool) -> tuple:
    """Everything about a node's cards that a choice depends on (UUIDs only for pins)."""
    if with_uuid:
        return tuple(
            (c.index, c.uuid, c.model, c.memory_total, c.memory_free, c.compute_free, c.whole_free)
            for c in cards
        )
    return tuple(
        (c.index, c.model, c.memory_total, c.memory_free, c.compute_free, c.whole_free) for c in cards
    )


# --- what can go where -------------------------------------------------------------------------


def _candidates(cards: Sequence[CardState], demand: Demand) -> list[Candidate]:
    """The feasible choices on one node."""
    if demand.cards == 0:
        return [((), [])]
    if demand.cards == 1:
        return [((c.index,), [i]) for i, c in enumerate(cards) if demand.fits(c)]
    # k whole cards: which of the admitted empty cards hardly matters (a node's cards are
    # normally all alike), so take the lowest indices, the pinned card first
    models = demand.models
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
    """The card's key (see _Compiled.card_key) once `demand` is placed on it."""
    model = card.model if compiled.uses_models else None
    if demand.cards > 1:
        return (0, 0, False, model)
    memory_free = card.memory_free - demand.memory
    share = memory_free * MILLI // card.memory_total if card.memory_total > 0 else 0
    return (share, card.compute_free - demand.compute, False, model)


class _Choices:
    """One node's feasible choices and the node's state before and after each."""

    def __init__(
        self,
        cards: Sequence[CardState],
        cpu_free: int | None,
        demand: Demand,
        cpu_demand: int,
        candidates: list[Candidate],
        compiled: _Compiled,
    ) -> None:
        self.cards = cards
        self.cpu_free = cpu_free  # None: CPU is not part of the decision (choose())
        self.cpu_after = None if cpu_free is None else cpu_free - cpu_demand
        self.candidates = candidates
        self.compiled = compiled
        keys = [compiled.card_key(c) for c in cards]
        self.before = tuple(sorted(keys))
        self.after = []
        self.chosen_left = []  # free capacity left on the chosen cards, per choice
        for _, positions in candidates:
            after = list(keys)
            for i in positions:
                after[i] = _after(cards[i], demand, compiled)
            self.after.append(tuple(sorted(after)))
            self.chosen_left.append(sum(after[i][0] + after[i][1] for i in positions))

    def fragmentation_growth(self) -> list[int]:
        """FGD: growth of the node's expected fragmentation, per choice."""
        c = self.compiled
        before = c.fragmentation(c.cpu_rank(self.cpu_free), self.before)
        rank = c.cpu_rank(self.cpu_after)
        return [c.fragmentation(rank, after) - before for after in self.after]

    def packing_growth(self, with_cpu: bool) -> list[int]:
        """Growth of the capacity a run of typical requests could not fill, per choice."""
        c = self.compiled
        cpu_before, cpu_after = (self.cpu_free, self.cpu_after) if with_cpu else (None, None)
        before = c.unpackable(cpu_before, self.before)
        return [c.unpackable(cpu_after, after) - before for after in self.after]

    def node_left(self) -> list[int]:
        """Best-fit's node measure: free cards (in CPU-milli equivalents) plus free CPU."""
        # card capacity is counted in half-milli (memory share + compute share)
        per_unit = CPU_MILLI_PER_CARD // (2 * MILLI)
        cpu = self.cpu_after or 0
        return [sum(m + c for m, c, _, _ in after) * per_unit + cpu for after in self.after]


# --- policies -----------------------------------------------------------------------------------
#
# A policy scores one node's choices; smaller keys are better. Keys of different nodes are
# compared too (choose_node), so a key must mean the same on every node.

Scorer = Callable[[_Choices], list[tuple]]


def _best_on_node(
    cards: Sequence[CardState],
    cpu_free: int | None,
    demand: Demand,
    cpu_demand: int,
    scorer: Scorer,
    compiled: _Compiled,
) -> tuple[tuple, tuple[int, ...]] | None:
    """(score key, card indices) of the best choice on this node, or None."""
    if cpu_free is not None and cpu_free < cpu_demand:
        return None
    candidates = _candidates(cards, demand)
    if not candidates:
        return None
    keys = scorer(_Choices(cards, cpu_free, demand, cpu_demand, candidates, compiled))
    best = min(range(len(candidates)), key=lambda i: (keys[i], candidates[i][0]))
    return keys[best], candidates[best][0]


def _best_fit(choices: _Choices) -> list[tuple]:
    """Least capacity left after placement: on the node (cards and CPU), then on the card.

    For one node (choose) the first part is the same for every card, so this is the classic
    "fullest card that still fits".
    """
    if choices.cpu_free is None:
        return [(left,) for left in choices.chosen_left]
    return list(zip(choices.node_left(), choices.chosen_left))


def _fgd_score(growth: int, compiled: _Compiled) -> int:
    """The published FGD plugin's integer node score, negated so that smaller is better.

    score = int(100 * sigmoid(-growth)), growth in cards (fragmentation is an expectation
    over the workload, in thousandths of a card). One point is about 0.04 card near zero.
    """
    cards = growth / (2 * MILLI * compiled.total_weight)
    if cards > 50:  # exp() would overflow; the score is 0 long before that
        return 0
    return -int(FGD_SCORE_POINTS / (1 + math.exp(cards)))


def _fgd(choices: _Choices) -> list[tuple]:
    """Fragmentation gradient descent (Weng et al., ATC'23), scored as published.

    The choice whose expected fragmentation grows least. The published Kubernetes plugin
    scores nodes as integers (see _fgd_score), so choices less than about 0.04 card apart
    tie and go to the lowest node name; that coarseness is part of its published results
    (with exact growth instead, FGD strands about 1 point more of the openb cluster),
    so the baseline keeps it.
    """
    return [(_fgd_score(g, choices.compiled),) for g in choices.fragmentation_growth()]


def _flexai(choices: _Choices) -> list[tuple]:
    """FGD, then packing lookahead, then best-fit: each breaks the ties of the one before.

    1. FGD's score, as published: grow the fragmentation least (what one more typical
       request could no longer use).
    2. Packing lookahead: grow least the capacity that a *run* of each typical request could
       not fill: the sliver a 0.81-card request leaves on every card it packs, the cards
       whose node would run out of CPU before they fill. FGD asks only whether one more
       request fits, so many of its choices tie; this picks among them the one that keeps
       the node fillable to the end.
       CPU counts only on nodes already in use: on an empty node the typical mix would
       rate spare CPU as free, pulling every request to the CPU-richest machines and
       opening all of them, which strands the rare request that needs a whole big node.
    3. Best-fit: the fullest node and card, so load consolidates and empty nodes stay empty.
    """
    fgd = [_fgd_score(g, choices.compiled) for g in choices.fragmentation_growth()]
    in_use = any(not c.whole_free for c in choices.cards)
    packing = choices.packing_growth(with_cpu=in_use and choices.cpu_free is not None)
    fit = _best_fit(choices)
    return [(f, p, *b) for f, p, b in zip(fgd, packing, fit)]


def _first_fit(choices: _Choices) -> list[tuple]:
    """Stock DRA allocator: the first device in ResourceSlice order whose capacity fits.

    k8s.io/dynamic-resource-allocation/structured (allocateOne) walks pools, slices and
    devices in order and keeps the first device that passes the selectors and
    CmpRequestOverCapacity; there is no device scoring. flexai's agent publishes a node's
    cards in index order, so "first in the slice" is the lowest index: every choice ties
    here and _best_on_node's index tie-break is the allocator's order.
    """
    return [() for _ in choices.candidates]


def _most_used_first(choices: _Choices) -> list[tuple]:
    """The same first-fit allocator over a ResourceSlice whose devices are listed fullest first.

    Needs no scheduler change: the node agent republishes its slice, devices ordered by free
    share (least first, then index), whenever a reservation changes it; the allocator's
    first fit is then the fullest card that fits, i.e. best-fit on the card.
    """
    cards = choices.cards
    return [(min(cards[i].free_share for i in positions),) if positions else ()
            for _, positions in choices.candidates]


def _least_allocated(node: Node, cpu_demand: int) -> tuple[int, int]:
    """kube-scheduler's default node score as this model sees it, negated (smaller is better).

    NodeResourcesFit's default strategy, LeastAllocated, scores a node
    (allocatable - requested) * 100 // allocatable per resource, the pod included, and
    DynamicResources scores 0 unless a claim uses firstAvailable subrequests; equal scores
    are broken at random by the scheduler (here: lowest node name, which the openb replay
    randomises per seed). Only CPU is modelled (Node carries no host memory). Without
    `cpu_milli_total` the free CPU left is compared as it is.
    """
    left = node.cpu_milli_free - cpu_demand
    if node.cpu_milli_total > 0:
        return (-(left * MAX_NODE_SCORE // node.cpu_milli_total), 0)
    return (0, -left)


_SCORERS: dict[str, Scorer] = {
    "best-fit": _best_fit,
    "fgd": _fgd,
    "flexai": _flexai,
    "dra-first-fit": _first_fit,
    "dra-most-used-first": _most_used_first,
}


def _scorer(policy: str) -> Scorer:
    try:
        return _SCORERS[policy]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown placement policy {policy!r}; allowed: {', '.join(POLICIES)}"
        ) from None
