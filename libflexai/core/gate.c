/* The compute gate every launch passes, whatever the vendor: device-time measurement in
 * batches, the card board, and the controller's decisions.
 *
 * A vendor's launch wrapper (cuda/launch.c, acl/acl_view.c) calls flexai_compute_before and
 * flexai_compute_after around each launch, with its struct flexai_device_timer: the events and
 * the capture queries of its runtime. The gate runs the compute controller (controller.c,
 * docs/compute.md) against the card board of the slice's card and the region's compute block;
 * it reads the clock, records events around launch batches through the timer, feeds the
 * measured device time to the controller and sleeps when told. It calls nothing of a vendor's
 * file: all it knows of one is the timer it was handed.
 *
 * Fast path (the slice holds the card's turn, nobody waits, little queued, same stream, no
 * daemon change): a few thread-local and shared loads, no clock read, no lock, no system call.
 * Per-thread state only (thread-local), so threads never contend in this file.
 */
#include "flexai.h"
#include "controller.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define BATCH_MAX 64     /* launches per measured batch while running alone */
#define RING 64          /* closed batches in flight per thread */
#define POOL 160
#define FAST_WATCH 8     /* the fast path watches at most this many other slices */

static struct {
    pthread_once_t once;
    int enabled;             /* 1: the controller runs; 0: only the pause gate */
    const struct flexai_device_timer *timer; /* the runtime whose launches are measured */
    struct flexai_board *board;
    int slot;
    uint64_t key;
    const struct flexai_share *sh; /* the share the controller obeys (flexai_share_of), or solo */
    int solo;                      /* no usable card board: a private one, hard cap at the share */
    struct flexai_share solo_share; /* the slice's share with mode forced to hard (solo) */
} G = {PTHREAD_ONCE_INIT, 0, NULL, NULL, -1, 0, NULL, 0, {0, 0, 0, 0, 0}};

struct batch {
    void *start, *end;       /* the runtime's events */
    uint32_t launches;
    int end_borrowed;        /* the next batch starts at this one's end event */
    void *stream;
    uint64_t due;            /* estimated end (CLOCK_MONOTONIC ns) */
};

struct tstate {
    int ready;               /* 0 not yet, 1 ready, -1 this thread cannot measure */
    struct flexai_ctl_proc p;
    struct batch ring[RING];
    unsigned head, tail;
    void *open_stream;
    void *open_start;
    uint32_t open_n;
    int open_borrowed;       /* open_start is the previous batch's end */
    int fast;                /* the last gate said: alone, holder, full cap */
    int in_capture;          /* this launch goes into a capture: not measured */
    uint64_t fast_turn;      /* the slice's hold token when fast was set (this thread's take) */
    uint64_t fast_gen;       /* the share's generation then */
    uint64_t fast_rgen;      /* the roster's generation then */
    int nwatch;              /* the other slices of this priority or above: their want words */
    const uint64_t *watch[FAST_WATCH];
    uint64_t watch_v[FAST_WATCH]; /* as they were (a change: one of them starts waiting) */
    uint64_t cap_ns;
    void *pool[POOL];
    int npool;
};

/* Stream capture (CUDA graphs). Launches into a capturing stream are recorded into a graph,
 * not run, and while any capture of the process is open the driver forbids "unsafe" calls
 * (event query/synchronize...) in global mode, invalidating the capture. `capture_open` counts
 * the captures begun (flexai_capture_begins, from the vendor's wrappers) and not yet ended;
 * while it is non-zero the gate (the slow path only: a thread's batch never stays open on a
 * stream it begins to capture) passes launches into a capturing stream untouched, never
 * records on a capturing stream, and makes its own runtime calls with the thread's capture
 * mode set to relaxed. Graph replays (a launch on a stream not capturing) are gated and
 * measured like any launch. A runtime without capture leaves the timer's capture ops NULL. */
static int capture_open;
static int timer_capturing(void *stream) /* 1: the stream is capturing (or cannot be used) */
{
    const struct flexai_device_timer *timer = G.timer;
    return timer && timer->capturing ? timer->capturing(stream) : 0;
}
static int timer_relax(int *old) /* the thread's capture mode to relaxed: 1 if changed */
{
    const struct flexai_device_timer *timer = G.timer;
    return timer && timer->relax ? timer->relax(old) : 0;
}
static void timer_unrelax(int old)
{
    G.timer->unrelax(old);
}
static int capture_stream_busy(void *stream)
{
    return __atomic_load_n(&capture_open, __ATOMIC_ACQUIRE) > 0 && timer_capturing(stream);
}

/* One pointer of initial-exec TLS (no __tls_get_addr call on the launch path; 8 bytes fit the
 * static TLS reserve even when the library is dlopen'd); the state itself is on the heap. */
static __thread struct tstate *TP __attribute__((tls_model("initial-exec")));

static struct tstate *tstate_slow(void)
{
    struct tstate *t = calloc(1, sizeof *t);
    if (t)
        TP = t;
    return t;
}

static uint64_t now_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void sleep_ns(uint64_t ns)
{
    if (ns > 1000000)
        ns = 1000000;
    if (ns < 20000)
        ns = 20000;
    struct timespec ts = {0, (long)ns};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
        ;
}

/* Waits up to `ns` for the turn's holder to give it back: a futex on its `hold` word (shared:
 * the holder may be another process, the word is in a slot file mapped in both), woken by
 * wake_watchers; or, `spin` (the turn is due to this slice any moment), looking without
 * sleeping, the CPU yielded between looks. Any slice can issue wakes on its own slot's word, so
 * a wake that changed nothing waits again, and after a few of those the rest of the wait is
 * slept: spurious wakes cost a waiter a bounded number of system calls. */
static void wait_word(const uint64_t *w, uint64_t value, uint64_t ns, int spin)
{
    if (ns > FLEXAI_CTL_WATCH_MAX_NS)
        ns = FLEXAI_CTL_WATCH_MAX_NS;
    const uint32_t *word = flexai_ctl_watch_word(w);
    uint32_t expect = (uint32_t)value;
    uint64_t end = now_mono() + ns;
    if (spin) {
        while (__atomic_load_n(word, __ATOMIC_ACQUIRE) == expect && now_mono() < end)
            sched_yield();
        return;
    }
    for (int spurious = 0; spurious < 4; spurious++) {
        uint64_t now = now_mono();
        if (now >= end || __atomic_load_n(word, __ATOMIC_ACQUIRE) != expect)
            return;
        struct timespec ts = {(time_t)((end - now) / 1000000000ULL), (long)((end - now) % 1000000000ULL)};
        if (syscall(SYS_futex, word, FUTEX_WAIT, expect, &ts, NULL, 0) != 0 && errno != EINTR)
            return; /* EAGAIN: it changed already; ETIMEDOUT; ENOSYS: look again */
    }
    uint64_t now = now_mono();
    if (now < end)
        sleep_ns(end - now);
}

/* The turn was given back: wake the waiters sleeping on this slice's `hold` word. */
static void wake_watchers(const struct flexai_board *b)
{
    syscall(SYS_futex, flexai_ctl_watch_word(&b->own->hold), FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* ---- the card board ------------------------------------------------------------------ */

/* Mapping state of a board view: which key's slot file each roster index maps, the roster
 * generation the view was brought up to date with, where the files are. Changed under
 * board_lock on the slow path only; a mapping, once made, stays at its address (a slot file
 * of another slice is mapped over it with MAP_FIXED), so readers never see it unmapped. */
struct board_maps {
    char dir[512];
    int writable;                       /* outside containers: the library keeps the roster */
    uint64_t mapped_key[FLEXAI_BOARD_SLOTS];
    uint64_t generation;                /* of the roster, when last refreshed */
};
static struct flexai_board view, solo_view;
static struct board_maps maps;
static pthread_mutex_t board_lock = PTHREAD_MUTEX_INITIALIZER;

static void card_name(struct flexai_region *r, char *name, size_t size)
{
    const char *uuid = flexai_P.limits ? flexai_P.limits->device_uuid : r->device_uuid;
    int card = flexai_P.limits ? flexai_P.limits->device_index : r->device_index;
    if (uuid[0]) {
        size_t n = 0;
        for (const char *s = uuid; *s && n + 1 < size; s++)
            name[n++] = (*s == '/' ? '_' : *s);
        name[n] = 0;
    } else {
        snprintf(name, size, "card%d", card);
    }
}

/* Maps `path` (size bytes) at `at` (NULL: anywhere), writable or not; NULL when it cannot. */
static void *map_file(const char *path, size_t size, int writable, int create, void *at)
{
    int fd;
    if (create) {
        mode_t old = umask(0);
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0666);
        umask(old);
    } else {
        fd = open(path, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC | O_NOFOLLOW);
    }
    if (fd < 0)
        return NULL;
    struct stat st;
    void *m = MAP_FAILED;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
        (st.st_size >= (off_t)size || (create && ftruncate(fd, (off_t)size) == 0)))
        m = mmap(at, size, writable ? PROT_READ | PROT_WRITE : PROT_READ,
                 MAP_SHARED | (at ? MAP_FIXED : 0), fd, 0);
    close(fd);
    return m == MAP_FAILED ? NULL : m;
}

static void slot_path(char *path, size_t size, uint64_t key)
{
    snprintf(path, size, "%s/%016llx", maps.dir, (unsigned long long)key);
}

/* Maps the slot file of every slice the roster lists (read-only but for our own). */
static void board_refresh(struct flexai_board *b)
{
    pthread_mutex_lock(&board_lock);
    uint64_t gen = __atomic_load_n(&b->roster->generation, __ATOMIC_ACQUIRE);
    if (gen != maps.generation) {
        for (int i = 0; i < FLEXAI_BOARD_SLOTS; i++) {
            uint64_t key = __atomic_load_n(&b->roster->entry[i].key, __ATOMIC_ACQUIRE);
            if (key == 0 || key == maps.mapped_key[i] || i == b->self)
                continue;
            char path[600];
            slot_path(path, sizeof path, key);
            void *old = (void *)b->slot[i];
            void *m = map_file(path, FLEXAI_SLOT_FILE_SIZE, 0, 0, old);
            if (m) {
                __atomic_store_n(&b->slot[i], (const struct flexai_board_slot *)m, __ATOMIC_RELEASE);
                maps.mapped_key[i] = key;
            } else if (old) {
                /* a failed MAP_FIXED may have unmapped the old slot under a reader: zeros there
                 * (key 0: nobody) keep every pointer valid */
                mmap(old, FLEXAI_SLOT_FILE_SIZE, PROT_READ, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
                maps.mapped_key[i] = 0;
            }
        }
        maps.generation = gen;
    }
    pthread_mutex_unlock(&board_lock);
}

/* The slice's own slot: made by flexaid (in a container, mounted read-write over the
 * read-only card directory) or by the library outside containers, before its roster claim. */
static struct flexai_board_slot *own_slot(uint64_t key)
{
    char path[600];
    slot_path(path, sizeof path, key);
    return map_file(path, FLEXAI_SLOT_FILE_SIZE, 1, maps.writable, NULL);
}

/* Opens the board of the slice's card into `view`: 0, or -1 with `why` set. */
static int board_open(struct flexai_region *r, uint64_t key, const char **why)
{
    /* in a container only the board flexaid made and the runtime mounted counts: a board the
     * tenant names (or a private one in the container's /dev/shm) would be a board of one */
    int in_container = flexai_P.cfg.in_container;
    const char *dir = in_container ? FLEXAI_BOARD_DIR : getenv("FLEXAI_BOARD_DIR");
    char name[128];
    card_name(r, name, sizeof name);
    if (!dir || !*dir) {
        struct stat st;
        dir = stat(FLEXAI_BOARD_DIR, &st) == 0 && S_ISDIR(st.st_mode) && access(FLEXAI_BOARD_DIR, W_OK) == 0
                  ? FLEXAI_BOARD_DIR
                  : NULL;
    }
    if (dir)
        snprintf(maps.dir, sizeof maps.dir, "%s/%s", dir, name);
    else
        snprintf(maps.dir, sizeof maps.dir, "/dev/shm/flexai-board-%s", name);
    maps.writable = !in_container;
    if (maps.writable && mkdir(maps.dir, 0777) != 0 && errno != EEXIST) {
        *why = "cannot make the card board directory";
        return -1;
    }
    if (maps.writable)
        chmod(maps.dir, 0777); /* slices of any uid share it outside containers (dev, benches) */
    char path[600];
    snprintf(path, sizeof path, "%s/%s", maps.dir, FLEXAI_ROSTER_NAME);
    struct flexai_roster *roster = map_file(path, sizeof *roster, maps.writable, maps.writable, NULL);
    if (!roster) {
        *why = "no card board for the slice's card";
        return -1;
    }
    if (maps.writable && __atomic_load_n(&roster->magic, __ATOMIC_ACQUIRE) == 0)
        flexai_roster_init(roster); /* idempotent: zeroed fields, magic stored last */
    if (!flexai_roster_valid(roster)) {
        munmap(roster, sizeof *roster);
        *why = "the card board's roster is damaged or of another version";
        return -1;
    }
    view.roster = roster;
    view.self = -1;
    view.keeps_roster = maps.writable;
    view.own = own_slot(key);
    if (!view.own) {
        *why = "the slice's own slot on the card board cannot be opened for writing";
        return -1;
    }
    uint64_t now = now_mono();
    if (maps.writable) {
        /* a sign of life before the claim, so a concurrent claimer does not take it as dead */
        __atomic_store_n(&view.own->heartbeat_ns, now, __ATOMIC_RELEASE);
        board_refresh(&view);
        view.self = flexai_roster_claim(&view, key, __atomic_load_n(&G.sh->limit_percent, __ATOMIC_RELAXED),
                                        __atomic_load_n(&G.sh->priority, __ATOMIC_RELAXED), now);
    } else {
        view.self = flexai_roster_find(roster, key);
    }
    if (view.self < 0) {
        *why = maps.writable ? "the card board is full" : "the card board does not list the slice";
        return -1;
    }
    view.slot[view.self] = view.own;
    maps.mapped_key[view.self] = key;
    board_refresh(&view);
    flexai_board_join(&view, key, now);
    return 0;
}
/* A forked child starts with no batches: the parent's events belong to the parent's context. */
static void compute_child_after_fork(void)
{
    if (TP)
        memset(TP, 0, sizeof *TP);
}

/* The slice's share as the solo controller obeys it: hard, whatever the mode. */
static void solo_refresh(void)
{
    const struct flexai_share *real = flexai_share_of(flexai_P.region);
    uint64_t gen = __atomic_load_n(&real->generation, __ATOMIC_ACQUIRE);
    if (gen == G.solo_share.generation && G.solo_share.mode == FLEXAI_MODE_HARD)
        return;
    G.solo_share.limit_percent = __atomic_load_n(&real->limit_percent, __ATOMIC_RELAXED);
    G.solo_share.priority = __atomic_load_n(&real->priority, __ATOMIC_RELAXED);
    G.solo_share.paused = __atomic_load_n(&real->paused, __ATOMIC_RELAXED);
    G.solo_share.mode = FLEXAI_MODE_HARD;
    __atomic_store_n(&G.solo_share.generation, gen, __ATOMIC_RELEASE);
}

/* No usable card board (missing, damaged, full): the slice cannot see its neighbours, so it
 * holds itself to its own share as a hard cap on a board of its own. Never "not enforced". */
static int go_solo(const char *why)
{
    struct flexai_roster *roster = mmap(NULL, sizeof *roster + FLEXAI_SLOT_FILE_SIZE, PROT_READ | PROT_WRITE,
                                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (roster == MAP_FAILED)
        return -1;
    flexai_roster_init(roster);
    solo_refresh();
    flexai_warn("flexai: %s; the slice is held to its own %u%% compute share (hard cap)", why,
                G.solo_share.limit_percent);
    solo_view.roster = roster;
    solo_view.own = (struct flexai_board_slot *)((char *)roster + sizeof *roster);
    solo_view.keeps_roster = 1;
    solo_view.self = -1;
    solo_view.self = flexai_roster_claim(&solo_view, G.key, G.solo_share.limit_percent, G.solo_share.priority,
                                         now_mono());
    solo_view.slot[solo_view.self] = solo_view.own;
    flexai_board_join(&solo_view, G.key, now_mono());
    G.sh = &G.solo_share;
    G.slot = solo_view.self;
    __atomic_store_n(&G.board, &solo_view, __ATOMIC_RELEASE);
    __atomic_store_n(&G.solo, 1, __ATOMIC_RELEASE);
    return 0;
}

static int compute_by_mps(void)
{
    if (flexai_P.limits)
        return (flexai_P.limits->flags & FLEXAI_LIMITS_F_COMPUTE_BY_MPS) != 0;
    if (flexai_P.cfg.in_container)
        return 0; /* damaged inputs: fail closed elsewhere, never "MPS does it" */
    const char *by = getenv("FLEXAI_COMPUTE_BY");
    return by && strcmp(by, "mps") == 0;
}

static void compute_init(void)
{
    struct flexai_region *r = __atomic_load_n(&flexai_P.region, __ATOMIC_ACQUIRE);
    const struct flexai_device_timer *timer = __atomic_load_n(&G.timer, __ATOMIC_ACQUIRE);
    if (!r || !timer)
        return;
    if (compute_by_mps())
        return; /* MPS partitions the card; libflexai only keeps memory and pause */
    struct flexai_share *own = &r->compute.share; /* outside containers: the region's header */
    const char *mode = flexai_P.cfg.in_container ? NULL : getenv("FLEXAI_COMPUTE_MODE");
    if (mode && strcmp(mode, "hard") == 0 && !flexai_P.limits &&
        __atomic_load_n(&own->mode, __ATOMIC_RELAXED) != FLEXAI_MODE_HARD &&
        (r->flags & FLEXAI_REGION_F_CREATED_BY_LIBRARY)) {
        __atomic_store_n(&own->mode, FLEXAI_MODE_HARD, __ATOMIC_RELAXED);
        __atomic_add_fetch(&own->generation, 1, __ATOMIC_RELEASE);
    }
    G.sh = flexai_share_of(r);
    if (timer->bind() != 0) {
        flexai_warn("flexai: the %s runtime lacks the event API; compute share not enforced",
                    timer->api);
        return;
    }
    /* the slice: its id, or outside containers the region every process of the tree maps */
    const char *id = flexai_P.limits ? flexai_P.limits->slice_id : r->slice_id;
    G.key = flexai_ctl_key(id[0] ? id : flexai_P.cfg.region_path);
    const char *why = NULL;
    if (board_open(r, G.key, &why) == 0) {
        G.board = &view;
        G.slot = view.self;
    } else if (go_solo(why) != 0) {
        return;
    }
    pthread_atfork(NULL, NULL, compute_child_after_fork);
    __atomic_store_n(&G.enabled, 1, __ATOMIC_RELEASE);
}

/* ---- events and batches ---------------------------------------------------------------- */

static void *ev_get(struct tstate *t)
{
    if (t->npool > 0)
        return t->pool[--t->npool];
    void *e = NULL;
    if (G.timer->create(&e) != 0)
        return NULL;
    return e;
}

static void ev_put(struct tstate *t, void *e)
{
    if (!e)
        return;
    if (t->npool < POOL)
        t->pool[t->npool++] = e;
    else
        G.timer->destroy(e);
}

static void charge_batch(struct tstate *t, struct batch *b, uint64_t now)
{
    float ms = 0;
    uint64_t ns = 0;
    if (G.timer->elapsed_ms(&ms, b->start, b->end) == 0 && ms > 0)
        ns = (uint64_t)((double)ms * 1e6);
    flexai_ctl_charge(G.board, &flexai_P.region->compute, G.sh, &t->p, ns, b->launches, now);
    struct flexai_proc *me = flexai_P.me;
    if (me)
        __atomic_fetch_add(&me->busy_ns, ns, __ATOMIC_RELAXED);
    ev_put(t, b->start);
    if (!b->end_borrowed)
        ev_put(t, b->end);
}

/* Completed batches, oldest first, without blocking. A batch whose event reports an error
 * (its context destroyed under it) is taken as completed: it must not hold the ring. */
static void harvest(struct tstate *t, uint64_t now)
{
    while (t->tail != t->head) {
        struct batch *b = &t->ring[t->tail % RING];
        if (G.timer->query(b->end) == 0)
            break;
        t->tail++;
        charge_batch(t, b, now);
    }
}

/* Waits until batch idx completed, looking every 30 us (and renewing the slice's signs of life
 * on the board) or, far from its estimated end, sleeping until shortly before it (at most
 * 500 us at a time). When nothing else of this thread is queued behind it, the card idles
 * from its end until the thread sees that end: it hands the turn over then, or launches its
 * next kernel. So near that end it looks again at once, yielding the CPU, instead of sleeping
 * 30 us, which with the host's timer slack cost 40-80 us of card time per handover (issue 16).
 * With more of its work queued behind, a late look costs nothing. */
#define WAIT_EARLY_NS 100000ULL /* looking at once from this long before the estimated end */
#define WAIT_LATE_NS 300000ULL  /* ... to this long after it (then the estimate was wrong) */
#define WAIT_POLL_NS 30000ULL
#define WAIT_SLEEP_MAX_NS 500000ULL
static void wait_batch(struct tstate *t, unsigned idx)
{
    struct batch *b = &t->ring[idx % RING];
    int last = idx + 1 == t->head && !t->open_start;
    for (;;) {
        if (G.timer->query(b->end) != 0)
            break;
        uint64_t now = now_mono();
        flexai_ctl_launched(G.board, &t->p, 0, now + flexai_ctl_inflight_ns(&t->p), now);
        uint64_t ns = WAIT_POLL_NS;
        if (now + WAIT_EARLY_NS < b->due) {
            ns = b->due - WAIT_EARLY_NS - now;
            if (ns > WAIT_SLEEP_MAX_NS)
                ns = WAIT_SLEEP_MAX_NS;
        } else if (last && now < b->due + WAIT_LATE_NS) {
            sched_yield();
            continue;
        }
        struct timespec ts = {0, (long)ns};
        nanosleep(&ts, NULL);
    }
    harvest(t, now_mono());
}

static void close_open(struct tstate *t)
{
    if (!t->open_start)
        return;
    if (t->open_n == 0) {
        if (!t->open_borrowed)
            ev_put(t, t->open_start);
        else if (t->head != t->tail)
            t->ring[(t->head - 1) % RING].end_borrowed = 0;
        t->open_start = NULL;
        return;
    }
    if (t->head - t->tail >= RING)
        wait_batch(t, t->tail);
    void *end = ev_get(t);
    /* a stream that began capturing since the batch opened: an event recorded there would be
     * a node of the user's graph, so the batch is counted as its estimate */
    if (!end || capture_stream_busy(t->open_stream) || G.timer->record(end, t->open_stream) != 0) {
        /* cannot measure this batch: count it as its estimate */
        flexai_ctl_charge(G.board, &flexai_P.region->compute, G.sh, &t->p,
                          t->open_n * (t->p.est_launch_ns ? t->p.est_launch_ns : 0), t->open_n, now_mono());
        if (!t->open_borrowed)
            ev_put(t, t->open_start);
        ev_put(t, end);
    } else {
        struct batch *b = &t->ring[t->head % RING];
        b->start = t->open_start;
        b->end = end;
        b->launches = t->open_n;
        b->end_borrowed = 0;
        b->stream = t->open_stream;
        b->due = now_mono() + t->p.inflight_launches * t->p.est_launch_ns; /* the newest batch */
        t->head++;
    }
    t->open_start = NULL;
    t->open_n = 0;
}

/* Before a launch on `stream`: make sure a batch is open there with its start marked. */
static int open_batch(struct tstate *t, void *stream)
{
    if (t->open_start && t->open_stream == stream)
        return 0;
    close_open(t);
    if (t->head != t->tail) {
        struct batch *prev = &t->ring[(t->head - 1) % RING];
        if (prev->stream == stream && G.timer->query(prev->end) == 0) {
            /* the stream is still busy with the previous batch: this one starts at its end */
            prev->end_borrowed = 1;
            t->open_start = prev->end;
            t->open_borrowed = 1;
            t->open_stream = stream;
            return 0;
        }
    }
    void *s = ev_get(t);
    if (!s || G.timer->record(s, stream) != 0) {
        ev_put(t, s);
        return -1;
    }
    t->open_start = s;
    t->open_borrowed = 0;
    t->open_stream = stream;
    return 0;
}

static void drain(struct tstate *t)
{
    close_open(t);
    if (t->head != t->tail)
        wait_batch(t, t->head - 1);
    harvest(t, now_mono());
}

static int thread_ready(struct tstate *t)
{
    if (likely(t->ready))
        return t->ready > 0;
    if (!G.timer->thread_ready())
        return 0; /* no context yet: the launch will fail anyway; try again next time */
    memset(&t->p, 0, sizeof t->p);
    t->p.slot = G.slot;
    t->p.key = G.key;
    t->p.last_generation = __atomic_load_n(&G.sh->generation, __ATOMIC_ACQUIRE);
    t->ready = 1;
    return 1;
}

/* What the fast path watches: the thread's hold of the turn, the roster's generation (a slice
 * came or went), and the want words of the other slices that could take the card from it
 * (of its priority or above). 0: too many to watch, take the slow path. */
static int fast_snapshot(struct tstate *t)
{
    struct flexai_board *b = G.board;
    uint32_t prio = __atomic_load_n(&b->roster->entry[b->self].priority, __ATOMIC_RELAXED);
    t->fast_turn = t->p.held_turn;
    t->fast_gen = t->p.last_generation;
    t->fast_rgen = __atomic_load_n(&b->roster->generation, __ATOMIC_ACQUIRE);
    t->nwatch = 0;
    for (int i = 0; i < FLEXAI_BOARD_SLOTS; i++) {
        const struct flexai_board_slot *o = i == b->self ? NULL : flexai_board_slot_of(b, i);
        if (!o || __atomic_load_n(&b->roster->entry[i].priority, __ATOMIC_RELAXED) < prio)
            continue;
        if (t->nwatch == FAST_WATCH)
            return 0;
        t->watch[t->nwatch] = &o->want_ns;
        t->watch_v[t->nwatch++] = __atomic_load_n(&o->want_ns, __ATOMIC_RELAXED);
    }
    return 1;
}

static inline int fast_quiet(const struct tstate *t)
{
    for (int i = 0; i < t->nwatch; i++)
        if (__atomic_load_n(t->watch[i], __ATOMIC_RELAXED) != t->watch_v[i])
            return 0;
    return 1;
}

/* The full gate: returns once this thread may launch on `stream`. */
static void gate_slow(struct flexai_region *r, struct tstate *t, void *stream)
{
    for (;;) {
        uint64_t now = now_mono();
        harvest(t, now);
        if (unlikely(__atomic_load_n(&G.solo, __ATOMIC_ACQUIRE))) {
            solo_refresh();
        } else if (unlikely(!flexai_roster_valid(G.board->roster))) {
            /* the roster was written over (only root can in a container): leave it for a
             * board of our own */
            static pthread_mutex_t solo_lock = PTHREAD_MUTEX_INITIALIZER;
            pthread_mutex_lock(&solo_lock);
            if (!G.solo)
                go_solo("the card board was damaged");
            pthread_mutex_unlock(&solo_lock);
            t->p.slot = G.slot;
            t->p.held_turn = 0;
            continue;
        } else if (unlikely(__atomic_load_n(&G.board->roster->generation, __ATOMIC_ACQUIRE) != maps.generation)) {
            board_refresh(G.board); /* slices came or went: map their slots */
        }
        struct flexai_ctl_decision d = flexai_ctl_gate(G.board, &r->compute, G.sh, &t->p, now);
        if (d.action == FLEXAI_CTL_GO) {
            if (!flexai_ctl_may_queue(&t->p, d.inflight_cap_ns)) {
                close_open(t);
                if (t->head != t->tail)
                    wait_batch(t, t->tail);
                else
                    t->p.inflight_launches = 0; /* nothing measurable is in flight */
                continue;
            }
            flexai_ctl_launched(G.board, &t->p, 0,
                                now + flexai_ctl_inflight_ns(&t->p) + t->p.est_launch_ns, now);
            t->cap_ns = d.inflight_cap_ns;
            t->fast = d.inflight_cap_ns == FLEXAI_CTL_NO_CAP && t->p.held_turn != 0 &&
                      __atomic_load_n(&G.sh->mode, __ATOMIC_RELAXED) != FLEXAI_MODE_HARD &&
                      fast_snapshot(t);
            if (open_batch(t, stream) != 0)
                t->fast = 0;
            return;
        }
        t->fast = 0;
        if (d.action == FLEXAI_CTL_WAIT) {
            close_open(t);
            if (d.watch)
                wait_word(d.watch, d.watch_value, d.wait_ns, d.spin);
            else
                sleep_ns(d.wait_ns);
            continue;
        }
        drain(t);
        flexai_ctl_release(G.board, &t->p, now_mono());
        wake_watchers(G.board);
    }
}

/* Daemon pause only (controller off, or another vendor's launch): wait until resumed. */
static void pause_gate(struct flexai_region *r)
{
    while (__atomic_load_n(&flexai_share_of(r)->paused, __ATOMIC_ACQUIRE)) {
        struct timespec ts = {0, 1000000L};
        nanosleep(&ts, NULL);
    }
}

/* The gate while some capture of the process is open. */
static void capture_gate(struct flexai_region *r, struct tstate *t, void *stream)
{
    int old, relaxed = timer_relax(&old);
    if (timer_capturing(stream)) {
        /* recorded into a graph, not run: nothing to wait for or measure (its replays are) */
        t->in_capture = 1;
        if (unlikely(__atomic_load_n(&G.sh->paused, __ATOMIC_RELAXED)))
            pause_gate(r);
    } else {
        close_open(t);
        gate_slow(r, t, stream);
    }
    if (relaxed)
        timer_unrelax(old);
}

static inline void compute_gate(const struct flexai_device_timer *timer, struct flexai_region *r,
                                void *stream)
{
    if (unlikely(!__atomic_load_n(&G.enabled, __ATOMIC_ACQUIRE))) {
        /* the first runtime to launch is the measured one; a plain load first, so a process
         * whose controller stays off (MPS mode, no board) pays no locked instruction per launch */
        const struct flexai_device_timer *none = NULL;
        if (!__atomic_load_n(&G.timer, __ATOMIC_ACQUIRE))
            __atomic_compare_exchange_n(&G.timer, &none, timer, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
        pthread_once(&G.once, compute_init);
        if (!__atomic_load_n(&G.enabled, __ATOMIC_ACQUIRE)) {
            /* controller off (MPS mode, no board): only the daemon's pause holds launches */
            if (unlikely(__atomic_load_n(&flexai_share_of(r)->paused, __ATOMIC_RELAXED)))
                pause_gate(r);
            return;
        }
    }
    if (unlikely(timer != G.timer)) {
        /* a second runtime in one process: its device time is not measured */
        if (unlikely(__atomic_load_n(&flexai_share_of(r)->paused, __ATOMIC_RELAXED)))
            pause_gate(r);
        return;
    }
    struct tstate *t = TP;
    if (unlikely(t == NULL) && (t = tstate_slow()) == NULL)
        return;
    if (unlikely(!thread_ready(t)))
        return;
    /* fast path: alone on the card with the turn, same stream, room in the batch and queue */
    if (likely(t->fast) && t->open_stream == stream && t->open_start && t->open_n + 1 < BATCH_MAX &&
        (uint64_t)(t->open_n + 1) * (t->p.est_launch_ns ? t->p.est_launch_ns : FLEXAI_CTL_INFLIGHT_NS / 8) <
            t->cap_ns / 4 &&
        __atomic_load_n(&G.board->own->hold, __ATOMIC_RELAXED) == t->fast_turn &&
        __atomic_load_n(&G.board->roster->generation, __ATOMIC_RELAXED) == t->fast_rgen && fast_quiet(t) &&
        __atomic_load_n(&G.sh->generation, __ATOMIC_RELAXED) == t->fast_gen &&
        !__atomic_load_n(&G.sh->paused, __ATOMIC_RELAXED) &&
        flexai_ctl_inflight_ns(&t->p) < t->cap_ns)
        return;
    if (unlikely(__atomic_load_n(&capture_open, __ATOMIC_ACQUIRE) > 0)) {
        capture_gate(r, t, stream);
        return;
    }
    close_open(t); /* the batch is full (or the slice no longer runs alone): measure it */
    gate_slow(r, t, stream);
}

/* After a launch the gate let through. */
static inline void compute_after(const struct flexai_device_timer *timer, int ok)
{
    if (!G.enabled || timer != G.timer)
        return;
    struct tstate *t = TP;
    if (!t || t->ready <= 0)
        return;
    if (unlikely(t->in_capture)) {
        t->in_capture = 0; /* recorded into a graph: not this batch's */
        return;
    }
    if (!t->open_start || !ok)
        return;
    t->open_n++;
    if (t->fast) {
        t->p.inflight_launches++;
        return;
    }
    uint64_t now = now_mono();
    flexai_ctl_launched(G.board, &t->p, 1, now + flexai_ctl_inflight_ns(&t->p) + t->p.est_launch_ns, now);
    if (unlikely(__atomic_load_n(&capture_open, __ATOMIC_ACQUIRE) > 0)) {
        int old, relaxed = timer_relax(&old);
        close_open(t);
        if (relaxed)
            timer_unrelax(old);
        return;
    }
    close_open(t); /* throttled or contended: measure every launch */
}

void flexai_compute_before(const struct flexai_device_timer *timer, struct flexai_region *r,
                           void *stream)
{
    compute_gate(timer, r, stream);
}

void flexai_compute_after(const struct flexai_device_timer *timer, int ok)
{
    compute_after(timer, ok);
}

/* ---- captures, as the vendor's wrappers report them ---------------------------------- */

void flexai_capture_begins(const struct flexai_device_timer *timer, void *stream)
{
    __atomic_add_fetch(&capture_open, 1, __ATOMIC_ACQ_REL);
    /* this thread's open batch on that stream is closed now, while an event may still be
     * recorded on it (the fast path never runs on a capturing stream) */
    struct tstate *t = TP;
    if (!__atomic_load_n(&G.enabled, __ATOMIC_ACQUIRE) || G.timer != timer || !t || t->ready <= 0 ||
        !t->open_start || t->open_stream != stream)
        return;
    int old, relaxed = timer_relax(&old);
    close_open(t);
    t->fast = 0;
    if (relaxed)
        timer_unrelax(old);
}

void flexai_capture_ends(void)
{
    int n = __atomic_load_n(&capture_open, __ATOMIC_ACQUIRE);
    while (n > 0 && !__atomic_compare_exchange_n(&capture_open, &n, n - 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        ;
}

int flexai_capture_open(void)
{
    return __atomic_load_n(&capture_open, __ATOMIC_ACQUIRE) > 0;
}
