"""libflexai preloaded into programs that never touch CUDA, on a host with no driver at all;
its routing (dlsym / RTLD_NEXT), its region view, and the OCI edits that inject it."""

from __future__ import annotations

import os
import subprocess
import textwrap

import pytest

from libflexai_support import GIB, PYTHON, libs, run  # noqa: F401


def bare_env(libs, **extra) -> dict:
    """No simulator on the library path: dlopen("libcuda.so.1") finds nothing on this host."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("FLEXAI_") and k not in ("LD_PRELOAD", "LD_LIBRARY_PATH")}
    env.update(LD_BIND_NOW="1", LD_PRELOAD=str(libs["flexai"]), FLEXAI_SLICE_FILE="/nonexistent")
    env.update(extra)
    return env


@pytest.mark.parametrize("limits", [{}, {"FLEXAI_MEMORY": "1GiB"}])
@pytest.mark.parametrize("cmd, expected", [
    (["/bin/true"], ""),
    (["bash", "-c", "echo hello; ls / > /dev/null; echo $((6 * 7))"], "hello\n42\n"),
    ([PYTHON, "-c", "import json, ctypes, ssl; print(json.dumps([1]))"], "[1]\n"),
])
def test_programs_without_cuda_run_normally_with_bind_now(libs, limits, cmd, expected):
    out = run(cmd, bare_env(libs, **limits))
    assert out.returncode == 0, out.stderr
    assert out.stdout == expected and out.stderr == ""


def test_cuda_lookups_without_a_driver_answer_like_no_driver(libs):
    """A program that probes for CUDA on a driverless host still finds none."""
    probe = textwrap.dedent("""
        import ctypes
        try:
            ctypes.CDLL("libcuda.so.1")
            print("driver")
        except OSError:
            print("nodriver")
        libc = ctypes.CDLL(None)
        print(libc.dlsym(None, b"cuMemAlloc_v2") or 0)
    """)
    out = run([PYTHON, "-c", probe], bare_env(libs, FLEXAI_MEMORY="1GiB"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["nodriver", "0"]


def test_rtld_next_lookups_keep_their_meaning(libs, tmp_path):
    """A second interposer that finds the next definition with dlsym(RTLD_NEXT) must not be
    handed its own (endless recursion): libflexai's dlsym reaches glibc's by a tail call."""
    src = tmp_path / "shim.c"
    src.write_text(textwrap.dedent("""
        #define _GNU_SOURCE
        #include <dlfcn.h>
        #include <stdlib.h>
        char *getenv(const char *name) {
            static char *(*next)(const char *);
            if (!next) next = (char *(*)(const char *))dlsym(RTLD_NEXT, "getenv");
            if (next == getenv) abort();
            return next(name);
        }
    """))
    shim = tmp_path / "libshim.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(shim), str(src), "-ldl"], check=True)
    env = bare_env(libs)
    env["LD_PRELOAD"] = f"{libs['flexai']} {shim}"
    out = run(["bash", "-c", "echo $HOME"], env)
    assert out.returncode == 0 and out.stdout.strip() == os.environ.get("HOME", "")


def test_library_exports_only_driver_entry_points_dlsym_and_dlmopen(libs):
    out = subprocess.run(["nm", "-D", "--defined-only", str(libs["flexai"])], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("nm is not installed (binutils)")
    names = {line.split()[-1] for line in out.stdout.splitlines() if line.split()[1] in "TtWi"}
    assert "dlsym" in names and "cuMemAlloc_v2" in names and "nvmlDeviceGetMemoryInfo_v2" in names
    assert all(n in ("dlsym", "dlmopen") or n.startswith(("cu", "nvml", "acl")) or n.startswith("_")
               for n in names), names
    needed = subprocess.run(["readelf", "-d", str(libs["flexai"])], capture_output=True, text=True).stdout
    assert "libcuda" not in needed and "libnvidia-ml" not in needed and "libpython" not in needed
    assert "libascendcl" not in needed


def test_region_created_by_python_is_used_by_the_library(libs, tmp_path):
    from flexai_hook.devices import region

    path = region.create_region(tmp_path / "region", {"slice_id": "0123456789ab", "memory_limit": 3 * GIB,
                                                      "compute_limit": 40, "priority": "high"})
    view = region.read_region(path)
    assert view.memory_limit == 3 * GIB and view.compute_limit == 40 and view.priority == 2
    data = view.to_json()
    assert {"memory_limit", "memory_used", "processes", "launches"} <= set(data)
    assert data["memory_used"] == 0 and data["processes"] == 0
    # creating again keeps the region (and its accounting), updates the limits
    inode = os.stat(path).st_ino
    region.create_region(path, {"memory_limit": 2 * GIB, "compute_limit": 50})
    again = region.read_region(path)
    assert os.stat(path).st_ino == inode and again.memory_limit == 2 * GIB and again.generation == 1
    with pytest.raises(ValueError):
        bad = tmp_path / "bad"
        bad.write_bytes(b"\0" * 100)
        region.read_region(bad)


def test_injection_mounts_library_preload_region_and_sim_drivers(libs):
    from flexai_hook.devices import library
    from flexai_hook.oci import spec
    from flexai_hook.reservation import Reservation

    res = Reservation(container_id="c", slice_id="0123456789ab", card_index=0, card_uuid="GPU-1",
                      card_name="sim", card_memory=16 * GIB, memory_bytes=4 * GIB, compute=25,
                      priority="normal", device_paths=(), slice_dir="/run/flexai/slices/0123456789ab",
                      backend="simulated")
    hook = spec.Hook(path="/bin/flexai-hook", args=("flexai-hook", "poststop"))
    inj = spec.injection_for(res, (), hook)
    mounts = {m.destination: m for m in inj.mounts}
    assert mounts["/usr/lib/flexai/libflexai.so"].source == str(libs["flexai"])
    assert mounts["/usr/lib/flexai/libflexai.so"].read_only
    assert mounts["/etc/ld.so.preload"].source == "/run/flexai/ld.so.preload"  # one for all slices
    assert mounts["/run/flexai/region"].read_only is False
    driver_dir = library.driver_dir_in_container()
    assert mounts[f"{driver_dir}/libcuda.so.1"].source == str(libs["cuda"])
    assert mounts[f"{driver_dir}/libnvidia-ml.so.1"].source == str(libs["nvml"])
    assert mounts["/run/flexai/sim"].source == "/run/flexai/sim" and not mounts["/run/flexai/sim"].read_only
    assert ("FLEXAI_REGION", "/run/flexai/region") in inj.env
    real = spec.injection_for(Reservation(**{**res.to_json(), "backend": "nvml"}), (), hook)
    assert not any("libcuda" in m.destination or m.destination == "/run/flexai/sim" for m in real.mounts)
    assert library.preload_text() == "/usr/lib/flexai/libflexai.so\n"
