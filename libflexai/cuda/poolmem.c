/* Stream-ordered pools: what a pool reserves is charged, not what is allocated from it.
 *
 * cuMemFreeAsync returns memory to its pool, and the pool keeps it (at the next
 * synchronisation it gives back only what passes its release threshold: PyTorch's
 * cudaMallocAsync backend sets UINT64_MAX, XLA the pool's size; RMM primes a pool by allocating
 * and freeing), so a slice pays for each pool's reserve as the driver reports it
 * (CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT). Before an allocation, what it can add to its pool's
 * reserve (used + size - reserved, when positive) is reserved from the slice, and the
 * allocation is refused with CUDA_ERROR_OUT_OF_MEMORY when that does not fit; after it, and
 * after cuMemPoolTrimTo, cuMemPoolSetAttribute and cuMemPoolDestroy, the charge is settled to
 * the driver's count. What a pool gives back at a synchronisation (not intercepted) is settled
 * at the next call on that pool, and before any allocation of the slice is refused
 * (flexai_pools_settle). A captured allocation is a graph node (graphmem.c).
 */
#include "flexai.h"

#define POOL_ATTR_RESERVED_MEM_CURRENT 5
#define POOL_ATTR_USED_MEM_CURRENT 7
#define POOLS 64 /* pools tracked (more: allocations from them are charged one by one) */

static struct {
    pthread_mutex_t lock;
    struct { CUmemoryPool pool; int64_t charged; } t[POOLS];
    CUresult (*get_attr)(CUmemoryPool, int, void *);
    CUresult (*dev_pool)(CUmemoryPool *, CUdevice);
} PM = {PTHREAD_MUTEX_INITIALIZER, {{0, 0}}, 0, 0};

static int npools; /* slots ever used: 0 means no pool to settle */

static int query(CUmemoryPool p, int64_t *reserved, int64_t *used)
{
    if (!PM.get_attr)
        *(void **)&PM.get_attr = flexai_driver_sym(FLEXAI_LIB_CUDA, "cuMemPoolGetAttribute");
    cuuint64_t r = 0, u = 0;
    if (!PM.get_attr || PM.get_attr(p, POOL_ATTR_RESERVED_MEM_CURRENT, &r) != CUDA_SUCCESS ||
        (used && PM.get_attr(p, POOL_ATTR_USED_MEM_CURRENT, &u) != CUDA_SUCCESS))
        return -1;
    *reserved = (int64_t)r;
    if (used)
        *used = (int64_t)u;
    return 0;
}

/* Caller holds PM.lock. */
static int slot_of(CUmemoryPool p, int add)
{
    int free_slot = -1;
    for (int i = 0; i < POOLS; i++) {
        if (PM.t[i].pool == p)
            return i;
        if (!PM.t[i].pool && free_slot < 0)
            free_slot = i;
    }
    if (!add || free_slot < 0)
        return -1;
    PM.t[free_slot].pool = p;
    PM.t[free_slot].charged = 0;
    if (free_slot >= npools)
        __atomic_store_n(&npools, free_slot + 1, __ATOMIC_RELEASE);
    return free_slot;
}

/* The charge of slot i to its pool's reserve; 1 when something was given back. Caller holds
 * PM.lock. A growth that does not fit stays uncharged (and the next allocation is refused). */
static int settle_slot(int i)
{
    int64_t reserved;
    if (query(PM.t[i].pool, &reserved, NULL) != 0)
        return 0;
    int64_t delta = reserved - PM.t[i].charged;
    if (delta > 0) {
        if (flexai_reserve(delta) > 0)
            PM.t[i].charged += delta;
    } else if (delta < 0) {
        flexai_unreserve(-delta);
        PM.t[i].charged = reserved;
        return 1;
    }
    return 0;
}

int flexai_pools_settle(void)
{
    if (!__atomic_load_n(&npools, __ATOMIC_ACQUIRE))
        return 0;
    int gave = 0;
    pthread_mutex_lock(&PM.lock);
    for (int i = 0; i < POOLS; i++)
        if (PM.t[i].pool)
            gave |= settle_slot(i);
    pthread_mutex_unlock(&PM.lock);
    return gave;
}

static CUmemoryPool current_pool(void)
{
    if (!PM.dev_pool)
        *(void **)&PM.dev_pool = flexai_driver_sym(FLEXAI_LIB_CUDA, "cuDeviceGetMemPool");
    CUdevice dev;
    CUmemoryPool p = NULL;
    if (!PM.dev_pool || flexai_cu_device(&dev) != 0 || PM.dev_pool(&p, dev) != CUDA_SUCCESS)
        return NULL;
    return p;
}

/* Before an allocation of `bytes` from `pool`: reserves what it can add to the pool's reserve.
 * 1: go (settle after), 0: the pool cannot be followed (charge the allocation itself), -1: no
 * room in the slice. */
static int before(CUmemoryPool pool, size_t bytes)
{
    if (!pool)
        return 0;
    int rc = 1;
    pthread_mutex_lock(&PM.lock);
    int i = slot_of(pool, 1);
    int64_t reserved, used;
    if (i < 0 || query(pool, &reserved, &used) != 0) {
        pthread_mutex_unlock(&PM.lock);
        return 0;
    }
    settle_slot(i); /* what a synchronisation gave back */
    int64_t grow = used + (int64_t)bytes - reserved;
    if (grow > 0) {
        int c = flexai_reserve(grow);
        if (c < 0) {
            /* other pools may hold what a synchronisation released: settle them, then retry */
            for (int j = 0; j < POOLS; j++)
                if (j != i && PM.t[j].pool)
                    settle_slot(j);
            c = flexai_reserve(grow);
        }
        if (c < 0)
            rc = -1;
        else if (c > 0)
            PM.t[i].charged += grow;
    }
    pthread_mutex_unlock(&PM.lock);
    return rc;
}

static void after(CUmemoryPool pool)
{
    pthread_mutex_lock(&PM.lock);
    int i = slot_of(pool, 0);
    if (i >= 0)
        settle_slot(i);
    pthread_mutex_unlock(&PM.lock);
}

/* One allocation charged by itself (a pool that cannot be followed), as memory.c does. */
static CUresult single(CUdeviceptr *dptr, size_t bytes, CUresult rc_of_call, int charged)
{
    if (charged <= 0)
        return rc_of_call;
    if (rc_of_call != CUDA_SUCCESS)
        flexai_unreserve((int64_t)bytes);
    else
        (void)flexai_sizemap_put(FLEXAI_PTR, (uint64_t)*dptr, (int64_t)bytes);
    return rc_of_call;
}

#define POOL_ALLOC_WRAPPER(name, poolexpr, ptsz, call)                                       \
    {                                                                                        \
        __typeof__(&name) real = REAL(name);                                                 \
        if (!real)                                                                           \
            return CUDA_ERROR_NOT_INITIALIZED;                                               \
        if (!flexai_enforcing() || flexai_graphmem_captured(hStream, ptsz, bytesize))        \
            return call; /* a captured allocation is a graph node (graphmem.c) */            \
        FLEXAI_CTX_FIRST_USE();                                                              \
        CUmemoryPool p = (poolexpr);                                                         \
        int go = before(p, bytesize);                                                        \
        if (go < 0)                                                                          \
            return CUDA_ERROR_OUT_OF_MEMORY;                                                 \
        if (go > 0) {                                                                        \
            CUresult rc = call;                                                              \
            after(p);                                                                        \
            return rc;                                                                       \
        }                                                                                    \
        int charged = flexai_reserve((int64_t)bytesize);                                     \
        if (charged < 0)                                                                     \
            return CUDA_ERROR_OUT_OF_MEMORY;                                                 \
        return single(dptr, bytesize, call, charged);                                        \
    }

CUresult fx_cuMemAllocAsync(CUdeviceptr *dptr, size_t bytesize, CUstream hStream)
POOL_ALLOC_WRAPPER(cuMemAllocAsync, current_pool(), 0, real(dptr, bytesize, hStream))
FLEXAI_ALIAS(cuMemAllocAsync);

CUresult fx_cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUstream hStream)
POOL_ALLOC_WRAPPER(cuMemAllocAsync_ptsz, current_pool(), 1, real(dptr, bytesize, hStream))
FLEXAI_ALIAS(cuMemAllocAsync_ptsz);

CUresult fx_cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool,
                                    CUstream hStream)
POOL_ALLOC_WRAPPER(cuMemAllocFromPoolAsync, pool, 0, real(dptr, bytesize, pool, hStream))
FLEXAI_ALIAS(cuMemAllocFromPoolAsync);

CUresult fx_cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool,
                                         CUstream hStream)
POOL_ALLOC_WRAPPER(cuMemAllocFromPoolAsync_ptsz, pool, 1, real(dptr, bytesize, pool, hStream))
FLEXAI_ALIAS(cuMemAllocFromPoolAsync_ptsz);

#define POOL_SETTLING_WRAPPER(name, pool, call)                                              \
    {                                                                                        \
        __typeof__(&name) real = REAL(name);                                                 \
        if (!real)                                                                           \
            return CUDA_ERROR_NOT_INITIALIZED;                                               \
        if (!flexai_enforcing())                                                             \
            return call;                                                                     \
        CUresult rc = call;                                                                  \
        if (rc == CUDA_SUCCESS) {                                                            \
            pthread_mutex_lock(&PM.lock);                                                    \
            int i = slot_of(pool, 0);                                                        \
            if (i >= 0)                                                                      \
                settle_slot(i);                                                              \
            pthread_mutex_unlock(&PM.lock);                                                  \
        }                                                                                    \
        return rc;                                                                           \
    }

CUresult fx_cuMemPoolTrimTo(CUmemoryPool pool, size_t minBytesToKeep)
POOL_SETTLING_WRAPPER(cuMemPoolTrimTo, pool, real(pool, minBytesToKeep))
FLEXAI_ALIAS(cuMemPoolTrimTo);

CUresult fx_cuMemPoolSetAttribute(CUmemoryPool pool, int attr, void *value)
POOL_SETTLING_WRAPPER(cuMemPoolSetAttribute, pool, real(pool, attr, value))
FLEXAI_ALIAS(cuMemPoolSetAttribute);

/* A destroyed pool gives back what it kept; allocations still outstanding stay charged (until
 * the process exits: their pool can no longer be asked). */
CUresult fx_cuMemPoolDestroy(CUmemoryPool pool)
{
    __typeof__(&cuMemPoolDestroy) real = REAL(cuMemPoolDestroy);
    if (!real)
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!flexai_enforcing())
        return real(pool);
    pthread_mutex_lock(&PM.lock);
    int64_t reserved, used = -1;
    int i = slot_of(pool, 0);
    if (i >= 0 && query(pool, &reserved, &used) != 0)
        used = -1;
    CUresult rc = real(pool);
    if (rc == CUDA_SUCCESS && i >= 0) {
        if (used >= 0 && used < PM.t[i].charged)
            flexai_unreserve(PM.t[i].charged - used);
        PM.t[i].pool = NULL;
    }
    pthread_mutex_unlock(&PM.lock);
    return rc;
}
FLEXAI_ALIAS(cuMemPoolDestroy);
