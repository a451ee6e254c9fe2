"""flexaid's Prometheus metrics: what its request path counts (`RequestStats`) and the text
exposition of that and of its status (`render`, a pure function).

Labels follow NVIDIA dcgm-exporter where they apply (`gpu` = card index, `UUID`, `modelName`)
so dashboards can join the two; flexai adds `container` and `slice` for per-slice series, and
`pod` and `namespace` (as dcgm-exporter and cAdvisor name them) when the slice's container
belongs to a Kubernetes pod. Shares are ratios from 0 to 1 (`_ratio`), as Prometheus' naming
conventions ask, not percentages.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: object) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


_HELP = {
    "flexai_card_memory_total_bytes": ("gauge", "Memory of the card."),
    "flexai_card_memory_reserved_bytes": ("gauge", "Memory of the card reserved by slices."),
    "flexai_card_memory_used_bytes": ("gauge", "Memory the card's sliced containers really hold (from their regions)."),
    "flexai_card_compute_reserved_ratio": ("gauge", "Share of the card's compute guaranteed to slices (0 to 1)."),
    "flexai_card_slices": ("gauge", "Slices on the card."),
    "flexai_slice_memory_limit_bytes": ("gauge", "Memory limit of the slice."),
    "flexai_slice_memory_used_bytes": ("gauge", "Memory the slice's processes hold (from its region)."),
    "flexai_slice_compute_limit_ratio": ("gauge", "Compute share of the card the slice gets (0 to 1)."),
    "flexai_slice_kernel_launches_total": ("counter", "Kernel launches by the slice's processes."),
    "flexai_slice_processes": ("gauge", "Live processes attached to the slice's region."),
}


# Refusal reasons (ledger.REFUSALS and the request path's own) and the operations whose latency
# is measured. Fixed lists: a label value never comes from a client, and every series exists
# from the start (at 0), so rate() sees the first refusal.
INVALID_REQUEST = "invalid_request"  # a reserve/prepare whose request or message is invalid
RUNTIME_NOT_ALLOWED = "runtime_not_allowed"  # its runtime binary is not on the allow-list
NOT_OWNER = "not_owner"  # the id is held by a slice of another uid
PREPARE_FAILED = "prepare_failed"  # reserved, but config.json could not be edited for it
NOT_SAVED = "not_saved"  # placed, but the ledger or slice files could not be written
OTHER_OP = "invalid"  # the op label of lines that are not a known operation
# Latency buckets, seconds: a reserve is ~1 ms with its fdatasync, more under load or slow disks.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class Histogram:
    counts: list[int]  # per bucket of BUCKETS, then one past the last (+Inf); not cumulative
    total: float = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(BUCKETS, value)] += 1  # le: a value on a bound counts in it
        self.total += value


@dataclass
class RequestStats:
    """What flexaid's request path counts: refusals of reserve/prepare by reason, and each
    request's time from arrival to answer (for a change, until it is on disk)."""

    reasons: Sequence[str]
    ops: Sequence[str]
    refusals: dict[str, int] = field(default_factory=dict)
    latency: dict[str, Histogram] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for reason in self.reasons:
            self.refusals.setdefault(reason, 0)
        for op in (*self.ops, OTHER_OP):
            self.latency.setdefault(op, Histogram([0] * (len(BUCKETS) + 1)))

    def refused(self, reason: str) -> None:
        self.refusals[reason] = self.refusals.get(reason, 0) + 1

    def observe(self, op: str | None, seconds: float) -> None:
        (self.latency.get(op) or self.latency[OTHER_OP]).observe(seconds)


def render(status: dict, stats: RequestStats | None = None) -> str:
    samples: dict[str, list[str]] = {name: [] for name in _HELP}

    def add(name: str, labels: dict, value: float | int) -> None:
        samples[name].append(f"{name}{_labels(**labels)} {value}")

    for card in status["cards"]:
        base = {"gpu": card["index"], "UUID": card["uuid"], "modelName": card["name"]}
        add("flexai_card_memory_total_bytes", base, card["memory"])
        add("flexai_card_memory_reserved_bytes", base, card["memory_reserved"])
        add("flexai_card_compute_reserved_ratio", base, _ratio(card["compute_reserved"]))
        add("flexai_card_slices", base, len(card["slices"]))
        used_total = None
        for s in card["slices"]:
            labels = {**base, "container": s["container_id"], "slice": s["slice_id"], **_pod_labels(s)}
            add("flexai_slice_memory_limit_bytes", labels, s["memory_bytes"])
            add("flexai_slice_compute_limit_ratio", labels, _ratio(s["compute"]))
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
    text = "".join(_block(name, lines) for name, lines in samples.items() if lines)
    return text + (_render_stats(stats) if stats is not None else "")


def _ratio(percent: int) -> float:
    return percent / 100


def _render_stats(stats: RequestStats) -> str:
    refusals = [f"flexai_reserve_refusals_total{_labels(reason=r)} {n}" for r, n in sorted(stats.refusals.items())]
    lines = []
    for op, hist in stats.latency.items():
        cumulative = 0
        for bound, count in zip((*map(repr, BUCKETS), "+Inf"), hist.counts):
            cumulative += count
            lines.append(f"flexai_request_duration_seconds_bucket{_labels(op=op, le=bound)} {cumulative}")
        lines.append(f"flexai_request_duration_seconds_sum{_labels(op=op)} {hist.total!r}")
        lines.append(f"flexai_request_duration_seconds_count{_labels(op=op)} {cumulative}")
    return (_family("flexai_reserve_refusals_total", "counter",
                    "Reserve and prepare requests flexaid refused, by reason.", refusals)
            + _family("flexai_request_duration_seconds", "histogram",
                      "Time from a request's arrival to its answer (a change's answer waits until it is on "
                      "disk), by operation.", lines))


def _family(name: str, kind: str, text: str, lines: Iterable[str]) -> str:
    return f"# HELP {name} {text}\n# TYPE {name} {kind}\n" + "\n".join(lines) + "\n"


def _pod_labels(slice_: dict) -> dict:
    pod = slice_.get("pod") or {}
    return {label: pod[key] for label, key in (("pod", "name"), ("namespace", "namespace")) if pod.get(key)}


def _block(name: str, lines: Iterable[str]) -> str:
    kind, text = _HELP[name]
    return _family(name, kind, text, lines)
