#include "launch.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DEFAULT_RUNTIME_CONFIG "/etc/flexai/runtime.json"
#define MAX_CONFIG (64 << 20)

static int self_path(char *out, size_t cap)
{
    ssize_t n = readlink("/proc/self/exe", out, cap - 1);
    if (n <= 0 || (size_t)n >= cap - 1)
        return -1;
    out[n] = 0;
    return 0;
}

void flexai_exec_python(const char *name, char **argv)
{
    char self[PATH_MAX], impl[PATH_MAX + 64];
    if (self_path(self, sizeof self) == 0) {
        char *slash = strrchr(self, '/');
        *slash = 0;
        snprintf(impl, sizeof impl, "%s/%s-py", self, name);
        argv[0] = impl;
        execv(impl, argv);
        fprintf(stderr, "flexai: cannot start %s (%s); reinstall flexai (bash packaging/install.sh)\n",
                impl, strerror(errno));
    } else {
        fprintf(stderr, "flexai: cannot find where %s is installed (/proc/self/exe: %s)\n", name,
                strerror(errno));
    }
    exit(1);
}

/* The whole file, NUL-terminated, or NULL. */
static char *slurp(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    struct stat st;
    char *buf = NULL;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size < MAX_CONFIG &&
        (buf = malloc((size_t)st.st_size + 1))) {
        size_t n = 0;
        while (n < (size_t)st.st_size) {
            ssize_t r = read(fd, buf + n, (size_t)st.st_size - n);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0)
                break;
            n += (size_t)r;
        }
        buf[n] = 0;
        *len = n;
    }
    close(fd);
    return buf;
}

int flexai_file_mentions_flexai(const char *path)
{
    size_t len = 0;
    char *raw = slurp(path, &len);
    if (!raw)
        return -1;
    int found = memmem(raw, len, "FLEXAI_", 7) || memmem(raw, len, "flexai.io/", 10);
    free(raw);
    return found;
}

static const char *skip_ws(const char *p)
{
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
        p++;
    return p;
}

/* A JSON string without escapes: copy it to out; NULL when it is anything else. */
static const char *plain_string(const char *p, char *out, size_t cap)
{
    if (*p != '"')
        return NULL;
    const char *end = strchr(++p, '"');
    if (!end || memchr(p, '\\', (size_t)(end - p)) || (size_t)(end - p) >= cap)
        return NULL;
    memcpy(out, p, (size_t)(end - p));
    out[end - p] = 0;
    return end + 1;
}

/* "runtime" from a flat JSON object of plain strings (what runtime.json is). 1: found,
 * 0: absent, -1: the file is something this reader does not understand. */
static int runtime_from_config(const char *raw, char *out, size_t cap)
{
    char key[64], value[PATH_MAX];
    int found = 0;
    const char *p = skip_ws(raw);
    if (*p++ != '{')
        return -1;
    p = skip_ws(p);
    if (*p == '}')
        return *skip_ws(p + 1) ? -1 : 0;
    for (;;) {
        if (!(p = plain_string(p, key, sizeof key)))
            return -1;
        p = skip_ws(p);
        if (*p++ != ':')
            return -1;
        if (!(p = plain_string(skip_ws(p), value, sizeof value)))
            return -1;
        if (strcmp(key, "runtime") == 0) {
            if (strlen(value) >= cap)
                return -1;
            strcpy(out, value);
            found = 1;
        }
        p = skip_ws(p);
        if (*p == ',') {
            p = skip_ws(p + 1);
            continue;
        }
        if (*p == '}' && !*skip_ws(p + 1))
            return found;
        return -1;
    }
}

static int usable(const char *candidate, const char *self_real)
{
    char real[PATH_MAX];
    struct stat st;
    if (access(candidate, X_OK) != 0 || stat(candidate, &st) != 0 || S_ISDIR(st.st_mode))
        return 0;
    if (!realpath(candidate, real))
        return 0;
    return strcmp(real, self_real) != 0; /* never ourselves: that would loop */
}

int flexai_real_runtime(char *out, size_t cap)
{
    char name[PATH_MAX] = "runc", self[PATH_MAX];
    const char *env = getenv("FLEXAI_RUNTIME");
    if (env && *env) {
        if (strlen(env) >= sizeof name)
            return -1;
        strcpy(name, env);
    } else {
        const char *config = getenv("FLEXAI_RUNTIME_CONFIG");
        size_t len;
        char *raw = slurp(config ? config : DEFAULT_RUNTIME_CONFIG, &len);
        if (raw) {
            int got = strlen(raw) == len ? runtime_from_config(raw, name, sizeof name) : -1;
            free(raw);
            if (got < 0)
                return -1;
        } else if (errno != ENOENT) {
            return -1;
        }
    }
    if (self_path(self, sizeof self) != 0)
        return -1;
    if (strchr(name, '/')) {
        if (!usable(name, self) || strlen(name) >= cap)
            return -1;
        strcpy(out, name);
        return 0;
    }
    const char *path = getenv("PATH");
    char dirs[8192];
    snprintf(dirs, sizeof dirs, "%s", path && *path ? path : "/usr/sbin:/usr/bin");
    for (char *save = NULL, *dir = strtok_r(dirs, ":", &save); dir; dir = strtok_r(NULL, ":", &save)) {
        char candidate[PATH_MAX + 256];
        if ((size_t)snprintf(candidate, sizeof candidate, "%s/%s", dir, name) >= sizeof candidate)
            continue;
        if (usable(candidate, self)) {
            if (strlen(candidate) >= cap)
                return -1;
            strcpy(out, candidate);
            return 0;
        }
    }
    return -1;
}
