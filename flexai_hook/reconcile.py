"""Finding slices whose container vanished without its poststop hook (runtime killed, crash).

`decide` is the pure rule; `observe` asks the real runtime about one container. A slice is
released only after its container has been seen gone (missing, or stopped with every process
gone) continuously for the grace period; a container the runtime cannot be asked about is
"unknown" and never released.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping

from .reservation import Reservation

RUNNING, GONE, UNKNOWN = "running", "gone", "unknown"


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
        if state != GONE:
            continue  # running or unknown: the clock restarts when it is next seen gone
        since = gone_since.get(cid, now)
        if now - since >= grace:
            release.append(cid)
        else:
            still_gone[cid] = since
    return sorted(release), still_gone


def observe(reservation: Reservation, timeout: float = 10.0) -> str:
    """RUNNING, GONE or UNKNOWN for the reservation's container, asking the runtime that made it."""
    runtime = reservation.runtime or {}
    binary = runtime.get("binary")
    if not binary:
        return UNKNOWN
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
    return GONE if status == "stopped" else RUNNING
