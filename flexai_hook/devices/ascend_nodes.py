"""Ascend device nodes and the Ascend Docker runtime's variable: pure, standard library only.

Kept apart from ascend.py (discovery: ctypes, subprocess) because flexai-runtime calls
`visible_devices_env` on every sliced container start, where each import costs start time.
"""

from __future__ import annotations

import os

# Every process using any Ascend chip also opens these control nodes.
SHARED_NODE_NAMES = ("davinci_manager", "devmm_svm", "hisi_hdc")
ASCEND_SHARED_NODES = tuple(f"/dev/{n}" for n in SHARED_NODE_NAMES)


def davinci_paths(node: str) -> tuple[str, ...]:
    """A chip's node and the shared control nodes beside it (once each, the chip's first).

    `/dev/davinci3` gives `/dev/davinci3, /dev/davinci_manager, /dev/devmm_svm, /dev/hisi_hdc`;
    a simulated `/dev/flexai-sim-ascend/davinci0` gets its shared nodes in the same folder.
    """
    folder = os.path.dirname(node) or "/dev"
    paths = [node] + [os.path.join(folder, n) for n in SHARED_NODE_NAMES]
    return tuple(dict.fromkeys(paths))


def phy_id_of(path: str) -> int | None:
    """N for a `.../davinciN` node (the chip's physical id); None for any other path."""
    name = os.path.basename(path)
    digits = name[len("davinci"):]
    if name.startswith("davinci") and digits.isdigit() and digits.isascii():
        return int(digits)
    return None


def visible_devices_env(device_paths) -> tuple[tuple[str, str], ...]:
    """`ASCEND_VISIBLE_DEVICES=<physical ids>` for a slice's nodes; () for a non-Ascend card.

    Huawei's Ascend Docker runtime (and its prestart hook) mounts exactly these chips plus the
    driver files; set by flexai, the value also overrides whatever the image or user set, so a
    chained Ascend runtime can never hand the container more chips than its slice.
    """
    ids = [i for i in (phy_id_of(p) for p in device_paths) if i is not None]
    if not ids:
        return ()
    return (("ASCEND_VISIBLE_DEVICES", ",".join(str(i) for i in dict.fromkeys(ids))),)
