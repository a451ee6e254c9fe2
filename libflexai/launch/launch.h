/* Shared by the two front-door programs (runtime_front.c, hook_front.c): finding the real
 * OCI runtime and handing over to the Python implementation installed beside them. */
#ifndef FLEXAI_LAUNCH_H
#define FLEXAI_LAUNCH_H

#include <stddef.h>

/* runc/crun flags that take a value (flexai_hook/oci/argv.py keeps the same lists), NULL-ended:
 * global ones, and those of create/run. */
extern const char *const flexai_global_value_flags[];
extern const char *const flexai_create_value_flags[];
/* 1 when `arg` is one of `flags` written without "=value" (its value is the next argument). */
int flexai_takes_value(const char *arg, const char *const *flags);

/* exec "<this program's directory>/<name>-py" with the same arguments; never returns. */
__attribute__((noreturn)) void flexai_exec_python(const char *name, char **argv);

/* 1: the file mentions FLEXAI_ or flexai.io/; 0: it does not; -1: it could not be read. */
int flexai_file_mentions_flexai(const char *path);

/* Absolute path of the real runtime (FLEXAI_RUNTIME, else "runtime" in the runtime config,
 * else runc, searched on PATH, never this program). -1 when unsure: Python must decide. */
int flexai_real_runtime(char *out, size_t cap);

/* Absolute path of runtime `name` (a path, or a name searched on PATH; never this program).
 * 0, or -1 when it is not found. */
int flexai_resolve_runtime(const char *name, char *out, size_t cap);

/* write() until all of buf is written: 0, or -1 (errno set). */
int flexai_write_all(int fd, const char *buf, size_t len);

/* The whole file, NUL-terminated (*len without the NUL), or NULL (errno set). */
char *flexai_slurp(const char *path, size_t *len);

/* The runtime config's path: FLEXAI_RUNTIME_CONFIG, else /etc/flexai/runtime.json. */
const char *flexai_runtime_config_path(void);

/* The value of `key` in a runtime config that is a flat JSON object of plain strings.
 * 1: found, 0: absent, -1: the text is something this reader does not understand. */
int flexai_config_value(const char *raw, const char *key, char *out, size_t cap);

/* One request line to flexaid at `socket` and its one-line answer (malloc'd, NUL-terminated,
 * without the newline), or NULL with *why set to what follows "flexaid " in a message
 * ("is not reachable at PATH (reason)", "did not answer", ...). */
char *flexai_daemon_call(const char *socket, const char *msg, size_t len, const char **why);
/* The same, waiting at most `timeout_ms` for each send and each read (flexai_daemon_call: 30 s). */
char *flexai_daemon_call_ms(const char *socket, const char *msg, size_t len, int timeout_ms, const char **why);

/* flexai-runtime's sliced create/run without Python (prepare.c): flexaid edits config.json
 * (op "prepare"), then the real runtime runs as a child and the slice is released if it
 * fails. Returns only when that path cannot be taken (the caller hands over to Python);
 * otherwise exits with the real runtime's status, or execs it when nothing is requested. */
void flexai_prepare_and_run(int argc, char **argv, int sub, const char *bundle, const char *real);

#endif
