"""Preparing and unpreparing claims: the thin shell between the kubelet's calls, the API
server, flexaid and the CDI directory.

No state of its own: what is prepared is what flexaid's ledger holds under the claim's
reservation ids (claim.container_id) plus the claim's CDI spec file, so a restarted agent
carries on where it stopped. Preparing is idempotent (flexaid answers a held id with the slice
it holds), and unpreparing a claim the agent never saw succeeds.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from flexai_hook import atomicfile, client
from flexai_hook.oci.prepare import PrepareError, device_node
from flexai_hook.reservation import Reservation

from . import cdi
from . import claim as claim_mod
from . import metrics
from .apiserver import ApiError, ApiServer

log = logging.getLogger("flexai.dra")


@dataclass(frozen=True)
class ClaimRef:
    """A claim as the kubelet names it."""

    namespace: str
    name: str
    uid: str


@dataclass(frozen=True)
class PreparedDevice:
    request_names: tuple[str, ...]
    pool: str
    device: str
    cdi_ids: tuple[str, ...]
    share_id: str = ""


@dataclass(frozen=True)
class Prepared:
    """The answer for one claim: its devices, or an error line (and then nothing held)."""

    devices: tuple[PreparedDevice, ...] = ()
    error: str = ""


@dataclass
class Driver:
    cdi_dir: str
    socket: str  # flexaid's
    fetch_claim: Callable[[str, str], dict]  # (namespace, name) -> ResourceClaim JSON
    pool: str | None = None  # this node's pool; None: accept any
    lib: str | None = None  # libflexai's host path (default: the built one)
    lock: threading.Lock = field(default_factory=threading.Lock)  # the kubelet may call concurrently
    stats: metrics.Stats = field(default_factory=metrics.Stats)

    @classmethod
    def with_api(cls, cdi_dir: str, socket: str, api: ApiServer, **kw) -> "Driver":
        return cls(cdi_dir=cdi_dir, socket=socket, fetch_claim=api.resource_claim, **kw)

    # --- prepare ----------------------------------------------------------------------------

    def prepare(self, ref: ClaimRef) -> Prepared:
        started = time.monotonic()
        with self.lock:
            try:
                out = self._prepare(ref)
            except (claim_mod.ClaimError, ApiError, client.DaemonUnavailable, client.DaemonRefused,
                    PrepareError, OSError, ValueError) as exc:
                line = f"claim {ref.namespace}/{ref.name} ({ref.uid}): {_one_line(exc)}"
                log.warning("prepare failed: %s", line)
                out = Prepared(error=line)
        self.stats.observe("prepare", time.monotonic() - started, bool(out.error))
        return out

    def _prepare(self, ref: ClaimRef) -> Prepared:
        if not ref.uid:
            raise claim_mod.ClaimError("the kubelet named no claim UID")
        obj = self.fetch_claim(ref.namespace, ref.name)
        claim = claim_mod.from_json(obj, uid=ref.uid, pool=self.pool)
        before = set(self.held().get(claim.uid, ()))
        held: list[tuple[claim_mod.Share, Reservation]] = []
        try:
            for share in claim.shares:
                reply = client.call({"op": "reserve", "container_id": claim_mod.container_id(claim.uid, share.device),
                                     "request": share.flexai_request().to_json()}, self.socket)
                held.append((share, Reservation.from_json(reply["reservation"])))
            self._check_matches(held)
            parts = [(share.device, cdi.injection(r, tuple(device_node(p) for p in r.device_paths), self.lib))
                     for share, r in held]
            spec = cdi.spec_for(claim.uid, parts)
            os.makedirs(self.cdi_dir, exist_ok=True)
            atomicfile.write_atomically(os.path.join(self.cdi_dir, cdi.file_name(claim.uid)),
                                        json.dumps(spec, indent=1).encode() + b"\n")
        except BaseException:
            # nothing leaks from a claim that could not be prepared whole; what an earlier
            # prepare of it holds (pods may use it) stays until the kubelet unprepares it
            try:
                if not before:
                    self._release_claim(claim.uid)
                else:
                    for share, r in held:
                        if r.container_id not in before:
                            client.call({"op": "release", "container_id": r.container_id}, self.socket)
            except (client.DaemonUnavailable, client.DaemonRefused, OSError) as exc:
                log.error("claim %s: could not give back what a failed prepare reserved: %s", claim.uid, exc)
            raise
        self.stats.remember(claim.uid, metrics.claim_info(obj))
        for share, r in held:
            log.info("prepared claim %s/%s (%s): slice %s on card %d, %d bytes, %d%% compute",
                     claim.namespace, claim.name, claim.uid, r.slice_id, r.card_index, r.memory_bytes, r.compute)
        return Prepared(devices=tuple(
            PreparedDevice(request_names=(share.request,), pool=share.pool, device=share.device,
                           cdi_ids=(cdi.device_id(claim.uid, share.device),), share_id=share.share_id)
            for share, _ in held))

    @staticmethod
    def _check_matches(held: list[tuple[claim_mod.Share, Reservation]]) -> None:
        """A held slice that is not what the allocation says (an id reused across a ledger
        restore) must not be handed out as if it were."""
        for share, r in held:
            if r.card_index != share.card_index or (share.memory_bytes is not None and r.memory_bytes != share.memory_bytes) \
                    or (share.compute is not None and r.compute != share.compute):
                raise claim_mod.ClaimError(
                    f"flexaid holds slice {r.slice_id} for {r.container_id} on card {r.card_index} with "
                    f"{r.memory_bytes} bytes/{r.compute}% but the allocation says {share.device} "
                    f"{share.memory_bytes}/{share.compute}; release it (`flexai` status shows it) and retry")

    # --- unprepare --------------------------------------------------------------------------

    def unprepare(self, ref: ClaimRef) -> str:
        """"" when the claim holds nothing any more, else the error line."""
        started = time.monotonic()
        line = self._unprepare(ref)
        self.stats.observe("unprepare", time.monotonic() - started, bool(line))
        if not line:
            self.stats.forget(ref.uid)
        return line

    def _unprepare(self, ref: ClaimRef) -> str:
        with self.lock:
            try:
                released = self._release_claim(ref.uid)
                if released:
                    log.info("unprepared claim %s/%s (%s): released %s", ref.namespace, ref.name, ref.uid,
                             ", ".join(released))
                return ""
            except (client.DaemonUnavailable, client.DaemonRefused, OSError) as exc:
                line = f"claim {ref.namespace}/{ref.name} ({ref.uid}): {_one_line(exc)}"
                log.warning("unprepare failed: %s", line)
                return line

    def _release_claim(self, uid: str) -> list[str]:
        """Release every slice of the claim, then remove its CDI spec. Returns the slice ids."""
        released = []
        for cid in self.held().get(uid, ()):
            reply = client.call({"op": "release", "container_id": cid}, self.socket)
            if reply.get("released"):
                released.append(reply["reservation"]["slice_id"])
        try:
            os.unlink(os.path.join(self.cdi_dir, cdi.file_name(uid)))
        except FileNotFoundError:
            pass
        return released

    # --- what is prepared, from flexaid and the CDI folder ----------------------------------

    def held(self) -> dict[str, list[str]]:
        """Claim UID -> the reservation ids flexaid holds for it."""
        status = client.call({"op": "status"}, self.socket)["status"]
        out: dict[str, list[str]] = {}
        for card in status.get("cards", ()):
            for s in card.get("slices", ()):
                parsed = claim_mod.claim_of(s.get("container_id", ""))
                if parsed:
                    out.setdefault(parsed[0], []).append(s["container_id"])
        return out

    def spec_files(self) -> dict[str, str]:
        """Claim UID -> its CDI spec file in the CDI directory."""
        try:
            names = os.listdir(self.cdi_dir)
        except FileNotFoundError:
            return {}
        return {uid: os.path.join(self.cdi_dir, n) for n in names if (uid := cdi.uid_of_file(n))}

    def recover(self) -> dict[str, int]:
        """At start: a CDI spec whose claim holds no slice any more (the agent stopped between
        release and removal) goes; slices without a spec stay for the kubelet, which prepares
        again (rewriting the spec) or unprepares. Returns counts for the start log line."""
        held = self.held()
        stale = [path for uid, path in self.spec_files().items() if uid not in held]
        for path in stale:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        return {"claims": len(held), "stale_specs_removed": len(stale)}


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())[:500]
