/* Simulated libnvidia-ml.so.1: NVML answers from the simulator's shared state.
 *
 * Cards come from FLEXAI_SIM_DIR/cards.conf; memory use and running processes from the
 * per-process slots that the simulated libcuda keeps in FLEXAI_SIM_DIR/state; utilization
 * from the cards' shared kernel timelines. Dead processes' slots are reclaimed on queries. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "simnvml.h"
#include "simstate.h"

#define NVML_API __attribute__((visibility("default")))
#define DEV_MAGIC 0x4c4d564eu

struct nvmlDevice_st {
    uint32_t magic;
    int index;
};

/* Process state: the init reference count and the mapped simulator state, under one lock. */
static struct {
    pthread_mutex_t lock;
    int refs;
    struct sim_handle h;
    struct nvmlDevice_st dev[SIM_MAX_CARDS];
} nv = {.lock = PTHREAD_MUTEX_INITIALIZER};

static const struct { nvmlReturn_t code; const char *text; } errors[] = {
    {NVML_SUCCESS, "Success"},
    {NVML_ERROR_UNINITIALIZED, "Uninitialized"},
    {NVML_ERROR_INVALID_ARGUMENT, "Invalid Argument"},
    {NVML_ERROR_NOT_SUPPORTED, "Not Supported"},
    {NVML_ERROR_NO_PERMISSION, "Insufficient Permissions"},
    {NVML_ERROR_ALREADY_INITIALIZED, "Already Initialized"},
    {NVML_ERROR_NOT_FOUND, "Not Found"},
    {NVML_ERROR_INSUFFICIENT_SIZE, "Insufficient Size"},
    {NVML_ERROR_INSUFFICIENT_POWER, "Insufficient External Power"},
    {NVML_ERROR_DRIVER_NOT_LOADED, "Driver Not Loaded"},
    {NVML_ERROR_TIMEOUT, "Timeout"},
    {NVML_ERROR_IRQ_ISSUE, "Interrupt Request Issue"},
    {NVML_ERROR_LIBRARY_NOT_FOUND, "NVML Shared Library Not Found"},
    {NVML_ERROR_FUNCTION_NOT_FOUND, "Function Not Found"},
    {NVML_ERROR_CORRUPTED_INFOROM, "Corrupted infoROM"},
    {NVML_ERROR_GPU_IS_LOST, "GPU is lost"},
    {NVML_ERROR_RESET_REQUIRED, "GPU requires restart"},
    {NVML_ERROR_OPERATING_SYSTEM, "The operating system has blocked the request."},
    {NVML_ERROR_LIB_RM_VERSION_MISMATCH, "RM has detected an NVML/RM version mismatch."},
    {NVML_ERROR_IN_USE, "In use by another client"},
    {NVML_ERROR_MEMORY, "Insufficient Memory"},
    {NVML_ERROR_NO_DATA, "No data"},
    {NVML_ERROR_VGPU_ECC_NOT_SUPPORTED, "ECC is not supported"},
    {NVML_ERROR_INSUFFICIENT_RESOURCES, "Insufficient resources"},
    {NVML_ERROR_FREQ_NOT_SUPPORTED, "Frequency not supported"},
    {NVML_ERROR_ARGUMENT_VERSION_MISMATCH, "Argument version mismatch"},
    {NVML_ERROR_DEPRECATED, "Deprecated"},
    {NVML_ERROR_NOT_READY, "Not ready"},
    {NVML_ERROR_GPU_NOT_FOUND, "GPU not found"},
    {NVML_ERROR_INVALID_STATE, "Invalid state"},
    {NVML_ERROR_RESET_TYPE_NOT_SUPPORTED, "Reset type not supported"},
    {NVML_ERROR_UNKNOWN, "Unknown Error"},
};

NVML_API const char *nvmlErrorString(nvmlReturn_t result)
{
    for (size_t i = 0; i < sizeof errors / sizeof errors[0]; i++)
        if (errors[i].code == result)
            return errors[i].text;
    return "Unknown Error";
}

/* ---------------------------------------------------------------- init */

NVML_API nvmlReturn_t nvmlInitWithFlags(unsigned int flags)
{
    if (flags & ~(unsigned)(NVML_INIT_FLAG_NO_GPUS | NVML_INIT_FLAG_NO_ATTACH))
        return NVML_ERROR_INVALID_ARGUMENT;
    nvmlReturn_t rc = NVML_SUCCESS;
    pthread_mutex_lock(&nv.lock);
    if (nv.refs == 0) {
        enum sim_status st = sim_open(&nv.h, 0);
        switch (st) {
        case SIM_OK:
            for (int i = 0; i < SIM_MAX_CARDS; i++) {
                nv.dev[i].magic = DEV_MAGIC;
                nv.dev[i].index = i;
            }
            break;
        case SIM_BAD_CONFIG:
            fprintf(stderr, "flexai-sim: %s/%s is invalid; NVML sees no driver "
                            "(FLEXAI_SIM_DEBUG=1 tells why)\n", sim_dir(), SIM_CONFIG_NAME);
            rc = NVML_ERROR_DRIVER_NOT_LOADED;
            break;
        case SIM_NO_CONFIG:
            rc = NVML_ERROR_DRIVER_NOT_LOADED;
            break;
        default:
            rc = NVML_ERROR_OPERATING_SYSTEM;
            break;
        }
    }
    if (rc == NVML_SUCCESS)
        nv.refs++;
    pthread_mutex_unlock(&nv.lock);
    return rc;
}

NVML_API nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
NVML_API nvmlReturn_t nvmlInit(void) { return nvmlInitWithFlags(0); }

NVML_API nvmlReturn_t nvmlShutdown(void)
{
    nvmlReturn_t rc = NVML_SUCCESS;
    pthread_mutex_lock(&nv.lock);
    if (nv.refs == 0)
        rc = NVML_ERROR_UNINITIALIZED;
    else if (--nv.refs == 0)
        sim_close(&nv.h);
    pthread_mutex_unlock(&nv.lock);
    return rc;
}

static nvmlReturn_t ready(void)
{
    pthread_mutex_lock(&nv.lock);
    int refs = nv.refs;
    pthread_mutex_unlock(&nv.lock);
    return refs > 0 ? NVML_SUCCESS : NVML_ERROR_UNINITIALIZED;
}

static nvmlReturn_t dev_of(nvmlDevice_t d, int *index)
{
    nvmlReturn_t rc = ready();
    if (rc)
        return rc;
    if (!d || d->magic != DEV_MAGIC || d->index < 0 || d->index >= nv.h.cfg.ncards)
        return NVML_ERROR_INVALID_ARGUMENT;
    *index = d->index;
    return NVML_SUCCESS;
}

#define DEV_OR_RETURN(d, i) int i; do { nvmlReturn_t r_ = dev_of(d, &i); if (r_) return r_; } while (0)

static nvmlReturn_t copy_string(char *dst, unsigned int len, const char *src)
{
    if (!dst)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(src) + 1 > len)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(dst, src, strlen(src) + 1);
    return NVML_SUCCESS;
}

/* ---------------------------------------------------------------- system */

NVML_API nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length)
{
    nvmlReturn_t rc = ready();
    return rc ? rc : copy_string(version, length, nv.h.cfg.driver_version);
}

NVML_API nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length)
{
    nvmlReturn_t rc = ready();
    if (rc)
        return rc;
    char buf[64];
    snprintf(buf, sizeof buf, "13.%s", nv.h.cfg.driver_version);
    return copy_string(version, length, buf);
}

NVML_API nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *cudaDriverVersion)
{
    nvmlReturn_t rc = ready();
    if (rc)
        return rc;
    if (!cudaDriverVersion)
        return NVML_ERROR_INVALID_ARGUMENT;
    *cudaDriverVersion = 13000;
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *cudaDriverVersion)
{
    return nvmlSystemGetCudaDriverVersion(cudaDriverVersion);
}

NVML_API nvmlReturn_t nvmlSystemGetProcessName(unsigned int pid, char *name, unsigned int length)
{
    nvmlReturn_t rc = ready();
    if (rc)
        return rc;
    if (!name || length == 0)
        return NVML_ERROR_INVALID_ARGUMENT;
    char path[64], buf[256] = "";
    snprintf(path, sizeof path, "/proc/%u/cmdline", pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return NVML_ERROR_NOT_FOUND;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    snprintf(name, length, "%s", buf);
    return NVML_SUCCESS;
}

/* ---------------------------------------------------------------- device handles */

NVML_API nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *deviceCount)
{
    nvmlReturn_t rc = ready();
    if (rc)
        return rc;
    if (!deviceCount)
        return NVML_ERROR_INVALID_ARGUMENT;
    *deviceCount = (unsigned)nv.h.cfg.ncards;
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetCount(unsigned int *deviceCount)
{
    return nvmlDeviceGetCount_v2(deviceCount);
}

NVML_API nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device)
{
    nvmlReturn_t rc = ready();
    if (rc)
        return rc;
    if (!device || index >= (unsigned)nv.h.cfg.ncards)
        return NVML_ERROR_INVALID_ARGUMENT;
    *device = &nv.dev[index];
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device)
{
    return nvmlDeviceGetHandleByIndex_v2(index, device);
}

NVML_API nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device)
{
    nvmlReturn_t rc = ready();
    if (rc)
        return rc;
    if (!uuid || !device)
        return NVML_ERROR_INVALID_ARGUMENT;
    for (int i = 0; i < nv.h.cfg.ncards; i++)
        if (!strcasecmp(nv.h.cfg.card[i].uuid, uuid)) {
            *device = &nv.dev[i];
            return NVML_SUCCESS;
        }
    return NVML_ERROR_NOT_FOUND;
}

static void bus_id(int index, char *out, size_t len)
{
    snprintf(out, len, "00000000:%02X:00.0", nv.h.cfg.card[index].pci_bus);
}

NVML_API nvmlReturn_t nvmlDeviceGetHandleByPciBusId_v2(const char *pciBusId, nvmlDevice_t *device)
{
    nvmlReturn_t rc = ready();
    if (rc)
        return rc;
    if (!pciBusId || !device)
        return NVML_ERROR_INVALID_ARGUMENT;
    unsigned domain = 0, bus = 0, dev = 0, fn = 0;
    if (sscanf(pciBusId, "%x:%x:%x.%x", &domain, &bus, &dev, &fn) != 4 &&
        sscanf(pciBusId, "%x:%x.%x", &bus, &dev, &fn) != 3)
        return NVML_ERROR_INVALID_ARGUMENT;
    for (int i = 0; i < nv.h.cfg.ncards; i++)
        if ((unsigned)nv.h.cfg.card[i].pci_bus == bus && domain == 0 && dev == 0 && fn == 0) {
            *device = &nv.dev[i];
            return NVML_SUCCESS;
        }
    return NVML_ERROR_NOT_FOUND;
}

NVML_API nvmlReturn_t nvmlDeviceGetHandleByPciBusId(const char *pciBusId, nvmlDevice_t *device)
{
    return nvmlDeviceGetHandleByPciBusId_v2(pciBusId, device);
}

NVML_API nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index)
{
    DEV_OR_RETURN(device, i);
    if (!index)
        return NVML_ERROR_INVALID_ARGUMENT;
    *index = (unsigned)i;
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetMinorNumber(nvmlDevice_t device, unsigned int *minorNumber)
{
    DEV_OR_RETURN(device, i);
    if (!minorNumber)
        return NVML_ERROR_INVALID_ARGUMENT;
    *minorNumber = (unsigned)i;
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length)
{
    DEV_OR_RETURN(device, i);
    return copy_string(name, length, nv.h.cfg.card[i].name);
}

NVML_API nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length)
{
    DEV_OR_RETURN(device, i);
    return copy_string(uuid, length, nv.h.cfg.card[i].uuid);
}

NVML_API nvmlReturn_t nvmlDeviceGetSerial(nvmlDevice_t device, char *serial, unsigned int length)
{
    DEV_OR_RETURN(device, i);
    char buf[32];
    snprintf(buf, sizeof buf, "%013d", 1650000000 + i);
    return copy_string(serial, length, buf);
}

NVML_API nvmlReturn_t nvmlDeviceGetBrand(nvmlDevice_t device, nvmlBrandType_t *type)
{
    DEV_OR_RETURN(device, i);
    (void)i;
    if (!type)
        return NVML_ERROR_INVALID_ARGUMENT;
    *type = NVML_BRAND_NVIDIA;
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetArchitecture(nvmlDevice_t device, nvmlDeviceArchitecture_t *arch)
{
    DEV_OR_RETURN(device, i);
    (void)i;
    if (!arch)
        return NVML_ERROR_INVALID_ARGUMENT;
    switch (nv.h.cfg.cc_major) {
    case 9: *arch = NVML_DEVICE_ARCH_HOPPER; break;
    case 8: *arch = nv.h.cfg.cc_minor == 9 ? NVML_DEVICE_ARCH_ADA : NVML_DEVICE_ARCH_AMPERE; break;
    default: *arch = NVML_DEVICE_ARCH_UNKNOWN; break;
    }
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t device, int *major, int *minor)
{
    DEV_OR_RETURN(device, i);
    (void)i;
    if (!major || !minor)
        return NVML_ERROR_INVALID_ARGUMENT;
    *major = nv.h.cfg.cc_major;
    *minor = nv.h.cfg.cc_minor;
    return NVML_SUCCESS;
}

static nvmlReturn_t pci_info(nvmlDevice_t device, nvmlPciInfo_t *pci)
{
    DEV_OR_RETURN(device, i);
    if (!pci)
        return NVML_ERROR_INVALID_ARGUMENT;
    memset(pci, 0, sizeof *pci);
    bus_id(i, pci->busId, sizeof pci->busId);
    snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "0000:%02X:00.0", nv.h.cfg.card[i].pci_bus);
    pci->domain = 0;
    pci->bus = (unsigned)nv.h.cfg.card[i].pci_bus;
    pci->device = 0;
    pci->pciDeviceId = 0x233010de;      /* device 0x2330, vendor NVIDIA */
    pci->pciSubSystemId = 0x16c110de;
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t d, nvmlPciInfo_t *p) { return pci_info(d, p); }
NVML_API nvmlReturn_t nvmlDeviceGetPciInfo_v2(nvmlDevice_t d, nvmlPciInfo_t *p) { return pci_info(d, p); }
NVML_API nvmlReturn_t nvmlDeviceGetPciInfo(nvmlDevice_t d, nvmlPciInfo_t *p) { return pci_info(d, p); }

/* ---------------------------------------------------------------- memory and processes */

static void memory_of(int i, unsigned long long *total, unsigned long long *used)
{
    sim_reclaim_dead(&nv.h);
    *total = nv.h.cfg.card[i].memory;
    *used = sim_mem_used(&nv.h, i);
    if (*used > *total)
        *used = *total;
}

NVML_API nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory)
{
    DEV_OR_RETURN(device, i);
    if (!memory)
        return NVML_ERROR_INVALID_ARGUMENT;
    unsigned long long total, used;
    memory_of(i, &total, &used);
    memory->total = total;
    memory->used = used;
    memory->free = total - used;
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory)
{
    DEV_OR_RETURN(device, i);
    if (!memory)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (memory->version != nvmlMemory_v2)
        return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    unsigned long long total, used;
    memory_of(i, &total, &used);
    memory->total = total;
    memory->reserved = 0; /* the simulator reserves nothing for the driver */
    memory->used = used;
    memory->free = total - used;
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetBAR1MemoryInfo(nvmlDevice_t device, nvmlBAR1Memory_t *bar1)
{
    DEV_OR_RETURN(device, i);
    (void)i;
    if (!bar1)
        return NVML_ERROR_INVALID_ARGUMENT;
    bar1->bar1Total = 256ULL << 20;
    bar1->bar1Used = 2ULL << 20;
    bar1->bar1Free = bar1->bar1Total - bar1->bar1Used;
    return NVML_SUCCESS;
}

/* Processes holding device memory or a context on card i, in the layout of `size` bytes. */
static nvmlReturn_t processes(nvmlDevice_t device, unsigned int *count, void *infos, int version)
{
    DEV_OR_RETURN(device, i);
    if (!count)
        return NVML_ERROR_INVALID_ARGUMENT;
    sim_reclaim_dead(&nv.h);
    unsigned n = 0;
    unsigned cap = infos ? *count : 0;
    for (int s = 0; s < SIM_MAX_SLOTS; s++) {
        struct sim_slot *slot = &nv.h.sh->slot[s];
        uint32_t pid = atomic_load(&slot->pid);
        uint64_t mem = atomic_load(&slot->mem[i]);
        uint32_t ctxs = atomic_load(&slot->contexts[i]);
        if (!pid || (!mem && !ctxs) || !sim_slot_alive(&nv.h, s))
            continue;
        if (n < cap) {
            if (version == 1) {
                nvmlProcessInfo_v1_t *p = (nvmlProcessInfo_v1_t *)infos + n;
                p->pid = pid + (uint32_t)nv.h.cfg.nvml_pid_offset;
                p->usedGpuMemory = mem;
            } else {
                nvmlProcessInfo_t *p = (nvmlProcessInfo_t *)infos + n;
                p->pid = pid + (uint32_t)nv.h.cfg.nvml_pid_offset;
                p->usedGpuMemory = mem;
                p->gpuInstanceId = 0xFFFFFFFFu;
                p->computeInstanceId = 0xFFFFFFFFu;
            }
        }
        n++;
    }
    unsigned asked = *count;
    *count = n;
    if (n > 0 && (!infos || asked < n))
        return NVML_ERROR_INSUFFICIENT_SIZE;
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetComputeRunningProcesses(nvmlDevice_t d, unsigned int *c, nvmlProcessInfo_v1_t *p)
{ return processes(d, c, p, 1); }
NVML_API nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t d, unsigned int *c, nvmlProcessInfo_v2_t *p)
{ return processes(d, c, p, 2); }
NVML_API nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t d, unsigned int *c, nvmlProcessInfo_t *p)
{ return processes(d, c, p, 3); }

static nvmlReturn_t no_processes(nvmlDevice_t device, unsigned int *count)
{
    DEV_OR_RETURN(device, i);
    (void)i;
    if (!count)
        return NVML_ERROR_INVALID_ARGUMENT;
    *count = 0;
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses(nvmlDevice_t d, unsigned int *c, nvmlProcessInfo_v1_t *p)
{ (void)p; return no_processes(d, c); }
NVML_API nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v2(nvmlDevice_t d, unsigned int *c, nvmlProcessInfo_v2_t *p)
{ (void)p; return no_processes(d, c); }
NVML_API nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v3(nvmlDevice_t d, unsigned int *c, nvmlProcessInfo_t *p)
{ (void)p; return no_processes(d, c); }
NVML_API nvmlReturn_t nvmlDeviceGetMPSComputeRunningProcesses_v3(nvmlDevice_t d, unsigned int *c, nvmlProcessInfo_t *p)
{ (void)p; return no_processes(d, c); }

/* ---------------------------------------------------------------- utilization and sensors */

NVML_API nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *utilization)
{
    DEV_OR_RETURN(device, i);
    if (!utilization)
        return NVML_ERROR_INVALID_ARGUMENT;
    utilization->gpu = sim_utilization(&nv.h, i);
    utilization->memory = 0; /* memory traffic is not modelled */
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device, nvmlTemperatureSensors_t sensor, unsigned int *temp)
{
    DEV_OR_RETURN(device, i);
    if (!temp || sensor != NVML_TEMPERATURE_GPU)
        return NVML_ERROR_INVALID_ARGUMENT;
    *temp = 35 + sim_utilization(&nv.h, i) / 3;
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *power)
{
    DEV_OR_RETURN(device, i);
    if (!power)
        return NVML_ERROR_INVALID_ARGUMENT;
    *power = 70000 + 6300 * sim_utilization(&nv.h, i); /* mW: 70 W idle to 700 W busy */
    return NVML_SUCCESS;
}

static nvmlReturn_t power_limit(nvmlDevice_t device, unsigned int *limit)
{
    DEV_OR_RETURN(device, i);
    (void)i;
    if (!limit)
        return NVML_ERROR_INVALID_ARGUMENT;
    *limit = 700000;
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetEnforcedPowerLimit(nvmlDevice_t d, unsigned int *l) { return power_limit(d, l); }
NVML_API nvmlReturn_t nvmlDeviceGetPowerManagementLimit(nvmlDevice_t d, unsigned int *l) { return power_limit(d, l); }

NVML_API nvmlReturn_t nvmlDeviceGetFanSpeed(nvmlDevice_t device, unsigned int *speed)
{
    DEV_OR_RETURN(device, i);
    (void)i;
    (void)speed;
    return NVML_ERROR_NOT_SUPPORTED; /* passively cooled, like data-centre cards */
}

NVML_API nvmlReturn_t nvmlDeviceGetPerformanceState(nvmlDevice_t device, nvmlPstates_t *pState)
{
    DEV_OR_RETURN(device, i);
    (void)i;
    if (!pState)
        return NVML_ERROR_INVALID_ARGUMENT;
    *pState = NVML_PSTATE_0;
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetPersistenceMode(nvmlDevice_t device, nvmlEnableState_t *mode)
{
    DEV_OR_RETURN(device, i);
    (void)i;
    if (!mode)
        return NVML_ERROR_INVALID_ARGUMENT;
    *mode = NVML_FEATURE_ENABLED;
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetComputeMode(nvmlDevice_t device, nvmlComputeMode_t *mode)
{
    DEV_OR_RETURN(device, i);
    (void)i;
    if (!mode)
        return NVML_ERROR_INVALID_ARGUMENT;
    *mode = NVML_COMPUTEMODE_DEFAULT;
    return NVML_SUCCESS;
}

static nvmlReturn_t enable_state(nvmlDevice_t device, nvmlEnableState_t *a, nvmlEnableState_t *b,
                                 nvmlEnableState_t value)
{
    DEV_OR_RETURN(device, i);
    (void)i;
    if (!a || !b)
        return NVML_ERROR_INVALID_ARGUMENT;
    *a = *b = value;
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetEccMode(nvmlDevice_t d, nvmlEnableState_t *cur, nvmlEnableState_t *pend)
{ return enable_state(d, cur, pend, NVML_FEATURE_ENABLED); }

NVML_API nvmlReturn_t nvmlDeviceGetDisplayMode(nvmlDevice_t device, nvmlEnableState_t *display)
{ return enable_state(device, display, display, NVML_FEATURE_DISABLED); }
NVML_API nvmlReturn_t nvmlDeviceGetDisplayActive(nvmlDevice_t device, nvmlEnableState_t *isActive)
{ return enable_state(device, isActive, isActive, NVML_FEATURE_DISABLED); }

NVML_API nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int *currentMode, unsigned int *pendingMode)
{
    DEV_OR_RETURN(device, i);
    (void)i;
    (void)currentMode;
    (void)pendingMode;
    return NVML_ERROR_NOT_SUPPORTED;
}

static unsigned clock_mhz(nvmlClockType_t type)
{
    switch (type) {
    case NVML_CLOCK_GRAPHICS: case NVML_CLOCK_SM: return 1980;
    case NVML_CLOCK_MEM: return 2619;
    case NVML_CLOCK_VIDEO: return 1545;
    default: return 0;
    }
}

NVML_API nvmlReturn_t nvmlDeviceGetClockInfo(nvmlDevice_t device, nvmlClockType_t type, unsigned int *clock)
{
    DEV_OR_RETURN(device, i);
    (void)i;
    if (!clock || !clock_mhz(type))
        return NVML_ERROR_INVALID_ARGUMENT;
    *clock = clock_mhz(type);
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetMaxClockInfo(nvmlDevice_t device, nvmlClockType_t type, unsigned int *clock)
{
    return nvmlDeviceGetClockInfo(device, type, clock);
}

NVML_API nvmlReturn_t nvmlDeviceGetMultiGpuBoard(nvmlDevice_t device, unsigned int *multiGpuBool)
{
    DEV_OR_RETURN(device, i);
    (void)i;
    if (!multiGpuBool)
        return NVML_ERROR_INVALID_ARGUMENT;
    *multiGpuBool = 0;
    return NVML_SUCCESS;
}
