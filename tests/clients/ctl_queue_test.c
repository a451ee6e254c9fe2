/* flexai_ctl_may_queue and the launch estimates it rests on (libflexai/core/controller.c), as pure
 * functions: prints "ok" or the first failed check. Built and run by test_compute_controller.py. */
#include <stdio.h>
#include <string.h>

#include "controller.h"
#include "unit_check.h"

int main(void)
{
    static struct flexai_board b;
    static struct flexai_region r;
    struct flexai_ctl_proc p;
    memset(&p, 0, sizeof p);
    p.slot = -1; /* charge() then only feeds the estimates */
    r.compute.share.limit_percent = 50;
    const uint64_t cap = FLEXAI_CTL_INFLIGHT_NS, us = 1000;

    /* nothing measured yet: one launch, counted as a whole cap */
    CHECK(flexai_ctl_may_queue(&p, cap));
    p.inflight_launches = 1;
    CHECK(!flexai_ctl_may_queue(&p, cap));
    CHECK(flexai_ctl_may_queue(&p, FLEXAI_CTL_NO_CAP)); /* alone: the driver's queue bounds it */

    /* one 50 us launch measured: still learning, so two at most although 2 ms would hold 40 */
    flexai_ctl_charge(&b, &r.compute, &r.compute.share, &p, 50 * us, 1, 1);
    p.inflight_launches = 1;
    CHECK(flexai_ctl_may_queue(&p, cap));
    p.inflight_launches = 2;
    CHECK(!flexai_ctl_may_queue(&p, cap));

    /* learnt: 50 us kernels fill the 2 ms cap */
    for (int i = 0; i < FLEXAI_CTL_LEARN_LAUNCHES; i++)
        flexai_ctl_charge(&b, &r.compute, &r.compute.share, &p, 50 * us, 1, 1);
    p.inflight_launches = 2;
    CHECK(flexai_ctl_may_queue(&p, cap));
    p.inflight_launches = 39;
    CHECK(flexai_ctl_may_queue(&p, cap));
    p.inflight_launches = 40;
    CHECK(!flexai_ctl_may_queue(&p, cap));

    /* one 20 ms kernel among them: queued work is counted at the longest one lately */
    flexai_ctl_charge(&b, &r.compute, &r.compute.share, &p, 20000 * us, 1, 1);
    p.inflight_launches = 1;
    CHECK(flexai_ctl_inflight_ns(&p) >= 20000 * us);
    CHECK(!flexai_ctl_may_queue(&p, cap));
    /* ... and forgotten after enough short ones (decays by 1/8 per measurement) */
    for (int i = 0; i < 64; i++)
        flexai_ctl_charge(&b, &r.compute, &r.compute.share, &p, 50 * us, 1, 1);
    CHECK(flexai_ctl_may_queue(&p, cap));

    /* the turn order key: virtual time plus half a turn's virtual cost */
    struct flexai_board_slot s;
    memset(&s, 0, sizeof s);
    s.vtime = 1000 * us;
    CHECK(flexai_ctl_key_of(&s, 5) == 1000 * us + FLEXAI_CTL_QUANTUM_NS * 100 / 5 / 2); /* nothing measured */
    s.turn_cost = 400000 * us; /* a 20 ms kernel at 5 % */
    CHECK(flexai_ctl_key_of(&s, 5) == 201000 * us);
    printf("ok\n");
    return 0;
}
