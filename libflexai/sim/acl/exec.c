/* Simulated libascendcl: streams, events, kernel binaries and launches.
 *
 * A launch books a duration on its card's shared timeline (sim/common), after the previous
 * work of its stream; every process on the host books on the same timeline, so kernels of
 * two containers on one card really queue behind each other. Durations (docs/ascend.md):
 *   waves = ceil(blockDim / sm_count) (sm_count stands for the AI cores of the card), and
 *   - a function whose name starts with "flexai_sim_spin" runs waves times the nanoseconds
 *     in the first 8 bytes of its arguments (argsData, hostArgs or the appended args);
 *   - any other function runs waves * block_ns (the simulator's tunables);
 *   never less than launch_ns.
 * A stream may be booked at most queue_ahead_ns past now; a launch beyond that blocks the
 * caller, as a full task queue does. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "simacl.h"

/* ---------------------------------------------------------------- streams */

struct acl_stream *acl_stream_new(struct acl_ctx *c, uint32_t priority)
{
    struct acl_stream *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->ctx = c;
    s->priority = priority;
    s->magic = A_STREAM;
    s->next = c->streams;
    c->streams = s;
    return s;
}

uint64_t acl_stream_tail(struct acl_stream *s)
{
    return atomic_load(&s->tail);
}

aclError acl_resolve_stream(aclrtStream hs, struct acl_stream **out)
{
    struct acl_ctx *c;
    aclError rc = acl_current(&c);
    if (rc)
        return rc;
    struct acl_stream *s = hs ? (struct acl_stream *)hs : c->def;
    if (s->magic != A_STREAM || !acl_ctx_ok(s->ctx))
        return acl_err(ACL_ERROR_INVALID_PARAM, "stream %p is not a live stream", hs);
    *out = s;
    return ACL_SUCCESS;
}

static aclError create_stream(aclrtStream *stream, uint32_t priority)
{
    if (!stream)
        return acl_err(ACL_ERROR_INVALID_PARAM, "aclrtCreateStream: null argument");
    struct acl_ctx *c;
    aclError rc = acl_current(&c);
    if (rc)
        return rc;
    pthread_mutex_lock(&acl_proc.lock);
    struct acl_stream *s = acl_stream_new(c, priority);
    pthread_mutex_unlock(&acl_proc.lock);
    if (!s)
        return acl_err(ACL_ERROR_RT_NO_DEVICE, "out of host memory");
    *stream = s;
    return ACL_SUCCESS;
}

aclError aclrtCreateStream(aclrtStream *stream)
{
    return create_stream(stream, 0);
}

aclError aclrtCreateStreamWithConfig(aclrtStream *stream, uint32_t priority, uint32_t flag)
{
    (void)flag;
    return create_stream(stream, priority);
}

static aclError destroy_stream(aclrtStream stream, int force)
{
    struct acl_stream *s;
    if (!stream)
        return acl_err(ACL_ERROR_INVALID_PARAM, "aclrtDestroyStream: null stream");
    aclError rc = acl_resolve_stream(stream, &s);
    if (rc)
        return rc;
    if (!force)
        sim_wait_device(acl_stream_tail(s));
    s->magic = A_DEAD; /* stays on its context's list (a dead stream books nothing) */
    return ACL_SUCCESS;
}

aclError aclrtDestroyStream(aclrtStream stream)
{
    return destroy_stream(stream, 0);
}

aclError aclrtDestroyStreamForce(aclrtStream stream)
{
    return destroy_stream(stream, 1);
}

aclError aclrtSynchronizeStream(aclrtStream stream)
{
    struct acl_stream *s;
    aclError rc = acl_resolve_stream(stream, &s);
    if (rc)
        return rc;
    sim_wait_device(acl_stream_tail(s));
    return ACL_SUCCESS;
}

aclError aclrtSynchronizeStreamWithTimeout(aclrtStream stream, int32_t timeout)
{
    struct acl_stream *s;
    aclError rc = acl_resolve_stream(stream, &s);
    if (rc)
        return rc;
    uint64_t tail = acl_stream_tail(s), now = sim_now_ns();
    if (timeout > 0 && tail > now + (uint64_t)timeout * 1000000ULL) {
        sim_sleep_until(now + (uint64_t)timeout * 1000000ULL);
        return acl_err(507046, "aclrtSynchronizeStreamWithTimeout: timed out after %d ms", (int)timeout);
    }
    sim_wait_device(tail);
    return ACL_SUCCESS;
}

/* ---------------------------------------------------------------- events */

static struct acl_event *event_of(aclrtEvent e)
{
    struct acl_event *ev = e;
    return ev && ev->magic == A_EVENT ? ev : NULL;
}

static aclError create_event(aclrtEvent *event, uint32_t flag)
{
    if (!event)
        return acl_err(ACL_ERROR_INVALID_PARAM, "aclrtCreateEvent: null argument");
    struct acl_ctx *c;
    aclError rc = acl_current(&c);
    if (rc)
        return rc;
    struct acl_event *ev = calloc(1, sizeof *ev);
    if (!ev)
        return acl_err(ACL_ERROR_RT_RESOURCE_ALLOC_FAIL, "out of host memory");
    ev->magic = A_EVENT;
    ev->flag = flag;
    *event = ev;
    return ACL_SUCCESS;
}

aclError aclrtCreateEvent(aclrtEvent *event)
{
    return create_event(event, 0);
}

aclError aclrtCreateEventWithFlag(aclrtEvent *event, uint32_t flag)
{
    return create_event(event, flag);
}

aclError aclrtCreateEventExWithFlag(aclrtEvent *event, uint32_t flag)
{
    return create_event(event, flag);
}

aclError aclrtDestroyEvent(aclrtEvent event)
{
    struct acl_event *ev = event_of(event);
    if (!ev)
        return acl_err(ACL_ERROR_INVALID_PARAM, "aclrtDestroyEvent: not a live event");
    ev->magic = A_DEAD;
    free(ev);
    return ACL_SUCCESS;
}

aclError aclrtRecordEvent(aclrtEvent event, aclrtStream stream)
{
    struct acl_event *ev = event_of(event);
    if (!ev)
        return acl_err(ACL_ERROR_INVALID_PARAM, "aclrtRecordEvent: not a live event");
    struct acl_stream *s;
    aclError rc = acl_resolve_stream(stream, &s);
    if (rc)
        return rc;
    uint64_t t = acl_stream_tail(s), now = sim_now_ns();
    atomic_store(&ev->t, t > now ? t : now);
    ev->recorded = 1;
    return ACL_SUCCESS;
}

aclError aclrtResetEvent(aclrtEvent event, aclrtStream stream)
{
    struct acl_event *ev = event_of(event);
    if (!ev)
        return acl_err(ACL_ERROR_INVALID_PARAM, "aclrtResetEvent: not a live event");
    struct acl_stream *s;
    aclError rc = acl_resolve_stream(stream, &s);
    if (rc)
        return rc;
    ev->recorded = 0;
    atomic_store(&ev->t, 0);
    return ACL_SUCCESS;
}

aclError aclrtQueryEvent(aclrtEvent event, aclrtEventStatus *status)
{
    struct acl_event *ev = event_of(event);
    if (!ev || !status)
        return acl_err(ACL_ERROR_INVALID_PARAM, "aclrtQueryEvent: bad argument");
    *status = sim_now_ns() >= atomic_load(&ev->t) ? ACL_EVENT_STATUS_COMPLETE : ACL_EVENT_STATUS_NOT_READY;
    return ACL_SUCCESS;
}

aclError aclrtQueryEventStatus(aclrtEvent event, aclrtEventRecordedStatus *status)
{
    struct acl_event *ev = event_of(event);
    if (!ev || !status)
        return acl_err(ACL_ERROR_INVALID_PARAM, "aclrtQueryEventStatus: bad argument");
    *status = sim_now_ns() >= atomic_load(&ev->t) ? ACL_EVENT_RECORDED_STATUS_COMPLETE
                                                  : ACL_EVENT_RECORDED_STATUS_NOT_READY;
    return ACL_SUCCESS;
}

aclError aclrtSynchronizeEvent(aclrtEvent event)
{
    struct acl_event *ev = event_of(event);
    if (!ev)
        return acl_err(ACL_ERROR_INVALID_PARAM, "aclrtSynchronizeEvent: not a live event");
    sim_wait_device(atomic_load(&ev->t));
    return ACL_SUCCESS;
}

aclError aclrtEventElapsedTime(float *ms, aclrtEvent startEvent, aclrtEvent endEvent)
{
    struct acl_event *a = event_of(startEvent), *b = event_of(endEvent);
    if (!ms || !a || !b)
        return acl_err(ACL_ERROR_INVALID_PARAM, "aclrtEventElapsedTime: bad argument");
    if (!a->recorded || !b->recorded)
        return acl_err(ACL_ERROR_RT_EVENT_TIMESTAMP_INVALID, "aclrtEventElapsedTime: event not recorded");
    uint64_t ta = atomic_load(&a->t), tb = atomic_load(&b->t), now = sim_now_ns();
    if (ta > now || tb > now)
        sim_wait_device(ta > tb ? ta : tb); /* the times are known only once both completed */
    *ms = (float)((double)((int64_t)(tb - ta)) / 1e6);
    return ACL_SUCCESS;
}

aclError aclrtStreamWaitEvent(aclrtStream stream, aclrtEvent event)
{
    struct acl_event *ev = event_of(event);
    if (!ev)
        return acl_err(ACL_ERROR_INVALID_PARAM, "aclrtStreamWaitEvent: not a live event");
    struct acl_stream *s;
    aclError rc = acl_resolve_stream(stream, &s);
    if (rc)
        return rc;
    uint64_t t = atomic_load(&ev->t), cur = atomic_load(&s->tail);
    while (cur < t && !atomic_compare_exchange_weak(&s->tail, &cur, t))
        ;
    return ACL_SUCCESS;
}

/* ---------------------------------------------------------------- binaries and functions */

aclError aclrtBinaryLoadFromFile(const char *binPath, aclrtBinaryLoadOptions *options, aclrtBinHandle *binHandle)
{
    (void)options;
    if (!binPath || !binHandle)
        return acl_err(ACL_ERROR_INVALID_PARAM, "aclrtBinaryLoadFromFile: null argument");
    aclError rc = acl_check_init();
    if (rc)
        return rc;
    int fd = open(binPath, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return acl_err(ACL_ERROR_INVALID_FILE, "aclrtBinaryLoadFromFile: cannot open %s", binPath);
    close(fd);
    struct acl_bin *b = calloc(1, sizeof *b);
    if (!b)
        return acl_err(ACL_ERROR_BAD_ALLOC, "out of host memory");
    b->magic = A_BIN;
    b->loaded = 1;
    *binHandle = b;
    return ACL_SUCCESS;
}

aclError aclrtBinaryLoadFromData(const void *data, size_t length, const aclrtBinaryLoadOptions *options,
                                 aclrtBinHandle *binHandle)
{
    (void)options;
    if (!data || !length || !binHandle)
        return acl_err(ACL_ERROR_INVALID_PARAM, "aclrtBinaryLoadFromData: bad argument");
    aclError rc = acl_check_init();
    if (rc)
        return rc;
    struct acl_bin *b = calloc(1, sizeof *b);
    if (!b)
        return acl_err(ACL_ERROR_BAD_ALLOC, "out of host memory");
    b->magic = A_BIN;
    b->loaded = 1;
    *binHandle = b;
    return ACL_SUCCESS;
}

static aclError get_function(const aclrtBinHandle binHandle, const char *kernelName, aclrtFuncHandle *funcHandle)
{
    struct acl_bin *b = binHandle;
    if (!b || b->magic != A_BIN || !kernelName || !*kernelName || !funcHandle)
        return acl_err(ACL_ERROR_INVALID_PARAM, "aclrtBinaryGetFunction: bad argument");
    struct acl_func *f = calloc(1, sizeof *f);
    if (!f)
        return acl_err(ACL_ERROR_BAD_ALLOC, "out of host memory");
    f->magic = A_FUNC;
    f->bin = b;
    snprintf(f->name, sizeof f->name, "%s", kernelName);
    f->spin = strncmp(kernelName, ACL_SIM_SPIN_PREFIX, strlen(ACL_SIM_SPIN_PREFIX)) == 0;
    pthread_mutex_lock(&acl_proc.lock);
    f->next = acl_proc.funcs;
    acl_proc.funcs = f;
    pthread_mutex_unlock(&acl_proc.lock);
    *funcHandle = f;
    return ACL_SUCCESS;
}

aclError aclrtBinaryGetFunction(const aclrtBinHandle binHandle, const char *kernelName, aclrtFuncHandle *funcHandle)
{
    return get_function(binHandle, kernelName, funcHandle);
}

aclError aclrtBinaryUnLoad(aclrtBinHandle binHandle)
{
    struct acl_bin *b = binHandle;
    if (!b || b->magic != A_BIN)
        return acl_err(ACL_ERROR_INVALID_PARAM, "aclrtBinaryUnLoad: not a loaded binary");
    b->magic = A_DEAD; /* its functions die with it (kept allocated, so stale handles are errors) */
    return ACL_SUCCESS;
}

static struct acl_func *func_of(aclrtFuncHandle h)
{
    struct acl_func *f = h;
    return f && f->magic == A_FUNC && f->bin && f->bin->magic == A_BIN ? f : NULL;
}

aclError aclrtKernelArgsInit(aclrtFuncHandle funcHandle, aclrtArgsHandle *argsHandle)
{
    struct acl_func *f = func_of(funcHandle);
    if (!f || !argsHandle)
        return acl_err(ACL_ERROR_INVALID_PARAM, "aclrtKernelArgsInit: bad argument");
    struct acl_args *a = calloc(1, sizeof *a);
    if (!a)
        return acl_err(ACL_ERROR_BAD_ALLOC, "out of host memory");
    a->magic = A_ARGS;
    a->func = f;
    *argsHandle = a;
    return ACL_SUCCESS;
}

aclError aclrtKernelArgsAppend(aclrtArgsHandle argsHandle, void *param, size_t paramSize,
                               aclrtParamHandle *paramHandle)
{
    struct acl_args *a = argsHandle;
    if (!a || a->magic != A_ARGS || a->final || !param || !paramSize || paramSize > ACL_SIM_ARGS_MAX - a->len)
        return acl_err(ACL_ERROR_INVALID_PARAM, "aclrtKernelArgsAppend: bad argument");
    memcpy(a->buf + a->len, param, paramSize);
    if (paramHandle)
        *paramHandle = a->buf + a->len;
    a->len += paramSize;
    return ACL_SUCCESS;
}

aclError aclrtKernelArgsFinalize(aclrtArgsHandle argsHandle)
{
    struct acl_args *a = argsHandle;
    if (!a || a->magic != A_ARGS)
        return acl_err(ACL_ERROR_INVALID_PARAM, "aclrtKernelArgsFinalize: bad argument");
    a->final = 1;
    return ACL_SUCCESS;
}

/* ---------------------------------------------------------------- launches */

static void book(struct acl_stream *s, uint64_t dur);

static aclError launch(aclrtFuncHandle funcHandle, uint32_t blockDim, const void *args, size_t argsSize,
                       aclrtStream stream, const char *what)
{
    struct acl_func *f = func_of(funcHandle);
    if (!f || blockDim == 0)
        return acl_err(ACL_ERROR_INVALID_PARAM, "%s: %s", what, f ? "blockDim is 0" : "not a function handle");
    struct acl_stream *s;
    aclError rc = acl_resolve_stream(stream, &s);
    if (rc)
        return rc;
    const struct sim_config *cfg = &acl_proc.h.cfg;
    uint64_t per = cfg->block_ns;
    if (f->spin) {
        per = 0;
        if (args && argsSize >= sizeof per)
            memcpy(&per, args, sizeof per);
    }
    uint64_t cores = cfg->sm_count > 0 ? (uint64_t)cfg->sm_count : 1;
    uint64_t waves = (blockDim + cores - 1) / cores;
    uint64_t dur = (per && waves > SIM_MAX_KERNEL_NS / per) ? SIM_MAX_KERNEL_NS : waves * per;
    if (dur < cfg->launch_ns)
        dur = cfg->launch_ns;
    if (s->capture) { /* captured, not run: aclmdlRIExecuteAsync runs it */
        s->capture->tasks++;
        s->capture->dur_ns += dur;
        return ACL_SUCCESS;
    }
    book(s, dur);
    return ACL_SUCCESS;
}

/* Books `dur` ns of work on the stream's card after what is queued on it. */
static void book(struct acl_stream *s, uint64_t dur)
{
    const struct sim_config *cfg = &acl_proc.h.cfg;
    uint64_t start, end;
    end = sim_timeline_book(&acl_proc.h, s->ctx->device, acl_stream_tail(s), dur, &start);
    uint64_t cur = atomic_load(&s->tail);
    while (cur < end && !atomic_compare_exchange_weak(&s->tail, &cur, end))
        ;
    uint64_t now = sim_now_ns();
    if (end > now + cfg->queue_ahead_ns)
        sim_sleep_until(end - cfg->queue_ahead_ns); /* the task queue is full: the launch blocks */
}

aclError aclrtLaunchKernel(aclrtFuncHandle funcHandle, uint32_t blockDim, const void *argsData, size_t argsSize,
                           aclrtStream stream)
{
    return launch(funcHandle, blockDim, argsData, argsSize, stream, "aclrtLaunchKernel");
}

aclError aclrtLaunchKernelV2(aclrtFuncHandle funcHandle, uint32_t blockDim, const void *argsData, size_t argsSize,
                             aclrtLaunchKernelCfg *cfg, aclrtStream stream)
{
    (void)cfg;
    return launch(funcHandle, blockDim, argsData, argsSize, stream, "aclrtLaunchKernelV2");
}

aclError aclrtLaunchKernelWithConfig(aclrtFuncHandle funcHandle, uint32_t blockDim, aclrtStream stream,
                                     aclrtLaunchKernelCfg *cfg, aclrtArgsHandle argsHandle, void *reserve)
{
    (void)cfg;
    (void)reserve;
    struct acl_args *a = argsHandle;
    if (!a || a->magic != A_ARGS)
        return acl_err(ACL_ERROR_INVALID_PARAM, "aclrtLaunchKernelWithConfig: not an args handle");
    return launch(funcHandle, blockDim, a->buf, a->len, stream, "aclrtLaunchKernelWithConfig");
}

aclError aclrtLaunchKernelWithHostArgs(aclrtFuncHandle funcHandle, uint32_t blockDim, aclrtStream stream,
                                       aclrtLaunchKernelCfg *cfg, void *hostArgs, size_t argsSize,
                                       aclrtPlaceHolderInfo *placeHolderArray, size_t placeHolderNum)
{
    (void)cfg;
    (void)placeHolderArray;
    (void)placeHolderNum;
    return launch(funcHandle, blockDim, hostArgs, argsSize, stream, "aclrtLaunchKernelWithHostArgs");
}

/* AI-CPU kernels: a binary loaded with the CPU-kernel option, its functions registered by name.
 * The simulator does not read load options: a registered function runs like any other (launched
 * through aclrtLaunchKernelWithConfig / ...WithHostArgs, as CANN documents for AI-CPU kernels). */
aclError aclrtRegisterCpuFunc(const aclrtBinHandle handle, const char *funcName, const char *kernelName,
                              aclrtFuncHandle *funcHandle)
{
    if (!funcName || !*funcName)
        return acl_err(ACL_ERROR_INVALID_PARAM, "aclrtRegisterCpuFunc: no function name");
    return get_function(handle, kernelName, funcHandle);
}

/* ---------------------------------------------------------------- model RI (NPUGraph) */

aclError aclmdlRICaptureBegin(aclrtStream stream, aclmdlRICaptureMode mode)
{
    (void)mode;
    struct acl_stream *s;
    aclError rc = acl_resolve_stream(stream, &s);
    if (rc)
        return rc;
    if (s->capture)
        return acl_err(ACL_ERROR_INVALID_PARAM, "aclmdlRICaptureBegin: the stream is already capturing");
    struct acl_mdlri *ri = calloc(1, sizeof *ri);
    if (!ri)
        return acl_err(ACL_ERROR_BAD_ALLOC, "out of host memory");
    ri->magic = A_MDLRI;
    s->capture = ri;
    return ACL_SUCCESS;
}

aclError aclmdlRICaptureEnd(aclrtStream stream, aclmdlRI *modelRI)
{
    struct acl_stream *s;
    aclError rc = acl_resolve_stream(stream, &s);
    if (rc)
        return rc;
    if (!modelRI || !s->capture)
        return acl_err(ACL_ERROR_INVALID_PARAM, "aclmdlRICaptureEnd: %s",
                       modelRI ? "the stream is not capturing" : "null modelRI");
    *modelRI = s->capture;
    s->capture = NULL;
    return ACL_SUCCESS;
}

static struct acl_mdlri *mdlri_of(aclmdlRI h)
{
    struct acl_mdlri *ri = h;
    return ri && ri->magic == A_MDLRI ? ri : NULL;
}

aclError aclmdlRIExecuteAsync(aclmdlRI modelRI, aclrtStream stream)
{
    struct acl_mdlri *ri = mdlri_of(modelRI);
    if (!ri)
        return acl_err(ACL_ERROR_INVALID_PARAM, "aclmdlRIExecuteAsync: not a model RI");
    struct acl_stream *s;
    aclError rc = acl_resolve_stream(stream, &s);
    if (rc)
        return rc;
    uint64_t dur = ri->dur_ns;
    if (dur < acl_proc.h.cfg.launch_ns)
        dur = acl_proc.h.cfg.launch_ns;
    book(s, dur);
    return ACL_SUCCESS;
}

aclError aclmdlRIDestroy(aclmdlRI modelRI)
{
    struct acl_mdlri *ri = mdlri_of(modelRI);
    if (!ri)
        return acl_err(ACL_ERROR_INVALID_PARAM, "aclmdlRIDestroy: not a model RI");
    ri->magic = A_DEAD; /* kept allocated: a stale handle is an error, not a crash */
    return ACL_SUCCESS;
}
