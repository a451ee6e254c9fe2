/* The NVML view: what nvidia-smi, pynvml and DCGM-style tools read.
 *
 * Only the slice's card exists (count 1, index 0, found by its UUID), its memory is the
 * slice (total = the limit, used = what the slice's processes hold), and its running
 * processes are the slice's processes. Any other card's handle is refused. */
#include "flexai.h"

#include <string.h>

#define LOAD(p) __atomic_load_n(&(p), __ATOMIC_RELAXED)

int flexai_nvml_device(nvmlDevice_t *dev)
{
    /* Resolved on every call: NVML hands out handles per nvmlInit, and these queries are
     * not on any hot path. */
    const struct flexai_config *cfg = &flexai_P.cfg;
    nvmlReturn_t rc;
    if (cfg->device_uuid[0]) {
        __typeof__(&nvmlDeviceGetHandleByUUID) f = REAL(nvmlDeviceGetHandleByUUID);
        rc = f ? f(cfg->device_uuid, dev) : NVML_ERROR_LIBRARY_NOT_FOUND;
    } else {
        __typeof__(&nvmlDeviceGetHandleByIndex_v2) f = REAL(nvmlDeviceGetHandleByIndex_v2);
        rc = f ? f((unsigned)cfg->device_index, dev) : NVML_ERROR_LIBRARY_NOT_FOUND;
    }
    return rc == NVML_SUCCESS ? 0 : -1;
}

/* Is `dev` the slice's card? */
static int is_slice_device(nvmlDevice_t dev)
{
    nvmlDevice_t mine;
    return flexai_nvml_device(&mine) == 0 && mine == dev;
}

static nvmlReturn_t count_view(nvmlReturn_t rc, unsigned int *count)
{
    if (rc != NVML_SUCCESS || count == NULL || !flexai_enforcing())
        return rc;
    nvmlDevice_t d;
    *count = flexai_nvml_device(&d) == 0 ? 1 : 0;
    return rc;
}

nvmlReturn_t fx_nvmlDeviceGetCount_v2(unsigned int *count)
{
    __typeof__(&nvmlDeviceGetCount_v2) real = REAL(nvmlDeviceGetCount_v2);
    if (!real)
        return NVML_ERROR_LIBRARY_NOT_FOUND;
    return count_view(real(count), count);
}
FLEXAI_ALIAS(nvmlDeviceGetCount_v2);

nvmlReturn_t fx_nvmlDeviceGetCount(unsigned int *count)
{
    __typeof__(&nvmlDeviceGetCount) real = REAL(nvmlDeviceGetCount);
    if (!real)
        return NVML_ERROR_LIBRARY_NOT_FOUND;
    return count_view(real(count), count);
}
FLEXAI_ALIAS(nvmlDeviceGetCount);

static nvmlReturn_t by_index(nvmlReturn_t (*real)(unsigned int, nvmlDevice_t *),
                             unsigned int index, nvmlDevice_t *device)
{
    if (!flexai_enforcing())
        return real(index, device);
    unsigned int count;
    __typeof__(&nvmlDeviceGetCount_v2) count_fn = REAL(nvmlDeviceGetCount_v2);
    nvmlReturn_t rc = count_fn ? count_fn(&count) : NVML_ERROR_UNINITIALIZED;
    if (rc != NVML_SUCCESS)
        return rc;
    if (device == NULL || index != 0)
        return NVML_ERROR_INVALID_ARGUMENT;
    return flexai_nvml_device(device) == 0 ? NVML_SUCCESS : NVML_ERROR_INVALID_ARGUMENT;
}

nvmlReturn_t fx_nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device)
{
    __typeof__(&nvmlDeviceGetHandleByIndex_v2) real = REAL(nvmlDeviceGetHandleByIndex_v2);
    return real ? by_index(real, index, device) : NVML_ERROR_LIBRARY_NOT_FOUND;
}
FLEXAI_ALIAS(nvmlDeviceGetHandleByIndex_v2);

nvmlReturn_t fx_nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device)
{
    __typeof__(&nvmlDeviceGetHandleByIndex) real = REAL(nvmlDeviceGetHandleByIndex);
    return real ? by_index(real, index, device) : NVML_ERROR_LIBRARY_NOT_FOUND;
}
FLEXAI_ALIAS(nvmlDeviceGetHandleByIndex);

static nvmlReturn_t only_slice(nvmlReturn_t rc, nvmlDevice_t *device)
{
    if (rc == NVML_SUCCESS && device && flexai_enforcing() && !is_slice_device(*device))
        return NVML_ERROR_NOT_FOUND;
    return rc;
}

nvmlReturn_t fx_nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device)
{
    __typeof__(&nvmlDeviceGetHandleByUUID) real = REAL(nvmlDeviceGetHandleByUUID);
    return real ? only_slice(real(uuid, device), device) : NVML_ERROR_LIBRARY_NOT_FOUND;
}
FLEXAI_ALIAS(nvmlDeviceGetHandleByUUID);

nvmlReturn_t fx_nvmlDeviceGetHandleByPciBusId_v2(const char *pciBusId, nvmlDevice_t *device)
{
    __typeof__(&nvmlDeviceGetHandleByPciBusId_v2) real = REAL(nvmlDeviceGetHandleByPciBusId_v2);
    return real ? only_slice(real(pciBusId, device), device) : NVML_ERROR_LIBRARY_NOT_FOUND;
}
FLEXAI_ALIAS(nvmlDeviceGetHandleByPciBusId_v2);

nvmlReturn_t fx_nvmlDeviceGetHandleByPciBusId(const char *pciBusId, nvmlDevice_t *device)
{
    __typeof__(&nvmlDeviceGetHandleByPciBusId) real = REAL(nvmlDeviceGetHandleByPciBusId);
    return real ? only_slice(real(pciBusId, device), device) : NVML_ERROR_LIBRARY_NOT_FOUND;
}
FLEXAI_ALIAS(nvmlDeviceGetHandleByPciBusId);

nvmlReturn_t fx_nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index)
{
    __typeof__(&nvmlDeviceGetIndex) real = REAL(nvmlDeviceGetIndex);
    if (!real)
        return NVML_ERROR_LIBRARY_NOT_FOUND;
    nvmlReturn_t rc = real(device, index);
    if (rc == NVML_SUCCESS && index && flexai_enforcing()) {
        if (!is_slice_device(device))
            return NVML_ERROR_INVALID_ARGUMENT;
        *index = 0;
    }
    return rc;
}
FLEXAI_ALIAS(nvmlDeviceGetIndex);

/* total = the limit, used = the slice's processes, free = the rest (and no more than the
 * card really has free). 0 when there is no memory limit (keep the driver's numbers). */
static int memory_view(unsigned long long *total, unsigned long long *free_bytes,
                       unsigned long long *used)
{
    int64_t limit = flexai_memory_limit();
    if (limit <= 0)
        return 0;
    int64_t in_use = flexai_memory_used();
    unsigned long long u = in_use > 0 ? (unsigned long long)in_use : 0;
    unsigned long long left = u >= (unsigned long long)limit ? 0 : (unsigned long long)limit - u;
    if (left < *free_bytes)
        *free_bytes = left;
    *total = (unsigned long long)limit;
    *used = u;
    return 1;
}

nvmlReturn_t fx_nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory)
{
    __typeof__(&nvmlDeviceGetMemoryInfo) real = REAL(nvmlDeviceGetMemoryInfo);
    if (!real)
        return NVML_ERROR_LIBRARY_NOT_FOUND;
    nvmlReturn_t rc = real(device, memory);
    if (rc != NVML_SUCCESS || memory == NULL || !flexai_enforcing())
        return rc;
    if (!is_slice_device(device))
        return NVML_ERROR_INVALID_ARGUMENT;
    memory_view(&memory->total, &memory->free, &memory->used);
    return rc;
}
FLEXAI_ALIAS(nvmlDeviceGetMemoryInfo);

nvmlReturn_t fx_nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory)
{
    __typeof__(&nvmlDeviceGetMemoryInfo_v2) real = REAL(nvmlDeviceGetMemoryInfo_v2);
    if (!real)
        return NVML_ERROR_LIBRARY_NOT_FOUND;
    nvmlReturn_t rc = real(device, memory);
    if (rc != NVML_SUCCESS || memory == NULL || !flexai_enforcing())
        return rc;
    if (!is_slice_device(device))
        return NVML_ERROR_INVALID_ARGUMENT;
    if (memory_view(&memory->total, &memory->free, &memory->used))
        memory->reserved = 0;
    return rc;
}
FLEXAI_ALIAS(nvmlDeviceGetMemoryInfo_v2);

/* The slice's processes that hold device memory or launched work; -1 when not enforcing. */
static int slice_processes(unsigned int *pids, unsigned long long *bytes, int max)
{
    struct flexai_region *r = flexai_region();
    if (r == NULL)
        return -1;
    (void)flexai_memory_used(); /* gives back what dead processes held */
    int n = 0;
    for (int i = 0; i < FLEXAI_MAX_PROCS; i++) {
        struct flexai_proc *s = &r->procs[i];
        int32_t pid = LOAD(s->pid);
        int64_t held = LOAD(s->memory_used);
        if (pid == 0 || (held <= 0 && LOAD(s->launches) == 0))
            continue;
        if (i != flexai_P.slot && flexai_P.region_fd >= 0 && !flexai_slot_alive(flexai_P.region_fd, i))
            continue;
        if (n < max) {
            pids[n] = (unsigned int)pid;
            bytes[n] = held > 0 ? (unsigned long long)held : 0;
        }
        n++;
    }
    return n;
}

#define PROCESS_LIST(name, info_type, fill)                                                  \
    {                                                                                        \
        __typeof__(&name) real = REAL(name);                                                 \
        if (!real)                                                                           \
            return NVML_ERROR_LIBRARY_NOT_FOUND;                                             \
        if (!flexai_enforcing())                                                             \
            return real(device, infoCount, infos);                                           \
        if (infoCount == NULL)                                                               \
            return NVML_ERROR_INVALID_ARGUMENT;                                              \
        if (!is_slice_device(device))                                                        \
            return NVML_ERROR_INVALID_ARGUMENT;                                              \
        unsigned int pids[FLEXAI_MAX_PROCS];                                                 \
        unsigned long long bytes[FLEXAI_MAX_PROCS];                                          \
        int n = slice_processes(pids, bytes, FLEXAI_MAX_PROCS);                              \
        if (n < 0)                                                                           \
            return real(device, infoCount, infos);                                           \
        if ((unsigned int)n > *infoCount || (n > 0 && infos == NULL)) {                      \
            *infoCount = (unsigned int)n;                                                    \
            return NVML_ERROR_INSUFFICIENT_SIZE;                                             \
        }                                                                                    \
        for (int i = 0; i < n; i++) {                                                        \
            info_type *info = &infos[i];                                                     \
            memset(info, 0, sizeof *info);                                                   \
            info->pid = pids[i];                                                             \
            info->usedGpuMemory = bytes[i];                                                  \
            fill;                                                                            \
        }                                                                                    \
        *infoCount = (unsigned int)n;                                                        \
        return NVML_SUCCESS;                                                                 \
    }

nvmlReturn_t fx_nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device,
                                                        unsigned int *infoCount,
                                                        nvmlProcessInfo_v2_t *infos)
PROCESS_LIST(nvmlDeviceGetComputeRunningProcesses_v3, nvmlProcessInfo_v2_t,
             info->gpuInstanceId = info->computeInstanceId = NVML_VALUE_NOT_AVAILABLE_UINT)
FLEXAI_ALIAS(nvmlDeviceGetComputeRunningProcesses_v3);

nvmlReturn_t fx_nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t device,
                                                        unsigned int *infoCount,
                                                        nvmlProcessInfo_v2_t *infos)
PROCESS_LIST(nvmlDeviceGetComputeRunningProcesses_v2, nvmlProcessInfo_v2_t,
             info->gpuInstanceId = info->computeInstanceId = NVML_VALUE_NOT_AVAILABLE_UINT)
FLEXAI_ALIAS(nvmlDeviceGetComputeRunningProcesses_v2);

nvmlReturn_t fx_nvmlDeviceGetComputeRunningProcesses(nvmlDevice_t device, unsigned int *infoCount,
                                                     nvmlProcessInfo_v1_t *infos)
PROCESS_LIST(nvmlDeviceGetComputeRunningProcesses, nvmlProcessInfo_v1_t, (void)0)
FLEXAI_ALIAS(nvmlDeviceGetComputeRunningProcesses);

/* ---- what the core asks of NVML (core/vendors.c) ---- */

/* The slice's card's memory as NVML reports it, when the driver API is not in use; 0 unknown. */
static int64_t nvml_card_memory(void)
{
    nvmlDevice_t nd;
    nvmlMemory_t m;
    __typeof__(&nvmlDeviceGetMemoryInfo) f = REAL(nvmlDeviceGetMemoryInfo);
    if (flexai_nvml_device(&nd) != 0 || !f || f(nd, &m) != NVML_SUCCESS)
        return 0;
    return (int64_t)m.total;
}

static const struct flexai_vendor NVML_VENDOR = {"NVML", nvml_card_memory, NULL};

__attribute__((constructor(101))) static void nvml_register(void)
{
    flexai_vendor_register(FLEXAI_VENDOR_NVML, &NVML_VENDOR);
}
