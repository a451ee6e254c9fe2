"""A claim that names one capacity gets the other in the same share of the card. Pure.

flexai's own requests work this way (request.Request.resolve: FLEXAI_MEMORY=4GiB on a 16 GiB
card also gets 25 % compute). DRA's consumable capacity cannot: a capacity a claim leaves out is
consumed at the ResourceSlice's requestPolicy.default, one fixed value for every claim (the whole
capacity, dra/slices.py). The share depends on the card, so this module writes it into the claim
before the scheduler sees it, once per card size the cluster has:

- one size of card (for the request's class): the missing capacity is added to the request;
- several sizes: the request becomes `firstAvailable` subrequests, one per size that can hold
  it, smallest first, each selecting cards of that size by CEL
  (`device.capacity["gpu.flexai.io"].memory`) and consuming that size's share. On each node
  the allocator takes the first subrequest it can satisfy, so the claim gets exactly the share
  it would get from FLEXAI_MEMORY / FLEXAI_COMPUTE on whichever card it lands on.

A request naming both capacities, or neither (a whole card), or another driver's class, is
left as it is; so is one that cannot be rewritten (admin access, more sizes than
firstAvailable holds), with a warning saying what the scheduler will do instead.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_CEILING

from flexai_hook.dra.claim import CLASSES, COMPUTE, DRIVER, MEMORY, ClaimError, parse_quantity
from flexai_hook.dra.slices import MIB

MAX_SUBREQUESTS = 8  # resource.k8s.io: FirstAvailableDeviceRequestMaxSize
_GIB = 1 << 30


@dataclass(frozen=True)
class Card:
    """One card size a class can be allocated from (ResourceSlice devices, deduplicated)."""

    memory: int  # bytes: the device's `memory` capacity
    vendor: str  # the device's `vendor` attribute (dra/slices.py)


@dataclass
class Filled:
    """What `fill` made of a claim spec: the new `devices.requests` (None: unchanged) and the
    lines to show the user (AdmissionReview warnings: kubectl prints them)."""

    requests: list | None = None
    warnings: list[str] = field(default_factory=list)


def cards_of(slices: Iterable[Mapping], driver: str = DRIVER) -> list[Card]:
    """The distinct (memory, vendor) of the devices in `driver`'s ResourceSlices."""
    found = set()
    for s in slices:
        spec = s.get("spec") or {}
        if spec.get("driver") != driver:
            continue
        for device in spec.get("devices") or ():
            capacity = ((device.get("capacity") or {}).get(MEMORY) or {}).get("value")
            vendor = (((device.get("attributes") or {}).get("vendor")) or {}).get("string", "")
            try:
                memory = int(parse_quantity(capacity).to_integral_value(ROUND_CEILING))
            except ClaimError:
                continue
            if memory > 0:
                found.add(Card(memory, str(vendor)))
    return sorted(found, key=lambda c: (c.memory, c.vendor))


def parse_cards(text: str) -> list[Card]:
    """`--card-memory` ("80Gi@nvidia,64Gi@huawei"; no @VENDOR: the simulated cards) as Cards.
    ClaimError (one line) for anything else."""
    cards = set()
    for item in filter(None, (part.strip() for part in text.split(","))):
        size, _, vendor = item.partition("@")
        memory = int(parse_quantity(size).to_integral_value(ROUND_CEILING))
        if memory < MIB:
            raise ClaimError(f"card size {size!r} is under 1Mi; give sizes like 80Gi")
        cards.add(Card(memory, vendor or "simulated"))
    if not cards:
        raise ClaimError(f"{text!r} names no card size; give sizes like 80Gi@nvidia,64Gi@huawei")
    return sorted(cards, key=lambda c: (c.memory, c.vendor))


def share_on(memory_total: int, memory: int | None, compute: int | None) -> tuple[int, int] | None:
    """(memory bytes, compute percent) a request naming one of them consumes on a card of
    `memory_total` bytes, as request.Request.resolve decides; None when such a card cannot hold
    it. Memory is rounded up to the slice's step (1 MiB), as the allocator would."""
    if memory is not None:
        if memory > memory_total:
            return None
        return memory, max(1, min(100, math.ceil(memory * 100 / memory_total)))
    assert compute is not None
    part = memory_total * compute // 100
    return min(memory_total, max(MIB, -(-part // MIB) * MIB)), compute


def fill(spec: Mapping, cards: Iterable[Card], classes: Mapping[str, str | None] = CLASSES) -> Filled:
    """The ResourceClaimSpec `spec` (JSON) with each flexai request that names only memory or
    only compute completed for the `cards` the cluster has."""
    requests = ((spec.get("devices") or {}).get("requests")) or []
    cards = list(cards)
    out, changed, warnings = [], False, []
    for request in requests:
        new, said = _request(request, cards, classes)
        warnings += said
        changed |= new is not request
        out.append(new)
    return Filled(out if changed else None, warnings)


def _request(request: Mapping, cards: list[Card], classes: Mapping[str, str | None]) -> tuple[Mapping, list[str]]:
    name = str(request.get("name", ""))
    if request.get("exactly") is not None:
        exact = request["exactly"]
        alternatives = _alternatives(name, exact, cards, classes)
        if isinstance(alternatives, str):
            return request, [alternatives] if alternatives else []
        if len(alternatives) == 1:
            # one size (or one large enough): the missing capacity in place; the allocator's
            # capacity check keeps the request off cards too small for its memory
            return {**request, "exactly": {**exact, "capacity": alternatives[0][1]["capacity"]}}, []
        if len(alternatives) > MAX_SUBREQUESTS:
            return request, [_too_many(name, len(alternatives))]
        subs = [{"name": sub, **body} for sub, body in alternatives]
        rest = {k: v for k, v in request.items() if k != "exactly"}
        return {**rest, "firstAvailable": subs}, []
    subs_in = request.get("firstAvailable") or []
    subs_out, changed, warnings = [], False, []
    for sub in subs_in:
        alternatives = _alternatives(f"{name}/{sub.get('name', '')}", sub, cards, classes)
        if isinstance(alternatives, str):
            warnings += [alternatives] if alternatives else []
            subs_out.append(sub)
            continue
        changed = True
        if len(alternatives) == 1:
            subs_out.append({**sub, "capacity": alternatives[0][1]["capacity"]})
        else:
            subs_out += [{"name": _sub_name(str(sub.get("name", "")), alt), **body} for alt, body in alternatives]
    if not changed:
        return request, warnings
    if len(subs_out) > MAX_SUBREQUESTS:
        return request, warnings + [_too_many(name, len(subs_out))]
    return {**request, "firstAvailable": subs_out}, warnings


def _alternatives(where: str, exact: Mapping, cards: list[Card],
                  classes: Mapping[str, str | None]) -> list[tuple[str, dict]] | str:
    """The (subrequest name, request body) per card size for one exact request or subrequest;
    a string (a warning, or "" for nothing to say) when it is left as it is."""
    cls = exact.get("deviceClassName")
    if cls not in classes:
        return ""
    asked = dict((exact.get("capacity") or {}).get("requests") or {})
    memory_key = _key(asked, MEMORY)
    compute_key = _key(asked, COMPUTE)
    if (memory_key is None) == (compute_key is None):
        return ""  # both named, or neither (a whole card): nothing follows
    if exact.get("adminAccess"):
        return ""  # admin access consumes nothing
    try:
        memory = (int(parse_quantity(asked[memory_key]).to_integral_value(ROUND_CEILING))
                  if memory_key else None)
        compute = None
        if compute_key:
            value = parse_quantity(asked[compute_key])
            compute = int(value.to_integral_value(ROUND_CEILING))
        if (memory is not None and memory < 1) or (compute is not None and not 1 <= compute <= 100):
            raise ClaimError("out of range")
    except ClaimError:
        return f"{DRIVER}: request {where}: its capacity is not a valid amount; left for the scheduler to refuse"
    vendor = classes[cls]
    sizes = sorted({c.memory for c in cards if vendor is None or c.vendor == vendor})
    if not sizes:
        return (f"{DRIVER}: request {where}: no {cls} cards are published yet, so the capacity it leaves out "
                f"is consumed whole; name both memory and compute")
    alternatives = []
    for size in sizes:
        share = share_on(size, memory, compute)
        if share is None:
            continue
        requests = dict(asked)
        requests[memory_key or MEMORY] = str(share[0])
        requests[compute_key or COMPUTE] = str(share[1])
        body = copy.deepcopy({k: v for k, v in exact.items() if k not in ("adminAccess", "name")})
        body["capacity"] = {**(exact.get("capacity") or {}), "requests": requests}
        if len(sizes) > 1:
            body["selectors"] = list(body.get("selectors") or ()) + [{"cel": {"expression": size_selector(size)}}]
        alternatives.append((_size_name(size), body))
    if not alternatives:
        return f"{DRIVER}: request {where}: no {cls} card is large enough for it"
    return alternatives


def _key(asked: Mapping, capacity: str) -> str | None:
    """The key naming `capacity` in a request's capacity map: "memory" or "gpu.flexai.io/memory"."""
    for key in (capacity, f"{DRIVER}/{capacity}"):
        if key in asked:
            return key
    return None


def size_selector(memory: int) -> str:
    """CEL selecting the devices of one memory size (an exact compare: sizes are whole bytes)."""
    return f'device.capacity["{DRIVER}"].{MEMORY}.compareTo(quantity("{memory}")) == 0'


def _size_name(memory: int) -> str:
    """A subrequest name (a DNS label) for cards of `memory` bytes: card-80gi, card-24576mi."""
    if memory % _GIB == 0:
        return f"card-{memory // _GIB}gi"
    if memory % MIB == 0:
        return f"card-{memory // MIB}mi"
    return f"card-{memory}"


def _sub_name(sub: str, alt: str) -> str:
    return f"{sub}-{alt}"[:63].rstrip("-")


def _too_many(where: str, n: int) -> str:
    return (f"{DRIVER}: request {where} would need {n} alternatives (one per card size; at most "
            f"{MAX_SUBREQUESTS}); left as it is: name both memory and compute")
