"""`flexai doctor`: is this host set up to start sliced containers, and if not, what to fix.

Each check gives a `Finding` (ok, warn or fail, one line, and a fix when there is one). The
checks only read: files, /proc, flexaid's status, and `docker info` when dockerd is up.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
from dataclasses import dataclass

from .. import client
from . import RUNTIME_NAME, ConfigError, containerd, default_binary, docker, podman, read_text, tomltext

OK, WARN, FAIL, INFO = "ok", "warn", "FAIL", "info"
# where dockerd keeps the containerd it starts for itself when it is not given `--containerd`
DOCKERD_CONTAINERD_DIRS = ("/var/run/docker/containerd", "/run/docker/containerd")
SYSTEMD_UNIT_DIRS = ("etc/systemd/system", "lib/systemd/system", "usr/lib/systemd/system")
FLEXAID_DIRECT = ("mkdir -p /var/log/flexai && nohup flexaid --config /etc/flexai/flexaid.json "
                  "--log-file /var/log/flexai/flexaid.log >>/var/log/flexai/flexaid.log 2>&1 </dev/null &")


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


@dataclass(frozen=True)
class Process:
    pid: int
    ppid: int
    comm: str
    start: float  # unix time
    cmdline: tuple[str, ...]


def processes(proc: str = "/proc") -> list[Process]:
    """Every process under `proc` (a /proc tree), with its parent, name, start time and argv."""
    try:
        with open(os.path.join(proc, "stat")) as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    except (OSError, StopIteration, ValueError):
        return []
    ticks = os.sysconf("SC_CLK_TCK")
    out = []
    try:
        entries = os.listdir(proc)
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(os.path.join(proc, entry, "stat")) as f:
                raw = f.read()
            fields = raw[raw.rindex(")") + 2:].split()
            comm = raw[raw.index("(") + 1: raw.rindex(")")]
            start = btime + int(fields[19]) / ticks
            ppid = int(fields[1])
        except (OSError, ValueError, IndexError):
            continue
        try:
            with open(os.path.join(proc, entry, "cmdline"), "rb") as f:
                argv = tuple(a.decode(errors="replace") for a in f.read().split(b"\0") if a)
        except OSError:
            argv = ()
        out.append(Process(int(entry), ppid, comm, start, argv))
    return out


def process_start(name: str, proc: str = "/proc") -> tuple[int, float] | None:
    """(pid, start time as unix time) of the oldest process whose command name is `name`."""
    found = sorted((p for p in processes(proc) if p.comm == name), key=lambda p: p.start)
    return (found[0].pid, found[0].start) if found else None


def systemd_running(root: str = "/") -> bool:
    """systemd is PID 1 (what sd_booted() checks): only then is `systemctl` advice any use."""
    return os.path.isdir(os.path.join(root, "run/systemd/system"))


def _unit_installed(root: str, unit: str) -> bool:
    return any(os.path.exists(os.path.join(root, d, unit)) for d in SYSTEMD_UNIT_DIRS)


def flexaid_start_fix(systemd: bool, unit_installed: bool) -> str:
    """How to start flexaid on this host: socket activation where systemd runs and the units are
    installed, else the daemon itself (as packaging/install.sh starts it without systemd)."""
    if systemd and unit_installed:
        return "systemctl start flexaid.socket (or flexaid --config /etc/flexai/flexaid.json)"
    return FLEXAID_DIRECT


def restart_fix(name: str, systemd: bool, pid: int | None = None, cmdline: tuple[str, ...] = (),
                init_script: bool = False) -> str:
    """How to make `name` (dockerd or containerd) read its config again, with the command that
    works on this host: systemctl where systemd is PID 1, else `service` where an init script is
    installed, else a signal (dockerd reloads on SIGHUP) or a restart as it was started."""
    if name == "dockerd":
        if systemd:
            return docker.RESTART
        target = str(pid) if pid else "$(pidof dockerd)"
        return f"reload dockerd so it reads the runtimes again: `kill -HUP {target}`; running containers are not affected"
    if systemd:
        return containerd.RESTART
    if init_script:
        return ("restart containerd so it reads its config again: `service containerd restart` "
                "(running containers keep running)")
    if pid and cmdline:
        return (f"restart containerd so it reads its config again, the way it was started (no systemd here): "
                f"`kill {pid}`, then `{shlex.join(cmdline)} &` (running containers keep running)")
    return "restart containerd so it reads its config again (no systemd here: stop it and start it as before)"


def _flag(argv: tuple[str, ...] | list[str], *names: str) -> str | None:
    """The value of a command-line flag given as `--flag value`, `--flag=value` or `-f value`."""
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(name + "="):
                return arg[len(name) + 1:]
    return None


def _under(path: str, directory: str) -> bool:
    path, directory = os.path.normpath(path), os.path.normpath(directory)
    return path == directory or path.startswith(directory + "/")


def containerd_owner(cmdline: tuple[str, ...], parent_comm: str, dockerd_containerd: tuple[str, ...] = ()) -> str:
    """"dockerd" for the containerd dockerd started for itself (its child, with its config and
    socket under /var/run/docker/containerd), or one serving only the socket dockerd was given with
    `--containerd` and not reading the system config; else "system"."""
    config = _flag(cmdline, "--config", "-c") or containerd.MAIN_CONFIG
    address = _flag(cmdline, "--address", "-a")
    if parent_comm == "dockerd":
        return "dockerd"
    if any(_under(p, d) for p in (config, address) if p for d in DOCKERD_CONTAINERD_DIRS):
        return "dockerd"
    if (address and any(os.path.normpath(address) == os.path.normpath(g) for g in dockerd_containerd)
            and os.path.normpath(config) != os.path.normpath(containerd.MAIN_CONFIG)):
        return "dockerd"
    return "system"


def containerd_processes(config: str, proc: str = "/proc") -> tuple[list[Process], list[Process]]:
    """(the containerd processes that read `config`, dockerd's own containerd processes)."""
    procs = processes(proc)
    comm = {p.pid: p.comm for p in procs}
    given = tuple(g for p in procs if p.comm == "dockerd" for g in [_flag(p.cmdline, "--containerd")] if g)
    readers, dockers = [], []
    for p in sorted((p for p in procs if p.comm == "containerd"), key=lambda p: p.start):
        if containerd_owner(p.cmdline, comm.get(p.ppid, ""), given) == "dockerd":
            dockers.append(p)
        elif os.path.normpath(_flag(p.cmdline, "--config", "-c") or containerd.MAIN_CONFIG) == os.path.normpath(config):
            readers.append(p)
    return readers, dockers


def _restart_finding(topic: str, running: Process | None, files: list[str], how: str,
                     not_running: str = "") -> Finding:
    process = topic if running is None else running.comm
    if running is None:
        return Finding(WARN, topic, not_running or f"{process} is not running here; the config takes effect when it starts")
    changed = max((t for t in (_mtime(f) for f in files) if t is not None), default=None)
    if changed is not None and changed > running.start:
        return Finding(FAIL, topic, f"{process} (pid {running.pid}) started before its config last changed", how)
    return Finding(OK, topic, f"{process} (pid {running.pid}) started after its config last changed")


def check_commands() -> list[Finding]:
    out = []
    for name in ("flexai-runtime", "flexai-hook"):
        path = default_binary(name)
        if _executable(path):
            out.append(Finding(OK, "commands", f"{name} at {path}"))
        else:
            out.append(Finding(FAIL, "commands", f"{name} not found", "bash packaging/install.sh"))
    return out


def check_daemon(socket: str, root: str = "/") -> list[Finding]:
    out = []
    try:
        reply = client.call({"op": "status"}, socket, timeout=5)
        cards = reply.get("status", {}).get("cards", [])
        out.append(Finding(OK, "flexaid", f"answering on {socket}: {len(cards)} card(s)"))
    except client.DaemonUnavailable as exc:
        out.append(Finding(FAIL, "flexaid", str(exc).split("; ")[0],
                           flexaid_start_fix(systemd_running(root), _unit_installed(root, "flexaid.socket"))))
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


def check_library(lib_dir: str | None = None) -> list[Finding]:
    """The libflexai.so that flexai-runtime and flexai-hook mount into sliced containers: the one
    built into this flexai package (flexai_hook/lib/, library.library_path()); without it a
    sliced container does not start (the runtime fails closed)."""
    from flexai_hook.devices import library

    path = os.path.join(lib_dir or library.library_dir(), library.LIBRARY_NAME)
    if os.path.isfile(path):
        return [Finding(OK, "library", f"libflexai at {path} (mounted into sliced containers as "
                                       f"{library.LIBRARY_IN_CONTAINER}, named by their /etc/ld.so.preload)")]
    return [Finding(FAIL, "library", f"{path} is not built: sliced containers cannot start",
                    "python -m flexai_hook.install.cbuild with flexai's python (or bash packaging/install.sh)")]


def check_cdi(cards: list[dict], backend: str, runtime_config: str = "/etc/flexai/runtime.json") -> list[Finding]:
    """Where each card's driver comes from in a sliced container, as flexai-runtime decides it
    (oci/driver.py) from the CDI specs and the runtime config: a CDI device, the simulator's
    libraries, a chained vendor runtime, or nothing (the container starts without the driver)."""
    import json

    from flexai_hook.oci import cdi, cdi_store, driver
    from flexai_hook.reservation import Reservation

    try:
        with open(runtime_config) as f:
            raw = json.load(f)
        settings_raw = raw if isinstance(raw, dict) else {}
    except FileNotFoundError:
        settings_raw = {}
    except (OSError, ValueError) as exc:
        return [Finding(FAIL, "cdi", f"{runtime_config} cannot be read: {exc}", "fix or remove it")]
    try:
        settings = driver.settings_of(settings_raw)
    except driver.DriverConfigError as exc:
        return [Finding(FAIL, "cdi", f"{runtime_config}: {exc}")]
    loaded = cdi_store.load(settings.cdi_spec_dirs)
    out = [Finding(WARN, "cdi", str(err), "fix or remove that file") for err in loaded.errors]
    real_runtime = str(settings_raw.get("runtime") or "")
    for card in cards:
        probe = Reservation(container_id="doctor", slice_id="", card_index=int(card.get("index", 0)),
                            card_uuid=str(card.get("uuid", "")), card_name=str(card.get("name", "")),
                            card_memory=int(card.get("memory", 0)), memory_bytes=0, compute=0, priority="normal",
                            device_paths=tuple(card.get("device_paths", ())), slice_dir="", backend=backend)
        topic = f"card {probe.card_index}"
        try:
            plan = driver.plan(probe, loaded.specs, loaded.errors, settings, real_runtime)
        except cdi.CdiError as exc:
            out.append(Finding(FAIL, topic, f"sliced containers on it do not start: {exc}"))
            continue
        if plan.cdi is not None:
            out.append(Finding(OK, topic, f"driver from CDI device {plan.cdi.spec.kind}={plan.cdi.device.name} "
                                          f"({plan.cdi.spec.path})"))
        elif plan.sim_libraries:
            out.append(Finding(OK, topic, "simulated: the simulator's driver libraries are mounted"))
        elif plan.runtime:
            out.append(Finding(OK, topic, f"no CDI spec; sliced containers run under {plan.runtime}, which adds "
                                          "the driver (chain_without_cdi)"))
        elif plan.notice:
            fix = driver.NVIDIA_GENERATE if driver.vendor_of(probe) == "nvidia" else "see docs/cdi.md"
            out.append(Finding(WARN, topic, "sliced containers get the card but not its driver: no CDI spec has "
                                            f"it in {':'.join(settings.cdi_spec_dirs)}", fix))
        else:
            out.append(Finding(OK, topic, f"the real runtime {real_runtime} adds the driver"))
    return out


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


def check_docker(config: str, root: str = "/", proc: str = "/proc") -> list[Finding]:
    topic = "docker"
    try:
        text = read_text(config)
        entry = docker.installed(text, config)
    except ConfigError as exc:
        return [Finding(FAIL, topic, str(exc), f"fix the JSON in {config}")]
    if text is None or entry is None:
        if shutil.which("dockerd"):
            return [Finding(WARN, topic, f"{config} does not register the flexai runtime", "flexai install docker")]
        return [Finding(INFO, topic, "dockerd is not installed; not checked")]
    out = []
    path = entry.get("path", "")
    if _executable(path):
        out.append(Finding(OK, topic, f"{config} registers runtime flexai -> {path}"))
    else:
        out.append(Finding(FAIL, topic, f"{config} registers runtime flexai -> {path}, which is not an executable",
                           "flexai install docker"))
    loaded = _docker_runtimes()
    dockerd = sorted((p for p in processes(proc) if p.comm == "dockerd"), key=lambda p: p.start)
    how = restart_fix("dockerd", systemd_running(root), dockerd[0].pid if dockerd else None)
    if loaded is None:
        out.append(_restart_finding(topic, dockerd[0] if dockerd else None, [config], how))
    elif RUNTIME_NAME in loaded:
        out.append(Finding(OK, topic, "the running dockerd knows the flexai runtime"))
    else:
        out.append(Finding(FAIL, topic, "the running dockerd does not know the flexai runtime yet", how))
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


def check_containerd(config: str, dropin: str, root: str = "/", proc: str = "/proc") -> list[Finding]:
    """containerd's config imports flexai's drop-in and the containerd that reads `config` has
    read it since. Only a containerd that flexai was installed into is checked: dockerd's own
    containerd (and the containerd package Docker pulls in) is not one a user configured."""
    topic = "containerd"
    try:
        main_text = read_text(config)
        dropin_text = read_text(dropin)
        data = tomltext.loads(main_text or "", config)
        imported = main_text is not None and containerd.imports_cover(data.get("imports") or [], config, dropin)
    except ConfigError as exc:
        return [Finding(FAIL, topic, str(exc))]
    if dropin_text is None and not imported:
        if not shutil.which("containerd"):
            return [Finding(INFO, topic, "containerd is not installed; not checked")]
        readers, dockers = containerd_processes(config, proc)
        if readers:
            return [Finding(INFO, topic, f"the flexai runtime is not configured for containerd (pid {readers[0].pid}); "
                            "only needed for Kubernetes, nerdctl or ctr", "flexai install containerd")]
        mine = f" (pid {dockers[0].pid} is dockerd's own containerd)" if dockers else ""
        return [Finding(INFO, topic, f"no containerd reads {config} here{mine}; flexai is not configured for it: "
                        "only needed for Kubernetes, nerdctl or ctr", "flexai install containerd")]
    out = []
    try:
        if not imported:
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
    readers, dockers = containerd_processes(config, proc)
    running = readers[0] if readers else None
    how = restart_fix("containerd", systemd_running(root), running.pid if running else None,
                      running.cmdline if running else (), os.path.exists(os.path.join(root, "etc/init.d/containerd")))
    not_running = ""
    if dockers:
        not_running = (f"no containerd that reads {config} is running (pid {dockers[0].pid} is dockerd's own "
                       "containerd, which does not); the config takes effect when containerd starts")
    out.append(_restart_finding(topic, running, [config, dropin], how, not_running))
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
        return [Finding(INFO, topic, "podman is not installed; not checked")]
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
                           f"that file", "add the flexai runtime there too (flexai install podman --config ...)"))
    return out


def run(socket: str, docker_config: str, containerd_config: str, containerd_dropin: str, podman_config: str,
        hooks_dir: str | None, engines: tuple[str, ...] = ("docker", "containerd", "podman"),
        podman_root: str = "/", root: str = "/", proc: str = "/proc",
        runtime_config: str = "/etc/flexai/runtime.json") -> list[Finding]:
    """Every check; `root` stands for / when looking for systemd and init scripts, `proc` for
    /proc (tests pass their own)."""
    findings = check_commands() + check_daemon(socket, root) + check_library() + check_cgroups()
    try:  # the driver each card gets: needs flexaid's cards (check_daemon reported its absence)
        status = client.call({"op": "status"}, socket, timeout=5).get("status", {})
        findings += check_cdi(status.get("cards", []), status.get("backend", ""), runtime_config)
    except (client.DaemonUnavailable, client.DaemonRefused):
        pass
    if "docker" in engines:
        findings += check_docker(docker_config, root, proc)
    if "containerd" in engines:
        findings += check_containerd(containerd_config, containerd_dropin, root, proc)
    if "podman" in engines:
        findings += check_podman(podman_config, hooks_dir, podman_root)
    return findings
