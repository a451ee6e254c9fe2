"""Helpers for the ACL tests: the simulated libascendcl.so and the C clients built from the
package's own build, a simulator directory, and client processes stopped by pid."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path
from unittest import mock

import pytest

from flexai_hook.install import cbuild

REPO = Path(__file__).resolve().parent.parent
CLIENT_SRC = REPO / "tests" / "clients" / "acl_client.c"
TORCH_SRC = REPO / "tests" / "clients" / "acl_torch_init.c"
GIB = 1 << 30
MIB = 1 << 20
CTX = 300 * MIB  # the simulator's default context footprint

# ACL error codes (acl/acl_base.h, acl/error_codes/rt_error_codes.h)
ACL_SUCCESS = 0
ACL_ERROR_INVALID_PARAM = 100000
ACL_ERROR_UNINITIALIZE = 100001
ACL_ERROR_REPEAT_INITIALIZE = 100002
ACL_ERROR_REPEAT_FINALIZE = 100037
ACL_ERROR_RT_PARAM_INVALID = 107000
ACL_ERROR_RT_INVALID_DEVICEID = 107001
ACL_ERROR_RT_CONTEXT_NULL = 107002
ACL_ERROR_RT_MEMORY_ALLOCATION = 207001
ACL_ERROR_RT_NO_DEVICE = 207004


def build_clients(lib: Path, out: Path) -> dict:
    """acl_client (linked and dlopen) and acl_torch_init, against the libascendcl.so at `lib`."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler: the ACL clients cannot be built")
    flags = ["-std=gnu11", "-Wall", "-Wextra", "-Werror", f"-I{REPO / 'libflexai' / 'sim' / 'acl'}"]
    link = [f"-L{lib.parent}", "-lascendcl", f"-Wl,-rpath,{lib.parent}"]
    paths = {"lib": lib, "link": out / "acl_client_link", "dlopen": out / "acl_client_dl",
             "torch": out / "acl_torch_init"}
    subprocess.run([cc, *flags, "-o", str(paths["link"]), str(CLIENT_SRC), *link], check=True)
    subprocess.run([cc, *flags, "-DACL_DLOPEN", "-o", str(paths["dlopen"]), str(CLIENT_SRC), "-ldl"], check=True)
    subprocess.run([cc, *flags, "-o", str(paths["torch"]), str(TORCH_SRC), *link], check=True)
    return paths


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """libascendcl.so built by the package's own build (only that target), and both clients."""
    if not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler: the simulated libascendcl.so cannot be built")
    out = tmp_path_factory.mktemp("acl-build")
    target = next(t for t in cbuild.TARGETS if t.output == "sim/libascendcl.so")
    with mock.patch.object(cbuild, "TARGETS", (target,)):
        (lib,) = cbuild.build(out, obj_dir=out / "obj")
    return build_clients(lib, out)


@pytest.fixture
def sim(tmp_path):
    """A simulator directory with two cards: 4 GiB and 2 GiB."""
    d = tmp_path / "sim"
    d.mkdir()
    (d / "cards.conf").write_text(
        "# two simulated Ascend cards\n"
        f"card 0 NPU-f1e0a100-0000-4000-8000-000000000000 {4 * GIB} flexai simulated Ascend 910B\n"
        f"card 1 NPU-f1e0a100-0000-4000-8000-000000000001 {2 * GIB} flexai simulated Ascend 910B\n"
    )
    return d


class Client:
    """One client process; results are the parsed "<step> rc=N k=v" lines."""

    def __init__(self, built, sim_dir, steps, mode="link", background=False, env=None):
        exe = built[mode]
        base = {k: v for k, v in os.environ.items() if not k.startswith("FLEXAI_") and k != "LD_PRELOAD"}
        env = {**base, "FLEXAI_SIM_DIR": str(sim_dir), "ACL_LIB": str(built["lib"]),
               "FLEXAI_SLICE_FILE": "/nonexistent/slice.conf", **(env or {})}
        self.proc = subprocess.Popen([str(exe), *map(str, steps)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[dict] = []
        self.raw = ""
        if not background:
            out, err = self.proc.communicate(timeout=60)
            self.raw = out
            assert self.proc.returncode == 0, out + err
            self.lines = [parse(l) for l in out.splitlines()]

    def wait_for(self, step: str) -> dict:
        """Read lines until `step` printed (the process keeps running)."""
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"client exited before {step}: {self.proc.stderr.read()}")
            parsed = parse(line)
            self.lines.append(parsed)
            if parsed["step"] == step:
                return parsed

    def send(self, text: str) -> None:
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def finish(self) -> list[dict]:
        """Close its stdin (ends "hold") and collect the rest of its output."""
        self.proc.stdin.close()
        self.proc.stdin = None
        out, err = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, err
        self.lines += [parse(l) for l in out.splitlines()]
        return self.lines

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            self.proc.wait(10)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f:
                f.close()

    def step(self, name: str, nth: int = 0) -> dict:
        return [l for l in self.lines if l["step"] == name][nth]


def parse(line: str) -> dict:
    head, _, msg = line.strip().partition(" msg=")
    step, _, rest = head.partition(" ")
    out: dict = {"step": step}
    for part in rest.split():
        key, _, value = part.partition("=")
        out[key] = int(value) if value.lstrip("-").isdigit() else value
    if msg or line.strip().endswith(" msg="):
        out["msg"] = msg
    return out


@pytest.fixture
def clients():
    started: list[Client] = []
    yield started
    for c in started:
        c.stop(signal.SIGKILL)


