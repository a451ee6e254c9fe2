"""libflexai keeps VMM and IPC memory to the slice (issue 15, paths 1 and 5).

Clients are NVIDIA's cuda-bindings, called as the frameworks call the driver: the ggml-cuda
VMM pool (reserve a range, cuMemCreate -> cuMemMap -> cuMemSetAccess -> cuMemRelease at once,
keep growing), NCCL's cuMemRetainAllocationHandle + cuMemRelease of a buffer PyTorch's
expandable segments still own, and imports across processes (cuIpcOpenMemHandle,
cuMemImportFromShareableHandle) within one slice and across two.
"""

from __future__ import annotations

import json
import subprocess
import textwrap

from libflexai_support import GIB, MIB, PYTHON, Sim, libs, procs, sim  # noqa: F401

PRELUDE = textwrap.dedent("""\
    import ctypes, json, os, sys, time
    from cuda.bindings import driver as d
    OK = d.CUresult.CUDA_SUCCESS
    def ok(r):
        if r[0] != OK:
            raise SystemExit(f"cuda error {r[0]!r}")
        return r[1] if len(r) == 2 else (None if len(r) == 1 else r[1:])
    ok(d.cuInit(0))
    ok(d.cuCtxSetCurrent(ok(d.cuDevicePrimaryCtxRetain(ok(d.cuDeviceGet(0))))))
    def prop(fd=False):
        p = d.CUmemAllocationProp()
        p.type = d.CUmemAllocationType.CU_MEM_ALLOCATION_TYPE_PINNED
        p.location.type = d.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
        p.location.id = 0
        if fd:
            p.requestedHandleTypes = d.CUmemAllocationHandleType.CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR
        return p
    def access(va, size):
        a = d.CUmemAccessDesc(); a.location.type = d.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
        a.location.id = 0; a.flags = d.CUmemAccess_flags.CU_MEM_ACCESS_FLAGS_PROT_READWRITE
        ok(d.cuMemSetAccess(va, size, [a], 1))
    def used():
        free, total = ok(d.cuMemGetInfo())
        return total - free
    def try_alloc(size):
        r = d.cuMemAlloc(size)
        if r[0] != OK:
            return r[0].name
        ok(d.cuMemFree(r[1]))
        return "ok"
""")


def script(tmp_path, name, body) -> str:
    path = tmp_path / f"{name}.py"
    path.write_text(PRELUDE + textwrap.dedent(body))
    return str(path)


def run_json(cmd, env) -> dict:
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def slice_env(libs, sim, tmp_path, name="a", memory="1GiB"):
    return sim.env(libs, memory=memory, region=str(tmp_path / f"region-{name}"), context_memory="0")


GGML = """
    # ggml-cuda's pool: one big reserved range, grown by mapping chunks whose handles are
    # released at once (the mapping keeps the memory).
    chunk = 64 << 20
    limit = int(sys.argv[1])
    va = ok(d.cuMemAddressReserve(limit, 0, 0, 0))
    mapped, error = 0, None
    while mapped < limit:
        r = d.cuMemCreate(chunk, prop(), 0)
        if r[0] != OK:
            error = r[0].name
            break
        h = r[1]
        ok(d.cuMemMap(int(va) + mapped, chunk, 0, h, 0)); access(int(va) + mapped, chunk)
        ok(d.cuMemRelease(h))
        mapped += chunk
    free_then = ok(d.cuMemGetInfo())[0]
    ok(d.cuMemUnmap(va, mapped))
    after = try_alloc(512 << 20)
    print(json.dumps({"mapped": mapped, "error": error, "free": free_then, "after": after}))
"""


def test_ggml_vmm_pool_is_refused_at_the_slice(libs, sim, tmp_path):
    out = run_json([PYTHON, script(tmp_path, "ggml", GGML), str(8 * GIB)],
                   slice_env(libs, sim, tmp_path))
    assert out["mapped"] == GIB and out["error"] == "CUDA_ERROR_OUT_OF_MEMORY"
    assert out["free"] == 0
    assert out["after"] == "ok"  # the last unmap gave the pool back


NCCL = """
    # PyTorch's expandable segment: a mapped handle it keeps; NCCL registers the buffer:
    # cuMemRetainAllocationHandle (same handle, one more reference) and cuMemRelease.
    seg = 768 << 20
    va = ok(d.cuMemAddressReserve(seg, 0, 0, 0))
    h = ok(d.cuMemCreate(seg, prop(), 0))
    ok(d.cuMemMap(va, seg, 0, h, 0)); access(va, seg)
    r = ok(d.cuMemRetainAllocationHandle(int(va)))
    ok(d.cuMemRelease(r))
    while_owned = try_alloc(512 << 20)
    ok(d.cuMemUnmap(va, seg)); ok(d.cuMemRelease(h))   # PyTorch gives the segment back
    after = try_alloc(512 << 20)
    print(json.dumps({"same": int(r) == int(h), "while_owned": while_owned, "after": after}))
"""


def test_nccl_retain_release_does_not_uncharge_pytorchs_segment(libs, sim, tmp_path):
    out = run_json([PYTHON, script(tmp_path, "nccl", NCCL)], slice_env(libs, sim, tmp_path))
    assert out == {"same": True, "while_owned": "CUDA_ERROR_OUT_OF_MEMORY", "after": "ok"}


EXPORTER = """
    size = int(sys.argv[1])
    p = ok(d.cuMemAlloc(size))
    h = ok(d.cuIpcGetMemHandle(p))
    vh = ok(d.cuMemCreate(size, prop(fd=True), 0))
    fd = ok(d.cuMemExportToShareableHandle(vh, d.CUmemAllocationHandleType.CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0))
    print("ready", os.getpid(), int(fd), ctypes.string_at(h.getPtr(), 64).hex(), flush=True)
    time.sleep(120)
"""

IMPORTER = """
    pid, fd, hexh, size = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    out = {"before": used()}
    h = d.CUipcMemHandle(); ctypes.memmove(h.getPtr(), bytes.fromhex(hexh), 64)
    r = d.cuIpcOpenMemHandle(h, 1)
    out["ipc_open"] = r[0].name
    if r[0] == OK:
        out["ipc_used"] = used()
        out["ipc_alloc"] = try_alloc(size)
        ok(d.cuIpcCloseMemHandle(r[1]))
    out["ipc_closed"] = used()
    vh = ok(d.cuMemImportFromShareableHandle(os.open(f"/proc/{pid}/fd/{fd}", os.O_RDWR),
            d.CUmemAllocationHandleType.CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR))
    va = ok(d.cuMemAddressReserve(size, 0, 0, 0))
    r = d.cuMemMap(va, size, 0, vh, 0)
    out["vmm_map"] = r[0].name
    if r[0] == OK:
        access(va, size)
        ok(d.cuMemRelease(vh))                 # mapped: still held, still charged
        out["vmm_used"] = used()
        out["vmm_alloc"] = try_alloc(size)
        ok(d.cuMemUnmap(va, size))
    else:
        ok(d.cuMemRelease(vh))
    out["vmm_closed"] = used()
    print(json.dumps(out))
"""


def _import(libs, sim, tmp_path, procs, exporter_env, importer_env, size):
    exp = procs.start([PYTHON, script(tmp_path, "exporter", EXPORTER), str(size)], exporter_env)
    line = exp.stdout.readline().split()
    assert line and line[0] == "ready", exp.stderr.read() if exp.poll() is not None else line
    _, pid, fd, hexh = line
    return run_json([PYTHON, script(tmp_path, "importer", IMPORTER), pid, fd, hexh, str(size)],
                    importer_env)


def test_ipc_import_across_two_slices_is_paid_by_the_importer(libs, sim, tmp_path, procs):
    size = 600 * MIB
    out = _import(libs, sim, tmp_path, procs, slice_env(libs, sim, tmp_path, "a", "2GiB"),
                  slice_env(libs, sim, tmp_path, "b"), size)
    assert out["before"] == 0
    assert out["ipc_open"] == "CUDA_SUCCESS" and out["ipc_used"] == size
    assert out["ipc_alloc"] == "CUDA_ERROR_OUT_OF_MEMORY" and out["ipc_closed"] == 0
    assert out["vmm_map"] == "CUDA_SUCCESS" and out["vmm_used"] == size
    assert out["vmm_alloc"] == "CUDA_ERROR_OUT_OF_MEMORY" and out["vmm_closed"] == 0


def test_ipc_import_within_one_slice_is_paid_again(libs, sim, tmp_path, procs):
    """One slice: the exporter's 2 x 300 MiB and the import's 300 MiB are all counted."""
    size = 300 * MIB
    env = slice_env(libs, sim, tmp_path, "a")
    out = _import(libs, sim, tmp_path, procs, env, env, size)
    assert out["before"] == 2 * size
    assert out["ipc_open"] == "CUDA_SUCCESS" and out["ipc_used"] == 3 * size
    assert out["ipc_alloc"] == "CUDA_ERROR_OUT_OF_MEMORY" and out["ipc_closed"] == 2 * size
    assert out["vmm_map"] == "CUDA_SUCCESS" and out["vmm_used"] == 3 * size
    assert out["vmm_alloc"] == "CUDA_ERROR_OUT_OF_MEMORY" and out["vmm_closed"] == 2 * size
