"""The simulated driver's VMM and IPC lifetimes follow the real driver (issue 15, paths 1, 5).

A cuMemCreate handle's physical memory lives until the handle's every reference is released
AND every mapping of it is unmapped; cuMemRetainAllocationHandle hands out the same handle
with one more reference. IPC imports (cuIpcOpenMemHandle, cuMemImportFromShareableHandle)
map the exporter's pages and add nothing to the card. Driven by NVIDIA's cuda-bindings and
pynvml, as frameworks call them.
"""

from __future__ import annotations

import json
import textwrap

from sim_support import GiB, MiB, Clients, clients, sim_dir, sim_libs  # noqa: F401

HELPERS = """
import json, pynvml
pynvml.nvmlInit()
nv = pynvml.nvmlDeviceGetHandleByIndex(0)
def card_used():
    free, total = ok(d.cuMemGetInfo())
    return total - free
def nvml_used():
    return pynvml.nvmlDeviceGetMemoryInfo(nv).used
def proc_used():
    return sum(p.usedGpuMemory for p in pynvml.nvmlDeviceGetComputeRunningProcesses(nv)
               if p.pid == os.getpid())
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
"""


def run(clients: Clients, body: str, *args) -> dict:
    r = clients.run_python(HELPERS + textwrap.dedent(body), *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_release_while_mapped_keeps_the_memory(clients):
    """ggml-cuda: cuMemCreate -> cuMemMap -> cuMemRelease at once; the pages stay in use."""
    out = run(clients, """
        primary()
        size = 64 << 20
        base = (card_used(), nvml_used(), proc_used())
        va = ok(d.cuMemAddressReserve(size, 0, 0, 0))
        h = ok(d.cuMemCreate(size, prop(), 0))
        ok(d.cuMemMap(va, size, 0, h, 0)); access(va, size)
        ok(d.cuMemRelease(h))
        held = (card_used(), nvml_used(), proc_used())
        ok(d.cuMemsetD32(va, 7, 4)); buf = bytearray(4); ok(d.cuMemcpyDtoH(buf, int(va) + 4, 4))
        again = d.cuMemRelease(h)[0].name           # the handle itself is gone
        remap = d.cuMemMap(va, size, 0, h, 0)[0].name
        ok(d.cuMemUnmap(va, size))
        after = (card_used(), nvml_used(), proc_used())
        print(json.dumps({"base": base, "held": held, "after": after, "again": again,
                          "remap": remap, "data": int.from_bytes(buf, "little")}))
    """)
    size = 64 * MiB
    assert [h - b for h, b in zip(out["held"], out["base"])] == [size, size, size]
    assert out["after"] == out["base"]
    assert out["data"] == 7
    assert out["again"] == "CUDA_ERROR_INVALID_VALUE" and out["remap"] == "CUDA_ERROR_INVALID_VALUE"


def test_retain_returns_the_same_handle_with_its_own_reference(clients):
    """NCCL: cuMemRetainAllocationHandle on a registered buffer, then cuMemRelease."""
    out = run(clients, """
        primary()
        size = 32 << 20
        base = card_used()
        va = ok(d.cuMemAddressReserve(size, 0, 0, 0))
        h = ok(d.cuMemCreate(size, prop(), 0))
        ok(d.cuMemMap(va, size, 0, h, 0)); access(va, size)
        r = ok(d.cuMemRetainAllocationHandle(int(va) + 4096))
        same = int(r) == int(h)
        ok(d.cuMemRelease(r))                       # NCCL lets go of its reference
        after_nccl = card_used() - base
        ok(d.cuMemUnmap(va, size))                  # PyTorch unmaps: one reference is left
        unmapped = card_used() - base
        ok(d.cuMemRelease(h))
        gone = card_used() - base
        unmapped_retain = d.cuMemRetainAllocationHandle(va)[0].name
        print(json.dumps({"same": same, "after_nccl": after_nccl, "unmapped": unmapped,
                          "gone": gone, "unmapped_retain": unmapped_retain}))
    """)
    assert out["same"] is True
    assert out["after_nccl"] == 32 * MiB and out["unmapped"] == 32 * MiB and out["gone"] == 0
    assert out["unmapped_retain"] == "CUDA_ERROR_INVALID_VALUE"


EXPORTER = """
    primary()
    size = 64 << 20
    base = card_used()
    p = ok(d.cuMemAlloc(size))
    ok(d.cuMemsetD32(p, 0x5eed, 16))
    h = ok(d.cuIpcGetMemHandle(p))
    vh = ok(d.cuMemCreate(size, prop(fd=True), 0))
    va = ok(d.cuMemAddressReserve(size, 0, 0, 0))
    ok(d.cuMemMap(va, size, 0, vh, 0)); access(va, size)
    ok(d.cuMemsetD32(va, 0xfeed, 16))
    fd = ok(d.cuMemExportToShareableHandle(vh, d.CUmemAllocationHandleType.CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0))
    print("ready", os.getpid(), int(fd), ctypes.string_at(h.getPtr(), 64).hex(), card_used() - base, flush=True)
    time.sleep(120)
"""

IMPORTER = """
    primary()
    pid, fd, hexh = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    before = card_used()
    h = d.CUipcMemHandle(); ctypes.memmove(h.getPtr(), bytes.fromhex(hexh), 64)
    p = ok(d.cuIpcOpenMemHandle(h, 1))
    buf = bytearray(4); ok(d.cuMemcpyDtoH(buf, int(p) + 8, 4))
    ipc_data = int.from_bytes(buf, "little")
    ipc_delta = card_used() - before
    ok(d.cuIpcCloseMemHandle(p))
    own = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDWR)
    vh = ok(d.cuMemImportFromShareableHandle(own, d.CUmemAllocationHandleType.CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR))
    size = 64 << 20
    va = ok(d.cuMemAddressReserve(size, 0, 0, 0))
    ok(d.cuMemMap(va, size, 0, vh, 0)); access(va, size)
    ok(d.cuMemcpyDtoH(buf, int(va) + 8, 4))
    vmm_data = int.from_bytes(buf, "little")
    vmm_delta = card_used() - before
    ok(d.cuMemRelease(vh)); ok(d.cuMemUnmap(va, size))
    print(json.dumps({"ipc_data": ipc_data, "ipc_delta": ipc_delta, "vmm_data": vmm_data,
                      "vmm_delta": vmm_delta}))
"""


def test_ipc_imports_share_the_exporters_memory(clients):
    exporter = clients.python(HELPERS + textwrap.dedent(EXPORTER))
    _, pid, fd, hexh, charged = clients.wait_line(exporter, "ready").split()
    assert int(charged) == 128 * MiB
    r = clients.run_python(HELPERS + textwrap.dedent(IMPORTER), pid, fd, hexh)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out == {"ipc_data": 0x5eed, "ipc_delta": 0, "vmm_data": 0xfeed, "vmm_delta": 0}
