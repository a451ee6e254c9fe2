/* Simulated libascendcl: initialisation, errors, devices and contexts. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "simacl.h"

struct acl_proc acl_proc = { .lock = PTHREAD_MUTEX_INITIALIZER };

static __thread struct acl_ctx *cur_ctx;
static __thread char err_msg[512];
static __thread char err_out[512];

/* ---------------------------------------------------------------- errors */

aclError acl_err(aclError code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = snprintf(err_msg, sizeof err_msg, "EE%d: ", code);
    if (n > 0 && (size_t)n < sizeof err_msg)
        vsnprintf(err_msg + n, sizeof err_msg - (size_t)n, fmt, ap);
    va_end(ap);
    if (getenv("FLEXAI_SIM_DEBUG"))
        fprintf(stderr, "flexai-sim-acl: %s\n", err_msg);
    return code;
}

/* The thread's most recent error text, once; NULL when there is none (as CANN documents). */
const char *aclGetRecentErrMsg(void)
{
    if (!err_msg[0])
        return NULL;
    memcpy(err_out, err_msg, sizeof err_out);
    err_msg[0] = 0;
    return err_out;
}

/* ---------------------------------------------------------------- init */

static aclError open_sim(void)
{
    enum sim_status st = sim_open(&acl_proc.h, 1);
    switch (st) {
    case SIM_OK:
        acl_proc.sim_ok = 1;
        return ACL_SUCCESS;
    case SIM_BAD_CONFIG:
        fprintf(stderr, "flexai-sim: %s/%s is invalid; no simulated NPU (FLEXAI_SIM_DEBUG=1 "
                        "tells why)\n", sim_dir(), SIM_CONFIG_NAME);
        return ACL_ERROR_RT_NO_DEVICE;
    case SIM_NO_CONFIG:
        return ACL_ERROR_RT_NO_DEVICE;
    case SIM_NO_SLOT:
        return ACL_ERROR_RT_RESOURCE_ALLOC_FAIL;
    default:
        return ACL_ERROR_RT_DRV_INTERNAL_ERROR;
    }
}

aclError aclInit(const char *configPath)
{
    (void)configPath; /* the JSON config (dump, profiling) means nothing to the simulator */
    pthread_mutex_lock(&acl_proc.lock);
    aclError rc = ACL_SUCCESS;
    if (acl_proc.initialized) {
        rc = acl_err(ACL_ERROR_REPEAT_INITIALIZE, "aclInit was already called");
    } else {
        acl_proc.initialized = 1;
        acl_proc.finalized = 0;
        if (open_sim() == ACL_SUCCESS)
            sim_reclaim_dead(&acl_proc.h);
        /* no simulated card: aclInit still succeeds, device calls report no device */
    }
    pthread_mutex_unlock(&acl_proc.lock);
    return rc;
}

static void ctx_release(struct acl_ctx *c);

aclError aclFinalize(void)
{
    pthread_mutex_lock(&acl_proc.lock);
    if (!acl_proc.initialized) {
        aclError rc = acl_proc.finalized ? ACL_ERROR_REPEAT_FINALIZE : ACL_ERROR_UNINITIALIZE;
        pthread_mutex_unlock(&acl_proc.lock);
        return acl_err(rc, "aclFinalize without a matching aclInit");
    }
    for (struct acl_ctx *c = acl_proc.contexts; c; c = c->next)
        ctx_release(c);
    acl_free_all();
    for (int d = 0; d < SIM_MAX_CARDS; d++) {
        acl_proc.defctx[d] = NULL;
        acl_proc.refs[d] = 0;
    }
    if (acl_proc.sim_ok)
        sim_close(&acl_proc.h);
    acl_proc.sim_ok = 0;
    acl_proc.initialized = 0;
    acl_proc.finalized = 1;
    cur_ctx = NULL;
    pthread_mutex_unlock(&acl_proc.lock);
    return ACL_SUCCESS;
}

aclError acl_check_init(void)
{
    if (!acl_proc.initialized)
        return acl_err(ACL_ERROR_UNINITIALIZE, "aclInit has not been called");
    if (!acl_proc.sim_ok)
        return acl_err(ACL_ERROR_RT_NO_DEVICE, "no simulated NPU (%s/%s)", sim_dir(), SIM_CONFIG_NAME);
    return ACL_SUCCESS;
}

aclError aclrtGetVersion(int32_t *majorVersion, int32_t *minorVersion, int32_t *patchVersion)
{
    if (!majorVersion || !minorVersion || !patchVersion)
        return acl_err(ACL_ERROR_INVALID_PARAM, "aclrtGetVersion: null argument");
    *majorVersion = 1;
    *minorVersion = 17;
    *patchVersion = 0;
    return ACL_SUCCESS;
}

aclError aclrtGetRunMode(aclrtRunMode *runMode)
{
    if (!runMode)
        return acl_err(ACL_ERROR_INVALID_PARAM, "aclrtGetRunMode: null argument");
    *runMode = ACL_HOST;
    return ACL_SUCCESS;
}

const char *aclrtGetSocName(void)
{
    const char *soc = getenv("FLEXAI_SIM_ACL_SOC");
    return (soc && *soc) ? soc : "Ascend910B3";
}

/* ---------------------------------------------------------------- devices */

/* Works before aclInit, as torch_npu's device_count() needs: reads the card list only. */
aclError aclrtGetDeviceCount(uint32_t *count)
{
    if (!count)
        return acl_err(ACL_ERROR_INVALID_PARAM, "aclrtGetDeviceCount: null argument");
    pthread_mutex_lock(&acl_proc.lock);
    int n = -1;
    if (acl_proc.sim_ok) {
        n = acl_proc.h.cfg.ncards;
    } else {
        static struct sim_config cfg; /* under the lock */
        char err[700];
        if (sim_config_load(sim_dir(), &cfg, err, sizeof err) == SIM_OK)
            n = cfg.ncards;
    }
    pthread_mutex_unlock(&acl_proc.lock);
    if (n < 0) {
        *count = 0;
        return acl_err(ACL_ERROR_RT_NO_DEVICE, "no simulated NPU (%s/%s)", sim_dir(), SIM_CONFIG_NAME);
    }
    *count = (uint32_t)n;
    return ACL_SUCCESS;
}

static aclError check_device(int32_t dev)
{
    aclError rc = acl_check_init();
    if (rc)
        return rc;
    if (dev < 0 || dev >= acl_proc.h.cfg.ncards)
        return acl_err(ACL_ERROR_RT_INVALID_DEVICEID, "device id %d is out of range 0..%d", (int)dev,
                       acl_proc.h.cfg.ncards - 1);
    return ACL_SUCCESS;
}

/* ---------------------------------------------------------------- contexts */

int acl_ctx_ok(struct acl_ctx *c)
{
    return c && c->magic == A_CTX && c->active;
}

void acl_set_current(struct acl_ctx *c)
{
    cur_ctx = c;
}

aclError acl_current(struct acl_ctx **out)
{
    aclError rc = acl_check_init();
    if (rc)
        return rc;
    struct acl_ctx *c = cur_ctx;
    if (!acl_ctx_ok(c))
        return acl_err(ACL_ERROR_RT_CONTEXT_NULL, "no current context: call aclrtSetDevice first");
    *out = c;
    return ACL_SUCCESS;
}

uint64_t acl_ctx_tail(struct acl_ctx *c)
{
    uint64_t t = 0;
    for (struct acl_stream *s = c->streams; s; s = s->next) {
        uint64_t x = acl_stream_tail(s);
        if (x > t)
            t = x;
    }
    return t;
}

/* Caller holds acl_proc.lock. */
static aclError ctx_create(int dev, int is_default, struct acl_ctx **out)
{
    struct acl_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return acl_err(ACL_ERROR_BAD_ALLOC, "out of host memory");
    uint64_t fp = acl_proc.h.cfg.context_bytes;
    if (fp) {
        aclError rc = acl_charge(dev, fp);
        if (rc) {
            free(c);
            return rc;
        }
    }
    c->device = dev;
    c->is_default = is_default;
    c->footprint = fp;
    c->magic = A_CTX;
    c->active = 1;
    c->def = acl_stream_new(c, 0);
    if (!c->def) {
        acl_uncharge(dev, fp);
        free(c);
        return acl_err(ACL_ERROR_BAD_ALLOC, "out of host memory");
    }
    sim_ctx_count(&acl_proc.h, dev, +1);
    c->next = acl_proc.contexts;
    acl_proc.contexts = c;
    *out = c;
    return ACL_SUCCESS;
}

/* Ends a context: waits for its work, frees its memory. The struct stays (marked dead), so a
 * stale handle is an error rather than a crash. Caller holds acl_proc.lock. */
static void ctx_release(struct acl_ctx *c)
{
    if (!c->active)
        return;
    sim_wait_device(acl_ctx_tail(c));
    c->active = 0;
    acl_free_ctx_allocs(c);
    for (struct acl_stream *s = c->streams; s; s = s->next)
        s->magic = A_DEAD;
    if (c->footprint)
        acl_uncharge(c->device, c->footprint);
    sim_ctx_count(&acl_proc.h, c->device, -1);
    c->magic = A_DEAD;
    if (cur_ctx == c)
        cur_ctx = NULL;
}

aclError aclrtSetDevice(int32_t deviceId)
{
    pthread_mutex_lock(&acl_proc.lock);
    aclError rc = check_device(deviceId);
    if (!rc && !acl_proc.defctx[deviceId])
        rc = ctx_create(deviceId, 1, &acl_proc.defctx[deviceId]);
    if (!rc) {
        acl_proc.refs[deviceId]++;
        cur_ctx = acl_proc.defctx[deviceId];
    }
    pthread_mutex_unlock(&acl_proc.lock);
    return rc;
}

static aclError reset_device(int32_t deviceId, int force)
{
    pthread_mutex_lock(&acl_proc.lock);
    aclError rc = check_device(deviceId);
    if (!rc && acl_proc.refs[deviceId] > 0) {
        if (force)
            acl_proc.refs[deviceId] = 0;
        else
            acl_proc.refs[deviceId]--;
        if (acl_proc.refs[deviceId] == 0 && acl_proc.defctx[deviceId]) {
            ctx_release(acl_proc.defctx[deviceId]);
            acl_proc.defctx[deviceId] = NULL;
        }
    }
    pthread_mutex_unlock(&acl_proc.lock);
    return rc;
}

aclError aclrtResetDevice(int32_t deviceId)
{
    return reset_device(deviceId, 0);
}

aclError aclrtResetDeviceForce(int32_t deviceId)
{
    return reset_device(deviceId, 1);
}

aclError aclrtGetDevice(int32_t *deviceId)
{
    if (!deviceId)
        return acl_err(ACL_ERROR_INVALID_PARAM, "aclrtGetDevice: null argument");
    struct acl_ctx *c;
    aclError rc = acl_current(&c);
    if (rc)
        return rc;
    *deviceId = c->device;
    return ACL_SUCCESS;
}

aclError aclrtSynchronizeDevice(void)
{
    struct acl_ctx *c;
    aclError rc = acl_current(&c);
    if (rc)
        return rc;
    uint64_t t = 0;
    pthread_mutex_lock(&acl_proc.lock);
    for (struct acl_ctx *x = acl_proc.contexts; x; x = x->next)
        if (x->active && x->device == c->device) {
            uint64_t y = acl_ctx_tail(x);
            if (y > t)
                t = y;
        }
    pthread_mutex_unlock(&acl_proc.lock);
    sim_wait_device(t);
    return ACL_SUCCESS;
}

aclError aclrtCreateContext(aclrtContext *context, int32_t deviceId)
{
    if (!context)
        return acl_err(ACL_ERROR_INVALID_PARAM, "aclrtCreateContext: null argument");
    pthread_mutex_lock(&acl_proc.lock);
    struct acl_ctx *c = NULL;
    aclError rc = check_device(deviceId);
    if (!rc)
        rc = ctx_create(deviceId, 0, &c);
    if (!rc) {
        cur_ctx = c;
        *context = c;
    }
    pthread_mutex_unlock(&acl_proc.lock);
    return rc;
}

aclError aclrtDestroyContext(aclrtContext context)
{
    struct acl_ctx *c = context;
    pthread_mutex_lock(&acl_proc.lock);
    aclError rc = acl_check_init();
    if (!rc && (!acl_ctx_ok(c) || c->is_default))
        rc = acl_err(ACL_ERROR_INVALID_PARAM, "aclrtDestroyContext: not a live context made by "
                                              "aclrtCreateContext");
    if (!rc)
        ctx_release(c);
    pthread_mutex_unlock(&acl_proc.lock);
    return rc;
}

aclError aclrtSetCurrentContext(aclrtContext context)
{
    aclError rc = acl_check_init();
    if (rc)
        return rc;
    struct acl_ctx *c = context;
    if (!acl_ctx_ok(c))
        return acl_err(ACL_ERROR_INVALID_PARAM, "aclrtSetCurrentContext: not a live context");
    cur_ctx = c;
    return ACL_SUCCESS;
}

aclError aclrtGetCurrentContext(aclrtContext *context)
{
    if (!context)
        return acl_err(ACL_ERROR_INVALID_PARAM, "aclrtGetCurrentContext: null argument");
    struct acl_ctx *c;
    aclError rc = acl_current(&c);
    if (rc)
        return rc;
    *context = c;
    return ACL_SUCCESS;
}
