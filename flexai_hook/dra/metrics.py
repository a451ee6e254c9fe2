"""The DRA agent's Prometheus metrics: what its request path counts (`Stats`) and the text
exposition (`render`, pure).

Conventions are flexaid's (flexai_hook/daemon/metrics.py, which this room may not import):
shares are ratios 0..1 (`_ratio`), counters end in _total, every fixed series exists from the
start at 0 so rate() sees the first error. A prepared claim is labelled `namespace`, `claim`
(its name) and `uid`; the pods that use it (the claim's status.reservedFor, as read at its last
prepare) are a separate info series `flexai_dra_claim_pod_info`, so a claim shared by two pods
is counted once and still joins to both.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .claim import claim_of

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPS = ("prepare", "unprepare")  # per claim, not per kubelet call (one call may carry many claims)
# seconds: a prepare is a GET of the claim, a reserve in flexaid and an fsync'd CDI spec (~5-20 ms)
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class ClaimInfo:
    namespace: str
    name: str
    pods: tuple[str, ...] = ()  # reservedFor entries of resource "pods"


def claim_info(obj: Mapping) -> ClaimInfo:
    """Labels of a ResourceClaim (API JSON): its metadata and the pods it is reserved for."""
    meta = obj.get("metadata") or {}
    reserved = (obj.get("status") or {}).get("reservedFor") or ()
    pods = tuple(sorted({str(r.get("name")) for r in reserved
                         if isinstance(r, Mapping) and r.get("resource") == "pods" and not r.get("apiGroup")
                         and r.get("name")}))
    return ClaimInfo(str(meta.get("namespace", "")), str(meta.get("name", "")), pods)


@dataclass
class Stats:
    """Counts and latencies per op, and the labels of the claims this agent prepared (by UID).
    Thread-safe: the gRPC workers and the HTTP server share it."""

    requests: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OPS, 0))
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OPS, 0))
    buckets: dict[str, list[int]] = field(default_factory=lambda: {op: [0] * (len(BUCKETS) + 1) for op in OPS})
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(OPS, 0.0))
    claims: dict[str, ClaimInfo] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def observe(self, op: str, seconds: float, failed: bool) -> None:
        with self.lock:
            self.requests[op] += 1
            self.errors[op] += int(failed)
            self.buckets[op][bisect_left(BUCKETS, seconds)] += 1  # le: a value on a bound counts in it
            self.seconds[op] += seconds

    def remember(self, uid: str, info: ClaimInfo) -> None:
        with self.lock:
            self.claims[uid] = info

    def forget(self, uid: str) -> None:
        with self.lock:
            self.claims.pop(uid, None)


@dataclass(frozen=True)
class Publishing:
    """The publisher's counters (publish.PublishStats), as render reads them."""

    published: int = 0
    errors: int = 0
    generation: int = 0


def _escape(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: object) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _ratio(percent: int) -> float:
    return percent / 100


def _family(name: str, kind: str, text: str, lines: Iterable[str]) -> str:
    return f"# HELP {name} {text}\n# TYPE {name} {kind}\n" + "".join(line + "\n" for line in lines)


def render(status: Mapping | None, stats: Stats, publishing: Publishing | None = None) -> str:
    """`status`: flexaid's status reply (None: flexaid did not answer); what it holds under
    claim reservation ids is what is prepared, so the series survive an agent restart (a claim
    not prepared since then has its UID but no name)."""
    with stats.lock:
        claims = dict(stats.claims)
        requests, errors = dict(stats.requests), dict(stats.errors)
        buckets, seconds = {op: list(b) for op, b in stats.buckets.items()}, dict(stats.seconds)
    memory, compute, pods = [], [], []
    uids: set[str] = set()
    for card in (status or {}).get("cards", ()):
        for s in card.get("slices", ()):
            parsed = claim_of(str(s.get("container_id", "")))
            if not parsed:
                continue
            uid, device = parsed
            uids.add(uid)
            info = claims.get(uid, ClaimInfo("", ""))
            base = _labels(namespace=info.namespace, claim=info.name, uid=uid, device=device, gpu=card.get("index", ""))
            memory.append(f"flexai_dra_claim_memory_limit_bytes{base} {int(s['memory_bytes'])}")
            compute.append(f"flexai_dra_claim_compute_limit_ratio{base} {_ratio(int(s['compute']))}")
    for uid in sorted(uids):
        info = claims.get(uid)
        for pod in (info.pods if info else ()):
            pods.append(f"flexai_dra_claim_pod_info{_labels(namespace=info.namespace, claim=info.name, uid=uid, pod=pod)} 1")
    out = [_family("flexai_dra_flexaid_up", "gauge", "Whether flexaid answered this scrape (1) or not (0).",
                   [f"flexai_dra_flexaid_up {int(status is not None)}"])]
    if status is not None:
        out.append(_family("flexai_dra_prepared_claims", "gauge", "Claims that hold a slice on this node.",
                           [f"flexai_dra_prepared_claims {len(uids)}"]))
        out.append(_family("flexai_dra_claim_memory_limit_bytes", "gauge",
                           "Memory of the slice a prepared claim holds on a card.", memory))
        out.append(_family("flexai_dra_claim_compute_limit_ratio", "gauge",
                           "Compute share of the card a prepared claim holds (0 to 1).", compute))
        out.append(_family("flexai_dra_claim_pod_info", "gauge",
                           "A pod a prepared claim is reserved for (status.reservedFor at its last prepare).", pods))
    out.append(_family("flexai_dra_claims_total", "counter", "Claims the kubelet asked to prepare or unprepare, by op.",
                       [f"flexai_dra_claims_total{_labels(op=op)} {requests[op]}" for op in OPS]))
    out.append(_family("flexai_dra_claim_errors_total", "counter",
                       "Claims whose prepare or unprepare answered an error, by op.",
                       [f"flexai_dra_claim_errors_total{_labels(op=op)} {errors[op]}" for op in OPS]))
    out.append(_family("flexai_dra_claim_duration_seconds", "histogram",
                       "Time to prepare or unprepare one claim, by op.", _histogram(buckets, seconds)))
    if publishing is not None:
        out.append(_family("flexai_dra_resourceslice_publishes_total", "counter",
                           "Writes (create or update) of this node's ResourceSlice.",
                           [f"flexai_dra_resourceslice_publishes_total {publishing.published}"]))
        out.append(_family("flexai_dra_resourceslice_publish_errors_total", "counter",
                           "Attempts to publish this node's ResourceSlice that failed.",
                           [f"flexai_dra_resourceslice_publish_errors_total {publishing.errors}"]))
        out.append(_family("flexai_dra_resourceslice_pool_generation", "gauge",
                           "The pool generation the API server holds (0: not published yet).",
                           [f"flexai_dra_resourceslice_pool_generation {publishing.generation}"]))
    return "".join(out)


def _histogram(buckets: Mapping[str, Sequence[int]], seconds: Mapping[str, float]) -> list[str]:
    lines = []
    for op in OPS:
        cumulative = 0
        for bound, count in zip((*map(repr, BUCKETS), "+Inf"), buckets[op]):
            cumulative += count
            lines.append(f"flexai_dra_claim_duration_seconds_bucket{_labels(op=op, le=bound)} {cumulative}")
        lines.append(f"flexai_dra_claim_duration_seconds_sum{_labels(op=op)} {seconds[op]!r}")
        lines.append(f"flexai_dra_claim_duration_seconds_count{_labels(op=op)} {cumulative}")
    return lines
