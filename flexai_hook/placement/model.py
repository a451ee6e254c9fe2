"""The state placement looks at: cards, nodes, and what a request asks for."""

from __future__ import annotations

from dataclasses import dataclass, field

MILLI = 1000  # a whole card's compute, and a card's memory as a share


@dataclass(frozen=True)
class CardState:
    """One card as placement sees it: what is left on it, in the daemon's units."""

    index: int  # card index on its node
    uuid: str
    model: str  # e.g. "A100-SXM4-40GB", "V100M16", "flexai-sim"
    memory_total: int  # bytes (or any unit, as long as Demand.memory uses the same)
    memory_free: int  # not reserved
    compute_free: int  # milli of the card's compute not reserved (0..1000)
    whole_free: bool  # nothing at all reserved on it

    @property
    def memory_share_free(self) -> int:
        """Free memory in thousandths of the card (rounded down), so cards of any size compare."""
        if self.memory_total <= 0:
            return 0
        return self.memory_free * MILLI // self.memory_total

    @property
    def free_share(self) -> float:
        """Free capacity in thousandths of a card: the mean of its free memory and compute shares.

        Memory and compute are both needed by every slice, so a card with free compute but no
        free memory is as useless as one with neither; averaging counts each half of what is
        left once, and equals the free share when the two move together (FLEXAI_FRACTION).
        """
        return (self.memory_share_free + self.compute_free) / 2

    @classmethod
    def empty(cls, index: int, uuid: str, model: str, memory_total: int) -> CardState:
        """A card with nothing reserved on it."""
        return cls(index, uuid, model, memory_total, memory_total, MILLI, True)


@dataclass(frozen=True)
class Demand:
    """What a request needs.

    `cards == 1` is a share of ONE card (both `memory` and `compute` must fit on it);
    `cards > 1` is that many whole cards with nothing reserved (`memory`/`compute` are ignored);
    `cards == 0` needs no card at all (a CPU-only pod, for the cluster-level `choose_node`).
    """

    memory: int  # bytes on one card (for fractional requests)
    compute: int  # milli of one card (1..1000)
    cards: int = 1
    pin: str | None = None  # card index (decimal string) or UUID
    models: tuple[str, ...] = ()  # allowed models, empty = any

    def __post_init__(self) -> None:
        if self.cards < 0:
            raise ValueError(f"cards must be >= 0, got {self.cards}")
        if self.cards == 1 and not 0 <= self.compute <= MILLI:
            raise ValueError(f"compute must be 0..{MILLI} milli of a card, got {self.compute}")
        if self.memory < 0:
            raise ValueError(f"memory must be >= 0, got {self.memory}")
        if isinstance(self.models, str):  # a bare string would be read as its letters
            object.__setattr__(self, "models", (self.models,))

    @property
    def whole(self) -> bool:
        """True when the request takes whole, empty cards."""
        return self.cards > 1

    def allows(self, card: CardState) -> bool:
        """The model list admits this card, and so does the pin of a one-card request.

        (A multi-card request's pin says which card must be among those it takes.)
        """
        if self.models and card.model not in self.models:
            return False
        return self.cards > 1 or self.pin is None or self.pin in (card.uuid, str(card.index))

    def fits(self, card: CardState) -> bool:
        """This card is admitted and could hold the request (one of its cards, if several)."""
        if not self.allows(card):
            return False
        if self.cards > 1:
            return card.whole_free
        return card.memory_free >= self.memory and card.compute_free >= self.compute


@dataclass(frozen=True)
class Node:
    """A machine with cards, for a cluster-wide decision (a Kubernetes scheduler extender).

    Nodes are immutable: after a placement, build a new Node for the one machine that changed.
    Each Node keeps its own scores per request shape, so a decision over a cluster where one
    node changed recomputes one node.
    """

    name: str
    cpu_milli_free: int
    cards: tuple[CardState, ...]
    # the node's allocatable CPU; only the stock-scheduler baselines (dra-*) read it, for
    # kube-scheduler's LeastAllocated score (0: unknown, free CPU is compared as it is)
    cpu_milli_total: int = 0
    # per-node memo of scores; not part of the node's value
    _memo: dict = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.cards, tuple):
            object.__setattr__(self, "cards", tuple(self.cards))
