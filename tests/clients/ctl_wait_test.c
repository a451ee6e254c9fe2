/* How a slice waits for the turn (libflexai/core/controller.c), as pure functions: asleep on the
 * holder's `hold` word, awake for the handover when the turn is due to it, and awake in vain at
 * most FLEXAI_CTL_SPINS_UNUSED times in a row until its slice has had a turn. Prints "ok" or the first failed
 * check. Built and run by test_compute_controller.py. */
#include <stdio.h>
#include <string.h>

#include "controller.h"
#include "unit_check.h"

static struct flexai_roster roster;
static struct flexai_board_slot slots[FLEXAI_BOARD_SLOTS];
static struct flexai_region region_h, region_w;

static void join(struct flexai_board *v, struct flexai_ctl_proc *p, struct flexai_region *r, uint64_t key,
                 uint64_t now)
{
    v->roster = &roster;
    v->keeps_roster = 1;
    v->self = -1;
    for (int i = 0; i < FLEXAI_BOARD_SLOTS; i++)
        v->slot[i] = &slots[i];
    r->compute.share.limit_percent = 50;
    v->self = flexai_roster_claim(v, key, 50, FLEXAI_PRIORITY_NORMAL, now);
    v->own = &slots[v->self];
    flexai_board_join(v, key, now);
    memset(p, 0, sizeof *p);
    p->slot = v->self;
    p->key = key;
}

static struct flexai_ctl_decision gate(struct flexai_board *v, struct flexai_region *r,
                                       struct flexai_ctl_proc *p, uint64_t now)
{
    return flexai_ctl_gate(v, &r->compute, &r->compute.share, p, now);
}

/* The holder keeps working: one more launch booked to end at `until`, and (forged or honest)
 * "this is the last launch of my turn". */
static void holder_works(struct flexai_board *hv, struct flexai_ctl_proc *hp, uint64_t until, uint64_t now)
{
    flexai_ctl_launched(hv, hp, 1, until, now);
    __atomic_store_n(&hv->own->handing_ns, now, __ATOMIC_RELEASE);
}

int main(void)
{
    const uint64_t us = 1000, ms = 1000 * us;
    uint64_t t = 10000 * ms;
    static struct flexai_board hv, wv;
    struct flexai_ctl_proc hp, wp;
    flexai_roster_init(&roster);
    join(&hv, &hp, &region_h, flexai_ctl_key("holder"), t);
    join(&wv, &wp, &region_w, flexai_ctl_key("waiter"), t);

    /* the holder takes the turn */
    struct flexai_ctl_decision d = gate(&hv, &region_h, &hp, t);
    CHECK(d.action == FLEXAI_CTL_GO && hp.held_turn != 0);
    uint64_t until = t + ms;
    flexai_ctl_launched(&hv, &hp, 1, until, t);

    /* a waiter far from the end of the holder's work sleeps on its word, not in 50 us polls,
     * and looks again shortly before that end */
    t += 100 * us;
    d = gate(&wv, &region_w, &wp, t);
    CHECK(d.action == FLEXAI_CTL_WAIT);
    CHECK(d.watch == &slots[hv.self].hold && d.watch_value == hp.held_turn);
    CHECK(!d.spin);
    CHECK(t + d.wait_ns <= until - FLEXAI_CTL_SPIN_EARLY_NS);
    CHECK(d.wait_ns <= FLEXAI_CTL_WATCH_MAX_NS);

    /* near the end, the turn not due to it (equal keys, no handing): still asleep */
    t = until - 100 * us;
    d = gate(&wv, &region_w, &wp, t);
    CHECK(d.action == FLEXAI_CTL_WAIT && d.watch && !d.spin);

    /* the holder says this work is the last of its turn: the waiter stays awake for it, but the
     * holder keeps the turn (a wrong guess, or a forged handing_ns) three times in a row... */
    for (int i = 0; i < FLEXAI_CTL_SPINS_UNUSED; i++) {
        holder_works(&hv, &hp, until, t);
        d = gate(&wv, &region_w, &wp, t);
        CHECK(d.action == FLEXAI_CTL_WAIT && d.watch && d.spin);
        CHECK(t + d.wait_ns <= until + FLEXAI_CTL_RETURN_MAX_NS + FLEXAI_CTL_SPIN_LATE_NS);
        t += d.wait_ns; /* awake until the end of the spin: nothing changed */
        until = t + ms;
        flexai_ctl_launched(&hv, &hp, 1, until, t);
        t = until - 100 * us;
    }
    /* ...so from then on it only sleeps until woken, for the rest of that holder's turn */
    holder_works(&hv, &hp, until, t);
    d = gate(&wv, &region_w, &wp, t);
    CHECK(d.action == FLEXAI_CTL_WAIT && d.watch && !d.spin);
    t += d.wait_ns;
    until = t + ms;
    holder_works(&hv, &hp, until, t);
    t = until - 100 * us;
    d = gate(&wv, &region_w, &wp, t);
    CHECK(d.action == FLEXAI_CTL_WAIT && d.watch && !d.spin);

    /* a holder rewriting its token (its slot is its own to write) does not reset the budget */
    __atomic_store_n(&slots[hv.self].hold, hp.held_turn + 256, __ATOMIC_RELEASE);
    hp.held_turn += 256;
    holder_works(&hv, &hp, until, t);
    d = gate(&wv, &region_w, &wp, t);
    CHECK(d.action == FLEXAI_CTL_WAIT && d.watch_value == hp.held_turn && !d.spin);

    /* the holder gives the turn up: the word changes, which ends the wait (the launch seam
     * wakes the sleepers), and the waiter takes the turn at its next look */
    t = until + 10 * us;
    flexai_ctl_release(&hv, &hp, t);
    CHECK(__atomic_load_n(&slots[hv.self].hold, __ATOMIC_ACQUIRE) != d.watch_value);
    __atomic_store_n(&slots[hv.self].want_ns, 0, __ATOMIC_RELEASE); /* the holder goes idle */
    d = gate(&wv, &region_w, &wp, t + 1 * us);
    CHECK(d.action == FLEXAI_CTL_GO && wp.held_turn != 0);

    /* its slice had a turn: at the next handover due to it, it may stay awake again (a waiter
     * asleep for good lost every handover to its spinning siblings) */
    t += 2 * ms;
    flexai_ctl_release(&wv, &wp, t);
    __atomic_store_n(&slots[wv.self].vtime, 0, __ATOMIC_RELEASE); /* the holder is the best now */
    __atomic_store_n(&slots[hv.self].vtime, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&slots[wv.self].want_ns, 0, __ATOMIC_RELEASE);
    d = gate(&hv, &region_h, &hp, t);
    CHECK(d.action == FLEXAI_CTL_GO && hp.held_turn != 0);
    until = t + ms;
    holder_works(&hv, &hp, until, t);
    t = until - 100 * us;
    d = gate(&wv, &region_w, &wp, t);
    CHECK(d.action == FLEXAI_CTL_WAIT && d.watch_value == hp.held_turn && d.spin);
    printf("ok\n");
    return 0;
}
