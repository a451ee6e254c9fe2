"""Real container engines for the end-to-end tests: containerd, dockerd and Podman, each with
its own state directories and socket, started and stopped by pid; a flexaid for a whole module;
a busybox image built locally (no registry).

A component that cannot start makes the tests that need it skip, with the reason.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import BIN, Daemon, tool

IMAGE = "flexai-busybox"
IMAGE_REF = f"docker.io/library/{IMAGE}:latest"
# Extra applets the engine tests use inside the container.
APPLETS = ("awk", "sort", "cut", "head", "tr", "uniq", "readlink", "mount")


def need(binary: str, package: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} is not installed (apt-get install {package}; tests/run.sh does)")
    return path


def run(cmd, timeout=120, check=False, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run with output in files (a started container may keep inherited pipes open)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.run([str(c) for c in cmd], stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                              timeout=timeout, **kwargs)
        out.seek(0)
        err.seek(0)
        result = subprocess.CompletedProcess(cmd, proc.returncode, out.read().decode(errors="replace"),
                                             err.read().decode(errors="replace"))
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def stop_pid(pid: int, timeout: float = 20.0) -> None:
    """SIGTERM, then SIGKILL after `timeout`; waits for the process to go."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return
        except ChildProcessError:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def pids_with_arg(fragment: str) -> list[int]:
    """Processes whose command line contains `fragment` (for shims left by a stopped engine)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if fragment in cmdline:
            found.append(int(entry))
    return found


def unmount_under(path: Path) -> None:
    """Unmount everything mounted below `path` (engines' overlay and shm mounts), deepest first."""
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


# --- flexaid -------------------------------------------------------------------------------

def start_flexaid(root: Path, memories=("16GiB",), extra_runtimes=(), **config_extra) -> Daemon:
    """A flexaid over simulated cards under `root`, for a whole test module; `extra_runtimes`:
    binaries besides runc it may run (reconcile.runtimes); `config_extra`: more of its config
    (e.g. metrics={"listen": ...})."""
    root.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(3)
    cards = [{"name": f"sim-{i}", "uuid": f"GPU-00000000-0000-4000-8000-{secrets.token_hex(6)}",
              "memory": mem, "device": f"/dev/flexai-eng-{token}-{i}"} for i, mem in enumerate(memories)]
    config = {"socket": str(root / "flexaid.sock"), "socket_group": "root", "state_dir": str(root / "state"),
              "slices_dir": str(root / "slices"), "backend": "simulated", "simulated": {"cards": cards}}
    if extra_runtimes:
        from flexai_hook.daemon import reconcile

        runtimes = [*reconcile.DEFAULT_RUNTIMES, need("runc", "runc"), *map(str, extra_runtimes)]
        config["reconcile"] = {"runtimes": list(dict.fromkeys(runtimes))}
    config.update(config_extra)
    (root / "flexaid.json").write_text(json.dumps(config))
    daemon = Daemon(config_path=root / "flexaid.json", socket=config["socket"], state_dir=root / "state",
                    slices_dir=root / "slices", cards=cards, log_path=root / "flexaid.log")
    daemon.start()
    return daemon


def stop_flexaid(daemon: Daemon) -> None:
    daemon.stop()
    for card in daemon.cards:
        try:
            os.unlink(card["device"])
        except FileNotFoundError:
            pass


def runtime_config(root: Path, daemon: Daemon) -> Path:
    """/etc/flexai/runtime.json's stand-in: this module's flexaid and the host's runc."""
    path = root / "runtime.json"
    path.write_text(json.dumps({"socket": daemon.socket, "runtime": need("runc", "runc")}))
    return path


def runtime_wrapper(root: Path, config: Path) -> Path:
    """flexai-runtime with FLEXAI_RUNTIME_CONFIG set, for engines that clear the environment
    (Podman/conmon) where tests cannot write /etc/flexai/runtime.json."""
    path = root / "flexai-runtime-test"
    path.write_text(f"#!/bin/sh\nFLEXAI_RUNTIME_CONFIG={config} exec {tool('flexai-runtime')} \"$@\"\n")
    path.chmod(0o755)
    return path


# --- the image -----------------------------------------------------------------------------

def make_rootfs(root: Path) -> Path:
    from flexai_hook.oci import bundle

    try:
        bundle.make_rootfs(root)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    for applet in APPLETS:
        link = root / "bin" / applet
        if not link.exists():
            link.symlink_to("busybox")
    return root


def image_archive(rootfs: Path, out: Path) -> Path:
    from flexai_hook.oci.image import image_archive as write

    return write(rootfs, out, IMAGE)


# --- containerd ----------------------------------------------------------------------------

class Containerd:
    def __init__(self, root: Path, env: dict[str, str] | None = None):
        self.root = root
        self.address = str(root / "containerd.sock")
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.log_path = root / "containerd.log"

    def config_text(self) -> str:
        r = self.root
        return (f'version = 2\nroot = "{r}/root"\nstate = "{r}/state"\n'
                f'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n\n'
                f'[grpc]\n  address = "{self.address}"\n\n[ttrpc]\n  address = "{self.address}.ttrpc"\n\n'
                f'[debug]\n  address = ""\n\n[metrics]\n  address = ""\n')

    def start(self, config: Path | None = None) -> "Containerd":
        """Start containerd with `config` (default: config_text() written to root/config.toml)."""
        binary = need("containerd", "containerd")
        need("ctr", "containerd")
        self.root.mkdir(parents=True, exist_ok=True)
        if config is None:
            config = self.root / "config.toml"
            config.write_text(self.config_text())
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([binary, "--config", str(config)], stdout=log, stderr=log,
                                     env=self.env, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-1500:]
                self.proc = None
                pytest.skip(f"containerd could not start: {tail}")
            if os.path.exists(self.address) and self.ctr("version").returncode == 0:
                return self
            time.sleep(0.1)
        self.stop()
        pytest.skip("containerd did not answer within 30 s")

    def ctr(self, *args, namespace: str = "flexai-test", timeout=120) -> subprocess.CompletedProcess:
        return run(["ctr", "--address", self.address, "--namespace", namespace, *args], timeout=timeout)

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc.pid)
            self.proc = None
        for pid in pids_with_arg(f"-address {self.address}"):
            stop_pid(pid, timeout=5)
        unmount_under(self.root)


# --- dockerd -------------------------------------------------------------------------------

class Dockerd:
    def __init__(self, root: Path, daemon_json: Path, containerd: Containerd):
        self.root = root
        self.daemon_json = daemon_json
        self.containerd = containerd
        self.host = f"unix://{root}/docker.sock"
        self.proc: subprocess.Popen | None = None
        self.log_path = root / "dockerd.log"

    def start(self) -> "Dockerd":
        binary = need("dockerd", "docker.io")
        need("docker", "docker.io")
        self.root.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [binary, "--config-file", str(self.daemon_json), "--data-root", str(self.root / "data"),
             "--exec-root", str(self.root / "exec"), "-H", self.host, "--pidfile", str(self.root / "docker.pid"),
             "--containerd", self.containerd.address, "--iptables=false", "--ip6tables=false", "--bridge=none",
             "--storage-driver", "overlay2" if self._overlay_ok() else "vfs"],
            stdout=log, stderr=log, env=os.environ.copy(), start_new_session=True)
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-1500:]
                self.proc = None
                pytest.skip(f"dockerd could not start: {tail}")
            if self.docker("version").returncode == 0:
                return self
            time.sleep(0.2)
        self.stop()
        pytest.skip("dockerd did not answer within 60 s")

    def _overlay_ok(self) -> bool:
        return "overlay" in Path("/proc/filesystems").read_text()

    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.host}

    def docker(self, *args, timeout=120) -> subprocess.CompletedProcess:
        return run(["docker", *args], timeout=timeout, env=self.env())

    def reload(self) -> None:
        """SIGHUP: dockerd re-reads daemon.json (runtimes included)."""
        os.kill(self.proc.pid, signal.SIGHUP)

    def stop(self) -> None:
        if self.proc is not None:
            ids = self.docker("ps", "-aq", timeout=30).stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, timeout=60)
            stop_pid(self.proc.pid, timeout=30)
            self.proc = None
        unmount_under(self.root)


# --- podman --------------------------------------------------------------------------------

BASE_CONTAINERS_CONF = """\
# containers.conf for flexai's tests (CONTAINERS_CONF points here)
[containers]
# the host's hard limits: lower than Podman's defaults, and no CAP_SYS_RESOURCE to raise them
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
hooks_dir = ["{hooks}"]
tmp_dir = "{root}/libpod-tmp"

[engine.runtimes]
runc = ["{runc}"]  # the plain runtime
"""


class Podman:
    def __init__(self, root: Path):
        self.root = root
        self.conf = root / "containers.conf"
        self.hooks_dir = root / "hooks.d"

    def setup(self) -> "Podman":
        need("podman", "podman")
        need("conmon", "conmon")
        self.root.mkdir(parents=True, exist_ok=True)
        self.hooks_dir.mkdir(exist_ok=True)
        self.conf.write_text(BASE_CONTAINERS_CONF.format(hooks=self.hooks_dir, root=self.root,
                                                         runc=need("runc", "runc")))
        (self.root / "storage.conf").write_text(
            f'[storage]\ndriver = "{"overlay" if "overlay" in Path("/proc/filesystems").read_text() else "vfs"}"\n'
            f'graphroot = "{self.root}/graph"\nrunroot = "{self.root}/run"\n')
        version = self.podman("version")
        if version.returncode != 0:
            pytest.skip(f"podman cannot run here: {version.stderr.strip()[-500:]}")
        return self

    def env(self) -> dict[str, str]:
        return {**os.environ, "CONTAINERS_CONF": str(self.conf),
                "CONTAINERS_STORAGE_CONF": str(self.root / "storage.conf")}

    def podman(self, *args, timeout=120) -> subprocess.CompletedProcess:
        return run(["podman", *args], timeout=timeout, env=self.env())

    def teardown(self) -> None:
        self.podman("rm", "-af", "-t", "0", timeout=120)
        self.podman("rmi", "-af", timeout=120)
        unmount_under(self.root)
