"""flexaid as a system service: systemd units, notify/watchdog, journal fields, peer checks,
crash safety under kill -9, reconciliation against real runc, `flexai recover`, metrics."""

from __future__ import annotations

import grp
import json
import multiprocessing
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

import prom_support
from flexai_hook import client
from conftest import GIB, tool

REPO = Path(__file__).resolve().parent.parent


def test_units_pass_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    for unit in ("flexaid.service", "flexaid.socket"):
        shutil.copy(REPO / "packaging" / "systemd" / unit, tmp_path / unit)
    # verify checks that ExecStart exists; point it at this environment's flexaid
    service = tmp_path / "flexaid.service"
    service.write_text(service.read_text().replace("/usr/local/bin/flexaid", tool("flexaid")))
    out = subprocess.run([analyze, "verify", "--man=no", str(tmp_path / "flexaid.socket"), str(service)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    text = service.read_text()
    for line in ("Type=notify", "Restart=on-failure", "RuntimeDirectory=flexai", "StateDirectory=flexai",
                 "WatchdogSec=", "CapabilityBoundingSet="):
        assert line in text
    assert "SocketMode=0660" in (tmp_path / "flexaid.socket").read_text()


def _notify_socket(tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(20)
    return sock, path


def test_sd_notify_ready_status_and_watchdog(make_daemon, tmp_path):
    sock, path = _notify_socket(tmp_path)
    daemon = make_daemon(start=False)
    daemon.extra_env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"}
    daemon.start(wait=False)
    try:
        first = sock.recv(4096).decode()
        assert "READY=1" in first and "STATUS=0 slice(s) on 1 simulated card(s)" in first
        daemon.wait_ready()
        daemon.call({"op": "reserve", "container_id": "c1", "request": {"fraction": 10}})
        pings = 0
        deadline = time.monotonic() + 10
        while pings < 3 and time.monotonic() < deadline:
            if "WATCHDOG=1" in sock.recv(4096).decode():
                pings += 1
        assert pings == 3
    finally:
        daemon.stop()
        sock.close()


def test_journal_gets_structured_fields(make_daemon, tmp_path):
    journal_dir = Path("/run/systemd/journal")
    journal_socket = journal_dir / "socket"
    if journal_socket.exists():
        pytest.skip("a real journald owns /run/systemd/journal/socket on this host")
    made_dir = not journal_dir.exists()
    journal_dir.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(journal_socket))
    sock.settimeout(10)
    daemon = make_daemon(start=False)
    log_file = open(daemon.log_path, "ab")
    st = os.fstat(log_file.fileno())
    try:
        daemon.proc = subprocess.Popen(
            [tool("flexaid"), "--config", str(daemon.config_path)], stdout=log_file, stderr=log_file,
            env={**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"},
        )
        daemon.wait_ready()
        slice_id = daemon.call({"op": "reserve", "container_id": "web-7", "request": {"fraction": 10}})["reservation"]["slice_id"]
        entries = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(b"MESSAGE=reserved" in e for e in entries):
            entries.append(sock.recv(65536))
        entry = next(e for e in entries if b"MESSAGE=reserved" in e)
        fields = dict(line.split(b"=", 1) for line in entry.split(b"\n") if b"=" in line)
        assert fields[b"CONTAINER_ID"] == b"web-7"
        assert fields[b"SLICE_ID"] == slice_id.encode()
        assert fields[b"CARD_UUID"] == daemon.cards[0]["uuid"].encode()
        assert fields[b"SYSLOG_IDENTIFIER"] == b"flexaid"
        assert fields[b"MESSAGE"].startswith(b"reserved slice ")  # the journal keeps the time itself
    finally:
        daemon.stop()
        log_file.close()
        sock.close()
        journal_socket.unlink()
        if made_dir:
            journal_dir.rmdir()


def test_stderr_logs_carry_the_same_fields(daemon):
    daemon.call({"op": "reserve", "container_id": "web-8", "request": {"fraction": 10}})
    assert "container_id=web-8" in daemon.log() and "card_uuid=" in daemon.log()


# local time, milliseconds, UTC offset: 2025-01-31T09:15:02.042+01:00
STAMPED = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d flexaid: (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


def test_every_log_line_outside_the_journal_starts_with_its_time(daemon):
    """Issue 17 item 7 (the journal stamps its entries itself: test_journal_gets_structured_fields
    checks its MESSAGE carries none)."""
    daemon.call({"op": "reserve", "container_id": "web-9", "request": {"fraction": 10}})
    with pytest.raises(client.DaemonRefused):
        daemon.call({"op": "reserve", "container_id": "huge", "request": {"memory_bytes": 64 * GIB}})
    lines = daemon.log().splitlines()
    assert len(lines) >= 4 and [line for line in lines if not STAMPED.match(line)] == []
    # a refusal is one line
    assert len([line for line in lines if "huge" in line]) == 1


def test_a_log_file_is_rotated_by_size_and_keeps_the_configured_backups(make_daemon, tmp_path):
    log = tmp_path / "logs" / "flexaid.log"  # its folder is made
    daemon = make_daemon(log={"file": str(log), "max_bytes": 2048, "backups": 2})
    for i in range(40):  # ~300 bytes of log each
        with pytest.raises(client.DaemonRefused):
            daemon.call({"op": "reserve", "container_id": f"big-{i:02d}", "request": {"memory_bytes": 64 * GIB}})
    files = sorted(p.name for p in log.parent.iterdir())
    assert files == ["flexaid.log", "flexaid.log.1", "flexaid.log.2"]
    kept = [line for name in reversed(files) for line in (log.parent / name).read_text().splitlines()]
    assert all(STAMPED.match(line) for line in kept)
    assert all((log.parent / name).stat().st_size <= 2048 for name in files)
    refused = [line.split("refused ", 1)[1].split(" ", 1)[0] for line in kept if "refused big-" in line]
    assert refused == [f"big-{i:02d}" for i in range(40 - len(refused), 40)]  # in order, each once
    assert "big-39" in log.read_text() and "ready on" not in daemon.log()  # the file, not stderr


def test_a_log_file_that_cannot_be_opened_stops_flexaid_with_one_line(make_daemon, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    daemon = make_daemon(start=False, log={"file": str(blocker / "flexaid.log")})
    daemon.start(wait=False)
    assert daemon.proc.wait(30) == 1
    (line,) = daemon.log().splitlines()
    assert line.startswith("flexaid: cannot open the log file") and "log.file" in line


def _connect_as(path: str, uid: int, gid: int, groups: list[int], out) -> None:
    os.setgroups(groups)
    os.setgid(gid)
    os.setuid(uid)
    try:
        out.put(client.call({"op": "status"}, path, timeout=5)["ok"])
    except client.DaemonRefused as exc:
        out.put(str(exc))
    except client.DaemonUnavailable as exc:
        out.put(f"unavailable: {exc}")


def test_socket_refuses_peers_outside_root_and_its_group(make_daemon):
    try:
        gid = grp.getgrnam("flexai").gr_gid
    except KeyError:
        pytest.skip("no flexai group (packaging/install.sh creates it)")
    public = Path(tempfile.mkdtemp(prefix="flexai-peer-"))  # pytest's tmp dirs are 0700
    public.chmod(0o755)
    try:
        _check_peers(make_daemon(socket_group="flexai", socket=str(public / "s.sock")), gid)
    finally:
        shutil.rmtree(public, ignore_errors=True)


def _check_peers(daemon, gid):
    assert os.stat(daemon.socket).st_gid == gid
    os.chmod(daemon.socket, 0o666)  # let the kernel pass everyone, so SO_PEERCRED is what decides
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    for args in ((65534, 65534, []), (65534, 65534, [gid]), (65534, gid, [])):
        p = ctx.Process(target=_connect_as, args=(daemon.socket, *args, results))
        p.start()
        p.join(20)
    outcomes = [results.get(timeout=5) for _ in range(3)]
    assert "permission denied" in outcomes[0] and "uid 65534" in outcomes[0]
    assert outcomes[1] is True and outcomes[2] is True
    assert daemon.status()  # root still served


# --- crash safety -------------------------------------------------------------------------

def _storm_client(args):
    path, worker, rounds, seed = args
    rng = random.Random(seed)
    log = []
    for k in range(rounds):
        cid = f"w{worker}-{rng.randrange(3)}"
        op = rng.choice(("reserve", "release"))
        message = {"op": op, "container_id": cid}
        if op == "reserve":
            message["request"] = {"fraction": rng.choice((5, 10, 20, 40))}
        try:
            reply = client.call(message, path, timeout=5)
            log.append((cid, op, "ack", reply.get("reservation", {}).get("slice_id")))
        except client.DaemonRefused:
            log.append((cid, op, "refused", None))  # e.g. card full: no change
        except client.DaemonUnavailable:
            log.append((cid, op, "lost", None))  # in flight when the daemon died: either outcome
            break
    return log


def _expected_states(logs):
    """container id -> True (must hold), False (must not), None (either: an op was in flight).

    Each container id belongs to one client, so its operations are ordered. Every run starts
    from an empty ledger; a refused reserve (card full) changes nothing.
    """
    expected: dict[str, bool | None] = {}
    for log in logs:
        for cid, op, outcome, _ in log:
            expected.setdefault(cid, False)
            if outcome == "ack":
                expected[cid] = op == "reserve"
            elif outcome == "lost":
                expected[cid] = None
    return expected


def test_kill_9_during_a_storm_of_50_clients_20_times(make_daemon):
    daemon = make_daemon(memories=("16GiB", "16GiB"))
    rng = random.Random(1234)
    ctx = multiprocessing.get_context("fork")
    for run in range(20):
        with ctx.Pool(50) as pool:
            pending = pool.map_async(_storm_client, [(daemon.socket, w, 40, rng.random()) for w in range(50)])
            time.sleep(rng.uniform(0.02, 0.4))
            daemon.stop(sig=signal.SIGKILL)
            logs = pending.get(60)
        daemon.start()
        held = {s["container_id"]: s for s in daemon.slices()}
        for cid, must_hold in _expected_states(logs).items():
            if must_hold is True:
                assert cid in held, f"run {run}: acknowledged reservation of {cid} lost"
            elif must_hold is False:
                assert cid not in held, f"run {run}: acknowledged release of {cid} undone"
        for card in daemon.status()["cards"]:
            assert card["memory_reserved"] <= card["memory"] and card["compute_reserved"] <= 100
        on_disk = {p.name for p in daemon.slices_dir.iterdir()}
        assert on_disk == {s["slice_id"] for s in held.values()}, f"run {run}: slice dirs differ from ledger"
        for cid in held:  # start the next run from a clean ledger
            daemon.call({"op": "release", "container_id": cid})


# --- reconciliation and recovery with real runc ------------------------------------------

def _runtime(runc, daemon, *args):
    env = {**os.environ, "FLEXAI_SOCKET": daemon.socket, "FLEXAI_RUNTIME": runc.binary,
           "FLEXAI_RUNTIME_CONFIG": "/nonexistent"}
    with tempfile.TemporaryFile() as out:
        proc = subprocess.run([tool("flexai-runtime"), "--root", str(runc.root), *args], stdin=subprocess.DEVNULL,
                              stdout=out, stderr=out, env=env, timeout=60)
        out.seek(0)
        return proc.returncode, out.read().decode()


def test_reconciliation_releases_vanished_containers_only(runc, make_daemon, make_bundle):
    daemon = make_daemon(reconcile={"interval": 0.3, "grace": 1.0})
    for cid in ("alive", "vanishing"):
        rc, out = _runtime(runc, daemon, "create", "--bundle", str(make_bundle(["sleep", "60"], env=["FLEXAI_FRACTION=0.2"])), cid)
        assert rc == 0, out
    state = json.loads(subprocess.run([runc.binary, "--root", str(runc.root), "state", "vanishing"],
                                      capture_output=True, text=True).stdout)
    # The runtime dies with its container, as on a host crash: no delete, no poststop hook.
    os.kill(state["pid"], signal.SIGKILL)
    time.sleep(0.2)
    shutil.rmtree(runc.root / "vanishing")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and "vanishing" in {s["container_id"] for s in daemon.slices()}:
        time.sleep(0.2)
    held = {s["container_id"] for s in daemon.slices()}
    assert held == {"alive"}
    assert "reconciled: container gone" in daemon.log()
    time.sleep(2.0)  # several more rounds: the running one is never released
    assert {s["container_id"] for s in daemon.slices()} == {"alive"}


def test_a_stopped_container_whose_release_never_came_is_released_at_the_next_pass(runc, make_daemon, make_bundle):
    """The poststop release is retried by flexaid: a container the runtime reports stopped is
    released at the first reconcile pass that sees it, without the grace (a long one here)."""
    daemon = make_daemon(reconcile={"interval": 0.3, "grace": 3600})
    rc, out = _runtime(runc, daemon, "create", "--bundle", str(make_bundle(["true"], env=["FLEXAI_FRACTION=0.2"])), "quick")
    assert rc == 0, out
    # started with runc itself and never deleted: no poststop hook runs, the container stops
    assert subprocess.run([runc.binary, "--root", str(runc.root), "start", "quick"]).returncode == 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and daemon.slices():
        time.sleep(0.2)
    assert daemon.slices() == []
    assert "reconciled: container gone" in daemon.log()
    subprocess.run([runc.binary, "--root", str(runc.root), "delete", "quick"], capture_output=True)


def test_recover_rebuilds_a_corrupt_ledger_from_live_containers(runc, make_daemon, make_bundle):
    daemon = make_daemon(reconcile={"interval": 0, "runtime_roots": []})
    slices = {}
    for cid, frac in (("r1", "0.25"), ("r2", "0.5")):
        rc, out = _runtime(runc, daemon, "create", "--bundle",
                           str(make_bundle(["sleep", "60"], env=[f"FLEXAI_FRACTION={frac}", "FLEXAI_PRIORITY=high"])), cid)
        assert rc == 0, out
    slices = {s["container_id"]: s for s in daemon.slices()}
    daemon.stop(sig=signal.SIGKILL)
    ledger = daemon.state_dir / "ledger.json"
    ledger.write_bytes(ledger.read_bytes()[: len(ledger.read_bytes()) // 2])  # truncated on disk

    refused = subprocess.run([tool("flexaid"), "--config", str(daemon.config_path)], capture_output=True, text=True, timeout=30)
    assert refused.returncode == 1 and str(ledger) in refused.stderr and "flexai recover" in refused.stderr

    out = subprocess.run([tool("flexai"), "recover", "--config", str(daemon.config_path), "--runtime", runc.binary,
                          "--root", str(runc.root)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "2 with a flexai slice" in out.stdout
    assert list(daemon.state_dir.glob("ledger.json.corrupt-*"))
    daemon.start()
    rebuilt = {s["container_id"]: s for s in daemon.slices()}
    assert set(rebuilt) == {"r1", "r2"}
    for cid in rebuilt:
        for key in ("slice_id", "card_uuid", "memory_bytes", "compute"):
            assert rebuilt[cid][key] == slices[cid][key]
        assert rebuilt[cid]["priority"] == "high"
        assert (daemon.slices_dir / rebuilt[cid]["slice_id"] / "slice.conf").exists()
    for cid in ("r1", "r2"):
        assert _runtime(runc, daemon, "delete", "--force", cid)[0] == 0
    assert daemon.slices() == []  # their poststop hooks release the rebuilt slices


def test_recover_refuses_while_the_daemon_runs(daemon):
    out = subprocess.run([tool("flexai"), "recover", "--config", str(daemon.config_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "stop it before" in out.stderr


# --- hostile clients --------------------------------------------------------------------------

def test_a_100_mb_line_and_500_idle_connections_block_nobody(daemon):
    idle = []
    try:
        for _ in range(500):
            s = socket.socket(socket.AF_UNIX)
            s.connect(daemon.socket)
            idle.append(s)
        flood = socket.socket(socket.AF_UNIX)
        flood.connect(daemon.socket)
        flood.settimeout(30)
        chunk = b"x" * (1 << 20)
        sent = 0
        try:
            while sent < 100 * len(chunk):
                flood.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        # others are served during and after the flood
        assert daemon.call({"op": "reserve", "container_id": "ok", "request": {"fraction": 10}})["ok"]
        reply = flood.makefile("rb").readline()
        assert b"longer than" in reply
        flood.close()
        random_bytes = socket.socket(socket.AF_UNIX)
        random_bytes.connect(daemon.socket)
        random_bytes.sendall(os.urandom(4096) + b"\n")
        random_bytes.close()
        assert daemon.proc.poll() is None
        assert [s["container_id"] for s in daemon.slices()] == ["ok"]
    finally:
        for s in idle:
            s.close()


# --- metrics and status ------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return resp.read().decode()


def test_prometheus_endpoint(make_daemon):
    port = _free_port()
    daemon = make_daemon(memories=("16GiB", "8GiB"), metrics={"listen": f"127.0.0.1:{port}"})
    slice_id = daemon.call({"op": "reserve", "container_id": "web-1", "request": {"fraction": 25}})["reservation"]["slice_id"]
    body = _scrape(port)
    prom_support.parse(body)
    uuid0 = daemon.cards[0]["uuid"]
    assert f'flexai_card_memory_total_bytes{{gpu="0",UUID="{uuid0}",modelName="sim-0"}} {16 * GIB}' in body
    assert f'flexai_card_memory_reserved_bytes{{gpu="0",UUID="{uuid0}",modelName="sim-0"}} {4 * GIB}' in body
    assert (f'flexai_slice_compute_limit_ratio{{gpu="0",UUID="{uuid0}",modelName="sim-0",'
            f'container="web-1",slice="{slice_id}"}} 0.25') in body
    assert "# TYPE flexai_card_compute_reserved_ratio gauge" in body
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=10)
    assert info.value.code == 404


def test_metrics_count_refusals_by_reason_and_time_requests_by_op(make_daemon):
    """Issue 17 item 7: ratios instead of percentages, pod/namespace labels, refusals by reason
    and request latency, scraped after real requests and checked as Prometheus would read them."""
    port = _free_port()
    daemon = make_daemon(memories=("16GiB", "8GiB"), metrics={"listen": f"127.0.0.1:{port}"})
    before = prom_support.parse(_scrape(port))
    assert {r: before["flexai_reserve_refusals_total"].value(reason=r) for r in ("never_fits", "no_room")} == \
        {"never_fits": 0, "no_room": 0}  # every reason exists from the start, at 0
    web = daemon.call({"op": "reserve", "container_id": "web-1", "request": {"fraction": 25},
                       "pod": {"name": "web-0", "namespace": "ml"}})["reservation"]
    daemon.call({"op": "reserve", "container_id": "whole", "request": {"fraction": 100}})  # the other card
    refused = [
        ("huge", {"memory_bytes": 20 * GIB}, "never_fits"),
        ("late", {"fraction": 100}, "no_room"),
        ("pinned", {"fraction": 10, "device": "7"}, "no_such_card"),
        ("bad", {"fraction": 500}, "invalid_request"),
        ("late", {"fraction": 90}, "no_room"),
    ]
    for cid, request, _ in refused:
        with pytest.raises(client.DaemonRefused):
            daemon.call({"op": "reserve", "container_id": cid, "request": request})
    daemon.call({"op": "release", "container_id": "whole"})
    daemon.call({"op": "status"})

    families = prom_support.parse(_scrape(port))
    assert not [name for name in families if "percent" in name]
    refusals = families["flexai_reserve_refusals_total"]
    assert refusals.kind == "counter"
    counted = {labels["reason"]: value for _, labels, value in refusals.samples if value}
    assert counted == {"never_fits": 1, "no_room": 2, "no_such_card": 1, "invalid_request": 1}
    assert "not_saved" in {labels["reason"] for _, labels, _ in refusals.samples}
    latency = families["flexai_request_duration_seconds"]
    assert latency.kind == "histogram"
    count = "flexai_request_duration_seconds_count"
    assert latency.value(count, op="reserve") == 2 + len(refused)
    assert latency.value(count, op="release") == 1 and latency.value(count, op="status") >= 2
    assert latency.value("flexai_request_duration_seconds_sum", op="reserve") > 0
    ratio = families["flexai_slice_compute_limit_ratio"]
    assert ratio.value(container="web-1", pod="web-0", namespace="ml", slice=web["slice_id"]) == 0.25
    card = str(web["card_index"])
    assert families["flexai_card_compute_reserved_ratio"].value(gpu=card) == 0.25


def test_metrics_are_off_unless_configured(daemon):
    assert "Prometheus" not in daemon.log()


def test_status_watch_redraws_in_place(daemon):
    import pty

    cmd = [tool("flexai"), "status", "--watch", "--interval", "0.1", "--count", "3", "--socket", daemon.socket]
    piped = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert piped.returncode == 0 and piped.stdout.count("CARD") == 3
    assert "\x1b[" not in piped.stdout  # no escape codes into a pipe
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(cmd, stdout=terminal, stderr=terminal)
    os.close(terminal)
    seen = b""
    try:
        while True:
            try:
                data = os.read(controller, 65536)
            except OSError:  # EIO once the program exits and the terminal closes
                break
            if not data:
                break
            seen += data
    finally:
        assert proc.wait(30) == 0
        os.close(controller)
    assert seen.count(b"\x1b[H\x1b[2J") == 3 and seen.count(b"CARD") == 3
