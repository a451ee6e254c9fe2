"""A CRI `runtime.v1` client for tests, speaking to containerd's CRI plugin the way the kubelet
does: stubs compiled at test time from tests/cri/runtime_v1_subset.proto (a hand-kept subset of
k8s.io/cri-api's api.proto) with grpcio-tools, into a folder the caller owns.

Compiling at test time, not committing generated code: the generated modules pin the protobuf
and grpcio versions that made them, so committed ones would break (or warn) as CI's resolved
versions move; the .proto is the one source.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest

PROTO = Path(__file__).resolve().parent / "cri" / "runtime_v1_subset.proto"
RPC_TIMEOUT = 120.0  # seconds; a hung containerd fails the test instead of hanging it


def compile_stubs(out: Path) -> tuple[ModuleType, ModuleType]:
    """(messages, services) modules for the CRI subset, generated into `out`."""
    try:
        from grpc_tools import protoc
    except ImportError:
        pytest.fail("grpcio-tools is missing: it is a test dependency (pip install -e '.[test]'; tests/run.sh does)")
    out.mkdir(parents=True, exist_ok=True)
    rc = protoc.main(["protoc", f"-I{PROTO.parent}", f"--python_out={out}", f"--grpc_python_out={out}", PROTO.name])
    if rc != 0:
        pytest.fail(f"protoc could not compile {PROTO} (exit {rc})")
    stem = PROTO.stem
    # the generated services module imports the messages module by its bare name
    sys.path.insert(0, str(out))
    try:
        for name in (f"{stem}_pb2", f"{stem}_pb2_grpc"):
            sys.modules.pop(name, None)
        return importlib.import_module(f"{stem}_pb2"), importlib.import_module(f"{stem}_pb2_grpc")
    finally:
        sys.path.remove(str(out))


class Client:
    """RuntimeService and ImageService over containerd's socket; `pb` holds the messages."""

    def __init__(self, socket: str, stubs: tuple[ModuleType, ModuleType]):
        import grpc

        self.pb, services = stubs
        self.channel = grpc.insecure_channel(f"unix://{socket}")
        self.runtime = services.RuntimeServiceStub(self.channel)
        self.images = services.ImageServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def call(self, service, method: str, **fields):
        """One RPC: `method` of `service` with a request built from `fields`."""
        request = getattr(self.pb, f"{method}Request")(**fields)
        return getattr(service, method)(request, timeout=RPC_TIMEOUT)

    def rt(self, method: str, **fields):
        return self.call(self.runtime, method, **fields)

    def image_present(self, ref: str) -> bool:
        reply = self.call(self.images, "ImageStatus", image=self.pb.ImageSpec(image=ref))
        return reply.HasField("image")

    # --- what the kubelet sends -------------------------------------------------------------

    def host_network(self, container: bool = False):
        """The kubelet's namespaces for a `hostNetwork: true` pod: the node's network (so no CNI
        is needed), the pod's IPC, each container its own PID namespace."""
        pb = self.pb
        options = pb.NamespaceOption(network=pb.NODE, pid=pb.CONTAINER, ipc=pb.POD)
        if container:
            return pb.LinuxContainerSecurityContext(namespace_options=options)
        return pb.LinuxSandboxSecurityContext(namespace_options=options)

    def pod_config(self, name: str, namespace: str, uid: str, log_directory: Path,
                   annotations: dict[str, str] | None = None, cgroup_parent: str = ""):
        """`cgroup_parent`: cgroupfs style, as the kubelet's /kubepods/... (runc makes the
        containers' cgroups below it and removes only those)."""
        pb = self.pb
        return pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, namespace=namespace, uid=uid, attempt=0),
            # no hostname: a host-network pod shares the node's UTS namespace (the kubelet leaves it empty)
            log_directory=str(log_directory),
            labels={"io.kubernetes.pod.name": name, "io.kubernetes.pod.namespace": namespace,
                    "io.kubernetes.pod.uid": uid},
            annotations=annotations or {},
            linux=pb.LinuxPodSandboxConfig(cgroup_parent=cgroup_parent, security_context=self.host_network()))

    def container_config(self, name: str, image: str, command: list[str],
                         annotations: dict[str, str] | None = None, mounts: list[tuple[str, str]] = ()):
        """`mounts`: (host path, container path) pairs, read-only."""
        pb = self.pb
        return pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=name, attempt=0), image=pb.ImageSpec(image=image),
            command=command, annotations=annotations or {}, log_path=f"{name}/0.log",
            labels={"io.kubernetes.container.name": name},
            mounts=[pb.Mount(host_path=h, container_path=c, readonly=True) for h, c in mounts],
            linux=pb.LinuxContainerConfig(security_context=self.host_network(container=True)))
