"""CUDA-graph memory (issue 15, path 3): allocation nodes, captured or added with
cuGraphAddMemAllocNode, take memory from the device's graph memory pool when the graph is
uploaded or first launched; the pool keeps it after the graph frees it or is destroyed, until
cuDeviceGraphMemTrim. The simulated driver models that; libflexai charges the pool's reserve to
the slice. Driven through NVIDIA's cuda-bindings, as a framework would call it."""

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
    A = d.CUgraphMem_attribute
    def free():
        return int(ok(d.cuMemGetInfo())[0])
    def reserved():
        return int(ok(d.cuDeviceGetGraphMemAttribute(0, A.CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT)))
    def used():
        return int(ok(d.cuDeviceGetGraphMemAttribute(0, A.CU_GRAPH_MEM_ATTR_USED_MEM_CURRENT)))
    def try_alloc(n):
        r = d.cuMemAlloc(n)
        if int(r[0]) == 0:
            ok(d.cuMemFree(r[1]))
        return int(r[0])
    out = {"free0": free()}
    # torch.cuda.graph-style: cudaMallocAsync / cudaFreeAsync captured into the graph
    ok(d.cuStreamBeginCapture(s, d.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_GLOBAL))
    p = ok(d.cuMemAllocAsync(768 * MiB, s))
    ok(d.cuMemFreeAsync(p, s))
    g = ok(d.cuStreamEndCapture(s))
    out["captured"] = [out["free0"] - free(), reserved()]
    ge = ok(d.cuGraphInstantiate(g, 0))
    for _ in range(3):
        ok(d.cuGraphLaunch(ge, s))
    ok(d.cuStreamSynchronize(s))
    out["launched"] = [out["free0"] - free(), reserved(), used()]
    out["alloc_512_while_held"] = try_alloc(512 * MiB)
    ok(d.cuGraphExecDestroy(ge))
    out["destroyed"] = [out["free0"] - free(), reserved(), used()]
    out["alloc_512_after_destroy"] = try_alloc(512 * MiB)
    ok(d.cuDeviceGraphMemTrim(0))
    out["trimmed"] = [out["free0"] - free(), reserved()]
    out["alloc_512_after_trim"] = try_alloc(512 * MiB)
    # cuGraphAddMemAllocNode: a graph whose memory is bigger than the slice
    g2 = ok(d.cuGraphCreate(0))
    prm = d.CUDA_MEM_ALLOC_NODE_PARAMS()
    prm.poolProps.allocType = d.CUmemAllocationType.CU_MEM_ALLOCATION_TYPE_PINNED
    prm.poolProps.location.type = d.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
    prm.poolProps.location.id = 0
    prm.bytesize = 1536 * MiB
    ok(d.cuGraphAddMemAllocNode(g2, None, 0, prm))
    ge2 = ok(d.cuGraphInstantiate(g2, 0))
    out["launch_1536"] = int(d.cuGraphLaunch(ge2, s)[0])
    ok(d.cuStreamSynchronize(s))
    out["after_1536"] = [out["free0"] - free(), reserved()]
    ok(d.cuGraphExecDestroy(ge2))
    ok(d.cuDeviceGraphMemTrim(0))
    out["end"] = [out["free0"] - free(), reserved()]
    print(json.dumps(out))
""")


def run_script(sim, libs, preload):  # noqa: F811
    r = run([sys.executable, "-c", SCRIPT], sim.env(libs, preload=preload, memory="1GiB"))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_sim_graph_pool_reserves_at_launch_and_keeps_until_trim(libs, tmp_path):  # noqa: F811
    out = run_script(Sim(tmp_path / "sim"), libs, preload=False)
    assert out["captured"] == [0, 0]                       # nothing until the graph runs
    assert out["launched"] == [768 * MiB, 768 * MiB, 768 * MiB]
    assert out["destroyed"] == [768 * MiB, 768 * MiB, 0]   # unused, still reserved
    assert out["trimmed"] == [0, 0]
    assert out["launch_1536"] == 0 and out["after_1536"] == [1536 * MiB, 1536 * MiB]
    assert out["end"] == [0, 0]


def test_slice_pays_for_the_graph_pool(libs, tmp_path):  # noqa: F811
    """A 1 GiB slice: a graph's 768 MiB is charged from its first launch until trimmed, and a
    1.5 GiB graph is refused before it runs."""
    out = run_script(Sim(tmp_path / "sim"), libs, preload=True)
    assert out["captured"] == [0, 0]
    assert out["launched"][:2] == [768 * MiB, 768 * MiB]
    assert out["alloc_512_while_held"] == 2                # CUDA_ERROR_OUT_OF_MEMORY
    assert out["destroyed"][:2] == [768 * MiB, 768 * MiB]
    assert out["alloc_512_after_destroy"] == 2
    assert out["trimmed"] == [0, 0]
    assert out["alloc_512_after_trim"] == 0
    assert out["launch_1536"] == 2
    assert out["after_1536"] == [0, 0]                     # refused before the driver mapped it
    assert out["end"] == [0, 0]


# Graphs whose allocation nodes come by the other roads: the generic cuGraphAddNode, the CUDA
# 11.0 cuGraphInstantiate_v2 (what cuGetProcAddress hands out for cudaVersion < 12000), and
# CUDA_GRAPH_INSTANTIATE_FLAG_UPLOAD, which maps the memory inside the instantiate call.
OTHER_ROADS = PRELUDE + textwrap.dedent("""
    import json
    MiB = 1 << 20
    primary(0)
    s = ok(d.cuStreamCreate(0))
    A = d.CUgraphMem_attribute
    def reserved():
        return int(ok(d.cuDeviceGetGraphMemAttribute(0, A.CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT)))
    def alloc_graph(generic, size):
        g = ok(d.cuGraphCreate(0))
        p = d.CUgraphNodeParams() if generic else None
        a = p.alloc if generic else d.CUDA_MEM_ALLOC_NODE_PARAMS()
        a.poolProps.allocType = d.CUmemAllocationType.CU_MEM_ALLOCATION_TYPE_PINNED
        a.poolProps.location.type = d.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
        a.poolProps.location.id = 0
        a.bytesize = size
        if generic == "v1":  # the CUDA 12.2 form, without edge data
            p.type = d.CUgraphNodeType.CU_GRAPH_NODE_TYPE_MEM_ALLOC
            pfn = ok(d.cuGetProcAddress(b"cuGraphAddNode", 12020, 0))[0]
            add_v1 = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                      ctypes.c_size_t, ctypes.c_void_p)(int(pfn))
            node = ctypes.c_void_p()
            assert add_v1(ctypes.byref(node), int(g), None, 0, p.getPtr()) == 0
        elif generic:
            p.type = d.CUgraphNodeType.CU_GRAPH_NODE_TYPE_MEM_ALLOC
            ok(d.cuGraphAddNode(g, None, None, 0, p))
        else:
            ok(d.cuGraphAddMemAllocNode(g, None, 0, a))
        return g
    def done(e):
        if e is not None:
            ok(d.cuGraphExecDestroy(e))
        ok(d.cuDeviceGraphMemTrim(0))
    size = int(sys.argv[1]) * MiB
    out = {}
    e = ok(d.cuGraphInstantiate(alloc_graph(True, size), 0))
    out["addnode_upload"] = [int(d.cuGraphUpload(e, s)[0]), reserved()]
    done(e)
    e = ok(d.cuGraphInstantiate(alloc_graph("v1", size), 0))
    out["addnode_v1_upload"] = [int(d.cuGraphUpload(e, s)[0]), reserved()]
    done(e)
    pfn = ok(d.cuGetProcAddress(b"cuGraphInstantiate", 11000, 0))[0]
    inst_v2 = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                               ctypes.c_char_p, ctypes.c_size_t)(int(pfn))
    h = ctypes.c_void_p()
    rc = inst_v2(ctypes.byref(h), int(alloc_graph(False, size)), None, None, 0)
    e = d.CUgraphExec(h.value)
    out["v2_launch"] = [rc, int(d.cuGraphLaunch(e, s)[0]), reserved()]
    ok(d.cuStreamSynchronize(s))
    done(e)
    prm = d.CUDA_GRAPH_INSTANTIATE_PARAMS()
    prm.flags = int(d.CUgraphInstantiate_flags.CUDA_GRAPH_INSTANTIATE_FLAG_UPLOAD)
    prm.hUploadStream = s
    r = d.cuGraphInstantiateWithParams(alloc_graph(True, size), prm)
    out["upload_flag"] = [int(r[0]), reserved()]
    done(r[1] if int(r[0]) == 0 else None)
    print(json.dumps(out))
""")


def run_other_roads(sim, libs, preload, size_mib):  # noqa: F811
    r = run([sys.executable, "-c", OTHER_ROADS, str(size_mib)],
            sim.env(libs, preload=preload, memory="1GiB"))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_sim_graph_memory_by_the_other_roads(libs, tmp_path):  # noqa: F811
    out = run_other_roads(Sim(tmp_path / "sim"), libs, False, 1536)
    assert out == {"addnode_upload": [0, 1536 * MiB], "addnode_v1_upload": [0, 1536 * MiB],
                   "v2_launch": [0, 0, 1536 * MiB], "upload_flag": [0, 1536 * MiB]}


def test_graph_memory_by_the_other_roads_is_refused_before_it_is_mapped(libs, tmp_path):  # noqa: F811
    out = run_other_roads(Sim(tmp_path / "sim"), libs, True, 1536)
    assert out["addnode_upload"] == [2, 0], "cuGraphAddNode's allocation node was mapped past the slice"
    assert out["addnode_v1_upload"] == [2, 0], "cuGraphAddNode (12.2)'s node was mapped past the slice"
    assert out["v2_launch"] == [0, 2, 0], "an exec of cuGraphInstantiate_v2 was mapped past the slice"
    assert out["upload_flag"] == [2, 0], "CUDA_GRAPH_INSTANTIATE_FLAG_UPLOAD mapped memory past the slice"


def test_graph_memory_by_the_other_roads_within_the_slice(libs, tmp_path):  # noqa: F811
    out = run_other_roads(Sim(tmp_path / "sim"), libs, True, 512)
    assert out == {"addnode_upload": [0, 512 * MiB], "addnode_v1_upload": [0, 512 * MiB],
                   "v2_launch": [0, 0, 512 * MiB], "upload_flag": [0, 512 * MiB]}
