#!/usr/bin/env python3
"""Container start cost of flexai-runtime vs plain runc, measured side by side.

Runs a trivial busybox container (`true`) to completion with `runc run`, alternating between
plain runc and flexai-runtime, for a pass-through container (no request) and a sliced one
(FLEXAI_FRACTION=0.1 against a private flexaid with one simulated card). Prints medians and
spread; --json for machine-readable output. Numbers, not pass/fail.

    python bench/container_start.py --runs 40
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flexai_hook import bundle, client

BIN = Path(sys.executable).parent


def start_daemon(tmp: Path) -> subprocess.Popen:
    config = {
        "socket": str(tmp / "flexaid.sock"), "socket_group": "root",
        "state_dir": str(tmp / "state"), "slices_dir": str(tmp / "slices"), "backend": "simulated",
        "simulated": {"cards": [{"memory": "80GiB", "device": "/dev/flexai-bench0"}]},
    }
    (tmp / "flexaid.json").write_text(json.dumps(config))
    proc = subprocess.Popen([str(BIN / "flexaid"), "--config", str(tmp / "flexaid.json"), "--log-level", "warning"])
    for _ in range(200):
        try:
            client.call({"op": "status"}, config["socket"], timeout=1)
            return proc
        except client.DaemonUnavailable:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("flexaid did not start")


def timed(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return (time.perf_counter() - t0) * 1000


def summary(samples: list[float]) -> dict:
    q = statistics.quantiles(samples, n=10)
    return {"median_ms": statistics.median(samples), "p10_ms": q[0], "p90_ms": q[-1], "n": len(samples)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30, help="runs per variant (default 30)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    runc = shutil.which("runc")
    if not runc:
        raise SystemExit("runc is not installed")
    tmp = Path(tempfile.mkdtemp(prefix="flexai-bench-"))
    daemon = start_daemon(tmp)
    try:
        rootfs = tmp / "rootfs"
        bundle.make_rootfs(rootfs)
        plain_b = tmp / "plain"
        sliced_b = tmp / "sliced"
        bundle.make_bundle(plain_b, ["true"], rootfs_from=rootfs)
        bundle.make_bundle(sliced_b, ["true"], env=["FLEXAI_FRACTION=0.1"], rootfs_from=rootfs)
        env = {**os.environ, "FLEXAI_SOCKET": str(tmp / "flexaid.sock"), "FLEXAI_RUNTIME": runc,
               "FLEXAI_RUNTIME_CONFIG": "/nonexistent"}
        root = str(tmp / "runc-root")
        variants = {
            "pass-through: runc": lambda i: [runc, "--root", root, "run", "-b", str(plain_b), f"a{i}"],
            "pass-through: flexai-runtime": lambda i: [str(BIN / "flexai-runtime"), "--root", root, "run", "-b", str(plain_b), f"b{i}"],
            "sliced: runc (same bundle, no flexai)": lambda i: [runc, "--root", root, "run", "-b", str(plain_b), f"c{i}"],
            "sliced: flexai-runtime": lambda i: [str(BIN / "flexai-runtime"), "--root", root, "run", "-b", str(sliced_b), f"d{i}"],
        }
        samples: dict[str, list[float]] = {name: [] for name in variants}
        for name, make in variants.items():  # warm-up
            timed(make("w"), env)
        for i in range(args.runs):
            for name, make in variants.items():
                samples[name].append(timed(make(i), env))
        result = {name: summary(s) for name, s in samples.items()}
        added = {
            "pass_through_added_ms": result["pass-through: flexai-runtime"]["median_ms"] - result["pass-through: runc"]["median_ms"],
            "sliced_added_ms": result["sliced: flexai-runtime"]["median_ms"] - result["sliced: runc (same bundle, no flexai)"]["median_ms"],
        }
        if args.json:
            print(json.dumps({"variants": result, **added}, indent=2))
        else:
            print(f"{'variant':<40} {'median ms':>10} {'p10':>8} {'p90':>8} {'n':>4}")
            for name, r in result.items():
                print(f"{name:<40} {r['median_ms']:>10.1f} {r['p10_ms']:>8.1f} {r['p90_ms']:>8.1f} {r['n']:>4}")
            print(f"\nadded by flexai-runtime (median): pass-through {added['pass_through_added_ms']:+.1f} ms "
                  f"(target <= 15), sliced {added['sliced_added_ms']:+.1f} ms (target <= 40)")
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            os.unlink("/dev/flexai-bench0")
        except FileNotFoundError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
