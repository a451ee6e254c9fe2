"""The cluster as placement sees it, from what the API server holds: the gpu.flexai.io
ResourceSlices (one pool per node, a device per card, dra/slices.py) less what allocated
ResourceClaims consume of each card (consumable capacity). Pure: JSON in, placement Nodes out."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_CEILING

from flexai_hook.dra.claim import COMPUTE, DRIVER, MEMORY, ClaimError, card_index, parse_quantity
from flexai_hook.placement import CardState, Node
from flexai_hook.placement.model import MILLI



@dataclass(frozen=True)
class View:
    nodes: dict[str, Node]  # node name -> its cards, what is left on them
    vendors: dict[str, str] = field(default_factory=dict)  # card model -> vendor attribute
    skipped: tuple[str, ...] = ()  # one line per object that could not be read (logged, not fatal)

    def models_of(self, vendor: str) -> tuple[str, ...]:
        """The card models of one vendor (a per-vendor DeviceClass admits only these)."""
        return tuple(sorted(m for m, v in self.vendors.items() if v == vendor))


@dataclass
class _Card:
    index: int
    uuid: str
    model: str
    memory: int
    compute: int  # percent
    memory_used: int = 0
    compute_used: int = 0
    allocated: bool = False


def build(slices: Iterable[Mapping], claims: Iterable[Mapping], driver: str = DRIVER) -> View:
    """The view from a ResourceSliceList's and a ResourceClaimList's items."""
    skipped: list[str] = []
    newest: dict[str, int] = {}  # pool -> its newest generation: older slices are being replaced
    mine = []
    for s in slices:
        spec = s.get("spec") or {}
        if spec.get("driver") != driver or not spec.get("nodeName"):
            continue
        pool = spec.get("pool") or {}
        mine.append(s)
        newest[pool.get("name", "")] = max(newest.get(pool.get("name", ""), 0), int(pool.get("generation") or 0))
    cards: dict[tuple[str, str], _Card] = {}  # (pool, device) -> card
    node_of: dict[str, str] = {}  # pool -> node
    vendors: dict[str, str] = {}
    for s in mine:
        spec, name = s["spec"], (s.get("metadata") or {}).get("name", "?")
        pool = (spec.get("pool") or {}).get("name", "")
        if int((spec.get("pool") or {}).get("generation") or 0) < newest[pool]:
            continue
        node_of[pool] = spec["nodeName"]
        for d in spec.get("devices") or ():
            try:
                card = _card(d)
            except (ClaimError, KeyError, TypeError, ValueError) as exc:
                skipped.append(f"ResourceSlice {name} device {d.get('name', '?')}: {exc}")
                continue
            cards[(pool, d["name"])] = card
            vendor = ((d.get("attributes") or {}).get("vendor") or {}).get("string")
            if vendor:
                vendors[card.model] = vendor
    for c in claims:
        _consume(c, cards, driver, skipped)
    nodes: dict[str, list[CardState]] = {n: [] for n in node_of.values()}
    for (pool, _), card in sorted(cards.items(), key=lambda kv: (kv[0][0], kv[1].index)):
        nodes[node_of[pool]].append(_state(card))
    return View({n: Node(n, 0, tuple(cs)) for n, cs in nodes.items()}, vendors, tuple(skipped))


def _card(device: Mapping) -> _Card:
    attrs = device.get("attributes") or {}
    capacity = device.get("capacity") or {}
    memory = int(parse_quantity(capacity[MEMORY]["value"]))
    compute = int(parse_quantity(capacity[COMPUTE]["value"])) if COMPUTE in capacity else 100
    index = int((attrs.get("index") or {}).get("int", card_index(device["name"])))
    return _Card(index, str((attrs.get("uuid") or {}).get("string", device["name"])),
                 str((attrs.get("model") or {}).get("string", "")), memory, compute)


def _consume(claim: Mapping, cards: dict[tuple[str, str], _Card], driver: str, skipped: list[str]) -> None:
    """Subtract what an allocated claim holds: its consumedCapacity, or the whole card when the
    result names none (a device allocated whole, without consumable capacity)."""
    meta = claim.get("metadata") or {}
    allocation = (claim.get("status") or {}).get("allocation") or {}
    for r in (allocation.get("devices") or {}).get("results") or ():
        if r.get("driver") != driver:
            continue
        card = cards.get((r.get("pool", ""), r.get("device", "")))
        if card is None:  # a device of a slice that is gone or not yet listed: nothing to subtract from
            continue
        card.allocated = True
        consumed = r.get("consumedCapacity") or {}
        try:
            memory = parse_quantity(consumed[MEMORY]).to_integral_value(ROUND_CEILING) if MEMORY in consumed else card.memory
            compute = parse_quantity(consumed[COMPUTE]).to_integral_value(ROUND_CEILING) if COMPUTE in consumed else card.compute
        except ClaimError as exc:
            skipped.append(f"ResourceClaim {meta.get('namespace')}/{meta.get('name')}: {exc}; counted as the whole card")
            memory, compute = card.memory, card.compute
        card.memory_used += int(memory)
        card.compute_used += int(compute)


def _state(card: _Card) -> CardState:
    memory_free = max(0, card.memory - card.memory_used)
    compute_free = max(0, card.compute - card.compute_used) * MILLI // max(1, card.compute)
    return CardState(card.index, card.uuid, card.model, card.memory, memory_free, compute_free,
                     not card.allocated)
