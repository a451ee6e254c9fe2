#!/usr/bin/env python3
"""flexaid under load: reserve+release round trips from many client processes at once.

Starts a private flexaid with 8 simulated cards, then for 1, 8 and 32 concurrent client
processes runs reserve+release pairs for a fixed time and reports pairs per second and the
p50/p99 latency of single requests, and where the CPU went: µs per pair and share of all
cores for flexaid's loop, its file writer and the client processes (which share the same
cores); finally drives N reservations in total and reports the daemon's resident memory.
Numbers, not pass/fail; --json for machine-readable output.

    python bench/daemon_load.py --seconds 5 --reservations 100000
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import private_flexaid


CARDS = [{"memory": "80GiB", "device": f"/dev/flexai-load{i}"} for i in range(8)]


def start_daemon(tmp: Path, run: Path) -> tuple[subprocess.Popen, str]:
    """The ledger on disk (state_dir, fsync'd as in production), slice files on tmpfs (`run`,
    as /run/flexai/slices is)."""
    return private_flexaid.start(tmp, CARDS, slices_dir=run / "slices", reconcile={"interval": 0})


def worker(args) -> tuple[int, list[float], float]:
    """One client process on one persistent connection, as a busy engine host would be.
    (pairs done, request latencies in ms, its own CPU seconds)"""
    import socket

    path, worker_id, seconds, limit = args
    cpu0 = time.process_time()
    latencies = []
    pairs = 0
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(path)
    replies = sock.makefile("rb")
    deadline = time.perf_counter() + seconds
    try:
        while time.perf_counter() < deadline and (not limit or pairs < limit):
            cid = f"load-{worker_id}-{pairs}"
            for line in (
                b'{"op":"reserve","container_id":"%s","request":{"fraction":1}}\n' % cid.encode(),
                b'{"op":"release","container_id":"%s"}\n' % cid.encode(),
            ):
                t0 = time.perf_counter()
                sock.sendall(line)
                reply = replies.readline()
                latencies.append((time.perf_counter() - t0) * 1000)
                if not reply.startswith(b'{"ok":true'):
                    raise SystemExit(f"flexaid refused: {reply[:200]!r}")
            pairs += 1
    finally:
        sock.close()
    return pairs, latencies, time.process_time() - cpu0


def children(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found += [int(c) for c in f.read().split()]
    return found


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of `pid` (not of its children), seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    """Resident memory of flexaid and its children (its file writer), MiB."""
    with open(f"/proc/{pid}/status") as f:
        own = next((int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:")), float("nan"))
    return own + sum(rss_mib(c) for c in children(pid))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per concurrency level (default 5)")
    parser.add_argument("--reservations", type=int, default=100_000, help="total reservations for the memory figure")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="flexai-load-"))
    run = Path(tempfile.mkdtemp(prefix="flexai-load-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    daemon, path = start_daemon(tmp, run)
    results = {}
    try:
        ctx = multiprocessing.get_context("fork")
        for clients in (1, 8, 32):
            with ctx.Pool(clients) as pool:
                # where the machine's CPU goes: flexaid's loop, its file writer, the clients
                # (each client process counts its own; all of them share the same cores)
                writers = children(daemon.pid)
                cpu0 = [cpu_seconds(daemon.pid), sum(cpu_seconds(w) for w in writers)]
                t0 = time.perf_counter()
                out = pool.map(worker, [(path, f"{clients}x{w}", args.seconds, 0) for w in range(clients)])
                elapsed = time.perf_counter() - t0
                cpu1 = [cpu_seconds(daemon.pid), sum(cpu_seconds(w) for w in writers)]
            lat = sorted(x for _, l, _ in out for x in l)
            pairs = sum(p for p, _, _ in out)
            results[clients] = {
                "pairs_per_second": pairs / elapsed,
                "p50_ms": statistics.median(lat),
                "p99_ms": lat[int(len(lat) * 0.99) - 1],
                "requests": len(lat),
                # CPU µs per pair and share of all cores, per party
                "cpu_us_per_pair": {"flexaid": (cpu1[0] - cpu0[0]) / pairs * 1e6,
                                    "writer": (cpu1[1] - cpu0[1]) / pairs * 1e6,
                                    "clients": sum(c for _, _, c in out) / pairs * 1e6},
                "cpu_share": {"flexaid": (cpu1[0] - cpu0[0]) / elapsed / os.cpu_count(),
                              "writer": (cpu1[1] - cpu0[1]) / elapsed / os.cpu_count(),
                              "clients": sum(c for _, _, c in out) / elapsed / os.cpu_count()},
            }
        rss_before = rss_mib(daemon.pid)
        per_client = -(-args.reservations // 32)
        with ctx.Pool(32) as pool:
            t0 = time.perf_counter()
            done = sum(p for p, _, _ in pool.map(worker, [(path, f"mem{w}", 1e9, per_client) for w in range(32)]))
            mem_elapsed = time.perf_counter() - t0
        memory = {"reservations": done, "rss_mib_before": rss_before, "rss_mib_after": rss_mib(daemon.pid),
                  "seconds": mem_elapsed}
    finally:
        private_flexaid.stop(daemon, CARDS)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(run, ignore_errors=True)
    if args.json:
        print(json.dumps({"concurrency": results, "memory": memory}, indent=2))
        return 0
    print(f"{'clients':>7} {'pairs/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'requests':>9}   "
          f"CPU µs/pair flexaid+writer+clients (share of {os.cpu_count()} cores)")
    for clients, r in results.items():
        us, share = r["cpu_us_per_pair"], r["cpu_share"]
        print(f"{clients:>7} {r['pairs_per_second']:>9.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['requests']:>9}   "
              f"{us['flexaid']:.0f}+{us['writer']:.0f}+{us['clients']:.0f} "
              f"({share['flexaid']:.0%}+{share['writer']:.0%}+{share['clients']:.0%})")
    print(f"\nafter {memory['reservations']} reservations ({memory['seconds']:.0f} s): flexaid RSS "
          f"{memory['rss_mib_before']:.1f} -> {memory['rss_mib_after']:.1f} MiB (target < 100 MiB); "
          f"p99 target < 5 ms at 32 clients")
    return 0


if __name__ == "__main__":
    sys.exit(main())
