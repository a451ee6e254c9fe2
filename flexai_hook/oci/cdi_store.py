"""The CDI spec directories on this host: the files in them, parsed, and their device nodes.

The thin I/O shell around flexai_hook/oci/cdi.py. Like the engines, it reads every `*.json` and
`*.yaml` file directly in each directory (no subdirectories), a later directory's devices
hiding an earlier one's of the same name. A spec that cannot be read or parsed does not stop
the others: it is kept as an error, which matters only when the card's device is not found
elsewhere (flexai_hook/oci/driver.py).

flexaid prepares every sliced start of the C front door, so parsed files are kept, keyed by
what stat(2) says of them (a replaced or rewritten file is read again).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence

from flexai_hook.record import record

from . import cdi

SPEC_SUFFIXES = (".json", ".yaml")
MAX_SPEC_BYTES = 16 << 20  # nvidia-ctk's specs are tens of KiB; anything near this is not one


@record
class Loaded:
    specs: tuple[cdi.Spec, ...] = ()
    errors: tuple[cdi.CdiError, ...] = ()  # files that could not be read or parsed
    dirs: tuple[str, ...] = ()  # the directories searched, for messages


_cache: dict[tuple, cdi.Spec | cdi.CdiError] = {}


def load(dirs: Sequence[str]) -> Loaded:
    """Every CDI spec in `dirs` (missing directories are skipped), in priority order."""
    specs: list[cdi.Spec] = []
    errors: list[cdi.CdiError] = []
    seen: set[tuple] = set()
    for priority, directory in enumerate(dirs):
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            continue
        except OSError as exc:
            errors.append(cdi.CdiError(f"{directory}: the CDI spec directory cannot be read: {exc.strerror}"))
            continue
        for name in names:
            if not name.endswith(SPEC_SUFFIXES):
                continue
            path = os.path.join(directory, name)
            got = _read(path, priority, seen)
            if isinstance(got, cdi.Spec):
                specs.append(got)
            elif got is not None:
                errors.append(got)
    for key in [k for k in _cache if k not in seen]:
        del _cache[key]  # files gone or changed
    return Loaded(specs=tuple(specs), errors=tuple(errors), dirs=tuple(dirs))


def _read(path: str, priority: int, seen: set[tuple]) -> cdi.Spec | cdi.CdiError | None:
    try:
        st = os.stat(path)
    except OSError as exc:
        return cdi.CdiError(f"{path}: cannot be read: {exc.strerror}")
    if stat.S_ISDIR(st.st_mode):
        return None
    key = (path, priority, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    seen.add(key)
    cached = _cache.get(key)
    if cached is not None:
        return cached
    if st.st_size > MAX_SPEC_BYTES:
        result: cdi.Spec | cdi.CdiError = cdi.CdiError(f"{path}: {st.st_size} bytes is too large for a CDI spec")
    else:
        try:
            with open(path, "rb") as f:
                text = f.read(MAX_SPEC_BYTES + 1).decode()
        except (OSError, UnicodeDecodeError) as exc:
            result = cdi.CdiError(f"{path}: cannot be read: {getattr(exc, 'strerror', None) or exc}")
        else:
            try:
                result = cdi.parse(text, path, priority)
            except cdi.CdiError as exc:
                result = exc
    _cache[key] = result
    return result


def host_nodes(paths: Iterable[str]) -> dict[str, cdi.HostNode]:
    """stat(2) of each of `paths` that exists (not following a symlink, as the engines do)."""
    found = {}
    for path in paths:
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISCHR(st.st_mode):
            kind = "c"
        elif stat.S_ISBLK(st.st_mode):
            kind = "b"
        elif stat.S_ISFIFO(st.st_mode):
            kind = "p"
        else:
            kind = ""  # there, but not a device node: cdi.apply says so
        found[path] = cdi.HostNode(type=kind, major=os.major(st.st_rdev), minor=os.minor(st.st_rdev),
                                   file_mode=stat.S_IMODE(st.st_mode))
    return found
