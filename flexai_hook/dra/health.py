"""The agent's opt-in HTTP listener (`flexai dra --http-listen HOST:PORT`): /healthz for the
DaemonSet's probes, /metrics for Prometheus. A thin shell: the checks and the text are passed in."""

from __future__ import annotations

import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from .metrics import CONTENT_TYPE

log = logging.getLogger("flexai.dra")


def parse_listen(text: str) -> tuple[str, int]:
    """"HOST:PORT", "[::1]:PORT" or ":PORT" (all addresses) → (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--http-listen {text!r} is not HOST:PORT (like 0.0.0.0:9402 or :9402)")
    return host.strip("[]") or "0.0.0.0", int(port)


class HealthServer:
    """`unhealthy()` → "" when healthy, else the reason (one line); `metrics()` → exposition text."""

    def __init__(self, listen: str, unhealthy: Callable[[], str], metrics: Callable[[], str]):
        host, port = parse_listen(listen)

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
                data = text.encode()
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        self.server = Server((host, port), Handler)
        self.address = f"{host}:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
