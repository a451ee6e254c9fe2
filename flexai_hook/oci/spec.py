"""Editing an OCI runtime spec (a bundle's config.json) for a slice: pure functions over dicts.

The spec is handled as raw JSON so fields this module does not know survive untouched. Every
edit replaces an earlier one with the same key (device path, mount destination, env name, hook
path), so editing a spec twice (a bundle started again) gives the same result as once.
"""

from __future__ import annotations

import copy
import os

from flexai_hook.devices import library
from flexai_hook.devices.ascend_nodes import visible_devices_env
from flexai_hook.devices.board import card_dir_name, slice_key, slot_name
from flexai_hook.reservation import Reservation

from .injection import DeviceNode, Hook, Injection, Mount

# Where the slice's files appear inside the container; libflexai reads these defaults when its
# environment was emptied (runc exec --env-clear, sudo), so they are part of the contract.
SLICE_FILE_IN_CONTAINER = "/run/flexai/slice.conf"


# The card boards (libflexai/core/controller.h, flexai_hook/devices/board.py): one directory per card,
# shared by the slices of every container on it, so their compute controllers see each other.
BOARD_DIR_IN_CONTAINER = "/run/flexai/boards"


def preload_file_for(slices_dir: str) -> str:
    """The host's /etc/ld.so.preload for sliced containers beside flexaid's slices dir
    (/run/flexai/ld.so.preload); the same for every slice, so flexaid writes it once."""
    return os.path.join(os.path.dirname(os.path.normpath(slices_dir)), "ld.so.preload")


def board_dir_for(slices_dir: str) -> str:
    """The host's card-board directory beside flexaid's slices dir (/run/flexai/boards for the
    default /run/flexai/slices); flexaid creates it."""
    return os.path.join(os.path.dirname(os.path.normpath(slices_dir)), "boards")


def _earlier_board_slot(mount: dict, targets: set[str]) -> bool:
    """A mount of another slice's board slot (or card directory) in a spec this module edited
    before, while `targets` mounts this slice's board."""
    dest = str(mount.get("destination") or "")
    return dest.startswith(BOARD_DIR_IN_CONTAINER + "/") and any(
        t.startswith(BOARD_DIR_IN_CONTAINER + "/") for t in targets)


def board_name(card_uuid: str, card_index: int) -> str:
    """A card's board directory name, as libflexai/core/gate.c board_open derives it."""
    return card_dir_name(card_uuid, card_index)


def injection_for(
    reservation: Reservation, devices: tuple[DeviceNode, ...], hook: Hook, lib: str | None = None,
    settings: dict | None = None, sim_libraries: bool | None = None,
) -> Injection:
    """What a reservation puts into the container: its card, its slice files, the preload
    library with the /etc/ld.so.preload that names it, the slice's region, the card boards,
    its release hook; on a simulated backend also the simulated driver libraries where the
    NVIDIA toolkit puts the real ones. `lib` overrides the library's host path (default: the
    built one). `settings` is the runtime config (/etc/flexai/runtime.json): with
    `"compute_backend": "mps"` the compute share is handed to NVIDIA MPS (flexai_hook/oci/mps.py).
    `sim_libraries`: mount the simulated driver libraries (default: on a simulated card;
    flexai_hook/oci/driver.py decides otherwise when a CDI spec brings the driver)."""
    if sim_libraries is None:
        sim_libraries = reservation.backend == "simulated"
    injection = _injection(reservation, devices, hook, lib, sim_libraries)
    if settings:
        from . import mps

        config = mps.mps_config(settings)
        if config is not None:
            injection = mps.merge(injection, mps.injection(reservation, config))
    return injection


def _injection(
    reservation: Reservation, devices: tuple[DeviceNode, ...], hook: Hook, lib: str | None, sim_libraries: bool
) -> Injection:
    slice_dir = reservation.slice_dir
    mounts = [
        Mount(f"{slice_dir}/slice.conf", SLICE_FILE_IN_CONTAINER),
        Mount(lib or str(library.library_path()), library.LIBRARY_IN_CONTAINER),
        Mount(preload_file_for(os.path.dirname(slice_dir)), "/etc/ld.so.preload"),
        # the limits libflexai enforces: read-only, the tenant cannot loosen them
        Mount(f"{slice_dir}/limits", library.LIMITS_IN_CONTAINER),
        Mount(f"{slice_dir}/region", library.REGION_IN_CONTAINER, read_only=False),
    ]
    env = [
        ("FLEXAI_SLICE_ID", reservation.slice_id),
        ("FLEXAI_SLICE_FILE", SLICE_FILE_IN_CONTAINER),
        ("FLEXAI_REGION", library.REGION_IN_CONTAINER),
        ("FLEXAI_DEVICE_UUID", reservation.card_uuid),
        ("FLEXAI_MEMORY_LIMIT", str(reservation.memory_bytes)),
        ("FLEXAI_COMPUTE_LIMIT", str(reservation.compute)),
        ("FLEXAI_BOARD_DIR", BOARD_DIR_IN_CONTAINER),
    ]
    # only the slice's card's board (flexai_hook/devices/board.py): its directory read-only (the
    # roster and the other slices' slots), and over it the slice's own slot read-write, the
    # one part of the board the tenant can write
    card = board_name(reservation.card_uuid, reservation.card_index)
    host_card = os.path.join(board_dir_for(os.path.dirname(slice_dir)), card)
    slot = slot_name(slice_key(reservation.slice_id))
    mounts.append(Mount(host_card, f"{BOARD_DIR_IN_CONTAINER}/{card}"))
    mounts.append(Mount(f"{host_card}/{slot}", f"{BOARD_DIR_IN_CONTAINER}/{card}/{slot}", read_only=False))
    if sim_libraries:
        driver_dir = library.driver_dir_in_container()
        for name in library.SIM_LIBRARIES:
            mounts.append(Mount(str(library.sim_library_path(name)), f"{driver_dir}/{name}"))
    if reservation.backend == "simulated":  # the simulated cards themselves, whoever brings the driver
        sim_dir = library.sim_dir_for(os.path.dirname(slice_dir))
        mounts.append(Mount(sim_dir, library.SIM_DIR_IN_CONTAINER, read_only=False))
        env.append(("FLEXAI_SIM_DIR", library.SIM_DIR_IN_CONTAINER))
    # Ascend chips: pin a chained Huawei Ascend runtime to the slice's chip (docs/ascend.md).
    env.extend(visible_devices_env(reservation.device_paths))
    return Injection(devices=devices, mounts=tuple(mounts), env=tuple(env), poststop=(hook,))


def apply(spec: dict, injection: Injection) -> dict:
    """A copy of `spec` with `injection` applied; `spec` itself is not modified."""
    spec = copy.deepcopy(spec)
    linux = spec.setdefault("linux", {})

    devices = [d for d in linux.get("devices") or [] if d.get("path") not in {n.path for n in injection.devices}]
    devices += [
        {
            "path": n.path,
            "type": n.type,
            "major": n.major,
            "minor": n.minor,
            "fileMode": n.file_mode,
            "uid": n.uid,
            "gid": n.gid,
        }
        for n in injection.devices
    ]
    if devices:
        linux["devices"] = devices

    resources = linux.setdefault("resources", {})
    rules = list(resources.get("devices") or [])
    for node in injection.devices:
        rule = {"allow": True, "type": node.type, "major": node.major, "minor": node.minor, "access": "rwm"}
        if rule not in rules:
            # After any deny-all rule, which runc and the engines put first.
            rules.append(rule)
    if injection.devices:
        resources["devices"] = rules

    targets = {m.destination for m in injection.mounts}
    # a board slot's destination names its slice: one left by an earlier slice of this bundle
    # (a bundle run again) is flexai's too, and its file is gone
    mounts = [m for m in spec.get("mounts") or []
              if m.get("destination") not in targets and not _earlier_board_slot(m, targets)]
    mounts += [
        {
            "destination": m.destination,
            "type": "bind",
            "source": m.source,
            "options": ["rbind", "nosuid", "nodev", "ro" if m.read_only else "rw"],
        }
        for m in injection.mounts
    ]
    spec["mounts"] = mounts

    if injection.env:
        process = spec.setdefault("process", {})
        names = {f"{name}=" for name, _ in injection.env}
        env = [e for e in process.get("env") or [] if not any(e.startswith(n) for n in names)]
        process["env"] = env + [f"{name}={value}" for name, value in injection.env]

    if injection.poststop:
        hooks = spec.setdefault("hooks", {})
        paths = {h.path for h in injection.poststop}
        poststop = [h for h in hooks.get("poststop") or [] if h.get("path") not in paths]
        for hook in injection.poststop:
            entry = {"path": hook.path, "args": list(hook.args)}
            if hook.env:
                entry["env"] = list(hook.env)
            entry["timeout"] = hook.timeout
            poststop.append(entry)
        hooks["poststop"] = poststop
    return spec
