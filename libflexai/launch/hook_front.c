/* flexai-hook's front door. `poststop` runs on every sliced container's exit and only has to
 * forward the OCI state on stdin to flexaid inside a release request (flexaid validates it),
 * so it is done here without starting Python. Every other stage (createContainer, --help)
 * goes to the Python implementation (flexai_hook/oci/hook.py).
 *
 * A state larger than FORWARD_MAX (a Kubernetes pod's annotations can reach megabytes, past
 * flexaid's 1 MiB line limit) is not forwarded: only its top-level "id", which is all that
 * flexaid needs. A release that meets no daemon (restarting), no answer, or an answer that
 * says "retry" (its file writer died) is tried again with a growing pause, for at most
 * FLEXAI_RELEASE_RETRY seconds (default RETRY_MS, well under the hook's 30 s timeout in the
 * spec); after that, reconciliation releases the slice.
 *
 * A poststop hook cannot stop anything: problems are reported on stderr, the exit is 0. */
#include "launch.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define FORWARD_MAX (64 << 10)  /* states up to this size go to flexaid whole */
#define MAX_STATE (64 << 20)    /* read no more than this; the id comes first in practice */
#define RETRY_MS 10000
#define TRY_TIMEOUT_MS 5000
#define DEFAULT_SOCKET "/run/flexai/flexaid.sock"

static const char head[] = "{\"op\":\"release\",\"state\":";

/* Reads stdin into *buf (grown as needed, at most MAX_STATE kept; the rest is drained so the
 * runtime writing it never meets a closed pipe). Returns the length kept. */
static size_t read_state(char **buf)
{
    size_t cap = 1 << 16, n = 0;
    char *p = malloc(cap);
    char sink[1 << 16];
    for (;;) {
        if (p && n == cap && cap < MAX_STATE) {
            char *bigger = realloc(p, cap * 2);
            if (bigger) {
                p = bigger;
                cap *= 2;
            }
        }
        int keep = p && n < cap;
        ssize_t r = keep ? read(0, p + n, cap - n) : read(0, sink, sizeof sink);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        if (keep)
            n += (size_t)r;
    }
    *buf = p;
    return p ? n : 0;
}

/* Past the JSON string starting at the quote `p`, or NULL if it does not end before `e` or
 * holds a raw control character (not JSON, and no newline may reach a request line). */
static const char *skip_string(const char *p, const char *e)
{
    for (p++; p < e; p++) {
        if (*p == '"')
            return p + 1;
        if ((unsigned char)*p < 0x20)
            return NULL;
        if (*p == '\\' && ++p == e)
            return NULL;
    }
    return NULL;
}

static const char *skip_space(const char *p, const char *e)
{
    while (p < e && (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r'))
        p++;
    return p;
}

/* The top-level "id" member's string token (quotes included) of the JSON object text at
 * [s, e), or NULL. Only strings and brackets are tracked: flexaid validates the id itself. */
static const char *top_level_id(const char *s, const char *e, size_t *len)
{
    int depth = 0, key_next = 0;
    for (const char *p = s; p < e;) {
        char c = *p;
        if (c == '"') {
            const char *end = skip_string(p, e);
            if (!end)
                return NULL;
            if (depth == 1 && key_next) {
                int is_id = end - p == 4 && memcmp(p, "\"id\"", 4) == 0;
                key_next = 0;
                end = skip_space(end, e);
                if (end == e || *end != ':')
                    return NULL;
                end = skip_space(end + 1, e);
                if (is_id) {
                    const char *v_end = end < e && *end == '"' ? skip_string(end, e) : NULL;
                    if (!v_end)
                        return NULL;
                    *len = (size_t)(v_end - end);
                    return end;
                }
            }
            p = end;
            continue;
        }
        if (c == '{' || c == '[')
            key_next = ++depth == 1 && c == '{';
        else if (c == '}' || c == ']')
            depth--;
        else if (c == ',' && depth == 1)
            key_next = 1;
        p++;
    }
    return NULL;
}

/* The release request for the state at [s, e), trimmed, into *msg (malloc'd); its length, or 0
 * with *why set when nothing can be released. */
static size_t release_request(const char *s, const char *e, char **msg, const char **why)
{
    if (e - s < 2 || *s != '{' || (e - s <= FORWARD_MAX && (e[-1] != '}' || memchr(s, '\n', (size_t)(e - s))))) {
        *why = "the OCI state on stdin is not a JSON object; nothing released";
        return 0;
    }
    const char *body = s;
    size_t body_len = (size_t)(e - s), id_len = 0;
    if (body_len > FORWARD_MAX) { /* only what flexaid needs: {"id":...} */
        const char *id = top_level_id(s, e, &id_len);
        if (!id) {
            *why = "the OCI state on stdin has no container id; nothing released";
            return 0;
        }
        body = id;
        body_len = id_len;
    }
    size_t hl = sizeof head - 1, len = 0;
    char *m = malloc(hl + body_len + 16);
    if (!m) {
        *why = "out of memory; nothing released";
        return 0;
    }
    memcpy(m, head, hl);
    len = hl;
    if (id_len) {
        memcpy(m + len, "{\"id\":", 6);
        len += 6;
    }
    memcpy(m + len, body, body_len);
    len += body_len;
    if (id_len)
        m[len++] = '}';
    m[len++] = '}';
    m[len++] = '\n';
    *msg = m;
    return len;
}

/* 1 when `reply` is a refusal worth trying again: flexaid's writer died or the ledger could
 * not be saved ("...; retry"), which a moment later may well succeed. */
static int retryable(const char *reply)
{
    if (strncmp(reply, "{\"ok\":false", 11) != 0)
        return 0;
    size_t n = strlen(reply);
    return (n >= 8 && memcmp(reply + n - 8, "retry\"}", 7) == 0) || strstr(reply, "cannot save its ledger");
}

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static long retry_budget_ms(void)
{
    const char *env = getenv("FLEXAI_RELEASE_RETRY");
    if (!env || !*env)
        return RETRY_MS;
    char *end;
    double seconds = strtod(env, &end);
    return *end || seconds < 0 || seconds > 25 ? RETRY_MS : (long)(seconds * 1000);
}

static int poststop(void)
{
    char *state = NULL;
    size_t n = read_state(&state);
    const char *s = state ? state : "", *e = s + n, *why = NULL;
    s = skip_space(s, e);
    while (e > s && (e[-1] == ' ' || e[-1] == '\n' || e[-1] == '\t' || e[-1] == '\r'))
        e--;
    char *msg = NULL;
    size_t len = release_request(s, e, &msg, &why);
    free(state);
    if (!len) {
        fprintf(stderr, "flexai-hook: %s\n", why);
        return 0;
    }

    const char *path = getenv("FLEXAI_SOCKET");
    if (!path || !*path)
        path = DEFAULT_SOCKET;
    long start = now_ms(), budget = retry_budget_ms(), pause = 50;
    int tries = 0;
    char *reply = NULL;
    for (;;) {
        long left = budget - (now_ms() - start);
        int timeout = (int)(left < TRY_TIMEOUT_MS ? (left > 100 ? left : 100) : TRY_TIMEOUT_MS);
        tries++;
        reply = flexai_daemon_call_ms(path, msg, len, timeout, &why);
        if (reply && !retryable(reply))
            break;
        if (now_ms() - start + pause >= budget)
            break;
        free(reply);
        reply = NULL;
        struct timespec ts = {.tv_sec = pause / 1000, .tv_nsec = (pause % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
            ;
        pause = pause * 2 > 1000 ? 1000 : pause * 2;
    }
    free(msg);
    if (!reply) {
        fprintf(stderr, "flexai-hook: could not release the slice: flexaid %s (%d tr%s); "
                        "reconciliation will release it once flexaid runs\n", why, tries, tries == 1 ? "y" : "ies");
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
