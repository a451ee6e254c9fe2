"""flexaid's file writer: a batch's slice files and ledger write, in a helper process.

flexaid's loop applies requests in memory; what they change on disk (each new slice's
directory with its slice.conf, limits file and region; the ledger journal, fdatasync'd, or a
checkpoint; released slices' directories) is a `plan` of plain data that `execute` carries out.
The server hands plans to a `Writer` (this module run as a child process) so the file system's
system calls, and packing the slices' binary images, run on another core while the loop
applies the next requests (threads would not: the GIL makes a busy loop and a writer thread
take turns). `Service.commit` runs `execute` in-process.
"""

from __future__ import annotations

import json
import marshal
import os
import shutil
import signal
import struct
import subprocess
import sys
from dataclasses import dataclass, field

from flexai_hook.atomicfile import write_atomically
from flexai_hook.devices import board, region, simcards
from flexai_hook.reservation import Reservation

from . import ledger as ledger_mod

SLICE_FILES = ("slice.conf", "limits", "region")  # what slice_files writes
SLICE_DIR_MODE = 0o700
_LENGTH = struct.Struct("<I")


@dataclass
class Plan:
    """What one batch needs on disk, in this order: slices, ledger, removals, card boards.

    The ledger part is either the batch's journal lines (ledger.LedgerFile.delta) or, for a
    checkpoint, every reservation's line (ledger.render) and an emptied journal."""

    # (container id, dir, slice.conf text, region_limits): files_of makes the files from them
    slices: list[tuple[str, str, str, dict]]
    ledger_path: str
    journal_path: str
    batch: int  # the journal batch number
    journal_lines: list[tuple[str, str]] = field(default_factory=list)  # (container id, line)
    ledger_lines: list[tuple[str, str]] | None = None  # a checkpoint: (container id, line)
    removes: list[str] = field(default_factory=list)  # released slices' directories
    boards: list = field(default_factory=list)  # card boards' writes (board.CardBoards.plan)


@dataclass
class Outcome:
    error: str | None = None  # why the ledger could not be written (nothing of the plan holds)
    failed: dict[str, str] = field(default_factory=dict)  # container id -> why its slice failed
    dirty: bool = False  # the journal holds part of a failed batch: the next plan must checkpoint
    boards_failed: list[str] = field(default_factory=list)  # card board directories not written


def region_limits(reservation: Reservation) -> dict:
    """The region header's fields for `reservation` (libflexai/flexai_region.h)."""
    limits = {
        "slice_id": reservation.slice_id, "device_uuid": reservation.card_uuid,
        "device_index": reservation.card_index, "card_memory": reservation.card_memory,
        "memory_limit": reservation.memory_bytes, "compute_limit": reservation.compute,
        "priority": reservation.priority, "compute_mode": reservation.compute_mode,
    }
    if reservation.backend == "simulated":
        limits["context_memory"] = int(simcards.TUNABLES["context_bytes"])  # what the simulator charges
    return limits


def slice_files(reservation: Reservation) -> list[tuple[str, bytes, int, int]]:
    """A new slice's files as (name, content, mode, size): slice.conf, its limits file and its
    shared region (its process table left as a hole of zeros)."""
    return files_of(reservation.slice_conf(), region_limits(reservation))


def plan_entry(reservation: Reservation) -> tuple[str, str, str, dict]:
    """A new slice as a Plan names it: plain data, from which the writer makes its files
    (files_of), so the images are packed on the writer's core, not in flexaid's loop."""
    return reservation.container_id, reservation.slice_dir, reservation.slice_conf(), region_limits(reservation)


def files_of(conf: str, limits: dict) -> list[tuple[str, bytes, int, int]]:
    """The files of slice_files, from the slice.conf text and the region_limits of a slice.
    ValueError or OverflowError for limits the headers cannot hold."""
    return [
        ("slice.conf", conf.encode(), 0o644, 0),
        # what libflexai enforces: root's, mounted read-only (docs/security.md)
        (region.LIMITS_NAME, region.limits_image(limits), 0o644, 0),
        # usage only: every process of the container writes it, whatever its uid
        ("region", region.region_image(limits), 0o666, region.region_size()),
    ]


def write_slice(directory: str, files: list[tuple[str, bytes, int, int]], umask_clear: bool = False) -> None:
    """A new slice directory with `files` (name, content, mode, size: the file is extended
    with a hole to `size`). Plain writes: nobody reads the directory before the reservation
    is answered, which happens only after the ledger naming it is on disk. `umask_clear`:
    the process umask is 0, so open() gives the exact mode without an fchmod.

    The directory is 0700: the region in it is 0666 for the container's processes of any
    uid, which reach it through their bind mount, never through this path; host users
    cannot (docs/security.md)."""
    try:
        os.mkdir(directory, SLICE_DIR_MODE)
    except FileExistsError:  # a leftover of a crash between writing it and the ledger
        shutil.rmtree(directory)
        os.mkdir(directory, SLICE_DIR_MODE)
    if not umask_clear:
        os.chmod(directory, SLICE_DIR_MODE)
    for name, content, mode, size in files:
        fd = os.open(os.path.join(directory, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            if not umask_clear:
                os.fchmod(fd, mode)  # the umask must not narrow it (regions are mode 0666)
            os.write(fd, content)
            if size > len(content):
                os.ftruncate(fd, size)
        finally:
            os.close(fd)


def remove_slice_dir(path: str) -> None:
    """Remove a released slice's directory: the files flexaid writes, then the directory
    (rmtree only when something else was left there, e.g. the ld.so.preload that slices of
    earlier flexaid versions held: no failing unlink per release for it)."""
    for name in SLICE_FILES:
        try:
            os.unlink(os.path.join(path, name))
        except FileNotFoundError:
            pass
        except OSError:
            break
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError:
        shutil.rmtree(path, ignore_errors=True)


def execute(plan: Plan, umask_clear: bool = False) -> Outcome:
    """Slices, then the ledger (without the slices that failed), then the removals, then the
    card boards.

    A failed ledger write removes the slices this plan wrote, so the disk holds either the
    old state or the new one."""
    outcome = Outcome()
    made = []
    for cid, directory, conf, limits in plan.slices:
        try:
            files = files_of(conf, limits)
        except (ValueError, OverflowError, struct.error) as exc:
            outcome.failed[cid] = f"its limits cannot be written: {exc}"
            continue
        try:
            write_slice(directory, files, umask_clear)
            made.append(directory)
        except OSError as exc:
            remove_slice_dir(directory)
            outcome.failed[cid] = str(exc.strerror or exc)
    try:
        if plan.ledger_lines is not None:
            write_atomically(plan.ledger_path,
                             ledger_mod.render([line for cid, line in plan.ledger_lines if cid not in outcome.failed]))
            try:
                ledger_mod.reset_journal(plan.journal_path)
            except OSError:
                outcome.dirty = True  # what it still holds is in the checkpoint already: harmless
        else:
            ledger_mod.append_journal(plan.journal_path, _journal(plan, outcome.failed))
    except OSError as exc:
        for directory in made:
            remove_slice_dir(directory)
        outcome.error = str(exc.strerror or exc)
        outcome.dirty = isinstance(exc, ledger_mod.JournalDirty)
        return outcome
    for directory in plan.removes:
        remove_slice_dir(directory)
    # the new slices' board slots and rosters: before the batch's answers, after its ledger
    outcome.boards_failed = board.apply_writes(plan.boards)
    return outcome


def _journal(plan: Plan, failed: dict[str, str]) -> bytes:
    """The batch's journal lines; a container whose slice failed is dropped instead."""
    lines, dropped = [], set()
    for cid, line in plan.journal_lines:
        if cid in failed:
            if cid not in dropped:
                dropped.add(cid)
                lines.append(f'{{"b":{plan.batch},"drop":{json.dumps(cid)}}}')
        else:
            lines.append(line)
    return ("\n".join(lines) + "\n").encode()


def child_argv() -> list[str]:
    """The writer child's command line: the parent's interpreter in isolated mode (-I: no
    PYTHON* variables, and neither the working directory nor a script's folder on sys.path),
    importing this very package from the folder the parent imported it from. `python -m
    flexai_hook.daemon.writer` would put the daemon's working directory first on sys.path, so a
    flexaid started from a checkout ran the checkout's (unbuilt) writer instead of its own."""
    parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # holds flexai_hook/
    code = f"import sys; sys.path.insert(0, {parent!r}); from flexai_hook.daemon.writer import main; sys.exit(main())"
    return [sys.executable, "-I", "-c", code]


class WriterGone(RuntimeError):
    pass


class Writer:
    """The parent's handle on the writer process: one plan at a time, as marshal data
    (builtin types only) over its stdin and stdout."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(child_argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)

    def fileno(self) -> int:
        """Readable when the outcome of the plan sent last has arrived."""
        return self.proc.stdout.fileno()

    def send(self, plan: Plan) -> None:
        data = marshal.dumps((plan.slices, plan.ledger_path, plan.journal_path, plan.batch, plan.journal_lines,
                              plan.ledger_lines, plan.removes, plan.boards))
        try:
            self.proc.stdin.write(_LENGTH.pack(len(data)) + data)
            self.proc.stdin.flush()
        except OSError as exc:
            raise WriterGone(f"flexaid's file writer is gone ({exc})") from None

    def receive(self) -> Outcome:
        """The outcome of the plan sent last (blocks until it is there)."""
        head = self.proc.stdout.read(_LENGTH.size)
        data = self.proc.stdout.read(_LENGTH.unpack(head)[0]) if len(head) == _LENGTH.size else b""
        if not data:
            code = self.proc.wait()
            raise WriterGone(f"flexaid's file writer exited (status {code})")
        return Outcome(*marshal.loads(data))

    def restart(self) -> None:
        self.stop()
        self.start()

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.proc = None


def main() -> int:
    """The child: plans in on stdin, outcomes out on stdout, until stdin closes."""
    # The daemon stops this process by closing its stdin once everything is written; a
    # signal to the whole service (systemd's stop, ^C) must not cut a batch short.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.umask(0)  # every file states its mode (write_slice); saves an fchmod per file
    try:  # read the header's layout now, not while the first batch waits (~20 ms)
        files_of("", {"slice_id": "0", "memory_limit": 1, "priority": "normal", "compute_mode": "hard"})
    except Exception:  # noqa: BLE001 - a slice whose files fail is refused alone, with the reason
        pass
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    while True:
        head = inp.read(_LENGTH.size)
        if len(head) < _LENGTH.size:
            return 0
        plan = Plan(*marshal.loads(inp.read(_LENGTH.unpack(head)[0])))
        outcome = execute(plan, umask_clear=True)
        data = marshal.dumps((outcome.error, outcome.failed, outcome.dirty, outcome.boards_failed))
        out.write(_LENGTH.pack(len(data)) + data)
        out.flush()


if __name__ == "__main__":
    sys.exit(main())
