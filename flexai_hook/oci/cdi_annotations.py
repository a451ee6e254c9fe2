"""CDI devices named in a container's annotations (`cdi.k8s.io/<plugin>_<id>`): pure.

An engine without CDI support of its own (containerd before 1.7 or without `enable_cdi`, a
CRI-O or runc setup that leaves CDI to the runtime) still hands the runtime the devices the
kubelet or a device plugin asked for, as OCI spec annotations: the key is `cdi.k8s.io/`
followed by a plugin-chosen name (the kubelet's DRA manager writes `<driver>_<claim uid>`), the
value a comma-separated list of fully-qualified CDI device names, `vendor.com/class=name`
(CDI SPEC.md; container-device-interface's ParseAnnotations reads them the same way). This
module turns those annotations into device names and the devices into the container edits
the CDI spec directories hold for them; flexai_hook/oci/prepare.py reads the directories and
applies the edits with cdi.apply, as an engine's own CDI support would have.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from flexai_hook.record import record

from . import cdi

PREFIX = "cdi.k8s.io/"
# Cheap marker for the start path: a config.json without it names no CDI device this way.
MARKER = PREFIX.encode()

# CDI's qualified-name rules (container-device-interface pkg/parser): vendor and class start
# with a letter, end with a letter or digit, and hold letters, digits, '_', '-', '.' between;
# a device name starts and ends with a letter or digit and may also hold ':' between.
_VENDOR_OR_CLASS = re.compile(r"[A-Za-z](?:[A-Za-z0-9_.-]*[A-Za-z0-9])?")
_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.:-]*[A-Za-z0-9])?")


@record
class Named:
    """One CDI device a container's annotation asks for."""

    annotation: str  # the annotation's key, for messages
    kind: str  # vendor.com/class
    name: str  # the device's name in the spec of that kind

    @property
    def qualified(self) -> str:
        return f"{self.kind}={self.name}"


def qualified(device: str) -> tuple[str, str] | None:
    """(kind, name) of a fully-qualified CDI device name `vendor/class=name`, None if it is not one."""
    kind, eq, name = device.partition("=")
    vendor, slash, cls = kind.partition("/")
    if not (eq and slash and _VENDOR_OR_CLASS.fullmatch(vendor) and _VENDOR_OR_CLASS.fullmatch(cls)
            and _NAME.fullmatch(name)):
        return None
    return kind, name


def has_devices(annotations: Mapping[str, object]) -> bool:
    """Whether any annotation names CDI devices (malformed ones included: those must be refused)."""
    return any(isinstance(k, str) and k.startswith(PREFIX) for k in annotations)


def named(annotations: Mapping[str, object]) -> tuple[Named, ...]:
    """The CDI devices the `cdi.k8s.io/` annotations ask for, in the order of the keys (sorted:
    annotations are a map, and the edits must come out the same on every path), each once.
    Raises cdi.CdiError, one line naming the annotation, for a value that is not a list of
    qualified names -- as the engines refuse it, so must a runtime that applies it."""
    found: dict[str, Named] = {}
    for key in sorted(k for k in annotations if isinstance(k, str) and k.startswith(PREFIX)):
        value = annotations[key]
        if not isinstance(value, str):
            raise cdi.CdiError(f"annotation {key}: must be a string of CDI device names, not {type(value).__name__}")
        for device in value.split(","):  # no spaces allowed, as ParseAnnotations reads it
            parts = qualified(device)
            if parts is None:
                raise cdi.CdiError(f"annotation {key}: {device!r} is not a fully-qualified CDI device name "
                                   f"(vendor.com/class=name); fix the annotation's value")
            found.setdefault(device, Named(annotation=key, kind=parts[0], name=parts[1]))
    return tuple(found.values())


def resolve(specs: Iterable[cdi.Spec], errors: Sequence[cdi.CdiError], devices: Sequence[Named],
            dirs: Sequence[str]) -> tuple[cdi.Resolved, ...]:
    """Each device's spec entry (a later directory's hiding an earlier one's, cdi.resolve_device).
    Raises cdi.CdiError naming the first device not found and the directories searched -- the
    container must not start without a device it was given (the engines refuse it too); when a
    spec file of its kind could not be read, that file's error is the cause."""
    specs = list(specs)
    out = []
    for device in devices:
        found = cdi.resolve_device(specs, (device.kind,), (device.name,))
        if found is None:
            broken = [e for e in errors if e.kind == device.kind] or [e for e in errors if e.kind is None]
            cause = f"; a spec that may have it is broken: {broken[0]}" if broken else ""
            raise cdi.CdiError(f"unresolvable CDI device {device.qualified} (annotation {device.annotation}): "
                               f"no spec in {', '.join(dirs) or '(no directory)'} has it{cause}")
        out.append(found)
    return tuple(out)


def edits_of(resolved: Sequence[cdi.Resolved]) -> cdi.ContainerEdits:
    """The edits of several devices, as CDI injects them: each spec's common edits once (before
    its first device), then each device's."""
    edits = cdi.ContainerEdits()
    seen: set[str] = set()
    for r in resolved:
        if r.spec.path not in seen:
            seen.add(r.spec.path)
            edits = cdi.merge(edits, r.spec.edits)
        edits = cdi.merge(edits, r.device.edits)
    return edits
