"""Choosing the card(s) for a slice so that the least capacity is stranded.

Pure functions over immutable state (no I/O): `choose()` picks cards on one node for the daemon,
`choose_node()` picks a node and its cards across a cluster for a scheduler extender.
Policies: best-fit, fgd (Weng et al., USENIX ATC'23) and flexai (the default), and two
baselines modelling stock Kubernetes DRA: dra-first-fit (the structured allocator's first
device that fits, on the node kube-scheduler's LeastAllocated score picks) and
dra-most-used-first (the same, on a ResourceSlice listed fullest card first); see
docs/placement.md for how each works and how they compare on the Alibaba openb trace.

May import: nothing else of flexai_hook: it is pure, and the openb replay uses it alone.
"""

from .model import CardState, Demand, Node
from .policies import DEFAULT_POLICY, POLICIES, choose, choose_node, rank_nodes
from .workload import TaskType, Workload

__all__ = [
    "CardState",
    "DEFAULT_POLICY",
    "Demand",
    "Node",
    "POLICIES",
    "TaskType",
    "Workload",
    "choose",
    "choose_node",
    "rank_nodes",
]
