"""The simulated libnvidia-ml.so.1, queried with nvidia-ml-py (pynvml) in client processes
while other processes use the simulated libcuda.so.1 on the same cards."""

from __future__ import annotations

import json
import os
import sys
import signal
import textwrap
import time

from sim_support import (CARDS, CONTEXT_BYTES, GiB, MiB, clients, sim_dir, sim_libs)  # noqa: F401

NVML = textwrap.dedent("""\
    import json, os, sys, time
    import pynvml as n
    def handle(i):
        return n.nvmlDeviceGetHandleByIndex(i)
""")


def nvml(clients, body: str, env=None) -> dict:
    result = clients.run([sys.executable, "-c", NVML + textwrap.dedent(body)], env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


HOLDER = """
    primary(int(sys.argv[1]))
    p = ok(d.cuMemAlloc(int(sys.argv[2])))
    say("holding", os.getpid())
    time.sleep(600)
"""


def test_devices_names_uuids_and_pci(clients):
    data = nvml(clients, """
        n.nvmlInit()
        out = {"count": n.nvmlDeviceGetCount(), "driver": n.nvmlSystemGetDriverVersion(),
               "cuda": n.nvmlSystemGetCudaDriverVersion_v2(), "cards": []}
        for i in range(out["count"]):
            h = handle(i)
            uuid = n.nvmlDeviceGetUUID(h)
            out["cards"].append({
                "name": n.nvmlDeviceGetName(h), "uuid": uuid, "index": n.nvmlDeviceGetIndex(h),
                "minor": n.nvmlDeviceGetMinorNumber(h),
                "by_uuid": n.nvmlDeviceGetIndex(n.nvmlDeviceGetHandleByUUID(uuid)),
                "bus": n.nvmlDeviceGetPciInfo(h).busId,
                "cc": list(n.nvmlDeviceGetCudaComputeCapability(h)),
            })
        try:
            handle(2)
        except n.NVMLError_InvalidArgument:
            out["bad_index"] = True
        try:
            n.nvmlDeviceGetHandleByUUID("GPU-nope")
        except n.NVMLError_NotFound:
            out["bad_uuid"] = True
        n.nvmlShutdown()
        try:
            n.nvmlDeviceGetCount()
        except n.NVMLError_Uninitialized:
            out["after_shutdown"] = True
        print(json.dumps(out))
    """)
    assert data["count"] == 2 and data["driver"] and data["cuda"] == 13000
    assert [c["name"] for c in data["cards"]] == [c.name for c in CARDS]
    assert [c["uuid"] for c in data["cards"]] == [c.uuid for c in CARDS]
    assert [(c["index"], c["minor"], c["by_uuid"]) for c in data["cards"]] == [(0, 0, 0), (1, 1, 1)]
    assert data["cards"][0]["bus"] != data["cards"][1]["bus"]
    assert data["cards"][0]["cc"] == [9, 0]
    assert data["bad_index"] and data["bad_uuid"] and data["after_shutdown"]


MEMORY = """
    n.nvmlInit()
    out = {}
    for i in range(2):
        m1 = n.nvmlDeviceGetMemoryInfo(handle(i))
        m2 = n.nvmlDeviceGetMemoryInfo(handle(i), version=n.nvmlMemory_v2)
        procs = n.nvmlDeviceGetComputeRunningProcesses(handle(i))
        procs2 = n.nvmlDeviceGetComputeRunningProcesses_v2(handle(i))
        out[i] = {"v1": [m1.total, m1.free, m1.used],
                  "v2": [m2.total, m2.reserved, m2.free, m2.used],
                  "procs": sorted([p.pid, p.usedGpuMemory] for p in procs),
                  "procs2": sorted([p.pid, p.usedGpuMemory] for p in procs2)}
    print(json.dumps(out))
"""


def test_memory_info_and_processes_follow_other_processes(clients):
    idle = nvml(clients, MEMORY)
    assert idle["0"]["v1"] == [16 * GiB, 16 * GiB, 0]
    assert idle["1"]["v2"] == [8 * GiB, 0, 8 * GiB, 0]
    assert idle["0"]["procs"] == idle["1"]["procs"] == []

    a = clients.python(HOLDER, 1, 2 * GiB)
    b = clients.python(HOLDER, 1, 1 * GiB)
    pid_a = int(clients.wait_line(a, "holding").split()[1])
    pid_b = int(clients.wait_line(b, "holding").split()[1])
    busy = nvml(clients, MEMORY)
    used = 3 * GiB + 2 * CONTEXT_BYTES
    assert busy["1"]["v1"] == [8 * GiB, 8 * GiB - used, used]
    assert busy["1"]["v2"] == [8 * GiB, 0, 8 * GiB - used, used]
    expected = sorted([[pid_a, 2 * GiB + CONTEXT_BYTES], [pid_b, 1 * GiB + CONTEXT_BYTES]])
    assert busy["1"]["procs"] == expected
    assert busy["1"]["procs2"] == expected
    assert busy["0"]["v1"] == [16 * GiB, 16 * GiB, 0] and busy["0"]["procs"] == []

    os.kill(a.pid, signal.SIGKILL)
    a.wait(timeout=30)
    after = nvml(clients, MEMORY)
    assert after["1"]["v1"][2] == 1 * GiB + CONTEXT_BYTES
    assert after["1"]["procs"] == [[pid_b, 1 * GiB + CONTEXT_BYTES]]


def test_memory_info_v2_checks_the_version(clients):
    data = nvml(clients, """
        import ctypes
        n.nvmlInit()
        m = n.c_nvmlMemory_v2_t()
        m.version = 1
        fn = n._nvmlGetFunctionPointer("nvmlDeviceGetMemoryInfo_v2")
        print(json.dumps({"rc": fn(handle(0), ctypes.byref(m)),
                          "v1_size": ctypes.sizeof(n.c_nvmlMemory_t),
                          "v2_version": n.nvmlMemory_v2}))
    """)
    assert data["rc"] == 25  # NVML_ERROR_ARGUMENT_VERSION_MISMATCH
    assert data["v2_version"] == (2 << 24) | 40


def test_utilization_follows_the_kernel_timeline(clients):
    # A process keeps card 0 busy with 10 ms kernels; NVML (1 s sample period) must report
    # the card busy while it runs and idle on card 1.
    runner = clients.python("""
        primary(0)
        f = spin_function()
        s = ok(d.cuStreamCreate(0))
        say("running")
        end = time.monotonic() + 60
        while time.monotonic() < end:
            spin(f, s, 10_000_000)
    """)
    clients.wait_line(runner, "running")
    data = nvml(clients, """
        n.nvmlInit()
        seen, deadline = [], time.monotonic() + 30
        while time.monotonic() < deadline:
            seen.append(n.nvmlDeviceGetUtilizationRates(handle(0)).gpu)
            if seen[-1] >= 90:
                break
            time.sleep(0.1)
        other = n.nvmlDeviceGetUtilizationRates(handle(1)).gpu
        print(json.dumps({"busy": seen[-1], "other": other}))
    """)
    assert data["busy"] >= 90
    assert data["other"] == 0
    os.kill(runner.pid, signal.SIGKILL)
    runner.wait(timeout=30)
    idle = nvml(clients, """
        n.nvmlInit()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            u = n.nvmlDeviceGetUtilizationRates(handle(0)).gpu
            if u == 0:
                break
            time.sleep(0.1)
        print(json.dumps({"util": u}))
    """)
    assert idle["util"] == 0


def test_missing_sim_dir_means_driver_not_loaded(clients, tmp_path):
    env = clients.env(FLEXAI_SIM_DIR=str(tmp_path / "absent"))
    data = nvml(clients, """
        out = {}
        try:
            n.nvmlInit()
        except n.NVMLError_DriverNotLoaded:
            out["init"] = "driver not loaded"
        try:
            n.nvmlDeviceGetCount()
        except n.NVMLError as e:
            out["count"] = e.value
        print(json.dumps(out))
    """, env=env)
    assert data == {"init": "driver not loaded", "count": 1}  # 1: NVML_ERROR_UNINITIALIZED


def test_loaded_by_dlopen_and_dlsym_in_c(clients, tmp_path):
    import shutil
    import subprocess
    gcc = shutil.which("gcc")
    if not gcc:
        import pytest
        pytest.skip("no gcc to build the C client")
    src = tmp_path / "nvml_client.c"
    src.write_text(textwrap.dedent("""\
        #include <dlfcn.h>
        #include <stdio.h>
        typedef struct { unsigned long long total, free, used; } mem_t;
        int main(void) {
            void *h = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
            if (!h) return 2;
            int (*init)(void) = (int (*)(void))dlsym(h, "nvmlInit_v2");
            int (*count)(unsigned *) = (int (*)(unsigned *))dlsym(h, "nvmlDeviceGetCount_v2");
            int (*get)(unsigned, void **) = (int (*)(unsigned, void **))dlsym(h, "nvmlDeviceGetHandleByIndex_v2");
            int (*meminfo)(void *, mem_t *) = (int (*)(void *, mem_t *))dlsym(h, "nvmlDeviceGetMemoryInfo");
            int (*shutdown)(void) = (int (*)(void))dlsym(h, "nvmlShutdown");
            unsigned n = 0; void *dev; mem_t m;
            if (init() || count(&n) || get(1, &dev) || meminfo(dev, &m) || shutdown()) return 3;
            printf("%u %llu\\n", n, m.total);
            return 0;
        }
    """))
    exe = tmp_path / "nvml_client"
    subprocess.run([gcc, "-Wall", "-Werror", str(src), "-o", str(exe), "-ldl"], check=True)
    result = clients.run([str(exe)])
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2", str(8 * GiB)]
