"""Who holds which part of which card: a pure ledger, and the file that makes it survive restarts.

The core (`Ledger`, `reserve`, `release`, `replay`) is plain data in, plain data out;
`LedgerFile` is the thin shell around the files: a checkpoint replaced atomically (temp file,
fsync, rename, fsync of the directory) and a journal of the batches since, each appended and
fdatasync'd before any of its changes is acknowledged, so a crash at any point leaves either
the old or the new ledger on disk, never a mix.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable, Mapping, Sequence

import orjson

from flexai_hook import placement
from flexai_hook.atomicfile import fsync_dir, write_atomically
from flexai_hook.devices.inventory import Card
from flexai_hook.request import Request
from flexai_hook.reservation import Reservation

LEDGER_VERSION = 1


class PlacementError(RuntimeError):
    """The request cannot be placed; str() is the one line the user sees, `reason` what kind of
    refusal it is (one of REFUSALS, the label of flexaid's refusal counter)."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


# Why a placement is refused. NEVER_FITS and NO_ROOM are told apart because their fixes differ:
# ask for less, or wait for slices to be released.
NEVER_FITS = "never_fits"  # larger than every card it may go on, even with the card empty
NO_ROOM = "no_room"  # would fit an empty card, but the cards are too full right now
NO_SUCH_CARD = "no_such_card"  # pinned to a card this host does not have
ID_CONFLICT = "id_conflict"  # the container id holds a slice under another runtime root
REFUSALS = (NEVER_FITS, NO_ROOM, NO_SUCH_CARD, ID_CONFLICT)


BEST_EFFORT = "low"  # the priority whose compute share is not guaranteed


@dataclass(frozen=True)
class Ledger:
    reservations: Mapping[str, Reservation] = field(default_factory=dict)  # by container id

    def on_card(self, index: int) -> list[Reservation]:
        return sorted(
            (r for r in self.reservations.values() if r.card_index == index),
            key=lambda r: (r.created, r.slice_id),
        )

    def used(self, index: int) -> tuple[int, int]:
        """(memory bytes, guaranteed compute percent) reserved on card `index`.

        `low` slices are best-effort: they yield the card while higher-priority slices have
        work (docs/compute.md), so their share is not a guarantee and does not count here.
        That is how a card is time-shared among more slices than its compute could give each
        at once; memory always counts."""
        memory, compute, _ = self._per_card.get(index, (0, 0, 0))
        return memory, compute

    def holders(self, index: int) -> int:
        """How many slices card `index` holds."""
        return self._per_card.get(index, (0, 0, 0))[2]

    @cached_property
    def _per_card(self) -> dict[int, tuple[int, int, int]]:
        # One pass for all cards, once per ledger value (ledgers are immutable): placement asks
        # every card's figures on every reservation.
        totals: dict[int, tuple[int, int, int]] = {}
        for r in self.reservations.values():
            memory, compute, count = totals.get(r.card_index, (0, 0, 0))
            totals[r.card_index] = (memory + r.memory_bytes,
                                    compute + (r.compute if r.priority != BEST_EFFORT else 0), count + 1)
        return totals


_STATES: dict[tuple, placement.CardState] = {}  # card_states' memo: CardStates are immutable values
_STATES_LIMIT = 4096


def card_states(ledger: Ledger, cards: Sequence[Card], request: Request) -> list[placement.CardState]:
    """The cards as the placement functions see them, in the units this request is measured in.

    A request sized as a share of a card is compared in thousandths of each card's memory so
    that cards of different sizes are ranked fairly; an absolute size is compared in bytes.

    flexaid asks this on every reservation, mostly about card states it has seen before (the
    same few shapes coming and going), so each CardState is made once per card, usage and
    unit, and then reused (building the frozen dataclasses was most of a reservation's cost).
    """
    relative = request.memory_bytes is None
    per_card = ledger._per_card
    states = []
    for card in cards:
        mem_used, compute_used, held = per_card.get(card.index, _UNUSED)
        key = (card.index, card.uuid, card.name, card.memory, mem_used, compute_used, not held, relative)
        state = _STATES.get(key)
        if state is None:
            total, free = card.memory, card.memory - mem_used
            if relative and card.memory:
                total, free = 1000, max(0, free) * 1000 // card.memory
            state = placement.CardState(
                index=card.index,
                uuid=card.uuid,
                model=card.name,
                memory_total=total,
                memory_free=max(0, free),
                compute_free=max(0, (100 - compute_used) * 10),
                whole_free=not held,
            )
            if len(_STATES) >= _STATES_LIMIT:
                _STATES.clear()
            _STATES[key] = state
        states.append(state)
    return states


_UNUSED = (0, 0, 0)


def demand_of(request: Request, cards: Sequence[Card]) -> placement.Demand:
    """The request in the units placement compares it in (see card_states)."""
    if request.memory_bytes is not None:
        memory = request.memory_bytes
        # Compute follows memory per card when unset; use the smallest card's figure for ranking
        # and check the exact figure on the chosen card afterwards.
        compute = max(request.resolve(c.memory)[1] for c in cards) if cards else 100
    else:
        memory, compute = request.resolve(1000)
    if request.priority == BEST_EFFORT:
        compute = 0  # best-effort: needs only memory (see Ledger.used)
    return placement.Demand(memory=memory, compute=compute * 10, pin=request.device)


def observe(workload: placement.Workload, request: Request, cards: Sequence[Card]) -> None:
    """Teach `workload` one more request, in the units placement compares it in."""
    demand = demand_of(request, cards)
    relative = request.memory_bytes is None
    workload.observe(demand, memory_total=1000 if relative else max((c.memory for c in cards), default=None))


def never_fits(request: Request, cards: Sequence[Card]) -> str | None:
    """Why `request` cannot fit on any card it may go on even with that card empty (one line
    with the fix), or None when some card could hold it once it has room. Only an absolute
    memory size can be too large: every share is at most one whole card."""
    allowed = [c for c in cards if request.device is None or request.device in (str(c.index), c.uuid)]
    if not allowed or any(request.resolve(c.memory)[0] <= c.memory for c in allowed):
        return None
    largest = max(allowed, key=lambda c: (c.memory, -c.index))
    need = request.resolve(largest.memory)[0]
    if request.device is not None:
        return (f"the slice asks {_gib(need)} of memory and can never fit on card {largest.index} "
                f"({largest.uuid}) it is pinned to, which has {_gib(largest.memory)}; ask for at most that")
    return (f"the slice asks {_gib(need)} of memory and can never fit on this host: its largest card, "
            f"card {largest.index} ({largest.uuid}), has {_gib(largest.memory)}; ask for at most that, "
            f"or for a share of a card (FLEXAI_FRACTION, or FLEXAI_MEMORY=0.5)")


def _refusal(request: Request, ledger: Ledger, cards: Sequence[Card]) -> PlacementError:
    """The refusal of a request no card can take now: never (never_fits), or not right now."""
    never = never_fits(request, cards)
    if never is not None:
        return PlacementError(never, NEVER_FITS)
    return PlacementError(_no_fit_message(request, ledger, cards), NO_ROOM)


def _no_fit_message(request: Request, ledger: Ledger, cards: Sequence[Card]) -> str:
    parts = []
    for card in cards:
        mem_used, compute_used = ledger.used(card.index)
        need_mem, need_compute = request.resolve(card.memory)
        parts.append(
            f"card {card.index} ({card.uuid}) has {_gib(card.memory - mem_used)} and "
            f"{100 - compute_used}% compute free, needs {_gib(need_mem)} and {need_compute}%"
        )
    pin = f" pinned to {request.device}" if request.device is not None else ""
    return ("no card can fit the slice" + pin + " right now: " + "; ".join(parts)
            + "; it fits once enough slices are released")


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB"


def reserve(
    ledger: Ledger,
    cards: Sequence[Card],
    container_id: str,
    request: Request,
    *,
    policy: str,
    slice_root: str,
    now: float,
    runtime: Mapping | None = None,
    new_id: Callable[[], str] = lambda: secrets.token_hex(6),
    workload: placement.Workload | None = None,
    owner_uid: int = 0,
    pod: Mapping | None = None,
) -> tuple[Ledger, Reservation]:
    """Place `request` for `container_id`. Idempotent: a known container gets its reservation.

    `workload` is the request mix fgd and flexai plan for (the caller learns it, see
    `observe`); None means placement's default mix. `owner_uid` is recorded as the slice's
    owner (who besides root may change it: flexai_hook/daemon/access.py); `pod` the Kubernetes pod's
    name and namespace (kube.pod_of), shown in status and metrics."""
    existing = ledger.reservations.get(container_id)
    if existing is not None:
        held, asked = (existing.runtime or {}).get("root"), (runtime or {}).get("root")
        if existing.runtime.get("binary") and (runtime or {}).get("binary") and held != asked:
            # Same id under another runtime root (e.g. another containerd namespace): a
            # different container, which must not silently share the first one's slice.
            raise PlacementError(
                f"container id {container_id!r} already holds slice {existing.slice_id} under runtime "
                f"root {held or '(default)'}; ids must be unique across runtime roots", ID_CONFLICT)
        return ledger, existing
    if request.device is not None and not any(
        request.device in (str(c.index), c.uuid) for c in cards
    ):
        known = ", ".join(f"{c.index} ({c.uuid})" for c in cards)
        raise PlacementError(f"no card {request.device!r} on this host; cards are: {known}", NO_SUCH_CARD)
    chosen = placement.choose(card_states(ledger, cards, request), demand_of(request, cards), policy, workload)
    card = next((c for c in cards if chosen and c.index == chosen[0]), None)
    if card is None:
        raise _refusal(request, ledger, cards)
    memory, compute = request.resolve(card.memory)
    mem_used, compute_used = ledger.used(card.index)
    guaranteed = compute if request.priority != BEST_EFFORT else 0
    if mem_used + memory > card.memory or compute_used + guaranteed > 100:
        raise _refusal(request, ledger, cards)
    slice_id = new_id()
    reservation = Reservation(
        container_id=container_id,
        slice_id=slice_id,
        card_index=card.index,
        card_uuid=card.uuid,
        card_name=card.name,
        card_memory=card.memory,
        memory_bytes=memory,
        compute=compute,
        priority=request.priority,
        device_paths=card.device_paths,
        slice_dir=os.path.join(slice_root, slice_id),
        created=now,
        request=request.to_json(),
        runtime=dict(runtime or {}),
        backend=card.backend,
        compute_mode=request.compute_mode,
        owner_uid=owner_uid,
        pod=dict(pod or {}),
    )
    return _with(ledger, {**ledger.reservations, container_id: reservation}, reservation, 1), reservation


def release(ledger: Ledger, container_id: str) -> tuple[Ledger, Reservation | None]:
    """Drop `container_id`'s reservation. Idempotent: releasing twice returns None the second time."""
    if container_id not in ledger.reservations:
        return ledger, None
    remaining = dict(ledger.reservations)
    gone = remaining.pop(container_id)
    return _with(ledger, remaining, gone, -1), gone


def _with(ledger: Ledger, reservations: dict, changed: Reservation, sign: int) -> Ledger:
    """The ledger holding `reservations`: `ledger`'s plus (sign 1) or minus (-1) `changed`.
    Its per-card totals, if `ledger` has worked them out, are carried over with the one card
    changed, rather than summed again over every reservation on the next placement."""
    new = Ledger(reservations)
    totals = ledger.__dict__.get("_per_card")  # cached_property's slot: absent until asked for
    if totals is not None:
        totals = dict(totals)
        memory, compute, count = totals.get(changed.card_index, (0, 0, 0))
        count += sign
        if count:
            totals[changed.card_index] = (
                memory + sign * changed.memory_bytes,
                compute + sign * (changed.compute if changed.priority != BEST_EFFORT else 0), count)
        else:
            totals.pop(changed.card_index, None)
        new.__dict__["_per_card"] = totals
    return new


class LedgerCorrupt(RuntimeError):
    pass


def card_problem(ledger: Ledger, cards: Sequence[Card]) -> str | None:
    """Why `ledger` cannot be true of these cards, or None. A slice on a card this host does
    not have (by index and UUID), or a card holding more memory, or more guaranteed compute,
    than it has. Memory is strict; `low` slices time-share compute and do not count toward
    100 % (Ledger.used). flexaid's start and `flexai recover` both judge with this."""
    by_index = {c.index: c for c in cards}
    for r in sorted(ledger.reservations.values(), key=lambda r: r.container_id):
        card = by_index.get(r.card_index)
        if card is None or r.card_uuid != card.uuid:
            return (f"slice {r.slice_id} of {r.container_id} is on card {r.card_index} ({r.card_uuid}), "
                    f"which this host does not have")
    for card in cards:
        memory, compute = ledger.used(card.index)
        if memory > card.memory:
            return f"card {card.index} ({card.uuid}) holds {_gib(memory)} of slices but has {_gib(card.memory)}"
        if compute > 100:
            return f"card {card.index} ({card.uuid}) holds {compute}% guaranteed compute, more than 100%"
    return None


JOURNAL_CHECKPOINT_BYTES = 1 << 20  # the journal is folded into ledger.json past this size


class LedgerFile:
    """The ledger on disk: `ledger.json` (a checkpoint, replaced atomically) and
    `ledger.journal` beside it (each batch of changes since, appended and fdatasync'd).

    Journal lines are {"b": n, "put": reservation}, {"b": n, "drop": container id} and a
    closing {"b": n, "end": true}; only batches with their end line count, so a batch cut
    short by a crash (never acknowledged) is ignored. Replaying a journal onto the checkpoint
    it was folded into gives the same ledger, so a crash between writing the checkpoint and
    emptying the journal loses nothing. `load` is pure reading; flexaid checkpoints at start.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.journal = self.path.with_suffix(".journal")
        self._lines: dict[str, tuple[Reservation, str]] = {}  # container id -> (as saved, its line)
        self.next_batch = 1
        self.journal_bytes = 0  # appended since the last checkpoint (as this process knows)
        self.journal_dirty = False  # a failed append could not be cut off: checkpoint next

    def load(self, cards: Sequence[Card] | None = None) -> Ledger:
        """The ledger on disk; with `cards`, a ledger that does not fit them is corrupt too
        (card_problem), named by the file that made it so."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            raw = None
        ledger = Ledger()
        if raw is not None:
            try:
                data = json.loads(raw)
                if data.get("version") != LEDGER_VERSION:
                    raise ValueError(f"unknown version {data.get('version')!r}")
                reservations = [Reservation.from_json(r) for r in data["reservations"]]
            except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
                raise self._corrupt(self.path, exc) from None
            ledger = Ledger({r.container_id: r for r in reservations})
            self._check(ledger, cards, self.path)
        try:
            journal = self.journal.read_bytes()
        except FileNotFoundError:
            return ledger
        try:
            ledger, last = replay(ledger, journal)
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise self._corrupt(self.journal, exc) from None
        self._check(ledger, cards, self.journal)
        self.next_batch = last + 1
        return ledger

    @classmethod
    def _check(cls, ledger: Ledger, cards: Sequence[Card] | None, path: Path) -> None:
        problem = None if cards is None else card_problem(ledger, cards)
        if problem:
            raise cls._corrupt(path, problem)

    @staticmethod
    def _corrupt(path: Path, why: Exception | str) -> LedgerCorrupt:
        what = f"is inconsistent ({why})" if isinstance(why, str) else f"is unreadable ({type(why).__name__}: {why})"
        return LedgerCorrupt(
            f"ledger {path} {what}; flexaid will not start empty and forget live slices: "
            f"run `flexai recover` to rebuild it from the running containers"
        )

    def line(self, r: Reservation) -> str:
        """`r` as one JSON line (cached while `r` is held)."""
        held = self._lines.get(r.container_id)
        if held is None or held[0] is not r:
            line = orjson.dumps(r.to_json(), option=orjson.OPT_SORT_KEYS).decode()
            held = self._lines[r.container_id] = (r, line)
        return held[1]

    def lines(self, ledger: Ledger) -> list[tuple[str, str]]:
        """(container id, JSON line) per reservation, for `render`. Reservations are
        immutable: one serialised once is reused until it is replaced."""
        out = [(cid, self.line(r)) for cid, r in ledger.reservations.items()]
        self._lines = {cid: self._lines[cid] for cid, _ in out}
        return out

    def wants_checkpoint(self) -> bool:
        return self.journal_dirty or self.journal_bytes >= JOURNAL_CHECKPOINT_BYTES

    def delta(self, old: Ledger, new: Ledger) -> tuple[int, list[tuple[str, str]]]:
        """(batch number, [(container id, journal line)]) taking `old` to `new`, end line
        included (its container id is ""). Reservations are compared by identity: a changed
        one is a new object."""
        n = self.next_batch
        self.next_batch += 1
        out = []
        for cid, r in new.reservations.items():
            if old.reservations.get(cid) is not r:
                out.append((cid, f'{{"b":{n},"put":{self.line(r)}}}'))
        for cid in old.reservations:
            if cid not in new.reservations:
                self._lines.pop(cid, None)
                out.append((cid, f'{{"b":{n},"drop":{json.dumps(cid)}}}'))
        out.append(("", f'{{"b":{n},"end":true}}'))
        return n, out

    def save(self, ledger: Ledger) -> None:
        """A checkpoint: the whole ledger to ledger.json, then an empty journal."""
        write_atomically(self.path, render([line for _, line in self.lines(ledger)]))
        reset_journal(self.journal)
        self.journal_bytes, self.journal_dirty = 0, False


def replay(ledger: Ledger, journal: bytes) -> tuple[Ledger, int]:
    """`ledger` with the journal's complete batches applied in order, and the last batch
    number seen. What follows the last end line (a batch a crash cut short) is ignored; an
    unreadable line before it is corruption (ValueError)."""
    reservations = dict(ledger.reservations)
    pending: dict[int, list[dict]] = {}
    last, bad = 0, None
    for number, raw in enumerate(journal.split(b"\n")):
        if not raw.strip():
            continue
        try:
            entry = json.loads(raw)
            batch = int(entry["b"])
        except (ValueError, KeyError, TypeError) as exc:
            bad = bad or (number + 1, exc)
            continue
        if bad is not None:
            raise ValueError(f"line {bad[0]}: {bad[1]}")
        last = max(last, batch)
        if not entry.get("end"):
            pending.setdefault(batch, []).append(entry)
            continue
        for change in pending.pop(batch, []):
            if "put" in change:
                r = Reservation.from_json(change["put"])
                reservations[r.container_id] = r
            else:
                reservations.pop(change["drop"], None)
    return Ledger(reservations), last


def reset_journal(path: Path) -> None:
    """An empty journal at `path`, durably (its directory entry too)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(os.path.dirname(path) or ".")


def append_journal(path: str, data: bytes) -> None:
    """Append one batch and fdatasync it. On failure the file is cut back to where it was,
    so a later batch never follows a partial one; if even that fails, JournalDirty."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    try:
        size = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fdatasync(fd)
        except OSError:
            try:
                os.ftruncate(fd, size)
                os.fsync(fd)
            except OSError as exc:
                raise JournalDirty(str(exc.strerror or exc)) from None
            raise
    finally:
        os.close(fd)
    if size == 0:  # maybe just created: its directory entry must be durable too
        fsync_dir(os.path.dirname(path) or ".")


class JournalDirty(OSError):
    """A failed append left part of a batch in the journal: only a checkpoint clears it."""


def render(lines: Sequence[str]) -> bytes:
    """The ledger file from its reservations' JSON lines: one reservation per line, readable
    and grep-able at 3 a.m. (json's indent= would run its pure-Python encoder, which cost
    more than the fsync)."""
    if not lines:
        return f'{{"version": {LEDGER_VERSION}, "reservations": []}}\n'.encode()
    body = ",\n".join(lines)
    return f'{{"version": {LEDGER_VERSION}, "reservations": [\n{body}\n]}}\n'.encode()
