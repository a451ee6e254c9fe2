"""Podman: a runtime entry in containers.conf and two OCI hooks in hooks.d.

Two ways in, both installed:

- `podman run --runtime flexai -e FLEXAI_FRACTION=0.3 ...`: containers.conf's
  `[engine.runtimes]` gets `flexai = ["/usr/local/bin/flexai-runtime"]` (with --default also
  `[engine] runtime = "flexai"`);
- `podman run --annotation flexai.io/fraction=0.3 ...` with the ordinary runtime: the hooks.d
  files match any `flexai.io/` annotation. `flexai-hook createContainer` runs in the container's
  mount namespace before pivot_root, reserves the slice and mounts the slice files and device
  node into the rootfs itself (a hook cannot edit the spec); `flexai-hook poststop` releases it.

Podman reads containers.conf and hooks.d on every command: nothing to restart.
"""

from __future__ import annotations

import json
import os

from . import RUNTIME_NAME, Change, ConfigError, Plan, default_binary, read_text
from . import tomltext

CONTAINERS_CONF = "/etc/containers/containers.conf"
HOOKS_DIR = "/etc/containers/oci/hooks.d"
HOOK_FILES = {"createContainer": "flexai.json", "poststop": "flexai-release.json"}
ANNOTATION_MATCH = {r"^flexai\.io/": ".*"}
RESTART = ("nothing to restart: podman reads containers.conf and hooks.d on every command "
           "(restart `podman.service` if you use Podman's API socket)")
DEFAULT_MARK = "# set by flexai install --default; was "
CREATED_HEADER = "# Written by `flexai install podman`: the flexai OCI runtime.\n"


def install_conf(text: str | None, runtime_path: str, default: bool = False, path: str = CONTAINERS_CONF) -> str:
    """containers.conf's text with `flexai` in [engine.runtimes] (and the default runtime)."""
    text = text if text is not None else CREATED_HEADER
    data = tomltext.loads(text, path)
    engine = data.get("engine") or {}
    runtimes = engine.get("runtimes")
    if runtimes is not None and not isinstance(runtimes, dict):
        raise ConfigError(f"{path}: engine.runtimes is not a table; flexai did not change it")
    new = text
    if (runtimes or {}).get(RUNTIME_NAME) != [runtime_path]:
        if runtimes is not None and tomltext.table_range(text.splitlines(True), ("engine", "runtimes")) is None:
            raise ConfigError(f"{path}: engine.runtimes is written inline; add "
                              f"flexai = [\"{runtime_path}\"] to it by hand")
        new = tomltext.set_key(new, ("engine", "runtimes"), RUNTIME_NAME, tomltext.value([runtime_path]))
    if default and engine.get("runtime") != RUNTIME_NAME:
        rendered = tomltext.value(RUNTIME_NAME)
        if isinstance(engine.get("runtime"), str):
            # uninstall puts the old default back from this comment
            rendered += f"  {DEFAULT_MARK}{tomltext.value(engine['runtime'])}"
        new = _set_engine_key(new, "runtime", rendered, path)
    check = tomltext.loads(new, path)
    if (check.get("engine") or {}).get("runtimes", {}).get(RUNTIME_NAME) != [runtime_path]:
        raise ConfigError(f"{path}: could not add the flexai runtime safely; add it by hand")
    return new


def _set_engine_key(text: str, name: str, rendered: str, path: str) -> str:
    lines = text.splitlines(True)
    if tomltext.table_range(lines, ("engine",)) is None and "engine" in tomltext.loads(text, path):
        # [engine] exists only through [engine.x] sub-tables: a header of its own goes before them
        for idx, p in tomltext.headers(lines):
            if p and p[0] == "engine":
                return "".join(lines[:idx]) + f"[engine]\n{name} = {rendered}\n\n" + "".join(lines[idx:])
    return tomltext.set_key(text, ("engine",), name, rendered)


def uninstall_conf(text: str | None, path: str = CONTAINERS_CONF) -> str | None:
    """containers.conf without flexai; None when nothing but flexai's header would be left."""
    if text is None:
        return None
    data = tomltext.loads(text, path)
    engine = data.get("engine") or {}
    new = text
    if RUNTIME_NAME in (engine.get("runtimes") or {}):
        new = tomltext.remove_key(new, ("engine", "runtimes"), RUNTIME_NAME)
    if engine.get("runtime") == RUNTIME_NAME:
        span = tomltext.key_span(new, ("engine",), "runtime")
        line = new[span[0]:span[1]]
        if DEFAULT_MARK in line:
            old_value = line.split(DEFAULT_MARK, 1)[1].strip()
            new = tomltext.set_key(new, ("engine",), "runtime", old_value)
            new = new.replace(f"  {DEFAULT_MARK}{old_value}", "")
        else:
            new = tomltext.remove_key(new, ("engine",), "runtime")
    if new.startswith(CREATED_HEADER) and not new[len(CREATED_HEADER):].strip():
        return None
    return new


def hook_config(stage: str, hook_path: str, env: dict[str, str] | None = None) -> dict:
    """One hooks.d file (version 1.0.0): `flexai-hook <stage>` for containers with a flexai.io/ annotation."""
    hook = {"path": hook_path, "args": ["flexai-hook", stage]}
    if env:
        hook["env"] = [f"{k}={v}" for k, v in env.items()]
    return {"version": "1.0.0", "hook": hook, "when": {"annotations": dict(ANNOTATION_MATCH)}, "stages": [stage]}


def hook_texts(hook_path: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """{file name: text} of flexai's hooks.d files."""
    return {name: json.dumps(hook_config(stage, hook_path, env), indent=2) + "\n" for stage, name in HOOK_FILES.items()}


def plan_install(config: str = CONTAINERS_CONF, hooks_dir: str = HOOKS_DIR, runtime_path: str | None = None,
                 hook_path: str | None = None, default: bool = False, hook_env: dict[str, str] | None = None) -> Plan:
    runtime_path = runtime_path or default_binary("flexai-runtime")
    hook_path = hook_path or default_binary("flexai-hook")
    old = read_text(config)
    changes = [Change(config, old, install_conf(old, runtime_path, default, config))]
    for name, text in hook_texts(hook_path, hook_env).items():
        target = os.path.join(hooks_dir, name)
        changes.append(Change(target, read_text(target), text, backup=False))
    plan = Plan("podman", "install", changes, restart=RESTART)
    configured = ((tomltext.loads(old, config).get("engine") or {}).get("hooks_dir") if old else None)
    if configured is not None and os.path.abspath(hooks_dir) not in [os.path.abspath(d) for d in configured]:
        plan.notes.append(f"{config} sets engine.hooks_dir to {configured}: add {hooks_dir!r} to it, "
                          f"or the annotation path is not used")
    plan.notes.append("use it with `podman run --runtime flexai -e FLEXAI_FRACTION=0.3 ...` or, with any "
                      "runtime, `podman run --annotation flexai.io/fraction=0.3 ...`")
    return plan


def plan_uninstall(config: str = CONTAINERS_CONF, hooks_dir: str = HOOKS_DIR) -> Plan:
    old = read_text(config)
    changes = [Change(config, old, uninstall_conf(old, config))]
    for name in HOOK_FILES.values():
        target = os.path.join(hooks_dir, name)
        changes.append(Change(target, read_text(target), None, backup=False))
    return Plan("podman", "uninstall", changes, restart=RESTART)
