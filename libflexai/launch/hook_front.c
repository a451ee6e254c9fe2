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
    const char *why = NULL;
    char *reply = flexai_daemon_call(path, msg, len, &why);
    if (!reply) {
        fprintf(stderr, "flexai-hook: could not release the slice: flexaid %s; "
                        "reconciliation will release it once flexaid runs\n", why);
    } else if (strncmp(reply, "{\"ok\":true", 10) != 0) {
        fprintf(stderr, "flexai-hook: flexaid did not release the slice: %s\n", reply);
    }
    free(reply);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "poststop") == 0)
        return poststop();
    flexai_exec_python("flexai-hook", argv);
}
