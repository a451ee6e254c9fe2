"""What a pod asks of flexai's cards: its ResourceClaims (its own, or made from a template) →
one placement Demand, or the reason the extender leaves the pod to kube-scheduler. Pure.

The demand is what kube-scheduler's allocator will consume (KEP-5075, cmpRequestOverCapacity):
each named capacity rounded up by the slice's requestPolicy (memory: whole MiB, at least 1 MiB;
compute: whole percent 1..100); a capacity the claim does not name is consumed at the slice's
default, the whole of it (dra/slices.py), so such a request takes a card with nothing on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_CEILING

from flexai_hook.dra.claim import CLASSES, COMPUTE, MEMORY, ClaimError, parse_quantity
from flexai_hook.dra.slices import MIB
from flexai_hook.placement import Demand
from flexai_hook.placement.model import MILLI



@dataclass(frozen=True)
class Ask:
    """One flexai request of a claim not yet allocated."""

    claim: str  # namespace/name
    demand: Demand
    vendor: str | None = None


@dataclass(frozen=True)
class PodAsks:
    asks: tuple[Ask, ...] = ()
    passthrough: str = ""  # why the extender does not decide for this pod ("" : it does)
    missing: tuple[tuple[str, str], ...] = ()  # (namespace, name) of claims to fetch first


def claim_names(pod: Mapping) -> list[str]:
    """The names of the ResourceClaims a pod uses: spec.resourceClaims[] either names one or
    a template, whose generated claim the resourceclaim controller records in
    status.resourceClaimStatuses before kube-scheduler's filters run."""
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    generated = {s.get("name"): s.get("resourceClaimName") for s in status.get("resourceClaimStatuses") or ()}
    names = []
    for ref in spec.get("resourceClaims") or ():
        if ref.get("resourceClaimName"):
            names.append(ref["resourceClaimName"])
        elif ref.get("resourceClaimTemplateName") and generated.get(ref.get("name")):
            names.append(generated[ref["name"]])
    return names


def asks(pod: Mapping, claims: Mapping[tuple[str, str], Mapping], classes: Mapping[str, str | None] = CLASSES) -> PodAsks:
    """What `pod` asks, given the claims known by (namespace, name)."""
    namespace = (pod.get("metadata") or {}).get("namespace") or "default"
    names = claim_names(pod)
    if not names:
        return PodAsks(passthrough="no ResourceClaims")
    missing = tuple((namespace, n) for n in names if (namespace, n) not in claims)
    if missing:
        return PodAsks(missing=missing, passthrough=f"claim {namespace}/{missing[0][1]} not found")
    found: list[Ask] = []
    for n in names:
        claim = claims[(namespace, n)]
        if (claim.get("status") or {}).get("allocation"):
            continue  # already allocated: it consumes what it holds, asks nothing new
        for request in ((claim.get("spec") or {}).get("devices") or {}).get("requests") or ():
            ask, why = _ask(f"{namespace}/{n}", request, classes)
            if why:
                return PodAsks(passthrough=why)
            if ask is not None:
                found.append(ask)
    if not found:
        return PodAsks(passthrough="no unallocated gpu.flexai.io request")
    if len(found) > 1:  # choose_node places one request; several at once are not modelled
        return PodAsks(passthrough=f"{len(found)} gpu.flexai.io requests in one pod (the extender places one)")
    return PodAsks(asks=tuple(found))


def _ask(claim: str, request: Mapping, classes: Mapping[str, str | None]) -> tuple[Ask | None, str]:
    """(the Ask, "") for a flexai request; (None, "") for another driver's; (None, why) for a
    flexai request the extender does not model."""
    exactly = request.get("exactly")
    if exactly is None:
        alternatives = request.get("firstAvailable") or ()
        if any(a.get("deviceClassName") in classes for a in alternatives):
            return None, f"claim {claim}: firstAvailable alternatives are not modelled"
        return None, ""
    if exactly.get("deviceClassName") not in classes:
        return None, ""
    if exactly.get("selectors"):
        return None, f"claim {claim}: CEL selectors are not modelled"
    if exactly.get("allocationMode", "ExactCount") != "ExactCount":
        return None, f"claim {claim}: allocationMode {exactly.get('allocationMode')} is not modelled"
    count = int(exactly.get("count") or 1)
    requests = (exactly.get("capacity") or {}).get("requests") or {}
    vendor = classes[exactly["deviceClassName"]]
    try:
        memory = _round_up(parse_quantity(requests[MEMORY]), MIB) if MEMORY in requests else None
        compute = _round_up(parse_quantity(requests[COMPUTE]), 1) if COMPUTE in requests else None
    except ClaimError as exc:
        return None, f"claim {claim}: {exc}"
    if memory is not None and compute is not None and count == 1:
        return Ask(claim, Demand(memory=memory, compute=min(100, compute) * MILLI // 100), vendor), ""
    if memory is None and compute is None or count == 1:
        # a capacity left out is consumed whole (the slice's default): the card can hold no one else
        if count == 1:
            return Ask(claim, Demand(memory=0, compute=MILLI), vendor), ""
        return Ask(claim, Demand(memory=0, compute=0, cards=count), vendor), ""
    return None, f"claim {claim}: {count} shares of several cards are not modelled"


def _round_up(value, step: int) -> int:
    """The request as the allocator consumes it: up to a whole step, at least one step."""
    units = (value / step).to_integral_value(ROUND_CEILING)
    return int(max(units, 1)) * step
