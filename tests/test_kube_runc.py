"""A Kubernetes pod through real runc, flexai-runtime and flexaid (issue 17, item 3): the specs
containerd's CRI writes for a pod's sandbox and its container. The sandbox carries the pod's
flexai.io/* annotations too and must get no slice; the container gets exactly one, which
`flexai status` and the metrics show with the pod's name and namespace. (Driving containerd's
CRI over gRPC is tests/test_engine_containerd.py's business; these are its specs, by hand.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from conftest import BIN, GIB, tool
from test_runtime_runc import digest, run_to_files

POD = {"io.kubernetes.cri.sandbox-id": "4f1c0ffee", "io.kubernetes.cri.sandbox-name": "trainer-0",
       "io.kubernetes.cri.sandbox-namespace": "ml-team", "flexai.io/fraction": "0.3"}
SANDBOX = {**POD, "io.kubernetes.cri.container-type": "sandbox"}
CONTAINER = {**POD, "io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.container-name": "train"}
CRIO_SANDBOX = {"io.kubernetes.cri-o.ContainerType": "sandbox", "io.kubernetes.cri-o.Namespace": "ml-team",
                "flexai.io/fraction": "0.3"}


def front_door(runc, daemon, *args):
    """The installed flexai-runtime (C front door; a sliced create goes to flexaid's prepare)."""
    cmd = [tool("flexai-runtime"), "--root", str(runc.root), *args]
    env = {**os.environ, "FLEXAI_SOCKET": daemon.socket, "FLEXAI_RUNTIME": runc.binary,
           "FLEXAI_RUNTIME_CONFIG": "/nonexistent"}
    return run_to_files(cmd, env=env)


def python_runtime(runc, daemon, log, *args):
    """flexai-runtime's Python implementation from this checkout, as the engine would call it
    with runc's --debug and a --log file."""
    cmd = [sys.executable, "-m", "flexai_hook.oci.runtime", "--root", str(runc.root), "--debug",
           "--log", str(log), "--log-format", "json", *args]
    env = {**os.environ, "FLEXAI_SOCKET": daemon.socket, "FLEXAI_RUNTIME": runc.binary,
           "FLEXAI_RUNTIME_CONFIG": "/nonexistent", "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    return run_to_files(cmd, env=env)


def stop(runc, daemon, cid):
    front_door(runc, daemon, "kill", cid, "KILL")
    deadline = time.monotonic() + 20
    while front_door(runc, daemon, "delete", cid).returncode != 0 and time.monotonic() < deadline:
        time.sleep(0.1)


def test_pod_sandbox_gets_no_slice_and_its_container_gets_one_shown_with_its_pod(runc, make_daemon, make_bundle):
    daemon = make_daemon(memories=("16GiB",))
    sandbox = make_bundle(["sh", "-c", "sleep 30"], annotations=SANDBOX)
    before = digest(sandbox / "config.json")
    out = front_door(runc, daemon, "create", "--bundle", str(sandbox), "sandbox1")
    assert out.returncode == 0, out.stderr
    try:
        assert digest(sandbox / "config.json") == before  # passed through untouched
        assert daemon.slices() == []
        assert "no slice for sandbox1: a Kubernetes pod sandbox (io.kubernetes.cri.container-type=sandbox" \
            in daemon.log()  # flexaid runs at --log-level debug here

        container = make_bundle(["sh", "-c", "cat /run/flexai/slice.conf; sleep 30"], annotations=CONTAINER)
        out = front_door(runc, daemon, "create", "--bundle", str(container), "train1")
        assert out.returncode == 0, out.stderr + daemon.log()
        try:
            (slice_,) = daemon.slices()  # one slice for the pod, not two
            assert slice_["container_id"] == "train1" and slice_["memory_bytes"] == 16 * GIB * 30 // 100
            assert slice_["pod"] == {"name": "trainer-0", "namespace": "ml-team"}
            assert "(pod ml-team/trainer-0)" in daemon.log()
            status = subprocess.run([tool("flexai"), "status", "--socket", daemon.socket],
                                    capture_output=True, text=True, timeout=30)
            assert status.returncode == 0, status.stderr
            line = next(x for x in status.stdout.splitlines() if "train1" in x)
            assert "pod ml-team/trainer-0" in line
            from flexai_hook.daemon import metrics

            text = metrics.render(daemon.call({"op": "status"})["status"])
            assert 'container="train1"' in text and 'pod="trainer-0",namespace="ml-team"' in text
        finally:
            stop(runc, daemon, "train1")
    finally:
        stop(runc, daemon, "sandbox1")
    assert daemon.slices() == []


def test_crio_sandbox_through_the_python_runtime_says_why_at_debug_level(runc, daemon, make_bundle, tmp_path):
    sandbox = make_bundle(["sh", "-c", "echo PAUSE"], annotations=CRIO_SANDBOX)
    before = digest(sandbox / "config.json")
    log = tmp_path / "runtime.log"
    out = python_runtime(runc, daemon, log, "run", "--bundle", str(sandbox), "crio-sandbox1")
    assert out.returncode == 0, out.stderr
    assert "PAUSE" in out.stdout and out.stderr == ""  # nothing said where the engine shows errors
    assert digest(sandbox / "config.json") == before
    assert daemon.slices() == [] and "reserved" not in daemon.log()
    (entry,) = [json.loads(x) for x in log.read_text().splitlines() if "flexai" in x]
    assert entry["level"] == "debug"
    assert "no slice for crio-sandbox1: a Kubernetes pod sandbox (io.kubernetes.cri-o.ContainerType=sandbox" \
        in entry["msg"]


def test_python_runtime_records_the_pod_of_a_crio_container(runc, daemon, make_bundle, tmp_path):
    annotations = {"io.kubernetes.cri-o.ContainerType": "container", "io.kubernetes.cri-o.Namespace": "ml-team",
                   "io.kubernetes.cri-o.Labels": json.dumps({"io.kubernetes.pod.name": "trainer-1",
                                                             "io.kubernetes.pod.namespace": "ml-team"}),
                   "flexai.io/fraction": "0.25"}
    bundle = make_bundle(["sh", "-c", "sleep 30"], annotations=annotations)
    out = python_runtime(runc, daemon, tmp_path / "runtime.log", "create", "--bundle", str(bundle), "crio1")
    assert out.returncode == 0, out.stderr
    try:
        (slice_,) = daemon.slices()
        assert slice_["pod"] == {"name": "trainer-1", "namespace": "ml-team"} and slice_["compute"] == 25
    finally:
        stop(runc, daemon, "crio1")
    assert daemon.slices() == []
