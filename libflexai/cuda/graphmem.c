/* Graph memory: what the device's CUDA-graph memory pool holds for this process is charged.
 *
 * Allocation nodes (cuGraphAddMemAllocNode, or cuMemAllocAsync into a capturing stream) get
 * physical memory from the graph memory pool when an executable graph is uploaded or first
 * launched, and the pool keeps it after the graph frees it or is destroyed, until
 * cuDeviceGraphMemTrim. So the charge follows the driver's own count of the pool's reserve
 * (cuDeviceGetGraphMemAttribute(CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT)), settled after every
 * call that can change it: a graph's first launch (uploaded first), cuGraphUpload,
 * cuGraphExecDestroy and cuDeviceGraphMemTrim. Before an exec is uploaded, what its allocation
 * nodes may add to the pool (their sizes, summed per graph as they are captured or added and
 * carried to the exec at instantiation, less what the pool has spare) is reserved first: a
 * graph whose memory does not fit in the slice is refused with CUDA_ERROR_OUT_OF_MEMORY before
 * the driver maps any of it. A captured cuMemAllocAsync is
 * not charged at the call (memory.c asks flexai_graphmem_captured): it is not an allocation
 * yet. Nothing of this runs in a process that never made graph memory.
 */
#include "flexai.h"

#define GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT 2
#define CAPTURE_STATUS_NONE 0
#define FX_STREAM_PER_THREAD ((CUstream)0x2)
#define GRAPH_MEM_ATTR_USED_MEM_CURRENT 0
/* CUDA_MEM_ALLOC_NODE_PARAMS: poolProps (88 bytes), accessDescs, accessDescCount, bytesize */
#define FX_ALLOC_NODE_BYTESIZE (88 + 8 + 8)
#define TRACKED 256 /* graphs and execs with allocation nodes (more: their memory is settled
                       after the fact, never refused in advance) */

int flexai_graphmem_seen; /* the process made graph memory: graph launches settle it */

struct tracked {
    void *h;             /* a CUgraph or CUgraphExec */
    int64_t bytes;       /* its allocation nodes together */
    int settled;         /* exec: uploaded and settled (its later launches skip all this) */
};

static struct {
    pthread_mutex_t lock;
    int64_t charged;     /* the pool's reserve as charged to the slice */
    struct tracked graphs[TRACKED], execs[TRACKED];
} GM = {PTHREAD_MUTEX_INITIALIZER, 0, {{0, 0, 0}}, {{0, 0, 0}}};

/* Caller holds GM.lock. */
static struct tracked *find(struct tracked *t, void *h, int add)
{
    struct tracked *free_slot = NULL;
    for (int i = 0; i < TRACKED; i++) {
        if (t[i].h == h)
            return &t[i];
        if (!t[i].h && !free_slot)
            free_slot = &t[i];
    }
    if (!add || !free_slot)
        return NULL;
    free_slot->h = h;
    free_slot->bytes = 0;
    free_slot->settled = 0;
    return free_slot;
}

static void graph_adds(void *graph, int64_t bytes)
{
    if (!graph)
        return;
    pthread_mutex_lock(&GM.lock);
    struct tracked *g = find(GM.graphs, graph, 1);
    if (g)
        g->bytes += bytes;
    pthread_mutex_unlock(&GM.lock);
}

static CUresult (*get_attr_fn(void))(CUdevice, int, void *)
{
    static CUresult (*get_attr)(CUdevice, int, void *);
    if (!get_attr)
        *(void **)&get_attr = flexai_driver_sym(FLEXAI_LIB_CUDA, "cuDeviceGetGraphMemAttribute");
    return get_attr;
}

/* Charges (or gives back) the difference between the pool's reserve and what was charged:
 * 0, or -1 when the growth does not fit in the slice (it stays uncharged; the caller fails). */
static int settle(void)
{
    CUresult (*get_attr)(CUdevice, int, void *) = get_attr_fn();
    CUdevice dev;
    cuuint64_t reserved = 0;
    if (!get_attr || flexai_cu_device(&dev) != 0 ||
        get_attr(dev, GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT, &reserved) != CUDA_SUCCESS)
        return 0;
    int rc = 0;
    pthread_mutex_lock(&GM.lock);
    int64_t delta = (int64_t)reserved - GM.charged;
    if (delta > 0) {
        int c = flexai_reserve(delta);
        if (c < 0)
            rc = -1;
        else if (c > 0)
            GM.charged += delta;
    } else if (delta < 0) {
        flexai_unreserve(-delta);
        GM.charged = (int64_t)reserved;
    }
    pthread_mutex_unlock(&GM.lock);
    return rc;
}

int flexai_graphmem_captured(CUstream stream, int ptsz, size_t bytes)
{
    static CUresult (*info)(CUstream, int *, cuuint64_t *, CUgraph *, const void **, size_t *);
    if (!flexai_capture_open())
        return 0;
    if (!info)
        *(void **)&info = flexai_driver_sym(FLEXAI_LIB_CUDA, "cuStreamGetCaptureInfo_v2");
    int st = CAPTURE_STATUS_NONE;
    CUgraph graph = NULL;
    if (ptsz && stream == NULL)
        stream = FX_STREAM_PER_THREAD;
    if (!info || info(stream, &st, NULL, &graph, NULL, NULL) != CUDA_SUCCESS ||
        st == CAPTURE_STATUS_NONE)
        return 0;
    __atomic_store_n(&flexai_graphmem_seen, 1, __ATOMIC_RELEASE);
    graph_adds(graph, (int64_t)bytes);
    return 1;
}

static int precharge_bytes(int64_t fp);

/* Before an exec's memory is mapped: reserve what its allocation nodes may add to the pool.
 * 0, or -1 when that does not fit in the slice. */
static int precharge(CUgraphExec e)
{
    pthread_mutex_lock(&GM.lock);
    struct tracked *x = find(GM.execs, e, 0);
    int64_t fp = x && !x->settled ? x->bytes : 0;
    pthread_mutex_unlock(&GM.lock);
    return precharge_bytes(fp);
}

/* The same for a graph about to be instantiated and uploaded in one call. */
static int precharge_graph(CUgraph g)
{
    pthread_mutex_lock(&GM.lock);
    struct tracked *t = find(GM.graphs, g, 0);
    int64_t fp = t ? t->bytes : 0;
    pthread_mutex_unlock(&GM.lock);
    return precharge_bytes(fp);
}

/* Reserves what allocation nodes of fp bytes may add to the pool (used + fp - reserved). */
static int precharge_bytes(int64_t fp)
{
    CUresult (*get_attr)(CUdevice, int, void *) = get_attr_fn();
    CUdevice dev;
    cuuint64_t used = 0, reserved = 0;
    if (fp <= 0 || !get_attr || flexai_cu_device(&dev) != 0 ||
        get_attr(dev, GRAPH_MEM_ATTR_USED_MEM_CURRENT, &used) != CUDA_SUCCESS ||
        get_attr(dev, GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT, &reserved) != CUDA_SUCCESS)
        return 0;
    int64_t grow = (int64_t)used + fp - (int64_t)reserved;
    if (grow <= 0)
        return 0;
    int rc = 0;
    pthread_mutex_lock(&GM.lock);
    int c = flexai_reserve(grow);
    if (c < 0)
        rc = -1;
    else if (c > 0)
        GM.charged += grow; /* settled against the driver's count right after the upload */
    pthread_mutex_unlock(&GM.lock);
    return rc;
}

/* Before a graph launch (only once the process made graph memory): the first launch of an
 * exec uploads it, so that its memory is reserved, and settles the charge. */
CUresult flexai_graphmem_before_launch(CUgraphExec e, CUstream stream, int ptsz)
{
    if (!flexai_enforcing() || flexai_capture_open())
        return CUDA_SUCCESS; /* (a launch into a capture is a child graph: not uploaded) */
    pthread_mutex_lock(&GM.lock);
    struct tracked *x = find(GM.execs, e, 0);
    int known = x && x->settled;
    pthread_mutex_unlock(&GM.lock);
    if (known)
        return CUDA_SUCCESS;
    if (precharge(e) != 0)
        return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult (*upload)(CUgraphExec, CUstream);
    *(void **)&upload = flexai_driver_sym(FLEXAI_LIB_CUDA, ptsz ? "cuGraphUpload_ptsz" : "cuGraphUpload");
    if (upload) {
        CUresult rc = upload(e, stream);
        if (rc != CUDA_SUCCESS)
            return rc;
    }
    if (settle() != 0)
        return CUDA_ERROR_OUT_OF_MEMORY;
    pthread_mutex_lock(&GM.lock);
    if ((x = find(GM.execs, e, 1)) != NULL)
        x->settled = 1;
    pthread_mutex_unlock(&GM.lock);
    return CUDA_SUCCESS;
}

/* strict: the call may have grown the reserve, and fails when the growth does not fit; else
 * (destroy, trim: the reserve only shrinks) a refused growth is left to the next settle */
#define SETTLING_WRAPPER(name, strict, call, after)                                          \
    {                                                                                        \
        __typeof__(&name) real = REAL(name);                                                 \
        if (!real)                                                                           \
            return CUDA_ERROR_NOT_INITIALIZED;                                               \
        CUresult rc = call;                                                                  \
        after;                                                                               \
        if (rc == CUDA_SUCCESS && flexai_enforcing() &&                                      \
            __atomic_load_n(&flexai_graphmem_seen, __ATOMIC_ACQUIRE) && settle() != 0 && strict) \
            return CUDA_ERROR_OUT_OF_MEMORY;                                                 \
        return rc;                                                                           \
    }

CUresult fx_cuGraphAddMemAllocNode(CUgraphNode *phGraphNode, CUgraph hGraph,
                                   const CUgraphNode *dependencies, size_t numDependencies,
                                   CUDA_MEM_ALLOC_NODE_PARAMS *nodeParams)
SETTLING_WRAPPER(cuGraphAddMemAllocNode, 1,
                 real(phGraphNode, hGraph, dependencies, numDependencies, nodeParams),
                 if (rc == CUDA_SUCCESS) {
                     __atomic_store_n(&flexai_graphmem_seen, 1, __ATOMIC_RELEASE);
                     graph_adds(hGraph, (int64_t)*(const size_t *)((const char *)nodeParams +
                                                                   FX_ALLOC_NODE_BYTESIZE));
                 })
FLEXAI_ALIAS(cuGraphAddMemAllocNode);

/* cuGraphAddNode's CUgraphNodeParams: type, 12 reserved bytes, then the union; for
 * CU_GRAPH_NODE_TYPE_MEM_ALLOC it holds CUDA_MEM_ALLOC_NODE_PARAMS_v2 (bytesize as above). */
#define FX_NODE_TYPE_MEM_ALLOC 10
#define FX_NODE_ALLOC_BYTESIZE (16 + FX_ALLOC_NODE_BYTESIZE)
static void node_added(CUresult rc, CUgraph g, const CUgraphNodeParams *p)
{
    if (rc != CUDA_SUCCESS || p == NULL || *(const int *)p != FX_NODE_TYPE_MEM_ALLOC)
        return;
    __atomic_store_n(&flexai_graphmem_seen, 1, __ATOMIC_RELEASE);
    graph_adds(g, (int64_t)*(const size_t *)((const char *)p + FX_NODE_ALLOC_BYTESIZE));
}

CUresult fx_cuGraphAddNode(CUgraphNode *phGraphNode, CUgraph hGraph,
                           const CUgraphNode *dependencies, size_t numDependencies,
                           CUgraphNodeParams *nodeParams)
SETTLING_WRAPPER(cuGraphAddNode, 1,
                 real(phGraphNode, hGraph, dependencies, numDependencies, nodeParams),
                 node_added(rc, hGraph, nodeParams))
FLEXAI_ALIAS(cuGraphAddNode);

CUresult fx_cuGraphAddNode_v2(CUgraphNode *phGraphNode, CUgraph hGraph,
                              const CUgraphNode *dependencies,
                              const CUgraphEdgeData *dependencyData, size_t numDependencies,
                              CUgraphNodeParams *nodeParams)
SETTLING_WRAPPER(cuGraphAddNode_v2, 1,
                 real(phGraphNode, hGraph, dependencies, dependencyData, numDependencies,
                      nodeParams),
                 node_added(rc, hGraph, nodeParams))
FLEXAI_ALIAS(cuGraphAddNode_v2);

#define PRECHARGED(exec, call)                                                               \
    (__atomic_load_n(&flexai_graphmem_seen, __ATOMIC_ACQUIRE) && flexai_enforcing() &&       \
             precharge(exec) != 0                                                            \
         ? CUDA_ERROR_OUT_OF_MEMORY                                                          \
         : (call))

CUresult fx_cuGraphUpload(CUgraphExec hGraphExec, CUstream hStream)
SETTLING_WRAPPER(cuGraphUpload, 1, PRECHARGED(hGraphExec, real(hGraphExec, hStream)), (void)0)
FLEXAI_ALIAS(cuGraphUpload);

CUresult fx_cuGraphUpload_ptsz(CUgraphExec hGraphExec, CUstream hStream)
SETTLING_WRAPPER(cuGraphUpload_ptsz, 1, PRECHARGED(hGraphExec, real(hGraphExec, hStream)), (void)0)
FLEXAI_ALIAS(cuGraphUpload_ptsz);

static void forget(struct tracked *t, void *h)
{
    pthread_mutex_lock(&GM.lock);
    struct tracked *x = find(t, h, 0);
    if (x)
        x->h = NULL;
    pthread_mutex_unlock(&GM.lock);
}

/* An exec inherits its graph's allocation nodes. */
static void instantiated(CUgraphExec e, CUgraph g)
{
    if (!__atomic_load_n(&flexai_graphmem_seen, __ATOMIC_ACQUIRE))
        return;
    pthread_mutex_lock(&GM.lock);
    struct tracked *gt = find(GM.graphs, g, 0);
    struct tracked *x = gt ? find(GM.execs, e, 1) : NULL;
    if (x) {
        x->bytes = gt->bytes;
        x->settled = 0;
    }
    pthread_mutex_unlock(&GM.lock);
}

CUresult fx_cuGraphInstantiateWithFlags(CUgraphExec *phGraphExec, CUgraph hGraph,
                                        unsigned long long flags)
SETTLING_WRAPPER(cuGraphInstantiateWithFlags, 0, real(phGraphExec, hGraph, flags),
                 if (rc == CUDA_SUCCESS) instantiated(*phGraphExec, hGraph))
FLEXAI_ALIAS(cuGraphInstantiateWithFlags);

/* The CUDA 11.0 form, handed out for cudaVersion < 12000. */
CUresult fx_cuGraphInstantiate_v2(CUgraphExec *phGraphExec, CUgraph hGraph,
                                  CUgraphNode *phErrorNode, char *logBuffer, size_t bufferSize)
SETTLING_WRAPPER(cuGraphInstantiate_v2, 0,
                 real(phGraphExec, hGraph, phErrorNode, logBuffer, bufferSize),
                 if (rc == CUDA_SUCCESS) instantiated(*phGraphExec, hGraph))
FLEXAI_ALIAS(cuGraphInstantiate_v2);

/* CUDA_GRAPH_INSTANTIATE_PARAMS: flags first; CUDA_GRAPH_INSTANTIATE_FLAG_UPLOAD uploads the
 * exec in the same call, so its memory is reserved before and settled (strictly) after, as
 * for cuGraphUpload; the exec then counts as uploaded. */
#define FX_INSTANTIATE_FLAG_UPLOAD 2ULL
static int uploads(const CUDA_GRAPH_INSTANTIATE_PARAMS *p)
{
    return p != NULL && (*(const cuuint64_t *)p & FX_INSTANTIATE_FLAG_UPLOAD) &&
           __atomic_load_n(&flexai_graphmem_seen, __ATOMIC_ACQUIRE) && flexai_enforcing();
}

static void uploaded(CUgraphExec e)
{
    pthread_mutex_lock(&GM.lock);
    struct tracked *x = find(GM.execs, e, 0);
    if (x)
        x->settled = 1;
    pthread_mutex_unlock(&GM.lock);
}

#define INSTANTIATE_PARAMS_WRAPPER(name)                                                     \
    {                                                                                        \
        __typeof__(&name) real = REAL(name);                                                 \
        if (!real)                                                                           \
            return CUDA_ERROR_NOT_INITIALIZED;                                               \
        int up = uploads(params);                                                            \
        if (up && precharge_graph(hGraph) != 0)                                              \
            return CUDA_ERROR_OUT_OF_MEMORY;                                                 \
        CUresult rc = real(phGraphExec, hGraph, params);                                     \
        if (rc == CUDA_SUCCESS)                                                              \
            instantiated(*phGraphExec, hGraph);                                              \
        if (!flexai_enforcing() || !__atomic_load_n(&flexai_graphmem_seen, __ATOMIC_ACQUIRE)) \
            return rc;                                                                       \
        int over = settle() != 0;                                                            \
        if (rc == CUDA_SUCCESS && up) {                                                      \
            uploaded(*phGraphExec);                                                          \
            if (over)                                                                        \
                return CUDA_ERROR_OUT_OF_MEMORY;                                             \
        }                                                                                    \
        return rc;                                                                           \
    }

CUresult fx_cuGraphInstantiateWithParams(CUgraphExec *phGraphExec, CUgraph hGraph,
                                         CUDA_GRAPH_INSTANTIATE_PARAMS *params)
INSTANTIATE_PARAMS_WRAPPER(cuGraphInstantiateWithParams)
FLEXAI_ALIAS(cuGraphInstantiateWithParams);

CUresult fx_cuGraphInstantiateWithParams_ptsz(CUgraphExec *phGraphExec, CUgraph hGraph,
                                              CUDA_GRAPH_INSTANTIATE_PARAMS *params)
INSTANTIATE_PARAMS_WRAPPER(cuGraphInstantiateWithParams_ptsz)
FLEXAI_ALIAS(cuGraphInstantiateWithParams_ptsz);

CUresult fx_cuGraphDestroy(CUgraph hGraph)
SETTLING_WRAPPER(cuGraphDestroy, 0, real(hGraph), if (rc == CUDA_SUCCESS) forget(GM.graphs, hGraph))
FLEXAI_ALIAS(cuGraphDestroy);

CUresult fx_cuGraphExecDestroy(CUgraphExec hGraphExec)
SETTLING_WRAPPER(cuGraphExecDestroy, 0, real(hGraphExec),
                 if (rc == CUDA_SUCCESS) forget(GM.execs, hGraphExec))
FLEXAI_ALIAS(cuGraphExecDestroy);

CUresult fx_cuDeviceGraphMemTrim(CUdevice device)
SETTLING_WRAPPER(cuDeviceGraphMemTrim, 0, real(device), (void)0)
FLEXAI_ALIAS(cuDeviceGraphMemTrim);
