"""Talking to flexaid over its Unix socket: one JSON line out, one JSON line back.

Standard library only: the runtime and the hook import this on every container start.
"""

from __future__ import annotations

import json
import os
import socket

DEFAULT_SOCKET = "/run/flexai/flexaid.sock"
MAX_REPLY = 16 << 20


def socket_path() -> str:
    return os.environ.get("FLEXAI_SOCKET") or DEFAULT_SOCKET


class DaemonUnavailable(RuntimeError):
    """flexaid could not be reached or hung up; str() says where and how to start it."""


class DaemonRefused(RuntimeError):
    """flexaid answered with an error; str() is its one-line reason."""


def call(message: dict, path: str | None = None, timeout: float = 30.0) -> dict:
    """Send one request and return the successful reply's fields."""
    path = path or socket_path()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise DaemonUnavailable(
                f"flexaid is not reachable at {path} ({reason}); start it "
                f"(`systemctl start flexaid.socket`, or `flexaid --config /etc/flexai/flexaid.json`) "
                f"or point FLEXAI_SOCKET at its socket"
            ) from None
        buf = bytearray()
        try:
            sock.sendall(json.dumps(message, separators=(",", ":")).encode() + b"\n")
        except OSError as exc:
            raise DaemonUnavailable(f"flexaid at {path} hung up ({exc.strerror or exc})") from None
        while not buf.endswith(b"\n"):
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                raise DaemonUnavailable(f"flexaid at {path} did not answer within {timeout:g}s") from None
            except OSError as exc:
                raise DaemonUnavailable(f"flexaid at {path} hung up ({exc.strerror or exc})") from None
            if not chunk:
                raise DaemonUnavailable(f"flexaid at {path} closed the connection without answering")
            buf += chunk
            if len(buf) > MAX_REPLY:
                raise DaemonUnavailable(f"flexaid at {path} sent an oversized reply")
    finally:
        sock.close()
    try:
        reply = json.loads(buf)
    except ValueError:
        raise DaemonUnavailable(f"flexaid at {path} sent a reply that is not JSON") from None
    if not isinstance(reply, dict) or "ok" not in reply:
        raise DaemonUnavailable(f"flexaid at {path} sent a malformed reply")
    if not reply["ok"]:
        raise DaemonRefused(str(reply.get("error", "flexaid refused the request")))
    return reply
