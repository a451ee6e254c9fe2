/* Unit harness for libflexai/core/controller.c: slices on one simulated serial card, in simulated
 * time (a discrete-event loop, so results do not depend on the speed of the test machine).
 *
 * The card runs kernels one after another in the order they were booked (FIFO across every
 * slice, as the simulated driver's shared timeline does). Each slice is one process with one
 * stream; an event recorded before a launch completes at max(launch time, the stream's tail),
 * so the measured elapsed time includes whatever other slices queued in between -- exactly the
 * bias the controller's turn has to remove. Each slice feeds that measurement to
 * flexai_ctl_charge() when it observes the completion, asks flexai_ctl_gate() before every
 * launch, and obeys.
 *
 * usage: controller_test [--duration MS] [--window A:B] [--change MS:SLICE:SHARE] [--no-controller]
 *                        [--wake-us US (how soon a waiter sleeping on a holder's word runs once
 *                        the turn is given back; default 10)]
 *                        [--pause MS:SLICE] [--resume MS:SLICE] SLICE...
 *   SLICE: comma-separated key=value: share=30 prio=low|normal|high mode=wc|hard
 *          k=50+1000 (kernel lengths in us, cycled) start=MS stop=MS
 *          closed=1 (one kernel at a time, latency measured) think=US host=NS (host cost/launch)
 *          burst=N (closed loop: N kernels, then wait for the last) switch=MS (from then on
 *          closed loop <-> saturating) slow=N:US (every Nth synchronize returns US late)
 *          forge=vtime|hold|hide|handing (a tenant rewriting its own slot before every gate: virtual
 *          time 0; a turn held forever with fresh beats and booked work; its key cleared)
 * Prints one JSON object: per slice its share of the busy card time and of wall time in the
 * window, launches, latency (closed loop), time spent waiting awake for a handover (spin_ms)
 * and WAIT decisions (waits) over the whole run; card utilisation; convergence time.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "controller.h"

#define MAXS 8
#define MS 1000000ULL
#define US 1000ULL
#define BUCKET (10 * MS)
#define MAXB 4096
#define RING 65536
#define QUEUE_AHEAD (50 * MS)

struct inflight {
    uint64_t end, measured;
};

struct slice {
    uint32_t share, prio, mode;
    uint64_t k[32];
    int nk, ki;
    uint64_t start, stop, think, host;
    int closed;
    int burst, in_burst;        /* closed loop: kernels launched before each wait (1) */
    int slow_every;             /* every Nth synchronize returns slow_ns late (a descheduled thread) */
    uint64_t slow_ns, syncs;
    uint64_t switch_at;         /* change=MS: from then on closed loop <-> saturating */
    int forge;                  /* 0, or what the tenant writes into its own slot (FORGE_*) */
    struct flexai_compute c;
    struct flexai_compute *cp;  /* the slice's compute block: own, or another process's */
    int same;                   /* -1, or the process whose slice this one belongs to */
    struct flexai_ctl_proc p;
    struct flexai_board view;   /* this process's view of the board */
    uint64_t next;
    struct inflight ring[RING];
    uint64_t head, tail;   /* ring[tail..head) in flight */
    uint64_t stream_tail;
    int cl_waiting;
    int draining;
    const uint64_t *watch;      /* waiting on a holder's word (a futex): woken when it changes */
    uint64_t watch_value;
    int spin;                   /* ... looking at it without sleeping: runs at once */
    uint64_t spin_since, spin_ns; /* time spent looking without sleeping */
    uint64_t waits;             /* WAIT decisions: how often a waiting slice ran to look */
    uint64_t cl_issue, cl_end, cl_ready;
    double lat_sum, lat_max;
    uint64_t lat_n, launches;
    uint64_t bucket[MAXB];
};

enum { FORGE_NONE, FORGE_VTIME, FORGE_HOLD, FORGE_HIDE, FORGE_HANDING };

static struct slice S[MAXS];
static int NO_CONTROLLER;   /* --no-controller: every launch goes at once (the baseline) */
static uint64_t WAKE_NS = 10 * US; /* --wake-us: a futex waiter runs this long after the change */
static uint64_t wake_seed = 1;
static int NS;
static struct flexai_roster roster;               /* who is on the card */
static struct flexai_board_slot slots[FLEXAI_BOARD_SLOTS]; /* each slice's own state */
static uint64_t card_free;

struct change { uint64_t at; int idx; int kind; uint32_t val; int done; };
static struct change CH[16];
static int NCH;

static void account(struct slice *s, uint64_t a, uint64_t b)
{
    while (a < b) {
        uint64_t bi = a / BUCKET;
        uint64_t e = (bi + 1) * BUCKET;
        if (e > b)
            e = b;
        if (bi < MAXB)
            s->bucket[bi] += e - a;
        a = e;
    }
}

static void observe(struct slice *s, uint64_t now)
{
    while (s->tail < s->head && s->ring[s->tail % RING].end <= now) {
        struct inflight *f = &s->ring[s->tail % RING];
        flexai_ctl_charge(&s->view, s->cp, &s->cp->share, &s->p, f->measured, 1, now);
        s->tail++;
    }
}

static void launch(struct slice *s, uint64_t now)
{
    uint64_t dur = s->k[s->ki++ % s->nk];
    uint64_t ev = now > s->stream_tail ? now : s->stream_tail; /* event before the kernel */
    uint64_t start = ev > card_free ? ev : card_free;
    uint64_t end = start + dur;
    card_free = end;
    s->stream_tail = end;
    account(s, start, end);
    s->ring[s->head % RING] = (struct inflight){end, end - ev};
    s->head++;
    s->launches++;
    flexai_ctl_launched(&s->view, &s->p, 1, end, now);
    if (s->closed && ++s->in_burst >= s->burst) {
        s->in_burst = 0;
        s->cl_waiting = 1;
        s->cl_issue = s->cl_ready ? s->cl_ready : now; /* latency counts the wait for the gate */
        s->cl_end = end;
    }
}

static void step(struct slice *s, uint64_t now)
{
    if (s->spin_since) {
        s->spin_ns += now - s->spin_since;
        s->spin_since = 0;
    }
    observe(s, now);
    if (s->switch_at && now >= s->switch_at && !s->cl_waiting) {
        s->closed = !s->closed; /* the pattern changes mid-run */
        s->switch_at = 0;
    }
    if (now >= s->stop) {
        s->next = UINT64_MAX;
        return;
    }
    if (s->closed && s->cl_waiting) {
        if (s->cl_end <= now) {
            double lat = (double)(s->cl_end - s->cl_issue);
            s->lat_sum += lat;
            s->lat_n++;
            if (lat > s->lat_max)
                s->lat_max = lat;
            s->cl_waiting = 0;
            s->next = now + (s->think ? s->think : 1);
            s->cl_ready = s->next;
        } else {
            s->next = s->cl_end + 2 * US; /* synchronize: woken shortly after completion */
            if (s->slow_every && ++s->syncs % (uint64_t)s->slow_every == 0)
                s->next += s->slow_ns;
        }
        return;
    }
    if (s->forge && s->view.own) {
        /* a tenant's writes into its own slot file, the only board memory it can reach */
        struct flexai_board_slot *o = s->view.own;
        if (s->forge == FORGE_VTIME)
            o->vtime = 0;
        else if (s->forge == FORGE_HOLD) {
            o->hold = 1;
            o->beat_ns = o->heartbeat_ns = o->want_ns = o->hold_ns = now;
            o->busy_until_ns = now + 1000 * MS;
        } else if (s->forge == FORGE_HIDE)
            o->key = 0;
        else if (s->forge == FORGE_HANDING)
            o->handing_ns = now; /* "my turn ends with this launch", always */
    }
    struct flexai_ctl_decision d;
    if (NO_CONTROLLER)  /* the same clients without flexai: only the driver's queue bounds them */
        d = (struct flexai_ctl_decision){FLEXAI_CTL_GO, 0, FLEXAI_CTL_NO_CAP, NULL, 0, 0};
    else if (s->draining)  /* told to drain: no new gate until this process's work completed */
        d = (struct flexai_ctl_decision){FLEXAI_CTL_DRAIN, 0, 0, NULL, 0, 0};
    else
        d = flexai_ctl_gate(&s->view, s->cp, &s->cp->share, &s->p, now);
    s->draining = d.action == FLEXAI_CTL_DRAIN;
    s->watch = NULL;
    if (d.action == FLEXAI_CTL_WAIT) {
        /* a sleep ends a few us late, in no set order among threads (timer slack) */
        wake_seed = wake_seed * 6364136223846793005ULL + 1442695040888963407ULL;
        s->next = now + (d.wait_ns ? d.wait_ns : 1) + (d.spin ? 0 : (wake_seed >> 33) % (3 * US));
        if (d.watch) { /* until the holder gives the turn back (wake_watchers), at the latest then */
            s->watch = d.watch;
            s->watch_value = d.watch_value;
            s->spin = d.spin;
            if (d.spin)
                s->spin_since = now;
        }
        s->waits++;
    } else if (d.action == FLEXAI_CTL_DRAIN) {
        if (s->tail < s->head) {
            /* polls its last event, showing signs of life on the board meanwhile */
            uint64_t last = s->ring[(s->head - 1) % RING].end;
            flexai_ctl_launched(&s->view, &s->p, 0, last, now);
            s->next = last + 20 * US < now + FLEXAI_CTL_POLL_NS ? last + 20 * US : now + FLEXAI_CTL_POLL_NS;
        } else {
            flexai_ctl_release(&s->view, &s->p, now);
            s->draining = 0;
            s->next = now + 1 * US;
        }
    } else {
        if (s->tail < s->head && !flexai_ctl_may_queue(&s->p, d.inflight_cap_ns)) {
            uint64_t oldest = s->ring[s->tail % RING].end;
            uint64_t poll = now + FLEXAI_CTL_POLL_NS;
            flexai_ctl_launched(&s->view, &s->p, 0, s->ring[(s->head - 1) % RING].end, now);
            s->next = oldest + 10 * US < poll ? oldest + 10 * US : poll;
        } else if (s->stream_tail > now + QUEUE_AHEAD) {
            /* the driver's own bound: a launch blocks while its stream has work booked more
             * than queue_ahead_ns ahead (the simulated driver's default, 50 ms) */
            s->next = s->stream_tail - QUEUE_AHEAD;
        } else {
            launch(s, now);
            s->next = now + s->host;
        }
    }
}

static uint32_t parse_prio(const char *v)
{
    if (!strcmp(v, "high"))
        return FLEXAI_PRIORITY_HIGH;
    if (!strcmp(v, "low"))
        return FLEXAI_PRIORITY_LOW;
    return FLEXAI_PRIORITY_NORMAL;
}

static void parse_slice(struct slice *s, char *spec, int idx)
{
    s->share = 100;
    s->prio = FLEXAI_PRIORITY_NORMAL;
    s->stop = UINT64_MAX;
    s->host = 2 * US;
    s->same = -1;
    s->k[0] = 1000 * US;
    s->nk = 1;
    for (char *kv = strtok(spec, ","); kv; kv = strtok(NULL, ",")) {
        char *v = strchr(kv, '=');
        if (!v) {
            fprintf(stderr, "bad slice field %s\n", kv);
            exit(2);
        }
        *v++ = 0;
        if (!strcmp(kv, "share"))
            s->share = (uint32_t)atoi(v);
        else if (!strcmp(kv, "prio"))
            s->prio = parse_prio(v);
        else if (!strcmp(kv, "mode"))
            s->mode = !strcmp(v, "hard") ? FLEXAI_MODE_HARD : FLEXAI_MODE_WORK_CONSERVING;
        else if (!strcmp(kv, "k")) {
            s->nk = 0;
            for (char *t = v; *t && s->nk < 32;) {
                s->k[s->nk++] = (uint64_t)(strtod(t, &t) * US);
                if (*t == '+')
                    t++;
            }
        } else if (!strcmp(kv, "start"))
            s->start = (uint64_t)atof(v) * MS;
        else if (!strcmp(kv, "stop"))
            s->stop = (uint64_t)atof(v) * MS;
        else if (!strcmp(kv, "closed"))
            s->closed = atoi(v);
        else if (!strcmp(kv, "think"))
            s->think = (uint64_t)(atof(v) * US);
        else if (!strcmp(kv, "host"))
            s->host = (uint64_t)atoll(v);
        else if (!strcmp(kv, "slow")) {
            /* slow=N:US */
            s->slow_every = atoi(v);
            char *c = strchr(v, ':');
            s->slow_ns = c ? (uint64_t)(atof(c + 1) * US) : 0;
        } else if (!strcmp(kv, "burst"))
            s->burst = atoi(v);
        else if (!strcmp(kv, "switch"))
            s->switch_at = (uint64_t)atof(v) * MS;
        else if (!strcmp(kv, "forge"))
            s->forge = !strcmp(v, "vtime") ? FORGE_VTIME : !strcmp(v, "hold") ? FORGE_HOLD
                     : !strcmp(v, "hide") ? FORGE_HIDE : !strcmp(v, "handing") ? FORGE_HANDING
                     : (fprintf(stderr, "bad forge %s\n", v), exit(2), 0);
        else if (!strcmp(kv, "same"))
            s->same = atoi(v);
        else {
            fprintf(stderr, "unknown slice field %s\n", kv);
            exit(2);
        }
    }
    if (s->burst < 1)
        s->burst = 1;
    s->c.share.limit_percent = s->share;
    s->c.share.mode = s->mode;
    s->c.share.priority = s->prio;
    s->c.share.generation = 1;
    s->p.slot = -1;
    s->cp = &s->c;
    if (s->same >= 0 && s->same < idx) {
        /* another process of an earlier slice: same key, same compute block */
        s->cp = S[s->same].cp;
        idx = s->same;
    }
    s->p.key = flexai_ctl_key((char[]){(char)('A' + idx), 0});
    s->next = s->start;
}

int main(int argc, char **argv)
{
    uint64_t duration = 5000 * MS, w0 = 0, w1 = 0;
    flexai_roster_init(&roster);
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--no-controller")) {
            NO_CONTROLLER = 1;
        } else if (!strcmp(argv[i], "--wake-us") && i + 1 < argc) {
            WAKE_NS = (uint64_t)(atof(argv[++i]) * US);
        } else if (!strcmp(argv[i], "--duration") && i + 1 < argc) {
            duration = (uint64_t)atof(argv[++i]) * MS;
        } else if (!strcmp(argv[i], "--window") && i + 1 < argc) {
            double a, b;
            if (sscanf(argv[++i], "%lf:%lf", &a, &b) != 2)
                return 2;
            w0 = (uint64_t)(a * MS);
            w1 = (uint64_t)(b * MS);
        } else if ((!strcmp(argv[i], "--change") || !strcmp(argv[i], "--pause") ||
                    !strcmp(argv[i], "--resume")) && i + 1 < argc && NCH < 16) {
            struct change *c = &CH[NCH++];
            double at;
            unsigned val = 0;
            c->kind = argv[i][2] == 'c' ? 0 : argv[i][2] == 'p' ? 1 : 2;
            if (sscanf(argv[++i], "%lf:%d:%u", &at, &c->idx, &val) < 2)
                return 2;
            c->at = (uint64_t)(at * MS);
            c->val = val;
        } else if (NS < MAXS) {
            parse_slice(&S[NS], argv[i], NS);
            NS++;
        }
    }
    if (w1 == 0) {
        w0 = duration / 5;
        w1 = duration;
    }
    if (duration / BUCKET > MAXB)
        duration = MAXB * BUCKET;

    for (;;) {
        int bi = -1;
        for (int i = 0; i < NS; i++)
            if (S[i].next != UINT64_MAX && (bi < 0 || S[i].next < S[bi].next))
                bi = i;
        if (bi < 0 || S[bi].next >= duration)
            break;
        uint64_t now = S[bi].next;
        for (int j = 0; j < NCH; j++) {
            struct change *c = &CH[j];
            if (!c->done && c->at <= now) {
                struct flexai_compute *cc = S[c->idx].cp;
                if (c->kind == 0)
                    __atomic_store_n(&cc->share.limit_percent, c->val, __ATOMIC_RELAXED);
                else
                    __atomic_store_n(&cc->share.paused, c->kind == 1, __ATOMIC_RELAXED);
                __atomic_add_fetch(&cc->share.generation, 1, __ATOMIC_RELEASE);
                c->done = 1;
            }
        }
        struct slice *s = &S[bi];
        if (s->p.slot < 0) {
            /* as the library does outside containers: claim a roster entry, join its slot */
            s->view.roster = &roster;
            s->view.keeps_roster = 1;
            s->view.self = -1;
            for (int i = 0; i < FLEXAI_BOARD_SLOTS; i++)
                s->view.slot[i] = &slots[i];
            int idx = flexai_roster_claim(&s->view, s->p.key, s->cp->share.limit_percent, s->prio, now);
            s->view.self = idx;
            s->view.own = &slots[idx];
            flexai_board_join(&s->view, s->p.key, now);
            s->p.slot = idx;
            s->p.last_generation = s->cp->share.generation;
        }
        step(s, now);
        /* the futex: a waiter on a word that changed (a turn given back) runs shortly after */
        for (int i = 0; i < NS; i++)
            if (S[i].watch && *S[i].watch != S[i].watch_value) {
                /* woken threads run in no set order: WAKE_NS, give or take half of it */
                wake_seed = wake_seed * 6364136223846793005ULL + 1442695040888963407ULL;
                uint64_t at = S[i].spin ? now + 1 * US + (wake_seed >> 33) % (4 * US)
                                        : now + WAKE_NS / 2 + (wake_seed >> 33) % (WAKE_NS + 1);
                if (S[i].next > at)
                    S[i].next = at;
                S[i].watch = NULL;
            }
    }

    /* results */
    uint64_t b0 = w0 / BUCKET, b1 = w1 / BUCKET;
    if (b1 > MAXB)
        b1 = MAXB;
    double total = 0, busy[MAXS] = {0};
    for (int i = 0; i < NS; i++) {
        for (uint64_t b = b0; b < b1; b++)
            busy[i] += (double)S[i].bucket[b];
        total += busy[i];
    }
    double wall = (double)((b1 - b0) * BUCKET);
    /* convergence: first time after which every slice's cumulative share of the busy time,
     * counted from the last slice's start, stays within 2 points of its target */
    uint64_t t0 = 0;
    for (int i = 0; i < NS; i++)
        if (S[i].start > t0)
            t0 = S[i].start;
    double conv = -1;
    {
        double cum[MAXS] = {0}, ct = 0;
        uint64_t last_bad = t0 / BUCKET;
        uint64_t nb = duration / BUCKET;
        double tsum = 0;
        for (int i = 0; i < NS; i++)
            tsum += S[i].share;
        for (uint64_t b = t0 / BUCKET; b < nb; b++) {
            for (int i = 0; i < NS; i++) {
                cum[i] += (double)S[i].bucket[b];
                ct += (double)S[i].bucket[b];
            }
            for (int i = 0; i < NS; i++) {
                double target = 100.0 * S[i].share / tsum;
                double got = ct > 0 ? 100.0 * cum[i] / ct : 0;
                if (got - target > 2 || target - got > 2)
                    last_bad = b + 1;
            }
        }
        if (last_bad < nb)
            conv = (double)(last_bad * BUCKET - t0) / MS;
    }
    uint64_t handovers = 0;
    for (int i = 0; i < FLEXAI_BOARD_SLOTS; i++)
        handovers += slots[i].handovers;
    printf("{\"window_ms\": [%.1f, %.1f], \"utilization\": %.3f, \"converge_ms\": %.1f, "
           "\"handovers\": %llu, \"slices\": [",
           (double)w0 / MS, (double)w1 / MS, 100.0 * total / wall, conv,
           (unsigned long long)handovers);
    for (int i = 0; i < NS; i++) {
        struct slice *s = &S[i];
        printf("%s{\"target\": %u, \"priority\": %u, \"mode\": %u, \"share_busy\": %.3f, "
               "\"share_wall\": %.3f, \"launches\": %llu, \"lat_mean_us\": %.1f, "
               "\"lat_max_us\": %.1f, \"lat_n\": %llu, \"measured_permille\": %d, "
               "\"spin_ms\": %.3f, \"waits\": %llu}",
               i ? ", " : "", s->cp->share.limit_percent, s->prio, s->mode,
               total > 0 ? 100.0 * busy[i] / total : 0, 100.0 * busy[i] / wall,
               (unsigned long long)s->launches, s->lat_n ? s->lat_sum / (double)s->lat_n / US : 0,
               s->lat_max / US, (unsigned long long)s->lat_n, flexai_ctl_measured_permille(s->cp),
               (double)s->spin_ns / MS, (unsigned long long)s->waits);
    }
    printf("]}\n");
    return 0;
}
