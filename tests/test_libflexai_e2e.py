"""End to end: flexai-runtime + real runc + flexaid on simulated cards, cuda-bindings in the
container. The busybox rootfs gets the host's glibc, Python and the C client read-only, so
the container's dynamic programs go through /etc/ld.so.preload like any image's would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from conftest import GIB
from libflexai_support import MIB, client, info, libs  # noqa: F401
from test_runtime_runc import run_to_files, runtime

CHECK = """
import json, sys, time
from cuda.bindings import driver as d
OK = d.CUresult.CUDA_SUCCESS
def call(r):
    assert r[0] == OK, r[0]
    return r[1:] if len(r) > 2 else (r[1] if len(r) == 2 else None)
call(d.cuInit(0))
count = call(d.cuDeviceGetCount())
dev = call(d.cuDeviceGet(0))
call(d.cuCtxSetCurrent(call(d.cuDevicePrimaryCtxRetain(dev))))
free, total = call(d.cuMemGetInfo())
granted = []
while True:
    r = d.cuMemAlloc(1 << 30)
    if r[0] != OK:
        break
    granted.append(r[1])
print(json.dumps({"count": count, "total": total, "free": free, "granted": len(granted),
                  "error": r[0].name}), flush=True)
if "hold" in sys.argv:
    time.sleep(300)
"""


def host_dir(path: str) -> str:
    return os.path.realpath(path)


def dynamic_bundle(make_bundle, client_path: str, args: list[str], env: list[str]):
    """A busybox bundle that can also run the host's dynamic programs (glibc, Python)."""
    bundle = make_bundle(args, env=env)
    rootfs = bundle / "rootfs"
    (rootfs / "lib64").mkdir(exist_ok=True)
    (rootfs / "lib64" / "ld-linux-x86-64.so.2").symlink_to("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    shutil.copy2(client_path, rootfs / "bin" / "flexai_client")
    (rootfs / "check.py").write_text(CHECK)
    spec = json.loads((bundle / "config.json").read_text())
    binds = [(host_dir("/lib/x86_64-linux-gnu"), "/lib/x86_64-linux-gnu"), (host_dir(sys.prefix), sys.prefix)]
    if os.path.realpath(sys.base_prefix) in ("/usr", "/"):
        # the system python (the test venv's): its stdlib and interpreter, not the whole /usr,
        # which would make /usr/lib read-only where flexai mounts its library
        ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
        binds.append((f"/usr/lib/{ver}", f"/usr/lib/{ver}"))
        # the venv's python is a chain of links to /usr/bin/python3.X: the links as links,
        # the interpreter as a bind mount
        path = os.path.join(sys.prefix, "bin", os.path.basename(sys.executable))
        while os.path.islink(path):
            target = os.path.join(os.path.dirname(path), os.readlink(path))
            if not path.startswith(sys.prefix + "/"):
                link = rootfs / path.lstrip("/")
                link.parent.mkdir(parents=True, exist_ok=True)
                if not link.is_symlink():
                    link.symlink_to(os.readlink(path))
            path = os.path.normpath(target)
        binds.append((path, path))
    else:
        binds.append((host_dir(sys.base_prefix), sys.base_prefix))
    for source, dest in binds:
        spec["mounts"].append({"destination": dest, "type": "bind", "source": source,
                               "options": ["rbind", "ro", "nosuid", "nodev"]})
    (bundle / "config.json").write_text(json.dumps(spec))
    return bundle


@pytest.fixture
def prepared(libs, runc, make_daemon):
    if not os.path.exists("/lib64/ld-linux-x86-64.so.2") or not os.path.isdir("/lib/x86_64-linux-gnu"):
        pytest.skip("this test builds its rootfs from an x86_64 Debian-style host glibc")
    return make_daemon(memories=("16GiB",))


def test_sliced_container_sees_its_slice_and_stops_at_its_limit(prepared, runc, make_bundle, client):
    daemon = prepared
    bundle = dynamic_bundle(make_bundle, client, [sys.executable, "/check.py"], ["FLEXAI_FRACTION=0.25"])
    out = runtime(runc, daemon, "run", "--bundle", str(bundle), "cuda1", timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["count"] == 1 and result["total"] == 4 * GIB
    # 4 GiB less the context the simulator charges (300 MiB): three 1 GiB allocations fit
    assert result["granted"] == 3 and result["error"] == "CUDA_ERROR_OUT_OF_MEMORY"
    assert daemon.slices() == []


def test_runc_exec_with_an_emptied_environment_is_limited_too(prepared, runc, make_bundle, client):
    daemon = prepared
    bundle = dynamic_bundle(make_bundle, client, [sys.executable, "/check.py", "hold"], ["FLEXAI_FRACTION=0.25"])
    out = runtime(runc, daemon, "create", "--bundle", str(bundle), "cuda2")
    assert out.returncode == 0, out.stderr
    try:
        assert runtime(runc, daemon, "start", "cuda2").returncode == 0
        deadline = time.monotonic() + 60
        usage = {}
        while time.monotonic() < deadline:
            (slice_,) = daemon.slices()
            usage = slice_.get("usage") or {}
            if usage.get("memory_used", 0) >= 3 * GIB:
                break
            time.sleep(0.1)
        assert usage["memory_used"] == 3 * GIB + 300 * MIB and usage["processes"] == 1, usage
        assert usage["memory_limit"] == 4 * GIB

        def exec_(*args):
            return run_to_files([runc.binary, "--root", str(runc.root), "exec", "cuda2",
                                 "env", "-i", "/bin/flexai_client", *args], timeout=60)

        view = exec_("info")
        assert view.returncode == 0, view.stderr
        seen = info(view.stdout.strip())
        assert seen["count"] == 1 and seen["total"] == 4 * GIB and seen["uuid"] == daemon.cards[0]["uuid"]
        # the slice has 4 GiB - 2 x 300 MiB contexts - 3 GiB = 424 MiB left
        over = exec_("alloc", "mem", str(GIB), "alloc", "mem", str(256 * MIB))
        assert over.stdout.split("\n")[:2] == ["oom", "ok 0"], over.stdout + over.stderr
        status = subprocess.run([os.path.join(os.path.dirname(sys.executable), "flexai"), "status",
                                 "--socket", daemon.socket], capture_output=True, text=True, timeout=30)
        assert "uses 3.29 GiB" in status.stdout and "1 process(es)" in status.stdout, status.stdout
    finally:
        runtime(runc, daemon, "kill", "cuda2", "KILL")
        deadline = time.monotonic() + 30
        while runtime(runc, daemon, "delete", "cuda2").returncode != 0 and time.monotonic() < deadline:
            time.sleep(0.1)
    assert daemon.slices() == []
