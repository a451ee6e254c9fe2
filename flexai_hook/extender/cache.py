"""The cluster view kept current: list the gpu.flexai.io ResourceSlices and all ResourceClaims,
build the view (view.py), again every `interval` seconds. A list is two GETs however large the
cluster; a watch would be fresher, but the view only has to be as fresh as the placement
quality needs: kube-scheduler's own DRA filter checks capacity against its live state, so a
stale view costs packing, never a wrong allocation."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from flexai_hook.dra.apiserver import ApiError, ApiServer
from flexai_hook.dra.claim import DRIVER
from flexai_hook.foreground import Repeating

from . import view as view_mod

log = logging.getLogger("flexai.extender")

CLAIMS = "/apis/resource.k8s.io/v1/resourceclaims"  # every namespace's


class Unavailable(RuntimeError):
    """No view recent enough to decide with; str() is one line."""


class Cache:
    def __init__(self, api: ApiServer, interval: float = 5.0, max_age: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        self.api, self.interval, self.max_age, self.clock = api, interval, max_age, clock
        self._lock = threading.Lock()
        self._view: view_mod.View | None = None
        self._claims: dict[tuple[str, str], Mapping] = {}
        self._loaded_at: float | None = None
        self._error = ""
        self._relist = Repeating(self.refresh, interval, "extender-relist")

    def refresh(self) -> None:
        """One relist; on failure the last view is kept (until max_age) and the error recorded."""
        try:
            slices = self.api.list_slices(field_selector=f"spec.driver={DRIVER}").get("items") or []
            claims = self.api.request("GET", CLAIMS).get("items") or []
        except ApiError as exc:
            with self._lock:
                self._error = str(exc)
            log.warning("cannot relist the cluster view: %s", exc)
            return
        built = view_mod.build(slices, claims)
        for line in built.skipped:
            log.warning("%s", line)
        by_name = {((c.get("metadata") or {}).get("namespace", ""), (c.get("metadata") or {}).get("name", "")): c
                   for c in claims}
        with self._lock:
            self._view, self._claims, self._loaded_at, self._error = built, by_name, self.clock(), ""

    def current(self) -> tuple[view_mod.View, dict[tuple[str, str], Mapping]]:
        """The view and the claims by (namespace, name), or Unavailable naming why."""
        with self._lock:
            if self._view is None or self._loaded_at is None or (
                    self._error and self.clock() - self._loaded_at > self.max_age):
                why = self._error or "not listed yet"
                raise Unavailable(f"no cluster view of gpu.flexai.io cards ({why}); scheduling goes on without "
                                  f"the extender while it is ignorable")
            return self._view, self._claims

    def claim(self, namespace: str, name: str) -> Mapping | None:
        """One claim straight from the API server: made after the last relist (a template's)."""
        try:
            return self.api.resource_claim(namespace, name)
        except ApiError as exc:
            if exc.code == 404:
                return None
            raise Unavailable(f"cannot read claim {namespace}/{name}: {exc}") from None

    def start(self) -> None:
        self._relist.start()

    def stop(self) -> None:
        self._relist.stop()
