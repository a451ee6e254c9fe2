"""The kubelet plugin's gRPC servers: registration on a socket in the kubelet's
plugins_registry directory, the DRA service (every version in protos.DRA_VERSIONS) on the
plugin's own socket. Each call is handed to driver.Driver; this module only translates."""

from __future__ import annotations

import logging
import os
from concurrent import futures
from dataclasses import dataclass

from . import claim as claim_mod
from . import protos
from .driver import ClaimRef, Driver

log = logging.getLogger("flexai.dra")

REGISTRY_DIR = "/var/lib/kubelet/plugins_registry"
PLUGIN_DIR = f"/var/lib/kubelet/plugins/{claim_mod.DRIVER}"
PLUGIN_TYPE = "DRAPlugin"


@dataclass(frozen=True)
class Sockets:
    registration: str
    plugin: str

    @classmethod
    def under(cls, registry_dir: str = REGISTRY_DIR, plugin_dir: str = PLUGIN_DIR,
              driver: str = claim_mod.DRIVER) -> "Sockets":
        # the names the kubelet's own plugin helper uses (k8s.io/dynamic-resource-allocation)
        return cls(os.path.join(registry_dir, f"{driver}-reg.sock"), os.path.join(plugin_dir, "dra.sock"))


def _dra_servicer(version: str, driver: Driver):
    pb, services = protos.dra(version)
    with_share_id = "share_id" in pb.Device.DESCRIPTOR.fields_by_name

    class Servicer(services.DRAPluginServicer):
        def NodePrepareResources(self, request, context):
            reply = pb.NodePrepareResourcesResponse()
            for c in request.claims:
                prepared = driver.prepare(ClaimRef(c.namespace, c.name, c.uid))
                out = reply.claims[c.uid]
                if prepared.error:
                    out.error = prepared.error
                for d in prepared.devices:
                    dev = out.devices.add(request_names=list(d.request_names), pool_name=d.pool,
                                          device_name=d.device, cdi_device_ids=list(d.cdi_ids))
                    if with_share_id and d.share_id:
                        dev.share_id = d.share_id
            return reply

        def NodeUnprepareResources(self, request, context):
            reply = pb.NodeUnprepareResourcesResponse()
            for c in request.claims:
                reply.claims[c.uid].error = driver.unprepare(ClaimRef(c.namespace, c.name, c.uid))
            return reply

    return services, Servicer()


def _registration_servicer(driver_name: str, endpoint: str):
    pb, services = protos.registration()

    class Servicer(services.RegistrationServicer):
        def GetInfo(self, request, context):
            return pb.PluginInfo(type=PLUGIN_TYPE, name=driver_name, endpoint=endpoint,
                                 supported_versions=[f"{v}.DRAPlugin" for v in protos.DRA_VERSIONS])

        def NotifyRegistrationStatus(self, request, context):
            if request.plugin_registered:
                log.info("registered with the kubelet as %s", driver_name)
            else:
                log.error("the kubelet refused to register %s: %s", driver_name, request.error)
            return pb.RegistrationStatusResponse()

    return services, Servicer()


def _bind(server, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        os.unlink(path)  # left by an agent that was killed; a live one would hold its own
    except FileNotFoundError:
        pass
    if server.add_insecure_port(f"unix://{path}") == 0:
        raise OSError(f"cannot listen on {path}")


class Plugin:
    """Both servers; start() serves the DRA socket before the registration socket appears, so
    the kubelet never finds a plugin it cannot call; stop() removes both sockets."""

    def __init__(self, driver: Driver, sockets: Sockets, driver_name: str = claim_mod.DRIVER, workers: int = 4):
        import grpc

        self.sockets = sockets
        self.serving = False  # between start() and stop(): what /healthz reports
        self.dra = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
        for version in protos.DRA_VERSIONS:
            services, servicer = _dra_servicer(version, driver)
            services.add_DRAPluginServicer_to_server(servicer, self.dra)
        self.registration = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
        services, servicer = _registration_servicer(driver_name, sockets.plugin)
        services.add_RegistrationServicer_to_server(servicer, self.registration)

    def start(self) -> None:
        _bind(self.dra, self.sockets.plugin)
        self.dra.start()
        _bind(self.registration, self.sockets.registration)
        self.registration.start()
        self.serving = True

    def unhealthy(self) -> str:
        """"" while both servers serve and their sockets exist, else why not."""
        if not self.serving:
            return "the gRPC servers are not started"
        for path in (self.sockets.plugin, self.sockets.registration):
            if not os.path.exists(path):
                return f"socket {path} is gone (removed from outside?): restart the agent"
        return ""

    def stop(self, grace: float = 5.0) -> None:
        # registration first: the kubelet deregisters a plugin whose socket is gone
        self.serving = False
        self.registration.stop(None).wait()
        _remove(self.sockets.registration)
        self.dra.stop(grace).wait()
        _remove(self.sockets.plugin)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
