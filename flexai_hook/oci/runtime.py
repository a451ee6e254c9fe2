"""flexai-runtime: an OCI runtime that gives containers with a flexai request their slice.

Engines call it exactly as they call runc. For `create`/`run` of a container whose config.json
carries a request, it reserves a slice from flexaid, edits config.json (spec.apply) and then
runs the real runtime; everything else is handed to the real runtime untouched. A bad request,
an unreachable daemon or a full card stops the container here, before it exists.

This is on every container start, so imports are kept to the standard library and the heavy
modules are only loaded once a request is found.
"""

from __future__ import annotations

import os
import sys

from . import argv as argv_mod

DEFAULT_RUNTIME_CONFIG = "/etc/flexai/runtime.json"
# The C front door's refusal from flexaid's `prepare`, handed over with the container it is about
# (libflexai/launch/prepare.c): reported as it is instead of asking flexaid again, which would
# log and count the same refusal twice. It can only ever stop a container, never start one.
REFUSAL_ENV = "FLEXAI_PREPARE_REFUSED"
# Cheap markers that a config.json may hold a request or name CDI devices in `cdi.k8s.io/`
# annotations (oci/cdi_annotations.py); without them we never parse it. libflexai/launch/launch.c
# has the same list.
_REQUEST_MARKERS = (b"FLEXAI_", b"flexai.io/", b"cdi.k8s.io/")


class Failure(Exception):
    """Stops the container; str() is the one line the user sees."""


def runtime_settings() -> dict:
    """{"runtime": real runtime, "socket": flexaid socket}: env wins over /etc/flexai/runtime.json."""
    settings = {}
    path = os.environ.get("FLEXAI_RUNTIME_CONFIG", DEFAULT_RUNTIME_CONFIG)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raw = None
    except OSError as exc:
        raise Failure(f"cannot read flexai runtime config {path}: {exc}") from None
    if raw is not None:
        import json  # only when the file exists: ~3 ms on every start otherwise

        try:
            loaded = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise Failure(f"cannot read flexai runtime config {path}: {exc}") from None
        if not isinstance(loaded, dict):
            raise Failure(f"flexai runtime config {path} must hold a JSON object")
        settings.update(loaded)
    if os.environ.get("FLEXAI_RUNTIME"):
        settings["runtime"] = os.environ["FLEXAI_RUNTIME"]
    if os.environ.get("FLEXAI_SOCKET"):
        settings["socket"] = os.environ["FLEXAI_SOCKET"]
    settings.setdefault("runtime", "runc")
    return settings


def resolve_binary(name: str) -> str:
    """Absolute path of the real runtime; never this program itself (that would loop)."""
    if "/" in name:
        candidates = [name]
    else:
        candidates = [os.path.join(d, name) for d in os.environ.get("PATH", "/usr/sbin:/usr/bin").split(":") if d]
    me = os.path.realpath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    # Started as "flexai-runtime-py" by the C front door: the front door is us as well.
    us = {me, me[:-3]} if me.endswith("-py") else {me}
    for path in candidates:
        if os.access(path, os.X_OK) and not os.path.isdir(path) and os.path.realpath(path) not in us:
            return path
    raise Failure(
        f"the real OCI runtime {name!r} was not found (set \"runtime\" in {DEFAULT_RUNTIME_CONFIG} "
        f"or FLEXAI_RUNTIME to runc's path)"
    )


def report(invocation: argv_mod.Invocation, message: str, level: str = "error") -> None:
    """Tell the user why the container did not start (or, at level "warning", what it lacks):
    on stderr and in the engine's --log file.
    At level "debug" (why a container passes through) only in the log, and only when the engine
    ran the runtime with --debug."""
    import json
    import time

    line = f"flexai: {message}"
    if level == "debug":
        if not invocation.debug:
            return
    else:
        sys.stderr.write(line + "\n")
    if not invocation.log_path:
        return
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    stamp = stamp[:-2] + ":" + stamp[-2:]  # RFC 3339 offset, as runc's logrus writes it
    if invocation.log_format == "json":
        entry = json.dumps({"level": level, "msg": line, "time": stamp})
    else:
        entry = f"time={json.dumps(stamp)} level={level} msg={json.dumps(line)}"
    try:
        with open(invocation.log_path, "a") as f:
            f.write(entry + "\n")
    except OSError as exc:
        sys.stderr.write(f"flexai: could not write the runtime log {invocation.log_path}: {exc}\n")


def run_child(binary: str, args: list[str]) -> int:
    """Run the real runtime and return its exit status, forwarding signals sent to us."""
    import signal

    pid = os.fork()
    if pid == 0:
        try:
            os.execv(binary, [binary] + args)
        finally:
            os._exit(127)
    interactive = os.isatty(0)

    def forward(signum, _frame):
        # A terminal's ^C already reaches the whole foreground group, the real runtime included.
        if not (signum == signal.SIGINT and interactive):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT):
        signal.signal(sig, forward)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    return os.waitstatus_to_exitcode(status) if not os.WIFSIGNALED(status) else 128 + os.WTERMSIG(status)


def _release(container_id: str, socket: str | None) -> None:
    from flexai_hook import client

    try:
        client.call({"op": "release", "container_id": container_id}, socket)
    except (client.DaemonUnavailable, client.DaemonRefused) as exc:
        sys.stderr.write(f"flexai: could not release the slice of {container_id}: {exc}\n")


def handed_refusal(value: str | None, container_id: str | None) -> str | None:
    """The refusal the C front door handed over (REFUSAL_ENV) for `container_id`, or None: when
    there is none, it is about another container, or flexaid said to retry (its file writer
    failed: asking again may well succeed)."""
    if not value or container_id is None:
        return None
    import json

    try:
        handed = json.loads(value)
        reply = handed["reply"]
        if handed["container_id"] != container_id or reply["ok"] is not False:
            return None
        error = reply["error"]
    except (ValueError, RecursionError, KeyError, TypeError):
        return None
    if not isinstance(error, str) or error.endswith("; retry"):
        return None
    return error


def slice_container(
    invocation: argv_mod.Invocation, config_path: str, raw: bytes, settings: dict, binary: str,
    refused: str | None = None,
):
    """Reserve and inject a slice if config.json asks for one: the prepare.Prepared written, or
    None (no request: pass through). `refused`: flexaid's refusal of this container, already
    known (handed_refusal)."""
    import json

    from flexai_hook import client
    from flexai_hook.request import RequestError
    from flexai_hook.reservation import Reservation

    from . import prepare

    try:
        spec = json.loads(raw)
    except ValueError:
        return None  # not ours to judge: the real runtime reports a broken config.json
    except RecursionError:
        # valid JSON perhaps, but nested past what Python's parser takes: its request cannot be
        # read, and a container that asks for a slice must not start without one
        raise Failure(f"{config_path} is nested too deeply to read its flexai request; "
                      f"nothing reserved, config.json left as it was") from None
    for line in prepare.warnings_of(spec):  # the container still starts: say what it ignores
        report(invocation, line, "warning")
    try:
        request = prepare.request_of(spec)
    except RequestError as exc:
        raise Failure(str(exc)) from None
    if request is None:
        report(invocation, f"no slice for {invocation.container_id}: {prepare.no_request_reason(spec)}", "debug")
        return named_devices(invocation, config_path, spec, settings, refused)
    if refused is not None:
        if refused.startswith("could not prepare "):  # flexaid's prepare reserved, then failed
            raise Failure(refused)
        raise Failure(f"flexaid could not reserve a slice for {invocation.container_id}: {refused}")

    socket = settings.get("socket")
    try:
        runtime = {"binary": os.path.abspath(binary)}
        if invocation.root:
            runtime["root"] = os.path.abspath(invocation.root)
        message = {"op": "reserve", "container_id": invocation.container_id, "request": request.to_json(),
                   "runtime": runtime}
        pod = prepare.pod_of(spec)
        if pod:
            message["pod"] = pod
        reply = client.call(message, socket)
    except client.DaemonUnavailable as exc:
        raise Failure(str(exc)) from None
    except client.DaemonRefused as exc:
        raise Failure(f"flexaid could not reserve a slice for {invocation.container_id}: {exc}") from None
    try:
        reservation = Reservation.from_json(reply["reservation"])
        prepared = prepare.prepare_container(spec, reservation, hook_binary(), socket, settings,
                                             runtime_binary=os.path.abspath(binary))
        if prepared.runtime:  # before config.json changes: a missing one stops the container here
            try:
                resolve_binary(prepared.runtime)
            except Failure:
                raise Failure(f"no CDI spec has the card, and chain_without_cdi names {prepared.runtime!r}, "
                              "which is not installed: install it, or generate a CDI spec "
                              "(nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml)") from None
        from flexai_hook.atomicfile import write_atomically

        st = os.stat(config_path)
        # no fsync: after a host crash the container is gone, and so is any use of its bundle
        write_atomically(config_path, json.dumps(prepared.spec, indent=2).encode(), mode=st.st_mode & 0o7777,
                         owner=(st.st_uid, st.st_gid), sync=False)
    except (OSError, Failure, prepare.PrepareError) as exc:
        _release(invocation.container_id, socket)
        raise Failure(f"could not prepare {invocation.container_id} for its slice: {exc}") from None
    return prepared


def named_devices(invocation: argv_mod.Invocation, config_path: str, spec: dict, settings: dict,
                  refused: str | None = None):
    """A container without a request whose `cdi.k8s.io/` annotations name CDI devices (a DRA
    claim's, when the engine leaves CDI to the runtime): config.json with them applied, as a
    prepare.Prepared that holds no slice; None when it names none. `refused`: flexaid's
    refusal of it, already known (the C front door's prepare)."""
    import json

    from . import prepare

    if refused is not None:
        raise Failure(refused)
    try:
        edited = prepare.named_devices_spec(spec, settings)
        if edited is None:
            return None
        from flexai_hook.atomicfile import write_atomically

        st = os.stat(config_path)
        write_atomically(config_path, json.dumps(edited, indent=2).encode(), mode=st.st_mode & 0o7777,
                         owner=(st.st_uid, st.st_gid), sync=False)
    except (OSError, prepare.PrepareError) as exc:
        raise Failure(prepare.named_devices_failure(invocation.container_id, exc)) from None
    return prepare.Prepared(spec=edited, sliced=False)


def hook_binary() -> str:
    """flexai-hook installed beside this program (or on PATH): the poststop hook's path."""
    here = os.path.dirname(os.path.abspath(sys.argv[0]))
    candidate = os.path.join(here, "flexai-hook")
    if os.access(candidate, os.X_OK):
        return candidate
    for d in os.environ.get("PATH", "").split(":"):
        candidate = os.path.join(d, "flexai-hook")
        if d and os.access(candidate, os.X_OK):
            return os.path.abspath(candidate)
    raise Failure("flexai-hook was not found beside flexai-runtime or on PATH; reinstall flexai")


CHAIN_FLAG = "--flexai-runtime="


def take_runtime_flag(args: list[str]) -> list[str]:
    """Leading `--flexai-runtime=PATH` arguments (dockerd's runtimeArgs, written by `flexai install
    docker --default` when it replaced another default runtime such as nvidia) set the real
    runtime, as FLEXAI_RUNTIME does; they are taken off what the real runtime gets."""
    while args and args[0].startswith(CHAIN_FLAG):
        value = args.pop(0)[len(CHAIN_FLAG):]
        if value:
            os.environ["FLEXAI_RUNTIME"] = value
    return args


def answer_about(asked: str) -> int:
    """`flexai-runtime --help` / `--version` (argv.about): flexai's own answer."""
    from . import about

    settings: dict = {}
    try:
        settings = runtime_settings()
        binary, problem = resolve_binary(settings["runtime"]), None
    except Failure as exc:
        binary, problem = None, str(exc)
    if asked == "version":
        sys.stdout.write(about.version_line(binary) + "\n")
        sys.stdout.flush()
        if binary is None:
            sys.stderr.write(f"flexai: {problem}\n")
            return 1
        os.execv(binary, [binary, "--version"])  # its lines last and unchanged (about.py says why)
    from flexai_hook.client import DEFAULT_SOCKET
    from flexai_hook.request import RULES

    requests = [(rule.env, rule.annotation, rule.allowed) for rule in RULES.values()]
    config_path = os.environ.get("FLEXAI_RUNTIME_CONFIG", DEFAULT_RUNTIME_CONFIG)
    socket = os.environ.get("FLEXAI_SOCKET") or settings.get("socket") or DEFAULT_SOCKET
    sys.stdout.write(about.help_text(binary, problem, config_path, str(socket), requests))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = take_runtime_flag(list(sys.argv[1:] if argv is None else argv))
    handed = os.environ.pop(REFUSAL_ENV, None)  # never passed on to the real runtime
    asked = argv_mod.about(args)
    if asked is not None:
        return answer_about(asked)
    invocation = argv_mod.parse(args)
    try:
        settings = runtime_settings()
        binary = resolve_binary(settings["runtime"])
    except Failure as exc:
        report(invocation, str(exc))
        return 1
    if not invocation.edits_spec:
        os.execv(binary, [binary] + args)

    config_path = os.path.join(invocation.bundle or ".", "config.json")
    try:
        with open(config_path, "rb") as f:
            raw = f.read()
    except OSError:
        raw = b""  # the real runtime says what is wrong with the bundle
    if not any(marker in raw for marker in _REQUEST_MARKERS):
        os.execv(binary, [binary] + args)
    try:
        prepared = slice_container(invocation, config_path, raw, settings, binary,
                                   handed_refusal(handed, invocation.container_id))
    except Failure as exc:
        report(invocation, str(exc))
        return 1
    if prepared is None or not prepared.sliced:  # no slice here to release if the start fails
        os.execv(binary, [binary] + args)
    if prepared.notice:
        report(invocation, prepared.notice, "warning")
    if prepared.runtime:  # no CDI spec for the card: the vendor's runtime adds the driver
        binary = resolve_binary(prepared.runtime)
    status = run_child(binary, args)
    if status != 0:
        # The container did not start or ended in error; poststop may not have run (runc skips
        # hooks when it fails before the container exists). Releasing twice is harmless.
        _release(invocation.container_id, settings.get("socket"))
    return status


if __name__ == "__main__":
    sys.exit(main())
