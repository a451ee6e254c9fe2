/* The part of the public AscendCL runtime API (CANN's acl/acl_base.h, acl/acl_rt.h and
 * acl/error_codes/rt_error_codes.h) that the simulated libascendcl.so implements and that
 * libflexai intercepts: types, enum values, error codes and prototypes, written from the
 * public documentation (values must match it: binaries compiled against CANN call these).
 *
 * Shared by libflexai/sim/acl/ (the simulator) and libflexai/acl_view.c (the interposer). */
#ifndef FLEXAI_ACL_API_H
#define FLEXAI_ACL_API_H

#include <stddef.h>
#include <stdint.h>

typedef int aclError;
typedef void *aclrtStream;
typedef void *aclrtEvent;
typedef void *aclrtContext;
typedef void *aclrtDrvMemHandle;
typedef void *aclrtBinHandle;
typedef void *aclrtFuncHandle;
typedef void *aclrtArgsHandle;
typedef void *aclrtParamHandle;
typedef void *aclmdlRI;                /* a captured task sequence (NPUGraph), replayed whole */

/* acl_base.h */
#define ACL_SUCCESS 0
#define ACL_ERROR_NONE 0
#define ACL_ERROR_INVALID_PARAM 100000
#define ACL_ERROR_UNINITIALIZE 100001
#define ACL_ERROR_REPEAT_INITIALIZE 100002
#define ACL_ERROR_INVALID_FILE 100003
#define ACL_ERROR_KERNEL_NOT_FOUND 100029
#define ACL_ERROR_REPEAT_FINALIZE 100037
#define ACL_ERROR_BAD_ALLOC 200000
#define ACL_ERROR_API_NOT_SUPPORT 200001
#define ACL_ERROR_INVALID_DEVICE 200002
#define ACL_ERROR_INVALID_RESOURCE_HANDLE 200005
#define ACL_ERROR_INTERNAL_ERROR 500000
#define ACL_ERROR_FAILURE 500001

/* rt_error_codes.h */
#define ACL_ERROR_RT_PARAM_INVALID 107000
#define ACL_ERROR_RT_INVALID_DEVICEID 107001
#define ACL_ERROR_RT_CONTEXT_NULL 107002
#define ACL_ERROR_RT_STREAM_CONTEXT 107003
#define ACL_ERROR_RT_EVENT_TIMESTAMP_INVALID 107006
#define ACL_ERROR_RT_INVALID_HANDLE 107017
#define ACL_ERROR_RT_FEATURE_NOT_SUPPORT 207000
#define ACL_ERROR_RT_MEMORY_ALLOCATION 207001
#define ACL_ERROR_RT_MEMORY_FREE 207002
#define ACL_ERROR_RT_NO_DEVICE 207004
#define ACL_ERROR_RT_RESOURCE_ALLOC_FAIL 207005
#define ACL_ERROR_RT_INTERNAL_ERROR 507000
#define ACL_ERROR_RT_CONTEXT_RELEASE_ERROR 507007
#define ACL_ERROR_RT_DRV_INTERNAL_ERROR 507899

typedef enum aclrtRunMode { ACL_DEVICE, ACL_HOST } aclrtRunMode;

typedef enum aclrtEventStatus {
    ACL_EVENT_STATUS_COMPLETE = 0,
    ACL_EVENT_STATUS_NOT_READY = 1,
    ACL_EVENT_STATUS_RESERVED = 2,
} aclrtEventStatus;

typedef enum aclrtEventRecordedStatus {
    ACL_EVENT_RECORDED_STATUS_NOT_READY = 0,
    ACL_EVENT_RECORDED_STATUS_COMPLETE = 1,
} aclrtEventRecordedStatus;

typedef enum aclrtMemcpyKind {
    ACL_MEMCPY_HOST_TO_HOST,
    ACL_MEMCPY_HOST_TO_DEVICE,
    ACL_MEMCPY_DEVICE_TO_HOST,
    ACL_MEMCPY_DEVICE_TO_DEVICE,
    ACL_MEMCPY_DEFAULT,
    ACL_MEMCPY_HOST_TO_BUF_TO_DEVICE,
    ACL_MEMCPY_INNER_DEVICE_TO_DEVICE,
    ACL_MEMCPY_INTER_DEVICE_TO_DEVICE,
} aclrtMemcpyKind;

typedef enum aclrtMemMallocPolicy {
    ACL_MEM_MALLOC_HUGE_FIRST,
    ACL_MEM_MALLOC_HUGE_ONLY,
    ACL_MEM_MALLOC_NORMAL_ONLY,
    ACL_MEM_MALLOC_HUGE_FIRST_P2P,
    ACL_MEM_MALLOC_HUGE_ONLY_P2P,
    ACL_MEM_MALLOC_NORMAL_ONLY_P2P,
    ACL_MEM_MALLOC_HUGE1G_ONLY,
    ACL_MEM_MALLOC_HUGE1G_ONLY_P2P,
    ACL_MEM_TYPE_LOW_BAND_WIDTH = 0x0100,
    ACL_MEM_TYPE_HIGH_BAND_WIDTH = 0x1000,
    ACL_MEM_ACCESS_USER_SPACE_READONLY = 0x100000,
} aclrtMemMallocPolicy;

typedef enum {
    ACL_RT_MEM_ATTR_RSV = 0,
    ACL_RT_MEM_ATTR_MODULE_ID,
    ACL_RT_MEM_ATTR_DEVICE_ID,
    ACL_RT_MEM_ATTR_VA_FLAG,
} aclrtMallocAttrType;

typedef union {
    uint16_t moduleId;
    uint32_t deviceId;
    uint32_t vaFlag;
    uint8_t rsv[8];
} aclrtMallocAttrValue;

typedef struct {
    aclrtMallocAttrType attr;
    aclrtMallocAttrValue value;
} aclrtMallocAttribute;

typedef struct {
    aclrtMallocAttribute *attrs;
    size_t numAttrs;
} aclrtMallocConfig;

typedef enum aclrtMemAttr {
    ACL_DDR_MEM,
    ACL_HBM_MEM,
    ACL_DDR_MEM_HUGE,
    ACL_DDR_MEM_NORMAL,
    ACL_HBM_MEM_HUGE,
    ACL_HBM_MEM_NORMAL,
    ACL_DDR_MEM_P2P_HUGE,
    ACL_DDR_MEM_P2P_NORMAL,
    ACL_HBM_MEM_P2P_HUGE,
    ACL_HBM_MEM_P2P_NORMAL,
    ACL_HBM_MEM_HUGE1G,
    ACL_HBM_MEM_P2P_HUGE1G,
    ACL_MEM_NORMAL,
    ACL_MEM_HUGE,
    ACL_MEM_HUGE1G,
    ACL_MEM_P2P_NORMAL,
    ACL_MEM_P2P_HUGE,
    ACL_MEM_P2P_HUGE1G,
} aclrtMemAttr;

typedef enum aclrtMemLocationType {
    ACL_MEM_LOCATION_TYPE_HOST = 0,
    ACL_MEM_LOCATION_TYPE_DEVICE,
    ACL_MEM_LOCATION_TYPE_UNREGISTERED,
    ACL_MEM_LOCATION_TYPE_MANAGED,
    ACL_MEM_LOCATION_TYPE_HOST_NUMA = 4,
} aclrtMemLocationType;

typedef struct aclrtMemLocation {
    uint32_t id;
    aclrtMemLocationType type;
} aclrtMemLocation;

typedef enum aclrtMemAllocationType { ACL_MEM_ALLOCATION_TYPE_PINNED = 0 } aclrtMemAllocationType;
typedef enum aclrtMemHandleType {
    ACL_MEM_HANDLE_TYPE_NONE = 0,
    ACL_MEM_HANDLE_TYPE_POSIX = 2,
} aclrtMemHandleType;

typedef struct aclrtPhysicalMemProp {
    aclrtMemHandleType handleType;
    aclrtMemAllocationType allocationType;
    aclrtMemAttr memAttr;
    aclrtMemLocation location;
    uint64_t reserve;
} aclrtPhysicalMemProp;

typedef enum aclrtMemGranularityOptions {
    ACL_RT_MEM_ALLOC_GRANULARITY_MINIMUM,
    ACL_RT_MEM_ALLOC_GRANULARITY_RECOMMENDED,
    ACL_RT_MEM_ALLOC_GRANULARITY_UNDEF = 0xFFFF,
} aclrtMemGranularityOptions;

typedef struct aclrtBinaryLoadOptions aclrtBinaryLoadOptions; /* read by nobody here */

typedef enum aclmdlRICaptureMode {
    ACL_MODEL_RI_CAPTURE_MODE_GLOBAL = 0,
    ACL_MODEL_RI_CAPTURE_MODE_THREAD_LOCAL,
    ACL_MODEL_RI_CAPTURE_MODE_RELAXED,
} aclmdlRICaptureMode;
typedef struct aclrtLaunchKernelCfg aclrtLaunchKernelCfg;     /* attributes; ignored */
typedef struct aclrtPlaceHolderInfo {
    uint32_t addrOffset;
    uint32_t dataOffset;
} aclrtPlaceHolderInfo;

/* The ACL entry points of the simulator and of the interposer, as one list:
 * ACL_API(return type, name, (parameters), (argument names)).                */
#define ACL_API_LIST(X) \
    X(aclError, aclInit, (const char *configPath), (configPath)) \
    X(aclError, aclFinalize, (void), ()) \
    X(const char *, aclGetRecentErrMsg, (void), ()) \
    X(aclError, aclrtGetVersion, (int32_t *majorVersion, int32_t *minorVersion, int32_t *patchVersion), (majorVersion, minorVersion, patchVersion)) \
    X(aclError, aclrtGetRunMode, (aclrtRunMode *runMode), (runMode)) \
    X(const char *, aclrtGetSocName, (void), ()) \
    X(aclError, aclrtGetDeviceCount, (uint32_t *count), (count)) \
    X(aclError, aclrtSetDevice, (int32_t deviceId), (deviceId)) \
    X(aclError, aclrtResetDevice, (int32_t deviceId), (deviceId)) \
    X(aclError, aclrtResetDeviceForce, (int32_t deviceId), (deviceId)) \
    X(aclError, aclrtGetDevice, (int32_t *deviceId), (deviceId)) \
    X(aclError, aclrtSynchronizeDevice, (void), ()) \
    X(aclError, aclrtCreateContext, (aclrtContext *context, int32_t deviceId), (context, deviceId)) \
    X(aclError, aclrtDestroyContext, (aclrtContext context), (context)) \
    X(aclError, aclrtSetCurrentContext, (aclrtContext context), (context)) \
    X(aclError, aclrtGetCurrentContext, (aclrtContext *context), (context)) \
    X(aclError, aclrtCreateStream, (aclrtStream *stream), (stream)) \
    X(aclError, aclrtCreateStreamWithConfig, (aclrtStream *stream, uint32_t priority, uint32_t flag), (stream, priority, flag)) \
    X(aclError, aclrtDestroyStream, (aclrtStream stream), (stream)) \
    X(aclError, aclrtDestroyStreamForce, (aclrtStream stream), (stream)) \
    X(aclError, aclrtSynchronizeStream, (aclrtStream stream), (stream)) \
    X(aclError, aclrtSynchronizeStreamWithTimeout, (aclrtStream stream, int32_t timeout), (stream, timeout)) \
    X(aclError, aclrtStreamWaitEvent, (aclrtStream stream, aclrtEvent event), (stream, event)) \
    X(aclError, aclrtMalloc, (void **devPtr, size_t size, aclrtMemMallocPolicy policy), (devPtr, size, policy)) \
    X(aclError, aclrtMallocAlign32, (void **devPtr, size_t size, aclrtMemMallocPolicy policy), (devPtr, size, policy)) \
    X(aclError, aclrtMallocCached, (void **devPtr, size_t size, aclrtMemMallocPolicy policy), (devPtr, size, policy)) \
    X(aclError, aclrtMallocWithCfg, (void **devPtr, size_t size, aclrtMemMallocPolicy policy, aclrtMallocConfig *cfg), (devPtr, size, policy, cfg)) \
    X(aclError, aclrtMallocForTaskScheduler, (void **devPtr, size_t size, aclrtMemMallocPolicy policy, aclrtMallocConfig *cfg), (devPtr, size, policy, cfg)) \
    X(aclError, acldvppMalloc, (void **devPtr, size_t size), (devPtr, size)) \
    X(aclError, acldvppFree, (void *devPtr), (devPtr)) \
    X(aclError, aclrtFree, (void *devPtr), (devPtr)) \
    X(aclError, aclrtMallocHost, (void **hostPtr, size_t size), (hostPtr, size)) \
    X(aclError, aclrtFreeHost, (void *hostPtr), (hostPtr)) \
    X(aclError, aclrtMemGetAllocationGranularity, (aclrtPhysicalMemProp *prop, aclrtMemGranularityOptions option, size_t *granularity), (prop, option, granularity)) \
    X(aclError, aclrtMallocPhysical, (aclrtDrvMemHandle *handle, size_t size, const aclrtPhysicalMemProp *prop, uint64_t flags), (handle, size, prop, flags)) \
    X(aclError, aclrtFreePhysical, (aclrtDrvMemHandle handle), (handle)) \
    X(aclError, aclrtReserveMemAddress, (void **virPtr, size_t size, size_t alignment, void *expectPtr, uint64_t flags), (virPtr, size, alignment, expectPtr, flags)) \
    X(aclError, aclrtReleaseMemAddress, (void *virPtr), (virPtr)) \
    X(aclError, aclrtMapMem, (void *virPtr, size_t size, size_t offset, aclrtDrvMemHandle handle, uint64_t flags), (virPtr, size, offset, handle, flags)) \
    X(aclError, aclrtUnmapMem, (void *virPtr), (virPtr)) \
    X(aclError, aclrtGetMemInfo, (aclrtMemAttr attr, size_t *free, size_t *total), (attr, free, total)) \
    X(aclError, aclrtMemcpy, (void *dst, size_t destMax, const void *src, size_t count, aclrtMemcpyKind kind), (dst, destMax, src, count, kind)) \
    X(aclError, aclrtMemcpyAsync, (void *dst, size_t destMax, const void *src, size_t count, aclrtMemcpyKind kind, aclrtStream stream), (dst, destMax, src, count, kind, stream)) \
    X(aclError, aclrtMemset, (void *devPtr, size_t maxCount, int32_t value, size_t count), (devPtr, maxCount, value, count)) \
    X(aclError, aclrtMemsetAsync, (void *devPtr, size_t maxCount, int32_t value, size_t count, aclrtStream stream), (devPtr, maxCount, value, count, stream)) \
    X(aclError, aclrtCreateEvent, (aclrtEvent *event), (event)) \
    X(aclError, aclrtCreateEventWithFlag, (aclrtEvent *event, uint32_t flag), (event, flag)) \
    X(aclError, aclrtCreateEventExWithFlag, (aclrtEvent *event, uint32_t flag), (event, flag)) \
    X(aclError, aclrtDestroyEvent, (aclrtEvent event), (event)) \
    X(aclError, aclrtRecordEvent, (aclrtEvent event, aclrtStream stream), (event, stream)) \
    X(aclError, aclrtResetEvent, (aclrtEvent event, aclrtStream stream), (event, stream)) \
    X(aclError, aclrtQueryEvent, (aclrtEvent event, aclrtEventStatus *status), (event, status)) \
    X(aclError, aclrtQueryEventStatus, (aclrtEvent event, aclrtEventRecordedStatus *status), (event, status)) \
    X(aclError, aclrtSynchronizeEvent, (aclrtEvent event), (event)) \
    X(aclError, aclrtEventElapsedTime, (float *ms, aclrtEvent startEvent, aclrtEvent endEvent), (ms, startEvent, endEvent)) \
    X(aclError, aclrtBinaryLoadFromFile, (const char *binPath, aclrtBinaryLoadOptions *options, aclrtBinHandle *binHandle), (binPath, options, binHandle)) \
    X(aclError, aclrtBinaryLoadFromData, (const void *data, size_t length, const aclrtBinaryLoadOptions *options, aclrtBinHandle *binHandle), (data, length, options, binHandle)) \
    X(aclError, aclrtBinaryGetFunction, (const aclrtBinHandle binHandle, const char *kernelName, aclrtFuncHandle *funcHandle), (binHandle, kernelName, funcHandle)) \
    X(aclError, aclrtBinaryUnLoad, (aclrtBinHandle binHandle), (binHandle)) \
    X(aclError, aclrtRegisterCpuFunc, (const aclrtBinHandle handle, const char *funcName, const char *kernelName, aclrtFuncHandle *funcHandle), (handle, funcName, kernelName, funcHandle)) \
    X(aclError, aclmdlRICaptureBegin, (aclrtStream stream, aclmdlRICaptureMode mode), (stream, mode)) \
    X(aclError, aclmdlRICaptureEnd, (aclrtStream stream, aclmdlRI *modelRI), (stream, modelRI)) \
    X(aclError, aclmdlRIExecuteAsync, (aclmdlRI modelRI, aclrtStream stream), (modelRI, stream)) \
    X(aclError, aclmdlRIDestroy, (aclmdlRI modelRI), (modelRI)) \
    X(aclError, aclrtKernelArgsInit, (aclrtFuncHandle funcHandle, aclrtArgsHandle *argsHandle), (funcHandle, argsHandle)) \
    X(aclError, aclrtKernelArgsAppend, (aclrtArgsHandle argsHandle, void *param, size_t paramSize, aclrtParamHandle *paramHandle), (argsHandle, param, paramSize, paramHandle)) \
    X(aclError, aclrtKernelArgsFinalize, (aclrtArgsHandle argsHandle), (argsHandle)) \
    X(aclError, aclrtLaunchKernel, (aclrtFuncHandle funcHandle, uint32_t blockDim, const void *argsData, size_t argsSize, aclrtStream stream), (funcHandle, blockDim, argsData, argsSize, stream)) \
    X(aclError, aclrtLaunchKernelV2, (aclrtFuncHandle funcHandle, uint32_t blockDim, const void *argsData, size_t argsSize, aclrtLaunchKernelCfg *cfg, aclrtStream stream), (funcHandle, blockDim, argsData, argsSize, cfg, stream)) \
    X(aclError, aclrtLaunchKernelWithConfig, (aclrtFuncHandle funcHandle, uint32_t blockDim, aclrtStream stream, aclrtLaunchKernelCfg *cfg, aclrtArgsHandle argsHandle, void *reserve), (funcHandle, blockDim, stream, cfg, argsHandle, reserve)) \
    X(aclError, aclrtLaunchKernelWithHostArgs, (aclrtFuncHandle funcHandle, uint32_t blockDim, aclrtStream stream, aclrtLaunchKernelCfg *cfg, void *hostArgs, size_t argsSize, aclrtPlaceHolderInfo *placeHolderArray, size_t placeHolderNum), (funcHandle, blockDim, stream, cfg, hostArgs, argsSize, placeHolderArray, placeHolderNum))

#define ACL_API_DECLARE(ret, name, params, args) ret name params;
ACL_API_LIST(ACL_API_DECLARE)
#undef ACL_API_DECLARE

#endif
