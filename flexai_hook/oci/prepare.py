"""Where a container's config.json becomes a sliced one: its request, then the OCI edits for
the slice reserved for it.

Two callers, one set of rules: flexai-runtime's Python implementation (flexai_hook/oci/runtime.py,
which reserves through the socket) and flexaid's `prepare` operation, which flexai-runtime's C
front door (libflexai/launch/runtime_front.c) calls so that starting a sliced container runs
no Python process of its own: flexaid is already running.
"""

from __future__ import annotations

import os
import stat
import struct
from typing import TYPE_CHECKING, Mapping

from flexai_hook import kube
from flexai_hook.record import record
from flexai_hook.request import Request, env_warnings, from_container
from flexai_hook.reservation import Reservation

from . import spec as spec_mod

if TYPE_CHECKING:  # loaded on the start path only when needed
    from . import cdi_store, driver


class PrepareError(Exception):
    """The reserved slice cannot be put into this container; str() is one line."""


def request_of(spec: object) -> Request | None:
    """The flexai request of a parsed config.json, None when it asks for nothing (or is not an
    object: the real runtime reports a broken config.json). Raises request.RequestError."""
    if not isinstance(spec, dict):
        return None
    return from_container(env_of(spec), annotations_of(spec))


def env_of(spec: object) -> list[str]:
    """The process env entries of a parsed config.json ([] when it has none)."""
    process = spec.get("process") if isinstance(spec, dict) and isinstance(spec.get("process"), dict) else {}
    env = process.get("env")
    return [e for e in env if isinstance(e, str)] if isinstance(env, list) else []


def warnings_of(spec: object) -> list[str]:
    """Lines to show about a config.json that still starts (request.env_warnings): FLEXAI_*
    names flexai does not know, most likely misspelled requests."""
    return env_warnings(env_of(spec))


def annotations_of(spec: object) -> dict[str, str]:
    """The spec's annotations as strings ({} when it has none or is not an object)."""
    if not isinstance(spec, dict) or not isinstance(spec.get("annotations"), dict):
        return {}
    return {k: str(v) for k, v in spec["annotations"].items()}


def no_request_reason(spec: object) -> str:
    """Why a spec that mentions flexai gets no slice, for a debug line."""
    annotations = annotations_of(spec)
    names = kube.parse_containers(annotations.get(kube.CONTAINERS_ANNOTATION))
    return (kube.sandbox_reason(annotations) or (names and kube.not_listed_reason(annotations, names))
            or "no FLEXAI_* env or flexai.io/* annotation asks for a slice")


def pod_of(spec: object) -> dict[str, str]:
    """The Kubernetes pod the container belongs to (kube.pod_of), {} outside Kubernetes."""
    annotations = spec.get("annotations") if isinstance(spec, dict) else None
    return kube.pod_of(annotations) if isinstance(annotations, dict) else {}


@record
class Prepared:
    """A sliced config.json and what the runtime does besides writing it."""

    spec: dict
    notice: str = ""  # one line for stderr (the container still starts): the driver is missing
    runtime: str = ""  # run this runtime instead of the configured one (driver.py's chaining)
    sliced: bool = True  # False: only annotated CDI devices applied, no slice of its own to release


def prepare_container(spec: dict, reservation: Reservation, hook_path: str, socket: str | None,
                      settings: Mapping | None, runtime_binary: str = "") -> Prepared:
    """config.json with the card's driver (its CDI device, flexai_hook/oci/driver.py) and on top the
    reservation's card, slice files, library and poststop hook (the hook told the daemon's socket
    when one is configured). Reads the CDI spec directories and the device nodes. The one
    function both start paths go through: flexaid's prepare (the C front door) and runtime.py."""
    from . import cdi, cdi_store, driver

    settings = dict(settings or {})
    wanted = _driver_settings(settings)
    loaded = cdi_store.load(wanted.cdi_spec_dirs)
    try:
        # the devices the engine was asked for first, as its own CDI support would have put
        # them in before the runtime ran; the card's driver and the slice go on top
        spec = _with_named_devices(spec, loaded)
        plan = driver.plan(reservation, loaded.specs, loaded.errors, wanted, runtime_binary)
        if plan.cdi is not None:
            edits = plan.cdi.edits()
            spec = cdi.apply(spec, edits, cdi_store.host_nodes(cdi.host_paths(edits)), source=plan.cdi.spec.path)
    except cdi.CdiError as exc:
        raise PrepareError(str(exc)) from None
    nodes = tuple(device_node(path) for path in reservation.device_paths)
    hook_env = (f"FLEXAI_SOCKET={socket}",) if socket else ()
    hook = spec_mod.Hook(path=hook_path, args=("flexai-hook", "poststop"), env=hook_env)
    try:
        injection = spec_mod.injection_for(reservation, nodes, hook, settings=settings,
                                           sim_libraries=plan.sim_libraries)
    except ValueError as exc:  # mps.MpsConfigError: the runtime config asks for the impossible
        raise PrepareError(f"runtime config: {exc}") from None
    if plan.env:
        names = {name for name, _ in injection.env}
        injection = spec_mod.Injection(devices=injection.devices, mounts=injection.mounts,
                                       env=tuple(e for e in plan.env if e[0] not in names) + injection.env,
                                       poststop=injection.poststop)
    if settings.get("compute_backend") == "mps":
        mark_compute_by_mps(reservation.slice_dir)
    return Prepared(spec=spec_mod.apply(spec, injection), notice=plan.notice, runtime=plan.runtime)


def named_devices_spec(spec: dict, settings: Mapping | None) -> dict | None:
    """config.json with the CDI devices its `cdi.k8s.io/` annotations name (oci/cdi_annotations.py)
    applied, for a container without a flexai request -- a DRA claim's: its slice is reserved
    already and its CDI spec carries the slice's edits. None when it names no device. Reads
    the CDI spec directories and the device nodes; raises PrepareError, one line."""
    from . import cdi_annotations, cdi_store

    if not cdi_annotations.has_devices(annotations_of(spec)):
        return None
    loaded = cdi_store.load(_driver_settings(dict(settings or {})).cdi_spec_dirs)
    return _with_named_devices(spec, loaded)


def named_devices_failure(container_id: str | None, exc: BaseException) -> str:
    """The one line for a container whose annotated CDI devices cannot be applied (both start
    paths say the same)."""
    return f"could not apply the CDI devices named in {container_id}'s annotations: {exc}"


def _driver_settings(settings: Mapping) -> "driver.DriverSettings":
    from . import driver

    try:
        return driver.settings_of(settings)
    except driver.DriverConfigError as exc:
        raise PrepareError(f"runtime config: {exc}") from None


def _with_named_devices(spec: dict, loaded: "cdi_store.Loaded") -> dict:
    """`spec` with the CDI devices its annotations name applied (unchanged when none)."""
    from . import cdi, cdi_annotations, cdi_store

    annotations = annotations_of(spec)
    if not cdi_annotations.has_devices(annotations):
        return spec
    try:
        resolved = cdi_annotations.resolve(loaded.specs, loaded.errors, cdi_annotations.named(annotations),
                                           loaded.dirs)
        edits = cdi_annotations.edits_of(resolved)
        sources = ", ".join(dict.fromkeys(r.spec.path for r in resolved))  # named in apply's messages
        return cdi.apply(spec, edits, cdi_store.host_nodes(cdi.host_paths(edits)), source=sources)
    except cdi.CdiError as exc:
        raise PrepareError(str(exc)) from None


def sliced_spec(spec: dict, reservation: Reservation, hook_path: str, socket: str | None,
                settings: Mapping | None) -> dict:
    """prepare_container's config.json alone."""
    return prepare_container(spec, reservation, hook_path, socket, settings).spec


# struct flexai_limits (libflexai/flexai_region.h): the offset of `flags` and the MPS bit.
# Written here with the standard library (flexai-runtime's Python path imports no cffi);
# tests/test_tenant_attacks.py checks both against the header through cffi.
LIMITS_FLAGS_OFFSET = 16
LIMITS_F_COMPUTE_BY_MPS = 1


def mark_compute_by_mps(slice_dir: str) -> None:
    """Tell the slice's library that MPS partitions the card (docs/compute.md), through its
    read-only limits file: inside the container no variable can switch the compute gate off."""
    path = os.path.join(slice_dir, "limits")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        raise PrepareError(f"cannot mark {path} for MPS: {exc.strerror}") from None
    try:
        (flags,) = struct.unpack("<I", os.pread(fd, 4, LIMITS_FLAGS_OFFSET))
        os.pwrite(fd, struct.pack("<I", flags | LIMITS_F_COMPUTE_BY_MPS), LIMITS_FLAGS_OFFSET)
    finally:
        os.close(fd)


def device_node(path: str) -> spec_mod.DeviceNode:
    """The spec entry for a host device node, read from the node itself."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise PrepareError(f"the card's device node {path} cannot be read: {exc.strerror}") from None
    if stat.S_ISCHR(st.st_mode):
        kind = "c"
    elif stat.S_ISBLK(st.st_mode):
        kind = "b"
    else:
        raise PrepareError(f"{path} is not a device node")
    return spec_mod.DeviceNode(path=path, type=kind, major=os.major(st.st_rdev), minor=os.minor(st.st_rdev),
                               file_mode=st.st_mode & 0o777)
