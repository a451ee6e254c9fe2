"""`flexai-hook createContainer`: the hooks.d path, for engines that run plain runc/crun.

Podman (and CRI-O) add OCI hooks from hooks.d to containers whose annotations match; they never
let a hook edit the spec. So this stage does what flexai-runtime does through config.json, by
hand: it runs in the container's mount namespace after the runtime set up the rootfs and before
pivot_root (runc and crun run createContainer hooks there), reserves the slice from flexaid and

- creates the card's device node under the rootfs's /dev (and, on cgroup v1, allows it in the
  container's devices cgroup);
- bind-mounts the slice's files read-only at their in-container paths (`/run/flexai/slice.conf`,
  and whatever else `spec.injection_for` adds, such as the preload library), resolving every
  path inside the rootfs so a symlink in the image cannot point a mount at the host.

It cannot set environment variables: libflexai falls back to the fixed in-container paths.
A bad request or a full card fails the hook, so the engine's run command fails with flexai's
line. The hooks.d poststop hook (`flexai-hook poststop`) releases the slice.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import stat
import sys

from flexai_hook import client
from flexai_hook.process import process_start

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 32, 4096, 16384


class HookFailure(Exception):
    """Stops the container; str() is the line the engine shows."""


def _libc():
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def bind_mount(source: str, target: str, read_only: bool = True) -> None:
    libc = _libc()
    if libc.mount(source.encode(), target.encode(), None, MS_BIND | MS_REC, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bind mount {source} on {target}: {os.strerror(err)}")
    flags = MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV | (MS_RDONLY if read_only else 0)
    if libc.mount(None, target.encode(), None, flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"remount {target} read-only: {os.strerror(err)}")


def resolve_in_root(root: str, path: str, max_links: int = 40) -> str:
    """`path` (absolute, as seen inside the container) as a host path under `root`, following
    symlinks as the container would see them: never leaving `root`."""
    root = os.path.realpath(root)
    parts = [p for p in path.split("/") if p and p != "."]
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            resolved.append(part)
            continue
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > max_links:
                raise OSError(f"too many symlinks resolving {path} in the container")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p and p != "."] + parts
            continue
        resolved.append(part)
    return os.path.join(root, *resolved)


def _make_parents(root: str, path: str) -> str:
    """Create the missing directories of in-container `path` (safely) and return its host path."""
    parent = os.path.dirname(path.rstrip("/")) or "/"
    host_parent = resolve_in_root(root, parent)
    os.makedirs(host_parent, exist_ok=True)
    # resolve again: makedirs followed no links, but a racing container is not running yet
    return os.path.join(resolve_in_root(root, parent), os.path.basename(path.rstrip("/")))


def add_device(root: str, node, cgroup_root: str = "/sys/fs/cgroup") -> None:
    target = _make_parents(root, node.path)
    if os.path.lexists(target):
        st = os.lstat(target)
        if not (stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == node.major and os.minor(st.st_rdev) == node.minor):
            raise OSError(f"{node.path} exists in the container and is not the card's device node")
    else:
        kind = stat.S_IFCHR if node.type == "c" else stat.S_IFBLK
        os.mknod(target, node.file_mode | kind, os.makedev(node.major, node.minor))
        os.chmod(target, node.file_mode)
        os.chown(target, node.uid, node.gid)
    allow_device(node, cgroup_root)


def allow_device(node, cgroup_root: str = "/sys/fs/cgroup") -> None:
    """cgroup v1: allow the node in this process's (the container's) devices cgroup. On cgroup
    v2 the device rules are an eBPF program a hook cannot widen; the node is then usable only if
    the engine already allows it (Podman: --device)."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "devices" in controllers.split(","):
            allow = os.path.join(cgroup_root, "devices", path.lstrip("/"), "devices.allow")
            if os.path.exists(allow):
                with open(allow, "w") as f:
                    f.write(f"{node.type} {node.major}:{node.minor} rwm")
            return


def add_mount(root: str, mount) -> None:
    target = _make_parents(root, mount.destination)
    source_is_dir = os.path.isdir(mount.source)
    if not os.path.lexists(target):
        if source_is_dir:
            os.mkdir(target, 0o755)
        else:
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o444))
    bind_mount(mount.source, target, mount.read_only)


def already_sliced(spec: dict) -> bool:
    """flexai-runtime already injected the slice (Podman with --runtime flexai and an annotation)."""
    from .spec import SLICE_FILE_IN_CONTAINER

    return any(isinstance(m, dict) and m.get("destination") == SLICE_FILE_IN_CONTAINER for m in spec.get("mounts") or [])


def create_container(state_raw: bytes) -> int:
    from flexai_hook.request import RequestError, env_warnings, from_container
    from flexai_hook.reservation import Reservation

    from . import prepare
    from .spec import Hook, injection_for

    try:
        state = json.loads(state_raw)
        container_id = state["id"]
        bundle = state["bundle"]
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise HookFailure("the OCI state on stdin is not a container state") from None
    try:
        with open(os.path.join(bundle, "config.json"), "rb") as f:
            spec = json.load(f)
    except (OSError, ValueError, RecursionError) as exc:
        raise HookFailure(f"cannot read the bundle's config.json: {exc}") from None
    if already_sliced(spec):
        return 0
    annotations = {**(spec.get("annotations") or {}), **(state.get("annotations") or {})}
    env = prepare.env_of(spec)
    for line in env_warnings(env):  # the container still starts: say what it ignores
        sys.stderr.write(f"flexai: {line}\n")
    try:
        request = from_container(env, {k: str(v) for k, v in annotations.items()})
    except RequestError as exc:
        raise HookFailure(str(exc)) from None
    if request is None:
        return 0  # no request, or a Kubernetes pod sandbox (CRI-O runs hooks.d for those too)
    socket = client.socket_path()
    message = {"op": "reserve", "container_id": container_id, "request": request.to_json(),
               "runtime": runtime_of(state)}
    pod = prepare.pod_of({"annotations": annotations})
    if pod:
        message["pod"] = pod
    try:
        reply = client.call(message, socket)
    except client.DaemonUnavailable as exc:
        raise HookFailure(str(exc)) from None
    except client.DaemonRefused as exc:
        raise HookFailure(f"flexaid could not reserve a slice for {container_id}: {exc}") from None
    try:
        reservation = Reservation.from_json(reply["reservation"])
        nodes = tuple(prepare.device_node(p) for p in reservation.device_paths)
        injection = injection_for(reservation, nodes, Hook(path="/", args=()))
        root = spec.get("root", {}).get("path", "rootfs")
        root = root if os.path.isabs(root) else os.path.join(bundle, root)
        for node in injection.devices:
            add_device(root, node)
        for mount in injection.mounts:
            add_mount(root, mount)
    except (OSError, prepare.PrepareError, KeyError) as exc:
        try:
            client.call({"op": "release", "container_id": container_id}, socket)
        except (client.DaemonUnavailable, client.DaemonRefused):
            pass
        raise HookFailure(f"could not give {container_id} its slice: {exc}") from None
    return 0


def runtime_of(state: dict) -> dict:
    """What reconciliation can check later: the hook does not know the runtime's binary or
    root, but the state names the container's init process, whose life is the container's."""
    pid = state.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid < 1:
        return {}
    start = process_start(pid)
    return {"pid": pid, **({"pid_start": start} if start is not None else {})}


def main(args: list[str]) -> int:
    """`flexai-hook createContainer`: the OCI state on stdin."""
    try:
        return create_container(sys.stdin.buffer.read(1 << 20))
    except HookFailure as exc:
        sys.stderr.write(f"flexai: {exc}\n")
        return 1
