#!/usr/bin/env python3
"""Placement quality on the Alibaba openb GPU trace, replayed as in the FGD paper.

Weng et al., "Beware of Fragmentation: Scheduling GPU-Sharing Workloads with Fragmentation
Gradient Descent", USENIX ATC'23; trace: ../shared/data/openb/ (1213 nodes, 6212 GPUs,
8152 pods). Their replay: shuffle the pods with a seed, resample with replacement until the
total GPU request is 1.3 x the cluster's GPU capacity, place the pods one at a time
(arrivals only), drop those that do not fit, and report the GPU allocation ratio
(allocated milli-GPU / capacity) as demand arrives. CPU, GPU count, gpu_milli and gpu_spec
(allowed models) constrain each pod; the typical workload FGD needs is the whole trace.

Prints, per policy (random, best-fit, fgd, flexai; the stock Kubernetes DRA baselines
dra-first-fit and dra-most-used-first; extender+first-fit and extender+most-used, see docs/placement.md "With
Kubernetes DRA"), as means over the seeds (sections chosen with --sections):
  1. allocation at 100 % and 130 % arrived demand, and arrived demand at the first failure;
  2. the same with fractional requests rounded up to 10 % slices (100-milli steps);
  3. a replay with departures in trace time (creation/deletion times; lifetimes stretched
     so that the offered GPU load is --load x capacity, since the raw trace never fills
     the cluster): time-averaged allocation and the share of GPU demand turned away
     (skipped with a note when the pod list has no creation/deletion times);
  whole. the utilization claim: the same arrivals on a cluster without fractions (every
     fractional pod takes a whole card) and with them, same policy: pods placed, GPU the
     placed pods asked for, cards held, at 100 % and 130 % demand;
  4. decision latency, medians: choose_node over the whole cluster during the replay (each
     Node keeps its memo until it changes), the same on freshly built Node objects (as an
     extender that rebuilds its node list per call), and choose() on one 8-card node.

Numbers, not pass/fail: exits 0. From the repository root:
    python bench/placement.py              # seeds 42,43,44, all sections: a few minutes
    python bench/placement.py --quick      # seed 42, sections 1 and 4 (about a minute: 7 policies)
    python bench/placement.py --json       # one JSON object on stdout
"""

from __future__ import annotations

import argparse
import csv
import heapq
import json
import platform
import random
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from flexai_hook.placement import (  # noqa: E402
    CardState,
    Demand,
    Node,
    Workload,
    choose,
    choose_node,
)

DATA = REPO / ".." / "shared" / "data" / "openb"  # ../shared/data/openb from the repository root
NODES_CSV = DATA / "openb_node_list_gpu_node.csv"
PODS_CSV = DATA / "openb_pod_list_default.csv"
# The extenders: kube-scheduler with a scheduler extender whose filter verb keeps only the node
# choose_node(flexai) picks, then the stock allocator's first fit on that node's ResourceSlice,
# its cards listed in index order (what `flexai dra` publishes and `flexai extender` assumes) or
# most-used first (docs/placement.md, "With Kubernetes DRA").
EXTENDERS = {"extender+first-fit": "dra-first-fit", "extender+most-used": "dra-most-used-first"}
POLICIES = ("random", "best-fit", "fgd", "flexai", "dra-first-fit", "dra-most-used-first", *EXTENDERS)
SECTIONS = ("arrivals", "rounded", "departures", "whole", "latency")
PUBLISHED_130 = {"random": 87.5, "best-fit": 93.1, "fgd": 95.4}  # paper, 10 seeds, openb
UNIT = 1 << 20  # bytes per thousandth of a card: every simulated card has 1000 * UNIT bytes
RATIO = 1.3  # arrived demand / GPU capacity at the end of an arrivals-only replay

Choice = tuple[str, tuple[int, ...]]


# --- the trace -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pod:
    name: str
    cpu: int  # milli
    gpus: int
    gpu_milli: int  # per card; 1000 for whole cards
    models: tuple[str, ...]
    created: int
    deleted: int | None

    @property
    def gpu_total(self) -> int:
        return self.gpus * self.gpu_milli

    @property
    def demand(self) -> Demand:
        # a trace share is a share of whichever card it lands on: memory follows compute
        share = self.gpu_milli if self.gpus == 1 else 0
        return Demand(memory=share * UNIT, compute=share, cards=self.gpus, models=self.models)


def load_nodes(path: Path) -> list[Node]:
    nodes = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            cards = tuple(
                CardState.empty(i, f"{row['sn']}-gpu{i}", row["model"], 1000 * UNIT)
                for i in range(int(row["gpu"]))
            )
            cpu = int(row["cpu_milli"])
            nodes.append(Node(row["sn"], cpu, cards, cpu_milli_total=cpu))
    return nodes


def load_pods(path: Path) -> list[Pod]:
    pods = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            gpus = int(row["num_gpu"])
            milli = 0 if gpus == 0 else 1000 if gpus > 1 else min(1000, int(row["gpu_milli"]))
            deleted = (row.get("deletion_time") or "").strip()
            pods.append(
                Pod(
                    name=row["name"],
                    cpu=int(row["cpu_milli"]),
                    gpus=gpus,
                    gpu_milli=milli,
                    models=tuple(m for m in (row.get("gpu_spec") or "").split("|") if m),
                    created=int(row.get("creation_time") or 0),
                    deleted=int(deleted) if deleted else None,
                )
            )
    return pods


def round_up_to_slices(pods: Sequence[Pod], step: int = 100) -> list[Pod]:
    """Fractional requests rounded up to 10 % slices, as fixed-step slicing would force."""
    return [
        replace(p, gpu_milli=min(1000, -(-p.gpu_milli // step) * step)) if p.gpus == 1 else p
        for p in pods
    ]


def capacity(nodes: Sequence[Node]) -> int:
    return sum(len(n.cards) for n in nodes) * 1000


def workload_of(pods: Sequence[Pod]) -> Workload:
    """The FGD paper's typical workload: the trace's pods, CPU included, all kept."""
    return Workload.from_demands(((p.demand, p.cpu) for p in pods), window=None)


def renamed(nodes: Sequence[Node], seed: int) -> list[Node]:
    """Node names prefixed with a per-seed random rank, as the FGD paper's simulator does.

    Every policy gives ties to the lowest node name; without this the trace's own order
    (grouped by GPU model) would settle ties the same way in every run.
    """
    rank = list(range(len(nodes)))
    random.Random(seed).shuffle(rank)
    return [replace(n, name=f"{r:04d}-{n.name}") for r, n in zip(rank, nodes)]


def arrival_sequence(pods: Sequence[Pod], cap: int, seed: int, ratio: float = RATIO) -> list[Pod]:
    """The trace shuffled, then pods resampled with replacement up to `ratio` x capacity."""
    rng = random.Random(seed)
    sequence = list(pods)
    rng.shuffle(sequence)
    total = sum(p.gpu_total for p in sequence)
    while True:
        pod = pods[rng.randrange(len(pods))]
        if total + pod.gpu_total > ratio * cap:
            return sequence
        sequence.append(pod)
        total += pod.gpu_total


# --- the cluster being replayed --------------------------------------------------------------


class Cluster:
    """Immutable Nodes, one replaced per placement or departure (so memos stay valid)."""

    def __init__(self, nodes: Sequence[Node]):
        self.nodes = list(nodes)
        self.position = {n.name: i for i, n in enumerate(self.nodes)}
        self.allocated = 0  # milli-GPU

    def _change(self, choice: Choice, pod: Pod, sign: int) -> None:
        name, indices = choice
        i = self.position[name]
        node = self.nodes[i]
        demand = pod.demand
        cards = list(node.cards)
        for pos, card in enumerate(cards):
            if card.index not in indices:
                continue
            if pod.gpus > 1:  # whole cards: taken entirely, or given back empty
                memory, compute = (0, 0) if sign > 0 else (card.memory_total, 1000)
            else:
                memory = card.memory_free - sign * demand.memory
                compute = card.compute_free - sign * demand.compute
            cards[pos] = replace(
                card,
                memory_free=memory,
                compute_free=compute,
                whole_free=memory == card.memory_total and compute == 1000,
            )
        self.nodes[i] = replace(node, cpu_milli_free=node.cpu_milli_free - sign * pod.cpu, cards=tuple(cards))
        self.allocated += sign * pod.gpu_total

    def place(self, choice: Choice, pod: Pod) -> None:
        self._change(choice, pod, +1)

    def remove(self, choice: Choice, pod: Pod) -> None:
        self._change(choice, pod, -1)


def random_choice(nodes: Sequence[Node], pod: Pod, rng: random.Random) -> Choice | None:
    """The paper's Random baseline: any node that fits, any card on it that fits."""
    demand = pod.demand

    def options(node: Node) -> list[tuple[int, ...]]:
        if node.cpu_milli_free < pod.cpu:
            return []
        if pod.gpus == 0:
            return [()]
        fitting = sorted(c.index for c in node.cards if demand.fits(c))
        if pod.gpus > 1:
            return [tuple(fitting[: pod.gpus])] if len(fitting) >= pod.gpus else []
        return [(i,) for i in fitting]

    for _ in range(32):  # rejection sampling: uniform, and cheap while many nodes fit
        node = nodes[rng.randrange(len(nodes))]
        if found := options(node):
            return node.name, found[rng.randrange(len(found))]
    feasible = [(n, o) for n in nodes if (o := options(n))]
    if not feasible:
        return None
    node, found = feasible[rng.randrange(len(feasible))]
    return node.name, found[rng.randrange(len(found))]


Decide = Callable[[Sequence[Node], Pod], "Choice | None"]


def decider(policy: str, workload: Workload, seed: int, timings: dict | None = None) -> Decide:
    """A policy as the replays call it; `timings` collects per-decision seconds.

    timings["replay"]: choose_node on the replay's nodes (each keeps its memo until it
    changes); timings["rebuilt"]: every 100th decision again on freshly built Node objects,
    as a scheduler extender that rebuilds its node list on every call would run it.
    """
    if policy == "random":
        rng = random.Random(seed)
        return lambda nodes, pod: random_choice(nodes, pod, rng)
    if policy in EXTENDERS:
        def extender(nodes: Sequence[Node], pod: Pod) -> Choice | None:
            picked = choose_node(nodes, pod.demand, pod.cpu, "flexai", workload)
            if picked is None:
                return None
            cards = next(n.cards for n in nodes if n.name == picked[0])
            return picked[0], choose(cards, pod.demand, EXTENDERS[policy], workload)
        return extender
    calls = 0

    def decide(nodes: Sequence[Node], pod: Pod) -> Choice | None:
        nonlocal calls
        calls += 1
        start = time.perf_counter()
        chosen = choose_node(nodes, pod.demand, pod.cpu, policy, workload)
        if timings is None:
            return chosen
        timings.setdefault("replay", []).append(time.perf_counter() - start)
        if calls % 100 == 0:
            fresh = [replace(n) for n in nodes]
            start = time.perf_counter()
            again = choose_node(fresh, pod.demand, pod.cpu, policy, workload)
            timings.setdefault("rebuilt", []).append(time.perf_counter() - start)
            assert again == chosen
        return chosen

    return decide


# --- replays ---------------------------------------------------------------------------------


def whole_card(pod: Pod) -> Pod:
    """The pod as a cluster without fractions runs it: a fractional request takes a whole card."""
    return replace(pod, gpu_milli=1000) if pod.gpus == 1 else pod


def replay_arrivals(
    nodes: Sequence[Node], sequence: Sequence[Pod], decide: Decide, whole_cards: bool = False
) -> dict:
    """Arrivals only; a pod that does not fit is dropped. Percentages of GPU capacity.

    With `whole_cards`, each fractional pod holds a whole card: "alloc" is then the cards
    held, "asked" what the placed pods asked for (with fractions the two are equal), and
    demand still counts what the pods asked, so both clusters see the same arrivals.
    """
    cluster = Cluster(nodes)
    cap = capacity(nodes)
    arrived, asked, placed = 0, 0, 0
    first_failure, failed = None, 0
    at_100: tuple[int, int, int] | None = None  # (allocated, asked, placed) at 100 % demand
    for pod in sequence:
        arrived += pod.gpu_total
        runs_as = whole_card(pod) if whole_cards else pod
        chosen = decide(cluster.nodes, runs_as)
        if chosen is None:
            failed += 1
            if first_failure is None:
                first_failure = arrived - pod.gpu_total
        else:
            cluster.place(chosen, runs_as)
            asked += pod.gpu_total
            placed += 1
        if at_100 is None and arrived >= cap:
            at_100 = (cluster.allocated, asked, placed)
    if at_100 is None:
        at_100 = (cluster.allocated, asked, placed)
    return {
        "alloc_100": 100 * at_100[0] / cap,
        "alloc_130": 100 * cluster.allocated / cap,
        "asked_100": 100 * at_100[1] / cap,
        "asked_130": 100 * asked / cap,
        "placed_100": at_100[2],
        "placed_130": placed,
        "pods_130": len(sequence),
        "first_failure": 100 * (arrived if first_failure is None else first_failure) / cap,
        "failed_pods": failed,
    }


def stretch_for_load(pods: Sequence[Pod], cap: int, span: int, longest: int, load: float) -> float:
    """Lifetime factor at which the offered load, lifetimes capped at `longest`, is `load`."""

    def offered(factor: float) -> float:
        return sum(p.gpu_total * min(factor * (p.deleted - p.created), longest) for p in pods) / (span * cap)

    if offered(1e12) < load:
        raise ValueError(f"an offered load of {load} is out of reach (at most {offered(1e12):.2f})")
    low, high = 0.0, 1.0
    while offered(high) < load:
        low, high = high, high * 2
    for _ in range(50):
        mid = (low + high) / 2
        low, high = (mid, high) if offered(mid) < load else (low, mid)
    return high


class NoTimes(ValueError):
    """The pod list lacks the creation/deletion times the departures replay needs."""


def replay_departures(
    nodes: Sequence[Node], pods: Sequence[Pod], decide: Decide, load: float, loops: int = 4
) -> dict:
    """Pods arrive at their trace creation times and leave after their trace lifetimes.

    The raw trace never fills the cluster (its live GPU demand peaks near 1 % of capacity:
    pods live minutes, the busy window is a month), so the replay changes two things: the
    busy window (from the time 5 % of the pods have arrived to the last arrival) is replayed
    `loops` times back to back, and every lifetime is multiplied by one factor, capped at
    two windows, chosen so that the offered load (arriving GPU x lifetime per unit of time)
    is `load` x capacity. The first two loops warm the cluster up; the rest is measured:
    time-averaged allocation, and the share of the arriving GPU demand that did not fit.
    """
    cap = capacity(nodes)
    timed = sorted((p for p in pods if p.deleted is not None), key=lambda p: (p.created, p.name))
    timed = timed[len(timed) // 20 :]
    if len(timed) < 2 or timed[-1].created == timed[0].created or all(p.deleted <= p.created for p in timed):
        raise NoTimes(f"{len(timed)} pods with creation and deletion times after the first 5 %, "
                      "no span of arrival times or no lifetimes")
    start, span = timed[0].created, timed[-1].created - timed[0].created + 1
    longest = 2 * span
    factor = stretch_for_load(timed, cap, span, longest, load)
    measured_from, end = start + 2 * span, start + loops * span
    cluster = Cluster(nodes)
    leaving: list[tuple[float, int, Pod, Choice]] = []  # (departure time, tie-break, pod, where)
    area, last, arrived, refused, serial = 0.0, float(measured_from), 0, 0, 0

    def advance(to: float) -> None:
        nonlocal area, last
        if min(to, end) > last:
            area += cluster.allocated * (min(to, end) - last)
        last = max(last, to)

    def depart_until(when: float) -> None:
        while leaving and leaving[0][0] <= when:
            t, _, pod, choice = heapq.heappop(leaving)
            advance(t)
            cluster.remove(choice, pod)

    for loop in range(loops):
        for pod in timed:
            now = pod.created + loop * span
            depart_until(now)
            advance(now)
            chosen = decide(cluster.nodes, pod)
            counted = now >= measured_from
            arrived += pod.gpu_total if counted else 0
            if chosen is None:
                refused += pod.gpu_total if counted else 0
                continue
            cluster.place(chosen, pod)
            serial += 1
            life = min(factor * (pod.deleted - pod.created), longest)
            heapq.heappush(leaving, (now + life, serial, pod, chosen))
    depart_until(end)
    advance(end)
    return {
        "time_avg_alloc": 100 * area / ((end - measured_from) * cap),
        "refused_gpu": 100 * refused / max(1, arrived),
        "lifetime_factor": factor,
    }


# --- latency ---------------------------------------------------------------------------------


def node_latency(policy: str, workload: Workload | None, pods: Sequence[Pod], n: int = 4000) -> float:
    """Median choose() time on one 8-card node, replaying fractional requests with releases."""
    rng = random.Random(11)
    shares = [p.gpu_milli for p in pods if p.gpus == 1] or [500]
    cards = [CardState.empty(i, f"GPU-{i}", "A100-SXM4-80GB", 80 << 30) for i in range(8)]
    held: list[tuple[int, Demand]] = []
    times = []
    for _ in range(n):
        share = shares[rng.randrange(len(shares))]
        demand = Demand(memory=(80 << 30) * share // 1000, compute=share)
        start = time.perf_counter()
        chosen = choose(cards, demand, policy, workload)
        times.append(time.perf_counter() - start)
        if chosen is None or rng.random() < 0.3:  # release something, as containers stop
            if held:
                index, gone = held.pop(rng.randrange(len(held)))
                c = cards[index]
                mem, comp = c.memory_free + gone.memory, c.compute_free + gone.compute
                cards[index] = replace(c, memory_free=mem, compute_free=comp,
                                       whole_free=mem == c.memory_total and comp == 1000)
            continue
        c = cards[chosen[0]]
        cards[chosen[0]] = replace(c, memory_free=c.memory_free - demand.memory,
                                   compute_free=c.compute_free - demand.compute, whole_free=False)
        held.append((chosen[0], demand))
    return statistics.median(times)


# --- report ----------------------------------------------------------------------------------


def mean(runs: Sequence[dict], key: str) -> float:
    return sum(r[key] for r in runs) / len(runs)


def arrivals_section(nodes, pods, seeds, policies, timings=None, whole_cards=False) -> dict:
    cap = capacity(nodes)
    # the typical workload is what the cluster runs: whole cards, in a cluster without fractions
    workload = workload_of([whole_card(p) for p in pods] if whole_cards else pods)
    out = {}
    for policy in policies:
        runs = []
        for seed in seeds:
            start = time.perf_counter()
            t = timings.setdefault(policy, {}) if timings is not None else None
            runs.append(
                replay_arrivals(
                    renamed(nodes, seed),
                    arrival_sequence(pods, cap, seed),
                    decider(policy, workload, seed, t),
                    whole_cards,
                )
            )
            runs[-1]["seconds"] = time.perf_counter() - start
            print(f"  {policy} seed {seed}: {runs[-1]['alloc_130']:.2f} % at 130 %", file=sys.stderr)
        out[policy] = {
            "alloc_100": mean(runs, "alloc_100"),
            "alloc_130": mean(runs, "alloc_130"),
            "first_failure": mean(runs, "first_failure"),
            "per_seed_130": [round(r["alloc_130"], 2) for r in runs],
            **{k: mean(runs, k) for k in ("asked_100", "asked_130", "placed_100", "placed_130", "pods_130")},
        }
    return out


def whole_section(nodes, pods, seeds, policies) -> dict:
    """The utilization claim: the same arrivals on whole cards and on fractions, same policy."""
    return {
        "whole": arrivals_section(nodes, pods, seeds, policies, whole_cards=True),
        "fractions": arrivals_section(nodes, pods, seeds, policies),
    }


def print_whole(results: dict) -> None:
    print("\nWhole cards (every fractional pod takes a card) vs fractions, same arrivals and policy")
    print("  placed = GPU the placed pods asked for; held = cards held; % of GPU capacity")
    print(f"  {'policy':<20} {'cluster':<10} {'pods@100%':>10} {'placed@100%':>12} {'held@100%':>10}"
          f" {'pods@130%':>10} {'placed@130%':>12} {'held@130%':>10}")
    for policy in results["whole"]:
        for kind in ("whole", "fractions"):
            r = results[kind][policy]
            print(f"  {policy:<20} {kind:<10} {r['placed_100']:>10.0f} {r['asked_100']:>11.2f}% "
                  f"{r['alloc_100']:>9.2f}% {r['placed_130']:>10.0f} {r['asked_130']:>11.2f}% "
                  f"{r['alloc_130']:>9.2f}%")
        w, f = results["whole"][policy], results["fractions"][policy]
        print(f"  {policy:<20} {'gain':<10} {100 * (f['placed_100'] / w['placed_100'] - 1):>+9.1f}% "
              f"{100 * (f['asked_100'] / w['asked_100'] - 1):>+11.1f}% {'':>10} "
              f"{100 * (f['placed_130'] / w['placed_130'] - 1):>+9.1f}% "
              f"{100 * (f['asked_130'] / w['asked_130'] - 1):>+11.1f}%")


def print_arrivals(title: str, results: dict, published: bool) -> None:
    print(title)
    width = max(9, *(len(p) for p in results))
    head = f"  {'policy':<{width}} {'alloc@100%':>11} {'alloc@130%':>11} {'1st failure':>12}"
    print(head + ("  paper@130%" if published else ""))
    for policy, r in results.items():
        line = (
            f"  {policy:<{width}} {r['alloc_100']:>10.2f}% {r['alloc_130']:>10.2f}% "
            f"{r['first_failure']:>11.2f}%"
        )
        if published:
            line += f"  {PUBLISHED_130[policy]:>9.1f}%" if policy in PUBLISHED_130 else "          -"
        print(line)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=Path, default=NODES_CSV, help="node list CSV (openb format)")
    ap.add_argument("--pods", type=Path, default=PODS_CSV, help="pod list CSV (openb format)")
    ap.add_argument("--seeds", default="42,43,44", help="comma-separated seeds (default 42,43,44)")
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--load", type=float, default=1.2, help="offered load of the departures replay")
    ap.add_argument("--quick", action="store_true", help="seed 42; sections arrivals and latency")
    ap.add_argument("--sections", default=None,
                    help=f"comma-separated, of {','.join(SECTIONS)} (default: all; --quick: arrivals,latency)")
    ap.add_argument("--whole-policies", default="flexai,dra-first-fit",
                    help="policies of the whole-cards section (default flexai,dra-first-fit)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    args = ap.parse_args(argv)
    seeds = [42] if args.quick else [int(s) for s in args.seeds.split(",")]
    policies = [p for p in args.policies.split(",") if p]
    sections = args.sections or ("arrivals,latency" if args.quick else ",".join(SECTIONS))
    wanted = [x for x in sections.split(",") if x]
    if unknown := [x for x in wanted if x not in SECTIONS]:
        ap.error(f"unknown section(s) {', '.join(unknown)}; allowed: {', '.join(SECTIONS)}")
    nodes, pods = load_nodes(args.nodes), load_pods(args.pods)
    report: dict = {
        "trace": {"nodes": len(nodes), "gpus": capacity(nodes) // 1000, "pods": len(pods)},
        "seeds": seeds,
        "machine": f"{platform.python_implementation()} {platform.python_version()}, {platform.machine()}",
    }
    notes: list[str] = []
    total_start = time.perf_counter()
    timings: dict[str, dict[str, list[float]]] = {}
    if "arrivals" in wanted:
        print("[arrivals]", file=sys.stderr)
        report["arrivals"] = arrivals_section(nodes, pods, seeds, policies, timings)
    if "rounded" in wanted:
        print("[arrivals, 10 % slices]", file=sys.stderr)
        report["rounded"] = arrivals_section(nodes, round_up_to_slices(pods), seeds, policies)
    if "departures" in wanted:
        print("[departures]", file=sys.stderr)
        workload = workload_of(pods)
        try:
            report["departures"] = {
                p: replay_departures(renamed(nodes, seeds[0]), pods, decider(p, workload, seeds[0]), args.load)
                for p in policies
            }
        except NoTimes as e:  # e.g. a pod list without creation/deletion times
            notes.append(f"departures skipped: {e}")
            print(f"note: {notes[-1]}", file=sys.stderr)
    if "whole" in wanted:
        print("[whole cards vs fractions]", file=sys.stderr)
        report["whole_cards"] = whole_section(
            nodes, pods, seeds, [p for p in args.whole_policies.split(",") if p])
    if "latency" in wanted:
        print("[latency]", file=sys.stderr)
        report["latency_ms"] = {
            p: {
                "cluster_replay_median": 1e3 * statistics.median(timings[p]["replay"]),
                "cluster_rebuilt_median": 1e3 * statistics.median(timings[p]["rebuilt"]),
                "node8_median": 1e3 * node_latency(p, None, pods),
            }
            for p in policies
            if timings.get(p, {}).get("rebuilt")
        }
    report["notes"] = notes
    report["seconds"] = time.perf_counter() - total_start

    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    t = report["trace"]
    print(f"trace: {t['nodes']} nodes, {t['gpus']} GPUs, {t['pods']} pods; seeds {seeds}; "
          f"{report['machine']}")
    if "arrivals" in report:
        print_arrivals("\nGPU allocation, arrivals only, demand resampled to 130 % of capacity",
                       report["arrivals"], published=args.nodes == NODES_CSV)
    if "rounded" in report:
        print_arrivals("\nSame, requests rounded up to 10 % slices", report["rounded"], False)
    if "departures" in report:
        factor = next(iter(report["departures"].values()))["lifetime_factor"]
        print(f"\nWith departures (trace times, lifetimes x{factor:.0f} for an offered load of "
              f"{args.load:.2f} x capacity; seed {seeds[0]})")
        print(f"  {'policy':<20} {'time-avg alloc':>15} {'GPU demand refused':>19}")
        for p, r in report["departures"].items():
            print(f"  {p:<20} {r['time_avg_alloc']:>14.2f}% {r['refused_gpu']:>18.2f}%")
    if "whole_cards" in report:
        print_whole(report["whole_cards"])
    if report.get("latency_ms"):
        print("\nDecision latency, median (ms)")
        print(f"  {'policy':<20} {'cluster':>10} {'nodes rebuilt':>14} {'8-card node':>12}")
        for p, r in report["latency_ms"].items():
            print(f"  {p:<20} {r['cluster_replay_median']:>10.3f} {r['cluster_rebuilt_median']:>14.3f} "
                  f"{r['node8_median']:>12.4f}")
    for note in notes:
        print(f"\nnote: {note}")
    print(f"\n({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
