"""Talking to flexaid over its Unix socket: one JSON line out, one JSON line back.

This runs on every sliced container start (runtime and poststop hook), so it uses the C
`_socket` module directly: `socket.py` pulls in `enum` and `selectors`, several milliseconds
of imports per start for wrappers we do not need.
"""

from __future__ import annotations

import os

import _socket

DEFAULT_SOCKET = "/run/flexai/flexaid.sock"
MAX_REPLY = 16 << 20


def socket_path() -> str:
    return os.environ.get("FLEXAI_SOCKET") or DEFAULT_SOCKET


class DaemonUnavailable(RuntimeError):
    """flexaid could not be reached or hung up; str() says where and how to start it. `reason`
    is the short cause ("Connection refused", "closed the connection without answering");
    `lasting` is True when waiting will not help (this user may not open the socket)."""

    def __init__(self, message: str, reason: str | None = None, lasting: bool = False):
        super().__init__(message)
        self.reason = reason or message
        self.lasting = lasting


class DaemonRefused(RuntimeError):
    """flexaid answered with an error; str() is its one-line reason."""


def unreachable(path: str, exc: OSError, systemd: bool | None = None) -> str:
    """One line on why flexaid's socket could not be opened, and the fix for that cause: a user
    the socket's permissions keep out needs its group, not a daemon start."""
    import errno
    import os

    reason = exc.strerror or type(exc).__name__
    if exc.errno in (errno.EACCES, errno.EPERM):
        group = _group_of(path)
        join = (f"ask an administrator to add you to the group {group} (`usermod -aG {group} USER`, then "
                f"log in again)" if group else "ask an administrator for access to it")
        return f"flexaid's socket {path} is not open to this user ({reason}); {join}, or run as root"
    if systemd is None:
        systemd = os.path.isdir("/run/systemd/system")
    start = ("`systemctl start flexaid.socket`" if systemd
             else "`flexaid --config /etc/flexai/flexaid.json &`")
    return f"flexaid is not reachable at {path} ({reason}); start it ({start}) or point FLEXAI_SOCKET at its socket"


def _group_of(path: str) -> str | None:
    import grp
    import os

    try:
        return grp.getgrgid(os.stat(path).st_gid).gr_name
    except (OSError, KeyError):
        return None


def exchange(line: bytes, path: str | None = None, timeout: float = 30.0) -> bytes:
    """Send one request line (ending in a newline) and return the reply line."""
    path = path or socket_path()
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except OSError as exc:
            import errno

            raise DaemonUnavailable(unreachable(path, exc), exc.strerror or type(exc).__name__,
                                    lasting=exc.errno in (errno.EACCES, errno.EPERM)) from None
        buf = bytearray()
        try:
            try:
                sock.sendall(line)
            except (BrokenPipeError, ConnectionResetError):
                pass  # flexaid may have answered (a refusal) and closed before reading: read it
            while not buf.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    raise DaemonUnavailable(f"flexaid at {path} closed the connection without answering",
                                            "closed the connection without answering")
                buf += chunk
                if len(buf) > MAX_REPLY:
                    raise DaemonUnavailable(f"flexaid at {path} sent an oversized reply")
        except TimeoutError:
            raise DaemonUnavailable(f"flexaid at {path} did not answer within {timeout:g}s",
                                    f"no answer within {timeout:g}s") from None
        except OSError as exc:
            raise DaemonUnavailable(f"flexaid at {path} hung up ({exc.strerror or exc})",
                                    f"hung up: {exc.strerror or exc}") from None
    finally:
        sock.close()
    return bytes(buf)


def call(message: dict, path: str | None = None, timeout: float = 30.0) -> dict:
    """Send one request and return the successful reply's fields."""
    import json

    raw = exchange(json.dumps(message, separators=(",", ":")).encode() + b"\n", path, timeout)
    return parse_reply(raw, path or socket_path())


def parse_reply(raw: bytes, path: str) -> dict:
    import json

    try:
        reply = json.loads(raw)
    except ValueError:
        raise DaemonUnavailable(f"flexaid at {path} sent a reply that is not JSON") from None
    if not isinstance(reply, dict) or "ok" not in reply:
        raise DaemonUnavailable(f"flexaid at {path} sent a malformed reply")
    if not reply["ok"]:
        raise DaemonRefused(str(reply.get("error", "flexaid refused the request")))
    return reply
