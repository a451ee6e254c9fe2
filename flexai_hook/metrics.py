"""Prometheus text exposition of flexaid's status: a pure function from status to text.

Labels follow NVIDIA dcgm-exporter where they apply (`gpu` = card index, `UUID`, `modelName`)
so dashboards can join the two; flexai adds `container` and `slice` for per-slice series, and
`pod` and `namespace` (as dcgm-exporter and cAdvisor name them) when the slice's container
belongs to a Kubernetes pod.
"""

from __future__ import annotations

from collections.abc import Iterable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: object) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


_HELP = {
    "flexai_card_memory_total_bytes": ("gauge", "Memory of the card."),
    "flexai_card_memory_reserved_bytes": ("gauge", "Memory of the card reserved by slices."),
    "flexai_card_memory_used_bytes": ("gauge", "Memory the card's sliced containers really hold (from their regions)."),
    "flexai_card_compute_reserved_percent": ("gauge", "Compute share of the card reserved by slices."),
    "flexai_card_slices": ("gauge", "Slices on the card."),
    "flexai_slice_memory_limit_bytes": ("gauge", "Memory limit of the slice."),
    "flexai_slice_memory_used_bytes": ("gauge", "Memory the slice's processes hold (from its region)."),
    "flexai_slice_compute_limit_percent": ("gauge", "Compute share of the slice."),
    "flexai_slice_kernel_launches_total": ("counter", "Kernel launches by the slice's processes."),
    "flexai_slice_processes": ("gauge", "Live processes attached to the slice's region."),
}


def render(status: dict) -> str:
    samples: dict[str, list[str]] = {name: [] for name in _HELP}

    def add(name: str, labels: dict, value: float | int) -> None:
        samples[name].append(f"{name}{_labels(**labels)} {value}")

    for card in status["cards"]:
        base = {"gpu": card["index"], "UUID": card["uuid"], "modelName": card["name"]}
        add("flexai_card_memory_total_bytes", base, card["memory"])
        add("flexai_card_memory_reserved_bytes", base, card["memory_reserved"])
        add("flexai_card_compute_reserved_percent", base, card["compute_reserved"])
        add("flexai_card_slices", base, len(card["slices"]))
        used_total = None
        for s in card["slices"]:
            labels = {**base, "container": s["container_id"], "slice": s["slice_id"], **_pod_labels(s)}
            add("flexai_slice_memory_limit_bytes", labels, s["memory_bytes"])
            add("flexai_slice_compute_limit_percent", labels, s["compute"])
            usage = s.get("usage")
            if usage:
                add("flexai_slice_memory_used_bytes", labels, usage["memory_used"])
                used_total = (used_total or 0) + usage["memory_used"]
                if "launches" in usage:
                    add("flexai_slice_kernel_launches_total", labels, usage["launches"])
                if "processes" in usage:
                    add("flexai_slice_processes", labels, usage["processes"])
        if used_total is not None:
            add("flexai_card_memory_used_bytes", base, used_total)
    return "".join(_block(name, lines) for name, lines in samples.items() if lines)


def _pod_labels(slice_: dict) -> dict:
    pod = slice_.get("pod") or {}
    return {label: pod[key] for label, key in (("pod", "name"), ("namespace", "namespace")) if pod.get(key)}


def _block(name: str, lines: Iterable[str]) -> str:
    kind, text = _HELP[name]
    return f"# HELP {name} {text}\n# TYPE {name} {kind}\n" + "\n".join(lines) + "\n"
