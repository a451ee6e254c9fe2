"""The simulated libascendcl.so, driven by a C client linked against it and one that dlopen()s it.

Every process a test starts is stopped by its pid, on success and on failure.
"""

from __future__ import annotations

import signal

import pytest

from acl_support import (  # noqa: F401  (fixtures)
    ACL_ERROR_INVALID_PARAM, ACL_ERROR_REPEAT_FINALIZE, ACL_ERROR_REPEAT_INITIALIZE, ACL_ERROR_RT_CONTEXT_NULL,
    ACL_ERROR_RT_INVALID_DEVICEID, ACL_ERROR_RT_MEMORY_ALLOCATION, ACL_ERROR_RT_NO_DEVICE, ACL_ERROR_RT_PARAM_INVALID,
    ACL_ERROR_UNINITIALIZE, ACL_SUCCESS, CTX, GIB, MIB, Client, built, clients, sim,
)


@pytest.mark.parametrize("mode", ["link", "dlopen"])
def test_device_count_and_visibility(built, sim, mode):
    c = Client(built, sim, ["count", "init", "count", "set", 1, "getdev", "meminfo", "set", 2, "errmsg"], mode)
    assert c.step("count") == {"step": "count", "rc": 0, "count": 2}  # before aclInit, as torch_npu asks
    assert c.step("count", 1)["count"] == 2
    assert c.step("getdev") == {"step": "getdev", "rc": 0, "device": 1}
    meminfo = c.step("meminfo")
    assert meminfo["rc"] == 0 and meminfo["total"] == 2 * GIB and meminfo["free"] == 2 * GIB - CTX
    assert c.step("set", 1)["rc"] == ACL_ERROR_RT_INVALID_DEVICEID
    assert "out of range" in c.step("errmsg")["msg"]


def test_no_simulated_card(built, tmp_path):
    c = Client(built, tmp_path / "absent", ["count", "init", "set", 0, "finalize"])
    assert c.step("count")["rc"] == ACL_ERROR_RT_NO_DEVICE and c.step("count")["count"] == 0
    assert c.step("init")["rc"] == ACL_SUCCESS
    assert c.step("set")["rc"] == ACL_ERROR_RT_NO_DEVICE


def test_init_rules_and_error_codes(built, sim):
    c = Client(built, sim, ["set", 0, "init", "init", "getdev", "meminfo", "malloc", 64, "set", 0,
                            "malloc", 0, "copy", "finalize", "finalize"])
    assert c.step("set")["rc"] == ACL_ERROR_UNINITIALIZE
    assert [c.step("init", i)["rc"] for i in (0, 1)] == [ACL_SUCCESS, ACL_ERROR_REPEAT_INITIALIZE]
    assert c.step("getdev")["rc"] == ACL_ERROR_RT_CONTEXT_NULL
    assert c.step("meminfo")["rc"] == ACL_ERROR_RT_CONTEXT_NULL  # no device set yet
    assert c.step("malloc")["rc"] == ACL_ERROR_RT_CONTEXT_NULL
    assert c.step("malloc", 1)["rc"] == ACL_ERROR_INVALID_PARAM  # size 0
    copy = c.step("copy")
    assert copy["rc"] == 0 and copy["same"] == 1 and copy["host_as_device"] == ACL_ERROR_RT_PARAM_INVALID
    assert [c.step("finalize", i)["rc"] for i in (0, 1)] == [ACL_SUCCESS, ACL_ERROR_REPEAT_FINALIZE]


@pytest.mark.parametrize("mode", ["link", "dlopen"])
def test_every_malloc_charges_and_frees(built, sim, mode):
    c = Client(built, sim, ["init", "set", 0, "meminfo", "malloc", 1000, "align32", 1000, "cached", 1000,
                            "cfg", 1000, "phys", 2 * MIB, 0, "meminfo", "cfg", MIB, 1, "freeall", "meminfo",
                            "vmm", "meminfo", "phys", 1000, 0, "errmsg"], mode)
    base = c.step("meminfo", 0)["free"]
    assert base == 4 * GIB - CTX
    # aclrtMalloc/Cached/WithCfg: round up to 32 and 32 more; Align32: round up only; physical: as asked
    assert base - c.step("meminfo", 1)["free"] == 1056 + 1024 + 1056 + 1056 + 2 * MIB
    assert c.step("cfg", 1)["rc"] == 0  # on device 1 through ACL_RT_MEM_ATTR_DEVICE_ID
    assert c.step("freeall")["rc"] == 0 and c.step("meminfo", 2)["free"] == base
    vmm = c.step("vmm")
    assert vmm["rc"] == 0 and vmm["ok"] == 1 and vmm["granularity"] == 2 * MIB
    assert c.step("meminfo", 3)["free"] == base
    assert c.step("phys", 1)["rc"] == ACL_ERROR_INVALID_PARAM and "granularity" in c.step("errmsg")["msg"]


@pytest.mark.parametrize("mode", ["link", "dlopen"])
def test_oom_is_207001_with_a_message(built, sim, mode):
    c = Client(built, sim, ["init", "set", 1, "malloc", 2 * GIB, "errmsg", "errmsg", "fill", 256 * MIB,
                            "freeall", "malloc", GIB], mode)
    assert c.step("malloc")["rc"] == ACL_ERROR_RT_MEMORY_ALLOCATION
    assert "out of memory on device 1" in c.step("errmsg")["msg"]
    assert c.step("errmsg", 1)["msg"] == "(null)"  # read once
    fill = c.step("fill")
    assert fill["rc"] == ACL_ERROR_RT_MEMORY_ALLOCATION and fill["filled"] == 6 * 256 * MIB  # 2 GiB - 300 MiB
    assert c.step("malloc", 1)["rc"] == 0


def test_memory_budget_shared_across_processes(built, sim, clients):
    holder = Client(built, sim, ["init", "set", 0, "malloc", 3 * GIB, "ready", "hold"], background=True)
    clients.append(holder)
    assert holder.wait_for("ready") and holder.step("malloc")["rc"] == 0
    other = Client(built, sim, ["init", "set", 0, "meminfo", "malloc", GIB, "malloc", 256 * MIB], "dlopen")
    assert other.step("meminfo")["free"] == 4 * GIB - 2 * CTX - (3 * GIB + 32)
    assert other.step("malloc")["rc"] == ACL_ERROR_RT_MEMORY_ALLOCATION
    assert other.step("malloc", 1)["rc"] == 0
    holder.finish()  # ends normally
    after = Client(built, sim, ["init", "set", 0, "malloc", 3 * GIB])
    assert after.step("malloc")["rc"] == 0


def test_kill_9_returns_memory(built, sim, clients):
    holder = Client(built, sim, ["init", "set", 0, "malloc", 3 * GIB, "ready", "hold"], background=True)
    clients.append(holder)
    holder.wait_for("ready")
    blocked = Client(built, sim, ["init", "set", 0, "malloc", 3 * GIB])
    assert blocked.step("malloc")["rc"] == ACL_ERROR_RT_MEMORY_ALLOCATION
    holder.stop(signal.SIGKILL)
    after = Client(built, sim, ["init", "set", 0, "meminfo", "malloc", 3 * GIB])
    assert after.step("meminfo")["free"] == 4 * GIB - CTX
    assert after.step("malloc")["rc"] == 0


def test_concurrent_fills_never_overcommit(built, sim, clients):
    procs = [Client(built, sim, ["init", "set", 1, "ready", "wait", "fill", 64 * MIB, "hold"], mode=m,
                    background=True) for m in ("link", "dlopen", "link", "dlopen")]
    clients.extend(procs)
    for p in procs:
        assert p.wait_for("ready") and p.step("set")["rc"] == 0
    for p in procs:
        p.send("go\n")  # all four fill at once
    filled = [p.wait_for("fill") for p in procs]
    assert all(f["rc"] == ACL_ERROR_RT_MEMORY_ALLOCATION for f in filled)
    charged = sum(f["filled"] // (64 * MIB) * (64 * MIB + 32) for f in filled) + 4 * CTX
    assert charged <= 2 * GIB  # reserve-then-check: never more than the card
    # and the card was really filled: a failure is spurious at most while another process's
    # reservation is in flight, so each process stops less than one chunk early
    assert 2 * GIB - charged < 4 * (64 * MIB + 32)


def test_kernels_streams_and_events(built, sim):
    c = Client(built, sim, ["init", "set", 0, "spin", 2_000_000, 10, "kernel", 264, 100, "hostargs", 3_000_000,
                            "withcfg", 3_000_000, "v2", 3_000_000])
    spin = c.step("spin")
    assert spin["rc"] == 0 and float(spin["event_ms"]) >= 20.0  # ten 2 ms kernels, back to back
    kernel = c.step("kernel")  # 264 blocks on 132 cores: 2 waves of 10 us, 100 times
    assert kernel["rc"] == 0 and float(kernel["event_ms"]) >= 2.0
    for variant in ("hostargs", "withcfg", "v2"):
        assert c.step(variant)["rc"] == 0 and float(c.step(variant)["event_ms"]) >= 3.0


def test_one_timeline_per_card_across_processes(built, sim, clients):
    """A short kernel of a second process queues behind the first one's booked work."""
    busy = Client(built, sim, ["init", "set", 0, "ready", "spin", 5_000_000, 400], background=True)
    clients.append(busy)
    busy.wait_for("ready")
    probe = Client(built, sim, ["init", "set", 0, "sleep", 20, "spin", 1_000_000, 2], "dlopen")
    assert float(probe.step("spin")["event_ms"]) > 2 * 2.0  # more than its own 2 ms of work
    idle = Client(built, sim, ["init", "set", 1, "spin", 1_000_000, 2])  # the other card is free
    assert float(idle.step("spin")["event_ms"]) >= 2.0
