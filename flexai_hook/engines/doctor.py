"""`flexai doctor`: is this host set up to start sliced containers, and if not, what to fix.

Each check gives a `Finding` (ok, warn or fail, one line, and a fix when there is one). The
checks only read: files, /proc, flexaid's status, and `docker info` when dockerd is up.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from dataclasses import dataclass

from .. import client
from . import ConfigError, RUNTIME_NAME, containerd, default_binary, docker, podman, read_text, tomltext

OK, WARN, FAIL = "ok", "warn", "FAIL"
LIBRARY_CANDIDATES = ("/usr/local/lib/flexai/libflexai.so", "/opt/flexai/lib/libflexai.so", "/usr/lib/flexai/libflexai.so")


@dataclass(frozen=True)
class Finding:
    level: str
    topic: str
    message: str
    fix: str = ""

    def render(self) -> str:
        line = f"{self.level:<4}  {self.topic}: {self.message}"
        return line + (f"\n      fix: {self.fix}" if self.fix else "")


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def process_start(name: str) -> tuple[int, float] | None:
    """(pid, start time as unix time) of the oldest process whose command name is `name`."""
    try:
        with open("/proc/stat") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    except (OSError, StopIteration):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    best = None
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1: raw.rindex(")")]
        if comm != name:
            continue
        start = btime + int(raw[raw.rindex(")") + 2:].split()[19]) / ticks
        if best is None or start < best[1]:
            best = (int(entry), start)
    return best


def _restart_finding(topic: str, process: str, files: list[str], how: str) -> Finding | None:
    running = process_start(process)
    if running is None:
        return Finding(WARN, topic, f"{process} is not running here; the config takes effect when it starts")
    changed = max((t for t in (_mtime(f) for f in files) if t is not None), default=None)
    if changed is not None and changed > running[1]:
        return Finding(FAIL, topic, f"{process} (pid {running[0]}) started before its config last changed",
                       how)
    return Finding(OK, topic, f"{process} (pid {running[0]}) started after its config last changed")


def check_commands() -> list[Finding]:
    out = []
    for name in ("flexai-runtime", "flexai-hook"):
        path = default_binary(name)
        if _executable(path):
            out.append(Finding(OK, "commands", f"{name} at {path}"))
        else:
            out.append(Finding(FAIL, "commands", f"{name} not found", "bash packaging/install.sh"))
    return out


def check_daemon(socket: str) -> list[Finding]:
    out = []
    try:
        reply = client.call({"op": "status"}, socket, timeout=5)
        cards = reply.get("status", {}).get("cards", [])
        out.append(Finding(OK, "flexaid", f"answering on {socket}: {len(cards)} card(s)"))
    except client.DaemonUnavailable as exc:
        out.append(Finding(FAIL, "flexaid", str(exc).split("; ")[0],
                           "systemctl start flexaid.socket (or flexaid --config /etc/flexai/flexaid.json)"))
    except client.DaemonRefused as exc:
        out.append(Finding(FAIL, "flexaid", f"refused a status request: {exc}"))
    try:
        st = os.stat(socket)
    except OSError:
        return out
    mode = stat.S_IMODE(st.st_mode)
    try:
        import grp

        group = grp.getgrgid(st.st_gid).gr_name
    except (KeyError, ImportError):
        group = str(st.st_gid)
    if mode & 0o007:
        out.append(Finding(WARN, "socket", f"{socket} is mode {mode:04o}: any local user can reserve slices",
                           f"chmod 0660 {socket} (flexaid.socket sets SocketMode=0660)"))
    elif not os.access(socket, os.W_OK):
        out.append(Finding(FAIL, "socket", f"{socket} (mode {mode:04o}, group {group}) is not writable by this user",
                           f"add the user to group {group}, or run the engine as root"))
    else:
        out.append(Finding(OK, "socket", f"{socket} mode {mode:04o}, group {group}"))
    return out


def library_path() -> str | None:
    env = os.environ.get("FLEXAI_LIBRARY")
    for path in ((env,) if env else ()) + LIBRARY_CANDIDATES:
        if path and os.path.isfile(path):
            return path
    return None


def check_library() -> list[Finding]:
    path = library_path()
    if path:
        return [Finding(OK, "library", f"libflexai at {path}")]
    return [Finding(WARN, "library", "libflexai.so is not installed: sliced containers get their slice file and "
                    "device but no enforcement of the limits", "build and install libflexai (bash packaging/install.sh)")]


def cgroup_version(root: str = "/sys/fs/cgroup") -> str:
    """"v2", "hybrid" (v1 controllers plus a unified hierarchy) or "v1"."""
    if os.path.exists(os.path.join(root, "cgroup.controllers")):
        return "v2"
    if os.path.exists(os.path.join(root, "unified", "cgroup.controllers")) or os.path.isdir(os.path.join(root, "unified")):
        return "hybrid"
    return "v1"


def check_cgroups() -> list[Finding]:
    version = cgroup_version()
    if version == "v2":
        return [Finding(OK, "cgroups", "cgroup v2 (unified); the Podman annotation path cannot add device rules for "
                        "real cards there: use `--runtime flexai` or also pass `--device`")]
    if version == "hybrid":
        return [Finding(WARN, "cgroups", "hybrid cgroup v1/v2 layout: runc works; crun 1.8 refuses to run here",
                        "keep runc as the real runtime (\"runtime\": \"runc\" in /etc/flexai/runtime.json)")]
    return [Finding(OK, "cgroups", "cgroup v1")]


def check_docker(config: str) -> list[Finding]:
    topic = "docker"
    try:
        text = read_text(config)
        entry = docker.installed(text, config)
    except ConfigError as exc:
        return [Finding(FAIL, topic, str(exc), f"fix the JSON in {config}")]
    if text is None or entry is None:
        if shutil.which("dockerd"):
            return [Finding(WARN, topic, f"{config} does not register the flexai runtime", "flexai install docker")]
        return []
    out = []
    path = entry.get("path", "")
    if _executable(path):
        out.append(Finding(OK, topic, f"{config} registers runtime flexai -> {path}"))
    else:
        out.append(Finding(FAIL, topic, f"{config} registers runtime flexai -> {path}, which is not an executable",
                           "flexai install docker"))
    loaded = _docker_runtimes()
    if loaded is None:
        finding = _restart_finding(topic, "dockerd", [config], docker.RESTART)
        if finding:
            out.append(finding)
    elif RUNTIME_NAME in loaded:
        out.append(Finding(OK, topic, "the running dockerd knows the flexai runtime"))
    else:
        out.append(Finding(FAIL, topic, "the running dockerd does not know the flexai runtime yet", docker.RESTART))
    return out


def _docker_runtimes() -> list[str] | None:
    binary = shutil.which("docker")
    if not binary:
        return None
    try:
        out = subprocess.run([binary, "info", "--format", "{{json .Runtimes}}"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    import json

    try:
        return list(json.loads(out.stdout))
    except ValueError:
        return None


def check_containerd(config: str, dropin: str) -> list[Finding]:
    topic = "containerd"
    try:
        main_text = read_text(config)
        dropin_text = read_text(dropin)
        if main_text is None and dropin_text is None:
            if shutil.which("containerd"):
                return [Finding(WARN, topic, "the flexai runtime is not configured", "flexai install containerd")]
            return []
        out = []
        data = tomltext.loads(main_text or "", config)
        if not containerd.imports_cover(data.get("imports") or [], config, dropin):
            out.append(Finding(FAIL, topic, f"{config} does not import {dropin}", "flexai install containerd"))
        if dropin_text is None:
            out.append(Finding(FAIL, topic, f"{dropin} is missing", "flexai install containerd"))
            return out
        drift = containerd.dropin_drift(config, dropin)
        if drift:
            out.append(Finding(FAIL, topic, drift, "flexai install containerd"))
        else:
            out.append(Finding(OK, topic, f"{dropin} registers runtime flexai and is imported by {config}"))
    except ConfigError as exc:
        return [Finding(FAIL, topic, str(exc))]
    finding = _restart_finding(topic, "containerd", [config, dropin], containerd.RESTART)
    if finding:
        out.append(finding)
    return out


def check_podman(config: str, hooks_dir: str | None = None, root: str = "/") -> list[Finding]:
    """The runtime entry, and flexai's hook files in a folder this Podman reads (`hooks_dir`:
    a folder the user named; flexai's files are also looked for where Podman reads hooks and
    where earlier flexai versions wrote them)."""
    import json

    topic = "podman"
    try:
        text = read_text(config)
        data = tomltext.loads(text, config) if text is not None else {}
        dirs, source = podman.effective_hooks_dirs(root, config)
    except ConfigError as exc:
        return [Finding(FAIL, topic, str(exc))]
    engine = data.get("engine") or {}
    entry = (engine.get("runtimes") or {}).get(RUNTIME_NAME)
    candidates = []
    for d in ([hooks_dir] if hooks_dir else []) + dirs + [podman.in_root(root, d) for d in
                                                          (podman.LEGACY_HOOKS_DIR, *podman.BUILTIN_HOOKS_DIRS)]:
        if os.path.abspath(d) not in [os.path.abspath(c) for c in candidates]:
            candidates.append(d)
    found = [d for d in candidates if any(os.path.exists(os.path.join(d, n)) for n in podman.HOOK_FILES.values())]
    if entry is None and not found:
        if shutil.which("podman"):
            return [Finding(WARN, topic, "the flexai runtime and hooks are not configured", "flexai install podman")]
        return []
    out = []
    if entry and any(_executable(p) for p in entry):
        out.append(Finding(OK, topic, f"{config} registers runtime flexai -> {entry[0]}"))
    else:
        out.append(Finding(FAIL, topic, f"{config} has no usable flexai runtime entry", "flexai install podman"))
    read = [d for d in found if os.path.abspath(d) in [os.path.abspath(x) for x in dirs]]
    for directory in found:
        if directory not in read:
            out.append(Finding(WARN if read else FAIL, topic, f"flexai's hooks are in {directory}, which this Podman does not read: it "
                               f"reads {podman.describe_dirs(dirs, source)}; the annotation path is off",
                               "flexai install podman (moves them)" if not hooks_dir else
                               f"add {directory!r} to engine.hooks_dir in {config}"))
    for directory in read or (dirs[-1:] if not found else []):
        ok = True
        for name in podman.HOOK_FILES.values():
            hook_file = os.path.join(directory, name)
            try:
                with open(hook_file) as f:
                    hook = json.load(f)["hook"]["path"]
            except (OSError, ValueError, KeyError, TypeError):
                out.append(Finding(FAIL, topic, f"{hook_file} is missing or unreadable", "flexai install podman"))
                ok = False
                continue
            if not _executable(hook):
                out.append(Finding(FAIL, topic, f"{hook_file} runs {hook}, which is not an executable",
                                   "flexai install podman"))
                ok = False
        if ok:
            out.append(Finding(OK, topic, f"hooks in {directory} (read by Podman: "
                               f"{'engine.hooks_dir in ' + source if source else 'its built-in default'}) "
                               f"match flexai.io/ annotations"))
    if os.environ.get("CONTAINERS_CONF"):
        out.append(Finding(WARN, topic, f"CONTAINERS_CONF={os.environ['CONTAINERS_CONF']} makes podman read only "
                           f"that file", f"add the flexai runtime there too (flexai install podman --config ...)"))
    return out


def run(socket: str, docker_config: str, containerd_config: str, containerd_dropin: str, podman_config: str,
        hooks_dir: str | None, engines: tuple[str, ...] = ("docker", "containerd", "podman"),
        podman_root: str = "/") -> list[Finding]:
    findings = check_commands() + check_daemon(socket) + check_library() + check_cgroups()
    if "docker" in engines:
        findings += check_docker(docker_config)
    if "containerd" in engines:
        findings += check_containerd(containerd_config, containerd_dropin)
    if "podman" in engines:
        findings += check_podman(podman_config, hooks_dir, podman_root)
    return findings
