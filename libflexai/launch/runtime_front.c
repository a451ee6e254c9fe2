/* flexai-runtime's front door: engines call the runtime 5-10 times per container (create,
 * start, state, kill, delete, ...), and only `create`/`run` of a config.json that mentions
 * flexai is about a slice. Everything else is exec'd straight into the real runtime here, with
 * the argv unchanged, so a container without a request pays one exec instead of a Python
 * start per call; a sliced create/run asks flexaid to prepare the bundle (prepare.c). Anything
 * this file is unsure about goes to the Python implementation (flexai_hook/oci/runtime.py), which
 * knows the full rules and reports errors properly. */
#include "launch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>


/* Index of the subcommand in argv (argc if none). */
static int subcommand_index(int argc, char **argv)
{
    int i = 1;
    while (i < argc && argv[i][0] == '-' && strcmp(argv[i], "-") != 0) {
        if (flexai_takes_value(argv[i], flexai_global_value_flags))
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
        } else if (a[0] == '-' && flexai_takes_value(a, flexai_create_value_flags))
            i++;
    }
    return bundle;
}

/* `--flexai-runtime=PATH` before everything else (dockerd's runtimeArgs, written by `flexai
 * install docker --default` when it replaced another default runtime such as nvidia): the real
 * runtime to run, as FLEXAI_RUNTIME would say. Taken off the argv, which the real runtime gets
 * otherwise unchanged. Returns the new argc. */
static int take_runtime_flag(int argc, char **argv)
{
    static const char flag[] = "--flexai-runtime=";
    while (argc > 1 && strncmp(argv[1], flag, sizeof flag - 1) == 0) {
        if (argv[1][sizeof flag - 1])
            setenv("FLEXAI_RUNTIME", argv[1] + sizeof flag - 1, 1);
        memmove(&argv[1], &argv[2], (size_t)(argc - 1) * sizeof *argv); /* with the NULL */
        argc--;
    }
    return argc;
}

/* `flexai-runtime`, `--help`, `-h`, `--version`, `-v` alone (flexai_hook/oci/argv.py about()):
 * flexai answers those itself (flexai_hook/oci/about.py), in Python: rare calls, one text. */
static int asks_about(int argc, char **argv)
{
    static const char *const flags[] = {"--help", "-h", "--version", "-v"};
    if (argc == 1)
        return 1;
    for (size_t i = 0; argc == 2 && i < sizeof flags / sizeof *flags; i++)
        if (strcmp(argv[1], flags[i]) == 0)
            return 1;
    return 0;
}

int main(int argc, char **argv)
{
    argc = take_runtime_flag(argc, argv);
    if (asks_about(argc, argv))
        flexai_exec_python("flexai-runtime", argv);
    int sub = subcommand_index(argc, argv);
    if (sub < argc && (strcmp(argv[sub], "create") == 0 || strcmp(argv[sub], "run") == 0)) {
        const char *bundle = bundle_of(argc, argv, sub);
        if (!bundle)
            flexai_exec_python("flexai-runtime", argv);
        char path[4096];
        if ((size_t)snprintf(path, sizeof path, "%s/config.json", bundle) >= sizeof path)
            flexai_exec_python("flexai-runtime", argv);
        int found = flexai_file_mentions_flexai(path);
        if (found < 0) /* a config we could not read: Python decides */
            flexai_exec_python("flexai-runtime", argv);
        if (found > 0) { /* a request, likely: flexaid prepares the bundle (prepare.c) */
            char real[4096];
            if (flexai_real_runtime(real, sizeof real) == 0)
                flexai_prepare_and_run(argc, argv, sub, bundle, real);
            flexai_exec_python("flexai-runtime", argv);
        }
    }
    char real[4096];
    if (flexai_real_runtime(real, sizeof real) != 0)
        flexai_exec_python("flexai-runtime", argv); /* it names the problem */
    argv[0] = real;
    execv(real, argv);
    flexai_exec_python("flexai-runtime", argv);
}
