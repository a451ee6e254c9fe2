"""flexaid's Prometheus text (flexai_hook/daemon/metrics.py), read with a strict parser of the format
(tests/prom_support.py): pure functions here; the endpoint after real requests is in
test_daemon_service.py."""

from __future__ import annotations

import pytest

import prom_support
from flexai_hook.daemon import service as daemon
from flexai_hook.daemon import metrics


def _status(container_id: str) -> dict:
    slice_ = {"container_id": container_id, "slice_id": "s1", "memory_bytes": 1 << 30, "compute": 30,
              "pod": {"name": "web-0", "namespace": "ml"}, "usage": {"memory_used": 5, "launches": 7, "processes": 1}}
    return {"cards": [{"index": 0, "uuid": "GPU-1", "name": 'sim "fast"\\card', "memory": 16 << 30,
                       "memory_reserved": 1 << 30, "compute_reserved": 30, "slices": [slice_]}]}


def test_render_reads_back_with_every_label_value_escaped():
    stats = metrics.RequestStats(daemon.REFUSAL_REASONS, daemon.OPS)
    stats.refused("never_fits")
    for seconds in (0.0004, 0.001, 0.3, 60):  # on a bound counts in it; past the last, only +Inf
        stats.observe("reserve", seconds)
    stats.observe("no-such-op", 0.01)
    families = prom_support.parse(metrics.render(_status('c"1\n\\x'), stats))
    ratio = families["flexai_slice_compute_limit_ratio"]
    assert ratio.value(container='c"1\n\\x', modelName='sim "fast"\\card', pod="web-0", namespace="ml") == 0.3
    assert families["flexai_card_compute_reserved_ratio"].value(gpu="0") == 0.3
    latency = families["flexai_request_duration_seconds"]
    bucket = "flexai_request_duration_seconds_bucket"
    assert [latency.value(bucket, op="reserve", le=le) for le in ("0.0005", "0.001", "0.25", "0.5", "10.0", "+Inf")] \
        == [1, 2, 2, 3, 3, 4]
    assert latency.value("flexai_request_duration_seconds_count", op=metrics.OTHER_OP) == 1
    assert families["flexai_reserve_refusals_total"].value(reason="never_fits") == 1
    assert families["flexai_slice_kernel_launches_total"].kind == "counter"


@pytest.mark.parametrize("text, problem", [
    ("# TYPE a_total counter\na_total 1\n# TYPE b gauge\nb 1\na_total{x=\"1\"} 2\n", "two places"),
    ("# TYPE a counter\na 1\n", "counters are *_total"),
    ("a{x=\"1\"} 1\na{x=\"1\"} 2\n", "twice"),
    ("a{x=\"\\q\"} 1\n", "bad escape"),
    ("a 1\n# TYPE a gauge\n", "late"),
    ('# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n', "not cumulative"),
    ('# TYPE h histogram\nh_bucket{le="1"} 1\nh_sum 1\nh_count 1\n', "+Inf"),
    ("a 1", "newline"),
])
def test_the_parser_rejects_what_prometheus_would_or_flexai_never_should(text, problem):
    with pytest.raises(ValueError, match=problem.replace("*", r"\*").replace("+", r"\+")):
        prom_support.parse(text)
