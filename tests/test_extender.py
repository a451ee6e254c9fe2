"""flexai's kube-scheduler extender (flexai_hook/extender/): the pure mappings (ResourceSlices +
claims → the cluster's cards; a pod's claims → what it asks), then filter and prioritize over
HTTP with bodies shaped as kube-scheduler sends them (extender/v1 ExtenderArgs: Go field names,
a Pod and a NodeList or NodeNames, built with the official kubernetes client's models), against
the fake API server of tests/dra_support.py; then `flexai extender` as a process, stopped by
SIGTERM. No kube-scheduler runs here."""

from __future__ import annotations

import json
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

import dra_support as ds
from conftest import tool
from flexai_hook.dra import slices
from flexai_hook.dra.apiserver import ApiServer
from flexai_hook.extender import decide, pod as pod_mod, protocol, view as view_mod
from flexai_hook.extender.cache import Cache
from flexai_hook.extender.server import Extender, Server
from flexai_hook.placement import CardState, Demand, Node, choose_node

GIB = 1 << 30
CARD = 40 * GIB


def k8s():
    from kubernetes import client as k

    return k


def to_json(model) -> dict:
    return k8s().ApiClient().sanitize_for_serialization(model)


def node_slice(node: str, cards: int = 1, memory: int = CARD, backend: str = "nvml", generation: int = 1) -> dict:
    """The node's ResourceSlice as the agent publishes it, round-tripped through the models."""
    status = {"backend": backend, "cards": [{"index": i, "uuid": f"GPU-{node}-{i}", "name": "A100", "memory": memory}
                                            for i in range(cards)]}
    obj = slices.resource_slice(node, status, generation)
    back = to_json(ds.parse_slice(obj))
    assert back == obj  # the published shape is what the API serves
    return obj


def allocated(name: str, node: str, device: str, memory: str | None, compute: str | None, ns: str = "default") -> dict:
    consumed = {k: v for k, v in (("memory", memory), ("compute", compute)) if v is not None} or None
    obj = ds.resource_claim(ns, name, f"uid-{name}", [{"device": device, "consumed": consumed}], pool=node)
    assert to_json(ds.parse_claim(obj)) == obj
    return obj


def pending(name: str, requests: dict | None = None, ns: str = "default", device_class: str = "gpu.flexai.io",
            count: int | None = None) -> dict:
    """A claim as the resourceclaim controller makes it from a template: spec, no status."""
    k = k8s()
    claim = k.ResourceV1ResourceClaim(
        api_version="resource.k8s.io/v1", kind="ResourceClaim",
        metadata=k.V1ObjectMeta(name=name, namespace=ns, uid=f"uid-{name}"),
        spec=k.V1ResourceClaimSpec(devices=k.V1DeviceClaim(requests=[k.V1DeviceRequest(
            name="gpu", exactly=k.V1ExactDeviceRequest(
                device_class_name=device_class, count=count,
                capacity=k.V1CapacityRequirements(requests=requests) if requests else None))])))
    return to_json(claim)


def a_pod(name: str, claim: str | None = None, template: bool = True, ns: str = "default") -> dict:
    """A pod using `claim`: through a template (the generated name in status), or by name."""
    k = k8s()
    refs = statuses = None
    if claim is not None:
        if template:
            refs = [k.V1PodResourceClaim(name="gpu", resource_claim_template_name="gpu-tpl")]
            statuses = [k.V1PodResourceClaimStatus(name="gpu", resource_claim_name=claim)]
        else:
            refs = [k.V1PodResourceClaim(name="gpu", resource_claim_name=claim)]
    pod = k.V1Pod(api_version="v1", kind="Pod", metadata=k.V1ObjectMeta(name=name, namespace=ns, uid=f"pod-{name}"),
                  spec=k.V1PodSpec(containers=[k.V1Container(name="c", image="x", resources=k.V1ResourceRequirements(
                      claims=[k.CoreV1ResourceClaim(name="gpu")] if claim else None))], resource_claims=refs),
                  status=k.V1PodStatus(phase="Pending", resource_claim_statuses=statuses))
    return to_json(pod)


def args_json(pod: dict, names: list[str], full_nodes: bool = False) -> bytes:
    """ExtenderArgs as kube-scheduler marshals it: the Go type has no json tags, so the keys are
    the Go field names; Nodes (a NodeList) with nodeCacheCapable false, else NodeNames."""
    if full_nodes:
        k = k8s()
        nodes = to_json(k.V1NodeList(api_version="v1", kind="NodeList", metadata=k.V1ListMeta(),
                                     items=[k.V1Node(metadata=k.V1ObjectMeta(name=n)) for n in names]))
        return json.dumps({"Pod": pod, "Nodes": nodes, "NodeNames": None}).encode()
    return json.dumps({"Pod": pod, "Nodes": None, "NodeNames": names}).encode()


# --- pure: the cluster view -------------------------------------------------------------------

def test_slices_and_allocated_claims_become_each_nodes_cards():
    s = [node_slice("node-a", 2), node_slice("node-b", 1),
         {**node_slice("node-b", 1), "spec": {**node_slice("node-b", 1)["spec"], "driver": "other.example.com"}}]
    claims = [allocated("c1", "node-a", "gpu-0", "10Gi", "25"), allocated("c2", "node-a", "gpu-0", "4Gi", "5"),
              allocated("whole", "node-b", "gpu-0", None, None)]  # no consumedCapacity: the whole card
    v = view_mod.build(s, claims)
    assert sorted(v.nodes) == ["node-a", "node-b"]
    c0, c1 = v.nodes["node-a"].cards
    assert (c0.memory_total, c0.memory_free, c0.compute_free, c0.whole_free) == (CARD, CARD - 14 * GIB, 700, False)
    assert (c1.memory_free, c1.compute_free, c1.whole_free) == (CARD, 1000, True)
    (b0,) = v.nodes["node-b"].cards
    assert (b0.memory_free, b0.compute_free, b0.whole_free) == (0, 0, False)
    assert v.models_of("nvidia") == ("A100",) and v.skipped == ()


def test_a_pool_being_replaced_counts_only_its_newest_generation_and_bad_devices_are_skipped():
    old, new = node_slice("node-a", 1, generation=1), node_slice("node-a", 2, generation=2)
    old["metadata"]["name"] = "old"
    new["spec"]["devices"].append({"name": "gpu-x", "capacity": {}})
    v = view_mod.build([old, new], [])
    assert [c.index for c in v.nodes["node-a"].cards] == [0, 1]
    assert len(v.skipped) == 1 and "gpu-x" in v.skipped[0]


# --- pure: what a pod asks ----------------------------------------------------------------------

def test_a_claims_capacity_requests_become_the_demand_the_allocator_will_consume():
    claims = {("default", "c"): pending("c", {"memory": "8Gi", "compute": "30"})}
    asked = pod_mod.asks(a_pod("p", "c"), claims)
    assert asked.passthrough == "" and asked.asks[0].demand == Demand(memory=8 * GIB, compute=300)
    # rounded up by the slice's requestPolicy: whole MiB, whole percent
    claims = {("default", "c"): pending("c", {"memory": "1000", "compute": "2.5"})}
    assert pod_mod.asks(a_pod("p", "c", template=False), claims).asks[0].demand == Demand(memory=1 << 20, compute=30)
    # a capacity left out is consumed whole (the slice's default): a card with nothing on it
    claims = {("default", "c"): pending("c", {"compute": "30"})}
    assert pod_mod.asks(a_pod("p", "c"), claims).asks[0].demand == Demand(memory=0, compute=1000)
    claims = {("default", "c"): pending("c", None, count=2)}
    assert pod_mod.asks(a_pod("p", "c"), claims).asks[0].demand == Demand(memory=0, compute=0, cards=2)
    claims = {("default", "c"): pending("c", {"compute": "30"}, device_class="nvidia.gpu.flexai.io")}
    assert pod_mod.asks(a_pod("p", "c"), claims).asks[0].vendor == "nvidia"


def test_pods_the_extender_does_not_decide_for_pass_through():
    assert pod_mod.asks(a_pod("p"), {}).passthrough == "no ResourceClaims"
    other = pending("c", {"memory": "1Gi"}, device_class="gpu.example.com")
    assert "no unallocated" in pod_mod.asks(a_pod("p", "c"), {("default", "c"): other}).passthrough
    done = allocated("c", "node-a", "gpu-0", "8Gi", "30")
    assert "no unallocated" in pod_mod.asks(a_pod("p", "c"), {("default", "c"): done}).passthrough
    missing = pod_mod.asks(a_pod("p", "c"), {})
    assert missing.missing == (("default", "c"),) and missing.asks == ()
    # a template whose claim the controller has not made yet names nothing
    unresolved = a_pod("p", "c")
    unresolved["status"].pop("resourceClaimStatuses")
    assert pod_mod.claim_names(unresolved) == []


# --- pure: filter and prioritize ----------------------------------------------------------------

def fragmented_view() -> view_mod.View:
    """node-a: one card with 30 % left; node-b: one empty card."""
    return view_mod.build([node_slice("node-a"), node_slice("node-b")],
                          [allocated("old", "node-a", "gpu-0", "28Gi", "70")])


def test_filter_keeps_the_node_that_leaves_a_whole_card_where_stock_first_fit_would_strand_it():
    v = fragmented_view()
    small = pod_mod.asks(a_pod("p", "c"), {("default", "c"): pending("c", {"memory": "12Gi", "compute": "30"})})
    # kube-scheduler's node scores do not see the cards: with node-b the emptier by CPU, the
    # stock rule (placement's dra-first-fit model of it) breaks node-b's whole card
    by_cpu = [Node(n.name, 60_000 if n.name == "node-b" else 8_000, n.cards, 64_000) for n in v.nodes.values()]
    assert choose_node(by_cpu, small.asks[0].demand, 1000, "dra-first-fit")[0] == "node-b"
    result = decide.filter_nodes(v, small, ("node-a", "node-b"), "flexai", None)
    assert result.keep == {"node-a"} and set(result.failed) == {"node-b"} and result.unresolvable == {}
    assert decide.scores(v, small, ("node-a", "node-b"), "flexai", None) == {"node-a": 10, "node-b": 1}


def test_filter_passes_every_node_through_when_its_view_finds_none_that_fits():
    v = view_mod.build([node_slice("node-a")], [allocated("old", "node-a", "gpu-0", "40Gi", "100")])
    asked = pod_mod.PodAsks(asks=(pod_mod.Ask("default/c", Demand(memory=GIB, compute=100)),))
    assert decide.filter_nodes(v, asked, ("node-a", "node-x"), "flexai", None).keep == {"node-a", "node-x"}
    assert decide.scores(v, asked, ("node-a", "node-x"), "flexai", None) == {"node-a": 0, "node-x": 0}


# --- over HTTP, as kube-scheduler calls it ------------------------------------------------------

@pytest.fixture
def cluster(tmp_path):
    token = secrets.token_hex(8)
    (tmp_path / "token").write_text(token)
    api = ds.FakeApiServer(token)
    for name in ("node-a", "node-b"):
        api.slices[f"{name}-gpu.flexai.io"] = node_slice(name)
    api.put(allocated("old", "node-a", "gpu-0", "28Gi", "70"))
    cache = Cache(ApiServer(api.url, str(tmp_path / "token")), interval=3600, max_age=0)
    server = Server("127.0.0.1:0", Extender(cache))
    server.start()
    try:
        yield api, cache, f"http://{server.address}"
    finally:
        server.stop()
        api.close()


def post(url: str, body: bytes) -> tuple[int, object]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_filter_and_prioritize_over_http_keep_the_node_that_leaves_room(cluster):
    api, cache, url = cluster
    cache.refresh()
    api.put(pending("small", {"memory": "12Gi", "compute": "30"}))  # made after the relist: fetched by name
    pod = a_pod("p", "small")
    code, result = post(url + "/filter", args_json(pod, ["node-a", "node-b"]))
    assert code == 200 and result["NodeNames"] == ["node-a"] and result["Error"] == ""
    assert set(result["FailedNodes"]) == {"node-b"}
    code, result = post(url + "/filter", args_json(pod, ["node-a", "node-b"], full_nodes=True))
    assert code == 200 and [n["metadata"]["name"] for n in result["Nodes"]["items"]] == ["node-a"]
    back = k8s().ApiClient()._ApiClient__deserialize(result["Nodes"], "V1NodeList")
    assert back.items[0].metadata.name == "node-a"
    code, result = post(url + "/prioritize", args_json(pod, ["node-a", "node-b"]))
    assert code == 200 and result == [{"Host": "node-a", "Score": 10}, {"Host": "node-b", "Score": 1}]
    # the scheduler allocates it on node-a; the next relist sees node-a full, and a whole-card
    # pod finds node-b's card still whole
    api.put(allocated("small", "node-a", "gpu-0", "12Gi", "30"))
    api.put(pending("big", {"memory": "40Gi", "compute": "100"}))
    cache.refresh()
    code, result = post(url + "/filter", args_json(a_pod("q", "big"), ["node-a", "node-b"]))
    assert code == 200 and result["NodeNames"] == ["node-b"]


def test_a_pod_without_claims_or_with_an_allocated_claim_passes_through(cluster):
    api, cache, url = cluster
    cache.refresh()
    for pod in (a_pod("plain"), a_pod("reuser", "old", template=False)):
        code, result = post(url + "/filter", args_json(pod, ["node-a", "node-b", "cpu-only"]))
        assert code == 200 and result["NodeNames"] == ["node-a", "node-b", "cpu-only"] and not result["FailedNodes"]
        code, result = post(url + "/prioritize", args_json(pod, ["node-a", "node-b"]))
        assert result == [{"Host": "node-a", "Score": 0}, {"Host": "node-b", "Score": 0}]


@pytest.mark.parametrize("body", [b"{not json", b"[]", b'{"Pod": 3}', b'{"Pod": {}}', b'{"Pod": {}, "NodeNames": [1]}'])
def test_garbage_gets_http_400_with_one_line(cluster, body):
    _, _, url = cluster
    code, text = post(url + "/filter", body)
    assert code == 400 and isinstance(text, str) and text.count("\n") == 1 and text.strip()


def test_api_server_down_makes_filter_answer_an_error_and_prioritize_zero(cluster):
    api, cache, url = cluster
    api.put(pending("small", {"memory": "12Gi", "compute": "30"}))
    api.down()
    cache.refresh()
    code, result = post(url + "/filter", args_json(a_pod("p", "small"), ["node-a", "node-b"]))
    assert code == 200 and "not reachable" in result["Error"] and "ignorable" in result["Error"]
    assert "\n" not in result["Error"] and "NodeNames" not in result
    code, result = post(url + "/prioritize", args_json(a_pod("p", "small"), ["node-a"]))
    assert code == 200 and result == [{"Host": "node-a", "Score": 0}]
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(url + "/healthz", timeout=30)
    assert err.value.code == 503
    api.up()
    cache.refresh()
    code, result = post(url + "/filter", args_json(a_pod("p", "small"), ["node-a", "node-b"]))
    assert result["NodeNames"] == ["node-a"]


def test_replies_use_the_go_field_names_kube_scheduler_decodes():
    a = protocol.parse_args(json.dumps({"pod": {"metadata": {}}, "nodenames": ["x"]}).encode())  # any case, as Go reads
    assert a.names == ("x",)
    assert set(protocol.filter_result(a, {"x"}, {}, {})) == {"NodeNames", "FailedNodes", "FailedAndUnresolvableNodes",
                                                              "Error"}
    assert protocol.priorities({"x": 99}, ("x",)) == [{"Host": "x", "Score": protocol.MAX_EXTENDER_PRIORITY}]


# --- `flexai extender` as a process -------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_command_serves_and_stops_cleanly_on_sigterm(tmp_path):
    token = secrets.token_hex(8)
    (tmp_path / "token").write_text(token)
    api = ds.FakeApiServer(token)
    api.slices["node-a-gpu.flexai.io"] = node_slice("node-a")
    port = free_port()
    log = open(tmp_path / "extender.log", "wb")
    proc = subprocess.Popen([tool("flexai"), "extender", "--listen", f"127.0.0.1:{port}", "--kube-api", api.url,
                             "--token-file", str(tmp_path / "token")], stdout=log, stderr=log)
    log.close()
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as reply:
                    assert reply.read() == b"ok\n"
                break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None, (tmp_path / "extender.log").read_text()
                assert time.monotonic() < deadline, "flexai extender did not answer /healthz"
                time.sleep(0.1)
        code, result = post(f"http://127.0.0.1:{port}/filter", args_json(a_pod("plain"), ["node-a"]))
        assert code == 200 and result["NodeNames"] == ["node-a"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        assert "SIGTERM: stopping" in (tmp_path / "extender.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        api.close()


def test_the_command_fails_with_one_line(tmp_path):
    ran = subprocess.run([tool("flexai"), "extender", "--listen", "nowhere", "--kube-api", "http://127.0.0.1:1"],
                         capture_output=True, text=True, timeout=60)
    assert ran.returncode == 1 and ran.stderr.count("\n") == 1 and "HOST:PORT" in ran.stderr
