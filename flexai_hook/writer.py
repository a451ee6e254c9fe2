"""flexaid's file writer: a batch's slice files and ledger write, in a helper process.

flexaid's loop applies requests in memory; what they change on disk (each new slice's
directory, slice.conf, ld.so.preload and region; the ledger, fsync'd; released slices'
directories) is a `plan` of plain data that `execute` carries out. The server hands plans to
a `Writer` (this module run as a child process) so the file system's system calls run on
another core while the loop applies the next requests (threads would not: the GIL makes a
busy loop and a writer thread take turns). `Service.commit` runs `execute` in-process.
"""

from __future__ import annotations

import os
import marshal
import shutil
import signal
import struct
import subprocess
import sys
from dataclasses import dataclass, field

from . import ledger as ledger_mod
from .atomicfile import write_atomically

SLICE_FILES = ("slice.conf", "region", "ld.so.preload")  # the last: in slices made before 0.2
_LENGTH = struct.Struct("<I")


@dataclass
class Plan:
    """What one batch needs on disk, in this order."""

    slices: list[tuple[str, str, list[tuple[str, bytes, int, int]]]]  # (container id, dir, files)
    ledger_path: str
    ledger_lines: list[tuple[str, str]]  # (container id, its line), see ledger.render
    removes: list[str] = field(default_factory=list)  # released slices' directories


@dataclass
class Outcome:
    error: str | None = None  # why the ledger could not be written (nothing of the plan holds)
    failed: dict[str, str] = field(default_factory=dict)  # container id -> why its slice failed


def write_slice(directory: str, files: list[tuple[str, bytes, int, int]], umask_clear: bool = False) -> None:
    """A new slice directory with `files` (name, content, mode, size: the file is extended
    with a hole to `size`). Plain writes: nobody reads the directory before the reservation
    is answered, which happens only after the ledger naming it is on disk. `umask_clear`:
    the process umask is 0, so open() gives the exact mode without an fchmod."""
    try:
        os.mkdir(directory, 0o755)
    except FileExistsError:  # a leftover of a crash between writing it and the ledger
        shutil.rmtree(directory)
        os.mkdir(directory, 0o755)
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
    """Remove a released slice's directory: the files flexaid wrote, then the directory
    (rmtree only when something else was left there)."""
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
    """Slices, then the ledger (without the slices that failed), then the removals.

    A failed ledger write removes the slices this plan wrote, so the disk holds either the
    old state or the new one."""
    outcome = Outcome()
    made = []
    for cid, directory, files in plan.slices:
        try:
            write_slice(directory, files, umask_clear)
            made.append(directory)
        except OSError as exc:
            remove_slice_dir(directory)
            outcome.failed[cid] = str(exc.strerror or exc)
    lines = [line for cid, line in plan.ledger_lines if cid not in outcome.failed]
    try:
        write_atomically(plan.ledger_path, ledger_mod.render(lines))
    except OSError as exc:
        for directory in made:
            remove_slice_dir(directory)
        outcome.error = str(exc.strerror or exc)
        return outcome
    for directory in plan.removes:
        remove_slice_dir(directory)
    return outcome


class WriterGone(RuntimeError):
    pass


class Writer:
    """The parent's handle on the writer process: one plan at a time, as marshal data
    (builtin types only) over its stdin and stdout."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flexai_hook.writer"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            close_fds=True)

    def fileno(self) -> int:
        """Readable when the outcome of the plan sent last has arrived."""
        return self.proc.stdout.fileno()

    def send(self, plan: Plan) -> None:
        data = marshal.dumps((plan.slices, plan.ledger_path, plan.ledger_lines, plan.removes))
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
        error, failed = marshal.loads(data)
        return Outcome(error, failed)

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
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    while True:
        head = inp.read(_LENGTH.size)
        if len(head) < _LENGTH.size:
            return 0
        plan = Plan(*marshal.loads(inp.read(_LENGTH.unpack(head)[0])))
        outcome = execute(plan, umask_clear=True)
        data = marshal.dumps((outcome.error, outcome.failed))
        out.write(_LENGTH.pack(len(data)) + data)
        out.flush()


if __name__ == "__main__":
    sys.exit(main())
