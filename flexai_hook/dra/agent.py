"""`flexai dra`: the node agent in the foreground until SIGTERM/SIGINT, then a clean stop
(the node's ResourceSlice deleted, sockets removed so the kubelet deregisters the plugin)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from flexai_hook import client
from flexai_hook.foreground import stop_on_signals, wait

from . import metrics
from .apiserver import ApiServer
from .driver import Driver
from .health import HealthServer
from .plugin import Plugin, Sockets
from .publish import Publisher

log = logging.getLogger("flexai.dra")


@dataclass(frozen=True)
class Options:
    sockets: Sockets
    cdi_dir: str
    socket: str  # flexaid's
    api: ApiServer
    node: str | None = None  # this node's pool name; None: any
    lib: str | None = None
    publish_interval: float = 10.0  # seconds between polls of flexaid's cards; 0: do not publish
    publish_max_backoff: float = 60.0
    http_listen: str | None = None  # "HOST:PORT": serve /healthz and /metrics


def run(options: Options, ready: threading.Event | None = None) -> int:
    stop = stop_on_signals(log)
    driver = Driver.with_api(options.cdi_dir, options.socket, options.api, pool=options.node, lib=options.lib)
    try:
        found = driver.recover()
    except (client.DaemonUnavailable, client.DaemonRefused) as exc:
        log.error("%s", exc)
        return 1
    plugin = Plugin(driver, options.sockets)
    plugin.start()
    log.info("serving %s (registration %s); %d claim(s) held, %d stale CDI spec(s) removed; CDI specs in %s",
             options.sockets.plugin, options.sockets.registration, found["claims"], found["stale_specs_removed"],
             options.cdi_dir)
    publisher = None
    if options.node and options.publish_interval > 0:
        # after the sockets: a slice the scheduler allocates from must have a plugin to prepare it
        publisher = Publisher(options.api, options.node, lambda: client.call({"op": "status"}, options.socket)["status"],
                              options.publish_interval, options.publish_max_backoff)
        publisher.start()
    else:
        log.warning("no --node (env NODE_NAME) or --publish-interval 0: this node's ResourceSlice is not published")
    http = None
    if options.http_listen:
        def flexaid_status() -> dict | None:
            try:
                return client.call({"op": "status"}, options.socket, timeout=2)["status"]
            except (client.DaemonUnavailable, client.DaemonRefused, OSError):
                return None

        def unhealthy() -> str:
            reason = plugin.unhealthy()
            if reason:
                return reason
            try:
                client.call({"op": "status"}, options.socket, timeout=2)
            except (client.DaemonUnavailable, client.DaemonRefused, OSError) as exc:
                return f"flexaid does not answer on {options.socket}: {' '.join(str(exc).split())}"
            return ""

        def scrape() -> str:
            published = None
            if publisher is not None:
                p = publisher.stats
                published = metrics.Publishing(p.published, p.errors, p.generation)
            return metrics.render(flexaid_status(), driver.stats, published)

        try:
            http = HealthServer(options.http_listen, unhealthy, scrape)
        except (OSError, ValueError) as exc:
            if publisher is not None:
                publisher.stop(withdraw=False)
            plugin.stop()
            log.error("cannot serve /healthz and /metrics: %s", exc)
            return 1
        http.start()
        log.info("serving /healthz and /metrics on http://%s", http.address)
    if ready is not None:
        ready.set()
    try:
        wait(stop)
    finally:
        if http is not None:
            http.stop()
        if publisher is not None:
            publisher.stop()
        plugin.stop()
        log.info("stopped; sockets removed")
    return 0
