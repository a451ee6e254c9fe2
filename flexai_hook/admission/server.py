"""`flexai admission`: the mutating admission webhook over HTTPS (POST /mutate, GET /healthz)
until SIGTERM/SIGINT.

The card sizes come from the gpu.flexai.io ResourceSlices, listed again every `interval`
seconds by a helper thread (the answers never wait for the API server), or from a fixed list
(`--card-memory`). A list that fails keeps the last sizes for `max_age` seconds; after that,
and before the first list, claims go through unchanged with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from flexai_hook.dra.apiserver import ApiError, ApiServer
from flexai_hook.dra.claim import DRIVER
from flexai_hook.foreground import HttpThread, Repeating, parse_listen, read_body, send, stop_on_signals, wait

from . import defaults, review

log = logging.getLogger("flexai.admission")

MAX_BODY = 3 << 20  # the API server's own limit on an object is ~1.5 MiB; a review holds it once or twice


class Sizes:
    """The cluster's flexai card sizes: fixed, or listed from the API server and kept fresh."""

    def __init__(self, api: ApiServer | None = None, fixed: Sequence[defaults.Card] | None = None,
                 interval: float = 30.0, max_age: float = 300.0, clock: Callable[[], float] = time.monotonic):
        if (api is None) == (fixed is None):
            raise ValueError("card sizes come from the API server or from a fixed list, one of them")
        self.api, self.interval, self.max_age, self.clock = api, interval, max_age, clock
        self._cards: list[defaults.Card] | None = list(fixed) if fixed is not None else None
        self._at = clock() if fixed is not None else None
        self._error = "" if fixed is not None else "not listed yet"
        self._lock = threading.Lock()
        self._relist = Repeating(self.refresh, interval, "admission-relist") if api is not None else None

    def refresh(self) -> None:
        if self.api is None:
            return
        try:
            slices = self.api.list_slices(field_selector=f"spec.driver={DRIVER}").get("items") or []
        except ApiError as exc:
            log.warning("cannot list %s ResourceSlices: %s", DRIVER, exc)
            with self._lock:
                self._error = str(exc)
            return
        cards = defaults.cards_of(slices)
        with self._lock:
            if cards != self._cards:
                log.info("card sizes: %s", ", ".join(f"{c.memory} bytes ({c.vendor})" for c in cards) or "none")
            self._cards, self._at, self._error = cards, self.clock(), ""

    def current(self) -> tuple[list[defaults.Card] | None, str]:
        """(the cards, "") or (None, why they are not known)."""
        with self._lock:
            if self._cards is None or self._at is None:
                return None, self._error
            if self._error and self.clock() - self._at > self.max_age:
                return None, f"no list of ResourceSlices for {self.clock() - self._at:.0f}s: {self._error}"
            return self._cards, ""

    def start(self) -> None:
        if self._relist is not None:
            self._relist.start()

    def stop(self) -> None:
        if self._relist is not None:
            self._relist.stop()


class ServingCertificate:
    """The TLS context, with the certificate and key loaded again when their files change: a
    Secret that cert-manager rotates is swapped in the mounted volume, and new connections
    get the new certificate without a restart. Called from the accept thread only."""

    def __init__(self, cert_file: str, key_file: str):
        self.cert_file, self.key_file = cert_file, key_file
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._stamp = self._stat()
        try:
            self.context.load_cert_chain(cert_file, key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot load the serving certificate {cert_file} / key {key_file}: {exc}") from None

    def _stat(self) -> tuple | None:
        try:
            return tuple((s.st_ino, s.st_mtime_ns, s.st_size) for s in map(os.stat, (self.cert_file, self.key_file)))
        except OSError:
            return None

    def current(self) -> ssl.SSLContext:
        stamp = self._stat()
        if stamp is not None and stamp != self._stamp:
            self._stamp = stamp  # tried once per change: a half-written pair is tried again when it changes
            try:
                self.context.load_cert_chain(self.cert_file, self.key_file)
                log.info("serving certificate %s reloaded", self.cert_file)
            except (OSError, ssl.SSLError) as exc:
                log.warning("cannot reload the serving certificate %s / key %s (%s); serving the one loaded before",
                            self.cert_file, self.key_file, exc)
        return self.context


class Server(HttpThread):
    """HTTPS on `listen` ("HOST:PORT", ":PORT" for every address; port 0: any free one)."""

    def __init__(self, listen: str, sizes: Sizes, cert_file: str, key_file: str):
        host, port = parse_listen(listen)
        certificate = ServingCertificate(cert_file, key_file)
        self.sizes = sizes
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # the API server keeps connections alive
            timeout = 30  # a client that connects and stalls (even in the TLS handshake) loses its thread

            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path.rstrip("/") == "/healthz":
                    cards, why = outer.sizes.current()
                    if cards is None:
                        return self._send(503, f"card sizes unknown: {why}\n", "text/plain")
                    return self._send(200, "ok\n", "text/plain")
                self._send(404, f"no {self.path}: POST /mutate, GET /healthz\n", "text/plain")

            def do_POST(self):
                if self.path.split("?")[0].rstrip("/") != "/mutate":
                    return self._send(404, f"no {self.path}: POST /mutate\n", "text/plain")
                body = read_body(self, MAX_BODY, "an AdmissionReview")
                if body is None:
                    return
                try:
                    request = review.parse(body)
                except review.ReviewError as exc:
                    return self._send(400, str(exc) + "\n", "text/plain")
                cards, why = outer.sizes.current()
                try:
                    out = review.answer(request, cards, why)
                except Exception as exc:  # noqa: BLE001 - a bug must not block claims: allow unchanged
                    log.exception("cannot complete %s", _name(request))
                    out = review.unchanged(request["uid"], f"flexai admission internal error: {type(exc).__name__}; "
                                                           f"the claim goes on as written")
                if out["response"].get("patch"):
                    log.info("completed %s %s", (request.get("kind") or {}).get("kind"), _name(request))
                self._send(200, json.dumps(out), "application/json")

            def _send(self, code: int, body: str, kind: str) -> None:
                send(self, code, kind, body)

        class TLSServer(ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self):  # the handshake runs in the request's thread, not the accept loop
                sock, addr = super().get_request()
                return certificate.current().wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

            def handle_error(self, request, client_address):  # one line, not a traceback per bad client
                import sys

                log.warning("connection from %s ended: %s", client_address[0] if client_address else "?",
                            sys.exc_info()[1])

        super().__init__(TLSServer((host, port), Handler), "admission-https")


def _name(request) -> str:
    """namespace/name of the object under review (a template's claim may have only generateName)."""
    meta = (request.get("object") or {}).get("metadata") or {}
    return f"{request.get('namespace') or '-'}/{request.get('name') or meta.get('generateName') or '?'}"


@dataclass(frozen=True)
class Options:
    listen: str
    cert_file: str
    key_file: str


def run(options: Options, sizes: Sizes, ready: threading.Event | None = None) -> int:
    stop = stop_on_signals(log)
    server = Server(options.listen, sizes, options.cert_file, options.key_file)  # bad address/cert: before serving
    sizes.refresh()
    server.start()
    sizes.start()
    log.info("serving the admission webhook on https://%s/mutate", server.address)
    if ready is not None:
        ready.set()
    try:
        wait(stop)
    finally:
        server.stop()
        sizes.stop()
        log.info("stopped")
    return 0
