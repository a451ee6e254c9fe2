/* Simulated libcuda: modules, kernels, streams, events, graphs and the launch timeline.
 *
 * Timeline model (docs/simulator.md): every kernel has a simulated duration. Kernels of one
 * card run one after another in the order they are launched, across all processes: a launch
 * books [start, start + duration) with start = max(now, card busy_until, stream tail) by a
 * compare-and-swap on the card's busy_until in the shared state. A launch returns at once,
 * but blocks first while its stream has queue_depth launches outstanding or its work ends
 * more than queue_ahead_ns in the future. Synchronisation sleeps until the relevant end. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>

#include "simcuda.h"

/* ---------------------------------------------------------------- streams */

struct CUstream_st *sim_stream_new(struct CUctx_st *ctx, unsigned flags, int priority, int kind)
{
    struct CUstream_st *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->magic = M_STREAM;
    s->ctx = ctx;
    s->flags = flags;
    s->priority = priority;
    s->kind = kind;
    s->id = atomic_fetch_add(&sim_proc.next_id, 1) + 1;
    pthread_mutex_init(&s->lock, NULL);
    pthread_mutex_lock(&ctx->lock);
    s->next = ctx->streams;
    ctx->streams = s;
    pthread_mutex_unlock(&ctx->lock);
    return s;
}

#define PTDS_SLOTS 8
static __thread struct { struct CUctx_st *ctx; unsigned long long ctx_id; struct CUstream_st *s; }
    ptds_streams[PTDS_SLOTS];

static struct CUstream_st *per_thread_stream(struct CUctx_st *c)
{
    for (int i = 0; i < PTDS_SLOTS; i++)
        if (ptds_streams[i].ctx == c && ptds_streams[i].ctx_id == c->id && ptds_streams[i].s)
            return ptds_streams[i].s;
    struct CUstream_st *s = sim_stream_new(c, 0, 0, 2);
    if (!s)
        return NULL;
    int victim = 0;
    for (int i = 0; i < PTDS_SLOTS; i++)
        if (!ptds_streams[i].s || !sim_ctx_ok(ptds_streams[i].ctx) ||
            ptds_streams[i].ctx_id != ptds_streams[i].ctx->id) {
            victim = i;
            break;
        }
    ptds_streams[victim].ctx = c;
    ptds_streams[victim].ctx_id = c->id;
    ptds_streams[victim].s = s;
    return s;
}

CUresult sim_resolve_stream(CUstream hs, int ptds, struct CUstream_st **out)
{
    struct CUctx_st *c;
    CUresult rc;
    if (hs == NULL || hs == CU_STREAM_LEGACY || hs == CU_STREAM_PER_THREAD) {
        rc = sim_current_ctx(&c);
        if (rc)
            return rc;
        struct CUstream_st *s;
        if (hs == CU_STREAM_PER_THREAD || (hs == NULL && ptds))
            s = per_thread_stream(c);
        else
            s = c->legacy;
        if (!s)
            return CUDA_ERROR_OUT_OF_MEMORY;
        *out = s;
        return CUDA_SUCCESS;
    }
    rc = sim_check_init();
    if (rc)
        return rc;
    if (hs->magic != M_STREAM)
        return CUDA_ERROR_INVALID_HANDLE;
    if (!sim_ctx_ok(hs->ctx))
        return CUDA_ERROR_CONTEXT_IS_DESTROYED;
    *out = hs;
    return CUDA_SUCCESS;
}

static uint64_t max_u64(uint64_t a, uint64_t b) { return a > b ? a : b; }

/* The legacy default stream waits for (and is waited for by) every blocking stream. */
static uint64_t blocking_tail(struct CUctx_st *c)
{
    uint64_t t = 0;
    pthread_mutex_lock(&c->lock);
    for (struct CUstream_st *s = c->streams; s; s = s->next)
        if (!(s->flags & CU_STREAM_NON_BLOCKING) && s->kind != 2)
            t = max_u64(t, atomic_load(&s->tail));
    pthread_mutex_unlock(&c->lock);
    return t;
}

uint64_t sim_stream_tail(struct CUstream_st *s)
{
    if (s->kind == 1)
        return blocking_tail(s->ctx);
    return atomic_load(&s->tail);
}

uint64_t sim_ctx_tail(struct CUctx_st *c)
{
    uint64_t t = 0;
    pthread_mutex_lock(&c->lock);
    for (struct CUstream_st *s = c->streams; s; s = s->next)
        t = max_u64(t, atomic_load(&s->tail));
    pthread_mutex_unlock(&c->lock);
    return t;
}

void sim_sync_for_copy(struct CUstream_st *s)
{
    sim_wait_device(sim_stream_tail(s));
}

void sim_stream_book(struct CUstream_st *s, uint64_t dur)
{
    const struct sim_config *cfg = &sim_proc.h.cfg;
    uint64_t depth = cfg->queue_depth;
    pthread_mutex_lock(&s->lock);
    if (!s->ring)
        s->ring = calloc(depth, sizeof(uint64_t));
    uint64_t now = sim_now_ns();
    if (s->ring) {
        uint64_t oldest = s->ring[s->ring_pos % depth];
        if (oldest > now) {
            sim_sleep_until(oldest); /* queue_depth launches still outstanding */
            now = sim_now_ns();
        }
    }
    uint64_t tail = atomic_load(&s->tail);
    if (tail > now + cfg->queue_ahead_ns)
        sim_sleep_until(tail - cfg->queue_ahead_ns);
    uint64_t not_before = tail;
    if (s->kind == 1)
        not_before = max_u64(not_before, blocking_tail(s->ctx));
    else if (!(s->flags & CU_STREAM_NON_BLOCKING) && s->kind == 0)
        not_before = max_u64(not_before, atomic_load(&s->ctx->legacy->tail));
    uint64_t end = sim_timeline_book(&sim_proc.h, s->ctx->device, not_before, dur, NULL);
    atomic_store(&s->tail, end);
    if (s->ring)
        s->ring[s->ring_pos++ % depth] = end;
    pthread_mutex_unlock(&s->lock);
}

/* ---------------------------------------------------------------- capture rules
 *
 * The CUDA programming guide's rules for "potentially unsafe" calls (query/synchronize of
 * events, streams and contexts) while a stream capture is open: a thread whose capture mode
 * (cuThreadExchangeStreamCaptureMode, default global) is
 *   global:       prohibited while it has a capture of its own not begun in relaxed mode, or
 *                 any other thread has one begun in global mode;
 *   thread-local: prohibited while it has a capture of its own not begun in relaxed mode;
 *   relaxed:      never prohibited.
 * A prohibited call fails with CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED and invalidates the
 * capture sequences that prohibited it (cuStreamEndCapture then returns
 * CUDA_ERROR_STREAM_CAPTURE_INVALIDATED). */
#define CAP_MAX 64
static pthread_mutex_t cap_lock = PTHREAD_MUTEX_INITIALIZER;
static struct CUstream_st *cap_open[CAP_MAX];
static int cap_n;
static _Atomic int cap_strict;     /* open captures not begun in relaxed mode */
static __thread CUstreamCaptureMode thread_capture_mode; /* 0: global, the default */

CUresult sim_cuThreadExchangeStreamCaptureMode(CUstreamCaptureMode *mode)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!mode || (int)*mode < 0 || *mode > CU_STREAM_CAPTURE_MODE_RELAXED)
        return CUDA_ERROR_INVALID_VALUE;
    CUstreamCaptureMode old = thread_capture_mode;
    thread_capture_mode = *mode;
    *mode = old;
    return CUDA_SUCCESS;
}

CUresult sim_capture_unsafe(void)
{
    if (atomic_load(&cap_strict) == 0 || thread_capture_mode == CU_STREAM_CAPTURE_MODE_RELAXED)
        return CUDA_SUCCESS;
    int hit = 0;
    pthread_t me = pthread_self();
    pthread_mutex_lock(&cap_lock);
    for (int i = 0; i < cap_n; i++) {
        struct CUstream_st *c = cap_open[i];
        if (c->capture_mode == CU_STREAM_CAPTURE_MODE_RELAXED)
            continue;
        int mine = pthread_equal(c->capture_owner, me);
        if (mine || (c->capture_mode == CU_STREAM_CAPTURE_MODE_GLOBAL &&
                     thread_capture_mode == CU_STREAM_CAPTURE_MODE_GLOBAL)) {
            c->capture_invalid = 1;
            hit = 1;
        }
    }
    pthread_mutex_unlock(&cap_lock);
    return hit ? CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED : CUDA_SUCCESS;
}

static CUresult capture_register(struct CUstream_st *s)
{
    pthread_mutex_lock(&cap_lock);
    if (cap_n == CAP_MAX) {
        pthread_mutex_unlock(&cap_lock);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    cap_open[cap_n++] = s;
    if (s->capture_mode != CU_STREAM_CAPTURE_MODE_RELAXED)
        atomic_fetch_add(&cap_strict, 1);
    pthread_mutex_unlock(&cap_lock);
    return CUDA_SUCCESS;
}

static void capture_unregister(struct CUstream_st *s)
{
    pthread_mutex_lock(&cap_lock);
    for (int i = 0; i < cap_n; i++)
        if (cap_open[i] == s) {
            cap_open[i] = cap_open[--cap_n];
            if (s->capture_mode != CU_STREAM_CAPTURE_MODE_RELAXED)
                atomic_fetch_sub(&cap_strict, 1);
            break;
        }
    pthread_mutex_unlock(&cap_lock);
}

/* An operation not permitted on a capturing stream: fails, and invalidates the capture. */
static CUresult capture_illegal(struct CUstream_st *s)
{
    s->capture_invalid = 1;
    return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
}

CUresult sim_cuStreamCreateWithPriority(CUstream *phStream, unsigned int flags, int priority)
{
    struct CUctx_st *c;
    CUresult rc = sim_current_ctx(&c);
    if (rc)
        return rc;
    if (!phStream || (flags & ~(unsigned)CU_STREAM_NON_BLOCKING))
        return CUDA_ERROR_INVALID_VALUE;
    if (priority > 0) priority = 0;
    if (priority < -5) priority = -5;
    struct CUstream_st *s = sim_stream_new(c, flags, priority, 0);
    if (!s)
        return CUDA_ERROR_OUT_OF_MEMORY;
    *phStream = s;
    return CUDA_SUCCESS;
}

CUresult sim_cuStreamCreate(CUstream *phStream, unsigned int Flags)
{
    return sim_cuStreamCreateWithPriority(phStream, Flags, 0);
}

CUresult sim_cuStreamDestroy_v2(CUstream hStream)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!hStream || hStream == CU_STREAM_LEGACY || hStream == CU_STREAM_PER_THREAD ||
        hStream->magic != M_STREAM || hStream->kind != 0)
        return CUDA_ERROR_INVALID_HANDLE;
    struct CUctx_st *c = hStream->ctx;
    if (hStream->capturing)
        capture_unregister(hStream);
    /* work already booked stays on the card's timeline, as on a real GPU */
    pthread_mutex_lock(&c->lock);
    for (struct CUstream_st **pp = &c->streams; *pp; pp = &(*pp)->next)
        if (*pp == hStream) {
            *pp = hStream->next;
            break;
        }
    pthread_mutex_unlock(&c->lock);
    hStream->magic = M_DEAD;
    free(hStream->ring);
    free(hStream);
    return CUDA_SUCCESS;
}

static CUresult stream_sync(CUstream hs, int ptds)
{
    struct CUstream_st *s;
    CUresult rc = sim_resolve_stream(hs, ptds, &s);
    if (rc)
        return rc;
    if (s->capturing)
        return capture_illegal(s);
    if ((rc = sim_capture_unsafe()) != CUDA_SUCCESS)
        return rc;
    sim_wait_device(sim_stream_tail(s));
    sim_pools_release();
    return CUDA_SUCCESS;
}

CUresult sim_cuStreamSynchronize(CUstream hStream) { return stream_sync(hStream, 0); }
CUresult sim_cuStreamSynchronize_ptsz(CUstream hStream) { return stream_sync(hStream, 1); }

static CUresult stream_query(CUstream hs, int ptds)
{
    struct CUstream_st *s;
    CUresult rc = sim_resolve_stream(hs, ptds, &s);
    if (rc)
        return rc;
    if (s->capturing)
        return capture_illegal(s);
    if ((rc = sim_capture_unsafe()) != CUDA_SUCCESS)
        return rc;
    return sim_now_ns() >= sim_stream_tail(s) ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY;
}

CUresult sim_cuStreamQuery(CUstream hStream) { return stream_query(hStream, 0); }
CUresult sim_cuStreamQuery_ptsz(CUstream hStream) { return stream_query(hStream, 1); }

static CUresult stream_wait_event(CUstream hs, CUevent ev, unsigned flags, int ptds)
{
    struct CUstream_st *s;
    CUresult rc = sim_resolve_stream(hs, ptds, &s);
    if (rc)
        return rc;
    if (!ev || ev->magic != M_EVENT)
        return CUDA_ERROR_INVALID_HANDLE;
    if (flags & ~1u)
        return CUDA_ERROR_INVALID_VALUE;
    if (!ev->recorded || s->capturing)
        return CUDA_SUCCESS;
    pthread_mutex_lock(&s->lock);
    uint64_t t = atomic_load(&ev->t);
    if (t > atomic_load(&s->tail))
        atomic_store(&s->tail, t);
    pthread_mutex_unlock(&s->lock);
    return CUDA_SUCCESS;
}

CUresult sim_cuStreamWaitEvent(CUstream hStream, CUevent hEvent, unsigned int Flags)
{ return stream_wait_event(hStream, hEvent, Flags, 0); }
CUresult sim_cuStreamWaitEvent_ptsz(CUstream hStream, CUevent hEvent, unsigned int Flags)
{ return stream_wait_event(hStream, hEvent, Flags, 1); }

#define STREAM_OR_RETURN(hs, ptds, s) \
    struct CUstream_st *s; \
    do { CUresult r_ = sim_resolve_stream(hs, ptds, &s); if (r_) return r_; } while (0)

static CUresult get_priority(CUstream hs, int *priority, int ptds)
{
    STREAM_OR_RETURN(hs, ptds, s);
    if (!priority)
        return CUDA_ERROR_INVALID_VALUE;
    *priority = s->priority;
    return CUDA_SUCCESS;
}
CUresult sim_cuStreamGetPriority(CUstream h, int *p) { return get_priority(h, p, 0); }
CUresult sim_cuStreamGetPriority_ptsz(CUstream h, int *p) { return get_priority(h, p, 1); }

static CUresult get_flags(CUstream hs, unsigned *flags, int ptds)
{
    STREAM_OR_RETURN(hs, ptds, s);
    if (!flags)
        return CUDA_ERROR_INVALID_VALUE;
    *flags = s->flags;
    return CUDA_SUCCESS;
}
CUresult sim_cuStreamGetFlags(CUstream h, unsigned int *f) { return get_flags(h, f, 0); }
CUresult sim_cuStreamGetFlags_ptsz(CUstream h, unsigned int *f) { return get_flags(h, f, 1); }

static CUresult get_ctx(CUstream hs, CUcontext *pctx, int ptds)
{
    STREAM_OR_RETURN(hs, ptds, s);
    if (!pctx)
        return CUDA_ERROR_INVALID_VALUE;
    *pctx = s->ctx;
    return CUDA_SUCCESS;
}
CUresult sim_cuStreamGetCtx(CUstream h, CUcontext *c) { return get_ctx(h, c, 0); }
CUresult sim_cuStreamGetCtx_ptsz(CUstream h, CUcontext *c) { return get_ctx(h, c, 1); }

static CUresult get_id(CUstream hs, unsigned long long *id, int ptds)
{
    STREAM_OR_RETURN(hs, ptds, s);
    if (!id)
        return CUDA_ERROR_INVALID_VALUE;
    *id = s->id;
    return CUDA_SUCCESS;
}
CUresult sim_cuStreamGetId(CUstream h, unsigned long long *id) { return get_id(h, id, 0); }
CUresult sim_cuStreamGetId_ptsz(CUstream h, unsigned long long *id) { return get_id(h, id, 1); }

/* Host callbacks run on the calling thread once the stream's work is done. */
static CUresult add_callback(CUstream hs, CUstreamCallback cb, void *ud, unsigned flags, int ptds)
{
    STREAM_OR_RETURN(hs, ptds, s);
    if (!cb || flags)
        return CUDA_ERROR_INVALID_VALUE;
    sim_wait_device(sim_stream_tail(s));
    cb(hs, CUDA_SUCCESS, ud);
    return CUDA_SUCCESS;
}
CUresult sim_cuStreamAddCallback(CUstream h, CUstreamCallback cb, void *ud, unsigned int f)
{ return add_callback(h, cb, ud, f, 0); }
CUresult sim_cuStreamAddCallback_ptsz(CUstream h, CUstreamCallback cb, void *ud, unsigned int f)
{ return add_callback(h, cb, ud, f, 1); }

static CUresult host_func(CUstream hs, CUhostFn fn, void *ud, int ptds)
{
    STREAM_OR_RETURN(hs, ptds, s);
    if (!fn)
        return CUDA_ERROR_INVALID_VALUE;
    sim_wait_device(sim_stream_tail(s));
    fn(ud);
    return CUDA_SUCCESS;
}
CUresult sim_cuLaunchHostFunc(CUstream h, CUhostFn fn, void *ud) { return host_func(h, fn, ud, 0); }
CUresult sim_cuLaunchHostFunc_ptsz(CUstream h, CUhostFn fn, void *ud) { return host_func(h, fn, ud, 1); }

/* ---------------------------------------------------------------- events */

CUresult sim_cuEventCreate(CUevent *phEvent, unsigned int Flags)
{
    struct CUctx_st *c;
    CUresult rc = sim_current_ctx(&c);
    if (rc)
        return rc;
    if (!phEvent || (Flags & ~0x7u) ||
        ((Flags & CU_EVENT_INTERPROCESS) && !(Flags & CU_EVENT_DISABLE_TIMING)))
        return CUDA_ERROR_INVALID_VALUE;
    struct CUevent_st *e = calloc(1, sizeof *e);
    if (!e)
        return CUDA_ERROR_OUT_OF_MEMORY;
    e->magic = M_EVENT;
    e->flags = Flags;
    *phEvent = e;
    return CUDA_SUCCESS;
}

static CUresult event_record(CUevent ev, CUstream hs, unsigned flags, int ptds)
{
    STREAM_OR_RETURN(hs, ptds, s);
    if (!ev || ev->magic != M_EVENT)
        return CUDA_ERROR_INVALID_HANDLE;
    if (flags & ~1u)
        return CUDA_ERROR_INVALID_VALUE;
    if (s->capturing) {
        /* a record node in the captured graph: the event is now "last recorded in a capture",
         * which only the graph's launches complete (queries answer CUDA_ERROR_CAPTURED_EVENT) */
        if (s->capture_invalid)
            return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
        ev->captured = 1;
        return CUDA_SUCCESS;
    }
    atomic_store(&ev->t, max_u64(sim_now_ns(), sim_stream_tail(s)));
    ev->recorded = 1;
    ev->captured = 0;
    return CUDA_SUCCESS;
}

CUresult sim_cuEventRecord(CUevent e, CUstream h) { return event_record(e, h, 0, 0); }
CUresult sim_cuEventRecord_ptsz(CUevent e, CUstream h) { return event_record(e, h, 0, 1); }
CUresult sim_cuEventRecordWithFlags(CUevent e, CUstream h, unsigned int f) { return event_record(e, h, f, 0); }
CUresult sim_cuEventRecordWithFlags_ptsz(CUevent e, CUstream h, unsigned int f) { return event_record(e, h, f, 1); }

CUresult sim_cuEventQuery(CUevent ev)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!ev || ev->magic != M_EVENT)
        return CUDA_ERROR_INVALID_HANDLE;
    if ((rc = sim_capture_unsafe()) != CUDA_SUCCESS)
        return rc;
    if (ev->captured)
        return CUDA_ERROR_CAPTURED_EVENT;
    if (!ev->recorded)
        return CUDA_SUCCESS;
    return sim_now_ns() >= atomic_load(&ev->t) ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY;
}

CUresult sim_cuEventSynchronize(CUevent ev)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!ev || ev->magic != M_EVENT)
        return CUDA_ERROR_INVALID_HANDLE;
    if ((rc = sim_capture_unsafe()) != CUDA_SUCCESS)
        return rc;
    if (ev->captured)
        return CUDA_ERROR_CAPTURED_EVENT;
    if (ev->recorded)
        sim_wait_device(atomic_load(&ev->t));
    sim_pools_release();
    return CUDA_SUCCESS;
}

CUresult sim_cuEventDestroy_v2(CUevent ev)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!ev || ev->magic != M_EVENT)
        return CUDA_ERROR_INVALID_HANDLE;
    ev->magic = M_DEAD;
    free(ev);
    return CUDA_SUCCESS;
}

CUresult sim_cuEventElapsedTime_v2(float *pMilliseconds, CUevent a, CUevent b)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!pMilliseconds)
        return CUDA_ERROR_INVALID_VALUE;
    if (!a || !b || a->magic != M_EVENT || b->magic != M_EVENT)
        return CUDA_ERROR_INVALID_HANDLE;
    if (a->captured || b->captured)
        return CUDA_ERROR_CAPTURED_EVENT;
    if ((a->flags | b->flags) & CU_EVENT_DISABLE_TIMING || !a->recorded || !b->recorded)
        return CUDA_ERROR_INVALID_HANDLE;
    uint64_t now = sim_now_ns(), ta = atomic_load(&a->t), tb = atomic_load(&b->t);
    if (now < ta || now < tb)
        return CUDA_ERROR_NOT_READY;
    *pMilliseconds = (float)(((double)tb - (double)ta) / 1e6);
    return CUDA_SUCCESS;
}

CUresult sim_cuEventElapsedTime(float *pMilliseconds, CUevent a, CUevent b)
{
    return sim_cuEventElapsedTime_v2(pMilliseconds, a, b);
}

/* ---------------------------------------------------------------- modules and functions */

static struct CUmod_st *module_new(int from_library)
{
    struct CUmod_st *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->magic = M_MODULE;
    m->from_library = from_library;
    pthread_mutex_init(&m->lock, NULL);
    return m;
}

static void module_free(struct CUmod_st *m)
{
    struct CUfunc_st *f = m->funcs;
    while (f) {
        struct CUfunc_st *n = f->next;
        f->magic = M_DEAD;
        free(f);
        f = n;
    }
    if (m->bytes)
        sim_mem_release(&sim_proc.h, m->device, m->bytes);
    m->magic = M_DEAD;
    free(m);
}

/* A loaded module's code and data live in device memory of the current context's card:
 * module_bytes each, until unloaded (or the process ends). */
static CUresult module_charge(struct CUmod_st *m, int device)
{
    uint64_t b = sim_proc.h.cfg.module_bytes;
    if (b && sim_mem_reserve(&sim_proc.h, device, b) != 0)
        return CUDA_ERROR_OUT_OF_MEMORY;
    m->device = device;
    m->bytes = b;
    return CUDA_SUCCESS;
}

static CUresult module_function(struct CUmod_st *m, const char *name, struct CUfunc_st **out)
{
    if (!name || !*name || strlen(name) >= sizeof(((struct CUfunc_st *)0)->name))
        return CUDA_ERROR_NOT_FOUND;
    pthread_mutex_lock(&m->lock);
    struct CUfunc_st *f;
    for (f = m->funcs; f; f = f->next)
        if (!strcmp(f->name, name))
            break;
    if (!f) {
        f = calloc(1, sizeof *f);
        if (!f) {
            pthread_mutex_unlock(&m->lock);
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        f->magic = M_FUNC;
        snprintf(f->name, sizeof f->name, "%s", name);
        f->spin = !strncmp(name, "flexai_sim_spin", 15);
        f->next = m->funcs;
        m->funcs = f;
    }
    pthread_mutex_unlock(&m->lock);
    *out = f;
    return CUDA_SUCCESS;
}

static CUresult module_load(CUmodule *module, const void *image)
{
    struct CUctx_st *c;
    CUresult rc = sim_current_ctx(&c);
    if (rc)
        return rc;
    if (!module || !image)
        return CUDA_ERROR_INVALID_VALUE;
    struct CUmod_st *m = module_new(0);
    if (!m)
        return CUDA_ERROR_OUT_OF_MEMORY;
    if ((rc = module_charge(m, c->device)) != CUDA_SUCCESS) {
        module_free(m);
        return rc;
    }
    *module = m;
    return CUDA_SUCCESS;
}

CUresult sim_cuModuleLoad(CUmodule *module, const char *fname)
{
    struct CUctx_st *c;
    CUresult rc = sim_current_ctx(&c);
    if (rc)
        return rc;
    if (!module || !fname)
        return CUDA_ERROR_INVALID_VALUE;
    if (access(fname, R_OK) != 0)
        return CUDA_ERROR_FILE_NOT_FOUND;
    return module_load(module, fname);
}

CUresult sim_cuModuleLoadData(CUmodule *module, const void *image) { return module_load(module, image); }
CUresult sim_cuModuleLoadFatBinary(CUmodule *module, const void *fatCubin) { return module_load(module, fatCubin); }

CUresult sim_cuModuleLoadDataEx(CUmodule *module, const void *image, unsigned int numOptions,
                                CUjit_option *options, void **optionValues)
{
    if (numOptions && (!options || !optionValues))
        return CUDA_ERROR_INVALID_VALUE;
    return module_load(module, image);
}

CUresult sim_cuModuleUnload(CUmodule hmod)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!hmod || hmod->magic != M_MODULE || hmod->from_library)
        return CUDA_ERROR_INVALID_HANDLE;
    module_free(hmod);
    return CUDA_SUCCESS;
}

CUresult sim_cuModuleGetFunction(CUfunction *hfunc, CUmodule hmod, const char *name)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!hfunc || !name)
        return CUDA_ERROR_INVALID_VALUE;
    if (!hmod || hmod->magic != M_MODULE)
        return CUDA_ERROR_INVALID_HANDLE;
    return module_function(hmod, name, hfunc);
}

static CUresult library_load(CUlibrary *library, const void *code, unsigned numJit, CUjit_option *jo,
                             void **jv, unsigned numLib, CUlibraryOption *lo, void **lv)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!library || !code || (numJit && (!jo || !jv)) || (numLib && (!lo || !lv)))
        return CUDA_ERROR_INVALID_VALUE;
    struct CUlib_st *l = calloc(1, sizeof *l);
    if (!l)
        return CUDA_ERROR_OUT_OF_MEMORY;
    l->module = module_new(1);
    if (!l->module) {
        free(l);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    /* A library is context-independent; the real driver loads it into each context that
     * uses it. Modelled: charged on the card of the context current at load, if any. */
    struct CUctx_st *c;
    if (sim_current_ctx(&c) == CUDA_SUCCESS && (rc = module_charge(l->module, c->device)) != CUDA_SUCCESS) {
        module_free(l->module);
        free(l);
        return rc;
    }
    l->magic = M_LIB;
    *library = l;
    return CUDA_SUCCESS;
}

CUresult sim_cuLibraryLoadData(CUlibrary *library, const void *code, CUjit_option *jitOptions,
                               void **jitOptionsValues, unsigned int numJitOptions,
                               CUlibraryOption *libraryOptions, void **libraryOptionValues,
                               unsigned int numLibraryOptions)
{
    return library_load(library, code, numJitOptions, jitOptions, jitOptionsValues,
                        numLibraryOptions, libraryOptions, libraryOptionValues);
}

CUresult sim_cuLibraryLoadFromFile(CUlibrary *library, const char *fileName, CUjit_option *jitOptions,
                                   void **jitOptionsValues, unsigned int numJitOptions,
                                   CUlibraryOption *libraryOptions, void **libraryOptionValues,
                                   unsigned int numLibraryOptions)
{
    if (fileName && access(fileName, R_OK) != 0)
        return CUDA_ERROR_FILE_NOT_FOUND;
    return library_load(library, fileName, numJitOptions, jitOptions, jitOptionsValues,
                        numLibraryOptions, libraryOptions, libraryOptionValues);
}

CUresult sim_cuLibraryUnload(CUlibrary library)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!library || library->magic != M_LIB)
        return CUDA_ERROR_INVALID_HANDLE;
    module_free(library->module);
    library->magic = M_DEAD;
    free(library);
    return CUDA_SUCCESS;
}

CUresult sim_cuLibraryGetKernel(CUkernel *pKernel, CUlibrary library, const char *name)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!pKernel || !name)
        return CUDA_ERROR_INVALID_VALUE;
    if (!library || library->magic != M_LIB)
        return CUDA_ERROR_INVALID_HANDLE;
    struct CUfunc_st *f;
    rc = module_function(library->module, name, &f);
    if (!rc)
        *pKernel = (CUkernel)f; /* a kernel is launchable as a function, as with the real driver */
    return rc;
}

CUresult sim_cuLibraryGetModule(CUmodule *pMod, CUlibrary library)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!pMod)
        return CUDA_ERROR_INVALID_VALUE;
    if (!library || library->magic != M_LIB)
        return CUDA_ERROR_INVALID_HANDLE;
    *pMod = library->module;
    return CUDA_SUCCESS;
}

static struct CUfunc_st *func_of(const void *h)
{
    struct CUfunc_st *f = (struct CUfunc_st *)h;
    return (f && f->magic == M_FUNC) ? f : NULL;
}

CUresult sim_cuKernelGetFunction(CUfunction *pFunc, CUkernel kernel)
{
    struct CUctx_st *c;
    CUresult rc = sim_current_ctx(&c);
    if (rc)
        return rc;
    if (!pFunc)
        return CUDA_ERROR_INVALID_VALUE;
    struct CUfunc_st *f = func_of(kernel);
    if (!f)
        return CUDA_ERROR_INVALID_HANDLE;
    *pFunc = f;
    return CUDA_SUCCESS;
}

CUresult sim_cuFuncGetAttribute(int *pi, CUfunction_attribute attrib, CUfunction hfunc)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!pi || (int)attrib < 0 || (int)attrib > 20)
        return CUDA_ERROR_INVALID_VALUE;
    if (!func_of(hfunc))
        return CUDA_ERROR_INVALID_HANDLE;
    int cc = sim_proc.h.cfg.cc_major * 10 + sim_proc.h.cfg.cc_minor;
    static const int values[21] = {1024, 0, 0, 0, 32, 0, 0, 0, 49152, -1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    *pi = (attrib == 5 || attrib == 6) ? cc : values[attrib];
    return CUDA_SUCCESS;
}

CUresult sim_cuFuncSetAttribute(CUfunction hfunc, CUfunction_attribute attrib, int value)
{
    (void)value;
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if ((int)attrib < 0 || (int)attrib > 20)
        return CUDA_ERROR_INVALID_VALUE;
    return func_of(hfunc) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

CUresult sim_cuFuncSetCacheConfig(CUfunction hfunc, CUfunc_cache config)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if ((int)config < 0 || (int)config > 3)
        return CUDA_ERROR_INVALID_VALUE;
    return func_of(hfunc) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

CUresult sim_cuFuncGetName(const char **name, CUfunction hfunc)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!name)
        return CUDA_ERROR_INVALID_VALUE;
    struct CUfunc_st *f = func_of(hfunc);
    if (!f)
        return CUDA_ERROR_INVALID_HANDLE;
    *name = f->name;
    return CUDA_SUCCESS;
}

CUresult sim_cuOccupancyMaxActiveBlocksPerMultiprocessor(int *numBlocks, CUfunction func,
                                                         int blockSize, size_t dynamicSMemSize)
{
    (void)dynamicSMemSize;
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!numBlocks || blockSize <= 0 || blockSize > 1024)
        return CUDA_ERROR_INVALID_VALUE;
    if (!func_of(func))
        return CUDA_ERROR_INVALID_HANDLE;
    int n = 2048 / blockSize;
    *numBlocks = n > 32 ? 32 : n;
    return CUDA_SUCCESS;
}

/* ---------------------------------------------------------------- kernel launches */

/* Duration model: waves = ceil(blocks / sm_count); per-wave cost = block_ns, or for a kernel
 * whose name starts with "flexai_sim_spin" the first kernel parameter (a 64-bit unsigned
 * number of nanoseconds); duration = max(launch_ns, waves * cost), at most 10 s. */
static uint64_t kernel_ns(const struct CUfunc_st *f, uint64_t blocks, void **params, void **extra)
{
    const struct sim_config *cfg = &sim_proc.h.cfg;
    uint64_t per = cfg->block_ns;
    if (f->spin) {
        uint64_t v = 0;
        if (params && params[0]) {
            memcpy(&v, params[0], sizeof v);
        } else if (extra) {
            for (int i = 0; i < 16 && extra[i] != CU_LAUNCH_PARAM_END; i += 2)
                if (extra[i] == CU_LAUNCH_PARAM_BUFFER_POINTER && extra[i + 1]) {
                    memcpy(&v, extra[i + 1], sizeof v);
                    break;
                }
        }
        per = v;
    }
    uint64_t sm = (uint64_t)cfg->sm_count;
    uint64_t waves = (blocks + sm - 1) / sm;
    uint64_t dur = (per && waves > SIM_MAX_KERNEL_NS / per) ? SIM_MAX_KERNEL_NS : waves * per;
    if (dur > SIM_MAX_KERNEL_NS)
        dur = SIM_MAX_KERNEL_NS;
    return dur < cfg->launch_ns ? cfg->launch_ns : dur;
}

static CUresult graph_append(struct CUgraph_st *g, struct CUfunc_st *f, uint64_t blocks, uint64_t dur,
                             struct sim_knode **out)
{
    if (g->n == g->cap) {
        size_t cap = g->cap ? g->cap * 2 : 16;
        struct sim_knode **n = realloc(g->nodes, cap * sizeof *n);
        if (!n)
            return CUDA_ERROR_OUT_OF_MEMORY;
        g->nodes = n;
        g->cap = cap;
    }
    struct sim_knode *k = calloc(1, sizeof *k);
    if (!k)
        return CUDA_ERROR_OUT_OF_MEMORY;
    k->magic = M_NODE;
    k->func = f;
    k->blocks = blocks > 0xffffffffu ? 0xffffffffu : (unsigned)blocks;
    k->dur = dur;
    g->nodes[g->n++] = k;
    if (out)
        *out = k;
    return CUDA_SUCCESS;
}

static CUresult launch(CUfunction hf, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                       unsigned by, unsigned bz, unsigned shm, CUstream hs, void **params,
                       void **extra, int ptds)
{
    STREAM_OR_RETURN(hs, ptds, s);
    struct CUfunc_st *f = func_of(hf);
    if (!f)
        return CUDA_ERROR_INVALID_HANDLE;
    if (!gx || !gy || !gz || !bx || !by || !bz || gy > 65535 || gz > 65535 || bx > 1024 ||
        by > 1024 || bz > 64 || (uint64_t)bx * by * bz > 1024)
        return CUDA_ERROR_INVALID_VALUE;
    if (shm > 232448)
        return CUDA_ERROR_INVALID_VALUE;
    if (params && extra)
        return CUDA_ERROR_INVALID_VALUE;
    uint64_t blocks = (uint64_t)gx * gy * gz;
    uint64_t dur = kernel_ns(f, blocks, params, extra);
    if (s->capturing && s->capture_invalid)
        return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
    if (s->capturing)
        return graph_append(s->capture_graph, f, blocks, dur, NULL);
    sim_stream_book(s, dur);
    return CUDA_SUCCESS;
}

CUresult sim_cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                            unsigned int bx, unsigned int by, unsigned int bz, unsigned int shm,
                            CUstream hs, void **params, void **extra)
{ return launch(f, gx, gy, gz, bx, by, bz, shm, hs, params, extra, 0); }

CUresult sim_cuLaunchKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                                 unsigned int bx, unsigned int by, unsigned int bz, unsigned int shm,
                                 CUstream hs, void **params, void **extra)
{ return launch(f, gx, gy, gz, bx, by, bz, shm, hs, params, extra, 1); }

CUresult sim_cuLaunchCooperativeKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                                       unsigned int bx, unsigned int by, unsigned int bz,
                                       unsigned int shm, CUstream hs, void **params)
{ return launch(f, gx, gy, gz, bx, by, bz, shm, hs, params, NULL, 0); }

CUresult sim_cuLaunchCooperativeKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy,
                                            unsigned int gz, unsigned int bx, unsigned int by,
                                            unsigned int bz, unsigned int shm, CUstream hs,
                                            void **params)
{ return launch(f, gx, gy, gz, bx, by, bz, shm, hs, params, NULL, 1); }

static CUresult launch_ex(const CUlaunchConfig *c, CUfunction f, void **params, void **extra, int ptds)
{
    if (!c || (c->numAttrs && !c->attrs))
        return CUDA_ERROR_INVALID_VALUE;
    return launch(f, c->gridDimX, c->gridDimY, c->gridDimZ, c->blockDimX, c->blockDimY,
                  c->blockDimZ, c->sharedMemBytes, c->hStream, params, extra, ptds);
}

CUresult sim_cuLaunchKernelEx(const CUlaunchConfig *config, CUfunction f, void **kernelParams, void **extra)
{ return launch_ex(config, f, kernelParams, extra, 0); }
CUresult sim_cuLaunchKernelEx_ptsz(const CUlaunchConfig *config, CUfunction f, void **kernelParams, void **extra)
{ return launch_ex(config, f, kernelParams, extra, 1); }

/* ---------------------------------------------------------------- graphs */

static struct CUgraph_st *graph_new(void)
{
    struct CUgraph_st *g = calloc(1, sizeof *g);
    if (g)
        g->magic = M_GRAPH;
    return g;
}

static CUresult begin_capture(CUstream hs, CUstreamCaptureMode mode, int ptds)
{
    STREAM_OR_RETURN(hs, ptds, s);
    if (s->kind == 1)
        return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    if ((int)mode < 0 || mode > CU_STREAM_CAPTURE_MODE_RELAXED)
        return CUDA_ERROR_INVALID_VALUE;
    if (s->capturing)
        return CUDA_ERROR_ILLEGAL_STATE;
    struct CUgraph_st *g = graph_new();
    if (!g)
        return CUDA_ERROR_OUT_OF_MEMORY;
    s->capture_graph = g;
    s->capture_mode = mode;
    s->capture_id = atomic_fetch_add(&sim_proc.next_id, 1) + 1;
    s->capture_invalid = 0;
    s->capture_owner = pthread_self();
    if (capture_register(s) != CUDA_SUCCESS) {
        free(g);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    s->capturing = 1;
    return CUDA_SUCCESS;
}

CUresult sim_cuStreamBeginCapture_v2(CUstream h, CUstreamCaptureMode m) { return begin_capture(h, m, 0); }
CUresult sim_cuStreamBeginCapture_v2_ptsz(CUstream h, CUstreamCaptureMode m) { return begin_capture(h, m, 1); }

static CUresult end_capture(CUstream hs, CUgraph *phGraph, int ptds)
{
    STREAM_OR_RETURN(hs, ptds, s);
    if (!phGraph)
        return CUDA_ERROR_INVALID_VALUE;
    if (!s->capturing)
        return CUDA_ERROR_ILLEGAL_STATE;
    if (s->capture_mode != CU_STREAM_CAPTURE_MODE_RELAXED &&
        !pthread_equal(s->capture_owner, pthread_self()))
        return CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD;
    capture_unregister(s);
    s->capturing = 0;
    if (s->capture_invalid) {
        /* the capture sequence ends; its graph is discarded */
        sim_cuGraphDestroy(s->capture_graph);
        s->capture_graph = NULL;
        s->capture_invalid = 0;
        *phGraph = NULL;
        return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
    }
    *phGraph = s->capture_graph;
    s->capture_graph = NULL;
    return CUDA_SUCCESS;
}

CUresult sim_cuStreamEndCapture(CUstream h, CUgraph *g) { return end_capture(h, g, 0); }
CUresult sim_cuStreamEndCapture_ptsz(CUstream h, CUgraph *g) { return end_capture(h, g, 1); }

static CUresult is_capturing(CUstream hs, CUstreamCaptureStatus *st, int ptds)
{
    STREAM_OR_RETURN(hs, ptds, s);
    if (!st)
        return CUDA_ERROR_INVALID_VALUE;
    *st = !s->capturing ? CU_STREAM_CAPTURE_STATUS_NONE
          : s->capture_invalid ? CU_STREAM_CAPTURE_STATUS_INVALIDATED : CU_STREAM_CAPTURE_STATUS_ACTIVE;
    return CUDA_SUCCESS;
}

CUresult sim_cuStreamIsCapturing(CUstream h, CUstreamCaptureStatus *st) { return is_capturing(h, st, 0); }
CUresult sim_cuStreamIsCapturing_ptsz(CUstream h, CUstreamCaptureStatus *st) { return is_capturing(h, st, 1); }

static CUresult capture_info(CUstream hs, CUstreamCaptureStatus *st, cuuint64_t *id, CUgraph *g,
                             const CUgraphNode **deps, const CUgraphEdgeData **edges, size_t *ndeps, int ptds)
{
    STREAM_OR_RETURN(hs, ptds, s);
    if (!st)
        return CUDA_ERROR_INVALID_VALUE;
    *st = !s->capturing ? CU_STREAM_CAPTURE_STATUS_NONE
          : s->capture_invalid ? CU_STREAM_CAPTURE_STATUS_INVALIDATED : CU_STREAM_CAPTURE_STATUS_ACTIVE;
    if (s->capturing) {
        if (id) *id = s->capture_id;
        if (g) *g = s->capture_graph;
        if (deps) *deps = NULL;
        if (edges) *edges = NULL;
        if (ndeps) *ndeps = 0;
    }
    return CUDA_SUCCESS;
}

CUresult sim_cuStreamGetCaptureInfo_v2(CUstream h, CUstreamCaptureStatus *st, cuuint64_t *id, CUgraph *g,
                                       const CUgraphNode **d, size_t *n)
{ return capture_info(h, st, id, g, d, NULL, n, 0); }
CUresult sim_cuStreamGetCaptureInfo_v2_ptsz(CUstream h, CUstreamCaptureStatus *st, cuuint64_t *id,
                                            CUgraph *g, const CUgraphNode **d, size_t *n)
{ return capture_info(h, st, id, g, d, NULL, n, 1); }
CUresult sim_cuStreamGetCaptureInfo_v3(CUstream h, CUstreamCaptureStatus *st, cuuint64_t *id, CUgraph *g,
                                       const CUgraphNode **d, const CUgraphEdgeData **e, size_t *n)
{ return capture_info(h, st, id, g, d, e, n, 0); }
CUresult sim_cuStreamGetCaptureInfo_v3_ptsz(CUstream h, CUstreamCaptureStatus *st, cuuint64_t *id,
                                            CUgraph *g, const CUgraphNode **d, const CUgraphEdgeData **e, size_t *n)
{ return capture_info(h, st, id, g, d, e, n, 1); }

/* ---------------------------------------------------------------- graph memory
 *
 * Allocation nodes (cuGraphAddMemAllocNode, or cuMemAllocAsync into a capturing stream) get
 * their address when added; their physical memory comes from the device's graph memory pool
 * when an executable graph is first uploaded or launched (the exec's footprint: all of its
 * allocation nodes, no reuse among them), and stays reserved in the pool after the exec is
 * destroyed, until cuDeviceGraphMemTrim gives back what no live exec uses. The pool's reserve
 * is charged on the card (cuMemGetInfo, NVML), like any allocation of the process. */
static pthread_mutex_t gmem_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t gmem_used[SIM_MAX_CARDS], gmem_reserved[SIM_MAX_CARDS];
static uint64_t gmem_used_high[SIM_MAX_CARDS], gmem_reserved_high[SIM_MAX_CARDS];

static CUresult graph_mem_node(struct CUgraph_st *g, int device, size_t size, CUdeviceptr *dptr,
                               struct sim_knode **node)
{
    if (!size || device < 0 || device >= SIM_MAX_CARDS)
        return CUDA_ERROR_INVALID_VALUE;
    if (g->mem_bytes && g->mem_device != device)
        return CUDA_ERROR_NOT_SUPPORTED; /* one device's pool per graph, in this simulator */
    uint64_t bytes = ((uint64_t)size + SIM_ALLOC_ALIGN - 1) / SIM_ALLOC_ALIGN * SIM_ALLOC_ALIGN;
    /* an address of its own (no memory behind it until the graph runs) */
    void *va = mmap(NULL, bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (va == MAP_FAILED)
        return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult rc = graph_append(g, NULL, 0, 0, node);
    if (rc) {
        munmap(va, bytes);
        return rc;
    }
    g->mem_bytes += bytes;
    g->mem_device = device;
    *dptr = (CUdeviceptr)(uintptr_t)va;
    return CUDA_SUCCESS;
}

CUresult sim_graph_capture_alloc(struct CUstream_st *s, int device, size_t size, CUdeviceptr *dptr)
{
    if (s->capture_invalid)
        return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
    return graph_mem_node(s->capture_graph, device, size, dptr, NULL);
}

int sim_graph_capture_free(struct CUstream_st *s, CUdeviceptr dptr)
{
    (void)dptr; /* a free node: the exec's footprint already counts the allocation */
    return graph_append(s->capture_graph, NULL, 0, 0, NULL) == CUDA_SUCCESS ? 0 : -1;
}

CUresult sim_cuGraphAddMemAllocNode(CUgraphNode *phGraphNode, CUgraph g, const CUgraphNode *deps,
                                    size_t ndeps, CUDA_MEM_ALLOC_NODE_PARAMS *p)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!phGraphNode || !g || g->magic != M_GRAPH || !p || (ndeps && !deps) ||
        p->poolProps.allocType != CU_MEM_ALLOCATION_TYPE_PINNED ||
        p->poolProps.location.type != CU_MEM_LOCATION_TYPE_DEVICE ||
        p->poolProps.location.id < 0 || p->poolProps.location.id >= sim_proc.h.cfg.ncards)
        return CUDA_ERROR_INVALID_VALUE;
    struct sim_knode *k;
    rc = graph_mem_node(g, p->poolProps.location.id, p->bytesize, &p->dptr, &k);
    if (!rc)
        *phGraphNode = (CUgraphNode)k;
    return rc;
}

/* The generic form: kernel, empty, allocation and free nodes (others: not supported). */
CUresult sim_cuGraphAddNode(CUgraphNode *phGraphNode, CUgraph g, const CUgraphNode *deps,
                            size_t ndeps, CUgraphNodeParams *p)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!p || !phGraphNode || !g || g->magic != M_GRAPH || (ndeps && !deps))
        return CUDA_ERROR_INVALID_VALUE;
    struct sim_knode *k;
    switch ((int)p->type) {
    case CU_GRAPH_NODE_TYPE_KERNEL:
        return sim_cuGraphAddKernelNode_v2(phGraphNode, g, deps, ndeps, &p->kernel);
    case CU_GRAPH_NODE_TYPE_MEM_ALLOC:
        return sim_cuGraphAddMemAllocNode(phGraphNode, g, deps, ndeps, &p->alloc);
    case CU_GRAPH_NODE_TYPE_MEM_FREE:
        return sim_cuGraphAddMemFreeNode(phGraphNode, g, deps, ndeps, p->free.dptr);
    case CU_GRAPH_NODE_TYPE_EMPTY:
        rc = graph_append(g, NULL, 0, 0, &k);
        if (!rc)
            *phGraphNode = (CUgraphNode)k;
        return rc;
    default:
        return CUDA_ERROR_NOT_SUPPORTED;
    }
}

CUresult sim_cuGraphAddNode_v2(CUgraphNode *phGraphNode, CUgraph g, const CUgraphNode *deps,
                               const CUgraphEdgeData *edges, size_t ndeps, CUgraphNodeParams *p)
{
    (void)edges; /* edge data (ports, programmatic dependencies) is not modelled */
    return sim_cuGraphAddNode(phGraphNode, g, deps, ndeps, p);
}

CUresult sim_cuGraphAddMemFreeNode(CUgraphNode *phGraphNode, CUgraph g, const CUgraphNode *deps,
                                   size_t ndeps, CUdeviceptr dptr)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!phGraphNode || !g || g->magic != M_GRAPH || (ndeps && !deps) || !dptr)
        return CUDA_ERROR_INVALID_VALUE;
    struct sim_knode *k;
    rc = graph_append(g, NULL, 0, 0, &k);
    if (!rc)
        *phGraphNode = (CUgraphNode)k;
    return rc;
}

/* The exec's allocations get physical memory from the pool (first upload or launch). */
static CUresult graph_mem_map(struct CUgraphExec_st *e)
{
    if (e->mem_mapped || !e->mem_bytes)
        return CUDA_SUCCESS;
    int d = e->mem_device;
    pthread_mutex_lock(&gmem_lock);
    uint64_t used = gmem_used[d] + e->mem_bytes;
    if (used > gmem_reserved[d]) {
        uint64_t grow = used - gmem_reserved[d];
        if (sim_charge(d, grow) != CUDA_SUCCESS) {
            pthread_mutex_unlock(&gmem_lock);
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        gmem_reserved[d] += grow;
        if (gmem_reserved[d] > gmem_reserved_high[d])
            gmem_reserved_high[d] = gmem_reserved[d];
    }
    gmem_used[d] = used;
    if (used > gmem_used_high[d])
        gmem_used_high[d] = used;
    e->mem_mapped = 1;
    pthread_mutex_unlock(&gmem_lock);
    return CUDA_SUCCESS;
}

static void graph_mem_unmap(struct CUgraphExec_st *e)
{
    if (!e->mem_mapped)
        return;
    pthread_mutex_lock(&gmem_lock);
    gmem_used[e->mem_device] -= e->mem_bytes; /* stays reserved in the pool until trimmed */
    e->mem_mapped = 0;
    pthread_mutex_unlock(&gmem_lock);
}

CUresult sim_cuDeviceGraphMemTrim(CUdevice device)
{
    CUresult rc = sim_check_device(device);
    if (rc)
        return rc;
    pthread_mutex_lock(&gmem_lock);
    uint64_t spare = gmem_reserved[device] - gmem_used[device];
    gmem_reserved[device] -= spare;
    pthread_mutex_unlock(&gmem_lock);
    sim_uncharge(device, spare);
    return CUDA_SUCCESS;
}

CUresult sim_cuDeviceGetGraphMemAttribute(CUdevice device, CUgraphMem_attribute attr, void *value)
{
    CUresult rc = sim_check_device(device);
    if (rc)
        return rc;
    if (!value)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&gmem_lock);
    switch (attr) {
    case CU_GRAPH_MEM_ATTR_USED_MEM_CURRENT: *(cuuint64_t *)value = gmem_used[device]; break;
    case CU_GRAPH_MEM_ATTR_USED_MEM_HIGH: *(cuuint64_t *)value = gmem_used_high[device]; break;
    case CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT: *(cuuint64_t *)value = gmem_reserved[device]; break;
    case CU_GRAPH_MEM_ATTR_RESERVED_MEM_HIGH: *(cuuint64_t *)value = gmem_reserved_high[device]; break;
    default: rc = CUDA_ERROR_INVALID_VALUE;
    }
    pthread_mutex_unlock(&gmem_lock);
    return rc;
}

CUresult sim_cuGraphCreate(CUgraph *phGraph, unsigned int flags)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!phGraph || flags)
        return CUDA_ERROR_INVALID_VALUE;
    *phGraph = graph_new();
    return *phGraph ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}

CUresult sim_cuGraphDestroy(CUgraph g)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!g || g->magic != M_GRAPH)
        return CUDA_ERROR_INVALID_VALUE;
    for (size_t i = 0; i < g->n; i++) {
        g->nodes[i]->magic = M_DEAD;
        free(g->nodes[i]);
    }
    free(g->nodes);
    g->magic = M_DEAD;
    free(g);
    return CUDA_SUCCESS;
}

CUresult sim_cuGraphAddKernelNode_v2(CUgraphNode *phGraphNode, CUgraph g, const CUgraphNode *deps,
                                     size_t ndeps, const CUDA_KERNEL_NODE_PARAMS *p)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!phGraphNode || !g || g->magic != M_GRAPH || !p || (ndeps && !deps))
        return CUDA_ERROR_INVALID_VALUE;
    struct CUfunc_st *f = func_of(p->func ? (const void *)p->func : (const void *)p->kern);
    if (!f)
        return CUDA_ERROR_INVALID_VALUE;
    if (!p->gridDimX || !p->gridDimY || !p->gridDimZ || !p->blockDimX || !p->blockDimY ||
        !p->blockDimZ || (uint64_t)p->blockDimX * p->blockDimY * p->blockDimZ > 1024)
        return CUDA_ERROR_INVALID_VALUE;
    uint64_t blocks = (uint64_t)p->gridDimX * p->gridDimY * p->gridDimZ;
    struct sim_knode *k;
    rc = graph_append(g, f, blocks, kernel_ns(f, blocks, p->kernelParams, p->extra), &k);
    if (!rc)
        *phGraphNode = (CUgraphNode)k;
    return rc;
}

CUresult sim_cuGraphGetNodes(CUgraph g, CUgraphNode *nodes, size_t *numNodes)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!g || g->magic != M_GRAPH || !numNodes)
        return CUDA_ERROR_INVALID_VALUE;
    if (nodes) {
        size_t n = *numNodes < g->n ? *numNodes : g->n;
        for (size_t i = 0; i < n; i++)
            nodes[i] = (CUgraphNode)g->nodes[i];
        for (size_t i = n; i < *numNodes; i++)
            nodes[i] = NULL;
        *numNodes = n;
    } else {
        *numNodes = g->n;
    }
    return CUDA_SUCCESS;
}

CUresult sim_cuGraphInstantiateWithFlags(CUgraphExec *phGraphExec, CUgraph g, unsigned long long flags)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!phGraphExec || !g || g->magic != M_GRAPH || (flags & ~0xfULL))
        return CUDA_ERROR_INVALID_VALUE;
    struct CUgraphExec_st *e = calloc(1, sizeof *e);
    if (!e)
        return CUDA_ERROR_OUT_OF_MEMORY;
    e->durs = calloc(g->n ? g->n : 1, sizeof(uint64_t));
    if (!e->durs) {
        free(e);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    for (size_t i = 0; i < g->n; i++)
        e->durs[i] = g->nodes[i]->dur;
    e->n = g->n;
    e->mem_bytes = g->mem_bytes;
    e->mem_device = g->mem_device;
    e->magic = M_GEXEC;
    *phGraphExec = e;
    return CUDA_SUCCESS;
}

static CUresult graph_upload(CUgraphExec e, CUstream hs, int ptds);

/* CUDA_GRAPH_INSTANTIATE_FLAG_UPLOAD uploads the exec at instantiation (on hUploadStream):
 * its allocation nodes take their memory then; an upload that fails fails the call. */
static CUresult instantiate_params(CUgraphExec *ph, CUgraph g, CUDA_GRAPH_INSTANTIATE_PARAMS *p, int ptds)
{
    if (!p)
        return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = sim_cuGraphInstantiateWithFlags(ph, g, p->flags);
    if (rc == CUDA_SUCCESS && (p->flags & CUDA_GRAPH_INSTANTIATE_FLAG_UPLOAD) && (*ph)->mem_bytes) {
        rc = graph_upload(*ph, p->hUploadStream, ptds);
        if (rc != CUDA_SUCCESS) {
            sim_cuGraphExecDestroy(*ph);
            *ph = NULL;
        }
    }
    p->hErrNode_out = NULL;
    p->result_out = rc ? CUDA_GRAPH_INSTANTIATE_ERROR : CUDA_GRAPH_INSTANTIATE_SUCCESS;
    return rc;
}

CUresult sim_cuGraphInstantiateWithParams(CUgraphExec *ph, CUgraph g, CUDA_GRAPH_INSTANTIATE_PARAMS *p)
{ return instantiate_params(ph, g, p, 0); }
CUresult sim_cuGraphInstantiateWithParams_ptsz(CUgraphExec *ph, CUgraph g, CUDA_GRAPH_INSTANTIATE_PARAMS *p)
{ return instantiate_params(ph, g, p, 1); }

/* The CUDA 11.0 form (cudaVersion < 12000): flags 0, an error node and a log buffer. */
CUresult sim_cuGraphInstantiate_v2(CUgraphExec *phGraphExec, CUgraph hGraph, CUgraphNode *phErrorNode,
                                   char *logBuffer, size_t bufferSize)
{
    CUresult rc = sim_cuGraphInstantiateWithFlags(phGraphExec, hGraph, 0);
    if (phErrorNode)
        *phErrorNode = NULL;
    if (logBuffer && bufferSize)
        logBuffer[0] = 0;
    return rc;
}

CUresult sim_cuGraphExecDestroy(CUgraphExec e)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!e || e->magic != M_GEXEC)
        return CUDA_ERROR_INVALID_VALUE;
    graph_mem_unmap(e);
    e->magic = M_DEAD;
    free(e->durs);
    free(e);
    return CUDA_SUCCESS;
}

static CUresult graph_upload(CUgraphExec e, CUstream hs, int ptds)
{
    STREAM_OR_RETURN(hs, ptds, s);
    (void)s;
    return (!e || e->magic != M_GEXEC) ? CUDA_ERROR_INVALID_VALUE : graph_mem_map(e);
}

CUresult sim_cuGraphUpload(CUgraphExec e, CUstream h) { return graph_upload(e, h, 0); }
CUresult sim_cuGraphUpload_ptsz(CUgraphExec e, CUstream h) { return graph_upload(e, h, 1); }

/* A graph launch puts its kernels on the timeline one after another. */
static CUresult graph_launch(CUgraphExec e, CUstream hs, int ptds)
{
    STREAM_OR_RETURN(hs, ptds, s);
    if (!e || e->magic != M_GEXEC)
        return CUDA_ERROR_INVALID_VALUE;
    if (s->capturing)
        return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    CUresult rc = graph_mem_map(e);
    if (rc)
        return rc;
    for (size_t i = 0; i < e->n; i++)
        if (e->durs[i]) /* memory nodes take no time */
            sim_stream_book(s, e->durs[i]);
    return CUDA_SUCCESS;
}

CUresult sim_cuGraphLaunch(CUgraphExec e, CUstream h) { return graph_launch(e, h, 0); }
CUresult sim_cuGraphLaunch_ptsz(CUgraphExec e, CUstream h) { return graph_launch(e, h, 1); }

static CUresult get_ctx_v2(CUstream hs, CUcontext *pctx, CUgreenCtx *pgreen, int ptds)
{
    CUresult rc = get_ctx(hs, pctx, ptds);
    if (!rc && pgreen)
        *pgreen = NULL;
    return rc;
}
CUresult sim_cuStreamGetCtx_v2(CUstream h, CUcontext *c, CUgreenCtx *g) { return get_ctx_v2(h, c, g, 0); }
CUresult sim_cuStreamGetCtx_v2_ptsz(CUstream h, CUcontext *c, CUgreenCtx *g) { return get_ctx_v2(h, c, g, 1); }
