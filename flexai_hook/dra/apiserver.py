"""The Kubernetes API server as the agent uses it: JSON over HTTPS with the pod's
service-account token. GET a ResourceClaim; list, create, replace and delete ResourceSlices.
Small on purpose: the agent needs a handful of verbs, not a client library."""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
CLAIMS = "/apis/resource.k8s.io/v1/namespaces/{namespace}/resourceclaims/{name}"
SLICES = "/apis/resource.k8s.io/v1/resourceslices"
# what the agent's service account must be allowed, by resource (runtime-config/kubernetes/rbac.yaml)
_VERBS = {"GET": "get", "POST": "create", "PUT": "update", "DELETE": "delete"}


class ApiError(RuntimeError):
    """The API server could not be asked, or said no; str() is one line. `code` is the HTTP
    status (0: not reachable), `reason` the Status object's reason (Conflict, NotFound, ...)."""

    def __init__(self, line: str, code: int = 0, reason: str = ""):
        super().__init__(line)
        self.code, self.reason = code, reason


@dataclass(frozen=True)
class ApiServer:
    url: str  # https://host:port (http:// only for tests)
    token_file: str | None = None  # read at each call: kubelet rotates projected tokens
    ca_file: str | None = None
    timeout: float = 10.0

    @classmethod
    def in_cluster(cls) -> "ApiServer":
        """Where a pod finds its API server: the service env and the mounted service account."""
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise ApiError("KUBERNETES_SERVICE_HOST is not set: run `flexai dra` in a pod, or give --kube-api URL")
        host = f"[{host}]" if ":" in host else host
        return cls(f"https://{host}:{port}", f"{SERVICE_ACCOUNT}/token", f"{SERVICE_ACCOUNT}/ca.crt")

    def request(self, method: str, path: str, body: dict | None = None, query: dict | None = None,
                timeout: float | None = None) -> dict:
        """`method` `path` (with `query`), `body` as JSON; the reply as JSON."""
        headers = {"Accept": "application/json"}
        if self.token_file:
            try:
                with open(self.token_file) as f:
                    headers["Authorization"] = f"Bearer {f.read().strip()}"
            except OSError as exc:
                raise ApiError(f"cannot read the service-account token {self.token_file}: {exc.strerror}") from None
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        context = None
        if self.url.startswith("https:"):
            context = ssl.create_default_context(cafile=self.ca_file) if self.ca_file else ssl.create_default_context()
        target = self.url.rstrip("/") + path + ("?" + urllib.parse.urlencode(query) if query else "")
        req = urllib.request.Request(target, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout, context=context) as reply:
                return json.loads(reply.read() or b"{}")
        except urllib.error.HTTPError as exc:
            message, reason = _status(exc)
            if exc.code == 404:
                raise ApiError(f"{path} does not exist on the API server ({message})", 404, reason) from None
            if exc.code in (401, 403):
                raise ApiError(f"the API server refused {method} {path} ({exc.code} {reason}: "
                               f"{message}); give the agent's service account {_VERBS.get(method, 'list')} on "
                               f"{'resourceclaims' if 'resourceclaims' in path else 'resourceslices'} "
                               f"(runtime-config/kubernetes/rbac.yaml)", exc.code, reason) from None
            raise ApiError(f"the API server answered {method} {path} with {exc.code} {reason}: {message}",
                           exc.code, reason) from None
        except (urllib.error.URLError, OSError) as exc:
            why = getattr(exc, "reason", None) or exc
            raise ApiError(f"the API server at {self.url} is not reachable ({why})") from None
        except ValueError:
            raise ApiError(f"the API server sent a reply to {method} {path} that is not JSON") from None

    def get(self, path: str) -> dict:
        return self.request("GET", path)

    def resource_claim(self, namespace: str, name: str) -> dict:
        return self.get(CLAIMS.format(namespace=urllib.parse.quote(namespace, safe=""),
                                      name=urllib.parse.quote(name, safe="")))

    # --- ResourceSlices (cluster-scoped) ----------------------------------------------------

    def list_slices(self, field_selector: str = "", label_selector: str = "") -> dict:
        """A ResourceSliceList; the selectors as the API takes them ("spec.nodeName=n,spec.driver=d")."""
        query = {k: v for k, v in (("fieldSelector", field_selector), ("labelSelector", label_selector)) if v}
        return self.request("GET", SLICES, query=query)

    def create_slice(self, obj: dict) -> dict:
        # Strict: a field the server does not know is an error, not silently dropped
        return self.request("POST", SLICES, obj, {"fieldValidation": "Strict"})

    def replace_slice(self, obj: dict) -> dict:
        """PUT; obj's metadata.resourceVersion makes it conditional (409 Conflict when stale)."""
        return self.request("PUT", f"{SLICES}/{_quote(obj['metadata']['name'])}", obj, {"fieldValidation": "Strict"})

    def delete_slice(self, name: str, uid: str | None = None, timeout: float | None = None) -> dict:
        body = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if uid:
            body["preconditions"] = {"uid": uid}  # never delete a slice someone made again under the name
        return self.request("DELETE", f"{SLICES}/{_quote(name)}", body, timeout=timeout)


def _quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def _status(exc: urllib.error.HTTPError) -> tuple[str, str]:
    """(message, reason) of the Status object the API server sends with an error."""
    try:
        body = json.loads(exc.read())
        return " ".join(str(body.get("message") or exc.reason).split())[:300], str(body.get("reason") or exc.reason)
    except (ValueError, AttributeError, OSError):
        return str(exc.reason), str(exc.reason)
