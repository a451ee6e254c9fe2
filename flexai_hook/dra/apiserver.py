"""Reading ResourceClaims from the Kubernetes API server: one GET over HTTPS with the pod's
service-account token. Small on purpose: the agent needs one read, not a client library."""

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


class ApiError(RuntimeError):
    """The API server could not be asked, or said no; str() is one line."""


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

    def get(self, path: str) -> dict:
        """GET `path` as JSON."""
        headers = {"Accept": "application/json"}
        if self.token_file:
            try:
                with open(self.token_file) as f:
                    headers["Authorization"] = f"Bearer {f.read().strip()}"
            except OSError as exc:
                raise ApiError(f"cannot read the service-account token {self.token_file}: {exc.strerror}") from None
        context = None
        if self.url.startswith("https:"):
            context = ssl.create_default_context(cafile=self.ca_file) if self.ca_file else ssl.create_default_context()
        request = urllib.request.Request(self.url.rstrip("/") + path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=context) as reply:
                return json.loads(reply.read())
        except urllib.error.HTTPError as exc:
            reason = _status_message(exc)
            if exc.code == 404:
                raise ApiError(f"{path} does not exist on the API server ({reason})") from None
            if exc.code in (401, 403):
                raise ApiError(f"the API server refused to show {path} ({exc.code}: {reason}); give the "
                               f"agent's service account get on resourceclaims (runtime-config/kubernetes/)") from None
            raise ApiError(f"the API server answered {exc.code} for {path}: {reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            why = getattr(exc, "reason", None) or exc
            raise ApiError(f"the API server at {self.url} is not reachable ({why})") from None
        except ValueError:
            raise ApiError(f"the API server sent a reply to {path} that is not JSON") from None

    def resource_claim(self, namespace: str, name: str) -> dict:
        return self.get(CLAIMS.format(namespace=urllib.parse.quote(namespace, safe=""),
                                      name=urllib.parse.quote(name, safe="")))


def _status_message(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read())
        return str(body.get("message") or exc.reason)[:300]
    except (ValueError, AttributeError, OSError):
        return str(exc.reason)
