"""Contexts libflexai did not see created (issue 15, path 7).

libcudart creates its primary context through the driver's private export table, never through
cuDevicePrimaryCtxRetain/cuCtxCreate; the simulated driver models that path (cuGetExportTable).
The process must still be charged its context and refused on another card: libflexai checks the
current context on a thread's first allocation or launch.
"""

from __future__ import annotations

from libflexai_support import GIB, MIB, client, info, libs, lines, sim  # noqa: F401

CTX = 300 * MIB


def test_private_context_is_charged(libs, client, sim):
    env = sim.env(libs, memory="1GiB", context_memory="300MiB")
    # 1 GiB - 300 MiB context leaves 724 MiB: 800 MiB must not fit, 700 MiB must
    out = lines([client, "privctx", "0", "alloc", "mem", str(800 * MIB), "alloc", "mem",
                 str(700 * MIB), "info"], env)
    assert out[0] == "ok"
    assert out[1] == "oom", "the context made through the private path was not charged"
    assert out[2] == "ok 0"
    assert info(out[3])["free"] == GIB - CTX - 700 * MIB


def test_private_context_on_another_card_is_refused(libs, client, sim):
    env = sim.env(libs, memory="1GiB", context_memory="300MiB")
    # the slice is card 0; raw device 1 is another card
    out = lines([client, "privctx", "1", "alloc", "mem", str(MIB), "alloc", "pool", str(MIB)], env)
    assert out[0] == "ok"  # the driver made it: libflexai never saw the call
    assert out[1] == "err 101", "an allocation in another card's context was let through"
    assert out[2] == "err 101"


def test_private_context_on_another_card_cannot_launch(libs, client, sim):
    env = sim.env(libs, memory="1GiB", context_memory="300MiB")
    out = lines([client, "privctx", "1", "launch", "1"], env)
    assert out[0] == "ok"
    assert out[1] == "err 101", out


def test_wrapped_context_is_charged_once(libs, client, sim):
    env = sim.env(libs, memory="1GiB", context_memory="300MiB")
    out = lines([client, "ctx", "privctx", "0", "alloc", "mem", str(700 * MIB), "info"], env)
    assert out[:3] == ["ok", "ok", "ok 0"]
    assert info(out[3])["free"] == GIB - CTX - 700 * MIB


# A thread that was checked once and then switches context (issue 15, path 7): cudart's
# cudaSetDevice is cuCtxSetCurrent to a context it made through the private table.

def test_switch_with_set_current_is_checked(libs, client, sim):
    env = sim.env(libs, memory="1GiB", context_memory="300MiB")
    out = lines([client, "privctx", "1", "privctx", "0", "alloc", "mem", str(MIB),
                 "setctx", "1", "alloc", "mem", str(MIB), "launch", "1",
                 "setctx", "0", "alloc", "mem", str(MIB)], env)
    assert out[:3] == ["ok", "ok", "ok 0"]
    assert out[3] == "ok"
    assert out[4] == "err 101", "an allocation after cuCtxSetCurrent to another card's context was let through"
    assert out[5] == "err 101", "a launch after cuCtxSetCurrent to another card's context was let through"
    assert out[6:] == ["ok", "ok 1"]


def test_switch_with_push_and_pop_is_checked(libs, client, sim):
    env = sim.env(libs, memory="1GiB", context_memory="300MiB")
    out = lines([client, "privctx", "1", "privctx", "0", "alloc", "mem", str(MIB),
                 "pushctx", "1", "alloc", "mem", str(MIB), "launch", "1",
                 "popctx", "alloc", "mem", str(MIB)], env)
    assert out[:4] == ["ok", "ok", "ok 0", "ok"]
    assert out[4] == "err 101", "an allocation after cuCtxPushCurrent to another card's context was let through"
    assert out[5] == "err 101", "a launch after cuCtxPushCurrent to another card's context was let through"
    assert out[6:] == ["ok", "ok 1"]


def test_switch_inside_the_private_path_is_checked_on_allocation(libs, client, sim):
    # the private table itself makes its context current: no wrapped call sees the switch,
    # so allocations compare the current context with the one last checked
    env = sim.env(libs, memory="1GiB", context_memory="300MiB")
    out = lines([client, "privctx", "0", "alloc", "mem", str(MIB), "privctx", "1",
                 "alloc", "mem", str(MIB), "alloc", "pool", str(MIB)], env)
    assert out[:3] == ["ok", "ok 0", "ok"]
    assert out[3:] == ["err 101", "err 101"]
