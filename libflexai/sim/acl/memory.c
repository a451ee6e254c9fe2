/* Simulated libascendcl: device memory. Every device byte is charged to the card in the
 * host-wide simulator state before it is handed out, so processes (and the CUDA simulator)
 * share each card's budget; a process that dies has its charges reclaimed by the next one. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "simacl.h"

static uint64_t round_up(uint64_t v, uint64_t to)
{
    return (v + to - 1) / to * to;
}

aclError acl_charge(int device, uint64_t bytes)
{
    if (sim_mem_reserve(&acl_proc.h, device, bytes) == 0)
        return ACL_SUCCESS;
    uint64_t total = acl_proc.h.cfg.card[device].memory, used = sim_mem_used(&acl_proc.h, device);
    return acl_err(ACL_ERROR_RT_MEMORY_ALLOCATION,
                   "out of memory on device %d: %llu bytes requested, %llu of %llu free", device,
                   (unsigned long long)bytes, (unsigned long long)(used < total ? total - used : 0),
                   (unsigned long long)total);
}

void acl_uncharge(int device, uint64_t bytes)
{
    if (bytes)
        sim_mem_release(&acl_proc.h, device, bytes);
}

/* ---------------------------------------------------------------- allocation table */

static int table_add(struct acl_alloc *a)
{
    if (acl_proc.nallocs == acl_proc.capallocs) {
        size_t cap = acl_proc.capallocs ? acl_proc.capallocs * 2 : 64;
        struct acl_alloc **n = realloc(acl_proc.allocs, cap * sizeof *n);
        if (!n)
            return -1;
        acl_proc.allocs = n;
        acl_proc.capallocs = cap;
    }
    acl_proc.allocs[acl_proc.nallocs++] = a;
    return 0;
}

static struct acl_alloc *table_take(size_t i)
{
    struct acl_alloc *a = acl_proc.allocs[i];
    acl_proc.allocs[i] = acl_proc.allocs[--acl_proc.nallocs];
    return a;
}

static long table_find_base(uintptr_t base, int kind)
{
    for (size_t i = acl_proc.nallocs; i-- > 0;)
        if (acl_proc.allocs[i]->base == base && acl_proc.allocs[i]->kind == kind)
            return (long)i;
    return -1;
}

/* Is [p, p+len) inside device memory this process can address? */
static int device_range(const void *p, size_t len)
{
    uintptr_t a = (uintptr_t)p;
    for (size_t i = 0; i < acl_proc.nallocs; i++) {
        struct acl_alloc *x = acl_proc.allocs[i];
        if ((x->kind == K_DEVICE || x->kind == K_MAP) && a >= x->base && a - x->base <= x->size &&
            len <= x->size - (a - x->base))
            return 1;
    }
    return 0;
}

static void drop(struct acl_alloc *a)
{
    if (a->kind != K_MAP && a->map_len)
        munmap((void *)a->base, a->map_len);
    acl_uncharge(a->device, a->charged);
    free(a);
}

void acl_free_ctx_allocs(struct acl_ctx *c)
{
    for (size_t i = acl_proc.nallocs; i-- > 0;)
        if (acl_proc.allocs[i]->kind == K_DEVICE && acl_proc.allocs[i]->ctx == c)
            drop(table_take(i));
}

void acl_free_all(void)
{
    while (acl_proc.nallocs)
        drop(table_take(acl_proc.nallocs - 1));
}

/* ---------------------------------------------------------------- aclrtMalloc family */

static aclError device_malloc(void **devPtr, size_t size, int device, uint64_t charge, const char *what)
{
    if (!devPtr || size == 0)
        return acl_err(ACL_ERROR_INVALID_PARAM, "%s: %s", what, devPtr ? "size is 0" : "null devPtr");
    struct acl_ctx *c;
    aclError rc = acl_current(&c);
    if (rc)
        return rc;
    if (device < 0)
        device = c->device;
    else if (device >= acl_proc.h.cfg.ncards)
        return acl_err(ACL_ERROR_RT_INVALID_DEVICEID, "%s: device id %d is out of range", what, device);
    struct acl_alloc *a = calloc(1, sizeof *a);
    if (!a)
        return acl_err(ACL_ERROR_BAD_ALLOC, "out of host memory");
    pthread_mutex_lock(&acl_proc.lock);
    rc = acl_charge(device, charge);
    if (rc) {
        pthread_mutex_unlock(&acl_proc.lock);
        free(a);
        return rc;
    }
    size_t len = (size_t)round_up(size, (uint64_t)sysconf(_SC_PAGESIZE));
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
        acl_uncharge(device, charge);
        pthread_mutex_unlock(&acl_proc.lock);
        free(a);
        return acl_err(ACL_ERROR_RT_MEMORY_ALLOCATION, "%s: cannot back %zu bytes (%s)", what, size,
                       strerror(errno));
    }
    *a = (struct acl_alloc){ .base = (uintptr_t)p, .size = size, .map_len = len, .charged = charge,
                             .device = device, .kind = K_DEVICE, .ctx = c };
    if (table_add(a) != 0) {
        drop(a);
        pthread_mutex_unlock(&acl_proc.lock);
        return acl_err(ACL_ERROR_BAD_ALLOC, "out of host memory");
    }
    pthread_mutex_unlock(&acl_proc.lock);
    *devPtr = p;
    return ACL_SUCCESS;
}

/* CANN rounds an aclrtMalloc request up to 32 bytes and adds 32 more; aclrtMallocAlign32
 * only rounds. The simulator charges the card the same. */
aclError aclrtMalloc(void **devPtr, size_t size, aclrtMemMallocPolicy policy)
{
    (void)policy;
    return device_malloc(devPtr, size, -1, round_up(size, 32) + 32, "aclrtMalloc");
}

aclError aclrtMallocAlign32(void **devPtr, size_t size, aclrtMemMallocPolicy policy)
{
    (void)policy;
    return device_malloc(devPtr, size, -1, round_up(size, 32), "aclrtMallocAlign32");
}

aclError aclrtMallocCached(void **devPtr, size_t size, aclrtMemMallocPolicy policy)
{
    (void)policy;
    return device_malloc(devPtr, size, -1, round_up(size, 32) + 32, "aclrtMallocCached");
}

/* The exported entry points never call each other (a preloaded interposer would see the inner
 * call too): they share these helpers. */
static aclError malloc_with_cfg(void **devPtr, size_t size, aclrtMallocConfig *cfg, const char *what)
{
    int device = -1;
    if (cfg) {
        if (cfg->numAttrs && !cfg->attrs)
            return acl_err(ACL_ERROR_INVALID_PARAM, "aclrtMallocWithCfg: numAttrs without attrs");
        for (size_t i = 0; i < cfg->numAttrs; i++)
            if (cfg->attrs[i].attr == ACL_RT_MEM_ATTR_DEVICE_ID)
                device = (int)cfg->attrs[i].value.deviceId;
    }
    return device_malloc(devPtr, size, device, round_up(size, 32) + 32, what);
}

aclError aclrtMallocWithCfg(void **devPtr, size_t size, aclrtMemMallocPolicy policy, aclrtMallocConfig *cfg)
{
    (void)policy;
    return malloc_with_cfg(devPtr, size, cfg, "aclrtMallocWithCfg");
}

/* Memory the task scheduler reads (CANN: aclrtMallocForTaskScheduler): device memory charged
 * like aclrtMallocWithCfg. */
aclError aclrtMallocForTaskScheduler(void **devPtr, size_t size, aclrtMemMallocPolicy policy, aclrtMallocConfig *cfg)
{
    (void)policy;
    return malloc_with_cfg(devPtr, size, cfg, "aclrtMallocForTaskScheduler");
}

/* DVPP (media) memory: device memory of the current device. CANN rounds the size up to 32 bytes
 * and adds 32, as for aclrtMalloc; the simulator charges the card the same. acldvppFree frees it. */
aclError acldvppMalloc(void **devPtr, size_t size)
{
    return device_malloc(devPtr, size, -1, round_up(size, 32) + 32, "acldvppMalloc");
}

static aclError free_device(void *devPtr, const char *what)
{
    if (!devPtr)
        return acl_err(ACL_ERROR_INVALID_PARAM, "%s: null devPtr", what);
    aclError rc = acl_check_init();
    if (rc)
        return rc;
    pthread_mutex_lock(&acl_proc.lock);
    long i = table_find_base((uintptr_t)devPtr, K_DEVICE);
    if (i < 0) {
        pthread_mutex_unlock(&acl_proc.lock);
        return acl_err(ACL_ERROR_RT_PARAM_INVALID, "%s: %p is not device memory from aclrtMalloc", what,
                       devPtr);
    }
    drop(table_take((size_t)i));
    pthread_mutex_unlock(&acl_proc.lock);
    return ACL_SUCCESS;
}

aclError aclrtFree(void *devPtr)
{
    return free_device(devPtr, "aclrtFree");
}

aclError acldvppFree(void *devPtr)
{
    return free_device(devPtr, "acldvppFree");
}

aclError aclrtMallocHost(void **hostPtr, size_t size)
{
    if (!hostPtr || size == 0)
        return acl_err(ACL_ERROR_INVALID_PARAM, "aclrtMallocHost: %s", hostPtr ? "size is 0" : "null hostPtr");
    aclError rc = acl_check_init();
    if (rc)
        return rc;
    void *p = NULL;
    if (posix_memalign(&p, 64, size) != 0)
        return acl_err(ACL_ERROR_BAD_ALLOC, "aclrtMallocHost: out of host memory");
    *hostPtr = p;
    return ACL_SUCCESS;
}

aclError aclrtFreeHost(void *hostPtr)
{
    if (!hostPtr)
        return acl_err(ACL_ERROR_INVALID_PARAM, "aclrtFreeHost: null hostPtr");
    free(hostPtr);
    return ACL_SUCCESS;
}

/* ---------------------------------------------------------------- physical memory (VMM) */

aclError aclrtMemGetAllocationGranularity(aclrtPhysicalMemProp *prop, aclrtMemGranularityOptions option,
                                          size_t *granularity)
{
    (void)option;
    if (!prop || !granularity)
        return acl_err(ACL_ERROR_INVALID_PARAM, "aclrtMemGetAllocationGranularity: null argument");
    *granularity = ACL_SIM_GRANULARITY;
    return ACL_SUCCESS;
}

aclError aclrtMallocPhysical(aclrtDrvMemHandle *handle, size_t size, const aclrtPhysicalMemProp *prop,
                             uint64_t flags)
{
    if (!handle || !prop || size == 0 || flags != 0)
        return acl_err(ACL_ERROR_INVALID_PARAM, "aclrtMallocPhysical: bad argument");
    aclError rc = acl_check_init();
    if (rc)
        return rc;
    if (size % ACL_SIM_GRANULARITY)
        return acl_err(ACL_ERROR_INVALID_PARAM, "aclrtMallocPhysical: size %zu is not a multiple of the "
                       "granularity %llu", size, (unsigned long long)ACL_SIM_GRANULARITY);
    if (prop->location.type != ACL_MEM_LOCATION_TYPE_DEVICE)
        return acl_err(ACL_ERROR_INVALID_PARAM, "aclrtMallocPhysical: location must be a device");
    int device = (int)prop->location.id;
    if (device < 0 || device >= acl_proc.h.cfg.ncards)
        return acl_err(ACL_ERROR_RT_INVALID_DEVICEID, "aclrtMallocPhysical: device id %d is out of range",
                       device);
    struct acl_phys *ph = calloc(1, sizeof *ph);
    if (!ph)
        return acl_err(ACL_ERROR_BAD_ALLOC, "out of host memory");
    pthread_mutex_lock(&acl_proc.lock);
    rc = acl_charge(device, size);
    pthread_mutex_unlock(&acl_proc.lock);
    if (rc) {
        free(ph);
        return rc;
    }
    ph->fd = memfd_create("flexai-acl-physical", MFD_CLOEXEC);
    if (ph->fd < 0 || ftruncate(ph->fd, (off_t)size) != 0) {
        if (ph->fd >= 0)
            close(ph->fd);
        free(ph);
        pthread_mutex_lock(&acl_proc.lock);
        acl_uncharge(device, size);
        pthread_mutex_unlock(&acl_proc.lock);
        return acl_err(ACL_ERROR_RT_MEMORY_ALLOCATION, "aclrtMallocPhysical: cannot back %zu bytes", size);
    }
    ph->device = device;
    ph->size = size;
    ph->magic = A_PHYS;
    *handle = ph;
    return ACL_SUCCESS;
}

aclError aclrtFreePhysical(aclrtDrvMemHandle handle)
{
    struct acl_phys *ph = handle;
    if (!ph || ph->magic != A_PHYS)
        return acl_err(ACL_ERROR_INVALID_PARAM, "aclrtFreePhysical: not a live physical memory handle");
    aclError rc = acl_check_init();
    if (rc)
        return rc;
    pthread_mutex_lock(&acl_proc.lock);
    ph->magic = A_DEAD;
    acl_uncharge(ph->device, ph->size);
    pthread_mutex_unlock(&acl_proc.lock);
    close(ph->fd); /* mappings keep their pages until unmapped */
    free(ph);
    return ACL_SUCCESS;
}

aclError aclrtReserveMemAddress(void **virPtr, size_t size, size_t alignment, void *expectPtr, uint64_t flags)
{
    (void)expectPtr;
    if (!virPtr || size == 0 || size % ACL_SIM_GRANULARITY || flags > 1)
        return acl_err(ACL_ERROR_INVALID_PARAM, "aclrtReserveMemAddress: bad argument");
    aclError rc = acl_check_init();
    if (rc)
        return rc;
    size_t align = alignment > ACL_SIM_GRANULARITY ? alignment : ACL_SIM_GRANULARITY;
    size_t len = size + align;
    void *p = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        return acl_err(ACL_ERROR_RT_MEMORY_ALLOCATION, "aclrtReserveMemAddress: no address space");
    uintptr_t base = round_up((uintptr_t)p, align);
    if (base > (uintptr_t)p)
        munmap(p, base - (uintptr_t)p);
    if ((uintptr_t)p + len > base + size)
        munmap((void *)(base + size), (uintptr_t)p + len - (base + size));
    struct acl_alloc *a = calloc(1, sizeof *a);
    if (!a) {
        munmap((void *)base, size);
        return acl_err(ACL_ERROR_BAD_ALLOC, "out of host memory");
    }
    *a = (struct acl_alloc){ .base = base, .size = size, .map_len = size, .kind = K_RESERVE };
    pthread_mutex_lock(&acl_proc.lock);
    int bad = table_add(a);
    pthread_mutex_unlock(&acl_proc.lock);
    if (bad) {
        munmap((void *)base, size);
        free(a);
        return acl_err(ACL_ERROR_BAD_ALLOC, "out of host memory");
    }
    *virPtr = (void *)base;
    return ACL_SUCCESS;
}

aclError aclrtReleaseMemAddress(void *virPtr)
{
    aclError rc = acl_check_init();
    if (rc)
        return rc;
    pthread_mutex_lock(&acl_proc.lock);
    long i = table_find_base((uintptr_t)virPtr, K_RESERVE);
    if (i < 0) {
        pthread_mutex_unlock(&acl_proc.lock);
        return acl_err(ACL_ERROR_INVALID_PARAM, "aclrtReleaseMemAddress: %p is not a reservation", virPtr);
    }
    struct acl_alloc *r = table_take((size_t)i);
    for (size_t j = acl_proc.nallocs; j-- > 0;) {
        struct acl_alloc *m = acl_proc.allocs[j];
        if (m->kind == K_MAP && m->base >= r->base && m->base < r->base + r->size)
            free(table_take(j));
    }
    drop(r);
    pthread_mutex_unlock(&acl_proc.lock);
    return ACL_SUCCESS;
}

aclError aclrtMapMem(void *virPtr, size_t size, size_t offset, aclrtDrvMemHandle handle, uint64_t flags)
{
    struct acl_phys *ph = handle;
    if (!virPtr || size == 0 || flags != 0 || !ph || ph->magic != A_PHYS || offset > ph->size ||
        size > ph->size - offset)
        return acl_err(ACL_ERROR_INVALID_PARAM, "aclrtMapMem: bad argument");
    aclError rc = acl_check_init();
    if (rc)
        return rc;
    uintptr_t v = (uintptr_t)virPtr;
    pthread_mutex_lock(&acl_proc.lock);
    int inside = 0;
    for (size_t i = 0; i < acl_proc.nallocs; i++) {
        struct acl_alloc *x = acl_proc.allocs[i];
        if (x->kind == K_RESERVE && v >= x->base && v - x->base <= x->size && size <= x->size - (v - x->base))
            inside = 1;
        if (x->kind == K_MAP && v < x->base + x->size && x->base < v + size)
            inside = -1;
    }
    struct acl_alloc *a = inside == 1 ? calloc(1, sizeof *a) : NULL;
    if (!a) {
        pthread_mutex_unlock(&acl_proc.lock);
        return acl_err(ACL_ERROR_INVALID_PARAM, "aclrtMapMem: %p+%zu is not free reserved address space",
                       virPtr, size);
    }
    void *p = mmap(virPtr, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, ph->fd, (off_t)offset);
    if (p == MAP_FAILED) {
        pthread_mutex_unlock(&acl_proc.lock);
        free(a);
        return acl_err(ACL_ERROR_RT_INTERNAL_ERROR, "aclrtMapMem: %s", strerror(errno));
    }
    *a = (struct acl_alloc){ .base = v, .size = size, .map_len = size, .device = ph->device, .kind = K_MAP,
                             .phys = ph };
    table_add(a);
    pthread_mutex_unlock(&acl_proc.lock);
    return ACL_SUCCESS;
}

aclError aclrtUnmapMem(void *virPtr)
{
    aclError rc = acl_check_init();
    if (rc)
        return rc;
    pthread_mutex_lock(&acl_proc.lock);
    long i = table_find_base((uintptr_t)virPtr, K_MAP);
    if (i < 0) {
        pthread_mutex_unlock(&acl_proc.lock);
        return acl_err(ACL_ERROR_INVALID_PARAM, "aclrtUnmapMem: nothing is mapped at %p", virPtr);
    }
    struct acl_alloc *m = table_take((size_t)i);
    mmap(virPtr, m->size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
    free(m);
    pthread_mutex_unlock(&acl_proc.lock);
    return ACL_SUCCESS;
}

/* ---------------------------------------------------------------- info and copies */

/* Every memory attribute reports the card's one memory (HBM on 910-class cards). */
aclError aclrtGetMemInfo(aclrtMemAttr attr, size_t *free_bytes, size_t *total_bytes)
{
    if (!free_bytes || !total_bytes || (int)attr < 0 || attr > ACL_MEM_P2P_HUGE1G)
        return acl_err(ACL_ERROR_INVALID_PARAM, "aclrtGetMemInfo: bad argument");
    struct acl_ctx *c;
    aclError rc = acl_current(&c);
    if (rc)
        return rc;
    uint64_t total = acl_proc.h.cfg.card[c->device].memory;
    uint64_t used = sim_mem_used(&acl_proc.h, c->device);
    *total_bytes = (size_t)total;
    *free_bytes = (size_t)(used < total ? total - used : 0);
    return ACL_SUCCESS;
}

static aclError check_copy(void *dst, size_t destMax, const void *src, size_t count, aclrtMemcpyKind kind,
                           const char *what)
{
    if (!dst || !src || count > destMax || (int)kind < 0 || kind > ACL_MEMCPY_INTER_DEVICE_TO_DEVICE)
        return acl_err(ACL_ERROR_INVALID_PARAM, "%s: bad argument (count %zu, destMax %zu)", what, count,
                       destMax);
    struct acl_ctx *c;
    aclError rc = acl_current(&c);
    if (rc)
        return rc;
    int dst_dev = kind == ACL_MEMCPY_HOST_TO_DEVICE || kind == ACL_MEMCPY_DEVICE_TO_DEVICE ||
                  kind == ACL_MEMCPY_HOST_TO_BUF_TO_DEVICE || kind >= ACL_MEMCPY_INNER_DEVICE_TO_DEVICE;
    int src_dev = kind == ACL_MEMCPY_DEVICE_TO_HOST || kind == ACL_MEMCPY_DEVICE_TO_DEVICE ||
                  kind >= ACL_MEMCPY_INNER_DEVICE_TO_DEVICE;
    pthread_mutex_lock(&acl_proc.lock);
    int ok = (!dst_dev || device_range(dst, count)) && (!src_dev || device_range(src, count));
    pthread_mutex_unlock(&acl_proc.lock);
    if (!ok)
        return acl_err(ACL_ERROR_RT_PARAM_INVALID, "%s: %s is not device memory of this process", what,
                       dst_dev && !src_dev ? "dst" : "src or dst");
    return ACL_SUCCESS;
}

aclError aclrtMemcpy(void *dst, size_t destMax, const void *src, size_t count, aclrtMemcpyKind kind)
{
    aclError rc = check_copy(dst, destMax, src, count, kind, "aclrtMemcpy");
    if (rc)
        return rc;
    struct acl_ctx *c;
    if (acl_current(&c) == ACL_SUCCESS)
        sim_wait_device(acl_stream_tail(c->def)); /* synchronous: after the default stream's work */
    memmove(dst, src, count);
    return ACL_SUCCESS;
}

aclError aclrtMemcpyAsync(void *dst, size_t destMax, const void *src, size_t count, aclrtMemcpyKind kind,
                          aclrtStream stream)
{
    aclError rc = check_copy(dst, destMax, src, count, kind, "aclrtMemcpyAsync");
    struct acl_stream *s;
    if (!rc)
        rc = acl_resolve_stream(stream, &s);
    if (rc)
        return rc;
    memmove(dst, src, count);
    return ACL_SUCCESS;
}

static aclError do_memset(void *devPtr, size_t maxCount, int32_t value, size_t count, const char *what)
{
    if (!devPtr || count > maxCount)
        return acl_err(ACL_ERROR_INVALID_PARAM, "%s: bad argument", what);
    struct acl_ctx *c;
    aclError rc = acl_current(&c);
    if (rc)
        return rc;
    pthread_mutex_lock(&acl_proc.lock);
    int ok = device_range(devPtr, count);
    pthread_mutex_unlock(&acl_proc.lock);
    if (!ok)
        return acl_err(ACL_ERROR_RT_PARAM_INVALID, "%s: %p is not device memory of this process", what, devPtr);
    memset(devPtr, value, count);
    return ACL_SUCCESS;
}

aclError aclrtMemset(void *devPtr, size_t maxCount, int32_t value, size_t count)
{
    return do_memset(devPtr, maxCount, value, count, "aclrtMemset");
}

aclError aclrtMemsetAsync(void *devPtr, size_t maxCount, int32_t value, size_t count, aclrtStream stream)
{
    struct acl_stream *s;
    aclError rc = acl_resolve_stream(stream, &s);
    if (rc)
        return rc;
    return do_memset(devPtr, maxCount, value, count, "aclrtMemsetAsync");
}
