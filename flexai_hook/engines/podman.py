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

Where the hooks go is Podman's choice, not flexai's: the `engine.hooks_dir` of the last
containers.conf that sets it (/usr/share/containers/containers.conf, /etc/containers/containers.conf,
/etc/containers/containers.conf.d/*.conf, and for rootless users ~/.config/containers/...; only
$CONTAINERS_CONF when that is set), else Podman's built-in /usr/share/containers/oci/hooks.d
(containers.conf(5), `podman --help`). Podman 4.3 without `hooks_dir` does not read
/etc/containers/oci/hooks.d, so `effective_hooks_dirs` finds the directories and install writes the
last of them (the one that wins a name clash). `root` treats a folder as / (tests, image builds).
"""

from __future__ import annotations

import json
import os

from . import RUNTIME_NAME, Change, ConfigError, Plan, default_binary, read_text
from . import tomltext

CONTAINERS_CONF = "/etc/containers/containers.conf"
SYSTEM_CONFS = ("/usr/share/containers/containers.conf", "/etc/containers/containers.conf")
SYSTEM_CONF_D = "/etc/containers/containers.conf.d"
BUILTIN_HOOKS_DIRS = ("/usr/share/containers/oci/hooks.d",)  # Podman's default without hooks_dir
LEGACY_HOOKS_DIR = "/etc/containers/oci/hooks.d"  # where flexai wrote before issue 17; read only when configured
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


def in_root(root: str | None, path: str) -> str:
    """`path` (absolute, as Podman sees it) under the folder `root` stands for /."""
    if not root or os.path.abspath(root) == "/":
        return path
    return os.path.join(os.path.abspath(root), os.path.abspath(path).lstrip("/"))


def _dropins(directory: str) -> list[str]:
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".conf"))
    except OSError:
        return []
    return [os.path.join(directory, n) for n in names]


def conf_files(root: str | None = "/", env: dict[str, str] | None = None, rootless: bool | None = None) -> list[str]:
    """The containers.conf files Podman reads, in order: a later one's setting wins."""
    env = os.environ if env is None else env
    if env.get("CONTAINERS_CONF"):
        return [env["CONTAINERS_CONF"]]
    files = [in_root(root, p) for p in SYSTEM_CONFS] + _dropins(in_root(root, SYSTEM_CONF_D))
    if rootless if rootless is not None else os.geteuid() != 0:
        base = env.get("XDG_CONFIG_HOME") or os.path.join(env.get("HOME", "~"), ".config")
        user = os.path.join(base, "containers")
        files += [os.path.join(user, "containers.conf")] + _dropins(os.path.join(user, "containers.conf.d"))
    return files


def hooks_dirs(texts: list[tuple[str, str | None]]) -> tuple[list[str], str | None]:
    """Pure: the hooks directories Podman uses given its containers.conf files [(path, text or None)]
    in reading order, and the file that set them (None: Podman's built-in default)."""
    dirs, source = list(BUILTIN_HOOKS_DIRS), None
    for path, text in texts:
        if text is None:
            continue
        configured = (tomltext.loads(text, path).get("engine") or {}).get("hooks_dir")
        if configured is None:
            continue
        if not isinstance(configured, list) or not all(isinstance(d, str) for d in configured):
            raise ConfigError(f"{path}: engine.hooks_dir is not a list of folders; flexai did not change it")
        dirs, source = list(configured), path
    return dirs, source


def effective_hooks_dirs(root: str | None = "/", config: str | None = None,
                         env: dict[str, str] | None = None) -> tuple[list[str], str | None]:
    """The hooks directories this host's Podman reads (under `root`), and the file that set them.

    `config`, when it is not one of the files Podman reads by default, is read last: the caller
    says Podman reads it (through CONTAINERS_CONF)."""
    files = conf_files(root, env)
    if config and os.path.abspath(config) not in [os.path.abspath(f) for f in files]:
        files.append(config)
    dirs, source = hooks_dirs([(f, read_text(f)) for f in files])
    return [in_root(root, d) for d in dirs], source


def describe_dirs(dirs: list[str], source: str | None) -> str:
    where = f"engine.hooks_dir in {source}" if source else "its built-in default; no containers.conf sets hooks_dir"
    return f"{', '.join(dirs) or 'no folder'} ({where})"


def is_flexai_hook(text: str | None) -> bool:
    """Whether a hooks.d file's text is one flexai wrote (runs `flexai-hook`)."""
    try:
        hook = json.loads(text or "")["hook"]
        return hook["args"][0] == "flexai-hook" or os.path.basename(hook["path"]) == "flexai-hook"
    except (ValueError, KeyError, TypeError, IndexError):
        return False


def _stray_hooks(keep: str | None, candidates: list[str]) -> list[Change]:
    """Removals of flexai's hook files in `candidates` other than `keep` (an older install's place)."""
    out, seen = [], ({os.path.abspath(keep)} if keep else set())
    for directory in candidates:
        if os.path.abspath(directory) in seen:
            continue
        seen.add(os.path.abspath(directory))
        for name in HOOK_FILES.values():
            target = os.path.join(directory, name)
            old = read_text(target)
            if old is not None and is_flexai_hook(old):
                out.append(Change(target, old, None, backup=False))
    return out


def plan_install(config: str = CONTAINERS_CONF, hooks_dir: str | None = None, runtime_path: str | None = None,
                 hook_path: str | None = None, default: bool = False, hook_env: dict[str, str] | None = None,
                 root: str | None = "/") -> Plan:
    """`hooks_dir` None: the folder Podman reads (`effective_hooks_dirs`); flexai's hooks found in
    other folders it may have used before are removed, so Podman runs them once, from there."""
    runtime_path = runtime_path or default_binary("flexai-runtime")
    hook_path = hook_path or default_binary("flexai-hook")
    old = read_text(config)
    changes = [Change(config, old, install_conf(old, runtime_path, default, config))]
    dirs, source = effective_hooks_dirs(root, config)
    notes = []
    chosen = hooks_dir or (dirs[-1] if dirs else None)
    if chosen is None:
        notes.append(f"Podman reads no hooks folder ({source} sets engine.hooks_dir = []): the annotation path "
                     f"is off; use `--runtime flexai`")
    else:
        for name, text in hook_texts(hook_path, hook_env).items():
            target = os.path.join(chosen, name)
            changes.append(Change(target, read_text(target), text, backup=False))
        if hooks_dir is None:
            changes += _stray_hooks(chosen, dirs + [in_root(root, d) for d in (LEGACY_HOOKS_DIR, *BUILTIN_HOOKS_DIRS)])
        elif os.path.abspath(hooks_dir) not in [os.path.abspath(d) for d in dirs]:
            notes.append(f"Podman reads hooks only from {describe_dirs(dirs, source)}: add {hooks_dir!r} to "
                         f"engine.hooks_dir, or the annotation path is not used")
    plan = Plan("podman", "install", changes, restart=RESTART, notes=notes)
    plan.notes.append("use it with `podman run --runtime flexai -e FLEXAI_FRACTION=0.3 ...` or, with any "
                      "runtime, `podman run --annotation flexai.io/fraction=0.3 ...`")
    return plan


def plan_uninstall(config: str = CONTAINERS_CONF, hooks_dir: str | None = None, root: str | None = "/") -> Plan:
    """`hooks_dir` None: flexai's hook files wherever Podman reads hooks or flexai used to write them."""
    old = read_text(config)
    changes = [Change(config, old, uninstall_conf(old, config))]
    if hooks_dir is not None:
        for name in HOOK_FILES.values():
            target = os.path.join(hooks_dir, name)
            changes.append(Change(target, read_text(target), None, backup=False))
    else:
        dirs, _ = effective_hooks_dirs(root, config)
        changes += _stray_hooks(None, dirs + [in_root(root, d) for d in (LEGACY_HOOKS_DIR, *BUILTIN_HOOKS_DIRS)])
    return Plan("podman", "uninstall", changes, restart=RESTART)
