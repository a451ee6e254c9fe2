"""The cards on this host: a simulated backend described in the daemon's config, NVML and Ascend
(flexai_hook/devices/ascend.py)."""

from __future__ import annotations

import logging
import os
import stat
from typing import Mapping, Sequence

from flexai_hook.request import parse_memory

from .card import Card, InventoryError

log = logging.getLogger("flexaid.devices")

# NVIDIA's control nodes every CUDA process needs besides its card's /dev/nvidiaN.
NVIDIA_CONTROL_NODES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools")
# A simulated card's node is a character device with the numbers of /dev/null, so a container
# can open it and runc can create it, without any driver.
SIM_NODE_MAJOR, SIM_NODE_MINOR = 1, 3


def simulated_cards(described: Sequence[Mapping]) -> list[Card]:
    """Cards from the daemon config's `simulated.cards` entries (already schema-checked)."""
    cards = []
    for index, entry in enumerate(described):
        memory = entry["memory"]
        if isinstance(memory, str):
            memory, share = parse_memory(memory)
            if memory is None:
                raise InventoryError(f"simulated card {index}: memory must be a size, not a share")
        if entry.get("kind") == "ascend":  # davinci-style nodes: the chip's, then the shared ones
            from .ascend_nodes import davinci_paths

            uuid = entry.get("uuid") or f"NPU-f1e0a100-0000-4000-8000-{index:012x}"
            name = entry.get("name", "flexai simulated Ascend NPU")
            paths = davinci_paths(entry.get("device") or f"/dev/flexai-sim-ascend/davinci{index}")
        else:
            uuid = entry.get("uuid") or f"GPU-f1e0a100-0000-4000-8000-{index:012x}"
            name = entry.get("name", "flexai simulated GPU")
            paths = (entry.get("device") or f"/dev/flexai-sim{index}",)
        cards.append(
            Card(index=index, uuid=uuid, name=name, memory=memory, device_paths=paths, backend="simulated")
        )
    return cards


def ensure_sim_nodes(cards: Sequence[Card]) -> None:
    """Create the simulated cards' device nodes if missing (root only)."""
    for card in cards:
        for path in card.device_paths:
            try:
                st = os.stat(path)
            except FileNotFoundError:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(SIM_NODE_MAJOR, SIM_NODE_MINOR))
                os.chmod(path, 0o666)
                continue
            if not stat.S_ISCHR(st.st_mode):
                raise InventoryError(f"{path} exists and is not a character device")


def nvml_cards() -> list[Card]:
    """Cards NVML reports; [] when there is no NVIDIA driver on this host."""
    try:
        import pynvml
    except ImportError:  # nvidia-ml-py is a dependency, but keep the daemon up without it
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        log.info("NVML unavailable (%s); no NVIDIA cards", exc)
        return []
    try:
        cards = []
        control = tuple(p for p in NVIDIA_CONTROL_NODES if os.path.exists(p))
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            minor = pynvml.nvmlDeviceGetMinorNumber(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle).total
            cards.append(
                Card(
                    index=index,
                    uuid=uuid.decode() if isinstance(uuid, bytes) else uuid,
                    name=name.decode() if isinstance(name, bytes) else name,
                    memory=int(memory),
                    device_paths=(f"/dev/nvidia{minor}",) + control,
                    backend="nvml",
                )
            )
        return cards
    finally:
        pynvml.nvmlShutdown()


def discover(backend: str, simulated: Sequence[Mapping]) -> list[Card]:
    """The inventory for the configured backend: `auto` prefers real cards (NVIDIA, then Ascend),
    else the simulated ones."""
    if backend in ("auto", "nvml"):
        cards = nvml_cards()
        if cards or backend == "nvml":
            if not cards:
                raise InventoryError("backend is nvml but NVML found no NVIDIA card")
            return cards
    if backend in ("auto", "ascend"):
        from .ascend import ascend_cards

        cards, why = ascend_cards()
        if cards:
            return cards
        if backend == "ascend":
            raise InventoryError(f"backend is ascend but no Ascend chip was found: {why}")
        log.info("no Ascend NPU (%s)", why)
    cards = simulated_cards(simulated)
    if not cards:
        raise InventoryError(
            "no cards: NVML and Ascend found none and the config describes no simulated cards "
            "(add simulated.cards to the daemon config)"
        )
    return cards
