/* The memory budget the kernel keeps: leases of the slice's limit as file locks.
 *
 * The region's counters are shared memory every process of the container can write, so on
 * their own they bound honest processes only. Beside them each process holds an OFD write
 * lock on one byte per MiB it uses, inside a lock range of the region file as long as the
 * limit (FLEXAI_LEASE_BASE + unit). The kernel lets no two open file descriptions lock the
 * same byte, drops a process's locks when it dies, and lets nobody unlock another's: however
 * the region is forged, the processes of a slice together never hold more leases than the
 * limit has MiB. A tenant who takes leases with their own fcntl only shrinks their own slice.
 *
 * A process keeps two spare MiB after a free, so an allocate/free loop of up to 2 MiB costs no
 * system call; growing and trimming are a few fcntl calls, under the region lock (so the
 * threads of one process never race on its ranges). The first-fit search skips this
 * process's own ranges (its own locks never conflict with it) and splits around the first
 * conflicting lock the kernel reports.
 */
#include "flexai.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>

#define UNIT ((int64_t)1 << 20)

static int64_t units_for(int64_t bytes)
{
    return bytes <= 0 ? 0 : (bytes + UNIT - 1) / UNIT;
}

static int lock_range(int fd, int cmd, short type, int64_t start, int64_t len, struct flock *fl)
{
    memset(fl, 0, sizeof *fl);
    fl->l_type = type;
    fl->l_whence = SEEK_SET;
    fl->l_start = (off_t)(FLEXAI_LEASE_BASE + start);
    fl->l_len = (off_t)len;
    return fcntl(fd, cmd, fl);
}

static int add_range(struct flexai_lease *l, int64_t start, int64_t len)
{
    if (l->n > 0 && l->ranges[l->n - 1].start + l->ranges[l->n - 1].len == start) {
        l->ranges[l->n - 1].len += len;
    } else {
        if (l->n == FLEXAI_LEASE_RANGES)
            return -1;
        /* keep them sorted by start: the search walks the gaps between them */
        int i = l->n;
        while (i > 0 && l->ranges[i - 1].start > start) {
            l->ranges[i] = l->ranges[i - 1];
            i--;
        }
        l->ranges[i].start = start;
        l->ranges[i].len = len;
        l->n++;
    }
    l->units += len;
    return 0;
}

/* Takes up to `want` free units in [lo, hi); returns how many it took. */
static int64_t grab(struct flexai_lease *l, int fd, int64_t lo, int64_t hi, int64_t want, int depth)
{
    int64_t got = 0;
    while (lo < hi && got < want && depth < 1024) {
        int64_t len = hi - lo < want - got ? hi - lo : want - got;
        struct flock fl;
        if (lock_range(fd, F_OFD_SETLK, F_WRLCK, lo, len, &fl) == 0) {
            if (add_range(l, lo, len) != 0) {
                lock_range(fd, F_OFD_SETLK, F_UNLCK, lo, len, &fl);
                return got;
            }
            got += len;
            lo += len;
            continue;
        }
        if (errno != EAGAIN && errno != EACCES)
            return got;
        /* someone holds part of it: take what lies before their lock, then go past it */
        if (lock_range(fd, F_OFD_GETLK, F_WRLCK, lo, len, &fl) != 0)
            return got;
        if (fl.l_type == F_UNLCK)
            continue; /* freed meanwhile: try again */
        int64_t cs = (int64_t)fl.l_start - FLEXAI_LEASE_BASE;
        int64_t ce = fl.l_len == 0 ? hi : cs + (int64_t)fl.l_len;
        if (cs < lo)
            cs = lo;
        if (cs > lo)
            got += grab(l, fd, lo, cs, want - got, depth + 1);
        lo = ce > lo ? ce : lo + 1;
        depth++;
    }
    return got;
}

int flexai_lease_cover(struct flexai_lease *l, int fd, int64_t limit, int64_t held_bytes)
{
    int64_t need = units_for(held_bytes) - l->units;
    if (need <= 0 || fd < 0)
        return 0;
    int64_t space = units_for(limit);
    int64_t lo = 0;
    /* the gaps between this process's own ranges (sorted), then past the last one */
    for (int i = 0; i <= l->n && need > 0; i++) {
        int64_t hi = i < l->n ? l->ranges[i].start : space;
        int64_t next = i < l->n ? l->ranges[i].start + l->ranges[i].len : space;
        if (hi > lo) {
            int before = l->n;
            need -= grab(l, fd, lo, hi, need, 0);
            i += l->n - before; /* ranges added in this gap sort before ranges[i] */
        }
        lo = next;
    }
    return need > 0 ? -1 : 0;
}

void flexai_lease_trim(struct flexai_lease *l, int fd, int64_t held_bytes)
{
    /* two spare MiB: an allocate/free loop of up to 2 MiB makes no system call (aclrtMalloc
     * of 1 MiB takes 1 MiB + 32 bytes: two units) */
    int64_t keep = units_for(held_bytes) + 2;
    if (fd < 0 || l->units <= keep)
        return;
    while (l->n > 0 && l->units > keep) {
        struct flexai_lease_range *last = &l->ranges[l->n - 1];
        int64_t drop = l->units - keep < last->len ? l->units - keep : last->len;
        struct flock fl;
        if (lock_range(fd, F_OFD_SETLK, F_UNLCK, last->start + last->len - drop, drop, &fl) != 0)
            return;
        last->len -= drop;
        l->units -= drop;
        if (last->len == 0)
            l->n--;
    }
}
