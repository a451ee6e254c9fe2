"""The Python view of a slice's shared region (libflexai/flexai_region.h), through cffi in ABI mode.

The layout is read from the very header the C library is compiled with (the block between
its FLEXAI_CDEF markers), so the two cannot disagree. flexaid creates a region per slice
(`create_region`) and reads live usage from it (`read_region`); libflexai in the container's
processes does the accounting.

A process's slot is live while it holds an OFD lock on the slot's byte of the region file
(see the header); liveness is tested with F_OFD_GETLK, which works from any pid namespace,
so the daemon on the host sees exactly which of a container's processes are still there.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import re
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

HEADER_NAME = "flexai_region.h"
_CDEF = re.compile(r"/\* FLEXAI_CDEF_BEGIN \*/(.*?)/\* FLEXAI_CDEF_END \*/", re.S)
PRIORITIES = {"low": 0, "normal": 1, "high": 2}
MODES = {"work-conserving": 0, "hard": 1}

_ffi = None
_consts = None


def header_path() -> Path:
    """The header shipped beside the built library, else the one in the source tree."""
    here = Path(__file__).resolve().parents[1]  # the package folder
    for candidate in (here / "lib" / HEADER_NAME, here.parent / "libflexai" / HEADER_NAME):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{HEADER_NAME} not found beside the package (build it: python -m flexai_hook.install.cbuild)")


def _load():
    global _ffi, _consts
    if _ffi is None:
        import cffi

        text = header_path().read_text()
        match = _CDEF.search(text)
        if match is None:
            raise ValueError(f"{header_path()} has no FLEXAI_CDEF block")
        ffi = cffi.FFI()
        ffi.cdef(match.group(1))
        _consts = ffi.dlopen(None)  # only the #define'd integer constants are read from it
        _ffi = ffi
    return _ffi, _consts


def ffi():
    return _load()[0]


def constants():
    return _load()[1]


@lru_cache(maxsize=None)
def region_size() -> int:
    return ffi().sizeof("struct flexai_region")


def _flock_getlk(fd: int, offset: int) -> bool:
    """True when some open file description holds a write-conflicting lock on byte `offset`."""
    # struct flock on Linux x86_64/aarch64: short l_type, short l_whence, off_t l_start,
    # off_t l_len, pid_t l_pid (padded to 32 bytes).
    request = struct.pack("hhxxxxqqixxxx", fcntl.F_WRLCK, os.SEEK_SET, offset, 1, 0)
    reply = fcntl.fcntl(fd, getattr(fcntl, "F_OFD_GETLK", 36), request)
    l_type = struct.unpack("hhxxxxqqixxxx", reply)[0]
    return l_type != fcntl.F_UNLCK


def _limits_from(limits) -> dict:
    """A Mapping, or a Reservation (duck-typed), as the header's fields."""
    if not isinstance(limits, Mapping):
        limits = {
            "slice_id": limits.slice_id,
            "device_uuid": limits.card_uuid,
            "device_index": limits.card_index,
            "card_memory": limits.card_memory,
            "memory_limit": limits.memory_bytes,
            "compute_limit": limits.compute,
            "priority": limits.priority,
        }
    return dict(limits)


def _fill(r, limits: dict, update: bool) -> None:
    c = constants()
    ff = ffi()
    if not update:
        r.version = c.FLEXAI_REGION_VERSION
        r.size = region_size()
        r.created_ns = time.time_ns()
    if "slice_id" in limits:
        r.slice_id = str(limits["slice_id"]).encode()[: ff.sizeof(r.slice_id) - 1]
    if "device_uuid" in limits:
        r.device_uuid = str(limits["device_uuid"]).encode()[: ff.sizeof(r.device_uuid) - 1]
    if "device_index" in limits:
        r.device_index = int(limits["device_index"])
    if "card_memory" in limits:
        r.card_memory = int(limits["card_memory"])
    if "memory_limit" in limits:
        r.memory_limit = int(limits["memory_limit"])
    if "context_memory" in limits:
        r.context_memory = int(limits["context_memory"])
    changed = False
    if "compute_limit" in limits and r.compute.share.limit_percent != int(limits["compute_limit"]):
        r.compute.share.limit_percent = int(limits["compute_limit"])
        changed = True
    if "priority" in limits:
        value = limits["priority"]
        value = PRIORITIES[value] if isinstance(value, str) else int(value)
        changed |= r.compute.share.priority != value
        r.compute.share.priority = value
    if "compute_mode" in limits:
        value = limits["compute_mode"]
        value = MODES[value] if isinstance(value, str) else int(value)
        changed |= r.compute.share.mode != value
        r.compute.share.mode = value
    if changed and update:
        r.compute.share.generation += 1


# ---- new files' bytes, packed with struct at the offsets cffi gives (flexaid's hot path) ----

_CTYPE_FORMATS = {"int32_t": "i", "uint32_t": "I", "int64_t": "q", "uint64_t": "Q"}


@lru_cache(maxsize=None)
def _slot(ctype: str, path: str) -> tuple[int, str, int]:
    """(offset, struct format, size) of the scalar or char-array field `path` ("share.mode")
    of `ctype`, from the header's layout as cffi sees it."""
    ff = ffi()
    t, offset = ff.typeof(ctype), 0
    for name in path.split("."):
        f = dict(t.fields)[name]
        offset, t = offset + f.offset, f.type
    if t.kind == "array":
        return offset, f"{t.length}s", t.length
    return offset, "=" + _CTYPE_FORMATS[t.cname], ff.sizeof(t)


@lru_cache(maxsize=None)
def _layout(ctype: str, size: int, paths: tuple[str, ...]) -> tuple[struct.Struct, tuple[int, ...]]:
    """One struct.Struct writing the fields `paths` (zeros between and after them, `size`
    bytes in all), and the order of `paths` it takes their values in (by offset)."""
    slots = sorted((_slot(ctype, path), i) for i, path in enumerate(paths))
    fmt, pos = "=", 0
    for (offset, code, length), _ in slots:
        fmt += f"{offset - pos}x" if offset > pos else ""
        fmt += code.lstrip("=")
        pos = offset + length
    return struct.Struct(fmt + (f"{size - pos}x" if size > pos else "")), tuple(i for _, i in slots)


def _pack(ctype: str, size: int, values: list[tuple[str, object]]) -> bytes:
    """`size` zero bytes of `ctype` with `values` ((field path, int or bytes)) set: the bytes
    a zeroed cffi buffer filled field by field would hold, in one struct.pack instead of
    cffi's per-field cost (flexaid's loop makes two images per new slice). struct.error for
    a value a field cannot hold."""
    layout, order = _layout(ctype, size, tuple(path for path, _ in values))
    return layout.pack(*[values[i][1] for i in order])


def _text(ctype: str, path: str, value) -> bytes:
    """A char-array field's bytes as cffi's assignment stores them: cut to leave a NUL."""
    return str(value).encode()[: _slot(ctype, path)[2] - 1]


_CONST_VALUES: dict[tuple[str, ...], tuple[int, ...]] = {}


def _consts_of(*names: str) -> tuple[int, ...]:
    """The header's #define'd values `names`, read from cffi once."""
    values = _CONST_VALUES.get(names)
    if values is None:
        values = _CONST_VALUES[names] = tuple(getattr(constants(), n) for n in names)
    return values


_TEMPLATES: dict[tuple, bytes] = {}  # _templated's memo
_TEMPLATES_LIMIT = 1024


def _templated(ctype: str, values: dict, pack, stamp: bool) -> bytes:
    """`pack(values, created_ns)`, made from a memo of the image of the same fields with an
    empty slice id: the slices of a host differ mostly in their ids, so a new one costs a
    copy and a patch (the id, and with `stamp` the creation time) instead of a pack. The
    same bytes as packing afresh (tests/test_writer.py checks them against cffi's)."""
    slice_id = values.get("slice_id")
    key = (ctype, stamp, *(item for item in values.items() if item[0] != "slice_id"))
    try:
        template = _TEMPLATES.get(key) if isinstance(slice_id, str) else None
    except TypeError:  # an unhashable value: pack it afresh
        slice_id = None
    if not isinstance(slice_id, str):
        return pack(values, time.time_ns())
    if template is None:
        template = pack({**values, "slice_id": ""}, 0)
        if len(_TEMPLATES) >= _TEMPLATES_LIMIT:
            _TEMPLATES.clear()
        _TEMPLATES[key] = template
    image = bytearray(template)
    text = _text(ctype, "slice_id", slice_id)
    offset = _slot(ctype, "slice_id")[0]
    image[offset:offset + len(text)] = text
    if stamp:
        offset, code, _ = _slot(ctype, "created_ns")
        struct.pack_into(code, image, offset, time.time_ns())
    return bytes(image)


def region_image(limits) -> bytes:
    """A new region's bytes up to its process table (which starts as zeros): header filled
    from `limits`, magic set (the same bytes as `_region_image_cffi`, faster)."""
    return _templated("struct flexai_region", _limits_from(limits), _region_image_packed, True)


def _region_image_packed(values: dict, created_ns: int) -> bytes:
    ctype = "struct flexai_region"
    magic, version = _consts_of("FLEXAI_REGION_MAGIC", "FLEXAI_REGION_VERSION")
    fields: list[tuple[str, object]] = [("magic", magic), ("version", version), ("size", region_size()),
                                        ("created_ns", created_ns)]
    try:
        fields += _card_fields(ctype, values)
        fields += _share_fields(values, "compute.share.", ("compute_limit", "priority", "compute_mode"))
        return _pack(ctype, _procs_offset(), fields)
    except struct.error:
        return _region_image_cffi(values)  # out of range: cffi says so in its own words


def _card_fields(ctype: str, values: dict) -> list[tuple[str, object]]:
    """The slice and card fields both headers share (region and limits), for _pack."""
    fields: list[tuple[str, object]] = []
    for key in ("slice_id", "device_uuid"):
        if key in values:
            fields.append((key, _text(ctype, key, values[key])))
    for key in ("device_index", "card_memory", "memory_limit", "context_memory"):
        if key in values:
            fields.append((key, int(values[key])))
    return fields


def _share_fields(values: dict, prefix: str, keys: tuple[str, ...]) -> list[tuple[str, object]]:
    """The struct flexai_share fields `keys` of `values` sets (as _fill and _fill_limits do)."""
    out = []
    for key, field_name, table in (("compute_limit", "limit_percent", None), ("priority", "priority", PRIORITIES),
                                   ("compute_mode", "mode", MODES), ("paused", "paused", None)):
        if key in keys and key in values:
            value = values[key]
            out.append((prefix + field_name, table[value] if table is not None and isinstance(value, str)
                        else int(value)))
    return out


@lru_cache(maxsize=None)
def _procs_offset() -> int:
    return ffi().offsetof("struct flexai_region", "procs")


def _region_image_cffi(limits) -> bytes:
    """region_image through cffi (the reference the packed one is tested against)."""
    size = ffi().offsetof("struct flexai_region", "procs")
    buf = ffi().new("char[]", size)  # zeroed; _fill touches nothing past the header
    r = ffi().cast("struct flexai_region *", buf)
    _fill(r, _limits_from(limits), update=False)
    r.magic = constants().FLEXAI_REGION_MAGIC
    return ffi().buffer(buf)[:]


def create_region(path: str | os.PathLike, limits) -> Path:
    """Create the region at `path` with `limits` (a Mapping of header fields, or a Reservation).

    Idempotent: when a valid region is already there (the daemon restarted and rewrites its
    slice files), only its limits are updated in place and the live accounting is kept, so
    processes that map it keep sharing one budget with everything started later. (flexaid
    writes new slices' regions from `region_image`, see writer.py.)
    """
    path = Path(path)
    values = _limits_from(limits)
    existing = _open_valid(path)
    if existing is not None:
        fd, mm = existing
        try:
            r = ffi().cast("struct flexai_region *", ffi().from_buffer(mm))
            _fill(r, values, update=True)
        finally:
            del r
            mm.close()
            os.close(fd)
        return path
    size = region_size()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    try:
        os.fchmod(fd, 0o666)  # every process of the container maps it read-write, whatever its uid
        os.ftruncate(fd, size)
        with mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) as mm:
            buf = ffi().from_buffer(mm)
            r = ffi().cast("struct flexai_region *", buf)
            _fill(r, values, update=False)
            r.magic = constants().FLEXAI_REGION_MAGIC  # last: the region is complete
            # no msync: every reader maps the same page cache, and regions live on tmpfs
            del r, buf
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    finally:
        os.close(fd)
    return path


def _open_valid(path: Path, write: bool = True):
    try:
        fd = os.open(path, (os.O_RDWR if write else os.O_RDONLY) | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    try:
        size = region_size()
        if os.fstat(fd).st_size < size:
            os.close(fd)
            return None
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if write else 0)
        mm = mmap.mmap(fd, size, mmap.MAP_SHARED, prot)
    except OSError:
        os.close(fd)
        raise
    c = constants()
    magic, version, rsize = struct.unpack_from("<QII", mm, 0)
    if magic != c.FLEXAI_REGION_MAGIC or version != c.FLEXAI_REGION_VERSION or rsize != size:
        mm.close()
        os.close(fd)
        return None
    return fd, mm


@dataclass
class ProcessView:
    slot: int
    pid: int
    memory_used: int
    context_bytes: int
    launches: int
    busy_ns: int
    alive: bool
    overhead_bytes: int = 0  # driver-held memory beyond the tracked (libflexai/cuda/overhead.c)


@dataclass
class RegionView:
    """A snapshot of one region, dead processes already left out."""

    path: str
    slice_id: str
    device_uuid: str
    device_index: int
    card_memory: int
    memory_limit: int
    context_memory: int
    memory_used_recorded: int  # the total as last written by the library
    memory_peak: int
    oom_rejections: int
    launches_retired: int
    busy_ns_retired: int
    reclaimed_processes: int
    compute_limit: int
    compute_mode: int
    priority: int
    paused: bool
    generation: int
    busy_ns_total: int
    window_busy_ns: int = 0  # device time of the last full measured-share window (compute.reserved[0])
    window_ns: int = 0  # its length (compute.reserved[1]); 0: none yet
    processes_list: list[ProcessView] = field(default_factory=list)

    @property
    def share_percent(self) -> float | None:
        """Measured share of the card's time over the last full window (about 1 s), from the
        device time the slice's processes measured; None before the first window closed."""
        if not self.window_ns:
            return None
        return round(100.0 * self.window_busy_ns / self.window_ns, 1)

    @property
    def live(self) -> list[ProcessView]:
        return [p for p in self.processes_list if p.alive]

    @property
    def memory_used(self) -> int:
        """What live processes hold (a process killed with -9 no longer counts)."""
        return sum(p.memory_used for p in self.live)

    @property
    def processes(self) -> int:
        return len(self.live)

    @property
    def launches(self) -> int:
        return self.launches_retired + sum(p.launches for p in self.processes_list)

    def to_json(self) -> dict:
        data = {
            "memory_limit": self.memory_limit,
            "memory_used": self.memory_used,
            "memory_peak": self.memory_peak,
            "processes": self.processes,
            "pids": [p.pid for p in self.live],
            "launches": self.launches,
            "oom_rejections": self.oom_rejections,
            "compute_limit": self.compute_limit,
            "compute_mode": "hard" if self.compute_mode == MODES["hard"] else "work-conserving",
            "paused": self.paused,
        }
        if self.share_percent is not None:
            data["share_percent"] = self.share_percent
        busy = self.busy_ns_total or (self.busy_ns_retired + sum(p.busy_ns for p in self.processes_list))
        if busy:
            data["busy_seconds"] = busy / 1e9
        return data


def read_region(path: str | os.PathLike) -> RegionView:
    """Read the region at `path`. ValueError when it is not a region of this version."""
    path = Path(path)
    opened = _open_valid(path, write=False)
    if opened is None:
        raise ValueError(f"{path} is not a flexai region of version {constants().FLEXAI_REGION_VERSION}")
    fd, mm = opened
    ff = ffi()
    c = constants()
    try:
        r = ff.cast("struct flexai_region *", ff.from_buffer(mm))
        procs = []
        for i in range(c.FLEXAI_MAX_PROCS):
            s = r.procs[i]
            if s.pid == 0:
                continue
            procs.append(ProcessView(
                slot=i, pid=s.pid, memory_used=s.memory_used, context_bytes=s.context_bytes,
                launches=s.launches, busy_ns=s.busy_ns,
                alive=_flock_getlk(fd, c.FLEXAI_SLOT_LOCK_BASE + i), overhead_bytes=s.overhead_bytes,
            ))
        view = RegionView(
            path=str(path),
            slice_id=ff.string(r.slice_id).decode(errors="replace"),
            device_uuid=ff.string(r.device_uuid).decode(errors="replace"),
            device_index=r.device_index,
            card_memory=r.card_memory,
            memory_limit=r.memory_limit,
            context_memory=r.context_memory,
            memory_used_recorded=r.memory_used,
            memory_peak=r.memory_peak,
            oom_rejections=r.oom_rejections,
            launches_retired=r.launches_retired,
            busy_ns_retired=r.busy_ns_retired,
            reclaimed_processes=r.reclaimed_processes,
            compute_limit=r.compute.share.limit_percent,
            compute_mode=r.compute.share.mode,
            priority=r.compute.share.priority,
            paused=bool(r.compute.share.paused),
            generation=r.compute.share.generation,
            busy_ns_total=r.compute.busy_ns_total,
            window_busy_ns=r.compute.reserved[0],
            window_ns=r.compute.reserved[1],
            processes_list=procs,
        )
        del r
        trusted = read_limits(path.with_name(LIMITS_NAME))
        if trusted is not None:
            # the region is the tenant's to write; the limits file is what is enforced
            view.memory_limit = trusted["memory_limit"]
            view.compute_limit = trusted["compute_limit"]
            view.compute_mode = trusted["compute_mode"]
            view.priority = trusted["priority"]
            view.paused = trusted["paused"]
            view.generation = trusted["generation"]
    finally:
        mm.close()
        os.close(fd)
    return view


# ---- the slice's limits file (struct flexai_limits): what libflexai enforces in a container ----

LIMITS_NAME = "limits"  # beside the region in the slice directory


@lru_cache(maxsize=None)
def limits_size() -> int:
    return ffi().sizeof("struct flexai_limits")


def _fill_limits(l, limits: dict) -> bool:
    """Set `l`'s fields from `limits`; True when the compute share, mode, priority or pause
    changed (the caller bumps the generation)."""
    ff = ffi()
    if "slice_id" in limits:
        l.slice_id = str(limits["slice_id"]).encode()[: ff.sizeof(l.slice_id) - 1]
    if "device_uuid" in limits:
        l.device_uuid = str(limits["device_uuid"]).encode()[: ff.sizeof(l.device_uuid) - 1]
    for key in ("device_index", "card_memory", "memory_limit", "context_memory"):
        if key in limits:
            setattr(l, key, int(limits[key]))
    changed = False
    for key, field_name, table in (("compute_limit", "limit_percent", None), ("priority", "priority", PRIORITIES),
                                   ("compute_mode", "mode", MODES), ("paused", "paused", None)):
        if key not in limits:
            continue
        value = limits[key]
        value = table[value] if table is not None and isinstance(value, str) else int(value)
        if getattr(l.share, field_name) != value:
            setattr(l.share, field_name, value)
            changed = True
    return changed


def limits_image(limits) -> bytes:
    """A new limits file's bytes from `limits` (a Mapping of fields, or a Reservation): the
    same bytes as `_limits_image_cffi`, packed with struct (flexaid writes one per new slice)."""
    values = _limits_from(limits)
    if values.get("memory_limit", 0) <= 0:
        raise ValueError(f"a slice's memory limit must be positive, not {values.get('memory_limit')!r}")
    return _templated("struct flexai_limits", values, _limits_image_packed, False)


def _limits_image_packed(values: dict, _created_ns: int) -> bytes:
    ctype = "struct flexai_limits"
    magic, version = _consts_of("FLEXAI_LIMITS_MAGIC", "FLEXAI_LIMITS_VERSION")
    fields: list[tuple[str, object]] = [("magic", magic), ("version", version), ("size", limits_size()),
                                        ("share.generation", 1)]
    try:
        fields += _card_fields(ctype, values)
        fields += _share_fields(values, "share.", ("compute_limit", "priority", "compute_mode", "paused"))
        return _pack(ctype, limits_size(), fields)
    except struct.error:
        return _limits_image_cffi(values)  # out of range: cffi says so in its own words


def _limits_image_cffi(limits) -> bytes:
    """limits_image through cffi (the reference the packed one is tested against)."""
    ff = ffi()
    buf = ff.new("struct flexai_limits *")
    values = _limits_from(limits)
    if values.get("memory_limit", 0) <= 0:
        raise ValueError(f"a slice's memory limit must be positive, not {values.get('memory_limit')!r}")
    buf.version = constants().FLEXAI_LIMITS_VERSION
    buf.size = limits_size()
    _fill_limits(buf, values)
    buf.share.generation = 1
    buf.magic = constants().FLEXAI_LIMITS_MAGIC
    return ff.buffer(buf)[:]


def write_limits(path: str | os.PathLike, limits) -> Path:
    """Create the limits file at `path`, or change a valid one in place: containers map it
    through a read-only bind mount of this very inode, so it is never replaced while valid.
    Mode 0644, owned by flexaid's user (root)."""
    path = Path(path)
    values = _limits_from(limits)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        fd = None
    if fd is not None:
        try:
            if os.fstat(fd).st_size >= limits_size():
                with mmap.mmap(fd, limits_size(), mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) as mm:
                    l = ffi().cast("struct flexai_limits *", ffi().from_buffer(mm))
                    if l.magic == constants().FLEXAI_LIMITS_MAGIC and l.version == constants().FLEXAI_LIMITS_VERSION:
                        if _fill_limits(l, values):
                            l.share.generation += 1  # after the values
                        del l
                        return path
                    del l
        finally:
            os.close(fd)
    image = limits_image(values)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.fchmod(fd, 0o644)
        os.write(fd, image)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def read_limits(path: str | os.PathLike) -> dict | None:
    """The limits file's fields, or None when `path` is not a valid limits file."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    if len(data) < limits_size():
        return None
    ff = ffi()
    buf = ff.new("struct flexai_limits *")
    ff.memmove(buf, data[: limits_size()], limits_size())
    if buf.magic != constants().FLEXAI_LIMITS_MAGIC or buf.version != constants().FLEXAI_LIMITS_VERSION:
        return None
    return {
        "slice_id": ff.string(buf.slice_id).decode(errors="replace"),
        "device_uuid": ff.string(buf.device_uuid).decode(errors="replace"),
        "device_index": buf.device_index, "card_memory": buf.card_memory,
        "memory_limit": buf.memory_limit, "context_memory": buf.context_memory,
        "compute_limit": buf.share.limit_percent, "compute_mode": buf.share.mode,
        "priority": buf.share.priority, "paused": bool(buf.share.paused), "generation": buf.share.generation,
        "flags": buf.flags,
    }


def set_paused(path: str | os.PathLike, paused: bool) -> None:
    """Pause or resume a slice's launches (the library obeys at its next launch)."""
    set_compute(path, paused=paused)


def set_compute(path: str | os.PathLike, *, limit_percent: int | None = None, mode: str | int | None = None,
                priority: str | int | None = None, paused: bool | None = None) -> int:
    """Change a running slice's share, mode, priority or pause in its region and bump
    `generation`; the library obeys at its next launch (within one control period for a
    thread that waits). Returns the new generation. ValueError when `path` is not a region or
    a value is out of range."""
    if limit_percent is not None and not 1 <= int(limit_percent) <= 100:
        raise ValueError(f"compute share {limit_percent!r} is not a percentage in 1..100")
    if isinstance(mode, str) and mode not in MODES:
        raise ValueError(f"compute mode {mode!r} is not one of {', '.join(MODES)}")
    if isinstance(priority, str) and priority not in PRIORITIES:
        raise ValueError(f"priority {priority!r} is not one of {', '.join(PRIORITIES)}")
    limits_file = Path(path).with_name(LIMITS_NAME)
    if limits_file.exists():
        # what a container obeys; the region keeps a copy for readers
        changes: dict = {}
        if limit_percent is not None:
            changes["compute_limit"] = int(limit_percent)
        if mode is not None:
            changes["compute_mode"] = mode
        if priority is not None:
            changes["priority"] = priority
        if paused is not None:
            changes["paused"] = 1 if paused else 0
        if read_limits(limits_file) is None:
            raise ValueError(f"{limits_file} is not a flexai limits file")
        write_limits(limits_file, changes)
    opened = _open_valid(Path(path))
    if opened is None:
        raise ValueError(f"{path} is not a flexai region")
    fd, mm = opened
    try:
        r = ffi().cast("struct flexai_region *", ffi().from_buffer(mm))
        if limit_percent is not None:
            r.compute.share.limit_percent = int(limit_percent)
        if mode is not None:
            r.compute.share.mode = MODES[mode] if isinstance(mode, str) else int(mode)
        if priority is not None:
            r.compute.share.priority = PRIORITIES[priority] if isinstance(priority, str) else int(priority)
        if paused is not None:
            r.compute.share.paused = 1 if paused else 0
        r.compute.share.generation += 1  # after the values: readers see the change with the new generation
        generation = int(r.compute.share.generation)
        del r
    finally:
        mm.close()
        os.close(fd)
    return generation
