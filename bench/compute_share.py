#!/usr/bin/env python3
"""Achieved vs requested compute share of sliced processes on one simulated card.

Each slice is a process running tests/clients/compute_client (CUDA's driver API through
dlopen'd libcuda.so.1, or AscendCL through dlopen'd libascendcl.so -- the simulated ones --
with libflexai.so preloaded and FLEXAI_COMPUTE=<share>), saturating the card with spin kernels
of a known length. Every scenario runs once per runtime (--driver): the CUDA and Ascend
columns of the same table. The clients count the device time of
the kernels they launched themselves (by launch time, in 50 ms buckets), so the figures do
not depend on libflexai's own measurement. Scenarios (issue 6): 30/70, 10/90, 20/30/50 and
5/95 with kernels of 50 us, 1 ms, 20 ms and mixed lengths; a 30/70 pair with grids of 1 to
8192 blocks; a lone hard slice; a lone work-conserving slice; high vs low priority latency;
and the throughput of one unlimited slice with the library vs without (alternating runs).

    python bench/compute_share.py                 # everything, CUDA and Ascend, ~4 min
    python bench/compute_share.py --quick         # fewer scenarios, shorter runs
    python bench/compute_share.py --driver acl    # only the Ascend (ACL) column
    python bench/compute_share.py --pattern "4 threads closed" --driver cuda   # one client pattern
    python bench/compute_share.py --json          # machine-readable
    python bench/compute_share.py --baseline      # also each share scenario without libflexai

Achieved share: a slice's device time in the measured window (after --warmup) over the
device time of all slices in it. Converge: first time after which every slice's cumulative
share since the start stays within 2 points of its target. Numbers, not pass/fail.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flexai_hook.install import cbuild  # noqa: E402
from flexai_hook.devices.simcards import SimCard, write_sim_dir  # noqa: E402

LIB = ROOT / "flexai_hook" / "lib"
CLIENT_SRC = ROOT / "tests" / "clients" / "compute_client.c"
CARDS = {"cuda": SimCard(0, "GPU-f1e0a100-0000-4000-8000-0000000000b0", 80 << 30, "flexai bench card"),
         "acl": SimCard(0, "NPU-f1e0a100-0000-4000-8000-0000000000b0", 64 << 30, "flexai bench Ascend card")}
DRIVERS = ("cuda", "acl")
TOL = 2.0

KERNELS = {"50us": ("50",), "1ms": ("1000",), "20ms": ("20000",),
           "mixed": ("50+1000+20000", "20000+50", "1000+50+20000")}
SHARES = [(30, 70), (10, 90), (20, 30, 50), (5, 95)]
GRIDS = [1, 108, 1024, 8192]


def build(tmp: Path) -> Path:
    cbuild.build(LIB)
    out = tmp / "compute_client"
    cc = shlex.split(sysconfig.get_config_var("CC") or "cc")
    subprocess.run([*cc, "-std=gnu11", "-O2", "-D_GNU_SOURCE", str(CLIENT_SRC), "-o", str(out), "-ldl"],
                   check=True)
    return out


class Run:
    """One scenario: a fresh simulator directory and board directory, its client processes
    (stopped by pid whatever happens)."""

    def __init__(self, tmp: Path, client: Path, name: str, driver: str):
        self.dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=tmp))
        self.sim = write_sim_dir(self.dir / "sim", [CARDS[driver]])
        self.boards = self.dir / "boards"
        self.boards.mkdir()
        self.client = client
        self.procs: list[subprocess.Popen] = []

    def env(self, slice_no: int, share: int | None, priority: str = "normal", mode: str = "") -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEXAI_")}
        env.update(LD_LIBRARY_PATH=str(LIB / "sim"), FLEXAI_SIM_DIR=str(self.sim))
        env.pop("LD_PRELOAD", None)
        if share is not None:
            env.update(LD_PRELOAD=str(LIB / "libflexai.so"), FLEXAI_COMPUTE=str(share),
                       FLEXAI_PRIORITY=priority, FLEXAI_BOARD_DIR=str(self.boards),
                       FLEXAI_REGION=str(self.dir / f"region-{slice_no}"))
            if mode:
                env["FLEXAI_COMPUTE_MODE"] = mode
        return env

    def start(self, args: list[str], env: dict) -> subprocess.Popen:
        proc = subprocess.Popen([str(self.client), *args], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        self.procs.append(proc)
        return proc

    def results(self, timeout: float) -> list[dict]:
        out = []
        for proc in self.procs:
            stdout, stderr = proc.communicate(timeout=timeout)
            if proc.returncode != 0:
                raise RuntimeError(f"client failed ({proc.returncode}): {stderr.strip()}")
            out.append(json.loads(stdout))
        return out

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def run_slices(tmp: Path, client: Path, driver: str, name: str, slices: list[dict], seconds: float,
               limited: bool = True) -> list[dict]:
    run = Run(tmp, client, name, driver)
    try:
        start_at = time.monotonic_ns() + 400_000_000
        for i, s in enumerate(slices):
            args = ["--driver", driver, "--kernel-us", s["kernel"], "--blocks", str(s.get("blocks", 1)),
                    "--seconds", str(seconds), "--start-at", str(start_at), "--api", s.get("api", "launch")]
            if s.get("closed"):
                args += ["--closed", "--think-us", str(s.get("think_us", 0))]
            if s.get("sync_every"):
                args += ["--sync-every", str(s["sync_every"])]
            if s.get("switch_at"):
                args += ["--switch-at", str(s["switch_at"])]
            if s.get("threads"):
                args += ["--threads", str(s["threads"])]
            env = run.env(i, s["share"] if limited else None, s.get("priority", "normal"), s.get("mode", ""))
            for _ in range(s.get("procs", 1)):  # processes of one slice share its region
                run.start(args, env)
        results = run.results(timeout=seconds + 60)
        # one result per slice: its processes' device time added up
        out, at = [], 0
        for s in slices:
            mine, at = results[at:at + s.get("procs", 1)], at + s.get("procs", 1)
            merged = dict(mine[0])
            merged["buckets"] = [sum(b) for b in zip(*(r["buckets"] for r in mine))]
            merged["launches"] = sum(r["launches"] for r in mine)
            out.append(merged)
        return out
    finally:
        run.stop()


def shares_of(results: list[dict], warmup: float) -> tuple[list[float], float]:
    bucket_ns = results[0]["bucket_ns"]
    first = int(warmup * 1e9 // bucket_ns)
    n = min(len(r["buckets"]) for r in results)
    busy = [sum(r["buckets"][first:n - 1]) for r in results]
    total = sum(busy) or 1
    window = (n - 1 - first) * bucket_ns
    return [100.0 * b / total for b in busy], 100.0 * sum(busy) / window


def converge_ms(results: list[dict], targets: list[float]) -> float | None:
    bucket_ns = results[0]["bucket_ns"]
    n = min(len(r["buckets"]) for r in results) - 1
    cum = [0.0] * len(results)
    last_bad = 0
    for b in range(n):
        for i, r in enumerate(results):
            cum[i] += r["buckets"][b]
        total = sum(cum)
        if total and any(abs(100.0 * c / total - t) > TOL for c, t in zip(cum, targets)):
            last_bad = b + 1
    return None if last_bad >= n else last_bad * bucket_ns / 1e6


def share_scenario(tmp, client, driver, label, shares, kernels, seconds, warmup, limited=True, blocks=1):
    slices = [{"share": s, "kernel": kernels[i % len(kernels)], "blocks": blocks} for i, s in enumerate(shares)]
    results = run_slices(tmp, client, driver, label.replace("/", "-"), slices, seconds, limited)
    got, util = shares_of(results, warmup)
    total = sum(shares)
    targets = [100.0 * s / total for s in shares]
    return {
        "driver": driver, "scenario": label, "limited": limited, "blocks": blocks, "targets": targets,
        "achieved": [round(g, 2) for g in got],
        "error_points": round(max(abs(g - t) for g, t in zip(got, targets)), 2),
        "converge_ms": converge_ms(results, targets), "utilization": round(util, 1),
    }


# Client patterns (issue 16): how each slice drives the card. "closed": launch one kernel,
# synchronise, repeat; "burst16": 16 kernels then synchronise; "saturating": kernels kept
# queued; "2 procs": two closed-loop processes in one slice; "4 threads": four closed-loop
# threads (a stream each) in one process per slice; "closed→sat": closed loop for half the
# run, then saturating.
PATTERNS = {
    "closed": ({"closed": True, "kernel": "1000"}, {"closed": True, "kernel": "1000"}),
    "burst16 100us": ({"sync_every": 16, "kernel": "100"}, {"sync_every": 16, "kernel": "100"}),
    "closed+sat": ({"closed": True, "kernel": "1000"}, {"kernel": "1000"}),
    "sat+closed": ({"kernel": "1000"}, {"closed": True, "kernel": "1000"}),
    "2 procs closed": ({"closed": True, "kernel": "1000", "procs": 2}, {"closed": True, "kernel": "1000", "procs": 2}),
    "4 threads closed": ({"closed": True, "kernel": "1000", "threads": 4}, {"closed": True, "kernel": "1000", "threads": 4}),
    "closed→sat": ({"closed": True, "kernel": "1000", "switch_at": "HALF"}, {"closed": True, "kernel": "1000"}),
}


def pattern_scenario(tmp, client, driver, name, shares, seconds, warmup):
    """One pattern at `shares`, with libflexai and without: share error, convergence, and the
    card's busy % beside the same clients' without flexai."""
    slices = []
    for share, spec in zip(shares, PATTERNS[name]):
        s = {**spec, "share": share}
        if s.get("switch_at") == "HALF":
            s["switch_at"] = seconds / 2
        slices.append(s)
    label = f"{name} {'/'.join(map(str, shares))}"
    results = run_slices(tmp, client, driver, "pattern", slices, seconds)
    got, util = shares_of(results, warmup)
    _, util_without = shares_of(run_slices(tmp, client, driver, "pattern", slices, seconds, limited=False), warmup)
    targets = [100.0 * s / sum(shares) for s in shares]
    return {"driver": driver, "scenario": label, "targets": targets, "achieved": [round(g, 2) for g in got],
            "error_points": round(max(abs(g - t) for g, t in zip(got, targets)), 2),
            "converge_ms": converge_ms(results, targets), "utilization": round(util, 1),
            "utilization_without": round(util_without, 1)}


def lone(tmp, client, driver, mode, seconds, warmup):
    results = run_slices(tmp, client, driver, f"lone-{mode}", [{"share": 30, "kernel": "1000", "mode": mode}], seconds)
    r = results[0]
    first = int(warmup * 1e9 // r["bucket_ns"])
    n = len(r["buckets"]) - 1
    used = 100.0 * sum(r["buckets"][first:n]) / ((n - first) * r["bucket_ns"])
    return {"driver": driver, "scenario": f"lone {mode or 'work-conserving'} 30%", "target": 30 if mode == "hard" else 100,
            "card_share": round(used, 2)}


def priority(tmp, client, driver, seconds):
    high = {"share": 50, "kernel": "1000", "priority": "high", "closed": True, "think_us": 2000}
    low = {"share": 50, "kernel": "100", "priority": "low"}
    alone = run_slices(tmp, client, driver, "prio-alone", [high], seconds)[0]
    both = run_slices(tmp, client, driver, "prio-both", [high, low], seconds)
    return {"driver": driver, "scenario": "high (1 ms, closed loop) beside low (100 us, saturating)",
            "alone_mean_us": alone.get("lat_mean_us"), "with_low_mean_us": both[0].get("lat_mean_us"),
            "alone_p99_us": alone.get("lat_p99_us"), "with_low_p99_us": both[0].get("lat_p99_us"),
            "ratio_mean": round(both[0]["lat_mean_us"] / alone["lat_mean_us"], 3)
            if alone.get("lat_mean_us") else None}


def overhead(tmp, client, driver, seconds, rounds):
    rows = {}
    for kernel in ("50", "4"):
        with_lib, without = [], []
        for _ in range(rounds):
            for limited, sink in ((False, without), (True, with_lib)):
                r = run_slices(tmp, client, driver, "overhead", [{"share": 100, "kernel": kernel}], seconds,
                               limited)[0]
                sink.append(r["launches"] / (r["wall_ns"] / 1e9))
        a, b = statistics.median(without), statistics.median(with_lib)
        rows[f"{driver} {kernel}us"] = {"launches_per_s_without": round(a), "launches_per_s_with": round(b),
                               "overhead_percent": round(100.0 * (a - b) / a, 2)}
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--baseline", action="store_true", help="also run each share scenario without libflexai")
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--patterns", action="store_true",
                    help="only the client-pattern scenarios (closed loops, bursts, mixes; issue 16)")
    ap.add_argument("--pattern", action="append", choices=tuple(PATTERNS), metavar="NAME",
                    help="with --patterns: only this pattern (repeatable; one of: "
                         + ", ".join(PATTERNS) + ")")
    ap.add_argument("--driver", choices=(*DRIVERS, "both"), default="both",
                    help="the runtime the clients launch through: cuda, acl (Ascend) or both (default)")
    args = ap.parse_args()
    if args.pattern:
        args.patterns = True
    drivers = DRIVERS if args.driver == "both" else (args.driver,)
    seconds = args.seconds or (2.0 if args.quick else 4.0)
    warmup = min(1.0, seconds / 3)
    tmp = Path(tempfile.mkdtemp(prefix="flexai-compute-bench-"))
    report: dict = {"seconds": seconds, "warmup": warmup, "shares": [], "grids": [], "lone": [],
                    "priority": [], "overhead": {}, "patterns": []}
    try:
        client = build(tmp)
        for name in args.pattern or PATTERNS:
            for shares in ((10, 90), (30, 70)):
                for driver in drivers:
                    report["patterns"].append(pattern_scenario(tmp, client, driver, name, shares, seconds, warmup))
        if args.patterns:
            kernel_sets, blocks_list, drivers_rest = {}, [], ()
        else:
            kernel_sets = {"1ms": KERNELS["1ms"], "mixed": KERNELS["mixed"]} if args.quick else KERNELS
            blocks_list, drivers_rest = ([1, 8192] if args.quick else GRIDS), drivers
        for shares in SHARES if kernel_sets else ():
            for kname, kernels in kernel_sets.items():
                label = "/".join(map(str, shares))
                for driver in drivers:
                    for limited in ((True, False) if args.baseline else (True,)):
                        row = share_scenario(tmp, client, driver, label, shares, kernels, seconds, warmup, limited)
                        row["kernel"] = kname
                        report["shares"].append(row)
        for blocks in blocks_list:
            for driver in drivers:
                row = share_scenario(tmp, client, driver, "30/70", (30, 70), ("1000",), seconds, warmup, True, blocks)
                row["kernel"] = "1ms"
                report["grids"].append(row)
        for driver in drivers_rest:
            report["lone"] += [lone(tmp, client, driver, "", seconds, warmup),
                               lone(tmp, client, driver, "hard", seconds, warmup)]
            report["priority"].append(priority(tmp, client, driver, seconds))
            report["overhead"].update(overhead(tmp, client, driver, min(seconds, 2.0), 1 if args.quick else 3))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"compute share on one simulated card ({seconds:.1f} s runs, window after {warmup:.1f} s)")
    print(f"{'driver':<6} {'scenario':<10} {'kernel':<7} {'blocks':>6} {'lib':<4} {'target':<18} "
          f"{'achieved':<24} {'err pts':>7} {'converge':>9} {'util%':>6}")
    for row in report["shares"] + report["grids"]:
        conv = "-" if row["converge_ms"] is None else f"{row['converge_ms']:.0f} ms"
        print(f"{row['driver']:<6} {row['scenario']:<10} {row['kernel']:<7} {row['blocks']:>6} "
              f"{'yes' if row['limited'] else 'no':<4} "
              f"{'/'.join(f'{t:.0f}' for t in row['targets']):<18} "
              f"{'/'.join(f'{a:.1f}' for a in row['achieved']):<24} {row['error_points']:>7.2f} "
              f"{conv:>9} {row['utilization']:>6.1f}")
    if report["patterns"]:
        print(f"\nclient patterns (issue 16): {'driver':<6} {'scenario':<24} {'achieved':<12} {'err pts':>7} "
              f"{'converge':>9} {'busy%':>6} {'without':>8}")
        for row in report["patterns"]:
            conv = "-" if row["converge_ms"] is None else f"{row['converge_ms']:.0f} ms"
            print(f"{'':<27}{row['driver']:<6} {row['scenario']:<24} "
                  f"{'/'.join(f'{a:.1f}' for a in row['achieved']):<12} {row['error_points']:>7.2f} "
                  f"{conv:>9} {row['utilization']:>6.1f} {row['utilization_without']:>8.1f}")
    for row in report["lone"]:
        print(f"{row['driver']}: {row['scenario']}: {row['card_share']:.1f} % of the card (target {row['target']})")
    for p in report["priority"]:
        print(f"{p['driver']}: priority: {p['scenario']}: mean {p['alone_mean_us']} us alone, "
              f"{p['with_low_mean_us']} us beside low (x{p['ratio_mean']}); "
              f"p99 {p['alone_p99_us']} / {p['with_low_p99_us']} us")
    for k, row in report["overhead"].items():
        print(f"overhead, unlimited slice, {k} kernels: {row['launches_per_s_without']}/s without, "
              f"{row['launches_per_s_with']}/s with libflexai ({row['overhead_percent']:+.2f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
