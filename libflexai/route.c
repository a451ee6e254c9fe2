/* Routing: how a program reaches libflexai's wrappers instead of the driver's functions.
 *
 * Programs reach the driver three ways, and all three are covered:
 *  - linked against libcuda / libnvidia-ml: the preloaded library's exports come first in
 *    the global scope, so the program binds to the wrappers;
 *  - dlopen + dlsym (pynvml, cuda-bindings, libcudart): libflexai defines dlsym; for an
 *    intercepted name whose real definition lies in the driver library it returns the
 *    wrapper and remembers the real address; everything else is glibc's dlsym, reached by a
 *    tail call so glibc still sees the caller's return address (RTLD_NEXT keeps working);
 *  - cuGetProcAddress(_v2): the wrapper asks the real driver, works out which variant
 *    (_v2, _v3, _v4, _ptsz) the driver chose for the requested CUDA version and flags, and
 *    hands out that variant's wrapper, which calls the address the driver returned.
 *
 * Nothing happens before the first lookup of a cu* or nvml* name: processes that never
 * touch the driver pay one prefix test per dlsym call. Driver libraries are only ever
 * opened with RTLD_NOLOAD (or, if a program linked against them calls a wrapper before
 * anything resolved it, loaded then): libflexai never links them.
 */
#include "flexai.h"

#include <dlfcn.h>
#include <string.h>

void *flexai_real_ptr[FX_COUNT];

struct flexai_entry {
    const char *name;
    void *wrapper;
    int lib;
};

static const struct flexai_entry TABLE[FX_COUNT] = {
#define FLEXAI_ROW(n, l) [FX_##n] = {#n, (void *)&fx_##n, FLEXAI_LIB_##l},
    FLEXAI_SYMBOLS(FLEXAI_ROW)
#undef FLEXAI_ROW
};

static const char *const LIB_SONAME[2] = {"libcuda.so.1", "libnvidia-ml.so.1"};
static const char *const LIB_PREFIX[2] = {"libcuda.so", "libnvidia-ml.so"};

/* glibc's dlsym, found once. */
typedef void *(*dlsym_fn)(void *, const char *);
static dlsym_fn real_dlsym_cached;

static dlsym_fn get_real_dlsym(void)
{
    dlsym_fn f = __atomic_load_n(&real_dlsym_cached, __ATOMIC_ACQUIRE);
    if (likely(f != NULL))
        return f;
    f = (dlsym_fn)dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.34");
    if (f == NULL)
        f = (dlsym_fn)dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.2.5");
    __atomic_store_n(&real_dlsym_cached, f, __ATOMIC_RELEASE);
    return f;
}

void *flexai_real_dlsym(void *handle, const char *name)
{
    dlsym_fn f = get_real_dlsym();
    return f ? f(handle, name) : NULL;
}

/* The driver library, if this process loaded it (load=1: load it now if not). */
static void *lib_handles[2];

static void *lib_handle(int lib, int load)
{
    void *h = __atomic_load_n(&lib_handles[lib], __ATOMIC_ACQUIRE);
    if (h != NULL)
        return h;
    h = dlopen(LIB_SONAME[lib], RTLD_LAZY | RTLD_NOLOAD);
    if (h == NULL && load)
        h = dlopen(LIB_SONAME[lib], RTLD_LAZY);
    if (h == NULL)
        return NULL;
    void *expected = NULL;
    if (!__atomic_compare_exchange_n(&lib_handles[lib], &expected, h, 0, __ATOMIC_ACQ_REL,
                                     __ATOMIC_ACQUIRE))
        dlclose(h); /* another thread won; drop our reference */
    return __atomic_load_n(&lib_handles[lib], __ATOMIC_ACQUIRE);
}

void *flexai_driver_sym(int lib, const char *name)
{
    void *h = lib_handle(lib, 0);
    return h ? flexai_real_dlsym(h, name) : NULL;
}

static void store_real(int sym, void *p)
{
    void *expected = NULL;
    __atomic_compare_exchange_n(&flexai_real_ptr[sym], &expected, p, 0, __ATOMIC_ACQ_REL,
                                __ATOMIC_ACQUIRE);
}

void *flexai_real_slow(enum flexai_sym sym)
{
    void *h = lib_handle(TABLE[sym].lib, 1);
    if (h == NULL)
        return NULL;
    void *p = flexai_real_dlsym(h, TABLE[sym].name);
    if (p == NULL || p == TABLE[sym].wrapper)
        return NULL;
    store_real(sym, p);
    return __atomic_load_n(&flexai_real_ptr[sym], __ATOMIC_ACQUIRE);
}

static int lookup(const char *name)
{
    for (int i = 0; i < FX_COUNT; i++)
        if (strcmp(TABLE[i].name, name) == 0)
            return i;
    return -1;
}

static int from_lib(void *addr, int lib)
{
    Dl_info info;
    if (!dladdr(addr, &info) || info.dli_fname == NULL)
        return 0;
    const char *base = strrchr(info.dli_fname, '/');
    base = base ? base + 1 : info.dli_fname;
    return strncmp(base, LIB_PREFIX[lib], strlen(LIB_PREFIX[lib])) == 0;
}

/* 1 when `name` is ours to answer (result in *out), 0 to hand the lookup to glibc. */
static int route_dlsym(void *handle, const char *name, void **out)
{
    int sym = lookup(name);
    if (sym < 0 || !flexai_enforcing())
        return 0;
    Lmid_t lmid;
    if (handle != RTLD_DEFAULT && dlinfo(handle, RTLD_DI_LMID, &lmid) == 0 && lmid != LM_ID_BASE)
        return 0; /* a driver loaded with dlmopen into another namespace: not ours to wrap */
    void *real = flexai_real_dlsym(handle, name);
    if (real == NULL) {
        *out = NULL;
        return 1;
    }
    int lib = TABLE[sym].lib;
    if (real == TABLE[sym].wrapper) {
        /* The handle's scope found our own export first (RTLD_DEFAULT, dlopen(NULL)):
         * answer with the wrapper only if the driver is really loaded. */
        void *h = lib_handle(lib, 0);
        real = h ? flexai_real_dlsym(h, name) : NULL;
        if (real == NULL || real == TABLE[sym].wrapper) {
            *out = NULL;
            return 1;
        }
    } else if (!from_lib(real, lib)) {
        *out = real; /* some other library's function of that name: not ours */
        return 1;
    }
    store_real(sym, real);
    *out = TABLE[sym].wrapper;
    return 1;
}

FLEXAI_EXPORT void *dlsym(void *handle, const char *name)
{
    const char *n = name;
    __asm__("" : "+r"(n)); /* dlfcn.h declares name nonnull; callers do not always honour it */
    if (n != NULL && handle != RTLD_NEXT &&
        ((name[0] == 'c' && name[1] == 'u') ||
         (name[0] == 'n' && name[1] == 'v' && name[2] == 'm' && name[3] == 'l'))) {
        void *out;
        if (route_dlsym(handle, name, &out))
            return out;
    }
    if (n != NULL && handle != RTLD_NEXT && name[0] == 'a' && name[1] == 'c' && name[2] == 'l') {
        void *out; /* AscendCL: acl_view.c */
        if (flexai_acl_dlsym(handle, name, &out))
            return out;
    }
    /* A tail call: glibc's dlsym sees our caller's return address, so RTLD_NEXT lookups
     * from other libraries keep their meaning. */
    return get_real_dlsym()(handle, name);
}

/* ---- cuGetProcAddress ------------------------------------------------------------------ */

struct variant {
    const char *base;
    int min_version; /* the CUDA version that introduced this variant */
    int ptsz;        /* 1: the per-thread-default-stream variant */
    int sym;
};

/* Which variant the driver hands out for (symbol, cudaVersion): the newest whose version is
 * at most the requested one (the versions of cudaTypedefs.h's PFN_<name>_v<version>). */
static const struct variant VARIANTS[] = {
    {"cuGetProcAddress", 11030, 0, FX_cuGetProcAddress},
    {"cuGetProcAddress", 12000, 0, FX_cuGetProcAddress_v2},
    {"cuDeviceGetCount", 2000, 0, FX_cuDeviceGetCount},
    {"cuDeviceGet", 2000, 0, FX_cuDeviceGet},
    {"cuDeviceGetByPCIBusId", 4010, 0, FX_cuDeviceGetByPCIBusId},
    {"cuDeviceTotalMem", 2000, 0, FX_cuDeviceTotalMem},
    {"cuDeviceTotalMem", 3020, 0, FX_cuDeviceTotalMem_v2},
    {"cuMemGetInfo", 2000, 0, FX_cuMemGetInfo},
    {"cuMemGetInfo", 3020, 0, FX_cuMemGetInfo_v2},
    {"cuDevicePrimaryCtxRetain", 7000, 0, FX_cuDevicePrimaryCtxRetain},
    {"cuCtxCreate", 2000, 0, FX_cuCtxCreate},
    {"cuCtxCreate", 3020, 0, FX_cuCtxCreate_v2},
    {"cuCtxCreate", 11040, 0, FX_cuCtxCreate_v3},
    {"cuCtxCreate", 12050, 0, FX_cuCtxCreate_v4},
    {"cuMemAlloc", 2000, 0, FX_cuMemAlloc},
    {"cuMemAlloc", 3020, 0, FX_cuMemAlloc_v2},
    {"cuMemAllocPitch", 2000, 0, FX_cuMemAllocPitch},
    {"cuMemAllocPitch", 3020, 0, FX_cuMemAllocPitch_v2},
    {"cuMemFree", 2000, 0, FX_cuMemFree},
    {"cuMemFree", 3020, 0, FX_cuMemFree_v2},
    {"cuMemAllocManaged", 6000, 0, FX_cuMemAllocManaged},
    {"cuMemAllocAsync", 11020, 0, FX_cuMemAllocAsync},
    {"cuMemAllocAsync", 11020, 1, FX_cuMemAllocAsync_ptsz},
    {"cuMemAllocFromPoolAsync", 11020, 0, FX_cuMemAllocFromPoolAsync},
    {"cuMemAllocFromPoolAsync", 11020, 1, FX_cuMemAllocFromPoolAsync_ptsz},
    {"cuMemFreeAsync", 11020, 0, FX_cuMemFreeAsync},
    {"cuMemFreeAsync", 11020, 1, FX_cuMemFreeAsync_ptsz},
    {"cuMemCreate", 10020, 0, FX_cuMemCreate},
    {"cuMemRelease", 10020, 0, FX_cuMemRelease},
    {"cuArrayCreate", 2000, 0, FX_cuArrayCreate},
    {"cuArrayCreate", 3020, 0, FX_cuArrayCreate_v2},
    {"cuArray3DCreate", 2000, 0, FX_cuArray3DCreate},
    {"cuArray3DCreate", 3020, 0, FX_cuArray3DCreate_v2},
    {"cuArrayDestroy", 2000, 0, FX_cuArrayDestroy},
    {"cuMipmappedArrayCreate", 5000, 0, FX_cuMipmappedArrayCreate},
    {"cuMipmappedArrayDestroy", 5000, 0, FX_cuMipmappedArrayDestroy},
    {"cuLaunchKernel", 4000, 0, FX_cuLaunchKernel},
    {"cuLaunchKernel", 7000, 1, FX_cuLaunchKernel_ptsz},
    {"cuLaunchKernelEx", 11060, 0, FX_cuLaunchKernelEx},
    {"cuLaunchKernelEx", 11060, 1, FX_cuLaunchKernelEx_ptsz},
    {"cuLaunchCooperativeKernel", 9000, 0, FX_cuLaunchCooperativeKernel},
    {"cuLaunchCooperativeKernel", 9000, 1, FX_cuLaunchCooperativeKernel_ptsz},
    {"cuGraphLaunch", 10000, 0, FX_cuGraphLaunch},
    {"cuGraphLaunch", 10000, 1, FX_cuGraphLaunch_ptsz},
};
#define NVARIANTS ((int)(sizeof VARIANTS / sizeof VARIANTS[0]))

static CUresult ask_driver(const char *symbol, void **pfn, int version, cuuint64_t flags)
{
    __typeof__(&cuGetProcAddress_v2) v2 = REAL(cuGetProcAddress_v2);
    if (v2 != NULL)
        return v2(symbol, pfn, version, flags, NULL);
    __typeof__(&cuGetProcAddress) v1 = REAL(cuGetProcAddress);
    return v1 ? v1(symbol, pfn, version, flags) : CUDA_ERROR_NOT_INITIALIZED;
}

/* Did the driver hand out the per-thread-default-stream variant? */
static int wants_ptsz(const char *symbol, int version, cuuint64_t flags, void *got)
{
    if (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM)
        return 1;
    if (flags & CU_GET_PROC_ADDRESS_LEGACY_STREAM)
        return 0;
    /* CU_GET_PROC_ADDRESS_DEFAULT: the driver chose; compare with the explicit answers. */
    void *ptds = NULL, *legacy = NULL;
    if (ask_driver(symbol, &ptds, version, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) != 0 ||
        ask_driver(symbol, &legacy, version, CU_GET_PROC_ADDRESS_LEGACY_STREAM) != 0)
        return 0;
    return ptds == got && legacy != got;
}

static int variant_for(const char *symbol, int version, cuuint64_t flags, void *got)
{
    int has_ptsz = 0, found = 0;
    for (int i = 0; i < NVARIANTS; i++) {
        if (strcmp(VARIANTS[i].base, symbol) == 0) {
            found = 1;
            has_ptsz |= VARIANTS[i].ptsz;
        }
    }
    if (!found) {
        /* A versioned name asked for directly ("cuMemAlloc_v2"). */
        int sym = lookup(symbol);
        return (sym >= 0 && TABLE[sym].lib == FLEXAI_LIB_CUDA) ? sym : -1;
    }
    int ptsz = has_ptsz ? wants_ptsz(symbol, version, flags, got) : 0;
    int best = -1, best_version = -1;
    for (int i = 0; i < NVARIANTS; i++) {
        const struct variant *v = &VARIANTS[i];
        if (v->ptsz == ptsz && v->min_version <= version && v->min_version > best_version &&
            strcmp(v->base, symbol) == 0) {
            best = v->sym;
            best_version = v->min_version;
        }
    }
    return best;
}

static CUresult substitute(const char *symbol, void **pfn, int version, cuuint64_t flags,
                           CUresult rc)
{
    if (rc != CUDA_SUCCESS || symbol == NULL || pfn == NULL || *pfn == NULL ||
        !flexai_enforcing())
        return rc;
    int sym = variant_for(symbol, version, flags, *pfn);
    if (sym < 0)
        return rc;
    store_real(sym, *pfn);
    *pfn = TABLE[sym].wrapper;
    return rc;
}

CUresult fx_cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags)
{
    __typeof__(&cuGetProcAddress) real = REAL(cuGetProcAddress);
    if (real == NULL)
        return CUDA_ERROR_NOT_INITIALIZED;
    return substitute(symbol, pfn, cudaVersion, flags, real(symbol, pfn, cudaVersion, flags));
}
FLEXAI_ALIAS(cuGetProcAddress);

CUresult fx_cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion,
                                cuuint64_t flags, CUdriverProcAddressQueryResult *symbolStatus)
{
    __typeof__(&cuGetProcAddress_v2) real = REAL(cuGetProcAddress_v2);
    if (real == NULL)
        return CUDA_ERROR_NOT_INITIALIZED;
    CUresult rc = real(symbol, pfn, cudaVersion, flags, symbolStatus);
    return substitute(symbol, pfn, cudaVersion, flags, rc);
}
FLEXAI_ALIAS(cuGetProcAddress_v2);
