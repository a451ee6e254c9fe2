#include "launch.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#define DEFAULT_RUNTIME_CONFIG "/etc/flexai/runtime.json"
#define MAX_CONFIG (64 << 20)

const char *const flexai_global_value_flags[] = {
    "--root", "--log", "--log-format", "--log-level", "--criu", "--rootless", "--cgroup-manager", NULL};
const char *const flexai_create_value_flags[] = {
    "--bundle", "-b", "--console-socket", "--pid-file", "--preserve-fds", NULL};

int flexai_takes_value(const char *arg, const char *const *flags)
{
    if (strchr(arg, '='))
        return 0;
    for (; *flags; flags++)
        if (strcmp(arg, *flags) == 0)
            return 1;
    return 0;
}

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

char *flexai_slurp(const char *path, size_t *len)
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
    char *raw = flexai_slurp(path, &len);
    if (!raw)
        return -1;
    /* a request (FLEXAI_* env, flexai.io/ annotations), or CDI devices named in cdi.k8s.io/
     * annotations, which flexai applies for engines that leave CDI to the runtime (a DRA
     * claim's); flexai_hook/oci/runtime.py has the same markers */
    int found = memmem(raw, len, "FLEXAI_", 7) || memmem(raw, len, "flexai.io/", 10) ||
                memmem(raw, len, "cdi.k8s.io/", 11);
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

int flexai_config_value(const char *raw, const char *wanted, char *out, size_t cap)
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
        if (strcmp(key, wanted) == 0) {
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

const char *flexai_runtime_config_path(void)
{
    const char *config = getenv("FLEXAI_RUNTIME_CONFIG");
    return config ? config : DEFAULT_RUNTIME_CONFIG;
}

int flexai_write_all(int fd, const char *buf, size_t len)
{
    while (len) {
        ssize_t w = write(fd, buf, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        buf += w;
        len -= (size_t)w;
    }
    return 0;
}

char *flexai_daemon_call(const char *path, const char *msg, size_t len, const char **why)
{
    return flexai_daemon_call_ms(path, msg, len, 30000, why);
}

char *flexai_daemon_call_ms(const char *path, const char *msg, size_t len, int timeout_ms, const char **why)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof addr.sun_path) {
        *why = "cannot be reached: its socket path is too long";
        return NULL;
    }
    strcpy(addr.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        *why = strerror(errno);
        return NULL;
    }
    struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        static char reason[256];
        snprintf(reason, sizeof reason, "is not reachable at %s (%s)", path, strerror(errno));
        *why = reason;
        close(fd);
        return NULL;
    }
    flexai_write_all(fd, msg, len); /* a refusal may close early: read the answer regardless */
    size_t cap = 1 << 16, got = 0;
    char *reply = malloc(cap);
    char *nl = NULL;
    while (reply && !nl) {
        if (got + 1 >= cap) {
            char *bigger = cap < (64u << 20) ? realloc(reply, cap * 2) : NULL;
            if (!bigger) {
                free(reply);
                reply = NULL;
                break;
            }
            reply = bigger;
            cap *= 2;
        }
        ssize_t r = read(fd, reply + got, cap - 1 - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        nl = memchr(reply + got, '\n', (size_t)r);
        got += (size_t)r;
    }
    close(fd);
    if (!reply || !nl) {
        *why = reply ? "did not answer" : "sent an answer too large to read";
        free(reply);
        return NULL;
    }
    *nl = 0;
    return reply;
}

int flexai_real_runtime(char *out, size_t cap)
{
    char name[PATH_MAX] = "runc";
    const char *env = getenv("FLEXAI_RUNTIME");
    if (env && *env) {
        if (strlen(env) >= sizeof name)
            return -1;
        strcpy(name, env);
    } else {
        size_t len;
        char *raw = flexai_slurp(flexai_runtime_config_path(), &len);
        if (raw) {
            int got = strlen(raw) == len ? flexai_config_value(raw, "runtime", name, sizeof name) : -1;
            free(raw);
            if (got < 0)
                return -1;
        } else if (errno != ENOENT) {
            return -1;
        }
    }
    return flexai_resolve_runtime(name, out, cap);
}

int flexai_resolve_runtime(const char *name, char *out, size_t cap)
{
    char self[PATH_MAX];
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
