"""Stream-ordered pools keep what was freed (issue 15, path 2): a pool gives freed memory back
only at a synchronisation, and only what passes its release threshold (PyTorch's cudaMallocAsync
backend: UINT64_MAX), or at cuMemPoolTrimTo. The simulated driver models that; libflexai charges
each pool's reserve. Driven through NVIDIA's cuda-bindings, as a framework would call it."""

from __future__ import annotations

import json
import sys
import textwrap

from libflexai_support import Sim, libs, run  # noqa: F401  (fixture)
from sim_support import PRELUDE

MiB = 1 << 20

SCRIPT = PRELUDE + textwrap.dedent("""
    import json
    MiB = 1 << 20
    primary(0)
    s = ok(d.cuStreamCreate(0))
    A = d.CUmemPool_attribute
    pool = ok(d.cuDeviceGetMemPool(0))
    def free():
        return int(ok(d.cuMemGetInfo())[0])
    def reserved(p):
        return int(ok(d.cuMemPoolGetAttribute(p, A.CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT)))
    def threshold(p, n):
        ok(d.cuMemPoolSetAttribute(p, A.CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, d.cuuint64_t(n)))
    def try_alloc(n):
        r = d.cuMemAlloc(n)
        if int(r[0]) == 0:
            ok(d.cuMemFree(r[1]))
        return int(r[0])
    def alloc_free(n, p=None):
        q = ok(d.cuMemAllocFromPoolAsync(n, p, s)) if p else ok(d.cuMemAllocAsync(n, s))
        ok(d.cuMemFreeAsync(q, s))
    f0 = free()
    out = {}
    # default release threshold (0): what was freed goes back at the next synchronisation
    alloc_free(600 * MiB)
    out["t0_before_sync"] = [f0 - free(), reserved(pool)]
    ok(d.cuStreamSynchronize(s))
    out["t0_after_sync"] = [f0 - free(), reserved(pool)]
    out["t0_alloc_600"] = try_alloc(600 * MiB)
    # PyTorch's cudaMallocAsync backend: threshold UINT64_MAX, the pool keeps everything
    threshold(pool, (1 << 64) - 1)
    alloc_free(600 * MiB)
    ok(d.cuStreamSynchronize(s))
    out["torch_kept"] = [f0 - free(), reserved(pool)]
    out["torch_alloc_600"] = try_alloc(600 * MiB)
    alloc_free(500 * MiB)  # served from what the pool keeps
    ok(d.cuStreamSynchronize(s))
    out["torch_reuse"] = [f0 - free(), reserved(pool)]
    ok(d.cuMemPoolTrimTo(pool, 0))
    out["torch_trimmed"] = [f0 - free(), reserved(pool)]
    out["torch_alloc_600_after_trim"] = try_alloc(600 * MiB)
    threshold(pool, 0)
    # RMM: a pool of its own, primed by allocating and freeing its initial size
    props = d.CUmemPoolProps()
    props.allocType = d.CUmemAllocationType.CU_MEM_ALLOCATION_TYPE_PINNED
    props.location.type = d.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
    props.location.id = 0
    rmm = ok(d.cuMemPoolCreate(props))
    threshold(rmm, 800 * MiB)
    alloc_free(800 * MiB, rmm)
    ok(d.cuStreamSynchronize(s))
    out["rmm_primed"] = [f0 - free(), reserved(rmm)]
    out["rmm_alloc_400_beside"] = try_alloc(400 * MiB)
    r = d.cuMemAllocFromPoolAsync(700 * MiB, rmm, s)  # within the primed pool
    out["rmm_alloc_700_inside"] = int(r[0])
    if int(r[0]) == 0:
        ok(d.cuMemFreeAsync(r[1], s))
    ok(d.cuStreamSynchronize(s))
    ok(d.cuMemPoolDestroy(rmm))
    out["end"] = [f0 - free()]
    print(json.dumps(out))
""")


def run_script(tmp_path, libs, preload):  # noqa: F811
    sim = Sim(tmp_path / "sim")
    r = run([sys.executable, "-c", SCRIPT], sim.env(libs, preload=preload, memory="1GiB"))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_sim_pools_keep_freed_memory_up_to_their_threshold(libs, tmp_path):  # noqa: F811
    out = run_script(tmp_path, libs, preload=False)
    assert out["t0_before_sync"] == [600 * MiB, 600 * MiB]   # kept until a synchronisation
    assert out["t0_after_sync"] == [0, 0]
    assert out["torch_kept"] == [600 * MiB, 600 * MiB]
    assert out["torch_reuse"] == [600 * MiB, 600 * MiB]     # reused, not grown
    assert out["torch_trimmed"] == [0, 0]
    assert out["rmm_primed"] == [800 * MiB, 800 * MiB]
    assert out["rmm_alloc_700_inside"] == 0
    assert out["end"] == [0]


def test_slice_pays_for_what_pools_keep(libs, tmp_path):  # noqa: F811
    """A 1 GiB slice: memory a pool keeps is the slice's until the pool gives it back."""
    out = run_script(tmp_path, libs, preload=True)
    assert out["t0_after_sync"] == [0, 0]
    assert out["t0_alloc_600"] == 0
    assert out["torch_kept"] == [600 * MiB, 600 * MiB]
    assert out["torch_alloc_600"] == 2                      # CUDA_ERROR_OUT_OF_MEMORY
    assert out["torch_reuse"] == [600 * MiB, 600 * MiB]
    assert out["torch_trimmed"] == [0, 0]
    assert out["torch_alloc_600_after_trim"] == 0
    assert out["rmm_primed"] == [800 * MiB, 800 * MiB]
    assert out["rmm_alloc_400_beside"] == 2
    assert out["rmm_alloc_700_inside"] == 0
    assert out["end"] == [0]
