#!/usr/bin/env python3
"""The DRA kubelet plugin's latency as the kubelet sees it: NodePrepareResources (first and
repeated) and NodeUnprepareResources through a gRPC peer over the plugin's unix socket, with
`flexai dra` as a process, a private flexaid on simulated cards and a local fake API server
(tests/dra_support.py; needs the test extra: grpcio-tools, kubernetes). Each prepare is a GET
of the claim, flexaid's status and reserve, the CDI spec written and fsync'd.
With --publish: the node's ResourceSlice published by the agent's publisher (in process)
against the fake API server (its strict model check off, so the figure is the agent's side and
the HTTP round trips): create, a poll with nothing changed, a republish after a card change
(list + conditional PUT), delete; for 8 and 64 simulated cards by default.
Numbers, not pass/fail; --json for machine-readable output.

    python bench/dra.py --claims 200
    python bench/dra.py --publish --cards 8 --cards 64
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import dra_support as ds  # noqa: E402
import private_flexaid  # noqa: E402
from flexai_hook import client  # noqa: E402

BIN = Path(sys.executable).parent


def described(cards: int) -> list[dict]:
    return [{"memory": "80GiB", "device": f"/dev/flexai-drabench{i}"} for i in range(cards)]


def start_flexaid(tmp: Path, cards: int) -> tuple[subprocess.Popen, str]:
    return private_flexaid.start(tmp, described(cards), reconcile={"interval": 0})


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--claims", type=int, default=200)
    parser.add_argument("--cards", type=int, action="append", help="simulated cards (repeatable with --publish)")
    parser.add_argument("--publish", action="store_true", help="measure ResourceSlice publishing instead")
    parser.add_argument("--rounds", type=int, default=30, help="with --publish: repetitions of each step")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.publish:
        return publish_bench(args.cards or [8, 64], args.rounds, args.json)
    args.cards = (args.cards or [8])[0]
    with tempfile.TemporaryDirectory(prefix="flexai-dra-bench-") as d:
        tmp = Path(d)
        flexaid, socket = start_flexaid(tmp, args.cards)
        token = secrets.token_hex(8)
        (tmp / "token").write_text(token)
        api = ds.FakeApiServer(token)
        agent = ds.Agent(str(BIN / "flexai"), tmp / "agent", socket, api, tmp / "token")
        (tmp / "agent").mkdir()
        kubelet = None
        try:
            agent.start()
            kubelet = ds.Kubelet(ds.compile_stubs(tmp / "stubs"), str(agent.registration_socket))
            peer = kubelet.dra(kubelet.register().endpoint)
            times: dict[str, list[float]] = {"prepare": [], "prepare again": [], "unprepare": []}
            for i in range(args.claims):
                uid = str(uuid.uuid4())
                api.put(ds.resource_claim("bench", f"c{i}", uid, [
                    {"device": f"gpu-{i % args.cards}", "consumed": {"memory": "8Gi", "compute": "10"}}]))
                ref = ("bench", f"c{i}", uid)
                for op, call in (("prepare", peer.prepare), ("prepare again", peer.prepare),
                                 ("unprepare", peer.unprepare)):
                    t0 = time.perf_counter()
                    out = call(ref)[uid]
                    times[op].append((time.perf_counter() - t0) * 1000)
                    if out.error:
                        raise SystemExit(f"{op} failed: {out.error}")
        finally:
            if kubelet is not None:
                kubelet.close()
            agent.stop()
            api.close()
            private_flexaid.stop(flexaid, described(args.cards))
    rows = {op: {"p50_ms": round(statistics.median(v), 2), "p99_ms": round(pct(v, 99), 2), "n": len(v)}
            for op, v in times.items()}
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"DRA plugin latency through the gRPC peer ({args.claims} claims, {args.cards} simulated cards)")
    print(f"{'call':<16}{'p50 ms':>10}{'p99 ms':>10}")
    for op, r in rows.items():
        print(f"{op:<16}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}")
    return 0


def publish_bench(card_counts: list[int], rounds: int, as_json: bool) -> int:
    from flexai_hook.dra import publish
    from flexai_hook.dra.apiserver import ApiServer

    rows = {}
    for cards in card_counts:
        with tempfile.TemporaryDirectory(prefix="flexai-dra-bench-") as d:
            tmp = Path(d)
            flexaid, socket = start_flexaid(tmp, cards)
            token = secrets.token_hex(8)
            (tmp / "token").write_text(token)
            fake = ds.FakeApiServer(token)
            fake.strict = False
            api = ApiServer(fake.url, str(tmp / "token"))
            times: dict[str, list[float]] = {"create": [], "poll, no change": [], "republish": [], "delete": []}
            try:
                changed = {"on": False}

                def status() -> dict:
                    s = client.call({"op": "status"}, socket)["status"]
                    if changed["on"]:  # a card's memory changed: what a new flexaid config would give
                        s["cards"][0]["memory"] -= 1 << 30
                    return s
                for _ in range(rounds):
                    pub = publish.Publisher(api, "bench-node", status)
                    changed["on"] = False
                    for step, prep in (("create", None), ("poll, no change", None), ("republish", True)):
                        if prep:
                            changed["on"] = True
                        t0 = time.perf_counter()
                        pub.sync()
                        times[step].append((time.perf_counter() - t0) * 1000)
                    t0 = time.perf_counter()
                    pub.stop()
                    times["delete"].append((time.perf_counter() - t0) * 1000)
                body = len(json.dumps(next(iter(fake.slices.values()), None) or pub.desired()))
            finally:
                fake.close()
                private_flexaid.stop(flexaid, described(cards))
        rows[cards] = {step: {"p50_ms": round(statistics.median(v), 2), "p99_ms": round(pct(v, 99), 2), "n": len(v)}
                       for step, v in times.items()}
        rows[cards]["slice_bytes"] = body
    if as_json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"ResourceSlice publishing against the fake API server ({rounds} rounds each)")
    print(f"{'cards':>6} {'step':<18}{'p50 ms':>10}{'p99 ms':>10}")
    for cards, r in rows.items():
        for step, v in r.items():
            if step != "slice_bytes":
                print(f"{cards:>6} {step:<18}{v['p50_ms']:>10.2f}{v['p99_ms']:>10.2f}")
        print(f"{cards:>6} {'(slice JSON bytes)':<18}{r['slice_bytes']:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
