/* The compute controller: pure functions over the card board, a slice's compute block and
 * one process's private state. See controller.h and docs/compute.md. No clock reads, no I/O,
 * no locks: every shared field is an __atomic access, `turn` changes only by CAS. */
#include "controller.h"

#include <stddef.h>

#define LD(x) __atomic_load_n(&(x), __ATOMIC_ACQUIRE)
#define LDR(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)
#define ST(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELEASE)
#define ADD(x, v) __atomic_add_fetch(&(x), (v), __ATOMIC_ACQ_REL)

_Static_assert(sizeof(struct flexai_board_slot) == 128, "board slot is 128 bytes");
_Static_assert(offsetof(struct flexai_board, slot) == 4096, "board header is 4 KiB");

/* turn = seq << 8 | (slot + 1): seq grows with every take, so the word also names the one
 * process (thread) that took it: p->held_turn == turn */
#define TURN_SLOT(t) ((int)((t) & 0xff) - 1)
#define TURN_SEQ(t) ((t) >> 8)
#define TURN_MAKE(seq, slot) (((seq) << 8) | (uint64_t)((slot) + 1))

uint64_t flexai_ctl_key(const char *slice_id)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (const unsigned char *s = (const unsigned char *)slice_id; s && *s; s++) {
        h ^= *s;
        h *= 1099511628211ULL;
    }
    return h ? h : 1;
}

void flexai_board_init(struct flexai_board *b)
{
    b->version = FLEXAI_BOARD_VERSION;
    b->size = (uint32_t)sizeof *b;
    ST(b->turn, 0);
    ST(b->waiting, 0);
    ST(b->magic, FLEXAI_BOARD_MAGIC);
}

static uint32_t clamp_share(uint32_t s)
{
    return s < 1 ? 1 : s > 100 ? 100 : s;
}

int flexai_board_join(struct flexai_board *b, uint64_t key, uint32_t share, uint32_t priority,
                      uint64_t now)
{
    int found = -1;
    for (int i = 0; i < FLEXAI_BOARD_SLOTS && found < 0; i++)
        if (LD(b->slot[i].key) == key)
            found = i;
    for (int i = 0; i < FLEXAI_BOARD_SLOTS && found < 0; i++) {
        struct flexai_board_slot *s = &b->slot[i];
        uint64_t k = LD(s->key);
        uint64_t hb = LD(s->heartbeat_ns);
        if (k != 0 && !(now > hb && now - hb > FLEXAI_CTL_DEAD_NS))
            continue;
        /* free, or left by a slice not seen for FLEXAI_CTL_DEAD_NS */
        if (!__atomic_compare_exchange_n(&s->key, &k, key, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            continue;
        ST(s->want_ns, 0);
        __atomic_and_fetch(&b->waiting, ~(1ULL << i), __ATOMIC_ACQ_REL);
        ST(s->busy_until_ns, 0);
        ST(s->turn_cost, 0);
        /* a newcomer starts level with the others, not with a huge credit */
        uint64_t minv = UINT64_MAX;
        for (int j = 0; j < FLEXAI_BOARD_SLOTS; j++) {
            struct flexai_board_slot *o = &b->slot[j];
            if (j != i && LD(o->key) != 0 && now - LD(o->heartbeat_ns) < FLEXAI_CTL_DEAD_NS &&
                LD(o->vtime) < minv)
                minv = LD(o->vtime);
        }
        ST(s->vtime, minv == UINT64_MAX ? 0 : minv);
        found = i;
    }
    if (found >= 0) {
        struct flexai_board_slot *s = &b->slot[found];
        ST(s->share, clamp_share(share));
        ST(s->priority, priority);
        ST(s->heartbeat_ns, now);
    }
    return found;
}

void flexai_board_leave(struct flexai_board *b, int slot)
{
    if (slot < 0 || slot >= FLEXAI_BOARD_SLOTS)
        return;
    uint64_t t = LD(b->turn);
    if (TURN_SLOT(t) == slot)
        __atomic_compare_exchange_n(&b->turn, &t, TURN_MAKE(TURN_SEQ(t), -1), 0,
                                    __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    __atomic_and_fetch(&b->waiting, ~(1ULL << slot), __ATOMIC_ACQ_REL);
    ST(b->slot[slot].want_ns, 0);
    ST(b->slot[slot].key, 0);
}

static int waiter_live(const struct flexai_board *b, int i, uint64_t now)
{
    const struct flexai_board_slot *s = &b->slot[i];
    uint64_t hb = LD(s->heartbeat_ns);
    return LD(s->key) != 0 && LD(s->want_ns) != 0 && (hb >= now || now - hb < FLEXAI_CTL_WAITER_LIVE_NS);
}

uint64_t flexai_ctl_key_of(const struct flexai_board_slot *s)
{
    uint64_t cost = LD(s->turn_cost);
    if (cost == 0) /* nothing measured yet: a turn is at least a quantum of device time */
        cost = FLEXAI_CTL_QUANTUM_NS * 100 / clamp_share(LD(s->share));
    return LD(s->vtime) + cost / 2;
}

int flexai_ctl_pick(const struct flexai_board *b, uint64_t now)
{
    uint64_t mask = LD(b->waiting);
    int best = -1;
    uint32_t bp = 0;
    uint64_t bv = 0, bw = 0;
    for (int i = 0; mask && i < FLEXAI_BOARD_SLOTS; i++) {
        if (!(mask & (1ULL << i)))
            continue;
        mask &= ~(1ULL << i);
        if (!waiter_live(b, i, now))
            continue;
        const struct flexai_board_slot *s = &b->slot[i];
        uint32_t pr = LD(s->priority);
        uint64_t v = flexai_ctl_key_of(s), w = LD(s->want_ns);
        if (best < 0 || pr > bp || (pr == bp && (v < bv || (v == bv && w < bw)))) {
            best = i;
            bp = pr;
            bv = v;
            bw = w;
        }
    }
    return best;
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

/* A slice of higher priority than `prio` seen on the board lately: keep one launch queued. */
static uint64_t inflight_cap(struct flexai_board *b, struct flexai_ctl_proc *p, uint32_t prio,
                             uint64_t now)
{
    if (p->cap_checked_ns && now >= p->cap_checked_ns && now - p->cap_checked_ns < 1000000)
        return p->cap_ns;
    /* alone on the card (no other slice seen lately, for a while): no cap beyond the driver's
     * own queue; a slice that has just started is capped until it knows it is alone, so a
     * burst queued in its first moments cannot become a debt against slices starting with it */
    uint64_t cap = FLEXAI_CTL_NO_CAP;
    int others = 0;
    for (int i = 0; i < FLEXAI_BOARD_SLOTS; i++) {
        struct flexai_board_slot *s = &b->slot[i];
        if (i == p->slot || LD(s->key) == 0)
            continue;
        uint64_t hb = LD(s->heartbeat_ns);
        if (!(hb >= now || now - hb < FLEXAI_CTL_PRIO_LIVE_NS))
            continue;
        others = 1;
        if (LD(s->priority) > prio)
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
static void want(struct flexai_board *b, struct flexai_ctl_proc *p, uint64_t now, int from_idle)
{
    struct flexai_board_slot *s = &b->slot[p->slot];
    /* the slice is idle only when none of its processes holds the turn or has work queued */
    if (from_idle && (TURN_SLOT(LD(b->turn)) == p->slot || now < LD(s->busy_until_ns) + FLEXAI_CTL_STEAL_NS))
        from_idle = 0;
    if (LD(s->want_ns) == 0 && !from_idle) {
        ST(s->want_ns, now ? now : 1);
    } else if (LD(s->want_ns) == 0) {
        /* back from idle: catch up with the virtual time of the slices that compete now */
        uint64_t minv = UINT64_MAX;
        uint64_t t = LD(b->turn);
        for (int i = 0; i < FLEXAI_BOARD_SLOTS; i++) {
            if (i == p->slot)
                continue;
            if (TURN_SLOT(t) == i || waiter_live(b, i, now)) {
                uint64_t v = LD(b->slot[i].vtime);
                if (v < minv)
                    minv = v;
            }
        }
        /* a slice that slept keeps at most one quantum of credit (as CFS does for sleepers),
         * so a light interactive slice gets the next turn but cannot bank idle time */
        uint64_t v = LD(s->vtime);
        if (minv != UINT64_MAX && minv > FLEXAI_CTL_QUANTUM_NS)
            minv -= FLEXAI_CTL_QUANTUM_NS;
        else
            minv = minv == UINT64_MAX ? minv : 0;
        if (minv != UINT64_MAX && minv > v)
            ST(s->vtime, minv);
        ST(s->want_ns, now ? now : 1);
    }
    uint64_t bit = 1ULL << p->slot;
    if (!(LDR(b->waiting) & bit))
        __atomic_or_fetch(&b->waiting, bit, __ATOMIC_ACQ_REL);
}

static void unwant(struct flexai_board *b, struct flexai_ctl_proc *p)
{
    uint64_t bit = 1ULL << p->slot;
    if (LDR(b->waiting) & bit)
        __atomic_and_fetch(&b->waiting, ~bit, __ATOMIC_ACQ_REL);
    if (LDR(b->slot[p->slot].want_ns))
        ST(b->slot[p->slot].want_ns, 0);
}

static struct flexai_ctl_decision decide(int action, uint64_t wait_ns, uint64_t cap)
{
    struct flexai_ctl_decision d = {action, wait_ns, cap};
    return d;
}

/* The holder must give the turn up but still has work: it drains, and meanwhile counts as
 * waiting, so its sibling processes do not take the gap for an idle card. */
static struct flexai_ctl_decision yield(struct flexai_board *b, struct flexai_ctl_proc *p,
                                        uint64_t now)
{
    want(b, p, now, 0);
    return decide(FLEXAI_CTL_DRAIN, 0, 0);
}

struct flexai_ctl_decision flexai_ctl_gate(struct flexai_board *b, struct flexai_compute *c,
                                           const struct flexai_share *sh,
                                           struct flexai_ctl_proc *p, uint64_t now)
{
    if (p->slot < 0)
        return decide(FLEXAI_CTL_GO, 0, FLEXAI_CTL_INFLIGHT_NS);
    struct flexai_board_slot *s = &b->slot[p->slot];
    uint64_t gen = LD(sh->generation);
    uint32_t prio = LDR(sh->priority);
    if (gen != p->last_generation) {
        /* the daemon changed share, mode, priority or pause: publish it to the board */
        ST(s->share, clamp_share(LDR(sh->limit_percent)));
        ST(s->priority, prio);
        p->last_generation = gen;
        p->cap_checked_ns = 0;
    }
    if (now - p->heartbeat_ns > 100000 || now < p->heartbeat_ns) {
        ST(s->heartbeat_ns, now);
        p->heartbeat_ns = now;
    }
    uint64_t turn = LD(b->turn);
    int holder = TURN_SLOT(turn);
    int mine = holder == p->slot && turn == p->held_turn;  /* this very process holds it */
    int sibling = holder == p->slot && !mine;              /* another process of the slice */
    uint64_t mybit = 1ULL << p->slot;
    uint64_t others = LDR(b->waiting) & ~mybit;            /* other slices waiting */
    if (mine && (now - LDR(b->beat_ns) > 100000 || now < LDR(b->beat_ns)))
        ST(b->beat_ns, now);

    if (LDR(sh->paused)) {
        unwant(b, p);
        if (mine)
            return decide(FLEXAI_CTL_DRAIN, 0, 0);
        return decide(FLEXAI_CTL_WAIT, 1000000, 0);
    }
    if (LDR(sh->mode) == FLEXAI_MODE_HARD) {
        uint64_t w = flexai_ctl_hard_wait(c, sh, flexai_ctl_inflight_ns(p), now);
        if (w) {
            uint64_t wait = w < FLEXAI_CTL_PERIOD_NS ? w : FLEXAI_CTL_PERIOD_NS;
            if (mine && (p->inflight_launches || others))
                return decide(FLEXAI_CTL_DRAIN, 0, 0);
            if (!mine)
                unwant(b, p);
            return decide(FLEXAI_CTL_WAIT, wait, 0);
        }
    }
    if (sibling && others == 0)
        /* no other slice competes: the slice's processes share its turn */
        return decide(FLEXAI_CTL_GO, 0, inflight_cap(b, p, prio, now));
    if (mine) {
        if (others == 0 && !(LDR(b->waiting) & mybit))
            return decide(FLEXAI_CTL_GO, 0, inflight_cap(b, p, prio, now));
        int best = flexai_ctl_pick(b, now);
        if (best < 0 || best == p->slot) {
            /* stale bits of waiters that went away */
            for (int i = 0; i < FLEXAI_BOARD_SLOTS; i++)
                if ((others & (1ULL << i)) && !waiter_live(b, i, now))
                    __atomic_and_fetch(&b->waiting, ~(1ULL << i), __ATOMIC_ACQ_REL);
            /* another process of this slice waits: take turns with it, a quantum each */
            if (best == p->slot && LD(s->busy_ns) - LD(s->turn_busy0) >= FLEXAI_CTL_QUANTUM_NS)
                return yield(b, p, now);
            return decide(FLEXAI_CTL_GO, 0, inflight_cap(b, p, prio, now));
        }
        uint32_t bp = LD(b->slot[best].priority);
        if (bp > prio)
            return yield(b, p, now);
        if (bp == prio) {
            /* weighted fair queueing: keep the turn until this slice's key (its queued work
             * included) passes the best waiter's by a quantum */
            uint32_t share = clamp_share(LDR(sh->limit_percent));
            uint64_t mine = flexai_ctl_key_of(s) + flexai_ctl_inflight_ns(p) * 100 / share;
            if (mine > flexai_ctl_key_of(&b->slot[best]) + FLEXAI_CTL_QUANTUM_NS)
                return yield(b, p, now);
        }
        return decide(FLEXAI_CTL_GO, 0, inflight_cap(b, p, prio, now));
    }

    /* Not the holder: wait for the turn. */
    p->held_turn = 0;
    want(b, p, now, 1);
    int free = holder < 0;
    if (!free) {
        struct flexai_board_slot *h = &b->slot[holder];
        uint64_t beat = LD(b->beat_ns), until = LD(h->busy_until_ns);
        if (LD(h->key) == 0 || (now > beat && now - beat > FLEXAI_CTL_STEAL_NS && now >= until))
            free = 1; /* the holder left, died or went idle */
    }
    if (free) {
        int best = flexai_ctl_pick(b, now);
        if (best < 0 || best == p->slot) {
            uint64_t next = TURN_MAKE(TURN_SEQ(turn) + 1, p->slot);
            if (__atomic_compare_exchange_n(&b->turn, &turn, next, 0, __ATOMIC_ACQ_REL,
                                            __ATOMIC_ACQUIRE)) {
                p->held_turn = next;
                ST(b->beat_ns, now);
                unwant(b, p);
                ST(s->turn_busy0, LD(s->busy_ns));
                ADD(b->handovers, 1);
                return decide(FLEXAI_CTL_GO, 0, inflight_cap(b, p, prio, now));
            }
        }
    }
    return decide(FLEXAI_CTL_WAIT, FLEXAI_CTL_POLL_NS, 0);
}

void flexai_ctl_launched(struct flexai_board *b, struct flexai_ctl_proc *p, uint64_t launches,
                         uint64_t until_ns, uint64_t now)
{
    p->inflight_launches += launches;
    if (p->slot < 0)
        return;
    struct flexai_board_slot *s = &b->slot[p->slot];
    if (LDR(s->busy_until_ns) < until_ns)
        ST(s->busy_until_ns, until_ns);
    if (now - p->heartbeat_ns > 100000 || now < p->heartbeat_ns) {
        ST(s->heartbeat_ns, now);
        p->heartbeat_ns = now;
    }
    if (p->held_turn && LDR(b->turn) == p->held_turn &&
        (now - LDR(b->beat_ns) > 100000 || now < LDR(b->beat_ns)))
        ST(b->beat_ns, now);
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
    if (p->slot >= 0) {
        struct flexai_board_slot *s = &b->slot[p->slot];
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
    if (p->slot < 0)
        return;
    uint64_t t = p->held_turn;
    if (t && TURN_SLOT(t) == p->slot)
        __atomic_compare_exchange_n(&b->turn, &t, TURN_MAKE(TURN_SEQ(t), -1), 0,
                                    __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    p->held_turn = 0;
    ST(b->slot[p->slot].busy_until_ns, now);
    want(b, p, now, 0); /* it still has work: it competes for the next turn */
}

int flexai_ctl_measured_permille(const struct flexai_compute *c)
{
    uint64_t len = LD(c->reserved[1]);
    if (len == 0)
        return -1;
    return (int)(LD(c->reserved[0]) * 1000 / len);
}
