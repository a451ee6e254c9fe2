/* CUDA's launch entry points: each passes the compute gate (core/gate.c), calls the driver,
 * and counts the launch. This file gives the gate CUDA's device timer (events around launch
 * batches) and capture queries, and tells it when a stream capture begins or ends, so the
 * gate itself stays vendor-neutral.
 */
#include "flexai.h"

typedef struct CUevent_st *CUevent;
#define CUDA_ERROR_NOT_READY 600
#define CUDA_ERROR_NOT_PERMITTED 800
#define FX_STREAM_PER_THREAD ((CUstream)0x2)

/* The real driver's event functions, resolved once by cu_bind (under the gate's once). */
static struct {
    CUresult (*create)(CUevent *, unsigned int);
    CUresult (*record)(CUevent, CUstream);
    CUresult (*query)(CUevent);
    CUresult (*elapsed)(float *, CUevent, CUevent);
    CUresult (*destroy)(CUevent);
    CUresult (*ctx_current)(CUcontext *);
    CUresult (*is_capturing)(CUstream, int *);  /* optional: drivers before CUDA 10 lack them */
    CUresult (*exchange_mode)(int *);
} CU;

static int cu_bind(void)
{
    *(void **)&CU.create = flexai_driver_sym(FLEXAI_LIB_CUDA, "cuEventCreate");
    *(void **)&CU.record = flexai_driver_sym(FLEXAI_LIB_CUDA, "cuEventRecord");
    *(void **)&CU.query = flexai_driver_sym(FLEXAI_LIB_CUDA, "cuEventQuery");
    *(void **)&CU.elapsed = flexai_driver_sym(FLEXAI_LIB_CUDA, "cuEventElapsedTime");
    *(void **)&CU.destroy = flexai_driver_sym(FLEXAI_LIB_CUDA, "cuEventDestroy_v2");
    *(void **)&CU.ctx_current = flexai_driver_sym(FLEXAI_LIB_CUDA, "cuCtxGetCurrent");
    *(void **)&CU.is_capturing = flexai_driver_sym(FLEXAI_LIB_CUDA, "cuStreamIsCapturing");
    *(void **)&CU.exchange_mode = flexai_driver_sym(FLEXAI_LIB_CUDA, "cuThreadExchangeStreamCaptureMode");
    return CU.create && CU.record && CU.query && CU.elapsed && CU.destroy && CU.ctx_current ? 0 : -1;
}

static int cu_thread_ready(void)
{
    CUcontext ctx = NULL;
    return CU.ctx_current(&ctx) == CUDA_SUCCESS && ctx != NULL;
}

static int cu_create(void **ev)
{
    return CU.create((CUevent *)ev, 0) == CUDA_SUCCESS ? 0 : -1;
}

static int cu_record(void *ev, void *stream)
{
    return CU.record(ev, stream) == CUDA_SUCCESS ? 0 : -1;
}

static int cu_query(void *ev)
{
    CUresult rc = CU.query(ev);
    return rc == CUDA_SUCCESS ? 1 : rc == CUDA_ERROR_NOT_READY ? 0 : -1;
}

static int cu_elapsed(float *ms, void *start, void *end)
{
    return CU.elapsed(ms, start, end) == CUDA_SUCCESS ? 0 : -1;
}

static void cu_destroy(void *ev)
{
    CU.destroy(ev);
}


/* ---- stream capture (the gate's capture_open) ---- */
#define FX_CAPTURE_STATUS_NONE 0
#define FX_CAPTURE_MODE_RELAXED 2
#define FX_ERROR_STREAM_CAPTURE_INVALIDATED 901

static int cu_capturing(void *stream)
{
    if (!CU.is_capturing)
        return 0; /* a driver without capture */
    int st = FX_CAPTURE_STATUS_NONE;
    /* an error (the legacy stream beside a capture: CUDA_ERROR_STREAM_CAPTURE_IMPLICIT) counts
     * as capturing: nothing of ours may go there */
    return CU.is_capturing(stream, &st) != CUDA_SUCCESS || st != FX_CAPTURE_STATUS_NONE;
}

static int cu_relax(int *old)
{
    if (!CU.exchange_mode)
        return 0;
    *old = FX_CAPTURE_MODE_RELAXED;
    return CU.exchange_mode(old) == CUDA_SUCCESS;
}

static void cu_unrelax(int old)
{
    CU.exchange_mode(&old);
}

static const struct flexai_device_timer CUDA_TIMER = {
    "CUDA", cu_bind, cu_thread_ready, cu_create, cu_record, cu_query, cu_elapsed, cu_destroy,
    cu_capturing, cu_relax, cu_unrelax,
};

/* Before a capture begins on `stream` (the gate closes this thread's open batch there). */
static void capture_begins(CUstream stream, int ptsz)
{
    if (ptsz && stream == NULL)
        stream = FX_STREAM_PER_THREAD;
    flexai_capture_begins(&CUDA_TIMER, stream);
}

#define CAPTURE_BEGIN_WRAPPER(name, stream, ptsz, call)                                      \
    {                                                                                        \
        __typeof__(&name) real = REAL(name);                                                 \
        if (unlikely(!real))                                                                 \
            return CUDA_ERROR_NOT_INITIALIZED;                                               \
        capture_begins(stream, ptsz);                                                        \
        CUresult rc = call;                                                                  \
        if (rc != CUDA_SUCCESS)                                                              \
            flexai_capture_ends(); /* it never began */                                      \
        return rc;                                                                           \
    }

#define CAPTURE_END_WRAPPER(name, call)                                                      \
    {                                                                                        \
        __typeof__(&name) real = REAL(name);                                                 \
        if (unlikely(!real))                                                                 \
            return CUDA_ERROR_NOT_INITIALIZED;                                               \
        CUresult rc = call;                                                                  \
        /* ended, with a graph or invalidated; other errors leave the capture open */        \
        if (rc == CUDA_SUCCESS || rc == FX_ERROR_STREAM_CAPTURE_INVALIDATED)                 \
            flexai_capture_ends();                                                           \
        return rc;                                                                           \
    }

CUresult fx_cuStreamBeginCapture_v2(CUstream hStream, CUstreamCaptureMode mode)
CAPTURE_BEGIN_WRAPPER(cuStreamBeginCapture_v2, hStream, 0, real(hStream, mode))
FLEXAI_ALIAS(cuStreamBeginCapture_v2);

CUresult fx_cuStreamBeginCapture_v2_ptsz(CUstream hStream, CUstreamCaptureMode mode)
CAPTURE_BEGIN_WRAPPER(cuStreamBeginCapture_v2_ptsz, hStream, 1, real(hStream, mode))
FLEXAI_ALIAS(cuStreamBeginCapture_v2_ptsz);

CUresult fx_cuStreamBeginCaptureToGraph(CUstream hStream, CUgraph hGraph, const CUgraphNode *deps,
                                        const CUgraphEdgeData *edges, size_t ndeps,
                                        CUstreamCaptureMode mode)
CAPTURE_BEGIN_WRAPPER(cuStreamBeginCaptureToGraph, hStream, 0, real(hStream, hGraph, deps, edges, ndeps, mode))
FLEXAI_ALIAS(cuStreamBeginCaptureToGraph);

CUresult fx_cuStreamBeginCaptureToGraph_ptsz(CUstream hStream, CUgraph hGraph,
                                             const CUgraphNode *deps, const CUgraphEdgeData *edges,
                                             size_t ndeps, CUstreamCaptureMode mode)
CAPTURE_BEGIN_WRAPPER(cuStreamBeginCaptureToGraph_ptsz, hStream, 1,
                      real(hStream, hGraph, deps, edges, ndeps, mode))
FLEXAI_ALIAS(cuStreamBeginCaptureToGraph_ptsz);

CUresult fx_cuStreamEndCapture(CUstream hStream, CUgraph *phGraph)
CAPTURE_END_WRAPPER(cuStreamEndCapture, real(hStream, phGraph))
FLEXAI_ALIAS(cuStreamEndCapture);

CUresult fx_cuStreamEndCapture_ptsz(CUstream hStream, CUgraph *phGraph)
CAPTURE_END_WRAPPER(cuStreamEndCapture_ptsz, real(hStream, phGraph))
FLEXAI_ALIAS(cuStreamEndCapture_ptsz);

/* The region when this launch is the slice's, NULL when passing through. */
static inline struct flexai_region *launch_begin(CUstream stream, int ptsz)
{
    struct flexai_region *r = __atomic_load_n(&flexai_P.region, __ATOMIC_ACQUIRE);
    if (unlikely(r == NULL)) {
        if (!flexai_enforcing() || (r = flexai_attach_slow()) == NULL)
            return NULL;
    }
    if (ptsz && stream == NULL)
        stream = FX_STREAM_PER_THREAD;
    flexai_compute_before(&CUDA_TIMER, r, stream);
    return r;
}

static inline void launch_end(struct flexai_region *r, CUresult rc)
{
    struct flexai_proc *me = flexai_P.me;
    if (r != NULL) {
        flexai_compute_after(&CUDA_TIMER, rc == CUDA_SUCCESS);
        if (rc == CUDA_SUCCESS && me != NULL)
            __atomic_fetch_add(&me->launches, 1, __ATOMIC_RELAXED);
    }
}

#define LAUNCH_WRAPPER(name, stream, ptsz, call)                                             \
    {                                                                                        \
        __typeof__(&name) real = REAL(name);                                                 \
        if (unlikely(!real))                                                                 \
            return CUDA_ERROR_NOT_INITIALIZED;                                               \
        struct flexai_region *r = launch_begin(stream, ptsz);                                \
        if (unlikely(r == NULL) && flexai_closed())                                          \
            return CUDA_ERROR_NOT_PERMITTED; /* the slice's inputs are damaged: fail closed */ \
        if (unlikely(!flexai_ctx_ok) && r != NULL) {                                         \
            CUresult ctx_rc = flexai_ctx_first_use();                                        \
            if (ctx_rc != CUDA_SUCCESS) {                                                    \
                launch_end(r, ctx_rc);                                                       \
                return ctx_rc;                                                               \
            }                                                                                \
        }                                                                                    \
        CUresult rc = call;                                                                  \
        launch_end(r, rc);                                                                   \
        return rc;                                                                           \
    }

#define KERNEL_ARGS f, gridDimX, gridDimY, gridDimZ, blockDimX, blockDimY, blockDimZ, sharedMemBytes, hStream, kernelParams

CUresult fx_cuLaunchKernel(FLEXAI_LAUNCH_ARGS, void **extra)
LAUNCH_WRAPPER(cuLaunchKernel, hStream, 0, real(KERNEL_ARGS, extra))
FLEXAI_ALIAS(cuLaunchKernel);

CUresult fx_cuLaunchKernel_ptsz(FLEXAI_LAUNCH_ARGS, void **extra)
LAUNCH_WRAPPER(cuLaunchKernel_ptsz, hStream, 1, real(KERNEL_ARGS, extra))
FLEXAI_ALIAS(cuLaunchKernel_ptsz);

CUresult fx_cuLaunchCooperativeKernel(FLEXAI_LAUNCH_ARGS)
LAUNCH_WRAPPER(cuLaunchCooperativeKernel, hStream, 0, real(KERNEL_ARGS))
FLEXAI_ALIAS(cuLaunchCooperativeKernel);

CUresult fx_cuLaunchCooperativeKernel_ptsz(FLEXAI_LAUNCH_ARGS)
LAUNCH_WRAPPER(cuLaunchCooperativeKernel_ptsz, hStream, 1, real(KERNEL_ARGS))
FLEXAI_ALIAS(cuLaunchCooperativeKernel_ptsz);

CUresult fx_cuLaunchKernelEx(const CUlaunchConfig *config, CUfunction f, void **kernelParams,
                             void **extra)
LAUNCH_WRAPPER(cuLaunchKernelEx, config ? config->hStream : NULL, 0,
               real(config, f, kernelParams, extra))
FLEXAI_ALIAS(cuLaunchKernelEx);

CUresult fx_cuLaunchKernelEx_ptsz(const CUlaunchConfig *config, CUfunction f,
                                  void **kernelParams, void **extra)
LAUNCH_WRAPPER(cuLaunchKernelEx_ptsz, config ? config->hStream : NULL, 1,
               real(config, f, kernelParams, extra))
FLEXAI_ALIAS(cuLaunchKernelEx_ptsz);

/* A graph whose memory nodes do not fit in the slice is refused before it runs (graphmem.c). */
#define GRAPH_MEMORY_FIRST(exec, stream, ptsz)                                               \
    if (unlikely(__atomic_load_n(&flexai_graphmem_seen, __ATOMIC_RELAXED))) {                \
        CUresult grc = flexai_graphmem_before_launch(exec, stream, ptsz);                    \
        if (grc != CUDA_SUCCESS)                                                             \
            return grc;                                                                      \
    }

static CUresult graph_launch(CUgraphExec hGraphExec, CUstream hStream)
LAUNCH_WRAPPER(cuGraphLaunch, hStream, 0, real(hGraphExec, hStream))

CUresult fx_cuGraphLaunch(CUgraphExec hGraphExec, CUstream hStream)
{
    GRAPH_MEMORY_FIRST(hGraphExec, hStream, 0)
    return graph_launch(hGraphExec, hStream);
}
FLEXAI_ALIAS(cuGraphLaunch);

static CUresult graph_launch_ptsz(CUgraphExec hGraphExec, CUstream hStream)
LAUNCH_WRAPPER(cuGraphLaunch_ptsz, hStream, 1, real(hGraphExec, hStream))

CUresult fx_cuGraphLaunch_ptsz(CUgraphExec hGraphExec, CUstream hStream)
{
    GRAPH_MEMORY_FIRST(hGraphExec, hStream, 1)
    return graph_launch_ptsz(hGraphExec, hStream);
}
FLEXAI_ALIAS(cuGraphLaunch_ptsz);
