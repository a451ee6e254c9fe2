"""Rendering flexaid's status for people: a pure function from the status reply to text, and
the pace at which `flexai status --watch` asks again while flexaid does not answer."""

from __future__ import annotations

import pwd
import time
from typing import Callable

from flexai_hook.kube import describe

GIB = 1 << 30


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def user_name(uid: int) -> str | None:
    """The account name of `uid` on this host, None when it has none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def owner(uid: int, name_of: Callable[[int], str | None] = user_name) -> str:
    """The owner as people read it: uid 1000 (alice), or uid 1000 when it has no name here."""
    name = name_of(uid)
    return f"uid {uid} ({name})" if name else f"uid {uid}"


def render(status: dict, socket: str, now: float | None = None,
           name_of: Callable[[int], str | None] = user_name) -> str:
    now = time.time() if now is None else now
    lines = [f"flexaid on {socket}: {status['backend']} backend, placement policy {status['policy']}"]
    header = f"{'CARD':<5} {'NAME':<24} {'UUID':<42} {'MEMORY RESERVED':>24} {'COMPUTE':>8} {'SLICES':>6}"
    lines.append(header)
    for card in status["cards"]:
        memory = f"{_gib(card['memory_reserved'])} / {_gib(card['memory'])}"
        lines.append(
            f"{card['index']:<5} {card['name'][:24]:<24} {card['uuid'][:42]:<42} {memory:>24} "
            f"{str(card['compute_reserved']) + '%':>8} {len(card['slices']):>6}"
        )
        for s in card["slices"]:
            lines.append(
                f"  └ slice {s['slice_id']}  container {s['container_id'][:32]:<32} "
                f"{_gib(s['memory_bytes']):>10} {str(s['compute']) + '%':>5} compute  "
                f"{s['priority']:<6}  {_age(now - s.get('created', now)):>4}  "
                f"owner {owner(s.get('owner_uid', 0), name_of)}"  # who besides root may change it
                + (f"  pod {pod}" if (pod := describe(s.get("pod") or {})) else "")
            )
            usage = s.get("usage")
            if usage:
                live = [f"uses {_gib(usage['memory_used'])}"]
                if "processes" in usage:
                    live.append(f"{usage['processes']} process(es)")
                if "launches" in usage:
                    live.append(f"{usage['launches']} kernel launches")
                if "busy_seconds" in usage:
                    live.append(f"{usage['busy_seconds']:.1f}s busy")
                if "share_percent" in usage:
                    live.append(f"{usage['share_percent']:.1f}% of the card (measured)")
                if usage.get("paused"):
                    live.append("paused")
                lines.append("      " + ", ".join(live))
    if not any(card["slices"] for card in status["cards"]):
        lines.append("no slices reserved")
    return "\n".join(lines)


RETRY_FIRST = 0.25  # seconds: flexaid restarting under systemd is back within about a second
RETRY_MAX = 5.0


def retry_delay(previous: float | None) -> float:
    """The pause before the next try at a flexaid that did not answer: doubling from RETRY_FIRST
    up to RETRY_MAX, so a short restart is seen at once and a long outage costs little."""
    return RETRY_FIRST if previous is None else min(previous * 2, RETRY_MAX)
