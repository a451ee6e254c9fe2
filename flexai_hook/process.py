"""A process's identity over time: its pid and its start time, so a reused pid is told apart.

The hooks.d path records a container's init process this way (oci/hookinject.py), and
reconciliation checks it later (daemon/reconcile.py).
"""

from __future__ import annotations


def process_start(pid: int, proc: str = "/proc") -> int | None:
    """Start time of a live process (clock ticks since boot), or None when there is none."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: fields after it follow the last ')'.
    fields = stat[stat.rfind(")") + 2:].split()
    try:
        return int(fields[19])  # field 22 overall
    except (IndexError, ValueError):
        return None
