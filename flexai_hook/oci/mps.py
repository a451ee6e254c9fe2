"""MPS mode: hand a slice's compute share (and a memory cap) to NVIDIA MPS instead of libflexai.

Where the host runs the MPS control daemon (`nvidia-cuda-mps-control -d`) and
/etc/flexai/runtime.json says `"compute_backend": "mps"`, the runtime adds these edits to a
sliced container's spec; libflexai still enforces the memory slice and the device view but,
seeing FLEXAI_COMPUTE_BY=mps, does not throttle launches (MPS partitions the SMs instead).

What MPS reads in a client's environment (NVIDIA MPS documentation, "Environment Variables"):

- CUDA_MPS_PIPE_DIRECTORY: where the control daemon's pipes are; client and daemon must agree,
  so the host directory is bind-mounted read-write at the same path.
- CUDA_MPS_LOG_DIRECTORY: the daemon's logs; mounted read-only for diagnosis.
- CUDA_MPS_ACTIVE_THREAD_PERCENTAGE: the share of each device's threads (SMs) the client's
  contexts may use, 1..100. It can only lower what the control daemon allows.
- CUDA_MPS_PINNED_DEVICE_MEM_LIMIT: "<device>=<limit>[,<device>=<limit>...]", the device an
  ordinal or UUID as the client sees it, the limit with a unit (M, G).
- CUDA_MPS_CLIENT_PRIORITY: 0 normal (default), 1 below normal.

MPS clients also need the IPC namespace of the MPS server (its shared memory); that is a
property of how the container is run (`--ipc=host`, hostIPC), documented in docs/compute.md,
not something a spec edit can grant safely.

Pure functions: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping

from flexai_hook.record import record
from flexai_hook.reservation import Reservation

from .injection import Injection, Mount

BACKEND_KEY = "compute_backend"
DEFAULT_PIPE_DIRECTORY = "/tmp/nvidia-mps"
DEFAULT_LOG_DIRECTORY = "/var/log/nvidia-mps"
MIB = 1 << 20


class MpsConfigError(ValueError):
    """The runtime config asks for MPS with settings that cannot work."""


@record
class MpsConfig:
    pipe_directory: str = DEFAULT_PIPE_DIRECTORY
    log_directory: str = DEFAULT_LOG_DIRECTORY
    memory_limit: bool = True  # also set CUDA_MPS_PINNED_DEVICE_MEM_LIMIT


def mps_config(settings: Mapping) -> MpsConfig | None:
    """The MPS settings of a runtime config (/etc/flexai/runtime.json), or None when the
    compute backend is libflexai's own controller (the default)."""
    backend = settings.get(BACKEND_KEY, "flexai")
    if backend in (None, "", "flexai"):
        return None
    if backend != "mps":
        raise MpsConfigError(f"{BACKEND_KEY}: {backend!r} is not one of 'flexai', 'mps'")
    values = {}
    for key, field in (("mps_pipe_directory", "pipe_directory"), ("mps_log_directory", "log_directory")):
        if key in settings:
            value = settings[key]
            if not isinstance(value, str) or not value.startswith("/"):
                raise MpsConfigError(f"{key}: {value!r} must be an absolute path")
            values[field] = value.rstrip("/") or "/"
    if "mps_memory_limit" in settings:
        if not isinstance(settings["mps_memory_limit"], bool):
            raise MpsConfigError(f"mps_memory_limit: {settings['mps_memory_limit']!r} must be true or false")
        values["memory_limit"] = settings["mps_memory_limit"]
    return MpsConfig(**values)


def device_memory_limit(reservation: Reservation) -> str:
    """CUDA_MPS_PINNED_DEVICE_MEM_LIMIT for the slice: `<uuid>=<N>M` (the card's index when its
    UUID is not known), N the slice's memory in whole MiB, rounded down, at least 1."""
    device = reservation.card_uuid or str(reservation.card_index)
    return f"{device}={max(1, reservation.memory_bytes // MIB)}M"


def active_thread_percentage(reservation: Reservation) -> str:
    if not 1 <= int(reservation.compute) <= 100:
        raise MpsConfigError(f"compute: {reservation.compute!r} is not a percentage in 1..100")
    return str(int(reservation.compute))


def injection(reservation: Reservation, config: MpsConfig) -> Injection:
    """The spec additions that give `reservation`'s compute share to MPS."""
    env = [
        ("CUDA_MPS_PIPE_DIRECTORY", config.pipe_directory),
        ("CUDA_MPS_LOG_DIRECTORY", config.log_directory),
        ("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", active_thread_percentage(reservation)),
    ]
    if config.memory_limit and reservation.memory_bytes > 0:
        env.append(("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT", device_memory_limit(reservation)))
    env.append(("CUDA_MPS_CLIENT_PRIORITY", "1" if reservation.priority == "low" else "0"))
    env.append(("FLEXAI_COMPUTE_BY", "mps"))
    mounts = (
        Mount(config.pipe_directory, config.pipe_directory, read_only=False),
        Mount(config.log_directory, config.log_directory, read_only=True),
    )
    return Injection(mounts=mounts, env=tuple(env))


def merge(base: Injection, extra: Injection) -> Injection:
    """`base` with `extra` added; an env name or mount destination in both takes extra's."""
    names = {name for name, _ in extra.env}
    targets = {m.destination for m in extra.mounts}
    return Injection(
        devices=base.devices + tuple(d for d in extra.devices if d not in base.devices),
        mounts=tuple(m for m in base.mounts if m.destination not in targets) + extra.mounts,
        env=tuple(e for e in base.env if e[0] not in names) + extra.env,
        poststop=base.poststop + tuple(h for h in extra.poststop if h not in base.poststop),
    )
