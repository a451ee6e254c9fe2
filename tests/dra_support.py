"""The other side of flexai's DRA kubelet plugin, for tests and bench/dra.py: a kubelet peer
(gRPC stubs generated at test time from flexai_hook/dra/proto/ with grpcio-tools, calling over
the real unix sockets), a fake API server serving ResourceClaims built with the official
`kubernetes` client's models, and the agent (`flexai dra`) as a process stopped by pid."""

from __future__ import annotations

import importlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Callable

PROTO_DIR = Path(__file__).resolve().parent.parent / "flexai_hook" / "dra" / "proto"
DRIVER = "gpu.flexai.io"
RPC_TIMEOUT = 60.0
GIB = 1 << 30


# --- the kubelet's side ------------------------------------------------------------------

def compile_stubs(out: Path) -> dict[str, tuple[ModuleType, ModuleType]]:
    """{"v1": (pb2, pb2_grpc), "v1beta1": ..., "registration": ...} generated into `out`."""
    from grpc_tools import protoc

    out.mkdir(parents=True, exist_ok=True)
    names = {"v1": "dra_v1", "v1beta1": "dra_v1beta1", "registration": "pluginregistration_v1"}
    for stem in names.values():
        rc = protoc.main(["protoc", f"-I{PROTO_DIR}", f"--python_out={out}", f"--grpc_python_out={out}", f"{stem}.proto"])
        if rc != 0:
            raise RuntimeError(f"protoc could not compile {PROTO_DIR / stem}.proto (exit {rc})")
    sys.path.insert(0, str(out))
    try:
        found = {}
        for key, stem in names.items():
            for mod in (f"{stem}_pb2", f"{stem}_pb2_grpc"):
                sys.modules.pop(mod, None)
            found[key] = (importlib.import_module(f"{stem}_pb2"), importlib.import_module(f"{stem}_pb2_grpc"))
        return found
    finally:
        sys.path.remove(str(out))


class Kubelet:
    """Calls as the kubelet does: GetInfo + NotifyRegistrationStatus on the registration socket,
    then the DRA service at the endpoint GetInfo named, in the version it picked."""

    def __init__(self, stubs: dict, registration_socket: str):
        self.stubs = stubs
        self.registration_socket = registration_socket
        self.channels: list = []

    def _channel(self, path: str):
        import grpc

        channel = grpc.insecure_channel(f"unix://{path}")
        self.channels.append(channel)
        return channel

    def register(self):
        pb, services = self.stubs["registration"]
        stub = services.RegistrationStub(self._channel(self.registration_socket))
        info = stub.GetInfo(pb.InfoRequest(), timeout=RPC_TIMEOUT)
        stub.NotifyRegistrationStatus(pb.RegistrationStatus(plugin_registered=True), timeout=RPC_TIMEOUT)
        return info

    def dra(self, endpoint: str, version: str = "v1") -> "DraPeer":
        pb, services = self.stubs[version]
        return DraPeer(pb, services.DRAPluginStub(self._channel(endpoint)))

    def close(self) -> None:
        for c in self.channels:
            c.close()


class DraPeer:
    def __init__(self, pb, stub):
        self.pb, self.stub = pb, stub

    def _claims(self, claims):
        return [self.pb.Claim(namespace=ns, name=name, uid=uid) for ns, name, uid in claims]

    def prepare(self, *claims):
        return self.stub.NodePrepareResources(self.pb.NodePrepareResourcesRequest(claims=self._claims(claims)),
                                              timeout=RPC_TIMEOUT).claims

    def unprepare(self, *claims):
        return self.stub.NodeUnprepareResources(self.pb.NodeUnprepareResourcesRequest(claims=self._claims(claims)),
                                                timeout=RPC_TIMEOUT).claims


# --- the API server's side ---------------------------------------------------------------

def resource_claim(namespace: str, name: str, uid: str, results: list[dict], pool: str = "node-a",
                   requests: dict | None = None, pods: tuple[str, ...] = ()) -> dict:
    """A ResourceClaim in resource.k8s.io/v1 shape, built with the kubernetes client's models
    (so the JSON is what the API server sends) and returned as that JSON. `results`: dicts of
    device (gpu-N), consumed ({"memory": "4Gi", ...}), optional request and share_id; `pods`:
    the pods it is reserved for (status.reservedFor)."""
    from kubernetes import client as k

    allocation = k.V1AllocationResult(devices=k.V1DeviceAllocationResult(results=[
        k.V1DeviceRequestAllocationResult(request=r.get("request", "gpu"), driver=r.get("driver", DRIVER),
                                          pool=r.get("pool", pool), device=r["device"],
                                          consumed_capacity=r.get("consumed"), share_id=r.get("share_id"))
        for r in results]))
    claim = k.ResourceV1ResourceClaim(
        api_version="resource.k8s.io/v1", kind="ResourceClaim",
        metadata=k.V1ObjectMeta(name=name, namespace=namespace, uid=uid),
        spec=k.V1ResourceClaimSpec(devices=k.V1DeviceClaim(requests=[k.V1DeviceRequest(
            name="gpu", exactly=k.V1ExactDeviceRequest(
                device_class_name=DRIVER, capacity=k.V1CapacityRequirements(requests=requests or {})))])),
        status=k.V1ResourceClaimStatus(allocation=allocation, reserved_for=[
            k.V1ResourceClaimConsumerReference(resource="pods", name=p, uid=f"pod-uid-{p}") for p in pods] or None))
    return k.ApiClient().sanitize_for_serialization(claim)


def parse_claim(data: dict):
    """The JSON back through the kubernetes client's deserializer (the round trip)."""
    from kubernetes import client as k

    return k.ApiClient()._ApiClient__deserialize(data, "ResourceV1ResourceClaim")


SLICES = "/apis/resource.k8s.io/v1/resourceslices"
# the field labels the real API server selects ResourceSlices by (metadata.name is generic)
SLICE_FIELDS = {"metadata.name": lambda o: o["metadata"]["name"], "spec.nodeName": lambda o: o["spec"].get("nodeName", ""),
                "spec.driver": lambda o: o["spec"].get("driver", "")}
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
MAX_DEVICES = 128  # resource.k8s.io/v1 ResourceSliceMaxDevices


def parse_slice(data: dict):
    from kubernetes import client as k

    return k.ApiClient()._ApiClient__deserialize(data, "V1ResourceSlice")


class ApiStatus(Exception):
    def __init__(self, code: int, reason: str, message: str):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def _strict(data: dict, model: str) -> None:
    """Refuse what the kubernetes models do not know: the real API server with
    fieldValidation=Strict answers 400 for an unknown field."""
    from kubernetes import client as k

    api = k.ApiClient()
    back = api.sanitize_for_serialization(api._ApiClient__deserialize(data, model))
    if back != data:
        raise ApiStatus(400, "BadRequest", f"strict decoding error: {model} does not round-trip: "
                                           f"unknown or malformed field(s)")


def validate_slice(obj: dict, strict: bool = True) -> None:
    """What the real API server checks of a ResourceSlice that a driver could get wrong."""
    if obj.get("apiVersion") != "resource.k8s.io/v1" or obj.get("kind") != "ResourceSlice":
        raise ApiStatus(400, "BadRequest", f"expected resource.k8s.io/v1 ResourceSlice, got {obj.get('apiVersion')} "
                                           f"{obj.get('kind')}")
    name = (obj.get("metadata") or {}).get("name", "")
    problems = []
    if not name or len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        problems.append(f"metadata.name: Invalid value: {name!r}: a lowercase RFC 1123 subdomain must consist of ...")
    spec = obj.get("spec") or {}
    pool = spec.get("pool") or {}
    if not spec.get("driver") or not _DNS_SUBDOMAIN.match(spec.get("driver", "")):
        problems.append("spec.driver: Required value")
    if not spec.get("nodeName"):
        problems.append("spec.nodeName: Required value (this test's driver is node-local)")
    if not pool.get("name"):
        problems.append("spec.pool.name: Required value")
    if not isinstance(pool.get("generation"), int) or pool["generation"] < 0:
        problems.append("spec.pool.generation: Invalid value: must be greater than or equal to 0")
    if not isinstance(pool.get("resourceSliceCount"), int) or pool["resourceSliceCount"] < 1:
        problems.append("spec.pool.resourceSliceCount: Invalid value: must be greater than 0")
    devices = spec.get("devices") or []
    if len(devices) > MAX_DEVICES:
        problems.append(f"spec.devices: Too many: {len(devices)}: must have at most {MAX_DEVICES} items")
    names = [d.get("name", "") for d in devices]
    if len(set(names)) != len(names) or not all(_DNS_LABEL.match(n) for n in names):
        problems.append("spec.devices[].name: Invalid value: must be unique DNS labels")
    if problems:
        raise ApiStatus(422, "Invalid", f"ResourceSlice.resource.k8s.io \"{name}\" is invalid: {'; '.join(problems)}")
    if strict:
        _strict(obj, "V1ResourceSlice")


def _selector(text: str, known: dict | None) -> list[tuple[str, str, str]]:
    """"a=b,c!=d,e" as (key, op, value); with `known`, only those keys (field labels)."""
    out = []
    for term in filter(None, text.split(",")):
        match = re.match(r"^([^=!]+?)(==|=|!=)(.*)$", term)
        key, op, value = (match.groups() if match else (term, "exists", ""))
        if known is not None and (key not in known or op == "exists"):
            raise ApiStatus(400, "BadRequest", f"field label not supported: {key}")
        out.append((key, "=" if op == "==" else op, value))
    return out


def _matches(terms, get) -> bool:
    for key, op, value in terms:
        have = get(key)
        if (op == "=" and have != value) or (op == "!=" and have == value) or (op == "exists" and have is None):
            return False
    return True


class FakeApiServer:
    """The parts of the API server flexai's agent and extender use, with the real one's rules: GET
    ResourceClaims from `claims` (one, or all namespaces' as a list); ResourceSlices stored in `slices` with list (fieldSelector on
    the real field labels, labelSelector), get, create (no resourceVersion, a DNS-subdomain
    name, strict fields, 409 AlreadyExists), update (needs metadata.resourceVersion; stale:
    409 Conflict), delete (404, uid preconditions). Only with the bearer token; errors are
    Status objects. `calls` records (method, path, query); `down()`/`up()` close and reopen
    the port, state kept."""

    def __init__(self, token: str):
        self.token = token
        self.claims: dict[tuple[str, str], dict] = {}
        self.slices: dict[str, dict] = {}
        self.calls: list[tuple[str, str, dict]] = []
        self.requests = 0
        self.version = 100
        self.lock = threading.Lock()
        self.port = 0
        self.server: ThreadingHTTPServer | None = None
        self.before: Callable[[str, str], None] | None = None  # called (method, path) before each request
        self.strict = True  # round-trip bodies through the kubernetes models (bench/dra.py turns it off)
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _serve(self, method):
                from urllib.parse import parse_qs, urlsplit

                outer.requests += 1
                split = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(split.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                with outer.lock:
                    outer.calls.append((method, split.path, query))
                    try:
                        if outer.before is not None:
                            outer.before(method, split.path)
                        if self.headers.get("Authorization") != f"Bearer {outer.token}":
                            raise ApiStatus(401, "Unauthorized", "Unauthorized")
                        body = json.loads(raw) if raw else None
                        code, reply = outer.handle(method, split.path, query, body)
                    except ApiStatus as exc:
                        code, reply = exc.code, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                                 "message": exc.message, "reason": exc.reason, "code": exc.code}
                    except ValueError:
                        code, reply = 400, {"kind": "Status", "message": "the body is not JSON", "reason": "BadRequest"}
                self._send(code, reply)

            def do_GET(self):
                self._serve("GET")

            def do_POST(self):
                self._serve("POST")

            def do_PUT(self):
                self._serve("PUT")

            def do_DELETE(self):
                self._serve("DELETE")

            def _send(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def down(self) -> None:
        """Close the port: the agent sees connection refused, as with an API server that is down."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def handle(self, method: str, path: str, query: dict, body) -> tuple[int, dict]:
        parts = path.strip("/").split("/")
        if method == "GET" and len(parts) == 7 and parts[:4] == ["apis", "resource.k8s.io", "v1", "namespaces"] \
                and parts[5] == "resourceclaims":
            if (parts[4], parts[6]) in self.claims:
                return 200, self.claims[(parts[4], parts[6])]
            raise ApiStatus(404, "NotFound", f"resourceclaims.resource.k8s.io \"{parts[6]}\" not found")
        if method == "GET" and path == "/apis/resource.k8s.io/v1/resourceclaims":  # every namespace's
            return 200, {"kind": "ResourceClaimList", "apiVersion": "resource.k8s.io/v1",
                         "metadata": {"resourceVersion": str(self.version)},
                         "items": [{k: v for k, v in o.items() if k not in ("kind", "apiVersion")}
                                   for o in self.claims.values()]}
        if path == SLICES and method == "GET":
            fields = _selector(query.get("fieldSelector", ""), SLICE_FIELDS)
            labels = _selector(query.get("labelSelector", ""), None)
            items = [o for o in self.slices.values()
                     if _matches(fields, lambda k, o=o: SLICE_FIELDS[k](o))
                     and _matches(labels, lambda k, o=o: (o["metadata"].get("labels") or {}).get(k))]
            return 200, {"kind": "ResourceSliceList", "apiVersion": "resource.k8s.io/v1",
                         "metadata": {"resourceVersion": str(self.version)},
                         "items": [{k: v for k, v in o.items() if k not in ("kind", "apiVersion")} for o in items]}
        if path == SLICES and method == "POST":
            meta = (body or {}).get("metadata") or {}
            if meta.get("resourceVersion"):
                raise ApiStatus(400, "BadRequest", "resourceVersion should not be set on objects to be created")
            validate_slice(body, self.strict)
            if meta["name"] in self.slices:
                raise ApiStatus(409, "AlreadyExists", f"resourceslices.resource.k8s.io \"{meta['name']}\" already exists")
            return 201, self._store(body, uid=str(uuid.uuid4()))
        if path.startswith(SLICES + "/") and len(parts) == 5:
            name = parts[4]
            have = self.slices.get(name)
            if method == "GET":
                if have is None:
                    raise ApiStatus(404, "NotFound", f"resourceslices.resource.k8s.io \"{name}\" not found")
                return 200, have
            if method == "PUT":
                meta = (body or {}).get("metadata") or {}
                if meta.get("name") != name:
                    raise ApiStatus(400, "BadRequest", "the name of the object does not match the name on the URL")
                if have is None:
                    raise ApiStatus(404, "NotFound", f"resourceslices.resource.k8s.io \"{name}\" not found")
                if not meta.get("resourceVersion"):
                    raise ApiStatus(422, "Invalid", f"ResourceSlice.resource.k8s.io \"{name}\" is invalid: "
                                                    f"metadata.resourceVersion: Invalid value: 0x0: must be specified for an update")
                if meta["resourceVersion"] != have["metadata"]["resourceVersion"]:
                    raise ApiStatus(409, "Conflict", f"Operation cannot be fulfilled on resourceslices.resource.k8s.io "
                                                     f"\"{name}\": the object has been modified; please apply your "
                                                     f"changes to the latest version and try again")
                if meta.get("uid") not in (None, have["metadata"]["uid"]):
                    raise ApiStatus(409, "Conflict", "Precondition failed: UID in object meta does not match")
                validate_slice({**body, "metadata": {k: v for k, v in meta.items() if k == "name"}}, self.strict)
                return 200, self._store(body, uid=have["metadata"]["uid"], created=have["metadata"]["creationTimestamp"])
            if method == "DELETE":
                if have is None:
                    raise ApiStatus(404, "NotFound", f"resourceslices.resource.k8s.io \"{name}\" not found")
                want = ((body or {}).get("preconditions") or {}).get("uid")
                if want and want != have["metadata"]["uid"]:
                    raise ApiStatus(409, "Conflict", f"Precondition failed: UID in precondition: {want}, "
                                                     f"UID in object meta: {have['metadata']['uid']}")
                del self.slices[name]
                return 200, have
        raise ApiStatus(404, "NotFound", f"the server could not find the requested resource ({method} {path})")

    def _store(self, body: dict, uid: str, created: str | None = None) -> dict:
        self.version += 1
        obj = json.loads(json.dumps(body))
        obj["metadata"].update(uid=uid, resourceVersion=str(self.version),
                               creationTimestamp=created or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        self.slices[obj["metadata"]["name"]] = obj
        return obj

    def put(self, claim: dict) -> None:
        meta = claim["metadata"]
        self.claims[(meta["namespace"], meta["name"])] = claim

    def close(self) -> None:
        self.down()


# --- the agent ---------------------------------------------------------------------------

class Agent:
    """`flexai dra` as a child process; stop() by its pid."""

    def __init__(self, flexai: str, root: Path, socket: str, api: FakeApiServer, token_file: Path,
                 node: str = "node-a", extra: tuple[str, ...] = ("--publish-interval", "0")):
        """`extra`: more options; by default the node's ResourceSlice is not published (the tests
        of publishing name --publish-interval)."""
        self.root = root
        self.registry_dir, self.plugin_dir, self.cdi_dir = root / "registry", root / "plugins" / DRIVER, root / "cdi"
        self.registration_socket = self.registry_dir / f"{DRIVER}-reg.sock"
        self.plugin_socket = self.plugin_dir / "dra.sock"
        self.log_path = root / "agent.log"
        self.cmd = [flexai, "dra", "--registry-dir", str(self.registry_dir), "--plugin-dir", str(self.plugin_dir),
                    "--cdi-dir", str(self.cdi_dir), "--kube-api", api.url, "--token-file", str(token_file),
                    "--socket", socket, "--node", node, "-v", *extra]
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> "Agent":
        self.root.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + timeout
        while not self.registration_socket.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"flexai dra exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"flexai dra did not register within {timeout:g}s:\n{self.log()}")
            time.sleep(0.05)
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code, self.proc = self.proc.returncode, None
        return code

    def log(self) -> str:
        try:
            return self.log_path.read_text()
        except FileNotFoundError:
            return ""

    def spec_path(self, uid: str) -> Path:
        return self.cdi_dir / f"flexai.io-gpu_{uid}.json"
