"""flexaid: the one process that knows who holds which part of which card on this host.

`Service` is the logic (ledger, placement, slice files, reconciliation decisions); the socket
loop around it is in server.py, its configuration in config.py, the service-manager glue in
supervisor.py, the entry point in main.py.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from flexai_hook import placement, validation
from flexai_hook.atomicfile import write_atomically
from flexai_hook.devices import library, region, simcards
from flexai_hook.devices.board import CardBoards
from flexai_hook.devices.card import Card
from flexai_hook.oci.spec import board_dir_for, preload_file_for
from flexai_hook.request import Request

from . import access, ledger as ledger_mod, metrics, reconcile, supervisor, writer
from .batch import Batch, Persisted, answer
from .config import Config

log = logging.getLogger("flexaid")

OPS = ("reserve", "release", "status", "update", "prepare")
RESERVING_OPS = ("reserve", "prepare")  # the ops whose refusals are counted (metrics.RequestStats)
REFUSAL_REASONS = (*ledger_mod.REFUSALS, metrics.INVALID_REQUEST, metrics.RUNTIME_NOT_ALLOWED, metrics.NOT_OWNER,
                   metrics.PREPARE_FAILED, metrics.NOT_SAVED)


class Service:
    """Applies protocol messages to the ledger. Every change is on disk before it is answered.

    Changes are group-committed: `handle` applies a request in memory and notes the slice
    files it needs; `take_batch` collects everything applied since the last one, `plan` says
    what it needs on disk (slice files, one journal append and fdatasync for the batch),
    `writer.execute` does it, `persisted` and `finish` take the outcome back, and only then are
    the batch's answers sent (`batch.answer`). The server has the plan executed by its writer
    process while the loop applies the next requests; `commit` does it all in this process.
    A failed ledger write rolls back everything not yet on disk and every answer of it becomes
    an error, so an acknowledged change is always on disk.
    """

    def __init__(self, config: Config, cards: Sequence[Card]):
        self.config = config
        self.cards = list(cards)
        self.backend = self.cards[0].backend if self.cards else "none"
        self.file = ledger_mod.LedgerFile(Path(config.state_dir) / "ledger.json")
        self.ledger = self.file.load(self.cards)  # a ledger that overcommits a card is corrupt too
        # Fold the journal into a fresh checkpoint: a batch a crash cut short (never answered)
        # must not sit in front of the batches this run appends.
        self.file.save(self.ledger)
        self.saved = self.ledger  # what is on disk
        # The request mix fgd/flexai placement plans for: learned from the slices held at start
        # and from every new request after (the last placement.Workload window of them).
        self.workload = placement.Workload()
        for held in sorted(self.ledger.reservations.values(), key=lambda r: r.created):
            try:
                ledger_mod.observe(self.workload, Request.from_json(held.request), self.cards)
            except (ValueError, KeyError, TypeError):
                pass  # a ledger written before requests were recorded: nothing to learn
        self._created: list = []  # reservations applied since the last batch (slice files to write)
        self._removed: list = []  # releases applied since the last batch (slice dirs to remove)
        # container id -> (reservation, its writer.plan_entry), made when it is applied: the
        # loop makes them while the writer is busy with the batch before, not between batches
        self._files: dict[str, tuple] = {}
        self._host_files_written = False
        self.boards = CardBoards(board_dir_for(config.slices_dir), cards)  # card boards (board.py)
        self.gone_since: dict[str, float] = {}  # reconciliation: container id -> first seen gone
        self.runtimes = frozenset(config.reconcile_runtimes)
        self.stats = metrics.RequestStats(REFUSAL_REASONS, OPS)  # refusals and latency, for /metrics
        _warn_unlisted_runtimes(self.ledger.reservations.values(), self.runtimes)
        os.makedirs(config.slices_dir, exist_ok=True)
        os.chmod(config.slices_dir, 0o711)  # slices are reached by their bind mounts, not listed
        self._sync_slice_dirs()
        self.boards.flush()  # the rosters of the slices held at start, written here (nothing when none)
        for op in OPS:  # build the validators now, not on the first container start
            validation.validator("protocol.schema.json", f"{op}_message")
            validation.fast_validator("protocol.schema.json", f"{op}_message")

    def _sync_slice_dirs(self) -> None:
        """Slice files for every reservation, none for slices the ledger does not hold."""
        wanted = {r.slice_id: r for r in self.ledger.reservations.values()}
        for name in os.listdir(self.config.slices_dir):
            if name not in wanted:
                shutil.rmtree(os.path.join(self.config.slices_dir, name), ignore_errors=True)
        for reservation in wanted.values():
            self._write_slice_files(reservation)

    def _host_files(self) -> None:
        """What every slice of this host shares: /etc/ld.so.preload for sliced containers,
        the simulator's card list (simulated backend) and the card boards directory
        (libflexai/core/controller.h). Checked on each batch that creates slices: a stat or two."""
        preload = preload_file_for(self.config.slices_dir)
        if not self._host_files_written or not os.path.exists(preload):
            text = library.preload_text().encode()
            if not os.path.exists(preload) or Path(preload).read_bytes() != text:
                write_atomically(preload, text, sync=False)
        if self.backend == "simulated":
            conf = Path(library.sim_dir_for(self.config.slices_dir)) / simcards.CONFIG_NAME
            # the cards do not change while flexaid runs: compare once, then only check it is there
            if not self._host_files_written or not conf.exists():
                text = simcards.render_config(self.cards)
                if not conf.exists() or conf.read_text() != text:
                    simcards.write_sim_dir(conf.parent, self.cards)
        if not self._host_files_written or not os.path.isdir(self.boards.directory):
            self.boards.make()
            self.boards.rebuild(self.ledger.reservations.values())  # written with this batch (plan)
        self._host_files_written = True

    def _write_slice_files(self, reservation) -> None:
        """Rewrite a held slice's files in place (at start, on update): each file replaced
        atomically under running containers; a valid region keeps its live accounting and
        only takes the new limits."""
        self._host_files()
        os.makedirs(reservation.slice_dir, mode=writer.SLICE_DIR_MODE, exist_ok=True)
        os.chmod(reservation.slice_dir, writer.SLICE_DIR_MODE)
        conf = reservation.slice_conf().encode()
        write_atomically(os.path.join(reservation.slice_dir, "slice.conf"), conf, sync=False)  # tmpfs
        limits = writer.region_limits(reservation)
        # in place: running containers see the limits file through a bind mount of its inode
        region.write_limits(os.path.join(reservation.slice_dir, region.LIMITS_NAME), limits)
        region.create_region(os.path.join(reservation.slice_dir, "region"), limits)

    def take_batch(self) -> Batch | None:
        """Everything applied since the last batch, or None when nothing needs writing."""
        if self.ledger is self.saved and not self._created and not self._removed:
            return None
        batch = Batch(self.ledger, self._created, self._removed)
        self._created, self._removed = [], []
        return batch

    def plan(self, batch: Batch) -> writer.Plan:
        """What `batch` needs on disk, as plain data for writer.execute (here or in the
        writer process)."""
        if batch.created:
            self._host_files()
        checkpoint = self.file.wants_checkpoint()
        number, journal = self.file.delta(self.saved, batch.ledger)
        return writer.Plan(
            slices=[self._plan_entry(r) for r in batch.created],
            ledger_path=str(self.file.path),
            journal_path=str(self.file.journal),
            batch=number,
            journal_lines=[] if checkpoint else journal,
            ledger_lines=self.file.lines(batch.ledger) if checkpoint else None,
            removes=[r.slice_dir for r in batch.removed],
            boards=self.boards.plan(),
        )

    def _plan_entry(self, reservation) -> tuple:
        made = self._files.pop(reservation.container_id, None)
        if made is not None and made[0] is reservation:
            return made[1]
        return writer.plan_entry(reservation)

    def persisted(self, batch: Batch, plan: writer.Plan, outcome: writer.Outcome) -> Persisted:
        """What became of `batch`, from the outcome of its plan."""
        self.file.journal_dirty = outcome.dirty
        if outcome.boards_failed:
            self.boards.failed(outcome.boards_failed)
        if outcome.error:
            log.error("cannot save ledger %s: %s; the changes not yet on disk are undone", self.file.path,
                      outcome.error)
            return Persisted(f"flexaid cannot save its ledger {self.file.path}: {outcome.error}")
        if plan.ledger_lines is not None:
            self.file.journal_bytes = 0  # a checkpoint emptied the journal
        else:
            self.file.journal_bytes += sum(len(line) + 1 for _, line in plan.journal_lines)
        ledger, failed = batch.ledger, {}
        for reservation in batch.created:
            cid = reservation.container_id
            if cid not in outcome.failed:
                continue
            log.error("cannot write slice files for %s in %s: %s", cid, reservation.slice_dir, outcome.failed[cid],
                      extra=supervisor.fields(cid, reservation.slice_id, reservation.card_uuid))
            failed[cid] = (f"flexaid cannot write the slice files of {cid} in {reservation.slice_dir}: "
                           f"{outcome.failed[cid]}")
            if ledger.reservations.get(cid) is reservation:
                ledger = ledger_mod.release(ledger, cid)[0]
        return Persisted(None, failed, ledger)

    def finish(self, batch: Batch, result: Persisted) -> None:
        """Take `result` of persisting `batch` into the in-memory state."""
        if result.error:
            # Changes applied after the batch were built on it: they go too (their answers,
            # held until their own batch, become errors; see the server).
            self.ledger = self.saved
            self._created, self._removed = [], []
            self._files.clear()
            self.boards.failed(self.boards.directories())  # nothing of the plan was written
            self.boards.rebuild(self.ledger.reservations.values())  # written with the next batch
            return
        if self.ledger is batch.ledger:  # nothing applied since
            self.ledger = result.ledger
        self.saved = result.ledger
        for cid in result.failed:  # a reservation whose files failed is gone (Service.persisted)
            lost = next(r for r in batch.created if r.container_id == cid)
            if self.ledger.reservations.get(cid) is lost:
                self.ledger = ledger_mod.release(self.ledger, cid)[0]
            self._removed = [r for r in self._removed if r is not lost]
            self.boards.drop(lost)  # its slot goes with the next batch

    def commit(self) -> Persisted | None:
        """Persist everything applied so far, in this thread. None when nothing changed."""
        batch = self.take_batch()
        if batch is None:
            return None
        plan = self.plan(batch)
        result = self.persisted(batch, plan, writer.execute(plan))
        self.finish(batch, result)
        return result

    def handle_and_commit(self, message: object, peer: access.Peer | None = None) -> dict:
        reply = self.handle(message, peer)
        cid = message.get("container_id") if isinstance(message, dict) else None
        op = message.get("op") if isinstance(message, dict) else None
        return self.settle(reply, op, cid, self.commit())

    def settle(self, reply: dict, op: object, container_id: str | None, result: Persisted | None) -> dict:
        """`reply` as it may go out once its batch is persisted (batch.answer); a reservation
        that did not reach the disk is a refusal too, and counted as one."""
        final = answer(reply, container_id, result)
        if final is not reply and op in RESERVING_OPS and reply.get("ok") and not final.get("ok"):
            self.stats.refused(metrics.NOT_SAVED)
        return final

    def handle(self, message: object, peer: access.Peer | None = None) -> dict:
        """Apply one protocol message on behalf of `peer` (its SO_PEERCRED; None: an
        in-process caller, which acts as root)."""
        uid = access.ROOT_UID if peer is None else peer.uid
        op = message.get("op") if isinstance(message, dict) else None
        if op not in OPS:
            return {"ok": False, "error": f"invalid request: op must be one of {', '.join(OPS)}, not {op!r}"[:300]}
        problem = validation.problem("protocol.schema.json", message, f"{op}_message")
        if problem:
            if op in RESERVING_OPS:
                return self._refuse(message.get("container_id"), metrics.INVALID_REQUEST, f"invalid request: {problem}")
            return {"ok": False, "error": f"invalid request: {problem}"}
        if op == "reserve":
            return self._reserve(
                message["container_id"], Request.from_json(message["request"]), message.get("runtime", {}), uid,
                pod=message.get("pod"),
            )
        if op == "release":
            # From a poststop hook the id comes inside the OCI state it forwards.
            cid = message["container_id"] if "container_id" in message else message["state"]["id"]
            return self._refused_change(uid, "release", cid) or self._release(cid)
        if op == "update":
            return (self._refused_change(uid, "update", message["container_id"])
                    or self._update(message["container_id"], message.get("compute"), message.get("paused")))
        if op == "prepare":
            return self._prepare(message, uid)
        return {"ok": True, "status": self.status()}

    def _refused_change(self, uid: int, op: str, container_id: str) -> dict | None:
        """The refusal (logged) when `uid` may not release or update `container_id`'s slice."""
        why = self._change_refused(uid, op, container_id)
        if why is None:
            return None
        held = self.ledger.reservations[container_id]
        log.warning("%s", why, extra=supervisor.fields(container_id, held.slice_id, held.card_uuid))
        return {"ok": False, "error": why}

    def _change_refused(self, uid: int, op: str, container_id: str) -> str | None:
        """Why `uid` may not change `container_id`'s slice (access.py); None if it may, or if no
        slice is held (nothing to change)."""
        held = self.ledger.reservations.get(container_id)
        if held is None or uid == access.ROOT_UID:
            return None
        return access.change_refused(uid, op, container_id, held.owner_uid)

    def _refuse(self, container_id: object, reason: str, error: str) -> dict:
        """A reserve or prepare refused: the one place such a refusal is logged and counted
        (metrics.RequestStats), so each is logged once."""
        self.stats.refused(reason)
        cid = container_id if isinstance(container_id, str) and len(container_id) <= 256 else None
        log.warning("refused %s (%s): %s", cid or "a container", reason, error, extra=supervisor.fields(cid))
        return {"ok": False, "error": error}

    def _prepare(self, message: dict, uid: int = access.ROOT_UID) -> dict:
        """reserve + the config.json edits, for flexai-runtime's C front door (flexai_hook/oci/prepare.py
        has the rules; runtime.py applies the same ones when Python starts the container)."""
        from flexai_hook.oci import cdi_annotations, prepare
        from flexai_hook.request import RequestError

        container_id, spec = message["container_id"], message["spec"]
        try:
            request = prepare.request_of(spec)
        except RequestError as exc:
            return self._refuse(container_id, metrics.INVALID_REQUEST, str(exc))
        # Said in the answer, before "spec": the C front door then leaves the start to Python,
        # which shows them (runtime.py); logged here once, since an engine may drop that stderr.
        warnings = prepare.warnings_of(spec)
        for line in warnings:
            log.warning("container %s: %s", container_id, line, extra=supervisor.fields(container_id))
        said = {"warnings": warnings} if warnings else {}
        settings = message.get("settings") or {}
        if request is None:
            log.debug("no slice for %s: %s", container_id, prepare.no_request_reason(spec),
                      extra=supervisor.fields(container_id))
            if not cdi_annotations.has_devices(prepare.annotations_of(spec)):
                return {"ok": True, **said, "spec": None}
        if uid != access.ROOT_UID and "cdi_spec_dirs" in settings:
            # flexaid reads those files as root and would show what is in them; a user's own
            # flexai-runtime (the Python path) reads them with the user's rights instead
            return self._refuse(container_id, metrics.INVALID_REQUEST,
                                "cdi_spec_dirs in the runtime config is honoured for root's requests "
                                "only; the Python runtime reads the spec directories itself")
        if request is None:
            # CDI devices named in cdi.k8s.io/ annotations (a DRA claim's): applied, no slice
            try:
                edited = prepare.named_devices_spec(spec, settings)
            except (OSError, prepare.PrepareError) as exc:
                return self._refuse(container_id, metrics.PREPARE_FAILED,
                                    prepare.named_devices_failure(container_id, exc))
            # "slice" before "spec": the front door then runs the real runtime in its place
            return {"ok": True, **said, "slice": "none", "spec": edited}
        reply = self._reserve(container_id, request, message["runtime"], uid, pod=prepare.pod_of(spec))
        if not reply["ok"]:
            return reply
        try:
            reservation = self.ledger.reservations[container_id]
            prepared = prepare.prepare_container(spec, reservation, message["hook"], message.get("socket"),
                                                 settings, runtime_binary=message["runtime"].get("binary", ""))
        except (OSError, prepare.PrepareError) as exc:
            self._release(container_id, "could not prepare; released")
            return self._refuse(container_id, metrics.PREPARE_FAILED,
                                f"could not prepare {container_id} for its slice: {exc}")
        answer: dict = {"ok": True, **said}
        # before "spec": the front door reads these plain strings, then the spec to the end
        if prepared.notice:
            log.warning("%s", prepared.notice, extra=supervisor.fields(container_id, reservation.slice_id,
                                                                       reservation.card_uuid))
            answer["notice"] = prepared.notice
        if prepared.runtime:
            answer["runtime"] = prepared.runtime
        answer["spec"] = prepared.spec
        return answer

    def _update(self, container_id: str, compute: int | None, paused: bool | None) -> dict:
        """Change a running slice's compute share and/or pause it: the ledger (so placement
        stays honest), slice.conf and the region (the library obeys at its next launch)."""
        current = self.ledger.reservations.get(container_id)
        if current is None:
            return {"ok": False, "error": f"no slice is reserved for container {container_id}"}
        updated = current
        if compute is not None and compute != current.compute:
            _, used = self.ledger.used(current.card_index)
            if current.priority != ledger_mod.BEST_EFFORT and used - current.compute + compute > 100:
                return {"ok": False, "error": (
                    f"card {current.card_index} has {100 - used + current.compute}% compute free for "
                    f"{container_id}, {compute}% asked")}
            from flexai_hook.record import replace as record_replace

            updated = record_replace(current, compute=compute)
            self.ledger = dataclasses.replace(
                self.ledger, reservations={**self.ledger.reservations, container_id: updated})
            self._write_slice_files(updated)  # slice.conf and the region's share (generation bumped)
            self.boards.put(updated)  # the share other slices on the card read
        if paused is not None:
            try:
                region.set_compute(Path(updated.slice_dir) / "region", paused=paused)
            except (OSError, ValueError) as exc:
                return {"ok": False, "error": f"cannot pause slice {updated.slice_id}: {exc}"}
        log.info("updated slice %s of %s: %d%% compute%s", updated.slice_id, container_id, updated.compute,
                 "" if paused is None else (", paused" if paused else ", resumed"),
                 extra=supervisor.fields(container_id, updated.slice_id, updated.card_uuid))
        return {"ok": True, "reservation": updated.to_json()}

    def _reserve(self, container_id: str, request: Request, runtime: dict, uid: int = access.ROOT_UID,
                 pod: dict | None = None) -> dict:
        why = access.runtime_refused(runtime, self.runtimes)
        if why is not None:
            return self._refuse(container_id, metrics.RUNTIME_NOT_ALLOWED, why)
        why = self._change_refused(uid, "reserve", container_id)  # an id already held: the owner's
        if why is not None:
            return self._refuse(container_id, metrics.NOT_OWNER, why)
        try:
            new, reservation = ledger_mod.reserve(
                self.ledger,
                self.cards,
                container_id,
                request,
                policy=self.config.policy,
                slice_root=self.config.slices_dir,
                now=time.time(),
                runtime=runtime,
                workload=self.workload,
                owner_uid=uid,
                pod=pod,
            )
        except ledger_mod.PlacementError as exc:
            return self._refuse(container_id, exc.reason, str(exc))
        if new is not self.ledger:
            ledger_mod.observe(self.workload, request, self.cards)
            self._created.append(reservation)  # its files are written with its batch (plan)
            self.boards.put(reservation)  # listed on its card's board when the batch is on disk
            self._files[container_id] = (reservation, writer.plan_entry(reservation))
            self.file.line(reservation)  # its journal line, cached for the batch's delta
            self.ledger = new
            if log.isEnabledFor(logging.INFO):  # skip building the journal fields when nobody logs them
                from flexai_hook.kube import describe

                pod = describe(reservation.pod)
                log.info("reserved slice %s for %s%s on card %d (%s): %d bytes, %d%% compute",
                         reservation.slice_id, container_id, f" (pod {pod})" if pod else "",
                         reservation.card_index, reservation.card_uuid,
                         reservation.memory_bytes, reservation.compute,
                         extra=supervisor.fields(container_id, reservation.slice_id, reservation.card_uuid))
        return {"ok": True, "reservation": reservation.to_json()}

    def _release(self, container_id: str, reason: str = "released") -> dict:
        new, gone = ledger_mod.release(self.ledger, container_id)
        if gone is None:
            return {"ok": True, "released": False}
        self.ledger = new
        self.gone_since.pop(container_id, None)
        self._removed.append(gone)
        self.boards.drop(gone)
        if log.isEnabledFor(logging.INFO):
            log.info("%s slice %s of %s on card %d", reason, gone.slice_id, container_id, gone.card_index,
                     extra=supervisor.fields(container_id, gone.slice_id, gone.card_uuid))
        return {"ok": True, "released": True, "reservation": gone.to_json()}

    def status(self) -> dict:
        cards = []
        for card in self.cards:
            memory, compute = self.ledger.used(card.index)
            cards.append(
                {
                    "index": card.index,
                    "uuid": card.uuid,
                    "name": card.name,
                    "memory": card.memory,
                    "memory_reserved": memory,
                    "compute_reserved": compute,
                    "device_paths": list(card.device_paths),
                    "slices": [self._slice_status(r) for r in self.ledger.on_card(card.index)],
                }
            )
        return {"backend": self.backend, "policy": self.config.policy, "cards": cards}

    def _slice_status(self, reservation) -> dict:
        data = reservation.to_json()
        usage = live_usage(reservation.slice_dir)
        if usage is not None:
            data["usage"] = usage
        return data

    def summary(self) -> str:
        """The STATUS= line systemd shows."""
        held = len(self.ledger.reservations)
        return f"{held} slice(s) on {len(self.cards)} {self.backend} card(s), policy {self.config.policy}"

    def apply_observations(self, observed: dict[str, str], now: float) -> list[str]:
        """Release slices whose containers stayed gone past the grace period (see reconcile.py)."""
        releases, self.gone_since = reconcile.decide(
            self.ledger.reservations, observed, self.gone_since, now, self.config.reconcile_grace
        )
        for cid in releases:
            if cid in self.ledger.reservations:
                self._release(cid, reason="reconciled: container gone, released")
        return releases  # written with the server's next batch


def _warn_unlisted_runtimes(reservations, runtimes: frozenset[str]) -> None:
    """Slices recorded (by an older flexaid) with a runtime binary not on the allow-list: never
    run by reconciliation, so they stay until their owner or root releases them. Say so once."""
    for r in reservations:
        binary = (r.runtime or {}).get("binary")
        if binary and binary not in runtimes:
            log.warning("slice %s of %s names runtime %s, which is not in %s: reconciliation will not "
                        "run it, so the slice stays until its poststop hook or root releases it",
                        r.slice_id, r.container_id, binary, access.CONFIG_KEY,
                        extra=supervisor.fields(r.container_id, r.slice_id, r.card_uuid))


def live_usage(slice_dir: str) -> dict | None:
    """What the slice's processes really use, read from its region (None until libflexai made one)."""
    region_path = os.path.join(slice_dir, "region")
    if not os.path.exists(region_path):
        return None
    try:
        return region.read_region(Path(region_path)).to_json()
    except (OSError, ValueError) as exc:
        log.warning("cannot read region %s: %s", region_path, exc)
        return None
