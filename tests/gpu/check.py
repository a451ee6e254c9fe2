#!/usr/bin/env python3
"""libflexai on a real NVIDIA GPU with real frameworks: one prepared check (issue 15).

    python3 tests/gpu/check.py                 # everything, about 3-5 minutes on an H200
    python3 tests/gpu/check.py --simulated     # no GPU: the items that can run on the simulator
    python3 tests/gpu/check.py --items a,e,g   # a subset (names or letters)

With libflexai.so preloaded into each item's own subprocess (never into this script) and a
30 % slice given by the environment (FLEXAI_MEMORY / FLEXAI_COMPUTE / FLEXAI_COMPUTE_MODE, see
docs/libflexai.md "Where the limits come from"), it checks:

  a  PyTorch's caching allocator (default, expandable_segments:True, backend:cudaMallocAsync)
     raises torch.cuda.OutOfMemoryError at the slice and not before (within --margin)
  b  torch.cuda.graph capture and replay under FLEXAI_COMPUTE=30 FLEXAI_COMPUTE_MODE=hard;
     replay throughput is about 30 % of an unlimited run
  c  JAX, default (BFC, preallocating) allocator and XLA_PYTHON_CLIENT_ALLOCATOR=platform:
     allocation past the slice fails
  d  CuPy's memory pool hits OutOfMemoryError at the slice
  e  the ggml VMM pattern (cuMemCreate, cuMemMap, cuMemRelease at once, keep the mapping)
     through cuda-bindings (ctypes when cuda-bindings is missing); expected to FAIL until
     issue 15 path 1 is fixed
  f  two processes at 30 / 70 % compute (work-conserving, one card board): achieved share of
     a fixed matmul loop, by throughput
  f2 the same pair as closed loops (one matmul, wait for it, the next; issue 16): shares and
     how busy the pair keeps the card against one unlimited process
  g  nvidia-smi, NVML and torch.cuda.mem_get_info inside the slice show the slice
  h  the earlier by-hand check (check_real_driver.sh) folded in: every allocation API of the
     driver and 8 racing processes through tests/clients/flexai_client.c, under a 4 GiB slice

Each item prints one `PASS <item>: ...`, `FAIL <item>: ...` or `SKIP <item>: ...` line, a
figures table follows, and the exit status is 0 only when every item that ran passed
(1: a FAIL; 2: the library could not be found or built; 3: no NVIDIA driver). See
tests/gpu/README.md for what each item measures and its tolerances.

Only the standard library is imported here; the frameworks are imported by the item
subprocesses (the same file, run with --child).
"""
from __future__ import annotations

import argparse
import ctypes
import glob
import json
import os
import platform
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent.parent
MiB = 1 << 20
GiB = 1 << 30

EXIT_OK, EXIT_FAIL, EXIT_SETUP, EXIT_NO_DRIVER = 0, 1, 2, 3

# The frameworks' allocation steps: big steps to get near the limit fast, then finer ones, so
# the refusal comes within one fine step (plus the allocator's own rounding) of the limit.
STEPS = (1 * GiB, 64 * MiB, 1 * MiB)
ESCAPE = 2 * GiB        # stop allocating once this much past the limit: the limit did not hold


# =============================================================================================
# Child side: runs in the item's subprocess, with the item's LD_PRELOAD and FLEXAI_* env.
# =============================================================================================

def say_json(tag: str, data: dict) -> None:
    sys.stdout.write(f"{tag} {json.dumps(data, default=str)}\n")
    sys.stdout.flush()


def hold(**data) -> str:
    """Tells the parent the process is holding what it allocated; waits for its answer."""
    say_json("@@HOLD", data)
    return sys.stdin.readline().strip()


def nvml_view() -> dict:
    """What NVML shows to this process (through libflexai when it is preloaded)."""
    out: dict = {}
    try:
        lib = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError as exc:
        return {"error": f"libnvidia-ml.so.1: {exc}"}
    if lib.nvmlInit_v2() != 0:
        return {"error": "nvmlInit_v2 failed"}
    count = ctypes.c_uint(0)
    lib.nvmlDeviceGetCount_v2(ctypes.byref(count))
    out["count"] = count.value
    handle = ctypes.c_void_p()
    if lib.nvmlDeviceGetHandleByIndex_v2(0, ctypes.byref(handle)) != 0:
        out["error"] = "nvmlDeviceGetHandleByIndex_v2(0) failed"
        return out

    class Mem(ctypes.Structure):
        _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong),
                    ("used", ctypes.c_ulonglong)]
    mem = Mem()
    if lib.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(mem)) == 0:
        out.update(total=mem.total, free=mem.free, used=mem.used)
    name = ctypes.create_string_buffer(96)
    if lib.nvmlDeviceGetName(handle, name, 96) == 0:
        out["name"] = name.value.decode(errors="replace")
    uuid = ctypes.create_string_buffer(96)
    if lib.nvmlDeviceGetUUID(handle, uuid, 96) == 0:
        out["uuid"] = uuid.value.decode(errors="replace")
    drv = ctypes.create_string_buffer(96)
    if lib.nvmlSystemGetDriverVersion(drv, 96) == 0:
        out["driver"] = drv.value.decode(errors="replace")

    class Proc(ctypes.Structure):  # nvmlProcessInfo_t of _v2 / _v3
        _fields_ = [("pid", ctypes.c_uint), ("used", ctypes.c_ulonglong),
                    ("gi", ctypes.c_uint), ("ci", ctypes.c_uint)]
    for fn_name in ("nvmlDeviceGetComputeRunningProcesses_v3",
                    "nvmlDeviceGetComputeRunningProcesses_v2"):
        fn = getattr(lib, fn_name, None)
        if fn is None:
            continue
        n = ctypes.c_uint(256)
        procs = (Proc * 256)()
        if fn(handle, ctypes.byref(n), procs) == 0:
            # NVML reports "not available" as ULLONG_MAX (e.g. without permission)
            out["procs"] = {str(procs[i].pid): (None if procs[i].used >= (1 << 63) else procs[i].used)
                            for i in range(n.value)}
            break
    return out


def fill(alloc, is_oom, limit: int, steps=STEPS):
    """Allocates in steps until refused; stops ESCAPE past the limit. (held, bytes, error, escaped)."""
    held, total, err = [], 0, None
    for step in steps:
        while True:
            if total + step > limit + ESCAPE:
                return held, total, "", True
            try:
                held.append(alloc(step))
            except Exception as exc:  # noqa: BLE001 - frameworks raise their own types
                if not is_oom(exc):
                    raise
                err = f"{type(exc).__module__}.{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
                break
            total += step
    return held, total, err, False


def child_torch_alloc(spec: dict) -> dict:
    try:
        import torch
    except ImportError as exc:
        return {"skip": f"PyTorch is not installed ({exc})"}
    if not torch.cuda.is_available():
        return {"error": "torch.cuda.is_available() is False"}
    torch.empty(1, device="cuda")  # context
    limit = spec["limit"]
    oom_types = (torch.cuda.OutOfMemoryError,) if hasattr(torch.cuda, "OutOfMemoryError") else ()

    def is_oom(exc):
        return isinstance(exc, oom_types) or "out of memory" in str(exc).lower()
    held, total, err, escaped = fill(lambda n: torch.empty(n, dtype=torch.uint8, device="cuda"),
                                     is_oom, limit)
    torch.cuda.synchronize()
    free, tot = torch.cuda.mem_get_info()
    res = {"version": torch.__version__, "allocated": total, "reserved": torch.cuda.memory_reserved(),
           "mem_get_info": [free, tot], "error_text": err, "escaped": escaped,
           "oom_type_ok": bool(err) and err.split(":")[0].endswith("OutOfMemoryError"),
           "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""),
           "backend": getattr(torch.cuda, "get_allocator_backend", lambda: "?")(),
           "inside": nvml_view()}
    hold(**res)
    del held
    return res


def child_torch_graph(spec: dict) -> dict:
    try:
        import torch
    except ImportError as exc:
        return {"skip": f"PyTorch is not installed ({exc})"}
    n, k, seconds = spec.get("n", 4096), spec.get("k", 10), spec["seconds"]
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16) / n ** 0.5
    c = torch.empty(n, n, device="cuda", dtype=torch.bfloat16)

    def body():
        for _ in range(k):
            torch.matmul(a, b, out=c)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            body()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    expect = (a @ b).float()
    res: dict = {"version": torch.__version__, "n": n, "kernels_per_replay": k}
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            body()
        torch.cuda.synchronize()
    except Exception as exc:  # noqa: BLE001
        res["capture_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        return res
    c.zero_()
    graph.replay()
    torch.cuda.synchronize()
    res["replay_correct"] = bool(torch.allclose(c.float(), expect, rtol=2e-2, atol=2e-2))
    samples, done = [], 0
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        for _ in range(4):
            graph.replay()
        torch.cuda.synchronize()
        done += 4
        samples.append((time.monotonic() - start, done))
    res["rate"] = window_rate(samples, spec.get("warm", 1.0), seconds)
    res["replays"] = done
    return res


def window_rate(samples, w0: float, w1: float) -> float | None:
    """Completions per second between the samples nearest inside [w0, w1]."""
    inside = [s for s in samples if w0 <= s[0] <= w1]
    if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
        return None
    return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])


def child_jax_alloc(spec: dict) -> dict:
    try:
        import jax
        import jax.numpy as jnp
    except ImportError as exc:
        return {"skip": f"JAX is not installed ({exc})"}
    try:
        dev = jax.devices()[0]
    except Exception as exc:  # noqa: BLE001 - no GPU backend, or it failed to start
        text = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        if "Unknown backend" in text or "not found" in text.lower():
            return {"skip": f"JAX has no CUDA backend ({text})"}
        return {"error": f"JAX did not start on the GPU: {text}", "version": jax.__version__}
    if dev.platform != "gpu":
        return {"skip": f"JAX's device is {dev.platform}, not gpu (no jax CUDA plugin?)"}
    stats0 = dev.memory_stats() or {}

    def alloc(nbytes):
        x = jnp.zeros((nbytes,), dtype=jnp.uint8)
        x.block_until_ready()
        return x

    def is_oom(exc):
        t = str(exc)
        return "RESOURCE_EXHAUSTED" in t or "out of memory" in t.lower()
    held, total, err, escaped = fill(alloc, is_oom, spec["limit"])
    stats = dev.memory_stats() or {}
    res = {"version": jax.__version__, "allocated": total, "error_text": err, "escaped": escaped,
           "bytes_limit": stats0.get("bytes_limit"), "bytes_reserved": stats0.get("bytes_reserved"),
           "peak": stats.get("peak_bytes_in_use"), "in_use": stats.get("bytes_in_use"),
           "env": {k: v for k, v in os.environ.items() if k.startswith("XLA_PYTHON_CLIENT")},
           "inside": nvml_view()}
    hold(**res)
    del held
    return res


def child_cupy_alloc(spec: dict) -> dict:
    try:
        import cupy as cp
    except ImportError as exc:
        return {"skip": f"CuPy is not installed ({exc})"}
    pool = cp.get_default_memory_pool()
    cp.zeros(1)

    def is_oom(exc):
        return isinstance(exc, cp.cuda.memory.OutOfMemoryError)
    held, total, err, escaped = fill(lambda n: cp.empty(n, dtype=cp.uint8), is_oom, spec["limit"])
    free, tot = cp.cuda.runtime.memGetInfo()
    res = {"version": cp.__version__, "allocated": total, "reserved": pool.total_bytes(),
           "mem_get_info": [free, tot], "error_text": err, "escaped": escaped,
           "oom_type_ok": bool(err) and "OutOfMemoryError" in err.split(":")[0],
           "inside": nvml_view()}
    hold(**res)
    del held
    return res


# ---- the CUDA driver API from Python: cuda-bindings (as a framework calls it), else ctypes ----

class DriverAPI:
    """The few driver calls items e, b (simulated) and f (simulated) need; errors raise."""

    OOM = 2  # CUDA_ERROR_OUT_OF_MEMORY

    def __init__(self, which: str = "auto"):
        d, self.kind = None, "ctypes libcuda.so.1"
        if which != "ctypes":
            try:
                from cuda.bindings import driver as d
                self.kind = "cuda.bindings.driver"
            except ImportError:
                try:
                    from cuda import cuda as d  # cuda-python before 12.6
                    self.kind = "cuda.cuda"
                except ImportError:
                    d = None
        self.d = d
        if d is None:
            self.kind = "ctypes libcuda.so.1"
            self.lib = ctypes.CDLL("libcuda.so.1")

    # cuda-bindings returns (CUresult, values...); ctypes the CUresult: raise on an error
    def _ok(self, r, what):
        if self.d is not None:
            code = int(r[0])
            if code != 0:
                raise DriverError(code, what)
            return r[1] if len(r) == 2 else (None if len(r) == 1 else r[1:])
        if r != 0:
            raise DriverError(int(r), what)
        return None

    def init_primary(self):
        if self.d is not None:
            d = self.d
            self._ok(d.cuInit(0), "cuInit")
            self.dev = self._ok(d.cuDeviceGet(0), "cuDeviceGet")
            self.ctx = self._ok(d.cuDevicePrimaryCtxRetain(self.dev), "cuDevicePrimaryCtxRetain")
            self._ok(d.cuCtxSetCurrent(self.ctx), "cuCtxSetCurrent")
            return
        L = self.lib
        self._ok(L.cuInit(0), "cuInit")
        self.dev = ctypes.c_int()
        self._ok(L.cuDeviceGet(ctypes.byref(self.dev), 0), "cuDeviceGet")
        self.ctx = ctypes.c_void_p()
        self._ok(L.cuDevicePrimaryCtxRetain(ctypes.byref(self.ctx), self.dev), "cuDevicePrimaryCtxRetain")
        self._ok(L.cuCtxSetCurrent(self.ctx), "cuCtxSetCurrent")

    def mem_get_info(self):
        if self.d is not None:
            free, total = self._ok(self.d.cuMemGetInfo(), "cuMemGetInfo")
            return int(free), int(total)
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        self._ok(self.lib.cuMemGetInfo_v2(ctypes.byref(free), ctypes.byref(total)), "cuMemGetInfo_v2")
        return free.value, total.value

    # VMM
    def _prop(self):
        if self.d is not None:
            d = self.d
            prop = d.CUmemAllocationProp()
            prop.type = d.CUmemAllocationType.CU_MEM_ALLOCATION_TYPE_PINNED
            prop.location.type = d.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
            prop.location.id = int(self.dev)
            return prop

        class Loc(ctypes.Structure):
            _fields_ = [("type", ctypes.c_int), ("id", ctypes.c_int)]

        class Flags(ctypes.Structure):
            _fields_ = [("compressionType", ctypes.c_ubyte), ("gpuDirectRDMACapable", ctypes.c_ubyte),
                        ("usage", ctypes.c_ushort), ("reserved", ctypes.c_ubyte * 4)]

        class Prop(ctypes.Structure):
            _fields_ = [("type", ctypes.c_int), ("requestedHandleTypes", ctypes.c_int),
                        ("location", Loc), ("win32HandleMetaData", ctypes.c_void_p),
                        ("allocFlags", Flags)]
        prop = Prop()
        prop.type = 1           # CU_MEM_ALLOCATION_TYPE_PINNED
        prop.location.type = 1  # CU_MEM_LOCATION_TYPE_DEVICE
        prop.location.id = self.dev.value
        return prop

    def granularity(self) -> int:
        prop = self._prop()
        if self.d is not None:
            d = self.d
            return int(self._ok(d.cuMemGetAllocationGranularity(
                prop, d.CUmemAllocationGranularity_flags.CU_MEM_ALLOC_GRANULARITY_RECOMMENDED),
                "cuMemGetAllocationGranularity"))
        g = ctypes.c_size_t()
        self._ok(self.lib.cuMemGetAllocationGranularity(ctypes.byref(g), ctypes.byref(prop), 1),
                 "cuMemGetAllocationGranularity")
        return g.value

    def address_reserve(self, size: int) -> int:
        if self.d is not None:
            return int(self._ok(self.d.cuMemAddressReserve(size, 0, 0, 0), "cuMemAddressReserve"))
        p = ctypes.c_uint64()
        self._ok(self.lib.cuMemAddressReserve(ctypes.byref(p), ctypes.c_size_t(size), ctypes.c_size_t(0),
                                              ctypes.c_uint64(0), ctypes.c_ulonglong(0)), "cuMemAddressReserve")
        return p.value

    def address_free(self, va: int, size: int):
        if self.d is not None:
            return self._ok(self.d.cuMemAddressFree(va, size), "cuMemAddressFree")
        return self._ok(self.lib.cuMemAddressFree(ctypes.c_uint64(va), ctypes.c_size_t(size)),
                        "cuMemAddressFree")

    def create(self, size: int):
        prop = self._prop()
        if self.d is not None:
            return self._ok(self.d.cuMemCreate(size, prop, 0), "cuMemCreate")
        h = ctypes.c_ulonglong()
        self._ok(self.lib.cuMemCreate(ctypes.byref(h), ctypes.c_size_t(size), ctypes.byref(prop),
                                      ctypes.c_ulonglong(0)), "cuMemCreate")
        return h.value

    def map(self, va: int, size: int, handle):
        if self.d is not None:
            return self._ok(self.d.cuMemMap(va, size, 0, handle, 0), "cuMemMap")
        return self._ok(self.lib.cuMemMap(ctypes.c_uint64(va), ctypes.c_size_t(size), ctypes.c_size_t(0),
                                          ctypes.c_ulonglong(handle), ctypes.c_ulonglong(0)), "cuMemMap")

    def unmap(self, va: int, size: int):
        if self.d is not None:
            return self._ok(self.d.cuMemUnmap(va, size), "cuMemUnmap")
        return self._ok(self.lib.cuMemUnmap(ctypes.c_uint64(va), ctypes.c_size_t(size)), "cuMemUnmap")

    def release(self, handle):
        if self.d is not None:
            return self._ok(self.d.cuMemRelease(handle), "cuMemRelease")
        return self._ok(self.lib.cuMemRelease(ctypes.c_ulonglong(handle)), "cuMemRelease")

    def set_access(self, va: int, size: int):
        if self.d is not None:
            d = self.d
            acc = d.CUmemAccessDesc()
            acc.location.type = d.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
            acc.location.id = int(self.dev)
            acc.flags = d.CUmemAccess_flags.CU_MEM_ACCESS_FLAGS_PROT_READWRITE
            return self._ok(d.cuMemSetAccess(va, size, [acc], 1), "cuMemSetAccess")

        class Loc(ctypes.Structure):
            _fields_ = [("type", ctypes.c_int), ("id", ctypes.c_int)]

        class Acc(ctypes.Structure):
            _fields_ = [("location", Loc), ("flags", ctypes.c_int)]
        acc = Acc()
        acc.location.type, acc.location.id, acc.flags = 1, self.dev.value, 3
        return self._ok(self.lib.cuMemSetAccess(ctypes.c_uint64(va), ctypes.c_size_t(size),
                                                ctypes.byref(acc), ctypes.c_size_t(1)), "cuMemSetAccess")

    def memset(self, va: int, value: int, count32: int):
        if self.d is not None:
            return self._ok(self.d.cuMemsetD32(va, value, count32), "cuMemsetD32")
        return self._ok(self.lib.cuMemsetD32_v2(ctypes.c_uint64(va), ctypes.c_uint(value),
                                                ctypes.c_size_t(count32)), "cuMemsetD32_v2")

    # Simulated driver only (cuda-bindings): the simulator's spin kernel, streams, events, graphs.
    def sim_spin(self):
        d = self.d
        lib = self._ok(d.cuLibraryLoadData(b"flexai-sim-image\0", None, None, 0, None, None, 0),
                       "cuLibraryLoadData")
        self.spin_fn = self._ok(d.cuKernelGetFunction(self._ok(d.cuLibraryGetKernel(lib, b"flexai_sim_spin"),
                                                               "cuLibraryGetKernel")), "cuKernelGetFunction")

    def spin(self, stream, ns: int):
        self._ok(self.d.cuLaunchKernel(self.spin_fn, 1, 1, 1, 128, 1, 1, 0, stream,
                                       ((ns,), (ctypes.c_uint64,)), 0), "cuLaunchKernel")


class DriverError(RuntimeError):
    def __init__(self, code: int, what: str):
        super().__init__(f"{what} -> CUresult {code}")
        self.code = code


def child_ggml_vmm(spec: dict) -> dict:
    """ggml-cuda's pool: reserve VA, then per chunk cuMemCreate, cuMemMap, cuMemRelease at once,
    cuMemSetAccess; the mapping keeps the memory alive (the driver frees it at unmap).
    spec["order"] == "control": the handles are released only after the unmap (charged today)."""
    try:
        api = DriverAPI(spec.get("driver_api", "auto"))
    except OSError as exc:
        return {"error": f"no CUDA driver API from Python: {exc}"}
    api.init_primary()
    limit = spec["limit"]
    gran = api.granularity()
    free0, total0 = api.mem_get_info()
    steps = [max(gran, s // gran * gran) for s in STEPS]
    va_size = (limit + ESCAPE + steps[0]) // gran * gran + gran
    va = api.address_reserve(va_size)
    mapped, err, escaped, chunks, handles = 0, "", False, [], []
    ggml = spec.get("order", "ggml") == "ggml"
    for step in steps:
        while True:
            if mapped + step > limit + ESCAPE:
                escaped = True
                break
            try:
                h = api.create(step)
            except DriverError as exc:
                if exc.code != DriverAPI.OOM:
                    raise
                err = str(exc)
                break
            api.map(va + mapped, step, h)
            if ggml:
                api.release(h)       # at once, as ggml does: the mapping keeps the memory
            else:
                handles.append(h)
            api.set_access(va + mapped, step)
            chunks.append((va + mapped, step))
            mapped += step
        if escaped:
            break
    if mapped:
        api.memset(va + mapped - 4096, 7, 1024)  # the last chunk is really usable
    free1, total1 = api.mem_get_info()
    res = {"api": api.kind, "granularity": gran, "mapped": mapped, "error_text": err,
           "escaped": escaped, "mem_get_info_before": [free0, total0], "mem_get_info": [free1, total1],
           "inside": nvml_view()}
    if spec.get("hold", True):
        hold(**res)
    for addr, size in chunks:
        api.unmap(addr, size)
    for h in handles:
        api.release(h)
    api.address_free(va, va_size)
    return res


def child_sim_graph(spec: dict) -> dict:
    """Simulated driver: a torch.cuda.graph-style capture (global mode, 10 launches) and replays."""
    api = DriverAPI()
    if api.d is None:
        return {"skip": "cuda-bindings is not installed"}
    d = api.d
    api.init_primary()
    api.sim_spin()
    stream = api._ok(d.cuStreamCreate(0), "cuStreamCreate")
    k, ns, seconds = spec.get("k", 10), spec.get("kernel_ns", 200_000), spec["seconds"]
    res: dict = {"version": f"{api.kind} (simulated driver)", "kernels_per_replay": k}
    try:
        api._ok(d.cuStreamBeginCapture(stream, d.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_GLOBAL),
                "cuStreamBeginCapture")
        for _ in range(k):
            api.spin(stream, ns)
        graph = api._ok(d.cuStreamEndCapture(stream), "cuStreamEndCapture")
        exe = api._ok(d.cuGraphInstantiate(graph, 0), "cuGraphInstantiate")
    except DriverError as exc:
        res["capture_error"] = str(exc)
        return res
    api._ok(d.cuGraphLaunch(exe, stream), "cuGraphLaunch")
    api._ok(d.cuStreamSynchronize(stream), "cuStreamSynchronize")
    res["replay_correct"] = True
    samples, done = [], 0
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        for _ in range(4):
            api._ok(d.cuGraphLaunch(exe, stream), "cuGraphLaunch")
        api._ok(d.cuStreamSynchronize(stream), "cuStreamSynchronize")
        done += 4
        samples.append((time.monotonic() - start, done))
    res["rate"] = window_rate(samples, spec.get("warm", 1.0), seconds)
    res["replays"] = done
    return res


def child_share_worker(spec: dict) -> dict:
    """A fixed matmul loop (torch, else CuPy; the simulator's spin kernel with --simulated).
    Prints @@READY, waits for `go <epoch>`, runs until then + warm + window + 1 s."""
    backend = spec.get("backend", "torch")
    batch = spec.get("batch", 4)
    if backend == "sim":
        api = DriverAPI()
        if api.d is None:
            return {"skip": "cuda-bindings is not installed"}
        d = api.d
        api.init_primary()
        api.sim_spin()
        stream = api._ok(d.cuStreamCreate(0), "cuStreamCreate")
        version = f"{api.kind} (simulated spin kernel, {spec.get('kernel_ns', 1_000_000)} ns)"

        def launch():
            for _ in range(batch):
                api.spin(stream, spec.get("kernel_ns", 1_000_000))
            ev = api._ok(d.cuEventCreate(0), "cuEventCreate")
            api._ok(d.cuEventRecord(ev, stream), "cuEventRecord")
            return ev

        def wait(ev):
            api._ok(d.cuEventSynchronize(ev), "cuEventSynchronize")
            api._ok(d.cuEventDestroy(ev), "cuEventDestroy")
    else:
        try:
            if backend == "torch":
                import torch as fw
            else:
                import cupy as fw
        except ImportError as exc:
            return {"skip": f"{backend} is not installed ({exc})"}
        n = spec.get("n", 8192)
        if backend == "torch":
            a = fw.randn(n, n, device="cuda", dtype=fw.bfloat16)
            b = fw.randn(n, n, device="cuda", dtype=fw.bfloat16)
            c = fw.empty(n, n, device="cuda", dtype=fw.bfloat16)

            def launch():
                for _ in range(batch):
                    fw.matmul(a, b, out=c)
                ev = fw.cuda.Event()
                ev.record()
                return ev

            def wait(ev):
                ev.synchronize()
        else:
            a = fw.random.random((n, n), dtype=fw.float32).astype(fw.float16)
            b = fw.random.random((n, n), dtype=fw.float32).astype(fw.float16)
            c = fw.empty((n, n), dtype=fw.float16)

            def launch():
                for _ in range(batch):
                    fw.matmul(a, b, out=c)
                ev = fw.cuda.Event()
                ev.record()
                return ev

            def wait(ev):
                ev.synchronize()
        version = f"{backend} {fw.__version__}, {n}x{n} matmul"
    for _ in range(3):
        wait(launch())
    print("@@READY", flush=True)
    line = sys.stdin.readline().split()
    t0 = float(line[1]) if len(line) > 1 else time.time()
    while time.time() < t0:
        time.sleep(0.001)
    warm, window = spec["warm"], spec["window"]
    end = t0 + warm + window + 1.0
    samples, done, prev = [], 0, None
    while time.time() < end:
        ev = launch()
        if spec.get("closed"):
            # a closed loop (issue 16): wait for this batch before launching the next, as an
            # inference server's step or a training loop calling .item() does
            wait(ev)
            done += batch
            samples.append((time.time() - t0, done))
            continue
        if prev is not None:
            wait(prev)
            done += batch
            samples.append((time.time() - t0, done))
        prev = ev
    if prev is not None:
        wait(prev)
    return {"version": version, "rate": window_rate(samples, warm, warm + window), "done": done}


def child_view(spec: dict) -> dict:
    """What the process sees of its card: nvidia-smi (flexai-smi on the simulator), NVML,
    torch.cuda.mem_get_info (or CuPy's, or the driver API's cuMemGetInfo)."""
    res: dict = {"inside": nvml_view()}
    smi = spec.get("smi")
    if smi:
        try:
            cp = subprocess.run(smi, capture_output=True, text=True, timeout=30)
            res["smi_rc"], res["smi_out"] = cp.returncode, cp.stdout[-2000:]
            res["smi_err"] = cp.stderr[-500:]
        except (OSError, subprocess.TimeoutExpired) as exc:
            res["smi_error"] = str(exc)
    try:
        import torch
        if torch.cuda.is_available():
            res["torch"] = {"version": torch.__version__, "device_count": torch.cuda.device_count(),
                            "mem_get_info": list(torch.cuda.mem_get_info()),
                            "total_memory": torch.cuda.get_device_properties(0).total_memory}
        else:
            res["torch"] = {"version": torch.__version__, "error": "torch.cuda.is_available() is False"}
    except ImportError:
        pass
    if "torch" not in res:
        try:
            import cupy as cp
            res["cupy"] = {"version": cp.__version__, "device_count": cp.cuda.runtime.getDeviceCount(),
                           "mem_get_info": list(cp.cuda.runtime.memGetInfo())}
        except ImportError:
            pass
    if "torch" not in res and "cupy" not in res:
        try:
            api = DriverAPI(spec.get("driver_api", "auto"))
            api.init_primary()
            res["driver"] = {"api": api.kind, "mem_get_info": list(api.mem_get_info())}
        except (OSError, DriverError) as exc:
            res["driver"] = {"error": str(exc)}
    return res


CHILDREN = {
    "torch_alloc": child_torch_alloc, "torch_graph": child_torch_graph, "sim_graph": child_sim_graph,
    "jax_alloc": child_jax_alloc, "cupy_alloc": child_cupy_alloc, "ggml_vmm": child_ggml_vmm,
    "share": child_share_worker, "view": child_view,
}


def child_main(name: str, spec_text: str) -> int:
    spec = json.loads(spec_text)
    try:
        res = CHILDREN[name](spec)
    except BaseException as exc:  # noqa: BLE001 - report it; the parent decides
        import traceback
        traceback.print_exc()
        res = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}
    say_json("@@RESULT", res)
    return 0


def probe_main() -> int:
    """The card as seen without libflexai (run by the parent in a subprocess, never preloaded)."""
    say_json("@@PROBE", nvml_view())
    return 0


# =============================================================================================
# Parent side: never preloaded, never loads a driver library itself.
# =============================================================================================

@dataclass
class Outcome:
    item: str
    status: str                     # PASS / FAIL / SKIP
    text: str
    figures: dict = field(default_factory=dict)
    logs: list = field(default_factory=list)   # (label, stderr tail)
    seconds: float = 0.0


class Child:
    """One item subprocess: its own session (killed as a group by its pid), lines by thread."""

    def __init__(self, ctx, label: str, name: str, spec: dict, env: dict):
        self.label = label
        argv = [ctx.python, str(HERE), "--child", name, "--spec", json.dumps(spec)]
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, cwd=ctx.workdir,
                                     start_new_session=True)
        ctx.children.append(self.proc)
        self.lines: queue.Queue = queue.Queue()
        self.err: list[str] = []
        self.out: list[str] = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, True), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, False), daemon=True).start()

    def _pump(self, stream, is_out):
        for line in stream:
            if is_out and line.startswith("@@"):
                self.lines.put(line.rstrip("\n"))
            else:
                (self.out if is_out else self.err).append(line.rstrip("\n"))
        if is_out:
            self.lines.put(None)

    def wait_for(self, tag: str, deadline: float):
        """The JSON (or text) after the next line tagged `tag`; None at EOF or timeout."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                return None
            if line is None:
                self.lines.put(None)
                return None
            if line.startswith(tag):
                rest = line[len(tag):].strip()
                try:
                    return json.loads(rest) if rest else {}
                except json.JSONDecodeError:
                    return {"text": rest}
            if line.startswith("@@RESULT") and tag != "@@RESULT":
                self.lines.put(line)  # the child finished early; leave it for the caller
                return None

    def send(self, text: str):
        try:
            self.proc.stdin.write(text + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass

    def finish(self, deadline: float) -> dict:
        res = self.wait_for("@@RESULT", deadline)
        timed_out = res is None and self.proc.poll() is None
        self.kill()
        if res is None:
            rc = self.proc.returncode
            why = "timed out" if timed_out else f"exited {rc} without a result"
            res = {"error": f"{self.label}: {why}"}
            if timed_out:
                res["timeout"] = True
        return res

    def kill(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def tail(self, n=12) -> str:
        return "\n".join((self.err + self.out)[-n:])


class Context:
    def __init__(self, args):
        self.args = args
        self.python = args.python
        self.simulated = args.simulated
        self.children: list[subprocess.Popen] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="flexai-gpu-check-"))
        self.workdir = str(self.tmp)
        self.board_dir = self.tmp / "boards"
        self.board_dir.mkdir()
        self.log_dir = Path(args.log_dir) if args.log_dir else REPO / "build" / "gpu-check" / "logs"
        self.lib = ""
        self.lib_note = ""
        self.sim_libdir = ""
        self.sim_dir = ""
        self.smi_cmd: list[str] = []
        self.card: dict = {}
        self.total = 0
        self.limit = 0
        self.deadline = 0.0
        self.versions: dict = {}

    # Environments -------------------------------------------------------------------------
    def base_env(self) -> dict:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("FLEXAI_", "XLA_PYTHON_CLIENT_", "PYTORCH_CUDA_ALLOC_CONF"))
               and k not in ("LD_PRELOAD", "CUDA_VISIBLE_DEVICES", "JAX_PLATFORMS")}
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["FLEXAI_BOARD_DIR"] = str(self.board_dir)   # never the host's /run/flexai/boards
        if self.simulated:
            env["LD_LIBRARY_PATH"] = self.sim_libdir + (":" + env["LD_LIBRARY_PATH"]
                                                        if env.get("LD_LIBRARY_PATH") else "")
            env["FLEXAI_SIM_DIR"] = self.sim_dir
        return env

    def slice_env(self, memory: int | None = None, compute: int | None = None,
                  mode: str | None = None, **extra) -> dict:
        env = self.base_env()
        env["LD_PRELOAD"] = self.lib
        env["FLEXAI_SLICE_FILE"] = "/nonexistent/flexai-gpu-check/slice.conf"  # the env applies
        env["FLEXAI_MEMORY"] = f"{(memory or self.limit) // MiB}MiB"
        if compute is not None:
            env["FLEXAI_COMPUTE"] = str(compute)
        if mode:
            env["FLEXAI_COMPUTE_MODE"] = mode
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def timeout(self, own: float) -> float:
        """An item's deadline: its own timeout, cut to what is left of the whole budget."""
        return time.monotonic() + max(1.0, min(own, self.deadline - time.monotonic()))

    def probe(self) -> dict:
        """NVML outside the slice (no preload), in a throwaway subprocess."""
        try:
            cp = subprocess.run([self.python, str(HERE), "--probe"], env=self.base_env(),
                                capture_output=True, text=True, timeout=20, cwd=self.workdir)
        except subprocess.TimeoutExpired:
            return {"error": "probe timed out"}
        for line in cp.stdout.splitlines():
            if line.startswith("@@PROBE"):
                return json.loads(line[len("@@PROBE"):])
        return {"error": f"probe rc={cp.returncode}: {cp.stderr.strip()[-200:]}"}

    def cleanup_regions(self, pids) -> None:
        """Removes the /dev/shm regions the item processes named for themselves (ours only)."""
        for pid in pids:
            for path in glob.glob(f"/dev/shm/flexai-region-{pid}-*") + glob.glob(f"/dev/shm/flexai-region-{pid}"):
                try:
                    os.unlink(path)
                except OSError:
                    pass

    def run_child(self, label, name, spec, env, own_timeout, on_hold=None):
        deadline = self.timeout(own_timeout)
        ch = Child(self, label, name, spec, env)
        held = None
        try:
            if on_hold is not None:
                held = ch.wait_for("@@HOLD", deadline)
                if held is not None:
                    on_hold(ch, held)
                    ch.send("go")
            res = ch.finish(deadline)
        finally:
            ch.kill()
            self.cleanup_regions([ch.proc.pid])
            self.save_log(label, ch)
        return res, ch

    def save_log(self, label, ch) -> None:
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            (self.log_dir / f"{label}.log").write_text(
                "== stdout\n" + "\n".join(ch.out) + "\n== stderr\n" + "\n".join(ch.err) + "\n")
        except OSError:
            pass


# ---- helpers for the items --------------------------------------------------------------------

def gib(n) -> str:
    return "n/a" if n is None else f"{n / GiB:.2f} GiB"


def mib(n) -> str:
    return "n/a" if n is None else f"{n / MiB:.0f} MiB"


def outside_hold(ctx: Context, pid: int, baseline: dict) -> dict:
    """What the process holds on the card by NVML outside the slice (per process, else the
    card's used memory minus what was used before the item started)."""
    p = ctx.probe()
    procs = p.get("procs") or {}
    if procs.get(str(pid)) is not None:
        return {"held": procs[str(pid)], "how": "NVML per-process"}
    if p.get("used") is not None and baseline.get("used") is not None:
        return {"held": p["used"] - baseline["used"], "how": "NVML card used - before"}
    return {"held": None, "how": p.get("error", "NVML gave no figure")}


def skip_or_error(item, res, ch, t0) -> Outcome | None:
    if "skip" in res:
        return Outcome(item, "SKIP", res["skip"], seconds=time.monotonic() - t0)
    if "error" in res:
        return Outcome(item, "FAIL", res["error"], logs=[(item, ch.tail())], seconds=time.monotonic() - t0)
    return None


def oom_item(ctx: Context, item: str, child: str, extra_env: dict, own_timeout: float,
             reserved_key: str | None = "reserved", need_type: bool = True,
             need_near: bool = True) -> Outcome:
    """Allocate until refused; PASS when refused at or below the limit and (need_near) within
    --margin of it, counting what libflexai charged (slice used per NVML inside the slice)."""
    t0 = time.monotonic()
    baseline = ctx.probe()
    outside: dict = {}

    def on_hold(ch, held):
        outside.update(outside_hold(ctx, ch.proc.pid, baseline))
    res, ch = ctx.run_child(item, child, {"limit": ctx.limit},
                            ctx.slice_env(**extra_env), own_timeout, on_hold)
    bad = skip_or_error(item, res, ch, t0)
    if bad:
        return bad
    limit, margin = ctx.limit, ctx.args.margin * MiB
    allocated = res.get("allocated", 0)
    reserved = res.get(reserved_key) if reserved_key else None
    inside = res.get("inside") or {}
    charged = inside.get("used")            # the slice's used memory by NVML inside the slice
    held_by_fw = max(x for x in (allocated, reserved or 0) if x is not None)
    best = max(held_by_fw, charged or 0)
    figs = {"limit": limit, "allocated": allocated, "reserved": reserved, "charged": charged,
            "gap": limit - best, "held_nvml": outside.get("held"), "nvml_how": outside.get("how"),
            "version": res.get("version")}
    for key in ("bytes_limit", "backend", "api", "granularity"):
        if res.get(key) is not None:
            figs[key] = res[key]
    held_txt = (f"process held {gib(outside.get('held'))} by {outside.get('how')}"
                + (f" ({(outside['held'] - held_by_fw) / MiB:+.0f} MiB beyond the framework's "
                   f"{'reserve' if reserved is not None else 'allocations'})"
                   if outside.get("held") is not None else ""))
    if res.get("escaped") or not res.get("error_text"):
        return Outcome(item, "FAIL", f"no refusal: took {gib(held_by_fw)} past a {gib(limit)} slice "
                       f"(stopped at limit + {gib(ESCAPE)}); {held_txt}", figs,
                       [(item, ch.tail())], time.monotonic() - t0)
    problems = []
    if held_by_fw > limit:
        problems.append(f"framework held {gib(held_by_fw)} > limit")
    if charged is not None and charged > limit:
        problems.append(f"slice charged {gib(charged)} > limit")
    if need_near and limit - best > margin:
        problems.append(f"refused {mib(limit - best)} below the limit (margin {mib(margin)})")
    if need_type and not res.get("oom_type_ok", True):
        problems.append(f"refused with {res.get('error_text')!r}, not OutOfMemoryError")
    where = (f"refused at {gib(held_by_fw)} held by the framework"
             + (f", slice charged {gib(charged)}" if charged is not None else "")
             + f", {mib(limit - best)} below the {gib(limit)} slice; {held_txt}")
    extra = ""
    if "bytes_limit" in res:
        extra = f"; JAX pool (bytes_limit) {gib(res.get('bytes_limit'))}"
    if problems:
        return Outcome(item, "FAIL", "; ".join(problems) + f" -- {where}{extra}", figs,
                       [(item, ch.tail())], time.monotonic() - t0)
    return Outcome(item, "PASS", where + extra, figs, seconds=time.monotonic() - t0)


# ---- the items -------------------------------------------------------------------------------

def item_a(variant: str, conf: str | None):
    def run(ctx: Context) -> Outcome:
        extra = {"PYTORCH_CUDA_ALLOC_CONF": conf} if conf else {}
        out = oom_item(ctx, f"a.{variant}", "torch_alloc", extra, 90)
        if out.status != "SKIP":
            out.figures["conf"] = conf or "(default)"
        return out
    return run


def item_b(ctx: Context) -> Outcome:
    item = "b.graph"
    t0 = time.monotonic()
    sim = ctx.simulated
    child = "sim_graph" if sim else "torch_graph"
    spec = {"seconds": ctx.args.seconds, "warm": 1.0}
    base_env = ctx.base_env()
    res0, ch0 = ctx.run_child(f"{item}-unlimited", child, spec, base_env, 75)
    bad = skip_or_error(item, res0, ch0, t0)
    if bad:
        bad.text = "unlimited run: " + bad.text if bad.status == "FAIL" else bad.text
        return bad
    env = ctx.slice_env(compute=30, mode="hard")
    res, ch = ctx.run_child(item, child, spec, env, 75)
    bad = skip_or_error(item, res, ch, t0)
    if bad:
        return bad
    figs = {"version": res.get("version"), "rate_unlimited": res0.get("rate"), "rate_30": res.get("rate"),
            "capture_unlimited": "ok" if "capture_error" not in res0 else res0["capture_error"]}
    if "capture_error" in res0:
        return Outcome(item, "FAIL", f"capture fails even without libflexai: {res0['capture_error']}",
                       figs, [(item + "-unlimited", ch0.tail())], time.monotonic() - t0)
    if "capture_error" in res:
        return Outcome(item, "FAIL", f"capture under FLEXAI_COMPUTE=30 hard failed: {res['capture_error']} "
                       "(issue 15 path 6)", figs, [(item, ch.tail())], time.monotonic() - t0)
    r0, r = res0.get("rate"), res.get("rate")
    if not r0 or not r:
        return Outcome(item, "FAIL", "no replay rate measured", figs, [(item, ch.tail())],
                       time.monotonic() - t0)
    ratio = r / r0
    figs["ratio"] = ratio
    tol = ctx.args.share_tol
    text = (f"capture ok, replay {'correct' if res.get('replay_correct') else 'WRONG'}; "
            f"{r:.1f} replays/s under 30 % hard vs {r0:.1f}/s unlimited = {100 * ratio:.1f} % "
            f"(want 30 ± {100 * tol:.0f})")
    ok = res.get("replay_correct") and abs(ratio - 0.30) <= tol
    return Outcome(item, "PASS" if ok else "FAIL", text, figs,
                   [] if ok else [(item, ch.tail())], time.monotonic() - t0)


def item_c(variant: str, extra: dict):
    def run(ctx: Context) -> Outcome:
        env = dict(extra)
        if variant == "jax-default" and ctx.args.jax_mem_fraction:
            env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = ctx.args.jax_mem_fraction
        env.setdefault("JAX_PLATFORMS", "cuda")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
        # default (BFC): the pool is JAX's own choice below the slice; refusal must not pass it.
        out = oom_item(ctx, f"c.{variant}", "jax_alloc", env, 120, reserved_key=None, need_type=False,
                       need_near=(variant == "jax-platform"))
        if out.status != "SKIP":
            out.figures["env"] = " ".join(f"{k}={v}" for k, v in env.items()
                                          if k.startswith("XLA_")) or "(XLA defaults)"
            out.text += f" [{out.figures['env']}]"
        return out
    return run


def item_d(ctx: Context) -> Outcome:
    return oom_item(ctx, "d.cupy", "cupy_alloc", {}, 90)


def item_e(ctx: Context) -> Outcome:
    item = "e.ggml-vmm"
    t0 = time.monotonic()
    baseline = ctx.probe()
    outside: dict = {}

    def on_hold(ch, held):
        outside.update(outside_hold(ctx, ch.proc.pid, baseline))
    spec = {"limit": ctx.limit, "driver_api": ctx.args.driver_api}
    # control: the same chunks with each handle released after its unmap, which libflexai charges
    ctl, ctl_ch = ctx.run_child(item + "-control", "ggml_vmm", dict(spec, order="control", hold=False),
                                ctx.slice_env(), 45)
    if "mapped" in ctl:
        refused = ctl.get("error_text") and not ctl.get("escaped")
        control = (f"control (release after unmap): "
                   + (f"refused at {gib(ctl['mapped'])}, {mib(ctx.limit - ctl['mapped'])} below the limit"
                      if refused else f"NOT refused by {gib(ctl['mapped'])}"))
    else:
        control = f"control run: {ctl.get('error', ctl.get('skip', '?'))}"
    res, ch = ctx.run_child(item, "ggml_vmm", spec, ctx.slice_env(), 45, on_hold)
    bad = skip_or_error(item, res, ch, t0)
    if bad:
        return bad
    limit, margin = ctx.limit, ctx.args.margin * MiB
    mapped = res.get("mapped", 0)
    inside = res.get("inside") or {}
    charged = inside.get("used")
    figs = {"limit": limit, "allocated": mapped, "charged": charged, "gap": limit - mapped,
            "held_nvml": outside.get("held"), "nvml_how": outside.get("how"), "api": res.get("api"),
            "version": res.get("api"), "granularity": res.get("granularity"),
            "control_mapped": ctl.get("mapped")}
    held_txt = f"process held {gib(outside.get('held'))} by {outside.get('how')}"
    charge_txt = f"slice charged {gib(charged)} while {gib(mapped)} stays mapped"
    if res.get("escaped") or not res.get("error_text"):
        return Outcome(item, "FAIL", f"mapped {gib(mapped)} past a {gib(limit)} slice without refusal "
                       f"(stopped at limit + {gib(ESCAPE)}): cuMemRelease uncharges a handle that is "
                       f"still mapped (issue 15 path 1); {charge_txt}; {held_txt}; via {res.get('api')}; {control}",
                       figs, [(item, ch.tail())], time.monotonic() - t0)
    problems = []
    if mapped > limit:
        problems.append(f"mapped {gib(mapped)} > limit")
    if limit - mapped > margin:
        problems.append(f"refused {mib(limit - mapped)} below the limit (margin {mib(margin)})")
    if charged is not None and charged + margin < mapped:
        problems.append(f"the slice is charged {gib(charged)} for {gib(mapped)} mapped")
    text = (f"cuMemCreate refused at {gib(mapped)} mapped ({mib(limit - mapped)} below the "
            f"{gib(limit)} slice); {charge_txt}; {held_txt}; via {res.get('api')}; {control}")
    if problems:
        return Outcome(item, "FAIL", "; ".join(problems) + " -- " + text, figs,
                       [(item, ch.tail())], time.monotonic() - t0)
    return Outcome(item, "PASS", text, figs, seconds=time.monotonic() - t0)


def have_module(python: str, name: str) -> bool:
    if python == sys.executable:
        import importlib.util
        try:
            return importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            return False
    cp = subprocess.run([python, "-c", f"import importlib.util,sys; sys.exit(importlib.util.find_spec({name!r}) is None)"],
                        capture_output=True, timeout=30)
    return cp.returncode == 0


def item_f(ctx: Context) -> Outcome:
    return share_item(ctx, "f.share-30-70", closed=False)


def item_f2(ctx: Context) -> Outcome:
    return share_item(ctx, "f2.closed-loop-30-70", closed=True)


def share_item(ctx: Context, item: str, closed: bool) -> Outcome:
    """Two slices at 30 / 70 % running the same matmul loop, queued (f) or closed-loop (f2:
    one matmul, wait for it, the next), against one unlimited process: shares and how busy
    the pair keeps the card, by throughput."""
    t0 = time.monotonic()
    if ctx.simulated:
        backend = "sim"
    elif have_module(ctx.python, "torch"):
        backend = "torch"
    elif have_module(ctx.python, "cupy"):
        backend = "cupy"
    else:
        return Outcome(item, "SKIP", "neither PyTorch nor CuPy is installed")
    warm, window = ctx.args.warm, ctx.args.seconds
    spec = {"backend": backend, "warm": warm, "window": window}
    if closed:
        spec.update(closed=True, batch=1)
    own = 60 + warm + window

    def run_group(label, envs):
        deadline = ctx.timeout(own)
        kids = [Child(ctx, f"{item}-{label}-{i}", "share", spec, env) for i, env in enumerate(envs)]
        try:
            ready = [k.wait_for("@@READY", deadline) is not None for k in kids]
            if not all(ready):  # one finished early (a skip or an error) or hung: its result
                return [k.finish(time.monotonic() + 5) if not r else {"error": "stopped: its peer failed"}
                        for k, r in zip(kids, ready)], kids
            start = time.time() + 0.5
            for k in kids:
                k.send(f"go {start:.6f}")
            return [k.finish(deadline) for k in kids], kids
        finally:
            for k in kids:
                k.kill()
                ctx.save_log(k.label, k)
            ctx.cleanup_regions([k.proc.pid for k in kids])

    solo, kids = run_group("unlimited", [ctx.base_env()])
    if solo is None or "error" in solo[0] or "skip" in solo[0]:
        r = (solo or [{}])[0]
        if "skip" in r:
            return Outcome(item, "SKIP", r["skip"])
        return Outcome(item, "FAIL", f"unlimited run: {r.get('error', 'not ready in time')}", {},
                       [(k.label, k.tail()) for k in kids], time.monotonic() - t0)
    pair, kids = run_group("pair", [ctx.slice_env(compute=30), ctx.slice_env(compute=70)])
    if pair is None or any("error" in r or "skip" in r for r in pair):
        why = "; ".join(r.get("error", r.get("skip", "")) for r in (pair or [])) or "not ready in time"
        return Outcome(item, "FAIL", f"30/70 run: {why}", {}, [(k.label, k.tail()) for k in kids],
                       time.monotonic() - t0)
    r0, r30, r70 = solo[0].get("rate"), pair[0].get("rate"), pair[1].get("rate")
    figs = {"version": pair[0].get("version"), "rate_unlimited": r0, "rate_30": r30, "rate_70": r70}
    if not (r0 and r30 and r70):
        return Outcome(item, "FAIL", f"no throughput measured (unlimited {r0}, 30 % {r30}, 70 % {r70})",
                       figs, [(k.label, k.tail()) for k in kids], time.monotonic() - t0)
    share = r30 / (r30 + r70)
    busy = (r30 + r70) / r0
    figs.update(share_30=share, busy=busy)
    tol = ctx.args.share_tol
    text = (f"30 % slice got {100 * share:.1f} %, 70 % slice {100 * (1 - share):.1f} % of the throughput "
            f"(want 30 ± {100 * tol:.0f}); together {100 * busy:.0f} % of one unlimited process "
            f"({r30:.1f} + {r70:.1f} vs {r0:.1f} batches/s; {figs['version']})")
    ok = abs(share - 0.30) <= tol
    return Outcome(item, "PASS" if ok else "FAIL", text, figs,
                   [] if ok else [(k.label, k.tail()) for k in kids], time.monotonic() - t0)


def item_g(ctx: Context) -> Outcome:
    item = "g.view"
    t0 = time.monotonic()
    res, ch = ctx.run_child(item, "view", {"smi": ctx.smi_cmd, "driver_api": ctx.args.driver_api},
                            ctx.slice_env(), 60)
    bad = skip_or_error(item, res, ch, t0)
    if bad:
        return bad
    limit = ctx.limit
    seen, problems = [], []
    inside = res.get("inside") or {}
    figs = {"limit": limit}

    def check(label, total, count=None, tol=0):
        figs[label] = total
        if total is None:
            problems.append(f"{label}: no figure")
            return
        ok = abs(total - limit) <= tol and count in (None, 1)
        seen.append(f"{label} {gib(total)}" + (f" ({count} device)" if count is not None else ""))
        if not ok:
            problems.append(f"{label} shows {gib(total)}" + (f", {count} devices" if count not in (None, 1) else ""))
    check("NVML", inside.get("total"), inside.get("count"))
    if ctx.smi_cmd:
        out = res.get("smi_out", "")
        if ctx.simulated:  # flexai-smi: "total 4.80 GiB, ..." per API
            totals = [float(x) * GiB for x in re.findall(r"total ([0-9.]+) GiB", out)]
            ndev = re.findall(r"(\d+) device\(s\)", out)
            for i, t in enumerate(totals):
                check(f"flexai-smi {('CUDA', 'NVML')[i] if i < 2 else i}", int(t),
                      int(ndev[i]) if i < len(ndev) else None, tol=0.006 * GiB)
            if not totals:
                problems.append(f"flexai-smi printed no total (rc {res.get('smi_rc')}: {res.get('smi_err', '')[-200:]})")
        else:              # nvidia-smi --query-gpu=index,memory.total --format=csv,noheader,nounits
            rows = [r.split(",") for r in out.strip().splitlines() if r.strip()]
            if res.get("smi_rc") != 0 or not rows:
                problems.append(f"nvidia-smi rc {res.get('smi_rc')}: {(res.get('smi_err') or res.get('smi_error', ''))[-200:]}")
            else:
                try:
                    check("nvidia-smi", int(rows[0][1].strip()) * MiB, len(rows), tol=MiB)
                except (IndexError, ValueError):
                    problems.append(f"nvidia-smi printed {out[:200]!r}")
    if "torch" in res:
        t = res["torch"]
        if "error" in t:
            problems.append(f"torch: {t['error']}")
        else:
            check("torch.mem_get_info", t["mem_get_info"][1], t["device_count"])
            figs["torch_total_memory"] = t.get("total_memory")
            figs["version"] = f"torch {t['version']}"
            seen.append(f"(get_device_properties.total_memory {gib(t.get('total_memory'))})")
    elif "cupy" in res:
        check("cupy.memGetInfo", res["cupy"]["mem_get_info"][1], res["cupy"]["device_count"])
    elif "driver" in res:
        if "error" in res["driver"]:
            problems.append(f"cuMemGetInfo: {res['driver']['error']}")
        else:
            check(f"cuMemGetInfo ({res['driver']['api']})", res["driver"]["mem_get_info"][1])
    text = f"slice {gib(limit)}: " + ", ".join(seen)
    if problems:
        return Outcome(item, "FAIL", "; ".join(problems) + " -- " + text, figs,
                       [(item, ch.tail())], time.monotonic() - t0)
    return Outcome(item, "PASS", text, figs, seconds=time.monotonic() - t0)


def item_h(ctx: Context) -> Outcome:
    """The earlier by-hand check (tests/gpu/check_real_driver.sh), folded in: every allocation
    API and 8 racing processes through tests/clients/flexai_client.c, which loads libcuda the way
    libcudart does (dlopen + cuGetProcAddress_v2), under a 4 GiB slice. No kernel is launched."""
    item = "h.driver-api"
    t0 = time.monotonic()
    deadline = ctx.timeout(90)
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not cc:
        return Outcome(item, "SKIP", "no C compiler for tests/clients/flexai_client.c")
    exe = ctx.tmp / "flexai_client"
    cp = subprocess.run([cc, "-O2", f"-I{REPO / 'libflexai'}", "-o", str(exe),
                         str(REPO / "tests" / "clients" / "flexai_client.c"), "-ldl"],
                        capture_output=True, text=True, timeout=120)
    if cp.returncode != 0:
        return Outcome(item, "FAIL", "flexai_client.c did not compile", {}, [(item, cp.stderr[-1500:])])
    G4, B15, M900 = 4 * GiB, 1610612736, 943718400
    env = ctx.slice_env(memory=G4)
    pids, log, problems = [], [], []

    def client(*words, env=env, stdin=subprocess.DEVNULL):
        left = deadline - time.monotonic()
        if left <= 1:
            raise subprocess.TimeoutExpired("flexai_client", 0)
        proc = subprocess.Popen([str(exe), *map(str, words)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=stdin, text=True, cwd=ctx.workdir,
                                start_new_session=True)
        ctx.children.append(proc)
        pids.append(proc.pid)
        try:
            out, err = proc.communicate(timeout=left)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
        log.append(f"$ flexai_client {' '.join(map(str, words))}\n{out}{err}")
        return out.split("\n")

    def expect(label, lines, want):
        got = [ln.split()[0] for ln in lines if ln.strip()][:len(want)]
        if got != want:
            problems.append(f"{label}: {' '.join(got)} (want {' '.join(want)})")
    race = {}
    try:
        info = client("info", "otherdev")
        m = re.match(r"count=(\d+) total=(\d+) free=\d+ devtotal=(\d+)", info[0])
        if not m or (int(m[1]), int(m[2]), int(m[3])) != (1, G4, G4):
            problems.append(f"info: {info[0]!r} (want count=1 total=devtotal={G4})")
        if not info[1].startswith("refused"):
            problems.append(f"otherdev: {info[1]!r} (want refused)")
        for api in ("mem", "pitch", "managed", "async", "pool", "vmm"):
            expect(api, client("alloc", api, B15, "alloc", api, B15, "alloc", api, B15, "freeall"),
                   ["ok", "ok", "oom"])
        # arrays in 900 MiB steps: 1.5 GiB passes the driver's 2D/3D array size limits
        for api in ("array", "array3d"):
            expect(api, client(*(["alloc", api, M900] * 5), "freeall"), ["ok"] * 4 + ["oom"])
        expect("vmmhost", client(*(["alloc", "vmmhost", B15] * 3), "freeall"), ["ok"] * 3)
        counter = ctx.tmp / "race-counter"
        counter.write_bytes(bytes(4096))
        # one slice for the 8 processes: the region named here (their parent is not preloaded)
        region = f"/dev/shm/flexai-region-{os.getpid()}-gpucheck-race"
        race_env = dict(env, FLEXAI_REGION=region)
        procs = [subprocess.Popen([str(exe), "race", str(M900), "100", str(counter)], env=race_env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  stdin=subprocess.DEVNULL, cwd=ctx.workdir, start_new_session=True)
                 for _ in range(8)]
        ctx.children.extend(procs)
        pids.extend(p.pid for p in procs)
        outs = []
        for proc in procs:
            try:
                outs.append(proc.communicate(timeout=max(1, deadline - time.monotonic()))[0])
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                outs.append(proc.communicate()[0] + " (timed out)")
        data = counter.read_bytes()
        race["max"] = int.from_bytes(data[8:16], "little", signed=True)
        race["granted"] = sum(int(x) for o in outs for x in re.findall(r"granted=(\d+)", o))
        log.append("race: " + " | ".join(o.strip() for o in outs))
        if race["max"] > G4 or any(o.startswith("err") or "timed out" in o for o in outs) or not race["granted"]:
            problems.append(f"race: max held {gib(race['max'])} > 4 GiB or errors: {outs[:2]}")
        bind = subprocess.run(["bash", "-c", "echo ok"], env=dict(env, LD_BIND_NOW="1"),
                              capture_output=True, text=True, timeout=30)
        if bind.stdout.strip() != "ok":
            problems.append(f"LD_BIND_NOW=1 bash: {bind.stdout!r} {bind.stderr[-200:]!r}")
    except subprocess.TimeoutExpired:
        problems.append("timed out")
    finally:
        ctx.cleanup_regions(pids + [f"{os.getpid()}-gpucheck-race"])
        try:
            ctx.log_dir.mkdir(parents=True, exist_ok=True)
            (ctx.log_dir / f"{item}.log").write_text("\n".join(log) + "\n")
        except OSError:
            pass
    figs = {"limit": G4, "allocated": race.get("max"), "version": "tests/clients/flexai_client.c"}
    text = ("4 GiB slice: info/otherdev, mem pitch managed async pool vmm (1.5 GiB x3: ok ok oom), "
            f"array array3d (900 MiB x5), vmmhost (not counted), 8 racing processes: max held {gib(race.get('max'))}"
            f", {race.get('granted', 0)} of 800 granted; LD_BIND_NOW")
    if problems:
        return Outcome(item, "FAIL", "; ".join(problems), figs, [(item, "\n".join(log)[-3000:])],
                       time.monotonic() - t0)
    return Outcome(item, "PASS", text, figs, seconds=time.monotonic() - t0)


ITEMS = [
    ("a.default", "a", item_a("default", None)),
    ("a.expandable", "a", item_a("expandable", "expandable_segments:True")),
    ("a.async", "a", item_a("async", "backend:cudaMallocAsync")),
    ("b.graph", "b", item_b),
    ("c.jax-default", "c", item_c("jax-default", {})),
    ("c.jax-platform", "c", item_c("jax-platform", {"XLA_PYTHON_CLIENT_ALLOCATOR": "platform"})),
    ("d.cupy", "d", item_d),
    ("e.ggml-vmm", "e", item_e),
    ("f.share-30-70", "f", item_f),
    ("f2.closed-loop-30-70", "f2", item_f2),
    ("g.view", "g", item_g),
    ("h.driver-api", "h", item_h),
]
# Items that need a framework: skipped at once when it is missing (no subprocess start).
NEEDS = {"a": "torch", "c": "jax", "d": "cupy"}
SIMULATED_ITEMS = {"b", "e", "f", "f2", "g", "h"}  # run on the simulator with cuda-bindings and flexai-smi


# ---- setup: the library, the card -------------------------------------------------------------

def newest_source(root: Path) -> float:
    files = list(root.glob("*.c")) + list(root.glob("*.h")) + list((root / "sim").rglob("*.[ch]"))
    return max((p.stat().st_mtime for p in files), default=0.0)


def gcc_build(out_dir: Path, outputs: tuple[str, ...]) -> tuple[list[Path], str]:
    """Builds targets of flexai_hook/install/cbuild.py with the system C compiler (no setuptools)."""
    sys.path.insert(0, str(REPO))
    try:
        from flexai_hook.install import cbuild
        targets, cflags = cbuild.TARGETS, [f for f in cbuild.CFLAGS if f != "-Werror"]
    finally:
        sys.path.pop(0)
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not cc:
        raise RuntimeError("no C compiler (gcc/cc) to build libflexai")
    root = REPO / "libflexai"
    built = []
    for t in targets:
        if t.output not in outputs:
            continue
        out = out_dir / t.output
        out.parent.mkdir(parents=True, exist_ok=True)
        cmd = [cc, *cflags, f"-I{root}", f"-I{root / 'sim' / 'common'}",
               *(str(s) for s in t.sources(root)), "-o", str(out)]
        if t.soname:
            cmd[1:1] = ["-shared", f"-Wl,-soname,{t.soname}"]
        cmd += ["-Wl,-z,now", *(f"-l{lib}" for lib in t.libraries)]
        cp = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if cp.returncode != 0:
            raise RuntimeError(f"{' '.join(map(shlex.quote, cmd))[:300]}...\n{cp.stderr[-2000:]}")
        built.append(out)
    return built, cc


def find_library(ctx: Context) -> str | None:
    """The library to preload: --lib, else flexai_hook/lib's when newer than the sources, else
    built now into build/gpu-check/ with the system compiler. None (with a line) on failure."""
    args = ctx.args
    outputs = ["libflexai.so"] + (["sim/libcuda.so.1", "sim/libnvidia-ml.so.1", "bin/flexai-smi"]
                                  if ctx.simulated else [])
    lib_dir = REPO / "flexai_hook" / "lib"
    src = newest_source(REPO / "libflexai")
    if args.lib:
        ctx.lib, ctx.lib_note = str(Path(args.lib).resolve()), "given with --lib"
        if ctx.simulated:
            ctx.sim_libdir, smi = str(lib_dir / "sim"), lib_dir / "bin" / "flexai-smi"
            ctx.smi_cmd = [str(smi)] if smi.exists() else []
        return ctx.lib
    built_dir = REPO / "build" / "gpu-check" / "lib"

    def fresh(d: Path) -> bool:
        return all((d / o).exists() and (d / o).stat().st_mtime >= src for o in outputs)
    if fresh(lib_dir) and not args.rebuild:
        ctx.lib, ctx.lib_note = str(lib_dir / "libflexai.so"), "flexai_hook/lib, up to date with libflexai/"
        out_dir = lib_dir
    elif fresh(built_dir) and not args.rebuild:
        ctx.lib, ctx.lib_note = str(built_dir / "libflexai.so"), "build/gpu-check/lib, up to date with libflexai/"
        out_dir = built_dir
    else:
        out_dir = built_dir
        try:
            _, cc = gcc_build(out_dir, tuple(outputs))
        except Exception as exc:  # noqa: BLE001
            print(f"flexai gpu check: cannot build libflexai.so: {exc}", file=sys.stderr)
            return None
        ctx.lib = str(out_dir / "libflexai.so")
        ctx.lib_note = f"built now from libflexai/ with {cc} into build/gpu-check/lib"
    if ctx.simulated:
        ctx.sim_libdir = str(out_dir / "sim")
        ctx.smi_cmd = [str(out_dir / "bin" / "flexai-smi")]
    return ctx.lib


def find_driver() -> str | None:
    """A reason when there is no usable NVIDIA driver, else None. Never loads the driver here."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        found = any(glob.glob(p) for p in ("/usr/lib*/libcuda.so.1", "/usr/lib/*/libcuda.so.1",
                                           "/usr/local/nvidia/lib*/libcuda.so.1"))
        return ("no nvidia-smi on PATH" + ("" if found else " and no libcuda.so.1 in the usual places"))
    try:
        cp = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "nvidia-smi -L timed out"
    if cp.returncode != 0 or "GPU" not in cp.stdout:
        return f"nvidia-smi -L failed: {(cp.stdout + cp.stderr).strip().splitlines()[-1:] or cp.returncode}"
    return None


def setup_sim(ctx: Context) -> None:
    sys.path.insert(0, str(REPO))
    try:
        from flexai_hook.devices.simcards import SimCard, write_sim_dir
    finally:
        sys.path.pop(0)
    ctx.sim_dir = str(write_sim_dir(ctx.tmp / "sim", [SimCard(
        0, "GPU-f1e0a100-0000-4000-8000-00000000c0de", ctx.args.sim_memory * GiB,
        f"flexai simulated {ctx.args.sim_memory}GB")]))


def versions(python: str) -> dict:
    code = ("import importlib.metadata as m, json\nout={}\n"
            "for d in ('torch','jax','jaxlib','cupy','cupy-cuda12x','cupy-cuda13x','cuda-bindings','cuda-python'):\n"
            "    try: out[d]=m.version(d)\n    except Exception: pass\nprint(json.dumps(out))")
    try:
        cp = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=30)
        return json.loads(cp.stdout)
    except (subprocess.TimeoutExpired, json.JSONDecodeError, OSError):
        return {}


def git_rev() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "libflexai"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + (" (libflexai/ modified)" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return "?"


# ---- output ------------------------------------------------------------------------------------

def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if v < 10 else f"{v:.1f}"
    return str(v)


def figures_table(outcomes: list[Outcome]) -> list[str]:
    lines = ["| item | result | limit | framework held | slice charged (NVML in slice) | "
             "below limit | held per NVML outside | rates / share | time | version |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for o in outcomes:
        f = o.figures
        held = f.get("reserved") if f.get("reserved") is not None else f.get("allocated")
        rates = ""
        if "rate_30" in f:
            rates = f"30 %: {fmt(f.get('rate_30'))}/s, unlimited: {fmt(f.get('rate_unlimited'))}/s"
            if "rate_70" in f:
                rates += f", 70 %: {fmt(f.get('rate_70'))}/s"
            if "ratio" in f:
                rates += f"; ratio {100 * f['ratio']:.1f} %"
            if "share_30" in f:
                rates += f"; share {100 * f['share_30']:.1f} / {100 * (1 - f['share_30']):.1f}, busy {100 * f['busy']:.0f} %"
        if "bytes_limit" in f and f["bytes_limit"]:
            rates = f"JAX pool {gib(f['bytes_limit'])}"
        lines.append("| " + " | ".join([
            o.item, o.status, gib(f["limit"]) if "limit" in f else "",
            gib(held) if held is not None else "", gib(f["charged"]) if f.get("charged") is not None else "",
            mib(f["gap"]) if f.get("gap") is not None else "",
            (gib(f["held_nvml"]) + f" ({f.get('nvml_how')})") if f.get("held_nvml") is not None else "",
            rates, f"{o.seconds:.0f} s", str(f.get("version") or "")]) + " |")
    return lines


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python3 tests/gpu/check.py",
        description="libflexai on a real NVIDIA GPU with PyTorch, JAX, CuPy and cuda-bindings: a 30 % "
                    "slice, one PASS/FAIL/SKIP line per item and a figures table (issue 15).",
        epilog="Items: " + ", ".join(n for n, _, _ in ITEMS) + ". Exit status: 0 every item that ran "
               "passed, 1 an item failed, 2 no library, 3 no NVIDIA driver (try --simulated). "
               "See tests/gpu/README.md.")
    p.add_argument("--items", default="", help="comma-separated item names or letters (default: all)")
    p.add_argument("--simulated", action="store_true",
                   help="run against the project's simulated driver (no GPU): items b, e, f, g "
                        "with cuda-bindings and flexai-smi; a, c, d skip")
    p.add_argument("--lib", help="the libflexai.so to preload (default: flexai_hook/lib/libflexai.so "
                                 "when up to date, else built into build/gpu-check/lib)")
    p.add_argument("--rebuild", action="store_true", help="build the library even if flexai_hook/lib's is up to date")
    p.add_argument("--python", default=sys.executable,
                   help="interpreter with the frameworks, for the item processes (default: this one)")
    p.add_argument("--share", type=int, default=30, help="memory slice, percent of the card (default 30)")
    p.add_argument("--margin", type=int, default=64,
                   help="MiB below the limit a refusal may come and still pass (default 64)")
    p.add_argument("--share-tol", type=float, default=0.06,
                   help="tolerance of compute shares and ratios, absolute (default 0.06 = 6 points)")
    p.add_argument("--seconds", type=float, default=6.0, help="throughput window of b and f (default 6)")
    p.add_argument("--warm", type=float, default=2.0, help="f: seconds before the window (default 2)")
    p.add_argument("--jax-mem-fraction", default="",
                   help="c.jax-default: set XLA_PYTHON_CLIENT_MEM_FRACTION (default: unset, JAX's 0.75)")
    p.add_argument("--budget", type=float, default=470.0,
                   help="seconds for the whole run; items left when it is spent FAIL (default 470)")
    p.add_argument("--driver-api", choices=("auto", "ctypes"), default="auto",
                   help="e, g: cuda-bindings when installed (auto), or ctypes on libcuda.so.1")
    p.add_argument("--sim-memory", type=int, default=16, help="--simulated: the card's GiB (default 16)")
    p.add_argument("--log-dir", help="item logs (default build/gpu-check/logs)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def select(items_arg: str):
    if not items_arg:
        return ITEMS
    want = [w.strip() for w in items_arg.split(",") if w.strip()]
    chosen = [it for it in ITEMS if any(w == it[0] or w == it[1] for w in want)]
    unknown = [w for w in want if not any(w == it[0] or w == it[1] for it in ITEMS)]
    if unknown:
        raise SystemExit(f"unknown item(s): {', '.join(unknown)} (known: {', '.join(n for n, _, _ in ITEMS)})")
    return chosen


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args.child, args.spec or "{}")
    if args.probe:
        return probe_main()
    chosen = select(args.items)
    started = time.monotonic()
    if os.environ.get("LD_PRELOAD", "").find("libflexai") >= 0:
        print("flexai gpu check: run me without LD_PRELOAD; each item preloads libflexai itself", file=sys.stderr)
        return EXIT_SETUP
    if not args.simulated:
        why = find_driver()
        if why:
            print(f"NO-DRIVER: no NVIDIA driver found ({why}); nothing was run "
                  f"(exit {EXIT_NO_DRIVER}; --simulated runs the items the simulator can)")
            return EXIT_NO_DRIVER
    ctx = Context(args)
    ctx.deadline = started + args.budget
    outcomes: list[Outcome] = []
    try:
        if args.simulated:
            setup_sim(ctx)
        if not find_library(ctx):
            return EXIT_SETUP
        card = ctx.probe()
        if "total" not in card:
            print(f"NO-DRIVER: NVML outside the slice gave no card ({card.get('error', card)}) "
                  f"(exit {EXIT_NO_DRIVER})")
            return EXIT_NO_DRIVER
        ctx.card, ctx.total = card, card["total"]
        if not args.simulated:
            ctx.smi_cmd = [shutil.which("nvidia-smi") or "nvidia-smi", "--query-gpu=index,memory.total",
                           "--format=csv,noheader,nounits"]
        ctx.limit = ctx.total * args.share // 100 // MiB * MiB
        ctx.versions = versions(ctx.python)
        print(f"flexai GPU check (issue 15) {time.strftime('%Y-%m-%d %H:%M:%S')} on {platform.node()}"
              + ("  [SIMULATED DRIVER]" if args.simulated else ""))
        print(f"card 0: {card.get('name')} {card.get('uuid')}, {gib(ctx.total)} "
              f"({ctx.total // MiB} MiB), driver {card.get('driver')}, {card.get('count')} card(s), "
              f"{gib(card.get('used'))} used before")
        print(f"library: {ctx.lib} [{ctx.lib_note}]; checkout {git_rev()}")
        print(f"slice: memory {args.share} % = {gib(ctx.limit)} (FLEXAI_MEMORY={ctx.limit // MiB}MiB), "
              f"compute 30 % (b: hard, f: 30/70 work-conserving); refusal margin {args.margin} MiB; "
              f"share tolerance ±{100 * args.share_tol:.0f} points")
        if Path("/run/flexai/slice.conf").exists():
            print("WARNING: /run/flexai/slice.conf exists: libflexai will use that slice, not this "
                  "check's FLEXAI_* variables (run outside a flexai container)")
        print(f"python: {ctx.python}; " + (", ".join(f"{k} {v}" for k, v in ctx.versions.items())
                                             or "no framework found"))
        print("-" * 100, flush=True)
        for name, letter, fn in chosen:
            if time.monotonic() > ctx.deadline - 5:
                o = Outcome(name, "FAIL", f"not run: the {args.budget:.0f} s budget was spent")
            elif args.simulated and letter not in SIMULATED_ITEMS:
                o = Outcome(name, "SKIP", f"needs {NEEDS.get(letter, 'a real GPU')} on a real GPU "
                            "(not run with --simulated)")
            elif letter in NEEDS and not have_module(ctx.python, NEEDS[letter]):
                o = Outcome(name, "SKIP", f"{NEEDS[letter]} is not installed for {ctx.python}")
            else:
                try:
                    o = fn(ctx)
                except Exception as exc:  # noqa: BLE001 - one item's bug must not stop the rest
                    o = Outcome(name, "FAIL", f"the check itself failed: {type(exc).__name__}: {exc}")
            outcomes.append(o)
            print(f"{o.status} {o.item}: {o.text}", flush=True)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    finally:
        for proc in ctx.children:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        ctx.cleanup_regions([p.pid for p in ctx.children])
        shutil.rmtree(ctx.tmp, ignore_errors=True)
    print("-" * 100)
    for line in figures_table(outcomes):
        print(line)
    failed = [o for o in outcomes if o.status == "FAIL"]
    for o in failed:
        for label, tail in o.logs:
            if tail.strip():
                print(f"-- {label}: last lines (full log: {ctx.log_dir}/{label}.log)")
                print("\n".join("  | " + line for line in tail.splitlines()))
    counts = {s: sum(o.status == s for o in outcomes) for s in ("PASS", "FAIL", "SKIP")}
    code = EXIT_FAIL if failed or len(outcomes) < len(chosen) else EXIT_OK
    print(f"RESULT: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped of "
          f"{len(chosen)} in {time.monotonic() - started:.0f} s -> exit {code}"
          + ("  [SIMULATED DRIVER]" if args.simulated else ""))
    return code


if __name__ == "__main__":
    sys.exit(main())
