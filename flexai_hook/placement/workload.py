"""The "typical workload" that fragmentation is measured against, and the measure itself.

Weng et al., "Beware of Fragmentation" (USENIX ATC'23): the fragmentation of a node with
respect to one task type is the free card capacity on it that this task type cannot use:

- all of the node's free card capacity, when the task cannot be placed on the node at all
  (too little CPU, too few cards that fit it, a model it may not use, or it needs no card);
- otherwise the free capacity of the cards that cannot hold the task.

A node's fragmentation is that amount's expectation over the workload's task types, weighted by
how often each type was seen. FGD places a request where this expectation grows least.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter, deque
from dataclasses import dataclass
from typing import Iterable, Sequence

from .model import MILLI, CardState, Demand

# Seen-request window and how much of it counts as "typical" (the FGD paper keeps the most
# frequent types that together make up 95 % of the requests; the rare tail adds cost, not signal).
DEFAULT_WINDOW = 2000
DEFAULT_COVERAGE = 0.95
# A learned workload is re-read after this many new requests, not after each one: scores are
# cached per workload version, and one request barely moves a distribution of thousands.
DEFAULT_REFRESH = 100
# With no history, assume requests of 10 %, 20 %, ... 100 % of a card, equally often.
DEFAULT_SHARES = tuple(range(100, MILLI + 1, 100))

_MEMO_LIMIT = 200_000  # fragmentation values kept per workload version


@dataclass(frozen=True)
class TaskType:
    """One kind of request, in card-relative units so it means the same on any card."""

    memory_share: int  # thousandths of one card's memory (cards == 1)
    compute: int  # milli of one card (cards == 1)
    cards: int  # 0: no card; 1: a share of one card; >1: that many whole cards
    cpu_milli: int = 0
    models: tuple[str, ...] = ()

    @classmethod
    def of(cls, demand: Demand, cpu_milli: int = 0, memory_total: int | None = None) -> TaskType:
        """The type of `demand`; its memory is a share of `memory_total`, or follows compute."""
        models = tuple(sorted(set(demand.models)))
        if demand.cards == 0:
            return cls(0, 0, 0, cpu_milli, models)
        if demand.cards > 1:
            return cls(MILLI, MILLI, demand.cards, cpu_milli, models)
        if memory_total:
            share = min(MILLI, -(-demand.memory * MILLI // memory_total))  # round up
        else:
            share = demand.compute
        return cls(share, demand.compute, 1, cpu_milli, models)


class Workload:
    """The request mix placement plans for, learned from recent requests.

    `observe()` each request as it arrives; the last `window` requests are kept and the most
    frequent types covering `coverage` of them form the typical workload. With no history the
    workload is `DEFAULT_SHARES`: fractions of 10 %..100 % of a card, equally likely.
    """

    def __init__(
        self,
        *,
        window: int | None = DEFAULT_WINDOW,
        coverage: float = DEFAULT_COVERAGE,
        refresh_every: int = DEFAULT_REFRESH,
    ) -> None:
        if not 0 < coverage <= 1:
            raise ValueError(f"coverage must be in (0, 1], got {coverage}")
        self.coverage = coverage
        self.refresh_every = max(1, refresh_every)
        self._recent: deque[TaskType] = deque(maxlen=window)
        self._counts: Counter[TaskType] = Counter()
        self._unread = 0  # observations since the distribution was last read
        self._compiled: _Compiled | None = None

    @classmethod
    def from_demands(
        cls,
        demands: Iterable[Demand | tuple[Demand, int]],
        *,
        window: int | None = None,
        coverage: float = DEFAULT_COVERAGE,
        memory_total: int | None = None,
    ) -> Workload:
        """A workload of these requests; an item may be `(demand, cpu_milli)` for cluster use.

        `window=None` keeps all of them (a fixed workload, as in the FGD paper's replays).
        """
        workload = cls(window=window, coverage=coverage)
        for item in demands:
            demand, cpu = item if isinstance(item, tuple) else (item, 0)
            workload.observe(demand, cpu_milli=cpu, memory_total=memory_total)
        return workload

    def observe(self, demand: Demand, *, cpu_milli: int = 0, memory_total: int | None = None) -> None:
        """Count one request. `memory_total` is the card size its memory is a share of."""
        task = TaskType.of(demand, cpu_milli, memory_total)
        recent = self._recent
        if recent.maxlen is not None and len(recent) == recent.maxlen:
            old = recent[0]
            self._counts[old] -= 1
            if not self._counts[old]:
                del self._counts[old]
        recent.append(task)
        self._counts[task] += 1
        self._unread += 1

    def __len__(self) -> int:
        return len(self._recent)

    def typical(self) -> list[tuple[TaskType, int]]:
        """The typical types with their counts, most frequent first (ties in a fixed order)."""
        if not self._counts:
            return [(TaskType(share, share, 1), 1) for share in DEFAULT_SHARES]
        ranked = sorted(self._counts.items(), key=lambda kv: (-kv[1], _type_order(kv[0])))
        total = sum(self._counts.values())
        kept, covered = [], 0
        for task, n in ranked:
            if covered >= self.coverage * total:
                break
            kept.append((task, n))
            covered += n
        return kept

    def compiled(self) -> _Compiled:
        """The current distribution in the form the scorers use (re-read every refresh_every).

        A re-read that finds the same distribution keeps the compiled one, and with it the
        scores and choices it has memoised (a steady request mix, as on a busy host, would
        otherwise lose them every refresh_every requests and work them out again)."""
        if self._compiled is None or self._unread >= self.refresh_every:
            typical = self.typical()
            if self._compiled is None or typical != self._compiled.typical:
                self._compiled = _Compiled(typical)
            self._unread = 0
        return self._compiled


def _type_order(task: TaskType) -> tuple:
    return (task.cards, task.compute, task.memory_share, task.cpu_milli, task.models)


_DEFAULT = Workload()


def default_workload() -> Workload:
    """The shared workload used when a caller passes none (its caches persist across calls)."""
    return _DEFAULT


class _Compiled:
    """A frozen workload, arranged so one node's fragmentation costs one pass per card shape.

    Types that differ only in CPU are grouped: for each group, `fit_weight[r]` is the weight of
    its types whose CPU request is at most the r-th CPU threshold, so a node's free CPU enters
    only through its rank among the thresholds. Weights are integer counts and capacities are
    integers (memory share + compute share, i.e. twice the free share), so equal
    fragmentation compares equal and ties are broken by the stated rule, not by rounding.
    """

    def __init__(self, typical: Sequence[tuple[TaskType, int]]) -> None:
        self.typical = list(typical)  # what it was compiled from (Workload.compiled compares)
        self.cpu_cuts = sorted({t.cpu_milli for t, _ in typical if t.cpu_milli > 0})
        self.full_rank = len(self.cpu_cuts)  # "CPU is not a constraint"
        self.cpu_only_weight = 0
        shapes: dict[tuple, list[int]] = {}
        for task, n in typical:
            if task.cards == 0:
                self.cpu_only_weight += n
                continue
            key = (task.memory_share, task.compute, task.cards, frozenset(task.models) or None)
            per_rank = shapes.setdefault(key, [0] * (self.full_rank + 1))
            # a type fits a node whose CPU rank is >= the rank of its own CPU request
            per_rank[bisect_right(self.cpu_cuts, task.cpu_milli) if task.cpu_milli else 0] += n
        self.groups: list[tuple[int, int, int, frozenset | None, tuple[int, ...], int]] = []
        for (mem, comp, k, models), per_rank in sorted(shapes.items(), key=lambda kv: kv[0][:3]):
            fit_weight, acc = [], 0
            for n in per_rank:
                acc += n
                fit_weight.append(acc)
            self.groups.append((mem, comp, k, models, tuple(fit_weight), acc))
        # for the packing measure, each type on its own (CPU enters as a count of copies)
        self.types = [
            (t.memory_share, t.compute, t.cards, t.cpu_milli, frozenset(t.models) or None, n)
            for t, n in typical
            if t.cards
        ]
        self.uses_models = any(g[3] is not None for g in self.groups)
        self.total_weight = self.cpu_only_weight + sum(g[5] for g in self.groups)
        self._memo: dict[tuple, int] = {}
        self._packing_memo: dict[tuple, int] = {}
        self.demand_ids: dict[tuple, int] = {}  # request shape -> small int (see choose_node)
        self.node_results: dict[tuple, object] = {}  # (shape, node state) -> best choice

    def cpu_rank(self, cpu_free: int | None) -> int:
        """How many CPU thresholds a node with `cpu_free` meets (None: CPU not tracked)."""
        if cpu_free is None:
            return self.full_rank
        return bisect_right(self.cpu_cuts, cpu_free)

    def card_key(self, card: CardState) -> tuple[int, int, bool, str | None]:
        return (
            card.memory_share_free,
            card.compute_free,
            card.whole_free,
            card.model if self.uses_models else None,
        )

    def fragmentation(self, rank: int, cards: tuple[tuple[int, int, bool, str | None], ...]) -> int:
        """Expected unusable free capacity of a node (times total weight, in half-milli).

        `cards` must be sorted (so that equal nodes share one memo entry).
        """
        key = (rank, cards)
        value = self._memo.get(key)
        if value is not None:
            return value
        free = [m + c for m, c, _, _ in cards]
        total = sum(free)
        value = self.cpu_only_weight * total  # a task needing no card can use none of it
        for mem, comp, k, models, fit_weight, weight in self.groups:
            fits_cpu = fit_weight[rank]
            if not fits_cpu:
                value += weight * total
                continue
            fitting, stranded = 0, 0
            for (m, c, whole, model), f in zip(cards, free):
                if (models is None or model in models) and (whole if k > 1 else m >= mem and c >= comp):
                    fitting += 1
                else:
                    stranded += f
            if fitting >= k:
                value += fits_cpu * stranded + (weight - fits_cpu) * total
            else:
                value += weight * total
        if len(self._memo) >= _MEMO_LIMIT:
            self._memo.clear()
        self._memo[key] = value
        return value

    def unpackable(self, cpu_free: int | None, cards: tuple[tuple[int, int, bool, str | None], ...]) -> int:
        """Expected free capacity that a run of one typical type could not fill (same units).

        For each type: fill the node with as many copies of it as its cards (and CPU, when
        `cpu_free` is given) allow; what is left unused counts. Unlike `fragmentation`, which
        only asks whether one more request fits, this sees how much of the node the mix can
        use: slivers a type leaves behind on each card, and cards that the CPU left on the
        node could not feed. `cards` must be sorted.
        """
        key = (cpu_free, cards)
        value = self._packing_memo.get(key)
        if value is not None:
            return value
        total = sum(m + c for m, c, _, _ in cards)
        value = self.cpu_only_weight * total
        for mem, comp, k, cpu, models, weight in self.types:
            if k > 1:
                whole = sum(1 for _, _, w, model in cards if w and (models is None or model in models))
                copies, per_copy = whole // k, k * 2 * MILLI
            else:
                copies, per_copy = 0, mem + comp
                for m, c, _, model in cards:
                    if models is None or model in models:
                        copies += min(m // mem if mem else MILLI, c // comp if comp else MILLI)
            if cpu and cpu_free is not None:
                copies = min(copies, cpu_free // cpu)
            value += weight * (total - copies * per_copy)
        if len(self._packing_memo) >= _MEMO_LIMIT:
            self._packing_memo.clear()
        self._packing_memo[key] = value
        return value
