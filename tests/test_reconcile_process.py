"""Reconciliation for reservations made on the hooks.d path: the runtime is unknown, so the
container's life is its init process (pid + start time from the OCI state)."""

from __future__ import annotations

import subprocess
import sys

from flexai_hook.daemon import reconcile
from flexai_hook.oci.hookinject import runtime_of
from flexai_hook.reservation import Reservation


def reservation(runtime: dict) -> Reservation:
    return Reservation(container_id="c1", slice_id="s1", card_index=0, card_uuid="GPU-x",
                       card_name="sim", card_memory=1 << 30, memory_bytes=1 << 28, compute=25,
                       priority="normal", device_paths=(), slice_dir="/tmp/none", created=0.0,
                       request={}, runtime=runtime)


def fake_proc(tmp_path, pid: int, comm: str, state: str, start: int):
    d = tmp_path / str(pid)
    d.mkdir(parents=True)
    rest = " ".join(["1"] * 18)  # fields 4..21
    (d / "stat").write_text(f"{pid} ({comm}) {state} {rest} {start} 0 0\n")
    return str(tmp_path)


def test_start_time_is_read_after_a_comm_with_spaces_and_parens(tmp_path):
    proc = fake_proc(tmp_path, 42, "evil ) name (x", "S", 123456)
    assert reconcile.process_start(42, proc) == 123456
    assert reconcile.observe_process(42, 123456, proc) == reconcile.RUNNING


def test_reused_pid_missing_pid_and_zombie_are_gone(tmp_path):
    proc = fake_proc(tmp_path, 42, "sh", "S", 999)
    assert reconcile.observe_process(42, 123, proc) == reconcile.GONE
    assert reconcile.observe_process(43, None, proc) == reconcile.GONE
    zproc = fake_proc(tmp_path / "z", 7, "sh", "Z", 5)
    assert reconcile.observe_process(7, 5, zproc) == reconcile.GONE


def test_hook_reservation_follows_its_init_process():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        runtime = runtime_of({"id": "c1", "pid": child.pid, "bundle": "/x"})
        assert runtime["pid"] == child.pid and runtime["pid_start"] > 0
        assert reconcile.observe(reservation(runtime)) == reconcile.RUNNING
    finally:
        child.kill()
        child.wait()
    assert reconcile.observe(reservation(runtime)) == reconcile.GONE


def test_state_without_a_usable_pid_stays_unknown():
    for state in ({}, {"pid": 0}, {"pid": "12"}, {"pid": True}):
        assert runtime_of(state) == {}
    assert reconcile.observe(reservation({})) == reconcile.UNKNOWN


def test_decide_releases_stopped_at_once_and_gone_after_the_grace():
    held = {cid: reservation({}) for cid in ("stopped", "gone", "running", "unknown")}
    observed = {"stopped": reconcile.STOPPED, "gone": reconcile.GONE, "running": reconcile.RUNNING}
    release, since = reconcile.decide(held, observed, {}, now=100.0, grace=60.0)
    assert release == ["stopped"] and since == {"gone": 100.0}
    release, since = reconcile.decide(held, observed, since, now=161.0, grace=60.0)
    assert release == ["gone", "stopped"] and since == {}
    # a container seen running again restarts its clock
    release, since = reconcile.decide(held, {"gone": reconcile.GONE}, {}, now=0.0, grace=60.0)
    release, since = reconcile.decide(held, {"gone": reconcile.RUNNING}, since, now=30.0, grace=60.0)
    assert release == [] and since == {}
