/* The compute controller of a slice, and the card board that gives it a host-wide view.
 *
 * Everything here is a pure function of the memory it is handed and of explicit time inputs:
 * no clock reads, no I/O, no locks. compute.c (the launch seam) reads the clock, maps the board,
 * records events around launch batches, feeds the measured device time in and sleeps when
 * told; tests/clients/controller_test.c drives the same functions from a simulated serial card.
 * docs/compute.md explains the design.
 *
 * The card board
 * --------------
 * One directory per physical card (/run/flexai/boards/<card uuid>/) holding
 *  - `roster`: who is on the card. One entry per slice (key = hash of the slice id, share,
 *    priority), written by flexaid from its ledger. Root's and read-only in every container,
 *    so nobody can change another slice's share or priority, or raise their own.
 *  - one slot file per slice (`<key as 16 hex digits>`): that slice's own state (virtual
 *    time, waiting, holding the turn, liveness). Mounted read-write into its own container
 *    only; every other slice on the card maps it read-only.
 * So every word on the board has one writer: the slice it describes. What a tenant forges in
 * its own slot can only reorder it among slices of its own priority (its virtual time, its
 * claim to the turn); slices of another priority read nothing from it they obey (docs/security.md).
 *
 * Why a turn: a card runs the kernels of different contexts one after another (time-slicing),
 * so an event pair around a batch measures the batch plus whatever other slices queued in
 * between. While two or more slices want the card, only the turn holder launches; its event
 * pairs then measure its own device time exactly. The next holder is the waiting slice of the
 * highest priority with the least key: virtual time (device time used / share) plus half of
 * what one of its turns adds to it (flexai_ctl_key_of). Weighted fair queueing on measured
 * device time, so kernel length and grid size do not matter.
 *
 * The turn without a shared word: a slice holds the turn when its own slot's `hold` is set.
 * It takes it (flexai_ctl_gate) only when no slice of its priority or above holds it, by a
 * filter over single-writer words: announce `intent`, full fence, look at the others' intent
 * and hold; withdraw when another holds, or announces with a higher priority or a lower roster
 * index; wait one poll while a slice of a higher index announces (it will see us and withdraw,
 * or it saw nothing and holds). A higher priority never waits for a lower holder: the lower
 * one drains on seeing it. A holder whose beat is older than FLEXAI_CTL_STEAL_NS with its
 * booked work over counts as not holding, and on its return gives the turn up to whoever took
 * it since (the later take wins). Nothing can be left held.
 *
 * Waiting for the turn: a waiter sleeps on the holder's `hold` word (the decision's `watch`,
 * a futex in the launch seam), which the holder's release changes and wakes; the slice next in
 * turn stays awake for the handover instead (`spin`), from shortly before the holder's booked
 * work ends, when the holder said that work is the last of its turn (`handing_ns`) or its key
 * passed the waiter's. A handover then costs the card the time to see the word change, not a
 * thread's wake-up (docs/compute.md, "Handovers").
 *
 * Fast path: a slice alone on the card that holds the turn launches after a few relaxed loads
 * (roster generation, its hold, the others' want words as last seen) and a compare of its
 * generation: no syscall.
 */
#ifndef FLEXAI_CONTROLLER_H
#define FLEXAI_CONTROLLER_H

#include <stdint.h>

#include "flexai_region.h"

/* Internal to libflexai.so: nothing here is exported. */
#pragma GCC visibility push(hidden)

#define FLEXAI_ROSTER_MAGIC 0x3254534f5258464cULL /* "LFXROST2" */
#define FLEXAI_BOARD_VERSION 2
#define FLEXAI_BOARD_SLOTS 64
#define FLEXAI_BOARD_DIR "/run/flexai/boards"
#define FLEXAI_ROSTER_NAME "roster"
#define FLEXAI_SLOT_FILE_SIZE 4096           /* a slot file: one page, the slot at its start */

/* Timing constants of the controller (ns). */
#define FLEXAI_CTL_PERIOD_NS 50000000ULL     /* control period: share/pause changes obeyed within */
#define FLEXAI_CTL_QUANTUM_NS 5000000ULL    /* device time a holder keeps the turn while others wait */
#define FLEXAI_CTL_INFLIGHT_NS 2000000ULL    /* work a holder keeps queued while others are around */
#define FLEXAI_CTL_LEARN_LAUNCHES 32         /* a thread queues at most 2 launches (under a cap) until
                                                it has seen this many of its own complete */
#define FLEXAI_CTL_NO_CAP UINT64_MAX         /* inflight cap of a slice alone on the card */
#define FLEXAI_CTL_ALONE_NS 100000000ULL     /* alone this long: the in-flight cap is lifted */
#define FLEXAI_CTL_POLL_NS 50000ULL          /* how often a waiting slice looks again */
#define FLEXAI_CTL_SPIN_EARLY_NS 200000ULL   /* the slice next in turn is awake this long before
                                                the holder's booked work ends (a sleeping thread
                                                wakes 10-150 us late on a small VM) */
#define FLEXAI_CTL_SPIN_LATE_NS 50000ULL     /* ... and looks until this long after it (and the
                                                holder's usual return) */
#define FLEXAI_CTL_SPINS_UNUSED 3            /* ... at most this many times in a row in vain (a
                                                wrong guess, or a holder forging its slot) */
#define FLEXAI_CTL_WATCH_MAX_NS 1000000ULL   /* longest wait on a live holder's word (woken when it
                                                gives the turn back; looks again at least this often) */
#define FLEXAI_CTL_WAITER_LIVE_NS 20000000ULL /* a waiter not seen for this long is not waiting */
#define FLEXAI_CTL_STEAL_NS 1000000ULL       /* an idle holder loses the turn after this */
#define FLEXAI_CTL_RETURN_MAX_NS 1000000ULL  /* at most this long a holder whose work is over is
                                                waited for, when it usually comes back that fast */
#define FLEXAI_CTL_ROTATE_NS 1000000ULL     /* a process that gave the turn up to another process
                                                of its slice leaves it to them this long (they
                                                wake 10-150 us late; one that never comes costs it
                                                once: the retake clears the slice's want) */
#define FLEXAI_CTL_INTENT_LIVE_NS 2000000ULL /* an announced take older than this was abandoned */
#define FLEXAI_CTL_PRIO_LIVE_NS 1000000000ULL /* another slice seen within: capped queue (1 launch below a higher one) */
#define FLEXAI_CTL_DEAD_NS 10000000000ULL    /* a roster entry whose slot was not seen for this long may
                                                be reused (outside containers, where the library
                                                keeps the roster itself) */
#define FLEXAI_CTL_WINDOW_NS 1000000000ULL   /* measured-share window (region compute.reserved[0..1]) */

/* Who is on the card: one entry per slice. flexaid writes it (flexai_hook/devices/board.py) and
 * bumps `generation` around each change (odd while writing); outside containers the library
 * keeps it itself. 32 bytes. */
struct flexai_roster_entry {
    uint64_t key;            /* hash of the slice id (flexai_ctl_key), never 0; 0: free */
    uint32_t share;          /* percent, 1..100 */
    uint32_t priority;       /* FLEXAI_PRIORITY_* */
    uint64_t reserved[2];
};

struct flexai_roster {
    uint64_t magic;          /* FLEXAI_ROSTER_MAGIC, stored last by the creator */
    uint32_t version;        /* FLEXAI_BOARD_VERSION */
    uint32_t size;           /* sizeof(struct flexai_roster) */
    uint64_t generation;     /* changes with every entry written */
    uint64_t reserved[5];    /* header is 64 bytes */
    struct flexai_roster_entry entry[FLEXAI_BOARD_SLOTS];
};

/* One slice's own state on the board: written by that slice's processes only (its slot file
 * is read-only everywhere else), read by every slice on the card. 192 bytes. */
struct flexai_board_slot {
    uint64_t key;            /* the roster key of the slice that initialised it; 0: fresh */
    uint64_t vtime;          /* virtual time: sum of measured device ns * 100 / share */
    uint64_t heartbeat_ns;   /* CLOCK_MONOTONIC: last time a process of the slice was seen */
    uint64_t want_ns;        /* CLOCK_MONOTONIC since it waits for the turn; 0: not waiting */
    uint64_t busy_ns;        /* measured device time, total */
    uint64_t busy_until_ns;  /* estimated end of the work it has queued on the card */
    uint64_t turn_busy0;     /* busy_ns when it last took the turn */
    uint64_t launches;
    uint64_t turn_cost;      /* virtual time one turn of the slice costs (see flexai_ctl_key_of) */
    uint64_t hold;           /* token of the process (thread) of the slice holding the turn; 0: none */
    uint64_t hold_ns;        /* when it was taken: of two holders, the later take wins */
    uint64_t beat_ns;        /* the holder's last sign of life */
    uint64_t intent_ns;      /* announcing a take of the turn since (the filter); 0: not */
    uint64_t seq;            /* takes by this slice: the source of `hold` tokens */
    uint64_t handovers;      /* turns this slice took, for statistics */
    uint64_t return_ns;      /* how soon the slice usually launches again once its queued work
                                is over (EWMA): a closed loop comes back within it */
    uint64_t handing_ns;     /* set by the holder (>= hold_ns) when the work it has queued is the
                                last of its turn: it gives the turn up when that work is over, so
                                the slice next in turn stays awake for it */
    uint64_t reserved[7];
};

/* One process's view of its card's board: private memory, pointing at the shared mappings.
 * compute.c keeps `slot[]` in step with the roster (mapping each listed slice's slot file,
 * read-only but for its own); the controller only reads through `slot[]` and writes `own`. */
struct flexai_board {
    struct flexai_roster *roster;  /* read-only mapping in a container */
    int self;                      /* this slice's roster index; -1: not on the board */
    struct flexai_board_slot *own; /* this slice's slot */
    const struct flexai_board_slot *slot[FLEXAI_BOARD_SLOTS]; /* by roster index; NULL: not mapped */
    int keeps_roster;              /* 1 outside containers: the library publishes its own share
                                      and priority in the roster (flexaid does in containers) */
};

/* Per-process controller state: private to one process, never shared. */
struct flexai_ctl_proc {
    int slot;                /* roster index of this process's slice; -1: not joined */
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
    uint64_t held_turn;      /* the hold token this process took (unique per take); 0: none */
    uint64_t alone_since_ns; /* since when no other slice was seen on the board; 0: not alone */
    uint64_t return_seen;    /* the end of work whose return this process measured last */
    uint64_t rotated_ns;     /* when this process gave the turn up for another of its slice's */
    uint32_t spins_unused;   /* waits spent awake in vain (the turn did not come to its slice)
                                in a row: after FLEXAI_CTL_SPINS_UNUSED it sleeps until woken,
                                until its slice takes a turn again */
    uint32_t spun;           /* the last wait was spent awake */
    uint64_t turns_seen;     /* its slice's `handovers` (turns taken) at its last wait */
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
    /* FLEXAI_CTL_WAIT for a live holder: the holder's `hold` word as it read then. The wait
     * ends early when the holder gives the turn back (flexai_ctl_release changes the word and
     * the caller wakes its watchers: flexai_ctl_watch_word); NULL: wait wait_ns. */
    const uint64_t *watch;
    uint64_t watch_value;
    int spin;                /* with watch: the turn comes to this slice when it changes, due
                                within wait_ns: look without sleeping (yielding the CPU) */
};

/* Whether a process with this state may queue one more launch under `cap_ns`. */
int flexai_ctl_may_queue(const struct flexai_ctl_proc *p, uint64_t cap_ns);
/* The order in which waiting slices get the turn: virtual time plus half the virtual time
 * of one of its turns, so each slice's virtual time swings evenly around the others' and
 * a small share with long kernels runs between its fair points, not ahead of them. */
uint64_t flexai_ctl_key_of(const struct flexai_board_slot *s, uint32_t share);
/* Hash of a slice id, never 0 (flexai_hook/devices/board.py computes the same). */
uint64_t flexai_ctl_key(const char *slice_id);
/* Initialises a zeroed roster (its creator: the library outside containers; magic last). */
void flexai_roster_init(struct flexai_roster *r);
/* Whether `r` is a roster this library understands. */
int flexai_roster_valid(const struct flexai_roster *r);
/* The roster index of slice `key`, or -1. */
int flexai_roster_find(const struct flexai_roster *r, uint64_t key);
/* Outside containers, where the library keeps the roster: the index of slice `key`, claimed
 * when absent (a free entry, or one whose mapped slot was not seen for FLEXAI_CTL_DEAD_NS);
 * share and priority published there. -1: the roster is full of live slices. */
int flexai_roster_claim(struct flexai_board *b, uint64_t key, uint32_t share, uint32_t priority,
                        uint64_t now);
/* Joins the board with b->self and b->own set: a slot not yet the slice's (fresh, or left by
 * a slice before) starts level with the slices of its priority, not with a credit. */
void flexai_board_join(struct flexai_board *b, uint64_t key, uint64_t now);
/* Slot `i` of the view when it is in use by the slice the roster lists there, else NULL. */
const struct flexai_board_slot *flexai_board_slot_of(const struct flexai_board *b, int i);

/* The decision for a thread about to launch on the slice's card at time `now`. May take
 * the turn, set or clear the slice's want, renew its heartbeat (its own slot only) and refill
 * the hard-mode token bucket in `c`. */
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
/* The 32-bit word a waiter sleeps on (a futex) for the 64-bit `hold` word `w`: its low half,
 * which differs for every take (the token's low byte is never 0). */
static inline const uint32_t *flexai_ctl_watch_word(const uint64_t *w)
{
    return (const uint32_t *)w + (__BYTE_ORDER__ == __ORDER_BIG_ENDIAN__);
}
/* Gives the turn back after FLEXAI_CTL_DRAIN (this process's work has completed); the caller
 * then wakes the waiters sleeping on the slot's `hold` word (flexai_ctl_watch_word). */
void flexai_ctl_release(struct flexai_board *b, struct flexai_ctl_proc *p, uint64_t now);
/* Roster index of the waiting slice that should hold the turn next, or -1. */
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
