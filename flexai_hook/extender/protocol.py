"""kube-scheduler's extender protocol (k8s.io/kube-scheduler/extender/v1), as JSON. Pure.

The Go types carry no json tags, so kube-scheduler sends the Go field names ("Pod", "Nodes",
"NodeNames") and reads replies with encoding/json, which matches names case-insensitively:
arguments are read the same way here, replies use the exact Go names.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

MAX_EXTENDER_PRIORITY = 10  # extender/v1 MaxExtenderPriority


class ProtocolError(ValueError):
    """The body is not ExtenderArgs; str() is one line."""


@dataclass(frozen=True)
class Args:
    pod: Mapping
    nodes: tuple[Mapping, ...] | None  # full Node objects (nodeCacheCapable: false)
    node_names: tuple[str, ...] | None  # names only (nodeCacheCapable: true)

    @property
    def names(self) -> tuple[str, ...]:
        if self.node_names is not None:
            return self.node_names
        return tuple(str((n.get("metadata") or {}).get("name", "")) for n in self.nodes or ())


def _field(obj: Mapping, name: str):
    """obj[name] matched as Go's encoding/json does: exact name first, else case-insensitive."""
    if name in obj:
        return obj[name]
    for key, value in obj.items():
        if isinstance(key, str) and key.lower() == name.lower():
            return value
    return None


def parse_args(body: bytes) -> Args:
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"the body is not JSON ({exc}); kube-scheduler sends ExtenderArgs") from None
    if not isinstance(obj, dict):
        raise ProtocolError("the body is not a JSON object; kube-scheduler sends ExtenderArgs {Pod, Nodes|NodeNames}")
    pod = _field(obj, "Pod")
    if not isinstance(pod, dict):
        raise ProtocolError("ExtenderArgs has no Pod object")
    nodes, names = _field(obj, "Nodes"), _field(obj, "NodeNames")
    if names is not None:
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ProtocolError("ExtenderArgs.NodeNames is not a list of names")
        return Args(pod, None, tuple(names))
    if nodes is None:
        raise ProtocolError("ExtenderArgs has neither Nodes nor NodeNames")
    items = nodes.get("items") if isinstance(nodes, dict) else None
    if not isinstance(items, list) or not all(isinstance(n, dict) for n in items):
        raise ProtocolError("ExtenderArgs.Nodes is not a NodeList with items")
    return Args(pod, tuple(items), None)


def filter_result(args: Args, keep: set[str], failed: Mapping[str, str], unresolvable: Mapping[str, str]) -> dict:
    """ExtenderFilterResult in the form the call came in: Nodes (NodeList) or NodeNames."""
    result: dict = {"FailedNodes": dict(failed), "FailedAndUnresolvableNodes": dict(unresolvable), "Error": ""}
    if args.node_names is not None:
        result["NodeNames"] = [n for n in args.node_names if n in keep]
    else:
        result["Nodes"] = {"apiVersion": "v1", "kind": "NodeList", "metadata": {},
                           "items": [n for n in args.nodes or () if (n.get("metadata") or {}).get("name") in keep]}
    return result


def filter_error(message: str) -> dict:
    """A filter answer kube-scheduler treats as this extender failing (skipped when ignorable)."""
    return {"Error": message}


def priorities(scores: Mapping[str, int], names: tuple[str, ...]) -> list[dict]:
    """HostPriorityList: every node asked about, in the order asked, scored 0..10."""
    return [{"Host": n, "Score": max(0, min(MAX_EXTENDER_PRIORITY, int(scores.get(n, 0))))} for n in names]
