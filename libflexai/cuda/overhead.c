/* Driver-held memory no intercepted call allocated (issue 15, path 4).
 *
 * On a real card a process's contexts, loaded modules and libraries (cuBLAS, cuDNN, NCCL,
 * Triton kernels, lazily loaded cudart kernels), thread stacks, the device malloc heap and
 * printf FIFO take hundreds of MiB that no cuMemAlloc asked for. The driver reports them: NVML's
 * per-process used memory (nvmlDeviceGetComputeRunningProcesses) is everything the driver holds
 * for the process. So the process's overhead is
 *
 *     max(0, NVML used of this process - bytes libflexai tracked for it)
 *
 * and it is charged to the process's slot like an allocation that already happened
 * (flexai_charge_held: past the limit if need be, so the next allocation is refused).
 *
 * When: after every wrapped context creation, module/library load or unload, cuCtxSetLimit
 * and green context, and otherwise on the allocation path at most every
 * FLEXAI_OVERHEAD_PERIOD_NS (one coarse clock read per allocation in between). Module loads
 * and cuCtxSetLimit that push the slice past its limit are undone and fail with
 * CUDA_ERROR_OUT_OF_MEMORY, as the driver does when the card is full.
 *
 * Which pid is ours: NVML reports pids of the host's pid namespace. A process in the initial
 * pid namespace (/proc/self/ns/pid is pid:[4026531836], the kernel's fixed inode of the
 * initial namespace) is getpid(); one whose /proc shows several NSpid levels is the first of
 * them. Otherwise (a container with its own /proc) or when that pid is not in NVML's list,
 * the process finds itself by its own allocation pattern: it reads the list, allocates a
 * probe of FLEXAI_PROBE_BYTES straight from the driver, reads the list again and frees the
 * probe; the one pid whose memory grew by the probe is this process. Ambiguous answers
 * (another process grew by the same amount at the same moment) are retried at later
 * refreshes, up to FLEXAI_PROBE_TRIES times; after that, one line on stderr and only the
 * configured per-process context charge applies.
 */
#include "flexai.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define FLEXAI_OVERHEAD_PERIOD_NS 100000000ULL /* 100 ms */
#define FLEXAI_OVERHEAD_SLACK (256 << 10)      /* smaller changes are left as they are */
#define FLEXAI_PROBE_BYTES (8ULL << 20)
#define FLEXAI_PROBE_TRIES 8
#define FLEXAI_INIT_PID_NS "pid:[4026531836]"  /* PROC_PID_INIT_INO */
#define MAX_PROCS 512
#define NVML_VALUE_NOT_AVAILABLE_ULL 0xFFFFFFFFFFFFFFFFULL

typedef nvmlReturn_t (*list_fn)(nvmlDevice_t, unsigned int *, nvmlProcessInfo_v2_t *);

static struct {
    pthread_mutex_t lock;
    int state;                 /* 0 not set up, 1 usable, -1 no NVML or no CUDA: nothing to do */
    list_fn list;
    nvmlDevice_t dev;
    pid_t for_pid;             /* getpid() when nvml_pid was found (a forked child looks again) */
    unsigned int nvml_pid;     /* this process in NVML's list; 0 unknown */
    int probe_tries;
    int64_t charged;           /* overhead bytes charged to this process's slot */
} O = {.lock = PTHREAD_MUTEX_INITIALIZER};

static int setup(void)
{
    if (O.state)
        return O.state;
    O.state = -1;
    /* Only CUDA processes: an Ascend or driverless process never loads NVML for this. */
    if (flexai_driver_sym(FLEXAI_LIB_CUDA, "cuCtxGetCurrent") == NULL)
        return O.state;
    list_fn list = (list_fn)REAL(nvmlDeviceGetComputeRunningProcesses_v3); /* loads NVML */
    if (list == NULL)
        list = (list_fn)REAL(nvmlDeviceGetComputeRunningProcesses_v2);
    nvmlReturn_t (*init)(void) = (nvmlReturn_t(*)(void))flexai_driver_sym(FLEXAI_LIB_NVML, "nvmlInit_v2");
    /* NVML counts nvmlInit against nvmlShutdown: the program's own shutdown leaves ours. */
    if (list == NULL || init == NULL || init() != NVML_SUCCESS || flexai_nvml_device(&O.dev) != 0)
        return O.state;
    O.list = list;
    O.state = 1;
    return O.state;
}

/* NVML's processes on the slice's card; count, or -1. */
static int snapshot(nvmlProcessInfo_v2_t *out)
{
    unsigned int n = MAX_PROCS;
    if (O.list(O.dev, &n, out) != NVML_SUCCESS)
        return -1;
    return (int)n;
}

/* What NVML says pid holds (the sum of its entries: one per context, or per driver copy in
 * a process that loaded the driver twice with dlmopen); -1 not listed, -2 not available. */
static int64_t used_of(const nvmlProcessInfo_v2_t *p, int n, unsigned int pid)
{
    int64_t sum = -1;
    for (int i = 0; i < n; i++) {
        if (p[i].pid != pid)
            continue;
        if (p[i].usedGpuMemory == NVML_VALUE_NOT_AVAILABLE_ULL)
            return -2;
        sum = (sum < 0 ? 0 : sum) + (int64_t)p[i].usedGpuMemory;
    }
    return sum;
}

/* This process's pid as the host's namespace sees it, when the kernel tells; else 0. */
static unsigned int host_pid_from_proc(void)
{
    char link[64];
    ssize_t k = readlink("/proc/self/ns/pid", link, sizeof link - 1);
    if (k > 0) {
        link[k] = 0;
        if (strcmp(link, FLEXAI_INIT_PID_NS) == 0)
            return (unsigned int)getpid();
    }
    FILE *f = fopen("/proc/self/status", "re");
    if (f == NULL)
        return 0;
    char line[256];
    unsigned int first = 0;
    int levels = 0;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "NSpid:", 6) != 0)
            continue;
        char *s = line + 6, *end;
        for (;;) {
            unsigned long v = strtoul(s, &end, 10);
            if (end == s)
                break;
            if (levels++ == 0)
                first = (unsigned int)v;
            s = end;
        }
        break;
    }
    fclose(f);
    return levels >= 2 ? first : 0; /* one level: /proc is the container's own */
}

/* Finds this process by allocating a probe: 1 found, 0 not (yet). */
static int probe(nvmlProcessInfo_v2_t *before, nvmlProcessInfo_v2_t *after)
{
    __typeof__(&cuMemAlloc_v2) alloc = REAL(cuMemAlloc_v2);
    __typeof__(&cuMemFree_v2) release = REAL(cuMemFree_v2);
    CUcontext ctx = NULL;
    CUresult (*get_current)(CUcontext *) =
        (CUresult(*)(CUcontext *))flexai_driver_sym(FLEXAI_LIB_CUDA, "cuCtxGetCurrent");
    if (!alloc || !release || !get_current || get_current(&ctx) != CUDA_SUCCESS || ctx == NULL)
        return 0; /* no context on this thread: try at a later refresh */
    int nb = snapshot(before);
    CUdeviceptr p = 0;
    if (nb < 0 || alloc(&p, FLEXAI_PROBE_BYTES) != CUDA_SUCCESS)
        return 0;
    int na = snapshot(after);
    release(p);
    unsigned int found = 0;
    int matches = 0;
    for (int i = 0; i < na; i++) {
        int64_t was = used_of(before, nb, after[i].pid);
        int64_t grew = (int64_t)after[i].usedGpuMemory - (was > 0 ? was : 0);
        if (after[i].usedGpuMemory != NVML_VALUE_NOT_AVAILABLE_ULL && was != -2 &&
            grew >= (int64_t)FLEXAI_PROBE_BYTES && grew < (int64_t)(FLEXAI_PROBE_BYTES + (2 << 20))) {
            found = after[i].pid;
            matches++;
        }
    }
    if (matches == 1) {
        O.nvml_pid = found;
        return 1;
    }
    if (++O.probe_tries == FLEXAI_PROBE_TRIES)
        flexai_warn("flexai: this process is not identifiable in NVML's process list; driver "
                    "memory beyond its allocations (contexts, modules) is charged only as the "
                    "slice's context_memory");
    return 0;
}

static void refresh_locked(void)
{
    static nvmlProcessInfo_v2_t a[MAX_PROCS], b[MAX_PROCS]; /* under O.lock */
    if (setup() <= 0)
        return;
    pid_t self = getpid();
    if (O.for_pid != self) { /* first time, or a forked child: its own pid and charge */
        O.for_pid = self;
        O.nvml_pid = 0;
        O.probe_tries = 0;
        O.charged = 0;
    }
    int n = snapshot(a);
    if (n < 0)
        return;
    if (O.nvml_pid == 0) {
        unsigned int mine = host_pid_from_proc();
        if (mine != 0 && used_of(a, n, mine) != -1) {
            O.nvml_pid = mine;
        } else if (O.probe_tries >= FLEXAI_PROBE_TRIES || !probe(b, a)) {
            if (O.probe_tries < FLEXAI_PROBE_TRIES) /* look again at the next allocation */
                __atomic_store_n(&flexai_overhead_next_ns, 0, __ATOMIC_RELAXED);
            return;
        }
        if ((n = snapshot(a)) < 0)
            return;
    }
    int64_t used = used_of(a, n, O.nvml_pid);
    if (used == -2)
        return; /* NVML cannot say (no permission, vGPU): leave the charge as it is */
    if (used < 0)
        used = 0; /* not listed: the driver holds nothing for it */
    /* Tracked for this process: its own, and that of other copies of libflexai in it (dlmopen
     * namespaces: other slots with this pid), whose overhead charges count as tracked too,
     * so the driver's total is charged once, by whichever copy refreshes first. */
    int64_t tracked = __atomic_load_n(&flexai_P.held, __ATOMIC_RELAXED) - O.charged;
    struct flexai_region *r = flexai_region();
    for (int i = 0; r != NULL && i < FLEXAI_MAX_PROCS; i++) {
        struct flexai_proc *s = &r->procs[i];
        if (i != flexai_P.slot && __atomic_load_n(&s->pid, __ATOMIC_RELAXED) == (int32_t)self)
            tracked += __atomic_load_n(&s->memory_used, __ATOMIC_RELAXED);
    }
    int64_t want = used > tracked ? used - tracked : 0;
    int64_t delta = want - O.charged;
    if (delta > -FLEXAI_OVERHEAD_SLACK && delta < FLEXAI_OVERHEAD_SLACK && want != 0)
        return;
    if (delta > 0)
        flexai_charge_held(delta);
    else if (delta < 0)
        flexai_unreserve(-delta);
    O.charged = want;
    if (flexai_P.me)
        __atomic_store_n(&flexai_P.me->overhead_bytes, want, __ATOMIC_RELAXED);
}

void flexai_overhead_refresh(int force)
{
    if (!flexai_enforcing() || flexai_region() == NULL)
        return;
    if (O.state < 0) { /* no CUDA or no NVML here: the allocation path stops asking */
        __atomic_store_n(&flexai_overhead_next_ns, UINT64_MAX, __ATOMIC_RELAXED);
        return;
    }
    if (force)
        pthread_mutex_lock(&O.lock);
    else if (pthread_mutex_trylock(&O.lock) != 0)
        return; /* another thread is refreshing */
    __atomic_store_n(&flexai_overhead_next_ns,
                     flexai_now_ns(CLOCK_MONOTONIC_COARSE) + FLEXAI_OVERHEAD_PERIOD_NS,
                     __ATOMIC_RELAXED);
    refresh_locked();
    pthread_mutex_unlock(&O.lock);
}

/* 1 when the slice holds more than its limit (after a refresh). */
static int over_limit(void)
{
    struct flexai_region *r = flexai_region();
    if (r == NULL)
        return 0;
    int64_t limit = flexai_limit_bytes(r);
    return limit > 0 && flexai_memory_used() > limit;
}

/* ---- modules and libraries: the driver loads their code into device memory ------------ */

/* After a load: charge it; undo it when the slice no longer fits. */
#define LOAD_WRAPPER(name, call, handle, unload)                                             \
    {                                                                                        \
        __typeof__(&name) real = REAL(name);                                                 \
        if (!real)                                                                           \
            return CUDA_ERROR_NOT_INITIALIZED;                                               \
        CUresult rc = call;                                                                  \
        if (rc != CUDA_SUCCESS || !flexai_enforcing())                                       \
            return rc;                                                                       \
        flexai_overhead_refresh(1);                                                          \
        if (over_limit()) {                                                                  \
            __typeof__(&unload) undo = REAL(unload);                                         \
            if (undo && handle && undo(*handle) == CUDA_SUCCESS) {                           \
                *handle = NULL;                                                              \
                flexai_overhead_refresh(1);                                                  \
                return CUDA_ERROR_OUT_OF_MEMORY;                                             \
            }                                                                                \
        }                                                                                    \
        return rc;                                                                           \
    }

CUresult fx_cuModuleLoad(CUmodule *module, const char *fname)
LOAD_WRAPPER(cuModuleLoad, real(module, fname), module, cuModuleUnload)
FLEXAI_ALIAS(cuModuleLoad);

CUresult fx_cuModuleLoadData(CUmodule *module, const void *image)
LOAD_WRAPPER(cuModuleLoadData, real(module, image), module, cuModuleUnload)
FLEXAI_ALIAS(cuModuleLoadData);

CUresult fx_cuModuleLoadDataEx(CUmodule *module, const void *image, unsigned int numOptions,
                               int *options, void **optionValues)
LOAD_WRAPPER(cuModuleLoadDataEx, real(module, image, numOptions, options, optionValues), module,
             cuModuleUnload)
FLEXAI_ALIAS(cuModuleLoadDataEx);

CUresult fx_cuModuleLoadFatBinary(CUmodule *module, const void *fatCubin)
LOAD_WRAPPER(cuModuleLoadFatBinary, real(module, fatCubin), module, cuModuleUnload)
FLEXAI_ALIAS(cuModuleLoadFatBinary);

CUresult fx_cuLibraryLoadData(CUlibrary *library, const void *code, int *jitOptions,
                              void **jitOptionsValues, unsigned int numJitOptions,
                              int *libraryOptions, void **libraryOptionValues,
                              unsigned int numLibraryOptions)
LOAD_WRAPPER(cuLibraryLoadData,
             real(library, code, jitOptions, jitOptionsValues, numJitOptions, libraryOptions,
                  libraryOptionValues, numLibraryOptions),
             library, cuLibraryUnload)
FLEXAI_ALIAS(cuLibraryLoadData);

CUresult fx_cuLibraryLoadFromFile(CUlibrary *library, const char *fileName, int *jitOptions,
                                  void **jitOptionsValues, unsigned int numJitOptions,
                                  int *libraryOptions, void **libraryOptionValues,
                                  unsigned int numLibraryOptions)
LOAD_WRAPPER(cuLibraryLoadFromFile,
             real(library, fileName, jitOptions, jitOptionsValues, numJitOptions, libraryOptions,
                  libraryOptionValues, numLibraryOptions),
             library, cuLibraryUnload)
FLEXAI_ALIAS(cuLibraryLoadFromFile);

/* After an unload: what it gave back is uncharged at once, not at the next period. */
#define UNLOAD_WRAPPER(name, arg)                                                            \
    {                                                                                        \
        __typeof__(&name) real = REAL(name);                                                 \
        if (!real)                                                                           \
            return CUDA_ERROR_NOT_INITIALIZED;                                               \
        CUresult rc = real(arg);                                                             \
        if (rc == CUDA_SUCCESS && flexai_enforcing())                                        \
            flexai_overhead_refresh(1);                                                      \
        return rc;                                                                           \
    }

CUresult fx_cuModuleUnload(CUmodule hmod)
UNLOAD_WRAPPER(cuModuleUnload, hmod)
FLEXAI_ALIAS(cuModuleUnload);

CUresult fx_cuLibraryUnload(CUlibrary library)
UNLOAD_WRAPPER(cuLibraryUnload, library)
FLEXAI_ALIAS(cuLibraryUnload);

/* ---- cuCtxSetLimit: a bigger stack, heap or printf FIFO is context memory ------------- */

CUresult fx_cuCtxSetLimit(int limit, size_t value)
{
    __typeof__(&cuCtxSetLimit) real = REAL(cuCtxSetLimit);
    if (!real)
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!flexai_enforcing())
        return real(limit, value);
    CUresult (*get)(size_t *, int) =
        (CUresult(*)(size_t *, int))flexai_driver_sym(FLEXAI_LIB_CUDA, "cuCtxGetLimit");
    size_t before = 0;
    int can_undo = get != NULL && get(&before, limit) == CUDA_SUCCESS;
    CUresult rc = real(limit, value);
    if (rc != CUDA_SUCCESS)
        return rc;
    flexai_overhead_refresh(1);
    if (can_undo && over_limit() && real(limit, before) == CUDA_SUCCESS) {
        flexai_overhead_refresh(1);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    return rc;
}
FLEXAI_ALIAS(cuCtxSetLimit);
