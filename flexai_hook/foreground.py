"""What flexai's long-running cluster commands (`flexai dra`, `extender`, `admission`) share:
they run in the foreground until SIGTERM or SIGINT, serve HTTP from a thread, and repeat a
task (a relist) on another."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def stop_on_signals(log: logging.Logger) -> threading.Event:
    """An event set (and logged) when SIGTERM or SIGINT arrives; call from the main thread."""
    stop = threading.Event()

    def on_signal(signum, _frame):
        log.info("%s: stopping", signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    return stop


def wait(stop: threading.Event) -> None:
    """Block until `stop` is set, waking each second: a signal handler runs on every Python."""
    while not stop.wait(1.0):
        pass


def parse_listen(text: str, option: str = "--listen") -> tuple[str, int]:
    """"HOST:PORT", "[::1]:PORT" or ":PORT" (every address) → (host, port); ValueError naming `option`."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{option} {text!r} is not HOST:PORT (like 0.0.0.0:9443 or :9443)")
    return host.strip("[]") or "0.0.0.0", int(port)


def send(handler: BaseHTTPRequestHandler, code: int, kind: str, body: str) -> None:
    """One whole answer with its length (the connection may be kept alive)."""
    data = body.encode()
    handler.send_response(code)
    handler.send_header("Content-Type", kind)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def read_body(handler: BaseHTTPRequestHandler, limit: int, what: str) -> bytes | None:
    """A request's body, or None after answering 400 (one line) when its Content-Length is
    missing, malformed or over `limit`; `what` names what the body should be."""
    try:
        length = int(handler.headers.get("Content-Length") or -1)
    except ValueError:
        length = -1
    if not 0 <= length <= limit:
        send(handler, 400, "text/plain", f"Content-Length must be 0..{limit}: send {what}\n")
        return None
    return handler.rfile.read(length)


class HttpThread:
    """`server.serve_forever()` on a daemon thread; stop() ends it and closes the socket."""

    def __init__(self, server: ThreadingHTTPServer, name: str):
        self.server = server
        self._thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)

    @property
    def address(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        if self._thread.is_alive():
            self._thread.join()


class Repeating:
    """`task()` every `interval` seconds on a daemon thread, from start() until stop()."""

    def __init__(self, task: Callable[[], None], interval: float, name: str):
        self.task, self.interval = task, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.task()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
