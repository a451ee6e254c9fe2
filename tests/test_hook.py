"""flexai-hook poststop: releases by container id from runc's and crun's state shapes."""

import json
import os
import subprocess

import pytest

from conftest import tool


def hook(daemon_socket, stdin, *args, name="flexai-hook", retry="1"):
    # a short retry window: without a daemon the hook tries again for that long
    return subprocess.run([tool(name), *args], input=stdin, capture_output=True, text=True,
                          timeout=30, env={**os.environ, "FLEXAI_SOCKET": daemon_socket, "FLEXAI_RELEASE_RETRY": retry})


@pytest.mark.parametrize(
    "state",
    [
        {"ociVersion": "1.0.2", "id": "c1", "status": "creating", "pid": 0, "bundle": "/b"},  # runc
        {"ociVersion": "1.0.0", "id": "c1", "status": "created", "pid": 0, "bundlePath": "/b"},  # crun, old shape
        {"ociVersion": "1.2.0", "id": "c1", "status": "stopped", "bundle": "/b", "annotations": {}},
    ],
)
def test_poststop_releases(daemon, state):
    daemon.call({"op": "reserve", "container_id": "c1", "request": {"fraction": 20}})
    out = hook(daemon.socket, json.dumps(state), "poststop")
    assert out.returncode == 0, out.stderr
    assert daemon.slices() == []
    # idempotent: a second poststop (runc delete after a failed start) is harmless
    assert hook(daemon.socket, json.dumps(state), "poststop").returncode == 0


@pytest.mark.parametrize(
    "stdin, fragment",
    [("", "not a JSON object"), ("[1]", "not a JSON object"), ("{}", "'id' is a required property"),
     ('{"id": "../etc"}', "invalid request"), ('{"id": 5}', "invalid request"), ("{garbage}", "not a JSON object")],
)
def test_bad_state_is_logged_not_fatal(daemon, stdin, fragment):
    daemon.call({"op": "reserve", "container_id": "keep", "request": {"fraction": 20}})
    out = hook(daemon.socket, stdin, "poststop")
    assert out.returncode == 0 and fragment in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert [s["container_id"] for s in daemon.slices()] == ["keep"]


def test_missing_daemon_is_logged_not_fatal(tmp_path):
    out = hook(str(tmp_path / "nothing.sock"), json.dumps({"id": "c1"}), "poststop")
    assert out.returncode == 0
    assert "could not release the slice" in out.stderr and "not reachable" in out.stderr


def test_usage():
    assert "poststop" in subprocess.run([tool("flexai-hook"), "--help"], capture_output=True, text=True).stdout
    out = subprocess.run([tool("flexai-hook"), "prestart"], capture_output=True, text=True)
    assert out.returncode == 2 and "unknown stage" in out.stderr


# flexai-hook is the C front door (libflexai/launch/hook_front.c); flexai-hook-py the Python one
FRONTS = ["flexai-hook", "flexai-hook-py"]


@pytest.mark.parametrize("name", FRONTS)
def test_a_release_that_meets_a_restarting_daemon_is_retried(daemon, name):
    """Attack 5: a poststop release that found flexaid down was never retried; the slice stayed
    held until reconciliation. Now the hook tries again while flexaid comes back."""
    daemon.call({"op": "reserve", "container_id": "c1", "request": {"fraction": 20}})
    daemon.stop()
    proc = subprocess.Popen([tool(name), "poststop"], stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "FLEXAI_SOCKET": daemon.socket, "FLEXAI_RELEASE_RETRY": "20"})
    try:
        proc.stdin.write(json.dumps({"ociVersion": "1.0.2", "id": "c1", "status": "stopped", "bundle": "/b"}))
        proc.stdin.close()
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(0.5)  # still trying: flexaid is down
        daemon.start()
        assert proc.wait(30) == 0
        stderr = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert stderr == ""
    assert daemon.slices() == []


@pytest.mark.parametrize("name", FRONTS)
def test_a_state_over_the_line_limit_still_releases(daemon, name):
    from flexai_hook.daemon import server

    daemon.call({"op": "reserve", "container_id": "big1", "request": {"fraction": 20}})
    state = json.dumps({"ociVersion": "1.0.2", "id": "big1", "status": "stopped", "bundle": "/b",
                        "annotations": {f"k{i}": "v" * 1000 for i in range(2000)}})
    assert len(state) > server.MAX_LINE
    out = hook(daemon.socket, state, "poststop", name=name)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert daemon.slices() == []


def test_create_container_warns_about_a_misspelled_request_and_lets_it_run(daemon, tmp_path):
    """The hooks.d path (Podman): an unknown FLEXAI_* name is said on the hook's stderr; with no
    request the hook does nothing else and the container starts (issue 17 item 7)."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps({"process": {"env": ["FLEXAI_FRACTON=0.3", "PATH=/bin"]},
                                                    "root": {"path": "rootfs"}}))
    state = {"ociVersion": "1.0.2", "id": "typo-hook", "status": "creating", "pid": 1, "bundle": str(bundle)}
    out = hook(daemon.socket, json.dumps(state), "createContainer")
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines() == ["flexai: FLEXAI_FRACTON in the container's environment is not a flexai "
                                       "variable and does nothing; did you mean FLEXAI_FRACTION?"]
    assert daemon.slices() == []
