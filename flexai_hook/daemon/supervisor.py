"""How flexaid talks to its service manager: readiness, status text, watchdog, and logging.

Under systemd (Type=notify) the daemon reports READY=1 once it answers on its socket, keeps a
STATUS= line current, pings the watchdog from its main loop (so a hung loop gets restarted),
and logs to the journal with structured fields (CONTAINER_ID, SLICE_ID, CARD_UUID); the journal
stamps each entry itself. Elsewhere every call here is a no-op and each log line starts with
its local time (ISO 8601, milliseconds, UTC offset) and carries the same fields as key=value
suffixes: on stderr, or in a file flexaid rotates by size (`log` in flexaid.json).
"""

from __future__ import annotations

import logging
import logging.handlers
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

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """Local time as ISO 8601 with milliseconds and the UTC offset: 2025-01-31T09:15:02.042+01:00."""
        t = time.localtime(record.created)
        offset = time.strftime("%z", t)
        return f"{time.strftime('%Y-%m-%dT%H:%M:%S', t)}.{int(record.msecs):03d}{offset[:3]}:{offset[3:]}"


def line_formatter() -> logging.Formatter:
    """How a log line reads outside the journal: time, program, level, message, [fields]."""
    return _FieldsFormatter("%(asctime)s flexaid: %(levelname)s %(message)s")


LOG_MAX_BYTES = 10 << 20  # defaults of flexaid.json's log.max_bytes and log.backups
LOG_BACKUPS = 5


class LogFileError(RuntimeError):
    """The configured log file cannot be opened; str() is one line."""


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


def configure_logging(level: str, journal: bool | None = None, log_file: str | None = None,
                      max_bytes: int = LOG_MAX_BYTES, backups: int = LOG_BACKUPS) -> logging.Handler:
    """Send flexaid's log to `log_file` (rotated past `max_bytes`, keeping `backups` old files),
    else to the journal when stderr is connected to it, else to stderr."""
    journal = under_journal() if journal is None else journal
    if log_file:
        try:
            os.makedirs(os.path.dirname(log_file) or ".", exist_ok=True)
            handler: logging.Handler = logging.handlers.RotatingFileHandler(
                log_file, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        except OSError as exc:
            raise LogFileError(f"cannot open the log file {log_file} ({exc.strerror or exc}); "
                               f"fix its folder's permissions or change log.file in flexaid's config") from None
        handler.setFormatter(line_formatter())
        # a crash's traceback goes where the log is, not to a stderr nobody reads
        sys.excepthook = lambda kind, value, tb: logging.getLogger("flexaid").critical(
            "flexaid crashed", exc_info=(kind, value, tb))
    elif journal:
        from systemd.journal import JournalHandler

        handler = JournalHandler(SYSLOG_IDENTIFIER="flexaid")
        handler.setFormatter(logging.Formatter("%(message)s"))  # the journal keeps the time
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(line_formatter())
    root = logging.getLogger()
    for old in root.handlers:
        if old is not handler:
            old.close()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    return handler


def fields(container_id: str | None = None, slice_id: str | None = None, card_uuid: str | None = None) -> dict:
    """`extra=` for a log call, so the journal gets searchable fields."""
    values = dict(zip(FIELDS, (container_id, slice_id, card_uuid)))
    return {k: v for k, v in values.items() if v}
