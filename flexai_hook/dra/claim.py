"""A ResourceClaim's allocation (resource.k8s.io/v1 JSON) → the slices flexai reserves for it.

Pure: the API server's JSON in, records out. The scheduler has already done the arithmetic
(consumable capacity, KEP-5075): each allocation result for this driver names one card (the
device) and what the claim consumes of it. flexai reserves exactly that; a result that names
only memory or only compute gets the other in the same share of the card, as flexai's own
requests do (request.Request.resolve), and one that names neither (a card allocated whole) the
whole card.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from typing import Any, Mapping

from flexai_hook.request import Request

DRIVER = "gpu.flexai.io"
# ResourceSlice device names (DNS labels): "gpu-<card index>" (publish side: slices.py)
DEVICE_PREFIX = "gpu-"
MEMORY, COMPUTE = "memory", "compute"  # the capacity names each card declares
# The DeviceClasses runtime-config/kubernetes/deviceclasses.yaml ships -> the vendor attribute
# they select on (None: any card of the driver)
CLASSES: dict[str, str | None] = {"gpu.flexai.io": None, "nvidia.gpu.flexai.io": "nvidia",
                                  "ascend.npu.flexai.io": "huawei"}


class ClaimError(ValueError):
    """The claim cannot be prepared as it stands; str() is one line naming cause and fix."""


@dataclass(frozen=True)
class Share:
    """One allocation result for this driver: a part of one card for one request of the claim."""

    request: str  # the claim's request name (a subrequest as "req/sub")
    pool: str
    device: str  # the ResourceSlice device name, "gpu-<index>"
    card_index: int
    memory_bytes: int | None  # consumedCapacity.memory; None: not named
    compute: int | None  # consumedCapacity.compute, percent; None: not named
    share_id: str = ""  # the scheduler's ID of this share of a multi-allocatable device

    def flexai_request(self) -> Request:
        """What flexaid is asked to reserve for this share, pinned to its card."""
        if self.memory_bytes is None and self.compute is None:
            return Request(fraction=100, device=str(self.card_index))
        return Request(memory_bytes=self.memory_bytes, compute=self.compute, device=str(self.card_index))


@dataclass(frozen=True)
class Claim:
    namespace: str
    name: str
    uid: str
    shares: tuple[Share, ...]


_SUFFIX = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": 1,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
}
_QUANTITY = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?[0-9]+)?$")


def parse_quantity(text: object) -> Decimal:
    """A Kubernetes resource.Quantity string ("8Gi", "30", "500m", "1e3") as a Decimal."""
    match = _QUANTITY.match(str(text).strip()) if isinstance(text, (str, int)) else None
    if match is None:
        raise ClaimError(f"{text!r} is not a Kubernetes quantity (like 8Gi or 30)")
    number, suffix = Decimal(match.group(1)), match.group(2) or ""
    try:
        if suffix[:1] in ("e", "E"):
            return number.scaleb(int(suffix[1:]))
        return number * Decimal(_SUFFIX[suffix])
    except InvalidOperation:
        raise ClaimError(f"{text!r} is not a Kubernetes quantity (like 8Gi or 30)") from None


def card_index(device: str) -> int:
    """The card index of a device name this driver published ("gpu-3" → 3)."""
    tail = device[len(DEVICE_PREFIX):] if device.startswith(DEVICE_PREFIX) else ""
    if not tail.isdigit() or (len(tail) > 1 and tail[0] == "0"):
        raise ClaimError(f"device {device!r} is not one gpu.flexai.io publishes (gpu-<card index>); "
                         f"was the claim allocated from another driver's ResourceSlice?")
    return int(tail)


def _consumed(result: Mapping, device: str) -> tuple[int | None, int | None]:
    consumed = result.get("consumedCapacity") or {}
    if not isinstance(consumed, Mapping):
        raise ClaimError(f"consumedCapacity of device {device} is not a map")
    memory = compute = None
    if MEMORY in consumed:
        bytes_ = parse_quantity(consumed[MEMORY]).to_integral_value(ROUND_CEILING)
        if bytes_ < 1:
            raise ClaimError(f"device {device}: consumed memory {consumed[MEMORY]!r} must be at least 1 byte")
        memory = int(bytes_)
    if COMPUTE in consumed:
        share = parse_quantity(consumed[COMPUTE])
        if share != share.to_integral_value() or not 1 <= share <= 100:
            raise ClaimError(f"device {device}: consumed compute {consumed[COMPUTE]!r} must be a whole percent "
                             f"1..100 (the DeviceClass's requestPolicy)")
        compute = int(share)
    return memory, compute


def from_json(obj: Any, uid: str | None = None, pool: str | None = None, driver: str = DRIVER) -> Claim:
    """The claim's shares for `driver`. `uid`: the UID the kubelet named (a claim deleted and made
    again under the same name has another); `pool`: this node's pool (results for other nodes'
    pools are not this agent's to prepare)."""
    if not isinstance(obj, Mapping) or obj.get("kind", "ResourceClaim") != "ResourceClaim":
        raise ClaimError("the API server's answer is not a ResourceClaim")
    meta = obj.get("metadata") or {}
    namespace, name, have_uid = meta.get("namespace", ""), meta.get("name", ""), meta.get("uid", "")
    if uid is not None and have_uid != uid:
        raise ClaimError(f"claim {namespace}/{name} has UID {have_uid}, not {uid}: it was deleted and made again; "
                         f"the kubelet will retry with the new one")
    allocation = (obj.get("status") or {}).get("allocation")
    if not allocation:
        raise ClaimError(f"claim {namespace}/{name} is not allocated: the scheduler allocates it before the kubelet prepares it")
    results = ((allocation.get("devices") or {}).get("results")) or []
    shares = []
    for result in results:
        if not isinstance(result, Mapping) or result.get("driver") != driver:
            continue
        device = str(result.get("device", ""))
        if pool is not None and result.get("pool") != pool:
            raise ClaimError(f"claim {namespace}/{name}: device {device} is in pool {result.get('pool')!r}, "
                             f"not this node's {pool!r}; it was allocated for another node")
        memory, compute = _consumed(result, device)
        shares.append(Share(request=str(result.get("request", "")), pool=str(result.get("pool", "")),
                            device=device, card_index=card_index(device), memory_bytes=memory, compute=compute,
                            share_id=str(result.get("shareID") or "")))
    if not shares:
        raise ClaimError(f"claim {namespace}/{name} has no device allocated from {driver}")
    devices = [s.device for s in shares]
    if len(set(devices)) != len(devices):
        raise ClaimError(f"claim {namespace}/{name} holds one card twice ({', '.join(devices)}); "
                         f"ask for one request per card")
    return Claim(namespace=namespace, name=name, uid=have_uid, shares=tuple(shares))


def container_id(uid: str, device: str) -> str:
    """The flexaid reservation id of one share of a claim: the claim's UID is the owner, and
    every container and pod that uses the claim shares this one slice."""
    return f"{CONTAINER_PREFIX}{uid}-{device}"


CONTAINER_PREFIX = "dra-"


def claim_of(container_id_: str) -> tuple[str, str] | None:
    """(claim UID, device) of a reservation id made by container_id(); None for other ids."""
    if not container_id_.startswith(CONTAINER_PREFIX):
        return None
    rest = container_id_[len(CONTAINER_PREFIX):]
    uid, sep, device = rest.partition("-" + DEVICE_PREFIX)
    return (uid, DEVICE_PREFIX + device) if sep else None
