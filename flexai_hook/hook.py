"""flexai-hook: the OCI hook. At poststop it gives a container's slice back to flexaid.

A poststop hook cannot stop anything (the container is already gone), so every problem here is
logged on stderr, which runc passes to the engine's log, and the hook exits 0.
"""

from __future__ import annotations

import json
import sys

from . import client

USAGE = """usage: flexai-hook poststop

OCI hook for flexai. Reads the container state JSON on stdin (as runc, crun and Podman's
hooks.d pass it) and releases the container's slice in flexaid. Set FLEXAI_SOCKET to use a
daemon socket other than /run/flexai/flexaid.sock.
"""


def container_id(state_text: str) -> str:
    """The container id of an OCI state document (runc's 'creating' and crun's 'created' shapes)."""
    try:
        state = json.loads(state_text)
    except ValueError:
        raise ValueError("the OCI state on stdin is not JSON") from None
    if not isinstance(state, dict) or not isinstance(state.get("id"), str) or not state["id"]:
        raise ValueError("the OCI state on stdin has no container id")
    return state["id"]


def poststop(stdin_text: str) -> int:
    try:
        cid = container_id(stdin_text)
    except ValueError as exc:
        sys.stderr.write(f"flexai-hook: {exc}; nothing released\n")
        return 0
    try:
        client.call({"op": "release", "container_id": cid}, timeout=10.0)
    except (client.DaemonUnavailable, client.DaemonRefused) as exc:
        sys.stderr.write(f"flexai-hook: could not release the slice of {cid}: {exc}\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] in (["-h"], ["--help"]) or not args:
        sys.stdout.write(USAGE)
        return 0 if args else 2
    if args[0] == "poststop":
        return poststop(sys.stdin.read(1 << 20))
    sys.stderr.write(f"flexai-hook: unknown stage {args[0]!r}\n{USAGE}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
