"""A claim's reservations → its CDI spec (Container Device Interface): pure.

The container edits are flexai-runtime's own (oci/spec.py injection_for): the card's device
nodes, libflexai and the /etc/ld.so.preload naming it, the slice files, the region, the card
board, the simulated drivers, the FLEXAI_* env. One exception: no poststop release hook. A
claim is one slice shared by every container and pod that uses it, and it is released when the
kubelet unprepares the claim, not when one of its containers stops.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from flexai_hook.oci import spec as spec_mod
from flexai_hook.oci.injection import DeviceNode, Hook, Injection
from flexai_hook.reservation import Reservation

VENDOR, CLASS = "flexai.io", "gpu"
KIND = f"{VENDOR}/{CLASS}"
# 0.5.0: mounts with a type (0.4.0) and dotted vendors; Podman 4.3 and containerd 1.7 read it
CDI_VERSION = "0.5.0"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
# never run: injection_for wants a hook, and a claim's CDI edits drop it (see the docstring)
_NO_HOOK = Hook(path="/bin/true", args=("true",))


def device_name(uid: str, device: str) -> str:
    """The CDI device name of one share of a claim: "<claim uid>-<gpu-N>"."""
    name = f"{uid}-{device}"
    if not _NAME.match(name):
        raise ValueError(f"claim UID {uid!r} and device {device!r} do not make a CDI device name")
    return name


def device_id(uid: str, device: str) -> str:
    """The fully qualified CDI device id the kubelet hands the runtime: flexai.io/gpu=<name>."""
    return f"{KIND}={device_name(uid, device)}"


def file_name(uid: str) -> str:
    """The claim's spec file in the CDI directory; the UID in it is how a restarted agent finds it."""
    return f"{VENDOR}-{CLASS}_{uid}.json"


def uid_of_file(name: str) -> str | None:
    prefix, suffix = f"{VENDOR}-{CLASS}_", ".json"
    if name.startswith(prefix) and name.endswith(suffix) and len(name) > len(prefix) + len(suffix):
        return name[len(prefix):-len(suffix)]
    return None


def injection(reservation: Reservation, nodes: tuple[DeviceNode, ...], lib: str | None = None) -> Injection:
    """What flexai-runtime would add to a container for this reservation, less the poststop hook."""
    full = spec_mod.injection_for(reservation, nodes, _NO_HOOK, lib)
    return Injection(devices=full.devices, mounts=full.mounts, env=full.env, poststop=())


def container_edits(inj: Injection) -> dict:
    """An Injection as CDI containerEdits, with the options oci/spec.apply gives each mount."""
    edits: dict = {}
    if inj.env:
        edits["env"] = [f"{name}={value}" for name, value in inj.env]
    if inj.devices:
        edits["deviceNodes"] = [
            {"path": n.path, "type": n.type, "major": n.major, "minor": n.minor, "fileMode": n.file_mode,
             "permissions": "rwm", "uid": n.uid, "gid": n.gid}
            for n in inj.devices
        ]
    if inj.mounts:
        edits["mounts"] = [
            {"hostPath": m.source, "containerPath": m.destination, "type": "bind",
             "options": ["rbind", "nosuid", "nodev", "ro" if m.read_only else "rw"]}
            for m in inj.mounts
        ]
    return edits


def spec_for(uid: str, parts: Sequence[tuple[str, Injection]]) -> dict:
    """The CDI spec of a claim: one CDI device per (ResourceSlice device name, its injection)."""
    return {
        "cdiVersion": CDI_VERSION,
        "kind": KIND,
        "devices": [{"name": device_name(uid, device), "containerEdits": container_edits(inj)}
                    for device, inj in parts],
    }
