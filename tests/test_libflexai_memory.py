"""libflexai against the simulated driver: every allocation API, the views, races, kill -9.

The C client loads the driver the way libcudart does (dlopen + dlsym + cuGetProcAddress_v2);
cuda-bindings and pynvml are NVIDIA's own clients.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap

import pytest

from libflexai_support import GIB, MIB, PYTHON, client, info, libs, lines, procs, run, sim  # noqa: F401

ALL_APIS = ["mem", "pitch", "managed", "async", "pool", "vmm", "array", "array3d", "mipmap"]
CHUNK = 600 * MIB  # two do not fit a 1 GiB slice; a multiple of the VMM granularity


@pytest.mark.parametrize("api", ALL_APIS)
def test_each_allocation_api_within_over_and_after_free(api, libs, client, sim):
    env = sim.env(libs, memory="1GiB")
    # a stream-ordered pool keeps what was freed until the next synchronisation ("launch 0"
    # ends with cuCtxSynchronize), where it gives back what passes its release threshold (0)
    sync = ["launch", "0"] if api in ("async", "pool") else []
    out = lines([client, "alloc", api, str(CHUNK), "alloc", api, str(CHUNK), "info",
                 "free", "0", "alloc", api, str(CHUNK), "info", "freeall", *sync, "info"], env)
    assert out[0] == "ok 0"
    assert out[1] == "oom", f"{api}: the second {CHUNK} passed a 1 GiB slice"
    during = info(out[2])
    assert during["total"] == GIB and during["free"] <= GIB - CHUNK
    assert out[3] == "ok"
    assert out[4] == "ok 1", f"{api}: freeing did not give the memory back"
    assert info(out[5])["free"] == GIB - CHUNK and out[6] == "ok"
    assert info(out[-1])["free"] == GIB


@pytest.mark.parametrize("api", ALL_APIS)
def test_without_the_library_the_card_is_not_limited(api, libs, client, sim):
    out = lines([client, "alloc", api, str(CHUNK), "alloc", api, str(CHUNK), "info"],
                sim.env(libs, preload=False, memory="1GiB"))
    assert out[:2] == ["ok 0", "ok 1"]
    assert info(out[2])["total"] == 16 * GIB and info(out[2])["count"] == 2


def test_host_located_vmm_memory_is_not_counted(libs, client, sim):
    out = lines([client, "alloc", "vmmhost", str(CHUNK), "alloc", "vmmhost", str(CHUNK),
                 "alloc", "vmm", str(CHUNK)], sim.env(libs, memory="1GiB"))
    assert out == ["ok 0", "ok 1", "ok 2"]


def test_views_show_only_the_slice_card(libs, client, sim):
    out = lines([client, "info", "otherdev"], sim.env(libs, memory="4GiB"))
    view = info(out[0])
    assert view["count"] == 1 and view["total"] == 4 * GIB and view["devtotal"] == 4 * GIB
    assert view["free"] == 4 * GIB and view["uuid"] == sim.uuids[0]
    assert out[1] == "refused 101"  # CUDA_ERROR_INVALID_DEVICE
    # pinned to the second card, by index and by UUID
    for device in ("1", sim.uuids[1]):
        view = info(lines([client, "info"], sim.env(libs, memory="2GiB", device=device))[0])
        assert view["count"] == 1 and view["uuid"] == sim.uuids[1] and view["total"] == 2 * GIB


def test_fraction_of_the_card(libs, client, sim):
    view = info(lines([client, "info"], sim.env(libs, fraction="0.25"))[0])
    assert view["total"] == 4 * GIB and view["devtotal"] == 4 * GIB


def test_invalid_env_fails_closed_with_one_line(libs, client, sim):
    out = run([client, "alloc", "mem", str(MIB)], sim.env(libs, memory="lots"))
    assert out.stdout.splitlines() == ["oom"]
    assert "invalid FLEXAI_MEMORY" in out.stderr and out.stderr.count("\n") == 1


def test_eight_processes_racing_never_pass_the_limit(libs, client, sim, procs, tmp_path):
    counter = tmp_path / "counter"
    counter.write_bytes(b"\0" * 4096)
    env = sim.env(libs, memory="1GiB", region=str(tmp_path / "region"))
    racers = [procs.start([client, "race", str(300 * MIB), "200", str(counter)], env) for _ in range(8)]
    results = []
    for p in racers:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        results.append(dict(kv.split("=") for kv in out.split()))
    held_max = int.from_bytes(counter.read_bytes()[8:16], "little", signed=True)
    assert 0 < held_max <= GIB, f"{held_max} bytes were held at once on a 1 GiB slice"
    assert sum(int(r["granted"]) for r in results) > 0
    assert sum(int(r["refused"]) for r in results) > 0  # they did compete
    from flexai_hook.devices import region

    view = region.read_region(tmp_path / "region")
    assert view.memory_used == 0 and view.memory_peak <= GIB


def test_kill_9_gives_the_memory_back(libs, client, sim, procs, tmp_path):
    env = sim.env(libs, memory="1GiB", region=str(tmp_path / "region"))
    holders = [procs.hold([client, "alloc", "mem", str(400 * MIB), "hold"], env) for _ in range(2)]
    assert all(h.output[0] == "ok 0" for h in holders)
    from flexai_hook.devices import region

    view = region.read_region(tmp_path / "region")
    assert view.processes == 2 and view.memory_used == 800 * MIB
    assert sorted(view.to_json()["pids"]) == sorted(h.pid for h in holders)
    assert lines([client, "alloc", "mem", str(400 * MIB)], env) == ["oom"]
    for h in holders:
        procs.kill(h)  # SIGKILL: no exit handler runs
    assert region.read_region(tmp_path / "region").to_json()["memory_used"] == 0
    assert lines([client, "alloc", "mem", str(900 * MIB), "info"], env)[0] == "ok 0"


def test_program_tree_shares_one_budget(libs, client, sim):
    """FLEXAI_MEMORY=... LD_PRELOAD=$(flexai library-path): a shell and its children."""
    path = subprocess.run([os.path.join(os.path.dirname(PYTHON), "flexai"), "library-path"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert path == str(libs["flexai"])
    env = sim.env(libs, preload=False, memory="1GiB")
    env["LD_PRELOAD"] = path
    script = f"""
        {client} alloc mem {700 * MIB} hold > "$DIR/first" &
        holder=$!
        while ! grep -q held "$DIR/first" 2>/dev/null; do sleep 0.05; done
        {client} alloc mem {700 * MIB} info
        kill -9 $holder; wait $holder 2>/dev/null
        {client} alloc mem {700 * MIB}
    """
    env["DIR"] = str(sim.path)
    out = lines(["bash", "-c", textwrap.dedent(script)], env)
    assert out[0] == "oom" and info(out[1])["total"] == GIB and out[2] == "ok 0"


CUDA_BINDINGS = textwrap.dedent("""
    import json, sys
    from cuda.bindings import driver as d
    OK = d.CUresult.CUDA_SUCCESS
    def call(r):
        assert r[0] == OK, r[0]
        return r[1:] if len(r) > 2 else (r[1] if len(r) == 2 else None)
    call(d.cuInit(0))
    count = call(d.cuDeviceGetCount())
    dev = call(d.cuDeviceGet(0))
    ctx = call(d.cuDevicePrimaryCtxRetain(dev))
    call(d.cuCtxSetCurrent(ctx))
    free, total = call(d.cuMemGetInfo())
    devtotal = call(d.cuDeviceTotalMem(dev))
    chunk = int(sys.argv[1])
    granted, last = [], None
    while True:
        r = d.cuMemAlloc(chunk)
        if r[0] != OK:
            last = r[0].name
            break
        granted.append(r[1])
    r = d.cuMemAllocAsync(chunk, d.CUstream(0))
    over_async = r[0].name
    for p in granted:
        call(d.cuMemFree(p))
    after = call(d.cuMemAllocAsync(chunk, d.CUstream(0)))
    call(d.cuMemFreeAsync(after, d.CUstream(0)))
    print(json.dumps({"count": count, "total": total, "free": free, "devtotal": devtotal,
                      "granted": len(granted), "error": last, "async_over": over_async}))
""")


def test_cuda_bindings_client(libs, sim, tmp_path):
    script = tmp_path / "cb.py"
    script.write_text(CUDA_BINDINGS)
    out = lines([PYTHON, str(script), str(GIB)], sim.env(libs, memory="4GiB"))
    result = json.loads(out[-1])
    assert result["count"] == 1 and result["total"] == 4 * GIB and result["devtotal"] == 4 * GIB
    assert result["granted"] == 4 and result["error"] == "CUDA_ERROR_OUT_OF_MEMORY"
    assert result["async_over"] == "CUDA_ERROR_OUT_OF_MEMORY"
    unlimited = json.loads(lines([PYTHON, str(script), str(4 * GIB)], sim.env(libs, preload=False))[-1])
    # the whole 16 GiB card (contexts cost nothing on the fixture's cards)
    assert unlimited["count"] == 2 and unlimited["total"] == 16 * GIB and unlimited["granted"] == 4


PYNVML = textwrap.dedent("""
    import json, sys, pynvml as n
    n.nvmlInit()
    count = n.nvmlDeviceGetCount()
    h = n.nvmlDeviceGetHandleByIndex(0)
    uuid = n.nvmlDeviceGetUUID(h)
    m = n.nvmlDeviceGetMemoryInfo(h)
    m2 = n.nvmlDeviceGetMemoryInfo(h, version=n.nvmlMemory_v2)
    procs = [(p.pid, p.usedGpuMemory) for p in n.nvmlDeviceGetComputeRunningProcesses(h)]
    try:
        n.nvmlDeviceGetHandleByIndex(1)
        other = "visible"
    except n.NVMLError as e:
        other = str(e)
    try:
        n.nvmlDeviceGetHandleByUUID(sys.argv[1])
        other_uuid = "visible"
    except n.NVMLError as e:
        other_uuid = str(e)
    print(json.dumps({"count": count, "uuid": uuid if isinstance(uuid, str) else uuid.decode(),
                      "total": m.total, "used": m.used, "free": m.free, "total2": m2.total,
                      "used2": m2.used, "procs": procs, "other": other, "other_uuid": other_uuid}))
""")


def test_pynvml_view(libs, client, sim, procs, tmp_path):
    env = sim.env(libs, memory="2GiB", region=str(tmp_path / "region"))
    holder = procs.hold([client, "alloc", "mem", str(512 * MIB), "hold"], env)
    script = tmp_path / "nv.py"
    script.write_text(PYNVML)
    result = json.loads(lines([PYTHON, str(script), sim.uuids[1]], env)[-1])
    assert result["count"] == 1 and result["uuid"] == sim.uuids[0]
    assert result["total"] == result["total2"] == 2 * GIB
    assert result["used"] == result["used2"] == 512 * MIB
    assert result["free"] == 2 * GIB - 512 * MIB
    assert result["procs"] == [[holder.pid, 512 * MIB]]
    assert result["other"] != "visible" and result["other_uuid"] != "visible"
    # without the library, NVML shows the simulator's whole cards
    plain = json.loads(lines([PYTHON, str(script), sim.uuids[1]], sim.env(libs, preload=False))[-1])
    assert plain["count"] == 2 and plain["total"] == 16 * GIB


def test_launches_are_counted_in_the_region(libs, client, sim, tmp_path):
    env = sim.env(libs, memory="1GiB", region=str(tmp_path / "region"))
    assert lines([client, "launch", "25"], env) == ["ok 25"]
    assert lines([client, "launch", "5"], env) == ["ok 5"]
    from flexai_hook.devices import region

    assert region.read_region(tmp_path / "region").to_json()["launches"] == 30
