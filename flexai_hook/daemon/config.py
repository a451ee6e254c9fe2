"""flexaid's configuration: /etc/flexai/flexaid.json read, checked against its JSON Schema and
turned into the `Config` that the service, the socket loop and the CLI share."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from flexai_hook import placement, validation

from . import conngate, reconcile, supervisor

DEFAULT_CONFIG = "/etc/flexai/flexaid.json"
# Where engines keep runc state, for `flexai recover` and reconciliation of reservations that
# did not record their runtime: runc's default, Docker's, containerd's (k8s.io and default).
DEFAULT_RUNTIME_ROOTS = (
    "/run/runc",
    "/run/docker/runtime-runc/moby",
    "/run/containerd/runc/k8s.io",
    "/run/containerd/runc/default",
)


@dataclass(frozen=True)
class Config:
    socket: str = "/run/flexai/flexaid.sock"
    socket_mode: int = 0o660
    socket_group: str = "flexai"
    state_dir: str = "/var/lib/flexai"
    slices_dir: str = "/run/flexai/slices"
    backend: str = "auto"
    policy: str = placement.DEFAULT_POLICY
    simulated_cards: tuple = ()
    metrics_listen: str | None = None  # "127.0.0.1:9400" turns the Prometheus endpoint on
    max_connections: int | None = None  # None: from RLIMIT_NOFILE (conngate.limits_for)
    max_connections_per_uid: int | None = None  # root is not capped per uid
    idle_timeout: float = conngate.IDLE_TIMEOUT
    partial_timeout: float = conngate.PARTIAL_TIMEOUT
    reconcile_interval: float = 30.0
    reconcile_grace: float = 60.0
    runtime_roots: tuple[str, ...] = DEFAULT_RUNTIME_ROOTS
    reconcile_runtimes: tuple[str, ...] = reconcile.DEFAULT_RUNTIMES  # the only binaries flexaid runs
    log_file: str | None = None  # None: stderr, or the journal under systemd
    log_max_bytes: int = supervisor.LOG_MAX_BYTES  # the file is rotated past this size
    log_backups: int = supervisor.LOG_BACKUPS  # rotated files kept: FILE.1 .. FILE.N


class ConfigError(RuntimeError):
    pass


def load_config(path: str | None) -> Config:
    """The daemon config from `path` (JSON); defaults when the default path does not exist."""
    if path is None:
        if not os.path.exists(DEFAULT_CONFIG):
            return Config()
        path = DEFAULT_CONFIG
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"config file {path} is not valid JSON: {exc}") from None
    problem = validation.problem("daemon-config.schema.json", data)
    if problem:
        raise ConfigError(f"config file {path}: {problem}")
    if data.get("policy", placement.DEFAULT_POLICY) not in placement.POLICIES:
        raise ConfigError(
            f"config file {path}: policy {data['policy']!r} is not one of {', '.join(placement.POLICIES)}"
        )
    return Config(
        socket=data.get("socket", Config.socket),
        socket_mode=int(data.get("socket_mode", "0660"), 8),
        socket_group=data.get("socket_group", Config.socket_group),
        state_dir=data.get("state_dir", Config.state_dir),
        slices_dir=data.get("slices_dir", Config.slices_dir),
        backend=data.get("backend", Config.backend),
        policy=data.get("policy", Config.policy),
        simulated_cards=tuple(data.get("simulated", {}).get("cards", ())),
        metrics_listen=data.get("metrics", {}).get("listen"),
        max_connections=data.get("connections", {}).get("max"),
        max_connections_per_uid=data.get("connections", {}).get("per_uid"),
        idle_timeout=float(data.get("connections", {}).get("idle_timeout", Config.idle_timeout)),
        partial_timeout=float(data.get("connections", {}).get("partial_timeout", Config.partial_timeout)),
        reconcile_interval=float(data.get("reconcile", {}).get("interval", Config.reconcile_interval)),
        reconcile_grace=float(data.get("reconcile", {}).get("grace", Config.reconcile_grace)),
        runtime_roots=tuple(data.get("reconcile", {}).get("runtime_roots", DEFAULT_RUNTIME_ROOTS)),
        reconcile_runtimes=tuple(data.get("reconcile", {}).get("runtimes", reconcile.DEFAULT_RUNTIMES)),
        log_file=data.get("log", {}).get("file"),
        log_max_bytes=data.get("log", {}).get("max_bytes", Config.log_max_bytes),
        log_backups=data.get("log", {}).get("backups", Config.log_backups),
    )
