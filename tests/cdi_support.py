"""A CDI spec for simulated cards, written the way `nvidia-ctk cdi generate` writes one for real
cards, and what a container needs to find the driver through it alone.

The spec has, as nvidia-ctk's: device nodes per card (index and UUID names, and "all"), common
control nodes, the driver libraries mounted at their versioned names
(`libcuda.so.580.65.06`), and a createContainer hook that makes the `libcuda.so.1` links, as
`nvidia-cdi-hook create-symlinks` does. A program that dlopens libcuda.so.1 finds it only when
the mounts and the hook both happened. The hook here is a small Python stand-in for
nvidia-cdi-hook (the same arguments, the same work), run with the host's python3.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from pathlib import Path

DRIVER_VERSION = "580.65.06"
LIB_DIR = "/usr/lib/x86_64-linux-gnu"  # where nvidia-ctk mounts the driver on Debian-style images
HOST_GLIBC = "/lib/x86_64-linux-gnu"
LOADER = "ld-linux-x86-64.so.2"
CLIENT_IMAGE = "flexai-cuda-client"
CLIENT_IMAGE_REF = f"docker.io/library/{CLIENT_IMAGE}:latest"

# `nvidia-cdi-hook create-symlinks --link TARGET::LINK ...`: reads the OCI state on stdin, finds
# the container's root in the bundle's config.json and makes each LINK (a path in the container)
# point at TARGET. createContainer hooks run before pivot_root, so the root is a host path.
LINK_HOOK = """#!{python} -I
import json, os, sys
state = json.load(sys.stdin)
bundle = state["bundle"]
with open(os.path.join(bundle, "config.json")) as f:
    root = json.load(f)["root"]["path"]
root = root if os.path.isabs(root) else os.path.join(bundle, root)
args = sys.argv[1:]
assert args[0] == "create-symlinks", args
pairs = [args[i + 1] for i, a in enumerate(args) if a == "--link"]
for pair in pairs:
    target, link = pair.split("::", 1)
    where = os.path.join(root, link.lstrip("/"))
    os.makedirs(os.path.dirname(where), exist_ok=True)
    if os.path.lexists(where):
        os.unlink(where)
    os.symlink(target, where)
"""


def write_link_hook(path: Path) -> Path:
    python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
    path.write_text(LINK_HOOK.format(python=python))
    path.chmod(0o755)
    return path


def sim_libraries() -> dict[str, str]:
    """The built simulated driver libraries by soname."""
    from flexai_hook.devices import library

    return {name: str(library.sim_library_path(name)) for name in ("libcuda.so.1", "libnvidia-ml.so.1")}


def spec_yaml(cards: list[dict], hook: Path) -> str:
    """The spec text in nvidia-ctk's layout (go-yaml v3: four spaces, indented sequences)."""
    def device(name: str, nodes: list[str]) -> str:
        lines = [f"    - name: \"{name}\"" if name.isdigit() else f"    - name: {name}",
                 "      containerEdits:", "        deviceNodes:"]
        lines += [f"            - path: {n}" for n in nodes]
        return "\n".join(lines)

    devices = []
    for i, card in enumerate(cards):
        devices.append(device(str(i), [card["device"]]))
        devices.append(device(card["uuid"], [card["device"]]))
    devices.append(device("all", [c["device"] for c in cards]))
    libs = sim_libraries()
    versioned = {name: name.replace(".so.1", f".so.{DRIVER_VERSION}") for name in libs}
    mounts = []
    for name, host in libs.items():
        mounts += [f"        - hostPath: {host}", f"          containerPath: {LIB_DIR}/{versioned[name]}",
                   "          options:", "            - ro", "            - nosuid", "            - nodev",
                   "            - bind"]
    links = []
    for name in libs:
        links += ["                - --link", f"                - {versioned[name]}::{LIB_DIR}/{name}"]
    return "\n".join([
        "---",
        "cdiVersion: 0.5.0",
        "kind: nvidia.com/gpu",
        "devices:",
        *devices,
        "containerEdits:",
        "    env:",
        "        - NVIDIA_VISIBLE_DEVICES=void",
        "    deviceNodes:",
        "        - path: /dev/nvidiactl",
        "          hostPath: /dev/null",  # a control node to create; the simulator needs none
        "    hooks:",
        "        - hookName: createContainer",
        f"          path: {hook}",
        "          args:",
        "                - nvidia-cdi-hook",
        "                - create-symlinks",
        *links,
        "    mounts:",
        *mounts,
        "",
    ])


def write_spec(directory: Path, cards: list[dict], hook: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "nvidia.yaml"
    path.write_text(spec_yaml(cards, hook))
    return path


def client_rootfs(root: Path, client: str) -> Path:
    """The busybox rootfs plus the C driver client and a loader link: with the host's glibc
    mounted at /lib/x86_64-linux-gnu (`glibc_mount`) it runs the client, which dlopens
    libcuda.so.1 as libcudart does. No driver inside: that comes from CDI or not at all."""
    from flexai_hook.oci import bundle

    bundle.make_rootfs(root)
    (root / "lib64").mkdir(exist_ok=True)
    loader = root / "lib64" / LOADER
    if not loader.is_symlink():
        loader.symlink_to(f"{HOST_GLIBC}/{LOADER}")
    shutil.copy2(client, root / "bin" / "flexai_client")
    return root


def glibc_mount() -> tuple[str, str]:
    """(host directory, container path) of the host's glibc for the client image."""
    return os.path.realpath(HOST_GLIBC), HOST_GLIBC


def host_has_glibc_layout() -> bool:
    return os.path.isdir(HOST_GLIBC) and os.path.exists(os.path.join(HOST_GLIBC, LOADER))


@contextlib.contextmanager
def runtime_settings(path: Path, **extra):
    """The runtime config at `path` with `extra` keys for the duration (engines read it on
    every start), then as it was."""
    before = path.read_text()
    path.write_text(json.dumps({**json.loads(before), **extra}))
    try:
        yield path
    finally:
        path.write_text(before)


GIB = 1 << 30


def check_engine(run_client, config: Path, daemon, tmp_path: Path) -> None:
    """The same container through an engine twice: with the simulated cards' CDI spec (and the
    simulator's own library mounts switched off) it finds the driver and sees its 4 GiB slice
    of 16; with an empty spec directory it finds no driver. `run_client(args)` runs
    /bin/flexai_client ARGS in the client image with FLEXAI_FRACTION=0.25 and the host's glibc."""
    from libflexai_support import info

    hook = write_link_hook(tmp_path / "nvidia-cdi-hook")
    spec_dir = tmp_path / "cdi"
    write_spec(spec_dir, daemon.cards, hook)
    empty = tmp_path / "empty-cdi"
    empty.mkdir()
    with runtime_settings(config, cdi_spec_dirs=str(spec_dir), sim_driver_mounts="off"):
        out = run_client(["info", "alloc", "mem", str(5 * GIB), "alloc", "mem", str(GIB)])
    assert out.returncode == 0, out.stdout + out.stderr + daemon.log()[-2000:]
    lines = out.stdout.strip().splitlines()
    seen = info(lines[0])
    assert seen["count"] == 1 and seen["total"] == 4 * GIB and seen["uuid"] == daemon.cards[0]["uuid"], lines
    assert lines[1] == "oom" and lines[2].startswith("ok "), lines  # the slice holds
    with runtime_settings(config, cdi_spec_dirs=str(empty), sim_driver_mounts="off"):
        out = run_client(["info"])
    assert out.returncode == 3 and out.stdout.strip() == "nodriver", out.stdout + out.stderr
    assert daemon.slices() == []
