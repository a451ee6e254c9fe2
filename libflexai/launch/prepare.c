/* flexai-runtime's sliced create/run without starting Python.
 *
 * flexaid already runs and holds the rules (flexai_hook/oci/prepare.py): this file sends it the
 * bundle's config.json in a `prepare` request, writes back the edited config.json it answers
 * with, and runs the real runtime as a child so the slice can be released if the container
 * does not start (as flexai_hook/oci/runtime.py does). Whatever this file is unsure about -- an
 * unusual command line, a large config, no answer, any refusal, warnings to show -- it leaves
 * to the Python implementation by returning: that one redoes the work (reserving is idempotent
 * per container) and reports the problem with the engine's log conventions. A refusal is
 * handed over with it (FLEXAI_PREPARE_REFUSED), so that flexaid is not asked again: it would
 * log and count the same refusal twice. */
#include "launch.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define DEFAULT_SOCKET "/run/flexai/flexaid.sock"
#define MAX_SPEC (768 << 10) /* flexaid takes request lines up to 1 MiB */


/* The container id of create/run: the first argument after the subcommand that is not a
 * flag or a flag's value (flexai_hook/oci/argv.py has the same rule). */
static const char *container_id(int argc, char **argv, int sub)
{
    for (int i = sub + 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0)
            return i + 1 < argc ? argv[i + 1] : NULL;
        if (a[0] == '-' && a[1]) {
            if (flexai_takes_value(a, flexai_create_value_flags))
                i++;
            continue;
        }
        return a;
    }
    return NULL;
}

/* The global --root value (runc's state directory), or NULL. */
static const char *root_of(int sub, char **argv)
{
    const char *root = NULL;
    for (int i = 1; i < sub; i++) {
        if (strncmp(argv[i], "--root=", 7) == 0)
            root = argv[i] + 7;
        else if (strcmp(argv[i], "--root") == 0 && i + 1 < sub)
            root = argv[++i];
        else if (flexai_takes_value(argv[i], flexai_global_value_flags))
            i++;
    }
    return root;
}

/* A growing buffer for the request line. */
struct buf {
    char *p;
    size_t len, cap;
    int failed;
};

static void put(struct buf *b, const char *s, size_t n)
{
    if (b->failed)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = (b->len + n + 1) * 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->failed = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

static void puts_(struct buf *b, const char *s)
{
    put(b, s, strlen(s));
}

/* A JSON string. */
static void put_string(struct buf *b, const char *s)
{
    put(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char esc[8];
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            put(b, esc, 2);
        } else if (c < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", c);
            put(b, esc, 6);
        } else {
            put(b, (const char *)&c, 1);
        }
    }
    put(b, "\"", 1);
}

/* JSON text as one line: outside strings a newline is whitespace, and inside them it is
 * not allowed, so every CR/LF can become a space. NUL bytes: not JSON, refuse. */
static int put_json_line(struct buf *b, const char *text, size_t len)
{
    if (memchr(text, 0, len))
        return -1;
    size_t start = b->len;
    put(b, text, len);
    if (b->failed)
        return -1;
    for (size_t i = start; i < b->len; i++)
        if (b->p[i] == '\n' || b->p[i] == '\r')
            b->p[i] = ' ';
    return 0;
}

/* A JSON string at p (simple escapes; \\u only below 0x80) copied to out: the text after
 * it, or NULL when it is not one or does not fit. */
static const char *json_string(const char *p, char *out, size_t cap)
{
    if (*p++ != '"')
        return NULL;
    size_t n = 0;
    for (; *p && *p != '"'; p++) {
        char c = *p;
        if (c == '\\') {
            switch (*++p) {
            case '"': case '\\': case '/': c = *p; break;
            case 'n': c = '\n'; break;
            case 't': c = '\t'; break;
            case 'r': c = '\r'; break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'u': {
                unsigned v = 0;
                for (int i = 1; i <= 4; i++) {
                    char h = p[i];
                    int d = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10
                          : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
                    if (d < 0)
                        return NULL;
                    v = v * 16 + (unsigned)d;
                }
                if (v == 0 || v >= 0x80)
                    return NULL;
                c = (char)v;
                p += 4;
                break;
            }
            default:
                return NULL;
            }
        }
        if (n + 1 >= cap)
            return NULL;
        out[n++] = c;
    }
    if (*p != '"')
        return NULL;
    out[n] = 0;
    return p + 1;
}

static int absolute(const char *path, char *out, size_t cap)
{
    if (path[0] == '/')
        return (size_t)snprintf(out, cap, "%s", path) < cap ? 0 : -1;
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd))
        return -1;
    return (size_t)snprintf(out, cap, "%s/%s", cwd, path) < cap ? 0 : -1;
}

/* config.json replaced by `text` (same mode and owner), atomically. No fsync: after a host
 * crash the container is gone, and so is any use of its bundle. */
static int write_config(const char *path, const char *text, size_t len)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return -1;
    char tmp[PATH_MAX + 64];
    const char *slash = strrchr(path, '/');
    int dir_len = slash ? (int)(slash - path) : 1;
    if ((size_t)snprintf(tmp, sizeof tmp, "%.*s/.config.json.%d.tmp", dir_len, slash ? path : ".",
                         (int)getpid()) >= sizeof tmp)
        return -1;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return -1;
    int ok = flexai_write_all(fd, text, len) == 0 && fchmod(fd, st.st_mode & 07777) == 0 &&
             (fchown(fd, st.st_uid, st.st_gid) == 0 || errno == EPERM);
    ok = close(fd) == 0 && ok;
    if (!ok || rename(tmp, path) != 0) {
        unlink(tmp);
        return -1;
    }
    return 0;
}

static volatile sig_atomic_t child_pid;
static int interactive;

static void forward(int sig)
{
    /* a terminal's ^C already reaches the whole foreground group, the real runtime included */
    if (child_pid > 0 && !(sig == SIGINT && interactive))
        kill(child_pid, sig);
}

/* Runs the real runtime as a child, signals forwarded; its exit status (128+N if killed). */
static int run_child(const char *real, char **argv)
{
    static const int sigs[] = {SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGINT};
    interactive = isatty(0);
    struct sigaction sa = {.sa_handler = forward};
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++)
        sigaction(sigs[i], &sa, NULL);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        struct sigaction dfl = {.sa_handler = SIG_DFL};
        for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++)
            sigaction(sigs[i], &dfl, NULL);
        argv[0] = (char *)real;
        execv(real, argv);
        _exit(127);
    }
    child_pid = pid;
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return -1;
    return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
}

static void release(const char *socket, const char *id)
{
    struct buf m = {0};
    puts_(&m, "{\"op\":\"release\",\"container_id\":");
    put_string(&m, id);
    puts_(&m, "}\n");
    const char *why = NULL;
    char *reply = m.failed ? NULL : flexai_daemon_call(socket, m.p, m.len, &why);
    if (!reply)
        fprintf(stderr, "flexai: could not release the slice of %s: flexaid %s\n", id,
                why ? why : "could not be asked (out of memory)");
    else if (strncmp(reply, "{\"ok\":true", 10) != 0)
        fprintf(stderr, "flexai: could not release the slice of %s: %s\n", id, reply);
    free(reply);
    free(m.p);
}

#define REFUSAL_ENV "FLEXAI_PREPARE_REFUSED" /* flexai_hook/oci/runtime.py REFUSAL_ENV */
#define MAX_HANDED (64 << 10)

/* flexaid refused `id` (`reply`: its one-line JSON answer, ok false): hand the refusal to the
 * Python implementation as {"container_id":ID,"reply":REPLY}, which reports it without asking
 * again. Too large to hand over (never in practice): Python asks flexaid itself. */
static void hand_over_refusal(const char *id, const char *reply)
{
    struct buf m = {0};
    puts_(&m, "{\"container_id\":");
    put_string(&m, id);
    puts_(&m, ",\"reply\":");
    if (put_json_line(&m, reply, strlen(reply)) == 0)
        puts_(&m, "}");
    if (!m.failed && m.len <= MAX_HANDED)
        setenv(REFUSAL_ENV, m.p, 1);
    free(m.p);
}

static int is_refusal(const char *reply)
{
    /* flexaid's loop writes compact JSON; its accept-time refusals come from json.dumps */
    return strncmp(reply, "{\"ok\":false,", 12) == 0 || strncmp(reply, "{\"ok\": false,", 13) == 0;
}

void flexai_prepare_and_run(int argc, char **argv, int sub, const char *bundle, const char *real)
{
    const char *id = container_id(argc, argv, sub);
    if (!id)
        return;
    char hook[PATH_MAX + 32], self[PATH_MAX], real_abs[PATH_MAX], root_abs[PATH_MAX], config[PATH_MAX + 16];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0)
        return;
    self[n] = 0;
    *strrchr(self, '/') = 0;
    snprintf(hook, sizeof hook, "%s/flexai-hook", self);
    if (access(hook, X_OK) != 0 || absolute(real, real_abs, sizeof real_abs) != 0)
        return;
    const char *root = root_of(sub, argv);
    if (root && absolute(root, root_abs, sizeof root_abs) != 0)
        return;
    if ((size_t)snprintf(config, sizeof config, "%s/config.json", bundle) >= sizeof config)
        return;

    /* the runtime config: flat strings only (flexai_real_runtime checked), "socket" may be in it */
    size_t settings_len = 0;
    char *settings = flexai_slurp(flexai_runtime_config_path(), &settings_len);
    char socket_buf[PATH_MAX] = "";
    const char *socket = getenv("FLEXAI_SOCKET");
    if (settings && flexai_config_value(settings, "socket", socket_buf, sizeof socket_buf) < 0) {
        free(settings);
        return;
    }
    if (!socket || !*socket)
        socket = socket_buf[0] ? socket_buf : NULL;

    size_t spec_len = 0;
    char *spec = flexai_slurp(config, &spec_len);
    struct buf m = {0};
    if (spec && spec_len <= MAX_SPEC) {
        puts_(&m, "{\"op\":\"prepare\",\"container_id\":");
        put_string(&m, id);
        puts_(&m, ",\"runtime\":{\"binary\":");
        put_string(&m, real_abs);
        if (root) {
            puts_(&m, ",\"root\":");
            put_string(&m, root_abs);
        }
        puts_(&m, "},\"hook\":");
        put_string(&m, hook);
        if (socket) {
            puts_(&m, ",\"socket\":");
            put_string(&m, socket);
        }
        puts_(&m, ",\"settings\":");
        if (!settings)
            puts_(&m, "{}");
        else if (put_json_line(&m, settings, settings_len))
            m.failed = 1;
        puts_(&m, ",\"spec\":");
        if (put_json_line(&m, spec, spec_len))
            m.failed = 1;
        puts_(&m, "}\n");
    }
    free(spec);
    free(settings);
    if (!spec || spec_len > MAX_SPEC || m.failed) {
        free(m.p);
        return;
    }
    const char *path = socket ? socket : DEFAULT_SOCKET;
    const char *why = NULL;
    char *reply = flexai_daemon_call(path, m.p, m.len, &why);
    free(m.p);
    if (!reply)
        return;
    static const char none[] = "{\"ok\":true,\"spec\":null}", ok[] = "{\"ok\":true,";
    if (strcmp(reply, none) == 0) { /* no request after all (e.g. FLEXAI_ in a comment-like value) */
        free(reply);
        argv[0] = (char *)real;
        execv(real, argv);
        return;
    }
    size_t len = strlen(reply);
    if (strncmp(reply, ok, sizeof ok - 1) != 0 || reply[len - 1] != '}') {
        /* a refusal: Python says why, in the engine's log too */
        if (is_refusal(reply))
            hand_over_refusal(id, reply);
        free(reply);
        return;
    }
    /* flexaid's answer: "notice", "runtime" and "slice" (strings, all optional), then "spec" to
     * the end */
    char notice[2048] = "", chain[PATH_MAX] = "", chained[PATH_MAX], slice[16] = "";
    const char *p = reply + sizeof ok - 1;
    for (;;) {
        if (strncmp(p, "\"notice\":", 9) == 0)
            p = json_string(p + 9, notice, sizeof notice);
        else if (strncmp(p, "\"runtime\":", 10) == 0)
            p = json_string(p + 10, chain, sizeof chain);
        else if (strncmp(p, "\"slice\":", 8) == 0)
            p = json_string(p + 8, slice, sizeof slice);
        else
            break;
        if (!p || *p++ != ',') {
            free(reply);
            return; /* not an answer this file knows: Python redoes it */
        }
    }
    static const char spec_key[] = "\"spec\":";
    if (strncmp(p, spec_key, sizeof spec_key - 1) != 0 || (slice[0] && strcmp(slice, "none") != 0) ||
        (chain[0] && flexai_resolve_runtime(chain, chained, sizeof chained) != 0)) {
        free(reply);
        return; /* Python reports a chained runtime that is not there, or what it does not know */
    }
    const char *text = p + sizeof spec_key - 1;
    size_t text_len = (size_t)(reply + len - 1 - text); /* without the reply's closing brace */
    if (write_config(config, text, text_len) != 0) {
        free(reply);
        return; /* Python reserves again (the same slice) and reports what fails */
    }
    free(reply);
    if (strcmp(slice, "none") == 0 && !notice[0] && !chain[0]) {
        /* only the CDI devices its annotations name (a DRA claim's slice, reserved by the DRA
         * agent): nothing here to release if the start fails, so the real runtime takes over */
        argv[0] = (char *)real;
        execv(real, argv);
        fprintf(stderr, "flexai: cannot run %s: %s\n", real, strerror(errno));
        exit(1);
    }
    if (notice[0]) /* the container starts, without its card's driver: say what to run */
        fprintf(stderr, "flexai: %s\n", notice);
    if (chain[0]) /* no CDI spec for the card: the vendor's runtime adds the driver */
        real = chained;
    int status = run_child(real, argv);
    if (status != 0) {
        /* the container did not start or ended in error; poststop may not have run (runc skips
         * hooks when it fails before the container exists). Releasing twice is harmless. */
        release(path, id);
    }
    if (status < 0) {
        fprintf(stderr, "flexai: cannot run %s: %s\n", real, strerror(errno));
        exit(1);
    }
    exit(status);
}
