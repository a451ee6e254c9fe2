"""Who may do what over flexaid's socket, as pure rules ("the socket has owners", DESIGN.md).

The server reads a client's credentials once, when it accepts the connection (SO_PEERCRED);
`Service.handle` applies these rules to each request on it:

- `status`: anyone the socket lets in (root or the socket's group);
- `reserve`/`prepare` of a new container: anyone the socket lets in (rootless engines), and
  the slice records the caller's uid as its owner;
- `release`, `update`, and `reserve`/`prepare` of a container already reserved: root or the
  owner only.

flexaid never runs a program a client named: the runtime binary a reservation records (asked
`state` by reconciliation, as root) must be on the configured allow-list, `reconcile.runtimes`.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Collection, Mapping
from typing import NamedTuple

ROOT_UID = 0
CONFIG_KEY = "reconcile.runtimes"
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class Peer(NamedTuple):
    """The process at the other end of a connection, as the kernel vouches for it."""

    pid: int
    uid: int
    gid: int


ROOT = Peer(0, ROOT_UID, 0)  # in-process callers (tests, tools) act as root


def peer_of(sock: socket.socket) -> Peer:
    """The connecting process's credentials (one getsockopt; taken at connect time by the kernel)."""
    return Peer(*_PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)))


def may_change(uid: int, owner_uid: int) -> bool:
    return uid == ROOT_UID or uid == owner_uid


def change_refused(uid: int, op: str, container_id: str, owner_uid: int) -> str | None:
    """The one-line refusal when `uid` may not `op` the slice `owner_uid` holds; None if it may."""
    if may_change(uid, owner_uid):
        return None
    return (f"permission denied: uid {uid} may not {op} container {container_id}: "
            f"the slice of {container_id} belongs to uid {owner_uid}")


def runtime_refused(runtime: Mapping, allowed: Collection[str]) -> str | None:
    """The one-line refusal when a client names a runtime binary flexaid would not run; None if
    it names none (hooks.d path) or an allowed one. Exact path match: a client-made symlink or
    `..` path could point elsewhere by the time reconciliation runs it."""
    binary = runtime.get("binary")
    if binary is None or binary in allowed:
        return None
    return (f"runtime binary {binary} is not one flexaid runs: add it to {CONFIG_KEY} in flexaid's "
            f"config (/etc/flexai/flexaid.json) if it is a real OCI runtime")
