"""Replacing a file so that readers and crashes see the old or the new content, never a mix."""

from __future__ import annotations

import os


def write_atomically(
    path: str | os.PathLike,
    content: bytes,
    mode: int = 0o644,
    owner: tuple[int, int] | None = None,
    sync: bool = True,
) -> None:
    """Replace `path` with `content` so readers and crashes see the old or the new file only."""
    path = os.fspath(path)
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if owner is not None:
            os.chown(tmp, *owner)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if sync:
        fsync_dir(directory or ".")


def fsync_dir(directory: str) -> None:
    """Make the directory's entries (a rename, a new file) durable."""
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
