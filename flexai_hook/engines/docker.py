"""Docker: the `flexai` entry in /etc/docker/daemon.json's `runtimes`.

    {"runtimes": {"flexai": {"path": "/usr/local/bin/flexai-runtime"}}}

and with --default also `"default-runtime": "flexai"`. dockerd re-reads `runtimes` and
`default-runtime` on SIGHUP (`systemctl reload docker`), so no restart is needed. daemon.json
is JSON, so there are no comments to keep; key order and indentation are kept.
"""

from __future__ import annotations

import json

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


def install_text(text: str | None, runtime_path: str, default: bool = False, path: str = DAEMON_JSON) -> str:
    """daemon.json's text with the flexai runtime registered (and the default with `default`)."""
    data = parse(text, path)
    before = json.dumps(data, sort_keys=False)
    runtimes = data.setdefault("runtimes", {})
    entry = runtimes.get(RUNTIME_NAME)
    if not isinstance(entry, dict):
        entry = {}
    entry = {**entry, "path": runtime_path}
    runtimes[RUNTIME_NAME] = entry
    if default:
        data["default-runtime"] = RUNTIME_NAME
    if text is not None and json.dumps(data, sort_keys=False) == before:
        return text  # already installed: the same bytes, not a reformatted file
    return _render(data, text)


def uninstall_text(text: str | None, path: str = DAEMON_JSON) -> str | None:
    """daemon.json's text without flexai; None when the file would be left as `{}` and did not
    exist before flexai (the caller decides)."""
    if text is None:
        return None
    data = parse(text, path)
    before = json.dumps(data)
    runtimes = data.get("runtimes")
    if isinstance(runtimes, dict) and RUNTIME_NAME in runtimes:
        del runtimes[RUNTIME_NAME]
        if not runtimes:
            del data["runtimes"]
    if data.get("default-runtime") == RUNTIME_NAME:
        del data["default-runtime"]
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
    plan.notes.append(f"use it with `docker run --runtime=flexai -e FLEXAI_FRACTION=0.3 ...`"
                      + ("; it is now dockerd's default runtime" if default else ""))
    return plan


def plan_uninstall(config: str = DAEMON_JSON) -> Plan:
    old = read_text(config)
    new = uninstall_text(old, config)
    if old is not None and new is not None and not json.loads(new) and _created_by_flexai(old):
        new = None
    plan = Plan("docker", "uninstall", [Change(config, old, old if new is None and old is None else new)],
                restart=RESTART)
    plan.notes.append("containers already running with --runtime=flexai keep running; stop them before "
                      "removing flexai-runtime")
    return plan


def _created_by_flexai(old: str) -> bool:
    try:
        data = json.loads(old)
    except ValueError:
        return False
    return set(data) <= {"runtimes", "default-runtime"} and set(data.get("runtimes") or {}) <= {RUNTIME_NAME}
