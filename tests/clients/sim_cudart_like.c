/* Loads the driver the way libcudart does: dlopen("libcuda.so.1"), dlsym only
 * cuGetProcAddress_v2, and every further call through pointers it returns. Checks version
 * resolution, per-thread-default-stream variants and the symbolStatus out-parameter, then
 * runs a small workload. Prints "OK" and exits 0 when everything holds. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "simcuda_types.h"

typedef CUresult (*getproc_t)(const char *, void **, int, cuuint64_t, CUdriverProcAddressQueryResult *);

static getproc_t getproc;
static int failures;

#define CHECK(cond, ...) do { if (!(cond)) { failures++; fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
    fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); } } while (0)
#define CU(call) do { CUresult r_ = (call); if (r_ != CUDA_SUCCESS) { fprintf(stderr, "FAIL %s:%d: %s -> %d\n", \
    __FILE__, __LINE__, #call, (int)r_); exit(1); } } while (0)

static void *sym(const char *name, int version, cuuint64_t flags)
{
    void *p = NULL;
    CUdriverProcAddressQueryResult st = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    CUresult rc = getproc(name, &p, version, flags, &st);
    if (rc != CUDA_SUCCESS || !p || st != CU_GET_PROC_ADDRESS_SUCCESS) {
        fprintf(stderr, "FAIL: cuGetProcAddress_v2(%s, %d, %llu) -> %d status %d\n", name, version,
                (unsigned long long)flags, (int)rc, (int)st);
        exit(1);
    }
    return p;
}

int main(void)
{
    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "FAIL: dlopen: %s\n", dlerror());
        return 1;
    }
    getproc = (getproc_t)dlsym(h, "cuGetProcAddress_v2");
    CHECK(getproc != NULL, "no cuGetProcAddress_v2");
    if (!getproc)
        return 1;

    /* --- resolution rules */
    void *p = (void *)1;
    CUdriverProcAddressQueryResult st = CU_GET_PROC_ADDRESS_SUCCESS;
    CUresult rc = getproc("cuDoesNotExist", &p, 13000, 0, &st);
    CHECK(rc == CUDA_ERROR_NOT_FOUND && st == CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND && p == NULL,
          "unknown name: rc %d status %d", (int)rc, (int)st);
    rc = getproc("cuMemAlloc", &p, 2000, 0, &st);
    CHECK(rc == CUDA_ERROR_NOT_FOUND && st == CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT,
          "cuMemAlloc@2000: rc %d status %d", (int)rc, (int)st);
    rc = getproc("cuMemAlloc_v2", &p, 13000, 0, &st);
    CHECK(rc == CUDA_ERROR_NOT_FOUND, "versioned names are not looked up: rc %d", (int)rc);
    rc = getproc("cuMemAlloc", &p, 13000, 4, &st);
    CHECK(rc == CUDA_ERROR_INVALID_VALUE, "bad flags: rc %d", (int)rc);

    void *alloc = sym("cuMemAlloc", 3020, 0);
    CHECK(alloc == sym("cuMemAlloc", 13000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM),
          "cuMemAlloc has no per-thread variant");
    CHECK(alloc != dlsym(h, "cuMemAlloc_v2"), "proc address must be the internal entry point");
    void *launch_legacy = sym("cuLaunchKernel", 13000, CU_GET_PROC_ADDRESS_LEGACY_STREAM);
    void *launch_ptsz = sym("cuLaunchKernel", 13000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM);
    CHECK(launch_legacy != launch_ptsz, "cuLaunchKernel: per-thread variant expected");
    CHECK(launch_legacy == sym("cuLaunchKernel", 13000, CU_GET_PROC_ADDRESS_DEFAULT),
          "default flags mean the legacy stream");
    CHECK(sym("cuMemcpyHtoD", 13000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) !=
          sym("cuMemcpyHtoD", 13000, 0), "cuMemcpyHtoD: _ptds variant expected");
    CHECK(sym("cuMemcpyHtoD", 6050, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) ==
          sym("cuMemcpyHtoD", 6050, 0), "no _ptds variant before 7.0");
    CHECK(sym("cuCtxCreate", 3020, 0) != sym("cuCtxCreate", 13000, 0), "cuCtxCreate v2 vs v4");
    CHECK(sym("cuCtxCreate", 12050, 0) == sym("cuCtxCreate", 13000, 0), "cuCtxCreate v4 since 12.5");
    CHECK(sym("cuCtxCreate", 11040, 0) != sym("cuCtxCreate", 12050, 0), "cuCtxCreate v3 vs v4");
    CHECK(sym("cuGetProcAddress", 12000, 0) == (void *)getproc ||
          sym("cuGetProcAddress", 12000, 0) != NULL, "cuGetProcAddress resolves itself");
    CHECK(sym("cuEventElapsedTime", 12080, 0) != sym("cuEventElapsedTime", 2000, 0),
          "cuEventElapsedTime_v2 since 12.8");

    /* --- a workload, only through returned pointers */
    CUresult (*cuInit)(unsigned) = sym("cuInit", 2000, 0);
    CUresult (*cuDeviceGetCount)(int *) = sym("cuDeviceGetCount", 2000, 0);
    CUresult (*cuDeviceGet)(CUdevice *, int) = sym("cuDeviceGet", 2000, 0);
    CUresult (*cuDeviceTotalMem)(size_t *, CUdevice) = sym("cuDeviceTotalMem", 3020, 0);
    CUresult (*cuCtxCreate_v4)(CUcontext *, CUctxCreateParams *, unsigned, CUdevice) = sym("cuCtxCreate", 13000, 0);
    CUresult (*cuCtxCreate_v2)(CUcontext *, unsigned, CUdevice) = sym("cuCtxCreate", 3020, 0);
    CUresult (*cuCtxDestroy)(CUcontext) = sym("cuCtxDestroy", 4000, 0);
    CUresult (*cuCtxGetDevice_v2)(CUdevice *, CUcontext) = sym("cuCtxGetDevice", 13000, 0);
    CUresult (*cuCtxGetDevice)(CUdevice *) = sym("cuCtxGetDevice", 2000, 0);
    CUresult (*cuMemGetInfo)(size_t *, size_t *) = sym("cuMemGetInfo", 3020, 0);
    CUresult (*cuMemAlloc)(CUdeviceptr *, size_t) = alloc;
    CUresult (*cuMemFree)(CUdeviceptr) = sym("cuMemFree", 3020, 0);
    CUresult (*cuMemcpyHtoD)(CUdeviceptr, const void *, size_t) =
        sym("cuMemcpyHtoD", 13000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM);
    CUresult (*cuMemcpyDtoH)(void *, CUdeviceptr, size_t) = sym("cuMemcpyDtoH", 13000, 0);
    CUresult (*cuMemsetD32)(CUdeviceptr, unsigned, size_t) = sym("cuMemsetD32", 13000, 0);
    CUresult (*cuLibraryLoadData)(CUlibrary *, const void *, CUjit_option *, void **, unsigned,
                                  CUlibraryOption *, void **, unsigned) = sym("cuLibraryLoadData", 12000, 0);
    CUresult (*cuLibraryGetKernel)(CUkernel *, CUlibrary, const char *) = sym("cuLibraryGetKernel", 12000, 0);
    CUresult (*cuLaunchKernel)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                               unsigned, CUstream, void **, void **) = launch_ptsz;
    CUresult (*cuStreamSynchronize)(CUstream) =
        sym("cuStreamSynchronize", 13000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM);
    CUresult (*cuStreamQuery)(CUstream) = sym("cuStreamQuery", 13000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM);
    CUresult (*cuEventCreate)(CUevent *, unsigned) = sym("cuEventCreate", 2000, 0);
    CUresult (*cuEventRecord)(CUevent, CUstream) = sym("cuEventRecord", 13000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM);
    CUresult (*cuEventElapsedTime)(float *, CUevent, CUevent) = sym("cuEventElapsedTime", 13000, 0);
    CUresult (*cuGetErrorName)(CUresult, const char **) = sym("cuGetErrorName", 6000, 0);

    const char *name = NULL;
    CU(cuGetErrorName(CUDA_ERROR_OUT_OF_MEMORY, &name));
    CHECK(name && !strcmp(name, "CUDA_ERROR_OUT_OF_MEMORY"), "error name %s", name ? name : "(null)");
    int n = 0;
    CHECK(cuDeviceGetCount(&n) == CUDA_ERROR_NOT_INITIALIZED, "calls before cuInit fail");
    CU(cuInit(0));
    CU(cuDeviceGetCount(&n));
    CHECK(n == 2, "two cards, got %d", n);
    CUdevice dev;
    CU(cuDeviceGet(&dev, 1));
    size_t total = 0;
    CU(cuDeviceTotalMem(&total, dev));
    CHECK(total == (size_t)8 << 30, "card 1 total %zu", total);

    CUcontext c2, c4;
    CU(cuCtxCreate_v2(&c2, 0, 0));
    CU(cuCtxCreate_v4(&c4, NULL, 0, dev));
    CUdevice got = -1;
    CU(cuCtxGetDevice_v2(&got, c2));
    CHECK(got == 0, "cuCtxGetDevice_v2(c2) = %d", got);
    CU(cuCtxGetDevice(&got));
    CHECK(got == 1, "current context is the v4 one on card 1, got %d", got);

    size_t free0, tot0, free1, tot1;
    CU(cuMemGetInfo(&free0, &tot0));
    CUdeviceptr d;
    CU(cuMemAlloc(&d, 64 << 20));
    CU(cuMemGetInfo(&free1, &tot1));
    CHECK(free0 - free1 == (size_t)64 << 20, "alloc charged %zu", free0 - free1);
    static unsigned in[1024], out[1024];
    for (int i = 0; i < 1024; i++)
        in[i] = (unsigned)i * 2654435761u;
    CU(cuMemcpyHtoD(d + 4096, in, sizeof in));
    CU(cuMemcpyDtoH(out, d + 4096, sizeof out));
    CHECK(!memcmp(in, out, sizeof in), "copy round trip");
    CU(cuMemsetD32(d, 0xdeadbeef, 16));
    CU(cuMemcpyDtoH(out, d, 64));
    CHECK(out[0] == 0xdeadbeef && out[15] == 0xdeadbeef, "memset");
    CHECK(cuMemcpyDtoH(out, d + (64 << 20) - 8, 64) == CUDA_ERROR_INVALID_VALUE, "copy past the end");

    CUlibrary lib;
    CUkernel k;
    CU(cuLibraryLoadData(&lib, "image", NULL, NULL, 0, NULL, NULL, 0));
    CU(cuLibraryGetKernel(&k, lib, "flexai_sim_spin"));
    CUevent e0, e1;
    CU(cuEventCreate(&e0, 0));
    CU(cuEventCreate(&e1, 0));
    unsigned long long ns = 5000000; /* 5 ms per wave */
    void *params[] = {&ns};
    CU(cuEventRecord(e0, NULL));
    CU(cuLaunchKernel((CUfunction)k, 1, 1, 1, 32, 1, 1, 0, NULL, params, NULL));
    CU(cuLaunchKernel((CUfunction)k, 1, 1, 1, 32, 1, 1, 0, CU_STREAM_PER_THREAD, params, NULL));
    CU(cuEventRecord(e1, NULL));
    CHECK(cuStreamQuery(NULL) == CUDA_ERROR_NOT_READY, "work still queued");
    CU(cuStreamSynchronize(NULL));
    CHECK(cuStreamQuery(NULL) == CUDA_SUCCESS, "work done");
    float ms = 0;
    CU(cuEventElapsedTime(&ms, e0, e1));
    CHECK(ms >= 10.0f && ms < 10.5f, "two 5 ms kernels took %.3f simulated ms", ms);

    CU(cuMemFree(d));
    CU(cuCtxDestroy(c4));
    CU(cuCtxDestroy(c2));
    if (failures)
        return 1;
    printf("OK\n");
    return 0;
}
