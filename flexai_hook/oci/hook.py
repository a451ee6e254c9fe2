"""flexai-hook: the OCI hook. At poststop it gives a container's slice back to flexaid.

A poststop hook cannot stop anything (the container is already gone), so every problem here is
logged on stderr, which runc passes to the engine's log, and the hook exits 0.

It runs on every sliced container's exit, so it does not parse JSON itself: it forwards the
OCI state document to flexaid inside a release request, and flexaid (which validates
everything against its schemas anyway) takes the container id from it. A state over
FORWARD_MAX is not forwarded, only its id (flexaid reads lines up to 1 MiB). A release that
meets no daemon, no answer or a "retry" answer is tried again for RETRY_SECONDS
(FLEXAI_RELEASE_RETRY), as the C front door (libflexai/launch/hook_front.c) does.
"""

from __future__ import annotations

import os
import sys
import time

from flexai_hook import client

USAGE = """usage: flexai-hook poststop|createContainer

OCI hook for flexai. Reads the container state JSON on stdin (as runc, crun and Podman's
hooks.d pass it) and releases the container's slice in flexaid. Set FLEXAI_SOCKET to use a
daemon socket other than /run/flexai/flexaid.sock.
"""
MAX_STATE = 64 << 20
FORWARD_MAX = 64 << 10  # states up to this size go to flexaid whole
RETRY_SECONDS = 10.0  # well under the poststop hook's 30 s timeout (spec.Hook)
TRY_TIMEOUT = 5.0


def release_line(state: bytes) -> bytes | None:
    """The release request for `state`, or None when `state` cannot be a JSON object (or, when
    large, has no top-level string "id")."""
    state = state.strip()
    if len(state) > FORWARD_MAX:
        import json

        try:
            cid = json.loads(state).get("id")
        except (ValueError, AttributeError, RecursionError):
            return None
        if not isinstance(cid, str):
            return None
        return b'{"op":"release","state":{"id":' + json.dumps(cid).encode() + b"}}\n"
    if not (state.startswith(b"{") and state.endswith(b"}")) or b"\n" in state:
        return None
    return b'{"op":"release","state":' + state + b"}\n"


def retryable(raw: bytes) -> bool:
    """A refusal that a moment later may succeed: flexaid's writer died or its ledger could
    not be saved."""
    return raw.startswith(b'{"ok":false') and (raw.rstrip().endswith(b'retry"}') or b"cannot save its ledger" in raw)


def retry_budget() -> float:
    try:
        seconds = float(os.environ.get("FLEXAI_RELEASE_RETRY") or RETRY_SECONDS)
    except ValueError:
        return RETRY_SECONDS
    return seconds if 0 <= seconds <= 25 else RETRY_SECONDS


def poststop(state: bytes) -> int:
    line = release_line(state)
    if line is None:
        sys.stderr.write("flexai-hook: the OCI state on stdin is not a JSON object; nothing released\n")
        return 0
    start, budget, pause = time.monotonic(), retry_budget(), 0.05
    while True:
        left = budget - (time.monotonic() - start)
        try:
            raw = client.exchange(line, timeout=max(0.1, min(TRY_TIMEOUT, left)))
        except client.DaemonUnavailable as exc:
            problem = str(exc)
        else:
            if not retryable(raw):
                if not raw.startswith(b'{"ok":true'):
                    try:
                        client.parse_reply(raw, client.socket_path())
                    except (client.DaemonUnavailable, client.DaemonRefused) as exc:
                        sys.stderr.write(f"flexai-hook: could not release the slice: {exc}\n")
                return 0
            problem = raw.decode(errors="replace").strip()
        if time.monotonic() - start + pause >= budget:
            sys.stderr.write(f"flexai-hook: could not release the slice: {problem}; "
                             f"reconciliation will release it once flexaid runs\n")
            return 0
        time.sleep(pause)
        pause = min(pause * 2, 1.0)


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
