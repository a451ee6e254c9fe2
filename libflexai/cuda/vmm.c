/* Virtual memory management and IPC imports, accounted by the driver's ownership rules.
 *
 * VMM (issue 15, path 1): the driver frees a cuMemCreate handle's physical memory only when
 * every reference to the handle is released (cuMemCreate, cuMemImportFromShareableHandle
 * and each cuMemRetainAllocationHandle hold one) AND every cuMemMap mapping of it is
 * unmapped. ggml-cuda releases its handles right after mapping them; NCCL retains and
 * releases handles of buffers PyTorch still owns. So a handle is charged at cuMemCreate and
 * uncharged when its last reference and its last mapping are gone, whichever comes last.
 *
 * IPC imports (path 5): the importer's slice pays while the import is open or mapped, the
 * exporter keeps paying for its own allocation (docs/libflexai.md has the table and the
 * reasons). cuIpcOpenMemHandle and cuMemPoolImportPointer are charged the allocation's
 * size at import; a handle from cuMemImportFromShareableHandle is charged per mapping.
 *
 * The tables below are process-local and small (one entry per live handle and mapping);
 * every VMM wrapper holds one mutex across its driver call, so a handle value or an address
 * the driver reuses is never confused with the one it replaced. None of this is on the
 * cuMemAlloc/cuMemFree or launch paths.
 */
#include "flexai.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct vmm_handle {
    CUmemGenericAllocationHandle h;
    int64_t bytes;  /* charged at cuMemCreate (0 for an imported handle) */
    int refs;       /* references not yet released */
    int maps;       /* live mappings */
    int imported;   /* charged per mapping instead */
};

struct vmm_map {
    CUdeviceptr va;
    size_t size;
    CUmemGenericAllocationHandle h;
    int64_t charged; /* what this mapping itself holds (imported handles) */
};

static pthread_mutex_t vmm_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t vmm_once = PTHREAD_ONCE_INIT;
static struct vmm_handle *handles;
static size_t nhandles, caphandles;
static struct vmm_map *maps;
static size_t nmaps, capmaps;

static void vmm_after_fork(void)
{
    /* The child holds none of the parent's handles or mappings (CUDA does not survive
     * fork); forget them, and the lock another parent thread may have held. */
    pthread_mutex_init(&vmm_lock, NULL);
    free(handles);
    free(maps);
    handles = NULL;
    maps = NULL;
    nhandles = caphandles = nmaps = capmaps = 0;
}

static void vmm_init(void)
{
    pthread_atfork(NULL, NULL, vmm_after_fork);
}

static void lock(void)
{
    pthread_once(&vmm_once, vmm_init);
    pthread_mutex_lock(&vmm_lock);
}

static void unlock(void)
{
    pthread_mutex_unlock(&vmm_lock);
}

static int room(void **tab, size_t *cap, size_t n, size_t elem)
{
    if (n < *cap)
        return 0;
    size_t ncap = *cap ? *cap * 2 : 64;
    void *t = realloc(*tab, ncap * elem);
    if (t == NULL)
        return -1;
    *tab = t;
    *cap = ncap;
    return 0;
}

static struct vmm_handle *find_handle(CUmemGenericAllocationHandle h)
{
    for (size_t i = 0; i < nhandles; i++)
        if (handles[i].h == h)
            return &handles[i];
    return NULL;
}

/* Under the lock. If it cannot be remembered, what it holds stays charged until exit. */
static void add_handle(CUmemGenericAllocationHandle h, int64_t bytes, int imported)
{
    struct vmm_handle *e = find_handle(h);
    if (e == NULL) {
        if (room((void **)&handles, &caphandles, nhandles, sizeof *handles) != 0)
            return;
        e = &handles[nhandles++];
    }
    *e = (struct vmm_handle){h, bytes, 1, 0, imported};
}

/* Under the lock: drops e when nothing holds it any more; the bytes to give back. */
static int64_t settle(struct vmm_handle *e)
{
    if (e->refs > 0 || e->maps > 0)
        return 0;
    int64_t bytes = e->bytes;
    *e = handles[--nhandles];
    return bytes;
}

/* VMM: physical memory on a device counts; host and host-NUMA locations (NCCL) do not. */
CUresult fx_cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size,
                        const CUmemAllocationProp *prop, unsigned long long flags)
{
    __typeof__(&cuMemCreate) real = REAL(cuMemCreate);
    if (!real)
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!flexai_enforcing() || prop == NULL || prop->location.type != CU_MEM_LOCATION_TYPE_DEVICE)
        return real(handle, size, prop, flags);
    FLEXAI_CTX_FIRST_USE();
    int64_t bytes = (int64_t)size;
    int charged = flexai_reserve(bytes);
    if (charged < 0)
        return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult rc = real(handle, size, prop, flags);
    if (rc != CUDA_SUCCESS) {
        if (charged > 0)
            flexai_unreserve(bytes);
        return rc;
    }
    if (charged > 0) {
        lock();
        add_handle(*handle, bytes, 0);
        unlock();
    }
    return rc;
}
FLEXAI_ALIAS(cuMemCreate);

CUresult fx_cuMemRelease(CUmemGenericAllocationHandle handle)
{
    __typeof__(&cuMemRelease) real = REAL(cuMemRelease);
    if (!real)
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!flexai_enforcing())
        return real(handle);
    int64_t give = 0;
    lock();
    CUresult rc = real(handle);
    struct vmm_handle *e = rc == CUDA_SUCCESS ? find_handle(handle) : NULL;
    if (e) {
        e->refs--;
        give = settle(e); /* still mapped: charged until the last unmap */
    }
    unlock();
    if (give > 0)
        flexai_unreserve(give);
    return rc;
}
FLEXAI_ALIAS(cuMemRelease);

CUresult fx_cuMemRetainAllocationHandle(CUmemGenericAllocationHandle *handle, void *addr)
{
    __typeof__(&cuMemRetainAllocationHandle) real = REAL(cuMemRetainAllocationHandle);
    if (!real)
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!flexai_enforcing())
        return real(handle, addr);
    lock();
    CUresult rc = real(handle, addr);
    struct vmm_handle *e = rc == CUDA_SUCCESS && handle ? find_handle(*handle) : NULL;
    if (e)
        e->refs++; /* the same handle: one more reference to release */
    unlock();
    return rc;
}
FLEXAI_ALIAS(cuMemRetainAllocationHandle);

CUresult fx_cuMemMap(CUdeviceptr ptr, size_t size, size_t offset, CUmemGenericAllocationHandle handle,
                     unsigned long long flags)
{
    __typeof__(&cuMemMap) real = REAL(cuMemMap);
    if (!real)
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!flexai_enforcing())
        return real(ptr, size, offset, handle, flags);
    lock();
    struct vmm_handle *e = find_handle(handle);
    int64_t charge = 0;
    if (e && e->imported) { /* an import pays for what it maps */
        int charged = flexai_reserve((int64_t)size);
        if (charged < 0) {
            unlock();
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        charge = charged > 0 ? (int64_t)size : 0;
    }
    CUresult rc = real(ptr, size, offset, handle, flags);
    if (rc == CUDA_SUCCESS && e) {
        e->maps++;
        if (room((void **)&maps, &capmaps, nmaps, sizeof *maps) == 0)
            maps[nmaps++] = (struct vmm_map){ptr, size, handle, charge};
        charge = 0; /* kept (or, unremembered, held until exit) */
    }
    unlock();
    if (charge)
        flexai_unreserve(charge);
    return rc;
}
FLEXAI_ALIAS(cuMemMap);

CUresult fx_cuMemUnmap(CUdeviceptr ptr, size_t size)
{
    __typeof__(&cuMemUnmap) real = REAL(cuMemUnmap);
    if (!real)
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!flexai_enforcing())
        return real(ptr, size);
    int64_t give = 0;
    lock();
    CUresult rc = real(ptr, size);
    for (size_t i = 0; rc == CUDA_SUCCESS && i < nmaps;) {
        struct vmm_map m = maps[i];
        if (m.va < ptr || m.va - ptr >= size) {
            i++;
            continue;
        }
        maps[i] = maps[--nmaps];
        give += m.charged;
        struct vmm_handle *e = find_handle(m.h);
        if (e) {
            e->maps--;
            give += settle(e); /* released earlier: the last unmap gives the memory back */
        }
    }
    unlock();
    if (give > 0)
        flexai_unreserve(give);
    return rc;
}
FLEXAI_ALIAS(cuMemUnmap);

CUresult fx_cuMemImportFromShareableHandle(CUmemGenericAllocationHandle *handle, void *osHandle,
                                           int shHandleType)
{
    __typeof__(&cuMemImportFromShareableHandle) real = REAL(cuMemImportFromShareableHandle);
    if (!real)
        return CUDA_ERROR_NOT_INITIALIZED;
    CUresult rc = real(handle, osHandle, shHandleType);
    if (rc != CUDA_SUCCESS || handle == NULL || !flexai_enforcing())
        return rc;
    CUresult (*props)(CUmemAllocationProp *, CUmemGenericAllocationHandle) =
        (CUresult(*)(CUmemAllocationProp *, CUmemGenericAllocationHandle))flexai_driver_sym(
            FLEXAI_LIB_CUDA, "cuMemGetAllocationPropertiesFromHandle");
    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof prop);
    if (props && props(&prop, *handle) == CUDA_SUCCESS &&
        prop.location.type != CU_MEM_LOCATION_TYPE_DEVICE)
        return rc; /* host memory: not the card's */
    lock();
    struct vmm_handle *e = find_handle(*handle);
    if (e)
        e->refs++; /* a process importing its own export gets its handle back */
    else
        add_handle(*handle, 0, 1);
    unlock();
    return rc;
}
FLEXAI_ALIAS(cuMemImportFromShareableHandle);

/* ---- imports of whole allocations: charged their size while open ---------------------- */

static int64_t allocation_size(CUdeviceptr p)
{
    CUresult (*range)(CUdeviceptr *, size_t *, CUdeviceptr) =
        (CUresult(*)(CUdeviceptr *, size_t *, CUdeviceptr))flexai_driver_sym(
            FLEXAI_LIB_CUDA, "cuMemGetAddressRange_v2");
    CUdeviceptr base = 0;
    size_t size = 0;
    if (!range || range(&base, &size, p) != CUDA_SUCCESS)
        return 0;
    return (int64_t)size;
}

/* After a successful import of *p: charge it, or undo the import when the slice is full. */
static CUresult charge_import(int kind, CUdeviceptr p, CUresult (*undo)(CUdeviceptr))
{
    int64_t bytes = allocation_size(p);
    int charged = bytes > 0 ? flexai_reserve(bytes) : 0;
    if (charged < 0) {
        if (undo)
            undo(p);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    if (charged > 0)
        (void)flexai_sizemap_put(kind, (uint64_t)p, bytes); /* unremembered: held until exit */
    return CUDA_SUCCESS;
}

#define IPC_OPEN_WRAPPER(name)                                                               \
    {                                                                                        \
        __typeof__(&name) real = REAL(name);                                                 \
        if (!real)                                                                           \
            return CUDA_ERROR_NOT_INITIALIZED;                                               \
        CUresult rc = real(pdptr, handle, Flags);                                            \
        if (rc != CUDA_SUCCESS || pdptr == NULL || !flexai_enforcing())                      \
            return rc;                                                                       \
        return charge_import(FLEXAI_IPC, *pdptr, REAL(cuIpcCloseMemHandle));                 \
    }

CUresult fx_cuIpcOpenMemHandle_v2(CUdeviceptr *pdptr, CUipcMemHandle handle, unsigned int Flags)
IPC_OPEN_WRAPPER(cuIpcOpenMemHandle_v2)
FLEXAI_ALIAS(cuIpcOpenMemHandle_v2);

CUresult fx_cuIpcOpenMemHandle(CUdeviceptr *pdptr, CUipcMemHandle handle, unsigned int Flags)
IPC_OPEN_WRAPPER(cuIpcOpenMemHandle)
FLEXAI_ALIAS(cuIpcOpenMemHandle);

CUresult fx_cuIpcCloseMemHandle(CUdeviceptr dptr)
{
    __typeof__(&cuIpcCloseMemHandle) real = REAL(cuIpcCloseMemHandle);
    if (!real)
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!flexai_enforcing())
        return real(dptr);
    int64_t bytes = flexai_sizemap_take(FLEXAI_IPC, (uint64_t)dptr);
    CUresult rc = real(dptr);
    if (bytes >= 0) {
        if (rc == CUDA_SUCCESS)
            flexai_unreserve(bytes);
        else
            flexai_sizemap_put(FLEXAI_IPC, (uint64_t)dptr, bytes); /* still open */
    }
    return rc;
}
FLEXAI_ALIAS(cuIpcCloseMemHandle);

/* A pointer imported from another process's pool: freed with cuMemFree(Async), which
 * gives the bytes back as for any allocation of this process. */
CUresult fx_cuMemPoolImportPointer(CUdeviceptr *ptr_out, CUmemoryPool pool,
                                   CUmemPoolPtrExportData *shareData)
{
    __typeof__(&cuMemPoolImportPointer) real = REAL(cuMemPoolImportPointer);
    if (!real)
        return CUDA_ERROR_NOT_INITIALIZED;
    CUresult rc = real(ptr_out, pool, shareData);
    if (rc != CUDA_SUCCESS || ptr_out == NULL || !flexai_enforcing())
        return rc;
    return charge_import(FLEXAI_PTR, *ptr_out, REAL(cuMemFree_v2));
}
FLEXAI_ALIAS(cuMemPoolImportPointer);
