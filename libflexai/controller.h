/* The compute controller of a slice, and the card board that gives it a host-wide view.
 *
 * Everything here is a pure function of the memory it is handed and of explicit time inputs:
 * no clock reads, no I/O, no locks. compute.c (the launch seam) reads the clock, records
 * events around launch batches, feeds the measured device time in and sleeps when told;
 * tests/clients/controller_test.c drives the same functions from a simulated serial card.
 * docs/compute.md explains the design.
 *
 * The card board
 * --------------
 * One small file per physical card (FLEXAI_BOARD_DIR/<card uuid>, 4 KiB + 64 slots of
 * 128 bytes), mapped MAP_SHARED by the library of every slice that launches on that card, in
 * any container (the runtime bind-mounts the board directory; outside containers it lives in
 * /dev/shm). It holds one slot per active slice (keyed by a hash of the slice id, shared by
 * every process of that slice) and one word, `turn`, naming the slice that may have work on
 * the card while slices compete.
 *
 * Why a turn: a card runs the kernels of different contexts one after another (time-slicing),
 * so an event pair around a batch measures the batch plus whatever other slices queued in
 * between. While two or more slices want the card, only the turn holder launches; its event
 * pairs then measure its own device time exactly. The next holder is the waiting slice of the
 * highest priority with the least key: virtual time (device time used / share) plus half of
 * what one of its turns adds to it (flexai_ctl_key_of). Weighted fair queueing on measured
 * device time, so kernel length and grid size do not matter.
 *
 * Lock freedom: every field is changed with __atomic operations; `turn` only by
 * compare-and-swap. The turn is taken by one process (thread) of a slice; while no other slice
 * waits, the slice's other processes launch under it too. A holder that dies or goes idle is
 * replaced once its beat (beat_ns) is older than FLEXAI_CTL_STEAL_NS and its slice's booked
 * work (busy_until) is over; a slot whose heartbeat is
 * older than FLEXAI_CTL_DEAD_NS is free for another slice. Nothing can be left held.
 *
 * Fast path: a slice that holds the turn with nobody waiting, or that runs alone, launches
 * after two relaxed loads (turn, waiting) and a compare of its generation: no syscall.
 */
#ifndef FLEXAI_CONTROLLER_H
#define FLEXAI_CONTROLLER_H

#include <stdint.h>

#include "flexai_region.h"

/* Internal to libflexai.so: nothing here is exported. */
#pragma GCC visibility push(hidden)

#define FLEXAI_BOARD_MAGIC 0x3144524f4258464cULL /* "LFXBORD1" */
#define FLEXAI_BOARD_VERSION 1
#define FLEXAI_BOARD_SLOTS 64
#define FLEXAI_BOARD_DIR "/run/flexai/boards"

/* Timing constants of the controller (ns). */
#define FLEXAI_CTL_PERIOD_NS 50000000ULL     /* control period: share/pause changes obeyed within */
#define FLEXAI_CTL_QUANTUM_NS 5000000ULL    /* device time a holder keeps the turn while others wait */
#define FLEXAI_CTL_INFLIGHT_NS 2000000ULL    /* work a holder keeps queued while others are around */
#define FLEXAI_CTL_LEARN_LAUNCHES 32         /* a thread queues at most 2 launches (under a cap) until
                                                it has seen this many of its own complete */
#define FLEXAI_CTL_NO_CAP UINT64_MAX         /* inflight cap of a slice alone on the card */
#define FLEXAI_CTL_ALONE_NS 100000000ULL     /* alone this long: the in-flight cap is lifted */
#define FLEXAI_CTL_POLL_NS 50000ULL          /* how often a waiting slice looks again */
#define FLEXAI_CTL_WAITER_LIVE_NS 20000000ULL /* a waiter not seen for this long is not waiting */
#define FLEXAI_CTL_STEAL_NS 1000000ULL       /* an idle holder loses the turn after this */
#define FLEXAI_CTL_PRIO_LIVE_NS 1000000000ULL /* another slice seen within: capped queue (1 launch below a higher one) */
#define FLEXAI_CTL_DEAD_NS 10000000000ULL    /* a slot not seen for this long may be reused */
#define FLEXAI_CTL_WINDOW_NS 1000000000ULL   /* measured-share window (region compute.reserved[0..1]) */

/* One slice on the board. 128 bytes; written by the slice's processes, read by all. */
struct flexai_board_slot {
    uint64_t key;            /* hash of the slice id, never 0; 0: free */
    uint32_t priority;       /* FLEXAI_PRIORITY_* */
    uint32_t share;          /* percent, 1..100 */
    uint64_t vtime;          /* virtual time: sum of measured device ns * 100 / share */
    uint64_t heartbeat_ns;   /* CLOCK_MONOTONIC: last time a process of the slice was seen */
    uint64_t want_ns;        /* CLOCK_MONOTONIC since it waits for the turn; 0: not waiting */
    uint64_t busy_ns;        /* measured device time, total */
    uint64_t busy_until_ns;  /* estimated end of the work it has queued on the card */
    uint64_t turn_busy0;     /* busy_ns when it last took the turn */
    uint64_t launches;
    uint64_t turn_cost;      /* virtual time one turn of the slice costs (see flexai_ctl_key_of) */
    uint64_t reserved[6];
};

struct flexai_board {
    uint64_t magic;          /* FLEXAI_BOARD_MAGIC, stored last by the creator */
    uint32_t version;
    uint32_t size;           /* sizeof(struct flexai_board) */
    uint64_t turn;           /* seq << 8 | (slot + 1) of the holder; low byte 0: nobody */
    uint64_t waiting;        /* bit per slot: the slice waits for the turn */
    uint64_t handovers;      /* turns taken, for statistics */
    uint64_t beat_ns;        /* CLOCK_MONOTONIC: last sign of life of the process holding the turn */
    uint64_t reserved[506];  /* header is 4 KiB */
    struct flexai_board_slot slot[FLEXAI_BOARD_SLOTS];
};

/* Per-process controller state: private to one process, never shared. */
struct flexai_ctl_proc {
    int slot;                /* board slot of this process's slice; -1: not joined */
    uint64_t key;
    uint64_t last_generation;
    uint64_t est_launch_ns;  /* EWMA of measured device time per launch */
    uint64_t measured;       /* launches whose device time this process has measured */
    uint64_t est_high_ns;    /* the longest launch lately (a max decaying by 1/8 per measurement):
                                queued work is counted at this, since a kernel's length is known
                                only once it ran; a slice whose kernels vary must not queue
                                several long ones on the estimate of its short ones */
    uint64_t inflight_launches; /* launched, completion not yet observed */
    uint64_t heartbeat_ns;   /* last heartbeat this process wrote (rate-limits the store) */
    uint64_t cap_checked_ns; /* when higher-priority slices were last looked for */
    uint64_t cap_ns;         /* the in-flight cap found then */
    uint64_t held_turn;      /* the turn word this process took (unique per take); 0: none */
    uint64_t alone_since_ns; /* since when no other slice was seen on the board; 0: not alone */
};

enum flexai_ctl_action {
    FLEXAI_CTL_GO = 0,       /* launch now (at most inflight_cap_ns of work queued) */
    FLEXAI_CTL_WAIT = 1,     /* do not launch; ask again after wait_ns */
    FLEXAI_CTL_DRAIN = 2,    /* do not launch; wait until this process's work completed, then
                                call flexai_ctl_release() and ask again */
};

struct flexai_ctl_decision {
    int action;              /* enum flexai_ctl_action */
    uint64_t wait_ns;        /* FLEXAI_CTL_WAIT: how long */
    uint64_t inflight_cap_ns; /* FLEXAI_CTL_GO: work this process may keep queued; 0: one launch */
};

/* Whether a process with this state may queue one more launch under `cap_ns`. */
int flexai_ctl_may_queue(const struct flexai_ctl_proc *p, uint64_t cap_ns);
/* The order in which waiting slices get the turn: virtual time plus half the virtual time
 * of one of its turns, so each slice's virtual time swings evenly around the others' and
 * a small share with long kernels runs between its fair points, not ahead of them. */
uint64_t flexai_ctl_key_of(const struct flexai_board_slot *s);
/* Hash of a slice id, never 0. */
uint64_t flexai_ctl_key(const char *slice_id);
/* Initialises a zeroed board (the creator of the board file; magic stored last). */
void flexai_board_init(struct flexai_board *b);
/* Finds or claims the slot of slice `key`: -1 when the board is full of live slices. */
int flexai_board_join(struct flexai_board *b, uint64_t key, uint32_t share, uint32_t priority,
                      uint64_t now);
/* Gives the slot up (last process of a slice leaving); releases the turn if held. */
void flexai_board_leave(struct flexai_board *b, int slot);

/* The decision for a thread about to launch on the slice's card at time `now`. May take
 * the turn (CAS), set or clear the slice's waiting bit, renew its heartbeat and refill the
 * hard-mode token bucket in `c`. */
struct flexai_ctl_decision flexai_ctl_gate(struct flexai_board *b, struct flexai_compute *c,
                                           const struct flexai_share *sh,
                                           struct flexai_ctl_proc *p, uint64_t now);
/* Feeds `busy_ns` of device time measured for `launches` completed launches of this process
 * (event pairs around a batch): virtual time, tokens, totals, the measured-share window. */
void flexai_ctl_charge(struct flexai_board *b, struct flexai_compute *c, const struct flexai_share *sh,
                       struct flexai_ctl_proc *p,
                       uint64_t busy_ns, uint64_t launches, uint64_t now);
/* Records that this process queued `launches` more (0: none, a sign of life while it waits
 * for its queued work) estimated to end at `until_ns`; renews the slice's heartbeat. */
void flexai_ctl_launched(struct flexai_board *b, struct flexai_ctl_proc *p, uint64_t launches,
                         uint64_t until_ns, uint64_t now);
/* Gives the turn back after FLEXAI_CTL_DRAIN (this process's work has completed). */
void flexai_ctl_release(struct flexai_board *b, struct flexai_ctl_proc *p, uint64_t now);
/* Slot of the waiting slice that should hold the turn next, or -1. */
int flexai_ctl_pick(const struct flexai_board *b, uint64_t now);
/* Hard mode: refills the slice's token bucket (share of elapsed time, at most one period's
 * worth) and returns ns until it covers `pending_ns` of queued work (0: may run). */
uint64_t flexai_ctl_hard_wait(struct flexai_compute *c, const struct flexai_share *sh, uint64_t pending_ns,
                              uint64_t now);
/* Estimated device time this process has queued and not yet seen complete. */
uint64_t flexai_ctl_inflight_ns(const struct flexai_ctl_proc *p);
/* Measured share of the last full window, in tenths of a percent (-1: none yet). */
int flexai_ctl_measured_permille(const struct flexai_compute *c);

#pragma GCC visibility pop

#endif
