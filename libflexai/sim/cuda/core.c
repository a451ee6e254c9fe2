/* Simulated libcuda: initialisation, errors, devices and contexts. */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SIM_ERROR_TABLE
#include "simcuda.h"

struct sim_proc sim_proc = {
    .once = PTHREAD_ONCE_INIT,
    .init_rc = CUDA_ERROR_NOT_INITIALIZED,
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .alloc_lock = PTHREAD_MUTEX_INITIALIZER,
};

/* The calling thread's context stack. */
#define CTX_STACK_MAX 64
static __thread struct CUctx_st *ctx_stack[CTX_STACK_MAX];
static __thread int ctx_depth;

/* ---------------------------------------------------------------- errors */

CUresult sim_cuGetErrorString(CUresult error, const char **pStr)
{
    if (!pStr)
        return CUDA_ERROR_INVALID_VALUE;
    for (size_t i = 0; i < sizeof sim_error_table / sizeof sim_error_table[0]; i++)
        if (sim_error_table[i].code == error) {
            *pStr = sim_error_table[i].text;
            return CUDA_SUCCESS;
        }
    *pStr = NULL;
    return CUDA_ERROR_INVALID_VALUE;
}

CUresult sim_cuGetErrorName(CUresult error, const char **pStr)
{
    if (!pStr)
        return CUDA_ERROR_INVALID_VALUE;
    for (size_t i = 0; i < sizeof sim_error_table / sizeof sim_error_table[0]; i++)
        if (sim_error_table[i].code == error) {
            *pStr = sim_error_table[i].name;
            return CUDA_SUCCESS;
        }
    *pStr = NULL;
    return CUDA_ERROR_INVALID_VALUE;
}

/* ---------------------------------------------------------------- init */

/* A forked child shares the parent's open state file, whose lock marks the parent's slot as
 * alive; it drops its reference and, like a child of a real CUDA process, cannot use the
 * driver. */
static void after_fork_child(void)
{
    atomic_store(&sim_proc.initialized, 0);
    sim_proc.init_rc = CUDA_ERROR_NOT_INITIALIZED;
    if (sim_proc.h.fd >= 0) {
        close(sim_proc.h.fd);
        sim_proc.h.fd = -1;
    }
    sim_proc.h.slot = -1;
}

static void init_once(void)
{
    pthread_atfork(NULL, NULL, after_fork_child);
    enum sim_status st = sim_open(&sim_proc.h, 1);
    switch (st) {
    case SIM_OK:
        sim_proc.init_rc = CUDA_SUCCESS;
        atomic_store(&sim_proc.initialized, 1);
        break;
    case SIM_BAD_CONFIG:
        fprintf(stderr, "flexai-sim: %s/%s is invalid; no simulated GPU (FLEXAI_SIM_DEBUG=1 "
                        "tells why)\n", sim_dir(), SIM_CONFIG_NAME);
        sim_proc.init_rc = CUDA_ERROR_NO_DEVICE;
        break;
    case SIM_NO_CONFIG:
        sim_proc.init_rc = CUDA_ERROR_NO_DEVICE;
        break;
    case SIM_NO_SLOT:
        sim_proc.init_rc = CUDA_ERROR_OUT_OF_MEMORY;
        break;
    default:
        sim_proc.init_rc = CUDA_ERROR_OPERATING_SYSTEM;
        break;
    }
}

CUresult sim_cuInit(unsigned int Flags)
{
    if (Flags != 0)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_once(&sim_proc.once, init_once);
    if (sim_proc.init_rc == CUDA_SUCCESS)
        sim_reclaim_dead(&sim_proc.h);
    return sim_proc.init_rc;
}

CUresult sim_check_init(void)
{
    if (atomic_load(&sim_proc.initialized))
        return CUDA_SUCCESS;
    return CUDA_ERROR_NOT_INITIALIZED;
}

CUresult sim_cuDriverGetVersion(int *driverVersion)
{
    if (!driverVersion)
        return CUDA_ERROR_INVALID_VALUE;
    *driverVersion = SIM_DRIVER_VERSION;
    return CUDA_SUCCESS;
}

/* ---------------------------------------------------------------- devices */

CUresult sim_check_device(CUdevice dev)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (dev < 0 || dev >= sim_proc.h.cfg.ncards)
        return CUDA_ERROR_INVALID_DEVICE;
    return CUDA_SUCCESS;
}

CUresult sim_cuDeviceGet(CUdevice *device, int ordinal)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!device)
        return CUDA_ERROR_INVALID_VALUE;
    if (ordinal < 0 || ordinal >= sim_proc.h.cfg.ncards)
        return CUDA_ERROR_INVALID_DEVICE;
    *device = ordinal;
    return CUDA_SUCCESS;
}

CUresult sim_cuDeviceGetCount(int *count)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!count)
        return CUDA_ERROR_INVALID_VALUE;
    *count = sim_proc.h.cfg.ncards;
    return CUDA_SUCCESS;
}

CUresult sim_cuDeviceGetName(char *name, int len, CUdevice dev)
{
    CUresult rc = sim_check_device(dev);
    if (rc)
        return rc;
    if (!name || len <= 0)
        return CUDA_ERROR_INVALID_VALUE;
    snprintf(name, (size_t)len, "%s", sim_proc.h.cfg.card[dev].name);
    return CUDA_SUCCESS;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    c = tolower(c);
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" -> 16 bytes; anything else is hashed. */
static void uuid_bytes(const char *s, unsigned char out[16])
{
    const char *p = s;
    if (!strncmp(p, "GPU-", 4))
        p += 4;
    int n = 0;
    for (; *p && n < 32; p++) {
        if (*p == '-')
            continue;
        int v = hexval((unsigned char)*p);
        if (v < 0)
            break;
        if (n % 2 == 0) out[n / 2] = (unsigned char)(v << 4);
        else out[n / 2] |= (unsigned char)v;
        n++;
    }
    if (n == 32 && !*p)
        return;
    uint64_t h1 = 1469598103934665603ULL, h2 = 0x9e3779b97f4a7c15ULL;
    for (p = s; *p; p++) {
        h1 = (h1 ^ (unsigned char)*p) * 1099511628211ULL;
        h2 = (h2 ^ (unsigned char)*p) * 0x100000001b3ULL + 7;
    }
    memcpy(out, &h1, 8);
    memcpy(out + 8, &h2, 8);
}

CUresult sim_cuDeviceGetUuid(CUuuid *uuid, CUdevice dev)
{
    CUresult rc = sim_check_device(dev);
    if (rc)
        return rc;
    if (!uuid)
        return CUDA_ERROR_INVALID_VALUE;
    uuid_bytes(sim_proc.h.cfg.card[dev].uuid, (unsigned char *)uuid->bytes);
    return CUDA_SUCCESS;
}

CUresult sim_cuDeviceGetUuid_v2(CUuuid *uuid, CUdevice dev)
{
    return sim_cuDeviceGetUuid(uuid, dev);
}

CUresult sim_cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev)
{
    CUresult rc = sim_check_device(dev);
    if (rc)
        return rc;
    if (!bytes)
        return CUDA_ERROR_INVALID_VALUE;
    *bytes = (size_t)sim_proc.h.cfg.card[dev].memory;
    return CUDA_SUCCESS;
}

CUresult sim_cuDeviceComputeCapability(int *major, int *minor, CUdevice dev)
{
    CUresult rc = sim_check_device(dev);
    if (rc)
        return rc;
    if (!major || !minor)
        return CUDA_ERROR_INVALID_VALUE;
    *major = sim_proc.h.cfg.cc_major;
    *minor = sim_proc.h.cfg.cc_minor;
    return CUDA_SUCCESS;
}

CUresult sim_cuDeviceGetAttribute(int *pi, CUdevice_attribute attrib, CUdevice dev)
{
    CUresult rc = sim_check_device(dev);
    if (rc)
        return rc;
    if (!pi)
        return CUDA_ERROR_INVALID_VALUE;
    const struct sim_config *cfg = &sim_proc.h.cfg;
    int v;
    switch (attrib) {
    case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK: v = 1024; break;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X: v = 1024; break;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y: v = 1024; break;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z: v = 64; break;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X: v = 2147483647; break;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y: v = 65535; break;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z: v = 65535; break;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK: v = 49152; break;
    case CU_DEVICE_ATTRIBUTE_TOTAL_CONSTANT_MEMORY: v = 65536; break;
    case CU_DEVICE_ATTRIBUTE_WARP_SIZE: v = 32; break;
    case CU_DEVICE_ATTRIBUTE_MAX_PITCH: v = 2147483647; break;
    case CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_BLOCK: v = 65536; break;
    case CU_DEVICE_ATTRIBUTE_CLOCK_RATE: v = 1980000; break;
    case CU_DEVICE_ATTRIBUTE_TEXTURE_ALIGNMENT: v = 512; break;
    case CU_DEVICE_ATTRIBUTE_GPU_OVERLAP: v = 1; break;
    case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: v = cfg->sm_count; break;
    case CU_DEVICE_ATTRIBUTE_KERNEL_EXEC_TIMEOUT: v = 0; break;
    case CU_DEVICE_ATTRIBUTE_INTEGRATED: v = 0; break;
    case CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY: v = 1; break;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_MODE: v = 0; break;
    case CU_DEVICE_ATTRIBUTE_CONCURRENT_KERNELS: v = 1; break;
    case CU_DEVICE_ATTRIBUTE_ECC_ENABLED: v = 1; break;
    case CU_DEVICE_ATTRIBUTE_PCI_BUS_ID: v = cfg->card[dev].pci_bus; break;
    case CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID: v = 0; break;
    case CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID: v = 0; break;
    case CU_DEVICE_ATTRIBUTE_TCC_DRIVER: v = 0; break;
    case CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE: v = 2619000; break;
    case CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH: v = 5120; break;
    case CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE: v = 52428800; break;
    case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR: v = 2048; break;
    case CU_DEVICE_ATTRIBUTE_ASYNC_ENGINE_COUNT: v = 3; break;
    case CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING: v = 1; break;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: v = cfg->cc_major; break;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: v = cfg->cc_minor; break;
    case CU_DEVICE_ATTRIBUTE_STREAM_PRIORITIES_SUPPORTED: v = 1; break;
    case CU_DEVICE_ATTRIBUTE_GLOBAL_L1_CACHE_SUPPORTED: v = 1; break;
    case CU_DEVICE_ATTRIBUTE_LOCAL_L1_CACHE_SUPPORTED: v = 1; break;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR: v = 233472; break;
    case CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_MULTIPROCESSOR: v = 65536; break;
    case CU_DEVICE_ATTRIBUTE_MANAGED_MEMORY: v = 1; break;
    case CU_DEVICE_ATTRIBUTE_MULTI_GPU_BOARD: v = 0; break;
    case CU_DEVICE_ATTRIBUTE_MULTI_GPU_BOARD_GROUP_ID: v = dev; break;
    case CU_DEVICE_ATTRIBUTE_CONCURRENT_MANAGED_ACCESS: v = 1; break;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_PREEMPTION_SUPPORTED: v = 1; break;
    case CU_DEVICE_ATTRIBUTE_COOPERATIVE_LAUNCH: v = 1; break;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: v = 232448; break;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCKS_PER_MULTIPROCESSOR: v = 32; break;
    case CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED: v = 1; break;
    case CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED: v = 1; break;
    case CU_DEVICE_ATTRIBUTE_MAX_PERSISTING_L2_CACHE_SIZE: v = 0; break;
    case CU_DEVICE_ATTRIBUTE_MEMPOOL_SUPPORTED_HANDLE_TYPES: v = 1; break;
    case CU_DEVICE_ATTRIBUTE_CLUSTER_LAUNCH: v = 1; break;
    case CU_DEVICE_ATTRIBUTE_MAX_ACCESS_POLICY_WINDOW_SIZE: v = 0; break;
    case CU_DEVICE_ATTRIBUTE_HOST_NATIVE_ATOMIC_SUPPORTED: v = 0; break;
    case CU_DEVICE_ATTRIBUTE_NUMA_CONFIG: v = 0; break;
    case CU_DEVICE_ATTRIBUTE_NUMA_ID: v = -1; break;
    case CU_DEVICE_ATTRIBUTE_HOST_NUMA_ID: v = -1; break;
    default:
        if ((int)attrib <= 0 || attrib >= CU_DEVICE_ATTRIBUTE_MAX)
            return CUDA_ERROR_INVALID_VALUE;
        v = 0;
        break;
    }
    *pi = v;
    return CUDA_SUCCESS;
}

CUresult sim_cuDeviceGetPCIBusId(char *pciBusId, int len, CUdevice dev)
{
    CUresult rc = sim_check_device(dev);
    if (rc)
        return rc;
    if (!pciBusId || len <= 0)
        return CUDA_ERROR_INVALID_VALUE;
    snprintf(pciBusId, (size_t)len, "0000:%02x:00.0", sim_proc.h.cfg.card[dev].pci_bus);
    return CUDA_SUCCESS;
}

CUresult sim_cuDeviceGetByPCIBusId(CUdevice *dev, const char *pciBusId)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!dev || !pciBusId)
        return CUDA_ERROR_INVALID_VALUE;
    unsigned domain = 0, bus = 0, device = 0, fn = 0;
    if (sscanf(pciBusId, "%x:%x:%x.%x", &domain, &bus, &device, &fn) != 4 &&
        sscanf(pciBusId, "%x:%x.%x", &bus, &device, &fn) != 3)
        return CUDA_ERROR_INVALID_VALUE;
    for (int i = 0; i < sim_proc.h.cfg.ncards; i++)
        if ((unsigned)sim_proc.h.cfg.card[i].pci_bus == bus && device == 0) {
            *dev = i;
            return CUDA_SUCCESS;
        }
    return CUDA_ERROR_INVALID_DEVICE;
}

CUresult sim_cuDeviceCanAccessPeer(int *canAccessPeer, CUdevice dev, CUdevice peerDev)
{
    CUresult rc = sim_check_device(dev);
    if (!rc)
        rc = sim_check_device(peerDev);
    if (rc)
        return rc;
    if (!canAccessPeer)
        return CUDA_ERROR_INVALID_VALUE;
    *canAccessPeer = 0;
    return CUDA_SUCCESS;
}

/* ---------------------------------------------------------------- contexts */

int sim_ctx_ok(struct CUctx_st *c)
{
    return c && c->magic == M_CTX && c->active;
}

CUresult sim_current_ctx(struct CUctx_st **out)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    struct CUctx_st *c = ctx_depth > 0 ? ctx_stack[ctx_depth - 1] : NULL;
    if (!c)
        return CUDA_ERROR_INVALID_CONTEXT;
    if (c->magic != M_CTX || !c->active)
        return CUDA_ERROR_CONTEXT_IS_DESTROYED;
    *out = c;
    return CUDA_SUCCESS;
}

/* Brings a context struct to life on dev: charges its footprint to the card. */
static CUresult ctx_activate(struct CUctx_st *c, int dev, unsigned flags, int primary)
{
    uint64_t fp = sim_proc.h.cfg.context_bytes;
    if (fp && sim_mem_reserve(&sim_proc.h, dev, fp) != 0)
        return CUDA_ERROR_OUT_OF_MEMORY;
    c->device = dev;
    c->flags = flags;
    c->primary = primary;
    c->footprint = fp;
    static const size_t limit_defaults[7] = {1024, 1048576, 8388608, 2, 2048, 0x100, 0};
    memcpy(c->limit, limit_defaults, sizeof c->limit);
    c->id = atomic_fetch_add(&sim_proc.next_id, 1) + 1;
    c->streams = NULL;
    c->legacy = sim_stream_new(c, 0, 0, 1);
    if (!c->legacy) {
        sim_mem_release(&sim_proc.h, dev, fp);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    c->magic = M_CTX;
    c->active = 1;
    sim_ctx_count(&sim_proc.h, dev, +1);
    return CUDA_SUCCESS;
}

/* Ends a context: waits for its work, frees its memory, streams stay allocated but dead. */
static void ctx_deactivate(struct CUctx_st *c)
{
    if (!c->active)
        return;
    sim_wait_device(sim_ctx_tail(c));
    c->active = 0;
    sim_alloc_drop_ctx(c);
    pthread_mutex_lock(&c->lock);
    for (struct CUstream_st *s = c->streams; s; s = s->next)
        s->magic = M_DEAD;
    pthread_mutex_unlock(&c->lock);
    sim_mem_release(&sim_proc.h, c->device, c->footprint);
    sim_ctx_count(&sim_proc.h, c->device, -1);
    c->footprint = 0;
}

static CUresult ctx_create(CUcontext *pctx, unsigned int flags, CUdevice dev)
{
    CUresult rc = sim_check_device(dev);
    if (rc)
        return rc;
    if (!pctx)
        return CUDA_ERROR_INVALID_VALUE;
    if (flags & ~(unsigned)CU_CTX_FLAGS_MASK)
        return CUDA_ERROR_INVALID_VALUE;
    struct CUctx_st *c = calloc(1, sizeof *c);
    if (!c)
        return CUDA_ERROR_OUT_OF_MEMORY;
    pthread_mutex_init(&c->lock, NULL);
    rc = ctx_activate(c, dev, flags, 0);
    if (rc) {
        free(c);
        return rc;
    }
    if (ctx_depth >= CTX_STACK_MAX) {
        ctx_deactivate(c);
        return CUDA_ERROR_INVALID_VALUE;
    }
    ctx_stack[ctx_depth++] = c;
    *pctx = c;
    return CUDA_SUCCESS;
}

CUresult sim_cuCtxCreate_v2(CUcontext *pctx, unsigned int flags, CUdevice dev)
{
    return ctx_create(pctx, flags, dev);
}

CUresult sim_cuCtxCreate_v3(CUcontext *pctx, CUexecAffinityParam *paramsArray, int numParams,
                            unsigned int flags, CUdevice dev)
{
    if (numParams < 0 || (numParams > 0 && !paramsArray))
        return CUDA_ERROR_INVALID_VALUE;
    return ctx_create(pctx, flags, dev);
}

CUresult sim_cuCtxCreate_v4(CUcontext *pctx, CUctxCreateParams *ctxCreateParams,
                            unsigned int flags, CUdevice dev)
{
    if (ctxCreateParams && ctxCreateParams->numExecAffinityParams > 0 &&
        ctxCreateParams->cigParams)
        return CUDA_ERROR_INVALID_VALUE; /* the two are mutually exclusive */
    return ctx_create(pctx, flags, dev);
}

/* Green contexts (CUDA 12.4): a context over a partition of the card's SMs. The simulator
 * does not partition; what matters for accounting is that one costs a context's memory on
 * its card from cuGreenCtxCreate to cuGreenCtxDestroy. Any descriptor is accepted (the
 * cuDevResource* calls that make one are not modelled); flags must be
 * CU_GREEN_CTX_DEFAULT_STREAM, as the real driver requires. */
#define SIM_GREEN_CTX_DEFAULT_STREAM 0x1
#define M_GREEN 0x4e455247
struct CUgreenCtx_st {
    uint32_t magic;
    struct CUctx_st *ctx;
};

CUresult sim_cuGreenCtxCreate(CUgreenCtx *phCtx, CUdevResourceDesc desc, CUdevice dev,
                              unsigned int flags)
{
    CUresult rc = sim_check_device(dev);
    if (rc)
        return rc;
    if (!phCtx || !desc || flags != SIM_GREEN_CTX_DEFAULT_STREAM)
        return CUDA_ERROR_INVALID_VALUE;
    struct CUgreenCtx_st *g = calloc(1, sizeof *g);
    struct CUctx_st *c = calloc(1, sizeof *c);
    if (!g || !c) {
        free(g);
        free(c);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    pthread_mutex_init(&c->lock, NULL);
    rc = ctx_activate(c, dev, 0, 0);
    if (rc) {
        free(g);
        free(c);
        return rc;
    }
    g->magic = M_GREEN;
    g->ctx = c;
    *phCtx = g;
    return CUDA_SUCCESS;
}

CUresult sim_cuCtxFromGreenCtx(CUcontext *pContext, CUgreenCtx hCtx)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!pContext || !hCtx || hCtx->magic != M_GREEN)
        return CUDA_ERROR_INVALID_VALUE;
    *pContext = hCtx->ctx;
    return CUDA_SUCCESS;
}

static void ctx_forget_on_this_thread(struct CUctx_st *c);

CUresult sim_cuGreenCtxDestroy(CUgreenCtx hCtx)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!hCtx || hCtx->magic != M_GREEN)
        return CUDA_ERROR_INVALID_VALUE;
    ctx_deactivate(hCtx->ctx);
    ctx_forget_on_this_thread(hCtx->ctx);
    hCtx->magic = M_DEAD; /* both structs stay allocated: stale handles answer an error */
    return CUDA_SUCCESS;
}

static void ctx_forget_on_this_thread(struct CUctx_st *c)
{
    int j = 0;
    for (int i = 0; i < ctx_depth; i++)
        if (ctx_stack[i] != c)
            ctx_stack[j++] = ctx_stack[i];
    ctx_depth = j;
}

CUresult sim_cuCtxDestroy_v2(CUcontext ctx)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!ctx || ctx->magic != M_CTX)
        return CUDA_ERROR_INVALID_VALUE;
    if (ctx->primary)
        return CUDA_ERROR_INVALID_CONTEXT;
    if (!ctx->active)
        return CUDA_ERROR_CONTEXT_IS_DESTROYED;
    ctx_deactivate(ctx);
    ctx_forget_on_this_thread(ctx);
    /* The struct stays allocated (marked inactive) so stale handles held by other threads
     * are answered with CUDA_ERROR_CONTEXT_IS_DESTROYED instead of touching freed memory. */
    return CUDA_SUCCESS;
}

CUresult sim_cuCtxPushCurrent_v2(CUcontext ctx)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!sim_ctx_ok(ctx))
        return CUDA_ERROR_INVALID_CONTEXT;
    if (ctx_depth >= CTX_STACK_MAX)
        return CUDA_ERROR_INVALID_VALUE;
    ctx_stack[ctx_depth++] = ctx;
    return CUDA_SUCCESS;
}

CUresult sim_cuCtxPopCurrent_v2(CUcontext *pctx)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (ctx_depth == 0)
        return CUDA_ERROR_INVALID_CONTEXT;
    struct CUctx_st *c = ctx_stack[--ctx_depth];
    if (pctx)
        *pctx = c;
    return CUDA_SUCCESS;
}

CUresult sim_cuCtxSetCurrent(CUcontext ctx)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!ctx) {
        if (ctx_depth > 0)
            ctx_depth--;
        return CUDA_SUCCESS;
    }
    if (!sim_ctx_ok(ctx))
        return CUDA_ERROR_INVALID_CONTEXT;
    if (ctx_depth == 0)
        ctx_depth = 1;
    ctx_stack[ctx_depth - 1] = ctx;
    return CUDA_SUCCESS;
}

CUresult sim_cuCtxGetCurrent(CUcontext *pctx)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!pctx)
        return CUDA_ERROR_INVALID_VALUE;
    *pctx = ctx_depth > 0 ? ctx_stack[ctx_depth - 1] : NULL;
    return CUDA_SUCCESS;
}

CUresult sim_cuCtxGetDevice(CUdevice *device)
{
    struct CUctx_st *c;
    CUresult rc = sim_current_ctx(&c);
    if (rc)
        return rc;
    if (!device)
        return CUDA_ERROR_INVALID_VALUE;
    *device = c->device;
    return CUDA_SUCCESS;
}

CUresult sim_cuCtxGetFlags(unsigned int *flags)
{
    struct CUctx_st *c;
    CUresult rc = sim_current_ctx(&c);
    if (rc)
        return rc;
    if (!flags)
        return CUDA_ERROR_INVALID_VALUE;
    *flags = c->flags;
    return CUDA_SUCCESS;
}

CUresult sim_cuCtxSetFlags(unsigned int flags)
{
    struct CUctx_st *c;
    CUresult rc = sim_current_ctx(&c);
    if (rc)
        return rc;
    if (flags & ~(unsigned)CU_CTX_FLAGS_MASK)
        return CUDA_ERROR_INVALID_VALUE;
    c->flags = flags;
    return CUDA_SUCCESS;
}

CUresult sim_cuCtxGetId(CUcontext ctx, unsigned long long *ctxId)
{
    CUresult rc = CUDA_SUCCESS;
    if (!ctx)
        rc = sim_current_ctx(&ctx);
    else if (sim_check_init())
        rc = sim_check_init();
    else if (!sim_ctx_ok(ctx))
        rc = CUDA_ERROR_INVALID_CONTEXT;
    if (rc)
        return rc;
    if (!ctxId)
        return CUDA_ERROR_INVALID_VALUE;
    *ctxId = ctx->id;
    return CUDA_SUCCESS;
}

CUresult sim_cuCtxSynchronize(void)
{
    struct CUctx_st *c;
    CUresult rc = sim_current_ctx(&c);
    if (rc)
        return rc;
    if ((rc = sim_capture_unsafe()) != CUDA_SUCCESS)
        return rc; /* unsafe while a capture is open (exec.c) */
    sim_wait_device(sim_ctx_tail(c));
    sim_pools_release();
    return CUDA_SUCCESS;
}

CUresult sim_cuCtxGetApiVersion(CUcontext ctx, unsigned int *version)
{
    CUresult rc = CUDA_SUCCESS;
    if (!ctx)
        rc = sim_current_ctx(&ctx);
    else if (!sim_ctx_ok(ctx))
        rc = CUDA_ERROR_INVALID_CONTEXT;
    if (rc)
        return rc;
    if (!version)
        return CUDA_ERROR_INVALID_VALUE;
    *version = 3020;
    return CUDA_SUCCESS;
}

CUresult sim_cuCtxGetLimit(size_t *pvalue, CUlimit limit)
{
    struct CUctx_st *c;
    CUresult rc = sim_current_ctx(&c);
    if (rc)
        return rc;
    if (!pvalue || (int)limit < 0 || (int)limit > 6)
        return CUDA_ERROR_INVALID_VALUE;
    *pvalue = c->limit[limit];
    return CUDA_SUCCESS;
}

/* Device bytes a limit's value costs the context, as the real driver backs it: the stack of
 * every thread that can be resident (2048 per SM on compute capability 9.0), the device
 * malloc heap and the printf FIFO themselves. The other limits cost nothing here. */
static uint64_t limit_cost(CUlimit limit, size_t value)
{
    switch ((int)limit) {
    case 0: /* CU_LIMIT_STACK_SIZE */
        return (uint64_t)value * (uint64_t)sim_proc.h.cfg.sm_count * 2048u;
    case 1: /* CU_LIMIT_PRINTF_FIFO_SIZE */
    case 2: /* CU_LIMIT_MALLOC_HEAP_SIZE */
        return value;
    default:
        return 0;
    }
}

/* Growing the stack, heap or printf FIFO grows the context's memory (charged to the card,
 * CUDA_ERROR_OUT_OF_MEMORY when it does not fit); shrinking gives the difference back. */
CUresult sim_cuCtxSetLimit(CUlimit limit, size_t value)
{
    struct CUctx_st *c;
    CUresult rc = sim_current_ctx(&c);
    if (rc)
        return rc;
    if ((int)limit < 0 || (int)limit > 6)
        return CUDA_ERROR_INVALID_VALUE;
    uint64_t was = limit_cost(limit, c->limit[limit]), now = limit_cost(limit, value);
    if (now > was) {
        if (sim_mem_reserve(&sim_proc.h, c->device, now - was) != 0)
            return CUDA_ERROR_OUT_OF_MEMORY;
        c->footprint += now - was;
    } else if (was > now) {
        sim_mem_release(&sim_proc.h, c->device, was - now);
        c->footprint -= was - now;
    }
    c->limit[limit] = value;
    return CUDA_SUCCESS;
}

CUresult sim_cuCtxGetCacheConfig(CUfunc_cache *pconfig)
{
    struct CUctx_st *c;
    CUresult rc = sim_current_ctx(&c);
    if (rc)
        return rc;
    if (!pconfig)
        return CUDA_ERROR_INVALID_VALUE;
    *pconfig = CU_FUNC_CACHE_PREFER_NONE;
    return CUDA_SUCCESS;
}

CUresult sim_cuCtxSetCacheConfig(CUfunc_cache config)
{
    struct CUctx_st *c;
    CUresult rc = sim_current_ctx(&c);
    if (rc)
        return rc;
    return ((int)config < 0 || (int)config > 3) ? CUDA_ERROR_INVALID_VALUE : CUDA_SUCCESS;
}

CUresult sim_cuCtxGetStreamPriorityRange(int *leastPriority, int *greatestPriority)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (leastPriority)
        *leastPriority = 0;
    if (greatestPriority)
        *greatestPriority = -5;
    return CUDA_SUCCESS;
}

/* ---------------------------------------------------------------- primary contexts */

CUresult sim_cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev)
{
    CUresult rc = sim_check_device(dev);
    if (rc)
        return rc;
    if (!pctx)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&sim_proc.lock);
    struct CUctx_st *c = sim_proc.primary[dev];
    if (!c) {
        c = calloc(1, sizeof *c);
        if (!c) {
            pthread_mutex_unlock(&sim_proc.lock);
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        pthread_mutex_init(&c->lock, NULL);
        c->magic = M_CTX;
        c->device = dev;
        c->primary = 1;
        sim_proc.primary[dev] = c;
    }
    if (!c->active) {
        rc = ctx_activate(c, dev, sim_proc.primary_flags[dev], 1);
        if (rc) {
            pthread_mutex_unlock(&sim_proc.lock);
            return rc;
        }
    }
    sim_proc.primary_refs[dev]++;
    pthread_mutex_unlock(&sim_proc.lock);
    *pctx = c;
    return CUDA_SUCCESS;
}

CUresult sim_cuDevicePrimaryCtxRelease_v2(CUdevice dev)
{
    CUresult rc = sim_check_device(dev);
    if (rc)
        return rc;
    pthread_mutex_lock(&sim_proc.lock);
    struct CUctx_st *c = sim_proc.primary[dev];
    if (!c || !c->active || sim_proc.primary_refs[dev] <= 0) {
        pthread_mutex_unlock(&sim_proc.lock);
        return CUDA_ERROR_INVALID_CONTEXT;
    }
    if (--sim_proc.primary_refs[dev] == 0)
        ctx_deactivate(c);
    pthread_mutex_unlock(&sim_proc.lock);
    return CUDA_SUCCESS;
}

CUresult sim_cuDevicePrimaryCtxReset_v2(CUdevice dev)
{
    CUresult rc = sim_check_device(dev);
    if (rc)
        return rc;
    pthread_mutex_lock(&sim_proc.lock);
    struct CUctx_st *c = sim_proc.primary[dev];
    if (c && c->active)
        ctx_deactivate(c);
    sim_proc.primary_refs[dev] = 0;
    sim_proc.primary_flags[dev] = 0;
    pthread_mutex_unlock(&sim_proc.lock);
    return CUDA_SUCCESS;
}

CUresult sim_cuDevicePrimaryCtxGetState(CUdevice dev, unsigned int *flags, int *active)
{
    CUresult rc = sim_check_device(dev);
    if (rc)
        return rc;
    if (!flags || !active)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&sim_proc.lock);
    struct CUctx_st *c = sim_proc.primary[dev];
    *flags = sim_proc.primary_flags[dev];
    *active = (c && c->active) ? 1 : 0;
    pthread_mutex_unlock(&sim_proc.lock);
    return CUDA_SUCCESS;
}

CUresult sim_cuDevicePrimaryCtxSetFlags_v2(CUdevice dev, unsigned int flags)
{
    CUresult rc = sim_check_device(dev);
    if (rc)
        return rc;
    if (flags & ~(unsigned)CU_CTX_FLAGS_MASK)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&sim_proc.lock);
    sim_proc.primary_flags[dev] = flags;
    if (sim_proc.primary[dev])
        sim_proc.primary[dev]->flags = flags;
    pthread_mutex_unlock(&sim_proc.lock);
    return CUDA_SUCCESS;
}

CUresult sim_cuCtxGetDevice_v2(CUdevice *device, CUcontext ctx)
{
    if (!ctx)
        return sim_cuCtxGetDevice(device);
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!sim_ctx_ok(ctx))
        return CUDA_ERROR_INVALID_CONTEXT;
    if (!device)
        return CUDA_ERROR_INVALID_VALUE;
    *device = ctx->device;
    return CUDA_SUCCESS;
}

CUresult sim_cuCtxSynchronize_v2(CUcontext ctx)
{
    if (!ctx)
        return sim_cuCtxSynchronize();
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!sim_ctx_ok(ctx))
        return CUDA_ERROR_INVALID_CONTEXT;
    if ((rc = sim_capture_unsafe()) != CUDA_SUCCESS)
        return rc;
    sim_wait_device(sim_ctx_tail(ctx));
    sim_pools_release();
    return CUDA_SUCCESS;
}
