"""The socket has owners (issue 14, attacks 1 and 2), tried by a real non-root member of the
socket's group, created for the test:

1. a reserve naming a runtime binary flexaid would later run as root (reconciliation) is
   refused, and nothing outside `reconcile.runtimes` is ever run, not even from an old ledger;
2. only root or the uid that reserved a slice may release, update or re-reserve it; the
   group may read status, which shows each slice's owner.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import tool
from flexai_hook.daemon import access
from flexai_hook import client
from flexai_hook.daemon import config as daemon_mod
from flexai_hook.daemon import reconcile
from flexai_hook.cli import status_view
from flexai_hook import validation
from flexai_hook.reservation import Reservation

RUNC = "/usr/bin/runc"  # on the default allow-list; reserve never runs it, so it need not exist
INTERVAL = 0.2  # reconcile interval for these daemons: a few passes fit in a second

# A stdlib-only client (the member runs it with -I -S): one JSON line out, one back.
CLIENT = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode() + b"\\n")
data = b""
while not data.endswith(b"\\n"):
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
sys.stdout.write(data.decode())
"""


@dataclass
class Member:
    """A system user whose primary group owns the test daemon's socket."""

    name: str
    uid: int
    gid: int

    def argv(self, *cmd: str, uid: int | None = None) -> list[str]:
        """`cmd` as this member (or as `uid` with this member's group as a supplementary one)."""
        if uid is None:
            return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups", *cmd]
        return ["setpriv", f"--reuid={uid}", f"--regid={uid}", f"--groups={self.gid}", *cmd]

    def call(self, socket: str, message: dict, uid: int | None = None) -> dict:
        out = subprocess.run(self.argv(sys.executable, "-I", "-S", "-c", CLIENT, socket, json.dumps(message), uid=uid),
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and out.stdout, out.stderr
        return json.loads(out.stdout)


@pytest.fixture
def member():
    if os.geteuid() != 0:
        pytest.skip("creating a test user needs root")
    for cmd in ("useradd", "userdel", "groupadd", "groupdel", "setpriv"):
        if shutil.which(cmd) is None:
            pytest.skip(f"{cmd} is not installed (apt-get install passwd util-linux)")
    name = f"fxt{secrets.token_hex(4)}"
    made_group = made_user = False
    try:
        subprocess.run(["groupadd", "--system", name], check=True, capture_output=True, timeout=30)
        made_group = True
        subprocess.run(["useradd", "--system", "--gid", name, "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", name], check=True, capture_output=True, timeout=30)
        made_user = True
        import pwd

        entry = pwd.getpwnam(name)
        yield Member(name, entry.pw_uid, entry.pw_gid)
    finally:
        if made_user:
            subprocess.run(["userdel", name], capture_output=True, timeout=30)
        if made_group:
            subprocess.run(["groupdel", name], capture_output=True, timeout=30)


@pytest.fixture
def public_dir():
    """A directory the member can reach (pytest's tmp dirs are 0700): the socket, the bait."""
    path = Path(tempfile.mkdtemp(prefix="flexai-owners-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def group_daemon(public_dir, member, make_daemon):  # this order: the daemons stop before the dir goes
    """make_daemon with its socket in a reachable place, group-owned by the member's group."""

    def make(**extra):
        return make_daemon(socket_group=member.name, socket=str(public_dir / f"s{secrets.token_hex(2)}.sock"),
                           **extra)

    return make


def _evil(public_dir: Path) -> tuple[Path, Path]:
    """A "runtime" that, run as root by reconciliation, would leave a marker behind."""
    marker = public_dir / "ran-as-root"
    evil = public_dir / "evil"
    evil.write_text(f"#!/bin/sh\ntouch {marker}\necho '{{\"status\":\"running\"}}'\n")
    evil.chmod(0o755)
    return evil, marker


def _held(daemon) -> dict[str, dict]:
    return {s["container_id"]: s for s in daemon.slices()}


def _reconcile_passes(daemon, passes: int = 6) -> None:
    """Let several reconcile passes run (the interval is INTERVAL) and check flexaid is alive."""
    time.sleep(passes * INTERVAL + 0.3)
    assert daemon.proc.poll() is None, daemon.log()


# --- attack 1: a client-named binary run as root ------------------------------------------

def test_a_member_cannot_make_flexaid_run_its_binary(group_daemon, member, public_dir, tmp_path):
    evil, marker = _evil(public_dir)
    daemon = group_daemon(reconcile={"interval": INTERVAL, "grace": 60})
    reply = member.call(daemon.socket, {"op": "reserve", "container_id": "evil1", "request": {"fraction": 10},
                                        "runtime": {"binary": str(evil), "root": str(public_dir)}})
    assert reply["ok"] is False
    assert str(evil) in reply["error"] and "reconcile.runtimes" in reply["error"] and "\n" not in reply["error"]
    prepare = {"op": "prepare", "container_id": "evil2", "hook": "/usr/bin/flexai-hook",
               "runtime": {"binary": str(evil)},
               "spec": {"ociVersion": "1.0.2", "process": {"args": ["true"], "env": ["FLEXAI_FRACTION=0.1"]}}}
    reply = member.call(daemon.socket, prepare)
    assert reply["ok"] is False and str(evil) in reply["error"]
    with pytest.raises(client.DaemonRefused, match="evil is not one flexaid runs"):  # root is held to it too
        daemon.call({**prepare, "container_id": "evil3"})
    # The honest use: an engine's runc, from the same member (a rootless engine).
    good = member.call(daemon.socket, {"op": "reserve", "container_id": "good1", "request": {"fraction": 10},
                                       "runtime": {"binary": RUNC, "root": str(tmp_path / "runc")}})
    assert good["ok"] is True and good["reservation"]["owner_uid"] == member.uid
    _reconcile_passes(daemon)
    assert not marker.exists()
    assert set(_held(daemon)) == {"good1"}


def test_reconcile_never_runs_a_binary_off_the_list_from_an_old_ledger(group_daemon, public_dir):
    """Defence in depth: a ledger written before the allow-list (here: by a flexaid configured to
    allow the binary, with reconciliation off) still names it; the next flexaid never runs it."""
    evil, marker = _evil(public_dir)
    daemon = group_daemon(reconcile={"interval": 0, "runtimes": [str(evil)]})
    reply = daemon.call({"op": "reserve", "container_id": "old1", "request": {"fraction": 10},
                         "runtime": {"binary": str(evil)}})
    assert reply["ok"], reply
    daemon.stop()
    config = json.loads(daemon.config_path.read_text())
    config["reconcile"] = {"interval": INTERVAL, "grace": 0}  # default list; release at once if seen gone
    daemon.config_path.write_text(json.dumps(config))
    daemon.start()
    _reconcile_passes(daemon)
    assert not marker.exists()
    assert "old1" in _held(daemon)  # unknown, so kept (never released on a guess)
    assert f"names runtime {evil}, which is not in reconcile.runtimes" in daemon.log()


def test_reconcile_observe_refuses_unlisted_binaries(public_dir):
    evil, marker = _evil(public_dir)
    r = Reservation(container_id="c1", slice_id="0" * 12, card_index=0, card_uuid="GPU-x", card_name="sim",
                    card_memory=1 << 30, memory_bytes=1 << 28, compute=10, priority="normal", device_paths=(),
                    slice_dir="/nonexistent", runtime={"binary": str(evil)})
    assert reconcile.observe(r) == reconcile.UNKNOWN
    assert reconcile.observe(r, runtimes=(RUNC,)) == reconcile.UNKNOWN
    assert not marker.exists()
    assert reconcile.observe(r, runtimes=(str(evil),)) == reconcile.RUNNING and marker.exists()  # when listed


def test_config_runtimes_default_and_override(tmp_path):
    schema = validation.load_schema("daemon-config.schema.json")
    default = schema["properties"]["reconcile"]["properties"]["runtimes"]["default"]
    assert tuple(default) == reconcile.DEFAULT_RUNTIMES == daemon_mod.Config().reconcile_runtimes
    path = tmp_path / "flexaid.json"
    path.write_text(json.dumps({"reconcile": {"runtimes": ["/opt/runc"]}}))
    assert daemon_mod.load_config(str(path)).reconcile_runtimes == ("/opt/runc",)
    path.write_text(json.dumps({"reconcile": {"runtimes": ["runc"]}}))
    with pytest.raises(daemon_mod.ConfigError, match="runtimes"):
        daemon_mod.load_config(str(path))
    assert access.runtime_refused({"binary": "/usr/bin/../bin/runc"}, reconcile.DEFAULT_RUNTIMES)  # exact paths
    assert access.runtime_refused({"pid": 42}, reconcile.DEFAULT_RUNTIMES) is None  # hooks.d: nothing to run


# --- attack 2: changing someone else's slice --------------------------------------------------

def test_a_member_cannot_change_a_slice_root_reserved(group_daemon, member):
    daemon = group_daemon()
    assert daemon.call({"op": "reserve", "container_id": "root1", "request": {"fraction": 20},
                        "runtime": {"binary": RUNC}})["ok"]
    attempts = [
        {"op": "release", "container_id": "root1"},
        {"op": "release", "state": {"id": "root1", "status": "stopped", "bundle": "/x"}},  # as a poststop hook
        {"op": "update", "container_id": "root1", "compute": 1},
        {"op": "update", "container_id": "root1", "paused": True},
        {"op": "reserve", "container_id": "root1", "request": {"fraction": 20}, "runtime": {"binary": RUNC}},
        {"op": "prepare", "container_id": "root1", "hook": "/usr/bin/flexai-hook", "runtime": {"binary": RUNC},
         "spec": {"ociVersion": "1.0.2", "process": {"args": ["true"], "env": ["FLEXAI_FRACTION=0.2"]}}},
    ]
    for message in attempts:
        reply = member.call(daemon.socket, message)
        assert reply["ok"] is False, (message, reply)
        assert reply["error"].startswith("permission denied: ") and "\n" not in reply["error"]
        assert "slice of root1 belongs to uid 0" in reply["error"], reply
    held = _held(daemon)["root1"]
    assert held["compute"] == 20 and held["owner_uid"] == 0
    assert not (held.get("usage") or {}).get("paused")
    # What a member may still do: read status, and release what is not held (a no-op).
    assert member.call(daemon.socket, {"op": "status"})["ok"] is True
    assert member.call(daemon.socket, {"op": "release", "container_id": "none"}) == {"ok": True, "released": False}
    assert daemon.call({"op": "release", "container_id": "root1"})["released"] is True  # root may
    assert _held(daemon) == {}


def test_the_owner_changes_its_own_slice_and_other_members_cannot(group_daemon, member):
    daemon = group_daemon()
    mine = member.call(daemon.socket, {"op": "reserve", "container_id": "m1", "request": {"fraction": 20},
                                       "runtime": {"binary": RUNC}})
    assert mine["ok"] and mine["reservation"]["owner_uid"] == member.uid
    other = 65534  # nobody, with the socket's group as a supplementary group: let in, not the owner
    reply = member.call(daemon.socket, {"op": "release", "container_id": "m1"}, uid=other)
    assert reply["ok"] is False and f"slice of m1 belongs to uid {member.uid}" in reply["error"]
    # idempotent re-reserve and update by the owner
    again = member.call(daemon.socket, {"op": "reserve", "container_id": "m1", "request": {"fraction": 20},
                                        "runtime": {"binary": RUNC}})
    assert again["ok"] and again["reservation"]["slice_id"] == mine["reservation"]["slice_id"]
    assert member.call(daemon.socket, {"op": "update", "container_id": "m1", "compute": 15})["ok"]
    assert _held(daemon)["m1"]["compute"] == 15
    assert member.call(daemon.socket, {"op": "release", "container_id": "m1"})["released"] is True
    assert _held(daemon) == {}


def test_the_c_poststop_hook_releases_as_the_owner_only(group_daemon, member):
    """A rootless engine runs the poststop hook as its own uid: the owner of the slices it made."""
    daemon = group_daemon()
    assert member.call(daemon.socket, {"op": "reserve", "container_id": "h1", "request": {"fraction": 10},
                                       "runtime": {"binary": RUNC}})["ok"]
    state = json.dumps({"ociVersion": "1.0.2", "id": "h1", "status": "stopped", "bundle": "/x"})
    env = {"PATH": "/usr/bin:/bin", "FLEXAI_SOCKET": daemon.socket, "FLEXAI_RELEASE_RETRY": "0"}

    def hook(uid: int | None) -> subprocess.CompletedProcess:
        return subprocess.run(member.argv(tool("flexai-hook"), "poststop", uid=uid), input=state, env=env,
                              capture_output=True, text=True, timeout=30)

    out = hook(65534)
    assert out.returncode == 0 and "permission denied" in out.stderr, out.stderr
    assert "h1" in _held(daemon)
    out = hook(None)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert _held(daemon) == {}


# --- status: readable by the group, shows the owner --------------------------------------------

def test_status_is_readable_by_the_group_and_shows_owners(group_daemon, member):
    daemon = group_daemon()
    assert daemon.call({"op": "reserve", "container_id": "r1", "request": {"fraction": 10}})["ok"]
    assert member.call(daemon.socket, {"op": "reserve", "container_id": "u1", "request": {"fraction": 10}})["ok"]
    status = member.call(daemon.socket, {"op": "status"})
    assert validation.problem("protocol.schema.json", status, "reply") is None
    owners = {s["container_id"]: s["owner_uid"] for c in status["status"]["cards"] for s in c["slices"]}
    assert owners == {"r1": 0, "u1": member.uid}
    out = subprocess.run(member.argv(tool("flexai"), "status", "--socket", daemon.socket),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = {line.split("container ")[1].split()[0]: line for line in out.stdout.splitlines() if "container " in line}
    assert lines["r1"].endswith("owner uid 0 (root)")
    assert lines["u1"].endswith(f"owner uid {member.uid} ({member.name})")


def test_old_ledger_entries_are_root_owned_and_unnamed_uids_show_as_numbers():
    old = {"container_id": "c1", "slice_id": "0" * 12, "card_index": 0, "card_uuid": "GPU-x", "card_name": "sim",
           "card_memory": 1 << 30, "memory_bytes": 1 << 28, "compute": 10, "priority": "normal",
           "device_paths": [], "slice_dir": "/x"}
    assert Reservation.from_json(old).owner_uid == 0
    assert Reservation.from_json({**old, "owner_uid": 1234}).to_json()["owner_uid"] == 1234
    assert status_view.owner(4242, lambda uid: None) == "uid 4242"
    assert status_view.owner(0, lambda uid: "root") == "uid 0 (root)"
    assert access.change_refused(0, "release", "c1", 1234) is None
    assert access.change_refused(1234, "release", "c1", 1234) is None
    assert access.change_refused(99, "update", "c1", 1234) == (
        "permission denied: uid 99 may not update container c1: the slice of c1 belongs to uid 1234")


def test_a_member_cannot_make_flexaid_read_spec_directories_for_it(group_daemon, member, tmp_path):
    """flexaid reads CDI spec directories as root: a member's prepare may not name them (its own
    flexai-runtime reads them itself, with its own rights); root's may."""
    daemon = group_daemon()
    secret = tmp_path / "root-only"  # pytest's tmp dirs are 0700: the member cannot read this
    secret.mkdir()
    uuid = daemon.cards[0]["uuid"]
    (secret / "x.yaml").write_text(f"cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n- name: {uuid}\n"
                                   "  containerEdits:\n    env: [SECRET=only-root-may-read-this]\n")
    message = {"op": "prepare", "container_id": "m1", "hook": "/usr/bin/flexai-hook", "runtime": {"binary": RUNC},
               "settings": {"cdi_spec_dirs": str(secret)},
               "spec": {"ociVersion": "1.0.2", "process": {"args": ["true"], "env": ["FLEXAI_FRACTION=0.2"]}}}
    reply = member.call(daemon.socket, message)
    assert reply == {"ok": False, "error": "cdi_spec_dirs in the runtime config is honoured for root's requests "
                                           "only; the Python runtime reads the spec directories itself"}
    assert _held(daemon) == {}
    reply = daemon.call({**message, "container_id": "r1"})
    assert reply["ok"] and "SECRET=only-root-may-read-this" in reply["spec"]["process"]["env"]
