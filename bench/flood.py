#!/usr/bin/env python3
"""A legitimate reserve+release while flexaid is flooded with idle connections (issue 14, attack 3).

Starts a private flexaid over one simulated card with RLIMIT_NOFILE at the unit's
LimitNOFILE (16384), measures root reserve+release pairs on a quiet daemon, then while
5 socket-group uids hold 16 500 idle connections between them, and prints both with the
daemon's CPU share and log growth over the flooded run. With --starts N it also times N
sliced container starts (`flexai-runtime create` of a busybox bundle through the installed
C front door and runc; the container is deleted untimed) quiet and flooded. Needs root (the
flood drops to other uids). Numbers, not pass/fail.

    sudo python bench/flood.py                       # this checkout
    sudo python bench/flood.py --tree /path/to/old   # another source tree's flexaid (before/after)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flexai_hook import client

FLOODER = r"""
import os, resource, socket, sys, time
sock_dir, name, uid, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
os.chdir(sock_dir); os.setgroups([]); os.setgid(65534); os.setuid(uid)
held, deadline = [], time.monotonic() + 60
while len(held) < count and time.monotonic() < deadline:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.setblocking(False)
    try:
        s.connect(name)
    except BlockingIOError:
        s.close(); time.sleep(0.002); continue
    except OSError:
        break
    held.append(s)
print("ready", len(held), flush=True)
sys.stdin.read()
"""


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pairs(sock: str, n: int, timeout: float) -> tuple[list[float], int]:
    """Latencies (ms) of n reserve+release pairs, each on a fresh connection as a runtime's
    and a hook's are; and how many failed (timed out or refused). Three failures in a row end it."""
    out, failed, streak = [], 0, 0
    for i in range(n):
        cid = f"bench-{i}"
        start = time.perf_counter()
        try:
            client.call({"op": "reserve", "container_id": cid, "request": {"fraction": 10}}, sock, timeout)
            client.call({"op": "release", "container_id": cid}, sock, timeout)
        except (client.DaemonUnavailable, client.DaemonRefused):
            failed += 1
            streak += 1
            if streak == 3:
                failed += n - i - 1
                break
            continue
        streak = 0
        out.append((time.perf_counter() - start) * 1000)
    return out, failed


def starts(sock: str, n: int, work: Path, tag: str) -> tuple[list[float], int]:
    """Latencies (ms) of n `flexai-runtime create` runs of a sliced busybox bundle, and failures."""
    import shutil

    from flexai_hook.oci import bundle

    runc = shutil.which("runc")
    runtime = Path(sys.executable).parent / "flexai-runtime"
    rootfs = work / "rootfs"
    if not rootfs.exists():
        bundle.make_rootfs(rootfs)
    env = {**os.environ, "FLEXAI_SOCKET": sock, "FLEXAI_RUNTIME": runc or "runc",
           "FLEXAI_RUNTIME_CONFIG": "/nonexistent"}
    root = work / "runc-root"
    out, failed = [], 0
    for i in range(n):
        cid = f"{tag}-{i}"
        b = work / cid
        bundle.make_bundle(b, ["true"], env=["FLEXAI_FRACTION=0.1"], rootfs_from=rootfs)
        t0 = time.perf_counter()
        rc = subprocess.run([str(runtime), "--root", str(root), "create", "--bundle", str(b), cid], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
        elapsed = (time.perf_counter() - t0) * 1000
        subprocess.run([str(runtime), "--root", str(root), "delete", "--force", cid], env=env,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if rc == 0:
            out.append(elapsed)
        else:
            failed += 1
    return out, failed


def row(label: str, lat: list[float], failed: int, extra: str = "") -> str:
    if not lat:
        return f"| {label} | - | - | {failed} | {extra} |"
    q = statistics.quantiles(lat, n=100) if len(lat) > 1 else [lat[0]] * 99
    return f"| {label} | {statistics.median(lat):.2f} ms | {q[98]:.2f} ms | {failed} | {extra} |"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", help="run flexaid from this source tree (PYTHONPATH) instead of the installed one")
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--flood", type=int, default=16_500)
    ap.add_argument("--nofile", type=int, default=16384)
    ap.add_argument("--timeout", type=float, default=5.0, help="per-request client timeout, seconds")
    ap.add_argument("--starts", type=int, default=0, help="also time this many sliced container starts")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/flood.py needs root: the flood runs as other uids", file=sys.stderr)
        return 1
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tmp = Path(tempfile.mkdtemp(prefix="flexai-flood-"))
    os.chmod(tmp, 0o755)
    device = f"/dev/flexai-flood-{secrets.token_hex(3)}"
    config = {"socket": str(tmp / "flexaid.sock"), "socket_group": "nogroup", "state_dir": str(tmp / "state"),
              "slices_dir": str(tmp / "slices"), "backend": "simulated", "reconcile": {"interval": 0},
              "simulated": {"cards": [{"memory": "16GiB", "device": device}]}}
    (tmp / "flexaid.json").write_text(json.dumps(config))
    env = dict(os.environ)
    if args.tree:
        env["PYTHONPATH"] = args.tree
    log = open(tmp / "flexaid.log", "ab")
    daemon = subprocess.Popen([sys.executable, "-m", "flexai_hook.daemon.main", "--config", str(tmp / "flexaid.json"),
                               "--log-level", "warning"],
                              stdout=log, stderr=log, env=env, cwd=args.tree or None,
                              preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (args.nofile, args.nofile)))
    flood: list[subprocess.Popen] = []
    try:
        for _ in range(200):
            try:
                client.call({"op": "status"}, config["socket"], 1)
                break
            except client.DaemonUnavailable:
                time.sleep(0.05)
        quiet, quiet_failed = pairs(config["socket"], args.pairs, args.timeout)
        quiet_starts = starts(config["socket"], args.starts, tmp, "quiet") if args.starts else None
        per = args.flood // 5
        flood = [subprocess.Popen([sys.executable, "-c", FLOODER, str(tmp), "flexaid.sock", str(60000 + i), str(per)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for i in range(5)]
        held = sum(int(p.stdout.readline().split()[1]) for p in flood)
        time.sleep(1.0)  # let flexaid take in the backlog
        cpu, size, t0 = cpu_seconds(daemon.pid), os.path.getsize(tmp / "flexaid.log"), time.monotonic()
        loaded, loaded_failed = pairs(config["socket"], args.pairs, args.timeout)
        wall = time.monotonic() - t0
        share = (cpu_seconds(daemon.pid) - cpu) / wall * 100
        grew = (os.path.getsize(tmp / "flexaid.log") - size) / wall
        fds = len(os.listdir(f"/proc/{daemon.pid}/fd"))
        loaded_starts = starts(config["socket"], args.starts, tmp, "flooded") if args.starts else None
        print(f"flexaid {'from ' + args.tree if args.tree else '(this checkout)'}, RLIMIT_NOFILE {args.nofile}, "
              f"{held} flood connections from 5 uids, {args.pairs} pairs per row, client timeout {args.timeout:g} s\n")
        print("| | reserve+release p50 | p99 | failed | daemon during the flooded run (log at warning) |")
        print("|---|---|---|---|---|")
        print(row("quiet", quiet, quiet_failed))
        print(row("flooded", loaded, loaded_failed,
                  f"{share:.0f} % CPU, log +{grew / 1024:.1f} kB/s, {fds} descriptors open"))
        if args.starts:
            print(f"\n| {args.starts} sliced starts (flexai-runtime create) | p50 | p99 | failed | |")
            print("|---|---|---|---|---|")
            print(row("quiet", *quiet_starts))
            print(row("flooded", *loaded_starts))
    finally:
        for p in flood:
            try:
                p.stdin.close()
            except OSError:
                pass
        for p in flood:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        daemon.terminate()
        try:
            daemon.wait(20)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        log.close()
        try:
            os.unlink(device)
        except FileNotFoundError:
            pass
        subprocess.run(["rm", "-rf", str(tmp)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
