/* What the core needs from the vendor front ends, behind one small table.
 *
 * The core (this folder) never calls a function of cuda/, nvml/ or acl/: each front end
 * registers a struct flexai_vendor at load time, and the core asks the registered ones in
 * slot order. A third vendor adds a slot and a file of its own; no core file changes.
 * The table is written only by load-time constructors (before any thread of the program
 * exists) and read-only after that.
 */
#include "flexai.h"

static const struct flexai_vendor *vendors[FLEXAI_VENDOR_SLOTS];

/* CLOCK_MONOTONIC_COARSE of the next periodic overhead refresh (flexai_overhead_tick);
 * front ends with an overhead_refresh move it on. */
uint64_t flexai_overhead_next_ns;

void flexai_vendor_register(enum flexai_vendor_slot slot, const struct flexai_vendor *v)
{
    if ((unsigned)slot < FLEXAI_VENDOR_SLOTS)
        vendors[slot] = v;
}

int64_t flexai_vendor_card_memory(void)
{
    for (int i = 0; i < FLEXAI_VENDOR_SLOTS; i++) {
        const struct flexai_vendor *v = vendors[i];
        int64_t total = v && v->card_memory ? v->card_memory() : 0;
        if (total > 0)
            return total;
    }
    return 0;
}

void flexai_vendor_overhead(int force)
{
    int any = 0;
    for (int i = 0; i < FLEXAI_VENDOR_SLOTS; i++) {
        const struct flexai_vendor *v = vendors[i];
        if (v && v->overhead_refresh) {
            v->overhead_refresh(force);
            any = 1;
        }
    }
    if (!any) /* nothing to settle here: the allocation path stops asking */
        __atomic_store_n(&flexai_overhead_next_ns, UINT64_MAX, __ATOMIC_RELAXED);
}
