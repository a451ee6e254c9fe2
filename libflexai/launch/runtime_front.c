/* flexai-runtime's front door: engines call the runtime 5-10 times per container (create,
 * start, state, kill, delete, ...), and only `create`/`run` of a config.json that mentions
 * flexai can need Python. Everything else is exec'd straight into the real runtime here, with
 * the argv unchanged, so a container without a request pays one exec instead of a Python
 * start per call. Anything this file is unsure about goes to the Python implementation
 * (flexai_hook/runtime.py), which knows the full rules and reports errors properly. */
#include "launch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* runc/crun global flags that take a value (argv.py keeps the same list). */
static const char *const global_value_flags[] = {
    "--root", "--log", "--log-format", "--log-level", "--criu", "--rootless", "--cgroup-manager", NULL};
static const char *const create_value_flags[] = {
    "--bundle", "-b", "--console-socket", "--pid-file", "--preserve-fds", NULL};

static int takes_value(const char *arg, const char *const *flags)
{
    if (strchr(arg, '='))
        return 0;
    for (; *flags; flags++)
        if (strcmp(arg, *flags) == 0)
            return 1;
    return 0;
}

/* Index of the subcommand in argv (argc if none). */
static int subcommand_index(int argc, char **argv)
{
    int i = 1;
    while (i < argc && argv[i][0] == '-' && strcmp(argv[i], "-") != 0) {
        if (takes_value(argv[i], global_value_flags))
            i++;
        i++;
    }
    return i;
}

/* The bundle of a create/run: --bundle X, --bundle=X, -b X, else the current directory.
 * Returns NULL when the command line is not one this file understands. */
static const char *bundle_of(int argc, char **argv, int sub)
{
    const char *bundle = ".";
    for (int i = sub + 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0)
            break;
        if (strncmp(a, "--bundle=", 9) == 0)
            bundle = a + 9;
        else if ((strcmp(a, "--bundle") == 0 || strcmp(a, "-b") == 0)) {
            if (i + 1 >= argc)
                return NULL;
            bundle = argv[++i];
        } else if (a[0] == '-' && takes_value(a, create_value_flags))
            i++;
    }
    return bundle;
}

int main(int argc, char **argv)
{
    int sub = subcommand_index(argc, argv);
    if (sub < argc && (strcmp(argv[sub], "create") == 0 || strcmp(argv[sub], "run") == 0)) {
        const char *bundle = bundle_of(argc, argv, sub);
        if (!bundle)
            flexai_exec_python("flexai-runtime", argv);
        char path[4096];
        if ((size_t)snprintf(path, sizeof path, "%s/config.json", bundle) >= sizeof path)
            flexai_exec_python("flexai-runtime", argv);
        int found = flexai_file_mentions_flexai(path);
        if (found != 0) /* a request, or a config we could not read: Python decides */
            flexai_exec_python("flexai-runtime", argv);
    }
    char real[4096];
    if (flexai_real_runtime(real, sizeof real) != 0)
        flexai_exec_python("flexai-runtime", argv); /* it names the problem */
    argv[0] = real;
    execv(real, argv);
    flexai_exec_python("flexai-runtime", argv);
}
