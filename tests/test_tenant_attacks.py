"""A tenant with a shell inside a sliced container tries to lift its limits (issue 14, attacks
6-10). Each attack runs through the real path: flexai-runtime + runc + flexaid on a simulated
16 GiB card, `runc exec` into the running container with busybox's dd/env and a C client
that loads the driver as libcudart does. Each test asserts the attack now fails and that the
honest use next to it still works.

The container holds FLEXAI_MEMORY=1GiB. The simulator charges each process's context
300 MiB (docs/simulator.md), so the main process (context + 400 MiB) leaves 324 MiB: a
second process gets its context (300 MiB) and nothing of 400 MiB more.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest

from conftest import GIB
from libflexai_support import MIB, client, libs  # noqa: F401
from test_compute_share import compute_client  # noqa: F401
from test_libflexai_e2e import dynamic_bundle
from test_runtime_runc import run_to_files, runtime

from flexai_hook.devices import region

HELD = 400 * MIB


def offset(struct: str, field: str) -> int:
    return region.ffi().offsetof(struct, field)


class Tenant:
    """A running sliced container and a shell into it."""

    def __init__(self, runc, daemon, cid: str):
        self.runc, self.daemon, self.cid = runc, daemon, cid

    def exec(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return run_to_files([self.runc.binary, "--root", str(self.runc.root), "exec", self.cid, *args],
                            timeout=timeout)

    def sh(self, script: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return self.exec("/bin/sh", "-c", script, timeout=timeout)

    def alloc(self, *env: str) -> list[str]:
        """A second process's 400 MiB allocation, with `env` (env -i first when given)."""
        prefix = ["env", "-i", *env] if env else []
        out = self.exec(*prefix, "/bin/flexai_client", "alloc", "mem", str(HELD))
        return [out.stdout.strip(), out.stderr.strip()]

    def slice_dir(self) -> str:
        (s,) = self.daemon.slices()
        return s["slice_dir"]


@pytest.fixture
def tenant(libs, runc, make_daemon, make_bundle, client):  # noqa: F811
    if not os.path.exists("/lib64/ld-linux-x86-64.so.2") or not os.path.isdir("/lib/x86_64-linux-gnu"):
        pytest.skip("this test builds its rootfs from an x86_64 Debian-style host glibc")
    daemon = make_daemon(memories=("16GiB",))
    # the main process holds context + 400 MiB of the slice until the container is killed
    script = f"sleep 600 | /bin/flexai_client alloc mem {HELD} hold"
    bundle = dynamic_bundle(make_bundle, client, ["/bin/sh", "-c", script],
                            ["FLEXAI_MEMORY=1GiB", "FLEXAI_COMPUTE=10", "FLEXAI_COMPUTE_MODE=hard"])
    cid = f"tenant{os.getpid()}"
    out = runtime(runc, daemon, "create", "--bundle", str(bundle), cid)
    assert out.returncode == 0, out.stderr
    t = Tenant(runc, daemon, cid)
    try:
        assert runtime(runc, daemon, "start", cid).returncode == 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            usage = daemon.slices()[0].get("usage") or {}
            if usage.get("memory_used", 0) >= HELD:
                break
            time.sleep(0.1)
        assert usage.get("memory_used") == HELD + 300 * MIB, usage
        # the honest use: a second process gets its context and is refused past the slice
        assert t.alloc()[0] == "oom"
        yield t
    finally:
        runtime(runc, daemon, "kill", cid, "KILL")
        deadline = time.monotonic() + 30
        while runtime(runc, daemon, "delete", cid).returncode != 0 and time.monotonic() < deadline:
            time.sleep(0.1)


def test_forged_limit_in_the_writable_region_changes_nothing(tenant):
    """Attack 6: the region is the tenant's to write; its memory_limit is not trusted."""
    at = offset("struct flexai_region", "memory_limit")
    forged = tenant.sh(f"printf '\\0\\0\\0\\0\\4\\0\\0\\0' | dd of=/run/flexai/region bs=1 seek={at} conv=notrunc")
    assert forged.returncode == 0, forged.stderr  # the write itself works: the region is writable
    assert tenant.alloc()[0] == "oom"
    # forged usage: a total far below zero lets no process past the limit on its own
    used_at = offset("struct flexai_region", "memory_used")
    tenant.sh(f"printf '\\0\\0\\0\\0\\0\\0\\0\\200' | dd of=/run/flexai/region bs=1 seek={used_at} conv=notrunc")
    out = tenant.exec("/bin/flexai_client", "alloc", "mem", str(GIB))
    assert out.stdout.strip() == "oom", out.stdout + out.stderr


def test_usage_zeroed_in_the_region_does_not_free_the_slice(tenant):
    """Attack 6, the consistent forgery: every usage counter of the region written to zero, so
    the region says the slice is empty while the main process holds 700 MiB. The kernel's
    leases (libflexai/core/lease.c) still hold what that process took."""
    procs = offset("struct flexai_region", "procs")
    used = offset("struct flexai_proc", "memory_used")
    seeks = [offset("struct flexai_region", "memory_used")] + [procs + i * 128 + used for i in range(8)]
    script = "; ".join(f"dd if=/dev/zero of=/run/flexai/region bs=1 count=8 seek={at} conv=notrunc 2>/dev/null"
                       for at in seeks)
    assert tenant.sh(script).returncode == 0
    view = region.read_region(os.path.join(tenant.slice_dir(), "region"))
    assert view.memory_used_recorded == 0 and view.memory_used == 0  # the forgery took
    out = tenant.exec("/bin/flexai_client", "alloc", "mem", str(HELD))
    assert out.stdout.strip() == "oom", out.stdout + out.stderr
    # what the kernel allows is still there: the 324 MiB the main process leaves
    out = tenant.exec("/bin/flexai_client", "alloc", "mem", str(20 * MIB))
    assert out.stdout.strip() == "ok 0", out.stdout + out.stderr


def test_limits_file_is_read_only_inside_and_unreachable_for_host_users(tenant):
    """Attack 6: what is enforced (/run/flexai/limits) cannot be written from inside, and
    neither it nor the region can be written by a host user outside the socket's group."""
    at = offset("struct flexai_limits", "memory_limit")
    out = tenant.sh(f"printf '\\0\\0\\0\\0\\4\\0\\0\\0' | dd of=/run/flexai/limits bs=1 seek={at} conv=notrunc")
    assert out.returncode != 0 and "Read-only file system" in out.stderr, out.stderr
    assert tenant.alloc()[0] == "oom"
    slice_dir = tenant.slice_dir()
    for name in ("region", "limits"):
        host = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                               "dd", "if=/dev/zero", f"of={slice_dir}/{name}", "bs=8", "count=1", "conv=notrunc"],
                              capture_output=True, text=True, timeout=30)
        assert host.returncode != 0 and "Permission denied" in host.stderr, (name, host.stderr)
    assert oct(os.stat(slice_dir).st_mode & 0o777) == "0o700"
    assert os.stat(os.path.join(slice_dir, "limits")).st_mode & 0o022 == 0


def test_environment_cannot_switch_enforcement_off(tenant):
    """Attack 7: an emptied environment naming another slice file."""
    assert tenant.alloc("FLEXAI_SLICE_FILE=/nonexistent")[0] == "oom"
    assert tenant.alloc("FLEXAI_SLICE_FILE=/nonexistent", "FLEXAI_MEMORY=16GiB")[0] == "oom"


def test_a_private_region_per_process_does_not_double_the_slice(tenant):
    """Attack 8: each process naming its own region would get the whole slice."""
    assert tenant.alloc("FLEXAI_REGION=/dev/shm/mine")[0] == "oom"
    out = tenant.sh(f"FLEXAI_REGION=/tmp/x /bin/flexai_client alloc mem {HELD}")
    assert out.stdout.strip() == "oom", out.stdout + out.stderr


def test_damaged_region_fails_closed(tenant):
    """A region the tenant wrote over (its magic) does not become a private region per
    process: allocations and launches fail, with one line that says so."""
    tenant.sh("printf 'XXXXXXXX' | dd of=/run/flexai/region bs=1 seek=0 conv=notrunc")
    out = tenant.exec("/bin/flexai_client", "alloc", "mem", str(MIB), "launch", "1")
    assert out.stdout.split("\n")[:2] == ["oom", "err 800"], out.stdout + out.stderr
    assert "fail closed" in out.stderr


@pytest.fixture
def compute_tenant(tenant, compute_client):  # noqa: F811
    # the client goes into the running container's rootfs (a plain directory under runc)
    state = json.loads(subprocess.run([tenant.runc.binary, "--root", str(tenant.runc.root), "state", tenant.cid],
                                      capture_output=True, text=True, check=True).stdout)
    rootfs = os.path.join(state["bundle"], "rootfs")
    shutil.copy2(compute_client, os.path.join(rootfs, "bin", "compute_client"))
    return tenant


def run_compute(tenant, *env: str) -> tuple[float, str]:
    prefix = ["env", *env] if env else []
    out = tenant.exec(*prefix, "/bin/compute_client", "--kernel-us", "1000", "--seconds", "1.5", timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["busy_ns"] / result["wall_ns"], out.stderr


def test_environment_cannot_switch_the_compute_gate_off(compute_tenant):
    """Attack 10: FLEXAI_COMPUTE_BY=mps or a private FLEXAI_BOARD_DIR in a process's env."""
    share, err = run_compute(compute_tenant, "FLEXAI_COMPUTE_BY=mps", "FLEXAI_BOARD_DIR=/tmp")
    print(f"achieved share with FLEXAI_COMPUTE_BY=mps FLEXAI_BOARD_DIR=/tmp: {share:.3f}")
    assert share < 0.2, (share, err)  # a hard 10 % slice; unenforced it runs at ~100 %
    assert "not enforced" not in err


def test_the_card_board_is_read_only_but_for_the_slices_own_slot(compute_tenant):
    """Attack 10: writing into the card board. Only the slice's own slot is writable; the
    roster (shares, priorities) and every other slice's slot are read-only, nothing can be
    added, and what the tenant writes into its own slot does not lift its cap."""
    from flexai_hook.devices import board

    t = compute_tenant
    (card,) = t.daemon.status()["cards"]
    (mine,) = t.daemon.slices()
    other = t.daemon.call({"op": "reserve", "container_id": "neighbour", "request": {"fraction": 20}})
    assert other["ok"], other
    d = f"/run/flexai/boards/{card['uuid']}"
    own = board.slot_name(board.slice_key(mine["slice_id"]))
    theirs = board.slot_name(board.slice_key(other["reservation"]["slice_id"]))
    # only the card's own board reaches the container; the neighbour's slot shows up live
    assert t.sh("ls /run/flexai/boards").stdout.split() == [card["uuid"]]
    assert sorted(t.sh(f"ls {d}").stdout.split()) == sorted(["roster", own, theirs])
    for target in ("roster", theirs):
        out = t.sh(f"printf 'XXXXXXXX' | dd of={d}/{target} bs=1 seek=0 conv=notrunc")
        assert out.returncode != 0 and "Read-only" in out.stderr, (target, out.stderr)
    out = t.sh(f"touch {d}/mine")
    assert out.returncode != 0 and "Read-only" in out.stderr, out.stderr
    # its own slot: every byte forged (virtual time, turn held forever, booked work)
    out = t.sh(f"dd if=/dev/zero bs=128 count=1 | tr '\\0' '\\377' | dd of={d}/{own} bs=128 count=1 conv=notrunc")
    assert out.returncode == 0, out.stderr
    assert t.sh(f"od -An -tx1 -N8 {d}/{own}").stdout.split() == ["ff"] * 8
    share, err = run_compute(t)
    print(f"achieved share with its own slot forged: {share:.3f}")
    assert share < 0.2, (share, err)  # the hard 10 % slice; unenforced it runs at ~100 %
    assert "not enforced" not in err and "hard cap" not in err, err  # the board itself is fine


def test_a_damaged_roster_holds_the_slice_to_its_own_share(compute_tenant):
    """Only root can write the roster; if it is damaged anyway, each slice on the card holds
    itself to its own share as a hard cap, and says so."""
    t = compute_tenant
    (card,) = t.daemon.status()["cards"]
    roster = t.daemon.slices_dir.parent / "boards" / card["uuid"] / "roster"
    with open(roster, "r+b") as f:
        f.write(b"XXXXXXXX")
    share, err = run_compute(t)
    print(f"achieved share with the roster damaged: {share:.3f}")
    assert share < 0.2, (share, err)
    assert "not enforced" not in err and "hard cap" in err, err


def test_mps_mode_reaches_the_library_through_the_limits_file(tmp_path):
    """MPS mode is the runtime config's choice, written into the read-only limits file (the
    tenant's FLEXAI_COMPUTE_BY is ignored); the offset prepare.py writes is the header's."""
    from flexai_hook.oci import prepare
    from flexai_hook.reservation import Reservation

    assert prepare.LIMITS_FLAGS_OFFSET == offset("struct flexai_limits", "flags")
    assert prepare.LIMITS_F_COMPUTE_BY_MPS == region.constants().FLEXAI_LIMITS_F_COMPUTE_BY_MPS
    res = Reservation(container_id="c1", slice_id="0123456789ab", card_index=0, card_uuid="GPU-1",
                      card_name="sim", card_memory=16 * GIB, memory_bytes=GIB, compute=30, priority="normal",
                      device_paths=(), slice_dir=str(tmp_path))
    region.write_limits(tmp_path / "limits", res)
    assert region.read_limits(tmp_path / "limits")["flags"] == 0
    prepare.sliced_spec({"process": {"env": []}}, res, "/bin/hook", None, {})
    assert region.read_limits(tmp_path / "limits")["flags"] == 0
    prepare.sliced_spec({"process": {"env": []}}, res, "/bin/hook", None, {"compute_backend": "mps"})
    limits = region.read_limits(tmp_path / "limits")
    assert limits["flags"] == 1 and limits["memory_limit"] == GIB and limits["compute_limit"] == 30
