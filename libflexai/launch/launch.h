/* Shared by the two front-door programs (runtime_front.c, hook_front.c): finding the real
 * OCI runtime and handing over to the Python implementation installed beside them. */
#ifndef FLEXAI_LAUNCH_H
#define FLEXAI_LAUNCH_H

#include <stddef.h>

/* exec "<this program's directory>/<name>-py" with the same arguments; never returns. */
__attribute__((noreturn)) void flexai_exec_python(const char *name, char **argv);

/* 1: the file mentions FLEXAI_ or flexai.io/; 0: it does not; -1: it could not be read. */
int flexai_file_mentions_flexai(const char *path);

/* Absolute path of the real runtime (FLEXAI_RUNTIME, else "runtime" in the runtime config,
 * else runc, searched on PATH, never this program). -1 when unsure: Python must decide. */
int flexai_real_runtime(char *out, size_t cap);

#endif
