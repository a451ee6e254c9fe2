"""`flexai extender`: kube-scheduler's extender over HTTP (POST <urlPrefix>/filter and
/prioritize, GET /healthz) until SIGTERM/SIGINT, then a clean stop."""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from flexai_hook.foreground import HttpThread, parse_listen, read_body, send, stop_on_signals, wait
from flexai_hook.placement import DEFAULT_POLICY, Workload

from . import decide, pod as pod_mod, protocol
from .cache import Cache, Unavailable

log = logging.getLogger("flexai.extender")

MAX_BODY = 256 << 20  # a NodeList of 5000 full Node objects is tens of MiB
_SEEN = 10_000  # pod UIDs remembered so a pod retried or prioritized is learned from once


class Extender:
    """The verbs over a Cache; one decision at a time (placement's memos are not shared-safe)."""

    def __init__(self, cache: Cache, policy: str = DEFAULT_POLICY, workload: Workload | None = None):
        self.cache, self.policy = cache, policy
        self.workload = workload or Workload()  # learns the cluster's request mix as pods come
        self._lock = threading.Lock()
        self._seen: OrderedDict[str, None] = OrderedDict()

    def _asks(self, args: protocol.Args) -> tuple:
        view, claims = self.cache.current()
        asked = pod_mod.asks(args.pod, claims)
        if asked.missing:  # a template's claim made after the last relist
            claims = dict(claims)
            for ns, name in asked.missing:
                got = self.cache.claim(ns, name)
                if got is not None:
                    claims[(ns, name)] = got
            asked = pod_mod.asks(args.pod, claims)
        return view, asked

    def _observe(self, args: protocol.Args, view, asked: pod_mod.PodAsks) -> None:
        uid = str((args.pod.get("metadata") or {}).get("uid") or "")
        if not asked.asks or not uid or uid in self._seen:
            return
        self._seen[uid] = None
        if len(self._seen) > _SEEN:
            self._seen.popitem(last=False)
        totals = [c.memory_total for n in view.nodes.values() for c in n.cards]
        self.workload.observe(decide.demand_on(view, asked.asks[0]), memory_total=max(totals) if totals else None)

    def filter(self, args: protocol.Args) -> dict:
        try:
            with self._lock:
                view, asked = self._asks(args)
                self._observe(args, view, asked)
                result = decide.filter_nodes(view, asked, args.names, self.policy, self.workload)
        except Unavailable as exc:
            log.warning("filter %s: %s", _pod_name(args.pod), exc)
            return protocol.filter_error(str(exc))
        log.info("filter %s: %s", _pod_name(args.pod), result.reason)
        return protocol.filter_result(args, set(result.keep), result.failed, result.unresolvable)

    def prioritize(self, args: protocol.Args) -> list[dict]:
        try:
            with self._lock:
                view, asked = self._asks(args)
                self._observe(args, view, asked)
                scores = decide.scores(view, asked, args.names, self.policy, self.workload)
        except Unavailable as exc:  # a prioritize error is ignored by kube-scheduler: all 0 says the same
            log.warning("prioritize %s: %s", _pod_name(args.pod), exc)
            scores = {}
        return protocol.priorities(scores, args.names)


def _pod_name(pod) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace', 'default')}/{meta.get('name', '?')}"


class Server(HttpThread):
    """The HTTP side; `listen` is "HOST:PORT" (":PORT" for every address, port 0: any free)."""

    def __init__(self, listen: str, extender: Extender):
        host, port = parse_listen(listen)
        outer = extender
        verbs = {"/filter": outer.filter, "/prioritize": outer.prioritize}

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # kube-scheduler keeps connections alive

            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path.rstrip("/") == "/healthz":
                    try:
                        outer.cache.current()
                    except Unavailable as exc:
                        return self._send(503, str(exc) + "\n", "text/plain")
                    return self._send(200, "ok\n", "text/plain")
                self._send(404, f"no {self.path}: POST /filter or /prioritize, GET /healthz\n", "text/plain")

            def do_POST(self):
                verb = verbs.get(self.path.split("?")[0].rstrip("/"))
                if verb is None:
                    return self._send(404, f"no verb {self.path}: POST /filter or /prioritize\n", "text/plain")
                body = read_body(self, MAX_BODY, "ExtenderArgs as a JSON body")
                if body is None:
                    return
                try:
                    args = protocol.parse_args(body)
                except protocol.ProtocolError as exc:
                    return self._send(400, str(exc) + "\n", "text/plain")
                self._send(200, json.dumps(verb(args)), "application/json")

            def _send(self, code: int, body: str, kind: str) -> None:
                send(self, code, kind, body)

        class Threaded(ThreadingHTTPServer):
            daemon_threads = True

        super().__init__(Threaded((host, port), Handler), "extender-http")


@dataclass(frozen=True)
class Options:
    listen: str
    policy: str = DEFAULT_POLICY
    interval: float = 5.0
    max_age: float = 30.0


def run(options: Options, cache: Cache, ready: threading.Event | None = None) -> int:
    stop = stop_on_signals(log)
    server = Server(options.listen, Extender(cache, options.policy))  # a bad address fails before any call
    cache.refresh()  # a first view now; an API server down leaves filter answering Error
    server.start()
    cache.start()
    log.info("serving the scheduler extender on http://%s (policy %s; relist every %gs)", server.address,
             options.policy, options.interval)
    if ready is not None:
        ready.set()
    try:
        wait(stop)
    finally:
        server.stop()
        cache.stop()
        log.info("stopped")
    return 0
