"""A slice of one card held for one container: what flexaid grants and the runtime injects."""

from __future__ import annotations

from collections.abc import Mapping

from .record import asdict, fields, record


@record
class Reservation:
    container_id: str
    slice_id: str
    card_index: int
    card_uuid: str
    card_name: str
    card_memory: int  # the card's total memory, bytes
    memory_bytes: int  # the slice's memory limit
    compute: int  # percent of the card's compute
    priority: str
    device_paths: tuple[str, ...]  # host device nodes the container needs for this card
    slice_dir: str  # host directory holding the slice files
    created: float = 0.0  # unix time the reservation was granted
    request: Mapping = {}  # the request as sent, for status and audits
    runtime: Mapping = {}  # {"binary", "root"} of the OCI runtime that runs it, for reconciliation
    backend: str = ""  # the card's device backend ("simulated", "nvml"); "" when not recorded
    compute_mode: str = "work-conserving"  # or "hard": capped at the share even on an idle card
    owner_uid: int = 0  # who reserved it (SO_PEERCRED): root or this uid may change it; old ledgers: root
    pod: Mapping = {}  # {"name", "namespace"} of its Kubernetes pod (kube.pod_of); {}: none or old ledgers

    def to_json(self) -> dict:
        data = asdict(self)
        data["device_paths"] = list(self.device_paths)
        data["request"] = dict(self.request)
        data["runtime"] = dict(self.runtime)
        if self.pod:
            data["pod"] = dict(self.pod)
        else:
            del data["pod"]  # outside Kubernetes the record stays as it always was
        return data

    @classmethod
    def from_json(cls, data: Mapping) -> "Reservation":
        values = {k: data[k] for k in fields(cls) if k in data}
        values["device_paths"] = tuple(values.get("device_paths", ()))
        values["request"] = dict(values.get("request", {}))
        values["runtime"] = dict(values.get("runtime", {}))
        values["pod"] = dict(values.get("pod") or {})
        return cls(**values)

    def slice_conf(self) -> str:
        """The slice file the in-container library reads its limits from (key=value lines)."""
        lines = [
            "# flexai slice limits, written by flexaid; read by libflexai",
            f"slice_id={self.slice_id}",
            f"device_uuid={self.card_uuid}",
            f"device_index={self.card_index}",
            f"card_memory={self.card_memory}",
            f"memory_limit={self.memory_bytes}",
            f"compute_limit={self.compute}",
            f"priority={self.priority}",
            f"compute_mode={self.compute_mode}",
        ]
        return "\n".join(lines) + "\n"
