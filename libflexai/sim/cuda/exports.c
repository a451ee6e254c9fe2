/* The exported entry points of the simulated libcuda.so.1 and cuGetProcAddress.
 *
 * Each exported symbol is a thin wrapper around the hidden sim_* implementation.
 * cuGetProcAddress(_v2) returns the address of the hidden implementation itself, as the real
 * driver returns its internal entry points: a preload library that only interposes the
 * exported names does not see calls made through those pointers. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "simcuda.h"

#define SIM_API(exp, base, ver, pt, params, args) \
    __attribute__((visibility("default"))) CUresult exp params { return sim_##exp args; }
#define SIM_API_ALIAS(exp, base, ver, pt)
#include "api.def"
#undef SIM_API
#undef SIM_API_ALIAS

struct proc_entry {
    const char *base;
    int version;
    int per_thread;
    void *fn;
};

static const struct proc_entry proc_table[] = {
#define SIM_API(exp, base, ver, pt, params, args) {#base, ver, pt, (void *)sim_##exp},
#define SIM_API_ALIAS(exp, base, ver, pt) {#base, ver, pt, (void *)sim_##exp},
#include "api.def"
#undef SIM_API
#undef SIM_API_ALIAS
};

static int trace_enabled(void)
{
    static _Atomic int cached = -1;
    int v = atomic_load(&cached);
    if (v < 0) {
        const char *e = getenv("FLEXAI_SIM_TRACE");
        v = (e && *e && strcmp(e, "0")) ? 1 : 0;
        atomic_store(&cached, v);
    }
    return v;
}

static CUresult get_proc(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags,
                         CUdriverProcAddressQueryResult *status)
{
    if (status)
        *status = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    if (!symbol || !pfn)
        return CUDA_ERROR_INVALID_VALUE;
    *pfn = NULL;
    if (flags & ~(cuuint64_t)(CU_GET_PROC_ADDRESS_LEGACY_STREAM |
                              CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM))
        return CUDA_ERROR_INVALID_VALUE;
    int want_pt = (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) != 0;
    const struct proc_entry *best = NULL, *best_pt = NULL;
    int known = 0;
    for (size_t i = 0; i < sizeof proc_table / sizeof proc_table[0]; i++) {
        const struct proc_entry *e = &proc_table[i];
        if (strcmp(e->base, symbol))
            continue;
        known = 1;
        if (e->version > cudaVersion)
            continue;
        if (e->per_thread) {
            if (!best_pt || e->version > best_pt->version)
                best_pt = e;
        } else if (!best || e->version > best->version) {
            best = e;
        }
    }
    const struct proc_entry *pick = best;
    if (want_pt && best_pt && (!best || best_pt->version >= best->version))
        pick = best_pt;
    if (!pick && best_pt && !want_pt)
        pick = NULL;
    if (trace_enabled())
        fprintf(stderr, "flexai-sim: cuGetProcAddress(%s, %d, %llu) -> %s\n", symbol, cudaVersion,
                (unsigned long long)flags, pick ? "found" : known ? "version" : "unknown");
    if (!pick) {
        if (status)
            *status = known ? CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT
                            : CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
        return CUDA_ERROR_NOT_FOUND;
    }
    *pfn = pick->fn;
    if (status)
        *status = CU_GET_PROC_ADDRESS_SUCCESS;
    return CUDA_SUCCESS;
}

CUresult sim_cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags)
{
    return get_proc(symbol, pfn, cudaVersion, flags, NULL);
}

CUresult sim_cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags,
                                 CUdriverProcAddressQueryResult *symbolStatus)
{
    return get_proc(symbol, pfn, cudaVersion, flags, symbolStatus);
}

/* cudart's private path: libcudart creates its primary context through a function of a
 * driver export table, not through cuDevicePrimaryCtxRetain/cuCtxCreate, so a library that
 * interposes those entry points never sees the context appear. The simulator models it with
 * one table (any table id): {size, fn} where fn retains the primary context of a device and
 * makes it current, calling the internal implementation directly. */
static CUresult private_primary_ctx(CUcontext *pctx, CUdevice dev)
{
    CUcontext ctx = NULL;
    CUresult rc = sim_cuDevicePrimaryCtxRetain(&ctx, dev);
    if (rc != CUDA_SUCCESS)
        return rc;
    rc = sim_cuCtxSetCurrent(ctx);
    if (rc == CUDA_SUCCESS && pctx)
        *pctx = ctx;
    return rc;
}

/* cudart also loads its kernels' modules lazily, on first launch, through private paths:
 * the table's second function loads a module into the current context (costing module_bytes
 * like cuModuleLoadData) without any exported entry point seeing it. */
static CUresult private_module_load(CUmodule *module, const void *image)
{
    return sim_cuModuleLoadData(module, image);
}

static const struct {
    size_t size;
    CUresult (*primary_ctx)(CUcontext *, CUdevice);
    CUresult (*module_load)(CUmodule *, const void *);
} private_table = {sizeof private_table, private_primary_ctx, private_module_load};

CUresult sim_cuGetExportTable(const void **ppExportTable, const CUuuid *pExportTableId)
{
    if (!ppExportTable || !pExportTableId)
        return CUDA_ERROR_INVALID_VALUE;
    *ppExportTable = &private_table;
    return CUDA_SUCCESS;
}
