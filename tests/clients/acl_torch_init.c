/* The start-up of a torch_npu process, reduced to its ACL calls in torch_npu's order:
 * device count before aclInit, aclInit, aclrtSetDevice, the current device and context,
 * aclrtGetMemInfo early (the caching allocator sizes itself from it), a fast-launch stream,
 * the allocator's first blocks (a 2 MiB small-pool block, a 20 MiB large block, and an
 * expandable segment: a large address reservation backed by physical pages on demand), a
 * copy and a kernel, then blocks until the runtime says 207001, then teardown.
 *
 * Prints "key=value" lines; exits 0 when every step that must succeed did (the test reads the
 * numbers). Linked against libascendcl.so, as libtorch_npu.so is. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "acl_api.h"

#define CHECK(what, call)                                                                    \
    do {                                                                                     \
        aclError rc_ = (call);                                                               \
        printf("%s=%d\n", what, rc_);                                                        \
        if (rc_ != ACL_SUCCESS) {                                                            \
            const char *m_ = aclGetRecentErrMsg();                                           \
            printf("failed=%s msg=%s\n", what, m_ ? m_ : "(null)");                          \
            return 1;                                                                        \
        }                                                                                    \
    } while (0)

#define SMALL_BLOCK (2UL << 20)
#define LARGE_BLOCK (20UL << 20)
#define MAX_BLOCKS 100000

static void *blocks[MAX_BLOCKS];

int main(void)
{
    uint32_t count = 0;
    CHECK("device_count", aclrtGetDeviceCount(&count));
    printf("count=%u\n", count);
    CHECK("init", aclInit(NULL));
    CHECK("set_device", aclrtSetDevice(0));
    int32_t dev = -1;
    CHECK("get_device", aclrtGetDevice(&dev));
    printf("device=%d\n", dev);
    aclrtContext ctx = NULL;
    CHECK("current_context", aclrtGetCurrentContext(&ctx));
    size_t free0 = 0, total0 = 0;
    CHECK("mem_info", aclrtGetMemInfo(ACL_HBM_MEM, &free0, &total0));
    printf("free0=%zu\ntotal0=%zu\n", free0, total0);
    aclrtStream stream = NULL;
    CHECK("stream", aclrtCreateStreamWithConfig(&stream, 0, 0x3 /* FAST_LAUNCH | FAST_SYNC */));

    void *small = NULL, *large = NULL;
    CHECK("small_block", aclrtMalloc(&small, SMALL_BLOCK, ACL_MEM_MALLOC_HUGE_FIRST));
    CHECK("large_block", aclrtMalloc(&large, LARGE_BLOCK, ACL_MEM_MALLOC_HUGE_FIRST));

    /* expandable segment: reserve the whole card's worth of addresses, back 2 pages */
    aclrtPhysicalMemProp prop = {.handleType = ACL_MEM_HANDLE_TYPE_NONE,
                                 .allocationType = ACL_MEM_ALLOCATION_TYPE_PINNED,
                                 .memAttr = ACL_HBM_MEM_HUGE,
                                 .location = {.id = (uint32_t)dev, .type = ACL_MEM_LOCATION_TYPE_DEVICE}};
    size_t gran = 0;
    CHECK("granularity", aclrtMemGetAllocationGranularity(&prop, ACL_RT_MEM_ALLOC_GRANULARITY_RECOMMENDED, &gran));
    size_t span = (total0 / gran + 1) * gran;
    void *va = NULL;
    CHECK("reserve", aclrtReserveMemAddress(&va, span, 0, NULL, 0));
    aclrtDrvMemHandle pages[2] = {NULL, NULL};
    for (int i = 0; i < 2; i++) {
        CHECK("physical", aclrtMallocPhysical(&pages[i], gran, &prop, 0));
        CHECK("map", aclrtMapMem((char *)va + (size_t)i * gran, gran, 0, pages[i], 0));
    }
    size_t free1 = 0, total1 = 0;
    CHECK("mem_info_after_blocks", aclrtGetMemInfo(ACL_HBM_MEM, &free1, &total1));
    printf("free1=%zu\ntotal1=%zu\n", free1, total1);

    char host[4096];
    memset(host, 7, sizeof host);
    CHECK("copy", aclrtMemcpy(small, SMALL_BLOCK, host, sizeof host, ACL_MEMCPY_HOST_TO_DEVICE));
    aclrtBinHandle bin = NULL;
    aclrtFuncHandle fn = NULL;
    static const char image[] = "kernel image";
    CHECK("binary", aclrtBinaryLoadFromData(image, sizeof image, NULL, &bin));
    CHECK("function", aclrtBinaryGetFunction(bin, "add_custom", &fn));
    CHECK("launch", aclrtLaunchKernel(fn, 8, &small, sizeof small, stream));
    CHECK("sync", aclrtSynchronizeStream(stream));

    /* grow the large pool until the runtime refuses */
    int n = 0;
    aclError rc = ACL_SUCCESS;
    while (n < MAX_BLOCKS && (rc = aclrtMalloc(&blocks[n], LARGE_BLOCK, ACL_MEM_MALLOC_HUGE_FIRST)) == ACL_SUCCESS)
        n++;
    const char *msg = aclGetRecentErrMsg();
    printf("grown_blocks=%d\ngrow_rc=%d\ngrow_msg=%s\n", n, rc, msg ? msg : "(null)");
    size_t free2 = 0, total2 = 0;
    CHECK("mem_info_full", aclrtGetMemInfo(ACL_HBM_MEM, &free2, &total2));
    printf("free2=%zu\n", free2);

    int freed_bad = 0;
    while (n > 0)
        freed_bad += aclrtFree(blocks[--n]) != ACL_SUCCESS;
    printf("free_blocks_failed=%d\n", freed_bad);
    for (int i = 0; i < 2; i++)
        CHECK("unmap", aclrtUnmapMem((char *)va + (size_t)i * gran));
    for (int i = 0; i < 2; i++)
        CHECK("free_physical", aclrtFreePhysical(pages[i]));
    CHECK("release", aclrtReleaseMemAddress(va));
    CHECK("free_small", aclrtFree(small));
    CHECK("free_large", aclrtFree(large));
    size_t free3 = 0, total3 = 0;
    CHECK("mem_info_end", aclrtGetMemInfo(ACL_HBM_MEM, &free3, &total3));
    printf("free3=%zu\n", free3);
    CHECK("destroy_stream", aclrtDestroyStream(stream));
    CHECK("reset", aclrtResetDevice(0));
    CHECK("finalize", aclFinalize());
    printf("done=1\n");
    return 0;
}
