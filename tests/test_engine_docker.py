"""Docker end to end: a real dockerd (own data and exec roots, socket and containerd) whose
daemon.json `flexai install docker` wrote; `docker run --runtime=flexai` and `docker exec`."""

from __future__ import annotations

import json
import subprocess

import pytest

import cdi_support as cs
import engines_support as es
from conftest import GIB, tool
from libflexai_support import client, libs  # noqa: F401

# What a container can see of itself, minus what differs between any two containers.
VIEW = ("busybox awk '{print $5, $6}' /proc/self/mountinfo | sort; ls -la /dev /run | busybox awk '{print $1, $NF}'; "
        "env | grep -v ^HOSTNAME= | sort; grep -E '^(Cap|NoNewPrivs|Seccomp)' /proc/self/status; id")


def flexai(*args, env=None):
    return subprocess.run([tool("flexai"), *map(str, args)], capture_output=True, text=True, timeout=60, env=env)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    es.need("dockerd", "docker.io")
    root = tmp_path_factory.mktemp("docker")
    # a stand-in for a vendor's default runtime (nvidia's) that flexai chains to
    daemon = es.start_flexaid(root / "flexaid", extra_runtimes=[root / "vendor-runtime"])
    containerd = dockerd = None
    try:
        config = es.runtime_config(root, daemon)
        containerd = es.Containerd(root / "ctd", env={"FLEXAI_RUNTIME_CONFIG": str(config)}).start()
        daemon_json = root / "daemon.json"
        # an unrelated runtime that must survive install and uninstall
        daemon_json.write_text(json.dumps({"runtimes": {"other": {"path": es.need("runc", "runc")}},
                                           "log-level": "warn"}, indent=4) + "\n")
        out = flexai("install", "docker", "--config", daemon_json, "--runtime-path", tool("flexai-runtime"))
        assert out.returncode == 0, out.stderr
        dockerd = es.Dockerd(root / "dockerd", daemon_json, containerd).start()
        rootfs = es.make_rootfs(root / "rootfs")
        dockerd.docker("load", "-i", es.image_archive(rootfs, root / "image.tar"))
        yield dockerd, daemon
    finally:
        if dockerd is not None:
            dockerd.stop()
        if containerd is not None:
            containerd.stop()
        es.stop_flexaid(daemon)


def test_sliced_container_sees_its_slice_and_gives_it_back(engine):
    dockerd, daemon = engine
    device = daemon.cards[0]["device"]
    out = dockerd.docker("run", "--rm", "--network", "none", "--runtime=flexai", "-e", "FLEXAI_FRACTION=0.3",
                         es.IMAGE, "sh", "-c", f"test -c {device} && cat /run/flexai/slice.conf && env | grep ^FLEXAI_")
    assert out.returncode == 0, out.stderr
    assert f"memory_limit={16 * GIB * 30 // 100}" in out.stdout
    assert "compute_limit=30" in out.stdout
    assert f"FLEXAI_DEVICE_UUID={daemon.cards[0]['uuid']}" in out.stdout
    assert "FLEXAI_SLICE_FILE=/run/flexai/slice.conf" in out.stdout
    assert daemon.slices() == []


def test_docker_exec_is_limited_too(engine):
    dockerd, daemon = engine
    device = daemon.cards[0]["device"]
    started = dockerd.docker("run", "-d", "--network", "none", "--runtime=flexai", "-e", "FLEXAI_FRACTION=0.25",
                             es.IMAGE, "sleep", "120")
    assert started.returncode == 0, started.stderr
    cid = started.stdout.strip()
    try:
        (slice_,) = daemon.slices()
        assert slice_["container_id"] == cid and slice_["compute"] == 25
        # exec builds its own process, from the image and `docker run` env only: the slice
        # file, the device node (and the preload library) are what reach it
        out = dockerd.docker("exec", cid, "sh", "-c", f"test -c {device} && cat /run/flexai/slice.conf; env")
        assert out.returncode == 0, out.stderr
        assert f"memory_limit={16 * GIB * 25 // 100}" in out.stdout and "compute_limit=25" in out.stdout
        assert "FLEXAI_FRACTION=0.25" in out.stdout
        # the slice file is read-only, also for exec'd processes
        write = dockerd.docker("exec", cid, "sh", "-c", "echo memory_limit=1 >> /run/flexai/slice.conf")
        assert write.returncode != 0
    finally:
        dockerd.docker("rm", "-f", cid)
    assert daemon.slices() == []


def test_a_misspelled_request_runs_unsliced_and_is_said(engine):
    """Issue 17 item 7: docker run -e FLEXAI_FRACTON=0.3 still starts (flexai sets FLEXAI_*
    variables itself, so an unknown one is no error), with the runtime's warning on docker's
    stderr and once in flexaid's log."""
    dockerd, daemon = engine
    out = dockerd.docker("run", "--rm", "--network", "none", "--runtime=flexai", "-e", "FLEXAI_FRACTON=0.3",
                         es.IMAGE, "sh", "-c", "echo STARTED; test -e /run/flexai/slice.conf || echo UNSLICED")
    assert out.returncode == 0 and "STARTED" in out.stdout and "UNSLICED" in out.stdout, out.stderr
    warning = ("flexai: FLEXAI_FRACTON in the container's environment is not a flexai variable and does nothing; "
               "did you mean FLEXAI_FRACTION?")
    assert warning in out.stderr.splitlines()
    assert daemon.log().count("FLEXAI_FRACTON in the container's environment") == 1 and daemon.slices() == []


def test_container_without_request_is_the_same_as_with_plain_runc(engine):
    dockerd, daemon = engine
    reserved_before = daemon.log().count("reserved slice")
    views = {}
    for runtime in ("runc", "flexai"):
        out = dockerd.docker("run", "--rm", "--network", "none", f"--runtime={runtime}", "--hostname", "same",
                             es.IMAGE, "sh", "-c", VIEW)
        assert out.returncode == 0, out.stderr
        views[runtime] = out.stdout
    assert views["flexai"] == views["runc"]
    assert "/run/flexai" not in views["flexai"]
    assert daemon.log().count("reserved slice") == reserved_before


@pytest.mark.parametrize("env, reason", [
    ("FLEXAI_FRACTION=abc", "flexai: invalid FLEXAI_FRACTION='abc'"),
    ("FLEXAI_FRACTION=1.5", "flexai: invalid FLEXAI_FRACTION='1.5'"),
    ("FLEXAI_FRACTION=0", "flexai: invalid FLEXAI_FRACTION='0'"),
    ("FLEXAI_PRIORITY=urgent", "flexai: invalid FLEXAI_PRIORITY='urgent'"),
    ("FLEXAI_MEMORY=17GiB", "can never fit on this host"),
])
def test_bad_request_fails_docker_run_with_flexais_reason(engine, env, reason):
    dockerd, daemon = engine
    out = dockerd.docker("run", "--rm", "--network", "none", "--runtime=flexai", "-e", env, es.IMAGE, "echo", "STARTED")
    assert out.returncode == 125, out
    assert "STARTED" not in out.stdout
    (line,) = [line for line in out.stderr.splitlines() if reason in line]
    assert line.startswith("docker: Error response from daemon:") and "OCI runtime create failed" in line
    assert daemon.slices() == []
    assert dockerd.docker("ps", "-aq").stdout.strip() == ""


def test_uninstall_reload_install_round_trip_on_the_live_daemon(engine, tmp_path):
    dockerd, daemon = engine
    path = dockerd.daemon_json
    installed = path.read_text()
    doctor_args = ["doctor", "--engine", "docker", "--docker-config", path, "--socket", daemon.socket]
    try:
        out = flexai("uninstall", "docker", "--config", path, "--dry-run")
        assert out.returncode == 0 and '-        "flexai": {' in out.stdout and path.read_text() == installed
        out = flexai("uninstall", "docker", "--config", path)
        assert out.returncode == 0, out.stderr
        assert "backup:" in out.stdout and "systemctl reload docker" in out.stdout
        assert json.loads(path.read_text()) == {"runtimes": {"other": {"path": es.need("runc", "runc")}},
                                                "log-level": "warn"}
        dockerd.reload()
        _wait_runtimes(dockerd, lambda r: "flexai" not in r and "other" in r)
        gone = dockerd.docker("run", "--rm", "--network", "none", "--runtime=flexai", es.IMAGE, "true")
        assert gone.returncode != 0 and "unknown runtime specified flexai" in gone.stderr.lower()

        out = flexai("install", "docker", "--config", path, "--runtime-path", tool("flexai-runtime"))
        assert out.returncode == 0 and path.read_text() == installed
        # the file says flexai, the running daemon does not know it yet: doctor says reload
        report = flexai(*doctor_args, env=dockerd.env())
        assert "does not know the flexai runtime yet" in report.stdout and report.returncode == 1
        dockerd.reload()
        _wait_runtimes(dockerd, lambda r: "flexai" in r and "other" in r)
        report = flexai(*doctor_args, env=dockerd.env())
        assert "the running dockerd knows the flexai runtime" in report.stdout, report.stdout
        again = flexai("install", "docker", "--config", path, "--runtime-path", tool("flexai-runtime"))
        assert "already installed" in again.stdout and path.read_text() == installed
    finally:
        path.write_text(installed)
        dockerd.reload()
    out = dockerd.docker("run", "--rm", "--network", "none", "--runtime=flexai", "-e", "FLEXAI_FRACTION=0.5",
                         es.IMAGE, "cat", "/run/flexai/slice.conf")
    assert out.returncode == 0 and "compute_limit=50" in out.stdout, out.stderr


def _wait_runtimes(dockerd, predicate, timeout=20.0):
    import time

    deadline = time.monotonic() + timeout
    runtimes = {}
    while time.monotonic() < deadline:
        info = dockerd.docker("info", "--format", "{{json .Runtimes}}")
        runtimes = json.loads(info.stdout or "{}")
        if predicate(runtimes):
            return runtimes
        time.sleep(0.2)
    raise AssertionError(f"dockerd runtimes after reload: {sorted(runtimes)}")


def test_default_chains_to_the_default_it_replaced_and_uninstall_puts_it_back(engine, tmp_path):
    """`--default` over another default runtime (here a stand-in for nvidia that notes each
    create and runs runc): containers without --runtime are sliced and still go through it;
    uninstall + SIGHUP makes it dockerd's default again and drops flexai from the live daemon."""
    dockerd, daemon = engine
    path = dockerd.daemon_json
    before = path.read_text()
    seen = tmp_path / "seen"
    stand_in = dockerd.root.parent / "vendor-runtime"  # on the module flexaid's runtime list
    stand_in.write_text(f"#!/bin/sh\nfor a; do [ \"$a\" = create ] && echo create >> {seen}; done\n"
                        f"exec {es.need('runc', 'runc')} \"$@\"\n")
    stand_in.chmod(0o755)
    try:
        out = flexai("uninstall", "docker", "--config", path)
        assert out.returncode == 0, out.stderr
        data = json.loads(path.read_text())
        data["runtimes"]["vendor"] = {"path": str(stand_in), "runtimeArgs": []}
        data["default-runtime"] = "vendor"
        original = json.dumps(data, indent=4) + "\n"
        path.write_text(original)
        out = flexai("install", "docker", "--default", "--config", path, "--runtime-path", tool("flexai-runtime"))
        assert out.returncode == 0 and "replaced the default runtime 'vendor'" in out.stdout, out.stdout + out.stderr
        dockerd.reload()
        _wait_runtimes(dockerd, lambda r: "flexai" in r and "vendor" in r)
        info = dockerd.docker("info", "--format", "{{.DefaultRuntime}}")
        assert info.stdout.strip() == "flexai"
        run = dockerd.docker("run", "--rm", "--network", "none", "-e", "FLEXAI_FRACTION=0.5",
                             es.IMAGE, "cat", "/run/flexai/slice.conf")
        assert run.returncode == 0 and "compute_limit=50" in run.stdout, run.stderr
        assert seen.read_text() == "create\n"  # flexai-runtime ran the replaced default, not runc
        assert daemon.slices() == []

        out = flexai("uninstall", "docker", "--config", path)
        assert out.returncode == 0 and path.read_text() == original, out.stderr
        dockerd.reload()
        _wait_runtimes(dockerd, lambda r: "flexai" not in r and "vendor" in r)
        info = dockerd.docker("info", "--format", "{{.DefaultRuntime}}")
        assert info.stdout.strip() == "vendor"

        # flexai the only runtime: the emptied "runtimes": {} drops it from the reloaded daemon
        path.write_text('{"log-level": "warn"}\n')
        assert flexai("install", "docker", "--default", "--config", path,
                      "--runtime-path", tool("flexai-runtime")).returncode == 0
        dockerd.reload()
        _wait_runtimes(dockerd, lambda r: "flexai" in r and "vendor" not in r)
        # docker info runs the default runtime's --version: flexai-runtime's line comes first,
        # so Docker still reads runc's version line and commit (about.py)
        version = subprocess.run([es.need("runc", "runc"), "--version"], capture_output=True, text=True).stdout
        runc_commit = next(line.split(":", 1)[1].strip() for line in version.splitlines() if line.startswith("commit:"))
        assert dockerd.docker("info", "--format", "{{.RuncCommit.ID}}").stdout.strip() == runc_commit
        assert flexai("uninstall", "docker", "--config", path).returncode == 0
        dockerd.reload()
        _wait_runtimes(dockerd, lambda r: "flexai" not in r)
        info = dockerd.docker("info", "--format", "{{.DefaultRuntime}}")
        assert info.stdout.strip() == "runc"
        plain = dockerd.docker("run", "--rm", "--network", "none", es.IMAGE, "true")
        assert plain.returncode == 0, plain.stderr
    finally:
        path.write_text(before)
        dockerd.reload()
        _wait_runtimes(dockerd, lambda r: "flexai" in r)


def test_the_driver_comes_from_the_cdi_spec_alone(engine, client, tmp_path):  # noqa: F811
    """docker run --runtime=flexai with the simulated cards' CDI spec in the format nvidia-ctk
    writes: mounts, device nodes and a createContainer hook reach the container through flexai."""
    dockerd, daemon = engine
    if not cs.host_has_glibc_layout():
        pytest.skip("the client image borrows the host's x86_64 Debian-style glibc")
    from flexai_hook.oci.image import image_archive

    rootfs = cs.client_rootfs(tmp_path / "rootfs", client)
    loaded = dockerd.docker("load", "-i", image_archive(rootfs, tmp_path / "client.tar", cs.CLIENT_IMAGE))
    assert loaded.returncode == 0, loaded.stderr
    host, inside = cs.glibc_mount()

    def run_client(args):
        return dockerd.docker("run", "--rm", "--network", "none", "--runtime=flexai", "-e", "FLEXAI_FRACTION=0.25",
                              "-v", f"{host}:{inside}:ro", cs.CLIENT_IMAGE, "/bin/flexai_client", *args)

    cs.check_engine(run_client, dockerd.root.parent / "runtime.json", daemon, tmp_path)
