/* Prints the sizes and field offsets of the driver API structures and the values of some
 * constants, compiled once against NVIDIA's cuda.h (-DSIM_REAL_CUDA_H) and once against the
 * simulator's simcuda_types.h; the test compares the two outputs. */
#include <stddef.h>
#include <stdio.h>
#ifdef SIM_REAL_CUDA_H
#include <cuda.h>
#else
#include "simcuda_types.h"
#endif

#define SZ(t) printf("sizeof %s %zu\n", #t, sizeof(t))
#define OFF(t, f) printf("offsetof %s.%s %zu\n", #t, #f, offsetof(t, f))
#define VAL(c) printf("value %s %lld\n", #c, (long long)(c))

int main(void)
{
    SZ(CUuuid); SZ(CUdeviceptr); SZ(CUdevice);
    SZ(CUDA_ARRAY_DESCRIPTOR); OFF(CUDA_ARRAY_DESCRIPTOR, Format); OFF(CUDA_ARRAY_DESCRIPTOR, NumChannels);
    SZ(CUDA_ARRAY3D_DESCRIPTOR); OFF(CUDA_ARRAY3D_DESCRIPTOR, Format); OFF(CUDA_ARRAY3D_DESCRIPTOR, Flags);
    SZ(CUmemLocation); SZ(CUmemAllocationProp); OFF(CUmemAllocationProp, location);
    OFF(CUmemAllocationProp, win32HandleMetaData); OFF(CUmemAllocationProp, allocFlags);
    SZ(CUmemAccessDesc); OFF(CUmemAccessDesc, flags);
    SZ(CUmemPoolProps); OFF(CUmemPoolProps, location); OFF(CUmemPoolProps, maxSize); OFF(CUmemPoolProps, usage);
    SZ(CUDA_MEMCPY2D); OFF(CUDA_MEMCPY2D, dstXInBytes); OFF(CUDA_MEMCPY2D, WidthInBytes); OFF(CUDA_MEMCPY2D, Height);
    SZ(CUlaunchAttributeValue); SZ(CUlaunchAttribute); OFF(CUlaunchAttribute, value);
    SZ(CUlaunchConfig); OFF(CUlaunchConfig, hStream); OFF(CUlaunchConfig, attrs); OFF(CUlaunchConfig, numAttrs);
    SZ(CUexecAffinityParam); SZ(CUctxCreateParams); OFF(CUctxCreateParams, cigParams);
    SZ(CUDA_KERNEL_NODE_PARAMS); OFF(CUDA_KERNEL_NODE_PARAMS, kernelParams); OFF(CUDA_KERNEL_NODE_PARAMS, ctx);
    SZ(CUDA_GRAPH_INSTANTIATE_PARAMS); OFF(CUDA_GRAPH_INSTANTIATE_PARAMS, result_out);
    SZ(CUgraphEdgeData);
    SZ(CUDA_MEM_ALLOC_NODE_PARAMS); OFF(CUDA_MEM_ALLOC_NODE_PARAMS, bytesize);
    SZ(CUgraphNodeParams); OFF(CUgraphNodeParams, alloc); OFF(CUgraphNodeParams, alloc.bytesize);
    OFF(CUgraphNodeParams, free.dptr); OFF(CUgraphNodeParams, kernel.ctx);
    VAL(CUDA_VERSION); VAL(CUDA_SUCCESS); VAL(CUDA_ERROR_OUT_OF_MEMORY); VAL(CUDA_ERROR_NOT_INITIALIZED);
    VAL(CUDA_ERROR_NO_DEVICE); VAL(CUDA_ERROR_INVALID_CONTEXT); VAL(CUDA_ERROR_CONTEXT_IS_DESTROYED);
    VAL(CUDA_ERROR_NOT_FOUND); VAL(CUDA_ERROR_NOT_READY); VAL(CUDA_ERROR_INVALID_HANDLE);
    VAL(CUDA_ERROR_NOT_SUPPORTED); VAL(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED); VAL(CUDA_ERROR_ILLEGAL_STATE);
    VAL(CUDA_ERROR_UNKNOWN); VAL(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT);
    VAL(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR); VAL(CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED);
    VAL(CU_DEVICE_ATTRIBUTE_MAX); VAL(CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM);
    VAL(CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT); VAL(CU_MEM_LOCATION_TYPE_HOST_NUMA_CURRENT);
    VAL(CU_MEMPOOL_ATTR_USED_MEM_HIGH); VAL(CU_AD_FORMAT_FLOAT); VAL(CU_EVENT_DISABLE_TIMING);
    VAL(CU_POINTER_ATTRIBUTE_RANGE_SIZE); VAL(CU_STREAM_CAPTURE_MODE_RELAXED);
    return 0;
}
