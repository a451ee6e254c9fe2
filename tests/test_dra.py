"""flexai's DRA kubelet plugin (flexai_hook/dra/): the pure mappings (allocation result →
request, reservation → CDI spec), then `flexai dra` as a process against a kubelet peer over
the real unix sockets, a fake API server serving ResourceClaims built with the kubernetes
client's models, and a real flexaid on a simulated card; then the claim's CDI spec applied by
Podman."""

from __future__ import annotations

import json
import os
import secrets
import uuid
from decimal import Decimal

import pytest

import dra_support as ds
import engines_support as es
from conftest import GIB, tool
from libflexai_support import client, libs  # noqa: F401
from flexai_hook.dra import cdi, claim as claim_mod
from flexai_hook.oci import spec as spec_mod
from flexai_hook.oci.injection import DeviceNode, Hook
from flexai_hook.request import Request
from flexai_hook.reservation import Reservation

MIB = 1 << 20


# --- pure: the claim's allocation → what flexaid is asked for ----------------------------

@pytest.mark.parametrize("text,value", [("8Gi", 8 * GIB), ("30", 30), ("500m", Decimal("0.5")), ("1e3", 1000),
                                        ("1.5Gi", 3 * GIB // 2), ("2k", 2000), ("4096Mi", 4 * GIB)])
def test_quantities_parse_as_kubernetes_writes_them(text, value):
    assert claim_mod.parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "8GB", "Gi", "1..2", None, "8 Gi"])
def test_a_bad_quantity_is_one_line(text):
    with pytest.raises(claim_mod.ClaimError, match="is not a Kubernetes quantity"):
        claim_mod.parse_quantity(text)


def claim_json(results, uid="u-1", **kw):
    return ds.resource_claim("team", "c1", uid, results, **kw)


def test_allocation_result_becomes_a_pinned_request():
    data = claim_json([{"device": "gpu-1", "consumed": {"memory": "4Gi", "compute": "25"}, "share_id": "s1"}])
    # the models round-trip it unchanged: the JSON is the API's shape
    assert ds.parse_claim(data).status.allocation.devices.results[0].consumed_capacity == {"memory": "4Gi", "compute": "25"}
    (share,) = claim_mod.from_json(data, uid="u-1", pool="node-a").shares
    assert (share.device, share.card_index, share.memory_bytes, share.compute, share.share_id) == ("gpu-1", 1, 4 * GIB, 25, "s1")
    assert share.flexai_request() == Request(memory_bytes=4 * GIB, compute=25, device="1")


def test_a_claim_naming_one_capacity_follows_its_share_for_the_other():
    (mem_only,) = claim_mod.from_json(claim_json([{"device": "gpu-0", "consumed": {"memory": "4Gi"}}])).shares
    (compute_only,) = claim_mod.from_json(claim_json([{"device": "gpu-0", "consumed": {"compute": "30"}}])).shares
    (whole,) = claim_mod.from_json(claim_json([{"device": "gpu-0"}])).shares
    assert mem_only.flexai_request().resolve(16 * GIB) == (4 * GIB, 25)
    assert compute_only.flexai_request().resolve(16 * GIB) == (16 * GIB * 30 // 100, 30)
    assert whole.flexai_request().resolve(16 * GIB) == (16 * GIB, 100)


@pytest.mark.parametrize("results,kw,match", [
    ([{"device": "gpu-0"}], {"uid": "other"}, "was deleted and made again"),
    ([{"device": "gpu-0", "pool": "node-b"}], {"pool": "node-a"}, "allocated for another node"),
    ([{"device": "gpu-0", "driver": "gpu.nvidia.com"}], {}, "no device allocated from gpu.flexai.io"),
    ([{"device": "card-0"}], {}, "not one gpu.flexai.io publishes"),
    ([{"device": "gpu-0", "consumed": {"compute": "30.5"}}], {}, "whole percent"),
    ([{"device": "gpu-0", "consumed": {"compute": "101"}}], {}, "whole percent"),
    ([{"device": "gpu-0"}, {"device": "gpu-0", "request": "b"}], {}, "holds one card twice"),
])
def test_claims_flexai_cannot_prepare_say_why(results, kw, match):
    with pytest.raises(claim_mod.ClaimError, match=match):
        claim_mod.from_json(claim_json(results), **kw)


def test_an_unallocated_claim_and_garbage_are_refused():
    data = claim_json([{"device": "gpu-0"}])
    data["status"] = {}
    with pytest.raises(claim_mod.ClaimError, match="is not allocated"):
        claim_mod.from_json(data)
    for garbage in (None, [], "x", {"kind": "Pod"}):
        with pytest.raises(claim_mod.ClaimError):
            claim_mod.from_json(garbage)


def test_reservation_ids_name_their_claim():
    cid = claim_mod.container_id("0b7c-44", "gpu-3")
    assert claim_mod.claim_of(cid) == ("0b7c-44", "gpu-3") and claim_mod.claim_of("abc123") is None


# --- pure: a reservation → the claim's CDI spec ------------------------------------------

def reservation(backend="simulated") -> Reservation:
    return Reservation(container_id="dra-u-1-gpu-0", slice_id="0123456789ab", card_index=0, card_uuid="GPU-1",
                       card_name="sim-0", card_memory=16 * GIB, memory_bytes=4 * GIB, compute=25,
                       priority="normal", device_paths=("/dev/nvidia0",), slice_dir="/run/flexai/slices/0123456789ab",
                       backend=backend)


@pytest.mark.parametrize("backend", ["simulated", "nvml"])
def test_cdi_edits_are_what_flexai_runtime_adds_less_the_release_hook(backend):
    r = reservation(backend)
    nodes = (DeviceNode("/dev/nvidia0", "c", 195, 0),)
    inj = cdi.injection(r, nodes, lib="/lib/libflexai.so")
    spec = cdi.spec_for("u-1", [("gpu-0", inj)])
    assert spec["kind"] == "flexai.io/gpu" and spec["devices"][0]["name"] == "u-1-gpu-0"
    edits = spec["devices"][0]["containerEdits"]
    # flexai-runtime's edit of an empty spec for the same reservation
    hook = Hook(path="/usr/local/bin/flexai-hook", args=("flexai-hook", "poststop"))
    oci = spec_mod.apply({}, spec_mod.injection_for(r, nodes, hook, "/lib/libflexai.so"))
    assert edits["env"] == oci["process"]["env"]
    assert [(m["hostPath"], m["containerPath"], m["options"]) for m in edits["mounts"]] == \
        [(m["source"], m["destination"], m["options"]) for m in oci["mounts"]]
    assert [{k: d[k] for k in ("path", "type", "major", "minor", "fileMode", "uid", "gid")} for d in edits["deviceNodes"]] \
        == oci["linux"]["devices"]
    assert "hooks" not in edits and "hooks" in oci  # a claim is released by unprepare, not by a container's stop
    assert any(m["containerPath"] == "/etc/ld.so.preload" for m in edits["mounts"])
    assert ("FLEXAI_SIM_DIR=/run/flexai/sim" in edits["env"]) == (backend == "simulated")


def test_cdi_names_round_trip():
    assert cdi.uid_of_file(cdi.file_name("u-1")) == "u-1" and cdi.uid_of_file("nvidia.yaml") is None
    assert cdi.device_id("u-1", "gpu-0") == "flexai.io/gpu=u-1-gpu-0"


# --- the agent over the kubelet's sockets -------------------------------------------------

@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """flexaid with one 16 GiB simulated card, the fake API server, the kubelet peer's stubs."""
    root = tmp_path_factory.mktemp("dra")
    daemon = es.start_flexaid(root / "flexaid", memories=("16GiB",))
    token = secrets.token_hex(8)
    (root / "token").write_text(token + "\n")
    api = ds.FakeApiServer(token)
    try:
        yield {"root": root, "daemon": daemon, "api": api, "token_file": root / "token",
               "stubs": ds.compile_stubs(root / "stubs")}
    finally:
        api.close()
        es.stop_flexaid(daemon)


@pytest.fixture
def agent(node, tmp_path):
    a = ds.Agent(tool("flexai"), tmp_path, node["daemon"].socket, node["api"], node["token_file"])
    kubelet = None
    try:
        a.start()
        kubelet = ds.Kubelet(node["stubs"], str(a.registration_socket))
        yield a, kubelet
    finally:
        if kubelet is not None:
            kubelet.close()
        a.stop()
        # whatever a failed test left: give the card back for the next one
        for s in node["daemon"].slices():
            if s["container_id"].startswith("dra-"):
                node["daemon"].call({"op": "release", "container_id": s["container_id"]})


def new_claim(node, name, results, **kw):
    uid = str(uuid.uuid4())
    node["api"].put(ds.resource_claim("team", name, uid, results, **kw))
    return ("team", name, uid)


def dra_slices(node):
    return [s for s in node["daemon"].slices() if s["container_id"].startswith("dra-")]


def test_register_prepare_twice_unprepare(node, agent):
    a, kubelet = agent
    info = kubelet.register()
    assert (info.type, info.name, info.endpoint) == ("DRAPlugin", "gpu.flexai.io", str(a.plugin_socket))
    assert list(info.supported_versions) == ["v1.DRAPlugin", "v1beta1.DRAPlugin"]
    peer = kubelet.dra(info.endpoint, "v1")
    ref = new_claim(node, "prep", [{"device": "gpu-0", "consumed": {"memory": "4Gi", "compute": "25"}, "share_id": "s-1"}])
    uid = ref[2]
    first = peer.prepare(ref)[uid]
    assert first.error == ""
    (device,) = first.devices
    assert (list(device.request_names), device.pool_name, device.device_name, device.share_id) == (["gpu"], "node-a", "gpu-0", "s-1")
    assert list(device.cdi_device_ids) == [f"flexai.io/gpu={uid}-gpu-0"]
    (held,) = dra_slices(node)
    assert (held["container_id"], held["memory_bytes"], held["compute"], held["card_index"]) == \
        (f"dra-{uid}-gpu-0", 4 * GIB, 25, 0)
    spec = json.loads(a.spec_path(uid).read_text())
    env = spec["devices"][0]["containerEdits"]["env"]
    assert f"FLEXAI_MEMORY_LIMIT={4 * GIB}" in env and f"FLEXAI_SLICE_ID={held['slice_id']}" in env
    # the kubelet prepares again (its restart, a second pod): the same slice, one of it
    again = peer.prepare(ref)[uid]
    assert again.error == "" and list(again.devices[0].cdi_device_ids) == list(device.cdi_device_ids)
    assert [s["slice_id"] for s in dra_slices(node)] == [held["slice_id"]]
    gone = peer.unprepare(ref)[uid]
    assert gone.error == "" and dra_slices(node) == [] and not a.spec_path(uid).exists()
    assert peer.unprepare(ref)[uid].error == ""  # again: nothing to do, still fine


def test_the_previous_api_version_prepares_too(node, agent):
    a, kubelet = agent
    peer = kubelet.dra(kubelet.register().endpoint, "v1beta1")
    ref = new_claim(node, "beta", [{"device": "gpu-0", "consumed": {"compute": "10"}}])
    out = peer.prepare(ref)[ref[2]]
    assert out.error == "" and list(out.devices[0].cdi_device_ids) == [f"flexai.io/gpu={ref[2]}-gpu-0"]
    assert dra_slices(node)[0]["memory_bytes"] == 16 * GIB * 10 // 100
    assert peer.unprepare(ref)[ref[2]].error == "" and dra_slices(node) == []


def test_state_survives_an_agent_restart(node, agent):
    a, kubelet = agent
    peer = kubelet.dra(kubelet.register().endpoint)
    ref = new_claim(node, "restart", [{"device": "gpu-0", "consumed": {"memory": "2Gi"}}])
    assert peer.prepare(ref)[ref[2]].error == ""
    (held,) = dra_slices(node)
    assert a.stop() == 0
    assert not a.registration_socket.exists() and not a.plugin_socket.exists()  # clean stop
    # a spec left by a claim whose slice is gone (stopped between release and removal) is stale
    stale = a.spec_path("dead-claim")
    stale.write_text("{}")
    a.start()
    assert not stale.exists() and a.spec_path(ref[2]).exists()
    assert "1 claim(s) held, 1 stale CDI spec(s) removed" in a.log()
    peer = kubelet.dra(kubelet.register().endpoint)
    again = peer.prepare(ref)[ref[2]]
    assert again.error == "" and [s["slice_id"] for s in dra_slices(node)] == [held["slice_id"]]
    assert peer.unprepare(ref)[ref[2]].error == "" and dra_slices(node) == []


def test_a_full_card_is_a_clear_error_and_nothing_leaks(node, agent):
    a, kubelet = agent
    peer = kubelet.dra(kubelet.register().endpoint)
    big = new_claim(node, "big", [{"device": "gpu-0", "consumed": {"memory": "12Gi"}}])
    more = new_claim(node, "more", [{"device": "gpu-0", "consumed": {"memory": "8Gi"}}])
    assert peer.prepare(big)[big[2]].error == ""
    out = peer.prepare(more)[more[2]]
    assert out.error.startswith(f"claim team/more ({more[2]}): ") and "card 0" in out.error and not out.devices
    assert "\n" not in out.error
    assert [s["container_id"] for s in dra_slices(node)] == [f"dra-{big[2]}-gpu-0"]
    assert not a.spec_path(more[2]).exists()
    assert peer.unprepare(big)[big[2]].error == ""


def test_unknown_and_garbage_claims_are_errors_not_crashes(node, agent):
    a, kubelet = agent
    peer = kubelet.dra(kubelet.register().endpoint)
    missing = ("team", "nope", str(uuid.uuid4()))
    replaced = new_claim(node, "replaced", [{"device": "gpu-0"}])
    node["api"].put(ds.resource_claim("team", "replaced", "another-uid", [{"device": "gpu-0"}]))
    other_node = new_claim(node, "elsewhere", [{"device": "gpu-0", "pool": "node-b"}])
    nonsense = new_claim(node, "nonsense", [{"device": "gpu-0", "consumed": {"memory": "lots"}}])
    out = peer.prepare(missing, replaced, other_node, nonsense, ("", "", ""))
    assert "does not exist on the API server" in out[missing[2]].error
    assert "deleted and made again" in out[replaced[2]].error
    assert "allocated for another node" in out[other_node[2]].error
    assert "is not a Kubernetes quantity" in out[nonsense[2]].error
    assert "named no claim UID" in out[""].error
    assert dra_slices(node) == [] and list(a.cdi_dir.glob("*.json")) == []
    assert a.proc.poll() is None  # still serving


def test_the_api_server_sees_the_service_account_token(node, agent, tmp_path):
    a, kubelet = agent
    before = node["api"].requests
    node["token_file"].write_text("wrong\n")
    try:
        ref = new_claim(node, "tok", [{"device": "gpu-0"}])
        out = kubelet.dra(kubelet.register().endpoint).prepare(ref)[ref[2]]
        assert "refused" in out.error and "401" in out.error and dra_slices(node) == []
        assert node["api"].requests == before + 1
    finally:
        node["token_file"].write_text(node["api"].token + "\n")


# --- the claim's CDI spec applied by a real engine: Podman ---------------------------------

def podman_in(cdi_dir, podman, work):
    """podman with `cdi_dir` as /etc/cdi: Podman 4.3 reads CDI specs only from /etc/cdi and
    /var/run/cdi (no cdi_spec_dirs, no --cdi-spec-dir), and the host's are not the test's to
    touch, so podman runs in a private mount namespace where /etc is an overlay with the test's
    folder at /etc/cdi. The host's /etc is never written."""
    for d in ("upper", "work"):
        (work / d).mkdir(exist_ok=True)
    script = (f"mount -t overlay overlay -o lowerdir=/etc,upperdir={work}/upper,workdir={work}/work /etc && "
              f"mkdir -p /etc/cdi && mount --bind {cdi_dir} /etc/cdi && exec podman \"$@\"")

    def run(*args, timeout=120):
        return es.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "podman", *args],
                      timeout=timeout, env=podman.env())
    return run


@pytest.fixture(scope="module")
def podman_engine(tmp_path_factory):
    es.need("podman", "podman")
    es.need("unshare", "util-linux")
    if not os.path.exists("/lib64/ld-linux-x86-64.so.2") or not os.path.isdir("/lib/x86_64-linux-gnu"):
        pytest.skip("this test runs the host's glibc programs in a busybox image (x86_64 Debian-style host)")
    root = tmp_path_factory.mktemp("dra-podman")
    podman = es.Podman(root / "podman").setup()
    try:
        rootfs = es.make_rootfs(root / "rootfs")
        loaded = podman.podman("load", "-i", es.image_archive(rootfs, root / "image.tar"))
        if loaded.returncode != 0:
            pytest.skip(f"podman cannot load an image here: {loaded.stderr.strip()[-500:]}")
        yield podman, root
    finally:
        podman.teardown()


def test_podman_applies_the_claims_cdi_spec_and_the_slice_holds(node, agent, podman_engine, client):
    a, kubelet = agent
    podman, root = podman_engine
    peer = kubelet.dra(kubelet.register().endpoint)
    ref = new_claim(node, "podman", [{"device": "gpu-0", "consumed": {"memory": "4Gi", "compute": "25"}}])
    out = peer.prepare(ref)[ref[2]]
    assert out.error == "", out.error
    (cdi_id,) = out.devices[0].cdi_device_ids
    run = podman_in(a.cdi_dir, podman, root)
    # a --ulimit replaces containers.conf's default_ulimits, and Podman's own nproc default is
    # above this host's hard limit: name both
    ran = run("run", "--rm", "--network", "none", "--runtime", "runc", "--ulimit", "nofile=20000:20000",
              "--ulimit", "nproc=4096:4096",
              "--device", cdi_id, "-v", "/lib/x86_64-linux-gnu:/lib/x86_64-linux-gnu:ro", "-v", "/lib64:/lib64:ro",
              "-v", f"{client}:/bin/flexai_client:ro", es.IMAGE, "sh", "-c",
              f"test -c {node['daemon'].cards[0]['device']} && cat /run/flexai/slice.conf && "
              f"/bin/flexai_client info alloc mem {3 * GIB} alloc mem {GIB}")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    lines = ran.stdout.strip().splitlines()
    assert f"memory_limit={4 * GIB}" in lines and "compute_limit=25" in lines
    from libflexai_support import info
    seen = info(lines[-3])
    assert seen["count"] == 1 and seen["total"] == 4 * GIB and seen["uuid"] == node["daemon"].cards[0]["uuid"]
    # 4 GiB less the simulator's 300 MiB context: 3 GiB fits, one more GiB is refused
    assert lines[-2].startswith("ok ") and lines[-1] == "oom", ran.stdout
    assert len(dra_slices(node)) == 1  # the container's stop does not release the claim's slice
    assert peer.unprepare(ref)[ref[2]].error == "" and dra_slices(node) == []
    assert not os.path.exists("/etc/cdi")


# --- pure: this node's cards → its ResourceSlice ------------------------------------------

def test_resource_slice_round_trips_through_the_kubernetes_models(node):
    from kubernetes import client as k

    from flexai_hook.dra import slices

    status = node["daemon"].status()
    data = slices.resource_slice("node-a", status, generation=3)
    api = k.ApiClient()
    parsed = api._ApiClient__deserialize(data, "V1ResourceSlice")
    assert api.sanitize_for_serialization(parsed) == data  # every field is one the API knows
    (dev,) = parsed.spec.devices
    card = status["cards"][0]
    assert (parsed.spec.pool.name, parsed.spec.pool.generation, parsed.spec.node_name) == ("node-a", 3, "node-a")
    assert dev.name == "gpu-0" and dev.allow_multiple_allocations is True
    assert dev.attributes["uuid"].string == card["uuid"] and dev.attributes["index"].int == 0
    assert dev.capacity["memory"].value == str(16 * GIB) and dev.capacity["compute"].value == "100"
    assert dev.capacity["compute"].request_policy.valid_range.step == "1"
    # what the publish side names, the prepare side maps back
    assert claim_mod.card_index(dev.name) == card["index"]


# --- pure: whether and how to (re)publish the node's ResourceSlice ------------------------

def status_of(*memories, backend="simulated"):
    """flexaid's status reply, the parts slices.py reads."""
    return {"backend": backend, "cards": [{"index": i, "uuid": f"GPU-{i}", "name": f"sim-{i}", "memory": m}
                                          for i, m in enumerate(memories)]}


def stored(obj, generation, version="7", uid="uid-1"):
    """`obj` as the API server holds it: metadata filled in, quantities in its canonical form."""
    out = json.loads(json.dumps(obj))
    out["metadata"].update(uid=uid, resourceVersion=version)
    out["spec"]["pool"]["generation"] = generation
    for dev in out["spec"]["devices"]:
        dev["capacity"]["memory"]["requestPolicy"]["validRange"] = {"min": "1Mi", "step": "1Mi"}
    return out


def test_a_new_node_creates_its_slice_at_generation_1():
    from flexai_hook.dra import publish, slices

    desired = slices.resource_slice("node-a", status_of(16 * GIB))
    step = publish.plan(desired, [])
    assert step.replace is None and step.delete == ()
    assert step.create["spec"]["pool"] == {"name": "node-a", "generation": 1, "resourceSliceCount": 1}
    assert "resourceVersion" not in step.create["metadata"]


def test_the_same_cards_are_no_change_whatever_the_generation_or_quantity_form():
    from flexai_hook.dra import publish, slices

    desired = slices.resource_slice("node-a", status_of(16 * GIB, 16 * GIB))
    held = stored(desired, generation=4)
    assert publish.same_devices(held["spec"], desired["spec"])
    assert publish.plan(desired, [held]).nothing


@pytest.mark.parametrize("now", [status_of(16 * GIB, 16 * GIB, 16 * GIB), status_of(16 * GIB),
                                 status_of(16 * GIB, 24 * GIB), status_of(16 * GIB, 16 * GIB, backend="nvml")])
def test_changed_cards_replace_the_slice_at_the_next_generation(now):
    from flexai_hook.dra import publish, slices

    held = stored(slices.resource_slice("node-a", status_of(16 * GIB, 16 * GIB)), generation=4)
    step = publish.plan(slices.resource_slice("node-a", now), [held])
    assert step.create is None and step.delete == ()
    assert step.replace["metadata"]["resourceVersion"] == "7"  # a conditional update: 409 if someone wrote since
    assert step.replace["spec"]["pool"]["generation"] == 5
    assert step.replace["spec"]["devices"] == slices.resource_slice("node-a", now)["spec"]["devices"]


def test_another_slice_of_this_node_and_driver_goes_and_the_generation_passes_it():
    from flexai_hook.dra import publish, slices

    desired = slices.resource_slice("node-a", status_of(16 * GIB))
    stray = stored({**desired, "metadata": {"name": "node-a-gpu.flexai.io-x7k2p"}}, generation=9, uid="uid-old")
    step = publish.plan(desired, [stray])
    assert step.delete == (("node-a-gpu.flexai.io-x7k2p", "uid-old"),)
    assert step.create["spec"]["pool"]["generation"] == 10
    assert publish.field_selector("node-a") == "spec.nodeName=node-a,spec.driver=gpu.flexai.io"


# --- the publisher against the fake API server, in process --------------------------------

@pytest.fixture
def fake_api(tmp_path):
    token = secrets.token_hex(8)
    (tmp_path / "token").write_text(token)
    api = ds.FakeApiServer(token)
    try:
        yield api, tmp_path / "token"
    finally:
        api.close()


def test_publisher_creates_updates_and_deletes_with_the_verbs_the_api_takes(fake_api):
    from flexai_hook.dra import publish
    from flexai_hook.dra.apiserver import ApiServer

    fake, token_file = fake_api
    cards = {"now": status_of(16 * GIB)}
    pub = publish.Publisher(ApiServer(fake.url, str(token_file)), "node-a", lambda: cards["now"], interval=0.1)
    assert pub.sync() == "created"
    (obj,) = fake.slices.values()
    assert obj["metadata"]["name"] == "node-a-gpu.flexai.io" and obj["spec"]["pool"]["generation"] == 1
    assert [(m, q) for m, _, q in fake.calls] == [
        ("GET", {"fieldSelector": "spec.nodeName=node-a,spec.driver=gpu.flexai.io"}),
        ("POST", {"fieldValidation": "Strict"})]
    fake.calls.clear()
    assert pub.sync() == "unchanged" and fake.calls == []  # no traffic while nothing changes
    cards["now"] = status_of(16 * GIB, 16 * GIB)
    # another writer gets in between our read and our write, once: 409, read again, write
    raced = []

    def race(method, path):
        if method == "PUT" and not raced:
            raced.append(path)
            fake.slices["node-a-gpu.flexai.io"]["metadata"]["resourceVersion"] = "999"
    fake.before = race
    assert pub.sync() == "updated" and raced
    obj = fake.slices["node-a-gpu.flexai.io"]
    assert obj["spec"]["pool"]["generation"] == 2 and len(obj["spec"]["devices"]) == 2
    assert [m for m, _, _ in fake.calls] == ["GET", "PUT", "GET", "PUT"]
    assert pub.stats.published == 2 and pub.stats.generation == 2 and pub.stats.devices == 2
    pub.stop()
    assert fake.slices == {} and fake.calls[-1][0] == "DELETE"


@pytest.mark.parametrize("change,code,words", [
    (lambda o: o["metadata"].pop("resourceVersion"), 422, "must be specified for an update"),
    (lambda o: o["metadata"].update(name="Node_A"), 422, "RFC 1123 subdomain"),
    (lambda o: o["spec"].update(colour="blue"), 400, "strict decoding error"),
])
def test_the_fake_api_server_refuses_what_the_real_one_does(fake_api, change, code, words):
    from flexai_hook.dra import slices
    from flexai_hook.dra.apiserver import ApiError, ApiServer

    fake, token_file = fake_api
    api = ApiServer(fake.url, str(token_file))
    created = api.create_slice(slices.resource_slice("node-a", status_of(16 * GIB)))
    change(created)
    with pytest.raises(ApiError) as err:
        if created["metadata"]["name"] == "Node_A":
            created["metadata"].pop("resourceVersion")
            del created["metadata"]["uid"], created["metadata"]["creationTimestamp"]
            api.create_slice(created)
        else:
            api.replace_slice(created)
    assert err.value.code == code and words in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ApiError, match="field label not supported: spec.pool.name"):
        api.list_slices("spec.pool.name=node-a")
    assert api.list_slices(label_selector="app=none")["items"] == []


# --- `flexai dra` publishing: flexaid's cards change, the API server goes away ------------

def wait_for(predicate, what, agent=None, timeout=60.0):
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{agent.log() if agent else ''}")
        time.sleep(0.05)


@pytest.fixture
def own_node(tmp_path):
    """A flexaid of its own (its cards change in the test) and a fake API server of its own."""
    daemon = es.start_flexaid(tmp_path / "flexaid", memories=("16GiB",))
    token = secrets.token_hex(8)
    (tmp_path / "token").write_text(token)
    api = ds.FakeApiServer(token)
    try:
        yield daemon, api, tmp_path / "token"
    finally:
        api.close()
        es.stop_flexaid(daemon)


def add_card(daemon, memory="24GiB"):
    config = json.loads(daemon.config_path.read_text())
    card = dict(config["simulated"]["cards"][0], name=f"sim-{len(daemon.cards)}", memory=memory,
                uuid=f"GPU-00000000-0000-4000-8000-{secrets.token_hex(6)}",
                device=config["simulated"]["cards"][0]["device"][:-1] + str(len(daemon.cards)))
    config["simulated"]["cards"].append(card)
    daemon.config_path.write_text(json.dumps(config))
    daemon.cards.append(card)
    daemon.restart()


SLICE = "node-a-gpu.flexai.io"


def test_agent_publishes_republishes_on_card_changes_and_deletes_at_stop(own_node, tmp_path):
    daemon, api, token_file = own_node
    a = ds.Agent(tool("flexai"), tmp_path / "agent", daemon.socket, api, token_file,
                 extra=("--publish-interval", "0.2"))
    try:
        a.start()
        wait_for(lambda: SLICE in api.slices, "the ResourceSlice", a)
        first = api.slices[SLICE]
        assert first["spec"]["pool"]["generation"] == 1 and [d["name"] for d in first["spec"]["devices"]] == ["gpu-0"]
        ds.parse_slice(first)  # what the API server holds parses as a V1ResourceSlice
        add_card(daemon)
        wait_for(lambda: len(api.slices[SLICE]["spec"]["devices"]) == 2, "the republished slice", a)
        second = api.slices[SLICE]
        assert second["spec"]["pool"]["generation"] == 2 and second["metadata"]["uid"] == first["metadata"]["uid"]
        assert second["spec"]["devices"][1]["capacity"]["memory"]["value"] == str(24 * GIB)
        assert ("PUT", f"{ds.SLICES}/{SLICE}") in [(m, p) for m, p, _ in api.calls]
        assert a.stop() == 0
        assert api.slices == {}
        assert api.calls[-1][:2] == ("DELETE", f"{ds.SLICES}/{SLICE}")
        assert "ResourceSlice node-a-gpu.flexai.io deleted" in a.log()
    finally:
        a.stop()


def test_without_the_api_server_the_agent_serves_and_retries_publishing(own_node, tmp_path):
    daemon, api, token_file = own_node
    stubs = ds.compile_stubs(tmp_path / "stubs")
    api.down()
    a = ds.Agent(tool("flexai"), tmp_path / "agent", daemon.socket, api, token_file,
                 extra=("--publish-interval", "0.2", "--publish-backoff-max", "0.4"))
    kubelet = None
    try:
        a.start()  # registers although the API server is down
        kubelet = ds.Kubelet(stubs, str(a.registration_socket))
        peer = kubelet.dra(kubelet.register().endpoint)
        ref = ("team", "early", str(uuid.uuid4()))
        out = peer.prepare(ref)[ref[2]]
        assert "is not reachable" in out.error and "\n" not in out.error and a.proc.poll() is None
        wait_for(lambda: a.log().count("ResourceSlice publish attempt") >= 3, "three retries", a)
        assert a.log().count("cannot publish this node's ResourceSlice") == 1  # one line per outage
        api.up()
        ref = new_claim({"api": api}, "late", [{"device": "gpu-0", "consumed": {"memory": "4Gi", "compute": "25"}}])
        assert peer.prepare(ref)[ref[2]].error == ""
        wait_for(lambda: SLICE in api.slices, "the ResourceSlice after the outage", a)
        # the line follows the API server's answer: the slice can be stored before it is written
        wait_for(lambda: "ResourceSlice published again after" in a.log(), "the agent's line saying so", a)
        api.down()
        assert peer.unprepare(ref)[ref[2]].error == ""  # unprepare needs no API server
        assert [s for s in daemon.slices() if s["container_id"].startswith("dra-")] == []
    finally:
        if kubelet is not None:
            kubelet.close()
        a.stop()


# --- metrics (pure) and the agent's /healthz and /metrics ---------------------------------

def test_metrics_label_claims_with_their_pods_and_read_as_prometheus_does():
    import prom_support
    from flexai_hook.dra import metrics

    claim = ds.resource_claim("team", "shared", "u-1", [{"device": "gpu-0"}], pods=("web-1", "web-0"))
    info = metrics.claim_info(claim)
    assert info == metrics.ClaimInfo("team", "shared", ("web-0", "web-1"))
    stats = metrics.Stats()
    stats.remember("u-1", info)
    stats.observe("prepare", 0.004, failed=False)
    stats.observe("prepare", 0.2, failed=True)
    status = {"cards": [{"index": 0, "slices": [
        {"container_id": "dra-u-1-gpu-0", "memory_bytes": 4 * GIB, "compute": 30},
        {"container_id": "dra-u-2-gpu-0", "memory_bytes": GIB, "compute": 5},  # prepared before a restart
        {"container_id": "abc123", "memory_bytes": GIB, "compute": 10}]}]}  # not a claim's
    fams = prom_support.parse(metrics.render(status, stats, metrics.Publishing(3, 1, 2)))
    assert fams["flexai_dra_prepared_claims"].value() == 2
    mem = fams["flexai_dra_claim_memory_limit_bytes"]
    assert mem.value(namespace="team", claim="shared", uid="u-1", device="gpu-0", gpu="0") == 4 * GIB
    assert mem.value(uid="u-2", claim="") == GIB
    assert fams["flexai_dra_claim_compute_limit_ratio"].value(uid="u-1") == 0.3  # a ratio, not percent
    assert {l["pod"] for _, l, _ in fams["flexai_dra_claim_pod_info"].samples} == {"web-0", "web-1"}
    assert fams["flexai_dra_claims_total"].value(op="prepare") == 2
    assert fams["flexai_dra_claim_errors_total"].value(op="prepare") == 1
    assert fams["flexai_dra_claim_errors_total"].value(op="unprepare") == 0
    hist = fams["flexai_dra_claim_duration_seconds"]
    assert hist.value("flexai_dra_claim_duration_seconds_bucket", op="prepare", le="0.005") == 1
    assert hist.value("flexai_dra_claim_duration_seconds_count", op="prepare") == 2
    assert fams["flexai_dra_resourceslice_pool_generation"].value() == 2
    assert fams["flexai_dra_flexaid_up"].value() == 1
    down = prom_support.parse(metrics.render(None, stats))
    assert down["flexai_dra_flexaid_up"].value() == 0 and "flexai_dra_claim_memory_limit_bytes" not in down


def http_get(url):
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=30) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_agent_serves_healthz_and_metrics(own_node, tmp_path):
    import re

    import prom_support

    daemon, api, token_file = own_node
    a = ds.Agent(tool("flexai"), tmp_path / "agent", daemon.socket, api, token_file,
                 extra=("--publish-interval", "0.2", "--http-listen", "127.0.0.1:0"))
    kubelet = None
    try:
        a.start()
        wait_for(lambda: "serving /healthz and /metrics on" in a.log(), "the HTTP listener", a)
        base = re.search(r"serving /healthz and /metrics on (http://\S+)", a.log()).group(1)
        assert http_get(base + "/healthz") == (200, "ok\n")
        kubelet = ds.Kubelet(ds.compile_stubs(tmp_path / "stubs"), str(a.registration_socket))
        peer = kubelet.dra(kubelet.register().endpoint)
        ref = new_claim({"api": api}, "shared", [{"device": "gpu-0", "consumed": {"memory": "4Gi", "compute": "30"}}],
                        pods=("web-0", "web-1"))
        assert peer.prepare(ref)[ref[2]].error == ""
        assert peer.prepare(("team", "ghost", "u-x"))["u-x"].error
        wait_for(lambda: SLICE in api.slices, "the ResourceSlice", a)
        code, text = http_get(base + "/metrics")
        fams = prom_support.parse(text)
        assert code == 200
        assert fams["flexai_dra_claim_memory_limit_bytes"].value(namespace="team", claim="shared", uid=ref[2]) == 4 * GIB
        assert sorted(l["pod"] for _, l, _ in fams["flexai_dra_claim_pod_info"].samples) == ["web-0", "web-1"]
        assert fams["flexai_dra_claims_total"].value(op="prepare") == 2
        assert fams["flexai_dra_claim_errors_total"].value(op="prepare") == 1
        assert fams["flexai_dra_resourceslice_pool_generation"].value() == 1
        assert peer.unprepare(ref)[ref[2]].error == ""
        fams = prom_support.parse(http_get(base + "/metrics")[1])
        assert fams["flexai_dra_prepared_claims"].value() == 0 and fams["flexai_dra_claim_pod_info"].samples == []
        daemon.stop()
        code, text = http_get(base + "/healthz")
        assert code == 503 and text.startswith("flexaid does not answer on ") and text.count("\n") == 1
        daemon.start()
        assert http_get(base + "/healthz")[0] == 200
    finally:
        if kubelet is not None:
            kubelet.close()
        a.stop()
