/* A client that reaches the CUDA driver through a second link-map namespace, the way a
 * program trying to get past libflexai's dlsym would: dlmopen(LM_ID_NEWLM, "libcuda.so.1").
 *
 *   dlmopen_client MODE CHUNK_MIB MAX_MIB [INNER_LIB]
 *
 * MODE (how cuMemAlloc_v2 and the context functions are found):
 *   dlsym     dlsym(handle, "cuMemAlloc_v2") on the dlmopen'd handle
 *   dlvsym    dlvsym(handle, "cuMemAlloc_v2", "GLIBC_2.2.5") on the dlmopen'd handle
 *   gpa       cuGetProcAddress_v2 from dlsym(handle, ...), then every entry point through it
 *   gpa1      the same with cuGetProcAddress (v1)
 *   inner     dlmopen(LM_ID_NEWLM, INNER_LIB): a library built from this file with
 *             -DDLMOPEN_INNER that dlopen()s and dlsym()s the driver from inside that namespace
 *   dlopen    the ordinary way: dlopen(RTLD_LOCAL) + dlsym, in the base namespace
 *   both      first the ordinary way up to MAX_MIB/2, then a dlmopen'd driver (dlsym) as far
 *             as it goes (up to 16 GiB)
 *   nvml      dlmopen(LM_ID_NEWLM, "libnvidia-ml.so.1"): prints the card's memory total
 *
 * Allocates CHUNK_MIB at a time until the driver refuses or MAX_MIB is reached; prints
 * "allocated=<MiB> rc=<last result>" (for `both`: "base=<MiB> ns=<MiB>"). With
 * DLMOPEN_HOLD set in the environment it then prints "held" and keeps its memory until it is
 * killed.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "flexai.h"

#define MIB (1ULL << 20)

typedef void *(*lookup_fn)(void *ctx, const char *name);

struct driver {
    CUresult (*init)(unsigned);
    CUresult (*device_get)(CUdevice *, int);
    CUresult (*retain)(CUcontext *, CUdevice);
    CUresult (*set_current)(CUcontext);
    CUresult (*alloc)(CUdeviceptr *, size_t);
};

static int resolve(struct driver *d, lookup_fn get, void *ctx)
{
    *(void **)&d->init = get(ctx, "cuInit");
    *(void **)&d->device_get = get(ctx, "cuDeviceGet");
    *(void **)&d->retain = get(ctx, "cuDevicePrimaryCtxRetain");
    *(void **)&d->set_current = get(ctx, "cuCtxSetCurrent");
    *(void **)&d->alloc = get(ctx, "cuMemAlloc_v2");
    return d->init && d->device_get && d->retain && d->set_current && d->alloc ? 0 : -1;
}

/* Allocate until refused or max_mib; returns MiB allocated, *rc the last result. */
static long alloc_loop(const struct driver *d, long chunk_mib, long max_mib, CUresult *rc)
{
    CUdevice dev;
    CUcontext ctx;
    long got = 0;
    if ((*rc = d->init(0)) || (*rc = d->device_get(&dev, 0)) || (*rc = d->retain(&ctx, dev)) ||
        (*rc = d->set_current(ctx)))
        return -1;
    while (got + chunk_mib <= max_mib) {
        CUdeviceptr p;
        *rc = d->alloc(&p, (size_t)chunk_mib * MIB);
        if (*rc != CUDA_SUCCESS)
            break;
        got += chunk_mib;
    }
    return got;
}

static void *by_dlsym(void *handle, const char *name)
{
    return dlsym(handle, name);
}

#ifdef DLMOPEN_INNER
/* Built as a shared library and dlmopen'd into a new namespace: everything it does with the
 * dynamic linker happens inside that namespace. */
long dlmopen_inner_run(long chunk_mib, long max_mib, int *rc_out)
{
    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    struct driver d;
    CUresult rc = CUDA_ERROR_NOT_FOUND;
    long got = -1;
    if (h && resolve(&d, by_dlsym, h) == 0)
        got = alloc_loop(&d, chunk_mib, max_mib, &rc);
    *rc_out = rc;
    return got;
}
#else

static void *by_dlvsym(void *handle, const char *name)
{
    return dlvsym(handle, name, "GLIBC_2.2.5");
}

struct gpa_ctx {
    void *handle;
    int v1;
    CUresult (*gpa)(const char *, void **, int, cuuint64_t);
    CUresult (*gpa2)(const char *, void **, int, cuuint64_t, CUdriverProcAddressQueryResult *);
};

static void *by_gpa(void *vctx, const char *name)
{
    struct gpa_ctx *c = vctx;
    char base[64];
    snprintf(base, sizeof base, "%s", name);
    char *v = strstr(base, "_v2");
    if (v)
        *v = '\0'; /* cuGetProcAddress takes the base name and picks the variant */
    void *p = NULL;
    CUdriverProcAddressQueryResult st;
    CUresult rc = c->v1 ? c->gpa(base, &p, 13000, CU_GET_PROC_ADDRESS_DEFAULT)
                        : c->gpa2(base, &p, 13000, CU_GET_PROC_ADDRESS_DEFAULT, &st);
    return rc == CUDA_SUCCESS ? p : NULL;
}

static void *ns_driver(const char *soname)
{
    void *h = dlmopen(LM_ID_NEWLM, soname, RTLD_NOW);
    if (!h) {
        printf("nodlmopen %s\n", dlerror());
        exit(3);
    }
    return h;
}

static long run_ns(const char *mode, long chunk, long max, CUresult *rc)
{
    struct driver d;
    void *h = ns_driver("libcuda.so.1");
    int ok;
    if (strcmp(mode, "dlsym") == 0) {
        ok = resolve(&d, by_dlsym, h);
    } else if (strcmp(mode, "dlvsym") == 0) {
        ok = resolve(&d, by_dlvsym, h);
    } else {
        struct gpa_ctx c = {h, strcmp(mode, "gpa1") == 0, NULL, NULL};
        *(void **)&c.gpa = dlsym(h, "cuGetProcAddress");
        *(void **)&c.gpa2 = dlsym(h, "cuGetProcAddress_v2");
        if (c.v1 ? !c.gpa : !c.gpa2) {
            printf("nogpa\n");
            exit(4);
        }
        ok = resolve(&d, by_gpa, &c);
    }
    if (ok != 0) {
        printf("noresolve\n");
        exit(4);
    }
    return alloc_loop(&d, chunk, max, rc);
}

static int done(void)
{
    if (getenv("DLMOPEN_HOLD")) {
        printf("held\n");
        fflush(stdout);
        char c;
        while (read(0, &c, 1) > 0)
            ;
        pause();
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s MODE CHUNK_MIB MAX_MIB [INNER_LIB]\n", argv[0]);
        return 2;
    }
    const char *mode = argv[1];
    long chunk = atol(argv[2]), max = atol(argv[3]);
    CUresult rc = 0;
    long got;
    if (strcmp(mode, "nvml") == 0) {
        void *h = ns_driver("libnvidia-ml.so.1");
        nvmlReturn_t (*init)(void) = (nvmlReturn_t(*)(void))dlsym(h, "nvmlInit_v2");
        __typeof__(&nvmlDeviceGetHandleByIndex_v2) by_index = (__typeof__(by_index))dlsym(
            h, "nvmlDeviceGetHandleByIndex_v2");
        __typeof__(&nvmlDeviceGetMemoryInfo) info = (__typeof__(info))dlsym(
            h, "nvmlDeviceGetMemoryInfo");
        nvmlDevice_t dev;
        nvmlMemory_t m;
        if (!init || !by_index || !info || init() || by_index(0, &dev) || info(dev, &m)) {
            printf("nvml failed\n");
            return 5;
        }
        printf("total=%llu\n", m.total / MIB);
        return 0;
    }
    if (strcmp(mode, "dlopen") == 0 || strcmp(mode, "both") == 0) {
        struct driver d;
        void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
        if (!h || resolve(&d, by_dlsym, h) != 0) {
            printf("nodriver\n");
            return 3;
        }
        long base = alloc_loop(&d, chunk, strcmp(mode, "both") == 0 ? max / 2 : max, &rc);
        if (strcmp(mode, "dlopen") == 0) {
            printf("allocated=%ld rc=%d\n", base, rc);
            return done();
        }
        got = run_ns("dlsym", chunk, 16384, &rc);
        printf("base=%ld ns=%ld rc=%d\n", base, got, rc);
        return done();
    }
    if (strcmp(mode, "inner") == 0) {
        if (argc < 5) {
            fprintf(stderr, "inner needs INNER_LIB\n");
            return 2;
        }
        void *h = dlmopen(LM_ID_NEWLM, argv[4], RTLD_NOW);
        long (*run)(long, long, int *) = h ? (long (*)(long, long, int *))dlsym(h, "dlmopen_inner_run") : NULL;
        if (!run) {
            printf("noinner %s\n", dlerror());
            return 3;
        }
        int irc = 0;
        got = run(chunk, max, &irc);
        printf("allocated=%ld rc=%d\n", got, irc);
        return done();
    }
    got = run_ns(mode, chunk, max, &rc);
    printf("allocated=%ld rc=%d\n", got, rc);
    return done();
}
#endif
