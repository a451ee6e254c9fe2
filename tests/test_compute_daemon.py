"""flexaid's `update` op: a running slice's share or pause, written to the ledger, slice.conf
and the region (which libflexai obeys), with placement kept honest."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from flexai_hook.cli import commands as cli
from flexai_hook import client
from flexai_hook.devices import region
from flexai_hook import validation


def reserve(daemon, cid: str, compute: int) -> dict:
    reply = daemon.call({"op": "reserve", "container_id": cid, "request": {"compute": compute, "fraction": 10}})
    assert reply["ok"], reply
    return reply["reservation"]


def test_update_changes_share_in_ledger_slice_file_and_region(daemon):
    res = reserve(daemon, "c1", 30)
    path = daemon.slices_dir / res["slice_id"] / "region"
    before = region.read_region(path).generation
    reply = daemon.call({"op": "update", "container_id": "c1", "compute": 60})
    assert validation.problem("protocol.schema.json", reply, "reply") is None
    assert reply["ok"] and reply["reservation"]["compute"] == 60
    view = region.read_region(path)
    assert view.compute_limit == 60 and view.generation > before
    assert "compute_limit=60" in (daemon.slices_dir / res["slice_id"] / "slice.conf").read_text()
    assert daemon.status()["cards"][0]["compute_reserved"] == 60  # placement sees the new share


def test_update_pause_and_resume(daemon):
    res = reserve(daemon, "c2", 20)
    path = daemon.slices_dir / res["slice_id"] / "region"
    assert daemon.call({"op": "update", "container_id": "c2", "paused": True})["ok"]
    assert region.read_region(path).paused
    (s,) = daemon.slices()
    assert s["usage"]["paused"] is True
    assert daemon.call({"op": "update", "container_id": "c2", "paused": False})["ok"]
    assert not region.read_region(path).paused


def test_update_that_does_not_fit_is_refused_and_changes_nothing(daemon):
    reserve(daemon, "a", 50)
    res = reserve(daemon, "b", 40)
    with pytest.raises(client.DaemonRefused, match="50% compute free"):
        daemon.call({"op": "update", "container_id": "b", "compute": 60})
    assert region.read_region(daemon.slices_dir / res["slice_id"] / "region").compute_limit == 40


@pytest.mark.parametrize("message, words", [
    ({"op": "update", "container_id": "nobody", "compute": 10}, "no slice"),
    ({"op": "update", "container_id": "x"}, "invalid request"),
    ({"op": "update", "container_id": "x", "compute": 0}, "invalid request"),
    ({"op": "update", "container_id": "x", "compute": 101}, "invalid request"),
    ({"op": "update", "container_id": "x", "paused": "yes"}, "invalid request"),
])
def test_bad_updates_get_one_line(daemon, message, words):
    with pytest.raises(client.DaemonRefused, match=words):
        daemon.call(message)


def test_cli_slice_set(daemon):
    reserve(daemon, "c3", 25)
    runner = CliRunner()
    out = runner.invoke(cli.main, ["slice", "set", "c3", "--compute", "35", "--socket", daemon.socket])
    assert out.exit_code == 0 and "35% compute" in out.output, out.output
    out = runner.invoke(cli.main, ["slice", "set", "c3", "--pause", "--socket", daemon.socket])
    assert out.exit_code == 0 and "paused" in out.output, out.output
    out = runner.invoke(cli.main, ["slice", "set", "c3", "--socket", daemon.socket])
    assert out.exit_code != 0
