"""flexaid as a real process on its socket: reserve/release/status, persistence, concurrency, bad input."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import stat
import subprocess

import pytest

from flexai_hook import client, validation
from conftest import GIB, tool


def reserve(daemon, cid, **request):
    return daemon.call({"op": "reserve", "container_id": cid, "request": request})


def test_reserve_release_status_and_slice_files(daemon):
    reply = reserve(daemon, "c1", fraction=25)
    assert validation.problem("protocol.schema.json", reply, "reply") is None
    res = reply["reservation"]
    assert res["memory_bytes"] == 4 * GIB and res["compute"] == 25
    assert res["card_uuid"] == daemon.cards[0]["uuid"]
    conf = (daemon.slices_dir / res["slice_id"] / "slice.conf").read_text()
    assert f"memory_limit={4 * GIB}" in conf and "compute_limit=25" in conf

    status = daemon.call({"op": "status"})
    assert validation.problem("protocol.schema.json", status, "reply") is None
    card = status["status"]["cards"][0]
    assert card["memory_reserved"] == 4 * GIB and card["compute_reserved"] == 25
    assert [s["container_id"] for s in card["slices"]] == ["c1"]

    assert reserve(daemon, "c1", fraction=90)["reservation"] == res  # idempotent
    released = daemon.call({"op": "release", "container_id": "c1"})
    assert released["released"] is True
    assert not (daemon.slices_dir / res["slice_id"]).exists()
    assert daemon.call({"op": "release", "container_id": "c1"}) == {"ok": True, "released": False}
    assert daemon.slices() == []


def test_socket_mode_is_0660(daemon):
    assert stat.S_IMODE(os.stat(daemon.socket).st_mode) == 0o660


def test_full_card_is_refused_with_one_line(daemon):
    reserve(daemon, "big", fraction=80)
    with pytest.raises(client.DaemonRefused) as info:
        reserve(daemon, "late", fraction=30)
    assert "no card can fit the slice right now" in str(info.value) and "\n" not in str(info.value)
    assert "once enough slices are released" in str(info.value) and "never" not in str(info.value)
    assert [s["container_id"] for s in daemon.slices()] == ["big"]


def test_a_slice_larger_than_every_card_is_told_it_can_never_fit(make_daemon):
    """Issue 17 item 7: FLEXAI_MEMORY=20GiB on 16 and 8 GiB cards is not "full right now", even
    while the cards hold other slices: it names the largest card and what to ask for instead."""
    daemon = make_daemon(memories=("8GiB", "16GiB"))
    reserve(daemon, "busy", fraction=50, device="1")
    for _while in ("card 1 is half full", "every card is empty"):
        with pytest.raises(client.DaemonRefused) as info:
            reserve(daemon, "huge", memory_bytes=20 * GIB)
        line = str(info.value)
        assert "can never fit on this host" in line and "right now" not in line and "\n" not in line
        assert f"card 1 ({daemon.cards[1]['uuid']}), has 16.00 GiB" in line and "20.00 GiB" in line
        daemon.call({"op": "release", "container_id": "busy"})
    # pinned to a card too small for it: never, on that card, though a larger card exists
    with pytest.raises(client.DaemonRefused) as info:
        reserve(daemon, "pinned", memory_bytes=10 * GIB, device="0")
    assert "can never fit on card 0" in str(info.value) and "8.00 GiB" in str(info.value)
    assert reserve(daemon, "fits", memory_bytes=10 * GIB)["reservation"]["card_index"] == 1
    assert [s["container_id"] for s in daemon.slices()] == ["fits"]


def test_restart_between_reserve_and_release_loses_nothing(daemon):
    first = reserve(daemon, "c1", fraction=30)["reservation"]
    reserve(daemon, "c2", memory_bytes=GIB, priority="high")
    daemon.restart()
    after = {s["container_id"]: s for s in daemon.slices()}["c1"]
    after.pop("usage", None)  # live usage read from the slice's region
    assert after == first
    assert len(daemon.slices()) == 2
    assert (daemon.slices_dir / first["slice_id"] / "slice.conf").exists()
    assert daemon.call({"op": "release", "container_id": "c1"})["released"] is True
    daemon.stop()  # SIGTERM
    daemon.start()
    assert [s["container_id"] for s in daemon.slices()] == ["c2"]


def test_kill_9_keeps_acknowledged_reservations(daemon):
    acked = reserve(daemon, "c1", fraction=40)["reservation"]
    daemon.stop(sig=9)
    daemon.start()
    assert [{k: v for k, v in s.items() if k != "usage"} for s in daemon.slices()] == [acked]


def _reserve_in_child(args):
    sock, cid = args
    try:
        reply = client.call({"op": "reserve", "container_id": cid, "request": {"fraction": 30}}, sock)
        return reply["reservation"]["slice_id"]
    except client.DaemonRefused:
        return None


def test_20_concurrent_reserves_never_overcommit(daemon):
    with multiprocessing.get_context("fork").Pool(20) as pool:
        results = pool.map(_reserve_in_child, [(daemon.socket, f"c{i}") for i in range(20)])
    granted = [r for r in results if r]
    assert len(granted) == 3  # 3 x 30 % fit on one card, the 4th would pass 100 %
    card = daemon.status()["cards"][0]
    assert card["memory_reserved"] <= card["memory"] and card["compute_reserved"] <= 100
    assert len(card["slices"]) == 3


@pytest.mark.parametrize(
    "line, fragment",
    [
        (b"not json\n", "not a JSON object"),
        (b'{"op": "reserve"}\n', "invalid request"),
        (b'{"op": "launch-missiles"}\n', "invalid request"),
        (b'{"op": "reserve", "container_id": "../x", "request": {"fraction": 30}}\n', "invalid request"),
        (b'{"op": "reserve", "container_id": "c", "request": {"fraction": 300}}\n', "invalid request"),
        (b'[1, 2, 3]\n', "invalid request"),
        (b"\xff\xfe\x00garbage\n", "not a JSON object"),
    ],
)
def test_garbage_gets_an_error_reply_and_the_daemon_lives_on(daemon, line, fragment):
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(daemon.socket)
        s.sendall(line)
        reply = json.loads(s.makefile("rb").readline())
    assert reply["ok"] is False and fragment in reply["error"]
    assert reserve(daemon, "after", fraction=10)["ok"] is True


def test_an_oversized_line_is_refused_and_a_silent_client_blocks_nobody(daemon):
    silent = socket.socket(socket.AF_UNIX)
    silent.connect(daemon.socket)
    half = socket.socket(socket.AF_UNIX)
    half.connect(daemon.socket)
    half.sendall(b'{"op": "sta')
    try:
        with socket.socket(socket.AF_UNIX) as big:
            big.settimeout(10)
            big.connect(daemon.socket)
            try:
                big.sendall(b"x" * (2 << 20))
            except (BrokenPipeError, ConnectionResetError):
                pass
            reply = json.loads(big.makefile("rb").readline())
        assert reply["ok"] is False and "longer than" in reply["error"]
        assert daemon.status()["cards"][0]["slices"] == []
    finally:
        silent.close()
        half.close()


def test_several_requests_on_one_connection(daemon):
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(daemon.socket)
        s.sendall(b'{"op":"status"}\n{"op":"release","container_id":"nobody"}\n')
        f = s.makefile("rb")
        assert json.loads(f.readline())["ok"] is True
        assert json.loads(f.readline()) == {"ok": True, "released": False}


@pytest.mark.parametrize("name, content", [
    ("ledger.json", '{"version": 1, "reservations": ['),
    # a damaged batch followed by a complete one: not a crash's cut-short tail
    ("ledger.journal", '{"b":1,"put":{"contai\n{"b":2,"drop":"x"}\n{"b":2,"end":true}\n'),
])
def test_corrupt_ledger_refuses_to_start_with_one_line(make_daemon, name, content):
    daemon = make_daemon(start=False)
    daemon.state_dir.mkdir(parents=True)
    damaged = daemon.state_dir / name
    damaged.write_text(content)
    out = subprocess.run([tool("flexaid"), "--config", str(daemon.config_path)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert str(damaged) in out.stderr and "flexai recover" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert damaged.read_text() == content  # untouched
    assert not os.path.exists(daemon.socket)


def _held_ledger(daemon, *slices) -> dict:
    """A well-formed ledger.json written by flexaid itself, holding `slices` (cid, request)."""
    daemon.start()
    for cid, request in slices:
        reserve(daemon, cid, **request)
    daemon.stop()
    daemon.start()  # folds the journal into ledger.json
    daemon.stop()
    assert (daemon.state_dir / "ledger.journal").read_text() == ""
    return json.loads((daemon.state_dir / "ledger.json").read_text())


@pytest.mark.parametrize("tamper, fragment", [
    (lambda r, card: r.update(memory_bytes=40 * GIB), "holds 40.00 GiB of slices but has 16.00 GiB"),
    (lambda r, card: r.update(compute=101), "more than 100%"),
    (lambda r, card: r.update(card_index=7), "which this host does not have"),
    (lambda r, card: r.update(card_uuid="GPU-00000000-0000-4000-8000-000000000000"), "which this host does not have"),
])
@pytest.mark.parametrize("where", ["ledger.json", "ledger.journal"])
def test_a_ledger_that_overcommits_or_names_an_unknown_card_is_corrupt(make_daemon, tamper, fragment, where):
    """Attack 4: a well-formed ledger putting 40 GiB on a 16 GiB card (or naming a card this
    host lacks) used to load without complaint; now flexaid refuses to start like for a
    damaged file, and leaves it as it was for `flexai recover`."""
    daemon = make_daemon(start=False)
    data = _held_ledger(daemon, ("c1", {"fraction": 25}))
    (held,) = data["reservations"]
    tamper(held, daemon.cards[0])
    if where == "ledger.json":
        content = json.dumps(data)
    else:  # the checkpoint is fine, a journal batch after it is not
        content = json.dumps({"b": 1, "put": held}) + '\n{"b":1,"end":true}\n'
    damaged = daemon.state_dir / where
    damaged.write_text(content)
    before = {p.name: p.read_bytes() for p in daemon.state_dir.iterdir()}
    out = subprocess.run([tool("flexaid"), "--config", str(daemon.config_path)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    (line,) = out.stderr.strip().splitlines()
    assert str(damaged) in line and "flexai recover" in line and fragment in line, line
    assert {p.name: p.read_bytes() for p in daemon.state_dir.iterdir()} == before  # untouched
    assert not os.path.exists(daemon.socket)


def test_low_priority_slices_may_time_share_compute_past_100(make_daemon):
    """Best-effort slices do not count toward a card's compute (ledger.Ledger.used): a ledger
    with 3 x 60 % low slices is not corrupt. Memory still is strict."""
    daemon = make_daemon(start=False)
    _held_ledger(daemon, *((f"low{i}", {"fraction": 30, "compute": 60, "priority": "low"}) for i in range(3)))
    daemon.start()
    card = daemon.status()["cards"][0]
    assert len(card["slices"]) == 3 and card["compute_reserved"] == 0


def test_a_batch_cut_short_by_a_crash_is_dropped_at_start(daemon):
    kept = reserve(daemon, "kept", fraction=10)["reservation"]
    daemon.stop()
    with open(daemon.state_dir / "ledger.journal", "a") as journal:  # a batch that never got its end line
        journal.write('{"b":99,"drop":"kept"}\n{"b":99,"put":{"container_')
    daemon.start()
    assert [s["slice_id"] for s in daemon.slices()] == [kept["slice_id"]]
    assert (daemon.state_dir / "ledger.journal").read_text() == ""  # folded into a fresh checkpoint


@pytest.mark.parametrize(
    "config, fragment",
    [
        ("{broken", "not valid JSON"),
        ('{"backend": "quantum"}', "backend"),
        ('{"simulated": {"cards": [{"memory": "lots"}]}}', "memory"),
        ('{"policy": "random-ish", "backend": "simulated", "simulated": {"cards": [{"memory": "1GiB"}]}}', "policy"),
        ('{"backend": "simulated"}', "no cards"),
    ],
)
def test_bad_config_is_one_clear_line(tmp_path, config, fragment):
    path = tmp_path / "flexaid.json"
    path.write_text(config)
    out = subprocess.run(
        [tool("flexaid"), "--config", str(path), "--socket", str(tmp_path / "s.sock"),
         "--state-dir", str(tmp_path / "state"), "--slices-dir", str(tmp_path / "slices")],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 1
    assert fragment in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "s.sock").exists()


def test_a_second_daemon_on_the_same_socket_is_refused(daemon):
    out = subprocess.run([tool("flexaid"), "--config", str(daemon.config_path)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "already listens" in out.stderr
    assert daemon.status()  # the first one still answers


def test_socket_activation(make_daemon, tmp_path):
    """systemd-socket-activate hands flexaid a listening socket as fd 3, as systemd would."""
    activate = "/usr/bin/systemd-socket-activate"
    if not os.access(activate, os.X_OK):
        pytest.skip("systemd-socket-activate is not installed")
    daemon = make_daemon(start=False)
    proc = subprocess.Popen([activate, "-l", daemon.socket, tool("flexaid"), "--config", str(daemon.config_path)],
                            stdout=subprocess.DEVNULL, stderr=open(daemon.log_path, "ab"))
    try:
        daemon.proc = proc
        daemon.wait_ready()
        assert reserve(daemon, "c1", fraction=50)["ok"]
        assert "using the socket passed by systemd" in daemon.log()
    finally:
        proc.terminate()
        proc.wait(10)
        daemon.proc = None


def test_a_failed_ledger_write_answers_an_error_and_changes_nothing(daemon):
    import shutil

    kept = daemon.call({"op": "reserve", "container_id": "kept", "request": {"fraction": 10}})["reservation"]
    shutil.rmtree(daemon.state_dir)  # the ledger can no longer be written
    with pytest.raises(client.DaemonRefused, match="cannot save its ledger"):
        reserve(daemon, "lost", fraction=10)
    with pytest.raises(client.DaemonRefused, match="cannot save its ledger"):
        daemon.call({"op": "release", "container_id": "kept"})
    with pytest.raises(client.DaemonRefused, match="cannot save its ledger"):  # the C front door's op
        prepare(daemon, "lost2", {"process": {"env": ["FLEXAI_FRACTION=0.1"]}})
    assert [s["container_id"] for s in daemon.slices()] == ["kept"]
    assert sorted(p.name for p in daemon.slices_dir.iterdir()) == [kept["slice_id"]]
    daemon.state_dir.mkdir()
    assert reserve(daemon, "later", fraction=10)["ok"]
    assert daemon.call({"op": "release", "container_id": "kept"})["released"] is True


def prepare(daemon, cid, spec, **extra):
    return daemon.call({"op": "prepare", "container_id": cid, "spec": spec, "hook": "/opt/flexai/bin/flexai-hook",
                        "runtime": {"binary": "/usr/bin/runc"}, **extra})


def test_prepare_reserves_and_answers_the_sliced_config(daemon):
    """The C front door's path: flexaid edits config.json with the rules runtime.py applies."""
    from flexai_hook.oci import prepare as prepare_mod
    from flexai_hook.oci import spec as spec_mod
    from flexai_hook.reservation import Reservation

    spec = {"ociVersion": "1.0.2", "process": {"args": ["true"], "env": ["FLEXAI_FRACTION=0.25"]},
            "annotations": {"flexai.io/priority": "high"}}
    reply = prepare(daemon, "p1", spec, socket="/run/x.sock", settings={"runtime": "runc"})
    assert validation.problem("protocol.schema.json", reply, "reply") is None
    assert list(reply) == ["ok", "spec"]  # the front door reads "spec" as the last member
    (res,) = daemon.slices()
    assert res["container_id"] == "p1" and res["memory_bytes"] == 4 * GIB and res["priority"] == "high"
    expected = prepare_mod.sliced_spec(spec, Reservation.from_json(res), "/opt/flexai/bin/flexai-hook",
                                       "/run/x.sock", {"runtime": "runc"})
    assert reply["spec"] == expected
    assert reply["spec"]["linux"]["devices"][0]["path"] == daemon.cards[0]["device"]
    (hook,) = reply["spec"]["hooks"]["poststop"]
    assert hook["path"] == "/opt/flexai/bin/flexai-hook" and "FLEXAI_SOCKET=/run/x.sock" in hook["env"]
    assert any(m["destination"] == spec_mod.SLICE_FILE_IN_CONTAINER for m in reply["spec"]["mounts"])
    assert prepare(daemon, "p1", spec)["spec"]["linux"] == reply["spec"]["linux"]  # idempotent
    assert len(daemon.slices()) == 1


def test_prepare_without_a_request_reserves_nothing(daemon):
    reply = prepare(daemon, "p2", {"process": {"env": ["FLEXAI_SLICE_ID=x", "NOTE=FLEXAI_FRACTION", "PATH=/bin"]}})
    assert reply == {"ok": True, "spec": None}
    # an unknown FLEXAI_* name: still no slice, and the warning comes before "spec" (the C front
    # door then leaves the start to Python, which prints it); flexaid logs it once
    reply = prepare(daemon, "p2", {"process": {"env": ["FLEXAI_FRACTON=0.3", "PATH=/bin"]}})
    assert list(reply) == ["ok", "warnings", "spec"] and reply["spec"] is None
    assert validation.problem("protocol.schema.json", reply, "reply") is None
    assert [w.endswith("did you mean FLEXAI_FRACTION?") for w in reply["warnings"]] == [True]
    assert daemon.log().count("did you mean FLEXAI_FRACTION?") == 1
    assert daemon.slices() == []


@pytest.mark.parametrize("env, said", [
    (["FLEXAI_FRACTION=1.5"], "FLEXAI_FRACTION"),
    (["FLEXAI_FRACTION=0.9"], "no card can fit"),
])
def test_prepare_refusals_are_one_line_and_reserve_nothing(daemon, env, said):
    reserve(daemon, "other", fraction=20)
    with pytest.raises(client.DaemonRefused) as info:
        prepare(daemon, "p3", {"process": {"env": env}})
    assert said in str(info.value) and "\n" not in str(info.value)
    assert [s["container_id"] for s in daemon.slices()] == ["other"]


def test_prepare_message_is_validated(daemon):
    with pytest.raises(client.DaemonRefused) as info:
        daemon.call({"op": "prepare", "container_id": "p4", "spec": {}, "hook": "relative/hook",
                     "runtime": {"binary": "/usr/bin/runc"}})
    assert "invalid request" in str(info.value)
