"""The agent's gRPC server: the ``Agent`` service over ``HostAgent``, the standard health and
reflection services, mTLS (or --insecure), ``/metrics`` and the reports to the orchestrator.

``serve(cfg)`` starts everything and returns a ``Running`` to wait on or stop. Stopping leaves
the data path running from its pins (the next agent adopts it): an agent is a controller,
killing it stops no packet.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from datapath.errors import VnfkitError
from vnfkit.agent import tls
from vnfkit.agent.check import capabilities
from vnfkit.agent.config import AgentConfig
from vnfkit.agent.core import HostAgent
from vnfkit.agent.logs import event
from vnfkit.agent.metrics import serve_metrics
from vnfkit.agent.report import Reporter
from vnfkit.proto import PACKAGE, load

pb, rpc = load()
log = logging.getLogger("vnfkit.agent")
# Each WatchCounters stream holds a server thread while it lasts; streams past MAX_WATCHERS are
# refused, so the orchestrator's Prepare and Commit always find one of the other threads.
MAX_WATCHERS = 8
MAX_WORKERS = MAX_WATCHERS + 8


class AgentWork(Protocol):
    """What the Agent service hands its calls to: a host's ``HostAgent``, or a child
    orchestrator's ``vnfkit.orchestrator.domain.Domain`` (a whole domain as one host)."""

    def prepare(self, seg: Any) -> bool: ...
    def commit(self, service: str, generation: int) -> None: ...
    def abort(self, service: str, generation: int) -> None: ...
    def cleanup(self) -> None: ...
    def apply(self, seg: Any) -> bool: ...
    def remove(self, service: str) -> bool: ...
    def configure(self, service: str, generation: int, function: str, config: Any, control: Any | None) -> bool: ...
    def state(self) -> Any: ...
    def counters(self, service: str = "") -> Any: ...


class AgentService(rpc.AgentServicer):
    """The ``Agent`` service: each call checks, then hands over to ``agent``; a refusal (an
    error with a ``code``: ``AgentError``, ``OrchestratorError``) becomes that status code
    with its message."""

    def __init__(self, agent: AgentWork, *, counter_interval: float, capabilities: Callable[[], Any]) -> None:
        self.agent = agent
        self.counter_interval = counter_interval
        self.capabilities = capabilities
        self._watchers = threading.BoundedSemaphore(MAX_WATCHERS)

    @staticmethod
    def _call(context: grpc.ServicerContext, fn: Any) -> Any:
        try:
            return fn()
        except VnfkitError as exc:
            code = getattr(exc, "code", None)
            if code is None:
                log.exception("request failed")
                context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
            context.abort(getattr(grpc.StatusCode, code, grpc.StatusCode.UNKNOWN), str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug: say so, keep serving
            log.exception("request failed")
            context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")

    def Prepare(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802 - gRPC names
        return self._call(context, lambda: pb.PrepareReply(changed=self.agent.prepare(request)))

    def Commit(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return self._call(context, lambda: (self.agent.commit(request.service, request.generation),
                                            pb.CommitReply())[1])

    def Abort(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return self._call(context, lambda: (self.agent.abort(request.service, request.generation), pb.AbortReply())[1])

    def Cleanup(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return self._call(context, lambda: (self.agent.cleanup(), pb.CleanupReply())[1])

    def Apply(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return self._call(context, lambda: pb.ApplyReply(changed=self.agent.apply(request)))

    def Remove(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return self._call(context, lambda: pb.RemoveReply(removed=self.agent.remove(request.service)))

    def Configure(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        control = request.control if request.HasField("control") else None
        return self._call(context, lambda: pb.ConfigureReply(changed=self.agent.configure(
            request.service, request.generation, request.function, request.config, control)))

    def ListState(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return self._call(context, self.agent.state)

    def GetCounters(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return self._call(context, lambda: self.agent.counters(request.service))

    def WatchCounters(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        interval = request.interval_ms / 1000 if request.interval_ms else self.counter_interval
        if not self._watchers.acquire(blocking=False):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{MAX_WATCHERS} WatchCounters streams are open "
                          "already; GetCounters answers without holding one")
        try:
            gone = threading.Event()
            context.add_callback(gone.set)  # the caller went away: stop at once, not at the next yield
            while context.is_active():
                yield self._call(context, lambda: self.agent.counters(request.service))
                if gone.wait(interval):
                    return
        finally:
            self._watchers.release()

    def Capabilities(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return self._call(context, self.capabilities)


@dataclass
class Running:
    """A started agent: its gRPC server, metrics server and reporter."""

    agent: HostAgent
    server: grpc.Server
    ports: list[int]
    metrics: Any = None
    reporter: Reporter | None = None

    def stop(self, grace: float = 2.0) -> None:
        """Stop serving and let go of the data path, which keeps running."""
        if self.reporter is not None:
            self.reporter.stop()
        if self.metrics is not None:
            self.metrics.shutdown()
        self.server.stop(grace).wait()
        self.agent.release()
        event(log, "stopped; the data path runs on from its pins", group=self.agent.pins.name)


def serve(cfg: AgentConfig) -> Running:
    """Start the agent as ``cfg`` says: adopt or build the data path, then serve."""
    if cfg.insecure:
        event(log, "INSECURE: --insecure serves gRPC without TLS or client certificates; anyone who can "
                   "reach the listen address controls this host's data path. Development only.",
              level=logging.WARNING, listen=cfg.listen)
        server_creds = client_creds = None
    else:
        server_creds = tls.server_credentials(cfg.tls.ca, cfg.tls.cert, cfg.tls.key)
        client_creds = tls.channel_credentials(cfg.tls.ca, cfg.tls.cert, cfg.tls.key)
    agent = HostAgent(cfg.name, cfg.state_dir, cfg.group, cfg.vnfs_dir, drain=cfg.drain)
    agent.start()
    # With mTLS, only an orchestrator (a parent one included) may drive this host's data path.
    roles = [] if cfg.insecure else [tls.RoleCheck({f"{PACKAGE}.Agent": frozenset({"orchestrator"})})]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=MAX_WORKERS, thread_name_prefix="vnfkit-rpc"),
                         interceptors=roles)
    rpc.add_AgentServicer_to_server(AgentService(agent, counter_interval=cfg.counter_interval,
                                                 capabilities=lambda: capabilities(cfg)), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (pb.DESCRIPTOR.services_by_name["Agent"].full_name, health.SERVICE_NAME, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    ports = []
    for address in cfg.listen:
        port = (server.add_insecure_port(address) if server_creds is None
                else server.add_secure_port(address, server_creds))
        if port == 0 and not address.startswith("unix:"):
            agent.release()
            raise OSError(f"cannot listen on {address}")
        ports.append(port)
    server.start()
    for name in ("", f"{PACKAGE}.Agent"):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    running = Running(agent, server, ports)
    if cfg.metrics:
        running.metrics = serve_metrics(agent, cfg.metrics)
    if cfg.orchestrator:
        running.reporter = Reporter(agent, cfg.orchestrator, client_creds, address=cfg.address,
                                    capabilities=lambda: capabilities(cfg), counter_interval=cfg.counter_interval,
                                    heartbeat_interval=cfg.heartbeat_interval)
        running.reporter.start()
    event(log, "serving", host=cfg.name, listen=cfg.listen, ports=ports, tls=not cfg.insecure,
          group=cfg.group, state_dir=str(cfg.state_dir), adopted=agent.adopted, metrics=cfg.metrics or None,
          orchestrator=cfg.orchestrator)
    return running
