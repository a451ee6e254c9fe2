"""Docker: the `flexai` entry in /etc/docker/daemon.json's `runtimes`.

    {"runtimes": {"flexai": {"path": "/usr/local/bin/flexai-runtime"}}}

and with --default also `"default-runtime": "flexai"`; the default it replaced (say `nvidia`)
is recorded in flexai's entry and flexai-runtime runs that runtime's binary instead of runc
(`"runtimeArgs": ["--flexai-runtime=/usr/bin/nvidia-container-runtime"]`); uninstall puts it
back. dockerd re-reads `runtimes` and `default-runtime` on SIGHUP (`systemctl reload docker`),
but only those present in the file, so uninstall leaves `"runtimes": {}` and an explicit
default rather than deleting the keys. daemon.json is JSON, so there are no comments to keep;
key order and indentation are kept.
"""

from __future__ import annotations

import json
import re

from . import RUNTIME_NAME, Change, ConfigError, Plan, default_binary, read_text

DAEMON_JSON = "/etc/docker/daemon.json"
RESTART = ("reload dockerd so it reads the runtimes again: `systemctl reload docker` "
           "(or `kill -HUP $(pidof dockerd)`); running containers are not affected")


def parse(text: str | None, path: str = DAEMON_JSON) -> dict:
    if text is None or not text.strip():
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc}); flexai did not change it") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must hold a JSON object, not {type(data).__name__}; flexai did not change it")
    runtimes = data.get("runtimes")
    if runtimes is not None and not isinstance(runtimes, dict):
        raise ConfigError(f"{path}: \"runtimes\" must be an object; flexai did not change it")
    return data


def _indent(text: str | None) -> int | str:
    """The file's indentation (so a rewrite looks like the original), default 2 spaces."""
    for line in (text or "").splitlines()[1:]:
        stripped = line.lstrip(" \t")
        if stripped and len(stripped) < len(line):
            ws = line[: len(line) - len(stripped)]
            return "\t" if ws.startswith("\t") else len(ws)
    return 2


def _render(data: dict, like: str | None) -> str:
    return json.dumps(data, indent=_indent(like), ensure_ascii=False) + "\n"


# Where `--default` remembers the default runtime it replaced (in flexai's own runtime entry,
# which dockerd reads as a `types.Runtime` and whose unknown keys it ignores), so uninstall can
# put it back and flexai-runtime can chain to it.
PREVIOUS_KEY = "flexai-previous-default-runtime"
# flexai-runtime's first argument naming the real runtime it runs (dockerd's `runtimeArgs`).
CHAIN_FLAG = "--flexai-runtime="
# dockerd's own runtime: flexai-runtime runs runc already, nothing to chain.
STOCK_RUNTIMES = frozenset({"runc", "io.containerd.runc.v2"})
# dockerd runs a runtime with runtimeArgs through `#!/bin/sh\nPATH ARGS $@`: no quoting.
_SHELL_SAFE = re.compile(r"^[A-Za-z0-9_./+:@%=,-]+$")


def chain_target(data: dict, name: str | None, path: str = DAEMON_JSON) -> str | None:
    """The binary flexai-runtime must run so that containers keep running as under dockerd's
    default runtime `name` (None for dockerd's stock runc). Raises ConfigError when flexai cannot
    stand in for it (a shim runtime, runtime arguments, an unknown name)."""
    if name is None or name in STOCK_RUNTIMES:
        return None
    entry = (data.get("runtimes") or {}).get(name)
    if not isinstance(entry, dict):
        raise ConfigError(f"{path}: the default runtime {name!r} is not in \"runtimes\", so flexai cannot run "
                          f"containers through it; flexai did not change it")
    if entry.get("runtimeType") and not entry.get("path"):
        raise ConfigError(f"{path}: the default runtime {name!r} is a containerd shim "
                          f"({entry['runtimeType']}), not an OCI runtime flexai can run; flexai did not change it")
    if entry.get("runtimeArgs"):
        raise ConfigError(f"{path}: the default runtime {name!r} has runtimeArgs, which flexai cannot pass on; "
                          f"flexai did not change it (install without --default and use --runtime=flexai)")
    binary = entry.get("path") or name
    if not isinstance(binary, str) or not _SHELL_SAFE.match(binary):
        raise ConfigError(f"{path}: the default runtime {name!r} has a path dockerd cannot pass on unquoted "
                          f"({binary!r}); flexai did not change it")
    return binary


def install_data(data: dict, runtime_path: str, default: bool = False, path: str = DAEMON_JSON) -> dict:
    """daemon.json (parsed, changed in place and returned) with the flexai runtime registered.

    With `default`, flexai becomes dockerd's default runtime; the default it replaces is kept in
    flexai's entry (PREVIOUS_KEY) and, unless it is runc, flexai-runtime is told to run it
    (`runtimeArgs: ["--flexai-runtime=PATH"]`) so e.g. an `nvidia` default keeps working."""
    runtimes = data.setdefault("runtimes", {})
    entry = runtimes.get(RUNTIME_NAME)
    entry = dict(entry) if isinstance(entry, dict) else {}
    entry["path"] = runtime_path
    current = data.get("default-runtime")
    if current == RUNTIME_NAME:
        previous = entry.get(PREVIOUS_KEY)  # installed with --default before: keep what it replaced
    elif default:
        previous = current
    else:
        previous = None
    if current == RUNTIME_NAME or default:
        if previous is not None and previous != RUNTIME_NAME:
            entry[PREVIOUS_KEY] = previous
        else:
            entry.pop(PREVIOUS_KEY, None)
        chain = chain_target(data, previous if previous != RUNTIME_NAME else None, path)
    else:
        entry.pop(PREVIOUS_KEY, None)
        chain = None
    args = [a for a in entry.get("runtimeArgs") or [] if not (isinstance(a, str) and a.startswith(CHAIN_FLAG))]
    if chain:
        args.insert(0, CHAIN_FLAG + chain)
    if args:
        entry["runtimeArgs"] = args
    else:
        entry.pop("runtimeArgs", None)
    runtimes[RUNTIME_NAME] = entry
    if default:
        data["default-runtime"] = RUNTIME_NAME
    return data


def uninstall_data(data: dict) -> dict:
    """daemon.json (parsed, changed in place and returned) without flexai.

    The default runtime flexai replaced comes back; with none recorded, `"default-runtime":
    "runc"` is written rather than the key deleted, and an emptied `runtimes` stays as `{}`:
    a reloaded (SIGHUP) dockerd only changes settings that are present in the file, so a missing
    key would leave flexai registered (and the default) in the running daemon."""
    runtimes = data.get("runtimes")
    entry = runtimes.get(RUNTIME_NAME) if isinstance(runtimes, dict) else None
    if isinstance(runtimes, dict) and RUNTIME_NAME in runtimes:
        del runtimes[RUNTIME_NAME]
    if data.get("default-runtime") == RUNTIME_NAME:
        previous = entry.get(PREVIOUS_KEY) if isinstance(entry, dict) else None
        data["default-runtime"] = previous if isinstance(previous, str) and previous else "runc"
    return data


def install_text(text: str | None, runtime_path: str, default: bool = False, path: str = DAEMON_JSON) -> str:
    """daemon.json's text with the flexai runtime registered (and the default with `default`)."""
    data = parse(text, path)
    before = json.dumps(data, sort_keys=False)
    install_data(data, runtime_path, default, path)
    if text is not None and json.dumps(data, sort_keys=False) == before:
        return text  # already installed: the same bytes, not a reformatted file
    return _render(data, text)


def uninstall_text(text: str | None, path: str = DAEMON_JSON) -> str | None:
    """daemon.json's text without flexai (None when there is no file)."""
    if text is None:
        return None
    data = parse(text, path)
    before = json.dumps(data)
    uninstall_data(data)
    if json.dumps(data) == before:
        return text
    return _render(data, text)


def installed(text: str | None, path: str = DAEMON_JSON) -> dict | None:
    """The flexai runtime entry of daemon.json, or None."""
    data = parse(text, path)
    entry = (data.get("runtimes") or {}).get(RUNTIME_NAME)
    return entry if isinstance(entry, dict) else None


def plan_install(config: str = DAEMON_JSON, runtime_path: str | None = None, default: bool = False) -> Plan:
    runtime_path = runtime_path or default_binary("flexai-runtime")
    old = read_text(config)
    new = install_text(old, runtime_path, default, config)
    plan = Plan("docker", "install", [Change(config, old, new)], restart=RESTART)
    plan.notes.append("use it with `docker run --runtime=flexai -e FLEXAI_FRACTION=0.3 ...`"
                      + ("; it is now dockerd's default runtime" if default else ""))
    entry = installed(new, config) or {}
    if entry.get(PREVIOUS_KEY):
        chain = next((a[len(CHAIN_FLAG):] for a in entry.get("runtimeArgs") or []
                      if isinstance(a, str) and a.startswith(CHAIN_FLAG)), None)
        plan.notes.append(f"it replaced the default runtime {entry[PREVIOUS_KEY]!r}"
                          + (f": flexai-runtime runs {chain} instead of runc" if chain else "")
                          + "; `flexai uninstall docker` makes it the default again")
    return plan


def plan_uninstall(config: str = DAEMON_JSON) -> Plan:
    old = read_text(config)
    new = uninstall_text(old, config)
    plan = Plan("docker", "uninstall", [Change(config, old, new)], restart=RESTART)
    plan.notes.append("containers already running with --runtime=flexai keep running; stop them before "
                      "removing flexai-runtime")
    return plan
