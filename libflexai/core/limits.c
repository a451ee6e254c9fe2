/* Limits: where this process's slice comes from, and attaching to the slice's region.
 *
 *  1. Inside a sliced container (the runtime mounted the slice file at its fixed path
 *     /run/flexai/slice.conf): the limits are read from /run/flexai/limits, a file flexaid
 *     writes and the runtime mounts read-only (struct flexai_limits); usage is shared through
 *     the region at /run/flexai/region. No FLEXAI_* variable is read: the tenant sets them.
 *     A missing or damaged input fails closed: every allocation and launch fails with one
 *     line on stderr. The region is the tenant's to write, so nothing in it is trusted as a
 *     limit (docs/security.md).
 *  2. Outside containers, FLEXAI_SLICE_FILE (with FLEXAI_REGION) names a slice directory
 *     flexaid wrote, used from the host by tests and benches; its limits file applies.
 *  3. FLEXAI_MEMORY / FLEXAI_FRACTION / FLEXAI_COMPUTE / FLEXAI_DEVICE in the environment,
 *     for use outside containers. The first process of the program tree names a region in
 *     /dev/shm and exports it as FLEXAI_REGION (in the constructor: a getenv and, only when
 *     such variables are set, a setenv), so every process it starts shares one budget; the
 *     first one that touches the driver creates the file, and its header holds the limits.
 *  4. nothing: pure pass-through, the wrappers are never handed out.
 */
#include "flexai.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_SLICE_FILE "/run/flexai/slice.conf"
#define DEFAULT_REGION "/run/flexai/region"
#define DEFAULT_LIMITS "/run/flexai/limits"

struct flexai_process flexai_P = {
    .once = PTHREAD_ONCE_INIT,
    .attach_lock = PTHREAD_MUTEX_INITIALIZER,
    .region_fd = -1,
    .slot = -1,
};

uint64_t flexai_now_ns(int clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

void flexai_warn(const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if (n > (int)sizeof line - 2)
        n = (int)sizeof line - 2;
    line[n++] = '\n';
    ssize_t ignored = write(2, line, (size_t)n);
    (void)ignored;
}

/* "8GiB", "512M", "1.5 GiB", "123B" -> bytes; "0.3", "1", ".05" -> share in hundredths. */
int flexai_parse_size(const char *text, int64_t *bytes, int *share)
{
    const char *p = text;
    unsigned long long whole = 0, frac = 0, scale_frac = 1;
    int digits = 0;
    while (*p == ' ' || *p == '\t')
        p++;
    while (*p >= '0' && *p <= '9') {
        if (whole > (1ULL << 62) / 10)
            return -1;
        whole = whole * 10 + (unsigned long long)(*p++ - '0');
        digits++;
    }
    if (*p == '.') {
        p++;
        while (*p >= '0' && *p <= '9') {
            if (scale_frac < 1000000000ULL) {
                frac = frac * 10 + (unsigned long long)(*p - '0');
                scale_frac *= 10;
            }
            p++;
            digits++;
        }
    }
    if (!digits)
        return -1;
    while (*p == ' ')
        p++;
    if (*p == '\0') {
        /* a share of the card */
        unsigned long long hundredths = whole * 100 + frac * 100 / scale_frac;
        if (hundredths < 1 || hundredths > 100)
            return -1;
        *bytes = -1;
        *share = (int)hundredths;
        return 0;
    }
    unsigned long long unit;
    switch (*p | 0x20) {
    case 'b': unit = 1; break;
    case 'k': unit = 1ULL << 10; break;
    case 'm': unit = 1ULL << 20; break;
    case 'g': unit = 1ULL << 30; break;
    case 't': unit = 1ULL << 40; break;
    default: return -1;
    }
    p++;
    if ((*p | 0x20) == 'i')
        p++;
    if (unit > 1 && (*p | 0x20) == 'b')
        p++;
    while (*p == ' ' || *p == '\t' || *p == '\n')
        p++;
    if (*p != '\0')
        return -1;
    if (whole > (unsigned long long)INT64_MAX / unit)
        return -1;
    unsigned long long total = whole * unit + frac * unit / scale_frac;
    if (total == 0 || total > (unsigned long long)INT64_MAX)
        return -1;
    *bytes = (int64_t)total;
    *share = 0;
    return 0;
}

static int parse_priority(const char *v)
{
    if (strcmp(v, "high") == 0)
        return FLEXAI_PRIORITY_HIGH;
    if (strcmp(v, "low") == 0)
        return FLEXAI_PRIORITY_LOW;
    return FLEXAI_PRIORITY_NORMAL;
}

static void copy_str(char *dst, size_t size, const char *src)
{
    size_t n = strnlen(src, size - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
}

static int parse_i64(const char *v, int64_t *out)
{
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || end == v || *end != '\0')
        return -1;
    *out = x;
    return 0;
}

/* 0: read; -1: no such file; -2: present but unusable (fail closed). */
static int read_slice_file(const char *path, struct flexai_config *cfg)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT || errno == ENOTDIR ? -1 : -2;
    char buf[4096];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -2;
    buf[n] = '\0';
    int have_limit = 0;
    char *save = NULL;
    for (char *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (line[0] == '#')
            continue;
        char *eq = strchr(line, '=');
        if (!eq)
            continue;
        *eq = '\0';
        const char *key = line, *val = eq + 1;
        int64_t x;
        if (strcmp(key, "memory_limit") == 0 && parse_i64(val, &x) == 0 && x >= 0) {
            cfg->memory_limit = x;
            have_limit = 1;
        } else if (strcmp(key, "compute_limit") == 0 && parse_i64(val, &x) == 0 && x > 0 && x <= 100) {
            cfg->compute_limit = (int)x;
        } else if (strcmp(key, "device_index") == 0 && parse_i64(val, &x) == 0 && x >= 0) {
            cfg->device_index = (int)x;
        } else if (strcmp(key, "context_memory") == 0 && parse_i64(val, &x) == 0 && x >= 0) {
            cfg->context_memory = x;
        } else if (strcmp(key, "device_uuid") == 0) {
            copy_str(cfg->device_uuid, sizeof cfg->device_uuid, val);
        } else if (strcmp(key, "slice_id") == 0) {
            copy_str(cfg->slice_id, sizeof cfg->slice_id, val);
        } else if (strcmp(key, "priority") == 0) {
            cfg->priority = parse_priority(val);
        }
    }
    return have_limit ? 0 : -2;
}

static int env_limits(struct flexai_config *cfg)
{
    const char *mem = getenv("FLEXAI_MEMORY");
    const char *frac = getenv("FLEXAI_FRACTION");
    const char *comp = getenv("FLEXAI_COMPUTE");
    const char *dev = getenv("FLEXAI_DEVICE");
    if (!(mem && *mem) && !(frac && *frac) && !(comp && *comp) && !(dev && *dev))
        return 0;
    int64_t bytes;
    int share;
    if (frac && *frac) {
        if (flexai_parse_size(frac, &bytes, &share) == 0 && bytes == -1) {
            cfg->memory_limit = -1;
            cfg->memory_share = share;
            cfg->compute_limit = share;
        } else {
            flexai_warn("flexai: invalid FLEXAI_FRACTION=%.40s (expected a share in (0, 1]); "
                        "refusing device memory", frac);
            cfg->memory_limit = 1;
        }
    }
    if (mem && *mem) {
        if (flexai_parse_size(mem, &bytes, &share) == 0) {
            cfg->memory_limit = bytes;
            cfg->memory_share = share;
        } else {
            flexai_warn("flexai: invalid FLEXAI_MEMORY=%.40s (expected e.g. 4GiB or 0.25); "
                        "refusing device memory", mem);
            cfg->memory_limit = 1;
        }
    }
    if (comp && *comp) {
        int64_t c;
        char tmp[8];
        copy_str(tmp, sizeof tmp, comp);
        size_t len = strlen(tmp);
        if (len && tmp[len - 1] == '%')
            tmp[len - 1] = '\0';
        if (parse_i64(tmp, &c) == 0 && c >= 1 && c <= 100)
            cfg->compute_limit = (int)c;
        else
            flexai_warn("flexai: invalid FLEXAI_COMPUTE=%.40s (expected 1..100); ignored", comp);
    }
    if (dev && *dev) {
        int64_t idx;
        if (parse_i64(dev, &idx) == 0 && idx >= 0)
            cfg->device_index = (int)idx;
        else
            copy_str(cfg->device_uuid, sizeof cfg->device_uuid, dev);
    }
    const char *prio = getenv("FLEXAI_PRIORITY");
    if (prio && *prio)
        cfg->priority = parse_priority(prio);
    return 1;
}

static void child_after_fork(void);

/* Maps a limits file read-only; NULL with a reason in *why when it is missing or damaged. */
static const struct flexai_limits *map_limits(const char *path, const char **why)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        *why = strerror(errno);
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size < (off_t)sizeof(struct flexai_limits)) {
        close(fd);
        *why = "too short";
        return NULL;
    }
    void *m = mmap(NULL, sizeof(struct flexai_limits), PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED) {
        *why = strerror(errno);
        return NULL;
    }
    const struct flexai_limits *l = m;
    if (__atomic_load_n(&l->magic, __ATOMIC_ACQUIRE) != FLEXAI_LIMITS_MAGIC ||
        l->version != FLEXAI_LIMITS_VERSION || l->size != sizeof *l || l->memory_limit <= 0) {
        munmap(m, sizeof *l);
        *why = "not a limits file of this version";
        return NULL;
    }
    return l;
}

/* Inside a container: the runtime's read-only files at their fixed paths, nothing else. */
static void load_in_container(struct flexai_config *cfg)
{
    cfg->in_container = 1;
    cfg->enforce = 1;
    cfg->from_slice_file = 1;
    copy_str(cfg->region_path, sizeof cfg->region_path, DEFAULT_REGION);
    const char *which = DEFAULT_SLICE_FILE, *why = "unreadable or has no memory_limit";
    const struct flexai_limits *l = NULL;
    if (read_slice_file(DEFAULT_SLICE_FILE, cfg) == 0) {
        which = DEFAULT_LIMITS;
        l = map_limits(DEFAULT_LIMITS, &why);
    }
    if (l == NULL) {
        flexai_warn("flexai: the slice's %s is %s; every device allocation and launch of this "
                    "process fails (fail closed). Restart the container through flexai-runtime.",
                    which, why);
        cfg->fail_closed = 1;
        return;
    }
    flexai_P.limits = l;
    cfg->memory_limit = l->memory_limit;
    cfg->context_memory = l->context_memory;
    cfg->device_index = l->device_index;
    copy_str(cfg->device_uuid, sizeof cfg->device_uuid, l->device_uuid);
    copy_str(cfg->slice_id, sizeof cfg->slice_id, l->slice_id);
}

void flexai_config_load(void)
{
    struct flexai_config *cfg = &flexai_P.cfg;
    memset(cfg, 0, sizeof *cfg);
    cfg->compute_limit = 100;
    cfg->priority = FLEXAI_PRIORITY_NORMAL;
    /* The slice file at its fixed path means a sliced container: FLEXAI_* variables are the
     * tenant's to set, so none of them is read (docs/security.md). */
    if (access(DEFAULT_SLICE_FILE, F_OK) == 0 || (errno != ENOENT && errno != ENOTDIR)) {
        load_in_container(cfg);
        pthread_atfork(NULL, NULL, child_after_fork);
        return;
    }
    const char *env_region = getenv("FLEXAI_REGION");
    const char *slice = getenv("FLEXAI_SLICE_FILE");
    int rc = slice && *slice ? read_slice_file(slice, cfg) : -1;
    if (rc == 0 || rc == -2) {
        if (rc == -2) {
            flexai_warn("flexai: slice file %s is unreadable or has no memory_limit; "
                        "refusing device memory", slice);
            cfg->memory_limit = 1;
        }
        cfg->enforce = 1;
        cfg->from_slice_file = 1;
        copy_str(cfg->region_path, sizeof cfg->region_path,
                 env_region && *env_region ? env_region : DEFAULT_REGION);
        /* a slice directory flexaid wrote (a container's files used from the host, as tests
         * and benches do): its limits file is what a container would map */
        char lpath[600];
        const char *slash = strrchr(slice, '/');
        int dir = slash ? (int)(slash - slice) + 1 : 0;
        snprintf(lpath, sizeof lpath, "%.*slimits", dir, slice);
        const char *why;
        if (rc == 0 && access(lpath, F_OK) == 0) {
            flexai_P.limits = map_limits(lpath, &why);
            if (flexai_P.limits == NULL) {
                flexai_warn("flexai: the slice's %s is %s; every device allocation and launch "
                            "fails (fail closed)", lpath, why);
                cfg->fail_closed = 1;
            }
        }
    } else if (env_limits(cfg)) {
        cfg->enforce = 1;
        if (env_region && *env_region)
            copy_str(cfg->region_path, sizeof cfg->region_path, env_region);
        else
            snprintf(cfg->region_path, sizeof cfg->region_path, "/dev/shm/flexai-region-%d-%llu",
                     (int)getpid(), (unsigned long long)flexai_now_ns(CLOCK_REALTIME));
    }
    if (!cfg->enforce)
        return;
    cfg->may_create_region = 1;
    const char *ctx = getenv("FLEXAI_CONTEXT_MEMORY");
    if (ctx && *ctx) {
        int64_t b;
        int s;
        if (flexai_parse_size(ctx, &b, &s) == 0 && b > 0)
            cfg->context_memory = b;
    }
    pthread_atfork(NULL, NULL, child_after_fork);
}

/* Outside containers: name the program tree's region before any child can be started. */
__attribute__((constructor)) static void flexai_constructor(void)
{
    if (getenv("FLEXAI_REGION"))
        return;
    const char *names[] = {"FLEXAI_MEMORY", "FLEXAI_FRACTION", "FLEXAI_COMPUTE", "FLEXAI_DEVICE"};
    int any = 0;
    for (unsigned i = 0; i < sizeof names / sizeof names[0]; i++) {
        const char *v = getenv(names[i]);
        any |= v != NULL && *v != '\0';
    }
    const char *slice = getenv("FLEXAI_SLICE_FILE");
    if (!any || access(DEFAULT_SLICE_FILE, F_OK) == 0 || (slice && *slice && access(slice, F_OK) == 0))
        return; /* in a container the runtime's slice and region apply */
    char path[128];
    snprintf(path, sizeof path, "/dev/shm/flexai-region-%d-%llu", (int)getpid(),
             (unsigned long long)flexai_now_ns(CLOCK_REALTIME));
    setenv("FLEXAI_REGION", path, 0);
}

/* ---- attaching ------------------------------------------------------------------------- */

static uint64_t proc_start_time(void)
{
    char buf[1024];
    int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    if (!p)
        return 0;
    /* field 3 (state) follows ") "; starttime is field 22 */
    int field = 2;
    for (; *p && field < 22; p++)
        if (*p == ' ')
            field++;
    return strtoull(p, NULL, 10);
}

static void fill_header(struct flexai_region *r, const struct flexai_config *cfg,
                        int64_t card_memory, int64_t limit, uint32_t flags)
{
    r->version = FLEXAI_REGION_VERSION;
    r->size = (uint32_t)sizeof *r;
    r->flags = flags;
    copy_str(r->slice_id, sizeof r->slice_id, cfg->slice_id);
    copy_str(r->device_uuid, sizeof r->device_uuid, cfg->device_uuid);
    r->device_index = cfg->device_index;
    r->card_memory = card_memory;
    r->memory_limit = limit;
    r->context_memory = cfg->context_memory;
    r->created_ns = flexai_now_ns(CLOCK_REALTIME);
    r->compute.share.limit_percent = (uint32_t)cfg->compute_limit;
    r->compute.share.mode = FLEXAI_MODE_WORK_CONSERVING;
    r->compute.share.priority = (uint32_t)cfg->priority;
}

static int valid_header(const struct flexai_region *r)
{
    return __atomic_load_n(&r->magic, __ATOMIC_ACQUIRE) == FLEXAI_REGION_MAGIC &&
           r->version == FLEXAI_REGION_VERSION && r->size == sizeof *r;
}

/* Open (or create) the region file. Returns the mapping; *fd_out the O_CLOEXEC fd.
 * NULL with errno: ENOENT/EACCES etc.; EAGAIN: needs the card's memory, not known yet. */
static struct flexai_region *open_region(const struct flexai_config *cfg, int *fd_out)
{
    const char *path = cfg->region_path;
    int created = 0;
    int fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0 && errno == ENOENT && cfg->may_create_region) {
        int64_t limit = cfg->memory_limit, total = 0;
        if (limit == -1) {
            total = flexai_vendor_card_memory();
            if (total <= 0) {
                errno = EAGAIN;
                return NULL;
            }
            limit = total * cfg->memory_share / 100;
        }
        /* Create under a temporary name and link it in place: a reader never sees a
         * half-written header. */
        char tmp[600];
        snprintf(tmp, sizeof tmp, "%s.%d.tmp", path, (int)getpid());
        int tfd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0666);
        if (tfd >= 0) {
            fchmod(tfd, 0666);
            struct flexai_region *r = NULL;
            if (ftruncate(tfd, (off_t)sizeof *r) == 0) {
                r = mmap(NULL, sizeof *r, PROT_READ | PROT_WRITE, MAP_SHARED, tfd, 0);
                if (r == MAP_FAILED)
                    r = NULL;
            }
            if (r) {
                fill_header(r, cfg, total, limit,
                            cfg->from_slice_file ? 0 : FLEXAI_REGION_F_CREATED_BY_LIBRARY);
                __atomic_store_n(&r->magic, FLEXAI_REGION_MAGIC, __ATOMIC_RELEASE);
                munmap(r, sizeof *r);
                if (link(tmp, path) == 0)
                    created = 1;
            }
            unlink(tmp);
            close(tfd);
        }
        (void)created;
        fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
    }
    if (fd < 0)
        return NULL;
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size < (off_t)sizeof(struct flexai_region)) {
        close(fd);
        errno = EINVAL;
        return NULL;
    }
    struct flexai_region *r = mmap(NULL, sizeof *r, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (r == MAP_FAILED) {
        close(fd);
        return NULL;
    }
    if (!valid_header(r)) {
        munmap(r, sizeof *r);
        close(fd);
        errno = EPROTO;
        return NULL;
    }
    *fd_out = fd;
    return r;
}

/* When the slice's region cannot be used: a private region in this process, so the
 * process still keeps to the limit (fail closed), with one line on stderr. */
static struct flexai_region *private_region(const struct flexai_config *cfg, const char *why)
{
    int64_t limit = cfg->memory_limit, total = 0;
    if (limit == -1) {
        total = flexai_vendor_card_memory();
        if (total <= 0)
            return NULL;
        limit = total * cfg->memory_share / 100;
    }
    struct flexai_region *r = mmap(NULL, sizeof *r, PROT_READ | PROT_WRITE,
                                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (r == MAP_FAILED)
        return NULL;
    fill_header(r, cfg, total, limit, FLEXAI_REGION_F_CREATED_BY_LIBRARY);
    r->magic = FLEXAI_REGION_MAGIC;
    flexai_warn("flexai: cannot use the slice region %s (%s); this process keeps to the "
                "limit on its own", cfg->region_path, why);
    return r;
}

struct flexai_region *flexai_attach_slow(void)
{
    if (!flexai_enforcing())
        return NULL;
    struct flexai_process *P = &flexai_P;
    pthread_mutex_lock(&P->attach_lock);
    struct flexai_region *r = P->region;
    if (r != NULL)
        goto out;
    if (P->cfg.fail_closed)
        goto out;
    int fd = -1;
    r = open_region(&P->cfg, &fd);
    if (r == NULL) {
        if (errno == EAGAIN)
            goto out; /* the card's memory is not known yet: try again on the next call */
        char why[64];
        snprintf(why, sizeof why, "%s", errno == EPROTO ? "not a region of this version"
                                                        : strerror(errno));
        if (P->cfg.in_container) {
            /* a private region per process would give each process the whole slice */
            flexai_warn("flexai: cannot use the slice region %s (%s); every device allocation "
                        "and launch of this process fails (fail closed)", P->cfg.region_path, why);
            P->cfg.fail_closed = 1;
            goto out;
        }
        r = private_region(&P->cfg, why);
        if (r == NULL)
            goto out;
        fd = -1;
    }
    if (flexai_region_init_lock(r) != 0) {
        flexai_warn("flexai: the lock of region %s is broken", P->cfg.region_path);
    }
    pid_t pid = getpid();
    int slot = fd >= 0 ? flexai_region_claim_slot(r, fd, pid) : 0;
    if (slot < 0) {
        flexai_warn("flexai: all %d process slots of region %s are taken; this process "
                    "cannot allocate device memory", FLEXAI_MAX_PROCS, P->cfg.region_path);
        slot = -1;
    }
    if (fd < 0) {
        struct flexai_proc *s = &r->procs[0];
        s->pid = pid;
    }
    if (slot >= 0) {
        struct flexai_proc *s = &r->procs[slot];
        s->start_time = proc_start_time();
        s->attached_ns = flexai_now_ns(CLOCK_REALTIME);
    }
    P->region_fd = fd;
    P->slot = slot;
    P->me = slot >= 0 ? &r->procs[slot] : NULL;
    __atomic_store_n(&P->region, r, __ATOMIC_RELEASE);
out:
    pthread_mutex_unlock(&P->attach_lock);
    return r;
}

/* In the child of fork(): it is a new process and must own its own slot. The parent's OFD
 * lock is shared through the inherited descriptor, so close it here (the parent's lock
 * stays: the parent holds the description too) and attach again on first use. */
static void child_after_fork(void)
{
    struct flexai_process *P = &flexai_P;
    if (P->region_fd >= 0) {
        close(P->region_fd);
        if (P->region)
            munmap(P->region, sizeof *P->region);
    }
    P->region_fd = -1;
    P->region = NULL;
    P->me = NULL;
    P->slot = -1;
    P->held = 0; /* the parent's allocations are the parent's, and so are its leases (they
                    belong to the open file description the parent keeps) */
    memset(&P->lease, 0, sizeof P->lease);
    pthread_mutex_init(&P->attach_lock, NULL);
    flexai_sizemap_after_fork();
}
