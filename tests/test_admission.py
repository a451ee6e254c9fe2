"""flexai's admission webhook (`flexai admission`): a ResourceClaim naming only memory or only
compute gets the other in the same share of the card, as FLEXAI_MEMORY / FLEXAI_COMPUTE alone do.

Pure parts (admission/defaults.py, review.py) over claims built with the official kubernetes
client's models and parsed back through them; the HTTPS server with a real certificate, as the
API server calls it (AdmissionReview v1, the JSON Patch applied with the `jsonpatch` library);
the command as a process stopped by pid.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import jsonpatch
import pytest
from hypothesis import given, settings, strategies as st

import dra_support as ds
from conftest import tool
from flexai_hook.admission import defaults, review
from flexai_hook.admission.server import Server, Sizes
from flexai_hook.dra import claim as claim_mod, slices
from flexai_hook.dra.apiserver import ApiServer
from flexai_hook.extender import pod as pod_mod
from flexai_hook.placement.model import MILLI
from flexai_hook.request import Request

GIB, MIB = 1 << 30, 1 << 20


def k8s():
    from kubernetes import client as k

    return k


def to_json(model) -> dict:
    return k8s().ApiClient().sanitize_for_serialization(model)


def claim_spec(requests: dict | None, device_class: str = "gpu.flexai.io", name: str = "gpu", **exact) -> dict:
    """A ResourceClaimSpec with one exact request, built with the models."""
    k = k8s()
    return to_json(k.V1ResourceClaimSpec(devices=k.V1DeviceClaim(requests=[k.V1DeviceRequest(
        name=name, exactly=k.V1ExactDeviceRequest(
            device_class_name=device_class,
            capacity=k.V1CapacityRequirements(requests=requests) if requests else None, **exact))])))


def parse_spec(data: dict):
    return k8s().ApiClient()._ApiClient__deserialize(data, "V1ResourceClaimSpec")


def filled(spec: dict, cards) -> dict:
    """fill's result as a whole spec, checked to round-trip through the models."""
    out = defaults.fill(spec, cards)
    assert out.requests is not None, out.warnings
    new = {**spec, "devices": {**spec["devices"], "requests": out.requests}}
    assert to_json(parse_spec(new)) == new  # every field is one the API knows, in its shape
    return new


def node_slice(node: str, memory: int, backend: str = "nvml", cards: int = 2) -> dict:
    status = {"backend": backend, "cards": [{"index": i, "uuid": f"GPU-{node}-{i}", "name": "X", "memory": memory}
                                            for i in range(cards)]}
    return slices.resource_slice(node, status)


SIXTEEN = defaults.Card(16 * GIB, "nvidia")
EIGHTY = defaults.Card(80 * GIB, "nvidia")
ASCEND = defaults.Card(64 * GIB, "huawei")


# --- pure: what a claim is completed with ------------------------------------------------------

def test_one_card_size_gets_the_missing_capacity_in_place():
    new = filled(claim_spec({"memory": "4Gi"}), [SIXTEEN])
    exact = new["devices"]["requests"][0]["exactly"]
    assert exact["capacity"]["requests"] == {"memory": str(4 * GIB), "compute": "25"}
    assert "selectors" not in exact and "firstAvailable" not in new["devices"]["requests"][0]
    new = filled(claim_spec({"compute": "30"}), [SIXTEEN])
    # 30 % of 16 GiB, up to the slice's 1 MiB step: what the allocator would consume
    assert new["devices"]["requests"][0]["exactly"]["capacity"]["requests"] == {
        "compute": "30", "memory": str(-(-16 * GIB * 30 // 100 // MIB) * MIB)}


def test_several_card_sizes_become_first_available_alternatives_smallest_first():
    spec = claim_spec({"memory": "8Gi"}, selectors=[k8s().V1DeviceSelector(
        cel=k8s().V1CELDeviceSelector(expression='device.attributes["gpu.flexai.io"].model == "X"'))],
        tolerations=[k8s().V1DeviceToleration(key="maintenance", operator="Exists")])
    new = filled(spec, [EIGHTY, SIXTEEN, ASCEND])
    request = new["devices"]["requests"][0]
    assert request["name"] == "gpu" and "exactly" not in request
    subs = request["firstAvailable"]
    assert [s["name"] for s in subs] == ["card-16gi", "card-64gi", "card-80gi"]
    assert [s["capacity"]["requests"] for s in subs] == [
        {"memory": str(8 * GIB), "compute": "50"}, {"memory": str(8 * GIB), "compute": "13"},
        {"memory": str(8 * GIB), "compute": "10"}]
    for sub, size in zip(subs, (16, 64, 80)):
        assert sub["deviceClassName"] == "gpu.flexai.io"
        assert sub["tolerations"] == [{"key": "maintenance", "operator": "Exists"}]
        # the claim's own selector kept, the size's added
        assert sub["selectors"] == [
            {"cel": {"expression": 'device.attributes["gpu.flexai.io"].model == "X"'}},
            {"cel": {"expression": f'device.capacity["gpu.flexai.io"].memory.compareTo(quantity("{size * GIB}")) == 0'}}]


def test_only_sizes_that_hold_the_memory_and_only_the_classs_vendor_count():
    new = filled(claim_spec({"memory": "24Gi"}), [SIXTEEN, EIGHTY])  # 16 GiB cannot hold it: one size left
    assert new["devices"]["requests"][0]["exactly"]["capacity"]["requests"]["compute"] == "30"
    new = filled(claim_spec({"compute": "50"}, device_class="ascend.npu.flexai.io"), [SIXTEEN, EIGHTY, ASCEND])
    assert new["devices"]["requests"][0]["exactly"]["capacity"]["requests"]["memory"] == str(32 * GIB)
    out = defaults.fill(claim_spec({"memory": "100Gi"}), [SIXTEEN, EIGHTY])
    assert out.requests is None and out.warnings == [
        "gpu.flexai.io: request gpu: no gpu.flexai.io card is large enough for it"]


@pytest.mark.parametrize("requests, device_class, extra", [
    ({"memory": "4Gi", "compute": "10"}, "gpu.flexai.io", {}),  # both named
    (None, "gpu.flexai.io", {}),  # neither: a whole card
    ({"memory": "4Gi"}, "other.example.com", {}),  # another driver's class
    ({"memory": "4Gi"}, "gpu.flexai.io", {"admin_access": True}),  # admin access consumes nothing
])
def test_requests_that_need_nothing_are_left_alone(requests, device_class, extra):
    out = defaults.fill(claim_spec(requests, device_class, **extra), [SIXTEEN, EIGHTY])
    assert out.requests is None and out.warnings == []


def test_what_cannot_be_completed_is_left_alone_with_one_warning():
    out = defaults.fill(claim_spec({"memory": "4Gi"}), [])
    assert out.requests is None and out.warnings == [
        "gpu.flexai.io: request gpu: no gpu.flexai.io cards are published yet, so the capacity it leaves out "
        "is consumed whole; name both memory and compute"]
    out = defaults.fill(claim_spec({"compute": "150"}), [SIXTEEN])
    assert out.requests is None and "not a valid amount" in out.warnings[0]
    nine = [defaults.Card((16 + i) * GIB, "nvidia") for i in range(9)]
    out = defaults.fill(claim_spec({"compute": "10"}), nine)
    assert out.requests is None and "would need 9 alternatives" in out.warnings[0]


def test_first_available_subrequests_are_completed_in_place_and_kept_in_order():
    k = k8s()
    spec = to_json(k.V1ResourceClaimSpec(devices=k.V1DeviceClaim(requests=[k.V1DeviceRequest(
        name="gpu", first_available=[
            k.V1DeviceSubRequest(name="big", device_class_name="gpu.flexai.io",
                                 capacity=k.V1CapacityRequirements(requests={"compute": "60"})),
            k.V1DeviceSubRequest(name="other", device_class_name="other.example.com"),
        ])])))
    new = filled(spec, [SIXTEEN, EIGHTY])
    subs = new["devices"]["requests"][0]["firstAvailable"]
    assert [s["name"] for s in subs] == ["big-card-16gi", "big-card-80gi", "other"]
    assert subs[0]["capacity"]["requests"]["memory"] == str(-(-16 * GIB * 60 // 100 // MIB) * MIB)
    assert subs[2] == spec["devices"]["requests"][0]["firstAvailable"][1]


@settings(max_examples=300, deadline=None)
@given(card_mib=st.integers(min_value=1024, max_value=200 * 1024),
       memory_mib=st.integers(min_value=1, max_value=200 * 1024), compute=st.integers(min_value=1, max_value=100))
def test_the_share_is_what_a_flexai_request_naming_one_part_gets(card_mib, memory_mib, compute):
    card = card_mib * MIB
    share = defaults.share_on(card, memory_mib * MIB, None)
    if memory_mib > card_mib:
        assert share is None
    else:
        assert share == Request(memory_bytes=memory_mib * MIB).resolve(card)
    memory, got = defaults.share_on(card, None, compute)
    want_memory, want_compute = Request(compute=compute).resolve(card)
    assert got == want_compute and want_memory <= memory < want_memory + MIB and memory % MIB == 0


def test_an_allocation_of_a_completed_claim_prepares_the_share_the_allocator_consumed():
    """What the scheduler writes for the subrequest it chose (consumedCapacity: the subrequest's
    capacity, already whole steps) is what the DRA driver reserves, and what the extender
    models as the claim's demand."""
    new = filled(claim_spec({"memory": "8Gi"}), [SIXTEEN, EIGHTY])
    chosen = new["devices"]["requests"][0]["firstAvailable"][1]  # a node with 80 GiB cards
    obj = ds.resource_claim("default", "c", "uid-c", [{"device": "gpu-1", "request": f"gpu/{chosen['name']}",
                                                       "consumed": chosen["capacity"]["requests"]}])
    share = claim_mod.from_json(obj).shares[0]
    assert share.request == "gpu/card-80gi"
    assert share.flexai_request().resolve(80 * GIB) == Request(memory_bytes=8 * GIB).resolve(80 * GIB) == (8 * GIB, 10)
    one_size = filled(claim_spec({"memory": "8Gi"}), [SIXTEEN])
    ask, why = pod_mod._ask("default/c", one_size["devices"]["requests"][0], claim_mod.CLASSES)
    assert why == "" and (ask.demand.memory, ask.demand.compute) == (8 * GIB, 50 * MILLI // 100)


def test_card_sizes_are_read_from_the_drivers_resource_slices():
    others = {"spec": {"driver": "other.example.com", "devices": [{"name": "x", "capacity": {"memory": {"value": "1Gi"}}}]}}
    found = defaults.cards_of([node_slice("a", 80 * GIB), node_slice("b", 80 * GIB), node_slice("c", 64 * GIB, "ascend"),
                               others])
    assert found == [ASCEND, EIGHTY]
    assert defaults.parse_cards("80Gi@nvidia, 64Gi@huawei,16Gi") == [
        defaults.Card(16 * GIB, "simulated"), ASCEND, EIGHTY]
    for bad in ("", "lots", "1k"):
        with pytest.raises(claim_mod.ClaimError):
            defaults.parse_cards(bad)


# --- pure: the AdmissionReview --------------------------------------------------------------

def claim_object(spec: dict, name: str = "c") -> dict:
    k = k8s()
    return to_json(k.ResourceV1ResourceClaim(api_version="resource.k8s.io/v1", kind="ResourceClaim",
                                             metadata=k.V1ObjectMeta(name=name, namespace="default"),
                                             spec=parse_spec(spec)))


def template_object(spec: dict) -> dict:
    k = k8s()
    return to_json(k.V1ResourceClaimTemplate(
        api_version="resource.k8s.io/v1", kind="ResourceClaimTemplate",
        metadata=k.V1ObjectMeta(name="t", namespace="default"),
        spec=k.V1ResourceClaimTemplateSpec(spec=parse_spec(spec))))


def admission_review(obj: dict, operation: str = "CREATE") -> dict:
    kind = obj["kind"]
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
        "kind": {"group": "resource.k8s.io", "version": "v1", "kind": kind},
        "resource": {"group": "resource.k8s.io", "version": "v1", "resource": kind.lower() + "s"},
        "requestKind": {"group": "resource.k8s.io", "version": "v1", "kind": kind},
        "name": obj["metadata"]["name"], "namespace": "default", "operation": operation,
        "userInfo": {"username": "alice"}, "object": obj, "oldObject": None, "dryRun": False,
        "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}}}


def applied(obj: dict, reply: dict, model: str) -> dict:
    """The object as the API server stores it after the webhook's patch, parsed by the models."""
    response = reply["response"]
    assert response["allowed"] is True and response["uid"] == "705ab4f5-6393-11e8-b7cc-42010a800002"
    if "patch" not in response:
        return obj
    assert response["patchType"] == "JSONPatch"
    patched = jsonpatch.apply_patch(obj, json.loads(base64.b64decode(response["patch"])))
    assert to_json(k8s().ApiClient()._ApiClient__deserialize(patched, model)) == patched
    return patched


def test_a_claim_and_a_template_are_patched_and_round_trip():
    obj = claim_object(claim_spec({"memory": "8Gi"}))
    out = applied(obj, review.answer(review.parse(json.dumps(admission_review(obj)).encode()), [SIXTEEN, EIGHTY]),
                  "ResourceV1ResourceClaim")
    assert [s["name"] for s in out["spec"]["devices"]["requests"][0]["firstAvailable"]] == ["card-16gi", "card-80gi"]
    assert out["metadata"] == obj["metadata"]
    tpl = template_object(claim_spec({"compute": "25"}))
    out = applied(tpl, review.answer(review.parse(json.dumps(admission_review(tpl)).encode()), [SIXTEEN]),
                  "V1ResourceClaimTemplate")
    assert out["spec"]["spec"]["devices"]["requests"][0]["exactly"]["capacity"]["requests"] == {
        "compute": "25", "memory": str(4 * GIB)}


def test_nothing_to_do_or_sizes_unknown_allow_unchanged():
    both = claim_object(claim_spec({"memory": "8Gi", "compute": "10"}))
    reply = review.answer(admission_review(both)["request"], [SIXTEEN])
    assert reply["response"] == {"uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "allowed": True}
    update = review.answer(admission_review(claim_object(claim_spec({"memory": "8Gi"})), "UPDATE")["request"], [SIXTEEN])
    assert "patch" not in update["response"]  # a claim's spec is immutable: only creations are completed
    reply = review.answer(admission_review(claim_object(claim_spec({"memory": "8Gi"})))["request"], None, "API down")
    assert "patch" not in reply["response"] and reply["response"]["allowed"] is True
    assert reply["response"]["warnings"] == [
        "gpu.flexai.io: card sizes unknown (API down); a capacity left out is consumed whole: name both memory "
        "and compute"]
    assert "warnings" not in review.answer(admission_review(both)["request"], None, "API down")["response"]


@pytest.mark.parametrize("body, said", [
    (b"garbage", "not JSON"), (b"[]", "not an AdmissionReview"),
    (json.dumps({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}).encode(), "admissionReviewVersions"),
    (json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).encode(), "no request with a uid"),
])
def test_a_body_that_is_not_a_review_is_one_line(body, said):
    with pytest.raises(review.ReviewError) as err:
        review.parse(body)
    assert said in str(err.value) and "\n" not in str(err.value)


# --- over HTTPS, as the API server calls it --------------------------------------------------

def make_certificate(where, name: str = "flexai-admission.flexai-system.svc") -> tuple[str, str]:
    """A self-signed serving certificate for 127.0.0.1 (the caBundle of a real configuration)."""
    cert, key = where / f"{name}.crt", where / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    return str(cert), str(key)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[str, str]:
    return make_certificate(tmp_path_factory.mktemp("tls"))


def post(url: str, body: bytes, cafile: str) -> tuple[int, object]:
    context = ssl.create_default_context(cafile=cafile)
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30, context=context) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def get(url: str, cafile: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30, context=ssl.create_default_context(cafile=cafile)) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def cluster(tmp_path, certificate):
    token = secrets.token_hex(8)
    (tmp_path / "token").write_text(token)
    api = ds.FakeApiServer(token)
    api.slices["a-gpu.flexai.io"] = node_slice("a", 16 * GIB)
    api.slices["b-gpu.flexai.io"] = node_slice("b", 80 * GIB)
    sizes = Sizes(api=ApiServer(api.url, str(tmp_path / "token")), interval=3600, max_age=0)
    server = Server("127.0.0.1:0", sizes, *certificate)
    server.start()
    try:
        yield api, sizes, f"https://{server.address}", certificate[0]
    finally:
        server.stop()
        api.close()


def test_the_webhook_completes_a_claim_over_https(cluster):
    api, sizes, url, ca = cluster
    assert get(url + "/healthz", ca)[0] == 503  # not listed yet
    sizes.refresh()
    assert get(url + "/healthz", ca) == (200, "ok\n")
    obj = claim_object(claim_spec({"memory": "4Gi"}))
    code, reply = post(url + "/mutate?timeout=10s", json.dumps(admission_review(obj)).encode(), ca)
    assert code == 200
    out = applied(obj, reply, "ResourceV1ResourceClaim")
    assert [s["capacity"]["requests"]["compute"] for s in out["spec"]["devices"]["requests"][0]["firstAvailable"]] == [
        "25", "5"]
    assert ("GET", "/apis/resource.k8s.io/v1/resourceslices", {"fieldSelector": "spec.driver=gpu.flexai.io"}) in api.calls


def test_the_api_server_down_lets_claims_through_with_a_warning(cluster):
    api, sizes, url, ca = cluster
    api.down()
    sizes.refresh()
    obj = claim_object(claim_spec({"memory": "4Gi"}))
    code, reply = post(url + "/mutate", json.dumps(admission_review(obj)).encode(), ca)
    assert code == 200 and "patch" not in reply["response"] and reply["response"]["allowed"] is True
    assert "is not reachable" in reply["response"]["warnings"][0]
    assert get(url + "/healthz", ca)[0] == 503


@pytest.mark.parametrize("body", [b"", b"garbage", b'{"kind": "AdmissionReview"}'])
def test_garbage_gets_http_400_with_one_line(cluster, body):
    _, sizes, url, ca = cluster
    sizes.refresh()
    code, text = post(url + "/mutate", body, ca)
    assert code == 400 and text.count("\n") == 1


def test_a_body_over_the_limit_is_refused_without_being_read(cluster):
    from flexai_hook.admission import server as server_mod

    _, sizes, url, ca = cluster
    sizes.refresh()
    import http.client

    host, port = url.removeprefix("https://").split(":")
    conn = http.client.HTTPSConnection(host, int(port), timeout=30, context=ssl.create_default_context(cafile=ca))
    try:  # the headers only: the server must answer without waiting for a body it will not read
        conn.putrequest("POST", "/mutate")
        conn.putheader("Content-Length", str(server_mod.MAX_BODY + 1))
        conn.endheaders()
        reply = conn.getresponse()
        assert reply.status == 400 and reply.read().decode().startswith("Content-Length must be")
    finally:
        conn.close()
    assert get(url + "/healthz", ca) == (200, "ok\n")


def test_plain_http_and_a_stalled_client_do_not_stop_the_webhook(cluster):
    _, sizes, url, ca = cluster
    sizes.refresh()
    host, port = url.removeprefix("https://").split(":")
    stalled = socket.create_connection((host, int(port)))  # connects, never says hello
    try:
        with socket.create_connection((host, int(port))) as plain:
            plain.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            plain.settimeout(30)
            assert not plain.recv(4096).startswith(b"HTTP/1.1 200")  # no answer in clear text
        assert get(url + "/healthz", ca) == (200, "ok\n")
    finally:
        stalled.close()


def served_name(address: str, cafile: str) -> str:
    """The CN of the certificate the server presents (verified against `cafile`)."""
    host, port = address.split(":")
    context = ssl.create_default_context(cafile=cafile)
    with socket.create_connection((host, int(port)), timeout=30) as raw, \
            context.wrap_socket(raw, server_hostname=host) as tls:
        return dict(x[0] for x in tls.getpeercert()["subject"])["commonName"]


def test_a_rotated_certificate_is_served_without_a_restart(tmp_path):
    """cert-manager rotates the Secret; the mounted files change under the running webhook."""
    first, second = make_certificate(tmp_path, "first"), make_certificate(tmp_path, "second")
    live = tmp_path / "live"
    live.mkdir()
    for src, name in zip(first, ("tls.crt", "tls.key")):
        (live / name).write_bytes(Path(src).read_bytes())
    server = Server("127.0.0.1:0", Sizes(fixed=[SIXTEEN]), str(live / "tls.crt"), str(live / "tls.key"))
    server.start()
    try:
        assert served_name(server.address, first[0]) == "first"
        (live / "tls.key").write_bytes(b"half a rotation")  # a pair that does not load: the old one stays
        assert served_name(server.address, first[0]) == "first"
        for src, name in zip(second, ("tls.crt", "tls.key")):  # as the kubelet swaps a Secret volume
            (live / (name + ".new")).write_bytes(Path(src).read_bytes())
            os.replace(live / (name + ".new"), live / name)
        assert served_name(server.address, second[0]) == "second"
    finally:
        server.stop()


def test_a_bug_in_completing_lets_the_claim_through_unchanged(cluster, monkeypatch):
    _, sizes, url, ca = cluster
    sizes.refresh()

    def broken(*_args, **_kwargs):
        raise KeyError("surprise")

    monkeypatch.setattr(defaults, "fill", broken)
    obj = claim_object(claim_spec({"memory": "4Gi"}))
    code, reply = post(url + "/mutate", json.dumps(admission_review(obj)).encode(), ca)
    assert code == 200 and reply["response"]["allowed"] is True and "patch" not in reply["response"]
    assert reply["response"]["warnings"] == [
        "gpu.flexai.io: flexai admission internal error: KeyError; the claim goes on as written"]


# --- the command -------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_command_serves_fixed_sizes_and_stops_cleanly_on_sigterm(tmp_path, certificate):
    port = free_port()
    log = open(tmp_path / "admission.log", "wb")
    proc = subprocess.Popen([tool("flexai"), "admission", "--listen", f"127.0.0.1:{port}", "--cert", certificate[0],
                             "--key", certificate[1], "--card-memory", "16Gi@nvidia,80Gi@nvidia"],
                            stdout=log, stderr=log)
    log.close()
    url = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                assert get(url + "/healthz", certificate[0]) == (200, "ok\n")
                break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None, (tmp_path / "admission.log").read_text()
                assert time.monotonic() < deadline, "flexai admission did not answer /healthz"
                time.sleep(0.1)
        obj = claim_object(claim_spec({"compute": "50"}))
        code, reply = post(url + "/mutate", json.dumps(admission_review(obj)).encode(), certificate[0])
        out = applied(obj, reply, "ResourceV1ResourceClaim")
        assert [s["capacity"]["requests"]["memory"] for s in out["spec"]["devices"]["requests"][0]["firstAvailable"]] \
            == [str(8 * GIB), str(40 * GIB)]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        text = (tmp_path / "admission.log").read_text()
        assert "SIGTERM: stopping" in text and "completed ResourceClaim default/c" in text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("args, said", [
    (["--card-memory", "lots"], "--card-memory"),
    (["--card-memory", "16Gi", "--listen", "nowhere"], "HOST:PORT"),
    (["--card-memory", "16Gi", "--cert", "/nonexistent.crt"], "serving certificate"),
])
def test_the_command_fails_with_one_line(tmp_path, certificate, args, said):
    base = ["--cert", certificate[0], "--key", certificate[1], "--listen", f"127.0.0.1:{free_port()}"]
    ran = subprocess.run([tool("flexai"), "admission", *base, *args], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 1 and said in ran.stderr and ran.stderr.count("\n") == 1, ran.stderr
