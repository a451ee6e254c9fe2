/* Internal declarations of the simulated libcuda.so.1. Everything here is hidden: the only
 * exported symbols are the driver API entry points defined in exports.c, which are thin
 * wrappers around the sim_* implementations. cuGetProcAddress hands out the addresses of the
 * sim_* functions themselves, which no preload library can interpose (as with the real
 * driver, whose entry-point table is internal). */
#ifndef FLEXAI_SIMCUDA_H
#define FLEXAI_SIMCUDA_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "simcuda_types.h"
#include "simstate.h"

#pragma GCC visibility push(hidden)

#define SIM_DRIVER_VERSION 13000
#define SIM_GRANULARITY (2ULL << 20)   /* VMM allocation granularity */
#define SIM_ALLOC_ALIGN 512ULL          /* allocations are charged in multiples of this */

enum { M_CTX = 0x58544331, M_STREAM = 0x4d525453, M_EVENT = 0x544e5645, M_MODULE = 0x444f4d31,
       M_FUNC = 0x434e5546, M_LIB = 0x4249454c, M_GRAPH = 0x48505247, M_GEXEC = 0x43455847,
       M_NODE = 0x45444f4e, M_POOL = 0x4c4f4f50, M_ARRAY = 0x59415252, M_MIPMAP = 0x50494d4d,
       M_VMM = 0x204d4d56, M_DEAD = 0x44414544 };

struct cu_stream;

struct CUctx_st {
    uint32_t magic;
    int device;
    unsigned flags;
    int primary;
    int active;                      /* 0 once destroyed (primary: released/reset) */
    uint64_t footprint;              /* device bytes the context itself costs (limits included) */
    size_t limit[7];                 /* cuCtxSetLimit values (CUlimit order) */
    unsigned long long id;
    pthread_mutex_t lock;            /* protects the stream list */
    struct CUstream_st *streams;     /* every stream of this context, default ones included */
    struct CUstream_st *legacy;      /* the NULL / CU_STREAM_LEGACY stream */
};

struct CUgraph_st;

struct CUstream_st {
    uint32_t magic;
    struct CUctx_st *ctx;
    unsigned flags;
    int priority;
    int kind;                        /* 0 created, 1 legacy default, 2 per-thread default */
    unsigned long long id;
    pthread_mutex_t lock;
    _Atomic uint64_t tail;           /* when the last work booked on this stream ends */
    uint64_t *ring;                  /* end times of the last queue_depth launches */
    uint64_t ring_pos;
    int capturing;
    CUstreamCaptureMode capture_mode;
    unsigned long long capture_id;
    struct CUgraph_st *capture_graph;
    int capture_invalid;             /* an unsafe call invalidated this capture sequence */
    pthread_t capture_owner;         /* the thread that began the capture */
    struct CUstream_st *next;        /* in ctx->streams */
};

struct CUevent_st {
    uint32_t magic;
    unsigned flags;
    int recorded;
    int captured;                    /* last recorded inside a capture sequence */
    _Atomic uint64_t t;              /* simulated time the event completes */
};

struct CUfunc_st {
    uint32_t magic;
    int spin;                        /* name starts with flexai_sim_spin */
    struct CUfunc_st *next;
    char name[256];
};

struct CUmod_st {
    uint32_t magic;
    int from_library;
    int device;                      /* the card its code was loaded on */
    uint64_t bytes;                  /* device bytes it costs there (module_bytes; 0: none) */
    pthread_mutex_t lock;
    struct CUfunc_st *funcs;
};

struct CUlib_st {
    uint32_t magic;
    struct CUmod_st *module;
};

struct sim_knode {
    uint32_t magic;
    struct CUfunc_st *func;
    unsigned blocks;
    uint64_t dur;
};

struct CUgraph_st {
    uint32_t magic;
    struct sim_knode **nodes;
    size_t n, cap;
    uint64_t mem_bytes;              /* its memory allocation nodes together (graph memory) */
    int mem_device;
};

struct CUgraphExec_st {
    uint32_t magic;
    uint64_t *durs;
    size_t n;
    uint64_t mem_bytes;              /* the graph's allocation nodes, from the device's graph pool */
    int mem_device;
    int mem_mapped;                  /* mapped at its first upload or launch */
};

struct CUmemPoolHandle_st {
    uint32_t magic;
    int device;
    int is_default;
    _Atomic uint64_t used;
    uint64_t spare;                  /* freed bytes the pool keeps (charged on the card), under pool_lock */
    uint64_t threshold;              /* CU_MEMPOOL_ATTR_RELEASE_THRESHOLD */
    uint64_t used_high, reserved_high;
};

struct CUarray_st {
    uint32_t magic;
    int device;
    uint64_t bytes;
    CUDA_ARRAY3D_DESCRIPTOR desc;
    void *mem;
};

struct CUmipmappedArray_st {
    uint32_t magic;
    int device;
    uint64_t bytes;
    unsigned levels;
    CUDA_ARRAY3D_DESCRIPTOR desc;
};

struct sim_vmm {
    uint32_t magic;
    int device;                      /* -1: host memory, not charged to a card */
    uint64_t size;
    uint64_t charged;
    int fd;                          /* memfd backing the physical memory */
    CUmemAllocationProp prop;
    int refs;                        /* handle references (create/import/retain - release) */
    int maps;                        /* live cuMemMap mappings; memory lives while either is > 0 */
};

enum alloc_kind { A_DEVICE = 1, A_MANAGED, A_HOST, A_POOL, A_VMM_MAP, A_RESERVE, A_IPC };

struct sim_alloc {
    uintptr_t base;
    size_t size;
    size_t map_len;
    uint64_t charged;                /* bytes charged to the card (0 for host memory) */
    int device;
    int kind;
    struct CUctx_st *ctx;
    struct CUmemPoolHandle_st *pool;
    struct sim_vmm *vmm;             /* A_VMM_MAP: the handle mapped here */
    int ipc_fd;                      /* A_DEVICE exported with cuIpcGetMemHandle / A_IPC: memfd + 1 */
};

struct sim_reservation {            /* a cuMemAddressReserve range */
    uintptr_t base;
    size_t size;
    void *map;
    size_t map_len;
};

struct sim_proc {
    pthread_once_t once;
    CUresult init_rc;
    _Atomic int initialized;         /* 1 once cuInit succeeded */
    struct sim_handle h;
    pthread_mutex_t lock;            /* primary contexts, pools, allocation table */
    struct CUctx_st *primary[SIM_MAX_CARDS];
    int primary_refs[SIM_MAX_CARDS];
    unsigned primary_flags[SIM_MAX_CARDS];
    struct CUmemPoolHandle_st *default_pool[SIM_MAX_CARDS];
    struct CUmemPoolHandle_st *current_pool[SIM_MAX_CARDS];
    pthread_mutex_t alloc_lock;      /* the allocation table */
    struct sim_alloc **allocs;       /* sorted by base */
    size_t nallocs, capallocs;
    struct sim_reservation *reservations;
    size_t nreservations, capreservations;
    _Atomic unsigned long long next_id;
};

extern struct sim_proc sim_proc;

/* core.c */
CUresult sim_check_init(void);
CUresult sim_current_ctx(struct CUctx_st **out);
CUresult sim_check_device(CUdevice dev);
int sim_ctx_ok(struct CUctx_st *c);
void sim_ctx_release_memory(struct CUctx_st *c);

/* memory.c */
CUresult sim_charge(int device, uint64_t bytes);
void sim_uncharge(int device, uint64_t bytes);
struct sim_alloc *sim_alloc_find(uintptr_t addr, size_t len);
void sim_alloc_drop_ctx(struct CUctx_st *c);

/* exec.c */
CUresult sim_resolve_stream(CUstream hs, int ptds, struct CUstream_st **out);
uint64_t sim_stream_tail(struct CUstream_st *s);
void sim_stream_book(struct CUstream_st *s, uint64_t dur);
uint64_t sim_ctx_tail(struct CUctx_st *c);
CUresult sim_capture_unsafe(void); /* an unsafe call during capture: 0, or the error (exec.c) */
/* cuMemAllocAsync / cuMemFreeAsync into a capturing stream: graph memory nodes (exec.c) */
void sim_pools_release(void); /* at synchronisation: pools give back what passes their threshold */
CUresult sim_graph_capture_alloc(struct CUstream_st *s, int device, size_t size, CUdeviceptr *dptr);
int sim_graph_capture_free(struct CUstream_st *s, CUdeviceptr dptr);
void sim_sync_for_copy(struct CUstream_st *s);
struct CUstream_st *sim_stream_new(struct CUctx_st *ctx, unsigned flags, int priority, int kind);

/* Prototypes of every sim_<export> implementation, from api.def. */
#define SIM_API(exp, base, ver, pt, params, args) CUresult sim_##exp params;
#define SIM_API_ALIAS(exp, base, ver, pt)
#include "api.def"
#undef SIM_API
#undef SIM_API_ALIAS

#pragma GCC visibility pop

#endif
