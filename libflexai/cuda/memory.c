/* Memory: the slice's card, the CUDA view of its memory, and accounting of every API that
 * takes device memory.
 *
 * Every allocation is reserve -> call -> commit or roll back: the bytes are reserved in the
 * region first (atomically against every other process of the slice), the driver is called
 * only when they fit, and a failed call gives them back. A free first takes the entry out
 * of this process's size map (so a racing allocation that gets the same address back is
 * not confused with it), calls the driver, and gives the bytes back on success. Docs:
 * docs/libflexai.md has the table of entry points and what each is charged.
 */
#include "flexai.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>

#define LOAD(p) __atomic_load_n(&(p), __ATOMIC_RELAXED)

/* ---- the slice's card ------------------------------------------------------------------ */

static void format_uuid(const unsigned char *b, char *out, size_t size)
{
    snprintf(out, size,
             "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
             b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
             b[14], b[15]);
}

static int same_uuid(const char *a, const char *b)
{
    if (strncasecmp(a, "GPU-", 4) == 0)
        a += 4;
    if (strncasecmp(b, "GPU-", 4) == 0)
        b += 4;
    return strcasecmp(a, b) == 0;
}

int flexai_cu_device(CUdevice *dev)
{
    struct flexai_process *P = &flexai_P;
    int state = __atomic_load_n(&P->cu_state, __ATOMIC_ACQUIRE);
    if (state == 1) {
        *dev = P->cu_device;
        return 0;
    }
    if (state == 2)
        return -1;
    __typeof__(&cuDeviceGetCount) count_fn = REAL(cuDeviceGetCount);
    __typeof__(&cuDeviceGet) get_fn = REAL(cuDeviceGet);
    int count = 0;
    if (!count_fn || !get_fn || count_fn(&count) != CUDA_SUCCESS)
        return -1; /* not initialised yet: ask again later */
    int found = 0;
    CUdevice d = 0;
    if (P->cfg.device_uuid[0]) {
        CUresult (*uuid_fn)(CUuuid *, CUdevice) =
            (CUresult(*)(CUuuid *, CUdevice))flexai_driver_sym(FLEXAI_LIB_CUDA, "cuDeviceGetUuid_v2");
        if (!uuid_fn)
            uuid_fn = (CUresult(*)(CUuuid *, CUdevice))flexai_driver_sym(FLEXAI_LIB_CUDA,
                                                                         "cuDeviceGetUuid");
        for (int i = 0; uuid_fn && i < count && !found; i++) {
            CUuuid u;
            char text[48];
            if (get_fn(&d, i) != CUDA_SUCCESS || uuid_fn(&u, d) != CUDA_SUCCESS)
                continue;
            format_uuid((const unsigned char *)u.bytes, text, sizeof text);
            found = same_uuid(text, P->cfg.device_uuid);
        }
    } else if (P->cfg.device_index < count) {
        found = get_fn(&d, P->cfg.device_index) == CUDA_SUCCESS;
    }
    if (found)
        P->cu_device = d;
    __atomic_store_n(&P->cu_state, found ? 1 : 2, __ATOMIC_RELEASE);
    if (!found)
        flexai_warn("flexai: the slice's card (%s) is not among this host's %d CUDA device(s); "
                    "no device is visible",
                    P->cfg.device_uuid[0] ? P->cfg.device_uuid : "by index", count);
    *dev = d;
    return found ? 0 : -1;
}

/* 1 when `dev` is not the slice's card (so the program must not use it). */
static int foreign_device(CUdevice dev)
{
    CUdevice mine;
    return flexai_cu_device(&mine) != 0 || mine != dev;
}

CUresult fx_cuDeviceGetCount(int *count)
{
    __typeof__(&cuDeviceGetCount) real = REAL(cuDeviceGetCount);
    if (!real)
        return CUDA_ERROR_NOT_INITIALIZED;
    CUresult rc = real(count);
    if (rc != CUDA_SUCCESS || count == NULL || !flexai_enforcing())
        return rc;
    CUdevice d;
    *count = flexai_cu_device(&d) == 0 ? 1 : 0;
    return rc;
}
FLEXAI_ALIAS(cuDeviceGetCount);

CUresult fx_cuDeviceGet(CUdevice *device, int ordinal)
{
    __typeof__(&cuDeviceGet) real = REAL(cuDeviceGet);
    if (!real)
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!flexai_enforcing())
        return real(device, ordinal);
    int count;
    __typeof__(&cuDeviceGetCount) count_fn = REAL(cuDeviceGetCount);
    CUresult rc = count_fn ? count_fn(&count) : CUDA_ERROR_NOT_INITIALIZED;
    if (rc != CUDA_SUCCESS)
        return rc;
    if (device == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    CUdevice d;
    if (ordinal != 0 || flexai_cu_device(&d) != 0)
        return CUDA_ERROR_INVALID_DEVICE;
    *device = d;
    return CUDA_SUCCESS;
}
FLEXAI_ALIAS(cuDeviceGet);

CUresult fx_cuDeviceGetByPCIBusId(CUdevice *dev, const char *pciBusId)
{
    __typeof__(&cuDeviceGetByPCIBusId) real = REAL(cuDeviceGetByPCIBusId);
    if (!real)
        return CUDA_ERROR_NOT_INITIALIZED;
    CUresult rc = real(dev, pciBusId);
    if (rc == CUDA_SUCCESS && dev && flexai_enforcing() && foreign_device(*dev))
        return CUDA_ERROR_INVALID_DEVICE;
    return rc;
}
FLEXAI_ALIAS(cuDeviceGetByPCIBusId);

/* ---- views of the slice's memory ------------------------------------------------------- */

CUresult fx_cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev)
{
    __typeof__(&cuDeviceTotalMem_v2) real = REAL(cuDeviceTotalMem_v2);
    if (!real)
        return CUDA_ERROR_NOT_INITIALIZED;
    CUresult rc = real(bytes, dev);
    if (rc != CUDA_SUCCESS || bytes == NULL || !flexai_enforcing())
        return rc;
    if (foreign_device(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    int64_t limit = flexai_memory_limit();
    if (limit > 0 && (uint64_t)limit < *bytes)
        *bytes = (size_t)limit;
    return rc;
}
FLEXAI_ALIAS(cuDeviceTotalMem_v2);

CUresult fx_cuDeviceTotalMem(unsigned int *bytes, CUdevice dev)
{
    __typeof__(&cuDeviceTotalMem) real = REAL(cuDeviceTotalMem);
    if (!real)
        return CUDA_ERROR_NOT_INITIALIZED;
    CUresult rc = real(bytes, dev);
    if (rc != CUDA_SUCCESS || bytes == NULL || !flexai_enforcing())
        return rc;
    if (foreign_device(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    int64_t limit = flexai_memory_limit();
    if (limit > 0 && (uint64_t)limit < *bytes)
        *bytes = (unsigned int)limit;
    return rc;
}
FLEXAI_ALIAS(cuDeviceTotalMem);

/* free = what the slice has left (and the card really has), total = the slice. */
static void slice_view(unsigned long long *free_bytes, unsigned long long *total_bytes)
{
    int64_t limit = flexai_memory_limit();
    if (limit <= 0)
        return;
    flexai_pools_settle(); /* what pools gave back at a synchronisation */
    int64_t used = flexai_memory_used();
    unsigned long long left = used >= limit ? 0 : (unsigned long long)(limit - used);
    if (left < *free_bytes)
        *free_bytes = left;
    *total_bytes = (unsigned long long)limit;
}

CUresult fx_cuMemGetInfo_v2(size_t *free_bytes, size_t *total_bytes)
{
    __typeof__(&cuMemGetInfo_v2) real = REAL(cuMemGetInfo_v2);
    if (!real)
        return CUDA_ERROR_NOT_INITIALIZED;
    CUresult rc = real(free_bytes, total_bytes);
    if (rc != CUDA_SUCCESS || !flexai_enforcing())
        return rc;
    unsigned long long f = free_bytes ? *free_bytes : 0, t = total_bytes ? *total_bytes : 0;
    slice_view(&f, &t);
    if (free_bytes)
        *free_bytes = (size_t)f;
    if (total_bytes)
        *total_bytes = (size_t)t;
    return rc;
}
FLEXAI_ALIAS(cuMemGetInfo_v2);

CUresult fx_cuMemGetInfo(unsigned int *free_bytes, unsigned int *total_bytes)
{
    __typeof__(&cuMemGetInfo) real = REAL(cuMemGetInfo);
    if (!real)
        return CUDA_ERROR_NOT_INITIALIZED;
    CUresult rc = real(free_bytes, total_bytes);
    if (rc != CUDA_SUCCESS || !flexai_enforcing())
        return rc;
    unsigned long long f = free_bytes ? *free_bytes : 0, t = total_bytes ? *total_bytes : 0;
    slice_view(&f, &t);
    if (free_bytes)
        *free_bytes = f > 0xffffffffULL ? 0xffffffffu : (unsigned int)f;
    if (total_bytes)
        *total_bytes = t > 0xffffffffULL ? 0xffffffffu : (unsigned int)t;
    return rc;
}
FLEXAI_ALIAS(cuMemGetInfo);

/* ---- contexts: each process is charged its context's footprint once ------------------- */

/* 1: charged now (undo with uncharge_context on failure), 0: nothing to charge, -1: full. */
static int charge_context(void)
{
    struct flexai_region *r = flexai_region();
    struct flexai_proc *me = flexai_P.me;
    if (r == NULL || me == NULL)
        return 0;
    int64_t bytes = flexai_context_bytes(r), zero = 0;
    if (bytes <= 0)
        return 0;
    if (!__atomic_compare_exchange_n(&me->context_bytes, &zero, bytes, 0, __ATOMIC_ACQ_REL,
                                     __ATOMIC_RELAXED))
        return 0; /* already charged */
    int charged = flexai_reserve(bytes);
    if (charged <= 0) {
        __atomic_store_n(&me->context_bytes, 0, __ATOMIC_RELAXED);
        return charged;
    }
    return 1;
}

static void uncharge_context(void)
{
    struct flexai_proc *me = flexai_P.me;
    if (me == NULL)
        return;
    int64_t bytes = __atomic_exchange_n(&me->context_bytes, 0, __ATOMIC_ACQ_REL);
    flexai_unreserve(bytes);
}

#define CONTEXT_WRAPPER(name, call)                                                          \
    {                                                                                        \
        __typeof__(&name) real = REAL(name);                                                 \
        if (!real)                                                                           \
            return CUDA_ERROR_NOT_INITIALIZED;                                               \
        if (!flexai_enforcing())                                                             \
            return call;                                                                     \
        if (foreign_device(dev))                                                             \
            return CUDA_ERROR_INVALID_DEVICE;                                                \
        int charged = charge_context();                                                      \
        if (charged < 0)                                                                     \
            return CUDA_ERROR_OUT_OF_MEMORY;                                                 \
        CUresult rc = call;                                                                  \
        if (rc != CUDA_SUCCESS && charged > 0)                                               \
            uncharge_context();                                                              \
        flexai_ctx_ok = 0; /* this thread may make another context current: check again */  \
        if (rc == CUDA_SUCCESS)                                                              \
            flexai_overhead_refresh(1); /* what the context really costs (overhead.c) */     \
        return rc;                                                                           \
    }

/* Contexts that appear without the wrappers above (cudart creates its primary context through
 * the driver's private export table): the first allocation or launch of each thread asks the
 * driver for the current context's card, refuses another card, and charges the process's
 * context once; then the thread's flag is set and the check is one predictable branch. */
__thread int flexai_ctx_ok __attribute__((tls_model("initial-exec"), visibility("hidden")));
__thread CUcontext flexai_ctx_seen __attribute__((tls_model("initial-exec"), visibility("hidden")));
CUresult (*flexai_ctx_get_current)(CUcontext *);

CUresult flexai_ctx_first_use(void)
{
    static CUresult (*get_device)(CUdevice *);
    if (!flexai_enforcing())
        return CUDA_SUCCESS;
    CUresult (*get_current)(CUcontext *) = __atomic_load_n(&flexai_ctx_get_current, __ATOMIC_RELAXED);
    if (!get_current) {
        get_current = (CUresult(*)(CUcontext *))flexai_driver_sym(FLEXAI_LIB_CUDA, "cuCtxGetCurrent");
        __atomic_store_n(&flexai_ctx_get_current, get_current, __ATOMIC_RELAXED);
    }
    if (!get_device)
        get_device = (CUresult(*)(CUdevice *))flexai_driver_sym(FLEXAI_LIB_CUDA, "cuCtxGetDevice");
    CUcontext ctx = NULL;
    CUdevice d;
    if (!get_current || !get_device || get_current(&ctx) != CUDA_SUCCESS || ctx == NULL ||
        get_device(&d) != CUDA_SUCCESS)
        return CUDA_SUCCESS; /* no context: the driver refuses the call itself */
    if (foreign_device(d))
        return CUDA_ERROR_INVALID_DEVICE; /* flags stay clear: the next call asks again */
    int charged = charge_context();
    if (charged < 0)
        return CUDA_ERROR_OUT_OF_MEMORY;
    if (charged > 0)
        flexai_overhead_refresh(1); /* a context first seen: what it really costs */
    flexai_ctx_seen = ctx;
    flexai_ctx_ok = 1;
    return CUDA_SUCCESS;
}

/* Context switches: the thread's next allocation or launch checks the new current context
 * (another card's context made through the private path must not be used). The wrappers
 * cost one TLS store; the check itself runs at the next use. */
#define SWITCH_WRAPPER(name, call)                                                           \
    {                                                                                        \
        __typeof__(&name) real = REAL(name);                                                 \
        if (!real)                                                                           \
            return CUDA_ERROR_NOT_INITIALIZED;                                               \
        CUresult rc = call;                                                                  \
        flexai_ctx_ok = 0;                                                                   \
        return rc;                                                                           \
    }

CUresult fx_cuCtxSetCurrent(CUcontext ctx)
SWITCH_WRAPPER(cuCtxSetCurrent, real(ctx))
FLEXAI_ALIAS(cuCtxSetCurrent);

CUresult fx_cuCtxPushCurrent_v2(CUcontext ctx)
SWITCH_WRAPPER(cuCtxPushCurrent_v2, real(ctx))
FLEXAI_ALIAS(cuCtxPushCurrent_v2);

CUresult fx_cuCtxPopCurrent_v2(CUcontext *pctx)
SWITCH_WRAPPER(cuCtxPopCurrent_v2, real(pctx))
FLEXAI_ALIAS(cuCtxPopCurrent_v2);

CUresult fx_cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev)
CONTEXT_WRAPPER(cuDevicePrimaryCtxRetain, real(pctx, dev))
FLEXAI_ALIAS(cuDevicePrimaryCtxRetain);

CUresult fx_cuCtxCreate(CUcontext *pctx, unsigned int flags, CUdevice dev)
CONTEXT_WRAPPER(cuCtxCreate, real(pctx, flags, dev))
FLEXAI_ALIAS(cuCtxCreate);

CUresult fx_cuCtxCreate_v2(CUcontext *pctx, unsigned int flags, CUdevice dev)
CONTEXT_WRAPPER(cuCtxCreate_v2, real(pctx, flags, dev))
FLEXAI_ALIAS(cuCtxCreate_v2);

CUresult fx_cuCtxCreate_v3(CUcontext *pctx, CUexecAffinityParam *paramsArray, int numParams,
                           unsigned int flags, CUdevice dev)
CONTEXT_WRAPPER(cuCtxCreate_v3, real(pctx, paramsArray, numParams, flags, dev))
FLEXAI_ALIAS(cuCtxCreate_v3);

CUresult fx_cuCtxCreate_v4(CUcontext *pctx, CUctxCreateParams *params, unsigned int flags,
                           CUdevice dev)
CONTEXT_WRAPPER(cuCtxCreate_v4, real(pctx, params, flags, dev))
FLEXAI_ALIAS(cuCtxCreate_v4);

/* A green context (CUDA 12.4) is a context over part of the card's SMs: the same card check,
 * the same per-process charge, and its real cost read back through NVML (overhead.c). */
CUresult fx_cuGreenCtxCreate(CUgreenCtx *phCtx, CUdevResourceDesc desc, CUdevice dev,
                             unsigned int flags)
CONTEXT_WRAPPER(cuGreenCtxCreate, real(phCtx, desc, dev, flags))
FLEXAI_ALIAS(cuGreenCtxCreate);

/* ---- allocations ---------------------------------------------------------------------- */

/* After the driver call: keep the reservation and remember it, or give it back. */
static CUresult commit(int charged, int kind, uint64_t key, int64_t bytes, CUresult rc)
{
    if (charged <= 0)
        return rc;
    if (rc != CUDA_SUCCESS)
        flexai_unreserve(bytes);
    else
        (void)flexai_sizemap_put(kind, key, bytes); /* if it cannot be remembered, it stays
                                                       charged until the process exits */
    return rc;
}

/* Take the allocation out of the map before the driver frees it; -1 when not ours. */
static int64_t release_begin(int kind, uint64_t key)
{
    return flexai_sizemap_take(kind, key);
}

static CUresult release_end(int kind, uint64_t key, int64_t bytes, CUresult rc)
{
    if (bytes < 0)
        return rc;
    if (rc == CUDA_SUCCESS)
        flexai_unreserve(bytes);
    else
        flexai_sizemap_put(kind, key, bytes); /* still allocated */
    return rc;
}

#define ALLOC_WRAPPER(name, kind, keyexpr, size, call)                                       \
    {                                                                                        \
        __typeof__(&name) real = REAL(name);                                                 \
        if (!real)                                                                           \
            return CUDA_ERROR_NOT_INITIALIZED;                                               \
        if (!flexai_enforcing())                                                             \
            return call;                                                                     \
        FLEXAI_CTX_FIRST_USE();                                                              \
        int64_t bytes = (int64_t)(size);                                                     \
        int charged = flexai_reserve(bytes);                                                 \
        if (charged < 0 && flexai_pools_settle()) /* pools gave memory back */               \
            charged = flexai_reserve(bytes);                                                 \
        if (charged < 0)                                                                     \
            return CUDA_ERROR_OUT_OF_MEMORY;                                                 \
        CUresult rc = call;                                                                  \
        return commit(charged, kind, rc == CUDA_SUCCESS ? (uint64_t)(keyexpr) : 0, bytes, rc); \
    }

#define FREE_WRAPPER(name, kind, key, call)                                                  \
    {                                                                                        \
        __typeof__(&name) real = REAL(name);                                                 \
        if (!real)                                                                           \
            return CUDA_ERROR_NOT_INITIALIZED;                                               \
        if (!flexai_enforcing())                                                             \
            return call;                                                                     \
        int64_t bytes = release_begin(kind, (uint64_t)(key));                                \
        CUresult rc = call;                                                                  \
        return release_end(kind, (uint64_t)(key), bytes, rc);                                \
    }

CUresult fx_cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize)
ALLOC_WRAPPER(cuMemAlloc_v2, FLEXAI_PTR, *dptr, bytesize, real(dptr, bytesize))
FLEXAI_ALIAS(cuMemAlloc_v2);

CUresult fx_cuMemAlloc(CUdeviceptr_v1 *dptr, unsigned int bytesize)
ALLOC_WRAPPER(cuMemAlloc, FLEXAI_PTR, *dptr, bytesize, real(dptr, bytesize))
FLEXAI_ALIAS(cuMemAlloc);

CUresult fx_cuMemAllocManaged(CUdeviceptr *dptr, size_t bytesize, unsigned int flags)
ALLOC_WRAPPER(cuMemAllocManaged, FLEXAI_PTR, *dptr, bytesize, real(dptr, bytesize, flags))
FLEXAI_ALIAS(cuMemAllocManaged);

/* cuMemAllocAsync, cuMemAllocFromPoolAsync (+_ptsz): poolmem.c (pools' reserves are charged). */

CUresult fx_cuMemFree_v2(CUdeviceptr dptr)
FREE_WRAPPER(cuMemFree_v2, FLEXAI_PTR, dptr, real(dptr))
FLEXAI_ALIAS(cuMemFree_v2);

CUresult fx_cuMemFree(CUdeviceptr_v1 dptr)
FREE_WRAPPER(cuMemFree, FLEXAI_PTR, dptr, real(dptr))
FLEXAI_ALIAS(cuMemFree);

/* Stream-ordered frees give the bytes back when the call is made, not when the stream
 * reaches it: a later allocation on the same stream reuses them in stream order. */
CUresult fx_cuMemFreeAsync(CUdeviceptr dptr, CUstream hStream)
FREE_WRAPPER(cuMemFreeAsync, FLEXAI_PTR, dptr, real(dptr, hStream))
FLEXAI_ALIAS(cuMemFreeAsync);

CUresult fx_cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream hStream)
FREE_WRAPPER(cuMemFreeAsync_ptsz, FLEXAI_PTR, dptr, real(dptr, hStream))
FLEXAI_ALIAS(cuMemFreeAsync_ptsz);

/* Pitched allocations: reserve for the widest pitch the driver may choose, then settle on
 * what it chose. */
#define PITCH_ALIGN 512u

#define PITCH_WRAPPER(name, ptrtype, sizetype)                                               \
    {                                                                                        \
        __typeof__(&name) real = REAL(name);                                                 \
        if (!real)                                                                           \
            return CUDA_ERROR_NOT_INITIALIZED;                                               \
        if (!flexai_enforcing())                                                             \
            return real(dptr, pPitch, WidthInBytes, Height, ElementSizeBytes);               \
        FLEXAI_CTX_FIRST_USE();                                                              \
        unsigned long long width = ((unsigned long long)WidthInBytes + PITCH_ALIGN - 1) /    \
                                   PITCH_ALIGN * PITCH_ALIGN;                                \
        int64_t estimate = (Height && width > (unsigned long long)INT64_MAX / Height)        \
                               ? INT64_MAX                                                   \
                               : (int64_t)(width * Height);                                  \
        int charged = flexai_reserve(estimate);                                              \
        if (charged < 0)                                                                     \
            return CUDA_ERROR_OUT_OF_MEMORY;                                                 \
        CUresult rc = real(dptr, pPitch, WidthInBytes, Height, ElementSizeBytes);            \
        if (rc != CUDA_SUCCESS || charged == 0)                                              \
            return commit(charged, FLEXAI_PTR, 0, estimate, rc);                             \
        int64_t actual = (int64_t)((unsigned long long)*pPitch * Height);                    \
        if (actual > estimate) {                                                             \
            if (flexai_reserve(actual - estimate) < 0) {                                     \
                __typeof__(&cuMemFree_v2) f = REAL(cuMemFree_v2);                            \
                if (f)                                                                       \
                    f((CUdeviceptr)*dptr);                                                   \
                flexai_unreserve(estimate);                                                  \
                return CUDA_ERROR_OUT_OF_MEMORY;                                             \
            }                                                                                \
        } else if (actual < estimate) {                                                      \
            flexai_unreserve(estimate - actual);                                             \
        }                                                                                    \
        return commit(charged, FLEXAI_PTR, (uint64_t)*dptr, actual, rc);                    \
    }

CUresult fx_cuMemAllocPitch_v2(CUdeviceptr *dptr, size_t *pPitch, size_t WidthInBytes,
                               size_t Height, unsigned int ElementSizeBytes)
PITCH_WRAPPER(cuMemAllocPitch_v2, CUdeviceptr, size_t)
FLEXAI_ALIAS(cuMemAllocPitch_v2);

CUresult fx_cuMemAllocPitch(CUdeviceptr_v1 *dptr, unsigned int *pPitch, unsigned int WidthInBytes,
                            unsigned int Height, unsigned int ElementSizeBytes)
PITCH_WRAPPER(cuMemAllocPitch, CUdeviceptr_v1, unsigned int)
FLEXAI_ALIAS(cuMemAllocPitch);

/* VMM (cuMemCreate, cuMemRelease, cuMemMap, ...) and IPC imports: vmm.c. */

/* ---- arrays ---------------------------------------------------------------------------- */

/* Bytes per element of one channel (for packed formats: of the whole element). */
static uint64_t element_bytes(int format, unsigned channels, int *packed)
{
    *packed = 0;
    switch (format) {
    case 0x01: case 0x08: return 1;                 /* (un)signed int8 */
    case 0x02: case 0x09: case 0x10: return 2;      /* (un)signed int16, half */
    case 0x03: case 0x0a: case 0x20: return 4;      /* (un)signed int32, float */
    default: break;
    }
    *packed = 1;
    (void)channels;
    switch (format) {
    case 0xc0: case 0xc6: return 1;                 /* unorm/snorm int8 x1 */
    case 0xc1: case 0xc7: case 0xc3: case 0xc9: return 2;
    case 0xc2: case 0xc8: case 0xc4: case 0xca: return 4;
    case 0xc5: case 0xcb: return 8;
    case 0xb0: case 0xa2: return 2;                 /* NV12, NV16: at most 2 bytes a pixel */
    default: return (format >= 0x91 && format <= 0x9e) ? 1 : 8; /* BCn: <= 1; others: 8 */
    }
}

static int64_t array_bytes(size_t w, size_t h, size_t d, int format, unsigned channels,
                           unsigned flags, unsigned levels)
{
    int packed;
    uint64_t elem = element_bytes(format, channels, &packed);
    if (!packed)
        elem *= channels ? channels : 1;
    int fixed_depth = (flags & 0x05) != 0; /* layered or cubemap: depth counts layers */
    unsigned __int128 total = 0;
    if (levels == 0)
        levels = 1;
    for (unsigned l = 0; l < levels && l < 64; l++) {
        uint64_t lw = w >> l, lh = h >> l, ld = fixed_depth ? d : d >> l;
        lw = lw ? lw : 1;
        lh = lh ? lh : 1;
        ld = ld ? ld : 1;
        total += (unsigned __int128)lw * lh * ld * elem;
        if (total > (unsigned __int128)INT64_MAX)
            return INT64_MAX;
    }
    return (int64_t)total;
}

CUresult fx_cuArrayCreate_v2(CUarray *pHandle, const CUDA_ARRAY_DESCRIPTOR *desc)
ALLOC_WRAPPER(cuArrayCreate_v2, FLEXAI_ARRAY, *pHandle,
              desc ? array_bytes(desc->Width, desc->Height, 1, desc->Format, desc->NumChannels, 0, 1) : 0,
              real(pHandle, desc))
FLEXAI_ALIAS(cuArrayCreate_v2);

CUresult fx_cuArrayCreate(CUarray *pHandle, const CUDA_ARRAY_DESCRIPTOR_v1 *desc)
ALLOC_WRAPPER(cuArrayCreate, FLEXAI_ARRAY, *pHandle,
              desc ? array_bytes(desc->Width, desc->Height, 1, desc->Format, desc->NumChannels, 0, 1) : 0,
              real(pHandle, desc))
FLEXAI_ALIAS(cuArrayCreate);

CUresult fx_cuArray3DCreate_v2(CUarray *pHandle, const CUDA_ARRAY3D_DESCRIPTOR *desc)
ALLOC_WRAPPER(cuArray3DCreate_v2, FLEXAI_ARRAY, *pHandle,
              desc ? array_bytes(desc->Width, desc->Height, desc->Depth, desc->Format,
                                 desc->NumChannels, desc->Flags, 1) : 0,
              real(pHandle, desc))
FLEXAI_ALIAS(cuArray3DCreate_v2);

CUresult fx_cuArray3DCreate(CUarray *pHandle, const CUDA_ARRAY3D_DESCRIPTOR_v1 *desc)
ALLOC_WRAPPER(cuArray3DCreate, FLEXAI_ARRAY, *pHandle,
              desc ? array_bytes(desc->Width, desc->Height, desc->Depth, desc->Format,
                                 desc->NumChannels, desc->Flags, 1) : 0,
              real(pHandle, desc))
FLEXAI_ALIAS(cuArray3DCreate);

CUresult fx_cuMipmappedArrayCreate(CUmipmappedArray *pHandle, const CUDA_ARRAY3D_DESCRIPTOR *desc,
                                   unsigned int numMipmapLevels)
ALLOC_WRAPPER(cuMipmappedArrayCreate, FLEXAI_MIPMAP, *pHandle,
              desc ? array_bytes(desc->Width, desc->Height, desc->Depth, desc->Format,
                                 desc->NumChannels, desc->Flags, numMipmapLevels) : 0,
              real(pHandle, desc, numMipmapLevels))
FLEXAI_ALIAS(cuMipmappedArrayCreate);

CUresult fx_cuArrayDestroy(CUarray hArray)
FREE_WRAPPER(cuArrayDestroy, FLEXAI_ARRAY, (uintptr_t)hArray, real(hArray))
FLEXAI_ALIAS(cuArrayDestroy);

CUresult fx_cuMipmappedArrayDestroy(CUmipmappedArray hMipmappedArray)
FREE_WRAPPER(cuMipmappedArrayDestroy, FLEXAI_MIPMAP, (uintptr_t)hMipmappedArray,
             real(hMipmappedArray))
FLEXAI_ALIAS(cuMipmappedArrayDestroy);

/* ---- what the core asks of CUDA (core/vendors.c) ---- */

/* The slice's card's memory through the driver, for limits given as a share; 0 unknown. */
static int64_t cu_card_memory(void)
{
    CUdevice dev;
    size_t total = 0;
    __typeof__(&cuDeviceTotalMem_v2) f = REAL(cuDeviceTotalMem_v2);
    if (flexai_cu_device(&dev) != 0 || !f || f(&total, dev) != CUDA_SUCCESS)
        return 0;
    return (int64_t)total;
}

static const struct flexai_vendor CUDA_VENDOR = {"CUDA", cu_card_memory, flexai_overhead_refresh};

__attribute__((constructor(101))) static void cuda_register(void)
{
    flexai_vendor_register(FLEXAI_VENDOR_CUDA, &CUDA_VENDOR);
}
