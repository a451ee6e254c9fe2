"""The agent's opt-in HTTP listener (`flexai dra --http-listen HOST:PORT`): /healthz for the
DaemonSet's probes, /metrics for Prometheus. A thin shell: the checks and the text are passed in."""

from __future__ import annotations

import logging
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from flexai_hook import foreground

from .metrics import CONTENT_TYPE

log = logging.getLogger("flexai.dra")


class HealthServer(foreground.HttpThread):
    """`unhealthy()` → "" when healthy, else the reason (one line); `metrics()` → exposition text."""

    def __init__(self, listen: str, unhealthy: Callable[[], str], metrics: Callable[[], str]):
        host, port = foreground.parse_listen(listen, "--http-listen")

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # a probe every few seconds is not worth a line
                pass

            def do_GET(self):
                path = self.path.split("?", 1)[0]
                try:
                    if path in ("/healthz", "/livez", "/readyz"):
                        reason = unhealthy()
                        self._send(503 if reason else 200, "text/plain; charset=utf-8",
                                   (reason or "ok") + "\n")
                    elif path == "/metrics":
                        self._send(200, CONTENT_TYPE, metrics())
                    else:
                        self._send(404, "text/plain; charset=utf-8", "not found: try /healthz or /metrics\n")
                except Exception as exc:  # a scrape must not take the agent down
                    log.warning("HTTP %s failed: %s", path, exc)
                    self._send(500, "text/plain; charset=utf-8", f"{type(exc).__name__}: {exc}\n")

            def _send(self, code: int, kind: str, text: str) -> None:
                foreground.send(self, code, kind, text)

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        super().__init__(Server((host, port), Handler), "http")
