"""CDI (Container Device Interface) specs: read one, pick a card's device, apply its edits.

On a GPU host the driver's user-space files reach a container through the vendor's CDI spec
(`nvidia-ctk cdi generate` writes /etc/cdi/nvidia.yaml or /var/run/cdi/nvidia.yaml). This
module is the format (CDI SPEC.md, versions 0.3.0 to 1.1.0) and the rules for applying it, as the
engines' own CDI support applies it (cncf-tags/container-device-interface): the spec's common
`containerEdits` and the device's are put into the OCI spec -- env replacing a variable of the
same name, device nodes (numbers read from the host node when the spec leaves them out) with
their device-cgroup rule, mounts replacing one at the same destination and then ordered parents
first, hooks appended to their OCI stage, additional gids, Intel RDT, network devices.

Pure functions over data: the caller reads files and device nodes (flexai_hook/oci/cdi_store.py)
and hands in text and `HostNode`s. Errors are one line naming the file and the field.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Iterable, Mapping, Sequence

from flexai_hook.record import record

from .yamlsubset import Plain, load, resolve

# Released spec versions, newest first (SPEC.md "Released versions").
VERSIONS = ("1.1.0", "1.0.0", "0.8.0", "0.7.0", "0.6.0", "0.5.0", "0.4.0", "0.3.0", "0.2.0", "0.1.0")
EARLIEST_NEEDED = "0.3.0"
# CDI hookName -> the OCI spec's hooks key (the same words).
HOOK_STAGES = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")
NODE_TYPES = ("", "b", "c", "u", "p")
NO_PERMISSIONS = "none"

_KIND_VENDOR = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*")
_KIND_CLASS = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?")
_DEVICE_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.:-]*[A-Za-z0-9])?")


class CdiError(ValueError):
    """A CDI spec that cannot be used; str() is one line naming the file (and field). `kind` is
    the spec's kind when it could be read (so a broken spec of another vendor can be told apart)."""

    def __init__(self, message: str, kind: str | None = None):
        super().__init__(message)
        self.kind = kind


@record
class DeviceNode:
    path: str  # in the container
    host_path: str = ""  # on the host; "" means `path`
    type: str = ""  # "b", "c", "u", "p"; "" means read it from the host node
    major: int | None = None
    minor: int | None = None
    file_mode: int | None = None
    permissions: str = ""  # device-cgroup access: "" is "rwm", "none" is nothing
    uid: int | None = None
    gid: int | None = None


@record
class Mount:
    host_path: str
    container_path: str
    type: str = ""
    options: tuple[str, ...] = ()


@record
class Hook:
    hook_name: str
    path: str
    args: tuple[str, ...] | None = None
    env: tuple[str, ...] | None = None
    timeout: int | None = None


@record
class NetDevice:
    host_interface_name: str
    name: str


@record
class ContainerEdits:
    env: tuple[str, ...] = ()
    device_nodes: tuple[DeviceNode, ...] = ()
    mounts: tuple[Mount, ...] = ()
    hooks: tuple[Hook, ...] = ()
    additional_gids: tuple[int, ...] = ()
    intel_rdt: Mapping | None = None  # as the spec writes it (OCI's linux.intelRdt uses the same keys)
    net_devices: tuple[NetDevice, ...] = ()

    def empty(self) -> bool:
        return not (self.env or self.device_nodes or self.mounts or self.hooks or self.additional_gids
                    or self.intel_rdt is not None or self.net_devices)


@record
class Device:
    name: str
    edits: ContainerEdits


@record
class Spec:
    path: str  # the file it came from, for messages
    version: str
    kind: str
    devices: tuple[Device, ...]
    edits: ContainerEdits  # applied with any of its devices
    priority: int = 0  # the index of its directory: later directories win (CDI's rule)


@record
class HostNode:
    """A device node on the host, as stat(2) tells it."""

    type: str  # "b", "c" or "p"; "" for a file that is not a device node
    major: int
    minor: int
    file_mode: int  # permission bits


@record
class Resolved:
    """The device of a card, found in `spec` under one of the names asked for."""

    spec: Spec
    device: Device

    @property
    def name(self) -> str:
        return f"{self.spec.kind}={self.device.name}"

    def edits(self) -> ContainerEdits:
        """The spec's common edits, then the device's (CDI applies them in that order)."""
        return merge(self.spec.edits, self.device.edits)


# ---------------------------------------------------------------------------------- parsing

def parse(text: str, path: str, priority: int = 0) -> Spec:
    """A CDI spec from the text of `path` (YAML or JSON). Raises CdiError."""
    try:
        data = _load(text)
    except ValueError as exc:  # YamlError, json's errors
        raise CdiError(f"{path}: not a readable CDI spec: {exc}") from None
    if not isinstance(data, dict):
        raise CdiError(f"{path}: a CDI spec is a mapping with cdiVersion, kind and devices")
    kind = data.get("kind")
    kind = str(kind) if isinstance(kind, str) else None
    try:
        return _spec(data, path, priority)
    except CdiError as exc:
        raise CdiError(str(exc), kind) from None


def _load(text: str) -> object:
    if text.lstrip()[:1] == "{":  # JSON (which YAML includes, but this reader only the block style)
        import json

        return json.loads(text)
    return load(text)


def _spec(data: dict, path: str, priority: int) -> Spec:
    where = _Where(path)
    _known(data, ("cdiVersion", "kind", "annotations", "devices", "containerEdits"), where)
    version = _string(data.get("cdiVersion"), where.at("cdiVersion"), required=True)
    if version.removeprefix("v") not in VERSIONS:
        raise CdiError(f"{where.at('cdiVersion')}: {version!r} is not a CDI spec version "
                       f"({', '.join(reversed(VERSIONS[:8]))})")
    version = version.removeprefix("v")
    kind = _string(data.get("kind"), where.at("kind"), required=True)
    vendor, _, cls = kind.partition("/")
    if not (_KIND_VENDOR.fullmatch(vendor) and len(vendor) <= 253 and _KIND_CLASS.fullmatch(cls)
            and len(cls) <= 63):
        raise CdiError(f"{where.at('kind')}: {kind!r} is not vendor.com/class")
    annotations = _annotations(data.get("annotations"), where.at("annotations"))
    raw_devices = data.get("devices")
    if not isinstance(raw_devices, list) or not raw_devices:
        raise CdiError(f"{where.at('devices')}: a CDI spec lists at least one device")
    devices = []
    names: set[str] = set()
    device_annotations = False
    for i, raw in enumerate(raw_devices):
        at = where.at(f"devices[{i}]")
        if not isinstance(raw, dict):
            raise CdiError(f"{at}: a device is a mapping with name and containerEdits")
        _known(raw, ("name", "annotations", "containerEdits"), at)
        name = _string(raw.get("name"), at.at("name"), required=True)
        if not _DEVICE_NAME.fullmatch(name):
            raise CdiError(f"{at.at('name')}: {name!r} is not a device name (letters, digits, '_', '-', '.', ':')")
        if name in names:
            raise CdiError(f"{at.at('name')}: device {name!r} appears twice")
        names.add(name)
        device_annotations |= bool(_annotations(raw.get("annotations"), at.at("annotations")))
        edits = _edits(raw.get("containerEdits"), at.at("containerEdits"))
        if edits.empty():
            raise CdiError(f"{at.at('containerEdits')}: device {name!r} has no edits")
        devices.append(Device(name=name, edits=edits))
    spec = Spec(path=path, version=version, kind=kind, devices=tuple(devices),
                edits=_edits(data.get("containerEdits"), where.at("containerEdits")), priority=priority)
    needed = minimum_version(spec, bool(annotations) or device_annotations)
    if VERSIONS.index(needed) < VERSIONS.index(version):
        raise CdiError(f"{where.at('cdiVersion')}: {version} is too old for what the spec uses; it needs {needed}")
    return spec


class _Where:
    """A field's name for messages: `FILE: devices[0].containerEdits.mounts[2].hostPath`."""

    def __init__(self, path: str, field: str = ""):
        self.path, self.field = path, field

    def at(self, name: str) -> "_Where":
        joined = f"{self.field}{name}" if not self.field or name.startswith("[") else f"{self.field}.{name}"
        return _Where(self.path, joined)

    def __str__(self) -> str:
        return f"{self.path}: {self.field}" if self.field else self.path

    def __format__(self, spec: str) -> str:
        return str(self)


def _known(data: dict, keys: tuple[str, ...], where: _Where) -> None:
    for key in data:
        if key not in keys:
            # the engines' loader refuses unknown fields too: a spec works with both or neither
            raise CdiError(f"{where.at(str(key))}: unknown field (CDI {where.field or 'spec'} fields: {', '.join(keys)})")


def _string(value: object, where: _Where, required: bool = False) -> str:
    if isinstance(value, Plain) and resolve(value) is None:
        value = None
    if value is None:
        if required:
            raise CdiError(f"{where}: missing")
        return ""
    if isinstance(value, Plain):
        return str(value)  # a string field keeps what was written: `name: 0` is "0"
    if not isinstance(value, str):
        raise CdiError(f"{where}: must be a string, not {_describe(value)}")
    return value


def _integer(value: object, where: _Where, low: int, high: int) -> int | None:
    value = resolve(value)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():  # JSON's 438.0
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise CdiError(f"{where}: must be an integer, not {_describe(value)}")
    if not low <= value <= high:
        raise CdiError(f"{where}: {value} is out of range ({low}..{high})")
    return value


def _strings(value: object, where: _Where) -> tuple[str, ...] | None:
    if isinstance(value, Plain) and resolve(value) is None:
        return None
    if value is None:
        return None
    if not isinstance(value, list):
        raise CdiError(f"{where}: must be a list of strings, not {_describe(value)}")
    return tuple(_string(v, where.at(f"[{i}]"), required=True) for i, v in enumerate(value))


def _list(value: object, where: _Where) -> list:
    if value is None or (isinstance(value, Plain) and resolve(value) is None):
        return []
    if not isinstance(value, list):
        raise CdiError(f"{where}: must be a list, not {_describe(value)}")
    return value


def _mapping(value: object, where: _Where, keys: tuple[str, ...]) -> dict:
    if not isinstance(value, dict):
        raise CdiError(f"{where}: must be a mapping, not {_describe(value)}")
    _known(value, keys, where)
    return value


def _annotations(value: object, where: _Where) -> dict[str, str]:
    if value is None or (isinstance(value, Plain) and resolve(value) is None):
        return {}
    if not isinstance(value, dict):
        raise CdiError(f"{where}: must be a mapping of strings")
    return {str(k): _string(v, where.at(str(k)), required=True) for k, v in value.items()}


def _describe(value: object) -> str:
    return {bool: "true/false", int: "a number", float: "a number", list: "a list", dict: "a mapping"}.get(
        type(value), repr(value)[:40])


def _env(value: object, where: _Where) -> tuple[str, ...]:
    env = _strings(value, where) or ()
    for i, entry in enumerate(env):
        if entry.find("=") <= 0:
            raise CdiError(f"{where.at(f'[{i}]')}: {entry!r} is not NAME=VALUE")
    return env


def _edits(value: object, where: _Where) -> ContainerEdits:
    if value is None or (isinstance(value, Plain) and resolve(value) is None):
        return ContainerEdits()
    data = _mapping(value, where, ("env", "deviceNodes", "mounts", "hooks", "additionalGids", "intelRdt",
                                   "netDevices"))
    nodes = tuple(_node(v, where.at(f"deviceNodes[{i}]")) for i, v in enumerate(_list(data.get("deviceNodes"),
                                                                                      where.at("deviceNodes"))))
    mounts = tuple(_mount(v, where.at(f"mounts[{i}]")) for i, v in enumerate(_list(data.get("mounts"),
                                                                                   where.at("mounts"))))
    hooks = tuple(_hook(v, where.at(f"hooks[{i}]")) for i, v in enumerate(_list(data.get("hooks"), where.at("hooks"))))
    gids = tuple(_integer(v, where.at(f"additionalGids[{i}]"), 0, 2**32 - 1)
                 for i, v in enumerate(_list(data.get("additionalGids"), where.at("additionalGids"))))
    if None in gids:
        raise CdiError(f"{where.at('additionalGids')}: an empty entry")
    rdt = None
    if data.get("intelRdt") is not None:
        raw = _mapping(data["intelRdt"], where.at("intelRdt"),
                       ("closID", "l3CacheSchema", "memBwSchema", "schemata", "enableMonitoring"))
        rdt = {}
        for key in ("closID", "l3CacheSchema", "memBwSchema"):
            if raw.get(key) is not None:
                rdt[key] = _string(raw[key], where.at(f"intelRdt.{key}"))
        closid = rdt.get("closID", "")
        if closid != "/" and (len(closid) >= 4096 or closid in (".", "..") or "/" in closid or "\n" in closid):
            raise CdiError(f"{where.at('intelRdt.closID')}: {closid!r} is not a CLOS name")
        schemata = _strings(raw.get("schemata"), where.at("intelRdt.schemata"))
        if schemata is not None:
            rdt["schemata"] = list(schemata)
        monitoring = resolve(raw.get("enableMonitoring"))
        if monitoring is not None and not isinstance(monitoring, bool):
            raise CdiError(f"{where.at('intelRdt.enableMonitoring')}: must be true or false")
        if monitoring:
            rdt["enableMonitoring"] = True
    nets = []
    for i, v in enumerate(_list(data.get("netDevices"), where.at("netDevices"))):
        at = where.at(f"netDevices[{i}]")
        raw = _mapping(v, at, ("hostInterfaceName", "name"))
        nets.append(NetDevice(host_interface_name=_string(raw.get("hostInterfaceName"), at.at("hostInterfaceName"),
                                                          required=True),
                              name=_string(raw.get("name"), at.at("name"), required=True)))
    for what in ("host_interface_name", "name"):
        seen = [getattr(n, what) for n in nets]
        if len(set(seen)) != len(seen):
            raise CdiError(f"{where.at('netDevices')}: an interface appears twice")
    return ContainerEdits(env=_env(data.get("env"), where.at("env")), device_nodes=nodes, mounts=mounts,
                          hooks=hooks, additional_gids=tuple(g for g in gids if g is not None), intel_rdt=rdt,
                          net_devices=tuple(nets))


def _node(value: object, where: _Where) -> DeviceNode:
    data = _mapping(value, where, ("path", "hostPath", "type", "major", "minor", "fileMode", "permissions",
                                   "uid", "gid"))
    path = _string(data.get("path"), where.at("path"), required=True)
    if not path.startswith("/"):
        raise CdiError(f"{where.at('path')}: {path!r} must be an absolute path")
    host_path = _string(data.get("hostPath"), where.at("hostPath"))
    if host_path and not host_path.startswith("/"):
        raise CdiError(f"{where.at('hostPath')}: {host_path!r} must be an absolute path")
    kind = _string(data.get("type"), where.at("type"))
    if kind not in NODE_TYPES:
        raise CdiError(f"{where.at('type')}: {kind!r} is not one of b, c, u, p")
    permissions = _string(data.get("permissions"), where.at("permissions"))
    if permissions != NO_PERMISSIONS and permissions.strip("rwm"):
        raise CdiError(f"{where.at('permissions')}: {permissions!r} is not made of r, w, m (or 'none')")
    return DeviceNode(
        path=path, host_path=host_path, type=kind,
        major=_integer(data.get("major"), where.at("major"), -(2**63), 2**63 - 1),
        minor=_integer(data.get("minor"), where.at("minor"), -(2**63), 2**63 - 1),
        file_mode=_integer(data.get("fileMode"), where.at("fileMode"), 0, 2**32 - 1),
        permissions=permissions,
        uid=_integer(data.get("uid"), where.at("uid"), 0, 2**32 - 1),
        gid=_integer(data.get("gid"), where.at("gid"), 0, 2**32 - 1),
    )


def _mount(value: object, where: _Where) -> Mount:
    data = _mapping(value, where, ("hostPath", "containerPath", "options", "type"))
    return Mount(host_path=_string(data.get("hostPath"), where.at("hostPath"), required=True),
                 container_path=_string(data.get("containerPath"), where.at("containerPath"), required=True),
                 type=_string(data.get("type"), where.at("type")),
                 options=_strings(data.get("options"), where.at("options")) or ())


def _hook(value: object, where: _Where) -> Hook:
    data = _mapping(value, where, ("hookName", "path", "args", "env", "timeout"))
    name = _string(data.get("hookName"), where.at("hookName"), required=True)
    if name not in HOOK_STAGES:
        raise CdiError(f"{where.at('hookName')}: {name!r} is not one of {', '.join(HOOK_STAGES)}")
    path = _string(data.get("path"), where.at("path"), required=True)
    if not path.startswith("/"):
        raise CdiError(f"{where.at('path')}: {path!r} must be an absolute path")
    env = _env(data.get("env"), where.at("env")) if data.get("env") is not None else None
    return Hook(hook_name=name, path=path, args=_strings(data.get("args"), where.at("args")), env=env,
                timeout=_integer(data.get("timeout"), where.at("timeout"), 1, 2**31 - 1))


def minimum_version(spec: Spec, annotated: bool = False) -> str:
    """The oldest spec version that has every feature `spec` uses (the engines refuse a spec
    that claims an older one)."""
    all_edits = [spec.edits] + [d.edits for d in spec.devices]
    rdt = [e.intel_rdt for e in all_edits if e.intel_rdt is not None]
    if any(e.net_devices for e in all_edits) or any("schemata" in r or r.get("enableMonitoring") for r in rdt):
        return "1.1.0"
    if rdt or any(e.additional_gids for e in all_edits):
        return "0.7.0"
    if annotated or "." in spec.kind.partition("/")[2]:
        return "0.6.0"
    if any(d.name[:1].isdigit() for d in spec.devices) or any(n.host_path for e in all_edits for n in e.device_nodes):
        return "0.5.0"
    if any(m.type for e in all_edits for m in e.mounts):
        return "0.4.0"
    return EARLIEST_NEEDED


# -------------------------------------------------------------------------------- selection

def resolve_device(specs: Iterable[Spec], kinds: Sequence[str], names: Sequence[str]) -> Resolved | None:
    """The first of `names` that a spec of one of `kinds` has a device for (kinds in order, then
    names in order). A device in a later directory (higher priority) hides one of the same name
    in an earlier one; two of the same priority are a conflict (CdiError), as for the engines.
    None when no spec of these kinds has any of these names."""
    specs = list(specs)
    for kind in kinds:
        of_kind = [s for s in specs if s.kind == kind]
        for name in names:
            found = [(s, d) for s in of_kind for d in s.devices if d.name == name]
            if not found:
                continue
            top = max(s.priority for s, _ in found)
            best = [(s, d) for s, d in found if s.priority == top]
            if len(best) > 1:
                raise CdiError(f"{best[0][0].path}, {best[1][0].path}: both define CDI device {kind}={name}; "
                               f"remove one of them")
            return Resolved(spec=best[0][0], device=best[0][1])
    return None


def device_names(spec: Spec) -> tuple[str, ...]:
    return tuple(d.name for d in spec.devices)


def merge(first: ContainerEdits, second: ContainerEdits) -> ContainerEdits:
    """`first` then `second`, as one set of edits (applied in that order)."""
    return ContainerEdits(
        env=first.env + second.env, device_nodes=first.device_nodes + second.device_nodes,
        mounts=first.mounts + second.mounts, hooks=first.hooks + second.hooks,
        additional_gids=first.additional_gids + second.additional_gids,
        intel_rdt=second.intel_rdt if second.intel_rdt is not None else first.intel_rdt,
        net_devices=first.net_devices + second.net_devices,
    )


def host_paths(edits: ContainerEdits) -> tuple[str, ...]:
    """The host device nodes `apply` needs stat(2) answers for."""
    return tuple(dict.fromkeys(n.host_path or n.path for n in edits.device_nodes))


# ---------------------------------------------------------------------------------- applying

def apply(spec: dict, edits: ContainerEdits, host: Mapping[str, HostNode], source: str = "CDI") -> dict:
    """A copy of the OCI `spec` with `edits` applied. `host` holds the stat(2) answers for
    `host_paths(edits)` that exist; `source` names the spec file in messages. Applying the same
    edits again changes nothing more (a bundle started again)."""
    spec = copy.deepcopy(spec)
    process = spec.get("process") if isinstance(spec.get("process"), dict) else None
    if edits.env:
        process = spec.setdefault("process", {}) if process is None else process
        env = list(process.get("env") or [])
        index = {e.partition("=")[0]: i for i, e in enumerate(env) if isinstance(e, str)}
        for entry in edits.env:
            name = entry.partition("=")[0]
            if name in index:
                env[index[name]] = entry
            else:
                index[name] = len(env)
                env.append(entry)
        process["env"] = env
    user = process.get("user") if process and isinstance(process.get("user"), dict) else {}
    if edits.device_nodes or edits.net_devices or edits.intel_rdt is not None:
        linux = spec.setdefault("linux", {})
    for node in edits.device_nodes:
        _add_node(linux, _completed(node, host, source), node.permissions, user)
    for net in edits.net_devices:
        linux.setdefault("netDevices", {})[net.host_interface_name] = {"name": net.name}
    if edits.mounts:
        user_ns = any(isinstance(n, dict) and n.get("type") == "user"
                      for n in (spec.get("linux") or {}).get("namespaces") or [])
        mounts = list(spec.get("mounts") or [])
        for m in edits.mounts:
            mounts = [x for x in mounts if not (isinstance(x, dict) and x.get("destination") == m.container_path)]
            mounts.append(_oci_mount(m, user_ns))
        # parents before children, whatever order they came in (stable: equal depths keep theirs)
        mounts.sort(key=lambda x: os.path.normpath(str(x.get("destination", ""))).count("/")
                    if isinstance(x, dict) else 0)
        spec["mounts"] = mounts
    if edits.hooks:
        hooks = spec.setdefault("hooks", {})
        for h in edits.hooks:
            entry: dict = {"path": h.path}
            if h.args is not None:
                entry["args"] = list(h.args)
            if h.env is not None:
                entry["env"] = list(h.env)
            if h.timeout is not None:
                entry["timeout"] = h.timeout
            stage = hooks.setdefault(h.hook_name, [])
            if entry not in stage:
                stage.append(entry)
    if edits.intel_rdt is not None:
        linux["intelRdt"] = dict(edits.intel_rdt)
    gids = [g for g in edits.additional_gids if g != 0]
    if gids:
        process = spec.setdefault("process", {})
        user = process.setdefault("user", {"uid": 0, "gid": 0})
        have = list(user.get("additionalGids") or [])
        user["additionalGids"] = have + [g for g in dict.fromkeys(gids) if g not in have]
    return spec


def _completed(node: DeviceNode, host: Mapping[str, HostNode], source: str) -> DeviceNode:
    """The node with what the spec left out read from the host node (the engines' rule: a node
    given with type and major -- or a fifo with its type -- needs no host node)."""
    from flexai_hook.record import replace

    host_path = node.host_path or node.path
    minimal = node.type != "" and (bool(node.major) or node.type == "p")
    found = host.get(host_path)
    if found is not None and not found.type:
        if not minimal:
            raise CdiError(f"{source}: {host_path} is not a device node; fix the CDI spec's deviceNodes")
        found = None
    if found is None:
        if not minimal:
            raise CdiError(f"{source}: device node {host_path} does not exist on this host; "
                           f"regenerate the CDI spec (nvidia-ctk cdi generate) or fix its deviceNodes")
        return node
    changes: dict = {}
    if node.file_mode is None:
        changes["file_mode"] = found.file_mode
    if not minimal:
        kind = node.type or found.type
        if kind != found.type and not (kind == "u" and found.type == "c"):
            raise CdiError(f"{source}: device node {node.path} is type {kind!r} in the spec but "
                           f"{host_path} is type {found.type!r}")
        changes["type"] = kind
        if kind != "p" and not node.major:
            changes["major"], changes["minor"] = found.major, found.minor
    return replace(node, **changes) if changes else node


def _add_node(linux: dict, node: DeviceNode, permissions: str, user: Mapping) -> None:
    entry: dict = {"path": node.path, "type": node.type}
    if node.type != "p":
        entry["major"], entry["minor"] = node.major or 0, node.minor or 0
    if node.file_mode is not None:
        entry["fileMode"] = node.file_mode
    # a node without its own owner belongs to the container's user (the engines' rule)
    uid = node.uid if node.uid is not None else (user.get("uid") or None)
    gid = node.gid if node.gid is not None else (user.get("gid") or None)
    if uid is not None:
        entry["uid"] = uid
    if gid is not None:
        entry["gid"] = gid
    devices = [d for d in linux.get("devices") or [] if not (isinstance(d, dict) and d.get("path") == node.path)]
    devices.append(entry)
    linux["devices"] = devices
    if node.type in ("b", "c"):
        access = "rwm" if permissions == "" else ("" if permissions == NO_PERMISSIONS else permissions)
        rule = {"allow": True, "type": node.type, "major": entry["major"], "minor": entry["minor"], "access": access}
        resources = linux.setdefault("resources", {})
        rules = list(resources.get("devices") or [])
        if rule not in rules:
            rules.append(rule)
        resources["devices"] = rules


def _oci_mount(m: Mount, user_ns: bool) -> dict:
    entry: dict = {"destination": m.container_path, "source": m.host_path}
    if m.type:
        entry["type"] = m.type
    options = list(m.options)
    if user_ns:  # a bind mount into a user namespace is id-mapped (the engines do the same)
        if not any(o in ("idmap", "ridmap") for o in options):
            if "rbind" in options:
                options.append("ridmap")
            elif "bind" in options or m.type == "bind":
                options.append("idmap")
    if options:
        entry["options"] = options
    return entry
