/* The shared region of one slice: the only state every process of a container shares.
 *
 * The region is writable by the tenant (every process of the container maps it read-write),
 * so it carries usage only. Its header's limit fields (memory_limit, card_memory,
 * context_memory, the compute block's limit_percent/mode/priority/paused/generation) are a
 * copy for readers outside containers and for regions the library makes itself outside
 * containers; inside a container libflexai enforces from `struct flexai_limits` below, a
 * separate read-only file (docs/security.md).
 *
 * One file per slice (the daemon creates it under /run/flexai/slices/<slice-id>/region and
 * the runtime mounts it read-write at /run/flexai/region; outside containers the first
 * process of a program tree creates one in /dev/shm). Every process of the slice maps it
 * MAP_SHARED. The daemon and `flexai status` read it through cffi in ABI mode from the text
 * between the FLEXAI_CDEF markers below, so that block must stay parseable by cffi's cdef:
 * fixed-width integers, plain arrays, #define'd integer constants, no attributes, no _Atomic.
 * The C side uses the __atomic builtins on these fields.
 *
 * Concurrency:
 *  - `lock` holds a pthread mutex (PTHREAD_PROCESS_SHARED + PTHREAD_MUTEX_ROBUST) that the
 *    first attaching process initialises (lock_state 0 -> 1 -> 2). Memory accounting
 *    (memory_used, each slot's memory_used, slot claim and reclaim) changes only under it,
 *    so a reservation is one atomic step for every other process; a holder that dies is
 *    detected by the robust mutex (EOWNERDEAD) and the totals are rebuilt from the slots.
 *  - A process owns its slot while it holds an OFD write lock (fcntl F_OFD_SETLK) on byte
 *    FLEXAI_SLOT_LOCK_BASE + slot of the region file. The kernel drops the lock when the
 *    process dies (even kill -9), and any process, in any pid namespace, can test it
 *    (F_OFD_GETLK): that is how dead processes are found and their memory reclaimed. pid and
 *    start_time are recorded for display and for the NVML process list.
 *  - launches/busy_ns of a slot are written only by its owner (relaxed atomic adds), so the
 *    launch path touches no shared cache line and takes no lock.
 *  - The compute block is for the compute controller (issue 6): the daemon writes the share,
 *    mode, priority and paused flag and bumps `generation`; the slice's processes run the
 *    controller on the remaining fields.
 *
 * Changing this layout: bump FLEXAI_REGION_VERSION; a library and a region of different
 * versions do not share (the library falls back to a private region, see limits.c).
 */
#ifndef FLEXAI_REGION_H
#define FLEXAI_REGION_H

#include <stdint.h>

/* FLEXAI_CDEF_BEGIN */
#define FLEXAI_REGION_MAGIC 0x314E474552414C46
#define FLEXAI_REGION_VERSION 1
#define FLEXAI_MAX_PROCS 256
#define FLEXAI_SLOT_LOCK_BASE 1073741824

#define FLEXAI_LOCK_UNINIT 0
#define FLEXAI_LOCK_INITIALISING 1
#define FLEXAI_LOCK_READY 2

#define FLEXAI_MODE_WORK_CONSERVING 0
#define FLEXAI_MODE_HARD 1

#define FLEXAI_PRIORITY_LOW 0
#define FLEXAI_PRIORITY_NORMAL 1
#define FLEXAI_PRIORITY_HIGH 2

#define FLEXAI_REGION_F_CREATED_BY_LIBRARY 1

#define FLEXAI_LIMITS_MAGIC 0x314D494C49415846
#define FLEXAI_LIMITS_VERSION 1
#define FLEXAI_LIMITS_F_COMPUTE_BY_MPS 1

/* What a slice's compute may use, and whether it is paused: flexaid writes it, the library
 * obeys. `generation` is bumped (release order) after every change of the other fields. */
struct flexai_share {
    uint32_t limit_percent;   /* share of the card's time, 1..100 */
    uint32_t mode;            /* FLEXAI_MODE_* */
    uint32_t priority;        /* FLEXAI_PRIORITY_* */
    uint32_t paused;          /* 1: the slice's launches wait */
    uint64_t generation;
};

/* A slice's limits: the only source libflexai enforces from. flexaid writes the file
 * (/run/flexai/slices/<slice-id>/limits, root-owned, mode 0644) and changes it in place;
 * the runtime mounts it read-only at /run/flexai/limits. Nothing the tenant can write (the
 * region, the environment) can loosen what is here. */
struct flexai_limits {
    uint64_t magic;           /* FLEXAI_LIMITS_MAGIC, stored last by flexaid */
    uint32_t version;         /* FLEXAI_LIMITS_VERSION */
    uint32_t size;            /* sizeof(struct flexai_limits) */
    uint32_t flags;           /* FLEXAI_LIMITS_F_* */
    int32_t device_index;
    char slice_id[32];
    char device_uuid[96];
    int64_t card_memory;      /* bytes of the whole card; 0: unknown */
    int64_t memory_limit;     /* bytes the slice may hold; > 0 */
    int64_t context_memory;   /* bytes charged per process for its context */
    struct flexai_share share;
    uint64_t reserved[16];
};

/* One attached process. 128 bytes: the first cache line changes at attach and on memory
 * accounting (under the lock), the second only on its owner's launches. */
struct flexai_proc {
    int32_t pid;              /* as seen in the slice's pid namespace; 0: slot never used */
    uint32_t flags;
    uint64_t start_time;      /* /proc/<pid>/stat starttime, against pid reuse */
    int64_t memory_used;      /* bytes this process holds, its context included */
    int64_t context_bytes;    /* part of memory_used charged for its context */
    uint64_t attached_ns;     /* CLOCK_REALTIME at attach */
    int64_t overhead_bytes;   /* part of memory_used the driver holds beyond what was tracked
                                 (NVML per-process used minus tracked: contexts, modules,
                                 stacks, heap); libflexai/overhead.c */
    uint64_t reserved0[2];
    uint64_t launches;        /* kernel and graph launches of this process */
    uint64_t busy_ns;         /* device time measured for this process (compute controller) */
    uint64_t reserved1[6];
};

/* Per-slice compute state: the share (written by the daemon) and the controller's state. */
struct flexai_compute {
    struct flexai_share share; /* a copy for readers; in a container the library obeys
                                  struct flexai_limits' share instead */
    uint64_t period_ns;       /* control period; 0: the library's default */
    uint64_t window_start_ns; /* CLOCK_MONOTONIC start of the current accounting window */
    uint64_t window_busy_ns;  /* device time used in the current window */
    int64_t tokens_ns;        /* device time the slice may still use before it must wait */
    int64_t debt_ns;          /* device time used beyond its tokens, paid back by waiting */
    uint64_t busy_ns_total;   /* device time accounted since the region was created */
    uint64_t last_update_ns;  /* CLOCK_MONOTONIC of the controller's last step */
    uint32_t controller_pid;  /* process running the controller step now; 0: none */
    uint32_t controller_flags;
    uint64_t reserved[6];
};

struct flexai_region {
    uint64_t magic;           /* FLEXAI_REGION_MAGIC, stored last by the creator */
    uint32_t version;         /* FLEXAI_REGION_VERSION */
    uint32_t size;            /* sizeof(struct flexai_region) */
    uint32_t flags;           /* FLEXAI_REGION_F_* */
    uint32_t lock_state;      /* FLEXAI_LOCK_* */
    uint64_t lock[8];         /* a pthread_mutex_t (robust, process-shared) */
    char slice_id[32];
    char device_uuid[96];     /* the slice's card; empty: the card at device_index */
    int32_t device_index;
    uint32_t reserved_pad;
    int64_t card_memory;      /* bytes of the whole card; 0: unknown */
    int64_t memory_limit;     /* bytes the slice may hold; 0: no memory limit */
    int64_t context_memory;   /* bytes charged per process for its CUDA context */
    uint64_t created_ns;      /* CLOCK_REALTIME at creation */
    uint64_t reserved_hdr[15];

    /* Memory accounting: changed under `lock`. */
    int64_t memory_used;      /* sum of the slots' memory_used */
    int64_t memory_peak;
    uint64_t oom_rejections;  /* allocations refused because the slice was full */
    uint64_t launches_retired;   /* launches of processes whose slots were reclaimed */
    uint64_t busy_ns_retired;
    uint64_t reclaimed_processes;  /* dead processes whose memory was given back */
    uint64_t reserved_acct[10];

    struct flexai_compute compute;
    struct flexai_proc procs[FLEXAI_MAX_PROCS];
};
/* FLEXAI_CDEF_END */

#endif
