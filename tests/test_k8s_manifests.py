"""runtime-config/kubernetes/: every object parses as YAML and round-trips unchanged through
the official `kubernetes` client's models (a field the API does not know, or one in the wrong
place, does not survive the round trip), and the objects agree with each other and with the
driver (names, CEL attributes, capacities). tests/k8s/e2e.sh refuses to run without a cluster.
No cluster is used here."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from flexai_hook.dra import claim as claim_mod, slices

REPO = Path(__file__).resolve().parent.parent
MANIFESTS = REPO / "runtime-config" / "kubernetes"
MODELS = {
    ("resource.k8s.io/v1", "DeviceClass"): "V1DeviceClass",
    ("resource.k8s.io/v1", "ResourceClaimTemplate"): "V1ResourceClaimTemplate",
    ("resource.k8s.io/v1", "ResourceClaim"): "ResourceV1ResourceClaim",
    ("apps/v1", "DaemonSet"): "V1DaemonSet",
    ("apps/v1", "Deployment"): "V1Deployment",
    ("v1", "Service"): "V1Service",
    ("v1", "Pod"): "V1Pod",
    ("v1", "Namespace"): "V1Namespace",
    ("v1", "ServiceAccount"): "V1ServiceAccount",
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): "V1ClusterRole",
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): "V1ClusterRoleBinding",
    ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy"): "V1ValidatingAdmissionPolicy",
    ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding"): "V1ValidatingAdmissionPolicyBinding",
    ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration"): "V1MutatingWebhookConfiguration",
}


SCHEDULER_CONFIG = "KubeSchedulerConfiguration"


def objects() -> dict[tuple[str, str], dict]:
    """(kind, name) -> object, over every manifest."""
    found = {}
    for path in sorted(MANIFESTS.rglob("*.yaml")):
        for obj in yaml.safe_load_all(path.read_text()):
            if obj is None or obj.get("kind") == SCHEDULER_CONFIG:  # a file for kube-scheduler, not an API object
                continue
            key = (obj["kind"], obj["metadata"]["name"])
            assert key not in found, f"{path}: {key} twice"
            found[key] = obj
    return found


@pytest.mark.parametrize("key", sorted(objects()), ids=lambda k: f"{k[0]}/{k[1]}")
def test_each_object_round_trips_through_the_kubernetes_models(key):
    from kubernetes import client as k

    obj = objects()[key]
    model = MODELS.get((obj["apiVersion"], obj["kind"]))
    assert model, f"no model for {obj['apiVersion']} {obj['kind']}: add it to MODELS"
    api = k.ApiClient()
    back = api.sanitize_for_serialization(api._ApiClient__deserialize(obj, model))
    assert back == obj, f"{key} has fields the {model} model does not know (or in the wrong place)"


def test_the_objects_agree_with_each_other_and_the_driver():
    objs = objects()
    classes = {name: o for (kind, name), o in objs.items() if kind == "DeviceClass"}
    assert set(classes) == {"gpu.flexai.io", "nvidia.gpu.flexai.io", "ascend.npu.flexai.io"}
    for name, o in classes.items():
        cel = " ".join(s["cel"]["expression"] for s in o["spec"]["selectors"])
        assert f'device.driver == "{claim_mod.DRIVER}"' in cel
    # the vendor attribute the per-vendor classes select on is what slices.py publishes
    assert f'.vendor == "{slices.vendor_of("nvml")}"' in classes["nvidia.gpu.flexai.io"]["spec"]["selectors"][0]["cel"]["expression"]
    assert f'.vendor == "{slices.vendor_of("ascend")}"' in classes["ascend.npu.flexai.io"]["spec"]["selectors"][0]["cel"]["expression"]
    device = slices.device({"index": 0, "uuid": "GPU-1", "name": "x", "memory": 1 << 34}, "nvml")
    assert "vendor" in device["attributes"]
    # claims ask for both capacities by the names the slice declares, from a class that exists
    template = objs[("ResourceClaimTemplate", "gpu-8gi-30")]["spec"]["spec"]["devices"]["requests"][0]["exactly"]
    assert template["capacity"]["requests"] == {"memory": "8Gi", "compute": "30"}
    assert set(template["capacity"]["requests"]) == set(device["capacity"])
    assert template["deviceClassName"] in classes
    shared = objs[("ResourceClaim", "shared-gpu")]
    users = [o for (kind, _), o in objs.items() if kind == "Pod"
             and any(c.get("resourceClaimName") == "shared-gpu" for c in o["spec"].get("resourceClaims", ()))]
    assert len(users) == 2 and shared["spec"]["devices"]["requests"][0]["exactly"]["deviceClassName"] in classes
    # the DaemonSet: its service account is the bound one, NODE_NAME from the downward API,
    # the kubelet's folders, flexaid's and the CDI folder mounted at the paths the agent uses
    ds = objs[("DaemonSet", "flexai-dra")]["spec"]["template"]["spec"]
    binding = objs[("ClusterRoleBinding", "flexai-dra")]
    (subject,) = binding["subjects"]
    assert (subject["name"], subject["namespace"]) == (ds["serviceAccountName"], objs[("DaemonSet", "flexai-dra")]["metadata"]["namespace"])
    (container,) = ds["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/var/lib/kubelet/plugins_registry", "/var/lib/kubelet/plugins", "/run/flexai", "/var/run/cdi"} <= mounts
    hosts = {v["hostPath"]["path"] for v in ds["volumes"]}
    assert {"/var/lib/kubelet/plugins_registry", "/var/lib/kubelet/plugins", "/run/flexai", "/var/run/cdi"} <= hosts
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz" and "--http-listen" in container["command"]
    rules = {r["resources"][0]: set(r["verbs"]) for r in objs[("ClusterRole", "flexai-dra")]["rules"]}
    assert {"get", "list", "watch"} <= rules["resourceclaims"]
    assert {"create", "update", "delete", "list"} <= rules["resourceslices"]
    policy = objs[("ValidatingAdmissionPolicy", "flexai-dra-resourceslices")]
    assert f"system:serviceaccount:{subject['namespace']}:{subject['name']}" in policy["spec"]["matchConditions"][0]["expression"]


E2E = REPO / "tests" / "k8s" / "e2e.sh"


def test_e2e_refuses_without_kubectl(tmp_path):
    ran = subprocess.run(["bash", str(E2E)], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PATH": str(tmp_path)}, executable="/bin/bash")
    assert ran.returncode == 2 and ran.stdout == "" and ran.stderr.count("\n") == 1 and "kubectl" in ran.stderr


def test_e2e_refuses_without_a_cluster(tmp_path):
    fake = tmp_path / "kubectl"
    fake.write_text("#!/bin/sh\necho 'The connection to the server localhost:8080 was refused' >&2\nexit 1\n")
    fake.chmod(0o755)
    ran = subprocess.run(["/bin/bash", str(E2E)], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PATH": f"{tmp_path}:/usr/bin:/bin"})
    assert ran.returncode == 2 and ran.stderr.count("\n") == 1 and "no cluster" in ran.stderr


# The fields of KubeSchedulerConfiguration's Extender (k8s.io/kube-scheduler config/v1 types.go,
# json names), and the top-level fields this example sets
EXTENDER_FIELDS = {"urlPrefix", "filterVerb", "preemptVerb", "prioritizeVerb", "weight", "bindVerb", "enableHTTPS",
                   "tlsConfig", "httpTimeout", "nodeCacheCapable", "managedResources", "ignorable"}


def test_the_scheduler_configuration_calls_the_extender_as_it_serves():
    from flexai_hook.extender import server

    (config,) = [o for o in yaml.safe_load_all((MANIFESTS / "scheduler-extender.yaml").read_text()) if o]
    assert (config["apiVersion"], config["kind"]) == ("kubescheduler.config.k8s.io/v1", SCHEDULER_CONFIG)
    assert config["percentageOfNodesToScore"] == 100
    (ext,) = config["extenders"]
    assert set(ext) <= EXTENDER_FIELDS, f"not Extender fields: {set(ext) - EXTENDER_FIELDS}"
    assert ext["ignorable"] is True and ext["nodeCacheCapable"] is True and "managedResources" not in ext
    assert 1 <= ext["weight"] and ext["httpTimeout"].endswith("s")
    objs = objects()
    svc, deploy = objs[("Service", "flexai-extender")], objs[("Deployment", "flexai-extender")]
    host = f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc.cluster.local:{svc['spec']['ports'][0]['port']}"
    assert ext["urlPrefix"] == f"http://{host}"
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    assert container["command"][:2] == ["flexai", "extender"]
    assert container["command"][container["command"].index("--listen") + 1] == f":{container['ports'][0]['containerPort']}"
    assert svc["spec"]["selector"].items() <= deploy["spec"]["template"]["metadata"]["labels"].items()
    # the verbs are the server's routes: build one and ask it
    srv = server.Server("127.0.0.1:0", server.Extender(cache=None))  # routes only; no call reaches the cache
    try:
        srv.start()
        import urllib.error
        import urllib.request
        for verb in (ext["filterVerb"], ext["prioritizeVerb"]):
            req = urllib.request.Request(f"http://{srv.address}/{verb}", data=b"{}", method="POST")
            try:
                urllib.request.urlopen(req, timeout=30)
            except urllib.error.HTTPError as exc:
                assert exc.code == 400, f"/{verb} is not a route of the extender"  # 400: the route, an empty body
    finally:
        srv.stop()
    rules = {r["resources"][0]: set(r["verbs"]) for r in objs[("ClusterRole", "flexai-extender")]["rules"]}
    assert {"list"} <= rules["resourceslices"] and {"get", "list"} <= rules["resourceclaims"]
    (subject,) = objs[("ClusterRoleBinding", "flexai-extender")]["subjects"]
    assert subject["name"] == deploy["spec"]["template"]["spec"]["serviceAccountName"]


def test_the_webhook_configuration_reaches_the_admission_server_as_it_serves(tmp_path):
    """The MutatingWebhookConfiguration names the Service, port and path the Deployment serves,
    for the objects and version review.py reads, and cannot block a claim."""
    from flexai_hook.admission import review

    objs = objects()
    (hook,) = objs[("MutatingWebhookConfiguration", "flexai-admission")]["webhooks"]
    svc, deploy = objs[("Service", "flexai-admission")], objs[("Deployment", "flexai-admission")]
    assert hook["admissionReviewVersions"] == [review.API_VERSION.split("/")[1]]
    assert hook["failurePolicy"] == "Ignore" and hook["sideEffects"] == "None" and hook["matchPolicy"] == "Equivalent"
    (rule,) = hook["rules"]
    assert rule["operations"] == ["CREATE"] and rule["apiVersions"] == ["v1"]
    assert {r[:-1] for r in rule["resources"]} == {k.lower() for k in review.SPEC_AT}
    ref = hook["clientConfig"]["service"]
    assert (ref["name"], ref["namespace"], ref["port"]) == (svc["metadata"]["name"], svc["metadata"]["namespace"],
                                                          svc["spec"]["ports"][0]["port"])
    assert svc["spec"]["selector"].items() <= deploy["spec"]["template"]["metadata"]["labels"].items()
    spec = deploy["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["command"][:2] == ["flexai", "admission"]
    assert container["command"][container["command"].index("--listen") + 1] == f":{container['ports'][0]['containerPort']}"
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    mount = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}["tls"]
    assert container["command"][container["command"].index("--cert") + 1].startswith(mount + "/")
    (subject,) = objs[("ClusterRoleBinding", "flexai-admission")]["subjects"]
    assert subject["name"] == spec["serviceAccountName"]
    rules = {r["resources"][0]: set(r["verbs"]) for r in objs[("ClusterRole", "flexai-admission")]["rules"]}
    assert rules == {"resourceslices": {"list"}}
    # the path is the server's route: a real one answers 400 there for an empty body, 404 elsewhere
    import ssl
    import urllib.error
    import urllib.request

    from flexai_hook.admission import defaults
    from flexai_hook.admission.server import Server, Sizes

    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=x",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    srv = Server("127.0.0.1:0", Sizes(fixed=[defaults.Card(1 << 34, "nvidia")]), str(cert), str(key))
    srv.start()
    try:
        context = ssl.create_default_context(cafile=str(cert))
        for path, code in ((ref["path"], 400), ("/nowhere", 404)):
            req = urllib.request.Request(f"https://{srv.address}{path}", data=b"", method="POST")
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(req, timeout=30, context=context)
            assert err.value.code == code, path
    finally:
        srv.stop()
