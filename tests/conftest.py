"""Shared fixtures: a real flexaid process, simulated cards, busybox bundles and runc roots.

Everything a test starts it stops by pid, on success and on failure.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
GIB = 1 << 30


def tool(name: str) -> str:
    """An installed flexai command from the environment running the tests."""
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{path} is missing: install the package first (bash tests/run.sh does)")
    return str(path)


@dataclass
class Daemon:
    config_path: Path
    socket: str
    state_dir: Path
    slices_dir: Path
    cards: list[dict]
    log_path: Path
    proc: subprocess.Popen | None = None
    extra_env: dict = field(default_factory=dict)

    def start(self, wait: bool = True) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [tool("flexaid"), "--config", str(self.config_path), "--log-level", "debug"],
            stdout=log,
            stderr=log,
            env={**os.environ, **self.extra_env},
        )
        log.close()
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 20.0) -> None:
        from flexai_hook import client

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"flexaid exited with {self.proc.returncode}:\n{self.log()}")
            try:
                client.call({"op": "status"}, self.socket, timeout=2)
                return
            except client.DaemonUnavailable:
                time.sleep(0.05)
        raise AssertionError(f"flexaid did not come up:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def call(self, message: dict) -> dict:
        from flexai_hook import client

        return client.call(message, self.socket)

    def status(self) -> dict:
        return self.call({"op": "status"})["status"]

    def slices(self) -> list[dict]:
        return [s for card in self.status()["cards"] for s in card["slices"]]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def sim_devices():
    """Unique device node paths for simulated cards; the nodes are removed afterwards."""
    token = secrets.token_hex(3)
    made: list[str] = []

    def make(count: int) -> list[str]:
        paths = [f"/dev/flexai-test-{token}-{i}" for i in range(len(made), len(made) + count)]
        made.extend(paths)
        return paths

    yield make
    for path in made:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


@pytest.fixture
def make_daemon(tmp_path, sim_devices):
    """Factory for flexaid processes over simulated cards: make_daemon(memories=["16GiB"])."""
    started: list[Daemon] = []

    def make(memories=("16GiB",), start: bool = True, **config_extra) -> Daemon:
        root = tmp_path / f"flexaid{len(started)}"
        root.mkdir()
        paths = sim_devices(len(memories))
        cards = [
            {"name": f"sim-{i}", "uuid": f"GPU-00000000-0000-4000-8000-{secrets.token_hex(6)}",
             "memory": mem, "device": paths[i]}
            for i, mem in enumerate(memories)
        ]
        config = {
            "socket": str(root / "flexaid.sock"),
            "socket_group": "root",
            "state_dir": str(root / "state"),
            "slices_dir": str(root / "slices"),
            "backend": "simulated",
            "simulated": {"cards": cards},
            **config_extra,
        }
        config_path = root / "flexaid.json"
        config_path.write_text(json.dumps(config))
        daemon = Daemon(
            config_path=config_path,
            socket=config["socket"],
            state_dir=Path(config["state_dir"]),
            slices_dir=Path(config["slices_dir"]),
            cards=cards,
            log_path=root / "flexaid.log",
        )
        started.append(daemon)
        if start:
            daemon.start()
        return daemon

    yield make
    for daemon in started:
        daemon.stop()


@pytest.fixture
def daemon(make_daemon) -> Daemon:
    return make_daemon()


def _runc() -> str:
    path = shutil.which("runc")
    if path is None:
        pytest.skip("runc is not installed (apt-get install runc; tests/run.sh does)")
    return path


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory) -> Path:
    from flexai_hook.oci import bundle

    root = tmp_path_factory.mktemp("busybox") / "rootfs"
    try:
        bundle.make_rootfs(root)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    return root


@dataclass
class Runc:
    binary: str
    root: Path

    def list_ids(self) -> list[str]:
        out = subprocess.run([self.binary, "--root", str(self.root), "list", "-q"],
                             capture_output=True, text=True)
        return [line for line in out.stdout.split() if line]


@pytest.fixture
def runc(tmp_path) -> Runc:
    """A private runc state root; containers left in it are killed and deleted afterwards."""
    r = Runc(_runc(), tmp_path / "runc-root")
    r.root.mkdir()
    yield r
    for cid in r.list_ids():
        subprocess.run([r.binary, "--root", str(r.root), "kill", cid, "KILL"], capture_output=True)
        subprocess.run([r.binary, "--root", str(r.root), "delete", "--force", cid], capture_output=True)


@pytest.fixture
def make_bundle(tmp_path, busybox_rootfs):
    from flexai_hook.oci import bundle

    count = [0]

    def make(args, env=(), annotations=None) -> Path:
        count[0] += 1
        path = tmp_path / f"bundle{count[0]}"
        bundle.make_bundle(path, args, env=env, annotations=annotations, rootfs_from=busybox_rootfs)
        return path

    return make
