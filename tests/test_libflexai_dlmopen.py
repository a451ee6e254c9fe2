"""A driver loaded into another link-map namespace (dlmopen) keeps to the slice (issue 14, 9).

dlmopen(LM_ID_NEWLM, "libcuda.so.1") gives the program its own copy of the driver, which the
preload does not reach. Every way into it must end at libflexai's wrappers: dlsym on the
handle, cuGetProcAddress(_v2) obtained from it, and a library that is itself dlmopen'd and
dlopens + dlsyms the driver from inside its namespace. All of them charge the one budget of
the slice, together with the ordinary dlopen'd driver and with other processes.

Before this was fixed each of these allocated 15 872 MiB (the simulated 16 GiB card less its
context) past a 1 GiB slice.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from libflexai_support import CLIENTS, GIB, MIB, REPO, libs, lines, procs, sim  # noqa: F401

LIMIT_MIB = 1024
CHUNK_MIB = 256


@pytest.fixture(scope="module")
def dlmopen_client(libs, tmp_path_factory):
    """tests/clients/dlmopen_client.c as a program, and as the library the `inner` mode loads."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler (apt-get install gcc)")
    out = tmp_path_factory.mktemp("dlmopen")
    src = str(CLIENTS / "dlmopen_client.c")
    flags = ["-O2", "-Wall", "-Wextra", "-Werror", f"-I{REPO / 'libflexai'}"]
    subprocess.run([cc, *flags, "-o", str(out / "dlmopen_client"), src, "-ldl"], check=True,
                   capture_output=True)
    subprocess.run([cc, *flags, "-shared", "-fPIC", "-DDLMOPEN_INNER", "-o",
                    str(out / "libdlmopen_inner.so"), src, "-ldl"], check=True, capture_output=True)
    return {"client": str(out / "dlmopen_client"), "inner": str(out / "libdlmopen_inner.so")}


def fields(line: str) -> dict:
    return {k: int(v) for k, v in (part.split("=", 1) for part in line.split())}


def allocated(dlmopen_client, env, mode: str, max_mib: int = 16 * 1024) -> dict:
    argv = [dlmopen_client["client"], mode, str(CHUNK_MIB), str(max_mib)]
    if mode == "inner":
        argv.append(dlmopen_client["inner"])
    out = lines(argv, env)
    assert len(out) == 1, out
    return fields(out[0])


@pytest.mark.parametrize("mode", ["dlsym", "gpa", "gpa1", "inner"])
def test_a_dlmopened_driver_stops_at_the_slice(mode, libs, dlmopen_client, sim):
    got = allocated(dlmopen_client, sim.env(libs, memory="1GiB"), mode)
    assert got["allocated"] == LIMIT_MIB, f"{mode}: {got['allocated']} MiB on a 1 GiB slice"
    assert got["rc"] == 2  # CUDA_ERROR_OUT_OF_MEMORY


@pytest.mark.parametrize("mode", ["dlsym", "gpa"])
def test_without_a_limit_the_dlmopened_driver_is_untouched(mode, libs, dlmopen_client, sim):
    got = allocated(dlmopen_client, sim.env(libs), mode, max_mib=4096)
    assert got["allocated"] == 4096


def test_the_ordinary_dlopen_route_is_unchanged(libs, dlmopen_client, sim):
    got = allocated(dlmopen_client, sim.env(libs, memory="1GiB"), "dlopen")
    assert got == {"allocated": LIMIT_MIB, "rc": 2}


def test_nvml_from_a_dlmopened_library_shows_the_slice(libs, dlmopen_client, sim):
    out = lines([dlmopen_client["client"], "nvml", "0", "0"], sim.env(libs, memory="1GiB"))
    assert out == [f"total={LIMIT_MIB}"]


def test_both_drivers_of_one_process_share_one_budget(libs, dlmopen_client, sim, procs, tmp_path):
    from flexai_hook.devices import region

    env = sim.env(libs, memory="1GiB", region=tmp_path / "region")
    env["DLMOPEN_HOLD"] = "1"
    holder = procs.hold([dlmopen_client["client"], "both", str(CHUNK_MIB), str(LIMIT_MIB)], env)
    got = fields(holder.output[0])
    assert got["base"] == LIMIT_MIB // 2 and got["ns"] == LIMIT_MIB // 2, got
    view = region.read_region(tmp_path / "region").to_json()
    assert view["memory_used"] == GIB, view  # each byte charged once, by the copy that allocated it
    # another process of the slice, through its own dlmopen'd driver, finds the slice full
    del env["DLMOPEN_HOLD"]
    assert allocated(dlmopen_client, env, "dlsym")["allocated"] == 0
    procs.kill(holder)
    # and gets the memory once the holder is gone (its slots are reclaimed, none leaks)
    assert allocated(dlmopen_client, env, "gpa")["allocated"] == LIMIT_MIB
    assert region.read_region(tmp_path / "region").to_json()["memory_used"] == 0


def test_glibc_dlsym_and_dlmopen_are_not_handed_out(libs, sim, tmp_path):
    """dlsym(libc, "dlsym") / "dlmopen" would give the unwrapped loader functions."""
    src = tmp_path / "libc_dl.c"
    src.write_text(
        "#define _GNU_SOURCE\n#include <dlfcn.h>\n#include <stdio.h>\n"
        "int main(void) {\n"
        "  void *c = dlopen(\"libc.so.6\", RTLD_NOW | RTLD_NOLOAD);\n"
        "  printf(\"%d %d\\n\", dlsym(c, \"dlsym\") == dlsym(RTLD_DEFAULT, \"dlsym\"),\n"
        "         dlsym(c, \"dlmopen\") == dlsym(RTLD_DEFAULT, \"dlmopen\"));\n"
        "  return 0;\n}\n")
    exe = tmp_path / "libc_dl"
    subprocess.run(["cc", "-o", str(exe), str(src), "-ldl"], check=True, capture_output=True)
    assert lines([str(exe)], sim.env(libs, memory="1GiB")) == ["1 1"]


def test_a_dlmopened_ascendcl_stops_at_the_slice(libs, tmp_path):
    """tests/clients/acl_client.c with its dlopen of libascendcl.so turned into a dlmopen."""
    acl = libs["flexai"].parent / "sim" / "libascendcl.so"
    if not acl.exists():
        pytest.skip(f"{acl} was not built")
    src = tmp_path / "acl_ns.c"
    src.write_text('#define _GNU_SOURCE\n#include <dlfcn.h>\n'
                   '#define dlopen(f, m) dlmopen(LM_ID_NEWLM, f, m)\n#include "acl_client.c"\n')
    exe = tmp_path / "acl_ns"
    subprocess.run(["cc", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-DACL_DLOPEN",
                    f"-I{REPO / 'libflexai' / 'sim' / 'acl'}", f"-I{CLIENTS}", "-o", str(exe),
                    str(src), "-ldl"], check=True, capture_output=True)
    simdir = tmp_path / "aclsim"
    simdir.mkdir()
    (simdir / "cards.conf").write_text(
        f"card 0 NPU-f1e0a100-0000-4000-8000-000000000000 {4 * GIB} flexai simulated Ascend 910B\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEXAI_") and k != "LD_PRELOAD"}
    env.update(FLEXAI_SIM_DIR=str(simdir), ACL_LIB=str(acl), FLEXAI_SLICE_FILE="/nonexistent/slice.conf",
               FLEXAI_MEMORY="1GiB", LD_PRELOAD=str(libs["flexai"]))
    out = lines([str(exe), "init", "set", "0", "fill", str(256 * MIB)], env)
    filled = int(out[-1].split("filled=")[1])
    assert 0 < filled <= GIB, out
