/* What each live allocation of this process holds: (kind, pointer or handle) -> bytes, so a
 * free gives back exactly what its allocation took. Process-local (the region only holds
 * totals); thread-safe through 64 shards, each an open-addressing table under a spinlock
 * held for a few instructions. Not on the launch path. */
#include "flexai.h"

#include <sched.h>
#include <stdlib.h>
#include <string.h>

#define SHARDS 64
#define MIN_CAP 64

struct entry {
    uint64_t key;  /* 0: empty */
    int64_t bytes;
    int kind;
};

struct shard {
    int lock;
    uint32_t count;
    uint32_t cap;  /* power of two, or 0 before first use */
    struct entry *tab;
} __attribute__((aligned(64)));

/* Process-local cache of this process's allocations; reset in the child after fork. */
static struct shard shards[SHARDS];

static inline uint64_t mix(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

static inline void spin_lock(int *l)
{
    for (int spins = 0;; spins++) {
        if (!__atomic_load_n(l, __ATOMIC_RELAXED) && !__atomic_exchange_n(l, 1, __ATOMIC_ACQUIRE))
            return;
        if (spins > 100)
            sched_yield();
        else
            __builtin_ia32_pause();
    }
}

static inline void spin_unlock(int *l)
{
    __atomic_store_n(l, 0, __ATOMIC_RELEASE);
}

/* A device pointer or handle is never 0, so key 0 marks an empty entry; the kind is kept
 * beside the key, so equal values of different kinds never meet. */
static int grow(struct shard *s)
{
    uint32_t cap = s->cap ? s->cap * 2 : MIN_CAP;
    struct entry *tab = calloc(cap, sizeof *tab);
    if (tab == NULL)
        return -1;
    for (uint32_t i = 0; i < s->cap; i++) {
        struct entry *e = &s->tab[i];
        if (e->key == 0)
            continue;
        uint32_t j = (uint32_t)mix(e->key ^ (uint64_t)e->kind << 56) & (cap - 1);
        while (tab[j].key)
            j = (j + 1) & (cap - 1);
        tab[j] = *e;
    }
    free(s->tab);
    s->tab = tab;
    s->cap = cap;
    return 0;
}

int flexai_sizemap_put(int kind, uint64_t key, int64_t bytes)
{
    if (key == 0)
        return -1;
    uint64_t h = mix(key ^ (uint64_t)kind << 56);
    struct shard *s = &shards[h & (SHARDS - 1)];
    spin_lock(&s->lock);
    if ((s->count + 1) * 2 > s->cap && grow(s) != 0) {
        spin_unlock(&s->lock);
        return -1;
    }
    uint32_t mask = s->cap - 1, i = (uint32_t)h & mask;
    while (s->tab[i].key && !(s->tab[i].key == key && s->tab[i].kind == kind))
        i = (i + 1) & mask;
    if (s->tab[i].key == 0)
        s->count++;
    s->tab[i].key = key;
    s->tab[i].kind = kind;
    s->tab[i].bytes = bytes;
    spin_unlock(&s->lock);
    return 0;
}

int64_t flexai_sizemap_take(int kind, uint64_t key)
{
    if (key == 0)
        return -1;
    uint64_t h = mix(key ^ (uint64_t)kind << 56);
    struct shard *s = &shards[h & (SHARDS - 1)];
    spin_lock(&s->lock);
    if (s->cap == 0) {
        spin_unlock(&s->lock);
        return -1;
    }
    uint32_t mask = s->cap - 1, i = (uint32_t)h & mask;
    while (s->tab[i].key && !(s->tab[i].key == key && s->tab[i].kind == kind))
        i = (i + 1) & mask;
    if (s->tab[i].key == 0) {
        spin_unlock(&s->lock);
        return -1;
    }
    int64_t bytes = s->tab[i].bytes;
    /* Backward-shift deletion keeps every probe chain unbroken without tombstones. */
    uint32_t hole = i, j = i;
    for (;;) {
        j = (j + 1) & mask;
        struct entry *e = &s->tab[j];
        if (e->key == 0)
            break;
        uint32_t home = (uint32_t)mix(e->key ^ (uint64_t)e->kind << 56) & mask;
        /* move e into the hole if its home is not in (hole, j] cyclically */
        if (((j - home) & mask) >= ((j - hole) & mask)) {
            s->tab[hole] = *e;
            hole = j;
        }
    }
    memset(&s->tab[hole], 0, sizeof s->tab[hole]);
    s->count--;
    spin_unlock(&s->lock);
    return bytes;
}

void flexai_sizemap_after_fork(void)
{
    /* The child holds none of the parent's device allocations (CUDA does not survive
     * fork); forget them and free any lock another parent thread held at fork time. */
    for (int i = 0; i < SHARDS; i++) {
        free(shards[i].tab);
        memset(&shards[i], 0, sizeof shards[i]);
    }
}
