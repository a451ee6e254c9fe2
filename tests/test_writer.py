"""flexaid's batches on their way to disk: the pure answer rule, the writer's plan execution
(in-process and as the helper process), and the daemon's pipeline around it."""

from __future__ import annotations

import json
import os
import signal
import socket
import time

import pytest

from flexai_hook import client
from flexai_hook.daemon import ledger as ledger_mod
from flexai_hook.daemon import writer
from flexai_hook.daemon.batch import Persisted, answer


RESERVED = {"ok": True, "reservation": {"container_id": "c1"}}


def test_answers_of_a_batch_that_did_not_reach_the_disk_are_errors():
    assert answer(RESERVED, "c1", None) is RESERVED  # nothing needed writing
    assert answer(RESERVED, "c1", Persisted(None)) is RESERVED
    assert answer(RESERVED, "c1", Persisted("disk full")) == {"ok": False, "error": "disk full"}
    assert answer(RESERVED, "c1", Persisted(None, {"c1": "no space"})) == {"ok": False, "error": "no space"}
    assert answer(RESERVED, "c2", Persisted(None, {"c1": "no space"})) is RESERVED
    for reply in ({"ok": True, "released": True}, {"ok": True, "spec": {}}):
        assert answer(reply, "c1", Persisted("x"))["ok"] is False
    # answers that acknowledge no change go out whatever happened to the batch
    status = {"ok": True, "status": {}}
    refusal = {"ok": False, "error": "no card can fit the slice"}
    assert answer(status, None, Persisted("x")) is status
    assert answer(refusal, "c1", Persisted("x")) is refusal


def _plan(tmp_path, slices, lines=(("c1", '{"container_id": "c1"}'),), removes=()):
    """A checkpoint plan (the whole ledger to ledger.json)."""
    return writer.Plan(slices=list(slices), ledger_path=str(tmp_path / "state" / "ledger.json"),
                       journal_path=str(tmp_path / "state" / "ledger.journal"), batch=1,
                       ledger_lines=list(lines), removes=list(removes))


def _slot(tmp_path, cid, slice_dir=None):
    """A plan's entry for a reservation whose slice lives at `slice_dir`."""
    from flexai_hook.reservation import Reservation

    r = Reservation(container_id=cid, slice_id=f"s-{cid}", card_index=0, card_uuid="GPU-0", card_name="sim",
                    card_memory=1 << 34, memory_bytes=1 << 30, compute=10, priority="normal",
                    device_paths=("/dev/sim0",), slice_dir=str(slice_dir or tmp_path / f"s-{cid}"),
                    backend="simulated")
    return writer.plan_entry(r)


def test_execute_writes_slices_then_the_ledger_then_removes(tmp_path):
    (tmp_path / "state").mkdir()
    old = tmp_path / "old"
    old.mkdir()
    (old / "slice.conf").write_text("x")
    (old / "stray").write_text("left by someone else")  # rmtree fallback
    from flexai_hook.devices import region as region_mod

    plan = _plan(tmp_path, [_slot(tmp_path, "c1")], removes=[str(old)])
    assert writer.execute(plan) == writer.Outcome()
    assert "slice_id=s-c1\n" in (tmp_path / "s-c1" / "slice.conf").read_text()
    region = tmp_path / "s-c1" / "region"
    assert region.stat().st_size == region_mod.region_size()
    view = region_mod.read_region(region)
    assert (view.slice_id, view.memory_limit, view.compute_limit) == ("s-c1", 1 << 30, 10)
    assert oct(region.stat().st_mode & 0o777) == oct(0o666)  # the umask does not narrow it
    assert not old.exists()
    saved = json.loads((tmp_path / "state" / "ledger.json").read_text())
    assert saved == {"version": ledger_mod.LEDGER_VERSION, "reservations": [{"container_id": "c1"}]}


def test_a_slice_that_cannot_be_written_is_left_out_of_the_ledger(tmp_path):
    (tmp_path / "state").mkdir()
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the slices directory should be")
    plan = _plan(tmp_path, [_slot(tmp_path, "c1"), _slot(tmp_path, "c2", blocked / "s2")],
                 lines=[("c1", '{"container_id": "c1"}'), ("c2", '{"container_id": "c2"}')])
    outcome = writer.execute(plan)
    assert outcome.error is None and list(outcome.failed) == ["c2"] and "Not a directory" in outcome.failed["c2"]
    saved = json.loads((tmp_path / "state" / "ledger.json").read_text())
    assert [r["container_id"] for r in saved["reservations"]] == ["c1"]
    assert (tmp_path / "s-c1" / "slice.conf").exists()


def test_the_writer_makes_the_files_slice_files_names(tmp_path, monkeypatch):
    """A plan carries a slice's conf text and limits; the writer packs the images from them:
    the same files as writer.slice_files (tests/test_libflexai_* use those)."""
    from flexai_hook.devices import region as region_mod

    monkeypatch.setattr(time, "time_ns", lambda: 1234567890123)  # the region's created_ns
    (tmp_path / "state").mkdir()
    cid, directory, conf, limits = entry = _slot(tmp_path, "c1")
    from flexai_hook.reservation import Reservation

    assert writer.execute(_plan(tmp_path, [entry])) == writer.Outcome()
    r = Reservation(container_id=cid, slice_id="s-c1", card_index=0, card_uuid="GPU-0", card_name="sim",
                    card_memory=1 << 34, memory_bytes=1 << 30, compute=10, priority="normal",
                    device_paths=("/dev/sim0",), slice_dir=directory, backend="simulated")
    for name, content, mode, size in writer.slice_files(r):
        path = tmp_path / "s-c1" / name
        assert path.read_bytes() == content + bytes(max(0, size - len(content))), name
        assert path.stat().st_mode & 0o777 == mode
    assert limits == writer.region_limits(r) and conf == r.slice_conf()
    assert region_mod.read_region(tmp_path / "s-c1" / "region").compute_limit == 10


def test_a_slice_whose_limits_cannot_be_packed_is_refused_alone(tmp_path):
    (tmp_path / "state").mkdir()
    good, bad = _slot(tmp_path, "c1"), _slot(tmp_path, "c2")
    bad[3]["device_index"] = 1 << 40  # more than the header's field holds
    plan = _plan(tmp_path, [good, bad], lines=[("c1", '{"container_id": "c1"}'), ("c2", '{"container_id": "c2"}')])
    outcome = writer.execute(plan)
    assert outcome.error is None and list(outcome.failed) == ["c2"]
    assert "limits cannot be written" in outcome.failed["c2"]
    assert (tmp_path / "s-c1" / "region").exists() and not (tmp_path / "s-c2").exists()
    saved = json.loads((tmp_path / "state" / "ledger.json").read_text())
    assert [r["container_id"] for r in saved["reservations"]] == ["c1"]


def test_a_failed_ledger_write_removes_the_slices_it_wrote_and_keeps_released_ones(tmp_path):
    kept = tmp_path / "released"
    kept.mkdir()
    plan = _plan(tmp_path, [_slot(tmp_path, "c1")], removes=[str(kept)])  # no state dir
    outcome = writer.execute(plan)
    assert outcome.error and "No such file" in outcome.error
    assert not (tmp_path / "s-c1").exists()
    assert kept.exists()  # its release was not written either


def test_the_writer_process_round_trip_and_its_end(tmp_path):
    (tmp_path / "state").mkdir()
    w = writer.Writer()
    try:
        w.send(_plan(tmp_path, [_slot(tmp_path, "c1")]))
        assert w.receive() == writer.Outcome()
        assert oct((tmp_path / "s-c1" / "region").stat().st_mode & 0o777) == oct(0o666)
        w.send(_plan(tmp_path, [_slot(tmp_path, "c2", tmp_path / "missing" / "s2")]))
        assert list(w.receive().failed) == ["c2"]
        pid = w.proc.pid
        os.kill(pid, signal.SIGTERM)  # ignored: the daemon ends it by closing its stdin
        w.send(_plan(tmp_path, []))
        assert w.receive().error is None
        os.kill(pid, signal.SIGKILL)
        w.proc.wait(10)
        with pytest.raises(writer.WriterGone, match="gone|exited"):
            w.send(_plan(tmp_path, []))
            w.receive()
        w.restart()
        w.send(_plan(tmp_path, []))
        assert w.receive().error is None
    finally:
        w.stop()
    assert w.proc is None


def _writer_pid(daemon) -> int:
    children = []
    for task in os.listdir(f"/proc/{daemon.proc.pid}/task"):
        with open(f"/proc/{daemon.proc.pid}/task/{task}/children") as f:
            children += [int(c) for c in f.read().split()]
    assert len(children) == 1, children
    return children[0]


def test_a_killed_writer_costs_one_answer_and_is_restarted(daemon):
    assert daemon.call({"op": "reserve", "container_id": "before", "request": {"fraction": 10}})["ok"]
    first = _writer_pid(daemon)
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{first}") and open(f"/proc/{first}/stat").read().split()[2] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with pytest.raises(client.DaemonRefused, match="file writer exited"):
        daemon.call({"op": "reserve", "container_id": "lost", "request": {"fraction": 10}})
    assert "file writer exited" in daemon.log()
    after = daemon.call({"op": "reserve", "container_id": "after", "request": {"fraction": 10}})
    assert after["ok"] and _writer_pid(daemon) != first
    assert sorted(s["container_id"] for s in daemon.slices()) == ["after", "before"]
    daemon.restart()  # and the ledger on disk says the same
    assert sorted(s["container_id"] for s in daemon.slices()) == ["after", "before"]


def test_pipelined_requests_on_one_connection_are_answered_in_order(daemon):
    lines = []
    for i in range(40):
        lines.append({"op": "reserve", "container_id": f"p{i}", "request": {"fraction": 1}})
        lines.append({"op": "status"})
        lines.append({"op": "release", "container_id": f"p{i}"})
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(daemon.socket)
        s.sendall(b"".join(json.dumps(m).encode() + b"\n" for m in lines))
        replies = [json.loads(line) for _, line in zip(lines, s.makefile("rb"))]
    for i in range(40):
        reserved, status, released = replies[3 * i: 3 * i + 3]
        assert reserved["reservation"]["container_id"] == f"p{i}"
        held = [x["container_id"] for c in status["status"]["cards"] for x in c["slices"]]
        assert held == [f"p{i}"]
        assert released == {"ok": True, "released": True, "reservation": reserved["reservation"]}
    assert daemon.slices() == [] and list(daemon.slices_dir.iterdir()) == []


def test_service_refuses_a_reservation_whose_files_fail_and_keeps_the_rest(tmp_path):
    from flexai_hook.daemon import service as daemon_mod
    from flexai_hook.devices.inventory import Card

    (tmp_path / "state").mkdir()
    config = daemon_mod.Config(state_dir=str(tmp_path / "state"), slices_dir=str(tmp_path / "slices"))
    card = Card(index=0, uuid="GPU-0", name="sim", memory=1 << 34, device_paths=("/dev/sim0",), backend="simulated")
    svc = daemon_mod.Service(config, [card])
    assert svc.handle_and_commit({"op": "reserve", "container_id": "ok1", "request": {"fraction": 10}})["ok"]
    (tmp_path / "slices").rename(tmp_path / "aside")
    (tmp_path / "slices").write_text("not a directory")
    reply = svc.handle_and_commit({"op": "reserve", "container_id": "bad", "request": {"fraction": 10}})
    assert reply["ok"] is False and "cannot write the slice files of bad" in reply["error"]
    assert list(svc.ledger.reservations) == ["ok1"] and svc.saved is svc.ledger
    (tmp_path / "slices").unlink()
    (tmp_path / "aside").rename(tmp_path / "slices")
    again = svc.handle_and_commit({"op": "reserve", "container_id": "bad", "request": {"fraction": 10}})
    assert again["ok"] and (tmp_path / "slices" / again["reservation"]["slice_id"] / "region").exists()
    on_disk = ledger_mod.LedgerFile(tmp_path / "state" / "ledger.json").load()
    assert sorted(on_disk.reservations) == ["bad", "ok1"]


def test_a_journal_plan_appends_its_batch_and_drops_a_failed_slice(tmp_path):
    from flexai_hook.request import Request

    state = tmp_path / "state"
    state.mkdir()
    file = ledger_mod.LedgerFile(state / "ledger.json")
    file.save(ledger_mod.Ledger())
    from flexai_hook.devices.inventory import Card

    cards = [Card(index=0, uuid="GPU-0", name="sim", memory=1 << 34, device_paths=("/dev/sim0",), backend="simulated")]
    led = ledger_mod.Ledger()
    for cid in ("a", "b"):
        led, _ = ledger_mod.reserve(led, cards, cid, Request(fraction=10), policy="best-fit",
                                    slice_root=str(tmp_path / "slices"), now=1.0)
    number, lines = file.delta(ledger_mod.Ledger(), led)
    plan = writer.Plan(slices=[_slot(tmp_path, "a"), _slot(tmp_path, "b", tmp_path / "nope" / "sb")],
                       ledger_path=str(file.path), journal_path=str(file.journal), batch=number, journal_lines=lines)
    outcome = writer.execute(plan)
    assert list(outcome.failed) == ["b"] and outcome.error is None
    assert json.loads(file.path.read_text())["reservations"] == []  # the checkpoint is untouched
    assert sorted(ledger_mod.LedgerFile(file.path).load().reservations) == ["a"]


def test_new_slice_images_are_the_bytes_cffi_would_write(monkeypatch):
    """region_image and limits_image pack with struct (flexaid's hot path); cffi filling the
    header field by field stays the reference, over random fields and the bounds' errors."""
    import random

    from flexai_hook.devices import region

    monkeypatch.setattr(time, "time_ns", lambda: 1234567890123)  # the region's created_ns
    rng = random.Random(14)
    for _ in range(500):
        limits = {
            "slice_id": "%x" % rng.getrandbits(rng.choice([8, 48, 200])), "device_uuid": "GPU-" + "u" * rng.randint(0, 120),
            "device_index": rng.randint(0, 7), "card_memory": rng.randint(1, 1 << 40),
            "memory_limit": rng.randint(1, 1 << 40), "compute_limit": rng.randint(0, 100),
            "priority": rng.choice(["low", "normal", "high", 0, 1, 2]),
            "compute_mode": rng.choice(["hard", "work-conserving", 0, 1]),
            "context_memory": rng.randint(0, 1 << 30), "paused": rng.choice([0, 1, True, False]),
        }
        for key in list(limits):
            if key != "memory_limit" and rng.random() < 0.2:
                del limits[key]
        assert region.region_image(limits) == region._region_image_cffi(limits)
        assert region.limits_image(limits) == region._limits_image_cffi(limits)
    for bad in ({"memory_limit": 1, "device_index": 1 << 40}, {"memory_limit": 1, "compute_limit": -1}):
        for image in (region.region_image, region.limits_image):
            with pytest.raises(OverflowError):
                image(bad)
    with pytest.raises(ValueError, match="memory limit must be positive"):
        region.limits_image({"memory_limit": 0})


def test_images_made_from_a_memo_are_the_bytes_cffi_would_write(monkeypatch):
    """Slices that differ only in their ids get their images from a memo (region._templated),
    patched with the id and the creation time: still cffi's bytes, for ids short, long and
    cut to the field, times that change, and a memo that fills up and starts again."""
    import random

    from flexai_hook.devices import region

    monkeypatch.setattr(region, "_TEMPLATES_LIMIT", 3)
    rng = random.Random(15)
    shapes = [{"device_uuid": "GPU-1", "device_index": 1, "card_memory": 1 << 36, "memory_limit": m,
               "compute_limit": c, "priority": p, "compute_mode": "hard", "context_memory": 1 << 28}
              for m, c, p in ((1 << 30, 1, "normal"), (1 << 31, 50, "low"), (1 << 20, 100, "high"), (5, 7, 1))]
    for step in range(300):
        now = 10**18 + step
        monkeypatch.setattr(time, "time_ns", lambda now=now: now)
        limits = dict(rng.choice(shapes), slice_id="%x" % rng.getrandbits(rng.choice([4, 48, 400])))
        assert region.region_image(limits) == region._region_image_cffi(limits)
        assert region.limits_image(limits) == region._limits_image_cffi(limits)
    odd = dict(shapes[0], slice_id=["not", "a", "string"])  # not memoised, packed as before
    assert region.limits_image(odd) == region._limits_image_cffi(odd)


def test_a_released_slice_of_an_earlier_version_is_removed_whole(tmp_path):
    """remove_slice_dir unlinks only what flexaid writes now; a leftover (an earlier version's
    ld.so.preload) still goes, through rmtree."""
    directory = tmp_path / "abc"
    directory.mkdir()
    for name in (*writer.SLICE_FILES, "ld.so.preload"):
        (directory / name).write_text("x")
    writer.remove_slice_dir(str(directory))
    assert not directory.exists()
    writer.remove_slice_dir(str(directory))  # already gone: nothing to do
