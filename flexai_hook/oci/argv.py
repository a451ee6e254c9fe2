"""What an engine asked the OCI runtime to do, read from the command line it sent.

Engines call the runtime as runc would be called: global flags, a subcommand, its flags, then
the container id. Only create/run need understanding (to find the bundle and the id); the
argv itself is always passed to the real runtime unchanged.
"""

from __future__ import annotations

from flexai_hook.record import record

# Global flags of runc and crun that take a value. Any other flag is treated as a switch;
# `--flag=value` is understood for every flag.
_GLOBAL_VALUE_FLAGS = frozenset(
    {"--root", "--log", "--log-format", "--log-level", "--criu", "--rootless", "--cgroup-manager"}
)
# create/run flags (runc and crun) that take a value.
_CREATE_VALUE_FLAGS = frozenset(
    {"--bundle", "-b", "--console-socket", "--pid-file", "--preserve-fds"}
)
SPEC_SUBCOMMANDS = frozenset({"create", "run"})


@record
class Invocation:
    """The parts of a runtime command line flexai cares about."""

    subcommand: str | None
    container_id: str | None = None
    bundle: str | None = None  # None: the current directory, as runc does
    log_path: str | None = None
    log_format: str = "text"
    root: str | None = None
    debug: bool = False  # runc's global --debug: the runtime may log at debug level too

    @property
    def edits_spec(self) -> bool:
        return self.subcommand in SPEC_SUBCOMMANDS and self.container_id is not None


def _split(arg: str) -> tuple[str, str | None]:
    if arg.startswith("--") and "=" in arg:
        name, _, value = arg.partition("=")
        return name, value
    return arg, None


def parse(argv: list[str] | tuple[str, ...]) -> Invocation:
    """Parse runtime arguments (without the program name). Never raises."""
    globals_: dict[str, str] = {}
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "-":
        name, value = _split(argv[i])
        if value is None and name in _GLOBAL_VALUE_FLAGS and i + 1 < len(argv):
            value = argv[i + 1]
            i += 1
        if value is not None:
            globals_[name.lstrip("-")] = value
        elif name == "--debug":
            globals_["debug"] = "true"
        i += 1
    common = dict(
        debug=globals_.get("debug", "false").lower() not in ("false", "0"),
        log_path=globals_.get("log"),
        log_format=globals_.get("log-format", "text"),
        root=globals_.get("root"),
    )
    if i >= len(argv):
        return Invocation(subcommand=None, **common)
    subcommand = argv[i]
    i += 1
    if subcommand not in SPEC_SUBCOMMANDS:
        return Invocation(subcommand=subcommand, **common)

    bundle = None
    container_id = None
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            if i + 1 < len(argv) and container_id is None:
                container_id = argv[i + 1]
            break
        if arg.startswith("-") and arg != "-":
            name, value = _split(arg)
            if value is None and name in _CREATE_VALUE_FLAGS and i + 1 < len(argv):
                value = argv[i + 1]
                i += 1
            if name in ("--bundle", "-b"):
                bundle = value
        elif container_id is None:
            container_id = arg
        i += 1
    return Invocation(subcommand=subcommand, container_id=container_id, bundle=bundle, **common)


# What a command line that asks the runtime about itself looks like (runc's spellings): the
# answer is flexai-runtime's own (about.py), not the real runtime's.
_ABOUT_FLAGS = {"--help": "help", "-h": "help", "--version": "version", "-v": "version"}


def about(argv: list[str] | tuple[str, ...]) -> str | None:
    """"help" or "version" when the whole command line asks for it (no arguments at all is
    "help", as runc answers it); None for everything else, which goes to the real runtime."""
    if not argv:
        return "help"
    if len(argv) == 1:
        return _ABOUT_FLAGS.get(argv[0])
    return None
