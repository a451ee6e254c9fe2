"""Memory the driver holds beyond the allocations (issue 15, path 4).

On a real card a process's context, loaded modules and libraries, thread stacks and device heap
take hundreds of MiB no cuMemAlloc asked for; flexaid's context_memory is 0 there. libflexai
charges what NVML reports for the process beyond what it tracked (libflexai/cuda/overhead.c). The
simulated driver models it: a context costs context_bytes, a module or library module_bytes,
cuCtxSetLimit grows the context (stack x resident threads, heap, printf FIFO), all visible in
NVML's per-process used memory; nvml_pid_offset makes NVML's pids those of another pid
namespace, as a container sees the host's.
"""

from __future__ import annotations

from libflexai_support import GIB, MIB, client, info, libs, lines, procs, sim  # noqa: F401

CTX = 300 * MIB
STACK_GROWTH = 1024 * 132 * 2048  # stack 1024 -> 2048 bytes x 2048 threads x 132 SMs


def test_real_card_context_is_charged(libs, client, sim):
    # a real card: the driver's context costs 300 MiB, flexaid's context_memory is 0
    sim.configure({"context_bytes": CTX, "module_bytes": 0})
    env = sim.env(libs, memory="1GiB")
    out = lines([client, "ctx", "alloc", "mem", str(800 * MIB), "alloc", "mem", str(700 * MIB),
                 "info"], env)
    assert out[0] == "ok"
    assert out[1] == "oom", "the context's 300 MiB were not charged: 1.1 GiB on a 1 GiB slice"
    assert out[2] == "ok 0"
    assert info(out[3])["free"] == GIB - CTX - 700 * MIB


def test_context_is_charged_once_with_context_memory_configured(libs, client, sim):
    # the simulated backend: context_memory equals the driver's context, nothing more to add
    sim.configure({"context_bytes": CTX, "module_bytes": 0})
    env = sim.env(libs, memory="1GiB", context_memory="300MiB")
    out = lines([client, "ctx", "alloc", "mem", str(700 * MIB), "info"], env)
    assert out[:2] == ["ok", "ok 0"]
    assert info(out[2])["free"] == GIB - CTX - 700 * MIB


def test_pid_of_another_namespace_is_found_by_the_probe(libs, client, sim):
    # NVML reports pids this process does not know as its own (a container): libflexai finds
    # itself by the memory a probe allocation adds
    sim.configure({"context_bytes": CTX, "module_bytes": 0, "nvml_pid_offset": 500000000})
    env = sim.env(libs, memory="1GiB")
    out = lines([client, "ctx", "alloc", "mem", str(800 * MIB), "alloc", "mem", str(700 * MIB),
                 "info"], env)
    assert out[:3] == ["ok", "oom", "ok 0"]
    assert info(out[3])["free"] == GIB - CTX - 700 * MIB


def test_modules_and_libraries_are_charged_until_unloaded(libs, client, sim):
    sim.configure({"context_bytes": 0, "module_bytes": 100 * MIB})
    env = sim.env(libs, memory="1GiB")
    out = lines([client, "module", "2", "library", "1", "alloc", "mem", str(800 * MIB),
                 "alloc", "mem", str(700 * MIB), "unload", "alloc", "mem", str(300 * MIB),
                 "info"], env)
    assert out[:2] == ["ok", "ok"]
    assert out[2] == "oom", "300 MiB of modules were not charged"
    assert out[3] == "ok 0"
    assert out[4] == "ok"
    assert out[5] == "ok 1", "unloading did not give the modules' memory back"
    assert info(out[6])["free"] == GIB - 1000 * MIB


def test_module_load_past_the_limit_fails(libs, client, sim):
    sim.configure({"context_bytes": 0, "module_bytes": 100 * MIB})
    env = sim.env(libs, memory="1GiB")
    out = lines([client, "alloc", "mem", str(950 * MIB), "module", "1", "library", "1", "info"], env)
    assert out[0] == "ok 0"
    assert out[1] == "oom", "a module load took the slice past its limit"
    assert out[2] == "oom", "a library load took the slice past its limit"
    assert info(out[3])["free"] == 74 * MIB  # the loads were undone


def test_modules_loaded_where_no_wrapper_sees_are_charged_within_the_period(libs, client, sim):
    # cudart loads kernels lazily through private paths: the allocation path looks again at
    # most every 100 ms
    sim.configure({"context_bytes": 0, "module_bytes": 100 * MIB})
    env = sim.env(libs, memory="1GiB")
    out = lines([client, "ctx", "privmodule", "3", "sleep", "150", "alloc", "mem", str(800 * MIB),
                 "alloc", "mem", str(700 * MIB)], env)
    assert out[:3] == ["ok", "ok", "ok"]
    assert out[3] == "oom", "modules loaded through the private path were not charged"
    assert out[4] == "ok 0"


def test_stack_growth_is_charged_and_heap_past_the_limit_is_refused(libs, client, sim):
    sim.configure({"context_bytes": 0, "module_bytes": 0})
    env = sim.env(libs, memory="1GiB")
    out = lines([client, "setlimit", "stack", "2048", "alloc", "mem", str(800 * MIB),
                 "alloc", "mem", str(700 * MIB), "setlimit", "heap", str(600 * MIB),
                 "getlimit", "heap", "getlimit", "stack", "info"], env)
    assert out[0] == "ok"
    assert out[1] == "oom", "the stack's 264 MiB were not charged"
    assert out[2] == "ok 0"
    assert out[3] == "oom", "a 600 MiB device heap took the slice past its limit"
    assert out[4] == str(8 * MIB), "the refused heap size was not undone"
    assert out[5] == "2048"
    assert info(out[6])["free"] == GIB - STACK_GROWTH - 700 * MIB


def test_each_process_pays_its_own_context(libs, client, sim, procs, tmp_path):
    sim.configure({"context_bytes": CTX, "module_bytes": 0})
    env = sim.env(libs, memory="1GiB", region=tmp_path / "region")
    holder = procs.hold([client, "ctx", "hold"], env)
    assert holder.output == ["ok", "held"]
    out = lines([client, "ctx", "alloc", "mem", str(500 * MIB), "alloc", "mem", str(400 * MIB)], env)
    assert out == ["ok", "oom", "ok 0"]  # 1024 - 2 x 300 = 424 MiB left


def test_nvml_view_shows_the_overhead(libs, client, sim, tmp_path):
    from flexai_hook.devices import region

    sim.configure({"context_bytes": CTX, "module_bytes": 0})
    env = sim.env(libs, memory="1GiB", region=tmp_path / "region")
    out = lines([client, "ctx", "alloc", "mem", str(100 * MIB), "info"], env)
    assert out[:2] == ["ok", "ok 0"]
    snap = region.read_region(tmp_path / "region")
    assert snap.to_json()["memory_peak"] == CTX + 100 * MIB
    assert [p.overhead_bytes for p in snap.processes_list] == [CTX]


def test_green_context_is_charged_and_kept_to_the_slice_card(libs, client, sim):
    sim.configure({"context_bytes": CTX, "module_bytes": 0})
    env = sim.env(libs, memory="1GiB")
    out = lines([client, "greenctx", "1", "greenctx", "0", "alloc", "mem", str(500 * MIB),
                 "alloc", "mem", str(400 * MIB)], env)
    assert out[0] == "err 101", "a green context on another card was let through"
    assert out[1] == "ok"
    # the primary context (alloc makes one) and the green context: 600 MiB
    assert out[2] == "oom", "the green context's memory was not charged"
    assert out[3] == "ok 0"


def test_simulated_green_context_costs_a_context(libs, client, sim):
    sim.configure({"context_bytes": CTX, "module_bytes": 0})
    out = lines([client, "greenctx", "0", "info"], sim.env(libs, preload=False))
    assert out[0] == "ok"
    assert info(out[1])["free"] == 16 * GIB - 2 * CTX  # the green and the primary context


def _unshare_pid(own_proc: bool) -> list[str]:
    """A command prefix running in a new pid namespace (with its own /proc: a container)."""
    import shutil
    import subprocess

    exe = shutil.which("unshare")
    cmd = [exe, "--pid", "--fork"] + (["--mount-proc"] if own_proc else []) if exe else []
    if not exe or subprocess.run(cmd + ["true"], capture_output=True).returncode != 0:
        import pytest

        pytest.skip("cannot make a pid namespace here (unshare --pid needs root or user namespaces)")
    return cmd


def test_context_is_charged_in_a_pid_namespace_with_its_own_proc(libs, client, sim):
    # as in a container: neither the process nor the simulated driver can name the host pid;
    # NVML reports one the process does not know, and the probe finds it
    sim.configure({"context_bytes": CTX, "module_bytes": 0})
    env = sim.env(libs, memory="1GiB")
    out = lines(_unshare_pid(True) + [client, "ctx", "alloc", "mem", str(800 * MIB), "alloc",
                                      "mem", str(700 * MIB)], env)
    assert out == ["ok", "oom", "ok 0"]


def test_context_is_charged_in_a_pid_namespace_seen_from_the_host_proc(libs, client, sim):
    sim.configure({"context_bytes": CTX, "module_bytes": 0})
    env = sim.env(libs, memory="1GiB")
    out = lines(_unshare_pid(False) + [client, "ctx", "alloc", "mem", str(800 * MIB), "alloc",
                                       "mem", str(700 * MIB)], env)
    assert out == ["ok", "oom", "ok 0"]
