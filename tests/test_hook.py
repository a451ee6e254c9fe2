"""flexai-hook poststop: releases by container id from runc's and crun's state shapes."""

import json
import os
import subprocess

import pytest

from conftest import tool


def hook(daemon_socket, stdin, *args):
    return subprocess.run([tool("flexai-hook"), *args], input=stdin, capture_output=True, text=True,
                          timeout=30, env={**os.environ, "FLEXAI_SOCKET": daemon_socket})


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
