"""Kubernetes pods (issue 17, item 3): a CRI pod sandbox never gets a slice, and a slice records
the pod and namespace its container belongs to, for status and metrics. Pure functions here;
tests/test_kube_runc.py runs the same through real runc and flexaid."""

from __future__ import annotations

import json

import pytest

from flexai_hook.oci import argv
from flexai_hook import kube
from flexai_hook.daemon import ledger as L
from flexai_hook.daemon import metrics
from flexai_hook.oci import prepare
from flexai_hook.cli import status_view
from flexai_hook import validation
from flexai_hook.devices.inventory import Card
from flexai_hook.request import Request, RequestError, from_container
from flexai_hook.reservation import Reservation

GIB = 1 << 30
CONTAINERD_SANDBOX = {"io.kubernetes.cri.container-type": "sandbox", "io.kubernetes.cri.sandbox-id": "abc",
                      "io.kubernetes.cri.sandbox-name": "web-0", "io.kubernetes.cri.sandbox-namespace": "ml",
                      "flexai.io/fraction": "0.3"}
CRIO_SANDBOX = {"io.kubernetes.cri-o.ContainerType": "sandbox", "io.kubernetes.cri-o.KubeName": "web-0",
                "flexai.io/fraction": "0.3"}
CONTAINERD_CONTAINER = {"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": "abc",
                        "io.kubernetes.cri.sandbox-name": "web-0", "io.kubernetes.cri.sandbox-namespace": "ml",
                        "io.kubernetes.cri.container-name": "server", "flexai.io/fraction": "0.3"}


@pytest.mark.parametrize("annotations", [CONTAINERD_SANDBOX, CRIO_SANDBOX,
                                         {**CRIO_SANDBOX, "io.kubernetes.cri-o.ContainerType": " sandbox "}])
def test_a_cri_sandbox_asks_for_nothing_whatever_it_carries(annotations):
    assert from_container(["FLEXAI_FRACTION=0.5"], annotations) is None
    # not even a typo in a flexai.io/ key stops it: the pod's containers say that, once each
    assert from_container([], {**annotations, "flexai.io/fractoin": "0.3"}) is None
    assert kube.sandbox_reason(annotations).startswith("a Kubernetes pod sandbox (")


@pytest.mark.parametrize("annotations", [CONTAINERD_CONTAINER,
                                         {"io.kubernetes.cri-o.ContainerType": "container", "flexai.io/fraction": "0.3"},
                                         {"io.kubernetes.cri.container-type": "Sandbox", "flexai.io/fraction": "0.3"},
                                         {"flexai.io/fraction": "0.3"}])
def test_a_pod_container_and_anything_else_keeps_its_request(annotations):
    assert kube.sandbox_reason(annotations) is None
    assert from_container([], annotations) == Request(fraction=30)


def test_a_pod_container_with_a_typo_still_fails_closed():
    with pytest.raises(RequestError):
        from_container([], {**CONTAINERD_CONTAINER, "flexai.io/fractoin": "0.3"})


def test_the_reason_names_the_marker_for_the_debug_line():
    assert "io.kubernetes.cri.container-type=sandbox" in prepare.no_request_reason({"annotations": CONTAINERD_SANDBOX})
    assert "CRI-O" in prepare.no_request_reason({"annotations": CRIO_SANDBOX})
    assert "no FLEXAI_* env" in prepare.no_request_reason({"annotations": {}})
    assert "no FLEXAI_* env" in prepare.no_request_reason(["not", "a", "spec"])


POD = {"flexai.io/fraction": "0.3", "flexai.io/containers": "model, worker"}


@pytest.mark.parametrize("name_key", ["io.kubernetes.cri.container-name", "io.kubernetes.container.name"])
def test_flexai_io_containers_gives_the_pods_request_to_the_named_containers_only(name_key):
    assert from_container([], {**POD, name_key: "model"}) == Request(fraction=30)
    assert from_container([], {**POD, name_key: "worker"}) == Request(fraction=30)
    assert from_container([], {**POD, name_key: "istio-proxy"}) is None
    # a container not named may still ask for itself, in its own env
    assert from_container(["FLEXAI_FRACTION=0.1"], {**POD, name_key: "istio-proxy"}) == Request(fraction=10)
    reason = prepare.no_request_reason({"annotations": {**POD, name_key: "istio-proxy"}})
    assert reason == ("flexai.io/containers names model, worker; this container is istio-proxy, "
                      "so the pod's flexai.io/* annotations are not for it")


def test_flexai_io_containers_outside_kubernetes_and_on_the_sandbox():
    assert from_container([], POD) == Request(fraction=30)  # no container name: nothing to filter by
    sandbox = {**POD, "io.kubernetes.cri.container-type": "sandbox", "io.kubernetes.cri.container-name": "model"}
    assert from_container([], sandbox) is None


@pytest.mark.parametrize("value", ["", " , ", "Model", "a_b", "x" * 64, "ok," + "y" * 5000, "model;rm"])
def test_a_bad_flexai_io_containers_is_refused_in_one_line(value):
    with pytest.raises(RequestError) as err:
        from_container([], {"flexai.io/fraction": "0.3", "flexai.io/containers": value,
                            "io.kubernetes.cri.container-name": "model"})
    assert "\n" not in str(err.value) and "flexai.io/containers" in str(err.value)


def test_a_misspelled_containers_annotation_gets_a_hint():
    with pytest.raises(RequestError, match="did you mean flexai.io/containers"):
        from_container([], {"flexai.io/fraction": "0.3", "flexai.io/container": "model"})


@pytest.mark.parametrize("annotations, pod", [
    (CONTAINERD_CONTAINER, {"name": "web-0", "namespace": "ml"}),
    ({"io.kubernetes.pod.name": "a.b-1", "io.kubernetes.pod.namespace": "default",
      "io.kubernetes.cri.sandbox-name": "other"}, {"name": "a.b-1", "namespace": "default"}),
    # CRI-O: the namespace under its own prefix, the pod name only in the kubelet's labels
    ({"io.kubernetes.cri-o.Namespace": "kube-system", "io.kubernetes.cri-o.KubeName": "server",
      "io.kubernetes.cri-o.Labels": json.dumps({"io.kubernetes.pod.name": "dns-1",
                                                "io.kubernetes.pod.namespace": "kube-system",
                                                "io.kubernetes.container.name": "server"})},
     {"name": "dns-1", "namespace": "kube-system"}),
    ({"io.kubernetes.pod.name": "only-name"}, {"name": "only-name"}),
    ({}, {}),
    ({"flexai.io/fraction": "0.3"}, {}),
    # not Kubernetes names: never recorded (they would reach status lines and metric labels)
    ({"io.kubernetes.pod.name": 'x"} 1\nevil', "io.kubernetes.pod.namespace": "UPPER"}, {}),
    ({"io.kubernetes.pod.name": "a" * 254, "io.kubernetes.pod.namespace": "b" * 64}, {}),
    ({"io.kubernetes.pod.name": 3, "io.kubernetes.cri-o.Labels": "{not json"}, {}),
    ({"io.kubernetes.cri-o.Labels": json.dumps(["io.kubernetes.pod.name"])}, {}),
])
def test_pod_of(annotations, pod):
    assert kube.pod_of(annotations) == pod
    assert prepare.pod_of({"annotations": annotations}) == pod
    assert validation.problem("protocol.schema.json", pod, "pod") is None


def test_describe():
    assert kube.describe({"name": "web-0", "namespace": "ml"}) == "ml/web-0"
    assert kube.describe({"name": "web-0"}) == "web-0"
    assert kube.describe({"namespace": "ml"}) == "ml/?"
    assert kube.describe({}) == ""


CARDS = [Card(index=0, uuid="GPU-a", name="sim", memory=16 * GIB, device_paths=("/dev/s0",), backend="simulated")]


def _reserve(ledger, cid, pod=None):
    return L.reserve(ledger, CARDS, cid, Request(fraction=30), policy="best-fit", slice_root="/s", now=1.0,
                     new_id=lambda: "0123456789ab" if cid == "c1" else "ba9876543210", pod=pod)


def test_the_reservation_records_the_pod_and_round_trips_through_the_ledger_file(tmp_path):
    led, with_pod = _reserve(L.Ledger(), "c1", {"name": "web-0", "namespace": "ml"})
    led, plain = _reserve(led, "c2")
    assert with_pod.pod == {"name": "web-0", "namespace": "ml"}
    assert with_pod.to_json()["pod"] == {"name": "web-0", "namespace": "ml"}
    assert "pod" not in plain.to_json()  # outside Kubernetes the record is as it always was
    for r in (with_pod, plain):
        assert validation.problem("protocol.schema.json", r.to_json(), "reservation") is None
        assert Reservation.from_json(r.to_json()) == r
    f = L.LedgerFile(tmp_path / "ledger.json")
    f.save(led)
    assert f.load().reservations == {"c1": with_pod, "c2": plain}


def test_a_ledger_written_before_pods_were_recorded_still_loads(tmp_path):
    old = {"container_id": "c1", "slice_id": "0123456789ab", "card_index": 0, "card_uuid": "GPU-a",
           "card_name": "sim", "card_memory": 16 * GIB, "memory_bytes": 4 * GIB, "compute": 25,
           "priority": "normal", "device_paths": ["/dev/s0"], "slice_dir": "/s/0123456789ab", "created": 1.0,
           "request": {"fraction": 25, "priority": "normal"}, "runtime": {}, "backend": "simulated",
           "compute_mode": "work-conserving", "owner_uid": 0}
    path = tmp_path / "ledger.json"
    path.write_text(json.dumps({"version": 1, "reservations": [old]}))
    (r,) = L.LedgerFile(path).load(CARDS).reservations.values()
    assert r.pod == {} and r.to_json() == old


def test_reserve_message_with_a_pod_is_valid_and_a_bad_pod_is_not():
    msg = {"op": "reserve", "container_id": "c1", "request": {"fraction": 30},
           "pod": {"name": "web-0", "namespace": "ml"}}
    assert validation.problem("protocol.schema.json", msg, "reserve_message") is None
    for pod in ({"name": "Web"}, {"name": "web", "uid": "x"}, {"namespace": "n" * 64}, {"name": ""}):
        assert validation.problem("protocol.schema.json", {**msg, "pod": pod}, "reserve_message") is not None


def _status(pod):
    s = {"container_id": "c1", "slice_id": "0123456789ab", "card_index": 0, "card_uuid": "GPU-a",
         "card_name": "sim", "card_memory": 16 * GIB, "memory_bytes": 4 * GIB, "compute": 25, "priority": "normal",
         "device_paths": ["/dev/s0"], "slice_dir": "/s/x", "created": 0.0}
    if pod is not None:
        s["pod"] = pod
    return {"backend": "simulated", "policy": "flexai",
            "cards": [{"index": 0, "uuid": "GPU-a", "name": "sim", "memory": 16 * GIB,
                       "memory_reserved": 4 * GIB, "compute_reserved": 25, "slices": [s]}]}


def test_status_shows_namespace_and_pod():
    text = status_view.render(_status({"name": "web-0", "namespace": "ml"}), "/s", now=0.0, name_of=lambda _: None)
    assert "pod ml/web-0" in text
    assert "pod " not in status_view.render(_status(None), "/s", now=0.0, name_of=lambda _: None)


def test_metrics_label_slices_with_pod_and_namespace():
    text = metrics.render(_status({"name": "web-0", "namespace": "ml"}))
    line = next(x for x in text.splitlines() if x.startswith("flexai_slice_memory_limit_bytes{"))
    assert 'container="c1"' in line and 'pod="web-0"' in line and 'namespace="ml"' in line
    assert "pod=" not in metrics.render(_status(None))
    card = next(x for x in text.splitlines() if x.startswith("flexai_card_slices{"))
    assert "pod=" not in card  # per-card series are not a pod's


@pytest.mark.parametrize("args, debug", [(["--debug", "create", "c1"], True), (["create", "c1"], False),
                                         (["--debug=false", "create", "c1"], False),
                                         (["--root", "/r", "--debug", "--log", "/l", "run", "c1"], True)])
def test_the_runtime_knows_when_the_engine_asked_for_debug_lines(args, debug):
    inv = argv.parse(args)
    assert inv.debug is debug and inv.container_id == "c1"
