"""Finding slices whose container vanished without its poststop hook (runtime killed, crash).

`decide` is the pure rule; `observe` asks the real runtime about one container. A container
the runtime reports *stopped* existed and its processes are gone: its poststop release failed
or has not come (the hook retries for seconds, docs/flexaid.md), so the slice is released at
once, the retry of last resort. A container the runtime does not know (or a hooks.d init
process that is gone) is released only after it has been seen gone continuously for the grace
period, since a slice is reserved before its container exists. A container the runtime cannot
be asked about is "unknown" and never released.

Asking a runtime means running it as root, so only binaries on the configured allow-list
(`reconcile.runtimes`, default `DEFAULT_RUNTIMES`) are ever run: flexaid refuses a reservation
naming another (access.py), and a ledger written before that rule may still hold one.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Collection, Mapping

from flexai_hook.process import process_start
from flexai_hook.reservation import Reservation

RUNNING, GONE, STOPPED, UNKNOWN = "running", "gone", "stopped", "unknown"
# Where distributions and engines install runc and crun (Debian/Ubuntu, Fedora, containerd.io,
# static release binaries under /usr/local).
DEFAULT_RUNTIMES = (
    "/usr/bin/runc",
    "/usr/sbin/runc",
    "/usr/local/bin/runc",
    "/usr/local/sbin/runc",
    "/usr/bin/crun",
    "/usr/local/bin/crun",
    # NVIDIA's runc wrapper, which `flexai install docker --default` chains to when it replaces an
    # `nvidia` default runtime; `state` passes through to runc.
    "/usr/bin/nvidia-container-runtime",
    "/usr/local/bin/nvidia-container-runtime",
)


def decide(
    reservations: Mapping[str, Reservation],
    observed: Mapping[str, str],
    gone_since: Mapping[str, float],
    now: float,
    grace: float,
) -> tuple[list[str], dict[str, float]]:
    """-> (container ids to release now, updated first-seen-gone times)."""
    release: list[str] = []
    still_gone: dict[str, float] = {}
    for cid in reservations:
        state = observed.get(cid, UNKNOWN)
        if state == STOPPED:
            release.append(cid)  # it existed and every process is gone: no creation to wait for
            continue
        if state != GONE:
            continue  # running or unknown: the clock restarts when it is next seen gone
        since = gone_since.get(cid, now)
        if now - since >= grace:
            release.append(cid)
        else:
            still_gone[cid] = since
    return sorted(release), still_gone


def observe_process(pid: int, start: int | None, proc: str = "/proc") -> str:
    """RUNNING while the process (same start time) exists; zombies count as gone."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            state = f.read().decode("ascii", "replace")
    except OSError:
        return GONE
    if state[state.rfind(")") + 2:state.rfind(")") + 3] in ("Z", "X"):
        return GONE
    now_start = process_start(pid, proc)
    if start is not None and now_start != start:
        return GONE  # the pid was reused
    return RUNNING


def observe(reservation: Reservation, runtimes: Collection[str] = DEFAULT_RUNTIMES, timeout: float = 10.0) -> str:
    """RUNNING, GONE or UNKNOWN for the reservation's container, asking the runtime that made it
    if that runtime is one of `runtimes` (never anything else: this runs as root)."""
    runtime = reservation.runtime or {}
    binary = runtime.get("binary")
    if not binary:
        if runtime.get("pid"):  # hooks.d path: the init process is the container's life
            return observe_process(runtime["pid"], runtime.get("pid_start"))
        return UNKNOWN
    if binary not in runtimes:
        return UNKNOWN  # kept until released by its owner or root (flexaid warns at start)
    cmd = [binary]
    if runtime.get("root"):
        cmd += ["--root", runtime["root"]]
    cmd += ["state", reservation.container_id]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return UNKNOWN
    if out.returncode != 0:
        # runc and crun both say the container "does not exist"
        return GONE if "not exist" in out.stderr or "not found" in out.stderr else UNKNOWN
    try:
        status = json.loads(out.stdout).get("status")
    except (ValueError, AttributeError):
        return UNKNOWN
    return STOPPED if status == "stopped" else RUNNING
