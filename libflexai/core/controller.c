/* The compute controller: pure functions over one process's view of the card board, a slice's
 * compute block and one process's private state. See controller.h and docs/compute.md. No
 * clock reads, no I/O, no locks: every shared field is an __atomic access, and the only board
 * memory written is the slice's own slot (and, outside containers, its own roster entry). */
#include "controller.h"

#include <stddef.h>

#define LD(x) __atomic_load_n(&(x), __ATOMIC_ACQUIRE)
#define LDR(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)
#define ST(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELEASE)
#define ADD(x, v) __atomic_add_fetch(&(x), (v), __ATOMIC_ACQ_REL)

_Static_assert(sizeof(struct flexai_board_slot) == 192, "board slot is 192 bytes");
_Static_assert(sizeof(struct flexai_roster_entry) == 32, "roster entry is 32 bytes");
_Static_assert(offsetof(struct flexai_roster, entry) == 64, "roster header is 64 bytes");
_Static_assert(sizeof(struct flexai_roster) <= 4096, "roster fits a page");

uint64_t flexai_ctl_key(const char *slice_id)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (const unsigned char *s = (const unsigned char *)slice_id; s && *s; s++) {
        h ^= *s;
        h *= 1099511628211ULL;
    }
    return h ? h : 1;
}

static uint32_t clamp_share(uint32_t s)
{
    return s < 1 ? 1 : s > 100 ? 100 : s;
}

/* ---- the roster and the view ------------------------------------------------------------ */

void flexai_roster_init(struct flexai_roster *r)
{
    r->version = FLEXAI_BOARD_VERSION;
    r->size = (uint32_t)sizeof *r;
    ST(r->magic, FLEXAI_ROSTER_MAGIC);
}

int flexai_roster_valid(const struct flexai_roster *r)
{
    return LD(r->magic) == FLEXAI_ROSTER_MAGIC && LDR(r->version) == FLEXAI_BOARD_VERSION &&
           LDR(r->size) == sizeof *r;
}

int flexai_roster_find(const struct flexai_roster *r, uint64_t key)
{
    for (int i = 0; i < FLEXAI_BOARD_SLOTS; i++)
        if (LD(r->entry[i].key) == key)
            return i;
    return -1;
}

const struct flexai_board_slot *flexai_board_slot_of(const struct flexai_board *b, int i)
{
    const struct flexai_board_slot *s = b->slot[i];
    uint64_t k;
    if (!s || (k = LDR(b->roster->entry[i].key)) == 0 || LDR(s->key) != k)
        return NULL;
    return s;
}

static uint32_t share_at(const struct flexai_board *b, int i)
{
    return clamp_share(LDR(b->roster->entry[i].share));
}

static uint32_t prio_at(const struct flexai_board *b, int i)
{
    return LDR(b->roster->entry[i].priority);
}

static int seen_within(uint64_t at, uint64_t now, uint64_t ns)
{
    return at >= now || now - at < ns;
}

/* The least virtual time among the other live slices of priority `prio` (UINT64_MAX: none):
 * virtual times mean something only among slices of one priority, so a slice of another one
 * cannot move this slice's baseline, whatever it writes into its own slot. */
static uint64_t class_min_vtime(const struct flexai_board *b, uint32_t prio, uint64_t now, int competing)
{
    uint64_t minv = UINT64_MAX;
    for (int i = 0; i < FLEXAI_BOARD_SLOTS; i++) {
        const struct flexai_board_slot *o = i == b->self ? NULL : flexai_board_slot_of(b, i);
        if (!o || prio_at(b, i) != prio)
            continue;
        if (competing ? !(LD(o->hold) != 0 || (LD(o->want_ns) != 0 &&
                                               seen_within(LD(o->heartbeat_ns), now, FLEXAI_CTL_WAITER_LIVE_NS)))
                      : !seen_within(LD(o->heartbeat_ns), now, FLEXAI_CTL_DEAD_NS))
            continue;
        uint64_t v = LD(o->vtime);
        if (v < minv)
            minv = v;
    }
    return minv;
}

int flexai_roster_claim(struct flexai_board *b, uint64_t key, uint32_t share, uint32_t priority,
                        uint64_t now)
{
    struct flexai_roster *r = b->roster;
    int found = flexai_roster_find(r, key);
    for (int i = 0; i < FLEXAI_BOARD_SLOTS && found < 0; i++) {
        uint64_t k = LD(r->entry[i].key);
        const struct flexai_board_slot *o = b->slot[i];
        /* free, or its slice left no slot (its slot file is made before the claim) or was
         * not seen for FLEXAI_CTL_DEAD_NS */
        if (k != 0 && o && seen_within(LD(o->heartbeat_ns), now, FLEXAI_CTL_DEAD_NS))
            continue;
        if (__atomic_compare_exchange_n(&r->entry[i].key, &k, key, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            found = i;
    }
    if (found >= 0) {
        ST(r->entry[found].share, clamp_share(share));
        ST(r->entry[found].priority, priority);
        ADD(r->generation, 2);
    }
    return found;
}

void flexai_board_join(struct flexai_board *b, uint64_t key, uint64_t now)
{
    struct flexai_board_slot *s = b->own;
    if (!s || b->self < 0)
        return;
    if (LD(s->key) != key) {
        /* a fresh slot (or one left by an earlier slice): no turn, no want, and a virtual
         * time level with the slices of its priority, not a huge credit */
        ST(s->hold, 0);
        ST(s->want_ns, 0);
        ST(s->intent_ns, 0);
        ST(s->busy_until_ns, 0);
        ST(s->turn_cost, 0);
        uint64_t minv = class_min_vtime(b, prio_at(b, b->self), now, 0);
        ST(s->vtime, minv == UINT64_MAX ? 0 : minv);
        ST(s->key, key);
    }
    ST(s->heartbeat_ns, now);
}

/* ---- reading the others ------------------------------------------------------------------ */

static int waiter_live(const struct flexai_board_slot *s, uint64_t now)
{
    return LD(s->want_ns) != 0 && seen_within(LD(s->heartbeat_ns), now, FLEXAI_CTL_WAITER_LIVE_NS);
}

/* A closed loop (launch, wait for it, launch again) empties its queue between launches; it
 * is not idle there. A slice that usually asks again within FLEXAI_CTL_RETURN_MAX_NS / 2 of
 * its work being over is a closed loop: its holder is still waited for after its booked work,
 * for twice its usual return by a slice whose turn it is by now (its key a quantum below the
 * holder's: the holder would give it the turn at its next launch anyway), and for up to
 * FLEXAI_CTL_RETURN_MAX_NS by any other, so the jitter of one slow return (a descheduled
 * thread) does not hand the card out of turn. A slice that comes back later (think time), or
 * stops, is not waited for at all; the card is never held idle longer than
 * FLEXAI_CTL_RETURN_MAX_NS for a slice that went away. */
static uint64_t return_grace(const struct flexai_board_slot *h, int owed)
{
    uint64_t r = LD(h->return_ns);
    if (r == 0 || r > FLEXAI_CTL_RETURN_MAX_NS / 2)
        return 0;
    return owed ? 2 * r : FLEXAI_CTL_RETURN_MAX_NS;
}

/* Holds the turn and shows it: a holder whose beat is older than FLEXAI_CTL_STEAL_NS and
 * whose booked work (and `grace` after it) is over went idle (or died), and counts as not
 * holding. */
static int holder_live(const struct flexai_board_slot *s, uint64_t now, uint64_t grace)
{
    if (LD(s->hold) == 0)
        return 0;
    uint64_t beat = LD(s->beat_ns), until = LD(s->busy_until_ns);
    if (until)
        until += grace;
    return !(now > beat && now - beat > FLEXAI_CTL_STEAL_NS && now >= until);
}

uint64_t flexai_ctl_key_of(const struct flexai_board_slot *s, uint32_t share)
{
    uint64_t cost = LD(s->turn_cost);
    if (cost == 0) /* nothing measured yet: a turn is at least a quantum of device time */
        cost = FLEXAI_CTL_QUANTUM_NS * 100 / clamp_share(share);
    return LD(s->vtime) + cost / 2;
}

/* The best live waiter of priority `min_prio` or above (the own slot included): highest
 * priority, then least key, then longest waiting, then roster order. */
static int pick_from(const struct flexai_board *b, uint64_t now, uint32_t min_prio)
{
    int best = -1;
    uint32_t bp = 0;
    uint64_t bv = 0, bw = 0;
    for (int i = 0; i < FLEXAI_BOARD_SLOTS; i++) {
        const struct flexai_board_slot *s = flexai_board_slot_of(b, i);
        if (!s || !waiter_live(s, now))
            continue;
        uint32_t pr = prio_at(b, i);
        if (pr < min_prio)
            continue;
        uint64_t v = flexai_ctl_key_of(s, share_at(b, i)), w = LD(s->want_ns);
        if (best < 0 || pr > bp || (pr == bp && (v < bv || (v == bv && w < bw)))) {
            best = i;
            bp = pr;
            bv = v;
            bw = w;
        }
    }
    return best;
}

int flexai_ctl_pick(const struct flexai_board *b, uint64_t now)
{
    return pick_from(b, now, 0);
}

/* How long this slice waits past holder i's booked work (return_grace): the turn is owed to
 * it when i is of its priority and its key is a quantum below i's. */
static uint64_t grace_of(const struct flexai_board *b, int i, uint32_t prio)
{
    const struct flexai_board_slot *h = b->slot[i];
    int owed = prio_at(b, i) == prio &&
               flexai_ctl_key_of(b->own, share_at(b, b->self)) + FLEXAI_CTL_QUANTUM_NS <
                   flexai_ctl_key_of(h, share_at(b, i));
    return return_grace(h, owed);
}

/* What the others of priority `prio` or above are doing, in one pass. */
struct others {
    int waiting;         /* another slice waits */
    int higher_holder;   /* a slice of higher priority holds the turn */
    int same_holder;     /* another slice of the same priority holds the turn */
    uint64_t same_hold_ns; /* the latest take among those */
    int same_index;      /* its roster index */
    int holder;          /* a live holder to wait for: a higher one, else the latest same; -1 */
};

static struct others look(const struct flexai_board *b, uint32_t prio, uint64_t now)
{
    struct others o = {0, 0, 0, 0, -1, -1};
    for (int i = 0; i < FLEXAI_BOARD_SLOTS; i++) {
        const struct flexai_board_slot *s = i == b->self ? NULL : flexai_board_slot_of(b, i);
        if (!s)
            continue;
        uint32_t pr = prio_at(b, i);
        if (pr < prio)
            continue; /* a lower priority never holds this slice back */
        if (waiter_live(s, now))
            o.waiting = 1;
        if (!holder_live(s, now, grace_of(b, i, prio)))
            continue;
        if (pr > prio) {
            o.higher_holder = 1;
            o.holder = i;
        } else {
            uint64_t at = LD(s->hold_ns);
            if (!o.same_holder || at > o.same_hold_ns) {
                o.same_hold_ns = at;
                o.same_index = i;
                if (!o.higher_holder)
                    o.holder = i;
            }
            o.same_holder = 1;
        }
    }
    return o;
}

int flexai_ctl_may_queue(const struct flexai_ctl_proc *p, uint64_t cap_ns)
{
    if (p->inflight_launches == 0)
        return 1;
    if (flexai_ctl_inflight_ns(p) >= cap_ns)
        return 0;
    /* a kernel's length is known only once it ran: until a few dozen have, the estimate may be
     * that of the short ones, and a burst of long ones queued on it became a debt against the
     * slices starting beside it */
    return cap_ns == FLEXAI_CTL_NO_CAP || p->measured >= FLEXAI_CTL_LEARN_LAUNCHES || p->inflight_launches < 2;
}

uint64_t flexai_ctl_inflight_ns(const struct flexai_ctl_proc *p)
{
    /* before the first measurement a launch may be long: count each as a whole cap, so a
     * capped thread keeps one unmeasured launch queued */
    uint64_t per = p->est_high_ns > p->est_launch_ns ? p->est_high_ns : p->est_launch_ns;
    return p->inflight_launches * (per ? per : FLEXAI_CTL_INFLIGHT_NS);
}

uint64_t flexai_ctl_hard_wait(struct flexai_compute *c, const struct flexai_share *sh, uint64_t pending_ns,
                              uint64_t now)
{
    uint32_t share = clamp_share(LDR(sh->limit_percent));
    uint64_t period = LDR(c->period_ns) ? LDR(c->period_ns) : FLEXAI_CTL_PERIOD_NS;
    int64_t burst = (int64_t)(period * share / 100);
    uint64_t last = LD(c->last_update_ns);
    if (last == 0 || now < last) {
        if (last == 0)
            __atomic_compare_exchange_n(&c->last_update_ns, &last, now, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE);
    } else if (now > last &&
               __atomic_compare_exchange_n(&c->last_update_ns, &last, now, 0, __ATOMIC_ACQ_REL,
                                           __ATOMIC_ACQUIRE)) {
        /* this caller won the refill of (last, now] */
        int64_t add = (int64_t)((now - last) * share / 100);
        int64_t t = ADD(c->tokens_ns, add);
        while (t > burst &&
               !__atomic_compare_exchange_n(&c->tokens_ns, &t, burst, 0, __ATOMIC_ACQ_REL,
                                            __ATOMIC_ACQUIRE))
            ;
    }
    int64_t avail = LD(c->tokens_ns) - (int64_t)pending_ns;
    if (avail >= 0)
        return 0;
    return (uint64_t)(-avail) * 100 / share + 1;
}

/* The in-flight cap: a slice of higher priority than `prio` seen on the board lately, one
 * launch; one of the same priority, FLEXAI_CTL_INFLIGHT_NS; alone (for a while), none beyond
 * the driver's own queue. Lower priorities do not count: they run only when this slice does
 * not, so its queue never delays them, and what they write cannot cap it. */
static uint64_t inflight_cap(struct flexai_board *b, struct flexai_ctl_proc *p, uint32_t prio,
                             uint64_t now)
{
    if (p->cap_checked_ns && now >= p->cap_checked_ns && now - p->cap_checked_ns < 1000000)
        return p->cap_ns;
    /* a slice that has just started is capped until it knows it is alone, so a burst queued
     * in its first moments cannot become a debt against slices starting with it */
    uint64_t cap = FLEXAI_CTL_NO_CAP;
    int others = 0;
    for (int i = 0; i < FLEXAI_BOARD_SLOTS; i++) {
        const struct flexai_board_slot *s = i == b->self ? NULL : flexai_board_slot_of(b, i);
        if (!s || !seen_within(LD(s->heartbeat_ns), now, FLEXAI_CTL_PRIO_LIVE_NS))
            continue;
        uint32_t pr = prio_at(b, i);
        if (pr < prio)
            continue;
        others = 1;
        if (pr > prio)
            cap = 0;
        else if (cap > FLEXAI_CTL_INFLIGHT_NS)
            cap = FLEXAI_CTL_INFLIGHT_NS;
    }
    if (others)
        p->alone_since_ns = 0;
    else if (p->alone_since_ns == 0 || now < p->alone_since_ns)
        p->alone_since_ns = now ? now : 1;
    if (!others && now - p->alone_since_ns < FLEXAI_CTL_ALONE_NS)
        cap = FLEXAI_CTL_INFLIGHT_NS;
    p->cap_checked_ns = now;
    p->cap_ns = cap;
    return cap;
}

/* Marks the slice as waiting for the turn. `from_idle`: it comes back after not competing,
 * so its virtual time catches up (a holder that yields or releases keeps its own). */
static void want(struct flexai_board *b, uint32_t prio, uint64_t now, int from_idle)
{
    struct flexai_board_slot *s = b->own;
    if (LD(s->want_ns) != 0)
        return;
    /* the slice is idle only when none of its processes holds the turn or has work queued */
    if (from_idle && LD(s->hold) == 0 && now >= LD(s->busy_until_ns) + FLEXAI_CTL_STEAL_NS) {
        /* back from idle: catch up with the virtual time of the slices of its priority that
         * compete now; a slice that slept keeps at most one quantum of credit (as CFS does for
         * sleepers), so a light interactive slice gets the next turn but cannot bank idle time */
        uint64_t minv = class_min_vtime(b, prio, now, 1);
        if (minv != UINT64_MAX) {
            minv = minv > FLEXAI_CTL_QUANTUM_NS ? minv - FLEXAI_CTL_QUANTUM_NS : 0;
            if (minv > LD(s->vtime))
                ST(s->vtime, minv);
        }
    }
    ST(s->want_ns, now ? now : 1);
}

static void unwant(struct flexai_board *b)
{
    if (LDR(b->own->want_ns))
        ST(b->own->want_ns, 0);
}

static struct flexai_ctl_decision decide(int action, uint64_t wait_ns, uint64_t cap)
{
    struct flexai_ctl_decision d = {action, wait_ns, cap, NULL, 0, 0};
    return d;
}

/* The holder of `h` said the work it queued is the last of its turn (set since its take). */
static int handing(const struct flexai_board_slot *h)
{
    uint64_t at = LD(h->handing_ns);
    return at != 0 && at >= LD(h->hold_ns);
}

/* Waiting for live holder `h` (`grace`: how long it is waited for past its booked work): sleep
 * on its `hold` word until it gives the turn back, and at the latest until it would count as
 * gone (its beat and booked work over), so a holder that went idle is noticed as before. A
 * poll per FLEXAI_CTL_POLL_NS would cost a waiting thread's CPU 20 000 wake-ups a second; on
 * a host with few cores the waiters of a slice with many threads then delay the holder's own
 * return from its synchronise, an idle gap on the card (issue 16).
 *
 * `best`: this slice is the best waiter, so it takes the turn when h gives it up; `due`: h
 * gives it up when its booked work is over (it owes this slice the turn, or it rotates among
 * the slice's own processes). The card idles from the end of h's work until the next holder
 * launches, and a thread woken by h's release runs 10-150 us later on a small VM. So the best
 * waiter sleeps only until shortly before h's work ends (looking again then), and when the
 * turn is due it stays awake from FLEXAI_CTL_SPIN_EARLY_NS before the end until the change,
 * yielding the CPU (bounded: until FLEXAI_CTL_SPIN_LATE_NS past the end and h's usual return). */
static struct flexai_ctl_decision wait_for(struct flexai_ctl_proc *p, const struct flexai_board_slot *own,
                                           const struct flexai_board_slot *h, uint64_t grace, int best,
                                           int due, uint64_t now)
{
    /* the spin budget: a spin is in vain unless the slice took a turn since (counted in its own
     * slot, which no other slice writes: a holder rewriting its token cannot reset it) */
    uint64_t turns = LD(own->handovers);
    if (turns != p->turns_seen)
        p->spins_unused = 0;
    else if (p->spun)
        p->spins_unused++;
    p->spun = 0;
    p->turns_seen = turns;
    uint64_t v = LD(h->hold);
    if (v == 0) /* given back already: look again at once */
        return decide(FLEXAI_CTL_WAIT, FLEXAI_CTL_POLL_NS / 5, 0);
    uint64_t beat = LD(h->beat_ns), until = LD(h->busy_until_ns);
    uint64_t gone = beat + FLEXAI_CTL_STEAL_NS + 1;
    if (until && until + grace >= gone)
        gone = until + grace + 1;
    uint64_t wait = gone > now ? gone - now : 0;
    if (wait < FLEXAI_CTL_POLL_NS)
        wait = FLEXAI_CTL_POLL_NS;
    struct flexai_ctl_decision d = {FLEXAI_CTL_WAIT, wait, 0, &h->hold, v, 0};
    if (best && until) {
        uint64_t late = until + (grace < FLEXAI_CTL_RETURN_MAX_NS ? grace : FLEXAI_CTL_RETURN_MAX_NS) +
                        FLEXAI_CTL_SPIN_LATE_NS;
        if (until > now + FLEXAI_CTL_SPIN_EARLY_NS) {
            if (until - FLEXAI_CTL_SPIN_EARLY_NS - now < d.wait_ns)
                d.wait_ns = until - FLEXAI_CTL_SPIN_EARLY_NS - now; /* look again before its end */
        } else if (due && now < late && p->spins_unused < FLEXAI_CTL_SPINS_UNUSED) {
            d.spin = 1;
            d.wait_ns = late - now;
            p->spun = 1;
        } else if (now < until + FLEXAI_CTL_SPIN_LATE_NS) {
            d.wait_ns = until + FLEXAI_CTL_SPIN_LATE_NS - now; /* look again when it launched next */
        }
    }
    if (d.wait_ns > FLEXAI_CTL_WATCH_MAX_NS)
        d.wait_ns = FLEXAI_CTL_WATCH_MAX_NS;
    return d;
}

/* Device time of one more launch of this process, as its queued work is counted; 0: unknown. */
static uint64_t one_launch_ns(const struct flexai_ctl_proc *p)
{
    return p->est_high_ns > p->est_launch_ns ? p->est_high_ns : p->est_launch_ns;
}

/* The holder says whether the launch it is let through is the last of its turn (it will give
 * the turn up at its next gate call, once the launch is over): the slice next in turn then
 * stays awake for the handover (handing). */
static void last_of_turn(struct flexai_board_slot *s, int last, uint64_t now)
{
    uint64_t at = LDR(s->handing_ns), held = LDR(s->hold_ns);
    if (last && at < held)
        ST(s->handing_ns, now ? now : 1);
    else if (!last && at >= held && at != 0)
        ST(s->handing_ns, 0);
}

/* The holder must give the turn up but still has work: it drains, and meanwhile counts as
 * waiting, so its sibling processes do not take the gap for an idle card. */
static struct flexai_ctl_decision yield(struct flexai_board *b, uint32_t prio, uint64_t now)
{
    want(b, prio, now, 0);
    last_of_turn(b->own, 1, now);
    return decide(FLEXAI_CTL_DRAIN, 0, 0);
}

/* Takes the turn for this process, by the filter over single-writer words (controller.h):
 * 1 taken, 0 not now. */
static int take(struct flexai_board *b, struct flexai_ctl_proc *p, uint32_t prio, uint64_t now)
{
    struct flexai_board_slot *s = b->own;
    ST(s->intent_ns, now ? now : 1);
    __atomic_thread_fence(__ATOMIC_SEQ_CST); /* our intent is visible before we read theirs */
    int pending = 0;
    for (int i = 0; i < FLEXAI_BOARD_SLOTS; i++) {
        const struct flexai_board_slot *o = i == b->self ? NULL : flexai_board_slot_of(b, i);
        if (!o)
            continue;
        uint32_t pr = prio_at(b, i);
        if (pr < prio)
            continue;
        uint64_t in = LD(o->intent_ns);
        int announcing = in != 0 && seen_within(in, now, FLEXAI_CTL_INTENT_LIVE_NS);
        if (holder_live(o, now, grace_of(b, i, prio)) || (announcing && (pr > prio || i < b->self))) {
            ST(s->intent_ns, 0);
            return 0;
        }
        if (announcing)
            pending = 1; /* it will see us and withdraw, or it saw nothing and holds */
    }
    if (pending)
        return 0; /* keep announcing: the next call decides */
    uint64_t token = (ADD(s->seq, 1) << 8) | (uint64_t)(b->self + 1);
    uint64_t none = 0;
    ST(s->hold_ns, now);
    ST(s->beat_ns, now);
    if (!__atomic_compare_exchange_n(&s->hold, &none, token, 0, __ATOMIC_SEQ_CST, __ATOMIC_ACQUIRE)) {
        ST(s->intent_ns, 0); /* another process of the slice took it */
        return 0;
    }
    ST(s->intent_ns, 0);
    p->held_turn = token;
    ST(s->turn_busy0, LD(s->busy_ns));
    ADD(s->handovers, 1);
    return 1;
}

struct flexai_ctl_decision flexai_ctl_gate(struct flexai_board *b, struct flexai_compute *c,
                                           const struct flexai_share *sh,
                                           struct flexai_ctl_proc *p, uint64_t now)
{
    if (p->slot < 0 || !b->own || b->self != p->slot)
        return decide(FLEXAI_CTL_GO, 0, FLEXAI_CTL_INFLIGHT_NS);
    struct flexai_board_slot *s = b->own;
    uint64_t gen = LD(sh->generation);
    if (gen != p->last_generation) {
        /* the daemon changed share, mode, priority or pause; outside containers the library
         * publishes share and priority itself (in containers flexaid's roster has them) */
        if (b->keeps_roster) {
            struct flexai_roster_entry *e = &b->roster->entry[b->self];
            ST(e->share, clamp_share(LDR(sh->limit_percent)));
            ST(e->priority, LDR(sh->priority));
            ADD(b->roster->generation, 2);
        }
        p->last_generation = gen;
        p->cap_checked_ns = 0;
    }
    /* others read this slice's priority from the roster: so does it */
    uint32_t prio = prio_at(b, b->self);
    if (now - p->heartbeat_ns > 100000 || now < p->heartbeat_ns) {
        ST(s->heartbeat_ns, now);
        p->heartbeat_ns = now;
    }
    uint64_t until = LD(s->busy_until_ns);
    if (until && now > until && until != p->return_seen) {
        /* the slice's work was over and it asks again: learn how soon it comes back (the time
         * it then waits for the turn is not part of it) */
        uint64_t gap = now - until, r = LDR(s->return_ns);
        if (gap > FLEXAI_CTL_DEAD_NS)
            gap = FLEXAI_CTL_DEAD_NS;
        ST(s->return_ns, r ? (r * 3 + gap) / 4 : gap);
        p->return_seen = until;
    }
    uint64_t hold = LD(s->hold);
    int mine = p->held_turn != 0 && hold == p->held_turn; /* this very process holds it */
    if (!mine)
        p->held_turn = 0;
    if (!mine && hold && !holder_live(s, now, return_grace(s, 1)))
        /* a process of this slice took the turn and went idle or died holding it */
        __atomic_compare_exchange_n(&s->hold, &hold, 0, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    int sibling = !mine && hold != 0; /* another process of the slice */
    if (mine && (now - LDR(s->beat_ns) > 100000 || now < LDR(s->beat_ns)))
        ST(s->beat_ns, now);
    struct others o = look(b, prio, now);

    if (LDR(sh->paused)) {
        unwant(b);
        if (mine)
            return decide(FLEXAI_CTL_DRAIN, 0, 0);
        return decide(FLEXAI_CTL_WAIT, 1000000, 0);
    }
    if (LDR(sh->mode) == FLEXAI_MODE_HARD) {
        uint64_t w = flexai_ctl_hard_wait(c, sh, flexai_ctl_inflight_ns(p), now);
        if (w) {
            uint64_t wait = w < FLEXAI_CTL_PERIOD_NS ? w : FLEXAI_CTL_PERIOD_NS;
            if (mine && (p->inflight_launches || o.waiting))
                return decide(FLEXAI_CTL_DRAIN, 0, 0);
            if (!mine)
                unwant(b);
            return decide(FLEXAI_CTL_WAIT, wait, 0);
        }
    }
    if (sibling && !o.waiting && !o.higher_holder && !o.same_holder)
        /* no other slice competes: the slice's processes share its turn */
        return decide(FLEXAI_CTL_GO, 0, inflight_cap(b, p, prio, now));
    if (mine) {
        if (o.higher_holder)
            return yield(b, prio, now); /* a higher priority took the card: drain */
        if (o.same_holder && (o.same_hold_ns > LD(s->hold_ns) ||
                              (o.same_hold_ns == LD(s->hold_ns) && o.same_index < b->self)))
            return yield(b, prio, now); /* taken since this holder last showed itself */
        if (!o.waiting && LDR(s->want_ns) == 0)
            return decide(FLEXAI_CTL_GO, 0, inflight_cap(b, p, prio, now));
        int best = pick_from(b, now, prio);
        uint64_t next = one_launch_ns(p); /* the launch about to go */
        if (best < 0 || best == b->self) {
            /* another process of this slice waits: take turns with it, a quantum each */
            uint64_t used = LD(s->busy_ns) - LD(s->turn_busy0);
            if (best == b->self && used >= FLEXAI_CTL_QUANTUM_NS) {
                p->rotated_ns = now ? now : 1;
                return yield(b, prio, now);
            }
            last_of_turn(s, best == b->self && next &&
                                used + flexai_ctl_inflight_ns(p) + next >= FLEXAI_CTL_QUANTUM_NS, now);
            return decide(FLEXAI_CTL_GO, 0, inflight_cap(b, p, prio, now));
        }
        if (prio_at(b, best) > prio)
            return yield(b, prio, now);
        /* weighted fair queueing: keep the turn until this slice's key (its queued work
         * included) passes the best waiter's by a quantum */
        uint32_t share = clamp_share(LDR(sh->limit_percent));
        uint64_t k = flexai_ctl_key_of(s, share) + flexai_ctl_inflight_ns(p) * 100 / share;
        uint64_t kb = flexai_ctl_key_of(b->slot[best], share_at(b, best)) + FLEXAI_CTL_QUANTUM_NS;
        if (k > kb)
            return yield(b, prio, now);
        last_of_turn(s, next && k + next * 100 / share > kb, now);
        return decide(FLEXAI_CTL_GO, 0, inflight_cap(b, p, prio, now));
    }

    /* Not the holder: wait for the turn. */
    want(b, prio, now, 1);
    if (o.holder >= 0) {
        /* the turn is due to this slice when the holder's key, its booked work counted,
         * passed its own by a quantum: the test the holder makes before each launch, so it
         * drains and gives the turn up when that work is over */
        const struct flexai_board_slot *h = b->slot[o.holder];
        int best = !o.higher_holder && pick_from(b, now, prio) == b->self;
        uint64_t grace = grace_of(b, o.holder, prio), until = LD(h->busy_until_ns);
        uint32_t hs = share_at(b, o.holder);
        uint64_t hk = flexai_ctl_key_of(h, hs) + (until > now ? (until - now) * 100 / hs : 0);
        int due = best && (handing(h) || flexai_ctl_key_of(s, share_at(b, b->self)) + FLEXAI_CTL_QUANTUM_NS < hk);
        return wait_for(p, s, h, grace, best, due, now);
    }
    if (sibling) {
        /* the holder of this slice rotates to another of its processes once the slice, the
         * best waiter, has had a quantum of its turn (its queued work counted) */
        int best = pick_from(b, now, prio) == b->self;
        uint64_t until = LD(s->busy_until_ns), used = LD(s->busy_ns) - LD(s->turn_busy0);
        int due = best && (handing(s) || used + (until > now ? until - now : 0) >= FLEXAI_CTL_QUANTUM_NS);
        return wait_for(p, s, s, return_grace(s, 1), best, due, now);
    }
    if (p->rotated_ns && now >= p->rotated_ns && now - p->rotated_ns < FLEXAI_CTL_ROTATE_NS)
        /* it gave the turn up for a process of its slice that waits (asleep on the word it
         * just cleared, woken now): taking it back at once would starve that one */
        return decide(FLEXAI_CTL_WAIT, FLEXAI_CTL_POLL_NS / 5, 0);
    p->rotated_ns = 0;
    int best = pick_from(b, now, prio);
    if (best >= 0 && best != b->self)
        return decide(FLEXAI_CTL_WAIT, FLEXAI_CTL_POLL_NS, 0);
    if (!take(b, p, prio, now))
        return decide(FLEXAI_CTL_WAIT, FLEXAI_CTL_POLL_NS / 5, 0);
    unwant(b);
    return decide(FLEXAI_CTL_GO, 0, inflight_cap(b, p, prio, now));
}

void flexai_ctl_launched(struct flexai_board *b, struct flexai_ctl_proc *p, uint64_t launches,
                         uint64_t until_ns, uint64_t now)
{
    p->inflight_launches += launches;
    if (p->slot < 0 || !b->own)
        return;
    struct flexai_board_slot *s = b->own;
    if (LDR(s->busy_until_ns) < until_ns)
        ST(s->busy_until_ns, until_ns);
    if (now - p->heartbeat_ns > 100000 || now < p->heartbeat_ns) {
        ST(s->heartbeat_ns, now);
        p->heartbeat_ns = now;
    }
    if (p->held_turn && LDR(s->hold) == p->held_turn &&
        (now - LDR(s->beat_ns) > 100000 || now < LDR(s->beat_ns)))
        ST(s->beat_ns, now);
    if (launches)
        __atomic_add_fetch(&s->launches, launches, __ATOMIC_RELAXED);
}

void flexai_ctl_charge(struct flexai_board *b, struct flexai_compute *c, const struct flexai_share *sh,
                       struct flexai_ctl_proc *p,
                       uint64_t busy_ns, uint64_t launches, uint64_t now)
{
    p->inflight_launches = p->inflight_launches > launches ? p->inflight_launches - launches : 0;
    if (launches) {
        uint64_t per = busy_ns / launches;
        p->measured += launches;
        p->est_launch_ns = p->est_launch_ns ? (p->est_launch_ns * 3 + per) / 4 : per;
        if (p->est_launch_ns == 0)
            p->est_launch_ns = 1;
        p->est_high_ns -= p->est_high_ns / 8;
        if (per > p->est_high_ns)
            p->est_high_ns = per;
    }
    uint32_t share = clamp_share(LDR(sh->limit_percent));
    if (p->slot >= 0 && b->own) {
        struct flexai_board_slot *s = b->own;
        ADD(s->vtime, busy_ns * 100 / share);
        ADD(s->busy_ns, busy_ns);
        if (launches) {
            /* a turn lasts a quantum of device time, or one launch when launches are longer */
            uint64_t turn = p->est_launch_ns > FLEXAI_CTL_QUANTUM_NS ? p->est_launch_ns : FLEXAI_CTL_QUANTUM_NS;
            ST(s->turn_cost, turn * 100 / share);
        }
    }
    ADD(c->busy_ns_total, busy_ns);
    __atomic_sub_fetch(&c->tokens_ns, (int64_t)busy_ns, __ATOMIC_ACQ_REL);
    /* measured-share window: reserved[0] busy ns and reserved[1] length of the last full one */
    uint64_t start = LD(c->window_start_ns);
    if (start == 0 || now < start) {
        if (start == 0)
            __atomic_compare_exchange_n(&c->window_start_ns, &start, now, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE);
    } else if (now - start >= FLEXAI_CTL_WINDOW_NS &&
               __atomic_compare_exchange_n(&c->window_start_ns, &start, now, 0,
                                           __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        uint64_t used = __atomic_exchange_n(&c->window_busy_ns, 0, __ATOMIC_ACQ_REL);
        ST(c->reserved[1], now - start);
        ST(c->reserved[0], used);
    }
    ADD(c->window_busy_ns, busy_ns);
}

void flexai_ctl_release(struct flexai_board *b, struct flexai_ctl_proc *p, uint64_t now)
{
    if (p->slot < 0 || !b->own)
        return;
    uint64_t t = p->held_turn;
    if (t)
        __atomic_compare_exchange_n(&b->own->hold, &t, 0, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    p->held_turn = 0;
    ST(b->own->busy_until_ns, now);
    want(b, prio_at(b, b->self), now, 0); /* it still has work: it competes for the next turn */
}

int flexai_ctl_measured_permille(const struct flexai_compute *c)
{
    uint64_t len = LD(c->reserved[1]);
    if (len == 0)
        return -1;
    return (int)(LD(c->reserved[0]) * 1000 / len);
}
