/* Accounting in the shared region: the robust lock, process slots, reserve and release.
 * The layout and the rules are described in flexai_region.h. */
#include "flexai.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

_Static_assert(sizeof(pthread_mutex_t) <= sizeof(((struct flexai_region *)0)->lock),
               "pthread_mutex_t does not fit the region's lock");
_Static_assert(sizeof(struct flexai_proc) == 128, "slot layout");
_Static_assert(__builtin_offsetof(struct flexai_proc, launches) == 64, "slot layout");
_Static_assert(__builtin_offsetof(struct flexai_region, procs) % 64 == 0, "slot alignment");

#define LOAD(p) __atomic_load_n(&(p), __ATOMIC_RELAXED)
#define STORE(p, v) __atomic_store_n(&(p), (v), __ATOMIC_RELAXED)

static pthread_mutex_t *region_mutex(struct flexai_region *r)
{
    return (pthread_mutex_t *)(void *)r->lock;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void init_mutex(struct flexai_region *r)
{
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    pthread_mutex_init(region_mutex(r), &attr);
    pthread_mutexattr_destroy(&attr);
}

int flexai_region_init_lock(struct flexai_region *r)
{
    uint32_t state = __atomic_load_n(&r->lock_state, __ATOMIC_ACQUIRE);
    if (state == FLEXAI_LOCK_READY)
        return 0;
    uint32_t expected = FLEXAI_LOCK_UNINIT;
    if (__atomic_compare_exchange_n(&r->lock_state, &expected, FLEXAI_LOCK_INITIALISING, 0,
                                    __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        init_mutex(r);
        __atomic_store_n(&r->lock_state, FLEXAI_LOCK_READY, __ATOMIC_RELEASE);
        return 0;
    }
    /* Another process initialises it; that takes microseconds. If it died doing so, take
     * over after two seconds. */
    for (int i = 0; i < 2000; i++) {
        if (__atomic_load_n(&r->lock_state, __ATOMIC_ACQUIRE) == FLEXAI_LOCK_READY)
            return 0;
        sleep_ms(1);
    }
    expected = FLEXAI_LOCK_INITIALISING;
    if (__atomic_compare_exchange_n(&r->lock_state, &expected, FLEXAI_LOCK_INITIALISING + 8, 0,
                                    __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        init_mutex(r);
        __atomic_store_n(&r->lock_state, FLEXAI_LOCK_READY, __ATOMIC_RELEASE);
        return 0;
    }
    return __atomic_load_n(&r->lock_state, __ATOMIC_ACQUIRE) == FLEXAI_LOCK_READY ? 0 : -1;
}

/* The slots are the truth; the total is their sum. */
static void rebuild_total(struct flexai_region *r)
{
    int64_t sum = 0;
    for (int i = 0; i < FLEXAI_MAX_PROCS; i++)
        sum += LOAD(r->procs[i].memory_used);
    STORE(r->memory_used, sum);
}

int flexai_region_lock(struct flexai_region *r)
{
    int rc = pthread_mutex_lock(region_mutex(r));
    if (rc == EOWNERDEAD) {
        /* The holder died inside an update: make the total agree with the slots again. */
        rebuild_total(r);
        pthread_mutex_consistent(region_mutex(r));
        rc = 0;
    }
    return rc;
}

void flexai_region_unlock(struct flexai_region *r)
{
    pthread_mutex_unlock(region_mutex(r));
}

static int slot_lock(int fd, int slot, int cmd, short type, struct flock *fl)
{
    memset(fl, 0, sizeof *fl);
    fl->l_type = type;
    fl->l_whence = SEEK_SET;
    fl->l_start = (off_t)FLEXAI_SLOT_LOCK_BASE + slot;
    fl->l_len = 1;
    return fcntl(fd, cmd, fl);
}

int flexai_slot_alive(int fd, int slot)
{
    struct flock fl;
    if (slot_lock(fd, slot, F_OFD_GETLK, F_WRLCK, &fl) != 0)
        return 1; /* cannot tell: never reclaim on doubt */
    return fl.l_type != F_UNLCK;
}

/* Give back what a dead process held (caller holds the lock). */
static void retire_slot(struct flexai_region *r, struct flexai_proc *s)
{
    int64_t held = LOAD(s->memory_used);
    if (held || LOAD(s->pid)) {
        STORE(r->memory_used, LOAD(r->memory_used) - held);
        STORE(r->launches_retired, LOAD(r->launches_retired) + LOAD(s->launches));
        STORE(r->busy_ns_retired, LOAD(r->busy_ns_retired) + LOAD(s->busy_ns));
        STORE(r->reclaimed_processes, LOAD(r->reclaimed_processes) + 1);
    }
    STORE(s->memory_used, 0);
    STORE(s->context_bytes, 0);
    STORE(s->launches, 0);
    STORE(s->busy_ns, 0);
    STORE(s->start_time, 0);
    STORE(s->flags, 0);
    STORE(s->pid, 0);
}

void flexai_reclaim_dead(struct flexai_region *r, int fd, int self)
{
    if (fd < 0)
        return;
    for (int i = 0; i < FLEXAI_MAX_PROCS; i++) {
        struct flexai_proc *s = &r->procs[i];
        if (i == self || LOAD(s->pid) == 0)
            continue;
        if (!flexai_slot_alive(fd, i))
            retire_slot(r, s);
    }
}

int flexai_region_claim_slot(struct flexai_region *r, int fd, pid_t pid)
{
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < FLEXAI_MAX_PROCS; i++) {
            struct flexai_proc *s = &r->procs[i];
            if (pass == 0 && LOAD(s->pid) != 0)
                continue;
            struct flock fl;
            if (slot_lock(fd, i, F_OFD_SETLK, F_WRLCK, &fl) != 0)
                continue; /* a live process owns it */
            if (flexai_region_lock(r) != 0) {
                slot_lock(fd, i, F_OFD_SETLK, F_UNLCK, &fl);
                return -1;
            }
            retire_slot(r, s); /* whatever a dead previous owner left */
            STORE(s->pid, (int32_t)pid);
            flexai_region_unlock(r);
            return i;
        }
    }
    return -1;
}

/* 1: charged, 0: nothing to charge (not enforcing, the card not known yet, or no bytes),
 * -1: the slice is full (or this process has no slot). */
int flexai_reserve(int64_t bytes)
{
    struct flexai_region *r = flexai_region();
    if (r == NULL) /* not enforcing or the card is not known yet (pass through); fail closed */
        return flexai_closed() ? -1 : 0;
    struct flexai_proc *me = flexai_P.me;
    if (me == NULL)
        return -1;
    if (bytes <= 0)
        return 0;
    flexai_overhead_tick(); /* what the driver holds beyond the tracked, at most every period */
    int64_t limit = flexai_limit_bytes(r);
    /* What this process holds is known without the region, which the tenant can write: a
     * forged total never lets one process past the limit. */
    int64_t mine = __atomic_load_n(&flexai_P.held, __ATOMIC_RELAXED);
    if (limit > 0 && (bytes > limit || mine > limit - bytes))
        return -1;
    if (flexai_region_lock(r) != 0)
        return -1;
    int64_t used = LOAD(r->memory_used);
    if (used < mine) {
        /* below what this process alone holds: the total was written over; rebuild it */
        used = 0;
        for (int i = 0; i < FLEXAI_MAX_PROCS; i++) {
            int64_t v = LOAD(r->procs[i].memory_used);
            used += v > 0 && v <= limit ? v : 0;
        }
        used = used > mine ? used : mine;
        STORE(r->memory_used, used);
    }
    if (limit > 0 && (bytes > limit || used > limit - bytes)) {
        flexai_reclaim_dead(r, flexai_P.region_fd, flexai_P.slot);
        used = LOAD(r->memory_used);
        if (bytes > limit || used > limit - bytes) {
            STORE(r->oom_rejections, LOAD(r->oom_rejections) + 1);
            flexai_region_unlock(r);
            return -1;
        }
    }
    /* The region may have been written over: what the kernel's leases allow is the truth. */
    if (limit > 0 && flexai_lease_cover(&flexai_P.lease, flexai_P.region_fd, limit, mine + bytes) != 0) {
        STORE(r->oom_rejections, LOAD(r->oom_rejections) + 1);
        flexai_region_unlock(r);
        return -1;
    }
    used += bytes;
    STORE(r->memory_used, used);
    STORE(me->memory_used, LOAD(me->memory_used) + bytes);
    __atomic_add_fetch(&flexai_P.held, bytes, __ATOMIC_RELAXED);
    if (used > LOAD(r->memory_peak))
        STORE(r->memory_peak, used);
    flexai_region_unlock(r);
    return 1;
}

/* Charges bytes the driver already holds for this process (context, module and stack
 * memory: it cannot be refused after the fact). Added even past the limit, so that the next
 * allocation of the slice is refused instead; the leases are grown as far as they go. */
void flexai_charge_held(int64_t bytes)
{
    struct flexai_region *r = flexai_region();
    struct flexai_proc *me = flexai_P.me;
    if (r == NULL || me == NULL || bytes <= 0 || flexai_region_lock(r) != 0)
        return;
    int64_t used = LOAD(r->memory_used) + bytes;
    STORE(r->memory_used, used);
    STORE(me->memory_used, LOAD(me->memory_used) + bytes);
    int64_t held = __atomic_add_fetch(&flexai_P.held, bytes, __ATOMIC_RELAXED);
    if (used > LOAD(r->memory_peak))
        STORE(r->memory_peak, used);
    int64_t limit = flexai_limit_bytes(r);
    if (limit > 0)
        (void)flexai_lease_cover(&flexai_P.lease, flexai_P.region_fd, limit, held);
    flexai_region_unlock(r);
}

void flexai_unreserve(int64_t bytes)
{
    struct flexai_region *r = __atomic_load_n(&flexai_P.region, __ATOMIC_ACQUIRE);
    struct flexai_proc *me = flexai_P.me;
    if (r == NULL || me == NULL || bytes <= 0)
        return;
    if (flexai_region_lock(r) != 0)
        return;
    int64_t mine = LOAD(me->memory_used);
    if (bytes > mine)
        bytes = mine; /* never below zero, whatever a caller believes it held */
    STORE(me->memory_used, mine - bytes);
    STORE(r->memory_used, LOAD(r->memory_used) - bytes);
    int64_t held = __atomic_load_n(&flexai_P.held, __ATOMIC_RELAXED);
    held = held > bytes ? held - bytes : 0;
    __atomic_store_n(&flexai_P.held, held, __ATOMIC_RELAXED);
    flexai_lease_trim(&flexai_P.lease, flexai_P.region_fd, held);
    flexai_region_unlock(r);
}

int64_t flexai_memory_limit(void)
{
    struct flexai_region *r = flexai_region();
    return r ? flexai_limit_bytes(r) : 0;
}

/* The slice's usage, after giving back what dead processes held. */
int64_t flexai_memory_used(void)
{
    struct flexai_region *r = flexai_region();
    if (r == NULL)
        return 0;
    if (flexai_P.region_fd >= 0 && flexai_region_lock(r) == 0) {
        flexai_reclaim_dead(r, flexai_P.region_fd, flexai_P.slot);
        flexai_region_unlock(r);
    }
    return LOAD(r->memory_used);
}
