"""Fixtures for the simulated driver libraries: build them, describe two cards, run clients.

Every process a test starts goes through `Clients`, which kills what is still running (by
pid) when the test ends, passed or failed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from unittest import mock

import pytest

from flexai_hook.install import cbuild
from flexai_hook.devices.simcards import SimCard, write_sim_dir

REPO = Path(__file__).resolve().parent.parent
CLIENTS = Path(__file__).resolve().parent / "clients"
SIM_INCLUDE = REPO / "libflexai" / "sim" / "cuda"
GiB = 1 << 30
MiB = 1 << 20
CONTEXT_BYTES = 300 * MiB

CARDS = (
    SimCard(0, "GPU-f1e0a100-0000-4000-8000-000000000000", 16 * GiB, "flexai simulated 16GB"),
    SimCard(1, "GPU-f1e0a100-0000-4000-8000-000000000001", 8 * GiB, "flexai simulated 8GB"),
)

# Shared by the Python clients: cuda-bindings with a helper that turns errors into exits.
PRELUDE = textwrap.dedent("""\
    import ctypes, os, sys, time
    from cuda.bindings import driver as d
    SUCCESS = d.CUresult.CUDA_SUCCESS
    def ok(r):
        if r[0] != SUCCESS:
            raise SystemExit(f"cuda error {r[0]!r}")
        return r[1] if len(r) == 2 else (None if len(r) == 1 else r[1:])
    def primary(dev=0):
        ok(d.cuInit(0))
        c = ok(d.cuDevicePrimaryCtxRetain(dev))
        ok(d.cuCtxSetCurrent(c))
        return c
    def spin_function(name=b"flexai_sim_spin"):
        lib = ok(d.cuLibraryLoadData(b"flexai-sim-image\\0", None, None, 0, None, None, 0))
        return ok(d.cuKernelGetFunction(ok(d.cuLibraryGetKernel(lib, name))))
    def spin(f, stream, ns, blocks=1):
        ok(d.cuLaunchKernel(f, blocks, 1, 1, 128, 1, 1, 0, stream,
                            ((ns,), (ctypes.c_uint64,)), 0))
    def say(*words):
        print(*words, flush=True)
""")


def _sim_targets():
    return tuple(t for t in cbuild.TARGETS
                 if t.output in ("sim/libcuda.so.1", "sim/libnvidia-ml.so.1"))


@pytest.fixture(scope="session")
def sim_libs(tmp_path_factory) -> Path:
    """Builds the simulated libcuda.so.1 and libnvidia-ml.so.1; returns their folder."""
    out = tmp_path_factory.mktemp("simlibs")
    with mock.patch.object(cbuild, "TARGETS", _sim_targets()):
        built = cbuild.build(out, force=True, obj_dir=out / "obj")
    libdir = out / "sim"
    names = sorted(p.name for p in built)
    assert names == ["libcuda.so.1", "libnvidia-ml.so.1"], names
    return libdir


@pytest.fixture
def sim_dir(tmp_path) -> Path:
    """A simulator directory with two cards (16 GiB and 8 GiB) and default tunables."""
    return write_sim_dir(tmp_path / "sim", CARDS)


def sim_environ(libdir: Path, simdir: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = str(libdir)
    env["FLEXAI_SIM_DIR"] = str(simdir)
    env.pop("LD_PRELOAD", None)
    env.update(extra)
    return env


class Clients:
    """Starts client processes and stops every one of them (by pid) at teardown."""

    def __init__(self, libdir: Path, simdir: Path, workdir: Path):
        self.libdir, self.simdir, self.workdir = libdir, simdir, workdir
        self.procs: list[subprocess.Popen] = []

    def env(self, **extra: str) -> dict[str, str]:
        return sim_environ(self.libdir, self.simdir, **extra)

    def python(self, body: str, *args: str, env: dict | None = None) -> subprocess.Popen:
        code = PRELUDE + textwrap.dedent(body)
        return self.start([sys.executable, "-c", code, *map(str, args)], env=env)

    def start(self, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        proc = subprocess.Popen(argv, env=env or self.env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                                cwd=self.workdir)
        self.procs.append(proc)
        return proc

    def run_python(self, body: str, *args: str, env: dict | None = None,
                   timeout: float = 60) -> subprocess.CompletedProcess:
        proc = self.python(body, *args, env=env)
        return self.finish(proc, timeout)

    def run(self, argv: list[str], env: dict | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
        return self.finish(self.start(argv, env=env), timeout)

    def finish(self, proc: subprocess.Popen, timeout: float = 60) -> subprocess.CompletedProcess:
        out, err = proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    @staticmethod
    def wait_line(proc: subprocess.Popen, expect: str, timeout: float = 30) -> str:
        """Reads the client's stdout until a line starting with expect; returns that line."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                err = proc.stderr.read() if proc.poll() is not None else ""
                raise AssertionError(f"client ended before {expect!r}: rc={proc.poll()} {err}")
            if line.startswith(expect):
                return line.strip()
        raise AssertionError(f"no {expect!r} from client within {timeout}s")

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                proc.communicate(timeout=10)
            except (subprocess.TimeoutExpired, ValueError):
                pass


@pytest.fixture
def clients(sim_libs, sim_dir, tmp_path):
    c = Clients(sim_libs, sim_dir, tmp_path)
    try:
        yield c
    finally:
        c.stop_all()


def compile_client(source: str, out: Path, *extra: str) -> Path:
    """Compiles tests/clients/<source> with gcc into out; skips when there is no gcc."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if not gcc:
        pytest.skip("no C compiler (gcc) to build the C test clients")
    exe = out / Path(source).stem
    cmd = [gcc, "-std=gnu11", "-O1", "-Wall", "-Wextra", "-Werror", "-D_GNU_SOURCE",
           f"-I{SIM_INCLUDE}", str(CLIENTS / source), "-o", str(exe), *extra]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return exe
