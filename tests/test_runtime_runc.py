"""flexai-runtime in front of real runc, with a real flexaid: slices in, failures closed."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
import time

import pytest

from conftest import GIB, tool


def runtime(runc, daemon, *args, log=None, timeout=60, env_extra=None):
    cmd = [tool("flexai-runtime"), "--root", str(runc.root)]
    if log is not None:
        cmd += ["--log", str(log), "--log-format", "json"]
    env = {**os.environ, "FLEXAI_SOCKET": daemon.socket, "FLEXAI_RUNTIME": runc.binary,
           "FLEXAI_RUNTIME_CONFIG": "/nonexistent", **(env_extra or {})}
    return run_to_files(cmd + list(args), env=env, timeout=timeout)


def run_to_files(cmd, timeout=60, **kwargs):
    """subprocess.run with output in files: a created container keeps inherited pipes open."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, timeout=timeout, **kwargs)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(cmd, proc.returncode, out.read().decode(), err.read().decode())


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sliced_container_sees_its_card_and_slice_and_releases_it(runc, daemon, make_bundle):
    device = daemon.cards[0]["device"]
    bundle = make_bundle(
        ["sh", "-c", f"test -c {device} && cat /run/flexai/slice.conf && env | grep ^FLEXAI_"],
        env=["FLEXAI_FRACTION=0.3"],
    )
    out = runtime(runc, daemon, "run", "--bundle", str(bundle), "sliced1")
    assert out.returncode == 0, out.stderr
    assert f"memory_limit={16 * GIB * 30 // 100}" in out.stdout
    assert "compute_limit=30" in out.stdout
    assert f"FLEXAI_DEVICE_UUID={daemon.cards[0]['uuid']}" in out.stdout
    assert daemon.slices() == []  # poststop released it
    assert "released slice" in daemon.log()
    spec = json.loads((bundle / "config.json").read_text())
    assert spec["hooks"]["poststop"][0]["path"] == tool("flexai-hook")


def test_reservation_shows_in_status_while_the_container_runs(runc, daemon, make_bundle):
    bundle = make_bundle(["sh", "-c", "sleep 30"], annotations={"flexai.io/fraction": "0.5"})
    out = runtime(runc, daemon, "create", "--bundle", str(bundle), "running1")
    assert out.returncode == 0, out.stderr
    try:
        (slice_,) = daemon.slices()
        assert slice_["container_id"] == "running1" and slice_["compute"] == 50
        status = subprocess.run([tool("flexai"), "status", "--socket", daemon.socket],
                                capture_output=True, text=True, timeout=30)
        assert "running1" in status.stdout and "50%" in status.stdout
        assert runtime(runc, daemon, "start", "running1").returncode == 0
        assert daemon.slices() != []
    finally:
        runtime(runc, daemon, "kill", "running1", "KILL")
        deadline = time.monotonic() + 20
        while runtime(runc, daemon, "delete", "running1").returncode != 0 and time.monotonic() < deadline:
            time.sleep(0.1)
    assert daemon.slices() == []


def test_container_without_request_runs_with_byte_identical_config(runc, daemon, make_bundle):
    bundle = make_bundle(["sh", "-c", "echo plain; ls /run"])
    before = digest(bundle / "config.json")
    out = runtime(runc, daemon, "run", "--bundle", str(bundle), "plain1")
    assert out.returncode == 0, out.stderr
    assert "plain" in out.stdout and "flexai" not in out.stdout
    assert digest(bundle / "config.json") == before
    assert "reserved" not in daemon.log()


def test_bundle_from_the_current_directory(runc, daemon, make_bundle):
    bundle = make_bundle(["sh", "-c", "cat /run/flexai/slice.conf"], env=["FLEXAI_COMPUTE=20"])
    cmd = [tool("flexai-runtime"), "--root", str(runc.root), "run", "cwd1"]
    env = {**os.environ, "FLEXAI_SOCKET": daemon.socket, "FLEXAI_RUNTIME": runc.binary}
    out = subprocess.run(cmd, cwd=bundle, capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert "compute_limit=20" in out.stdout


@pytest.mark.parametrize(
    "env, annotations, reason",
    [
        (["FLEXAI_FRACTION=abc"], None, "invalid FLEXAI_FRACTION='abc'"),
        (["FLEXAI_FRACTION=1.5"], None, "invalid FLEXAI_FRACTION='1.5'"),
        (["FLEXAI_FRACTION=0"], None, "invalid FLEXAI_FRACTION='0'"),
        ([], {"flexai.io/priority": "urgent"}, "invalid annotation flexai.io/priority='urgent'"),
        (["FLEXAI_DEVICE=5", "FLEXAI_FRACTION=0.1"], None, "no card '5'"),
        (["FLEXAI_MEMORY=17GiB"], None, "can never fit on this host"),
    ],
)
def test_bad_requests_fail_closed(runc, daemon, make_bundle, tmp_path, env, annotations, reason):
    bundle = make_bundle(["sh", "-c", "echo STARTED"], env=env, annotations=annotations)
    before = digest(bundle / "config.json")
    log = tmp_path / "runc-log.json"
    out = runtime(runc, daemon, "run", "--bundle", str(bundle), "bad1", log=log)
    assert out.returncode != 0
    assert "STARTED" not in out.stdout
    assert reason in out.stderr and out.stderr.count("\n") == 1
    (entry,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert entry["level"] == "error" and reason in entry["msg"] and entry["time"]
    assert digest(bundle / "config.json") == before
    assert daemon.slices() == []
    assert runc.list_ids() == []


def test_unreachable_daemon_fails_closed_but_bad_values_are_named_first(runc, daemon, make_bundle, tmp_path):
    daemon.stop()
    bundle = make_bundle(["sh", "-c", "echo STARTED"], env=["FLEXAI_FRACTION=0.3"])
    before = digest(bundle / "config.json")
    log = tmp_path / "log.json"
    out = runtime(runc, daemon, "run", "--bundle", str(bundle), "nodaemon", log=log)
    assert out.returncode != 0 and "STARTED" not in out.stdout
    assert "flexaid is not reachable" in out.stderr and "flexaid is not reachable" in log.read_text()
    assert digest(bundle / "config.json") == before

    bad = make_bundle(["sh", "-c", "echo STARTED"], env=["FLEXAI_FRACTION=lots"])
    out = runtime(runc, daemon, "run", "--bundle", str(bad), "nodaemon2")
    assert "invalid FLEXAI_FRACTION='lots'" in out.stderr


def test_real_runtime_failure_releases_the_slice(runc, daemon, make_bundle):
    bundle = make_bundle(["/no/such/program"], env=["FLEXAI_FRACTION=0.2"])
    out = runtime(runc, daemon, "run", "--bundle", str(bundle), "broken1")
    assert out.returncode != 0
    assert daemon.slices() == []


def test_invalid_spec_is_reported_by_runc_and_nothing_stays_reserved(runc, daemon, make_bundle):
    bundle = make_bundle(["sh"], env=["FLEXAI_FRACTION=0.2"])
    spec = json.loads((bundle / "config.json").read_text())
    spec["root"]["path"] = "/does/not/exist"
    (bundle / "config.json").write_text(json.dumps(spec))
    out = runtime(runc, daemon, "create", "--bundle", str(bundle), "noroot1")
    assert out.returncode != 0
    assert daemon.slices() == []


def test_text_log_format_line(runc, daemon, make_bundle, tmp_path):
    bundle = make_bundle(["sh"], env=["FLEXAI_COMPUTE=500"])
    log = tmp_path / "log.txt"
    cmd = [tool("flexai-runtime"), "--root", str(runc.root), "--log", str(log), "create", "-b", str(bundle), "t1"]
    out = run_to_files(cmd, env={**os.environ, "FLEXAI_SOCKET": daemon.socket, "FLEXAI_RUNTIME": runc.binary})
    assert out.returncode == 1
    line = log.read_text().strip()
    assert line.startswith("time=") and "level=error" in line and "FLEXAI_COMPUTE" in line


def test_other_subcommands_pass_through(runc, daemon):
    out = runtime(runc, daemon, "--version")
    assert out.returncode == 0 and "runc version" in out.stdout
    out = runtime(runc, daemon, "list")
    assert out.returncode == 0 and "ID" in out.stdout


def test_config_file_selects_the_real_runtime(runc, daemon, tmp_path):
    conf = tmp_path / "runtime.json"
    conf.write_text(json.dumps({"runtime": runc.binary, "socket": daemon.socket}))
    out = subprocess.run([tool("flexai-runtime"), "--version"], capture_output=True, text=True, timeout=30,
                         env={**os.environ, "FLEXAI_RUNTIME_CONFIG": str(conf)})
    assert "runc version" in out.stdout
    conf.write_text("{not json")
    out = subprocess.run([tool("flexai-runtime"), "--version"], capture_output=True, text=True, timeout=30,
                         env={**os.environ, "FLEXAI_RUNTIME_CONFIG": str(conf)})
    assert out.returncode == 1 and str(conf) in out.stderr


def test_sliced_containers_share_one_card_until_it_is_full(runc, daemon, make_bundle):
    ids = []
    try:
        for i in range(3):
            bundle = make_bundle(["sh", "-c", "sleep 30"], env=["FLEXAI_FRACTION=0.4"])
            out = runtime(runc, daemon, "create", "--bundle", str(bundle), f"share{i}")
            if i < 2:
                assert out.returncode == 0, out.stderr
                ids.append(f"share{i}")
            else:
                assert out.returncode == 1 and "no card can fit" in out.stderr
        assert sorted(s["container_id"] for s in daemon.slices()) == ids
    finally:
        for cid in ids:
            runtime(runc, daemon, "delete", "--force", cid)
    assert daemon.slices() == []


def _crun_or_skip(tmp_path, make_bundle) -> str:
    import shutil

    crun = shutil.which("crun")
    if crun is None:
        pytest.skip("crun is not installed (apt-get install crun)")
    probe = subprocess.run([crun, "--root", str(tmp_path / "crun-probe"), "run", "-b", str(make_bundle(["true"])), "probe"],
                           capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"crun cannot run containers on this host: {probe.stderr.strip()[:200]}")
    return crun


def test_sliced_container_through_crun(daemon, make_bundle, tmp_path):
    crun = _crun_or_skip(tmp_path, make_bundle)
    bundle = make_bundle(["sh", "-c", "cat /run/flexai/slice.conf"], env=["FLEXAI_FRACTION=0.3"])
    cmd = [tool("flexai-runtime"), "--root", str(tmp_path / "crun-root"), "run", "-b", str(bundle), "crun1"]
    out = run_to_files(cmd, env={**os.environ, "FLEXAI_SOCKET": daemon.socket, "FLEXAI_RUNTIME": crun,
                                 "FLEXAI_RUNTIME_CONFIG": "/nonexistent"})
    assert out.returncode == 0, out.stderr
    assert "compute_limit=30" in out.stdout
    assert daemon.slices() == []


# --- issue 17 item 7: refusals once, misspellings said, flexai's own --help/--version ---------

def test_a_refusal_through_the_c_front_door_is_logged_and_counted_once(runc, make_daemon, make_bundle, tmp_path):
    """The front door asks flexaid to prepare, is refused, and hands the refusal to Python with
    the start: before, Python asked flexaid again, which logged (and counted) it twice."""
    import socket as socket_mod
    import urllib.request

    import prom_support

    with socket_mod.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    daemon = make_daemon(metrics={"listen": f"127.0.0.1:{port}"})
    bundle = make_bundle(["sh", "-c", "echo STARTED"], env=["FLEXAI_MEMORY=20GiB"])
    log = tmp_path / "runc-log.json"
    out = runtime(runc, daemon, "run", "--bundle", str(bundle), "huge1", log=log)
    assert out.returncode == 1 and "STARTED" not in out.stdout
    (line,) = out.stderr.splitlines()
    assert line.startswith("flexai: flexaid could not reserve a slice for huge1: the slice asks 20.00 GiB")
    assert "can never fit on this host" in line and "has 16.00 GiB" in line
    assert "can never fit" in json.loads(log.read_text())["msg"]
    assert daemon.log().count("can never fit") == 1
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        families = prom_support.parse(resp.read().decode())
    assert families["flexai_reserve_refusals_total"].value(reason="never_fits") == 1
    assert families["flexai_request_duration_seconds"].value("flexai_request_duration_seconds_count", op="prepare") == 1
    assert families["flexai_request_duration_seconds"].value("flexai_request_duration_seconds_count", op="reserve") == 0


@pytest.mark.parametrize("program", ["flexai-runtime", "flexai-runtime-py"])
def test_a_misspelled_request_is_said_and_the_container_runs(runc, daemon, make_bundle, tmp_path, program):
    bundle = make_bundle(["sh", "-c", "echo STARTED; cat /run/flexai/slice.conf 2>/dev/null || echo UNSLICED"],
                         env=["FLEXAI_FRACTON=0.3"])
    log = tmp_path / "log.json"
    cmd = [tool(program), "--root", str(runc.root), "--log", str(log), "--log-format", "json",
           "run", "--bundle", str(bundle), "typo1"]
    out = run_to_files(cmd, env={**os.environ, "FLEXAI_SOCKET": daemon.socket, "FLEXAI_RUNTIME": runc.binary,
                                 "FLEXAI_RUNTIME_CONFIG": "/nonexistent"})
    assert out.returncode == 0, out.stderr
    assert "STARTED" in out.stdout and "UNSLICED" in out.stdout  # it asked for nothing flexai knows
    (line,) = out.stderr.splitlines()
    assert line == ("flexai: FLEXAI_FRACTON in the container's environment is not a flexai variable and does "
                    "nothing; did you mean FLEXAI_FRACTION?")
    (entry,) = [json.loads(x) for x in log.read_text().splitlines()]
    assert entry["level"] == "warning" and "did you mean FLEXAI_FRACTION?" in entry["msg"]
    assert daemon.slices() == []


def test_a_misspelled_name_beside_a_request_is_said_and_the_slice_is_given(runc, daemon, make_bundle):
    bundle = make_bundle(["sh", "-c", "cat /run/flexai/slice.conf"], env=["FLEXAI_FRACTION=0.3", "FLEXAI_MEMROY=2GiB"])
    out = runtime(runc, daemon, "run", "--bundle", str(bundle), "typo2")
    assert out.returncode == 0, out.stderr
    assert "compute_limit=30" in out.stdout
    assert out.stderr.splitlines() == ["flexai: FLEXAI_MEMROY in the container's environment is not a flexai "
                                       "variable and does nothing; did you mean FLEXAI_MEMORY?"]
    assert daemon.log().count("did you mean FLEXAI_MEMORY?") == 1  # flexaid's prepare, once
    assert daemon.slices() == []


def _docker_reads_version(output: str) -> tuple[str, str, str]:
    """moby's parseRuntimeVersion (daemon/info_unix.go), which `docker info` runs on the default
    runtime's `--version`: the last line containing "version" names the runtime and its version,
    a line starting "commit:" its commit."""
    runtime_name = version = commit = ""
    for line in output.strip().split("\n"):
        if "version" in line:
            parts = line.split("version")
            runtime_name, version = parts[0].strip(), parts[-1].strip()
        elif line.startswith("commit:"):
            commit = line[len("commit:"):].strip()
    return runtime_name, version, commit


@pytest.mark.parametrize("program", ["flexai-runtime", "flexai-runtime-py"])
def test_version_is_flexais_line_then_the_real_runtimes_as_docker_reads_it(runc, program):
    from flexai_hook import __version__

    env = {**os.environ, "FLEXAI_RUNTIME": runc.binary, "FLEXAI_RUNTIME_CONFIG": "/nonexistent"}
    real = subprocess.run([runc.binary, "--version"], capture_output=True, text=True, timeout=30).stdout
    for flag in ("--version", "-v"):
        out = subprocess.run([tool(program), flag], capture_output=True, text=True, timeout=30, env=env)
        assert out.returncode == 0, out.stderr
        first, rest = out.stdout.split("\n", 1)
        assert first.startswith(f"flexai-runtime version {__version__} ") and runc.binary in first
        assert rest == real  # unchanged, and last
        assert _docker_reads_version(out.stdout) == _docker_reads_version(real)
        assert _docker_reads_version(real)[0] == "runc" and _docker_reads_version(real)[2]


@pytest.mark.parametrize("program", ["flexai-runtime", "flexai-runtime-py"])
def test_help_is_flexais_own(runc, program, tmp_path):
    env = {**os.environ, "FLEXAI_RUNTIME": runc.binary, "FLEXAI_RUNTIME_CONFIG": str(tmp_path / "runtime.json")}
    for args in (["--help"], ["-h"], []):
        out = subprocess.run([tool(program), *args], capture_output=True, text=True, timeout=30, env=env)
        assert out.returncode == 0, out.stderr
        text = out.stdout
        assert text.startswith("flexai-runtime ") and "runc or crun" in text
        for env_name, annotation in (("FLEXAI_FRACTION", "flexai.io/fraction"), ("FLEXAI_MEMORY", "flexai.io/memory"),
                                     ("FLEXAI_COMPUTE_MODE", "flexai.io/compute-mode")):
            assert any(env_name in line and annotation in line for line in text.splitlines())
        assert str(tmp_path / "runtime.json") in text and f"Real runtime: {runc.binary}" in text
        assert "Open Container Initiative" not in text  # not runc's help
