"""The AdmissionReview (admission.k8s.io/v1) the API server sends the webhook, and the answer. Pure.

The webhook is registered (runtime-config/kubernetes/admission-webhook.yaml) for CREATE of
ResourceClaims and ResourceClaimTemplates in resource.k8s.io/v1 with matchPolicy Equivalent,
so a claim written in another served version arrives converted to v1. The answer always
allows: a claim the webhook cannot complete goes on unchanged, with a warning (kubectl prints
it), and the scheduler consumes what it names as before. The change is one JSON Patch
`replace` of the requests list, so nothing else of the object is touched.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping

from . import defaults

API_VERSION = "admission.k8s.io/v1"
# kind -> where its ResourceClaimSpec sits in the object, as JSON Pointer tokens
SPEC_AT = {"ResourceClaim": ("spec",), "ResourceClaimTemplate": ("spec", "spec")}
MAX_WARNINGS = 10


class ReviewError(ValueError):
    """The body is not an AdmissionReview request; str() is one line."""


def parse(body: bytes) -> dict:
    """The `request` of an AdmissionReview body."""
    try:
        review = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ReviewError(f"the body is not JSON ({exc}); send an admission.k8s.io/v1 AdmissionReview") from None
    if not isinstance(review, dict) or review.get("kind") != "AdmissionReview":
        raise ReviewError("the body is not an AdmissionReview")
    if review.get("apiVersion") != API_VERSION:
        raise ReviewError(f"AdmissionReview {review.get('apiVersion')!r} is not served; "
                          f"set admissionReviewVersions: [v1] in the webhook configuration")
    request = review.get("request")
    if not isinstance(request, dict) or not isinstance(request.get("uid"), str):
        raise ReviewError("the AdmissionReview has no request with a uid")
    return request


def answer(request: Mapping, cards: Iterable[defaults.Card] | None, unknown: str = "") -> dict:
    """The AdmissionReview to send back for `request`, given the cluster's flexai card sizes
    (None: not known; `unknown` says why, as a warning)."""
    response: dict = {"uid": request["uid"], "allowed": True}
    out = {"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response}
    kind = (request.get("kind") or {}).get("kind")
    obj = request.get("object")
    at = SPEC_AT.get(kind)
    if request.get("operation") != "CREATE" or at is None or not isinstance(obj, Mapping):
        return out
    spec = obj
    for token in at:
        spec = spec.get(token) if isinstance(spec, Mapping) else None
    if not isinstance(spec, Mapping):
        return out
    if cards is None:
        if _names_one_capacity(spec):
            response["warnings"] = [f"{defaults.DRIVER}: card sizes unknown ({unknown}); a capacity left out "
                                    f"is consumed whole: name both memory and compute"]
        return out
    filled = defaults.fill(spec, cards)
    if filled.warnings:
        response["warnings"] = filled.warnings[:MAX_WARNINGS]
    if filled.requests is not None:
        path = "/" + "/".join((*at, "devices", "requests"))
        patch = [{"op": "replace", "path": path, "value": filled.requests}]
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(patch, separators=(",", ":")).encode()).decode()
    return out


def unchanged(uid: str, why: str) -> dict:
    """An answer that allows the object as written and says why (a warning kubectl prints)."""
    return {"apiVersion": API_VERSION, "kind": "AdmissionReview",
            "response": {"uid": uid, "allowed": True, "warnings": [f"{defaults.DRIVER}: {why}"]}}


def _names_one_capacity(spec: Mapping) -> bool:
    """Whether any flexai request of `spec` names only one capacity (what the webhook completes)."""
    # one huge card of each vendor the classes select: every such request would be completed
    probe = defaults.fill(spec, [defaults.Card(1 << 50, v or "") for v in set(defaults.CLASSES.values())])
    return probe.requests is not None
