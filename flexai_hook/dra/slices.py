"""This node's cards as a ResourceSlice (resource.k8s.io/v1): pure, from flexaid's status.

One pool per node (named after it), one device per card ("gpu-<index>", claim.py maps it
back), each shared by many claims (allowMultipleAllocations) that consume parts of its
`memory` (bytes) and `compute` (percent, whole steps 1..100) capacities; the scheduler does
the per-card arithmetic (consumable capacity, KEP-5075) and flexai enforces it.

A capacity a claim does not name is consumed at its requestPolicy default, one value for every
claim, which cannot express flexai's "follow the other part's share": the defaults here are the
whole capacity, and flexai's admission webhook (admission/defaults.py) writes the share into
claims that name one capacity before the scheduler sees them (docs/kubernetes.md).
Publishing it (create/update on card changes, delete at stop) is publish.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .claim import COMPUTE, DEVICE_PREFIX, DRIVER, MEMORY

MIB = 1 << 20


VENDORS = {"nvml": "nvidia", "ascend": "huawei"}  # flexaid's device backend -> the card's vendor


def vendor_of(backend: str) -> str:
    return VENDORS.get(backend, backend)  # "simulated" stays itself


def device(card: Mapping, backend: str) -> dict:
    """One card of flexaid's status (`cards[]`) as a ResourceSlice device."""
    memory = int(card["memory"])
    return {
        "name": f"{DEVICE_PREFIX}{int(card['index'])}",
        "attributes": {
            "index": {"int": int(card["index"])},
            "uuid": {"string": str(card["uuid"])},
            "model": {"string": str(card.get("name", ""))},
            "vendor": {"string": vendor_of(backend)},
            "backend": {"string": backend},
        },
        "capacity": {
            MEMORY: {"value": str(memory),
                     "requestPolicy": {"default": str(memory), "validRange": {"min": str(MIB), "step": str(MIB)}}},
            COMPUTE: {"value": "100",
                      "requestPolicy": {"default": "100", "validRange": {"min": "1", "max": "100", "step": "1"}}},
        },
        "allowMultipleAllocations": True,
    }


def resource_slice(node: str, status: Mapping, generation: int = 1) -> dict:
    """The node's one ResourceSlice for flexaid's `status` reply."""
    backend = str(status.get("backend", ""))
    cards: Sequence[Mapping] = status.get("cards", ())
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": f"{node}-{DRIVER}"},
        "spec": {
            "driver": DRIVER,
            "nodeName": node,
            "pool": {"name": node, "generation": generation, "resourceSliceCount": 1},
            "devices": [device(c, backend) for c in sorted(cards, key=lambda c: int(c["index"]))],
        },
    }
