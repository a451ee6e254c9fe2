/* Shared state of the simulated driver libraries (libcuda.so.1 and libnvidia-ml.so.1).
 *
 * Both libraries read the card description `cards.conf` from the simulator directory
 * (FLEXAI_SIM_DIR, default /run/flexai/sim) and map the file `state` in the same directory
 * MAP_SHARED. Every process on the host that uses the simulator maps the same file, so the
 * memory budget and the compute timeline of each simulated card are shared host-wide.
 * docs/simulator.md describes the model; this header is the one definition of the layout.
 *
 * Everything here is hidden: each library links its own copy of this code. */
#ifndef FLEXAI_SIMSTATE_H
#define FLEXAI_SIMSTATE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#pragma GCC visibility push(hidden)

#define SIM_DEFAULT_DIR "/run/flexai/sim"
#define SIM_CONFIG_NAME "cards.conf"
#define SIM_STATE_NAME "state"

#define SIM_MAX_CARDS 16
#define SIM_MAX_SLOTS 256
#define SIM_BUCKETS 1024                /* utilization ring: 1024 x 10 ms = 10.24 s */
#define SIM_BUCKET_NS 10000000ULL
#define SIM_BUCKET_TAG_SHIFT 24         /* bucket word: number of the bucket << 24 | busy ns */
#define SIM_MAX_KERNEL_NS 10000000000ULL /* one kernel lasts at most 10 s */

#define SIM_STATE_MAGIC 0x31534941584c4631ULL /* "1FLXAIS1" */
#define SIM_STATE_LAYOUT 1
/* Byte-range locks (F_OFD_SETLK) that mark a slot as owned by a live process lie here,
 * beyond the end of the file: one byte per slot. The kernel drops them when the owner dies. */
#define SIM_SLOT_LOCK_BASE 0x100000000LL

struct sim_card_cfg {
    int index;
    char uuid[80];
    char name[96];
    uint64_t memory;        /* bytes */
    int pci_bus;            /* bus number in the simulated PCI address */
};

struct sim_config {
    char dir[512];
    int ncards;
    struct sim_card_cfg card[SIM_MAX_CARDS];
    /* tunables ("set key value" lines) */
    uint64_t context_bytes;      /* device memory a context costs (default 300 MiB) */
    uint64_t module_bytes;       /* device memory a loaded module / library costs (default 2 MiB) */
    uint64_t nvml_pid_offset;    /* NVML reports pid + this: the pids of another pid namespace,
                                    as a container sees NVML's host pids (default 0) */
    int sm_count;                /* multiprocessors per card (default 132) */
    int cc_major, cc_minor;      /* compute capability (default 9.0) */
    uint64_t launch_ns;          /* minimum duration of a kernel (default 4000 ns) */
    uint64_t block_ns;           /* cost of one wave of blocks of an ordinary kernel (default 10000 ns) */
    uint64_t queue_depth;        /* launches a stream may have outstanding (default 1024) */
    uint64_t queue_ahead_ns;     /* how far past now a stream's work may be booked (default 50 ms) */
    uint64_t util_window_ns;     /* NVML utilization sample period (default 1 s) */
    char driver_version[32];     /* NVML driver version string (default "580.65.06") */
};

struct sim_card_shared {
    _Atomic uint64_t busy_until;     /* CLOCK_MONOTONIC ns when the last booked kernel ends */
    _Atomic uint64_t busy_ns_total;  /* sum of all booked kernel durations */
    _Atomic uint64_t launches;       /* kernels booked */
    _Atomic uint64_t bucket[SIM_BUCKETS];
};

struct sim_slot {
    _Atomic uint32_t pid;            /* 0: free */
    _Atomic uint32_t flags;
    _Atomic uint64_t claimed_ns;     /* CLOCK_REALTIME when the slot was claimed */
    _Atomic uint64_t mem[SIM_MAX_CARDS];       /* device bytes held on each card */
    _Atomic uint32_t contexts[SIM_MAX_CARDS];  /* live contexts on each card */
};

struct sim_shared {
    _Atomic uint64_t magic;          /* written last by the initialiser */
    uint32_t layout;
    uint32_t max_cards;
    uint32_t max_slots;
    uint32_t reserved0;
    struct sim_card_shared card[SIM_MAX_CARDS];
    struct sim_slot slot[SIM_MAX_SLOTS];
};

struct sim_handle {
    struct sim_config cfg;
    struct sim_shared *sh;
    int fd;                          /* state file, O_CLOEXEC; carries this process's slot lock */
    int slot;                        /* -1 when this handle owns no slot (NVML) */
};

/* Results of sim_open. */
enum sim_status {
    SIM_OK = 0,
    SIM_NO_CONFIG,        /* directory or cards.conf missing or unreadable */
    SIM_BAD_CONFIG,       /* cards.conf present but wrong */
    SIM_NO_STATE,         /* state file could not be created or mapped */
    SIM_NO_SLOT,          /* every process slot is held by a live process */
};

uint64_t sim_now_ns(void);
void sim_sleep_until(uint64_t deadline_ns);
/* A synchronize's wait: as a real driver's, it returns within microseconds of deadline_ns. */
void sim_wait_device(uint64_t deadline_ns);
const char *sim_dir(void);
int sim_config_load(const char *dir, struct sim_config *cfg, char *err, size_t errlen);
/* Opens config and state; claims a process slot when want_slot. */
enum sim_status sim_open(struct sim_handle *h, int want_slot);
void sim_close(struct sim_handle *h);

/* Process slots. */
int sim_slot_alive(const struct sim_handle *h, int slot);
void sim_reclaim_dead(struct sim_handle *h);

/* Memory accounting. */
int sim_mem_reserve(struct sim_handle *h, int card, uint64_t bytes); /* 0 ok, -1 no room */
void sim_mem_release(struct sim_handle *h, int card, uint64_t bytes);
uint64_t sim_mem_used(const struct sim_handle *h, int card);
void sim_ctx_count(struct sim_handle *h, int card, int delta);

/* Timeline. Books dur ns on the card no earlier than not_before; returns the end time and
 * stores the start in *start. */
uint64_t sim_timeline_book(struct sim_handle *h, int card, uint64_t not_before, uint64_t dur,
                           uint64_t *start);
/* Percent of the last util_window_ns (completed 10 ms buckets) the card was busy. */
unsigned sim_utilization(const struct sim_handle *h, int card);

#pragma GCC visibility pop

#endif
