"""Stand-in agents for the deploy benchmark's registry-scaling measurement ONLY: many lightweight
``Agent`` services in one process that accept every request without touching the kernel.

Not an agent. Each stand-in is its own gRPC server (mutual TLS with the development
``agent`` certificate, on a unix socket of its own, as the emulator's real agents) that answers
``Prepare``/``Commit``/``Abort``/``Cleanup``/``Apply``/``Remove`` by recording what it was
asked (so the benchmark can check that a deploy reached the hosts placement chose, through
``ListState``), and ``Capabilities`` with a made-up host: ``--cpus`` cores, the VNFs named,
an underlay interface with a MAC and an address in 198.18.0.0/15 (the orchestrator plans
NSH between hosts from them; no packet is ever sent). It registers with the real
orchestrator (``Orchestrator.Register``) and heartbeats at the interval the orchestrator
returns, as ``vnfkit.agent.report`` does, so the orchestrator sees ordinary live hosts.

What it leaves out of a real agent: no data path, no SQLite, no counter stream unless
``--counter-streams`` (a real agent keeps one ``ReportCounters`` stream open per agent); the
heartbeats of a process's stand-ins go over one shared channel, one after the other.

    python -m perf.stub_agents --orchestrator unix:/tmp/o.sock --certs CERTS --sockets DIR \\
        --first 0 --count 25 [--ingress-host stub-000]

prints ``ready <count>`` on stdout once every stand-in is registered, and runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from vnfkit.agent import tls
from vnfkit.proto import load

pb, rpc = load()
VERSION = "stub-0"  # shows in ListHosts: these hosts are stand-ins


def stub_name(i: int) -> str:
    """The host name of stand-in ``i`` (sorted names follow registration order)."""
    return f"stub-{i:03d}"


class StubAgent(rpc.AgentServicer):
    """One stand-in host: remembers segments, does nothing else."""

    def __init__(self, index: int, address: str, cpus: int, vnfs: Sequence[str], ingress: bool) -> None:
        self.name = stub_name(index)
        self.address = address
        self.lock = threading.Lock()
        self.applied: dict[str, Any] = {}  # service -> Segment
        self.prepared: Any = None
        # 02:56:4b (locally administered) + the index; 198.18.128.0/17 keeps clear of what
        # datapath.netns hands out from the low half of the benchmarking range.
        mac = f"02:56:4b:00:{index >> 8:02x}:{index & 0xff:02x}"
        ip = f"198.18.{128 + (index >> 8)}.{(index & 0xff) or 254}/17"
        self.caps = pb.HostCapabilities(
            host=self.name, agent_version=VERSION, kernel="stand-in", root=True, bpffs=True, btf=True,
            interfaces=[pb.Interface(name="ul0", mac=mac, addresses=[ip], mtu=1600),
                        pb.Interface(name="in0", mac=mac, mtu=1500)],
            vnfs=list(vnfs), encaps=[pb.ENCAP_ETH, pb.ENCAP_VXLAN_GPE], max_functions=64, max_local_hops=16,
            ingress=["in0"] if ingress else [], underlay="ul0", cpus=cpus, memory_mb=4096)

    # Every handler accepts: the measurement is the orchestrator's side of the conversation.
    def Prepare(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802 - gRPC's names
        with self.lock:
            self.prepared = request
        return pb.PrepareReply(changed=True)

    def Commit(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        with self.lock:
            if self.prepared is not None and self.prepared.service == request.service:
                self.applied[request.service] = self.prepared
                self.prepared = None
        return pb.CommitReply()

    def Abort(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        with self.lock:
            self.prepared = None
        return pb.AbortReply()

    def Cleanup(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return pb.CleanupReply()

    def Apply(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        with self.lock:
            self.applied[request.service] = request
        return pb.ApplyReply(changed=True)

    def Remove(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        with self.lock:
            removed = self.applied.pop(request.service, None) is not None
        return pb.RemoveReply(removed=removed)

    def Capabilities(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return self.caps

    def ListState(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        with self.lock:
            st = pb.State(host=self.name)
            for svc, seg in sorted(self.applied.items()):
                st.services.add(service=svc, generation=seg.generation, phase=pb.PHASE_APPLIED, segment=seg)
            return st

    def GetCounters(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return pb.Counters(host=self.name, timestamp_ns=time.monotonic_ns())


class StubProcess:
    """``count`` stand-ins from ``first`` on, each with its own server, and their heartbeats."""

    def __init__(self, orchestrator: str, certs: Path, sockets: Path, first: int, count: int, *, cpus: int,
                 vnfs: Sequence[str], ingress_host: str, counter_streams: bool) -> None:
        self.orchestrator = orchestrator
        self.certs = certs
        self.stop = threading.Event()
        self.interval = 0.5
        self.counter_streams = counter_streams
        self.heartbeats = 0
        creds = tls.server_credentials(certs / "ca.pem", certs / "agent.pem", certs / "agent.key")
        self.agents: list[StubAgent] = []
        self.servers: list[grpc.Server] = []
        sockets.mkdir(parents=True, exist_ok=True)
        for i in range(first, first + count):
            address = f"unix:{sockets}/{stub_name(i)}.sock"
            agent = StubAgent(i, address, cpus, vnfs, stub_name(i) == ingress_host)
            # Two workers each: a stand-in answers one orchestrator at a time anyway, and
            # 25 servers per process must not mean 25 x 10 idle threads.
            server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
            rpc.add_AgentServicer_to_server(agent, server)
            server.add_secure_port(address, creds)
            server.start()
            self.agents.append(agent)
            self.servers.append(server)
        self.channel = grpc.secure_channel(
            orchestrator, tls.channel_credentials(certs / "ca.pem", certs / "agent.pem", certs / "agent.key"),
            tls.channel_options(orchestrator))
        self.stub = rpc.OrchestratorStub(self.channel)
        self.streams: list[Any] = []

    def register(self, agent: StubAgent) -> None:
        reply = self.stub.Register(pb.RegisterRequest(host=agent.name, address=agent.address,
                                                      capabilities=agent.caps), timeout=60,
                                     wait_for_ready=True)  # the orchestrator may still be starting
        if reply.heartbeat_interval_ms:
            self.interval = reply.heartbeat_interval_ms / 1000

    def _reports(self, agent: StubAgent) -> Iterator[Any]:
        seq = 0
        while not self.stop.is_set():
            seq += 1
            yield pb.CounterReport(host=agent.name, sequence=seq,
                                   counters=pb.Counters(host=agent.name, timestamp_ns=time.monotonic_ns()))
            if self.stop.wait(self.interval):
                return

    def start(self) -> None:
        for agent in self.agents:
            self.register(agent)
            if self.counter_streams:
                self.streams.append(self.stub.ReportCounters.future(self._reports(agent)))
        threading.Thread(target=self._heartbeats, name="stub-heartbeats", daemon=True).start()

    def _heartbeats(self) -> None:
        while not self.stop.wait(self.interval):
            for agent in self.agents:
                try:
                    self.stub.Heartbeat(pb.HeartbeatRequest(host=agent.name, timestamp_ns=time.monotonic_ns()),
                                        timeout=max(self.interval, 1.0))
                    self.heartbeats += 1
                except grpc.RpcError as exc:
                    if exc.code() == grpc.StatusCode.NOT_FOUND:  # a restarted orchestrator forgot us
                        try:
                            self.register(agent)
                        except grpc.RpcError:
                            pass
                if self.stop.is_set():
                    return

    def close(self) -> None:
        self.stop.set()
        for call in self.streams:
            call.cancel()
        for server in self.servers:
            server.stop(0)
        self.channel.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run stand-ins until SIGTERM or SIGINT; ``ready <count>`` on stdout once all are registered."""
    p = argparse.ArgumentParser(prog="python -m perf.stub_agents", description=__doc__.splitlines()[0])
    p.add_argument("--orchestrator", required=True)
    p.add_argument("--certs", type=Path, required=True, help="ca.pem, agent.pem, agent.key (vnfkit certs)")
    p.add_argument("--sockets", type=Path, required=True, help="folder for the stand-ins' unix sockets")
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--vnfs", default="firewall,monitor")
    p.add_argument("--ingress-host", default=stub_name(0), help="the one stand-in facing clients")
    p.add_argument("--counter-streams", action="store_true", help="keep a ReportCounters stream open per stand-in")
    args = p.parse_args(argv)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    proc = StubProcess(args.orchestrator, args.certs, args.sockets, args.first, args.count, cpus=args.cpus,
                       vnfs=args.vnfs.split(","), ingress_host=args.ingress_host,
                       counter_streams=args.counter_streams)
    try:
        proc.start()
        print(f"ready {args.count}", flush=True)
        done.wait()
    finally:
        proc.close()
    print(f"heartbeats {proc.heartbeats}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
