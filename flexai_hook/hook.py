"""flexai-hook: the OCI hook. At poststop it gives a container's slice back to flexaid.

A poststop hook cannot stop anything (the container is already gone), so every problem here is
logged on stderr, which runc passes to the engine's log, and the hook exits 0.

It runs on every sliced container's exit, so it does not parse JSON itself: it forwards the
OCI state document to flexaid inside a release request, and flexaid (which validates
everything against its schemas anyway) takes the container id from it.
"""

from __future__ import annotations

import sys

from . import client

USAGE = """usage: flexai-hook poststop|createContainer

OCI hook for flexai. Reads the container state JSON on stdin (as runc, crun and Podman's
hooks.d pass it) and releases the container's slice in flexaid. Set FLEXAI_SOCKET to use a
daemon socket other than /run/flexai/flexaid.sock.
"""
MAX_STATE = 1 << 20


def release_line(state: bytes) -> bytes | None:
    """The release request carrying `state`, or None when `state` cannot be a JSON object."""
    state = state.strip()
    if not (state.startswith(b"{") and state.endswith(b"}")) or b"\n" in state:
        return None
    return b'{"op":"release","state":' + state + b"}\n"


def poststop(state: bytes) -> int:
    line = release_line(state)
    if line is None:
        sys.stderr.write("flexai-hook: the OCI state on stdin is not a JSON object; nothing released\n")
        return 0
    try:
        raw = client.exchange(line, timeout=10.0)
        if not raw.startswith(b'{"ok":true'):
            client.parse_reply(raw, client.socket_path())
    except (client.DaemonUnavailable, client.DaemonRefused) as exc:
        sys.stderr.write(f"flexai-hook: could not release the slice: {exc}\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] in (["-h"], ["--help"]) or not args:
        sys.stdout.write(USAGE)
        return 0 if args else 2
    if args[0] == "poststop":
        return poststop(sys.stdin.buffer.read(MAX_STATE))
    if args[0] == "createContainer":  # the hooks.d path: reserve and inject (hookinject.py)
        from .hookinject import main as inject

        return inject(args[1:])
    sys.stderr.write(f"flexai-hook: unknown stage {args[0]!r}\n{USAGE}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
