"""Publishing this node's ResourceSlice: the pure decision (`plan`: what to write, given what the
API server holds) and the thin shell that polls flexaid and talks to the API server
(`Publisher`).

One pool per node, named after it, in one ResourceSlice (slices.resource_slice). The pool's
generation goes up by one whenever its devices change, as the DRA API asks of a driver, so the
scheduler never mixes an old and a new view of the pool. The slice is created or updated at
start and whenever flexaid's cards change, and deleted at a clean stop (the scheduler then
stops allocating here); a crash leaves it, and the next start finds and reuses it.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Callable

from . import slices
from .apiserver import ApiError, ApiServer
from .claim import DRIVER, ClaimError, parse_quantity

log = logging.getLogger("flexai.dra")

CONFLICT_RETRIES = 3  # a 409 means someone wrote in between: re-read and decide again
RESYNC_POLLS = 30  # polls between full re-reads of the API server (a slice deleted by hand comes back)


def field_selector(node: str, driver: str = DRIVER) -> str:
    """The slices this agent owns, as the API server selects them (ResourceSlice field labels)."""
    return f"spec.nodeName={node},spec.driver={driver}"


def _normal(spec: Mapping) -> dict:
    """A slice spec without the pool generation, quantities as numbers: the API server may write
    a quantity back in another form ("1048576" as "1Mi"), which is no change."""
    out = copy.deepcopy(dict(spec))
    out["pool"] = {k: v for k, v in (out.get("pool") or {}).items() if k != "generation"}

    def quantities(node):
        if isinstance(node, dict):
            return {k: quantities(v) for k, v in node.items()}
        if isinstance(node, list):
            return [quantities(v) for v in node]
        if isinstance(node, str):
            try:
                return parse_quantity(node)
            except ClaimError:
                return node
        return node

    for device in out.get("devices") or ():
        if "capacity" in device:
            device["capacity"] = quantities(device["capacity"])
    return out


def same_devices(a: Mapping, b: Mapping) -> bool:
    """Whether two slice specs describe the same pool content (generation aside)."""
    return _normal(a) == _normal(b)


@dataclass(frozen=True)
class Plan:
    """What to do to make the API server hold `desired`: create or replace one object (with the
    pool's generation and, for replace, the resourceVersion it was read at), delete strays."""

    create: dict | None = None
    replace: dict | None = None
    delete: tuple[tuple[str, str], ...] = ()  # (name, uid) of this node's other slices of the driver

    @property
    def nothing(self) -> bool:
        return self.create is None and self.replace is None and not self.delete


def plan(desired: Mapping, held: Sequence[Mapping]) -> Plan:
    """`desired`: slices.resource_slice(...) (its generation is ignored); `held`: the items of
    the API server's list of this node's slices of the driver. Pure."""
    name = desired["metadata"]["name"]
    mine = next((s for s in held if s.get("metadata", {}).get("name") == name), None)
    strays = tuple((s["metadata"]["name"], s["metadata"].get("uid", "")) for s in held if s is not mine)
    top = max((int((s.get("spec", {}).get("pool") or {}).get("generation", 0)) for s in held), default=0)
    out = copy.deepcopy(dict(desired))
    if mine is not None and same_devices(mine.get("spec", {}), desired["spec"]):
        return Plan(delete=strays)
    if mine is None:
        out["spec"]["pool"]["generation"] = top + 1
        return Plan(create=out, delete=strays)
    out["spec"]["pool"]["generation"] = top + 1
    out["metadata"]["resourceVersion"] = mine["metadata"]["resourceVersion"]
    return Plan(replace=out, delete=strays)


@dataclass
class PublishStats:
    """What the publisher did, for /metrics."""

    published: int = 0  # writes (create or replace) that succeeded
    errors: int = 0  # attempts that failed
    generation: int = 0  # the pool generation the API server holds, 0 before the first publish
    devices: int = 0


class Publisher:
    """Polls flexaid's status every `interval` s and keeps this node's ResourceSlice in step;
    when the API server or flexaid fails, retries with doubling delays up to `max_backoff`,
    logging one warning per outage (and one line when it is over)."""

    def __init__(self, api: ApiServer, node: str, status: Callable[[], dict], interval: float = 10.0,
                 max_backoff: float = 60.0):
        self.api, self.node, self.status = api, node, status
        self.interval, self.max_backoff = interval, max(max_backoff, interval)
        self.published: dict | None = None  # the API server's copy after our last write or read
        self.stats = PublishStats()
        self._polls = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def desired(self) -> dict:
        return slices.resource_slice(self.node, self.status())

    def sync(self) -> str:
        """One attempt; returns what it did ("unchanged", "created", "updated"), raises ApiError
        or flexaid's errors."""
        desired = self.desired()
        self._polls += 1
        if self.published is not None and self._polls % RESYNC_POLLS and \
                same_devices(self.published["spec"], desired["spec"]):
            return "unchanged"  # nothing changed since our last write: no API traffic
        for attempt in range(CONFLICT_RETRIES):
            held = self.api.list_slices(field_selector(self.node)).get("items") or []
            step = plan(desired, held)
            try:
                for name, uid in step.delete:
                    self._delete(name, uid)
                if step.create is not None:
                    self.published = self.api.create_slice(step.create)
                    done = "created"
                elif step.replace is not None:
                    self.published = self.api.replace_slice(step.replace)
                    done = "updated"
                else:
                    self.published = next(s for s in held if s["metadata"]["name"] == desired["metadata"]["name"])
                    done = "unchanged"
            except ApiError as exc:
                if exc.code == 409 and attempt + 1 < CONFLICT_RETRIES:
                    log.debug("ResourceSlice %s: %s; reading it again", desired["metadata"]["name"], exc)
                    continue
                raise
            spec = self.published.get("spec", {})
            self.stats.generation = int((spec.get("pool") or {}).get("generation", 0))
            self.stats.devices = len(spec.get("devices") or ())
            if done != "unchanged":
                self.stats.published += 1
                log.info("ResourceSlice %s %s: pool %s generation %d, %d device(s)", desired["metadata"]["name"],
                         done, self.node, self.stats.generation, self.stats.devices)
            return done
        raise AssertionError("unreachable")

    def _delete(self, name: str, uid: str, timeout: float | None = None) -> None:
        try:
            self.api.delete_slice(name, uid or None, timeout=timeout)
        except ApiError as exc:
            if exc.code != 404:  # already gone is what we wanted
                raise

    def run(self) -> None:
        """The loop; returns when stop() is called."""
        failures, first_error = 0, ""
        while not self._stop.is_set():
            try:
                self.sync()
                if failures:
                    log.info("ResourceSlice published again after %d failed attempt(s) (first: %s)", failures,
                             first_error)
                failures, delay = 0, self.interval
            except Exception as exc:  # any failure: the agent keeps serving claims and retries
                self.stats.errors += 1
                line = " ".join(str(exc).split()) or type(exc).__name__
                if not failures:
                    first_error = line
                    log.warning("cannot publish this node's ResourceSlice: %s; retrying with backoff", line)
                else:
                    log.debug("ResourceSlice publish attempt %d failed: %s", failures + 1, line)
                failures += 1
                delay = min(self.max_backoff, min(self.interval, 1.0) * 2 ** (failures - 1))
                self.published = None  # re-read the API server on the next attempt
            self._stop.wait(delay)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="resourceslice", daemon=True)
        self._thread.start()

    def stop(self, withdraw: bool = True, timeout: float = 5.0) -> None:
        """Stop polling; with `withdraw`, delete the slice (one attempt: a stopping agent does not
        wait for a down API server; the next start reuses what it left)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if not withdraw:
            return
        name = slices.resource_slice(self.node, {"cards": []})["metadata"]["name"]
        uid = (self.published or {}).get("metadata", {}).get("uid", "")
        try:
            self._delete(name, uid, timeout=timeout)
            log.info("ResourceSlice %s deleted", name)
        except ApiError as exc:
            log.warning("could not delete ResourceSlice %s at stop: %s", name, exc)
