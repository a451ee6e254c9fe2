#!/usr/bin/env python3
"""Container start cost of flexai-runtime vs plain runc, measured side by side.

Runs a trivial busybox container (`true`) to completion with `runc run`, alternating between
plain runc and flexai-runtime, for a pass-through container (no request) and a sliced one
(FLEXAI_FRACTION=0.1 against a private flexaid with one simulated card). Prints medians and
spread; --json for machine-readable output. Numbers, not pass/fail.

    python bench/container_start.py --runs 40
    python bench/container_start.py --docker --runs 30

--docker measures whole `docker run --rm` commands instead, against a private dockerd and
containerd (own roots and sockets, stopped afterwards): `--runtime=runc`, `--runtime=flexai`
without a request and `--runtime=flexai -e FLEXAI_FRACTION=0.1`, alternating. Targets: a
sliced run at most 1.15x plain runc, a pass-through one at most 1.05x.
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

from flexai_hook.oci import bundle
from flexai_hook import client

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


def wait_for(check, what: str, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited: {log.read_text(errors='replace')[-1500:]}")
        if check():
            return
        time.sleep(0.1)
    raise SystemExit(f"{what} did not come up within {timeout:g}s")


def stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def docker_bench(args, runc: str) -> int:
    from flexai_hook.oci.image import image_archive

    for binary in ("dockerd", "containerd", "docker"):
        if not shutil.which(binary):
            raise SystemExit(f"{binary} is not installed (apt-get install docker.io containerd)")
    tmp = Path(tempfile.mkdtemp(prefix="flexai-bench-docker-"))
    daemon = start_daemon(tmp)
    procs: list[subprocess.Popen] = []
    try:
        runtime_json = tmp / "runtime.json"
        runtime_json.write_text(json.dumps({"socket": str(tmp / "flexaid.sock"), "runtime": runc}))
        ctd = tmp / "ctd"
        ctd.mkdir()
        address = str(ctd / "containerd.sock")
        (ctd / "config.toml").write_text(
            f'version = 2\nroot = "{ctd}/root"\nstate = "{ctd}/state"\n'
            f'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n[grpc]\n  address = "{address}"\n'
            f'[ttrpc]\n  address = "{address}.ttrpc"\n')
        with open(ctd / "log", "ab") as log:
            procs.append(subprocess.Popen(["containerd", "--config", str(ctd / "config.toml")], stdout=log, stderr=log,
                                          env={**os.environ, "FLEXAI_RUNTIME_CONFIG": str(runtime_json)},
                                          start_new_session=True))
        ctr_ok = lambda: subprocess.run(["ctr", "--address", address, "version"], capture_output=True).returncode == 0
        wait_for(ctr_ok, "containerd", procs[0], ctd / "log")
        dk = tmp / "dockerd"
        dk.mkdir()
        (dk / "daemon.json").write_text(json.dumps({"runtimes": {"flexai": {"path": str(BIN / "flexai-runtime")}}}))
        host = f"unix://{dk}/docker.sock"
        with open(dk / "log", "ab") as log:
            procs.append(subprocess.Popen(
                ["dockerd", "--config-file", str(dk / "daemon.json"), "--data-root", str(dk / "data"), "--exec-root",
                 str(dk / "exec"), "-H", host, "--pidfile", str(dk / "docker.pid"), "--containerd", address,
                 "--iptables=false", "--ip6tables=false", "--bridge=none"],
                stdout=log, stderr=log, start_new_session=True))
        env = {**os.environ, "DOCKER_HOST": host}
        docker_ok = lambda: subprocess.run(["docker", "version"], capture_output=True, env=env).returncode == 0
        wait_for(docker_ok, "dockerd", procs[1], dk / "log")
        rootfs = tmp / "rootfs"
        bundle.make_rootfs(rootfs)
        subprocess.run(["docker", "load", "-i", str(image_archive(rootfs, tmp / "image.tar"))], env=env, check=True,
                       capture_output=True)
        run = ["docker", "run", "--rm", "--network", "none"]
        variants = {
            "docker run --runtime=runc": run + ["--runtime=runc", "flexai-busybox", "true"],
            "docker run --runtime=flexai (no request)": run + ["--runtime=flexai", "flexai-busybox", "true"],
            "docker run --runtime=flexai FLEXAI_FRACTION=0.1": run + ["--runtime=flexai", "-e", "FLEXAI_FRACTION=0.1",
                                                                      "flexai-busybox", "true"],
        }
        samples: dict[str, list[float]] = {name: [] for name in variants}
        for cmd in variants.values():  # warm-up
            timed(cmd, env)
        for _ in range(args.runs):
            for name, cmd in variants.items():
                samples[name].append(timed(cmd, env))
        result = {name: summary(s) for name, s in samples.items()}
        base = result["docker run --runtime=runc"]["median_ms"]
        ratios = {
            "pass_through_ratio": result["docker run --runtime=flexai (no request)"]["median_ms"] / base,
            "sliced_ratio": result["docker run --runtime=flexai FLEXAI_FRACTION=0.1"]["median_ms"] / base,
        }
        if args.json:
            print(json.dumps({"variants": result, **ratios}, indent=2))
        else:
            print(f"{'variant':<48} {'median ms':>10} {'p10':>8} {'p90':>8} {'n':>4} {'x runc':>7}")
            for name, r in result.items():
                print(f"{name:<48} {r['median_ms']:>10.1f} {r['p10_ms']:>8.1f} {r['p90_ms']:>8.1f} {r['n']:>4} "
                      f"{r['median_ms'] / base:>7.3f}")
            print(f"\npass-through {ratios['pass_through_ratio']:.3f}x plain runc (target <= 1.05), "
                  f"sliced {ratios['sliced_ratio']:.3f}x (target <= 1.15)")
    finally:
        for proc in reversed(procs):
            stop(proc)
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(10)
        for line in open("/proc/self/mountinfo").read().splitlines():
            point = line.split()[4]
            if point.startswith(str(tmp)):
                subprocess.run(["umount", "-l", point], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            os.unlink("/dev/flexai-bench0")
        except FileNotFoundError:
            pass
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30, help="runs per variant (default 30)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--docker", action="store_true", help="measure `docker run --rm` through a private dockerd")
    args = parser.parse_args()
    runc = shutil.which("runc")
    if not runc:
        raise SystemExit("runc is not installed")
    if args.docker:
        return docker_bench(args, runc)
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
