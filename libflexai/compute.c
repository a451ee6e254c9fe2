/* Compute: the launch entry points and the gate every launch passes.
 *
 * Each launch wrapper does three things: pass the gate, call the driver, count the launch.
 * The fast path is a few loads and one relaxed add to this process's own slot (a cache
 * line no other process writes): no lock, no system call.
 *
 * flexai_compute_gate() is the seam for the compute controller (issue 6): today it only
 * holds launches while the daemon has paused the slice; the controller will decide there
 * whether the slice may launch now (its share, mode, priority and measured device time
 * live in region->compute) and record device time for the launch.
 */
#include "flexai.h"

#include <time.h>

void flexai_compute_gate_slow(struct flexai_region *r, CUstream stream)
{
    (void)stream;
    /* Paused by the daemon: wait until it resumes the slice (checked every millisecond). */
    while (__atomic_load_n(&r->compute.paused, __ATOMIC_ACQUIRE)) {
        struct timespec ts = {0, 1000000L};
        nanosleep(&ts, NULL);
    }
}

static inline void flexai_compute_gate(struct flexai_region *r, CUstream stream)
{
    if (unlikely(__atomic_load_n(&r->compute.paused, __ATOMIC_RELAXED)))
        flexai_compute_gate_slow(r, stream);
}

/* The region when this launch is the slice's, NULL when passing through. */
static inline struct flexai_region *launch_begin(CUstream stream)
{
    struct flexai_region *r = __atomic_load_n(&flexai_P.region, __ATOMIC_ACQUIRE);
    if (unlikely(r == NULL)) {
        if (!flexai_enforcing() || (r = flexai_attach_slow()) == NULL)
            return NULL;
    }
    flexai_compute_gate(r, stream);
    return r;
}

static inline void launch_end(struct flexai_region *r, CUresult rc)
{
    struct flexai_proc *me = flexai_P.me;
    if (r != NULL && rc == CUDA_SUCCESS && me != NULL)
        __atomic_fetch_add(&me->launches, 1, __ATOMIC_RELAXED);
}

#define LAUNCH_WRAPPER(name, stream, call)                                                   \
    {                                                                                        \
        __typeof__(&name) real = REAL(name);                                                 \
        if (unlikely(!real))                                                                 \
            return CUDA_ERROR_NOT_INITIALIZED;                                               \
        struct flexai_region *r = launch_begin(stream);                                      \
        CUresult rc = call;                                                                  \
        launch_end(r, rc);                                                                   \
        return rc;                                                                           \
    }

#define KERNEL_ARGS f, gridDimX, gridDimY, gridDimZ, blockDimX, blockDimY, blockDimZ, sharedMemBytes, hStream, kernelParams

CUresult fx_cuLaunchKernel(FLEXAI_LAUNCH_ARGS, void **extra)
LAUNCH_WRAPPER(cuLaunchKernel, hStream, real(KERNEL_ARGS, extra))
FLEXAI_ALIAS(cuLaunchKernel);

CUresult fx_cuLaunchKernel_ptsz(FLEXAI_LAUNCH_ARGS, void **extra)
LAUNCH_WRAPPER(cuLaunchKernel_ptsz, hStream, real(KERNEL_ARGS, extra))
FLEXAI_ALIAS(cuLaunchKernel_ptsz);

CUresult fx_cuLaunchCooperativeKernel(FLEXAI_LAUNCH_ARGS)
LAUNCH_WRAPPER(cuLaunchCooperativeKernel, hStream, real(KERNEL_ARGS))
FLEXAI_ALIAS(cuLaunchCooperativeKernel);

CUresult fx_cuLaunchCooperativeKernel_ptsz(FLEXAI_LAUNCH_ARGS)
LAUNCH_WRAPPER(cuLaunchCooperativeKernel_ptsz, hStream, real(KERNEL_ARGS))
FLEXAI_ALIAS(cuLaunchCooperativeKernel_ptsz);

CUresult fx_cuLaunchKernelEx(const CUlaunchConfig *config, CUfunction f, void **kernelParams,
                             void **extra)
LAUNCH_WRAPPER(cuLaunchKernelEx, config ? config->hStream : NULL,
               real(config, f, kernelParams, extra))
FLEXAI_ALIAS(cuLaunchKernelEx);

CUresult fx_cuLaunchKernelEx_ptsz(const CUlaunchConfig *config, CUfunction f,
                                  void **kernelParams, void **extra)
LAUNCH_WRAPPER(cuLaunchKernelEx_ptsz, config ? config->hStream : NULL,
               real(config, f, kernelParams, extra))
FLEXAI_ALIAS(cuLaunchKernelEx_ptsz);

CUresult fx_cuGraphLaunch(CUgraphExec hGraphExec, CUstream hStream)
LAUNCH_WRAPPER(cuGraphLaunch, hStream, real(hGraphExec, hStream))
FLEXAI_ALIAS(cuGraphLaunch);

CUresult fx_cuGraphLaunch_ptsz(CUgraphExec hGraphExec, CUstream hStream)
LAUNCH_WRAPPER(cuGraphLaunch_ptsz, hStream, real(hGraphExec, hStream))
FLEXAI_ALIAS(cuGraphLaunch_ptsz);
