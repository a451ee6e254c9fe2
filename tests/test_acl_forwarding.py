"""libflexai on the ACL paths issue 15 (path 8) found uncharged or ungated: a libascendcl.so that
only forwards to libacl_rt.so (open-source CANN's layout), aclmdlRIExecuteAsync (NPUGraph replay),
AI-CPU launches, aclrtMallocForTaskScheduler and acldvppMalloc. Every process is stopped by its pid."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from acl_support import (  # noqa: F401  (fixtures)
    ACL_ERROR_RT_MEMORY_ALLOCATION, CLIENT_SRC, GIB, MIB, REPO, Client, build_clients, sim,
)
from libflexai_support import libs  # noqa: F401  (fixture)

LIMIT = GIB


def _dlopen_client(out):
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler: the ACL clients cannot be built")
    exe = out / "acl_client_dl"
    subprocess.run([cc, "-std=gnu11", "-Wall", "-Wextra", "-Werror", f"-I{REPO / 'libflexai' / 'sim' / 'acl'}",
                    "-DACL_DLOPEN", "-o", str(exe), str(CLIENT_SRC), "-ldl"], check=True)
    return exe


@pytest.fixture(scope="module")
def layouts(libs, tmp_path_factory):  # noqa: F811
    """The clients of both installs: "direct" (libascendcl.so defines the API; linked and dlopen
    clients) and "cann" (libascendcl.so forwards to libacl_rt.so; dlopen client)."""
    sim_dir = libs["flexai"].parent / "sim"
    direct, cann = sim_dir / "libascendcl.so", sim_dir / "cann" / "libascendcl.so"
    for lib in (direct, cann, sim_dir / "cann" / "libacl_rt.so"):
        if not lib.exists():
            pytest.skip(f"{lib} was not built")
    d = build_clients(direct, tmp_path_factory.mktemp("acl-direct"))
    exe = _dlopen_client(tmp_path_factory.mktemp("acl-cann"))
    return {
        "direct-link": ({**d, "flexai": libs["flexai"]}, "link"),
        "direct-dlopen": ({**d, "flexai": libs["flexai"]}, "dlopen"),
        "cann-dlopen": ({"lib": cann, "dlopen": exe, "flexai": libs["flexai"]}, "dlopen"),
    }


def sliced(built, tmp_path) -> dict:
    return {"LD_PRELOAD": str(built["flexai"]), "FLEXAI_REGION": str(tmp_path / "region"), "FLEXAI_MEMORY": "1GiB"}


def launches(tmp_path) -> int:
    from flexai_hook.devices import region

    return region.read_region(tmp_path / "region").launches


def test_the_cann_layout_forwards(layouts):
    """The simulated forwarding install is what the tests below need: libascendcl.so defines no
    ACL entry point, libacl_rt.so (its dependency) does."""
    built, _ = layouts["cann-dlopen"]
    out = subprocess.run(["nm", "-D", "--defined-only", str(built["lib"])], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("no nm")
    assert " aclrtMalloc" not in out.stdout
    needed = subprocess.run(["readelf", "-d", str(built["lib"])], capture_output=True, text=True).stdout
    assert "[libacl_rt.so]" in needed


@pytest.mark.parametrize("layout", ["direct-dlopen", "cann-dlopen"])
def test_refused_at_the_limit_whatever_library_defines_aclrtMalloc(layouts, sim, tmp_path, layout):
    """Before: on the forwarding install aclrtMalloc(1 GiB + 32) succeeded past a 1 GiB slice and
    a fill took 3 GiB of the 4 GiB card."""
    built, mode = layouts[layout]
    c = Client(built, sim, ["init", "set", 0, "malloc", LIMIT, "fill", 64 * MIB, "meminfo", "freeall", "meminfo"],
               mode, env=sliced(built, tmp_path))
    assert c.step("malloc")["rc"] == ACL_ERROR_RT_MEMORY_ALLOCATION
    fill = c.step("fill")
    assert fill["rc"] == ACL_ERROR_RT_MEMORY_ALLOCATION and fill["filled"] == 15 * 64 * MIB
    assert c.step("meminfo")["free"] == LIMIT - 15 * (64 * MIB + 32)
    assert c.step("meminfo", 1)["free"] == LIMIT


@pytest.mark.parametrize("layout", ["direct-link", "direct-dlopen", "cann-dlopen"])
def test_task_scheduler_and_dvpp_memory_are_charged(layouts, sim, tmp_path, layout):
    """aclrtMallocForTaskScheduler and acldvppMalloc are charged like aclrtMalloc (32-byte
    rounding plus 32) and given back by aclrtFree / acldvppFree. Before: neither was charged."""
    built, mode = layouts[layout]
    c = Client(built, sim, ["init", "set", 0, "meminfo", "sched", 1000, "dvpp", 1000, "meminfo",
                            "sched", LIMIT, "dvpp", LIMIT, "dvppfree", "freeall", "meminfo"],
               mode, env=sliced(built, tmp_path))
    base = c.step("meminfo")["free"]
    assert base == LIMIT
    assert c.step("sched")["rc"] == 0 and c.step("dvpp")["rc"] == 0
    assert base - c.step("meminfo", 1)["free"] == 2 * 1056
    assert c.step("sched", 1)["rc"] == ACL_ERROR_RT_MEMORY_ALLOCATION
    assert c.step("dvpp", 1)["rc"] == ACL_ERROR_RT_MEMORY_ALLOCATION
    assert c.step("dvppfree")["rc"] == 0 and c.step("freeall")["rc"] == 0
    assert c.step("meminfo", 2)["free"] == base


@pytest.mark.parametrize("layout", ["direct-link", "direct-dlopen", "cann-dlopen"])
def test_graph_replays_and_ai_cpu_launches_pass_the_gate(layouts, sim, tmp_path, layout):
    """Each aclmdlRIExecuteAsync (an NPUGraph replay) passes the compute gate and is counted like a
    launch, as are AI-CPU kernels (registered with aclrtRegisterCpuFunc). Before: replays were
    never gated, and on the forwarding install no launch was."""
    built, mode = layouts[layout]
    c = Client(built, sim, ["init", "set", 0, "spin", 100_000, 2, "graph", 100_000, 5, 3, "aicpu", 100_000],
               mode, env=sliced(built, tmp_path))
    assert c.step("spin")["rc"] == 0 and c.step("aicpu")["rc"] == 0
    graph = c.step("graph")
    assert graph["rc"] == 0 and graph["capture"] == 0
    # 2 launches, 5 captured launches (they pass the gate as they are issued), 3 replays, 1 AI-CPU
    assert launches(tmp_path) == 2 + 5 + 3 + 1


def test_an_unrelated_library_with_acl_names_is_not_wrapped(layouts, sim, tmp_path):
    """Only CANN's runtime libraries are interposed: a library of another name that happens to
    define aclrtMalloc is handed to the program untouched (and never charged)."""
    built, _ = layouts["cann-dlopen"]
    cc = shutil.which("cc") or shutil.which("gcc")
    src = tmp_path / "other.c"
    src.write_text("#include <stddef.h>\nstatic char mem[64];\n"
                   "int aclrtMalloc(void **p, size_t n, int policy) { (void)n; (void)policy; *p = mem; return 0; }\n")
    other = tmp_path / "libmyaclrt.so"
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(other), str(src)], check=True)
    c = Client({**built, "lib": other}, sim, ["malloc", 4 * LIMIT, "malloc", 4 * LIMIT], "dlopen",
               env=sliced(built, tmp_path))
    assert [c.step("malloc", i)["rc"] for i in (0, 1)] == [0, 0]
