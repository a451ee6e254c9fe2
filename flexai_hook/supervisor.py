"""How flexaid talks to its service manager: readiness, status text, watchdog, and logging.

Under systemd (Type=notify) the daemon reports READY=1 once it answers on its socket, keeps a
STATUS= line current, pings the watchdog from its main loop (so a hung loop gets restarted),
and logs to the journal with structured fields (CONTAINER_ID, SLICE_ID, CARD_UUID). Elsewhere
every call here is a no-op and logs go to stderr with the same fields as key=value suffixes.
"""

from __future__ import annotations

import logging
import os
import sys
import time

# Structured fields flexaid attaches to log records (logging `extra=`), journal-style names.
FIELDS = ("CONTAINER_ID", "SLICE_ID", "CARD_UUID")


class Supervisor:
    def __init__(self, environ: dict | None = None):
        env = os.environ if environ is None else environ
        self.enabled = bool(env.get("NOTIFY_SOCKET"))
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        watched = usec is not None and usec.isdigit() and int(usec) > 0 and pid in (None, str(os.getpid()))
        # Ping at half the timeout, as sd_watchdog_enabled(3) advises.
        self.watchdog_interval = int(usec) / 2e6 if watched else None
        self._last_ping = 0.0

    def notify(self, *assignments: str) -> None:
        if not self.enabled:
            return
        from systemd import daemon

        daemon.notify("\n".join(assignments))

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, text: str) -> None:
        self.notify(f"STATUS={text}")

    def stopping(self) -> None:
        self.notify("STOPPING=1", "STATUS=stopping")

    def tick(self, now: float | None = None) -> None:
        """Called from the main loop; pings the watchdog when due."""
        if self.watchdog_interval is None:
            return
        now = time.monotonic() if now is None else now
        if now - self._last_ping >= self.watchdog_interval:
            self._last_ping = now
            self.notify("WATCHDOG=1")

    def loop_timeout(self, default: float) -> float:
        return min(default, self.watchdog_interval) if self.watchdog_interval else default


class _FieldsFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extra = " ".join(f"{f.lower()}={getattr(record, f)}" for f in FIELDS if getattr(record, f, None))
        return f"{text} [{extra}]" if extra else text


def under_journal(environ: dict | None = None) -> bool:
    """True when stderr is connected to the journal (systemd sets JOURNAL_STREAM=dev:ino)."""
    env = os.environ if environ is None else environ
    stream = env.get("JOURNAL_STREAM", "")
    if not stream:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"


def configure_logging(level: str, journal: bool | None = None) -> logging.Handler:
    journal = under_journal() if journal is None else journal
    if journal:
        from systemd.journal import JournalHandler

        handler: logging.Handler = JournalHandler(SYSLOG_IDENTIFIER="flexaid")
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_FieldsFormatter("flexaid: %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    return handler


def fields(container_id: str | None = None, slice_id: str | None = None, card_uuid: str | None = None) -> dict:
    """`extra=` for a log call, so the journal gets searchable fields."""
    values = dict(zip(FIELDS, (container_id, slice_id, card_uuid)))
    return {k: v for k, v in values.items() if v}
