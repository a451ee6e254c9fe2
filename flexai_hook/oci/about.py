"""What `flexai-runtime --help` and `--version` say: flexai's own answer, not runc's.

Pure text from what the runtime found (its version, the real runtime, its settings file); the
runtime (runtime.py) prints it. `--version` prints flexai's line and then lets the real runtime
add its own output unchanged: Docker runs the default runtime's `--version` for `docker info`
and takes the last line that contains "version" and the line starting "commit:" (moby's
parseRuntimeVersion), so runc's lines must come last and untouched.
"""

from __future__ import annotations

from flexai_hook import __version__

PROGRAM = "flexai-runtime"


def version_line(real: str | None) -> str:
    """flexai's line of `flexai-runtime --version`; the real runtime's own lines follow it."""
    wraps = f", wrapping {real}" if real else ""
    return f"{PROGRAM} version {__version__} (flexai: fractional GPU/NPU slices for containers{wraps})"


def help_text(real: str | None, real_problem: str | None, config_path: str, socket: str,
              requests: list[tuple[str, str, str]]) -> str:
    """`flexai-runtime --help`. `requests`: (env name, annotation key, what it takes) of each
    request field; `real_problem`: why no real runtime was found, when none was."""
    width = max(len(env) for env, _, _ in requests) if requests else 0
    awidth = max(len(ann) for _, ann, _ in requests) if requests else 0
    fields = "\n".join(f"  {env:<{width}}  {ann:<{awidth}}  {allowed}" for env, ann, allowed in requests)
    runtime = (f"{real} (its own commands and flags: `{real} --help`)" if real
               else f"not found: {real_problem}")
    return f"""{PROGRAM} {__version__}: an OCI runtime that gives containers a slice of a GPU or NPU.

Engines call it as they call runc (Docker --runtime=flexai, containerd's RuntimeClass flexai,
podman --runtime). Every call is handed to the real OCI runtime (runc or crun) with the same
arguments; for `create` and `run` of a container that asks for a slice, it first reserves one
from flexaid and edits the bundle's config.json: the card's device nodes, the slice's files,
libflexai preloaded to enforce the slice, and a poststop hook that releases it. A request it
cannot honour (a bad value, no room on any card, flexaid unreachable) stops the container with
one line on stderr and in the engine's --log file.

A container asks with env (docker run -e) or annotations; an annotation wins:
{fields}

Settings: {config_path} (env FLEXAI_RUNTIME_CONFIG names another file), a JSON object:
  "runtime"  the real runtime (name on PATH or absolute path; env FLEXAI_RUNTIME overrides)
  "socket"   flexaid's socket (env FLEXAI_SOCKET overrides; default /run/flexai/flexaid.sock)
Real runtime: {runtime}
flexaid: {socket}; `flexai status` shows who holds which slice, `flexai doctor` checks this host.

  {PROGRAM} --help       this text
  {PROGRAM} --version    flexai's version, then the real runtime's
"""
