/* A client that keeps a (simulated) card busy with kernels of known length, through the CUDA
 * driver API or AscendCL, for the compute-share tests and bench/compute_share.py.
 *
 * It loads the runtime the way frameworks do (dlopen("libcuda.so.1") or
 * dlopen("libascendcl.so") + dlsym), so a preloaded libflexai sees every launch. Kernels are
 * the simulators' spin kernels (name starting with flexai_sim_spin: the first parameter -- ACL:
 * the first 8 bytes of the arguments -- is the ns each wave of blocks lasts; waves =
 * ceil(blocks / sm_count), AI cores on Ascend), so the client knows the device time of every
 * kernel it launched and reports it independently of libflexai's own measurement.
 *
 * usage: compute_client [--driver cuda|acl] [--kernel-us L[+L...]] [--blocks N] [--seconds S]
 *                       [--start-at NS] [--bucket-ms B] [--graph-nodes N]
 *                       [--api launch|ptsz|ex|coop|graph       (cuda)
 *                              launch|v2|cfg|hostargs]         (acl)
 *                       [--closed] [--sync-every N] [--switch-at S] [--think-us T] [--sm-count N]
 *                       [--threads N]
 * --start-at: CLOCK_MONOTONIC ns to begin at (so several clients start together).
 * --closed: one kernel at a time, synchronised, completion latency measured (from the moment
 *           the client wants to launch to the end of its synchronisation).
 * --sync-every N: closed loop in bursts: N kernels, then synchronise (implies --closed).
 * --switch-at S: S seconds after the start, closed loop <-> saturating (a pattern change).
 * --threads N: N - 1 more threads, each with its own stream, run the same loop (plain launches,
 *           closed or saturating as the main thread starts) into the same buckets.
 * Prints one JSON object: launches, busy_ns (device time of the kernels launched), buckets
 * (busy ns by the time each launch returned, i.e. was enqueued, per bucket), latency figures,
 * wall_ns, thread_launches (per thread, the main one first), and the process's CPU time
 * (cpu_ns) and voluntary context switches (sleeps) from getrusage.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

typedef int CUresult;
typedef void *CUcontext, *CUstream, *CUfunction, *CUlibrary, *CUkernel, *CUgraph, *CUgraphExec;
typedef struct {
    unsigned int gridDimX, gridDimY, gridDimZ;
    unsigned int blockDimX, blockDimY, blockDimZ;
    unsigned int sharedMemBytes;
    CUstream hStream;
    void *attrs;
    unsigned int numAttrs;
} CUlaunchConfig;

#define F(ret, name, args) static ret(*p_##name) args;
F(CUresult, cuInit, (unsigned))
F(CUresult, cuDevicePrimaryCtxRetain, (CUcontext *, int))
F(CUresult, cuCtxSetCurrent, (CUcontext))
F(CUresult, cuLibraryLoadData, (CUlibrary *, const void *, void *, void **, unsigned, void *, void **, unsigned))
F(CUresult, cuLibraryGetKernel, (CUkernel *, CUlibrary, const char *))
F(CUresult, cuKernelGetFunction, (CUfunction *, CUkernel))
F(CUresult, cuStreamCreate, (CUstream *, unsigned))
F(CUresult, cuStreamSynchronize, (CUstream))
F(CUresult, cuLaunchKernel, (CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, CUstream, void **, void **))
F(CUresult, cuLaunchKernel_ptsz, (CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, CUstream, void **, void **))
F(CUresult, cuLaunchKernelEx, (const CUlaunchConfig *, CUfunction, void **, void **))
F(CUresult, cuLaunchCooperativeKernel, (CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, CUstream, void **))
F(CUresult, cuStreamBeginCapture_v2, (CUstream, int))
F(CUresult, cuStreamEndCapture, (CUstream, CUgraph *))
F(CUresult, cuGraphInstantiateWithFlags, (CUgraphExec *, CUgraph, unsigned long long))
F(CUresult, cuGraphLaunch, (CUgraphExec, CUstream))
#undef F

/* AscendCL (acl/acl_rt.h), the part this client uses */
typedef int aclError;
typedef void *aclrtStream, *aclrtFuncHandle, *aclrtBinHandle, *aclrtArgsHandle, *aclrtParamHandle;
#define A(ret, name, args) static ret(*a_##name) args;
A(aclError, aclInit, (const char *))
A(aclError, aclrtSetDevice, (int32_t))
A(aclError, aclrtCreateStream, (aclrtStream *))
A(aclError, aclrtSynchronizeStream, (aclrtStream))
A(aclError, aclrtBinaryLoadFromData, (const void *, size_t, const void *, aclrtBinHandle *))
A(aclError, aclrtBinaryGetFunction, (aclrtBinHandle, const char *, aclrtFuncHandle *))
A(aclError, aclrtLaunchKernel, (aclrtFuncHandle, uint32_t, const void *, size_t, aclrtStream))
A(aclError, aclrtLaunchKernelV2, (aclrtFuncHandle, uint32_t, const void *, size_t, void *, aclrtStream))
A(aclError, aclrtLaunchKernelWithConfig, (aclrtFuncHandle, uint32_t, aclrtStream, void *, aclrtArgsHandle, void *))
A(aclError, aclrtLaunchKernelWithHostArgs, (aclrtFuncHandle, uint32_t, aclrtStream, void *, void *, size_t, void *, size_t))
A(aclError, aclrtKernelArgsInit, (aclrtFuncHandle, aclrtArgsHandle *))
A(aclError, aclrtKernelArgsAppend, (aclrtArgsHandle, void *, size_t, aclrtParamHandle *))
A(aclError, aclrtKernelArgsFinalize, (aclrtArgsHandle))
#undef A

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void die(const char *what, CUresult rc)
{
    fprintf(stderr, "compute_client: %s failed (%d)\n", what, rc);
    exit(3);
}

#define CK(call, what)                                                                        \
    do {                                                                                      \
        CUresult rc_ = (call);                                                                \
        if (rc_)                                                                              \
            die(what, rc_);                                                                   \
    } while (0)

/* An extra launching thread (--threads): its own stream, plain launches, the main thread's
 * pattern; it adds its device time to the shared buckets. */
struct worker {
    int acl, closed, sync_every, nk;
    unsigned blocks;
    CUcontext ctx;
    CUfunction f;
    aclrtFuncHandle af;
    const uint64_t *per, *dur;
    uint64_t t0, end, bucket_ns, launches, busy;
    uint64_t *bucket;
    size_t nb;
    pthread_t tid;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    CUstream s = NULL;
    aclrtStream as = NULL;
    if (w->acl) {
        CK(a_aclrtSetDevice(0), "aclrtSetDevice (thread)");
        CK(a_aclrtCreateStream(&as), "aclrtCreateStream (thread)");
    } else {
        CK(p_cuCtxSetCurrent(w->ctx), "cuCtxSetCurrent (thread)");
        CK(p_cuStreamCreate(&s, 0), "cuStreamCreate (thread)");
    }
    while (now_ns() < w->t0) {
        struct timespec ts = {0, 200000};
        nanosleep(&ts, NULL);
    }
    int ki = 0, in_burst = 0;
    while (now_ns() < w->end) {
        uint64_t v = w->per[ki % w->nk], d = w->dur[ki % w->nk];
        void *params[] = {&v};
        if (w->acl)
            CK(a_aclrtLaunchKernel(w->af, w->blocks, &v, sizeof v, as), "aclrtLaunchKernel (thread)");
        else
            CK(p_cuLaunchKernel(w->f, w->blocks, 1, 1, 128, 1, 1, 0, s, params, NULL), "cuLaunchKernel (thread)");
        ki++;
        w->launches++;
        w->busy += d;
        size_t b = (size_t)((now_ns() - w->t0) / w->bucket_ns);
        if (b < w->nb)
            __atomic_add_fetch(&w->bucket[b], d, __ATOMIC_RELAXED);
        if (w->closed && ++in_burst >= w->sync_every) {
            in_burst = 0;
            CK(w->acl ? a_aclrtSynchronizeStream(as) : p_cuStreamSynchronize(s), "stream synchronize (thread)");
        }
    }
    CK(w->acl ? a_aclrtSynchronizeStream(as) : p_cuStreamSynchronize(s), "final synchronize (thread)");
    return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    uint64_t kern[32] = {1000000};
    int nk = 1;
    unsigned blocks = 1;
    double seconds = 5;
    uint64_t start_at = 0, bucket_ns = 50000000, think_ns = 0;
    const char *api = "launch", *driver = "cuda";
    int closed = 0, graph_nodes = 8, side_capture = 0, sync_every = 1, threads = 1;
    double switch_at = 0;
    unsigned sm = 132;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : "";
        if (!strcmp(a, "--kernel-us")) {
            nk = 0;
            for (const char *t = v; *t && nk < 32;) {
                char *e;
                kern[nk++] = (uint64_t)(strtod(t, &e) * 1000);
                t = *e == '+' ? e + 1 : e;
            }
            i++;
        } else if (!strcmp(a, "--blocks")) blocks = (unsigned)atoi(v), i++;
        else if (!strcmp(a, "--seconds")) seconds = atof(v), i++;
        else if (!strcmp(a, "--start-at")) start_at = strtoull(v, NULL, 10), i++;
        else if (!strcmp(a, "--bucket-ms")) bucket_ns = (uint64_t)(atof(v) * 1e6), i++;
        else if (!strcmp(a, "--api")) api = v, i++;
        else if (!strcmp(a, "--driver")) driver = v, i++;
        else if (!strcmp(a, "--graph-nodes")) graph_nodes = atoi(v), i++;
        else if (!strcmp(a, "--think-us")) think_ns = (uint64_t)(atof(v) * 1000), i++;
        else if (!strcmp(a, "--sm-count")) sm = (unsigned)atoi(v), i++;
        else if (!strcmp(a, "--closed")) closed = 1;
        else if (!strcmp(a, "--sync-every")) sync_every = atoi(v) > 0 ? atoi(v) : 1, closed = 1, i++;
        else if (!strcmp(a, "--switch-at")) switch_at = atof(v), i++;
        else if (!strcmp(a, "--threads")) threads = atoi(v), i++;
        else if (!strcmp(a, "--side-capture")) side_capture = 1;
        else {
            fprintf(stderr, "compute_client: unknown argument %s\n", a);
            return 2;
        }
    }
    if (blocks < 1 || nk < 1 || sm < 1 || threads < 1 || threads > 64)
        return 2;
    int acl = !strcmp(driver, "acl");
    if (!acl && strcmp(driver, "cuda")) {
        fprintf(stderr, "compute_client: --driver is cuda or acl, not %s\n", driver);
        return 2;
    }
    void *h = dlopen(acl ? "libascendcl.so" : "libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
    if (!h) {
        fprintf(stderr, "compute_client: %s\n", dlerror());
        return 3;
    }
#define LOAD_AS(var, name)                                                                    \
    do {                                                                                      \
        *(void **)&var = dlsym(h, #name);                                                     \
        if (!var) {                                                                           \
            fprintf(stderr, "compute_client: no %s\n", #name);                                \
            return 3;                                                                         \
        }                                                                                     \
    } while (0)
#define LOAD(name) LOAD_AS(p_##name, name)
#define ALOAD(name) LOAD_AS(a_##name, name)
    CUstream s = NULL;
    CUfunction f = NULL;
    CUcontext ctx = NULL;
    aclrtStream as = NULL;
    aclrtFuncHandle af = NULL;
    if (acl) {
        ALOAD(aclInit); ALOAD(aclrtSetDevice); ALOAD(aclrtCreateStream); ALOAD(aclrtSynchronizeStream);
        ALOAD(aclrtBinaryLoadFromData); ALOAD(aclrtBinaryGetFunction); ALOAD(aclrtLaunchKernel);
        ALOAD(aclrtLaunchKernelV2); ALOAD(aclrtLaunchKernelWithConfig);
        ALOAD(aclrtLaunchKernelWithHostArgs); ALOAD(aclrtKernelArgsInit);
        ALOAD(aclrtKernelArgsAppend); ALOAD(aclrtKernelArgsFinalize);
        static const char blob[] = "flexai-sim-binary";
        aclrtBinHandle bin;
        CK(a_aclInit(NULL), "aclInit");
        CK(a_aclrtSetDevice(0), "aclrtSetDevice");
        CK(a_aclrtBinaryLoadFromData(blob, sizeof blob, NULL, &bin), "aclrtBinaryLoadFromData");
        CK(a_aclrtBinaryGetFunction(bin, "flexai_sim_spin", &af), "aclrtBinaryGetFunction");
        CK(a_aclrtCreateStream(&as), "aclrtCreateStream");
    } else {
        LOAD(cuInit); LOAD(cuDevicePrimaryCtxRetain); LOAD(cuCtxSetCurrent); LOAD(cuLibraryLoadData);
        LOAD(cuLibraryGetKernel); LOAD(cuKernelGetFunction); LOAD(cuStreamCreate);
        LOAD(cuStreamSynchronize); LOAD(cuLaunchKernel); LOAD(cuLaunchKernel_ptsz);
        LOAD(cuLaunchKernelEx); LOAD(cuLaunchCooperativeKernel); LOAD(cuStreamBeginCapture_v2);
        LOAD(cuStreamEndCapture); LOAD(cuGraphInstantiateWithFlags); LOAD(cuGraphLaunch);
        CUlibrary lib;
        CUkernel kernel;
        CK(p_cuInit(0), "cuInit");
        CK(p_cuDevicePrimaryCtxRetain(&ctx, 0), "cuDevicePrimaryCtxRetain");
        CK(p_cuCtxSetCurrent(ctx), "cuCtxSetCurrent");
        CK(p_cuLibraryLoadData(&lib, "flexai-sim-image", NULL, NULL, 0, NULL, NULL, 0), "cuLibraryLoadData");
        CK(p_cuLibraryGetKernel(&kernel, lib, "flexai_sim_spin"), "cuLibraryGetKernel");
        CK(p_cuKernelGetFunction(&f, kernel), "cuKernelGetFunction");
        CK(p_cuStreamCreate(&s, 0), "cuStreamCreate");
    }

    /* per-wave ns so that each kernel lasts exactly kern[i] */
    uint64_t waves = (blocks + sm - 1) / sm;
    uint64_t per[32], dur[32];
    for (int i = 0; i < nk; i++) {
        per[i] = kern[i] / waves;
        dur[i] = per[i] * waves;
    }
    int use_graph = !acl && !strcmp(api, "graph");
    CUgraphExec exec = NULL;
    uint64_t graph_dur = 0;
    if (use_graph) {
        CUgraph g;
        CK(p_cuStreamBeginCapture_v2(s, 0), "cuStreamBeginCapture_v2");
        for (int i = 0; i < graph_nodes; i++) {
            uint64_t v = per[i % nk];
            void *params[] = {&v};
            CK(p_cuLaunchKernel(f, blocks, 1, 1, 128, 1, 1, 0, s, params, NULL), "capture launch");
            graph_dur += dur[i % nk];
        }
        CK(p_cuStreamEndCapture(s, &g), "cuStreamEndCapture");
        CK(p_cuGraphInstantiateWithFlags(&exec, g, 0), "cuGraphInstantiateWithFlags");
    }
    /* --side-capture: a global-mode capture stays open on another stream during the run (only
     * launches, which are safe, happen meanwhile); it must end without being invalidated */
    CUstream side = NULL;
    if (!acl && side_capture) {
        uint64_t v = per[0];
        void *params[] = {&v};
        CK(p_cuStreamCreate(&side, 0), "cuStreamCreate side");
        CK(p_cuStreamBeginCapture_v2(side, 0), "cuStreamBeginCapture_v2 side");
        CK(p_cuLaunchKernel(f, blocks, 1, 1, 128, 1, 1, 0, side, params, NULL), "side capture launch");
    }

    if (start_at)
        while (now_ns() < start_at) {
            struct timespec ts = {0, 200000};
            nanosleep(&ts, NULL);
        }
    uint64_t t0 = start_at ? start_at : now_ns();
    uint64_t end = t0 + (uint64_t)(seconds * 1e9);
    size_t nb = (size_t)((end - t0) / bucket_ns + 1);
    uint64_t *bucket = calloc(nb, sizeof *bucket);
    size_t lat_cap = 1 << 20, nlat = 0;
    uint64_t *lat = calloc(lat_cap, sizeof *lat);
    uint64_t switch_ns = switch_at > 0 ? t0 + (uint64_t)(switch_at * 1e9) : 0;
    struct worker *workers = calloc((size_t)threads, sizeof *workers);
    for (int i = 1; i < threads; i++) {
        workers[i] = (struct worker){acl, closed, sync_every, nk, blocks, ctx, f, af, per, dur,
                                     t0, end, bucket_ns, 0, 0, bucket, nb, 0};
        if (pthread_create(&workers[i].tid, NULL, worker_main, &workers[i]) != 0) {
            fprintf(stderr, "compute_client: cannot start thread %d\n", i);
            return 3;
        }
    }
    int in_burst = 0;
    uint64_t launches = 0, busy = 0;
    int ki = 0;
    uint64_t t = now_ns(); /* a closed loop's latency runs from the first launch of a burst */
    for (;;) {
        uint64_t now = now_ns();
        if (now >= end)
            break;
        if (switch_ns && now >= switch_ns && in_burst == 0) {
            closed = !closed; /* the pattern changes mid-run */
            switch_ns = 0;
        }
        if (in_burst == 0)
            t = now;
        uint64_t v = per[ki % nk], d = dur[ki % nk];
        void *params[] = {&v};
        if (acl) {
            if (!strcmp(api, "v2")) {
                CK(a_aclrtLaunchKernelV2(af, blocks, &v, sizeof v, NULL, as), "aclrtLaunchKernelV2");
            } else if (!strcmp(api, "hostargs")) {
                CK(a_aclrtLaunchKernelWithHostArgs(af, blocks, as, NULL, &v, sizeof v, NULL, 0),
                   "aclrtLaunchKernelWithHostArgs");
            } else if (!strcmp(api, "cfg")) {
                aclrtArgsHandle ah;
                aclrtParamHandle ph;
                CK(a_aclrtKernelArgsInit(af, &ah), "aclrtKernelArgsInit");
                CK(a_aclrtKernelArgsAppend(ah, &v, sizeof v, &ph), "aclrtKernelArgsAppend");
                CK(a_aclrtKernelArgsFinalize(ah), "aclrtKernelArgsFinalize");
                CK(a_aclrtLaunchKernelWithConfig(af, blocks, as, NULL, ah, NULL), "aclrtLaunchKernelWithConfig");
            } else {
                CK(a_aclrtLaunchKernel(af, blocks, &v, sizeof v, as), "aclrtLaunchKernel");
            }
        } else if (use_graph) {
            CK(p_cuGraphLaunch(exec, s), "cuGraphLaunch");
            d = graph_dur;
        } else if (!strcmp(api, "ptsz")) {
            CK(p_cuLaunchKernel_ptsz(f, blocks, 1, 1, 128, 1, 1, 0, s, params, NULL), "cuLaunchKernel_ptsz");
        } else if (!strcmp(api, "ex")) {
            CUlaunchConfig cfg = {blocks, 1, 1, 128, 1, 1, 0, s, NULL, 0};
            CK(p_cuLaunchKernelEx(&cfg, f, params, NULL), "cuLaunchKernelEx");
        } else if (!strcmp(api, "coop")) {
            CK(p_cuLaunchCooperativeKernel(f, blocks, 1, 1, 128, 1, 1, 0, s, params), "cuLaunchCooperativeKernel");
        } else {
            CK(p_cuLaunchKernel(f, blocks, 1, 1, 128, 1, 1, 0, s, params, NULL), "cuLaunchKernel");
        }
        ki++;
        launches++;
        busy += d;
        /* the work counts when it was enqueued, i.e. once the launch returned: a limiter that
         * holds the launch back must not have the kernel counted from when it was asked for */
        size_t b = (size_t)((now_ns() - t0) / bucket_ns);
        if (b < nb)
            __atomic_add_fetch(&bucket[b], d, __ATOMIC_RELAXED); /* threads add too */
        if (closed && ++in_burst >= sync_every) {
            in_burst = 0;
            CK(acl ? a_aclrtSynchronizeStream(as) : p_cuStreamSynchronize(s), "stream synchronize");
            if (nlat < lat_cap)
                lat[nlat++] = now_ns() - t;
            if (think_ns) {
                struct timespec ts = {(time_t)(think_ns / 1000000000ULL), (long)(think_ns % 1000000000ULL)};
                nanosleep(&ts, NULL);
            }
        }
    }
    int side_end = 0;
    if (side) {
        CUgraph g2;
        side_end = (int)p_cuStreamEndCapture(side, &g2);
    }
    CK(acl ? a_aclrtSynchronizeStream(as) : p_cuStreamSynchronize(s), "final stream synchronize");
    uint64_t main_launches = launches;
    for (int i = 1; i < threads; i++) {
        pthread_join(workers[i].tid, NULL);
        launches += workers[i].launches;
        busy += workers[i].busy;
    }
    uint64_t wall = now_ns() - t0;
    printf("{\"launches\": %llu, \"busy_ns\": %llu, \"wall_ns\": %llu, \"bucket_ns\": %llu, "
           "\"kernel_ns\": %llu, \"buckets\": [",
           (unsigned long long)launches, (unsigned long long)busy, (unsigned long long)wall,
           (unsigned long long)bucket_ns, (unsigned long long)dur[0]);
    for (size_t i = 0; i < nb; i++)
        printf("%s%llu", i ? ", " : "", (unsigned long long)bucket[i]);
    printf("], \"thread_launches\": [%llu", (unsigned long long)main_launches);
    for (int i = 1; i < threads; i++)
        printf(", %llu", (unsigned long long)workers[i].launches);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("], \"cpu_ns\": %llu, \"voluntary_switches\": %ld",
           (unsigned long long)((ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000ULL +
                                (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000ULL),
           ru.ru_nvcsw);
    if (side)
        printf(", \"side_capture_end\": %d", side_end);
    if (nlat) {
        qsort(lat, nlat, sizeof *lat, cmp_u64);
        double sum = 0;
        for (size_t i = 0; i < nlat; i++)
            sum += (double)lat[i];
        printf(", \"lat_n\": %zu, \"lat_mean_us\": %.1f, \"lat_p50_us\": %.1f, \"lat_p99_us\": %.1f",
               nlat, sum / (double)nlat / 1000, (double)lat[nlat / 2] / 1000,
               (double)lat[nlat * 99 / 100] / 1000);
    }
    printf("}\n");
    return 0;
}
