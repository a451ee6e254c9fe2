"""How the card's driver reaches a sliced container.

flexai adds the reserved card's device nodes; the vendor's user-space driver (libcuda.so.1,
libnvidia-ml.so.1, nvidia-smi, ...; Ascend's /usr/local/Ascend/driver and npu-smi) comes from:

1. the vendor's CDI spec, when one has the reserved card (flexai_hook/oci/cdi.py): its edits go in
   under the slice's own, which win;
2. on simulated cards without one, the simulator's libraries (as before CDI; the runtime
   config's `"sim_driver_mounts": "off"` turns that off, so a simulated card behaves as a real
   one: the driver from CDI or nothing);
3. otherwise, when the runtime config names one in `chain_without_cdi`, a vendor runtime run
   instead of runc (nvidia-container-runtime, with NVIDIA_VISIBLE_DEVICES=<uuid>), which adds
   the driver itself;
4. otherwise nothing: the container starts with the card's nodes, and the runtime says in one
   line what to run (`nvidia-ctk cdi generate ...`).

A CDI spec of the vendor's kind that lacks the card, or a broken spec file that may be the
vendor's, stops the container with a line naming the file: silently starting it without its
driver would only move the error into the application.

Pure: the specs come from flexai_hook/oci/cdi_store.py, the decision goes to flexai_hook/oci/prepare.py.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping

from flexai_hook.devices.ascend_nodes import phy_id_of
from flexai_hook.record import record
from flexai_hook.reservation import Reservation

from . import cdi

DEFAULT_CDI_DIRS = ("/etc/cdi", "/var/run/cdi")
NVIDIA_KINDS = ("nvidia.com/gpu",)
# Huawei's names for its chips as resources (Kubernetes device plugin: huawei.com/Ascend910,
# and huawei.com/npu for the newer cards); a CDI spec for Ascend chips would use one of them.
ASCEND_KINDS = ("huawei.com/npu", "huawei.com/Ascend910", "huawei.com/Ascend310P", "huawei.com/Ascend310")
NVIDIA_GENERATE = "nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml"
RUNTIME_CONFIG = "/etc/flexai/runtime.json"
# The vendors' own runtimes, which add the driver themselves from the variables flexai sets.
VENDOR_RUNTIMES = {"nvidia": "nvidia-container-runtime", "ascend": "ascend-docker-runtime"}
SETTING_KEYS = ("cdi_spec_dirs", "chain_without_cdi", "sim_driver_mounts")


class DriverConfigError(ValueError):
    """A runtime-config value for the driver that cannot work; str() is one line."""


@record
class DriverSettings:
    cdi_spec_dirs: tuple[str, ...] = DEFAULT_CDI_DIRS
    chain_without_cdi: str = ""  # a runtime's name or path; "" means say what to run instead
    sim_driver_mounts: str = "auto"  # or "off"


@record
class DriverPlan:
    cdi: cdi.Resolved | None = None  # the card's CDI device, applied under the slice's edits
    sim_libraries: bool = False  # mount the simulated driver libraries
    runtime: str = ""  # run this runtime instead of the configured one ("" keeps it)
    env: tuple[tuple[str, str], ...] = ()  # added to the slice's own env
    notice: str = ""  # one line for stderr: the container starts, but without the driver


_SCHEMA: dict | None = None


def _rules() -> dict:
    global _SCHEMA
    if _SCHEMA is None:
        # a plain path, not importlib.resources: this runs on the container start path
        package = os.path.dirname(os.path.dirname(__file__))
        with open(os.path.join(package, "schemas", "runtime-config.schema.json")) as f:
            _SCHEMA = json.load(f)["properties"]
    return _SCHEMA


def settings_of(settings: Mapping) -> DriverSettings:
    """The driver part of the runtime config, checked against runtime-config.schema.json's rules."""
    if not any(key in settings for key in SETTING_KEYS):
        return DriverSettings()  # the common case reads no schema
    values: dict = {}
    for key in SETTING_KEYS:
        if key not in settings:
            continue
        value = settings[key]
        rule = _rules()[key]
        ok = isinstance(value, str) and len(value) <= rule.get("maxLength", 4096)
        if ok and "pattern" in rule:
            ok = re.search(rule["pattern"], value) is not None
        if ok and "enum" in rule:
            ok = value in rule["enum"]
        if not ok:
            raise DriverConfigError(f"{key}: {value!r} is not allowed; expected {rule['x-allowed']}")
        values[key] = value
    if "cdi_spec_dirs" in values:
        values["cdi_spec_dirs"] = tuple(d.rstrip("/") or "/" for d in values["cdi_spec_dirs"].split(":"))
    return DriverSettings(**values)


def vendor_of(reservation: Reservation) -> str:
    """"ascend" for a davinci chip, else "nvidia" (simulated cards are NVIDIA-like)."""
    return "ascend" if any(phy_id_of(p) is not None for p in reservation.device_paths) else "nvidia"


def kinds_for(vendor: str) -> tuple[str, ...]:
    return ASCEND_KINDS if vendor == "ascend" else NVIDIA_KINDS


def device_names(reservation: Reservation) -> tuple[str, ...]:
    """The CDI device names that mean the reserved card, most specific first.

    nvidia-ctk names a card by its NVML index ("0"), UUID ("GPU-...") or, with
    --device-name-strategy=type-index, "gpu0"; flexai's card index is NVML's. A simulated card
    answers to its UUID only: an index would match a real card of the host's own spec."""
    names = [reservation.card_uuid] if reservation.card_uuid else []
    if reservation.backend == "simulated":
        return tuple(names)
    if vendor_of(reservation) == "ascend":
        ids = [i for i in (phy_id_of(p) for p in reservation.device_paths) if i is not None]
        for phy in ids[:1]:
            names += [str(phy), f"davinci{phy}"]
    else:
        names += [str(reservation.card_index), f"gpu{reservation.card_index}"]
    return tuple(dict.fromkeys(names))


def plan(reservation: Reservation, loaded_specs: tuple[cdi.Spec, ...], errors: tuple[cdi.CdiError, ...],
         settings: DriverSettings, runtime_binary: str = "") -> DriverPlan:
    """Where the driver comes from for `reservation` (see the module's docstring). Raises
    cdi.CdiError, one line, when the container must not start. `runtime_binary` is the real
    runtime that will run it, when known: nvidia-container-runtime adds the driver itself."""
    vendor = vendor_of(reservation)
    kinds = kinds_for(vendor)
    names = device_names(reservation)
    resolved = cdi.resolve_device(loaded_specs, kinds, names)
    card = f"card {reservation.card_index} ({reservation.card_uuid})"
    if resolved is not None:
        # the driver is in through CDI: a chained NVIDIA runtime must not add every card
        # (CUDA images say NVIDIA_VISIBLE_DEVICES=all); nvidia-ctk's specs say the same
        env = (("NVIDIA_VISIBLE_DEVICES", "void"),) if vendor == "nvidia" else ()
        return DriverPlan(cdi=resolved, env=env)
    ours = [e for e in errors if e.kind is None or e.kind in kinds]
    if ours:
        raise cdi.CdiError(f"{ours[0]} (no CDI device found for {card} while this spec is broken)")
    simulated = reservation.backend == "simulated"
    if simulated and settings.sim_driver_mounts != "off":
        return DriverPlan(sim_libraries=True)
    of_kind = [s for s in loaded_specs if s.kind in kinds]
    if of_kind:
        have = sorted({d for s in of_kind for d in cdi.device_names(s)})
        fix = f"regenerate it: {NVIDIA_GENERATE}" if vendor == "nvidia" else "add the chip to it"
        raise cdi.CdiError(f"{', '.join(s.path for s in of_kind)}: no CDI device for {card} "
                           f"(looked for {', '.join(names)}; it has {', '.join(have)}); {fix}")
    if vendor == "nvidia":
        # what nvidia-container-runtime reads: exactly the reserved card, whatever the image says
        env = (("NVIDIA_VISIBLE_DEVICES", reservation.card_uuid or str(reservation.card_index)),)
    else:
        env = ()  # ASCEND_VISIBLE_DEVICES is always set (flexai_hook/oci/spec.py)
    if settings.chain_without_cdi:
        return DriverPlan(runtime=settings.chain_without_cdi, env=env)
    if os.path.basename(runtime_binary).startswith(VENDOR_RUNTIMES[vendor]):
        # already chained to the vendor's runtime (flexai install docker --default over nvidia;
        # "runtime" set to ascend-docker-runtime, docs/ascend.md): it adds the driver
        return DriverPlan(env=env)
    dirs = ", ".join(settings.cdi_spec_dirs) or "(no directory)"
    if vendor == "nvidia":
        notice = (f"no CDI spec for {kinds[0]} in {dirs}: the container gets {card}'s device nodes but not "
                  f"the NVIDIA driver libraries; run `{NVIDIA_GENERATE}` (or set \"chain_without_cdi\": "
                  f"\"nvidia-container-runtime\" in {RUNTIME_CONFIG})")
    else:
        notice = (f"no CDI spec for {'/'.join(kinds[:2])} in {dirs}: the container gets the chip's device "
                  f"nodes but not the Ascend driver (/usr/local/Ascend/driver, npu-smi); write one (docs/cdi.md) "
                  f"or set \"chain_without_cdi\": \"ascend-docker-runtime\" in {RUNTIME_CONFIG}")
    return DriverPlan(env=env, notice=notice)
