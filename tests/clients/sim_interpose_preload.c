/* A preload library that interposes only the exported symbol cuMemAlloc_v2 (as a naive
 * interposer would): it refuses every allocation with CUDA_ERROR_NOT_PERMITTED. */
#include <stddef.h>
#include "simcuda_types.h"

CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize)
{
    (void)dptr;
    (void)bytesize;
    return CUDA_ERROR_NOT_PERMITTED;
}
