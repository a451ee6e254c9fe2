/* libflexai internals shared by its source files: the driver ABI subset it intercepts,
 * the per-process state and the functions one concern offers the others.
 *
 * The vendor headers are not needed to build: the few CUDA driver and NVML types used here
 * are declared below exactly as the public headers (cuda.h of CUDA 13, nvml.h) define
 * their ABI. Every exported function is an intercepted driver entry point with the real
 * signature; everything else is hidden.
 */
#ifndef FLEXAI_H
#define FLEXAI_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "flexai_region.h"

#define FLEXAI_EXPORT __attribute__((visibility("default")))
#define FLEXAI_HIDDEN __attribute__((visibility("hidden")))
#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

/* ---- CUDA driver ABI (cuda.h) -------------------------------------------------------- */
typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef unsigned int CUdeviceptr_v1;
typedef struct CUctx_st *CUcontext;
typedef struct CUstream_st *CUstream;
typedef struct CUfunc_st *CUfunction;
typedef struct CUarray_st *CUarray;
typedef struct CUmipmappedArray_st *CUmipmappedArray;
typedef struct CUmemPoolHandle_st *CUmemoryPool;
typedef struct CUgraphExec_st *CUgraphExec;
typedef unsigned long long CUmemGenericAllocationHandle;
typedef unsigned long long cuuint64_t;
typedef struct { char bytes[16]; } CUuuid;
typedef struct CUexecAffinityParam_st CUexecAffinityParam;
typedef struct CUctxCreateParams_st CUctxCreateParams;
typedef struct CUlaunchAttribute_st CUlaunchAttribute;

typedef struct {
    unsigned int gridDimX, gridDimY, gridDimZ;
    unsigned int blockDimX, blockDimY, blockDimZ;
    unsigned int sharedMemBytes;
    CUstream hStream;
    CUlaunchAttribute *attrs;
    unsigned int numAttrs;
} CUlaunchConfig;

typedef struct {
    size_t Width;
    size_t Height;
    int Format;               /* CUarray_format */
    unsigned int NumChannels;
} CUDA_ARRAY_DESCRIPTOR;

typedef struct {
    size_t Width;
    size_t Height;
    size_t Depth;
    int Format;
    unsigned int NumChannels;
    unsigned int Flags;
} CUDA_ARRAY3D_DESCRIPTOR;

/* The CUDA 2.x (_v1) descriptors: 32-bit sizes. */
typedef struct {
    unsigned int Width;
    unsigned int Height;
    int Format;
    unsigned int NumChannels;
} CUDA_ARRAY_DESCRIPTOR_v1;

typedef struct {
    unsigned int Width;
    unsigned int Height;
    unsigned int Depth;
    int Format;
    unsigned int NumChannels;
    unsigned int Flags;
} CUDA_ARRAY3D_DESCRIPTOR_v1;

typedef struct {
    int type;                 /* CUmemLocationType */
    int id;
} CUmemLocation;

typedef struct {
    int type;                 /* CUmemAllocationType */
    int requestedHandleTypes;
    CUmemLocation location;
    void *win32HandleMetaData;
    struct {
        unsigned char compressionType;
        unsigned char gpuDirectRDMACapable;
        unsigned short usage;
        unsigned char reserved[4];
    } allocFlags;
} CUmemAllocationProp;

#define CUDA_SUCCESS 0
#define CUDA_ERROR_INVALID_VALUE 1
#define CUDA_ERROR_OUT_OF_MEMORY 2
#define CUDA_ERROR_NOT_INITIALIZED 3
#define CUDA_ERROR_NO_DEVICE 100
#define CUDA_ERROR_INVALID_DEVICE 101
#define CUDA_ERROR_NOT_FOUND 500

#define CU_MEM_LOCATION_TYPE_DEVICE 1
#define CU_GET_PROC_ADDRESS_DEFAULT 0
#define CU_GET_PROC_ADDRESS_LEGACY_STREAM 1
#define CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM 2
#define CU_GET_PROC_ADDRESS_SUCCESS 0
#define CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND 1
#define CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT 2
typedef int CUdriverProcAddressQueryResult;

/* ---- NVML ABI (nvml.h) --------------------------------------------------------------- */
typedef int nvmlReturn_t;
typedef struct nvmlDevice_st *nvmlDevice_t;

typedef struct {
    unsigned long long total;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_t;

typedef struct {
    unsigned int version;
    unsigned long long total;
    unsigned long long reserved;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_v2_t;

typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
} nvmlProcessInfo_v1_t;

typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlProcessInfo_v2_t;

#define NVML_SUCCESS 0
#define NVML_ERROR_UNINITIALIZED 1
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_NOT_FOUND 6
#define NVML_ERROR_INSUFFICIENT_SIZE 7
#define NVML_ERROR_LIBRARY_NOT_FOUND 12
#define NVML_VALUE_NOT_AVAILABLE_UINT 0xFFFFFFFFu

/* ---- the intercepted entry points ------------------------------------------------------
 * X(name, library): every function libflexai exports and hands out from dlsym and
 * cuGetProcAddress. Each variant (_v2, _ptsz, ...) has its own wrapper and its own real
 * pointer, because variants differ in signature or stream semantics. */
#define FLEXAI_LIB_CUDA 0
#define FLEXAI_LIB_NVML 1

#define FLEXAI_SYMBOLS(X)                                                                    \
    X(cuGetProcAddress, CUDA) X(cuGetProcAddress_v2, CUDA)                                   \
    X(cuDeviceGetCount, CUDA) X(cuDeviceGet, CUDA) X(cuDeviceGetByPCIBusId, CUDA)            \
    X(cuDeviceTotalMem, CUDA) X(cuDeviceTotalMem_v2, CUDA)                                   \
    X(cuMemGetInfo, CUDA) X(cuMemGetInfo_v2, CUDA)                                           \
    X(cuDevicePrimaryCtxRetain, CUDA)                                                        \
    X(cuCtxCreate, CUDA) X(cuCtxCreate_v2, CUDA) X(cuCtxCreate_v3, CUDA) X(cuCtxCreate_v4, CUDA) \
    X(cuCtxSetCurrent, CUDA) X(cuCtxPushCurrent_v2, CUDA) X(cuCtxPopCurrent_v2, CUDA)        \
    X(cuCtxSetLimit, CUDA) X(cuGreenCtxCreate, CUDA)                                         \
    X(cuModuleLoad, CUDA) X(cuModuleLoadData, CUDA) X(cuModuleLoadDataEx, CUDA)              \
    X(cuModuleLoadFatBinary, CUDA) X(cuModuleUnload, CUDA)                                   \
    X(cuLibraryLoadData, CUDA) X(cuLibraryLoadFromFile, CUDA) X(cuLibraryUnload, CUDA)       \
    X(cuMemAlloc, CUDA) X(cuMemAlloc_v2, CUDA)                                               \
    X(cuMemAllocPitch, CUDA) X(cuMemAllocPitch_v2, CUDA)                                     \
    X(cuMemFree, CUDA) X(cuMemFree_v2, CUDA)                                                 \
    X(cuMemAllocManaged, CUDA)                                                               \
    X(cuMemAllocAsync, CUDA) X(cuMemAllocAsync_ptsz, CUDA)                                   \
    X(cuMemAllocFromPoolAsync, CUDA) X(cuMemAllocFromPoolAsync_ptsz, CUDA)                   \
    X(cuMemFreeAsync, CUDA) X(cuMemFreeAsync_ptsz, CUDA)                                     \
    X(cuMemCreate, CUDA) X(cuMemRelease, CUDA)                                               \
    X(cuMemMap, CUDA) X(cuMemUnmap, CUDA) X(cuMemRetainAllocationHandle, CUDA)               \
    X(cuMemImportFromShareableHandle, CUDA) X(cuMemPoolImportPointer, CUDA)                  \
    X(cuIpcOpenMemHandle, CUDA) X(cuIpcOpenMemHandle_v2, CUDA) X(cuIpcCloseMemHandle, CUDA)  \
    X(cuArrayCreate, CUDA) X(cuArrayCreate_v2, CUDA)                                         \
    X(cuArray3DCreate, CUDA) X(cuArray3DCreate_v2, CUDA)                                     \
    X(cuArrayDestroy, CUDA)                                                                  \
    X(cuMipmappedArrayCreate, CUDA) X(cuMipmappedArrayDestroy, CUDA)                         \
    X(cuLaunchKernel, CUDA) X(cuLaunchKernel_ptsz, CUDA)                                     \
    X(cuLaunchKernelEx, CUDA) X(cuLaunchKernelEx_ptsz, CUDA)                                 \
    X(cuLaunchCooperativeKernel, CUDA) X(cuLaunchCooperativeKernel_ptsz, CUDA)               \
    X(cuGraphLaunch, CUDA) X(cuGraphLaunch_ptsz, CUDA)                                       \
    X(cuStreamBeginCapture_v2, CUDA) X(cuStreamBeginCapture_v2_ptsz, CUDA)                   \
    X(cuStreamBeginCaptureToGraph, CUDA) X(cuStreamBeginCaptureToGraph_ptsz, CUDA)           \
    X(cuStreamEndCapture, CUDA) X(cuStreamEndCapture_ptsz, CUDA)                             \
    X(cuGraphAddMemAllocNode, CUDA) X(cuGraphUpload, CUDA) X(cuGraphUpload_ptsz, CUDA)       \
    X(cuGraphExecDestroy, CUDA) X(cuDeviceGraphMemTrim, CUDA) X(cuGraphDestroy, CUDA)        \
    X(cuGraphInstantiateWithFlags, CUDA) X(cuGraphInstantiateWithParams, CUDA)               \
    X(cuGraphInstantiateWithParams_ptsz, CUDA) X(cuGraphInstantiate_v2, CUDA)                \
    X(cuGraphAddNode, CUDA) X(cuGraphAddNode_v2, CUDA)                                       \
    X(cuMemPoolTrimTo, CUDA) X(cuMemPoolSetAttribute, CUDA) X(cuMemPoolDestroy, CUDA)        \
    X(nvmlDeviceGetCount, NVML) X(nvmlDeviceGetCount_v2, NVML)                               \
    X(nvmlDeviceGetHandleByIndex, NVML) X(nvmlDeviceGetHandleByIndex_v2, NVML)               \
    X(nvmlDeviceGetHandleByUUID, NVML)                                                       \
    X(nvmlDeviceGetHandleByPciBusId, NVML) X(nvmlDeviceGetHandleByPciBusId_v2, NVML)         \
    X(nvmlDeviceGetIndex, NVML)                                                              \
    X(nvmlDeviceGetMemoryInfo, NVML) X(nvmlDeviceGetMemoryInfo_v2, NVML)                     \
    X(nvmlDeviceGetComputeRunningProcesses, NVML)                                            \
    X(nvmlDeviceGetComputeRunningProcesses_v2, NVML)                                         \
    X(nvmlDeviceGetComputeRunningProcesses_v3, NVML)

enum flexai_sym {
#define FLEXAI_ENUM(name, lib) FX_##name,
    FLEXAI_SYMBOLS(FLEXAI_ENUM)
#undef FLEXAI_ENUM
    FX_COUNT
};

/* Prototypes of the wrappers (the real signatures). */
CUresult cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags);
CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags,
                             CUdriverProcAddressQueryResult *symbolStatus);
CUresult cuDeviceGetCount(int *count);
CUresult cuDeviceGet(CUdevice *device, int ordinal);
CUresult cuDeviceGetByPCIBusId(CUdevice *dev, const char *pciBusId);
CUresult cuDeviceTotalMem(unsigned int *bytes, CUdevice dev);
CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev);
CUresult cuMemGetInfo(unsigned int *free, unsigned int *total);
CUresult cuMemGetInfo_v2(size_t *free, size_t *total);
CUresult cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev);
CUresult cuCtxCreate(CUcontext *pctx, unsigned int flags, CUdevice dev);
CUresult cuCtxCreate_v2(CUcontext *pctx, unsigned int flags, CUdevice dev);
CUresult cuCtxCreate_v3(CUcontext *pctx, CUexecAffinityParam *paramsArray, int numParams,
                        unsigned int flags, CUdevice dev);
CUresult cuCtxCreate_v4(CUcontext *pctx, CUctxCreateParams *params, unsigned int flags,
                        CUdevice dev);
CUresult cuCtxSetCurrent(CUcontext ctx);
CUresult cuCtxPushCurrent_v2(CUcontext ctx);
CUresult cuCtxPopCurrent_v2(CUcontext *pctx);
CUresult cuCtxSetLimit(int limit, size_t value); /* CUlimit */
typedef struct CUgreenCtx_st *CUgreenCtx;
typedef struct CUdevResourceDesc_st *CUdevResourceDesc;
CUresult cuGreenCtxCreate(CUgreenCtx *phCtx, CUdevResourceDesc desc, CUdevice dev,
                          unsigned int flags);
typedef struct CUmod_st *CUmodule;
typedef struct CUlib_st *CUlibrary;
/* CUjit_option and CUlibraryOption are enums: int */
CUresult cuModuleLoad(CUmodule *module, const char *fname);
CUresult cuModuleLoadData(CUmodule *module, const void *image);
CUresult cuModuleLoadDataEx(CUmodule *module, const void *image, unsigned int numOptions,
                            int *options, void **optionValues);
CUresult cuModuleLoadFatBinary(CUmodule *module, const void *fatCubin);
CUresult cuModuleUnload(CUmodule hmod);
CUresult cuLibraryLoadData(CUlibrary *library, const void *code, int *jitOptions,
                           void **jitOptionsValues, unsigned int numJitOptions,
                           int *libraryOptions, void **libraryOptionValues,
                           unsigned int numLibraryOptions);
CUresult cuLibraryLoadFromFile(CUlibrary *library, const char *fileName, int *jitOptions,
                               void **jitOptionsValues, unsigned int numJitOptions,
                               int *libraryOptions, void **libraryOptionValues,
                               unsigned int numLibraryOptions);
CUresult cuLibraryUnload(CUlibrary library);
CUresult cuMemAlloc(CUdeviceptr_v1 *dptr, unsigned int bytesize);
CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize);
CUresult cuMemAllocPitch(CUdeviceptr_v1 *dptr, unsigned int *pPitch, unsigned int WidthInBytes,
                         unsigned int Height, unsigned int ElementSizeBytes);
CUresult cuMemAllocPitch_v2(CUdeviceptr *dptr, size_t *pPitch, size_t WidthInBytes, size_t Height,
                            unsigned int ElementSizeBytes);
CUresult cuMemFree(CUdeviceptr_v1 dptr);
CUresult cuMemFree_v2(CUdeviceptr dptr);
CUresult cuMemAllocManaged(CUdeviceptr *dptr, size_t bytesize, unsigned int flags);
CUresult cuMemAllocAsync(CUdeviceptr *dptr, size_t bytesize, CUstream hStream);
CUresult cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUstream hStream);
CUresult cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool,
                                 CUstream hStream);
CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool,
                                      CUstream hStream);
CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream hStream);
CUresult cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream hStream);
CUresult cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size,
                     const CUmemAllocationProp *prop, unsigned long long flags);
CUresult cuMemRelease(CUmemGenericAllocationHandle handle);
typedef struct { char reserved[64]; } CUipcMemHandle;
typedef struct { unsigned char reserved[64]; } CUmemPoolPtrExportData;
CUresult cuMemMap(CUdeviceptr ptr, size_t size, size_t offset, CUmemGenericAllocationHandle handle,
                  unsigned long long flags);
CUresult cuMemUnmap(CUdeviceptr ptr, size_t size);
CUresult cuMemRetainAllocationHandle(CUmemGenericAllocationHandle *handle, void *addr);
CUresult cuMemImportFromShareableHandle(CUmemGenericAllocationHandle *handle, void *osHandle,
                                        int shHandleType);
CUresult cuMemPoolImportPointer(CUdeviceptr *ptr_out, CUmemoryPool pool,
                                CUmemPoolPtrExportData *shareData);
CUresult cuIpcOpenMemHandle(CUdeviceptr *pdptr, CUipcMemHandle handle, unsigned int Flags);
CUresult cuIpcOpenMemHandle_v2(CUdeviceptr *pdptr, CUipcMemHandle handle, unsigned int Flags);
CUresult cuIpcCloseMemHandle(CUdeviceptr dptr);
CUresult cuArrayCreate(CUarray *pHandle, const CUDA_ARRAY_DESCRIPTOR_v1 *desc);
CUresult cuArrayCreate_v2(CUarray *pHandle, const CUDA_ARRAY_DESCRIPTOR *desc);
CUresult cuArray3DCreate(CUarray *pHandle, const CUDA_ARRAY3D_DESCRIPTOR_v1 *desc);
CUresult cuArray3DCreate_v2(CUarray *pHandle, const CUDA_ARRAY3D_DESCRIPTOR *desc);
CUresult cuArrayDestroy(CUarray hArray);
CUresult cuMipmappedArrayCreate(CUmipmappedArray *pHandle, const CUDA_ARRAY3D_DESCRIPTOR *desc,
                                unsigned int numMipmapLevels);
CUresult cuMipmappedArrayDestroy(CUmipmappedArray hMipmappedArray);
#define FLEXAI_LAUNCH_ARGS                                                                   \
    CUfunction f, unsigned int gridDimX, unsigned int gridDimY, unsigned int gridDimZ,        \
        unsigned int blockDimX, unsigned int blockDimY, unsigned int blockDimZ,               \
        unsigned int sharedMemBytes, CUstream hStream, void **kernelParams
CUresult cuLaunchKernel(FLEXAI_LAUNCH_ARGS, void **extra);
CUresult cuLaunchKernel_ptsz(FLEXAI_LAUNCH_ARGS, void **extra);
CUresult cuLaunchKernelEx(const CUlaunchConfig *config, CUfunction f, void **kernelParams,
                          void **extra);
CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig *config, CUfunction f, void **kernelParams,
                               void **extra);
CUresult cuLaunchCooperativeKernel(FLEXAI_LAUNCH_ARGS);
CUresult cuLaunchCooperativeKernel_ptsz(FLEXAI_LAUNCH_ARGS);
CUresult cuGraphLaunch(CUgraphExec hGraphExec, CUstream hStream);
CUresult cuGraphLaunch_ptsz(CUgraphExec hGraphExec, CUstream hStream);
typedef struct CUgraph_st *CUgraph;
typedef struct CUgraphNode_st *CUgraphNode;
typedef struct CUgraphEdgeData_st CUgraphEdgeData;
typedef int CUstreamCaptureMode; /* an enum in cuda.h */
CUresult cuStreamBeginCapture_v2(CUstream hStream, CUstreamCaptureMode mode);
CUresult cuStreamBeginCapture_v2_ptsz(CUstream hStream, CUstreamCaptureMode mode);
CUresult cuStreamBeginCaptureToGraph(CUstream hStream, CUgraph hGraph,
                                     const CUgraphNode *dependencies,
                                     const CUgraphEdgeData *dependencyData,
                                     size_t numDependencies, CUstreamCaptureMode mode);
CUresult cuStreamBeginCaptureToGraph_ptsz(CUstream hStream, CUgraph hGraph,
                                          const CUgraphNode *dependencies,
                                          const CUgraphEdgeData *dependencyData,
                                          size_t numDependencies, CUstreamCaptureMode mode);
CUresult cuStreamEndCapture(CUstream hStream, CUgraph *phGraph);
CUresult cuStreamEndCapture_ptsz(CUstream hStream, CUgraph *phGraph);
typedef struct CUDA_MEM_ALLOC_NODE_PARAMS_v1_st CUDA_MEM_ALLOC_NODE_PARAMS;
CUresult cuGraphAddMemAllocNode(CUgraphNode *phGraphNode, CUgraph hGraph,
                                const CUgraphNode *dependencies, size_t numDependencies,
                                CUDA_MEM_ALLOC_NODE_PARAMS *nodeParams);
CUresult cuGraphUpload(CUgraphExec hGraphExec, CUstream hStream);
CUresult cuGraphUpload_ptsz(CUgraphExec hGraphExec, CUstream hStream);
CUresult cuGraphExecDestroy(CUgraphExec hGraphExec);
CUresult cuDeviceGraphMemTrim(CUdevice device);
typedef struct CUDA_GRAPH_INSTANTIATE_PARAMS_st CUDA_GRAPH_INSTANTIATE_PARAMS;
CUresult cuGraphInstantiateWithFlags(CUgraphExec *phGraphExec, CUgraph hGraph,
                                     unsigned long long flags);
CUresult cuGraphInstantiateWithParams(CUgraphExec *phGraphExec, CUgraph hGraph,
                                      CUDA_GRAPH_INSTANTIATE_PARAMS *instantiateParams);
CUresult cuGraphInstantiateWithParams_ptsz(CUgraphExec *phGraphExec, CUgraph hGraph,
                                           CUDA_GRAPH_INSTANTIATE_PARAMS *instantiateParams);
CUresult cuGraphDestroy(CUgraph hGraph);
CUresult cuGraphInstantiate_v2(CUgraphExec *phGraphExec, CUgraph hGraph, CUgraphNode *phErrorNode,
                               char *logBuffer, size_t bufferSize);
typedef struct CUgraphNodeParams_st CUgraphNodeParams;
CUresult cuGraphAddNode(CUgraphNode *phGraphNode, CUgraph hGraph, const CUgraphNode *dependencies,
                        size_t numDependencies, CUgraphNodeParams *nodeParams);
CUresult cuGraphAddNode_v2(CUgraphNode *phGraphNode, CUgraph hGraph,
                           const CUgraphNode *dependencies, const CUgraphEdgeData *dependencyData,
                           size_t numDependencies, CUgraphNodeParams *nodeParams);
/* cuda/graphmem.c: CUDA-graph memory (docs/libflexai.md) */
FLEXAI_HIDDEN extern int flexai_graphmem_seen;
FLEXAI_HIDDEN int flexai_graphmem_captured(CUstream stream, int ptsz, size_t bytes); /* 1: into a capture */
FLEXAI_HIDDEN CUresult flexai_graphmem_before_launch(CUgraphExec e, CUstream stream, int ptsz);
/* cuda/poolmem.c: stream-ordered pools; settles every pool's charge: 1 when memory was given back */
FLEXAI_HIDDEN int flexai_pools_settle(void);
CUresult cuMemPoolTrimTo(CUmemoryPool pool, size_t minBytesToKeep);
CUresult cuMemPoolSetAttribute(CUmemoryPool pool, int attr, void *value);
CUresult cuMemPoolDestroy(CUmemoryPool pool);

nvmlReturn_t nvmlDeviceGetCount(unsigned int *count);
nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count);
nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device);
nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device);
nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device);
nvmlReturn_t nvmlDeviceGetHandleByPciBusId(const char *pciBusId, nvmlDevice_t *device);
nvmlReturn_t nvmlDeviceGetHandleByPciBusId_v2(const char *pciBusId, nvmlDevice_t *device);
nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index);
nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory);
nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory);
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses(nvmlDevice_t device, unsigned int *count,
                                                  nvmlProcessInfo_v1_t *infos);
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t device, unsigned int *count,
                                                     nvmlProcessInfo_v2_t *infos);
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device, unsigned int *count,
                                                     nvmlProcessInfo_v2_t *infos);

/* Everything below is internal to the library. */
#pragma GCC visibility push(hidden)

/* The wrappers' hidden names; each public name above is an alias of its fx_ function, so
 * the library's own tables never resolve to another object's definition. */
#define FLEXAI_DECL_FX(name, lib) __typeof__(name) fx_##name;
FLEXAI_SYMBOLS(FLEXAI_DECL_FX)
#undef FLEXAI_DECL_FX
/* Defines public `name` as an exported alias of fx_name (after fx_name's definition). */
#define FLEXAI_ALIAS(name)                                                                   \
    extern __typeof__(name) name __attribute__((alias("fx_" #name), visibility("default")))

/* ---- route.c: finding the real functions (the front door; core/ never calls it) ------ */
FLEXAI_HIDDEN void *flexai_real_slow(enum flexai_sym sym);
FLEXAI_HIDDEN extern void *flexai_real_ptr[FX_COUNT];
/* The real function behind wrapper `name`, or NULL when the driver does not have it. */
#define REAL(name)                                                                           \
    ((__typeof__(&name))(__atomic_load_n(&flexai_real_ptr[FX_##name], __ATOMIC_ACQUIRE)      \
                             ?: flexai_real_slow(FX_##name)))
/* A driver function libflexai needs but does not wrap. */
FLEXAI_HIDDEN void *flexai_driver_sym(int lib, const char *name);
FLEXAI_HIDDEN void *flexai_real_dlsym(void *handle, const char *name);

/* ---- core/limits.c: configuration and the region of this process --------------------- */
struct flexai_config {
    int enforce;               /* 0: pure pass-through */
    int from_slice_file;       /* limits came from the runtime's slice file */
    int in_container;          /* the runtime's slice file is at its fixed path: only the
                                  read-only inputs count, the environment is ignored */
    int fail_closed;           /* a read-only input is missing or damaged: every allocation
                                  and launch fails */
    int64_t memory_limit;      /* bytes; 0 none; -1: a share of the card (memory_share) */
    int memory_share;          /* hundredths of the card, when memory_limit == -1 */
    int compute_limit;         /* percent */
    int priority;
    int64_t context_memory;
    int device_index;
    char device_uuid[96];
    char slice_id[32];
    char region_path[512];
    int may_create_region;
};

/* core/lease.c: the MiB of the limit this process holds as OFD locks on the region file. */
#define FLEXAI_LEASE_BASE ((int64_t)1 << 40) /* lock offset of unit 0 (slot locks are at 2^30) */
#define FLEXAI_LEASE_RANGES 64
struct flexai_lease_range {
    int64_t start, len;                  /* units */
};
struct flexai_lease {
    int64_t units;                       /* sum of the ranges */
    int n;
    struct flexai_lease_range ranges[FLEXAI_LEASE_RANGES]; /* sorted by start */
};

struct flexai_process {
    pthread_once_t once;
    struct flexai_config cfg;
    /* The limits enforced: the read-only limits file flexaid wrote (mapped PROT_READ), or
     * NULL outside containers when there is none, and then the region's header holds them. */
    const struct flexai_limits *limits;
    pthread_mutex_t attach_lock;
    struct flexai_region *region;  /* published with release order once attached */
    struct flexai_proc *me;        /* this process's slot in the region */
    int region_fd;
    int slot;
    int64_t held;                  /* bytes this process has charged (private: a bound the
                                      tenant cannot forge through the region) */
    struct flexai_lease lease;     /* the kernel-kept share of the limit it holds (core/lease.c) */
    int attach_failed;
    int warned;
    /* the slice's card, resolved once the driver is initialised */
    int cu_state;                  /* 0 unknown, 1 found, 2 not found */
    CUdevice cu_device;
    int nvml_state;
    nvmlDevice_t nvml_device;
};

FLEXAI_HIDDEN extern struct flexai_process flexai_P;

FLEXAI_HIDDEN void flexai_config_load(void);
static inline int flexai_enforcing(void)
{
    pthread_once(&flexai_P.once, flexai_config_load);
    return flexai_P.cfg.enforce;
}
/* The region, attaching this process on first use; NULL when not enforcing. */
FLEXAI_HIDDEN struct flexai_region *flexai_attach_slow(void);
static inline struct flexai_region *flexai_region(void)
{
    struct flexai_region *r = __atomic_load_n(&flexai_P.region, __ATOMIC_ACQUIRE);
    if (likely(r != NULL))
        return r;
    return flexai_attach_slow();
}
/* The compute share the slice obeys (see struct flexai_process.limits). */
static inline const struct flexai_share *flexai_share_of(const struct flexai_region *r)
{
    const struct flexai_limits *l = flexai_P.limits;
    return l ? &l->share : &r->compute.share;
}
/* The memory limit and per-process context charge the slice obeys. */
static inline int64_t flexai_limit_bytes(const struct flexai_region *r)
{
    const struct flexai_limits *l = flexai_P.limits;
    return __atomic_load_n(l ? &l->memory_limit : &r->memory_limit, __ATOMIC_RELAXED);
}
static inline int64_t flexai_context_bytes(const struct flexai_region *r)
{
    const struct flexai_limits *l = flexai_P.limits;
    return __atomic_load_n(l ? &l->context_memory : &r->context_memory, __ATOMIC_RELAXED);
}
/* 1 when the slice's read-only inputs are unusable: allocations and launches must fail. */
static inline int flexai_closed(void)
{
    return flexai_P.cfg.fail_closed;
}
FLEXAI_HIDDEN void flexai_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
FLEXAI_HIDDEN int flexai_parse_size(const char *text, int64_t *bytes, int *share);
FLEXAI_HIDDEN uint64_t flexai_now_ns(int clock);

/* ---- core/region.c: accounting in the shared region ---------------------------------- */
FLEXAI_HIDDEN int flexai_region_lock(struct flexai_region *r);
FLEXAI_HIDDEN void flexai_region_unlock(struct flexai_region *r);
FLEXAI_HIDDEN int flexai_region_init_lock(struct flexai_region *r);
FLEXAI_HIDDEN int flexai_region_claim_slot(struct flexai_region *r, int fd, pid_t pid);
FLEXAI_HIDDEN int flexai_slot_alive(int fd, int slot);
FLEXAI_HIDDEN void flexai_reclaim_dead(struct flexai_region *r, int fd, int self);
/* Reserve `bytes` for this process: 1 charged, 0 nothing charged (pass through), -1 full. */
FLEXAI_HIDDEN int flexai_reserve(int64_t bytes);
FLEXAI_HIDDEN void flexai_unreserve(int64_t bytes);
FLEXAI_HIDDEN void flexai_charge_held(int64_t bytes);

/* ---- core/vendors.c: what the core needs from the vendor front ends ------------------ */
/* The core never calls into cuda/, nvml/ or acl/: each front end registers one of these from a
 * load-time constructor (priority 101, before the library's own constructor), and the core
 * asks the registered ones in slot order (tests/test_libflexai_layers.py checks the rule). */
enum flexai_vendor_slot { FLEXAI_VENDOR_CUDA, FLEXAI_VENDOR_NVML, FLEXAI_VENDOR_ACL, FLEXAI_VENDOR_SLOTS };
struct flexai_vendor {
    const char *name;
    int64_t (*card_memory)(void);        /* the slice's card's memory in bytes; 0 unknown */
    void (*overhead_refresh)(int force); /* settle driver-held memory beyond the tracked; or NULL */
};
FLEXAI_HIDDEN void flexai_vendor_register(enum flexai_vendor_slot slot, const struct flexai_vendor *v);
/* The first registered vendor's answer, for limits given as a share of the card; 0 unknown. */
FLEXAI_HIDDEN int64_t flexai_vendor_card_memory(void);
/* Every registered overhead_refresh (at most once per period on the allocation path). */
FLEXAI_HIDDEN void flexai_vendor_overhead(int force);
FLEXAI_HIDDEN extern uint64_t flexai_overhead_next_ns;
/* On the allocation path: a refresh at most every period; in between, one coarse clock read. */
static inline void flexai_overhead_tick(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    uint64_t now = (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
    if (unlikely(now >= __atomic_load_n(&flexai_overhead_next_ns, __ATOMIC_RELAXED)))
        flexai_vendor_overhead(0);
}
FLEXAI_HIDDEN int64_t flexai_memory_used(void);
FLEXAI_HIDDEN int64_t flexai_memory_limit(void);

/* ---- core/lease.c: the memory budget the kernel keeps -------------------------------- */
/* Makes this process's leases cover `held_bytes` of a `limit`: 0, or -1 when the slice's
 * processes together already hold the limit. Caller holds the region lock. */
FLEXAI_HIDDEN int flexai_lease_cover(struct flexai_lease *l, int fd, int64_t limit, int64_t held_bytes);
/* Gives back leases beyond `held_bytes` and one spare MiB. Caller holds the region lock. */
FLEXAI_HIDDEN void flexai_lease_trim(struct flexai_lease *l, int fd, int64_t held_bytes);

/* ---- core/sizemap.c: what each allocation of this process holds ---------------------- */
enum flexai_kind { FLEXAI_PTR = 1, FLEXAI_VMM = 2, FLEXAI_ARRAY = 3, FLEXAI_MIPMAP = 4 };
FLEXAI_HIDDEN int flexai_sizemap_put(int kind, uint64_t key, int64_t bytes);
/* Removes the entry; its size, or -1 when the key is unknown. */
FLEXAI_HIDDEN int64_t flexai_sizemap_take(int kind, uint64_t key);
FLEXAI_HIDDEN void flexai_sizemap_after_fork(void);
#define FLEXAI_IPC 16 /* cuda/vmm.c: a cuIpcOpenMemHandle import, keyed by its pointer */

/* ---- core/gate.c: the compute gate --------------------------------------------------- */
/* A vendor runtime's device timing, all the compute gate needs of it: events recorded on a
 * stream around launch batches and the device time between them, and (optional) its stream
 * capture. cuda/launch.c supplies CUDA's, acl/acl_view.c ACL's; the gate, batching and
 * controller are the same for both. */
struct flexai_device_timer {
    const char *api;                            /* "CUDA", "ACL": for messages */
    int (*bind)(void);                          /* resolves the runtime's functions: 0 ok */
    int (*thread_ready)(void);                  /* 1: the calling thread has a context/device */
    int (*create)(void **ev);                   /* 0 ok */
    int (*record)(void *ev, void *stream);      /* 0 ok */
    int (*query)(void *ev);                     /* 1 completed, 0 not yet, -1 error */
    int (*elapsed_ms)(float *ms, void *start, void *end); /* 0 ok; both completed */
    void (*destroy)(void *ev);
    /* stream capture; NULL for a runtime without it */
    int (*capturing)(void *stream);             /* 1: capturing (or the stream cannot be used) */
    int (*relax)(int *old);                     /* the thread's capture mode to relaxed: 1 changed */
    void (*unrelax)(int old);                   /* back to *old */
};
/* Before a launch of the slice on `stream` (the runtime's own default-stream value for the
 * default stream): returns once the launch may go. The first vendor to launch binds the
 * controller; launches of another vendor in the same process only obey pause. */
FLEXAI_HIDDEN void flexai_compute_before(const struct flexai_device_timer *timer,
                                         struct flexai_region *r, void *stream);
/* After that launch: `ok` when the runtime accepted it. */
FLEXAI_HIDDEN void flexai_compute_after(const struct flexai_device_timer *timer, int ok);
/* A stream capture begins on `stream` (before the runtime's call), or ends (after it: ended,
 * or the begin failed); flexai_capture_open: 1 while any capture of the process is open. */
FLEXAI_HIDDEN void flexai_capture_begins(const struct flexai_device_timer *timer, void *stream);
FLEXAI_HIDDEN void flexai_capture_ends(void);
FLEXAI_HIDDEN int flexai_capture_open(void);

/* ==== vendor front ends: what their files share among themselves ========================== */
/* The core (core/) never uses anything below; tests/test_libflexai_layers.py checks it. */

/* ---- cuda/memory.c, nvml/nvml_view.c: the slice's card ------------------------------- */
FLEXAI_HIDDEN int flexai_cu_device(CUdevice *dev);
FLEXAI_HIDDEN int flexai_nvml_device(nvmlDevice_t *dev);
/* ---- cuda/memory.c: first use of a context ------------------------------------------- */
/* A context a context can appear without the wrapped creators
 * (cudart's private export table), so the first allocation/launch of each thread checks the
 * current context's card and charges the process's context; after that, one TLS branch.
 * flexai_ctx_ok is cleared by the wrapped creators and switches (cuCtxSetCurrent,
 * cuCtxPushCurrent, cuCtxPopCurrent), so launches re-check after a switch; allocations also
 * compare the current context with the one last checked (flexai_ctx_seen), which catches a
 * switch no wrapper saw (the private table makes its context current itself). */
extern __thread int flexai_ctx_ok __attribute__((tls_model("initial-exec"), visibility("hidden")));
extern __thread CUcontext flexai_ctx_seen __attribute__((tls_model("initial-exec"), visibility("hidden")));
FLEXAI_HIDDEN CUresult flexai_ctx_first_use(void);
FLEXAI_HIDDEN extern CUresult (*flexai_ctx_get_current)(CUcontext *);
/* 1 when the current context is not the one this thread last checked. */
static inline int flexai_ctx_moved(void)
{
    CUcontext c = NULL;
    CUresult (*get)(CUcontext *) = __atomic_load_n(&flexai_ctx_get_current, __ATOMIC_RELAXED);
    return get != NULL && get(&c) == CUDA_SUCCESS && c != flexai_ctx_seen;
}
#define FLEXAI_CTX_FIRST_USE()                                                               \
    do {                                                                                     \
        if (unlikely(!flexai_ctx_ok) || unlikely(flexai_ctx_moved())) {                      \
            CUresult ctx_rc_ = flexai_ctx_first_use();                                       \
            if (ctx_rc_ != CUDA_SUCCESS)                                                     \
                return ctx_rc_;                                                              \
        }                                                                                    \
    } while (0)
/* ---- cuda/overhead.c: driver-held memory beyond what was tracked (NVML per process) --- */
/* Settles this process's overhead charge now (force) or unless another thread is at it. */
FLEXAI_HIDDEN void flexai_overhead_refresh(int force);

/* ---- acl/acl_view.c: AscendCL (libascendcl.so) --------------------------------------- */
/* 1 when it answered a dlsym of an acl* name (in *out), 0 to hand the lookup to glibc. */
FLEXAI_HIDDEN int flexai_acl_dlsym(void *handle, const char *name, void **out);

#pragma GCC visibility pop

#endif
