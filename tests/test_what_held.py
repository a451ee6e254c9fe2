"""What held when issue 14 tried flexai as a hostile tenant would, kept as regression tests.

The issue's list, and where each item is tested:

- 40 simultaneous 0.3 starts on one card never exceed 90 %: here, through the installed
  flexai-runtime front door and runc.
- kill -9 of flexaid during starts loses and double-books nothing:
  test_daemon_service.py::test_kill_9_during_a_storm_of_50_clients_20_times.
- a full state filesystem gives clear errors and loses no acknowledged slice: here, on a
  small tmpfs mounted as flexaid's state_dir.
- malformed request values are each refused with one line: the request model in
  test_request.py, and here every value once more through flexai-runtime (exit 1, one stderr
  line naming the field, nothing reserved, config.json untouched).
- 8 processes racing a 1 GiB slice never pass it:
  test_libflexai_memory.py::test_eight_processes_racing_never_pass_the_limit.
- /etc/ld.so.preload and slice.conf are read-only inside the container: here, in a container
  whose own root filesystem is writable.

Everything started here is stopped by id (containers) or pid (flexaid), on success and failure.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import GIB, Daemon
from test_runtime_runc import digest, runtime

from flexai_hook import client
from flexai_hook.daemon import ledger as ledger_mod

CARD = 16 * GIB
SHARE = CARD * 30 // 100


def _delete(runc, daemon, cid: str) -> None:
    """Kill and delete one container through flexai-runtime (its poststop hook releases the
    slice); plain runc afterwards in case the front door itself failed."""
    runtime(runc, daemon, "kill", cid, "KILL", timeout=60)
    out = runtime(runc, daemon, "delete", "--force", cid, timeout=60)
    if out.returncode != 0:
        subprocess.run([runc.binary, "--root", str(runc.root), "delete", "--force", cid],
                       capture_output=True, timeout=60)


# --- 40 simultaneous 0.3 starts on one card ------------------------------------------------


def test_40_simultaneous_starts_of_0_3_never_pass_90_percent(runc, daemon, make_bundle):
    count = 40
    ids = [f"held40-{i}" for i in range(count)]
    bundles = {cid: make_bundle(["sh", "-c", "exit 0"], env=["FLEXAI_FRACTION=0.3"]) for cid in ids}
    before = {cid: digest(b / "config.json") for cid, b in bundles.items()}
    results: dict[str, subprocess.CompletedProcess] = {}
    errors: dict[str, BaseException] = {}
    samples: list[tuple[int, int, int]] = []  # (memory reserved, compute reserved, slices)
    gate = threading.Barrier(count + 1)
    done = threading.Event()

    def start(cid: str) -> None:
        try:
            gate.wait(60)
            results[cid] = runtime(runc, daemon, "create", "--bundle", str(bundles[cid]), cid, timeout=300)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors[cid] = exc

    def sample() -> None:
        while not done.is_set():
            try:
                card = daemon.status()["cards"][0]
            except client.DaemonUnavailable:
                time.sleep(0.01)
                continue
            samples.append((card["memory_reserved"], card["compute_reserved"], len(card["slices"])))

    threads = [threading.Thread(target=start, args=(cid,)) for cid in ids]
    sampler = threading.Thread(target=sample)
    try:
        for t in threads:
            t.start()
        sampler.start()
        gate.wait(60)
        for t in threads:
            t.join(600)
        done.set()
        sampler.join(60)
        card = daemon.status()["cards"][0]
        samples.append((card["memory_reserved"], card["compute_reserved"], len(card["slices"])))

        assert not errors, errors
        assert len(samples) > 1  # the card was watched while the starts ran, not only after
        started = sorted(cid for cid, out in results.items() if out.returncode == 0)
        refused = sorted(cid for cid, out in results.items() if out.returncode != 0)
        peak_memory = max(s[0] for s in samples)
        example = results[refused[0]].stderr.strip() if refused else "-"
        print(f"40 starts: {len(started)} started, {len(refused)} refused; peak reserved "
              f"{100 * peak_memory / CARD:.1f} % memory, {max(s[1] for s in samples)} % compute "
              f"over {len(samples)} status samples; a refusal: {example}")
        # the card never held more than three 30 % slices, however the starts interleaved
        assert peak_memory <= CARD * 90 // 100 and peak_memory <= 3 * SHARE
        assert max(s[1] for s in samples) <= 90 and max(s[2] for s in samples) <= 3
        # all 40 held their slice until every start was decided: exactly three fit
        assert len(started) == 3, {cid: results[cid].stderr for cid in refused[:3]}
        for cid in refused:
            out = results[cid]
            assert out.returncode == 1, (cid, out.returncode, out.stderr)
            assert out.stderr.count("\n") == 1 and "no card can fit" in out.stderr, (cid, out.stderr)
            assert digest(bundles[cid] / "config.json") == before[cid]
        # what is reserved is exactly what was created, and runc holds nothing else
        assert sorted(s["container_id"] for s in daemon.slices()) == started
        assert sorted(runc.list_ids()) == started
        assert all(s["memory_bytes"] == SHARE and s["compute"] == 30 for s in daemon.slices())
    finally:
        done.set()
        for cid in runc.list_ids():
            _delete(runc, daemon, cid)
    assert runc.list_ids() == []
    assert daemon.slices() == []
    card = daemon.status()["cards"][0]
    assert card["memory_reserved"] == 0 and card["compute_reserved"] == 0


# --- a full state filesystem -----------------------------------------------------------------


@pytest.fixture
def small_state_fs(tmp_path):
    """A 2 MiB tmpfs to hold flexaid's state_dir; unmounted afterwards (after flexaid stopped,
    when the test asks for it before make_daemon)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs for the state directory needs root")
    mnt = tmp_path / "statefs"
    mnt.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "flexai-test-state", str(mnt)],
                         capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {out.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def fill(path: Path) -> None:
    """Write `path` until the filesystem refuses the next byte."""
    chunk = b"\0" * 4096
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    try:  # the last partial page too
        with open(path, "ab", buffering=0) as f:
            while True:
                f.write(b"\0")
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc


def on_disk(daemon) -> set[str]:
    """The container ids ledger.json + ledger.journal hold, read as a restart would."""
    return set(ledger_mod.LedgerFile(daemon.state_dir / "ledger.json").load().reservations)


def test_a_full_state_filesystem_gives_clear_errors_and_loses_no_acknowledged_slice(small_state_fs, make_daemon):
    daemon = make_daemon(state_dir=str(small_state_fs / "state"))
    acked: set[str] = set()
    for i in range(2):
        assert daemon.call({"op": "reserve", "container_id": f"early{i}", "request": {"fraction": 10}})["ok"]
        acked.add(f"early{i}")
    # a restart folds the journal into ledger.json and leaves an empty journal: with the disk
    # full, the next batch then needs space it cannot get
    daemon.restart()
    assert {s["container_id"] for s in daemon.slices()} == acked
    filler = small_state_fs / "filler"
    fill(filler)

    errors = []
    for i in range(6):
        cid = f"full{i}"
        try:
            reply = daemon.call({"op": "reserve", "container_id": cid, "request": {"fraction": 10}})
        except client.DaemonRefused as exc:
            errors.append(str(exc))
            assert cid not in {s["container_id"] for s in daemon.slices()}
        else:
            assert reply["ok"]
            acked.add(cid)
        # no reservation is acknowledged that is not on disk, and none on disk unacknowledged
        assert on_disk(daemon) == acked
        assert daemon.proc.poll() is None, daemon.log()[-2000:]
    # a release on a full disk is refused the same way and keeps the slice
    try:
        daemon.call({"op": "release", "container_id": "early0"})
    except client.DaemonRefused as exc:
        errors.append(str(exc))
        assert "early0" in {s["container_id"] for s in daemon.slices()}
    else:
        acked.discard("early0")
    assert on_disk(daemon) == acked
    print("full-disk errors:", sorted(set(errors)))
    assert len(errors) == 7, errors
    for message in errors:
        assert "\n" not in message and "Traceback" not in message and len(message) < 300, message
        assert "No space left on device" in message, message
    assert "Traceback" not in daemon.log()
    assert daemon.status()["cards"][0]["memory_reserved"] == len(acked) * (CARD * 10 // 100)

    # space again: reserve and release work
    filler.unlink()
    assert daemon.call({"op": "reserve", "container_id": "after", "request": {"fraction": 10}})["ok"]
    acked.add("after")
    assert daemon.call({"op": "release", "container_id": "early1"})["released"] is True
    acked.discard("early1")
    assert on_disk(daemon) == acked

    # a restart finds every acknowledged slice and nothing else, after SIGTERM and after kill -9
    daemon.restart()
    assert {s["container_id"] for s in daemon.slices()} == acked
    daemon.stop(sig=9)
    daemon.start()
    assert {s["container_id"] for s in daemon.slices()} == acked
    held = {s["slice_id"] for s in daemon.slices()}
    assert set(os.listdir(daemon.slices_dir)) == held


# --- malformed request values through flexai-runtime ----------------------------------------


@pytest.fixture(scope="module")
def shared_daemon(tmp_path_factory):
    """One flexaid on a simulated 16 GiB card for all malformed values (nothing is reserved)."""
    root = tmp_path_factory.mktemp("flexaid-malformed")
    device = f"/dev/flexai-test-{secrets.token_hex(3)}-0"
    cards = [{"name": "sim-0", "uuid": f"GPU-00000000-0000-4000-8000-{secrets.token_hex(6)}",
              "memory": "16GiB", "device": device}]
    config = {"socket": str(root / "flexaid.sock"), "socket_group": "root",
              "state_dir": str(root / "state"), "slices_dir": str(root / "slices"),
              "backend": "simulated", "simulated": {"cards": cards}}
    (root / "flexaid.json").write_text(json.dumps(config))
    daemon = Daemon(config_path=root / "flexaid.json", socket=config["socket"],
                    state_dir=Path(config["state_dir"]), slices_dir=Path(config["slices_dir"]),
                    cards=cards, log_path=root / "flexaid.log")
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()
        try:
            os.unlink(device)
        except FileNotFoundError:
            pass


F, M, C, D, P = "FLEXAI_FRACTION", "FLEXAI_MEMORY", "FLEXAI_COMPUTE", "FLEXAI_DEVICE", "FLEXAI_PRIORITY"
MALFORMED_ENV = (
    [(F, v) for v in ["abc", "1.5", "0", "0.00", "0.333", "-0", "-0.3", "0.3.1", "NaN", "nan", "inf",
                      "-inf", "1e309", "3e-1", "", " ", "٠.٣", "０.３", "0x1", "1_0", "1/3", "0,3", "30%",
                      "None", "1.01", "2", "0.3\n", "0.3GiB", "+0.3", "9" * 10_000]]
    + [(M, v) for v in ["8", "8XB", "0GiB", "-1G", "99999999999TiB", "0", "1.5", "abc", "GiB",
                        "8 GiB GiB", "1e3GiB", "0.005", "NaN", "8GiB\n", ""]]
    + [(C, v) for v in ["0", "101", "30.5", "-5", "abc", "", "1e2", "50%%", "0x10", "100.0"]]
    + [(D, v) for v in ["../../etc", "a b", "/dev/nvidia0", "0;rm -rf /", "", "-1", "GPU-../../x"]]
    + [(P, v) for v in ["urgent", "HIGH", "", "high;", "1", "médium"]]
)
MALFORMED_ANNOTATIONS = [
    ("flexai.io/fraction", "lots"),
    ("flexai.io/fractoin", "0.3"),  # an unknown key in flexai's namespace
    ("flexai.io/memory", "8"),
    ("flexai.io/compute", "0"),
    ("flexai.io/compute", "200"),
    ("flexai.io/priority", "urgent"),
    ("flexai.io/device", "../x"),
]
CASES = [pytest.param([f"{k}={v}"] + ([f"{F}=0.1"] if k in (D, P) else []), None, k,
                      id=f"{k}={v[:12]!r}") for k, v in MALFORMED_ENV]
CASES += [pytest.param([], {k: v}, f"annotation {k}", id=f"{k}={v!r}") for k, v in MALFORMED_ANNOTATIONS]


@pytest.mark.parametrize("env, annotations, field", CASES)
def test_each_malformed_value_is_refused_with_one_line_by_the_runtime(
        runc, shared_daemon, make_bundle, tmp_path, env, annotations, field):
    bundle = make_bundle(["sh", "-c", "echo STARTED"], env=env, annotations=annotations)
    before = digest(bundle / "config.json")
    log = tmp_path / "runc-log.json"
    out = runtime(runc, shared_daemon, "create", "--bundle", str(bundle), "malformed1", log=log)
    assert out.returncode == 1, out.stderr
    (line,) = out.stderr.splitlines()
    assert out.stderr.endswith("\n"), out.stderr
    assert f"invalid {field}=" in line and "expected " in line and len(line) < 400, line
    (entry,) = [json.loads(raw) for raw in log.read_text().splitlines()]
    assert entry["level"] == "error" and f"invalid {field}=" in entry["msg"]
    assert digest(bundle / "config.json") == before
    assert runc.list_ids() == []
    assert shared_daemon.slices() == []


def test_the_malformed_values_are_many_and_distinct():
    values = {(k, v) for k, v in MALFORMED_ENV} | set(MALFORMED_ANNOTATIONS)
    assert len(values) == len(MALFORMED_ENV) + len(MALFORMED_ANNOTATIONS) >= 59


# --- what the tenant cannot rewrite ----------------------------------------------------------


def test_ld_so_preload_and_slice_conf_are_read_only_in_a_writable_container(runc, daemon, make_bundle):
    script = ("cp /etc/ld.so.preload /tmp/p; cp /run/flexai/slice.conf /tmp/s; "
              "echo > /etc/ld.so.preload; echo preload=$?; "
              "echo memory_limit=1 >> /run/flexai/slice.conf; echo conf=$?; "
              "rm -f /etc/ld.so.preload; rm -f /run/flexai/slice.conf; "
              "cmp /etc/ld.so.preload /tmp/p && cmp /run/flexai/slice.conf /tmp/s && echo SAME; "
              "touch /etc/writable && echo ROOTFS-WRITABLE")
    bundle = make_bundle(["sh", "-c", script], env=["FLEXAI_FRACTION=0.2"])
    spec = json.loads((bundle / "config.json").read_text())
    spec["root"]["readonly"] = False  # the container's own files are writable: the slice's are not
    spec["mounts"].append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m"]})
    (bundle / "config.json").write_text(json.dumps(spec))
    try:
        out = runtime(runc, daemon, "run", "--bundle", str(bundle), "readonly1")
        assert out.returncode == 0, out.stderr
        assert "ROOTFS-WRITABLE" in out.stdout, out.stdout + out.stderr
        assert "preload=1" in out.stdout and "conf=1" in out.stdout, out.stdout
        assert out.stderr.count("Read-only file system") >= 2, out.stderr
        assert "SAME" in out.stdout, out.stdout + out.stderr
    finally:
        for cid in runc.list_ids():
            _delete(runc, daemon, cid)
    assert daemon.slices() == []
