"""Kubernetes' node side for real (issue 17): containerd's CRI plugin driven over its gRPC socket
the way the kubelet drives it (RunPodSandbox, CreateContainer, StartContainer, StopPodSandbox,
RemovePodSandbox), with the RuntimeClass handler `flexai` that `flexai install containerd`
registered, flexai-runtime and flexaid from this checkout, simulated cards.

The containerd config is a plain node config (CRI plugin on, its own root, state and sockets; the
sandbox image and the runc runtime's state folder are the test's own) plus what `flexai install
containerd --config ... --dropin ...` writes into it: so these tests fail when the install's
runtime entry or its pod_annotations/container_annotations are wrong.

What containerd (1.6, 2.x alike) does with annotations, and so what these tests hold it to:
- `pod_annotations` matching the pod's annotations are copied onto the sandbox's spec and onto
  the spec of *every* container of the pod: a pod annotation `flexai.io/fraction` gives each of
  its containers a slice of its own (and the sandbox, marked
  `io.kubernetes.cri.container-type: sandbox`, none);
- `container_annotations` matching a container's own CRI annotations are copied onto that
  container's spec only (the kubelet sets them from device plugins and NRI, not from the pod
  spec): only the container that asks gets a slice.
Pods use the node's network (NamespaceOption network NODE, `hostNetwork: true`), so no CNI is
needed.
"""

from __future__ import annotations

import glob
import json
import os
import secrets
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

import engines_support as es
from conftest import GIB, Daemon, tool
from cri_client import Client, compile_stubs
from libflexai_support import client, libs  # noqa: F401  (session fixtures: the C driver client)

K8S_NS = "k8s.io"  # the containerd namespace the CRI plugin keeps its images and containers in
APP_IMAGE = "docker.io/library/flexai-cri-app:latest"
PAUSE_IMAGE = "docker.io/library/flexai-cri-pause:latest"
HOST_LIBS = "/lib/x86_64-linux-gnu"
LOADER = "/lib64/ld-linux-x86-64.so.2"

MAIN_CONFIG = """\
# a node's containerd config for flexai's CRI tests: everything private to this test
version = 2
root = "{r}/root"
state = "{r}/state"

[grpc]
  address = "{address}"

[ttrpc]
  address = "{address}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "{r}/opt"
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "{pause}"
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    # the sandbox asks for oom_score_adj -998: never below containerd's own, for hosts (like these
    # test machines) without CAP_SYS_RESOURCE
    restrict_oom_score_adj = true
    # the same on hosts with and without AppArmor (these machines have none; a fresh Debian 12
    # has it, and containerd would load its default profile with apparmor_parser)
    disable_apparmor = true
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "{r}/cni/bin"
      conf_dir = "{r}/cni/net.d"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          Root = "{r}/runc"
"""


@dataclass
class Node:
    cri: Client
    containerd: es.Containerd
    daemon: Daemon
    metrics_url: str
    root: Path
    cgroup_parent: str  # the pods' cgroup parent, private to this module


def _remove_cgroup(parent: str) -> None:
    """Remove the (emptied) cgroup folders runc made under `parent`, in every hierarchy."""
    for top in glob.glob(f"/sys/fs/cgroup{parent}") + glob.glob(f"/sys/fs/cgroup/*{parent}"):
        for folder, _, _ in sorted(os.walk(top), key=lambda entry: -len(entry[0])):
            try:
                os.rmdir(folder)
            except OSError:
                pass


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _app_rootfs(root: Path, client_path: str) -> Path:
    """busybox, the C driver client and the loader's link: the host's glibc comes in as a mount."""
    rootfs = es.make_rootfs(root)
    shutil.copy2(client_path, rootfs / "bin" / "flexai_client")
    (rootfs / "lib64").mkdir(exist_ok=True)
    (rootfs / "lib64" / "ld-linux-x86-64.so.2").symlink_to(f"{HOST_LIBS}/ld-linux-x86-64.so.2")
    return rootfs


def _cri_plugin_state(containerd: es.Containerd) -> str | None:
    """The CRI plugin's status as `ctr plugins ls` shows it (ok, error, ...), None when absent."""
    out = containerd.ctr("plugins", "ls", namespace=K8S_NS)
    for line in out.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "io.containerd.grpc.v1" and fields[1] == "cri":
            return fields[-1]
    return None


def _runc_leftovers(runc_root: Path) -> None:
    """Kill and delete containers a failed test left in the shims' runc root (by runc's own ids)."""
    runc = shutil.which("runc")
    if runc is None or not runc_root.is_dir():
        return
    for ns_root in runc_root.iterdir():
        listed = es.run([runc, "--root", ns_root, "list", "-q"], timeout=30)
        for cid in listed.stdout.split():
            es.run([runc, "--root", ns_root, "delete", "-f", cid], timeout=30)


def _remove_all_pods(cri: Client) -> None:
    """Best effort at the end: what a failed test left goes before containerd stops (and what
    this cannot remove, _runc_leftovers does after)."""
    import grpc

    try:
        for pod in cri.rt("ListPodSandbox").items:
            cri.rt("StopPodSandbox", pod_sandbox_id=pod.id)
            cri.rt("RemovePodSandbox", pod_sandbox_id=pod.id)
    except grpc.RpcError:
        pass


@pytest.fixture(scope="module")
def node(tmp_path_factory, client):  # noqa: F811
    es.need("containerd", "containerd")
    es.need("runc", "runc")
    if not os.path.exists(LOADER) or not os.path.isdir(HOST_LIBS):
        pytest.skip("the pods' driver client runs on an x86_64 Debian-style host glibc, which this host lacks")
    root = tmp_path_factory.mktemp("cri")
    cgroup_parent = f"/flexai-cri-{secrets.token_hex(4)}"
    stubs = compile_stubs(root / "stubs")
    port = _free_port()
    daemon = es.start_flexaid(root / "flexaid", metrics={"listen": f"127.0.0.1:{port}"})
    containerd = cri = None
    try:
        runtime_json = es.runtime_config(root, daemon)
        containerd = es.Containerd(root / "ctd", env={"FLEXAI_RUNTIME_CONFIG": str(runtime_json)})
        config, dropin = root / "etc" / "config.toml", root / "etc" / "conf.d" / "flexai.toml"
        config.parent.mkdir()
        config.write_text(MAIN_CONFIG.format(r=containerd.root, address=containerd.address, pause=PAUSE_IMAGE))
        installed = es.run([tool("flexai"), "install", "containerd", "--config", config, "--dropin", dropin,
                            "--runtime-path", tool("flexai-runtime")], timeout=60)
        assert installed.returncode == 0, installed.stdout + installed.stderr
        containerd.start(config=config)
        state = _cri_plugin_state(containerd)
        if state is None:
            pytest.skip(f"this containerd ({shutil.which('containerd')}) has no CRI plugin (io.containerd.grpc.v1.cri)")
        assert state == "ok", f"containerd's CRI plugin did not load ({state}):\n" + \
            containerd.log_path.read_text(errors="replace")[-3000:]
        cri = Client(containerd.address, stubs)
        version = cri.rt("Version", version="v1")
        assert version.runtime_name == "containerd" and version.runtime_api_version.startswith("v1"), version

        rootfs = _app_rootfs(root / "rootfs", client)
        from flexai_hook.oci.image import image_archive

        for ref, cmd in ((APP_IMAGE, ["sh"]), (PAUSE_IMAGE, ["sleep", "2147483647"])):
            name, tag = ref.rsplit("/", 1)[1].split(":")
            archive = image_archive(rootfs, root / f"{name}.tar", name, tag, cmd=cmd)
            imported = containerd.ctr("images", "import", archive, namespace=K8S_NS)
            assert imported.returncode == 0, imported.stderr
        deadline = time.monotonic() + 30  # the CRI plugin learns of imported images from events
        while not all(cri.image_present(ref) for ref in (APP_IMAGE, PAUSE_IMAGE)):
            assert time.monotonic() < deadline, "the CRI plugin never saw the images imported into k8s.io"
            time.sleep(0.1)
        yield Node(cri, containerd, daemon, f"http://127.0.0.1:{port}/metrics", root, cgroup_parent)
    finally:
        if cri is not None:
            try:
                _remove_all_pods(cri)
            finally:
                cri.close()
        if containerd is not None:
            containerd.stop()
            _runc_leftovers(containerd.root / "runc")
            es.unmount_under(containerd.root)
        _remove_cgroup(cgroup_parent)
        es.stop_flexaid(daemon)


# --- the kubelet's steps ------------------------------------------------------------------------

@dataclass
class Pod:
    id: str
    config: object
    log_dir: Path
    containers: dict[str, str]  # name -> CRI container id


def run_pod(node: Node, name: str, namespace: str, annotations: dict[str, str] | None = None,
            handler: str = "flexai") -> Pod:
    uid = secrets.token_hex(8)
    log_dir = node.root / "pods" / f"{namespace}_{name}_{uid}"
    log_dir.mkdir(parents=True)
    config = node.cri.pod_config(name, namespace, uid, log_dir, annotations, node.cgroup_parent)
    reply = node.cri.rt("RunPodSandbox", config=config, runtime_handler=handler)
    return Pod(reply.pod_sandbox_id, config, log_dir, {})


def start_container(node: Node, pod: Pod, name: str, script: str, annotations: dict[str, str] | None = None) -> str:
    host_libs = os.path.realpath(HOST_LIBS)
    config = node.cri.container_config(name, APP_IMAGE, ["sh", "-c", script], annotations,
                                       mounts=[(host_libs, HOST_LIBS)])
    cid = node.cri.rt("CreateContainer", pod_sandbox_id=pod.id, config=config, sandbox_config=pod.config).container_id
    node.cri.rt("StartContainer", container_id=cid)
    pod.containers[name] = cid
    return cid


def remove_pod(node: Node, pod: Pod) -> None:
    """What the kubelet does when a pod goes: StopPodSandbox (kills its containers), then
    RemovePodSandbox."""
    node.cri.rt("StopPodSandbox", pod_sandbox_id=pod.id)
    node.cri.rt("RemovePodSandbox", pod_sandbox_id=pod.id)


def output(node: Node, pod: Pod, name: str, until: str = "READY") -> list[str]:
    """A container's stdout lines from its CRI log file (`TIME STREAM TAG LINE`), once `until`
    is among them; fails with the container's state when it exits first."""
    path = pod.log_dir / f"{name}/0.log"
    deadline = time.monotonic() + 60
    while True:
        lines = [line.split(" ", 3)[3] for line in (path.read_text().splitlines() if path.exists() else [])
                 if line.count(" ") >= 3]
        if until in lines:
            return lines
        status = node.cri.rt("ContainerStatus", container_id=pod.containers[name]).status
        exited = status.state == node.cri.pb.CONTAINER_EXITED
        if exited or time.monotonic() > deadline:
            raise AssertionError(f"{name} {'exited' if exited else 'is still running'} without {until!r} "
                                 f"(exit {status.exit_code}, {status.reason}: {status.message}):\n" + "\n".join(lines))
        time.sleep(0.1)


def spec_annotations(node: Node, pod: Pod, name: str | None = None) -> dict[str, str]:
    """The annotations of the OCI spec containerd made for the sandbox (name None) or a container,
    from the verbose status."""
    if name is None:
        info = node.cri.rt("PodSandboxStatus", pod_sandbox_id=pod.id, verbose=True).info
    else:
        info = node.cri.rt("ContainerStatus", container_id=pod.containers[name], verbose=True).info
    return json.loads(info["info"])["runtimeSpec"].get("annotations") or {}


def slices_by_container(node: Node) -> dict[str, dict]:
    return {s["container_id"]: s for s in node.daemon.slices()}


def status_json(node: Node) -> dict:
    out = es.run([tool("flexai"), "status", "--json", "--socket", node.daemon.socket], timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def metrics(node: Node) -> str:
    with urllib.request.urlopen(node.metrics_url, timeout=10) as reply:
        return reply.read().decode()


SLICE_VIEW = ("if [ -e /run/flexai/slice.conf ]; then cat /run/flexai/slice.conf; else echo NOSLICE; fi; "
              "flexai_client info alloc mem {alloc} alloc mem {over}; echo client=$?; echo READY; exec sleep 3600")


def view(alloc: int, over: int) -> str:
    return SLICE_VIEW.format(alloc=alloc, over=over)


def driver_view(lines: list[str]) -> tuple[dict[str, str], list[str]]:
    """flexai_client's `info` line as a dict, and the three lines after it (the two allocations
    and the client's exit status)."""
    at = next(n for n, line in enumerate(lines) if line.startswith("count="))
    return dict(field.split("=", 1) for field in lines[at].split()), lines[at + 1:at + 4]


# --- the tests ----------------------------------------------------------------------------------

def test_a_pod_annotation_slices_each_container_once_and_never_the_sandbox(node):
    card = node.daemon.cards[0]
    limit = 16 * GIB * 30 // 100
    pod = run_pod(node, "trainer-0", "ml-team", {"flexai.io/fraction": "0.3", "team": "ml"})
    try:
        sandbox = spec_annotations(node, pod)
        # the sandbox carried the request (pod_annotations) and the marker: flexai skipped it
        assert sandbox["flexai.io/fraction"] == "0.3" and sandbox["io.kubernetes.cri.container-type"] == "sandbox"
        assert "team" not in sandbox  # only what pod_annotations lets through
        assert node.daemon.slices() == []

        train = start_container(node, pod, "train", view(GIB, limit))
        sidecar = start_container(node, pod, "sidecar", "cat /run/flexai/slice.conf; echo READY; exec sleep 3600")
        for name in ("train", "sidecar"):
            assert spec_annotations(node, pod, name)["flexai.io/fraction"] == "0.3"  # every container has it

        slices = slices_by_container(node)
        assert set(slices) == {train, sidecar}  # one each; the sandbox none
        for s in slices.values():
            assert s["memory_bytes"] == limit and s["compute"] == 30 and s["card_uuid"] == card["uuid"]
            assert s["pod"] == {"name": "trainer-0", "namespace": "ml-team"}

        seen = output(node, pod, "train")
        assert f"memory_limit={limit}" in seen and "compute_limit=30" in seen
        info, allocs = driver_view(seen)
        assert int(info["count"]) == 1 and int(info["total"]) == limit and info["uuid"] == card["uuid"]
        # within the slice 1 GiB is granted; the slice's whole size on top of it is not (the card
        # itself has 16 GiB: without the slice both would be)
        assert allocs == ["ok 0", "oom", "client=0"]
        assert f"memory_limit={limit}" in output(node, pod, "sidecar")

        shown = [s for card_ in status_json(node)["cards"] for s in card_["slices"]]
        assert {s["container_id"]: s["pod"] for s in shown} == {
            train: {"name": "trainer-0", "namespace": "ml-team"}, sidecar: {"name": "trainer-0", "namespace": "ml-team"}}
        text = es.run([tool("flexai"), "status", "--socket", node.daemon.socket], timeout=30).stdout
        assert sum("pod ml-team/trainer-0" in line for line in text.splitlines()) == 2, text
        exported = metrics(node)
        for cid in (train, sidecar):
            line = next(x for x in exported.splitlines()
                        if x.startswith("flexai_slice_memory_limit_bytes{") and f'container="{cid}"' in x)
            assert 'pod="trainer-0"' in line and 'namespace="ml-team"' in line and line.endswith(f" {limit}")
    finally:
        remove_pod(node, pod)
    assert node.daemon.slices() == []
    assert node.cri.rt("ListContainers", filter=node.cri.pb.ContainerFilter(pod_sandbox_id=pod.id)).containers == []


def test_flexai_io_containers_keeps_the_pods_request_off_its_sidecars(node):
    """The CRI copies the pod's flexai.io/* annotations onto every container; with
    flexai.io/containers naming the model container, the sidecar (an Istio proxy, say) runs
    without a slice and without the driver, and the model container has the only slice."""
    limit = 16 * GIB * 20 // 100
    pod = run_pod(node, "serve-0", "ml-team", {"flexai.io/fraction": "0.2", "flexai.io/containers": "model"})
    try:
        model = start_container(node, pod, "model", view(GIB, limit))
        proxy = start_container(node, pod, "proxy", view(GIB, limit))
        assert spec_annotations(node, pod, "proxy")["flexai.io/containers"] == "model"  # it has them too
        (slice_,) = node.daemon.slices()
        assert slice_["container_id"] == model and slice_["memory_bytes"] == limit
        assert proxy not in slices_by_container(node)
        assert f"memory_limit={limit}" in output(node, pod, "model")
        assert output(node, pod, "proxy")[:3] == ["NOSLICE", "nodriver", "client=3"]
    finally:
        remove_pod(node, pod)
    assert node.daemon.slices() == []


def test_a_container_annotation_slices_only_the_container_that_asks(node):
    limit = 16 * GIB * 25 // 100
    pod = run_pod(node, "worker-0", "batch")
    try:
        asks = start_container(node, pod, "asks", view(GIB, limit), {"flexai.io/fraction": "0.25", "other": "x"})
        plain = start_container(node, pod, "plain", view(GIB, limit))
        assert spec_annotations(node, pod, "asks")["flexai.io/fraction"] == "0.25"
        assert "other" not in spec_annotations(node, pod, "asks")
        assert not any(k.startswith("flexai.io/") for k in spec_annotations(node, pod, "plain"))

        (slice_,) = node.daemon.slices()
        assert slice_["container_id"] == asks and slice_["memory_bytes"] == limit
        assert slice_["pod"] == {"name": "worker-0", "namespace": "batch"}
        assert plain not in slices_by_container(node)

        seen = output(node, pod, "asks")
        info, allocs = driver_view(seen)
        assert f"memory_limit={limit}" in seen and int(info["total"]) == limit
        assert allocs == ["ok 0", "oom", "client=0"]
        unsliced = output(node, pod, "plain")
        # passed through untouched: no slice file, no driver (flexai_client exits 3 without one)
        assert unsliced[:3] == ["NOSLICE", "nodriver", "client=3"], unsliced
    finally:
        remove_pod(node, pod)
    assert node.daemon.slices() == []


def test_a_pod_of_the_default_runtime_is_not_sliced(node):
    """Without `runtimeClassName: flexai` the pod runs with runc: the annotation is not even
    passed on (the runc handler has no pod_annotations), and flexaid never hears of it."""
    pod = run_pod(node, "plain-0", "default", {"flexai.io/fraction": "0.5"}, handler="")
    try:
        assert "flexai.io/fraction" not in spec_annotations(node, pod)
        start_container(node, pod, "app", view(GIB, GIB))
        assert output(node, pod, "app")[:3] == ["NOSLICE", "nodriver", "client=3"]
        assert node.daemon.slices() == []
    finally:
        remove_pod(node, pod)
