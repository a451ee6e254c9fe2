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

--docker --cdi does the same on a host whose card comes with a CDI spec (a spec in the layout
`nvidia-ctk cdi generate` writes, for the simulated card: its node, the simulated driver
libraries and --cdi-mounts more host libraries, a createContainer hook). The sliced run has
flexai apply the spec itself for the card it reserved (`--runtime=flexai -e
FLEXAI_FRACTION=0.1`, the simulator's own library mounts off). The baseline is plain runc given
the same edits by hand (`--device`, one `-v` per mount, `-e`; all but the hook, which is
/bin/true), as Docker 25+'s own `--device nvidia.com/gpu=...` would apply them (the dockerd of
Debian 12, 20.10, has no CDI); the pass-through run is that through flexai-runtime. A plain
runc run without any of it is shown for reference.
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

import private_flexaid
from flexai_hook.oci import bundle

BIN = Path(sys.executable).parent


CARD_UUID = "GPU-f1e0a100-0000-4000-8000-0000000be4c0"
CARD_DEVICE = "/dev/flexai-bench0"
CARDS = [{"memory": "80GiB", "device": CARD_DEVICE, "uuid": CARD_UUID}]


def start_daemon(tmp: Path) -> subprocess.Popen:
    return private_flexaid.start(tmp, CARDS, log_level="warning")[0]


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


def write_cdi_spec(directory: Path, extra_mounts: int) -> list[str]:
    """A CDI spec for the bench's simulated card in nvidia-ctk's layout: the card's node (index
    and UUID names), the simulated driver libraries at versioned names, `extra_mounts` more
    host libraries (a real spec mounts 30-60 driver files), a createContainer hook."""
    from flexai_hook.devices import library

    libs = sorted(p for p in Path("/usr/lib/x86_64-linux-gnu").glob("lib*.so.*") if p.is_file() and not p.is_symlink())
    mounts = [(library.sim_library_path(n), f"/usr/lib/x86_64-linux-gnu/{n.replace('.so.1', '.so.580.65.06')}")
              for n in ("libcuda.so.1", "libnvidia-ml.so.1")]
    mounts += [(str(p), str(p)) for p in libs[:extra_mounts]]
    lines = ["---", "cdiVersion: 0.5.0", "kind: nvidia.com/gpu", "devices:"]
    for name in ('"0"', CARD_UUID):
        lines += [f"    - name: {name}", "      containerEdits:", "        deviceNodes:", f"            - path: {CARD_DEVICE}"]
    lines += ["containerEdits:", "    env:", "        - NVIDIA_VISIBLE_DEVICES=void", "    hooks:",
              "        - hookName: createContainer", "          path: /bin/true", "          args:",
              "            - nvidia-cdi-hook", "            - update-ldcache", "    mounts:"]
    for host, inside in mounts:
        lines += [f"        - hostPath: {host}", f"          containerPath: {inside}", "          options:",
                  "            - ro", "            - nosuid", "            - nodev", "            - bind"]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "nvidia.yaml").write_text("\n".join(lines) + "\n")
    # the same edits as docker run flags (all but the hook), for the baseline
    flags = ["--device", CARD_DEVICE, "-e", "NVIDIA_VISIBLE_DEVICES=void"]
    for host, inside in mounts:
        flags += ["-v", f"{host}:{inside}:ro"]
    return flags


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
        settings = {"socket": str(tmp / "flexaid.sock"), "runtime": runc}
        cdi_dir = tmp / "cdi"
        if args.cdi:
            by_hand = write_cdi_spec(cdi_dir, args.cdi_mounts)
            settings.update(cdi_spec_dirs=str(cdi_dir), sim_driver_mounts="off")
        runtime_json.write_text(json.dumps(settings))
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
        daemon_json: dict = {"runtimes": {"flexai": {"path": str(BIN / "flexai-runtime")}}}
        (dk / "daemon.json").write_text(json.dumps(daemon_json))
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
        if args.cdi:
            base_name, pass_name, sliced_name = ("runc, the spec's edits as flags", "flexai (no request), as flags",
                                                 "flexai FLEXAI_FRACTION=0.1, applies CDI")
            variants = {
                "runc, no driver (reference)": run + ["--runtime=runc", "flexai-busybox", "true"],
                base_name: run + ["--runtime=runc", *by_hand, "flexai-busybox", "true"],
                pass_name: run + ["--runtime=flexai", *by_hand, "flexai-busybox", "true"],
                sliced_name: run + ["--runtime=flexai", "-e", "FLEXAI_FRACTION=0.1", "flexai-busybox", "true"],
            }
        else:
            base_name, pass_name, sliced_name = ("docker run --runtime=runc", "docker run --runtime=flexai (no request)",
                                                 "docker run --runtime=flexai FLEXAI_FRACTION=0.1")
            variants = {
                base_name: run + ["--runtime=runc", "flexai-busybox", "true"],
                pass_name: run + ["--runtime=flexai", "flexai-busybox", "true"],
                sliced_name: run + ["--runtime=flexai", "-e", "FLEXAI_FRACTION=0.1", "flexai-busybox", "true"],
            }
        if args.cdi:  # the sliced row means something only if flexai applied the spec
            check = subprocess.run(run + ["--runtime=flexai", "-e", "FLEXAI_FRACTION=0.1", "flexai-busybox", "test", "-e",
                                          "/usr/lib/x86_64-linux-gnu/libcuda.so.580.65.06"], env=env, capture_output=True)
            if check.returncode != 0:
                raise SystemExit(f"flexai did not apply the CDI spec: {check.stderr.decode(errors='replace')[-500:]}")
        samples: dict[str, list[float]] = {name: [] for name in variants}
        for cmd in variants.values():  # warm-up
            timed(cmd, env)
        for _ in range(args.runs):
            for name, cmd in variants.items():
                samples[name].append(timed(cmd, env))
        result = {name: summary(s) for name, s in samples.items()}
        base = result[base_name]["median_ms"]
        ratios = {
            "pass_through_ratio": result[pass_name]["median_ms"] / base,
            "sliced_ratio": result[sliced_name]["median_ms"] / base,
        }
        if args.json:
            print(json.dumps({"variants": result, **ratios}, indent=2))
        else:
            print(f"{'variant':<48} {'median ms':>10} {'p10':>8} {'p90':>8} {'n':>4} {'x base':>7}")
            for name, r in result.items():
                print(f"{name:<48} {r['median_ms']:>10.1f} {r['p10_ms']:>8.1f} {r['p90_ms']:>8.1f} {r['n']:>4} "
                      f"{r['median_ms'] / base:>7.3f}")
            print(f"\npass-through {ratios['pass_through_ratio']:.3f}x {base_name} (target <= 1.05), "
                  f"sliced {ratios['sliced_ratio']:.3f}x (target <= 1.15)")
    finally:
        for proc in reversed(procs):
            stop(proc)
        private_flexaid.stop(daemon, CARDS)
        for line in open("/proc/self/mountinfo").read().splitlines():
            point = line.split()[4]
            if point.startswith(str(tmp)):
                subprocess.run(["umount", "-l", point], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30, help="runs per variant (default 30)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--docker", action="store_true", help="measure `docker run --rm` through a private dockerd")
    parser.add_argument("--cdi", action="store_true",
                        help="with --docker: the card comes with a CDI spec (baseline: runc with the same edits as flags)")
    parser.add_argument("--cdi-mounts", type=int, default=40,
                        help="with --cdi: host libraries the spec mounts besides the driver's two (default 40)")
    args = parser.parse_args()
    runc = shutil.which("runc")
    if not runc:
        raise SystemExit("runc is not installed")
    if args.cdi and not args.docker:
        raise SystemExit("--cdi goes with --docker")
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
        private_flexaid.stop(daemon, CARDS)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
