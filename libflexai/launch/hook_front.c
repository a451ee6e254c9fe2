/* flexai-hook's front door. `poststop` runs on every sliced container's exit and only has to
 * forward the OCI state on stdin to flexaid inside a release request (flexaid validates it),
 * so it is done here without starting Python. Every other stage (createContainer, --help)
 * goes to the Python implementation (flexai_hook/hook.py).
 *
 * A poststop hook cannot stop anything: problems are reported on stderr, the exit is 0. */
#include "launch.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_STATE (1 << 20)
#define DEFAULT_SOCKET "/run/flexai/flexaid.sock"

static size_t read_all(int fd, char *buf, size_t cap)
{
    size_t n = 0;
    while (n < cap) {
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    return n;
}

static int write_all(int fd, const char *buf, size_t len)
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

static int poststop(void)
{
    static char msg[MAX_STATE + 64];
    static const char head[] = "{\"op\":\"release\",\"state\":";
    size_t hl = sizeof head - 1;
    memcpy(msg, head, hl);
    size_t n = read_all(0, msg + hl, MAX_STATE);
    char *s = msg + hl, *e = s + n;
    while (s < e && (*s == ' ' || *s == '\n' || *s == '\t' || *s == '\r'))
        s++;
    while (e > s && (e[-1] == ' ' || e[-1] == '\n' || e[-1] == '\t' || e[-1] == '\r'))
        e--;
    if (e - s < 2 || *s != '{' || e[-1] != '}' || memchr(s, '\n', (size_t)(e - s))) {
        fputs("flexai-hook: the OCI state on stdin is not a JSON object; nothing released\n", stderr);
        return 0;
    }
    memmove(msg + hl, s, (size_t)(e - s));
    size_t len = hl + (size_t)(e - s);
    msg[len++] = '}';
    msg[len++] = '\n';

    const char *path = getenv("FLEXAI_SOCKET");
    if (!path || !*path)
        path = DEFAULT_SOCKET;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof addr.sun_path) {
        fprintf(stderr, "flexai-hook: could not release the slice: socket path %s is too long\n", path);
        return 0;
    }
    strcpy(addr.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct timeval tv = {.tv_sec = 10};
    if (fd >= 0) {
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    }
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        fprintf(stderr, "flexai-hook: could not release the slice: flexaid is not reachable at %s (%s); "
                        "reconciliation will release it once flexaid runs\n", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return 0;
    }
    write_all(fd, msg, len); /* a refusal may close early: read the answer regardless */
    char reply[4096];
    size_t got = 0;
    while (got < sizeof reply - 1 && !memchr(reply, '\n', got)) { /* one reply line */
        ssize_t r = read(fd, reply + got, sizeof reply - 1 - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    reply[got] = 0;
    if (got == 0) {
        fprintf(stderr, "flexai-hook: could not release the slice: flexaid at %s did not answer\n", path);
    } else if (strncmp(reply, "{\"ok\":true", 10) != 0) {
        char *nl = strchr(reply, '\n');
        if (nl)
            *nl = 0;
        fprintf(stderr, "flexai-hook: flexaid did not release the slice: %s\n", reply);
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "poststop") == 0)
        return poststop();
    flexai_exec_python("flexai-hook", argv);
}
