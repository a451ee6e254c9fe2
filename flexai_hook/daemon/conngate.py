"""How many connections flexaid holds, from whom, and for how long (attack 3 of issue 14).

Every idle client holds one of flexaid's descriptors. Without limits, ~16 500 idle connections
at the unit's LimitNOFILE=16384 made accept() fail with EMFILE on every loop turn: 100 % CPU,
a log line per turn, and no container could start or stop. So:

- a total cap below the descriptor limit and a per-uid cap (root exempt: the runtimes and
  hooks run as root); the last `headroom` slots are root's, and root at the total cap evicts
  the oldest idle connection of the uid holding the most;
- idle connections close after `idle` seconds, half-sent lines after `partial` seconds;
- EMFILE/ENFILE stop accepting (the listeners leave the selector) until a descriptor frees or
  a second passes, instead of spinning on a listener that stays readable;
- one log line per period, with counts, however hard the flood.

`limits_for` and `admit` are pure; `Gate` is the bookkeeping the server loop calls.
"""

from __future__ import annotations

import logging
import selectors
from collections import Counter
from dataclasses import dataclass

log = logging.getLogger("flexaid.server")

LOG_PERIOD = 10.0  # seconds between two flood summaries
RESUME_AFTER = 1.0  # seconds before trying accept() again after EMFILE when nothing closed
ACCEPT_BATCH = 64  # accepts per readable event: a backlog drains without a loop turn each
IDLE_TIMEOUT = 60.0  # seconds an idle connection is kept (flexaid.json connections.idle_timeout)
PARTIAL_TIMEOUT = 10.0  # a request line is sent at once; one that stays half-sent is holding a slot


@dataclass(frozen=True)
class Limits:
    total: int  # connections flexaid holds at most (API and metrics together)
    per_uid: int  # from one non-root uid
    headroom: int  # of the total, the last ones only root may take
    idle: float  # seconds a connection may stay silent
    partial: float  # seconds a half-sent request line may stay unfinished


def limits_for(fd_free: int, total: int | None = None, per_uid: int | None = None,
               idle: float = 60.0, partial: float = 10.0) -> Limits:
    """The limits when `fd_free` descriptors are left under RLIMIT_NOFILE; `total`/`per_uid`
    from the config when set. flexaid may open a few files later (a new writer's pipes, the
    metrics clients of an accept in flight): a margin stays free."""
    spare = min(1024, max(16, fd_free // 8))
    ceiling = max(4, fd_free - 16)  # whatever the config says, never up to the limit itself
    total = min(total or max(4, fd_free - spare), ceiling)
    per_uid = min(per_uid or max(1, total // 4), total)
    return Limits(total=total, per_uid=per_uid, headroom=min(64, max(1, total // 8)), idle=idle, partial=partial)


def admit(uid: int | None, held_total: int, held_by_uid: int, limits: Limits) -> str | None:
    """None: take the connection. "evict": root at the total cap, make room. Else the reason it
    is refused. `uid` None is a metrics (TCP) client."""
    if uid == 0:
        return None if held_total < limits.total else "evict"
    who = "metrics clients" if uid is None else f"uid {uid}"
    if held_by_uid >= limits.per_uid:
        return f"too many connections from {who} ({held_by_uid} open, at most {limits.per_uid})"
    if held_total >= limits.total - limits.headroom:
        return f"flexaid holds {held_total} connections, its limit for non-root clients"
    return None


class Gate:
    """Connection counts by uid, the accept pause after EMFILE, the timeout sweep and the
    rate-limited summary line."""

    def __init__(self, limits: Limits, now: float):
        self.limits = limits
        self.by_uid: Counter = Counter()
        self.uid_of: dict[int, int | None] = {}  # id(conn) -> uid
        self.partial_since: dict[int, float] = {}  # id(conn) -> when its unfinished line was first seen
        self.paused: list = []  # listeners taken out of the selector after EMFILE
        self.resume_at = 0.0
        self.freed = False  # a connection closed since the pause
        self.next_sweep = now
        self.period = min(1.0, limits.partial / 4, limits.idle / 4)  # between two sweeps
        self.next_log = now
        self.counts: Counter = Counter()  # what happened since the last summary

    # -- accepting -------------------------------------------------------------------------

    def admit(self, uid: int | None) -> str | None:
        return admit(uid, len(self.uid_of), self.by_uid[uid], self.limits)

    def victim(self, conns: dict) -> object | None:
        """For root at the cap: the oldest idle connection of the non-root uid holding most."""
        crowded = [u for u, n in self.by_uid.most_common() if u != 0 and n]
        for uid in crowded[:1]:
            idle = [c for c in conns.values()
                    if self.uid_of.get(id(c), 0) == uid and not c.waiting and not c.outbuf]
            if idle:
                return min(idle, key=lambda c: c.last)
        return None

    def opened(self, conn, uid: int | None) -> None:
        self.uid_of[id(conn)] = uid
        self.by_uid[uid] += 1

    def closed(self, conn) -> None:
        if id(conn) in self.uid_of:
            uid = self.uid_of.pop(id(conn))
            self.by_uid[uid] -= 1
            if not self.by_uid[uid]:
                del self.by_uid[uid]
        self.partial_since.pop(id(conn), None)
        self.freed = True

    def note(self, what: str) -> None:
        self.counts[what] += 1

    # -- out of descriptors ----------------------------------------------------------------

    def out_of_fds(self, listener, sel: selectors.BaseSelector, now: float) -> None:
        """Stop watching `listener`: it stays readable while accept() fails, which would spin."""
        self.note("out of descriptors")
        if listener not in self.paused:
            sel.unregister(listener)
            self.paused.append(listener)
        self.resume_at, self.freed = now + RESUME_AFTER, False

    def maybe_resume(self, sel: selectors.BaseSelector, now: float, tags: dict) -> None:
        if self.paused and (self.freed or now >= self.resume_at):
            for listener in self.paused:
                sel.register(listener, selectors.EVENT_READ, tags[listener.fileno()])
            self.paused = []

    # -- timeouts and the summary ------------------------------------------------------------

    def expired(self, conns: dict, now: float) -> list:
        """Connections past their timeout (none waiting for an answer), at most a few times a
        second: the sweep is a pass over every connection."""
        if now < self.next_sweep:
            return []
        self.next_sweep = now + self.period
        out = []
        for conn in conns.values():
            if conn.waiting:
                continue
            if conn.inbuf:
                since = self.partial_since.setdefault(id(conn), now)
                if now - since > self.limits.partial:
                    self.note("closed half-sent")
                    out.append(conn)
                    continue
            else:
                self.partial_since.pop(id(conn), None)
            if now - conn.last > self.limits.idle:
                self.note("closed idle")
                out.append(conn)
        return out

    def maybe_log(self, now: float) -> None:
        if now < self.next_log or not self.counts:
            return  # the first event after a quiet period is told at once, then one line a period
        self.next_log = now + LOG_PERIOD
        happened = ", ".join(f"{what} {n}" for what, n in sorted(self.counts.items()))
        top = [f"{'metrics' if u is None else f'uid {u}'}: {n}" for u, n in self.by_uid.most_common(3)]
        log.warning("connection limits: %s since the last such line (at most one each %.0f s); "
                    "%d open (%s), limits %d total, %d per uid", happened, LOG_PERIOD, len(self.uid_of),
                    ", ".join(top) or "none", self.limits.total, self.limits.per_uid)
        self.counts.clear()
