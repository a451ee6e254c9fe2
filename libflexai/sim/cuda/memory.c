/* Simulated libcuda: device memory. Every device allocation is charged to its card in the
 * shared state (reserve-then-commit, see simstate.c) and backed by a private anonymous
 * MAP_NORESERVE mapping, so device pointers are real addresses that cuMemcpy and cuMemset
 * read and write, and a huge allocation costs nothing until touched. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "simcuda.h"

static size_t page_round(size_t n)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    return (n + pg - 1) / pg * pg;
}

static void *map_anon(size_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

CUresult sim_charge(int device, uint64_t bytes)
{
    if (device < 0 || bytes == 0)
        return CUDA_SUCCESS;
    return sim_mem_reserve(&sim_proc.h, device, bytes) == 0 ? CUDA_SUCCESS
                                                            : CUDA_ERROR_OUT_OF_MEMORY;
}

void sim_uncharge(int device, uint64_t bytes)
{
    if (device >= 0 && bytes)
        sim_mem_release(&sim_proc.h, device, bytes);
}

/* ---------------------------------------------------------------- allocation table */

static size_t table_lower(uintptr_t addr) /* first index with base > addr */
{
    size_t lo = 0, hi = sim_proc.nallocs;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (sim_proc.allocs[mid]->base <= addr) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

static int table_insert(struct sim_alloc *a)
{
    pthread_mutex_lock(&sim_proc.alloc_lock);
    if (sim_proc.nallocs == sim_proc.capallocs) {
        size_t cap = sim_proc.capallocs ? sim_proc.capallocs * 2 : 256;
        struct sim_alloc **n = realloc(sim_proc.allocs, cap * sizeof *n);
        if (!n) {
            pthread_mutex_unlock(&sim_proc.alloc_lock);
            return -1;
        }
        sim_proc.allocs = n;
        sim_proc.capallocs = cap;
    }
    size_t i = table_lower(a->base);
    memmove(&sim_proc.allocs[i + 1], &sim_proc.allocs[i],
            (sim_proc.nallocs - i) * sizeof(struct sim_alloc *));
    sim_proc.allocs[i] = a;
    sim_proc.nallocs++;
    pthread_mutex_unlock(&sim_proc.alloc_lock);
    return 0;
}

static void table_remove_at(size_t i)
{
    memmove(&sim_proc.allocs[i], &sim_proc.allocs[i + 1],
            (sim_proc.nallocs - i - 1) * sizeof(struct sim_alloc *));
    sim_proc.nallocs--;
}

/* Removes and returns the record that starts exactly at base and whose kind is in mask. */
static struct sim_alloc *table_take(uintptr_t base, unsigned kinds)
{
    struct sim_alloc *a = NULL;
    pthread_mutex_lock(&sim_proc.alloc_lock);
    size_t i = table_lower(base);
    if (i > 0 && sim_proc.allocs[i - 1]->base == base &&
        (kinds & (1u << sim_proc.allocs[i - 1]->kind))) {
        a = sim_proc.allocs[i - 1];
        table_remove_at(i - 1);
    }
    pthread_mutex_unlock(&sim_proc.alloc_lock);
    return a;
}

struct sim_alloc *sim_alloc_find(uintptr_t addr, size_t len)
{
    struct sim_alloc *a = NULL;
    pthread_mutex_lock(&sim_proc.alloc_lock);
    size_t i = table_lower(addr);
    if (i > 0) {
        struct sim_alloc *c = sim_proc.allocs[i - 1];
        if (addr >= c->base && addr - c->base < c->size && len <= c->size - (addr - c->base))
            a = c;
    }
    pthread_mutex_unlock(&sim_proc.alloc_lock);
    return a;
}

static void alloc_destroy(struct sim_alloc *a)
{
    if (a->kind != A_VMM_MAP)
        munmap((void *)a->base, a->map_len);
    if (a->ipc_fd)
        close(a->ipc_fd - 1);
    sim_uncharge(a->device, a->charged);
    if (a->pool)
        atomic_fetch_sub(&a->pool->used, a->charged);
    free(a);
}

void sim_alloc_drop_ctx(struct CUctx_st *c)
{
    for (;;) {
        struct sim_alloc *victim = NULL;
        pthread_mutex_lock(&sim_proc.alloc_lock);
        for (size_t i = 0; i < sim_proc.nallocs; i++)
            if (sim_proc.allocs[i]->ctx == c && sim_proc.allocs[i]->kind != A_VMM_MAP) {
                victim = sim_proc.allocs[i];
                table_remove_at(i);
                break;
            }
        pthread_mutex_unlock(&sim_proc.alloc_lock);
        if (!victim)
            return;
        alloc_destroy(victim);
    }
}

static CUresult new_alloc(struct CUctx_st *c, int device, size_t size, int kind,
                          struct CUmemPoolHandle_st *pool, uintptr_t *out)
{
    if (size == 0)
        return CUDA_ERROR_INVALID_VALUE;
    uint64_t charged = 0;
    if (device >= 0) {
        charged = ((uint64_t)size + SIM_ALLOC_ALIGN - 1) / SIM_ALLOC_ALIGN * SIM_ALLOC_ALIGN;
        CUresult rc = sim_charge(device, charged);
        if (rc)
            return rc;
    }
    struct sim_alloc *a = calloc(1, sizeof *a);
    size_t len = page_round(size);
    void *p = a ? map_anon(len) : NULL;
    if (!p) {
        free(a);
        sim_uncharge(device, charged);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    a->base = (uintptr_t)p;
    a->size = size;
    a->map_len = len;
    a->charged = charged;
    a->device = device;
    a->kind = kind;
    a->ctx = c;
    a->pool = pool;
    if (table_insert(a)) {
        munmap(p, len);
        free(a);
        sim_uncharge(device, charged);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    if (pool)
        atomic_fetch_add(&pool->used, charged);
    *out = a->base;
    return CUDA_SUCCESS;
}

/* ---------------------------------------------------------------- basic allocation */

CUresult sim_cuMemGetInfo_v2(size_t *free_, size_t *total)
{
    struct CUctx_st *c;
    CUresult rc = sim_current_ctx(&c);
    if (rc)
        return rc;
    if (!free_ || !total)
        return CUDA_ERROR_INVALID_VALUE;
    sim_reclaim_dead(&sim_proc.h);
    uint64_t tot = sim_proc.h.cfg.card[c->device].memory;
    uint64_t used = sim_mem_used(&sim_proc.h, c->device);
    *total = (size_t)tot;
    *free_ = (size_t)(used >= tot ? 0 : tot - used);
    return CUDA_SUCCESS;
}

CUresult sim_cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize)
{
    struct CUctx_st *c;
    CUresult rc = sim_current_ctx(&c);
    if (rc)
        return rc;
    if (!dptr)
        return CUDA_ERROR_INVALID_VALUE;
    uintptr_t p;
    rc = new_alloc(c, c->device, bytesize, A_DEVICE, NULL, &p);
    if (!rc)
        *dptr = (CUdeviceptr)p;
    return rc;
}

CUresult sim_cuMemAllocPitch_v2(CUdeviceptr *dptr, size_t *pPitch, size_t WidthInBytes,
                                size_t Height, unsigned int ElementSizeBytes)
{
    struct CUctx_st *c;
    CUresult rc = sim_current_ctx(&c);
    if (rc)
        return rc;
    if (!dptr || !pPitch || WidthInBytes == 0 || Height == 0 ||
        (ElementSizeBytes != 4 && ElementSizeBytes != 8 && ElementSizeBytes != 16))
        return CUDA_ERROR_INVALID_VALUE;
    size_t pitch = (WidthInBytes + 511) / 512 * 512;
    if (Height > SIZE_MAX / pitch)
        return CUDA_ERROR_INVALID_VALUE;
    uintptr_t p;
    rc = new_alloc(c, c->device, pitch * Height, A_DEVICE, NULL, &p);
    if (!rc) {
        *dptr = (CUdeviceptr)p;
        *pPitch = pitch;
    }
    return rc;
}

CUresult sim_cuMemAllocManaged(CUdeviceptr *dptr, size_t bytesize, unsigned int flags)
{
    struct CUctx_st *c;
    CUresult rc = sim_current_ctx(&c);
    if (rc)
        return rc;
    if (!dptr || (flags != CU_MEM_ATTACH_GLOBAL && flags != CU_MEM_ATTACH_HOST))
        return CUDA_ERROR_INVALID_VALUE;
    uintptr_t p;
    rc = new_alloc(c, c->device, bytesize, A_MANAGED, NULL, &p);
    if (!rc)
        *dptr = (CUdeviceptr)p;
    return rc;
}

CUresult sim_cuMemFree_v2(CUdeviceptr dptr)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!dptr)
        return CUDA_SUCCESS;
    struct sim_alloc *a = table_take((uintptr_t)dptr,
                                     (1u << A_DEVICE) | (1u << A_MANAGED) | (1u << A_POOL));
    if (!a)
        return CUDA_ERROR_INVALID_VALUE;
    alloc_destroy(a);
    return CUDA_SUCCESS;
}

CUresult sim_cuMemGetAddressRange_v2(CUdeviceptr *pbase, size_t *psize, CUdeviceptr dptr)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    struct sim_alloc *a = sim_alloc_find((uintptr_t)dptr, 1);
    if (!a || a->kind == A_HOST)
        return CUDA_ERROR_NOT_FOUND;
    if (pbase)
        *pbase = a->base;
    if (psize)
        *psize = a->size;
    return CUDA_SUCCESS;
}

/* ---------------------------------------------------------------- legacy IPC (cuIpc*) */

/* The handle names the exporter's memfd: the importer opens /proc/<pid>/fd/<fd> and maps
 * the same pages. An import adds nothing to the card's use (the exporter's allocation is
 * the memory); it is valid while the exporter keeps the allocation. */
struct sim_ipc_handle {
    uint32_t magic;
    int32_t pid, fd, device;
    uint64_t size;
};
#define SIM_IPC_MAGIC 0x43504953u

CUresult sim_cuIpcGetMemHandle(CUipcMemHandle *pHandle, CUdeviceptr dptr)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!pHandle)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&sim_proc.alloc_lock);
    size_t i = table_lower((uintptr_t)dptr);
    struct sim_alloc *a = i > 0 ? sim_proc.allocs[i - 1] : NULL;
    if (!a || a->base != (uintptr_t)dptr || a->kind != A_DEVICE) {
        pthread_mutex_unlock(&sim_proc.alloc_lock);
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (!a->ipc_fd) { /* first export: move the pages (the resident ones) into a memfd */
        char name[32];
        snprintf(name, sizeof name, "flexai-sim-ipc-%d", a->device);
        int fd = memfd_create(name, 0);
        size_t pg = (size_t)sysconf(_SC_PAGESIZE), npages = a->map_len / pg;
        unsigned char *res = fd >= 0 ? calloc(npages ? npages : 1, 1) : NULL;
        int ok = res && ftruncate(fd, (off_t)a->map_len) == 0 &&
                 mincore((void *)a->base, a->map_len, res) == 0;
        for (size_t k = 0; ok && k < npages; k++)
            if (res[k] & 1)
                ok = pwrite(fd, (char *)a->base + k * pg, pg, (off_t)(k * pg)) == (ssize_t)pg;
        free(res);
        if (ok)
            ok = mmap((void *)a->base, a->map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED,
                      fd, 0) != MAP_FAILED;
        if (!ok) {
            if (fd >= 0)
                close(fd);
            pthread_mutex_unlock(&sim_proc.alloc_lock);
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        a->ipc_fd = fd + 1;
    }
    struct sim_ipc_handle h = {SIM_IPC_MAGIC, (int32_t)getpid(), a->ipc_fd - 1, a->device, a->size};
    pthread_mutex_unlock(&sim_proc.alloc_lock);
    memset(pHandle, 0, sizeof *pHandle);
    memcpy(pHandle->reserved, &h, sizeof h);
    return CUDA_SUCCESS;
}

CUresult sim_cuIpcOpenMemHandle_v2(CUdeviceptr *pdptr, CUipcMemHandle handle, unsigned int Flags)
{
    struct CUctx_st *c;
    CUresult rc = sim_current_ctx(&c);
    if (rc)
        return rc;
    struct sim_ipc_handle h;
    memcpy(&h, handle.reserved, sizeof h);
    if (!pdptr || h.magic != SIM_IPC_MAGIC || h.size == 0 || (Flags & ~1u))
        return CUDA_ERROR_INVALID_VALUE;
    if (h.pid == (int32_t)getpid())
        return CUDA_ERROR_INVALID_CONTEXT; /* a process cannot open its own handle */
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd/%d", (int)h.pid, (int)h.fd);
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return CUDA_ERROR_INVALID_VALUE; /* the exporter (or its allocation) is gone */
    struct sim_alloc *a = calloc(1, sizeof *a);
    size_t len = page_round(h.size);
    void *m = a ? mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) : MAP_FAILED;
    if (m == MAP_FAILED) {
        free(a);
        close(fd);
        return CUDA_ERROR_MAP_FAILED;
    }
    a->base = (uintptr_t)m;
    a->size = h.size;
    a->map_len = len;
    a->device = h.device;
    a->kind = A_IPC;
    a->ctx = c;
    a->ipc_fd = fd + 1;
    if (table_insert(a)) {
        alloc_destroy(a);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *pdptr = a->base;
    return CUDA_SUCCESS;
}

CUresult sim_cuIpcOpenMemHandle(CUdeviceptr *pdptr, CUipcMemHandle handle, unsigned int Flags)
{
    return sim_cuIpcOpenMemHandle_v2(pdptr, handle, Flags);
}

CUresult sim_cuIpcCloseMemHandle(CUdeviceptr dptr)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    struct sim_alloc *a = table_take((uintptr_t)dptr, 1u << A_IPC);
    if (!a)
        return CUDA_ERROR_INVALID_VALUE;
    alloc_destroy(a);
    return CUDA_SUCCESS;
}

CUresult sim_cuMemHostAlloc(void **pp, size_t bytesize, unsigned int Flags)
{
    struct CUctx_st *c;
    CUresult rc = sim_current_ctx(&c);
    if (rc)
        return rc;
    if (!pp || (Flags & ~0xfu))
        return CUDA_ERROR_INVALID_VALUE;
    uintptr_t p;
    rc = new_alloc(c, -1, bytesize, A_HOST, NULL, &p);
    if (!rc)
        *pp = (void *)p;
    return rc;
}

CUresult sim_cuMemAllocHost_v2(void **pp, size_t bytesize)
{
    return sim_cuMemHostAlloc(pp, bytesize, 0);
}

CUresult sim_cuMemFreeHost(void *p)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    struct sim_alloc *a = table_take((uintptr_t)p, 1u << A_HOST);
    if (!a)
        return CUDA_ERROR_INVALID_VALUE;
    alloc_destroy(a);
    return CUDA_SUCCESS;
}

CUresult sim_cuMemHostGetDevicePointer_v2(CUdeviceptr *pdptr, void *p, unsigned int Flags)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!pdptr || Flags != 0)
        return CUDA_ERROR_INVALID_VALUE;
    struct sim_alloc *a = sim_alloc_find((uintptr_t)p, 1);
    if (!a || a->kind != A_HOST)
        return CUDA_ERROR_INVALID_VALUE;
    *pdptr = (CUdeviceptr)(uintptr_t)p;
    return CUDA_SUCCESS;
}

CUresult sim_cuPointerGetAttribute(void *data, CUpointer_attribute attribute, CUdeviceptr ptr)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!data)
        return CUDA_ERROR_INVALID_VALUE;
    struct sim_alloc *a = sim_alloc_find((uintptr_t)ptr, 1);
    if (!a)
        return CUDA_ERROR_INVALID_VALUE;
    switch (attribute) {
    case CU_POINTER_ATTRIBUTE_CONTEXT: *(CUcontext *)data = a->ctx; break;
    case CU_POINTER_ATTRIBUTE_MEMORY_TYPE:
        *(unsigned int *)data = a->kind == A_HOST ? CU_MEMORYTYPE_HOST : CU_MEMORYTYPE_DEVICE;
        break;
    case CU_POINTER_ATTRIBUTE_DEVICE_POINTER: *(CUdeviceptr *)data = ptr; break;
    case CU_POINTER_ATTRIBUTE_HOST_POINTER:
        if (a->kind != A_HOST && a->kind != A_MANAGED)
            return CUDA_ERROR_INVALID_VALUE;
        *(void **)data = (void *)(uintptr_t)ptr;
        break;
    case CU_POINTER_ATTRIBUTE_IS_MANAGED: *(int *)data = a->kind == A_MANAGED; break;
    case CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL:
        *(int *)data = a->device >= 0 ? a->device : (a->ctx ? a->ctx->device : 0);
        break;
    case CU_POINTER_ATTRIBUTE_RANGE_START_ADDR: *(CUdeviceptr *)data = a->base; break;
    case CU_POINTER_ATTRIBUTE_RANGE_SIZE: *(size_t *)data = a->size; break;
    case CU_POINTER_ATTRIBUTE_MAPPED: *(int *)data = 1; break;
    default: return CUDA_ERROR_INVALID_VALUE;
    }
    return CUDA_SUCCESS;
}

/* ---------------------------------------------------------------- copies and sets */

static CUresult need_dev(CUdeviceptr p, size_t n)
{
    return sim_alloc_find((uintptr_t)p, n ? n : 1) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

/* Synchronous copies wait for the work queued before them, as with the real driver. */
static CUresult sync_stream(int ptds)
{
    struct CUstream_st *s;
    CUresult rc = sim_resolve_stream(NULL, ptds, &s);
    if (rc)
        return rc;
    sim_sync_for_copy(s);
    return CUDA_SUCCESS;
}

static CUresult async_stream(CUstream hs, int ptds)
{
    struct CUstream_st *s;
    return sim_resolve_stream(hs, ptds, &s);
}

static CUresult copy_generic(CUdeviceptr dst, CUdeviceptr src, size_t n)
{
    if (!n)
        return CUDA_SUCCESS;
    if (!dst || !src)
        return CUDA_ERROR_INVALID_VALUE;
    /* unified addressing: either side may be host memory; known ranges are bounds-checked */
    struct sim_alloc *d = sim_alloc_find((uintptr_t)dst, 1), *s = sim_alloc_find((uintptr_t)src, 1);
    if ((d && need_dev(dst, n)) || (s && need_dev(src, n)))
        return CUDA_ERROR_INVALID_VALUE;
    memmove((void *)(uintptr_t)dst, (const void *)(uintptr_t)src, n);
    return CUDA_SUCCESS;
}

static CUresult htod(CUdeviceptr dst, const void *src, size_t n)
{
    if (!n)
        return CUDA_SUCCESS;
    if (!src || need_dev(dst, n))
        return CUDA_ERROR_INVALID_VALUE;
    memcpy((void *)(uintptr_t)dst, src, n);
    return CUDA_SUCCESS;
}

static CUresult dtoh(void *dst, CUdeviceptr src, size_t n)
{
    if (!n)
        return CUDA_SUCCESS;
    if (!dst || need_dev(src, n))
        return CUDA_ERROR_INVALID_VALUE;
    memcpy(dst, (const void *)(uintptr_t)src, n);
    return CUDA_SUCCESS;
}

static CUresult dtod(CUdeviceptr dst, CUdeviceptr src, size_t n)
{
    if (!n)
        return CUDA_SUCCESS;
    if (need_dev(dst, n) || need_dev(src, n))
        return CUDA_ERROR_INVALID_VALUE;
    memmove((void *)(uintptr_t)dst, (const void *)(uintptr_t)src, n);
    return CUDA_SUCCESS;
}

#define SYNC_OR_RETURN(ptds) do { CUresult r_ = sync_stream(ptds); if (r_) return r_; } while (0)
#define ASYNC_OR_RETURN(hs, ptds) do { CUresult r_ = async_stream(hs, ptds); if (r_) return r_; } while (0)

CUresult sim_cuMemcpy(CUdeviceptr dst, CUdeviceptr src, size_t n)
{ SYNC_OR_RETURN(0); return copy_generic(dst, src, n); }
CUresult sim_cuMemcpy_ptds(CUdeviceptr dst, CUdeviceptr src, size_t n)
{ SYNC_OR_RETURN(1); return copy_generic(dst, src, n); }
CUresult sim_cuMemcpyAsync(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream hs)
{ ASYNC_OR_RETURN(hs, 0); return copy_generic(dst, src, n); }
CUresult sim_cuMemcpyAsync_ptsz(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream hs)
{ ASYNC_OR_RETURN(hs, 1); return copy_generic(dst, src, n); }

CUresult sim_cuMemcpyHtoD_v2(CUdeviceptr dst, const void *src, size_t n)
{ SYNC_OR_RETURN(0); return htod(dst, src, n); }
CUresult sim_cuMemcpyHtoD_v2_ptds(CUdeviceptr dst, const void *src, size_t n)
{ SYNC_OR_RETURN(1); return htod(dst, src, n); }
CUresult sim_cuMemcpyDtoH_v2(void *dst, CUdeviceptr src, size_t n)
{ SYNC_OR_RETURN(0); return dtoh(dst, src, n); }
CUresult sim_cuMemcpyDtoH_v2_ptds(void *dst, CUdeviceptr src, size_t n)
{ SYNC_OR_RETURN(1); return dtoh(dst, src, n); }
CUresult sim_cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n)
{ SYNC_OR_RETURN(0); return dtod(dst, src, n); }
CUresult sim_cuMemcpyDtoD_v2_ptds(CUdeviceptr dst, CUdeviceptr src, size_t n)
{ SYNC_OR_RETURN(1); return dtod(dst, src, n); }
CUresult sim_cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void *src, size_t n, CUstream hs)
{ ASYNC_OR_RETURN(hs, 0); return htod(dst, src, n); }
CUresult sim_cuMemcpyHtoDAsync_v2_ptsz(CUdeviceptr dst, const void *src, size_t n, CUstream hs)
{ ASYNC_OR_RETURN(hs, 1); return htod(dst, src, n); }
CUresult sim_cuMemcpyDtoHAsync_v2(void *dst, CUdeviceptr src, size_t n, CUstream hs)
{ ASYNC_OR_RETURN(hs, 0); return dtoh(dst, src, n); }
CUresult sim_cuMemcpyDtoHAsync_v2_ptsz(void *dst, CUdeviceptr src, size_t n, CUstream hs)
{ ASYNC_OR_RETURN(hs, 1); return dtoh(dst, src, n); }
CUresult sim_cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream hs)
{ ASYNC_OR_RETURN(hs, 0); return dtod(dst, src, n); }
CUresult sim_cuMemcpyDtoDAsync_v2_ptsz(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream hs)
{ ASYNC_OR_RETURN(hs, 1); return dtod(dst, src, n); }

static CUresult copy2d(const CUDA_MEMCPY2D *c)
{
    if (!c)
        return CUDA_ERROR_INVALID_VALUE;
    if (c->srcMemoryType == CU_MEMORYTYPE_ARRAY || c->dstMemoryType == CU_MEMORYTYPE_ARRAY)
        return CUDA_ERROR_NOT_SUPPORTED;
    const char *src = c->srcMemoryType == CU_MEMORYTYPE_HOST
                          ? (const char *)c->srcHost : (const char *)(uintptr_t)c->srcDevice;
    char *dst = c->dstMemoryType == CU_MEMORYTYPE_HOST
                    ? (char *)c->dstHost : (char *)(uintptr_t)c->dstDevice;
    if (!src || !dst)
        return CUDA_ERROR_INVALID_VALUE;
    if (c->Height == 0 || c->WidthInBytes == 0)
        return CUDA_SUCCESS;
    size_t sp = c->srcPitch ? c->srcPitch : c->WidthInBytes;
    size_t dp = c->dstPitch ? c->dstPitch : c->WidthInBytes;
    const char *s0 = src + c->srcY * sp + c->srcXInBytes;
    char *d0 = dst + c->dstY * dp + c->dstXInBytes;
    size_t sspan = (c->Height - 1) * sp + c->WidthInBytes;
    size_t dspan = (c->Height - 1) * dp + c->WidthInBytes;
    if (c->srcMemoryType != CU_MEMORYTYPE_HOST && need_dev((CUdeviceptr)(uintptr_t)s0, sspan))
        return CUDA_ERROR_INVALID_VALUE;
    if (c->dstMemoryType != CU_MEMORYTYPE_HOST && need_dev((CUdeviceptr)(uintptr_t)d0, dspan))
        return CUDA_ERROR_INVALID_VALUE;
    for (size_t y = 0; y < c->Height; y++)
        memmove(d0 + y * dp, s0 + y * sp, c->WidthInBytes);
    return CUDA_SUCCESS;
}

CUresult sim_cuMemcpy2D_v2(const CUDA_MEMCPY2D *pCopy) { SYNC_OR_RETURN(0); return copy2d(pCopy); }
CUresult sim_cuMemcpy2D_v2_ptds(const CUDA_MEMCPY2D *pCopy) { SYNC_OR_RETURN(1); return copy2d(pCopy); }

static CUresult set_n(CUdeviceptr dst, const void *val, size_t elem, size_t n)
{
    if (!n)
        return CUDA_SUCCESS;
    if (n > SIZE_MAX / elem || need_dev(dst, n * elem))
        return CUDA_ERROR_INVALID_VALUE;
    char *p = (char *)(uintptr_t)dst;
    if (elem == 1) {
        memset(p, *(const unsigned char *)val, n);
    } else {
        for (size_t i = 0; i < n; i++)
            memcpy(p + i * elem, val, elem);
    }
    return CUDA_SUCCESS;
}

static CUresult set_2d(CUdeviceptr dst, size_t pitch, const void *val, size_t elem, size_t w, size_t h)
{
    if (!w || !h)
        return CUDA_SUCCESS;
    if (pitch < w * elem || need_dev(dst, (h - 1) * pitch + w * elem))
        return CUDA_ERROR_INVALID_VALUE;
    for (size_t y = 0; y < h; y++) {
        CUresult rc = set_n(dst + y * pitch, val, elem, w);
        if (rc)
            return rc;
    }
    return CUDA_SUCCESS;
}

CUresult sim_cuMemsetD8_v2(CUdeviceptr d, unsigned char v, size_t n) { SYNC_OR_RETURN(0); return set_n(d, &v, 1, n); }
CUresult sim_cuMemsetD8_v2_ptds(CUdeviceptr d, unsigned char v, size_t n) { SYNC_OR_RETURN(1); return set_n(d, &v, 1, n); }
CUresult sim_cuMemsetD16_v2(CUdeviceptr d, unsigned short v, size_t n) { SYNC_OR_RETURN(0); return set_n(d, &v, 2, n); }
CUresult sim_cuMemsetD16_v2_ptds(CUdeviceptr d, unsigned short v, size_t n) { SYNC_OR_RETURN(1); return set_n(d, &v, 2, n); }
CUresult sim_cuMemsetD32_v2(CUdeviceptr d, unsigned int v, size_t n) { SYNC_OR_RETURN(0); return set_n(d, &v, 4, n); }
CUresult sim_cuMemsetD32_v2_ptds(CUdeviceptr d, unsigned int v, size_t n) { SYNC_OR_RETURN(1); return set_n(d, &v, 4, n); }
CUresult sim_cuMemsetD2D8_v2(CUdeviceptr d, size_t p, unsigned char v, size_t w, size_t h) { SYNC_OR_RETURN(0); return set_2d(d, p, &v, 1, w, h); }
CUresult sim_cuMemsetD2D8_v2_ptds(CUdeviceptr d, size_t p, unsigned char v, size_t w, size_t h) { SYNC_OR_RETURN(1); return set_2d(d, p, &v, 1, w, h); }
CUresult sim_cuMemsetD2D32_v2(CUdeviceptr d, size_t p, unsigned int v, size_t w, size_t h) { SYNC_OR_RETURN(0); return set_2d(d, p, &v, 4, w, h); }
CUresult sim_cuMemsetD2D32_v2_ptds(CUdeviceptr d, size_t p, unsigned int v, size_t w, size_t h) { SYNC_OR_RETURN(1); return set_2d(d, p, &v, 4, w, h); }
CUresult sim_cuMemsetD8Async(CUdeviceptr d, unsigned char v, size_t n, CUstream hs) { ASYNC_OR_RETURN(hs, 0); return set_n(d, &v, 1, n); }
CUresult sim_cuMemsetD8Async_ptsz(CUdeviceptr d, unsigned char v, size_t n, CUstream hs) { ASYNC_OR_RETURN(hs, 1); return set_n(d, &v, 1, n); }
CUresult sim_cuMemsetD16Async(CUdeviceptr d, unsigned short v, size_t n, CUstream hs) { ASYNC_OR_RETURN(hs, 0); return set_n(d, &v, 2, n); }
CUresult sim_cuMemsetD16Async_ptsz(CUdeviceptr d, unsigned short v, size_t n, CUstream hs) { ASYNC_OR_RETURN(hs, 1); return set_n(d, &v, 2, n); }
CUresult sim_cuMemsetD32Async(CUdeviceptr d, unsigned int v, size_t n, CUstream hs) { ASYNC_OR_RETURN(hs, 0); return set_n(d, &v, 4, n); }
CUresult sim_cuMemsetD32Async_ptsz(CUdeviceptr d, unsigned int v, size_t n, CUstream hs) { ASYNC_OR_RETURN(hs, 1); return set_n(d, &v, 4, n); }

/* ---------------------------------------------------------------- stream-ordered allocation */

/* Pools keep what is freed into them (`spare`, still charged on the card) and reuse it; at a
 * synchronisation (stream, event, context) they give back to the card whatever their reserve
 * (used + spare) has above the release threshold (0 by default: everything spare), and
 * cuMemPoolTrimTo gives back spare memory down to the bytes asked to keep. */
#define POOLS_MAX 64
static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static struct CUmemPoolHandle_st *pools[POOLS_MAX];

static void pool_marks(struct CUmemPoolHandle_st *p) /* caller holds pool_lock */
{
    uint64_t used = atomic_load(&p->used);
    if (used > p->used_high)
        p->used_high = used;
    if (used + p->spare > p->reserved_high)
        p->reserved_high = used + p->spare;
}

/* Gives back spare memory until the reserve is at most `keep`. Caller holds pool_lock. */
static void pool_release_to(struct CUmemPoolHandle_st *p, uint64_t keep)
{
    uint64_t reserved = atomic_load(&p->used) + p->spare;
    if (reserved <= keep)
        return;
    uint64_t give = reserved - keep < p->spare ? reserved - keep : p->spare;
    p->spare -= give;
    sim_uncharge(p->device, give);
}

void sim_pools_release(void)
{
    pthread_mutex_lock(&pool_lock);
    for (int i = 0; i < POOLS_MAX; i++)
        if (pools[i] && pools[i]->spare)
            pool_release_to(pools[i], pools[i]->threshold);
    pthread_mutex_unlock(&pool_lock);
}

static struct CUmemPoolHandle_st *pool_new(int device, int is_default)
{
    struct CUmemPoolHandle_st *p = calloc(1, sizeof *p);
    if (p) {
        p->magic = M_POOL;
        p->device = device;
        p->is_default = is_default;
        pthread_mutex_lock(&pool_lock);
        for (int i = 0; i < POOLS_MAX; i++)
            if (!pools[i]) {
                pools[i] = p;
                break;
            }
        pthread_mutex_unlock(&pool_lock);
    }
    return p;
}

static struct CUmemPoolHandle_st *default_pool(int dev)
{
    pthread_mutex_lock(&sim_proc.lock);
    if (!sim_proc.default_pool[dev])
        sim_proc.default_pool[dev] = pool_new(dev, 1);
    struct CUmemPoolHandle_st *p = sim_proc.current_pool[dev] ? sim_proc.current_pool[dev]
                                                               : sim_proc.default_pool[dev];
    pthread_mutex_unlock(&sim_proc.lock);
    return p;
}

CUresult sim_cuDeviceGetDefaultMemPool(CUmemoryPool *pool_out, CUdevice dev)
{
    CUresult rc = sim_check_device(dev);
    if (rc)
        return rc;
    if (!pool_out)
        return CUDA_ERROR_INVALID_VALUE;
    default_pool(dev);
    *pool_out = sim_proc.default_pool[dev];
    return *pool_out ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}

CUresult sim_cuDeviceGetMemPool(CUmemoryPool *pool, CUdevice dev)
{
    CUresult rc = sim_check_device(dev);
    if (rc)
        return rc;
    if (!pool)
        return CUDA_ERROR_INVALID_VALUE;
    *pool = default_pool(dev);
    return *pool ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}

CUresult sim_cuDeviceSetMemPool(CUdevice dev, CUmemoryPool pool)
{
    CUresult rc = sim_check_device(dev);
    if (rc)
        return rc;
    if (!pool || pool->magic != M_POOL || pool->device != dev)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&sim_proc.lock);
    sim_proc.current_pool[dev] = pool;
    pthread_mutex_unlock(&sim_proc.lock);
    return CUDA_SUCCESS;
}

CUresult sim_cuMemPoolCreate(CUmemoryPool *pool, const CUmemPoolProps *props)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!pool || !props || props->allocType != CU_MEM_ALLOCATION_TYPE_PINNED)
        return CUDA_ERROR_INVALID_VALUE;
    int dev;
    if (props->location.type == CU_MEM_LOCATION_TYPE_DEVICE) {
        if (props->location.id < 0 || props->location.id >= sim_proc.h.cfg.ncards)
            return CUDA_ERROR_INVALID_VALUE;
        dev = props->location.id;
    } else if (props->location.type == CU_MEM_LOCATION_TYPE_HOST ||
               props->location.type == CU_MEM_LOCATION_TYPE_HOST_NUMA ||
               props->location.type == CU_MEM_LOCATION_TYPE_HOST_NUMA_CURRENT) {
        dev = -1;
    } else {
        return CUDA_ERROR_INVALID_VALUE;
    }
    *pool = pool_new(dev, 0);
    return *pool ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}

CUresult sim_cuMemPoolDestroy(CUmemoryPool pool)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!pool || pool->magic != M_POOL || pool->is_default)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&sim_proc.lock);
    for (int i = 0; i < SIM_MAX_CARDS; i++)
        if (sim_proc.current_pool[i] == pool)
            sim_proc.current_pool[i] = NULL;
    pthread_mutex_unlock(&sim_proc.lock);
    /* allocations still outstanding stay valid until freed; the struct is kept for them */
    pthread_mutex_lock(&pool_lock);
    pool_release_to(pool, 0);
    for (int i = 0; i < POOLS_MAX; i++)
        if (pools[i] == pool)
            pools[i] = NULL;
    pthread_mutex_unlock(&pool_lock);
    pool->magic = M_DEAD;
    return CUDA_SUCCESS;
}

CUresult sim_cuMemPoolTrimTo(CUmemoryPool pool, size_t minBytesToKeep)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!pool || pool->magic != M_POOL)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&pool_lock);
    pool_release_to(pool, minBytesToKeep);
    pthread_mutex_unlock(&pool_lock);
    return CUDA_SUCCESS;
}

CUresult sim_cuMemPoolSetAttribute(CUmemoryPool pool, CUmemPool_attribute attr, void *value)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!pool || pool->magic != M_POOL || !value || attr < CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES ||
        attr > CU_MEMPOOL_ATTR_USED_MEM_HIGH)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&pool_lock);
    if (attr == CU_MEMPOOL_ATTR_RELEASE_THRESHOLD)
        pool->threshold = *(cuuint64_t *)value;
    else if (attr == CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH || attr == CU_MEMPOOL_ATTR_USED_MEM_HIGH) {
        if (*(cuuint64_t *)value != 0)
            rc = CUDA_ERROR_INVALID_VALUE; /* high marks can only be reset to zero */
        else if (attr == CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH)
            pool->reserved_high = 0;
        else
            pool->used_high = 0;
    } else if (attr == CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT || attr == CU_MEMPOOL_ATTR_USED_MEM_CURRENT)
        rc = CUDA_ERROR_INVALID_VALUE; /* read-only */
    pthread_mutex_unlock(&pool_lock);
    return rc;
}

CUresult sim_cuMemPoolGetAttribute(CUmemoryPool pool, CUmemPool_attribute attr, void *value)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!pool || pool->magic != M_POOL || !value)
        return CUDA_ERROR_INVALID_VALUE;
    switch (attr) {
    case CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES:
    case CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC:
    case CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES:
        *(int *)value = 1;
        break;
    case CU_MEMPOOL_ATTR_RELEASE_THRESHOLD:
    case CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT:
    case CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH:
    case CU_MEMPOOL_ATTR_USED_MEM_CURRENT:
    case CU_MEMPOOL_ATTR_USED_MEM_HIGH:
        pthread_mutex_lock(&pool_lock);
        pool_marks(pool);
        *(cuuint64_t *)value = attr == CU_MEMPOOL_ATTR_RELEASE_THRESHOLD ? pool->threshold
                             : attr == CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT ? atomic_load(&pool->used) + pool->spare
                             : attr == CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH ? pool->reserved_high
                             : attr == CU_MEMPOOL_ATTR_USED_MEM_CURRENT ? atomic_load(&pool->used)
                                                                        : pool->used_high;
        pthread_mutex_unlock(&pool_lock);
        break;
    default:
        return CUDA_ERROR_INVALID_VALUE;
    }
    return CUDA_SUCCESS;
}

static CUresult alloc_from_pool(CUdeviceptr *dptr, size_t size, struct CUmemPoolHandle_st *pool,
                                CUstream hs, int ptds)
{
    struct CUstream_st *s;
    CUresult rc = sim_resolve_stream(hs, ptds, &s);
    if (rc)
        return rc;
    if (!dptr)
        return CUDA_ERROR_INVALID_VALUE;
    if (!pool)
        pool = default_pool(s->ctx->device);
    if (!pool || pool->magic != M_POOL)
        return CUDA_ERROR_INVALID_VALUE;
    if (s->capturing) /* an allocation node of the captured graph (exec.c) */
        return sim_graph_capture_alloc(s, pool->device, size, dptr);
    /* reuse what the pool keeps: that much of the charge moves from spare to the allocation */
    uint64_t bytes = ((uint64_t)size + SIM_ALLOC_ALIGN - 1) / SIM_ALLOC_ALIGN * SIM_ALLOC_ALIGN;
    pthread_mutex_lock(&pool_lock);
    uint64_t reuse = pool->spare < bytes ? pool->spare : bytes;
    pool->spare -= reuse;
    pthread_mutex_unlock(&pool_lock);
    sim_uncharge(pool->device, reuse);
    uintptr_t p;
    rc = new_alloc(s->ctx, pool->device, size, A_POOL, pool, &p);
    pthread_mutex_lock(&pool_lock);
    if (rc && reuse && sim_charge(pool->device, reuse) == CUDA_SUCCESS)
        pool->spare += reuse; /* not allocated after all: the pool keeps it */
    pool_marks(pool);
    pthread_mutex_unlock(&pool_lock);
    if (!rc)
        *dptr = (CUdeviceptr)p;
    return rc;
}

CUresult sim_cuMemAllocAsync(CUdeviceptr *dptr, size_t bytesize, CUstream hStream)
{ return alloc_from_pool(dptr, bytesize, NULL, hStream, 0); }
CUresult sim_cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUstream hStream)
{ return alloc_from_pool(dptr, bytesize, NULL, hStream, 1); }
CUresult sim_cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool, CUstream hStream)
{ return pool ? alloc_from_pool(dptr, bytesize, pool, hStream, 0) : CUDA_ERROR_INVALID_VALUE; }
CUresult sim_cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool, CUstream hStream)
{ return pool ? alloc_from_pool(dptr, bytesize, pool, hStream, 1) : CUDA_ERROR_INVALID_VALUE; }

static CUresult free_async(CUdeviceptr dptr, CUstream hs, int ptds)
{
    struct CUstream_st *s;
    CUresult rc = sim_resolve_stream(hs, ptds, &s);
    if (rc)
        return rc;
    if (s->capturing && !sim_alloc_find((uintptr_t)dptr, 1)) /* frees a graph allocation */
        return sim_graph_capture_free(s, dptr) == 0 ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
    struct sim_alloc *a = table_take((uintptr_t)dptr,
                                     (1u << A_POOL) | (1u << A_DEVICE) | (1u << A_MANAGED));
    if (!a)
        return CUDA_ERROR_INVALID_VALUE;
    struct CUmemPoolHandle_st *pool = a->kind == A_POOL ? a->pool : NULL;
    uint64_t charged = a->charged;
    int device = a->device;
    alloc_destroy(a);
    /* the pool keeps the freed memory (given back at the next synchronisation above its
     * release threshold, or at cuMemPoolTrimTo) */
    if (pool && charged) {
        pthread_mutex_lock(&pool_lock);
        if (sim_charge(device, charged) == CUDA_SUCCESS)
            pool->spare += charged;
        pool_marks(pool);
        pthread_mutex_unlock(&pool_lock);
    }
    return CUDA_SUCCESS;
}

CUresult sim_cuMemFreeAsync(CUdeviceptr dptr, CUstream hStream) { return free_async(dptr, hStream, 0); }
CUresult sim_cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream hStream) { return free_async(dptr, hStream, 1); }

/* ---------------------------------------------------------------- arrays */

static size_t format_bytes(CUarray_format f)
{
    switch (f) {
    case CU_AD_FORMAT_UNSIGNED_INT8: case CU_AD_FORMAT_SIGNED_INT8: return 1;
    case CU_AD_FORMAT_UNSIGNED_INT16: case CU_AD_FORMAT_SIGNED_INT16: case CU_AD_FORMAT_HALF: return 2;
    case CU_AD_FORMAT_UNSIGNED_INT32: case CU_AD_FORMAT_SIGNED_INT32: case CU_AD_FORMAT_FLOAT: return 4;
    default: return 0;
    }
}

static uint64_t array_bytes(const CUDA_ARRAY3D_DESCRIPTOR *d, unsigned level)
{
    uint64_t w = d->Width >> level, h = d->Height >> level, z = d->Depth >> level;
    if (!w) w = 1;
    if (!h) h = 1;
    if (!z) z = 1;
    return w * h * z * format_bytes(d->Format) * d->NumChannels;
}

static CUresult check_desc(const CUDA_ARRAY3D_DESCRIPTOR *d)
{
    if (!d->Width || !format_bytes(d->Format) ||
        (d->NumChannels != 1 && d->NumChannels != 2 && d->NumChannels != 4))
        return CUDA_ERROR_INVALID_VALUE;
    if (d->Width > (1u << 17) || d->Height > (1u << 16) || d->Depth > (1u << 14))
        return CUDA_ERROR_INVALID_VALUE;
    return CUDA_SUCCESS;
}

static CUresult array_create(CUarray *pHandle, const CUDA_ARRAY3D_DESCRIPTOR *d)
{
    struct CUctx_st *c;
    CUresult rc = sim_current_ctx(&c);
    if (rc)
        return rc;
    if (!pHandle || !d || check_desc(d))
        return CUDA_ERROR_INVALID_VALUE;
    struct CUarray_st *a = calloc(1, sizeof *a);
    if (!a)
        return CUDA_ERROR_OUT_OF_MEMORY;
    a->bytes = array_bytes(d, 0);
    a->device = c->device;
    a->desc = *d;
    rc = sim_charge(a->device, a->bytes);
    if (rc) {
        free(a);
        return rc;
    }
    a->magic = M_ARRAY;
    *pHandle = a;
    return CUDA_SUCCESS;
}

CUresult sim_cuArrayCreate_v2(CUarray *pHandle, const CUDA_ARRAY_DESCRIPTOR *p)
{
    if (!p)
        return CUDA_ERROR_INVALID_VALUE;
    CUDA_ARRAY3D_DESCRIPTOR d = {p->Width, p->Height, 0, p->Format, p->NumChannels, 0};
    return array_create(pHandle, &d);
}

CUresult sim_cuArray3DCreate_v2(CUarray *pHandle, const CUDA_ARRAY3D_DESCRIPTOR *p)
{
    return array_create(pHandle, p);
}

CUresult sim_cuArrayGetDescriptor_v2(CUDA_ARRAY_DESCRIPTOR *out, CUarray h)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!h || h->magic != M_ARRAY)
        return CUDA_ERROR_INVALID_HANDLE;
    if (!out)
        return CUDA_ERROR_INVALID_VALUE;
    out->Width = h->desc.Width;
    out->Height = h->desc.Height;
    out->Format = h->desc.Format;
    out->NumChannels = h->desc.NumChannels;
    return CUDA_SUCCESS;
}

CUresult sim_cuArray3DGetDescriptor_v2(CUDA_ARRAY3D_DESCRIPTOR *out, CUarray h)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!h || h->magic != M_ARRAY)
        return CUDA_ERROR_INVALID_HANDLE;
    if (!out)
        return CUDA_ERROR_INVALID_VALUE;
    *out = h->desc;
    return CUDA_SUCCESS;
}

CUresult sim_cuArrayDestroy(CUarray h)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!h || h->magic != M_ARRAY)
        return CUDA_ERROR_INVALID_HANDLE;
    h->magic = M_DEAD;
    sim_uncharge(h->device, h->bytes);
    free(h);
    return CUDA_SUCCESS;
}

CUresult sim_cuMipmappedArrayCreate(CUmipmappedArray *pHandle, const CUDA_ARRAY3D_DESCRIPTOR *d,
                                    unsigned int numMipmapLevels)
{
    struct CUctx_st *c;
    CUresult rc = sim_current_ctx(&c);
    if (rc)
        return rc;
    if (!pHandle || !d || check_desc(d) || numMipmapLevels == 0 || numMipmapLevels > 32)
        return CUDA_ERROR_INVALID_VALUE;
    struct CUmipmappedArray_st *m = calloc(1, sizeof *m);
    if (!m)
        return CUDA_ERROR_OUT_OF_MEMORY;
    for (unsigned l = 0; l < numMipmapLevels; l++)
        m->bytes += array_bytes(d, l);
    m->device = c->device;
    m->levels = numMipmapLevels;
    m->desc = *d;
    rc = sim_charge(m->device, m->bytes);
    if (rc) {
        free(m);
        return rc;
    }
    m->magic = M_MIPMAP;
    *pHandle = m;
    return CUDA_SUCCESS;
}

CUresult sim_cuMipmappedArrayDestroy(CUmipmappedArray h)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!h || h->magic != M_MIPMAP)
        return CUDA_ERROR_INVALID_HANDLE;
    h->magic = M_DEAD;
    sim_uncharge(h->device, h->bytes);
    free(h);
    return CUDA_SUCCESS;
}

/* ---------------------------------------------------------------- virtual memory management */

#define reservations sim_proc.reservations
#define nreservations sim_proc.nreservations
#define capreservations sim_proc.capreservations

static CUresult check_prop(const CUmemAllocationProp *prop, int *dev)
{
    if (!prop || prop->type != CU_MEM_ALLOCATION_TYPE_PINNED)
        return CUDA_ERROR_INVALID_VALUE;
    switch (prop->location.type) {
    case CU_MEM_LOCATION_TYPE_DEVICE:
        if (prop->location.id < 0 || prop->location.id >= sim_proc.h.cfg.ncards)
            return CUDA_ERROR_INVALID_DEVICE;
        *dev = prop->location.id;
        return CUDA_SUCCESS;
    case CU_MEM_LOCATION_TYPE_HOST:
    case CU_MEM_LOCATION_TYPE_HOST_NUMA:
    case CU_MEM_LOCATION_TYPE_HOST_NUMA_CURRENT:
        *dev = -1;
        return CUDA_SUCCESS;
    default:
        return CUDA_ERROR_INVALID_VALUE;
    }
}

CUresult sim_cuMemGetAllocationGranularity(size_t *granularity, const CUmemAllocationProp *prop,
                                           CUmemAllocationGranularity_flags option)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    int dev;
    if (!granularity || (option != CU_MEM_ALLOC_GRANULARITY_MINIMUM &&
                         option != CU_MEM_ALLOC_GRANULARITY_RECOMMENDED))
        return CUDA_ERROR_INVALID_VALUE;
    rc = check_prop(prop, &dev);
    if (rc)
        return rc;
    *granularity = SIM_GRANULARITY;
    return CUDA_SUCCESS;
}

CUresult sim_cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size,
                         const CUmemAllocationProp *prop, unsigned long long flags)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    int dev;
    if (!handle || flags != 0 || size == 0 || size % SIM_GRANULARITY)
        return CUDA_ERROR_INVALID_VALUE;
    rc = check_prop(prop, &dev);
    if (rc)
        return rc;
    struct sim_vmm *v = calloc(1, sizeof *v);
    if (!v)
        return CUDA_ERROR_OUT_OF_MEMORY;
    char name[32]; /* the card is in the name: an importer finds it there */
    snprintf(name, sizeof name, "flexai-sim-vmm-%d", dev);
    v->fd = memfd_create(name, MFD_CLOEXEC);
    if (v->fd < 0 || ftruncate(v->fd, (off_t)size) != 0) {
        if (v->fd >= 0)
            close(v->fd);
        free(v);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    rc = sim_charge(dev, size);
    if (rc) {
        close(v->fd);
        free(v);
        return rc;
    }
    v->magic = M_VMM;
    v->device = dev;
    v->size = size;
    v->charged = dev >= 0 ? size : 0;
    v->prop = *prop;
    v->refs = 1;
    *handle = (CUmemGenericAllocationHandle)(uintptr_t)v;
    return CUDA_SUCCESS;
}

/* The driver's rule: a handle's physical memory lives until every reference to the handle
 * (cuMemCreate, cuMemImportFromShareableHandle, cuMemRetainAllocationHandle) is released
 * AND every mapping of it is unmapped. A handle whose references are all released is no
 * longer valid, though its mappings still hold the memory. refs/maps: under alloc_lock. */
static struct sim_vmm *vmm_of(CUmemGenericAllocationHandle h)
{
    struct sim_vmm *v = (struct sim_vmm *)(uintptr_t)h;
    return (v && v->magic == M_VMM && __atomic_load_n(&v->refs, __ATOMIC_RELAXED) > 0) ? v : NULL;
}

/* Called with alloc_lock held: 1 when nothing holds v any more (the caller then frees it). */
static int vmm_gone(struct sim_vmm *v)
{
    if (v->refs > 0 || v->maps > 0)
        return 0;
    v->magic = M_DEAD;
    return 1;
}

static void vmm_free(struct sim_vmm *v)
{
    sim_uncharge(v->device, v->charged);
    close(v->fd);
    free(v);
}

CUresult sim_cuMemRelease(CUmemGenericAllocationHandle handle)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    pthread_mutex_lock(&sim_proc.alloc_lock);
    struct sim_vmm *v = vmm_of(handle);
    int gone = 0;
    if (v) {
        v->refs--;
        gone = vmm_gone(v);
    }
    pthread_mutex_unlock(&sim_proc.alloc_lock);
    if (!v)
        return CUDA_ERROR_INVALID_VALUE;
    if (gone)
        vmm_free(v); /* else mapped: the memory stays charged until the last unmap */
    return CUDA_SUCCESS;
}

CUresult sim_cuMemRetainAllocationHandle(CUmemGenericAllocationHandle *handle, void *addr)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!handle)
        return CUDA_ERROR_INVALID_VALUE;
    struct sim_vmm *v = NULL;
    pthread_mutex_lock(&sim_proc.alloc_lock);
    size_t i = table_lower((uintptr_t)addr);
    if (i > 0) {
        struct sim_alloc *a = sim_proc.allocs[i - 1];
        if (a->kind == A_VMM_MAP && (uintptr_t)addr - a->base < a->size && a->vmm) {
            v = a->vmm;
            v->refs++; /* the same handle, one more reference to release */
        }
    }
    pthread_mutex_unlock(&sim_proc.alloc_lock);
    if (!v)
        return CUDA_ERROR_INVALID_VALUE;
    *handle = (CUmemGenericAllocationHandle)(uintptr_t)v;
    return CUDA_SUCCESS;
}

CUresult sim_cuMemExportToShareableHandle(void *shareableHandle, CUmemGenericAllocationHandle handle,
                                          CUmemAllocationHandleType handleType,
                                          unsigned long long flags)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    struct sim_vmm *v = vmm_of(handle);
    if (!v || !shareableHandle || flags != 0)
        return CUDA_ERROR_INVALID_VALUE;
    if (handleType != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR ||
        !(v->prop.requestedHandleTypes & CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR))
        return CUDA_ERROR_NOT_SUPPORTED;
    int fd = fcntl(v->fd, F_DUPFD_CLOEXEC, 0);
    if (fd < 0)
        return CUDA_ERROR_OUT_OF_MEMORY;
    *(int *)shareableHandle = fd;
    return CUDA_SUCCESS;
}

/* An imported handle shares the creator's physical memory: the card's use does not grow,
 * and the creator's process stays charged for it (see docs/simulator.md). */
CUresult sim_cuMemImportFromShareableHandle(CUmemGenericAllocationHandle *handle, void *osHandle,
                                            CUmemAllocationHandleType shHandleType)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!handle || shHandleType != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR)
        return CUDA_ERROR_INVALID_VALUE;
    int fd = (int)(intptr_t)osHandle, dev = -2;
    char link[64], target[128];
    struct stat st;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n <= 0 || fstat(fd, &st) != 0 || st.st_size <= 0)
        return CUDA_ERROR_INVALID_VALUE;
    target[n] = 0;
    if (sscanf(target, "/memfd:flexai-sim-vmm-%d", &dev) != 1 || dev < -1 ||
        dev >= sim_proc.h.cfg.ncards)
        return CUDA_ERROR_INVALID_VALUE;
    struct sim_vmm *v = calloc(1, sizeof *v);
    if (!v)
        return CUDA_ERROR_OUT_OF_MEMORY;
    v->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (v->fd < 0) {
        free(v);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    v->magic = M_VMM;
    v->device = dev;
    v->size = (uint64_t)st.st_size;
    v->prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    v->prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
    v->prop.location.type = dev >= 0 ? CU_MEM_LOCATION_TYPE_DEVICE : CU_MEM_LOCATION_TYPE_HOST;
    v->prop.location.id = dev >= 0 ? dev : 0;
    v->refs = 1;
    *handle = (CUmemGenericAllocationHandle)(uintptr_t)v;
    return CUDA_SUCCESS;
}

CUresult sim_cuMemGetAllocationPropertiesFromHandle(CUmemAllocationProp *prop,
                                                    CUmemGenericAllocationHandle handle)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    struct sim_vmm *v = vmm_of(handle);
    if (!v || !prop)
        return CUDA_ERROR_INVALID_VALUE;
    *prop = v->prop;
    return CUDA_SUCCESS;
}

CUresult sim_cuMemAddressReserve(CUdeviceptr *ptr, size_t size, size_t alignment, CUdeviceptr addr,
                                 unsigned long long flags)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    (void)addr; /* a hint only */
    if (!ptr || size == 0 || size % SIM_GRANULARITY || flags != 0 ||
        (alignment & (alignment - 1)))
        return CUDA_ERROR_INVALID_VALUE;
    if (alignment < SIM_GRANULARITY)
        alignment = SIM_GRANULARITY;
    size_t len = size + alignment;
    void *m = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED)
        return CUDA_ERROR_OUT_OF_MEMORY;
    uintptr_t base = ((uintptr_t)m + alignment - 1) & ~(uintptr_t)(alignment - 1);
    pthread_mutex_lock(&sim_proc.alloc_lock);
    if (nreservations == capreservations) {
        size_t cap = capreservations ? capreservations * 2 : 32;
        struct sim_reservation *n = realloc(reservations, cap * sizeof *n);
        if (!n) {
            pthread_mutex_unlock(&sim_proc.alloc_lock);
            munmap(m, len);
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        reservations = n;
        capreservations = cap;
    }
    reservations[nreservations++] = (struct sim_reservation){base, size, m, len};
    pthread_mutex_unlock(&sim_proc.alloc_lock);
    *ptr = (CUdeviceptr)base;
    return CUDA_SUCCESS;
}

CUresult sim_cuMemAddressFree(CUdeviceptr ptr, size_t size)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    pthread_mutex_lock(&sim_proc.alloc_lock);
    for (size_t i = 0; i < nreservations; i++)
        if (reservations[i].base == (uintptr_t)ptr && reservations[i].size == size) {
            struct sim_reservation r = reservations[i];
            reservations[i] = reservations[--nreservations];
            pthread_mutex_unlock(&sim_proc.alloc_lock);
            munmap(r.map, r.map_len);
            return CUDA_SUCCESS;
        }
    pthread_mutex_unlock(&sim_proc.alloc_lock);
    return CUDA_ERROR_INVALID_VALUE;
}

static int in_reservation(uintptr_t p, size_t size)
{
    int ok = 0;
    pthread_mutex_lock(&sim_proc.alloc_lock);
    for (size_t i = 0; i < nreservations && !ok; i++)
        if (p >= reservations[i].base && size <= reservations[i].size &&
            p - reservations[i].base <= reservations[i].size - size)
            ok = 1;
    pthread_mutex_unlock(&sim_proc.alloc_lock);
    return ok;
}

CUresult sim_cuMemMap(CUdeviceptr ptr, size_t size, size_t offset, CUmemGenericAllocationHandle handle,
                      unsigned long long flags)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    struct sim_vmm *v = vmm_of(handle);
    if (!v || flags != 0 || size == 0 || size % SIM_GRANULARITY || offset % SIM_GRANULARITY ||
        offset > v->size || size > v->size - offset || !in_reservation((uintptr_t)ptr, size))
        return CUDA_ERROR_INVALID_VALUE;
    if (sim_alloc_find((uintptr_t)ptr, 1))
        return CUDA_ERROR_INVALID_VALUE; /* already mapped */
    struct sim_alloc *a = calloc(1, sizeof *a);
    if (!a)
        return CUDA_ERROR_OUT_OF_MEMORY;
    pthread_mutex_lock(&sim_proc.alloc_lock);
    v->maps++; /* the mapping holds the memory, whatever becomes of the handle */
    pthread_mutex_unlock(&sim_proc.alloc_lock);
    void *m = mmap((void *)(uintptr_t)ptr, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED,
                   v->fd, (off_t)offset);
    a->base = (uintptr_t)ptr;
    a->size = size;
    a->map_len = size;
    a->device = v->device;
    a->kind = A_VMM_MAP;
    a->vmm = v;
    if (m == MAP_FAILED || table_insert(a)) {
        free(a);
        pthread_mutex_lock(&sim_proc.alloc_lock);
        v->maps--;
        int gone = vmm_gone(v);
        pthread_mutex_unlock(&sim_proc.alloc_lock);
        if (gone)
            vmm_free(v);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    return CUDA_SUCCESS;
}

CUresult sim_cuMemUnmap(CUdeviceptr ptr, size_t size)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!in_reservation((uintptr_t)ptr, size))
        return CUDA_ERROR_INVALID_VALUE;
    uintptr_t p = (uintptr_t)ptr, end = p + size;
    for (;;) {
        struct sim_alloc *victim = NULL;
        struct sim_vmm *gone = NULL;
        pthread_mutex_lock(&sim_proc.alloc_lock);
        for (size_t i = 0; i < sim_proc.nallocs; i++) {
            struct sim_alloc *a = sim_proc.allocs[i];
            if (a->kind == A_VMM_MAP && a->base >= p && a->base < end) {
                victim = a;
                table_remove_at(i);
                if (a->vmm) {
                    a->vmm->maps--;
                    gone = vmm_gone(a->vmm) ? a->vmm : NULL;
                }
                break;
            }
        }
        pthread_mutex_unlock(&sim_proc.alloc_lock);
        if (!victim)
            break;
        free(victim);
        if (gone)
            vmm_free(gone); /* released earlier: the last mapping gives the memory back */
    }
    mmap((void *)p, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
    return CUDA_SUCCESS;
}

CUresult sim_cuMemSetAccess(CUdeviceptr ptr, size_t size, const CUmemAccessDesc *desc, size_t count)
{
    CUresult rc = sim_check_init();
    if (rc)
        return rc;
    if (!desc || count == 0 || !in_reservation((uintptr_t)ptr, size))
        return CUDA_ERROR_INVALID_VALUE;
    int prot = PROT_NONE;
    for (size_t i = 0; i < count; i++) {
        if (desc[i].location.type != CU_MEM_LOCATION_TYPE_DEVICE ||
            desc[i].location.id < 0 || desc[i].location.id >= sim_proc.h.cfg.ncards)
            return CUDA_ERROR_INVALID_DEVICE;
        if (desc[i].flags == CU_MEM_ACCESS_FLAGS_PROT_READ)
            prot |= PROT_READ;
        else if (desc[i].flags == CU_MEM_ACCESS_FLAGS_PROT_READWRITE)
            prot |= PROT_READ | PROT_WRITE;
        else if (desc[i].flags != CU_MEM_ACCESS_FLAGS_PROT_NONE)
            return CUDA_ERROR_INVALID_VALUE;
    }
    if (mprotect((void *)(uintptr_t)ptr, size, prot) != 0)
        return CUDA_ERROR_INVALID_VALUE;
    return CUDA_SUCCESS;
}
