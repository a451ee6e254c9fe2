/* flexai-smi: what a program in this container sees of its accelerator, through the same
 * driver calls CUDA programs and nvidia-smi make (the CUDA driver API and NVML, loaded with
 * dlopen like libcudart and pynvml do). Inside a sliced container, libflexai answers them:
 * the slice's card only, its memory limit as the total, and a refusal past it.
 *
 *   flexai-smi                 the devices, their memory (CUDA and NVML views)
 *   flexai-smi --alloc SIZE    also allocate SIZE (e.g. 6GiB) in 512 MiB steps and report
 *                              where the driver refuses, then free it all
 * Exit status: 0, or 2 for bad usage, 3 when no driver can be loaded. */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;
typedef int CUdevice;
typedef void *CUcontext;
typedef unsigned long long CUdeviceptr;
typedef int nvmlReturn_t;
typedef void *nvmlDevice_t;
typedef struct { unsigned long long total, free, used; } nvmlMemory_t;

#define STEP (512ull << 20)
#define MAX_CHUNKS 4096

static void *lib_cuda, *lib_nvml;

static void *sym(void *lib, const char *name)
{
    void *p = lib ? dlsym(lib, name) : NULL;
    if (!p) {
        fprintf(stderr, "flexai-smi: the driver has no %s\n", name);
        exit(3);
    }
    return p;
}
#define CU(name, ...) ((CUresult(*)())sym(lib_cuda, #name))(__VA_ARGS__)
#define NV(name, ...) ((nvmlReturn_t(*)())sym(lib_nvml, #name))(__VA_ARGS__)

static double gib(unsigned long long b) { return (double)b / (1ull << 30); }

static const char *cu_error(CUresult rc)
{
    const char *name = "unknown error";
    void *f = dlsym(lib_cuda, "cuGetErrorName");
    if (f)
        ((CUresult(*)(CUresult, const char **))f)(rc, &name);
    return name;
}

static unsigned long long parse_size(const char *s)
{
    char *end;
    double v = strtod(s, &end);
    unsigned long long unit = 1;
    if (!strcmp(end, "GiB") || !strcmp(end, "G")) unit = 1ull << 30;
    else if (!strcmp(end, "MiB") || !strcmp(end, "M")) unit = 1ull << 20;
    else if (*end) return 0;
    return v > 0 ? (unsigned long long)(v * (double)unit) : 0;
}

static int cuda_view(unsigned long long alloc)
{
    int count = 0, version = 0;
    CUresult rc = CU(cuInit, 0u);
    if (rc) {
        printf("CUDA: cuInit failed: %s\n", cu_error(rc));
        return 1;
    }
    CU(cuDriverGetVersion, &version);
    CU(cuDeviceGetCount, &count);
    printf("CUDA driver API (driver %d.%d): %d device(s)\n", version / 1000, version % 1000 / 10, count);
    for (int i = 0; i < count; i++) {
        CUdevice dev;
        char name[256] = "";
        unsigned char uuid[16];
        size_t total = 0, free_ = 0, devtotal = 0;
        CUcontext ctx;
        CU(cuDeviceGet, &dev, i);
        CU(cuDeviceGetName, name, (int)sizeof name, dev);
        CU(cuDeviceGetUuid, uuid, dev);
        CU(cuDeviceTotalMem_v2, &devtotal, dev);
        CU(cuDevicePrimaryCtxRetain, &ctx, dev);
        CU(cuCtxSetCurrent, ctx);
        CU(cuMemGetInfo_v2, &free_, &total);
        printf("  %d  %-28s GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x\n"
               "     total %.2f GiB, free %.2f GiB (cuMemGetInfo); cuDeviceTotalMem %.2f GiB\n",
               i, name, uuid[0], uuid[1], uuid[2], uuid[3], uuid[4], uuid[5], uuid[6], uuid[7], uuid[8],
               uuid[9], uuid[10], uuid[11], uuid[12], uuid[13], uuid[14], uuid[15], gib(total), gib(free_),
               gib(devtotal));
        if (alloc && i == 0) {
            static CUdeviceptr chunks[MAX_CHUNKS];
            unsigned long long got = 0;
            int n = 0;
            printf("     allocating %.2f GiB in %.1f GiB steps:", gib(alloc), gib(STEP));
            while (got < alloc && n < MAX_CHUNKS) {
                unsigned long long want = alloc - got < STEP ? alloc - got : STEP;
                rc = CU(cuMemAlloc_v2, &chunks[n], (size_t)want);
                if (rc) {
                    printf(" refused after %.2f GiB: %s\n", gib(got), cu_error(rc));
                    break;
                }
                got += want;
                n++;
            }
            if (!rc)
                printf(" all %.2f GiB granted\n", gib(got));
            while (n > 0)
                CU(cuMemFree_v2, chunks[--n]);
        }
    }
    return 0;
}

static int nvml_view(void)
{
    unsigned count = 0;
    nvmlReturn_t rc = NV(nvmlInit_v2);
    if (rc) {
        printf("NVML: nvmlInit failed (%d)\n", rc);
        return 1;
    }
    NV(nvmlDeviceGetCount_v2, &count);
    printf("NVML: %u device(s)\n", count);
    for (unsigned i = 0; i < count; i++) {
        nvmlDevice_t dev;
        nvmlMemory_t mem;
        char name[96] = "", uuid[96] = "";
        NV(nvmlDeviceGetHandleByIndex_v2, i, &dev);
        NV(nvmlDeviceGetName, dev, name, (unsigned)sizeof name);
        NV(nvmlDeviceGetUUID, dev, uuid, (unsigned)sizeof uuid);
        NV(nvmlDeviceGetMemoryInfo, dev, &mem);
        printf("  %u  %-28s %s\n     total %.2f GiB, used %.2f GiB (nvmlDeviceGetMemoryInfo)\n", i, name,
               uuid, gib(mem.total), gib(mem.used));
    }
    NV(nvmlShutdown);
    return 0;
}

int main(int argc, char **argv)
{
    unsigned long long alloc = 0;
    if (argc == 3 && !strcmp(argv[1], "--alloc") && (alloc = parse_size(argv[2])) == 0) {
        fprintf(stderr, "flexai-smi: --alloc wants a size like 6GiB or 512MiB, not %s\n", argv[2]);
        return 2;
    }
    if (argc != 1 && !(argc == 3 && alloc)) {
        fprintf(stderr, "usage: flexai-smi [--alloc SIZE]\n"
                        "Shows the accelerator this process sees through the CUDA driver API and NVML;\n"
                        "with --alloc, allocates SIZE in 512 MiB steps and reports where it is refused.\n");
        return argc == 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) ? 0 : 2;
    }
    lib_cuda = dlopen("libcuda.so.1", RTLD_NOW);
    lib_nvml = dlopen("libnvidia-ml.so.1", RTLD_NOW);
    if (!lib_cuda && !lib_nvml) {
        fprintf(stderr, "flexai-smi: no NVIDIA driver library (libcuda.so.1, libnvidia-ml.so.1) can be loaded: %s\n",
                dlerror());
        return 3;
    }
    int bad = 0;
    if (lib_cuda)
        bad |= cuda_view(alloc);
    if (lib_nvml)
        bad |= nvml_view();
    return bad;
}
