"""What Kubernetes' container runtimes write into an OCI spec that flexai must understand.

Three things, all read from the spec's annotations:

- a CRI pod sandbox (the pause container) is not a workload: containerd's CRI plugin copies the
  pod's `pod_annotations` (and so `flexai.io/*`) onto the sandbox's spec too, and marks it
  `io.kubernetes.cri.container-type: sandbox`; CRI-O marks it
  `io.kubernetes.cri-o.ContainerType: sandbox`. A sandbox never gets a slice.
- the pod a container belongs to (name and namespace), recorded with its slice for status and
  metrics.
- which containers of a pod a pod annotation is for: the CRI copies a pod's `flexai.io/*`
  annotations onto every container of the pod, sidecars and init containers too. With
  `flexai.io/containers: "model,worker"` only the containers of those names (the name the
  runtime writes into each container's spec) take the pod's request.

Pure functions, standard library only: this runs on every container start.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

# annotation key -> the runtime that writes it; the value "sandbox" marks the pod sandbox
SANDBOX_MARKERS = (
    ("io.kubernetes.cri.container-type", "containerd's CRI"),
    ("io.kubernetes.cri-o.ContainerType", "CRI-O"),
)
SANDBOX = "sandbox"

# Where each runtime writes the pod's name and namespace, first found wins. The kubelet's own
# keys (io.kubernetes.pod.*) are what CRI-O and some setups put in annotations; containerd's
# CRI writes its sandbox-name/-namespace; CRI-O also keeps the namespace under its own prefix
# and the kubelet's labels as one JSON object.
POD_NAME_KEYS = ("io.kubernetes.pod.name", "io.kubernetes.cri.sandbox-name")
POD_NAMESPACE_KEYS = ("io.kubernetes.pod.namespace", "io.kubernetes.cri.sandbox-namespace",
                      "io.kubernetes.cri-o.Namespace")
CRIO_LABELS_KEY = "io.kubernetes.cri-o.Labels"
_CRIO_LABELS_MAX = 64 * 1024  # a labels object larger than this is not parsed

# Kubernetes object names: a pod name is a DNS subdomain (RFC 1123, 253 characters), a namespace
# a DNS label (63). Anything else is not a pod's name and is not recorded: it would end up in
# status lines and Prometheus labels.
_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", re.ASCII)
NAME_MAX = {"name": 253, "namespace": 63}
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", re.ASCII)  # a container name: a DNS label


# Where each runtime writes the container's name within its pod (the pod spec's container name).
CONTAINER_NAME_KEYS = ("io.kubernetes.cri.container-name", "io.kubernetes.container.name")
CONTAINERS_ANNOTATION = "flexai.io/containers"
_CONTAINERS_MAX = 4096


def container_name(annotations: Mapping[str, object]) -> str | None:
    """The container's name within its Kubernetes pod, or None outside Kubernetes."""
    for key in CONTAINER_NAME_KEYS:
        value = annotations.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def parse_containers(value: object) -> tuple[str, ...] | None:
    """The names of flexai.io/containers ("a,b" or "a b"), or None when the value is not a list
    of container names (DNS labels, as Kubernetes requires of them)."""
    if not isinstance(value, str) or len(value) > _CONTAINERS_MAX:
        return None
    names = tuple(n for n in value.replace(",", " ").split() if n)
    if not names or any(len(n) > NAME_MAX["namespace"] or _LABEL.fullmatch(n) is None for n in names):
        return None
    return names


def not_listed_reason(annotations: Mapping[str, object], names: tuple[str, ...]) -> str | None:
    """Why the pod's flexai.io/* annotations are not this container's (one line), or None when
    they are: the container is named in `names`, or its name is unknown (outside Kubernetes)."""
    name = container_name(annotations)
    if name is None or name in names:
        return None
    return (f"{CONTAINERS_ANNOTATION} names {', '.join(names)}; this container is {name}, "
            "so the pod's flexai.io/* annotations are not for it")


def sandbox_reason(annotations: Mapping[str, object]) -> str | None:
    """Why this spec is a CRI pod sandbox (one line), or None when it is not one."""
    for key, runtime in SANDBOX_MARKERS:
        value = annotations.get(key)
        if isinstance(value, str) and value.strip() == SANDBOX:
            return f"a Kubernetes pod sandbox ({key}={SANDBOX}, written by {runtime}) never gets a slice"
    return None


def _valid(value: object, field: str) -> str | None:
    if not isinstance(value, str):
        return None
    value = value.strip()
    if len(value) > NAME_MAX[field] or _NAME.fullmatch(value) is None:
        return None
    return value


def _crio_labels(annotations: Mapping[str, object]) -> Mapping:
    raw = annotations.get(CRIO_LABELS_KEY)
    if not isinstance(raw, str) or len(raw) > _CRIO_LABELS_MAX or "io.kubernetes.pod." not in raw:
        return {}
    try:
        labels = json.loads(raw)
    except (ValueError, RecursionError):
        return {}
    return labels if isinstance(labels, dict) else {}


def pod_of(annotations: Mapping[str, object]) -> dict[str, str]:
    """{"name": pod, "namespace": namespace} of a container spec's annotations, each only when
    found and a valid Kubernetes name; {} for a container outside Kubernetes."""
    pod: dict[str, str] = {}
    for field, keys in (("name", POD_NAME_KEYS), ("namespace", POD_NAMESPACE_KEYS)):
        for key in keys:
            value = _valid(annotations.get(key), field)
            if value is not None:
                pod[field] = value
                break
    if len(pod) < 2:
        labels = _crio_labels(annotations)
        for field in ("name", "namespace"):
            if field not in pod:
                value = _valid(labels.get(f"io.kubernetes.pod.{field}"), field)
                if value is not None:
                    pod[field] = value
    return pod


def describe(pod: Mapping[str, str]) -> str:
    """namespace/name as kubectl writes it; '' when no pod is known."""
    name, namespace = pod.get("name"), pod.get("namespace")
    if name and namespace:
        return f"{namespace}/{name}"
    return name or (f"{namespace}/?" if namespace else "")
