"""What a slice adds to a container's OCI spec, as records: device nodes, mounts, env, hooks.

spec.py builds an Injection for a reservation and applies it to a spec; mps.py builds the
extra one MPS mode adds. Both use these records, so they live below both.
"""

from __future__ import annotations

from flexai_hook.record import record


@record
class DeviceNode:
    path: str
    type: str  # "c" or "b"
    major: int
    minor: int
    file_mode: int = 0o666
    uid: int = 0
    gid: int = 0


@record
class Mount:
    source: str
    destination: str
    read_only: bool = True


@record
class Hook:
    path: str
    args: tuple[str, ...]
    env: tuple[str, ...] = ()
    timeout: int = 30


@record
class Injection:
    """Everything a slice adds to a container's spec."""

    devices: tuple[DeviceNode, ...] = ()
    mounts: tuple[Mount, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    poststop: tuple[Hook, ...] = ()
