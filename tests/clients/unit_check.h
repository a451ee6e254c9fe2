/* CHECK for the pure-function unit checks in tests/clients (ctl_queue_test.c, ctl_wait_test.c):
 * prints the first failed condition and makes main return 1. */
#ifndef FLEXAI_UNIT_CHECK_H
#define FLEXAI_UNIT_CHECK_H

#include <stdio.h>

#define CHECK(cond)                                                                           \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            printf("failed: %s (line %d)\n", #cond, __LINE__);                                \
            return 1;                                                                         \
        }                                                                                     \
    } while (0)

#endif
