/* Internal declarations of the simulated libascendcl.so. Only the ACL entry points listed in
 * acl_api.h are exported; everything here is hidden. The library shares the simulated cards,
 * their memory budgets and their timelines with the simulated libcuda (sim/common/simstate.h):
 * a card is a card, whichever API a process drives it through. docs/ascend.md describes the
 * model (charged sizes, kernel durations). */
#ifndef FLEXAI_SIMACL_H
#define FLEXAI_SIMACL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "acl_api.h"
#include "simstate.h"

#pragma GCC visibility push(hidden)

#define ACL_SIM_GRANULARITY (2ULL << 20)   /* physical memory granularity (2 MiB pages) */
#define ACL_SIM_ARGS_MAX 4096
#define ACL_SIM_SPIN_PREFIX "flexai_sim_spin"

enum { A_CTX = 0x41435458, A_STREAM = 0x4153544d, A_EVENT = 0x41455654, A_BIN = 0x4142494e,
       A_FUNC = 0x4146554e, A_ARGS = 0x41415247, A_PHYS = 0x41504859, A_MDLRI = 0x414d5249, A_DEAD = 0x44454144 };

struct acl_stream;

/* A captured task sequence (aclmdlRICaptureBegin .. End): replayed whole by aclmdlRIExecuteAsync,
 * which books the captured tasks' total duration on the replaying stream. */
struct acl_mdlri {
    uint32_t magic;
    uint32_t tasks;                  /* launches captured */
    uint64_t dur_ns;                 /* their total simulated duration */
};

struct acl_ctx {
    uint32_t magic;
    int device;
    int is_default;                  /* the device's default context (aclrtSetDevice) */
    int active;
    uint64_t footprint;              /* device bytes the context costs */
    struct acl_stream *def;          /* the default stream (stream argument NULL) */
    struct acl_stream *streams;      /* every stream of the context, the default one included */
    struct acl_ctx *next;            /* in acl_proc.contexts */
};

struct acl_stream {
    uint32_t magic;
    struct acl_ctx *ctx;
    uint32_t priority;
    _Atomic uint64_t tail;           /* CLOCK_MONOTONIC ns when the last work booked on it ends */
    struct acl_stream *next;         /* in ctx->streams */
    struct acl_mdlri *capture;       /* capturing into this model (aclmdlRICaptureBegin), or NULL */
};

struct acl_event {
    uint32_t magic;
    uint32_t flag;
    int recorded;
    _Atomic uint64_t t;              /* simulated time the event completes */
};

struct acl_bin {
    uint32_t magic;
    int loaded;
};

struct acl_func {
    uint32_t magic;
    int spin;                        /* name starts with flexai_sim_spin */
    struct acl_bin *bin;
    struct acl_func *next;
    char name[256];
};

struct acl_args {
    uint32_t magic;
    struct acl_func *func;
    size_t len;
    int final;
    unsigned char buf[ACL_SIM_ARGS_MAX];
};

struct acl_phys {
    uint32_t magic;
    int device;
    uint64_t size;
    int fd;                          /* memfd holding the memory */
};

enum acl_alloc_kind { K_DEVICE = 1, K_HOST, K_RESERVE, K_MAP };

struct acl_alloc {
    uintptr_t base;
    size_t size;                     /* what the caller asked for */
    size_t map_len;
    uint64_t charged;                /* bytes charged to the card */
    int device;
    int kind;
    struct acl_ctx *ctx;             /* K_DEVICE: the context it was made in */
    struct acl_phys *phys;           /* K_MAP: what is mapped there */
};

struct acl_proc {
    pthread_mutex_t lock;            /* everything below */
    int initialized;                 /* aclInit done, aclFinalize not yet */
    int finalized;
    int sim_ok;                      /* the simulator state is open */
    struct sim_handle h;
    struct acl_ctx *defctx[SIM_MAX_CARDS];
    int refs[SIM_MAX_CARDS];         /* aclrtSetDevice minus aclrtResetDevice */
    struct acl_ctx *contexts;
    struct acl_func *funcs;
    struct acl_alloc **allocs;
    size_t nallocs, capallocs;
};

extern struct acl_proc acl_proc;

/* core.c */
aclError acl_err(aclError code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
aclError acl_check_init(void);        /* initialised and the simulator open */
aclError acl_current(struct acl_ctx **out);
int acl_ctx_ok(struct acl_ctx *c);
void acl_set_current(struct acl_ctx *c);
uint64_t acl_ctx_tail(struct acl_ctx *c);

/* memory.c (call with acl_proc.lock held) */
aclError acl_charge(int device, uint64_t bytes);
void acl_uncharge(int device, uint64_t bytes);
void acl_free_ctx_allocs(struct acl_ctx *c);
void acl_free_all(void);

/* exec.c */
aclError acl_resolve_stream(aclrtStream s, struct acl_stream **out);
struct acl_stream *acl_stream_new(struct acl_ctx *c, uint32_t priority);
uint64_t acl_stream_tail(struct acl_stream *s);

#pragma GCC visibility pop

#endif
