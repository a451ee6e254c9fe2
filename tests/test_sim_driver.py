"""The simulated libcuda.so.1, driven by NVIDIA's cuda-bindings and by C clients.

Cards: 0 has 16 GiB, 1 has 8 GiB; every context costs 300 MiB (the default). Timing checks
compare simulated durations (events) or lower bounds that blocking guarantees; none asserts
how fast this machine is.
"""

from __future__ import annotations

import json
import os
import signal
import textwrap
import subprocess
import time
from pathlib import Path

import pytest

from flexai_hook.devices import inventory as devices
from flexai_hook.devices.simcards import (SimCard, SimConfigError, parse_config, read_sim_dir,
                                  render_config, sim_library_dir, write_sim_dir)
from sim_support import (CARDS, CONTEXT_BYTES, GiB, MiB, REPO, SIM_INCLUDE, Clients,  # noqa: F401
                         clients, compile_client, sim_dir, sim_environ, sim_libs)

CUDA_H = Path("/usr/local/cuda/include/cuda.h")


def ok_json(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, f"client failed ({result.returncode}): {result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ simcards.py


def test_cards_conf_round_trip_from_daemon_cards(tmp_path):
    cards = devices.simulated_cards([
        {"name": "flexai simulated 16GB", "memory": "16GiB"},
        {"name": "small one", "memory": "8GiB", "uuid": "GPU-11111111-2222-3333-4444-555555555555"},
    ])
    write_sim_dir(tmp_path / "s", cards, {"sm_count": 108, "context_bytes": 0})
    parsed, settings = read_sim_dir(tmp_path / "s")
    assert [(c.index, c.uuid, c.memory, c.name) for c in parsed] == [
        (0, cards[0].uuid, 16 * GiB, "flexai simulated 16GB"),
        (1, "GPU-11111111-2222-3333-4444-555555555555", 8 * GiB, "small one"),
    ]
    assert settings == {"sm_count": "108", "context_bytes": "0"}


@pytest.mark.parametrize("cards, tunables, message", [
    ([], None, "no card"),
    ([SimCard(1, "GPU-x", 1, "a")], None, "without gaps"),
    ([SimCard(0, "GPU x", 1, "a")], None, "one word"),
    ([SimCard(0, "GPU-x", 0, "a")], None, "positive"),
    ([SimCard(0, "GPU-x", 1, "a")], {"warp_speed": 9}, "unknown simulator setting"),
])
def test_render_config_rejects(cards, tunables, message):
    with pytest.raises(SimConfigError, match=message):
        render_config(cards, tunables)


def test_parse_config_rejects_duplicates_and_junk():
    with pytest.raises(SimConfigError, match="given twice"):
        parse_config("card 0 GPU-a 10 x\ncard 0 GPU-b 10 y\n")
    with pytest.raises(SimConfigError, match="unknown keyword"):
        parse_config("cards 0 GPU-a 10 x\n")


def test_sim_library_dir_is_in_the_package():
    assert sim_library_dir() == Path(devices.__file__).resolve().parents[1] / "lib" / "sim"


# ------------------------------------------------------------------ cuda.h conformance


@pytest.mark.skipif(not CUDA_H.exists(), reason="NVIDIA's cuda.h is not installed here "
                    "(/usr/local/cuda/include); signatures cannot be compared")
@pytest.mark.parametrize("internal", [False, True])
def test_entry_points_have_cuda_h_signatures(internal, tmp_path):
    extra = ["-fsyntax-only", f"-I{CUDA_H.parent}"] + (["-DSIM_CHECK_INTERNAL"] if internal else [])
    import shutil
    gcc = shutil.which("gcc")
    if not gcc:
        pytest.skip("no gcc")
    cmd = [gcc, "-std=gnu11", "-Wall", "-Werror", *extra, f"-I{SIM_INCLUDE}",
           str(REPO / "tests" / "clients" / "sim_signatures.c")]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(not CUDA_H.exists(), reason="NVIDIA's cuda.h is not installed here "
                    "(/usr/local/cuda/include); layouts cannot be compared")
def test_struct_layouts_and_constants_match_cuda_h(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    mine = tmp_path / "mine"
    mine.mkdir()
    a = compile_client("sim_layout.c", real, "-DSIM_REAL_CUDA_H", f"-I{CUDA_H.parent}")
    b = compile_client("sim_layout.c", mine)
    out_a = subprocess.run([a], capture_output=True, text=True, check=True).stdout
    out_b = subprocess.run([b], capture_output=True, text=True, check=True).stdout
    assert out_a.count("\n") > 40
    assert out_b == out_a


# ------------------------------------------------------------------ devices and contexts


def test_cuda_bindings_enumerates_cards(clients):
    data = ok_json(clients.run_python("""
        import json
        ok(d.cuInit(0))
        out = {"version": ok(d.cuDriverGetVersion()), "cards": []}
        for i in range(ok(d.cuDeviceGetCount())):
            dev = ok(d.cuDeviceGet(i))
            out["cards"].append({
                "name": ok(d.cuDeviceGetName(96, dev)).split(b"\\0")[0].decode(),
                "uuid": bytes(ok(d.cuDeviceGetUuid(dev)).bytes).hex(),
                "total": ok(d.cuDeviceTotalMem(dev)),
                "sms": ok(d.cuDeviceGetAttribute(
                    d.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev)),
                "cc": [ok(d.cuDeviceGetAttribute(
                    d.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev)),
                       ok(d.cuDeviceGetAttribute(
                    d.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev))],
                "bus": ok(d.cuDeviceGetPCIBusId(32, dev)).split(b"\\0")[0].decode(),
            })
        out["bad"] = int(d.cuDeviceGet(2)[0])
        print(json.dumps(out))
    """))
    assert data["version"] == 13000
    assert [c["name"] for c in data["cards"]] == [c.name for c in CARDS]
    assert [c["uuid"] for c in data["cards"]] == [c.uuid[4:].replace("-", "") for c in CARDS]
    assert [c["total"] for c in data["cards"]] == [16 * GiB, 8 * GiB]
    assert data["cards"][0]["sms"] == 132 and data["cards"][0]["cc"] == [9, 0]
    assert data["cards"][0]["bus"] != data["cards"][1]["bus"]
    assert data["bad"] == 101  # CUDA_ERROR_INVALID_DEVICE


def test_contexts_cost_memory_until_destroyed(clients):
    data = ok_json(clients.run_python("""
        import json
        ok(d.cuInit(0))
        def free(dev):
            c = ok(d.cuDevicePrimaryCtxRetain(dev)); ok(d.cuCtxPushCurrent(c))
            f, t = ok(d.cuMemGetInfo()); ok(d.cuCtxPopCurrent()); ok(d.cuDevicePrimaryCtxRelease(dev))
            return f
        out = {"idle": free(1)}
        c1 = ok(d.cuCtxCreate(None, 0, 1))
        out["one"] = ok(d.cuMemGetInfo())[0]
        c2 = ok(d.cuCtxCreate(None, 0, 1))
        out["two"] = ok(d.cuMemGetInfo())[0]
        ok(d.cuCtxDestroy(c2))
        out["after_destroy"] = ok(d.cuMemGetInfo())[0]
        out["stale"] = int(d.cuCtxPushCurrent(c2)[0])
        ok(d.cuCtxDestroy(c1))
        out["current_after"] = int(d.cuMemGetInfo()[0])
        out["flags"] = [int(x) for x in ok(d.cuDevicePrimaryCtxGetState(0))]
        pc = ok(d.cuDevicePrimaryCtxRetain(0)); ok(d.cuCtxSetCurrent(pc))
        ok(d.cuMemAlloc(3 << 30))
        out["primary_used"] = 16 * 2**30 - ok(d.cuMemGetInfo())[0]
        out["primary_active"] = int(ok(d.cuDevicePrimaryCtxGetState(0))[1])
        ok(d.cuDevicePrimaryCtxReset(0))
        out["after_reset"] = [int(ok(d.cuDevicePrimaryCtxGetState(0))[1]), int(d.cuMemGetInfo()[0])]
        pc = ok(d.cuDevicePrimaryCtxRetain(0)); ok(d.cuCtxSetCurrent(pc))
        out["reset_freed"] = 16 * 2**30 - ok(d.cuMemGetInfo())[0]
        print(json.dumps(out))
    """))
    # free() measures with the primary context itself alive: one context's worth is in use
    assert data["idle"] == 8 * GiB - CONTEXT_BYTES
    assert data["one"] == 8 * GiB - CONTEXT_BYTES
    assert data["two"] == 8 * GiB - 2 * CONTEXT_BYTES
    assert data["after_destroy"] == 8 * GiB - CONTEXT_BYTES
    assert data["stale"] == 201  # CUDA_ERROR_INVALID_CONTEXT
    assert data["current_after"] == 201
    assert data["flags"] == [0, 0]
    assert data["primary_used"] == CONTEXT_BYTES + 3 * GiB and data["primary_active"] == 1
    assert data["after_reset"] == [0, 709]  # inactive; CUDA_ERROR_CONTEXT_IS_DESTROYED
    assert data["reset_freed"] == CONTEXT_BYTES


def test_every_allocation_api_charges_and_frees(clients):
    data = ok_json(clients.run_python("""
        import json
        primary(1)
        used = lambda: 8 * 2**30 - ok(d.cuMemGetInfo())[0]
        base = used(); out = {}
        def delta(name, fn):
            before = used(); handle = fn(); out[name] = used() - before; return handle
        p = delta("alloc", lambda: ok(d.cuMemAlloc(100 << 20)))
        ok(d.cuMemcpyHtoD(p, b"hello simulated gpu", 19))
        buf = bytearray(19); ok(d.cuMemcpyDtoH(buf, p, 19)); out["roundtrip"] = buf.decode()
        q = ok(d.cuMemAlloc(1 << 20)); ok(d.cuMemcpyDtoD(q, p, 19)); ok(d.cuMemsetD8(q, 0x41, 5))
        buf = bytearray(19); ok(d.cuMemcpyDtoH(buf, q, 19)); out["dtod"] = buf.decode()
        ok(d.cuMemFree(q))
        pitch_ptr, pitch = delta("pitch", lambda: ok(d.cuMemAllocPitch(1000, 1024, 4)))
        out["pitch"] = pitch
        m = delta("managed", lambda: ok(d.cuMemAllocManaged(
            64 << 20, d.CUmemAttach_flags.CU_MEM_ATTACH_GLOBAL)))
        h = delta("host", lambda: ok(d.cuMemAllocHost(64 << 20)))
        s = ok(d.cuStreamCreate(0))
        a = delta("async", lambda: ok(d.cuMemAllocAsync(32 << 20, s)))
        props = d.CUmemPoolProps()
        props.allocType = d.CUmemAllocationType.CU_MEM_ALLOCATION_TYPE_PINNED
        props.location.type = d.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
        props.location.id = 1
        pool = ok(d.cuMemPoolCreate(props))
        pa = delta("pool", lambda: ok(d.cuMemAllocFromPoolAsync(16 << 20, pool, s)))
        prop = d.CUmemAllocationProp()
        prop.type = d.CUmemAllocationType.CU_MEM_ALLOCATION_TYPE_PINNED
        prop.location.type = d.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
        prop.location.id = 1
        gran = ok(d.cuMemGetAllocationGranularity(
            prop, d.CUmemAllocationGranularity_flags.CU_MEM_ALLOC_GRANULARITY_MINIMUM))
        out["gran"] = gran
        vh = delta("vmm_device", lambda: ok(d.cuMemCreate(8 * gran, prop, 0)))
        hprop = d.CUmemAllocationProp()
        hprop.type = d.CUmemAllocationType.CU_MEM_ALLOCATION_TYPE_PINNED
        hprop.location.type = d.CUmemLocationType.CU_MEM_LOCATION_TYPE_HOST
        hh = delta("vmm_host", lambda: ok(d.cuMemCreate(8 * gran, hprop, 0)))
        va = ok(d.cuMemAddressReserve(8 * gran, 0, 0, 0))
        ok(d.cuMemMap(va, 8 * gran, 0, vh, 0))
        acc = d.CUmemAccessDesc(); acc.location.type = d.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
        acc.location.id = 1; acc.flags = d.CUmemAccess_flags.CU_MEM_ACCESS_FLAGS_PROT_READWRITE
        ok(d.cuMemSetAccess(va, 8 * gran, [acc], 1))
        ok(d.cuMemsetD32(va, 7, 4)); buf = bytearray(4); ok(d.cuMemcpyDtoH(buf, int(va) + 12, 4))
        out["vmm_data"] = int.from_bytes(buf, "little")
        desc = d.CUDA_ARRAY_DESCRIPTOR(); desc.Width = 1024; desc.Height = 1024
        desc.Format = d.CUarray_format.CU_AD_FORMAT_FLOAT; desc.NumChannels = 4
        arr = delta("array", lambda: ok(d.cuArrayCreate(desc)))
        desc3 = d.CUDA_ARRAY3D_DESCRIPTOR(); desc3.Width = 256; desc3.Height = 256; desc3.Depth = 16
        desc3.Format = d.CUarray_format.CU_AD_FORMAT_UNSIGNED_INT16; desc3.NumChannels = 2
        arr3 = delta("array3d", lambda: ok(d.cuArray3DCreate(desc3)))
        mdesc = d.CUDA_ARRAY3D_DESCRIPTOR(); mdesc.Width = 512; mdesc.Height = 512
        mdesc.Format = d.CUarray_format.CU_AD_FORMAT_UNSIGNED_INT8; mdesc.NumChannels = 1
        mip = delta("mipmap", lambda: ok(d.cuMipmappedArrayCreate(mdesc, 3)))
        ok(d.cuMemFree(p)); ok(d.cuMemFree(pitch_ptr)); ok(d.cuMemFree(m)); ok(d.cuMemFreeHost(h))
        ok(d.cuMemFreeAsync(a, s)); ok(d.cuMemFreeAsync(pa, s)); ok(d.cuStreamSynchronize(s))
        ok(d.cuMemUnmap(va, 8 * gran)); ok(d.cuMemAddressFree(va, 8 * gran))
        ok(d.cuMemRelease(vh)); ok(d.cuMemRelease(hh))
        ok(d.cuArrayDestroy(arr)); ok(d.cuArrayDestroy(arr3)); ok(d.cuMipmappedArrayDestroy(mip))
        ok(d.cuMemPoolDestroy(pool))
        out["leftover"] = used() - base
        out["double_free"] = int(d.cuMemFree(p)[0])
        out["zero"] = int(d.cuMemAlloc(0)[0])
        print(json.dumps(out))
    """))
    assert data["roundtrip"] == "hello simulated gpu"
    assert data["dtod"] == "AAAAA simulated gpu"
    assert data["alloc"] == 100 * MiB
    assert data["pitch"] == 1024 and data["pitch"] * 1024 == 1 * MiB
    assert data["managed"] == 64 * MiB
    assert data["host"] == 0                      # pinned host memory is not the card's
    assert data["async"] == 32 * MiB
    assert data["pool"] == 16 * MiB
    assert data["gran"] == 2 * MiB
    assert data["vmm_device"] == 16 * MiB
    assert data["vmm_host"] == 0                  # host location: not charged to the card
    assert data["vmm_data"] == 7
    assert data["array"] == 1024 * 1024 * 4 * 4
    assert data["array3d"] == 256 * 256 * 16 * 2 * 2
    assert data["mipmap"] == 512 * 512 + 256 * 256 + 128 * 128
    assert data["leftover"] == 0
    assert data["double_free"] == 1 and data["zero"] == 1  # CUDA_ERROR_INVALID_VALUE


def test_out_of_memory_past_the_card(clients):
    data = ok_json(clients.run_python("""
        import json
        primary(1)
        free = ok(d.cuMemGetInfo())[0]
        out = {"free": free, "too_big": int(d.cuMemAlloc(free + 1)[0])}
        p = ok(d.cuMemAlloc(free))
        out["full"] = ok(d.cuMemGetInfo())[0]
        out["one_more"] = int(d.cuMemAlloc(512)[0])
        out["managed"] = int(d.cuMemAllocManaged(4096, 1)[0])
        s = ok(d.cuStreamCreate(0))
        out["async"] = int(d.cuMemAllocAsync(4096, s)[0])
        out["ctx"] = int(d.cuCtxCreate(None, 0, 1)[0])
        ok(d.cuMemFree(p))
        out["after"] = int(d.cuMemAlloc(4096)[0])
        print(json.dumps(out))
    """))
    assert data["free"] == 8 * GiB - CONTEXT_BYTES
    assert data["too_big"] == 2  # CUDA_ERROR_OUT_OF_MEMORY
    assert data["full"] == 0
    assert data["one_more"] == data["managed"] == data["async"] == data["ctx"] == 2
    assert data["after"] == 0


HOLDER = """
    primary(int(sys.argv[1]))
    p = ok(d.cuMemAlloc(int(sys.argv[2])))
    say("holding", ok(d.cuMemGetInfo())[0])
    if sys.argv[3] == "sleep":
        time.sleep(600)
"""

TRY_ALLOC = """
    import json
    primary(int(sys.argv[1]))
    r = d.cuMemAlloc(int(sys.argv[2]))
    print(json.dumps({"rc": int(r[0]), "free": ok(d.cuMemGetInfo())[0]}))
"""


def test_two_processes_share_one_card_budget(clients):
    holder = clients.python(HOLDER, 1, 6 * GiB, "sleep")
    line = clients.wait_line(holder, "holding")
    assert int(line.split()[1]) == 8 * GiB - CONTEXT_BYTES - 6 * GiB
    # the second process has its own context: 8 GiB - 2 contexts - 6 GiB is left
    left = 8 * GiB - 2 * CONTEXT_BYTES - 6 * GiB
    too_much = ok_json(clients.run_python(TRY_ALLOC, 1, left + 2 * MiB))
    assert too_much["rc"] == 2 and too_much["free"] == left
    fits = ok_json(clients.run_python(TRY_ALLOC, 1, left))
    assert fits["rc"] == 0 and fits["free"] == 0
    # the other card is untouched by either
    other = ok_json(clients.run_python(TRY_ALLOC, 0, 15 * GiB))
    assert other["rc"] == 0


def test_concurrent_reservations_never_overcommit(clients):
    # Six processes race for 2 GiB each on the 8 GiB card (after their contexts): at most
    # floor((8 GiB - 6 contexts) / 2 GiB) = 3 may win, whatever the interleaving.
    go = clients.workdir / "go"
    procs = [clients.python("""
        primary(1)
        say("ready")
        while not os.path.exists(sys.argv[1]): pass
        r = d.cuMemAlloc(2 << 30)
        say("rc", int(r[0]))
        time.sleep(600)
    """, go) for _ in range(6)]
    for p in procs:
        clients.wait_line(p, "ready", timeout=60)
    go.write_text("go")
    codes = [int(clients.wait_line(p, "rc", timeout=60).split()[1]) for p in procs]
    assert sorted(set(codes)) <= [0, 2]
    assert codes.count(0) == 3, codes


def test_killed_holder_returns_its_memory(clients):
    holder = clients.python(HOLDER, 0, 12 * GiB, "sleep")
    clients.wait_line(holder, "holding")
    blocked = ok_json(clients.run_python(TRY_ALLOC, 0, 12 * GiB))
    assert blocked["rc"] == 2
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    after = ok_json(clients.run_python(TRY_ALLOC, 0, 12 * GiB))
    assert after["rc"] == 0
    assert after["free"] == 16 * GiB - CONTEXT_BYTES - 12 * GiB


def test_exit_without_freeing_returns_memory(clients):
    holder = clients.run_python(HOLDER, 1, 7 * GiB, "exit")
    assert holder.returncode == 0, holder.stderr
    after = ok_json(clients.run_python(TRY_ALLOC, 1, 7 * GiB))
    assert after["rc"] == 0


def test_missing_or_bad_sim_dir_gives_clean_errors(clients, tmp_path):
    body = """
        import json
        out = {"before_init": int(d.cuDeviceGetCount()[0]), "init": int(d.cuInit(0)[0]),
               "count": int(d.cuDeviceGetCount()[0]), "again": int(d.cuInit(0)[0]),
               "version": ok(d.cuDriverGetVersion())}
        print(json.dumps(out))
    """
    missing = ok_json(clients.run_python(body, env=clients.env(FLEXAI_SIM_DIR=str(tmp_path / "nope"))))
    assert missing == {"before_init": 3, "init": 100, "count": 3, "again": 100, "version": 13000}
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "cards.conf").write_text("card 0 GPU-x lots of memory\n")
    result = clients.run_python(body, env=clients.env(FLEXAI_SIM_DIR=str(bad)))
    assert ok_json(result)["init"] == 100
    assert "cards.conf is invalid" in result.stderr


# ------------------------------------------------------------------ cuGetProcAddress


def test_cudart_like_client_uses_only_proc_addresses(clients, tmp_path):
    exe = compile_client("sim_cudart_like.c", tmp_path, "-ldl")
    result = clients.run([str(exe)])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "OK"


def test_proc_addresses_bypass_symbol_interposition(clients, sim_libs, tmp_path):
    import shutil
    gcc = shutil.which("gcc")
    if not gcc:
        pytest.skip("no gcc")
    preload = tmp_path / "interpose.so"
    subprocess.run([gcc, "-shared", "-fPIC", f"-I{SIM_INCLUDE}", "-o", str(preload),
                    str(REPO / "tests" / "clients" / "sim_interpose_preload.c")], check=True)
    exe = compile_client("sim_interpose.c", tmp_path, f"-L{sim_libs}", "-l:libcuda.so.1")
    plain = clients.run([str(exe)])
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.strip() == "direct=0 proc=0"
    interposed = clients.run([str(exe)], env=clients.env(LD_PRELOAD=str(preload)))
    assert interposed.returncode == 0, interposed.stderr
    assert interposed.stdout.strip() == "direct=800 proc=0"


def test_cuda_bindings_get_proc_address(clients):
    data = ok_json(clients.run_python("""
        import json
        out = {}
        r = d.cuGetProcAddress(b"cuMemAlloc", 3020, 0)
        out["found"] = [int(r[0]), int(r[2])]
        out["old"] = int(d.cuGetProcAddress(b"cuMemAlloc", 2000, 0)[0])
        out["unknown"] = int(d.cuGetProcAddress(b"cuNoSuchThing", 13000, 0)[0])
        a = d.cuGetProcAddress(b"cuLaunchKernel", 13000, 0)[1]
        b = d.cuGetProcAddress(b"cuLaunchKernel", 13000, 2)[1]
        out["ptsz_differs"] = a != b
        print(json.dumps(out))
    """))
    assert data == {"found": [0, 0], "old": 500, "unknown": 500, "ptsz_differs": True}


# ------------------------------------------------------------------ timeline

TIMED = textwrap.dedent("""
    import json
    primary(0)
    f = spin_function()
    s = ok(d.cuStreamCreate(0))
    e0, e1 = ok(d.cuEventCreate(0)), ok(d.cuEventCreate(0))
    def timed(launches):
        ok(d.cuEventRecord(e0, s))
        launches()
        ok(d.cuEventRecord(e1, s))
        ok(d.cuEventSynchronize(e1))
        return ok(d.cuEventElapsedTime(e0, e1))
""")


def test_events_measure_simulated_kernel_durations(clients):
    data = ok_json(clients.run_python(TIMED + textwrap.dedent("""
        out = {}
        out["one_20ms"] = timed(lambda: spin(f, s, 20_000_000))
        out["grid_8192_50us"] = timed(lambda: spin(f, s, 50_000, blocks=8192))
        out["ten_1ms"] = timed(lambda: [spin(f, s, 1_000_000) for _ in range(10)])
        plain = ok(d.cuKernelGetFunction(ok(d.cuLibraryGetKernel(
            ok(d.cuLibraryLoadData(b"x", None, None, 0, None, None, 0)), b"ordinary"))))
        out["ordinary_264_blocks"] = timed(lambda: ok(d.cuLaunchKernel(
            plain, 264, 1, 1, 256, 1, 1, 0, s, 0, 0)))
        cfg = d.CUlaunchConfig()
        cfg.gridDimX, cfg.gridDimY, cfg.gridDimZ = 264, 1, 1
        cfg.blockDimX, cfg.blockDimY, cfg.blockDimZ = 128, 1, 1
        cfg.hStream = s
        out["ex_2_waves_3ms"] = timed(lambda: ok(d.cuLaunchKernelEx(
            cfg, f, ((3_000_000,), (ctypes.c_uint64,)), 0)))
        out["cooperative_4ms"] = timed(lambda: ok(d.cuLaunchCooperativeKernel(
            f, 1, 1, 1, 64, 1, 1, 0, s, ((4_000_000,), (ctypes.c_uint64,)))))
        out["bad_block"] = int(d.cuLaunchKernel(f, 1, 1, 1, 2048, 1, 1, 0, s,
                                                 ((1,), (ctypes.c_uint64,)), 0)[0])
        ok(d.cuEventRecord(e0, s)); spin(f, s, 200_000_000); ok(d.cuEventRecord(e1, s))
        out["query_running"] = [int(d.cuEventQuery(e1)[0]), int(d.cuStreamQuery(s)[0]),
                                int(d.cuEventElapsedTime(e0, e1)[0])]
        ok(d.cuStreamSynchronize(s))
        out["query_done"] = [int(d.cuEventQuery(e1)[0]), int(d.cuStreamQuery(s)[0])]
        nt = ok(d.cuEventCreate(d.CUevent_flags.CU_EVENT_DISABLE_TIMING))
        ok(d.cuEventRecord(nt, s))
        out["no_timing"] = int(d.cuEventElapsedTime(e0, nt)[0])
        print(json.dumps(out))
    """)))
    assert 20.0 <= data["one_20ms"] < 20.5
    assert 3.15 <= data["grid_8192_50us"] < 3.6        # ceil(8192 / 132) = 63 waves x 50 us
    assert 10.0 <= data["ten_1ms"] < 10.5
    assert 0.02 <= data["ordinary_264_blocks"] < 0.5   # 2 waves x block_ns (10 us)
    assert 6.0 <= data["ex_2_waves_3ms"] < 6.5
    assert 4.0 <= data["cooperative_4ms"] < 4.5
    assert data["bad_block"] == 1                      # CUDA_ERROR_INVALID_VALUE
    assert data["query_running"] == [600, 600, 600]    # CUDA_ERROR_NOT_READY
    assert data["query_done"] == [0, 0]
    assert data["no_timing"] == 400                    # CUDA_ERROR_INVALID_HANDLE


def test_graph_launch_puts_its_kernels_on_the_timeline(clients):
    data = ok_json(clients.run_python(TIMED + textwrap.dedent("""
        ok(d.cuStreamBeginCapture(s, d.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_GLOBAL))
        capturing = int(ok(d.cuStreamIsCapturing(s)))
        for ns in (5_000_000, 10_000_000, 15_000_000):
            spin(f, s, ns)
        g = ok(d.cuStreamEndCapture(s))
        ge = ok(d.cuGraphInstantiate(g, 0))
        once = timed(lambda: ok(d.cuGraphLaunch(ge, s)))
        twice = timed(lambda: [ok(d.cuGraphLaunch(ge, s)) for _ in range(2)])
        ok(d.cuGraphExecDestroy(ge)); ok(d.cuGraphDestroy(g))
        legacy = int(d.cuStreamBeginCapture(0, 0)[0])
        print(json.dumps({"capturing": capturing, "once": once, "twice": twice, "legacy": legacy}))
    """)))
    assert data["capturing"] == 1
    assert 30.0 <= data["once"] < 30.5
    assert 60.0 <= data["twice"] < 60.5
    assert data["legacy"] == 900  # CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED


def test_launch_queue_is_bounded(clients):
    # 30 x 20 ms of work: with at most 50 ms booked ahead, the launch loop itself must take
    # at least 600 - 50 - 20 ms (a lower bound set by blocking, not a speed).
    data = ok_json(clients.run_python(TIMED + textwrap.dedent("""
        t0 = time.monotonic()
        ms = timed(lambda: [spin(f, s, 20_000_000) for _ in range(30)])
        print(json.dumps({"ms": ms, "loop_and_sync": time.monotonic() - t0}))
    """)))
    assert 600.0 <= data["ms"] < 602
    assert data["loop_and_sync"] >= 0.6


SATURATE = TIMED + textwrap.dedent("""
    start, seconds, kernel_ns = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    while time.monotonic() < start:
        time.sleep(0.001)
    ok(d.cuEventRecord(e0, s))
    n = 0
    while time.monotonic() < start + seconds:
        spin(f, s, kernel_ns); n += 1
    ok(d.cuEventRecord(e1, s)); ok(d.cuEventSynchronize(e1))
    elapsed = ok(d.cuEventElapsedTime(e0, e1))
    print(json.dumps({"kernels": n, "ms": elapsed, "share": n * kernel_ns / 1e6 / elapsed}))
""")


def test_two_saturating_processes_each_get_half_the_card(clients):
    start = time.monotonic() + 3.0
    procs = [clients.python(SATURATE, start, 2.0, 5_000_000) for _ in range(2)]
    shares = [ok_json(clients.finish(p, timeout=90))["share"] for p in procs]
    for share in shares:
        assert 0.35 <= share <= 0.65, shares
    assert 0.9 <= sum(shares) <= 1.05, shares
    # a process on the other card is not slowed by them
    alone = ok_json(clients.run_python(SATURATE.replace("primary(0)", "primary(1)"),
                                       time.monotonic(), 0.5, 5_000_000))
    assert alone["share"] >= 0.95


MODULE_BYTES = 2 * MiB  # the module_bytes default
STACK_PER_BYTE = 132 * 2048  # a stack byte for every thread that can be resident (132 SMs)


def test_modules_limits_and_contexts_show_in_nvml_per_process(clients, sim_dir):
    """What a real driver holds beyond the allocations (issue 15, path 4): contexts, loaded
    modules and libraries, stack and heap limits; NVML's per-process used memory shows it."""
    body = """
        import json
        import pynvml as n
        n.nvmlInit()
        h = n.nvmlDeviceGetHandleByIndex(0)
        def mine():
            procs = n.nvmlDeviceGetComputeRunningProcesses(h)
            return [(p.pid, p.usedGpuMemory) for p in procs]
        c = primary(0)
        free0 = ok(d.cuMemGetInfo())[0]
        out = {"pid": os.getpid(), "ctx": mine()}
        mods = [ok(d.cuModuleLoadData(b"image\\0")) for _ in range(3)]
        lib = ok(d.cuLibraryLoadData(b"image\\0", None, None, 0, None, None, 0))
        out["modules"] = free0 - ok(d.cuMemGetInfo())[0]
        for m in mods:
            ok(d.cuModuleUnload(m))
        ok(d.cuLibraryUnload(lib))
        out["unloaded"] = free0 - ok(d.cuMemGetInfo())[0]
        L = d.CUlimit
        out["stack0"] = ok(d.cuCtxGetLimit(L.CU_LIMIT_STACK_SIZE))
        ok(d.cuCtxSetLimit(L.CU_LIMIT_STACK_SIZE, 4096))
        ok(d.cuCtxSetLimit(L.CU_LIMIT_MALLOC_HEAP_SIZE, 64 << 20))
        out["limits"] = [ok(d.cuCtxGetLimit(L.CU_LIMIT_STACK_SIZE)), ok(d.cuCtxGetLimit(L.CU_LIMIT_MALLOC_HEAP_SIZE))]
        out["grown"] = free0 - ok(d.cuMemGetInfo())[0]
        out["grown_nvml"] = mine()
        out["too_big"] = int(d.cuCtxSetLimit(L.CU_LIMIT_MALLOC_HEAP_SIZE, 64 << 30)[0])
        ok(d.cuCtxSetLimit(L.CU_LIMIT_STACK_SIZE, 1024))
        ok(d.cuCtxSetLimit(L.CU_LIMIT_MALLOC_HEAP_SIZE, 8 << 20))
        out["shrunk"] = free0 - ok(d.cuMemGetInfo())[0]
        print(json.dumps(out))
    """
    data = ok_json(clients.run_python(body))
    pid = data["pid"]
    assert data["ctx"] == [[pid, CONTEXT_BYTES]]
    assert data["modules"] == 4 * MODULE_BYTES and data["unloaded"] == 0
    assert data["stack0"] == 1024 and data["limits"] == [4096, 64 * MiB]
    grown = 3072 * STACK_PER_BYTE + 56 * MiB
    assert data["grown"] == grown
    assert data["grown_nvml"] == [[pid, CONTEXT_BYTES + grown]]
    assert data["too_big"] == 2  # CUDA_ERROR_OUT_OF_MEMORY
    assert data["shrunk"] == 0
    # NVML's pids of another pid namespace (what a container sees of the host's)
    write_sim_dir(sim_dir, CARDS, {"nvml_pid_offset": 1000000})
    data = ok_json(clients.run_python(body))
    assert data["ctx"] == [[data["pid"] + 1000000, CONTEXT_BYTES]]
