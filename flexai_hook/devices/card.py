"""A card as flexaid places slices on it, whichever backend found it (inventory.py, ascend.py)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Card:
    index: int
    uuid: str
    name: str
    memory: int  # bytes
    device_paths: tuple[str, ...]
    backend: str  # "simulated", "nvml" or "ascend"


class InventoryError(RuntimeError):
    pass
