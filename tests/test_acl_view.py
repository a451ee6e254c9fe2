"""libflexai on ACL: the slice enforced on the simulated libascendcl.so, for programs linked
against it and for programs that dlopen() it. Every process is stopped by its pid."""

from __future__ import annotations

import signal

import pytest

from acl_support import (  # noqa: F401  (fixtures)
    ACL_ERROR_RT_INVALID_DEVICEID, ACL_ERROR_RT_MEMORY_ALLOCATION, CTX, GIB, MIB, Client, build_clients, clients,
    sim,
)
from libflexai_support import libs  # noqa: F401  (fixture)

LIMIT = GIB


@pytest.fixture(scope="module")
def built(libs, tmp_path_factory):  # noqa: F811
    """The clients against the in-place build's libascendcl.so (the one libflexai's tests use)."""
    lib = libs["flexai"].parent / "sim" / "libascendcl.so"
    if not lib.exists():
        pytest.skip(f"{lib} was not built")
    return {**build_clients(lib, tmp_path_factory.mktemp("acl-clients")), "flexai": libs["flexai"]}


def sliced(built, tmp_path, **flexai) -> dict:
    """Environment of a process of one slice (the region shared through FLEXAI_REGION)."""
    env = {"LD_PRELOAD": str(built["flexai"]), "FLEXAI_REGION": str(tmp_path / "region"),
           "FLEXAI_MEMORY": "1GiB"}
    env.update({f"FLEXAI_{k.upper()}": str(v) for k, v in flexai.items()})
    return env


@pytest.mark.parametrize("mode", ["link", "dlopen"])
def test_one_device_the_slices(built, sim, tmp_path, mode):
    c = Client(built, sim, ["count", "init", "count", "set", 1, "errmsg", "set", 0, "getdev", "meminfo",
                            "ctx", 1, "ctx", 0, "cfg", 4096, 1, "phys", 2 * MIB, 1], mode,
               env=sliced(built, tmp_path))
    assert c.step("count")["count"] == 1 and c.step("count", 1)["count"] == 1
    assert c.step("set")["rc"] == ACL_ERROR_RT_INVALID_DEVICEID
    assert "device id 1 is not visible" in c.step("errmsg")["msg"]
    assert c.step("set", 1)["rc"] == 0 and c.step("getdev")["device"] == 0
    meminfo = c.step("meminfo")
    assert meminfo["total"] == LIMIT and meminfo["free"] <= LIMIT
    assert [c.step("ctx", i)["rc"] for i in (0, 1)] == [ACL_ERROR_RT_INVALID_DEVICEID, 0]
    assert c.step("cfg")["rc"] == ACL_ERROR_RT_INVALID_DEVICEID
    assert c.step("phys")["rc"] == ACL_ERROR_RT_INVALID_DEVICEID


def test_slice_on_the_second_card(built, sim, tmp_path):
    """Device 0 of the program is the slice's card (index 1): its memory is charged there."""
    c = Client(built, sim, ["init", "set", 0, "malloc", 512 * MIB, "ready", "hold"], background=True,
               env=sliced(built, tmp_path, device=1))
    try:
        c.wait_for("ready")
        assert c.step("malloc")["rc"] == 0
        host = Client(built, sim, ["init", "set", 1, "meminfo", "set", 0, "meminfo"])
        assert host.step("meminfo")["free"] == 4 * GIB * 0 + 2 * GIB - 2 * CTX - (512 * MIB + 32)
        assert host.step("meminfo", 1)["free"] == 4 * GIB - CTX
    finally:
        c.stop(signal.SIGKILL)


@pytest.mark.parametrize("mode", ["link", "dlopen"])
def test_every_allocation_counts_and_frees_give_back(built, sim, tmp_path, mode):
    steps = ["init", "set", 0, "meminfo", "malloc", 1000, "align32", 1000, "cached", 1000, "cfg", 1000, 0,
             "cfg", 1000, "phys", 2 * MIB, 0, "meminfo", "freeall", "meminfo", "vmm", "meminfo"]
    c = Client(built, sim, steps, mode, env=sliced(built, tmp_path))
    base = c.step("meminfo")["free"]
    assert base == LIMIT
    assert base - c.step("meminfo", 1)["free"] == 1056 + 1024 + 1056 + 1056 + 1056 + 2 * MIB
    assert c.step("meminfo", 2)["free"] == base
    assert c.step("vmm")["rc"] == 0 and c.step("meminfo", 3)["free"] == base


@pytest.mark.parametrize("mode", ["link", "dlopen"])
def test_past_the_limit_is_207001_without_the_driver(built, sim, tmp_path, mode):
    c = Client(built, sim, ["init", "set", 0, "malloc", LIMIT, "errmsg", "fill", 64 * MIB, "meminfo"], mode,
               env=sliced(built, tmp_path))
    assert c.step("malloc")["rc"] == ACL_ERROR_RT_MEMORY_ALLOCATION  # LIMIT + 32 bytes
    assert "flexai: out of memory in the slice" in c.step("errmsg")["msg"]
    fill = c.step("fill")
    assert fill["rc"] == ACL_ERROR_RT_MEMORY_ALLOCATION and fill["filled"] == 15 * 64 * MIB
    assert c.step("meminfo")["free"] == LIMIT - 15 * (64 * MIB + 32)
    host = Client(built, sim, ["init", "set", 0, "meminfo"])  # the card itself has plenty left
    assert host.step("meminfo")["free"] > 2 * GIB


def test_budget_shared_by_the_slices_processes_and_kill_9(built, sim, tmp_path, clients):
    env = sliced(built, tmp_path)
    holder = Client(built, sim, ["init", "set", 0, "malloc", 700 * MIB, "ready", "hold"], background=True, env=env)
    clients.append(holder)
    holder.wait_for("ready")
    other = Client(built, sim, ["init", "set", 0, "meminfo", "malloc", 400 * MIB, "malloc", 200 * MIB], "dlopen",
                   env=env)
    assert other.step("meminfo")["free"] == LIMIT - (700 * MIB + 32)
    assert other.step("malloc")["rc"] == ACL_ERROR_RT_MEMORY_ALLOCATION
    assert other.step("malloc", 1)["rc"] == 0
    holder.stop(signal.SIGKILL)
    after = Client(built, sim, ["init", "set", 0, "meminfo", "malloc", 900 * MIB], env=env)
    assert after.step("meminfo")["free"] == LIMIT and after.step("malloc")["rc"] == 0


def test_concurrent_processes_never_pass_the_limit(built, sim, tmp_path, clients):
    env = sliced(built, tmp_path)
    procs = [Client(built, sim, ["init", "set", 0, "ready", "wait", "fill", 32 * MIB, "hold"], mode=m,
                    background=True, env=env) for m in ("link", "dlopen", "link", "dlopen")]
    clients.extend(procs)
    for p in procs:
        assert p.wait_for("ready") and p.step("set")["rc"] == 0
    for p in procs:
        p.send("go\n")
    filled = [p.wait_for("fill") for p in procs]
    charged = sum(f["filled"] // (32 * MIB) * (32 * MIB + 32) for f in filled)
    assert charged <= LIMIT  # reserve-then-call under the region's lock: exact
    assert LIMIT - charged < 32 * MIB + 32


def test_reset_and_finalize_give_everything_back(built, sim, tmp_path):
    c = Client(built, sim, ["init", "set", 0, "set", 0, "malloc", 300 * MIB, "phys", 4 * MIB, 0, "reset", 0,
                            "meminfo", "reset", 0, "set", 0, "meminfo", "malloc", 200 * MIB, "finalize",
                            "init", "set", 0, "meminfo", "free"],
               env=sliced(built, tmp_path))
    assert c.step("meminfo")["free"] == LIMIT - (300 * MIB + 32) - 4 * MIB  # one reference left
    assert c.step("meminfo", 1)["free"] == LIMIT  # the last reset freed it all
    assert c.step("meminfo", 2)["free"] == LIMIT  # so did aclFinalize
    assert c.step("free")["rc"] != 0  # a pointer from before aclFinalize is gone


def test_torch_npu_shaped_start_up(built, sim, tmp_path):
    """aclrtGetMemInfo early in start-up (Huawei warns hooking it broke torch_npu): the
    allocator sees the slice, sizes itself from it, and every step still works."""
    c = Client(built, sim, [], "torch", env=sliced(built, tmp_path))
    out = {}
    for line in c.raw.splitlines():
        key, _, value = line.partition("=")
        out[key] = int(value) if value.lstrip("-").isdigit() else value
    assert out.get("done") == 1, c.raw
    assert out["count"] == 1 and out["device"] == 0
    assert out["total0"] == LIMIT and 0 < out["free0"] <= out["total0"]
    assert out["free1"] == out["free0"] - (2 * MIB + 32) - (20 * MIB + 32) - 2 * 2 * MIB
    assert out["grow_rc"] == ACL_ERROR_RT_MEMORY_ALLOCATION and "flexai" in out["grow_msg"]
    assert out["grown_blocks"] == out["free1"] // (20 * MIB + 32)
    assert out["free2"] < 20 * MIB + 32 and out["free3"] == out["free0"]
    assert out["free_blocks_failed"] == 0


@pytest.mark.parametrize("mode", ["link", "dlopen"])
def test_without_a_slice_everything_passes_through(built, sim, mode):
    c = Client(built, sim, ["count", "init", "set", 1, "meminfo"], mode, env={"LD_PRELOAD": str(built["flexai"])})
    assert c.step("count")["count"] == 2 and c.step("set")["rc"] == 0
    assert c.step("meminfo")["total"] == 2 * GIB


def test_share_of_the_card_from_acl(built, sim, tmp_path):
    """FLEXAI_FRACTION outside a container: the limit is a share of what ACL reports for the chip."""
    env = {**sliced(built, tmp_path), "FLEXAI_FRACTION": "0.25"}
    del env["FLEXAI_MEMORY"]
    c = Client(built, sim, ["init", "set", 0, "meminfo", "malloc", GIB, "malloc", 512 * MIB], env=env)
    assert c.step("meminfo")["total"] == GIB  # a quarter of the 4 GiB card
    assert c.step("malloc")["rc"] == ACL_ERROR_RT_MEMORY_ALLOCATION and c.step("malloc", 1)["rc"] == 0


@pytest.mark.parametrize("mode", ["link", "dlopen"])
def test_launches_pass_the_gate_and_are_counted(built, sim, tmp_path, clients, mode):
    from flexai_hook.devices import region

    env = sliced(built, tmp_path)
    c = Client(built, sim, ["init", "set", 0, "spin", 100_000, 5, "hostargs", 100_000, "withcfg", 100_000,
                            "v2", 100_000], mode, env=env)
    assert all(c.step(s)["rc"] == 0 for s in ("spin", "hostargs", "withcfg", "v2"))
    assert region.read_region(tmp_path / "region").launches == 8
    # a paused slice's launches wait until it is resumed
    region.set_paused(tmp_path / "region", True)
    held = Client(built, sim, ["init", "set", 0, "ready", "spin", 100_000, 1, "ready"], mode, background=True,
                  env=env)
    clients.append(held)
    held.wait_for("ready")
    assert held.proc.poll() is None and region.read_region(tmp_path / "region").launches == 8
    region.set_paused(tmp_path / "region", False)
    assert held.wait_for("spin")["rc"] == 0
    held.finish()
    assert region.read_region(tmp_path / "region").launches == 9
