/* Shared state of the simulated driver libraries: config, process slots, memory budgets,
 * the per-card timeline. See simstate.h and docs/simulator.md. */
#include "simstate.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

uint64_t sim_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static uint64_t realtime_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

void sim_sleep_until(uint64_t deadline_ns)
{
    struct timespec ts;
    ts.tv_sec = (time_t)(deadline_ns / 1000000000ULL);
    ts.tv_nsec = (long)(deadline_ns % 1000000000ULL);
    while (sim_now_ns() < deadline_ns) {
        int rc = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
        if (rc != 0 && rc != EINTR)
            break;
    }
}

/* How a synchronize waits for the device. A real driver returns within microseconds of the
 * work's end: by default (cudaDeviceScheduleAuto, few contexts) it spins. A thread that only
 * slept would add the host's wake-up latency (timer slack, scheduling: 50-100 us on a small
 * VM) after every synchronize of a closed loop, a gap it does not have on a real card. So:
 * sleep until SIM_SPIN_NS before the end (with a 1 ns timer slack), then yield-spin to it. */
#define SIM_SPIN_NS 300000ULL

void sim_wait_device(uint64_t deadline_ns)
{
    static __thread int slack_set;
    if (!slack_set) {
        prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
        slack_set = 1;
    }
    uint64_t now = sim_now_ns();
    if (now + SIM_SPIN_NS < deadline_ns)
        sim_sleep_until(deadline_ns - SIM_SPIN_NS);
    while (sim_now_ns() < deadline_ns)
        sched_yield();
}

/* The pid a real driver (and so NVML) knows this process by: its pid in the host's pid
 * namespace. In the initial namespace that is getpid(); when /proc shows several NSpid levels
 * (it belongs to an ancestor namespace), the first. A container with its own /proc cannot
 * know it, and neither can the simulator: it then uses 2^22 + slot, above any pid Linux
 * hands out (pid_max <= 2^22), so the pid is unique on the host and unknown to the process,
 * as a host pid is to a containerised one. */
static uint32_t host_pid(int slot)
{
    char link[64];
    ssize_t k = readlink("/proc/self/ns/pid", link, sizeof link - 1);
    if (k > 0) {
        link[k] = 0;
        if (strcmp(link, "pid:[4026531836]") == 0) /* PROC_PID_INIT_INO */
            return (uint32_t)getpid();
    }
    FILE *f = fopen("/proc/self/status", "re");
    char line[256];
    unsigned long first = 0;
    int levels = 0;
    while (f && fgets(line, sizeof line, f)) {
        if (strncmp(line, "NSpid:", 6) != 0)
            continue;
        char *s = line + 6, *end;
        for (unsigned long v; (v = strtoul(s, &end, 10)), end != s; s = end)
            if (levels++ == 0)
                first = v;
        break;
    }
    if (f)
        fclose(f);
    return levels >= 2 ? (uint32_t)first : (1u << 22) + (uint32_t)slot;
}

const char *sim_dir(void)
{
    const char *dir = getenv("FLEXAI_SIM_DIR");
    return (dir && *dir) ? dir : SIM_DEFAULT_DIR;
}

static void set_defaults(struct sim_config *cfg)
{
    cfg->context_bytes = 300ULL << 20;
    cfg->module_bytes = 2ULL << 20;
    cfg->sm_count = 132;
    cfg->cc_major = 9;
    cfg->cc_minor = 0;
    cfg->launch_ns = 4000;
    cfg->block_ns = 10000;
    cfg->queue_depth = 1024;
    cfg->queue_ahead_ns = 50000000ULL;
    cfg->util_window_ns = 1000000000ULL;
    snprintf(cfg->driver_version, sizeof cfg->driver_version, "%s", "580.65.06");
}

static int parse_u64(const char *s, uint64_t *out)
{
    char *end;
    if (!s || !*s || *s == '-')
        return -1;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || *end)
        return -1;
    *out = v;
    return 0;
}

static int set_tunable(struct sim_config *cfg, const char *key, const char *val)
{
    uint64_t v;
    if (!strcmp(key, "driver_version")) {
        snprintf(cfg->driver_version, sizeof cfg->driver_version, "%s", val);
        return 0;
    }
    if (parse_u64(val, &v))
        return -1;
    if (!strcmp(key, "context_bytes")) cfg->context_bytes = v;
    else if (!strcmp(key, "module_bytes")) cfg->module_bytes = v;
    else if (!strcmp(key, "nvml_pid_offset") && v < 0x40000000) cfg->nvml_pid_offset = v;
    else if (!strcmp(key, "sm_count") && v >= 1 && v <= 100000) cfg->sm_count = (int)v;
    else if (!strcmp(key, "cc_major") && v <= 100) cfg->cc_major = (int)v;
    else if (!strcmp(key, "cc_minor") && v <= 9) cfg->cc_minor = (int)v;
    else if (!strcmp(key, "launch_ns")) cfg->launch_ns = v;
    else if (!strcmp(key, "block_ns")) cfg->block_ns = v;
    else if (!strcmp(key, "queue_depth") && v >= 1 && v <= 65536) cfg->queue_depth = v;
    else if (!strcmp(key, "queue_ahead_ns")) cfg->queue_ahead_ns = v;
    else if (!strcmp(key, "util_window_ns") && v >= SIM_BUCKET_NS &&
             v <= (SIM_BUCKETS / 2) * SIM_BUCKET_NS) cfg->util_window_ns = v;
    else return -1;
    return 0;
}

/* cards.conf: '#' comments, blank lines,
 *   card <index> <uuid> <memory-bytes> <name ...>
 *   set <key> <value>                                                    */
int sim_config_load(const char *dir, struct sim_config *cfg, char *err, size_t errlen)
{
    char path[600];
    memset(cfg, 0, sizeof *cfg);
    set_defaults(cfg);
    snprintf(cfg->dir, sizeof cfg->dir, "%s", dir);
    snprintf(path, sizeof path, "%s/%s", dir, SIM_CONFIG_NAME);
    FILE *f = fopen(path, "re");
    if (!f) {
        snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
        return SIM_NO_CONFIG;
    }
    char line[1024];
    int lineno = 0, seen[SIM_MAX_CARDS] = {0};
    int rc = SIM_OK;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        char *s = line;
        s[strcspn(s, "\r\n")] = 0;
        while (isspace((unsigned char)*s)) s++;
        if (!*s || *s == '#')
            continue;
        char *save = NULL;
        char *kw = strtok_r(s, " \t", &save);
        if (!strcmp(kw, "card")) {
            char *idx = strtok_r(NULL, " \t", &save);
            char *uuid = strtok_r(NULL, " \t", &save);
            char *mem = strtok_r(NULL, " \t", &save);
            char *name = save;
            uint64_t index, memory;
            if (name) while (isspace((unsigned char)*name)) name++;
            if (!idx || !uuid || !mem || parse_u64(idx, &index) || index >= SIM_MAX_CARDS ||
                seen[index] || parse_u64(mem, &memory) || memory == 0 ||
                strlen(uuid) >= sizeof cfg->card[0].uuid) {
                snprintf(err, errlen, "%s:%d: bad card line", path, lineno);
                rc = SIM_BAD_CONFIG;
                break;
            }
            seen[index] = 1;
            struct sim_card_cfg *c = &cfg->card[index];
            c->index = (int)index;
            snprintf(c->uuid, sizeof c->uuid, "%s", uuid);
            snprintf(c->name, sizeof c->name, "%s", (name && *name) ? name : "flexai simulated GPU");
            c->memory = memory;
            c->pci_bus = 0x10 + (int)index;
            if ((int)index + 1 > cfg->ncards)
                cfg->ncards = (int)index + 1;
        } else if (!strcmp(kw, "set")) {
            char *key = strtok_r(NULL, " \t", &save);
            char *val = strtok_r(NULL, " \t", &save);
            if (!key || !val || set_tunable(cfg, key, val)) {
                snprintf(err, errlen, "%s:%d: bad setting", path, lineno);
                rc = SIM_BAD_CONFIG;
                break;
            }
        } else {
            snprintf(err, errlen, "%s:%d: unknown keyword %s", path, lineno, kw);
            rc = SIM_BAD_CONFIG;
            break;
        }
    }
    fclose(f);
    if (rc == SIM_OK) {
        for (int i = 0; i < cfg->ncards; i++)
            if (!seen[i]) {
                snprintf(err, errlen, "%s: card indices must be 0..%d without gaps", path,
                         cfg->ncards - 1);
                return SIM_BAD_CONFIG;
            }
        if (cfg->ncards == 0) {
            snprintf(err, errlen, "%s: no card", path);
            return SIM_NO_CONFIG;
        }
    }
    return rc;
}

static int slot_lock(int fd, int slot, short type)
{
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    fl.l_start = SIM_SLOT_LOCK_BASE + slot;
    fl.l_len = 1;
    return fcntl(fd, F_OFD_SETLK, &fl);
}

static void slot_clear(struct sim_slot *s)
{
    for (int c = 0; c < SIM_MAX_CARDS; c++) {
        atomic_store(&s->mem[c], 0);
        atomic_store(&s->contexts[c], 0);
    }
    atomic_store(&s->flags, 0);
    atomic_store(&s->claimed_ns, 0);
    atomic_store(&s->pid, 0);
}

int sim_slot_alive(const struct sim_handle *h, int slot)
{
    if (slot == h->slot)
        return 1;
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = SIM_SLOT_LOCK_BASE + slot;
    fl.l_len = 1;
    if (fcntl(h->fd, F_OFD_GETLK, &fl) != 0)
        return 1; /* cannot tell: assume alive */
    return fl.l_type != F_UNLCK;
}

static int slot_in_use(struct sim_slot *s)
{
    if (atomic_load(&s->pid))
        return 1;
    for (int c = 0; c < SIM_MAX_CARDS; c++)
        if (atomic_load(&s->mem[c]) || atomic_load(&s->contexts[c]))
            return 1;
    return 0;
}

void sim_reclaim_dead(struct sim_handle *h)
{
    for (int i = 0; i < SIM_MAX_SLOTS; i++) {
        if (i == h->slot)
            continue;
        struct sim_slot *s = &h->sh->slot[i];
        if (!slot_in_use(s))
            continue;
        if (slot_lock(h->fd, i, F_WRLCK) == 0) {
            /* nobody holds the slot: its owner is gone */
            slot_clear(s);
            slot_lock(h->fd, i, F_UNLCK);
        }
    }
}

enum sim_status sim_open(struct sim_handle *h, int want_slot)
{
    char err[700];
    memset(h, 0, sizeof *h);
    h->fd = -1;
    h->slot = -1;
    int rc = sim_config_load(sim_dir(), &h->cfg, err, sizeof err);
    if (rc != SIM_OK) {
        if (getenv("FLEXAI_SIM_DEBUG"))
            fprintf(stderr, "flexai-sim: %s\n", err);
        return (enum sim_status)rc;
    }
    char path[600];
    snprintf(path, sizeof path, "%s/%s", h->cfg.dir, SIM_STATE_NAME);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (fd < 0)
        return SIM_NO_STATE;
    /* flock serialises initialisation; fcntl/OFD locks used for slots are independent of it */
    while (flock(fd, LOCK_EX) != 0) {
        if (errno != EINTR) {
            close(fd);
            return SIM_NO_STATE;
        }
    }
    struct stat st;
    size_t size = sizeof(struct sim_shared);
    if (fstat(fd, &st) != 0 || ((size_t)st.st_size < size && ftruncate(fd, (off_t)size) != 0)) {
        flock(fd, LOCK_UN);
        close(fd);
        return SIM_NO_STATE;
    }
    if (st.st_uid == geteuid())
        (void)fchmod(fd, 0666); /* other users (containers) share the same file */
    struct sim_shared *sh = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (sh == MAP_FAILED) {
        flock(fd, LOCK_UN);
        close(fd);
        return SIM_NO_STATE;
    }
    if (atomic_load(&sh->magic) != SIM_STATE_MAGIC || sh->layout != SIM_STATE_LAYOUT ||
        sh->max_cards != SIM_MAX_CARDS || sh->max_slots != SIM_MAX_SLOTS) {
        memset((void *)sh, 0, size);
        sh->layout = SIM_STATE_LAYOUT;
        sh->max_cards = SIM_MAX_CARDS;
        sh->max_slots = SIM_MAX_SLOTS;
        atomic_store(&sh->magic, SIM_STATE_MAGIC);
    }
    flock(fd, LOCK_UN);
    h->sh = sh;
    h->fd = fd;
    if (want_slot) {
        for (int i = 0; i < SIM_MAX_SLOTS; i++) {
            if (atomic_load(&sh->slot[i].pid) && sim_slot_alive(h, i))
                continue;
            if (slot_lock(fd, i, F_WRLCK) == 0) {
                struct sim_slot *s = &sh->slot[i];
                slot_clear(s); /* whatever a dead owner left behind */
                atomic_store(&s->claimed_ns, realtime_ns());
                atomic_store(&s->pid, host_pid(i));
                h->slot = i;
                break;
            }
        }
        if (h->slot < 0) {
            sim_close(h);
            return SIM_NO_SLOT;
        }
        sim_reclaim_dead(h);
    }
    return SIM_OK;
}

void sim_close(struct sim_handle *h)
{
    if (h->sh) {
        if (h->slot >= 0) {
            slot_clear(&h->sh->slot[h->slot]);
            slot_lock(h->fd, h->slot, F_UNLCK);
        }
        munmap((void *)h->sh, sizeof(struct sim_shared));
    }
    if (h->fd >= 0)
        close(h->fd);
    h->sh = NULL;
    h->fd = -1;
    h->slot = -1;
}

uint64_t sim_mem_used(const struct sim_handle *h, int card)
{
    uint64_t sum = 0;
    for (int i = 0; i < SIM_MAX_SLOTS; i++)
        sum += atomic_load(&h->sh->slot[i].mem[card]);
    return sum;
}

/* Reserve-then-check: the bytes are added to this process's slot first, then the sum over
 * all slots is compared with the card. Of two concurrent reservations the later one always
 * sees the earlier (sequentially consistent atomics), so the card is never over-committed.
 * Two reservations in flight at once may both see the card full; each rolls back, waits a
 * random moment and tries again, so a reservation that fits is not refused for long. */
int sim_mem_reserve(struct sim_handle *h, int card, uint64_t bytes)
{
    if (h->slot < 0 || card < 0 || card >= h->cfg.ncards)
        return -1;
    uint64_t total = h->cfg.card[card].memory;
    if (bytes > total)
        return -1;
    _Atomic uint64_t *mine = &h->sh->slot[h->slot].mem[card];
    uint64_t seed = sim_now_ns() ^ ((uint64_t)(uintptr_t)&seed << 7) ^ (uint64_t)getpid();
    for (int attempt = 0;; attempt++) {
        atomic_fetch_add(mine, bytes);
        if (sim_mem_used(h, card) <= total)
            return 0;
        atomic_fetch_sub(mine, bytes);
        if (attempt == 0) {
            sim_reclaim_dead(h);
            continue;
        }
        if (attempt >= 24)
            return -1;
        seed ^= seed << 13; seed ^= seed >> 7; seed ^= seed << 17;
        struct timespec ts = {0, (long)(20000 + seed % 200000)};
        nanosleep(&ts, NULL);
        if (attempt >= 3 && sim_mem_used(h, card) + bytes > total)
            return -1; /* full without counting anyone's reservation in flight */
    }
}

void sim_mem_release(struct sim_handle *h, int card, uint64_t bytes)
{
    if (h->slot < 0 || card < 0 || card >= SIM_MAX_CARDS)
        return;
    _Atomic uint64_t *mine = &h->sh->slot[h->slot].mem[card];
    uint64_t cur = atomic_load(mine);
    uint64_t next;
    do {
        next = cur >= bytes ? cur - bytes : 0;
    } while (!atomic_compare_exchange_weak(mine, &cur, next));
}

void sim_ctx_count(struct sim_handle *h, int card, int delta)
{
    if (h->slot < 0 || card < 0 || card >= SIM_MAX_CARDS)
        return;
    _Atomic uint32_t *n = &h->sh->slot[h->slot].contexts[card];
    if (delta > 0)
        atomic_fetch_add(n, (uint32_t)delta);
    else {
        uint32_t cur = atomic_load(n);
        while (cur > 0 && !atomic_compare_exchange_weak(n, &cur, cur - 1))
            ;
    }
}

static void bucket_add(struct sim_card_shared *c, uint64_t start, uint64_t end)
{
    const uint64_t tagmask = (1ULL << (64 - SIM_BUCKET_TAG_SHIFT)) - 1;
    const uint64_t lowmask = (1ULL << SIM_BUCKET_TAG_SHIFT) - 1;
    uint64_t b = start / SIM_BUCKET_NS;
    for (int n = 0; b * SIM_BUCKET_NS < end && n < SIM_BUCKETS; b++, n++) {
        uint64_t lo = b * SIM_BUCKET_NS, hi = lo + SIM_BUCKET_NS;
        if (lo < start) lo = start;
        if (hi > end) hi = end;
        uint64_t add = hi - lo, tag = b & tagmask;
        _Atomic uint64_t *w = &c->bucket[b % SIM_BUCKETS];
        uint64_t cur = atomic_load(w), next;
        do {
            if ((cur >> SIM_BUCKET_TAG_SHIFT) == tag) {
                uint64_t v = (cur & lowmask) + add;
                if (v > SIM_BUCKET_NS) v = SIM_BUCKET_NS;
                next = (tag << SIM_BUCKET_TAG_SHIFT) | v;
            } else if ((cur >> SIM_BUCKET_TAG_SHIFT) > tag) {
                break; /* the slot already holds a later bucket */
            } else {
                next = (tag << SIM_BUCKET_TAG_SHIFT) | add;
            }
        } while (!atomic_compare_exchange_weak(w, &cur, next));
    }
}

uint64_t sim_timeline_book(struct sim_handle *h, int card, uint64_t not_before, uint64_t dur,
                           uint64_t *start_out)
{
    struct sim_card_shared *c = &h->sh->card[card];
    if (dur > SIM_MAX_KERNEL_NS)
        dur = SIM_MAX_KERNEL_NS;
    uint64_t cur = atomic_load(&c->busy_until), start, end;
    do {
        uint64_t now = sim_now_ns();
        start = now > cur ? now : cur;
        if (not_before > start)
            start = not_before;
        end = start + dur;
    } while (!atomic_compare_exchange_weak(&c->busy_until, &cur, end));
    atomic_fetch_add(&c->busy_ns_total, dur);
    atomic_fetch_add(&c->launches, 1);
    bucket_add(c, start, end);
    if (start_out)
        *start_out = start;
    return end;
}

unsigned sim_utilization(const struct sim_handle *h, int card)
{
    const uint64_t tagmask = (1ULL << (64 - SIM_BUCKET_TAG_SHIFT)) - 1;
    const uint64_t lowmask = (1ULL << SIM_BUCKET_TAG_SHIFT) - 1;
    const struct sim_card_shared *c = &h->sh->card[card];
    uint64_t cur = sim_now_ns() / SIM_BUCKET_NS;
    uint64_t nb = h->cfg.util_window_ns / SIM_BUCKET_NS;
    if (nb < 1) nb = 1;
    if (nb > cur) nb = cur;
    if (nb == 0)
        return 0;
    uint64_t busy = 0;
    for (uint64_t b = cur - nb; b < cur; b++) {
        uint64_t w = atomic_load(&c->bucket[b % SIM_BUCKETS]);
        if ((w >> SIM_BUCKET_TAG_SHIFT) == (b & tagmask))
            busy += w & lowmask;
    }
    uint64_t pct = (busy * 100 + (nb * SIM_BUCKET_NS) / 2) / (nb * SIM_BUCKET_NS);
    return pct > 100 ? 100 : (unsigned)pct;
}
