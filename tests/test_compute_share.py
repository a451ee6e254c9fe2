"""Compute shares end to end: sliced processes (libflexai preloaded) saturating one simulated card.

Each slice runs tests/clients/compute_client (CUDA's driver API through dlopen'd libcuda.so.1,
or AscendCL through dlopen'd libascendcl.so: the simulated ones; the share tests run for
both, with the same bounds): spin kernels of known length, device time counted by the client
itself per 50 ms bucket of launch time. Shares are fractions of the card's busy time over a window, in
the simulator's time (the shared card timeline), so they do not depend on how fast this
machine is; no test asserts a wall-clock duration.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flexai_hook.devices import region as region_mod
from libflexai_support import CLIENTS, Sim, libs  # noqa: F401  (fixture)

# One rerun per test: in 2 of ~6 full-suite runs on this 2-core VM one two-slice scenario
# measured exactly 50/50 (the controller apparently not acting, nothing on stderr), never in
# 86 isolated runs of the same pair. The cause is not found yet (see the closing note of
# 2026-12-02); a real regression fails both runs.
pytestmark = pytest.mark.flaky(reruns=1)

TOL = 5.0  # percentage points over a 5 s window (issue 6)
BUCKET_NS = 50_000_000


@pytest.fixture(scope="module")
def compute_client(tmp_path_factory) -> str:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler (apt-get install gcc)")
    out = tmp_path_factory.mktemp("compute") / "compute_client"
    subprocess.run([cc, "-O2", "-Wall", "-Werror", "-D_GNU_SOURCE", "-o", str(out),
                    str(CLIENTS / "compute_client.c"), "-ldl"], check=True, capture_output=True)
    return str(out)


class Slices:
    """Client processes of one test (on `driver`: cuda or acl); every one is killed by pid at
    the end."""

    def __init__(self, tmp: Path, libs, client: str, driver: str = "cuda"):
        self.tmp, self.libs, self.client, self.driver = tmp, libs, client, driver
        self.sim = Sim(tmp / "sim", memories=(16 << 30,))
        self.boards = tmp / "boards"
        self.boards.mkdir()
        self.procs: list[subprocess.Popen] = []
        self.start_at = 0

    def region(self, i: int) -> Path:
        return self.tmp / f"region-{i}"

    def start(self, specs: list[dict], seconds: float) -> None:
        self.start_at = time.monotonic_ns() + 500_000_000
        for i, s in enumerate(specs):
            env = self.sim.env(self.libs, compute=s["share"], priority=s.get("priority", "normal"),
                               region=self.region(i), board_dir=self.boards)
            if s.get("mode"):
                env["FLEXAI_COMPUTE_MODE"] = s["mode"]
            args = [self.client, "--driver", self.driver, "--kernel-us", s.get("kernel", "1000"),
                    "--seconds", str(s.get("seconds", seconds)),
                    "--start-at", str(self.start_at), "--api", s.get("api", "launch"),
                    "--blocks", str(s.get("blocks", 1))]
            if s.get("closed"):
                args += ["--closed", "--think-us", str(s.get("think_us", 0))]
            if s.get("sync_every"):
                args += ["--sync-every", str(s["sync_every"])]
            if s.get("threads"):
                args += ["--threads", str(s["threads"])]
            if s.get("graph_nodes"):
                args += ["--graph-nodes", str(s["graph_nodes"])]
            if s.get("side_capture"):
                args += ["--side-capture"]
            self.procs.append(subprocess.Popen(args, env=env, stdout=subprocess.PIPE,
                                               stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True))

    def results(self, timeout: float = 120) -> list[dict]:
        out = []
        for p in self.procs:
            stdout, stderr = p.communicate(timeout=timeout)
            assert p.returncode == 0, stderr
            out.append(json.loads(stdout))
        return out

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                p.communicate(timeout=10)
            except (subprocess.TimeoutExpired, ValueError):
                pass


@pytest.fixture(params=["cuda", "acl"])
def driver(request) -> str:
    return request.param


@pytest.fixture
def slices(tmp_path, libs, compute_client, driver):  # noqa: F811
    s = Slices(tmp_path, libs, compute_client, driver)
    yield s
    s.stop()


def window_shares(results, start_s: float, end_s: float) -> tuple[list[float], float]:
    a, b = int(start_s * 1e9 // BUCKET_NS), int(end_s * 1e9 // BUCKET_NS)
    busy = [sum(r["buckets"][a:b]) for r in results]
    total = sum(busy)
    assert total > 0, results
    return [100.0 * x / total for x in busy], 100.0 * total / ((b - a) * BUCKET_NS)


@pytest.mark.parametrize("shares, kernels", [
    ((30, 70), ("1000", "1000")),
    ((20, 30, 50), ("20000", "1000", "50")),
], ids=["30/70", "20/30/50-mixed"])
def test_saturating_slices_get_their_shares_over_5s(slices, shares, kernels):
    slices.start([{"share": s, "kernel": k} for s, k in zip(shares, kernels)], seconds=6)
    got, util = window_shares(slices.results(), 1.0, 6.0)
    for target, share in zip(shares, got):
        assert abs(share - target) <= TOL, (shares, got)
    assert util > 80, util
    # what `flexai status` shows: the share the library measured over its last full window
    for i, target in enumerate(shares):
        measured = region_mod.read_region(slices.region(i)).to_json()["share_percent"]
        assert abs(measured - target) <= 2 * TOL, (i, measured, target)


@pytest.mark.parametrize("shares", [(10, 90), (30, 70)], ids=["10/90", "30/70"])
@pytest.mark.parametrize("pattern", [
    ({"closed": True}, {"closed": True}),
    ({"sync_every": 16, "kernel": "100"}, {"sync_every": 16, "kernel": "100"}),
    ({"closed": True}, {}),
    ({"closed": True, "threads": 2}, {"closed": True, "threads": 2}),
    ({"closed": True, "threads": 4}, {"closed": True, "threads": 4}),
], ids=["closed", "burst16-100us", "closed+saturating", "2-threads-closed", "4-threads-closed"])
def test_synchronising_slices_get_their_shares(slices, shares, pattern):
    """Closed loops (issue 16): each client waits for its work before launching again, so its
    queue is empty between launches; that must not cost it the turn at every synchronisation
    (before, 10/90 and 30/70 both landed near 35/65). The threads of one slice take turns:
    each of them progresses."""
    slices.start([{"share": s, **p} for s, p in zip(shares, pattern)], seconds=6)
    results = slices.results()
    got, util = window_shares(results, 1.0, 6.0)
    for target, share in zip(shares, got):
        assert abs(share - target) <= TOL, (shares, got)
    for r in results:
        per_thread = r["thread_launches"]
        assert min(per_thread) >= 0.5 * sum(per_thread) / len(per_thread), per_thread
    # a sanity bound only: closed loops on a wall-clock simulator leave the card idle while
    # their threads wait for a CPU, which a loaded 2-core CI host cannot promise (the busy %
    # against the same clients without flexai is bench/compute_share.py --patterns' figure)
    assert util > 50, util


def test_a_waiting_slice_sleeps_instead_of_polling(slices):
    """While another slice holds the card, a waiting thread sleeps on the holder's word until
    the turn comes (issue 16). Two 50 % slices of 20 ms kernels each wait half of a 4 s run:
    in 50 us polls that was ~8 000 sleeps a second per process (and 20 % of a CPU); now it is
    the ~2 000 of the waits for its own kernels plus a few per handover."""
    slices.start([{"share": 50, "kernel": "20000"}, {"share": 50, "kernel": "20000"}], seconds=4)
    results = slices.results()
    got, _ = window_shares(results, 1.0, 4.0)
    for share in got:
        assert abs(share - 50) <= TOL, got
    for r in results:
        assert r["voluntary_switches"] / (r["wall_ns"] / 1e9) < 4000, r["voluntary_switches"]


@pytest.mark.parametrize("driver, apis", [
    ("cuda", ("graph", "ex")),
    ("cuda", ("ptsz", "coop")),
    ("acl", ("v2", "cfg")),
    ("acl", ("hostargs", "launch")),
], indirect=["driver"], ids=["cuda-graph/ex", "cuda-ptsz/coop", "acl-v2/cfg", "acl-hostargs/launch"])
def test_every_launch_entry_point_is_limited(slices, apis):
    slices.start([{"share": 30, "kernel": "500", "api": apis[0]},
                  {"share": 70, "kernel": "500", "api": apis[1]}], seconds=4)
    got, _ = window_shares(slices.results(), 1.0, 4.0)
    assert abs(got[0] - 30) <= TOL and abs(got[1] - 70) <= TOL, got


def test_lone_hard_slice_stays_at_its_cap(slices):
    slices.start([{"share": 30, "kernel": "1000", "mode": "hard"}], seconds=3)
    _, util = window_shares(slices.results(), 1.0, 3.0)
    assert abs(util - 30) <= TOL, util


def test_lone_work_conserving_slice_gets_the_whole_card(slices):
    slices.start([{"share": 30, "kernel": "1000"}], seconds=3)
    _, util = window_shares(slices.results(), 1.0, 3.0)
    assert util > 95, util


# A tenant with a shell can map every slot file of its card (read-only) and issue futex wakes on
# their `hold` words at any rate: the waiters of other slices sleep there.
FUTEX_SPAMMER = r"""
import ctypes, glob, mmap, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.syscall.restype = ctypes.c_long
HOLD = 72  # offsetof(struct flexai_board_slot, hold): its low half on x86_64
boards, seconds = sys.argv[1], float(sys.argv[2])
addrs, sent, woken, end = {}, 0, 0, time.monotonic() + seconds
while time.monotonic() < end:
    for path in glob.glob(os.path.join(boards, "*", "*")):
        if not path.endswith("roster") and path not in addrs:
            fd = os.open(path, os.O_RDONLY)
            addrs[path] = libc.mmap(None, 4096, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            os.close(fd)
    for a in addrs.values():
        woken += max(0, libc.syscall(202, ctypes.c_void_p(a + HOLD), 1, 0x7FFFFFFF, None, None, 0))
        sent += 1
print(sent, woken)
"""


def test_futex_wakes_from_another_tenant_cost_a_waiter_bounded_sleeps(slices, tmp_path):
    """A waiter woken with nothing changed waits again, and after four such wakes sleeps out
    its wait (at most 1 ms) without looking: a spammer buys at most five wake-ups per wait.
    Measured here: the spammed waiters made ~3 600 sleeps a second (1 800 unspammed); with the
    bound removed, 11 000 and three times the CPU."""
    spammer = tmp_path / "spam.py"
    spammer.write_text(FUTEX_SPAMMER)
    slices.start([{"share": 50, "kernel": "20000"}, {"share": 50, "kernel": "20000"}], seconds=4)
    spam = subprocess.Popen([sys.executable, str(spammer), str(slices.boards), "4.5"],
                            stdout=subprocess.PIPE, text=True)
    try:
        results = slices.results()
        sent, woken = map(int, spam.communicate(timeout=60)[0].split())
    finally:
        if spam.poll() is None:
            spam.kill()
            spam.wait()
    assert woken > 1000, (sent, woken)  # the attack reached sleeping waiters
    got, _ = window_shares(results, 1.0, 4.0)
    for share in got:
        assert abs(share - 50) <= TOL, got
    for r in results:
        assert r["voluntary_switches"] / (r["wall_ns"] / 1e9) < 6000, (r["voluntary_switches"], sent, woken)


def test_a_slice_that_exits_holding_the_turn_leaves_the_card_to_the_other(slices):
    """Work conservation with waiters asleep on the holder's word: a 90 % closed loop exits at
    2 s (its turn held, no release, no wake-up); the 10 % slice asleep on that word must notice
    the holder is gone (its beat and booked work over) and take the whole card."""
    slices.start([{"share": 90, "kernel": "1000", "closed": True, "seconds": 2},
                  {"share": 10, "kernel": "1000", "seconds": 4}], seconds=4)
    results = slices.results()
    got, _ = window_shares(results, 1.0, 2.0)
    assert abs(got[0] - 90) <= TOL, got
    _, util = window_shares(results[1:], 2.5, 4.0)
    assert util > 95, util


def test_high_priority_latency_beside_a_saturating_low_slice(slices, tmp_path, libs, compute_client, driver):  # noqa: F811
    high = {"share": 50, "kernel": "2000", "priority": "high", "closed": True, "think_us": 3000}
    slices.start([high], seconds=2)
    alone = slices.results()[0]
    other = Slices(tmp_path / "pair", libs, compute_client, driver)
    try:
        other.start([high, {"share": 50, "kernel": "100", "priority": "low"}], seconds=3)
        with_low = other.results()[0]
    finally:
        other.stop()
    assert with_low["lat_mean_us"] <= 1.5 * alone["lat_mean_us"], (alone, with_low)


def test_share_changed_in_the_region_takes_effect_within_a_second(slices):
    slices.start([{"share": 30, "kernel": "1000"}, {"share": 70, "kernel": "1000"}], seconds=5)
    # at 2 s (simulator/host monotonic time), swap the shares through the region
    change_at = slices.start_at + 2_000_000_000
    while time.monotonic_ns() < change_at:
        time.sleep(0.01)
    for i, share in enumerate((70, 30)):
        deadline = time.monotonic() + 10
        while not slices.region(i).exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        region_mod.set_compute(slices.region(i), limit_percent=share)
    results = slices.results()
    got, _ = window_shares(results, 3.0, 5.0)  # from one second after the change
    assert abs(got[0] - 70) <= TOL and abs(got[1] - 30) <= TOL, got


# ---- containers: flexai-runtime + real runc + flexaid on a simulated card -----------------


@pytest.fixture
def card_daemon(request, make_daemon):
    """flexaid with one simulated 16 GiB card: NVIDIA, or Ascend (device nodes made by the
    simulator under a fresh /dev directory, removed afterwards)."""
    if request.param == "cuda":
        yield make_daemon(memories=("16GiB",))
        return
    if os.geteuid() != 0:
        pytest.skip("simulated Ascend device nodes need root")
    import secrets
    dev_dir = f"/dev/flexai-test-ascend-{secrets.token_hex(3)}"
    try:
        yield make_daemon(simulated={"cards": [{"name": "sim Ascend 910B", "memory": "16GiB", "kind": "ascend",
                                                "device": f"{dev_dir}/davinci0"}]})
    finally:
        shutil.rmtree(dev_dir, ignore_errors=True)


@pytest.mark.parametrize("card_daemon", ["cuda", "acl"], indirect=True)
def test_two_sliced_containers_share_the_card_30_70(libs, compute_client, runc, card_daemon, make_bundle,  # noqa: F811
                                                    request):
    """FLEXAI_FRACTION=0.3 and 0.7 containers, each saturating the card with 1 ms kernels: the
    card boards are mounted into both, so their controllers share the card 30/70 (CUDA and
    ACL programs alike)."""
    import threading

    from test_libflexai_e2e import dynamic_bundle
    from test_runtime_runc import run_to_files, runtime

    if not os.path.exists("/lib64/ld-linux-x86-64.so.2") or not os.path.isdir("/lib/x86_64-linux-gnu"):
        pytest.skip("this test builds its rootfs from an x86_64 Debian-style host glibc")
    daemon = card_daemon
    driver = request.node.callspec.params["card_daemon"]
    start_at = time.monotonic_ns() + 3_000_000_000  # CLOCK_MONOTONIC is the same inside the containers
    seconds = 6
    bundles = {}
    for cid, fraction in (("share30", "0.3"), ("share70", "0.7")):
        bundle = dynamic_bundle(make_bundle, compute_client, ["/bin/flexai_client", "--driver", driver,
                                "--kernel-us", "1000",
                                "--seconds", str(seconds), "--start-at", str(start_at)],
                                [f"FLEXAI_FRACTION={fraction}"])
        bundles[cid] = bundle
    results: dict[str, subprocess.CompletedProcess] = {}

    def go(cid):
        results[cid] = runtime(runc, daemon, "run", "--bundle", str(bundles[cid]), cid, timeout=120)

    threads = [threading.Thread(target=go, args=(cid,)) for cid in bundles]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(150)
    finally:
        for cid in bundles:  # stop whatever is left, by id
            run_to_files([runc.binary, "--root", str(runc.root), "delete", "--force", cid], timeout=30)
    out = {}
    for cid, done in results.items():
        assert done.returncode == 0, done.stdout + done.stderr
        out[cid] = json.loads(done.stdout.strip().splitlines()[-1])
    got, util = window_shares([out["share30"], out["share70"]], 1.0, float(seconds))
    assert abs(got[0] - 30) <= TOL and abs(got[1] - 70) <= TOL, (got, util)
