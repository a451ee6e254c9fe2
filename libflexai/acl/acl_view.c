/* ACL (Huawei Ascend, libascendcl.so): the slice enforced on the AscendCL runtime API.
 *
 * The same rules as the CUDA part (memory.c, compute.c), on ACL's entry points:
 *  - memory: aclrtMalloc, aclrtMallocAlign32, aclrtMallocCached, aclrtMallocWithCfg and
 *    aclrtMallocPhysical are reserve -> call -> commit or roll back in the slice's region
 *    (shared by every process of the container); past the limit they fail with
 *    ACL_ERROR_RT_MEMORY_ALLOCATION (207001) without reaching the driver. Each is charged
 *    what the runtime takes for it: aclrtMalloc/Cached/WithCfg round the size up to 32 bytes
 *    and add 32, aclrtMallocAlign32 only rounds, aclrtMallocPhysical takes the size.
 *    aclrtFree / aclrtFreePhysical give the bytes back; so does the end of the device
 *    (the last aclrtResetDevice, aclrtResetDeviceForce, aclFinalize), which frees everything
 *    the process held on it.
 *  - the view: aclrtGetMemInfo reports the slice (total = limit, free = what is left of it,
 *    never more than the card has free); aclrtGetDeviceCount is 1; device id 0 is the slice's
 *    chip and every other id is ACL_ERROR_RT_INVALID_DEVICEID (aclrtSetDevice,
 *    aclrtResetDevice, aclrtCreateContext, aclrtMallocWithCfg's device attribute,
 *    aclrtMallocPhysical's location). torch_npu calls aclrtGetMemInfo early in its start-up
 *    to size its caching allocator: the wrapper never charges, never fails where the driver
 *    succeeded, and keeps free <= total.
 *  - compute: every launch (aclrtLaunchKernel, ...V2, ...WithConfig, ...WithHostArgs) passes
 *    the same gate as CUDA launches (compute.c: card board, controller, priorities, hard
 *    mode, pause), measured with ACL timeline events, and is counted in the process's slot.
 *
 * Routing: programs linked against libascendcl.so bind to these exports (the preloaded
 * library comes first); dlopen + dlsym lookups of acl* names reach flexai_acl_dlsym through
 * libflexai's dlsym (route.c). The real functions are found in libascendcl.so.
 *
 * Which chip is the slice's: inside a container only the slice's /dev/davinciN exists, so the
 * runtime reports one device, id 0. Where the runtime reports more (the simulator, or a host
 * process), it is the slice's device_index. */
#include "flexai.h"
#include "sim/acl/acl_api.h"

#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ACL_SYMBOLS(X)                                                                       \
    X(aclFinalize) X(aclGetRecentErrMsg)                                                     \
    X(aclrtGetDeviceCount) X(aclrtSetDevice) X(aclrtResetDevice) X(aclrtResetDeviceForce)    \
    X(aclrtGetDevice) X(aclrtCreateContext) X(aclrtDestroyContext) X(aclrtGetMemInfo)        \
    X(aclrtMalloc) X(aclrtMallocAlign32) X(aclrtMallocCached) X(aclrtMallocWithCfg)          \
    X(aclrtFree) X(aclrtMallocPhysical) X(aclrtFreePhysical)                                 \
    X(aclrtMemGetAllocationGranularity)                                                      \
    X(aclrtMallocForTaskScheduler) X(acldvppMalloc) X(acldvppFree)                           \
    X(aclrtLaunchKernel) X(aclrtLaunchKernelV2) X(aclrtLaunchKernelWithConfig)               \
    X(aclrtLaunchKernelWithHostArgs) X(aclmdlRIExecuteAsync)

enum acl_sym {
#define ACL_ENUM(name) AX_##name,
    ACL_SYMBOLS(ACL_ENUM)
#undef ACL_ENUM
    AX_COUNT
};

#pragma GCC visibility push(hidden)
#define ACL_DECL(name) __typeof__(name) fx_##name;
ACL_SYMBOLS(ACL_DECL)
#undef ACL_DECL
#pragma GCC visibility pop

struct acl_entry {
    const char *name;
    void *wrapper;
};

static const struct acl_entry ACL_TABLE[AX_COUNT] = {
#define ACL_ROW(n) [AX_##n] = {#n, (void *)&fx_##n},
    ACL_SYMBOLS(ACL_ROW)
#undef ACL_ROW
};

static void *acl_real_ptr[AX_COUNT];
static void *acl_lib_handle;

#define ACL_SONAME "libascendcl.so"

static void *acl_lib(int load)
{
    void *h = __atomic_load_n(&acl_lib_handle, __ATOMIC_ACQUIRE);
    if (h != NULL)
        return h;
    h = dlopen(ACL_SONAME, RTLD_LAZY | RTLD_NOLOAD);
    if (h == NULL && load)
        h = dlopen(ACL_SONAME, RTLD_LAZY);
    if (h == NULL)
        return NULL;
    void *expected = NULL;
    if (!__atomic_compare_exchange_n(&acl_lib_handle, &expected, h, 0, __ATOMIC_ACQ_REL,
                                     __ATOMIC_ACQUIRE))
        dlclose(h);
    return __atomic_load_n(&acl_lib_handle, __ATOMIC_ACQUIRE);
}

static void acl_store_real(int sym, void *p)
{
    void *expected = NULL;
    __atomic_compare_exchange_n(&acl_real_ptr[sym], &expected, p, 0, __ATOMIC_ACQ_REL,
                                __ATOMIC_ACQUIRE);
}

static int from_acl_lib(void *addr);

/* The runtime's definition of `sym`: through libascendcl.so (and what it depends on), else the
 * next definition after this library when it is one of CANN's runtime libraries. */
static void *acl_find(int sym, int load)
{
    void *h = acl_lib(load);
    void *p = h ? flexai_real_dlsym(h, ACL_TABLE[sym].name) : NULL;
    if (p == NULL) { /* not reached from libascendcl.so (acldvppMalloc is libacl_dvpp.so's) */
        p = flexai_real_dlsym(RTLD_NEXT, ACL_TABLE[sym].name);
        if (p != NULL && !from_acl_lib(p))
            p = NULL;
    }
    return p == ACL_TABLE[sym].wrapper ? NULL : p;
}

static void *acl_real_slow(int sym)
{
    void *p = acl_find(sym, 1);
    if (p == NULL)
        return NULL;
    acl_store_real(sym, p);
    return __atomic_load_n(&acl_real_ptr[sym], __ATOMIC_ACQUIRE);
}

#define AREAL(name)                                                                          \
    ((__typeof__(&name))(__atomic_load_n(&acl_real_ptr[AX_##name], __ATOMIC_ACQUIRE)        \
                             ?: acl_real_slow(AX_##name)))

/* CANN's runtime libraries: where the entry points above are defined. libascendcl.so on
 * installs that build the runtime into it; libacl_rt.so where (open-source CANN) libascendcl.so
 * only forwards to it; libacl_dvpp.so defines acldvppMalloc/acldvppFree. A definition in any other
 * library (another project's "acl" API, a test double) is not the runtime's and is left alone. */
static const char *const ACL_LIBS[] = {ACL_SONAME, "libacl_rt.so", "libacl_dvpp.so"};

static int from_acl_lib(void *addr)
{
    Dl_info info;
    if (!dladdr(addr, &info) || info.dli_fname == NULL)
        return 0;
    const char *base = strrchr(info.dli_fname, '/');
    base = base ? base + 1 : info.dli_fname;
    for (size_t i = 0; i < sizeof ACL_LIBS / sizeof ACL_LIBS[0]; i++) {
        size_t n = strlen(ACL_LIBS[i]);
        if (strncmp(base, ACL_LIBS[i], n) == 0 && (base[n] == '\0' || base[n] == '.'))
            return 1;
    }
    return 0;
}

/* route.c's dlsym hands acl* names here: 1 when answered (in *out), 0 for glibc. */
int flexai_acl_dlsym(void *handle, const char *name, void **out)
{
    int sym = -1;
    for (int i = 0; i < AX_COUNT; i++)
        if (strcmp(ACL_TABLE[i].name, name) == 0) {
            sym = i;
            break;
        }
    if (sym < 0 || !flexai_enforcing())
        return 0;
    void *real = flexai_real_dlsym(handle, name);
    if (real == NULL) {
        *out = NULL;
        return 1;
    }
    if (real == ACL_TABLE[sym].wrapper) {
        real = acl_find(sym, 0);
        if (real == NULL) {
            *out = NULL;
            return 1;
        }
    } else if (!from_acl_lib(real)) {
        *out = real;
        return 1;
    }
    acl_store_real(sym, real);
    *out = ACL_TABLE[sym].wrapper;
    return 1;
}

/* ---- the slice's chip ------------------------------------------------------------------ */

static int acl_dev_state; /* 0 unknown, 1 found, 2 not found */
static int32_t acl_dev;

static int slice_device(int32_t *dev)
{
    int state = __atomic_load_n(&acl_dev_state, __ATOMIC_ACQUIRE);
    if (state == 1) {
        *dev = acl_dev;
        return 0;
    }
    if (state == 2)
        return -1;
    __typeof__(&aclrtGetDeviceCount) count_fn = AREAL(aclrtGetDeviceCount);
    uint32_t count = 0;
    if (!count_fn || count_fn(&count) != ACL_SUCCESS)
        return -1; /* ask again later */
    int found = 1;
    int32_t d = 0;
    if (count == 1)
        d = 0; /* the container sees its chip only */
    else if (flexai_P.cfg.device_index >= 0 && (uint32_t)flexai_P.cfg.device_index < count)
        d = flexai_P.cfg.device_index;
    else
        found = 0;
    acl_dev = d;
    __atomic_store_n(&acl_dev_state, found ? 1 : 2, __ATOMIC_RELEASE);
    if (!found)
        flexai_warn("flexai: the slice's chip (index %d) is not among this host's %u Ascend "
                    "device(s); no device is visible", flexai_P.cfg.device_index, count);
    *dev = d;
    return found ? 0 : -1;
}

/* The real id for the program's `id`; -1 when the program may not use it. */
static int32_t real_device(int32_t id)
{
    int32_t d;
    if (id != 0 || slice_device(&d) != 0)
        return -1;
    return d;
}

/* ---- what this process holds through ACL ----------------------------------------------- */

/* Allocations are remembered in the size map under a kind that carries a generation: the end
 * of the device (which frees everything in the driver) gives back all bytes at once and starts
 * a new generation, so a stale pointer freed later, or reused by a new allocation, never meets
 * an old entry. */
#define ACL_KIND_PTR 0x41000000
#define ACL_KIND_PHYS 0x42000000
static unsigned acl_gen;
static int64_t acl_live;      /* bytes of this generation's live allocations */
static int acl_refs;          /* aclrtSetDevice minus aclrtResetDevice on the slice's chip */
static pthread_mutex_t acl_lock = PTHREAD_MUTEX_INITIALIZER;

static int kind(int base)
{
    return base | (int)(__atomic_load_n(&acl_gen, __ATOMIC_ACQUIRE) & 0xffffff);
}

static void end_of_device(void)
{
    pthread_mutex_lock(&acl_lock);
    acl_refs = 0;
    __atomic_add_fetch(&acl_gen, 1, __ATOMIC_ACQ_REL);
    int64_t bytes = __atomic_exchange_n(&acl_live, 0, __ATOMIC_ACQ_REL);
    pthread_mutex_unlock(&acl_lock);
    flexai_unreserve(bytes);
}

/* The context footprint, once per process (shared with the CUDA part through the slot). */
static int charge_context(void)
{
    struct flexai_region *r = flexai_region();
    struct flexai_proc *me = flexai_P.me;
    if (r == NULL || me == NULL)
        return 0;
    int64_t bytes = flexai_context_bytes(r), zero = 0;
    if (bytes <= 0)
        return 0;
    if (!__atomic_compare_exchange_n(&me->context_bytes, &zero, bytes, 0, __ATOMIC_ACQ_REL,
                                     __ATOMIC_RELAXED))
        return 0;
    int charged = flexai_reserve(bytes);
    if (charged <= 0) {
        __atomic_store_n(&me->context_bytes, 0, __ATOMIC_RELAXED);
        return charged;
    }
    return 1;
}

/* The message of a refusal by flexai, handed out once by aclGetRecentErrMsg like ACL's own. */
static __thread char acl_msg[256];

static aclError acl_refuse(aclError code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static aclError acl_refuse(aclError code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = snprintf(acl_msg, sizeof acl_msg, "EE%d: flexai: ", code);
    if (n > 0 && (size_t)n < sizeof acl_msg)
        vsnprintf(acl_msg + n, sizeof acl_msg - (size_t)n, fmt, ap);
    va_end(ap);
    return code;
}

static aclError acl_oom(int64_t bytes)
{
    int64_t limit = flexai_memory_limit(), used = flexai_memory_used();
    return acl_refuse(ACL_ERROR_RT_MEMORY_ALLOCATION,
                      "out of memory in the slice: %lld bytes requested, %lld of %lld free",
                      (long long)bytes, (long long)(used < limit ? limit - used : 0), (long long)limit);
}

static aclError bad_device(int32_t id)
{
    return acl_refuse(ACL_ERROR_RT_INVALID_DEVICEID,
                      "device id %d is not visible: this container's slice is device 0", (int)id);
}

const char *fx_aclGetRecentErrMsg(void)
{
    static __thread char out[256];
    if (acl_msg[0]) {
        memcpy(out, acl_msg, sizeof out);
        acl_msg[0] = 0;
        return out;
    }
    __typeof__(&aclGetRecentErrMsg) real = AREAL(aclGetRecentErrMsg);
    return real ? real() : NULL;
}
FLEXAI_ALIAS(aclGetRecentErrMsg);

/* ---- devices and contexts --------------------------------------------------------------- */

aclError fx_aclrtGetDeviceCount(uint32_t *count)
{
    __typeof__(&aclrtGetDeviceCount) real = AREAL(aclrtGetDeviceCount);
    if (!real)
        return ACL_ERROR_RT_NO_DEVICE;
    aclError rc = real(count);
    if (rc != ACL_SUCCESS || count == NULL || !flexai_enforcing())
        return rc;
    int32_t d;
    *count = slice_device(&d) == 0 ? 1 : 0;
    return rc;
}
FLEXAI_ALIAS(aclrtGetDeviceCount);

/* The context is charged once the driver made it: the slice's region may need the chip's
 * memory (a limit given as a share), which ACL only reports for a device that is set. */
aclError fx_aclrtSetDevice(int32_t deviceId)
{
    __typeof__(&aclrtSetDevice) real = AREAL(aclrtSetDevice);
    if (!real)
        return ACL_ERROR_UNINITIALIZE;
    if (!flexai_enforcing())
        return real(deviceId);
    int32_t d = real_device(deviceId);
    if (d < 0)
        return bad_device(deviceId);
    aclError rc = real(d);
    if (rc != ACL_SUCCESS)
        return rc;
    if (charge_context() < 0) {
        __typeof__(&aclrtResetDevice) reset = AREAL(aclrtResetDevice);
        if (reset)
            reset(d);
        return acl_oom(flexai_context_bytes(flexai_region()));
    }
    pthread_mutex_lock(&acl_lock);
    acl_refs++;
    pthread_mutex_unlock(&acl_lock);
    return rc;
}
FLEXAI_ALIAS(aclrtSetDevice);

aclError fx_aclrtResetDevice(int32_t deviceId)
{
    __typeof__(&aclrtResetDevice) real = AREAL(aclrtResetDevice);
    if (!real)
        return ACL_ERROR_UNINITIALIZE;
    if (!flexai_enforcing())
        return real(deviceId);
    int32_t d = real_device(deviceId);
    if (d < 0)
        return bad_device(deviceId);
    aclError rc = real(d);
    if (rc == ACL_SUCCESS) {
        pthread_mutex_lock(&acl_lock);
        int last = acl_refs > 0 && --acl_refs == 0;
        pthread_mutex_unlock(&acl_lock);
        if (last)
            end_of_device();
    }
    return rc;
}
FLEXAI_ALIAS(aclrtResetDevice);

aclError fx_aclrtResetDeviceForce(int32_t deviceId)
{
    __typeof__(&aclrtResetDeviceForce) real = AREAL(aclrtResetDeviceForce);
    if (!real)
        return ACL_ERROR_UNINITIALIZE;
    if (!flexai_enforcing())
        return real(deviceId);
    int32_t d = real_device(deviceId);
    if (d < 0)
        return bad_device(deviceId);
    aclError rc = real(d);
    if (rc == ACL_SUCCESS)
        end_of_device();
    return rc;
}
FLEXAI_ALIAS(aclrtResetDeviceForce);

aclError fx_aclFinalize(void)
{
    __typeof__(&aclFinalize) real = AREAL(aclFinalize);
    if (!real)
        return ACL_ERROR_UNINITIALIZE;
    aclError rc = real();
    if (rc == ACL_SUCCESS && flexai_enforcing())
        end_of_device();
    return rc;
}
FLEXAI_ALIAS(aclFinalize);

aclError fx_aclrtGetDevice(int32_t *deviceId)
{
    __typeof__(&aclrtGetDevice) real = AREAL(aclrtGetDevice);
    if (!real)
        return ACL_ERROR_UNINITIALIZE;
    aclError rc = real(deviceId);
    int32_t d;
    if (rc == ACL_SUCCESS && deviceId && flexai_enforcing() && slice_device(&d) == 0 &&
        *deviceId == d)
        *deviceId = 0;
    return rc;
}
FLEXAI_ALIAS(aclrtGetDevice);

aclError fx_aclrtCreateContext(aclrtContext *context, int32_t deviceId)
{
    __typeof__(&aclrtCreateContext) real = AREAL(aclrtCreateContext);
    if (!real)
        return ACL_ERROR_UNINITIALIZE;
    if (!flexai_enforcing())
        return real(context, deviceId);
    int32_t d = real_device(deviceId);
    if (d < 0)
        return bad_device(deviceId);
    aclError rc = real(context, d);
    if (rc == ACL_SUCCESS && charge_context() < 0) {
        __typeof__(&aclrtDestroyContext) destroy = AREAL(aclrtDestroyContext);
        if (destroy && context)
            destroy(*context);
        return acl_oom(flexai_context_bytes(flexai_region()));
    }
    return rc;
}
FLEXAI_ALIAS(aclrtCreateContext);

/* Passed through (its memory stays charged until the device ends, see above). */
aclError fx_aclrtDestroyContext(aclrtContext context)
{
    __typeof__(&aclrtDestroyContext) real = AREAL(aclrtDestroyContext);
    return real ? real(context) : ACL_ERROR_UNINITIALIZE;
}
FLEXAI_ALIAS(aclrtDestroyContext);

/* The chip's memory for a limit given as a share of the card (core/vendors.c): what ACL
 * reports as the total of the current device, which only the slice's chip can be; 0 unknown. */
static int64_t acl_card_memory(void)
{
    int32_t d;
    if (acl_lib(0) == NULL || slice_device(&d) != 0)
        return 0;
    __typeof__(&aclrtGetMemInfo) info = AREAL(aclrtGetMemInfo);
    size_t free_bytes = 0, total = 0;
    if (info == NULL || info(ACL_HBM_MEM, &free_bytes, &total) != ACL_SUCCESS)
        return 0;
    return (int64_t)total;
}

static const struct flexai_vendor ACL_VENDOR = {"ACL", acl_card_memory, NULL};

__attribute__((constructor(101))) static void acl_register(void)
{
    flexai_vendor_register(FLEXAI_VENDOR_ACL, &ACL_VENDOR);
}

/* free = what the slice has left (and the card really has), total = the slice. */
aclError fx_aclrtGetMemInfo(aclrtMemAttr attr, size_t *free_bytes, size_t *total_bytes)
{
    __typeof__(&aclrtGetMemInfo) real = AREAL(aclrtGetMemInfo);
    if (!real)
        return ACL_ERROR_UNINITIALIZE;
    aclError rc = real(attr, free_bytes, total_bytes);
    if (rc != ACL_SUCCESS || !free_bytes || !total_bytes || !flexai_enforcing())
        return rc;
    int64_t limit = flexai_memory_limit();
    if (limit <= 0)
        return rc;
    int64_t used = flexai_memory_used();
    uint64_t left = used >= limit ? 0 : (uint64_t)(limit - used);
    if (left < *free_bytes)
        *free_bytes = (size_t)left;
    *total_bytes = (size_t)limit;
    if (*free_bytes > *total_bytes)
        *free_bytes = *total_bytes;
    return rc;
}
FLEXAI_ALIAS(aclrtGetMemInfo);

/* ---- allocations ------------------------------------------------------------------------ */

static int64_t round32(size_t size)
{
    return (int64_t)((size + 31) / 32 * 32);
}

static aclError commit(int charged, int k, uint64_t key, int64_t bytes, aclError rc)
{
    if (charged <= 0)
        return rc;
    if (rc != ACL_SUCCESS) {
        flexai_unreserve(bytes);
        return rc;
    }
    (void)flexai_sizemap_put(k, key, bytes);
    __atomic_add_fetch(&acl_live, bytes, __ATOMIC_ACQ_REL);
    return rc;
}

static aclError release(int base, uint64_t key, aclError (*call)(void *), void *arg)
{
    int k = kind(base);
    int64_t bytes = flexai_sizemap_take(k, key);
    aclError rc = call(arg);
    if (bytes < 0)
        return rc;
    if (rc == ACL_SUCCESS) {
        __atomic_sub_fetch(&acl_live, bytes, __ATOMIC_ACQ_REL);
        flexai_unreserve(bytes);
    } else {
        flexai_sizemap_put(k, key, bytes); /* still allocated */
    }
    return rc;
}

#define ALLOC_WRAPPER(name, size, call)                                                      \
    {                                                                                        \
        __typeof__(&name) real = AREAL(name);                                                \
        if (!real)                                                                           \
            return ACL_ERROR_UNINITIALIZE;                                                   \
        if (!flexai_enforcing() || devPtr == NULL || sizeArg == 0)                           \
            return call;                                                                     \
        int64_t bytes = (int64_t)(size);                                                     \
        int charged = flexai_reserve(bytes);                                                 \
        if (charged < 0)                                                                     \
            return acl_oom(bytes);                                                           \
        aclError rc = call;                                                                  \
        return commit(charged, kind(ACL_KIND_PTR), rc == ACL_SUCCESS ? (uint64_t)(uintptr_t)*devPtr : 0, \
                      bytes, rc);                                                            \
    }

aclError fx_aclrtMalloc(void **devPtr, size_t sizeArg, aclrtMemMallocPolicy policy)
ALLOC_WRAPPER(aclrtMalloc, round32(sizeArg) + 32, real(devPtr, sizeArg, policy))
FLEXAI_ALIAS(aclrtMalloc);

aclError fx_aclrtMallocAlign32(void **devPtr, size_t sizeArg, aclrtMemMallocPolicy policy)
ALLOC_WRAPPER(aclrtMallocAlign32, round32(sizeArg), real(devPtr, sizeArg, policy))
FLEXAI_ALIAS(aclrtMallocAlign32);

aclError fx_aclrtMallocCached(void **devPtr, size_t sizeArg, aclrtMemMallocPolicy policy)
ALLOC_WRAPPER(aclrtMallocCached, round32(sizeArg) + 32, real(devPtr, sizeArg, policy))
FLEXAI_ALIAS(aclrtMallocCached);

/* DVPP (media) memory, CANN's libacl_dvpp.so: rounded and padded like aclrtMalloc. */
aclError fx_acldvppMalloc(void **devPtr, size_t sizeArg)
ALLOC_WRAPPER(acldvppMalloc, round32(sizeArg) + 32, real(devPtr, sizeArg))
FLEXAI_ALIAS(acldvppMalloc);

typedef aclError (*with_cfg_fn)(void **, size_t, aclrtMemMallocPolicy, aclrtMallocConfig *);

/* The device attribute, if any, names device 0 (the slice's chip): passed on as the real id.
 * aclrtMallocWithCfg and aclrtMallocForTaskScheduler (memory the task scheduler reads) alike. */
static aclError malloc_with_cfg(with_cfg_fn real, void **devPtr, size_t sizeArg,
                                aclrtMemMallocPolicy policy, aclrtMallocConfig *cfg)
{
    if (!real)
        return ACL_ERROR_UNINITIALIZE;
    if (!flexai_enforcing() || devPtr == NULL || sizeArg == 0)
        return real(devPtr, sizeArg, policy, cfg);
    aclrtMallocAttribute local[16], *attrs = NULL;
    aclrtMallocConfig copy, *use = cfg;
    size_t n = cfg && cfg->attrs ? cfg->numAttrs : 0;
    for (size_t i = 0; i < n; i++) {
        if (cfg->attrs[i].attr != ACL_RT_MEM_ATTR_DEVICE_ID)
            continue;
        if (attrs == NULL) {
            attrs = n <= 16 ? local : malloc(n * sizeof *attrs);
            if (attrs == NULL)
                return ACL_ERROR_BAD_ALLOC;
            memcpy(attrs, cfg->attrs, n * sizeof *attrs);
            copy = (aclrtMallocConfig){attrs, n};
            use = &copy;
        }
        int32_t d = real_device((int32_t)attrs[i].value.deviceId);
        if (d < 0) {
            if (attrs != local)
                free(attrs);
            return bad_device((int32_t)cfg->attrs[i].value.deviceId);
        }
        attrs[i].value.deviceId = (uint32_t)d;
    }
    int64_t bytes = round32(sizeArg) + 32;
    int charged = flexai_reserve(bytes);
    aclError rc = charged < 0 ? acl_oom(bytes) : real(devPtr, sizeArg, policy, use);
    if (attrs != NULL && attrs != local)
        free(attrs);
    if (charged < 0)
        return rc;
    return commit(charged, kind(ACL_KIND_PTR), rc == ACL_SUCCESS ? (uint64_t)(uintptr_t)*devPtr : 0,
                  bytes, rc);
}

aclError fx_aclrtMallocWithCfg(void **devPtr, size_t sizeArg, aclrtMemMallocPolicy policy,
                               aclrtMallocConfig *cfg)
{
    return malloc_with_cfg(AREAL(aclrtMallocWithCfg), devPtr, sizeArg, policy, cfg);
}
FLEXAI_ALIAS(aclrtMallocWithCfg);

aclError fx_aclrtMallocForTaskScheduler(void **devPtr, size_t sizeArg, aclrtMemMallocPolicy policy,
                                        aclrtMallocConfig *cfg)
{
    return malloc_with_cfg(AREAL(aclrtMallocForTaskScheduler), devPtr, sizeArg, policy, cfg);
}
FLEXAI_ALIAS(aclrtMallocForTaskScheduler);

static aclError call_free(void *p)
{
    return AREAL(aclrtFree)(p);
}

aclError fx_aclrtFree(void *devPtr)
{
    __typeof__(&aclrtFree) real = AREAL(aclrtFree);
    if (!real)
        return ACL_ERROR_UNINITIALIZE;
    if (!flexai_enforcing() || devPtr == NULL)
        return real(devPtr);
    return release(ACL_KIND_PTR, (uint64_t)(uintptr_t)devPtr, call_free, devPtr);
}
FLEXAI_ALIAS(aclrtFree);

static aclError call_dvpp_free(void *p)
{
    return AREAL(acldvppFree)(p);
}

aclError fx_acldvppFree(void *devPtr)
{
    __typeof__(&acldvppFree) real = AREAL(acldvppFree);
    if (!real)
        return ACL_ERROR_UNINITIALIZE;
    if (!flexai_enforcing() || devPtr == NULL)
        return real(devPtr);
    return release(ACL_KIND_PTR, (uint64_t)(uintptr_t)devPtr, call_dvpp_free, devPtr);
}
FLEXAI_ALIAS(acldvppFree);

/* A copy of a physical-memory property with the device location made real. */
static int real_prop(const aclrtPhysicalMemProp *prop, aclrtPhysicalMemProp *out)
{
    *out = *prop;
    if (prop->location.type != ACL_MEM_LOCATION_TYPE_DEVICE)
        return 0;
    int32_t d = real_device((int32_t)prop->location.id);
    if (d < 0)
        return -1;
    out->location.id = (uint32_t)d;
    return 0;
}

aclError fx_aclrtMallocPhysical(aclrtDrvMemHandle *handle, size_t size,
                                const aclrtPhysicalMemProp *prop, uint64_t flags)
{
    __typeof__(&aclrtMallocPhysical) real = AREAL(aclrtMallocPhysical);
    if (!real)
        return ACL_ERROR_UNINITIALIZE;
    if (!flexai_enforcing() || handle == NULL || prop == NULL || size == 0)
        return real(handle, size, prop, flags);
    aclrtPhysicalMemProp p;
    if (real_prop(prop, &p) != 0)
        return bad_device((int32_t)prop->location.id);
    int64_t bytes = (int64_t)size;
    int charged = p.location.type == ACL_MEM_LOCATION_TYPE_DEVICE ? flexai_reserve(bytes) : 0;
    if (charged < 0)
        return acl_oom(bytes);
    aclError rc = real(handle, size, &p, flags);
    return commit(charged, kind(ACL_KIND_PHYS), rc == ACL_SUCCESS ? (uint64_t)(uintptr_t)*handle : 0,
                  bytes, rc);
}
FLEXAI_ALIAS(aclrtMallocPhysical);

static aclError call_free_physical(void *h)
{
    return AREAL(aclrtFreePhysical)(h);
}

aclError fx_aclrtFreePhysical(aclrtDrvMemHandle handle)
{
    __typeof__(&aclrtFreePhysical) real = AREAL(aclrtFreePhysical);
    if (!real)
        return ACL_ERROR_UNINITIALIZE;
    if (!flexai_enforcing() || handle == NULL)
        return real(handle);
    return release(ACL_KIND_PHYS, (uint64_t)(uintptr_t)handle, call_free_physical, handle);
}
FLEXAI_ALIAS(aclrtFreePhysical);

aclError fx_aclrtMemGetAllocationGranularity(aclrtPhysicalMemProp *prop,
                                             aclrtMemGranularityOptions option,
                                             size_t *granularity)
{
    __typeof__(&aclrtMemGetAllocationGranularity) real = AREAL(aclrtMemGetAllocationGranularity);
    if (!real)
        return ACL_ERROR_UNINITIALIZE;
    if (!flexai_enforcing() || prop == NULL)
        return real(prop, option, granularity);
    aclrtPhysicalMemProp p;
    if (real_prop(prop, &p) != 0)
        return bad_device((int32_t)prop->location.id);
    return real(&p, option, granularity);
}
FLEXAI_ALIAS(aclrtMemGetAllocationGranularity);

/* ---- launches --------------------------------------------------------------------------- */

/* ACL's device timing for the compute gate (compute.c): timeline events around launch
 * batches. The event functions are not intercepted, so dlsym on the library finds the real
 * ones. ACL_EVENT_TIME_LINE events are unlimited in number and carry timestamps (CANN:
 * aclrtCreateEventWithFlag); a runtime without that call gets plain aclrtCreateEvent ones. */
#define FX_ACL_EVENT_TIME_LINE 0x00000008u

static struct {
    aclError (*create_flag)(aclrtEvent *, uint32_t);
    aclError (*create)(aclrtEvent *);
    aclError (*record)(aclrtEvent, aclrtStream);
    aclError (*query_status)(aclrtEvent, aclrtEventRecordedStatus *);
    aclError (*query)(aclrtEvent, aclrtEventStatus *);
    aclError (*elapsed)(float *, aclrtEvent, aclrtEvent);
    aclError (*destroy)(aclrtEvent);
    aclError (*current_context)(aclrtContext *);
} AT; /* resolved once, by acl_bind under compute.c's once */

static int acl_bind(void)
{
    void *h = acl_lib(1);
    if (!h)
        return -1;
    *(void **)&AT.create_flag = flexai_real_dlsym(h, "aclrtCreateEventWithFlag");
    *(void **)&AT.create = flexai_real_dlsym(h, "aclrtCreateEvent");
    *(void **)&AT.record = flexai_real_dlsym(h, "aclrtRecordEvent");
    *(void **)&AT.query_status = flexai_real_dlsym(h, "aclrtQueryEventStatus");
    *(void **)&AT.query = flexai_real_dlsym(h, "aclrtQueryEvent");
    *(void **)&AT.elapsed = flexai_real_dlsym(h, "aclrtEventElapsedTime");
    *(void **)&AT.destroy = flexai_real_dlsym(h, "aclrtDestroyEvent");
    *(void **)&AT.current_context = flexai_real_dlsym(h, "aclrtGetCurrentContext");
    return (AT.create_flag || AT.create) && AT.record && (AT.query_status || AT.query) &&
                   AT.elapsed && AT.destroy && AT.current_context
               ? 0
               : -1;
}

static int acl_thread_ready(void)
{
    aclrtContext ctx = NULL;
    return AT.current_context(&ctx) == ACL_SUCCESS && ctx != NULL;
}

static int acl_create(void **ev)
{
    aclError rc = AT.create_flag ? AT.create_flag((aclrtEvent *)ev, FX_ACL_EVENT_TIME_LINE)
                                 : AT.create((aclrtEvent *)ev);
    return rc == ACL_SUCCESS ? 0 : -1;
}

static int acl_record(void *ev, void *stream)
{
    return AT.record(ev, stream) == ACL_SUCCESS ? 0 : -1;
}

static int acl_query(void *ev)
{
    if (AT.query_status) {
        aclrtEventRecordedStatus st = ACL_EVENT_RECORDED_STATUS_NOT_READY;
        if (AT.query_status(ev, &st) != ACL_SUCCESS)
            return -1;
        return st == ACL_EVENT_RECORDED_STATUS_COMPLETE;
    }
    aclrtEventStatus st = ACL_EVENT_STATUS_NOT_READY;
    if (AT.query(ev, &st) != ACL_SUCCESS)
        return -1;
    return st == ACL_EVENT_STATUS_COMPLETE;
}

static int acl_elapsed(float *ms, void *start, void *end)
{
    return AT.elapsed(ms, start, end) == ACL_SUCCESS ? 0 : -1;
}

static void acl_destroy(void *ev)
{
    AT.destroy(ev);
}

static const struct flexai_device_timer ACL_TIMER = {
    "ACL", acl_bind, acl_thread_ready, acl_create, acl_record, acl_query, acl_elapsed, acl_destroy,
    NULL, NULL, NULL, /* no stream capture in this runtime's launch path */
};

static inline struct flexai_region *launch_begin(aclrtStream stream)
{
    struct flexai_region *r = __atomic_load_n(&flexai_P.region, __ATOMIC_ACQUIRE);
    if (unlikely(r == NULL)) {
        if (!flexai_enforcing() || (r = flexai_attach_slow()) == NULL)
            return NULL;
    }
    flexai_compute_before(&ACL_TIMER, r, stream);
    return r;
}

static inline void launch_end(struct flexai_region *r, aclError rc)
{
    struct flexai_proc *me = flexai_P.me;
    if (r == NULL)
        return;
    flexai_compute_after(&ACL_TIMER, rc == ACL_SUCCESS);
    if (rc == ACL_SUCCESS && me != NULL)
        __atomic_fetch_add(&me->launches, 1, __ATOMIC_RELAXED);
}

#define LAUNCH_WRAPPER(name, stream, call)                                                   \
    {                                                                                        \
        __typeof__(&name) real = AREAL(name);                                                \
        if (unlikely(!real))                                                                 \
            return ACL_ERROR_UNINITIALIZE;                                                   \
        struct flexai_region *r = launch_begin(stream);                                      \
        if (unlikely(r == NULL) && flexai_closed())                                          \
            return ACL_ERROR_RT_NO_DEVICE; /* the slice's inputs are damaged: fail closed */   \
        aclError rc = call;                                                                  \
        launch_end(r, rc);                                                                   \
        return rc;                                                                           \
    }

aclError fx_aclrtLaunchKernel(aclrtFuncHandle funcHandle, uint32_t blockDim, const void *argsData,
                              size_t argsSize, aclrtStream stream)
LAUNCH_WRAPPER(aclrtLaunchKernel, stream, real(funcHandle, blockDim, argsData, argsSize, stream))
FLEXAI_ALIAS(aclrtLaunchKernel);

aclError fx_aclrtLaunchKernelV2(aclrtFuncHandle funcHandle, uint32_t blockDim, const void *argsData,
                                size_t argsSize, aclrtLaunchKernelCfg *cfg, aclrtStream stream)
LAUNCH_WRAPPER(aclrtLaunchKernelV2, stream, real(funcHandle, blockDim, argsData, argsSize, cfg, stream))
FLEXAI_ALIAS(aclrtLaunchKernelV2);

aclError fx_aclrtLaunchKernelWithConfig(aclrtFuncHandle funcHandle, uint32_t blockDim,
                                        aclrtStream stream, aclrtLaunchKernelCfg *cfg,
                                        aclrtArgsHandle argsHandle, void *reserve)
LAUNCH_WRAPPER(aclrtLaunchKernelWithConfig, stream,
               real(funcHandle, blockDim, stream, cfg, argsHandle, reserve))
FLEXAI_ALIAS(aclrtLaunchKernelWithConfig);

aclError fx_aclrtLaunchKernelWithHostArgs(aclrtFuncHandle funcHandle, uint32_t blockDim,
                                          aclrtStream stream, aclrtLaunchKernelCfg *cfg,
                                          void *hostArgs, size_t argsSize,
                                          aclrtPlaceHolderInfo *placeHolderArray,
                                          size_t placeHolderNum)
LAUNCH_WRAPPER(aclrtLaunchKernelWithHostArgs, stream,
               real(funcHandle, blockDim, stream, cfg, hostArgs, argsSize, placeHolderArray,
                    placeHolderNum))
FLEXAI_ALIAS(aclrtLaunchKernelWithHostArgs);

/* AI-CPU kernels (aclrtRegisterCpuFunc) are launched through the entry points above. A model RI
 * replay (aclmdlRIExecuteAsync: NPUGraph, vLLM-Ascend graph mode) runs a whole captured sequence
 * of tasks: it passes the gate and is counted as one launch, like a CUDA graph launch. */
aclError fx_aclmdlRIExecuteAsync(aclmdlRI modelRI, aclrtStream stream)
LAUNCH_WRAPPER(aclmdlRIExecuteAsync, stream, real(modelRI, stream))
FLEXAI_ALIAS(aclmdlRIExecuteAsync);
