/* An ACL client for the tests, driven by its arguments: each argument (with its operands) is one
 * step, and each step prints one line "<step> rc=<aclError> [key=value ...]".
 *
 * Built twice by the tests: linked against libascendcl.so (-lascendcl), and with -DACL_DLOPEN,
 * where it dlopen()s libascendcl.so and dlsym()s every entry point, as frameworks do.
 *
 * Steps: init | finalize | count | set D | reset D | getdev | ctx D | meminfo | malloc N |
 *        align32 N | cached N | cfg N [D] | phys N D | free | freeall | fill CHUNK | errmsg |
 *        copy | vmm | spin NS COUNT | kernel BLOCKS COUNT | hostargs NS | withcfg NS |
 *        sched N (aclrtMallocForTaskScheduler) | dvpp N (acldvppMalloc) | dvppfree |
 *        graph NS TASKS REPLAYS (aclmdlRI capture of TASKS spin launches, replayed) |
 *        aicpu NS (an AI-CPU function: aclrtRegisterCpuFunc + aclrtLaunchKernelWithConfig) |
 *        ready | wait (for one line on stdin) | hold (until stdin closes) | sleep MS */
#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "acl_api.h"

#ifdef ACL_DLOPEN
#define PTR(ret, name, params, args) static ret(*p_##name) params;
ACL_API_LIST(PTR)
#undef PTR
#define CALL(f) p_##f
static void load(void)
{
    const char *lib = getenv("ACL_LIB");
    void *h = dlopen(lib && *lib ? lib : "libascendcl.so", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "dlopen: %s\n", dlerror());
        exit(3);
    }
#define SYM(ret, name, params, args) *(void **)&p_##name = dlsym(h, #name);
    ACL_API_LIST(SYM)
#undef SYM
}
#else
#define CALL(f) f
static void load(void) {}
#endif

#define MAXP 4096
static void *ptrs[MAXP];
static int nptrs;
static aclrtDrvMemHandle phys[MAXP];
static int nphys;
static void *dvpp[MAXP];
static int ndvpp;

static void say(const char *step, aclError rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void say(const char *step, aclError rc, const char *fmt, ...)
{
    printf("%s rc=%d", step, rc);
    if (fmt && *fmt) {
        va_list ap;
        va_start(ap, fmt);
        putchar(' ');
        vprintf(fmt, ap);
        va_end(ap);
    }
    putchar('\n');
    fflush(stdout);
}

static aclrtFuncHandle function(const char *name)
{
    static aclrtBinHandle bin;
    aclrtFuncHandle f = NULL;
    static const char blob[] = "flexai simulated kernel binary";
    if (!bin && CALL(aclrtBinaryLoadFromData)(blob, sizeof blob, NULL, &bin) != ACL_SUCCESS)
        return NULL;
    if (CALL(aclrtBinaryGetFunction)(bin, name, &f) != ACL_SUCCESS)
        return NULL;
    return f;
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

int main(int argc, char **argv)
{
    load();
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        const char *a1 = i + 1 < argc ? argv[i + 1] : "0";
        const char *a2 = i + 2 < argc ? argv[i + 2] : "0";
        aclError rc;
        if (!strcmp(s, "init")) {
            say(s, CALL(aclInit)(NULL), NULL);
        } else if (!strcmp(s, "finalize")) {
            say(s, CALL(aclFinalize)(), NULL);
        } else if (!strcmp(s, "count")) {
            uint32_t n = 99;
            rc = CALL(aclrtGetDeviceCount)(&n);
            say(s, rc, "count=%u", n);
        } else if (!strcmp(s, "set") || !strcmp(s, "reset") || !strcmp(s, "ctx")) {
            int d = atoi(a1);
            i++;
            if (!strcmp(s, "set"))
                rc = CALL(aclrtSetDevice)(d);
            else if (!strcmp(s, "reset"))
                rc = CALL(aclrtResetDevice)(d);
            else {
                aclrtContext c;
                rc = CALL(aclrtCreateContext)(&c, d);
            }
            say(s, rc, "device=%d", d);
        } else if (!strcmp(s, "getdev")) {
            int32_t d = -1;
            rc = CALL(aclrtGetDevice)(&d);
            say(s, rc, "device=%d", d);
        } else if (!strcmp(s, "meminfo")) {
            size_t fr = 0, tot = 0;
            rc = CALL(aclrtGetMemInfo)(ACL_HBM_MEM, &fr, &tot);
            say(s, rc, "free=%zu total=%zu", fr, tot);
        } else if (!strcmp(s, "malloc") || !strcmp(s, "align32") || !strcmp(s, "cached") || !strcmp(s, "cfg")) {
            size_t n = strtoull(a1, NULL, 0);
            void *p = NULL;
            i++;
            if (!strcmp(s, "malloc"))
                rc = CALL(aclrtMalloc)(&p, n, ACL_MEM_MALLOC_HUGE_FIRST);
            else if (!strcmp(s, "align32"))
                rc = CALL(aclrtMallocAlign32)(&p, n, ACL_MEM_MALLOC_HUGE_FIRST);
            else if (!strcmp(s, "cached"))
                rc = CALL(aclrtMallocCached)(&p, n, ACL_MEM_MALLOC_HUGE_FIRST);
            else {
                aclrtMallocAttribute attr = { .attr = ACL_RT_MEM_ATTR_DEVICE_ID };
                aclrtMallocConfig cfg = { .attrs = &attr, .numAttrs = 0 };
                if (i + 1 < argc && argv[i + 1][0] >= '0' && argv[i + 1][0] <= '9') {
                    attr.value.deviceId = (uint32_t)atoi(argv[++i]);
                    cfg.numAttrs = 1;
                }
                rc = CALL(aclrtMallocWithCfg)(&p, n, ACL_MEM_MALLOC_HUGE_FIRST, &cfg);
            }
            if (rc == ACL_SUCCESS && nptrs < MAXP)
                ptrs[nptrs++] = p;
            say(s, rc, "bytes=%zu", n);
        } else if (!strcmp(s, "phys")) {
            aclrtPhysicalMemProp prop = { .handleType = ACL_MEM_HANDLE_TYPE_NONE,
                                          .allocationType = ACL_MEM_ALLOCATION_TYPE_PINNED,
                                          .memAttr = ACL_HBM_MEM_HUGE,
                                          .location = { .id = (uint32_t)atoi(a2), .type = ACL_MEM_LOCATION_TYPE_DEVICE } };
            aclrtDrvMemHandle h = NULL;
            size_t n = strtoull(a1, NULL, 0);
            i += 2;
            rc = CALL(aclrtMallocPhysical)(&h, n, &prop, 0);
            if (rc == ACL_SUCCESS && nphys < MAXP)
                phys[nphys++] = h;
            say(s, rc, "bytes=%zu", n);
        } else if (!strcmp(s, "free")) {
            rc = nptrs ? CALL(aclrtFree)(ptrs[--nptrs]) : ACL_ERROR_INVALID_PARAM;
            say(s, rc, NULL);
        } else if (!strcmp(s, "freeall")) {
            rc = ACL_SUCCESS;
            while (nptrs && !rc)
                rc = CALL(aclrtFree)(ptrs[--nptrs]);
            while (nphys && !rc)
                rc = CALL(aclrtFreePhysical)(phys[--nphys]);
            say(s, rc, NULL);
        } else if (!strcmp(s, "fill")) {
            size_t chunk = strtoull(a1, NULL, 0), got = 0;
            i++;
            void *p;
            while ((rc = CALL(aclrtMalloc)(&p, chunk, ACL_MEM_MALLOC_HUGE_FIRST)) == ACL_SUCCESS && nptrs < MAXP) {
                ptrs[nptrs++] = p;
                got += chunk;
            }
            say(s, rc, "filled=%zu", got);
        } else if (!strcmp(s, "errmsg")) {
            const char *m = CALL(aclGetRecentErrMsg)();
            say(s, 0, "msg=%s", m ? m : "(null)");
        } else if (!strcmp(s, "copy")) {
            char in[4096], out[4096];
            void *d = NULL;
            for (int k = 0; k < 4096; k++)
                in[k] = (char)(k * 7);
            memset(out, 0, sizeof out);
            rc = CALL(aclrtMalloc)(&d, sizeof in, ACL_MEM_MALLOC_HUGE_FIRST);
            if (!rc) rc = CALL(aclrtMemcpy)(d, sizeof in, in, sizeof in, ACL_MEMCPY_HOST_TO_DEVICE);
            if (!rc) rc = CALL(aclrtMemcpy)(out, sizeof out, d, sizeof out, ACL_MEMCPY_DEVICE_TO_HOST);
            int same = !memcmp(in, out, sizeof in);
            aclError bad = CALL(aclrtMemcpy)(in, sizeof in, out, sizeof in, ACL_MEMCPY_HOST_TO_DEVICE);
            if (d) CALL(aclrtFree)(d);
            say(s, rc, "same=%d host_as_device=%d", same, bad);
        } else if (!strcmp(s, "vmm")) {
            size_t g = 0;
            aclrtPhysicalMemProp prop = { .memAttr = ACL_HBM_MEM_HUGE,
                                          .location = { .id = 0, .type = ACL_MEM_LOCATION_TYPE_DEVICE } };
            int32_t dev = 0;
            CALL(aclrtGetDevice)(&dev);
            prop.location.id = (uint32_t)dev;
            void *va = NULL;
            aclrtDrvMemHandle h = NULL;
            rc = CALL(aclrtMemGetAllocationGranularity)(&prop, ACL_RT_MEM_ALLOC_GRANULARITY_MINIMUM, &g);
            if (!rc) rc = CALL(aclrtReserveMemAddress)(&va, 2 * g, 0, NULL, 0);
            if (!rc) rc = CALL(aclrtMallocPhysical)(&h, 2 * g, &prop, 0);
            if (!rc) rc = CALL(aclrtMapMem)(va, 2 * g, 0, h, 0);
            int ok = 0;
            if (!rc) {
                rc = CALL(aclrtMemset)(va, 2 * g, 0x5a, 2 * g);
                ok = ((unsigned char *)va)[2 * g - 1] == 0x5a;
            }
            if (!rc) rc = CALL(aclrtUnmapMem)(va);
            if (!rc) rc = CALL(aclrtFreePhysical)(h);
            if (!rc) rc = CALL(aclrtReleaseMemAddress)(va);
            say(s, rc, "granularity=%zu ok=%d", g, ok);
        } else if (!strcmp(s, "spin") || !strcmp(s, "kernel")) {
            unsigned long long arg = strtoull(a1, NULL, 0);
            int count = atoi(a2);
            i += 2;
            aclrtFuncHandle f = function(!strcmp(s, "spin") ? "flexai_sim_spin_ns" : "matmul_kernel");
            aclrtStream st = NULL;
            aclrtEvent e0 = NULL, e1 = NULL;
            rc = f ? CALL(aclrtCreateStream)(&st) : ACL_ERROR_KERNEL_NOT_FOUND;
            if (!rc) rc = CALL(aclrtCreateEvent)(&e0);
            if (!rc) rc = CALL(aclrtCreateEvent)(&e1);
            if (!rc) rc = CALL(aclrtRecordEvent)(e0, st);
            double t0 = now_ms();
            for (int k = 0; k < count && !rc; k++) {
                if (!strcmp(s, "spin"))
                    rc = CALL(aclrtLaunchKernel)(f, 1, &arg, sizeof arg, st);
                else
                    rc = CALL(aclrtLaunchKernel)(f, (uint32_t)arg, NULL, 0, st);
            }
            if (!rc) rc = CALL(aclrtRecordEvent)(e1, st);
            if (!rc) rc = CALL(aclrtSynchronizeStream)(st);
            double wall = now_ms() - t0;
            float ms = -1;
            if (!rc) rc = CALL(aclrtEventElapsedTime)(&ms, e0, e1);
            if (e0) CALL(aclrtDestroyEvent)(e0);
            if (e1) CALL(aclrtDestroyEvent)(e1);
            if (st) CALL(aclrtDestroyStream)(st);
            say(s, rc, "event_ms=%.3f wall_ms=%.3f", ms, wall);
        } else if (!strcmp(s, "hostargs") || !strcmp(s, "withcfg") || !strcmp(s, "v2")) {
            unsigned long long ns = strtoull(a1, NULL, 0);
            i++;
            aclrtFuncHandle f = function("flexai_sim_spin_ns");
            aclrtEvent e0 = NULL, e1 = NULL;
            rc = f ? CALL(aclrtCreateEvent)(&e0) : ACL_ERROR_KERNEL_NOT_FOUND;
            if (!rc) rc = CALL(aclrtCreateEvent)(&e1);
            if (!rc) rc = CALL(aclrtRecordEvent)(e0, NULL);
            if (!rc && !strcmp(s, "hostargs")) {
                rc = CALL(aclrtLaunchKernelWithHostArgs)(f, 1, NULL, NULL, &ns, sizeof ns, NULL, 0);
            } else if (!rc && !strcmp(s, "v2")) {
                rc = CALL(aclrtLaunchKernelV2)(f, 1, &ns, sizeof ns, NULL, NULL);
            } else if (!rc) {
                aclrtArgsHandle ah = NULL;
                aclrtParamHandle ph = NULL;
                rc = CALL(aclrtKernelArgsInit)(f, &ah);
                if (!rc) rc = CALL(aclrtKernelArgsAppend)(ah, &ns, sizeof ns, &ph);
                if (!rc) rc = CALL(aclrtKernelArgsFinalize)(ah);
                if (!rc) rc = CALL(aclrtLaunchKernelWithConfig)(f, 1, NULL, NULL, ah, NULL);
            }
            if (!rc) rc = CALL(aclrtRecordEvent)(e1, NULL);
            if (!rc) rc = CALL(aclrtSynchronizeEvent)(e1);
            float ms = -1;
            if (!rc) rc = CALL(aclrtEventElapsedTime)(&ms, e0, e1);
            say(s, rc, "event_ms=%.3f", ms);
        } else if (!strcmp(s, "sched") || !strcmp(s, "dvpp")) {
            size_t n = strtoull(a1, NULL, 0);
            void *p = NULL;
            i++;
            if (!strcmp(s, "sched")) {
                aclrtMallocConfig cfg = { .attrs = NULL, .numAttrs = 0 };
                rc = CALL(aclrtMallocForTaskScheduler)(&p, n, ACL_MEM_MALLOC_HUGE_FIRST, &cfg);
                if (rc == ACL_SUCCESS && nptrs < MAXP)
                    ptrs[nptrs++] = p;
            } else {
                rc = CALL(acldvppMalloc)(&p, n);
                if (rc == ACL_SUCCESS && ndvpp < MAXP)
                    dvpp[ndvpp++] = p;
            }
            say(s, rc, "bytes=%zu", n);
        } else if (!strcmp(s, "dvppfree")) {
            rc = ACL_SUCCESS;
            while (ndvpp && !rc)
                rc = CALL(acldvppFree)(dvpp[--ndvpp]);
            say(s, rc, NULL);
        } else if (!strcmp(s, "graph")) {
            unsigned long long ns = strtoull(a1, NULL, 0);
            int tasks = atoi(a2), replays = i + 3 < argc ? atoi(argv[i + 3]) : 1;
            i += 3;
            aclrtFuncHandle f = function("flexai_sim_spin_ns");
            aclrtStream st = NULL;
            aclmdlRI ri = NULL;
            rc = f ? CALL(aclrtCreateStream)(&st) : ACL_ERROR_KERNEL_NOT_FOUND;
            if (!rc) rc = CALL(aclmdlRICaptureBegin)(st, ACL_MODEL_RI_CAPTURE_MODE_GLOBAL);
            for (int k = 0; k < tasks && !rc; k++)
                rc = CALL(aclrtLaunchKernel)(f, 1, &ns, sizeof ns, st);
            if (!rc) rc = CALL(aclmdlRICaptureEnd)(st, &ri);
            aclError capture = rc;
            double t0 = now_ms();
            for (int k = 0; k < replays && !rc; k++)
                rc = CALL(aclmdlRIExecuteAsync)(ri, st);
            if (!rc) rc = CALL(aclrtSynchronizeStream)(st);
            double wall = now_ms() - t0;
            if (ri) CALL(aclmdlRIDestroy)(ri);
            if (st) CALL(aclrtDestroyStream)(st);
            say(s, rc, "capture=%d wall_ms=%.3f", capture, wall);
        } else if (!strcmp(s, "aicpu")) {
            unsigned long long ns = strtoull(a1, NULL, 0);
            i++;
            static const char blob[] = "flexai simulated AI-CPU kernel library";
            aclrtBinHandle bin = NULL;
            aclrtFuncHandle f = NULL;
            aclrtArgsHandle ah = NULL;
            aclrtParamHandle ph = NULL;
            rc = CALL(aclrtBinaryLoadFromData)(blob, sizeof blob, NULL, &bin);
            if (!rc) rc = CALL(aclrtRegisterCpuFunc)(bin, "RunCpuKernel", "flexai_sim_spin_cpu", &f);
            if (!rc) rc = CALL(aclrtKernelArgsInit)(f, &ah);
            if (!rc) rc = CALL(aclrtKernelArgsAppend)(ah, &ns, sizeof ns, &ph);
            if (!rc) rc = CALL(aclrtKernelArgsFinalize)(ah);
            if (!rc) rc = CALL(aclrtLaunchKernelWithConfig)(f, 1, NULL, NULL, ah, NULL);
            if (!rc) rc = CALL(aclrtSynchronizeDevice)();
            say(s, rc, NULL);
        } else if (!strcmp(s, "ready")) {
            say(s, 0, "pid=%d", (int)getpid());
        } else if (!strcmp(s, "wait")) {
            char c;
            while (read(0, &c, 1) == 1 && c != '\n')
                ;
        } else if (!strcmp(s, "hold")) {
            char buf[16];
            say(s, 0, NULL);
            while (read(0, buf, sizeof buf) > 0)
                ;
        } else if (!strcmp(s, "sleep")) {
            usleep((useconds_t)atoi(a1) * 1000);
            i++;
        } else {
            fprintf(stderr, "unknown step %s\n", s);
            return 2;
        }
    }
    return 0;
}
