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
 * A driver in another link-map namespace (dlmopen) is wrapped too, by the copy of libflexai
 * in that namespace: see "link-map namespaces" below.
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

/* ---- link-map namespaces (dlmopen) ------------------------------------------------------
 *
 * dlmopen loads a library into another link-map namespace with its own copy of everything
 * it needs, and the preload does not reach that namespace: its libcuda would answer
 * unwrapped, and its allocations would escape the slice. Every way into such a namespace
 * ends at wrappers instead:
 *  - dlmopen(LM_ID_NEWLM, file) first loads libflexai itself into the new namespace and then
 *    `file` there. libflexai is the namespace's first object, so its exports come first in the
 *    namespace's global scope, as the preload's do in the base namespace: a library in that
 *    namespace that links, dlopens + dlsyms or dlmopens the driver reaches that copy's
 *    wrappers, which call that namespace's driver.
 *  - dlsym on a handle of another namespace, for a cu*, nvml* or acl* name, is answered by
 *    the copy of libflexai in that namespace (loaded there now if the namespace was made
 *    another way), so the caller gets the copy's wrappers, and cuGetProcAddress obtained so
 *    hands out the copy's wrappers. If no copy can be loaded there, driver functions from that
 *    namespace are refused (NULL), never handed out unwrapped.
 *  - dlsym(libc handle, "dlsym" / "dlmopen") answers with libflexai's, not glibc's.
 * Every copy reads the same slice file and region path and charges the same region from a
 * slot of its own (each holds its own OFD lock on its own open of the file): one budget,
 * each byte charged by the one copy whose wrapper allocated it.
 *
 * A namespace made by dlmopen(LM_ID_NEWLM) keeps its copy of libflexai (and so stays in use)
 * until the process exits; glibc has 16 namespaces.
 */
typedef void *(*dlmopen_fn)(Lmid_t, const char *, int);
static dlmopen_fn real_dlmopen_cached;
/* This copy's own dlsym and dlmopen (hidden aliases: in a namespace where this copy is not the
 * first object, the plain names would resolve to libc's). */
extern __typeof__(dlsym) flexai_own_dlsym;
extern __typeof__(dlmopen) flexai_own_dlmopen;

static dlmopen_fn get_real_dlmopen(void)
{
    dlmopen_fn f = __atomic_load_n(&real_dlmopen_cached, __ATOMIC_ACQUIRE);
    if (likely(f != NULL))
        return f;
    f = (dlmopen_fn)dlvsym(RTLD_NEXT, "dlmopen", "GLIBC_2.34");
    if (f == NULL)
        f = (dlmopen_fn)dlvsym(RTLD_NEXT, "dlmopen", "GLIBC_2.3.4");
    __atomic_store_n(&real_dlmopen_cached, f, __ATOMIC_RELEASE);
    return f;
}

/* This copy of the library: its file and its namespace. */
static pthread_once_t self_once = PTHREAD_ONCE_INIT;
static char self_path[4096];
static Lmid_t self_lmid = LM_ID_BASE;

static void self_init(void)
{
    Dl_info info;
    void *map = NULL;
    if (dladdr1((void *)&self_init, &info, &map, RTLD_DL_LINKMAP) == 0)
        return;
    if (info.dli_fname != NULL && info.dli_fname[0] == '/' &&
        strlen(info.dli_fname) < sizeof self_path)
        strcpy(self_path, info.dli_fname);
    Lmid_t lmid;
    if (map != NULL && dlinfo(map, RTLD_DI_LMID, &lmid) == 0) /* a glibc handle is its map */
        self_lmid = lmid;
}

static Lmid_t own_lmid(void)
{
    pthread_once(&self_once, self_init);
    return self_lmid;
}

/* dlsym of the copy of libflexai in namespace i (glibc has 16; the table has room). */
#define NS_SLOTS 64
static dlsym_fn ns_copy[NS_SLOTS];

static dlsym_fn remember_copy(Lmid_t lmid, void *h)
{
    dlsym_fn f = (dlsym_fn)flexai_real_dlsym(h, "dlsym");
    if (f == NULL || f == &flexai_own_dlsym) {
        dlclose(h);
        return NULL;
    }
    dlsym_fn expected = NULL;
    if (!__atomic_compare_exchange_n(&ns_copy[lmid], &expected, f, 0, __ATOMIC_ACQ_REL,
                                     __ATOMIC_ACQUIRE))
        dlclose(h); /* another thread stored it first; it holds its own reference */
    return __atomic_load_n(&ns_copy[lmid], __ATOMIC_ACQUIRE);
}

/* The copy of libflexai in namespace lmid, loaded there if it is not yet; NULL when that
 * cannot be done. The reference taken here is kept for the life of the process. */
static dlsym_fn copy_in(Lmid_t lmid)
{
    if (lmid < 0 || lmid >= NS_SLOTS)
        return NULL;
    dlsym_fn f = __atomic_load_n(&ns_copy[lmid], __ATOMIC_ACQUIRE);
    if (f != NULL)
        return f;
    pthread_once(&self_once, self_init);
    dlmopen_fn real = get_real_dlmopen();
    if (self_path[0] == '\0' || real == NULL)
        return NULL;
    void *h = real(lmid, self_path, RTLD_LAZY | RTLD_NOLOAD);
    if (h == NULL)
        h = real(lmid, self_path, RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        flexai_warn("flexai: cannot load %s into link-map namespace %ld (%s); its driver "
                    "functions are refused", self_path, (long)lmid, dlerror());
        return NULL;
    }
    return remember_copy(lmid, h);
}

/* A driver library's function? (any namespace: dladdr knows them all) */
static int driver_function(void *addr)
{
    Dl_info info;
    if (!dladdr(addr, &info) || info.dli_fname == NULL)
        return 0;
    const char *base = strrchr(info.dli_fname, '/');
    base = base ? base + 1 : info.dli_fname;
    return strncmp(base, LIB_PREFIX[FLEXAI_LIB_CUDA], strlen(LIB_PREFIX[FLEXAI_LIB_CUDA])) == 0 ||
           strncmp(base, LIB_PREFIX[FLEXAI_LIB_NVML], strlen(LIB_PREFIX[FLEXAI_LIB_NVML])) == 0 ||
           strncmp(base, "libascendcl.so", 14) == 0;
}

/* A lookup on a handle of another namespace: the copy of libflexai there answers. */
static void *foreign_dlsym(Lmid_t lmid, void *handle, const char *name)
{
    dlsym_fn copy = copy_in(lmid);
    if (copy != NULL)
        return copy(handle, name);
    void *real = flexai_real_dlsym(handle, name);
    return real != NULL && driver_function(real) ? NULL : real; /* fail closed */
}

/* glibc's dlsym / dlmopen looked up by name on a handle: hand out ours. */
static int route_dl(void *handle, const char *name, void **out)
{
    void *mine;
    if (strcmp(name, "dlsym") == 0)
        mine = (void *)&flexai_own_dlsym;
    else if (strcmp(name, "dlmopen") == 0)
        mine = (void *)&flexai_own_dlmopen;
    else
        return 0;
    void *real = flexai_real_dlsym(handle, name);
    Dl_info info;
    if (real == NULL || real == mine || !dladdr(real, &info) || info.dli_fname == NULL)
        return 0;
    const char *base = strrchr(info.dli_fname, '/');
    base = base ? base + 1 : info.dli_fname;
    if (strncmp(base, "libc.so", 7) != 0 && strncmp(base, "libdl.so", 8) != 0)
        return 0; /* another interposer's: not ours to replace */
    *out = mine;
    return 1;
}

/* Every lookup dlsym does not hand straight to glibc: 1 when answered (in *out). */
static int route_special(void *handle, const char *name, void **out)
{
    if (name[0] == 'd')
        return flexai_enforcing() && route_dl(handle, name, out);
    Lmid_t lmid;
    if (handle != RTLD_DEFAULT && flexai_enforcing() &&
        dlinfo(handle, RTLD_DI_LMID, &lmid) == 0 && lmid != own_lmid()) {
        *out = foreign_dlsym(lmid, handle, name);
        return 1;
    }
    if (name[0] == 'a')
        return flexai_acl_dlsym(handle, name, out); /* AscendCL: acl/acl_view.c */
    return route_dlsym(handle, name, out);
}

/* A new namespace with this library loaded first; LM_ID_NEWLM when that cannot be made (the
 * program's dlmopen then makes one itself, and lookups on it load a copy on demand). */
static __attribute__((noinline)) Lmid_t new_namespace(void)
{
    pthread_once(&self_once, self_init);
    dlmopen_fn real = get_real_dlmopen();
    if (self_path[0] == '\0' || real == NULL)
        return LM_ID_NEWLM;
    void *h = real(LM_ID_NEWLM, self_path, RTLD_NOW | RTLD_LOCAL);
    Lmid_t lmid;
    if (h == NULL || dlinfo(h, RTLD_DI_LMID, &lmid) != 0 || lmid < 0 || lmid >= NS_SLOTS) {
        if (h != NULL)
            dlclose(h);
        flexai_warn("flexai: cannot load %s into a new link-map namespace (%s)", self_path,
                    h ? "no namespace id" : dlerror());
        return LM_ID_NEWLM;
    }
    remember_copy(lmid, h);
    return lmid;
}

FLEXAI_EXPORT void *dlmopen(Lmid_t lmid, const char *file, int mode)
{
    if (lmid == LM_ID_NEWLM && file != NULL && (mode & RTLD_NOLOAD) == 0 && flexai_enforcing())
        lmid = new_namespace();
    /* A tail call: glibc sees our caller, whose RUNPATH and $ORIGIN the file is found by. */
    return get_real_dlmopen()(lmid, file, mode);
}

FLEXAI_EXPORT void *dlsym(void *handle, const char *name)
{
    const char *n = name;
    __asm__("" : "+r"(n)); /* dlfcn.h declares name nonnull; callers do not always honour it */
    if (n != NULL && handle != RTLD_NEXT &&
        ((name[0] == 'c' && name[1] == 'u') ||
         (name[0] == 'n' && name[1] == 'v' && name[2] == 'm' && name[3] == 'l') ||
         (name[0] == 'a' && name[1] == 'c' && name[2] == 'l') ||
         (name[0] == 'd' && name[1] == 'l'))) {
        void *out;
        if (route_special(handle, name, &out))
            return out;
    }
    /* A tail call: glibc's dlsym sees our caller's return address, so RTLD_NEXT lookups
     * from other libraries keep their meaning. */
    return get_real_dlsym()(handle, name);
}
extern __typeof__(dlsym) flexai_own_dlsym
    __attribute__((copy(dlsym), alias("dlsym"), visibility("hidden")));
extern __typeof__(dlmopen) flexai_own_dlmopen
    __attribute__((copy(dlmopen), alias("dlmopen"), visibility("hidden")));

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
    {"cuCtxSetCurrent", 4000, 0, FX_cuCtxSetCurrent},
    {"cuCtxPushCurrent", 4000, 0, FX_cuCtxPushCurrent_v2},
    {"cuCtxPopCurrent", 4000, 0, FX_cuCtxPopCurrent_v2},
    {"cuCtxSetLimit", 3010, 0, FX_cuCtxSetLimit},
    {"cuGreenCtxCreate", 12040, 0, FX_cuGreenCtxCreate},
    {"cuModuleLoad", 2000, 0, FX_cuModuleLoad},
    {"cuModuleLoadData", 2000, 0, FX_cuModuleLoadData},
    {"cuModuleLoadDataEx", 2010, 0, FX_cuModuleLoadDataEx},
    {"cuModuleLoadFatBinary", 2000, 0, FX_cuModuleLoadFatBinary},
    {"cuModuleUnload", 2000, 0, FX_cuModuleUnload},
    {"cuLibraryLoadData", 12000, 0, FX_cuLibraryLoadData},
    {"cuLibraryLoadFromFile", 12000, 0, FX_cuLibraryLoadFromFile},
    {"cuLibraryUnload", 12000, 0, FX_cuLibraryUnload},
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
    {"cuMemMap", 10020, 0, FX_cuMemMap},
    {"cuMemUnmap", 10020, 0, FX_cuMemUnmap},
    {"cuMemRetainAllocationHandle", 11000, 0, FX_cuMemRetainAllocationHandle},
    {"cuMemImportFromShareableHandle", 10020, 0, FX_cuMemImportFromShareableHandle},
    {"cuMemPoolImportPointer", 11020, 0, FX_cuMemPoolImportPointer},
    {"cuIpcOpenMemHandle", 4010, 0, FX_cuIpcOpenMemHandle},
    {"cuIpcOpenMemHandle", 11000, 0, FX_cuIpcOpenMemHandle_v2},
    {"cuIpcCloseMemHandle", 4010, 0, FX_cuIpcCloseMemHandle},
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
    {"cuStreamBeginCapture", 10010, 0, FX_cuStreamBeginCapture_v2},
    {"cuStreamBeginCapture", 10010, 1, FX_cuStreamBeginCapture_v2_ptsz},
    {"cuStreamBeginCaptureToGraph", 12030, 0, FX_cuStreamBeginCaptureToGraph},
    {"cuStreamBeginCaptureToGraph", 12030, 1, FX_cuStreamBeginCaptureToGraph_ptsz},
    {"cuStreamEndCapture", 10000, 0, FX_cuStreamEndCapture},
    {"cuStreamEndCapture", 10000, 1, FX_cuStreamEndCapture_ptsz},
    {"cuGraphAddMemAllocNode", 11040, 0, FX_cuGraphAddMemAllocNode},
    {"cuGraphUpload", 11010, 0, FX_cuGraphUpload},
    {"cuGraphUpload", 11010, 1, FX_cuGraphUpload_ptsz},
    {"cuGraphExecDestroy", 10000, 0, FX_cuGraphExecDestroy},
    {"cuDeviceGraphMemTrim", 11040, 0, FX_cuDeviceGraphMemTrim},
    {"cuGraphDestroy", 10000, 0, FX_cuGraphDestroy},
    {"cuGraphInstantiateWithFlags", 11040, 0, FX_cuGraphInstantiateWithFlags},
    {"cuGraphInstantiate", 11000, 0, FX_cuGraphInstantiate_v2},
    {"cuGraphInstantiate", 12000, 0, FX_cuGraphInstantiateWithFlags},
    {"cuGraphAddNode", 12020, 0, FX_cuGraphAddNode},
    {"cuGraphAddNode", 12030, 0, FX_cuGraphAddNode_v2},
    {"cuGraphInstantiateWithParams", 12000, 0, FX_cuGraphInstantiateWithParams},
    {"cuGraphInstantiateWithParams", 12000, 1, FX_cuGraphInstantiateWithParams_ptsz},
    {"cuMemPoolTrimTo", 11020, 0, FX_cuMemPoolTrimTo},
    {"cuMemPoolSetAttribute", 11020, 0, FX_cuMemPoolSetAttribute},
    {"cuMemPoolDestroy", 11020, 0, FX_cuMemPoolDestroy},
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
