"""The card boards that libflexai's compute controllers share (libflexai/core/controller.h).

One directory per card under the boards directory (/run/flexai/boards, root's, 0700):

- `roster`: who is on the card: one 32-byte entry per slice (key = FNV-1a of the slice id,
  share, priority). flexaid writes it from its ledger, in place (running libraries map it),
  with the generation odd while it writes. Root's, 0644, read-only in every container: no
  tenant can change another slice's share or priority, or raise its own.
- one slot file per slice, named by its key in 16 hex digits (0666, one page): that slice's
  own state, written by its processes. Its container gets it read-write, mounted over the
  read-only card directory; every other slice on the card maps it read-only.

A slice keeps its roster index while it is on the card (the library remembers it), so an
update rewrites entries in place and new slices take free indices. The pure part
(`slice_key`, `assign`, `roster_image`) is tested as such; `CardBoards` writes the files.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .region import PRIORITIES

log = logging.getLogger("flexaid.board")

ROSTER_MAGIC = 0x3254534F5258464C  # "LFXROST2"
VERSION = 2
SLOTS = 64
ROSTER_NAME = "roster"
HEADER = struct.Struct("<QIIQ40x")  # magic, version, size, generation; 64 bytes
ENTRY = struct.Struct("<QII16x")  # key, share, priority; 32 bytes
ROSTER_SIZE = HEADER.size + SLOTS * ENTRY.size
FILE_SIZE = 4096  # roster and slot files: one page each
GENERATION_OFFSET = 16
DIR_MODE = 0o700  # host users cannot reach the 0666 slot files; runtimes (root) mount them
CARD_DIR_MODE = 0o755


@dataclass(frozen=True)
class Entry:
    """One slice on a card's roster."""

    key: int
    share: int
    priority: int


def slice_key(slice_id: str) -> int:
    """The slice's key on the board: FNV-1a of its id, never 0 (libflexai's flexai_ctl_key)."""
    h = 1469598103934665603
    for byte in slice_id.encode():
        h ^= byte
        h = (h * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h or 1


def slot_name(key: int) -> str:
    return f"{key:016x}"


def card_dir_name(card_uuid: str, card_index: int) -> str:
    """A card's board directory name, as libflexai/core/gate.c board_open derives it."""
    return card_uuid.replace("/", "_") if card_uuid else f"card{card_index}"


def entries_for(reservations: Iterable) -> dict[tuple[str, int], dict[int, Entry]]:
    """The roster entries each card should list, keyed by (card uuid, card index)."""
    cards: dict[tuple[str, int], dict[int, Entry]] = {}
    for r in reservations:
        key = slice_key(r.slice_id)
        priority = PRIORITIES[r.priority] if isinstance(r.priority, str) else int(r.priority)
        cards.setdefault((r.card_uuid, r.card_index), {})[key] = Entry(key, max(1, min(100, r.compute)), priority)
    return cards


def assign(previous: Sequence[Entry | None], wanted: dict[int, Entry]) -> list[Entry | None]:
    """Roster positions for `wanted`: a slice already listed keeps its index (its library
    remembers it), new ones take the lowest free indices, in `wanted`'s order; past SLOTS
    they are left out (their libraries then hold them to their own share as a hard cap)."""
    slots: list[Entry | None] = list(previous) + [None] * (SLOTS - len(previous))
    placed = set()
    for i, entry in enumerate(slots):
        if entry is not None and entry.key in wanted:
            slots[i] = wanted[entry.key]
            placed.add(entry.key)
        else:
            slots[i] = None
    free = (i for i, entry in enumerate(slots) if entry is None)
    for key, entry in wanted.items():
        if key in placed:
            continue
        i = next(free, None)
        if i is None:
            break
        slots[i] = entry
    return slots


def roster_image(slots: Sequence[Entry | None], generation: int) -> bytes:
    """The roster file's first ROSTER_SIZE bytes."""
    body = b"".join(ENTRY.pack(e.key, e.share, e.priority) if e else bytes(ENTRY.size) for e in slots)
    return HEADER.pack(ROSTER_MAGIC, VERSION, ROSTER_SIZE, generation) + body


def parse_roster(data: bytes) -> tuple[int, list[Entry | None]] | None:
    """(generation, entries) of a roster image, or None when it is not one."""
    if len(data) < ROSTER_SIZE:
        return None
    magic, version, size, generation = HEADER.unpack_from(data)
    if magic != ROSTER_MAGIC or version != VERSION or size != ROSTER_SIZE:
        return None
    slots: list[Entry | None] = []
    for i in range(SLOTS):
        key, share, priority = ENTRY.unpack_from(data, HEADER.size + i * ENTRY.size)
        slots.append(Entry(key, share, priority) if key else None)
    return generation, slots


def read_roster(card_dir: str) -> tuple[int, list[Entry | None]] | None:
    """(generation, entries) of the roster in `card_dir`, or None when there is none or it is
    not one."""
    try:
        with open(os.path.join(card_dir, ROSTER_NAME), "rb") as f:
            return parse_roster(f.read(ROSTER_SIZE))
    except OSError:
        return None


class CardBoards:
    """The boards directory of one flexaid: keeps each card's roster and slot files in step
    with the ledger. flexaid tells it each change (`put`, `drop`; `rebuild` after a rollback)
    and `flush`es once a batch is on disk, before its answers go out: only the cards that
    changed are written, so a batch costs the same with 10 or 100 000 slices held."""

    def __init__(self, directory: str, cards: Sequence):
        self.directory = directory
        self.cards = {(c.uuid, c.index) for c in cards}
        self.listed: dict[tuple[str, int], list[Entry | None]] = {}
        self.generation: dict[tuple[str, int], int] = {}
        self.wanted: dict[tuple[str, int], dict[int, Entry]] = {}
        self.files: dict[tuple[str, int], set[int]] = {}  # keys with a slot file, by card
        self.dirty: set[tuple[str, int]] = set()

    def card_dir(self, card: tuple[str, int]) -> str:
        return os.path.join(self.directory, card_dir_name(*card))

    def make(self) -> None:
        """The directories and every card's roster, kept where valid (running libraries
        remember their index in it); files no roster lists are removed."""
        os.makedirs(self.directory, exist_ok=True)
        os.chmod(self.directory, DIR_MODE)
        for card in sorted(self.cards):
            path = self.card_dir(card)
            if os.path.isfile(path) or os.path.islink(path):
                os.unlink(path)  # a board file of an older flexai
            os.makedirs(path, exist_ok=True)
            os.chmod(path, CARD_DIR_MODE)
            generation, listed = read_roster(path) or (0, [None] * SLOTS)
            self.generation[card] = generation + (generation & 1)  # a write cut short: even again
            self.listed[card] = listed
            self.files[card] = {e.key for e in listed if e}
            keep = {ROSTER_NAME} | {slot_name(key) for key in self.files[card]}
            for name in os.listdir(path):
                if name not in keep:
                    os.unlink(os.path.join(path, name))
            self._write_roster(card, listed)
            self.dirty.add(card)

    def rebuild(self, reservations: Iterable) -> None:
        """What every card should list: exactly `reservations`."""
        self.wanted = entries_for(reservations)
        self.dirty |= set(self.listed)

    def put(self, reservation) -> None:
        """A slice reserved, or its share changed."""
        card = (reservation.card_uuid, reservation.card_index)
        (entry,) = entries_for([reservation])[card].values()
        self.wanted.setdefault(card, {})[entry.key] = entry
        self.dirty.add(card)

    def drop(self, reservation) -> None:
        card = (reservation.card_uuid, reservation.card_index)
        self.wanted.get(card, {}).pop(slice_key(reservation.slice_id), None)
        self.dirty.add(card)

    def plan(self) -> list[CardWrite]:
        """What the cards that changed need on disk, as plain data (`apply_writes` carries it
        out, in flexaid's writer process with the batch, before the batch's answers go out):
        new slices' zeroed slot files, then the roster listing them (a library maps the slot
        of each slice it finds listed), then gone slices' slot files removed. This object's
        view moves on at once; `failed` puts it back in step with the disk if a write fails.
        A card holds at most SLOTS listed slices: one past that gets its slot file but no
        entry, so its library holds it to its own share as a hard cap."""
        dirty, self.dirty = self.dirty, set()
        writes = []
        for card in sorted(dirty):
            if card not in self.listed:  # not a card of this host
                continue
            want = self.wanted.get(card, {})
            files = self.files[card]
            new = sorted(want.keys() - files)
            gone = sorted(files - want.keys())
            slots = assign(self.listed[card], want)
            roster = None
            if slots != self.listed[card]:
                self.generation[card] += 2
                roster = roster_image(slots, self.generation[card])
                self.listed[card] = slots
            files.update(new)
            files.difference_update(gone)
            if new or gone or roster is not None:
                writes.append((self.card_dir(card), [slot_name(k) for k in new], roster,
                               [slot_name(k) for k in gone]))
        return writes

    def directories(self) -> list[str]:
        return [self.card_dir(card) for card in sorted(self.listed)]

    def flush(self) -> None:
        """`plan` and `apply_writes` in this process (at start, and for tests)."""
        self.failed(apply_writes(self.plan()))

    def failed(self, directories: Iterable[str]) -> None:
        """Card directories whose writes failed: read back what the disk holds and write the
        cards again with the next change (their slices' libraries hold them to their own
        share meanwhile, as a hard cap)."""
        by_dir = {self.card_dir(card): card for card in self.listed}
        for directory in directories:
            card = by_dir.get(directory)
            if card is None:
                continue
            generation, listed = read_roster(directory) or (self.generation[card], [None] * SLOTS)
            self.generation[card] = max(self.generation[card], generation + (generation & 1))
            self.listed[card] = listed
            try:
                names = set(os.listdir(directory))
            except OSError:
                names = set()
            self.files[card] = {k for k in self.files[card] if slot_name(k) in names}
            self.dirty.add(card)

    def slot_path(self, card_uuid: str, card_index: int, slice_id: str) -> str:
        return os.path.join(self.card_dir((card_uuid, card_index)), slot_name(slice_key(slice_id)))

    def _write_roster(self, card: tuple[str, int], slots: Sequence[Entry | None]) -> None:
        self.generation[card] = self.generation.get(card, 0) + 2
        write_roster(os.path.join(self.card_dir(card), ROSTER_NAME), roster_image(slots, self.generation[card]))


# (card directory, new slot file names, the roster image or None, gone slot file names)
CardWrite = tuple[str, list[str], "bytes | None", list[str]]


def apply_writes(writes: Iterable[CardWrite]) -> list[str]:
    """Carries out CardBoards.plan's writes; the card directories where one failed (logged)."""
    failed = []
    for directory, new, roster, gone in writes:
        try:
            for name in new:
                new_slot(os.path.join(directory, name))
            if roster is not None:
                write_roster(os.path.join(directory, ROSTER_NAME), roster)
            for name in gone:
                try:
                    os.unlink(os.path.join(directory, name))
                except FileNotFoundError:
                    pass
        except OSError as exc:
            log.error("cannot write the card board %s: %s; retried with the next change",
                      directory, exc.strerror or exc)
            failed.append(directory)
    return failed


def new_slot(path: str) -> None:
    """A zeroed slot file, 0666: written in place if a stale one exists (a running process of
    a slice with this id may still map it; it starts over as the library does for a fresh slot)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o666)
    try:
        if os.fstat(fd).st_mode & 0o777 != 0o666:
            os.fchmod(fd, 0o666)
        os.pwrite(fd, bytes(FILE_SIZE), 0)
    finally:
        os.close(fd)


def write_roster(path: str, image: bytes) -> None:
    """In place, so libraries that map it see the change: the generation goes odd, the
    entries are written, then the header with the new (even) generation. A library maps
    the slots again whenever the generation changes, so it never keeps a torn view."""
    generation = HEADER.unpack_from(image)[3]
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    try:
        st = os.fstat(fd)
        if st.st_mode & 0o777 != 0o644:
            os.fchmod(fd, 0o644)
        if st.st_size < FILE_SIZE:
            os.ftruncate(fd, FILE_SIZE)
        os.pwrite(fd, struct.pack("<Q", generation - 1), GENERATION_OFFSET)
        os.pwrite(fd, image[HEADER.size:], HEADER.size)
        os.pwrite(fd, image[:HEADER.size], 0)
    finally:
        os.close(fd)
