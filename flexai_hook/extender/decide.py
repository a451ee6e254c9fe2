"""filter and prioritize over a cluster view: pure, so each answer can be checked by hand.

filter keeps the one node placement.choose_node picks among the nodes kube-scheduler passed
(it ran its own filters first, the DRA allocator's capacity check included, so every node
passed can hold the claim): a node list narrowed to that node is what the openb replay
measured ("extender+most-used", docs/placement.md). If the view finds no passed node that
fits, it is behind the scheduler's (a relist away): all nodes are kept, not the pod failed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from flexai_hook.placement import Demand, Workload, choose_node, rank_nodes

from .pod import Ask, PodAsks
from .protocol import MAX_EXTENDER_PRIORITY
from .view import View


@dataclass(frozen=True)
class Filtered:
    keep: frozenset[str]
    failed: dict[str, str]  # fit, but placement prefers another node (preemption may change that)
    unresolvable: dict[str, str]  # no flexai card at all
    reason: str  # one line for the log


def demand_on(view: View, ask: Ask) -> Demand:
    """The ask as placement sees it in this view: a per-vendor class admits its vendor's models."""
    if ask.vendor is None:
        return ask.demand
    return replace(ask.demand, models=view.models_of(ask.vendor) or ("(no card of vendor " + ask.vendor + ")",))


def filter_nodes(view: View, asked: PodAsks, names: tuple[str, ...], policy: str, workload: Workload | None) -> Filtered:
    if asked.passthrough or not asked.asks:
        return Filtered(frozenset(names), {}, {}, f"passed through: {asked.passthrough}")
    ask = asked.asks[0]
    nodes = [view.nodes[n] for n in names if n in view.nodes]
    picked = choose_node(nodes, demand_on(view, ask), 0, policy, workload)
    if picked is None:
        return Filtered(frozenset(names), {}, {}, f"{ask.claim}: no node fits in the extender's view (behind the "
                                              f"scheduler's); all {len(names)} kept")
    node = picked[0]
    why = f"flexai placement ({policy}) puts {ask.claim} on {node}, cards {list(picked[1])}"
    failed = {n: why for n in names if n != node and n in view.nodes}
    unresolvable = {n: "no gpu.flexai.io ResourceSlice on this node" for n in names if n not in view.nodes}
    return Filtered(frozenset({node}), failed, unresolvable, why)


def scores(view: View, asked: PodAsks, names: tuple[str, ...], policy: str, workload: Workload | None) -> dict[str, int]:
    """0..10 per node: the node choose_node picks 10, the others that fit down to 1 in the
    policy's order, nodes it does not fit 0; pods the extender does not decide for: all 0."""
    if asked.passthrough or not asked.asks:
        return {n: 0 for n in names}
    ask = asked.asks[0]
    ranked = rank_nodes([view.nodes[n] for n in names if n in view.nodes], demand_on(view, ask), 0, policy, workload)
    out = {n: 0 for n in names}
    last = max(1, len(ranked) - 1)
    for i, (name, _) in enumerate(ranked):
        out[name] = MAX_EXTENDER_PRIORITY - (MAX_EXTENDER_PRIORITY - 1) * i // last
    return out
