"""Small OCI bundles built from the host's static busybox: for `flexai demo`, tests and benchmarks.

No image registry is needed: the rootfs is one static binary and its applet links.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Mapping, Sequence

BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")


def minimal_spec(
    args: Sequence[str],
    env: Sequence[str] = (),
    annotations: Mapping[str, str] | None = None,
    hostname: str = "flexai",
) -> dict:
    """An OCI spec like `runc spec` writes, running `args` without a terminal."""
    caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    spec = {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": list(args),
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", *env],
            "cwd": "/",
            "capabilities": {k: list(caps) for k in ("bounding", "effective", "permitted", "ambient")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": hostname,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/run", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "nodev", "mode=755", "size=8192k"]},
        ],
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    }
    if annotations:
        spec["annotations"] = dict(annotations)
    return spec


def find_busybox() -> str:
    for path in BUSYBOX_CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    raise FileNotFoundError(
        "no static busybox found (install Debian's busybox-static: apt-get install busybox-static)"
    )


def make_rootfs(rootfs: Path, busybox: str | None = None) -> None:
    """A rootfs with a static busybox and links for its applets."""
    busybox = busybox or find_busybox()
    (rootfs / "bin").mkdir(parents=True, exist_ok=True)
    for d in ("proc", "sys", "dev", "run", "tmp", "etc"):
        (rootfs / d).mkdir(exist_ok=True)
    target = rootfs / "bin" / "busybox"
    if not target.exists():
        shutil.copy2(busybox, target)
    for applet in ("sh", "cat", "ls", "sleep", "echo", "test", "env", "grep", "true", "false", "stat", "id", "wc"):
        link = rootfs / "bin" / applet
        if not link.exists():
            link.symlink_to("busybox")


def make_bundle(
    bundle: Path,
    args: Sequence[str],
    env: Sequence[str] = (),
    annotations: Mapping[str, str] | None = None,
    rootfs_from: Path | None = None,
) -> Path:
    """Write a runnable bundle at `bundle`; returns the config.json path.

    `rootfs_from` reuses another bundle's rootfs by hard links (fast for many bundles).
    """
    bundle = Path(bundle)
    bundle.mkdir(parents=True, exist_ok=True)
    if rootfs_from is not None:
        shutil.copytree(rootfs_from, bundle / "rootfs", symlinks=True, copy_function=os.link,
                        dirs_exist_ok=True)
    else:
        make_rootfs(bundle / "rootfs")
    config = bundle / "config.json"
    config.write_text(json.dumps(minimal_spec(args, env, annotations), indent=2) + "\n")
    return config


HOST_GLIBC = "/lib/x86_64-linux-gnu"
LOADER = "ld-linux-x86-64.so.2"


def add_host_programs(bundle: Path, programs: Sequence[Path]) -> bool:
    """Let a busybox bundle run dynamically linked host programs: the host's glibc directory
    is bind-mounted read-only and `programs` are copied to /bin. False (bundle unchanged) on
    a host without a Debian-style x86_64 glibc layout."""
    if not (os.path.isdir(HOST_GLIBC) and os.path.exists(os.path.join(HOST_GLIBC, LOADER))):
        return False
    bundle = Path(bundle)
    rootfs = bundle / "rootfs"
    (rootfs / "lib64").mkdir(exist_ok=True)
    loader = rootfs / "lib64" / LOADER
    if not loader.is_symlink():
        loader.symlink_to(f"{HOST_GLIBC}/{LOADER}")
    for program in programs:
        shutil.copy2(program, rootfs / "bin" / Path(program).name)
    config = bundle / "config.json"
    spec = json.loads(config.read_text())
    spec.setdefault("mounts", []).append({
        "destination": HOST_GLIBC, "type": "bind", "source": os.path.realpath(HOST_GLIBC),
        "options": ["rbind", "ro", "nosuid", "nodev"]})
    config.write_text(json.dumps(spec, indent=2) + "\n")
    return True
