/* A CUDA driver client that loads the driver the way libcudart does: dlopen("libcuda.so.1"),
 * dlsym("cuGetProcAddress_v2") and every other entry point through cuGetProcAddress_v2.
 *
 *   flexai_client CMD [ARGS] [CMD [ARGS]...]     commands run in order, one output line each:
 *     info                     count=N total=T free=F devtotal=D uuid=U  (after init + context)
 *     alloc API BYTES          ok ID | oom | err CODE     API: mem pitch managed async pool vmm
 *                                                              vmmhost array array3d mipmap
 *     free ID                  ok | err CODE
 *     freeall                  ok
 *     launch N                 ok N                         N launches of a kernel
 *     ctx                      ok | oom | err CODE          retain + set the primary context
 *     hold                     prints "held", then sleeps until killed or stdin closes
 *     race BYTES ROUNDS FILE   N; allocations racing other processes; FILE is a shared
 *                              counter: granted bytes are added after each successful
 *                              allocation and removed before its free, its maximum kept
 *     otherdev                 ok | refused CODE   (cuDeviceGet(1) must be refused)
 *     privctx N                ok | err CODE   the primary context of raw device N made through
 *                              the driver's private export table (cudart's way), made current
 *     setctx N                 ok | err CODE   cuCtxSetCurrent(the context of raw device N)
 *     pushctx N / popctx       ok | err CODE   cuCtxPushCurrent / cuCtxPopCurrent
 *     module N                 ok | oom | err CODE   N cuModuleLoadData (kept loaded)
 *     library N                ok | oom | err CODE   N cuLibraryLoadData (kept loaded)
 *     privmodule N             ok | err CODE   N modules loaded through the driver's private
 *                              table (cudart's lazy loading: no entry point sees it)
 *     unload                   ok | err CODE   unload every module and library loaded so far
 *     setlimit stack|fifo|heap V   ok | oom | err CODE   cuCtxSetLimit
 *     getlimit stack|fifo|heap     the value
 *     sleep MS                 ok
 *     greenctx N               ok | oom | err CODE   cuGreenCtxCreate on raw device N
 * With no driver loadable it prints "nodriver" and exits 3.
 */
#include <dlfcn.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "flexai.h"

typedef CUresult (*gpa_t)(const char *, void **, int, cuuint64_t, CUdriverProcAddressQueryResult *);
static gpa_t gpa;

static void *get_version(const char *name, int version)
{
    void *p = NULL;
    CUdriverProcAddressQueryResult st;
    if (gpa(name, &p, version, CU_GET_PROC_ADDRESS_DEFAULT, &st) != 0 || !p) {
        fprintf(stderr, "cuGetProcAddress_v2(%s) failed\n", name);
        exit(4);
    }
    return p;
}

static void *get(const char *name)
{
    return get_version(name, 13000);
}

#define FN(name) static __typeof__(&name) p_##name
FN(cuDeviceGetCount);
FN(cuDeviceGet);
FN(cuDeviceTotalMem_v2);
FN(cuMemGetInfo_v2);
FN(cuDevicePrimaryCtxRetain);
FN(cuMemAlloc_v2);
FN(cuMemAllocPitch_v2);
FN(cuMemFree_v2);
FN(cuMemAllocManaged);
FN(cuMemAllocAsync);
FN(cuMemAllocFromPoolAsync);
FN(cuMemFreeAsync);
FN(cuMemCreate);
FN(cuMemRelease);
FN(cuArrayCreate_v2);
FN(cuArray3DCreate_v2);
FN(cuArrayDestroy);
FN(cuMipmappedArrayCreate);
FN(cuMipmappedArrayDestroy);
FN(cuLaunchKernel);
static CUresult (*p_cuInit)(unsigned);
static CUresult (*p_cuCtxSetCurrent)(CUcontext);
static CUresult (*p_cuCtxPushCurrent)(CUcontext);
static CUresult (*p_cuCtxPopCurrent)(CUcontext *);
static CUresult (*p_cuDeviceGetUuid)(CUuuid *, CUdevice);
static CUresult (*p_cuDeviceGetDefaultMemPool)(CUmemoryPool *, CUdevice);
static CUresult (*p_cuModuleLoadData)(void **, const void *);
static CUresult (*p_cuModuleGetFunction)(CUfunction *, void *, const char *);
static CUresult (*p_cuCtxSynchronize)(void);
static CUresult (*p_cuModuleUnload)(void *);
static CUresult (*p_cuLibraryLoadData)(void **, const void *, void *, void **, unsigned, void *,
                                       void **, unsigned);
static CUresult (*p_cuLibraryUnload)(void *);
static CUresult (*p_cuCtxSetLimit)(int, size_t);
static CUresult (*p_cuCtxGetLimit)(size_t *, int);
static CUresult (*p_cuGreenCtxCreate)(void **, void *, CUdevice, unsigned int);
static void *modules[1024], *libraries[1024];
static int nmodules, nlibraries;

static int limit_id(const char *name)
{
    return !strcmp(name, "stack") ? 0 : !strcmp(name, "fifo") ? 1 : !strcmp(name, "heap") ? 2 : -1;
}

/* The driver's private table (sim: cuGetExportTable, any id): what cudart reaches directly. */
struct private_table {
    size_t size;
    CUresult (*primary_ctx)(CUcontext *, CUdevice);
    CUresult (*module_load)(void **, const void *);
};

static const struct private_table *private_table(void)
{
    CUresult (*export_table)(const void **, const CUuuid *) =
        (CUresult (*)(const void **, const CUuuid *))get("cuGetExportTable");
    const struct private_table *tbl = NULL;
    CUuuid id;
    memset(&id, 0x5a, sizeof id);
    if (!export_table || export_table((const void **)&tbl, &id) != 0)
        return NULL;
    return tbl;
}

struct alloc {
    char api[16];
    uint64_t handle;
    int used;
};
static struct alloc allocs[4096];
static int nallocs;
static CUdevice dev;
static int have_ctx;
static CUcontext ctxs[16]; /* the context made for each raw device (ctx, privctx) */

static void load(void)
{
    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        printf("nodriver\n");
        exit(3);
    }
    gpa = (gpa_t)dlsym(h, "cuGetProcAddress_v2");
    if (!gpa) {
        printf("nodriver\n");
        exit(3);
    }
    p_cuInit = get("cuInit");
    p_cuDeviceGetCount = get("cuDeviceGetCount");
    p_cuDeviceGet = get("cuDeviceGet");
    p_cuDeviceTotalMem_v2 = get("cuDeviceTotalMem");
    p_cuMemGetInfo_v2 = get("cuMemGetInfo");
    p_cuDevicePrimaryCtxRetain = get("cuDevicePrimaryCtxRetain");
    p_cuCtxSetCurrent = get("cuCtxSetCurrent");
    p_cuCtxPushCurrent = get("cuCtxPushCurrent");
    p_cuCtxPopCurrent = get("cuCtxPopCurrent");
    p_cuDeviceGetUuid = get("cuDeviceGetUuid");
    p_cuMemAlloc_v2 = get("cuMemAlloc");
    p_cuMemAllocPitch_v2 = get("cuMemAllocPitch");
    p_cuMemFree_v2 = get("cuMemFree");
    p_cuMemAllocManaged = get("cuMemAllocManaged");
    p_cuMemAllocAsync = get("cuMemAllocAsync");
    p_cuMemAllocFromPoolAsync = get("cuMemAllocFromPoolAsync");
    p_cuMemFreeAsync = get("cuMemFreeAsync");
    p_cuDeviceGetDefaultMemPool = get("cuDeviceGetDefaultMemPool");
    p_cuMemCreate = get("cuMemCreate");
    p_cuMemRelease = get("cuMemRelease");
    p_cuArrayCreate_v2 = get("cuArrayCreate");
    p_cuArray3DCreate_v2 = get("cuArray3DCreate");
    p_cuArrayDestroy = get("cuArrayDestroy");
    p_cuMipmappedArrayCreate = get("cuMipmappedArrayCreate");
    p_cuMipmappedArrayDestroy = get("cuMipmappedArrayDestroy");
    p_cuLaunchKernel = get("cuLaunchKernel");
    p_cuModuleLoadData = get("cuModuleLoadData");
    p_cuModuleGetFunction = get("cuModuleGetFunction");
    p_cuCtxSynchronize = get_version("cuCtxSynchronize", 12000); /* 13000: the _v2 (ctx) */
    p_cuModuleUnload = get("cuModuleUnload");
    p_cuLibraryLoadData = get("cuLibraryLoadData");
    p_cuLibraryUnload = get("cuLibraryUnload");
    p_cuCtxSetLimit = get("cuCtxSetLimit");
    p_cuCtxGetLimit = get("cuCtxGetLimit");
    p_cuGreenCtxCreate = get("cuGreenCtxCreate");
    CUresult rc = p_cuInit(0);
    if (rc) {
        printf("err init %d\n", rc);
        exit(5);
    }
}

static CUresult ensure_ctx(void)
{
    if (have_ctx)
        return 0;
    CUresult rc = p_cuDeviceGet(&dev, 0);
    if (rc)
        return rc;
    CUcontext ctx;
    rc = p_cuDevicePrimaryCtxRetain(&ctx, dev);
    if (rc)
        return rc;
    rc = p_cuCtxSetCurrent(ctx);
    have_ctx = rc == 0;
    if (have_ctx && dev >= 0 && dev < 16)
        ctxs[dev] = ctx;
    return rc;
}

static void report(CUresult rc, const char *okmsg)
{
    if (rc == 0)
        printf("%s\n", okmsg);
    else if (rc == CUDA_ERROR_OUT_OF_MEMORY)
        printf("oom\n");
    else
        printf("err %d\n", rc);
}

static CUresult do_alloc(const char *api, uint64_t bytes, uint64_t *handle)
{
    CUresult rc = ensure_ctx();
    if (rc)
        return rc;
    if (!strcmp(api, "mem")) {
        CUdeviceptr p;
        rc = p_cuMemAlloc_v2(&p, bytes);
        *handle = p;
    } else if (!strcmp(api, "pitch")) {
        CUdeviceptr p;
        size_t pitch;
        rc = p_cuMemAllocPitch_v2(&p, &pitch, 1024, bytes / 1024, 4);
        *handle = p;
    } else if (!strcmp(api, "managed")) {
        CUdeviceptr p;
        rc = p_cuMemAllocManaged(&p, bytes, 1);
        *handle = p;
    } else if (!strcmp(api, "async")) {
        CUdeviceptr p;
        rc = p_cuMemAllocAsync(&p, bytes, NULL);
        *handle = p;
    } else if (!strcmp(api, "pool")) {
        CUdeviceptr p;
        CUmemoryPool pool;
        rc = p_cuDeviceGetDefaultMemPool(&pool, dev);
        if (!rc)
            rc = p_cuMemAllocFromPoolAsync(&p, bytes, pool, NULL);
        *handle = p;
    } else if (!strcmp(api, "vmm") || !strcmp(api, "vmmhost")) {
        CUmemAllocationProp prop;
        memset(&prop, 0, sizeof prop);
        prop.type = 1; /* CU_MEM_ALLOCATION_TYPE_PINNED */
        prop.location.type = !strcmp(api, "vmm") ? CU_MEM_LOCATION_TYPE_DEVICE : 2;
        prop.location.id = !strcmp(api, "vmm") ? dev : 0;
        CUmemGenericAllocationHandle h;
        rc = p_cuMemCreate(&h, bytes, &prop, 0);
        *handle = h;
    } else if (!strcmp(api, "array")) {
        CUDA_ARRAY_DESCRIPTOR d = {4096, bytes / 4096 / 4, 0x20, 1}; /* float: 4 bytes */
        CUarray a;
        rc = p_cuArrayCreate_v2(&a, &d);
        *handle = (uint64_t)(uintptr_t)a;
    } else if (!strcmp(api, "array3d")) {
        CUDA_ARRAY3D_DESCRIPTOR d = {1024, 16, bytes / 1024 / 16 / 4, 0x20, 1, 0};
        CUarray a;
        rc = p_cuArray3DCreate_v2(&a, &d);
        *handle = (uint64_t)(uintptr_t)a;
    } else if (!strcmp(api, "mipmap")) {
        /* one level: exactly the bytes asked for */
        CUDA_ARRAY3D_DESCRIPTOR d = {4096, bytes / 4096 / 4, 0, 0x20, 1, 0};
        CUmipmappedArray m;
        rc = p_cuMipmappedArrayCreate(&m, &d, 1);
        *handle = (uint64_t)(uintptr_t)m;
    } else {
        fprintf(stderr, "unknown api %s\n", api);
        exit(2);
    }
    return rc;
}

static CUresult do_free(struct alloc *a)
{
    const char *api = a->api;
    if (!strcmp(api, "vmm") || !strcmp(api, "vmmhost"))
        return p_cuMemRelease(a->handle);
    if (!strcmp(api, "array") || !strcmp(api, "array3d"))
        return p_cuArrayDestroy((CUarray)(uintptr_t)a->handle);
    if (!strcmp(api, "mipmap"))
        return p_cuMipmappedArrayDestroy((CUmipmappedArray)(uintptr_t)a->handle);
    if (!strcmp(api, "async") || !strcmp(api, "pool"))
        return p_cuMemFreeAsync(a->handle, NULL);
    return p_cuMemFree_v2(a->handle);
}

static void format_uuid(const unsigned char *b, char *out)
{
    sprintf(out, "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
            b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14],
            b[15]);
}

static int race(uint64_t bytes, int rounds, const char *file)
{
    int fd = open(file, O_RDWR);
    if (fd < 0) {
        perror(file);
        return 2;
    }
    int64_t *shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (shared == MAP_FAILED) {
        perror("mmap");
        return 2;
    }
    CUresult rc = ensure_ctx();
    if (rc) {
        printf("err %d\n", rc);
        return 1;
    }
    int granted = 0, refused = 0;
    for (int i = 0; i < rounds; i++) {
        CUdeviceptr p;
        rc = p_cuMemAlloc_v2(&p, bytes);
        if (rc == CUDA_ERROR_OUT_OF_MEMORY) {
            refused++;
            continue;
        }
        if (rc) {
            printf("err %d\n", rc);
            return 1;
        }
        granted++;
        int64_t now = __atomic_add_fetch(&shared[0], (int64_t)bytes, __ATOMIC_SEQ_CST);
        int64_t max = __atomic_load_n(&shared[1], __ATOMIC_SEQ_CST);
        while (now > max && !__atomic_compare_exchange_n(&shared[1], &max, now, 0,
                                                         __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
            ;
        struct timespec ts = {0, 200000};
        nanosleep(&ts, NULL);
        __atomic_sub_fetch(&shared[0], (int64_t)bytes, __ATOMIC_SEQ_CST);
        rc = p_cuMemFree_v2(p);
        if (rc) {
            printf("err free %d\n", rc);
            return 1;
        }
    }
    printf("granted=%d refused=%d\n", granted, refused);
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    load();
    for (int i = 1; i < argc; i++) {
        const char *cmd = argv[i];
        if (!strcmp(cmd, "info")) {
            int count = -1;
            CUresult rc = p_cuDeviceGetCount(&count);
            size_t total = 0, free_b = 0, devtotal = 0;
            char uuid[64] = "none";
            if (!rc && count > 0 && !(rc = ensure_ctx())) {
                CUuuid u;
                if (!p_cuDeviceGetUuid(&u, dev))
                    format_uuid((unsigned char *)u.bytes, uuid);
                rc = p_cuMemGetInfo_v2(&free_b, &total);
                if (!rc)
                    rc = p_cuDeviceTotalMem_v2(&devtotal, dev);
            }
            if (rc)
                printf("err %d\n", rc);
            else
                printf("count=%d total=%zu free=%zu devtotal=%zu uuid=%s\n", count, total, free_b,
                       devtotal, uuid);
        } else if (!strcmp(cmd, "ctx")) {
            report(ensure_ctx(), "ok");
        } else if (!strcmp(cmd, "privctx") && i + 1 < argc) {
            /* cudart's way: the primary context of raw device N through the driver's private
             * export table (never cuDevicePrimaryCtxRetain/cuCtxCreate), made current */
            CUdevice raw = (CUdevice)atoi(argv[++i]);
            const struct private_table *tbl = private_table();
            CUresult rc = tbl ? 0 : CUDA_ERROR_NOT_FOUND;
            CUcontext ctx = NULL;
            if (!rc)
                rc = tbl->primary_ctx(&ctx, raw);
            if (!rc) {
                dev = raw;
                have_ctx = 1;
                if (raw >= 0 && raw < 16)
                    ctxs[raw] = ctx;
            }
            report(rc, "ok");
        } else if ((!strcmp(cmd, "setctx") || !strcmp(cmd, "pushctx")) && i + 1 < argc) {
            /* switch to a context made before (cudaSetDevice: cuCtxSetCurrent) */
            int raw = atoi(argv[++i]);
            CUcontext c = raw >= 0 && raw < 16 ? ctxs[raw] : NULL;
            CUresult rc = !c ? CUDA_ERROR_INVALID_VALUE
                          : !strcmp(cmd, "setctx") ? p_cuCtxSetCurrent(c) : p_cuCtxPushCurrent(c);
            if (!rc)
                dev = raw;
            report(rc, "ok");
        } else if ((!strcmp(cmd, "module") || !strcmp(cmd, "library") ||
                    !strcmp(cmd, "privmodule")) && i + 1 < argc) {
            int n = atoi(argv[++i]);
            static const char image[] = "flexai test module";
            const struct private_table *tbl = !strcmp(cmd, "privmodule") ? private_table() : NULL;
            CUresult rc = ensure_ctx();
            if (!rc && !strcmp(cmd, "privmodule") &&
                (!tbl || tbl->size < sizeof *tbl || !tbl->module_load))
                rc = CUDA_ERROR_NOT_FOUND;
            for (int k = 0; !rc && k < n && nmodules < 1024 && nlibraries < 1024; k++) {
                void *h = NULL;
                if (!strcmp(cmd, "library")) {
                    rc = p_cuLibraryLoadData(&h, image, NULL, NULL, 0, NULL, NULL, 0);
                    if (!rc)
                        libraries[nlibraries++] = h;
                } else {
                    rc = tbl ? tbl->module_load(&h, image) : p_cuModuleLoadData(&h, image);
                    if (!rc)
                        modules[nmodules++] = h;
                }
            }
            report(rc, "ok");
        } else if (!strcmp(cmd, "unload")) {
            CUresult rc = 0;
            while (!rc && nmodules > 0)
                rc = p_cuModuleUnload(modules[--nmodules]);
            while (!rc && nlibraries > 0)
                rc = p_cuLibraryUnload(libraries[--nlibraries]);
            report(rc, "ok");
        } else if (!strcmp(cmd, "setlimit") && i + 2 < argc) {
            int which = limit_id(argv[i + 1]);
            size_t value = strtoull(argv[i + 2], NULL, 0);
            i += 2;
            CUresult rc = ensure_ctx();
            if (!rc)
                rc = p_cuCtxSetLimit(which, value);
            report(rc, "ok");
        } else if (!strcmp(cmd, "getlimit") && i + 1 < argc) {
            size_t value = 0;
            CUresult rc = ensure_ctx();
            if (!rc)
                rc = p_cuCtxGetLimit(&value, limit_id(argv[++i]));
            if (rc)
                printf("err %d\n", rc);
            else
                printf("%zu\n", value);
        } else if (!strcmp(cmd, "sleep") && i + 1 < argc) {
            struct timespec ts = {0, 0};
            long ms = atol(argv[++i]);
            ts.tv_sec = ms / 1000;
            ts.tv_nsec = (ms % 1000) * 1000000L;
            nanosleep(&ts, NULL);
            printf("ok\n");
        } else if (!strcmp(cmd, "greenctx") && i + 1 < argc) {
            /* a descriptor from cuDevResourceGenerateDesc in a real program; the simulator
             * takes any */
            static char desc[64];
            void *g = NULL;
            report(p_cuGreenCtxCreate(&g, desc, (CUdevice)atoi(argv[++i]), 0x1 /* DEFAULT_STREAM */),
                   "ok");
        } else if (!strcmp(cmd, "popctx")) {
            CUcontext c = NULL;
            report(p_cuCtxPopCurrent(&c), "ok");
        } else if (!strcmp(cmd, "alloc") && i + 2 < argc) {
            const char *api = argv[++i];
            uint64_t bytes = strtoull(argv[++i], NULL, 0);
            uint64_t handle = 0;
            CUresult rc = do_alloc(api, bytes, &handle);
            if (!rc) {
                struct alloc *a = &allocs[nallocs];
                snprintf(a->api, sizeof a->api, "%s", api);
                a->handle = handle;
                a->used = 1;
                printf("ok %d\n", nallocs++);
            } else {
                report(rc, "ok");
            }
        } else if (!strcmp(cmd, "free") && i + 1 < argc) {
            int id = atoi(argv[++i]);
            if (id < 0 || id >= nallocs || !allocs[id].used) {
                printf("err badid\n");
                continue;
            }
            CUresult rc = do_free(&allocs[id]);
            if (!rc)
                allocs[id].used = 0;
            report(rc, "ok");
        } else if (!strcmp(cmd, "freeall")) {
            for (int k = 0; k < nallocs; k++)
                if (allocs[k].used && !do_free(&allocs[k]))
                    allocs[k].used = 0;
            printf("ok\n");
        } else if (!strcmp(cmd, "launch") && i + 1 < argc) {
            long n = atol(argv[++i]);
            CUresult rc = ensure_ctx();
            void *mod;
            CUfunction f;
            static const char image[] = "flexai test module";
            if (!rc)
                rc = p_cuModuleLoadData(&mod, image);
            if (!rc)
                rc = p_cuModuleGetFunction(&f, mod, "k");
            for (long k = 0; !rc && k < n; k++)
                rc = p_cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL);
            if (!rc)
                rc = p_cuCtxSynchronize();
            if (rc)
                printf("err %d\n", rc);
            else
                printf("ok %ld\n", n);
        } else if (!strcmp(cmd, "otherdev")) {
            CUdevice d;
            CUresult rc = p_cuDeviceGet(&d, 1);
            if (rc)
                printf("refused %d\n", rc);
            else
                printf("ok\n");
        } else if (!strcmp(cmd, "hold")) {
            printf("held\n");
            char c;
            while (read(0, &c, 1) > 0)
                ;
            pause();
        } else if (!strcmp(cmd, "race") && i + 3 < argc) {
            uint64_t bytes = strtoull(argv[i + 1], NULL, 0);
            int rounds = atoi(argv[i + 2]);
            int rc = race(bytes, rounds, argv[i + 3]);
            i += 3;
            if (rc)
                return rc;
        } else {
            fprintf(stderr, "bad command %s\n", cmd);
            return 2;
        }
    }
    return 0;
}
