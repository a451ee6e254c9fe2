"""The other side of flexai's DRA kubelet plugin, for tests and bench/dra.py: a kubelet peer
(gRPC stubs generated at test time from flexai_hook/dra/proto/ with grpcio-tools, calling over
the real unix sockets), a fake API server serving ResourceClaims built with the official
`kubernetes` client's models, and the agent (`flexai dra`) as a process stopped by pid."""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

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
                   requests: dict | None = None) -> dict:
    """A ResourceClaim in resource.k8s.io/v1 shape, built with the kubernetes client's models
    (so the JSON is what the API server sends) and returned as that JSON. `results`: dicts of
    device (gpu-N), consumed ({"memory": "4Gi", ...}), optional request and share_id."""
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
        status=k.V1ResourceClaimStatus(allocation=allocation))
    return k.ApiClient().sanitize_for_serialization(claim)


def parse_claim(data: dict):
    """The JSON back through the kubernetes client's deserializer (the round trip)."""
    from kubernetes import client as k

    return k.ApiClient()._ApiClient__deserialize(data, "ResourceV1ResourceClaim")


class FakeApiServer:
    """GET /apis/resource.k8s.io/v1/namespaces/NS/resourceclaims/NAME from `claims`, only with
    the bearer token; 404 (a Status object) for others. Counts requests."""

    def __init__(self, token: str):
        self.token = token
        self.claims: dict[tuple[str, str], dict] = {}
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.requests += 1
                if self.headers.get("Authorization") != f"Bearer {outer.token}":
                    return self._send(401, {"kind": "Status", "message": "Unauthorized"})
                parts = self.path.strip("/").split("/")
                if len(parts) == 7 and parts[:4] == ["apis", "resource.k8s.io", "v1", "namespaces"] \
                        and parts[5] == "resourceclaims" and (parts[4], parts[6]) in outer.claims:
                    return self._send(200, outer.claims[(parts[4], parts[6])])
                self._send(404, {"kind": "Status", "message": f"resourceclaims \"{parts[-1]}\" not found"})

            def _send(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def put(self, claim: dict) -> None:
        meta = claim["metadata"]
        self.claims[(meta["namespace"], meta["name"])] = claim

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- the agent ---------------------------------------------------------------------------

class Agent:
    """`flexai dra` as a child process; stop() by its pid."""

    def __init__(self, flexai: str, root: Path, socket: str, api: FakeApiServer, token_file: Path,
                 node: str = "node-a"):
        self.root = root
        self.registry_dir, self.plugin_dir, self.cdi_dir = root / "registry", root / "plugins" / DRIVER, root / "cdi"
        self.registration_socket = self.registry_dir / f"{DRIVER}-reg.sock"
        self.plugin_socket = self.plugin_dir / "dra.sock"
        self.log_path = root / "agent.log"
        self.cmd = [flexai, "dra", "--registry-dir", str(self.registry_dir), "--plugin-dir", str(self.plugin_dir),
                    "--cdi-dir", str(self.cdi_dir), "--kube-api", api.url, "--token-file", str(token_file),
                    "--socket", socket, "--node", node, "-v"]
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> "Agent":
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
