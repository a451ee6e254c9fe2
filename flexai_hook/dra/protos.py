"""The kubelet's gRPC APIs as Python modules, compiled at load time from the proto subsets in
proto/ (grpcio-tools; `pip install flexai[dra]`). Compiling at load keeps the .proto files the
one source: there is no generated code to fall out of step with them."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

PROTO_DIR = Path(__file__).resolve().parent / "proto"
DRA_VERSIONS = ("v1", "v1beta1")  # newest first: what GetInfo lists
REGISTRATION = "pluginregistration_v1.proto"


class ProtoUnavailable(RuntimeError):
    pass


def load(name: str) -> tuple[ModuleType, ModuleType]:
    """(messages, services) modules of proto/<name>."""
    try:
        import grpc
    except ImportError:
        raise ProtoUnavailable("grpcio is not installed: `pip install 'flexai[dra]'` (grpcio, grpcio-tools, protobuf)") from None
    sys.path.insert(0, str(PROTO_DIR))  # protos_and_services finds the file on sys.path
    try:
        return grpc.protos_and_services(name)
    except (ImportError, NotImplementedError) as exc:
        raise ProtoUnavailable(f"cannot compile {PROTO_DIR / name}: {exc}; `pip install 'flexai[dra]'` "
                               f"installs grpcio-tools") from None
    finally:
        sys.path.remove(str(PROTO_DIR))


def dra(version: str) -> tuple[ModuleType, ModuleType]:
    return load(f"dra_{version}.proto")


def registration() -> tuple[ModuleType, ModuleType]:
    return load(REGISTRATION)
