"""Fixtures and helpers for libflexai's tests: the built libraries, a simulator directory,
the C client compiled into tmp_path, and processes that are always stopped by pid."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CLIENTS = Path(__file__).resolve().parent / "clients"
MIB = 1 << 20
GIB = 1 << 30
PYTHON = sys.executable


@pytest.fixture(scope="session")
def libs():
    """Build libflexai.so and the simulated drivers in place; their paths."""
    from flexai_hook.install import cbuild
    from flexai_hook.devices import library

    cbuild.build(cbuild.package_lib_dir())
    lib = Path(library.library_dir())
    paths = {"flexai": lib / "libflexai.so", "cuda": lib / "sim" / "libcuda.so.1",
             "nvml": lib / "sim" / "libnvidia-ml.so.1"}
    for name, path in paths.items():
        if not path.exists():
            pytest.skip(f"{path} was not built (the {name} sources are missing)")
    return paths


@pytest.fixture(scope="session")
def client(libs, tmp_path_factory) -> str:
    """tests/clients/flexai_client.c compiled (dlopen + dlsym + cuGetProcAddress_v2)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler (apt-get install gcc)")
    out = tmp_path_factory.mktemp("clients") / "flexai_client"
    subprocess.run([cc, "-O2", "-Wall", "-Werror", f"-I{REPO / 'libflexai'}", "-o", str(out),
                    str(CLIENTS / "flexai_client.c"), "-ldl"], check=True, capture_output=True)
    return str(out)


# Contexts and modules cost nothing on these cards unless a test says so: libflexai charges
# what the driver holds beyond its allocations (NVML per process, overhead.c), so a test of
# another path would otherwise see the simulator's 300 MiB context in every figure.
FREE_CONTEXTS = {"context_bytes": 0, "module_bytes": 0}


class Sim:
    """A simulator directory with two 16 GiB cards."""

    def __init__(self, path: Path, memories=(16 * GIB, 16 * GIB), tunables=None):
        from flexai_hook.devices import simcards

        self.path = path
        self.uuids = [f"GPU-{secrets.token_hex(4)}-0000-4000-8000-{secrets.token_hex(6)}" for _ in memories]
        self.cards = [simcards.SimCard(i, u, m, f"sim-{i}")
                      for i, (u, m) in enumerate(zip(self.uuids, memories))]
        self.configure(FREE_CONTEXTS if tunables is None else tunables)

    def configure(self, tunables) -> None:
        """Rewrite cards.conf with these simulator settings (before any process starts)."""
        from flexai_hook.devices import simcards

        simcards.write_sim_dir(self.path, self.cards, tunables)

    def env(self, libs, preload: bool = True, **flexai) -> dict:
        """A clean environment loading the simulated driver (and libflexai when preload)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEXAI_") and k != "LD_PRELOAD"}
        env["LD_LIBRARY_PATH"] = str(libs["cuda"].parent)
        env["FLEXAI_SIM_DIR"] = str(self.path)
        env["FLEXAI_SLICE_FILE"] = "/nonexistent/slice.conf"  # never the host's /run/flexai
        if preload:
            env["LD_PRELOAD"] = str(libs["flexai"])
        env.update({f"FLEXAI_{k.upper()}": str(v) for k, v in flexai.items()})
        return env


@pytest.fixture
def sim(tmp_path) -> Sim:
    return Sim(tmp_path / "sim")


def run(cmd, env, timeout=120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, **kwargs)


def lines(cmd, env, **kwargs) -> list[str]:
    out = run(cmd, env, **kwargs)
    assert out.returncode == 0, f"{cmd} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    return out.stdout.splitlines()


def info(line: str) -> dict:
    """'count=1 total=... uuid=...' as a dict (numbers as int)."""
    fields = dict(part.split("=", 1) for part in line.split())
    return {k: int(v) if v.isdigit() else v for k, v in fields.items()}


class Processes:
    """Processes a test starts; every one is killed (by pid) and reaped at the end."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def start(self, cmd, env, **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, **kwargs)
        self.procs.append(proc)
        return proc

    def hold(self, cmd, env) -> subprocess.Popen:
        """Start a client that ends with `hold`; return once it printed its results and held."""
        proc = self.start(cmd, env)
        out = []
        for line in proc.stdout:
            out.append(line.rstrip("\n"))
            if line.strip() == "held":
                proc.output = out
                return proc
        proc.wait(10)
        raise AssertionError(f"{cmd} did not reach hold: {out} {proc.stderr.read()}")

    def kill(self, proc: subprocess.Popen, sig=signal.SIGKILL) -> None:
        if proc.poll() is None:
            proc.send_signal(sig)
        proc.wait(30)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
            for stream in (proc.stdout, proc.stderr):
                if stream:
                    stream.close()


@pytest.fixture
def procs():
    p = Processes()
    yield p
    p.stop_all()
