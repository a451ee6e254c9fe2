"""Runtime command lines as Docker, containerd, Podman and people send them."""

import pytest

from flexai_hook.oci import argv
from flexai_hook.oci.argv import Invocation, parse

CASES = [
    # (argv, subcommand, container id, bundle, log, log format, root)
    (["create", "--bundle", "/b", "c1"], "create", "c1", "/b", None, "text", None),
    (["create", "--bundle=/b", "c1"], "create", "c1", "/b", None, "text", None),
    (["create", "-b", "/b", "c1"], "create", "c1", "/b", None, "text", None),
    (["create", "c1"], "create", "c1", None, None, "text", None),
    (["run", "-d", "--bundle", "/b", "c1"], "run", "c1", "/b", None, "text", None),
    (["run", "--detach", "-b", "/b", "--pid-file", "/p", "c1"], "run", "c1", "/b", None, "text", None),
    # containerd's shim
    (["--root", "/run/containerd/runc/k8s.io", "--log", "/run/x/log.json", "--log-format", "json",
      "--systemd-cgroup", "create", "--bundle", "/run/x/c1", "--pid-file", "/run/x/init.pid", "c1"],
     "create", "c1", "/run/x/c1", "/run/x/log.json", "json", "/run/containerd/runc/k8s.io"),
    # dockerd via containerd with = forms and --console-socket
    (["--root=/var/run/docker/runtime-runc/moby", "--log=/l", "--log-format=json", "create",
      "--bundle=/b", "--console-socket", "/tmp/pty.sock", "c1"],
     "create", "c1", "/b", "/l", "json", "/var/run/docker/runtime-runc/moby"),
    (["--debug", "create", "--no-pivot", "--preserve-fds", "2", "-b", "/b", "c1"],
     "create", "c1", "/b", None, "text", None),
    # a bundle directory literally named create, and a root named create
    (["create", "--bundle", "create", "c1"], "create", "c1", "create", None, "text", None),
    (["--root", "create", "create", "-b", "create", "create"], "create", "create", "create", None, "text", "create"),
    (["create", "--", "c1"], "create", "c1", None, None, "text", None),
    # other subcommands pass straight through
    (["start", "c1"], "start", None, None, None, "text", None),
    (["--root", "/r", "delete", "--force", "c1"], "delete", None, None, None, "text", "/r"),
    (["--log", "/l", "kill", "c1", "KILL"], "kill", None, None, "/l", "text", None),
    (["state", "c1"], "state", None, None, None, "text", None),
    (["exec", "--process", "/p.json", "c1"], "exec", None, None, None, "text", None),
    (["features"], "features", None, None, None, "text", None),
    (["--version"], None, None, None, None, "text", None),
    ([], None, None, None, None, "text", None),
    (["create"], "create", None, None, None, "text", None),
]


@pytest.mark.parametrize("argv, sub, cid, bundle, log, fmt, root", CASES)
def test_parse(argv, sub, cid, bundle, log, fmt, root):
    inv = parse(argv)
    assert inv == Invocation(subcommand=sub, container_id=cid, bundle=bundle, log_path=log,
                             log_format=fmt, root=root, debug="--debug" in argv)
    assert inv.edits_spec == (sub in ("create", "run") and cid is not None)


def test_leading_flexai_runtime_flag_names_the_real_runtime_and_is_taken_off(monkeypatch):
    from flexai_hook.oci import runtime

    monkeypatch.setenv("FLEXAI_RUNTIME", "runc")
    args = runtime.take_runtime_flag(["--flexai-runtime=/usr/bin/nvidia-container-runtime", "--root", "/r",
                                      "create", "--flexai-runtime=x"])
    assert args == ["--root", "/r", "create", "--flexai-runtime=x"]  # only leading ones are flexai's
    assert runtime.runtime_settings()["runtime"] == "/usr/bin/nvidia-container-runtime"


@pytest.mark.parametrize("args, asked", [
    ([], "help"), (["--help"], "help"), (["-h"], "help"), (["--version"], "version"), (["-v"], "version"),
    (["--root", "/r", "--version"], None), (["state", "--help"], None), (["help"], None), (["list"], None),
])
def test_about_is_only_a_question_about_the_runtime_itself(args, asked):
    assert argv.about(args) == asked
