"""``vnfkit-orchestrator``: the Orchestrator service (agents register, heartbeat and stream
counters) and the Control service (``vnfkit deploy``/``services``/``undeploy``/``counters``/
``hosts``) over gRPC with mutual TLS, in front of :class:`vnfkit.orchestrator.core.Orchestrator`.
It reaches each host's agent through the Agent service of ``vnfkit.proto``.

It serves the Agent service as well, on the same addresses and with the same mTLS, so that a
parent orchestrator can use this one as a host: a child domain (``--parent ADDR --domain NAME``,
``vnfkit.orchestrator.domain``).
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from chaining.plan import HostPlan
from vnfkit.agent import tls
from vnfkit.agent.config import TlsFiles
from vnfkit.agent.convert import dict_to_struct, segment_from_plan
from vnfkit.agent.logs import event
from vnfkit.agent.logs import setup as setup_logs
from vnfkit.agent.report import Reporter
from vnfkit.agent.server import AgentService
from vnfkit.orchestrator.core import Orchestrator, OrchestratorError
from vnfkit.orchestrator.domain import CapabilityWatch, Domain
from vnfkit.orchestrator.placement import load_placement
from vnfkit.orchestrator.store import AgentRecord, ServiceRecord, Store
from vnfkit.proto import PACKAGE, load

pb, rpc = load()
log = logging.getLogger("vnfkit.orchestrator")
RPC_TIMEOUT = 60.0  # a prepare compiles and verifies: seconds, not milliseconds


class GrpcAgent:
    """An agent (or child orchestrator) reached over gRPC: core.AgentClient."""

    def __init__(self, rec: AgentRecord, creds: grpc.ChannelCredentials | None) -> None:
        self.address = rec.address
        # The development certificates are issued for "localhost"; over unix sockets (the
        # emulator) there is no host name to check, so check the certificate against that.
        options = [("grpc.ssl_target_name_override", "localhost")] if creds is not None else []
        self.channel = (grpc.secure_channel(rec.address, creds, options=options) if creds is not None
                        else grpc.insecure_channel(rec.address))
        self.stub = rpc.AgentStub(self.channel)

    def _call(self, method: str, request: Any) -> Any:
        try:
            return getattr(self.stub, method)(request, timeout=RPC_TIMEOUT)
        except grpc.RpcError as exc:
            raise OrchestratorError(exc.code().name, f"{method} at {self.address}: {exc.details()}") from exc

    def prepare(self, service: str, generation: int, plan: HostPlan) -> None:
        self._call("Prepare", segment_from_plan(plan, service, generation))

    def commit(self, service: str, generation: int) -> None:
        self._call("Commit", pb.Ref(service=service, generation=generation))

    def abort(self, service: str, generation: int) -> None:
        self._call("Abort", pb.Ref(service=service, generation=generation))

    def cleanup(self) -> None:
        self._call("Cleanup", pb.CleanupRequest())

    def remove(self, service: str) -> None:
        self._call("Remove", pb.RemoveRequest(service=service))

    def close(self) -> None:
        self.channel.close()


def capabilities_dict(caps: Any) -> dict[str, Any]:
    """What the orchestrator keeps of an agent's HostCapabilities (placement and wiring)."""
    by_name = {i.name: i for i in caps.interfaces}
    underlay = by_name.get(caps.underlay)
    ip = underlay.addresses[0].split("/")[0] if underlay is not None and underlay.addresses else ""
    return {"cpus": caps.cpus or 4, "memory_mb": caps.memory_mb or 4096, "vnfs": list(caps.vnfs),
            "ingress": list(caps.ingress), "egress": list(caps.egress), "underlay": caps.underlay,
            "underlay_mac": underlay.mac if underlay is not None else "", "underlay_ip": ip,
            "kernel": caps.kernel, "problems": list(caps.problems)}


def counters_dict(c: Any) -> dict[str, Any]:
    """A Counters message as core.Orchestrator.report takes it."""
    return {"timestamp_ns": c.timestamp_ns, "reset_epoch": c.reset_epoch,
            "functions": {f"{f.service}/{f.function}": {k: [v.packets, v.bytes] for k, v in f.counters.items()}
                          for f in c.functions},
            "paths": {f"{p.service}/{p.path}": p.packets for p in c.paths},
            "hops": {f"{h.spi}:{h.si}": h.packets for h in c.hops},
            "host": dict(c.host_counters)}


# Every agent keeps a counter stream open, and a synchronous gRPC server gives each open stream
# a worker thread for its whole life: the pool holds one thread per agent plus these for the
# unary calls (Register, Heartbeat, Deploy, ...), and streams past --max-agents are refused, so
# the unary calls always have threads. (With 16 workers, 16 agents used to silence the server.)
UNARY_WORKERS = 32
MAX_AGENTS = 1000


class OrchestratorService(rpc.OrchestratorServicer):
    def __init__(self, orch: Orchestrator, heartbeat_ms: int, counter_ms: int, max_streams: int = MAX_AGENTS) -> None:
        self.orch, self.heartbeat_ms, self.counter_ms = orch, heartbeat_ms, counter_ms
        self.max_streams = max_streams
        self._streams = 0
        self._streams_lock = threading.Lock()

    def Register(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802 - gRPC's name
        try:
            self.orch.register(request.host, request.address, capabilities_dict(request.capabilities))
        except OrchestratorError as exc:
            context.abort(getattr(grpc.StatusCode, exc.code), str(exc))
        return pb.RegisterReply(heartbeat_interval_ms=self.heartbeat_ms, counter_interval_ms=self.counter_ms)

    def Heartbeat(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        if not self.orch.heartbeat(request.host):
            context.abort(grpc.StatusCode.NOT_FOUND, f"host {request.host!r} is not registered: register again")
        return pb.HeartbeatReply()

    def ReportCounters(self, request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Any:  # noqa: N802
        with self._streams_lock:
            full = self._streams >= self.max_streams
            if not full:
                self._streams += 1
        if full:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"{self.max_streams} counter streams are open already: start the orchestrator with a "
                          "larger --max-agents")
        n = 0
        try:
            for report in request_iterator:
                self.orch.report(report.host, counters_dict(report.counters))
                n += 1
        finally:
            with self._streams_lock:
                self._streams -= 1
        return pb.ReportCountersReply(received=n)


def service_info(rec: ServiceRecord) -> Any:
    return pb.ServiceInfo(name=rec.name, generation=rec.generation, state=rec.state, error=rec.error,
                          placement=rec.placement, spis=rec.spis, hosts=rec.hosts, source=rec.source)


class ControlService(rpc.ControlServicer):
    """What operators (the ``vnfkit`` CLI) ask of the orchestrator."""

    def __init__(self, orch: Orchestrator) -> None:
        self.orch = orch

    def _run(self, context: grpc.ServicerContext, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except OrchestratorError as exc:
            context.abort(getattr(grpc.StatusCode, exc.code, grpc.StatusCode.UNKNOWN), str(exc))

    def Deploy(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        rec = self._run(context, self.orch.deploy, request.path, update=request.update)
        return pb.DeployReply(service=service_info(rec))

    def Undeploy(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        self._run(context, self.orch.undeploy, request.name)
        return pb.UndeployReply()

    def ListServices(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return pb.ListServicesReply(services=[service_info(r) for r in self.orch.services()])

    def ListHosts(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        now = time.time()
        return pb.ListHostsReply(hosts=[pb.HostInfo(host=h.name, address=h.record.address, alive=h.alive,
                                                    last_seen_age_s=now - h.record.last_seen,
                                                    capabilities=dict_to_struct(h.record.capabilities))
                                        for h in self.orch.hosts()])

    def ServiceCounters(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return pb.ServiceCountersReply(counters=dict_to_struct(self.orch.service_counters(request.name or None)),
                                       timestamp=time.time())


@dataclass
class Running:
    orchestrator: Orchestrator
    server: grpc.Server
    ports: list[int]
    metrics: Any = None  # the /metrics HTTP server, if one was asked for
    domain: Domain | None = None
    reporter: Reporter | None = None
    watch: CapabilityWatch | None = None

    def stop(self, grace: float = 2.0) -> None:
        if self.metrics is not None:
            self.metrics.shutdown()
        if self.watch is not None:
            self.watch.stop()
        if self.reporter is not None:
            self.reporter.stop()
        self.server.stop(grace).wait()
        self.orchestrator.store.close()


def serve(listen: Sequence[str], state: Path, *, tls_files: TlsFiles | None, placement: str = "pack",
          drain: float = 0.1, heartbeat_ms: int = 1000, counter_ms: int = 1000, metrics: str = "",
          domain: str | None = None, parent: str | None = None, gateway: str | None = None,
          advertise: str | None = None, max_agents: int = MAX_AGENTS) -> Running:
    """Start serving; ``tls_files`` None is the announced insecure development mode; ``metrics``
    (``host:port``) also serves the services' counters at ``/metrics`` for Prometheus. With
    ``parent``, register there as the host ``domain`` reachable at ``advertise`` (default: the
    first listen address) and report to it (``vnfkit.orchestrator.domain``). ``max_agents``:
    how many agents may stream counters at once (one server thread each)."""
    if tls_files is None:
        event(log, "INSECURE: serving without TLS or client certificates; development only",
              level=logging.WARNING, listen=list(listen))
        server_creds = client_creds = None
    else:
        server_creds = tls.server_credentials(tls_files.ca, tls_files.cert, tls_files.key)
        client_creds = tls.channel_credentials(tls_files.ca, tls_files.cert, tls_files.key)
    orch = Orchestrator(Store(state), lambda rec: GrpcAgent(rec, client_creds), placement=load_placement(placement),
                        drain=drain, heartbeat_timeout=max(5.0, 5 * heartbeat_ms / 1000))
    # Threads start as calls need them, so a large pool costs nothing until agents connect.
    # With mTLS, callers by role: operators (client) drive Control; agents and child domains
    # (orchestrators) report to Orchestrator; only a parent orchestrator uses the Agent service.
    roles = [] if tls_files is None else [tls.RoleCheck({
        f"{PACKAGE}.Control": frozenset({"client"}),
        f"{PACKAGE}.Orchestrator": frozenset({"agent", "orchestrator"}),
        f"{PACKAGE}.Agent": frozenset({"orchestrator"})})]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_agents + UNARY_WORKERS,
                                                    thread_name_prefix="vnfkit-orch"), interceptors=roles)
    rpc.add_OrchestratorServicer_to_server(OrchestratorService(orch, heartbeat_ms, counter_ms, max_agents), server)
    rpc.add_ControlServicer_to_server(ControlService(orch), server)
    dom = Domain(orch, domain or socket.gethostname(), gateway=gateway)
    rpc.add_AgentServicer_to_server(AgentService(dom, counter_interval=counter_ms / 1000,
                                                 capabilities=dom.capabilities), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (f"{PACKAGE}.Orchestrator", f"{PACKAGE}.Control", f"{PACKAGE}.Agent", health.SERVICE_NAME,
             reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    ports = []
    for address in listen:
        port = (server.add_insecure_port(address) if server_creds is None
                else server.add_secure_port(address, server_creds))
        if port == 0 and not address.startswith("unix:"):
            raise OSError(f"cannot listen on {address}")
        ports.append(port)
    server.start()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    metrics_server = None
    if metrics:
        from vnfkit.orchestrator.metrics import serve_metrics

        metrics_server = serve_metrics(orch, metrics)
    running = Running(orch, server, ports, metrics_server, dom)
    if parent:
        running.reporter = Reporter(dom, parent, client_creds, address=advertise or listen[0],
                                    capabilities=dom.capabilities, counter_interval=counter_ms / 1000,
                                    heartbeat_interval=heartbeat_ms / 1000)
        running.watch = CapabilityWatch(dom, running.reporter.start, running.reporter.refresh, heartbeat_ms / 1000)
        running.watch.begin()
    event(log, "serving", listen=list(listen), ports=ports, tls=tls_files is not None, state=str(state),
          services=[s.name for s in orch.services()], hosts=[h.name for h in orch.hosts()], domain=dom.name,
          parent=parent, delegated=[d.name for d in orch.store.delegated()], metrics=metrics)
    return running


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vnfkit-orchestrator", description=__doc__.splitlines()[0])
    p.add_argument("--listen", action="append", default=None, help="gRPC address (repeatable); default 127.0.0.1:50050")
    p.add_argument("--state", type=Path, default=Path("/var/lib/vnfkit-orchestrator/orchestrator.db"))
    p.add_argument("--certs", type=Path, default=Path("/etc/vnfkit/certs"),
                   help="folder with ca.pem, orchestrator.pem, orchestrator.key (vnfkit certs)")
    p.add_argument("--insecure", action="store_true", help="no TLS (development only; said at start)")
    p.add_argument("--placement", default="pack", help="placement plug-in: pack, or module:callable")
    p.add_argument("--drain", type=float, default=0.1)
    p.add_argument("--heartbeat-ms", type=int, default=1000)
    p.add_argument("--counter-ms", type=int, default=1000)
    p.add_argument("--metrics", default="", metavar="HOST:PORT",
                   help="serve Prometheus /metrics there (default: off)")
    p.add_argument("--domain", help="this domain's name as a host of its parent (default: the host name)")
    p.add_argument("--parent", help="a parent orchestrator's address: register there as one host (recursion)")
    p.add_argument("--gateway", help="the host of this domain where NSH from the parent arrives "
                                     "(default: the first by name that does not face servers)")
    p.add_argument("--advertise", help="the address the parent reaches this orchestrator's Agent service at "
                                       "(default: the first --listen)")
    p.add_argument("--max-agents", type=int, default=MAX_AGENTS,
                   help="agents streaming counters at once (a server thread each; default %(default)s)")
    p.add_argument("--log-level", default="info")
    args = p.parse_args(argv)
    setup_logs(args.log_level)
    tls_files = None if args.insecure else TlsFiles(args.certs / "ca.pem", args.certs / "orchestrator.pem",
                                                    args.certs / "orchestrator.key")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    running = serve(args.listen or ["127.0.0.1:50050"], args.state, tls_files=tls_files, placement=args.placement,
                    drain=args.drain, heartbeat_ms=args.heartbeat_ms, counter_ms=args.counter_ms,
                    metrics=args.metrics, domain=args.domain, parent=args.parent, gateway=args.gateway,
                    advertise=args.advertise, max_agents=args.max_agents)
    stop.wait()
    running.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
