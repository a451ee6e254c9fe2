"""containerd: a drop-in `/etc/containerd/conf.d/flexai.toml` imported by the main config.

The drop-in registers the `flexai` runtime with the CRI plugin (so Kubernetes pods with
`runtimeClassName: flexai` use it):

- `runtime_type = "io.containerd.runc.v2"`, options copied from the default runtime (usually
  `runc`: `SystemdCgroup` and the rest) with `BinaryName` set to flexai-runtime;
- `pod_annotations` and `container_annotations` let `flexai.io/*` through to the OCI spec;
- with --default, `default_runtime_name = "flexai"`.

The main config gets the drop-in's path added to its `imports` (nothing else in it changes); a
missing one is created in the config version of the installed containerd (`containerd
--version`: 3 for 2.x, else 2), since the drop-in must not have a higher version than it.

Config version 2 (containerd 1.x) merges an imported file by replacing whole plugin sections,
so a drop-in that only named the flexai runtime would wipe every other CRI setting (CNI
directories, the runc runtime itself). For version 2 the drop-in therefore carries the
effective CRI section (main config, then earlier imports) plus flexai; `flexai doctor` notices
when the main config changed after that copy. Version 3 (containerd 2.x) merges imports key by
key, so its drop-in holds only flexai's keys.
"""

from __future__ import annotations

import copy
import glob
import os
import re
import shutil
import subprocess
from collections.abc import Callable

from . import ANNOTATION_GLOB, RUNTIME_NAME, Change, ConfigError, Plan, default_binary, read_text
from . import tomltext

MAIN_CONFIG = "/etc/containerd/config.toml"
DROPIN = "/etc/containerd/conf.d/flexai.toml"
CRI_PLUGIN = {2: "io.containerd.grpc.v1.cri", 3: "io.containerd.cri.v1.runtime"}
RUNC_V2 = "io.containerd.runc.v2"
RESTART = ("restart containerd so it reads its config again: `systemctl restart containerd` "
           "(running containers keep running; their shims are not restarted)")
HEADER = """\
# flexai runtime for containerd's CRI plugin (Kubernetes RuntimeClass handler "flexai").
# Written by `flexai install containerd` and imported by {main};
# `flexai uninstall containerd` removes it. Edit {main}, then run the install again.
"""
V2_NOTE = """\
# containerd 1.x (config version 2) replaces a whole plugin section with an imported one, so
# the CRI plugin's other settings below are copied from {main}.
"""


def plugin_id(version: int) -> str:
    return CRI_PLUGIN[version]


def version_of(data: dict, path: str) -> int:
    version = data.get("version", 1)
    if version not in CRI_PLUGIN:
        raise ConfigError(
            f"{path}: config version {version} is not supported (flexai edits versions 2 and 3; "
            f"write `version = 2` and the version-2 plugin names, see `containerd config default`)"
        )
    return version


def _resolve_imports(imports: list, main_path: str) -> list[str]:
    """The files an imports list names, in containerd's order (globs expanded and sorted)."""
    base = os.path.dirname(os.path.abspath(main_path))
    out: list[str] = []
    for pattern in imports:
        if not isinstance(pattern, str):
            continue
        pattern = pattern if os.path.isabs(pattern) else os.path.join(base, pattern)
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        out.extend(m for m in matches if m not in out)
    return out


def imports_cover(imports: list, main_path: str, dropin: str) -> bool:
    """Whether the imports list already names the drop-in (as a path or through a glob)."""
    import fnmatch

    base = os.path.dirname(os.path.abspath(main_path))
    target = os.path.abspath(dropin)
    for pattern in imports:
        if not isinstance(pattern, str):
            continue
        full = pattern if os.path.isabs(pattern) else os.path.join(base, pattern)
        if full == target or (glob.has_magic(full) and fnmatch.fnmatchcase(target, full)):
            return True
    return False


def _deep_merge(into: dict, other: dict) -> dict:
    for k, v in other.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _deep_merge(into[k], v)
        else:
            into[k] = copy.deepcopy(v)
    return into


def effective_cri(main: dict, imported: list[dict], version: int) -> dict:
    """The CRI plugin section containerd ends up with before flexai's drop-in is imported."""
    plugin = CRI_PLUGIN[version]
    section = copy.deepcopy((main.get("plugins") or {}).get(plugin) or {})
    for data in imported:
        other = (data.get("plugins") or {}).get(plugin)
        if other is None:
            continue
        if version == 2:
            section = copy.deepcopy(other)  # v2: the later section replaces the earlier one
        else:
            _deep_merge(section, other)
    return section


def dropin_text(
    main_text: str,
    runtime_path: str,
    default: bool = False,
    imported_texts: list[tuple[str, str]] = (),
    main_path: str = MAIN_CONFIG,
) -> tuple[str, list[str]]:
    """(the drop-in's text, notes) for a main config and the files it already imports."""
    main = tomltext.loads(main_text, main_path)
    version = version_of(main, main_path)
    imported = [tomltext.loads(text, path) for path, text in imported_texts]
    cri = effective_cri(main, imported, version)
    ctd = cri.get("containerd") or {}
    runtimes = ctd.get("runtimes") or {}
    base_name = ctd.get("default_runtime_name") or "runc"
    if base_name == RUNTIME_NAME:
        base_name = "runc"
    base = runtimes.get(base_name) or {"runtime_type": RUNC_V2}
    notes: list[str] = []
    disabled = [p for p in main.get("disabled_plugins") or [] if p in ("cri", "io.containerd.grpc.v1.cri", plugin_id(version))]
    if disabled:
        notes.append(f"{main_path} disables the CRI plugin ({disabled[0]!r} in disabled_plugins): Kubernetes "
                     f"cannot use flexai until it is enabled; `ctr run --runc-binary` works regardless")
    options = dict(base.get("options") or {})
    if options.get("BinaryName") and options["BinaryName"] != runtime_path:
        notes.append(f"the {base_name!r} runtime runs {options['BinaryName']}; set \"runtime\": "
                     f"\"{options['BinaryName']}\" in /etc/flexai/runtime.json so flexai-runtime runs it too")
    options["BinaryName"] = runtime_path
    runtime_type = base.get("runtime_type") or RUNC_V2
    if runtime_type not in (RUNC_V2, "io.containerd.runc.v1"):
        notes.append(f"the {base_name!r} runtime is {runtime_type}; flexai uses {RUNC_V2}")
        runtime_type = RUNC_V2
    flexai = {"runtime_type": runtime_type}
    for key in ("runtime_root", "privileged_without_host_devices", "base_runtime_spec", "cni_conf_dir",
                "cni_max_conf_num", "snapshotter", "sandboxer", "io_type"):
        if key in base:
            flexai[key] = base[key]
    for key in ("pod_annotations", "container_annotations"):
        values = [v for v in base.get(key) or [] if v != ANNOTATION_GLOB]
        flexai[key] = values + [ANNOTATION_GLOB]
    flexai["options"] = options

    plugin = CRI_PLUGIN[version]
    if version == 2:
        section = copy.deepcopy(cri)
        section.setdefault("containerd", {})
        section["containerd"].setdefault("runtimes", {})
        section["containerd"]["runtimes"].setdefault(base_name, base)
    else:
        section = {"containerd": {"runtimes": {}}}
    section["containerd"]["runtimes"][RUNTIME_NAME] = flexai
    if default:
        section["containerd"]["default_runtime_name"] = RUNTIME_NAME
    elif section["containerd"].get("default_runtime_name") == RUNTIME_NAME:
        section["containerd"]["default_runtime_name"] = base_name
    text = HEADER.format(main=main_path) + (V2_NOTE.format(main=main_path) if version == 2 else "")
    text += f"version = {version}\n" + tomltext.dumps({"plugins": {plugin: section}})
    return text, notes


def add_import(main_text: str, dropin: str, main_path: str = MAIN_CONFIG) -> str:
    """The main config's text with `dropin` in its `imports` (unchanged when already covered)."""
    data = tomltext.loads(main_text, main_path)
    version_of(data, main_path)
    imports = data.get("imports")
    if imports is not None and not isinstance(imports, list):
        raise ConfigError(f"{main_path}: imports must be a list; flexai did not change it")
    if imports and imports_cover(imports, main_path, dropin):
        return main_text
    if tomltext.key_span(main_text, (), "imports") is not None:
        new = tomltext.append_to_array(main_text, (), "imports", dropin)
    else:
        new = tomltext.set_key(main_text, (), "imports", tomltext.value([dropin]), after_key="version")
    if tomltext.loads(new, main_path).get("imports") != (imports or []) + [dropin]:
        raise ConfigError(f"{main_path}: could not add {dropin} to imports safely; add it by hand")
    return new


def remove_import(main_text: str, dropin: str, main_path: str = MAIN_CONFIG) -> str:
    data = tomltext.loads(main_text, main_path)
    imports = data.get("imports")
    if not isinstance(imports, list) or dropin not in imports:
        return main_text
    new = tomltext.remove_from_array(main_text, (), "imports", dropin)
    left = tomltext.loads(new, main_path).get("imports", [])
    if left != [i for i in imports if i != dropin]:
        raise ConfigError(f"{main_path}: could not remove {dropin} from imports safely; remove it by hand")
    return new


def _imported_before(main_text: str, main_path: str, dropin: str) -> list[tuple[str, str]]:
    data = tomltext.loads(main_text, main_path)
    out = []
    for path in _resolve_imports(data.get("imports") or [], main_path):
        if os.path.abspath(path) == os.path.abspath(dropin):
            continue
        text = read_text(path)
        if text is not None:
            out.append((path, text))
    return out


DEFAULT_MAIN = "version = 2\n"  # read by containerd 1.x and (converted) by 2.x


def config_version_for(version_output: str | None) -> int:
    """The config version a main config flexai creates gets, from `containerd --version`'s line:
    3 for containerd 2.x (its own format), else 2 (which 1.x and 2.x both read)."""
    found = re.search(r"\sv?(\d+)\.\d+", version_output or "")
    return 3 if found and int(found.group(1)) >= 2 else 2


def default_main(version: int) -> str:
    return f"version = {version}\n"


def installed_version() -> str | None:
    """`containerd --version` of the containerd on PATH, None when there is none."""
    binary = shutil.which("containerd")
    if binary is None:
        return None
    try:
        return subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None


def plan_install(config: str = MAIN_CONFIG, dropin: str = DROPIN, runtime_path: str | None = None,
                 default: bool = False, containerd_version: Callable[[], str | None] = installed_version) -> Plan:
    """`containerd_version` is asked only when there is no main config to take the version from."""
    runtime_path = runtime_path or default_binary("flexai-runtime")
    main_old = read_text(config)
    main_text = main_old if main_old is not None else default_main(config_version_for(containerd_version()))
    new_dropin, notes = dropin_text(main_text, runtime_path, default,
                                    _imported_before(main_text, config, dropin), config)
    new_main = add_import(main_text, dropin, config)
    plan = Plan("containerd", "install",
                [Change(dropin, read_text(dropin), new_dropin, backup=False), Change(config, main_old, new_main)],
                restart=RESTART, notes=notes)
    plan.notes.append("Kubernetes: apply runtime-config/kubernetes-runtimeclass.yaml and set "
                      "`runtimeClassName: flexai` with a flexai.io/fraction annotation on the pod; "
                      "ctr: `ctr run --runc-binary flexai-runtime --annotation flexai.io/fraction=0.3 ...`")
    return plan


def plan_uninstall(config: str = MAIN_CONFIG, dropin: str = DROPIN) -> Plan:
    main_old = read_text(config)
    changes = [Change(dropin, read_text(dropin), None, backup=False)]
    if main_old is not None:
        new_main = remove_import(main_old, dropin, config)
        created = new_main in (default_main(2), default_main(3)) and new_main != main_old
        changes.append(Change(config, main_old, None if created and _only_flexai(main_old, dropin, config)
                              else new_main))
    return Plan("containerd", "uninstall", changes, restart=RESTART)


def _only_flexai(text: str, dropin: str, path: str) -> bool:
    """Whether the main config was created by flexai install (nothing but version and our import)."""
    data = tomltext.loads(text, path)
    return set(data) <= {"version", "imports"} and data.get("imports") == [dropin]


def dropin_drift(config: str = MAIN_CONFIG, dropin: str = DROPIN) -> str | None:
    """Why the drop-in no longer matches what install would write now (None when it does)."""
    current = read_text(dropin)
    main_text = read_text(config)
    if current is None or main_text is None:
        return None
    data = tomltext.loads(current, dropin)
    version = data.get("version")
    plugin = CRI_PLUGIN.get(version)
    if plugin is None:
        return None
    ctd = (((data.get("plugins") or {}).get(plugin) or {}).get("containerd") or {})
    runtime = (ctd.get("runtimes") or {}).get(RUNTIME_NAME) or {}
    binary = (runtime.get("options") or {}).get("BinaryName")
    default = ctd.get("default_runtime_name") == RUNTIME_NAME
    if not binary:
        return f"{dropin} has no flexai runtime"
    expected, _ = dropin_text(main_text, binary, default, _imported_before(main_text, config, dropin), config)
    if tomltext.loads(expected, dropin) != data:
        return (f"{dropin} no longer matches {config} (it was changed after `flexai install containerd`); "
                f"run `flexai install containerd` again")
    return None
