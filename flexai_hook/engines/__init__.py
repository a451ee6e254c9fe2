"""Registering flexai with container engines: pure edits of their config files, then a plan.

One module per engine (`docker`, `containerd`, `podman`) turns the text of the engine's config
files into new text: pure functions, idempotent (installing twice gives the same bytes as
once), keeping every unrelated setting and, where the format has them, comments. Each engine's
`plan_install`/`plan_uninstall` reads the files and returns a `Plan`: the file changes, what the
user must restart, and notes. `apply` writes a plan atomically with a backup of every file it
replaces; `render_diff` shows it as a unified diff for `--dry-run`.

A config file flexai cannot parse is never overwritten: `ConfigError` names the file and the
parse error in one line.

May import: the top-level modules (client, atomicfile), devices/ (the library's paths) and oci/
(doctor asks oci/driver.py where each card's driver comes from, as flexai-runtime decides it).
"""

from __future__ import annotations

import difflib
import os
import time
from dataclasses import dataclass, field

RUNTIME_NAME = "flexai"
ANNOTATION_GLOB = "flexai.io/*"
DEFAULT_BIN_DIR = "/usr/local/bin"


class ConfigError(Exception):
    """A config file flexai will not touch; str() is one line naming the file and the problem."""


@dataclass(frozen=True)
class Change:
    """One file's new content. `new` None deletes the file; `old` None means it does not exist."""

    path: str
    old: str | None
    new: str | None
    mode: int = 0o644
    backup: bool = True  # False for files flexai owns outright (drop-in, hooks): regenerated, not kept

    @property
    def changed(self) -> bool:
        return self.old != self.new


@dataclass
class Plan:
    engine: str
    action: str  # "install" or "uninstall"
    changes: list[Change] = field(default_factory=list)
    restart: str = ""  # what the user must restart or reload for the change to take effect
    notes: list[str] = field(default_factory=list)

    @property
    def effective(self) -> list[Change]:
        return [c for c in self.changes if c.changed]


def read_text(path: str) -> str | None:
    """A config file's text, or None when it does not exist."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); flexai did not change it") from None
    except PermissionError as exc:
        raise ConfigError(f"{path}: this user cannot read it ({exc.strerror}); engine configs belong to root: "
                          f"run the command as root (sudo)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror or exc})") from None


def write_failure(exc: OSError, command: str) -> str:
    """One line for a file `command` (what the user ran, e.g. "flexai install docker") could not
    write or replace: which file, why, and the fix. Not being root is the usual cause."""
    import errno

    path = exc.filename or "an engine config file"
    reason = exc.strerror or type(exc).__name__
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (f"cannot write {path} ({reason}): engine configs belong to root; run `sudo {command}` "
                f"(or `{command} --dry-run` to see the changes first)")
    if exc.errno == errno.EROFS:
        return f"cannot write {path}: its file system is read-only; remount it read-write, then run `{command}` again"
    return f"cannot write {path} ({reason}); fix that and run `{command}` again (it is idempotent)"


def default_binary(name: str) -> str:
    """Where an installed flexai command lives: /usr/local/bin when it is there (install.sh links
    it), else beside the running interpreter (a virtual environment's bin)."""
    import sys

    for directory in (DEFAULT_BIN_DIR, os.path.dirname(sys.executable)):
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return os.path.join(DEFAULT_BIN_DIR, name)


def render_diff(plan: Plan) -> str:
    """The plan as a unified diff (what `--dry-run` prints)."""
    out: list[str] = []
    for change in plan.effective:
        old = (change.old or "").splitlines(keepends=True)
        new = (change.new or "").splitlines(keepends=True)
        a = change.path if change.old is not None else "/dev/null"
        b = change.path if change.new is not None else "/dev/null"
        for line in difflib.unified_diff(old, new, a, b):
            out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return "".join(out)


def backup_path(path: str, stamp: str | None = None) -> str:
    return f"{path}.flexai-backup-{stamp or _stamp()}"


def _stamp() -> str:
    """Local time to the microsecond: backups sort by when they were taken."""
    now = time.time()
    return time.strftime("%Y%m%dT%H%M%S", time.localtime(now)) + f".{int(now % 1 * 1e6):06d}"


def _claim_backup(path: str, stamp: str) -> str:
    """A backup name for `path` no other backup has, created empty (O_EXCL) so that two installs
    in the same instant never write over each other's backup: `-2`, `-3`, ... on a clash."""
    base = backup_path(path, stamp)
    for n in range(1, 10000):
        candidate = base if n == 1 else f"{base}-{n}"
        try:
            os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            return candidate
        except FileExistsError:
            continue
    raise ConfigError(f"{path}: too many backups named {base}*; remove some")


def apply(plan: Plan) -> list[str]:
    """Write the plan's changes: atomically, each replaced or removed file kept as a backup.

    Returns one line per file saying what happened (and where its backup is). An OSError names
    the file of the plan it was writing (not a temporary or backup name beside it)."""
    done: list[str] = []
    stamp = _stamp()
    for change in plan.effective:
        try:
            done.append(_apply_one(change, stamp))
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror or str(exc), change.path) from exc
    return done


def _apply_one(change: Change, stamp: str) -> str:
    from ..atomicfile import write_atomically

    backup = None
    if change.old is not None and change.backup:
        backup = _claim_backup(change.path, stamp)
        st = os.stat(change.path)
        write_atomically(backup, change.old.encode(), mode=st.st_mode & 0o7777, owner=(st.st_uid, st.st_gid))
    if change.new is None:
        os.unlink(change.path)
        return f"removed {change.path}" + (f" (backup: {backup})" if backup else "")
    directory = os.path.dirname(change.path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    if change.old is not None:
        st = os.stat(change.path)
        mode, owner = st.st_mode & 0o7777, (st.st_uid, st.st_gid)
    else:
        mode, owner = change.mode, None
    write_atomically(change.path, change.new.encode(), mode=mode, owner=owner)
    verb = "updated" if change.old is not None else "created"
    return f"{verb} {change.path}" + (f" (backup: {backup})" if backup else "")
