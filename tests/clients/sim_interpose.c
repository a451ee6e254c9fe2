/* Linked against libcuda.so.1 and run with sim_interpose_preload.so preloaded: a direct call
 * of cuMemAlloc_v2 binds to the preload library, while the pointer from cuGetProcAddress_v2
 * is the driver's internal entry point and bypasses it, as with NVIDIA's driver. */
#include <stdio.h>
#include "simcuda_types.h"

CUresult cuInit(unsigned int);
CUresult cuDevicePrimaryCtxRetain(CUcontext *, CUdevice);
CUresult cuCtxSetCurrent(CUcontext);
CUresult cuMemAlloc_v2(CUdeviceptr *, size_t);
CUresult cuMemFree_v2(CUdeviceptr);
CUresult cuGetProcAddress_v2(const char *, void **, int, cuuint64_t, CUdriverProcAddressQueryResult *);

int main(void)
{
    CUcontext ctx;
    CUdeviceptr p = 0;
    if (cuInit(0) || cuDevicePrimaryCtxRetain(&ctx, 0) || cuCtxSetCurrent(ctx))
        return 2;
    CUresult direct = cuMemAlloc_v2(&p, 1 << 20);
    CUresult (*fn)(CUdeviceptr *, size_t) = NULL;
    if (cuGetProcAddress_v2("cuMemAlloc", (void **)&fn, 13000, 0, NULL) || !fn)
        return 3;
    CUresult viaproc = fn(&p, 1 << 20);
    printf("direct=%d proc=%d\n", (int)direct, (int)viaproc);
    if (viaproc == CUDA_SUCCESS)
        cuMemFree_v2(p);
    return 0;
}
