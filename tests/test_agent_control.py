"""The agent's control plane around the data path: mTLS (no certificate, another CA, plain text:
refused), health and reflection, counters pushed to a real Orchestrator server the test runs
(Register, Heartbeat, ReportCounters with sequence numbers, monotonic timestamps and a reset
epoch; an orchestrator that goes away and comes back), WatchCounters with a caller that leaves
mid-stream, ``/metrics``, a client generated independently from the proto file, and
``vnfkit-agent --check``."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from test_agent import segment, send  # the same segment and traffic

from datapath import netns
from datapath.pins import PinGroup
from vnfkit.agent.config import TlsFiles
from vnfkit.agent.process import AgentProcess
from vnfkit.agent.tls import channel_credentials, make_dev_certs
from vnfkit.proto import PROTO, load

pytestmark = pytest.mark.kernel
pb, rpc = load()
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = 30.0, what: str = "condition"):  # noqa: ANN001, ANN201
    """Poll until ``predicate()`` is truthy (a deadline for a hung agent, not a timing threshold)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout} s")
        time.sleep(0.05)


def test_mtls_refuses_callers_without_a_certificate_of_its_ca_or_of_another_role(tmp_path: Path) -> None:
    certs = make_dev_certs(tmp_path / "certs")
    other = make_dev_certs(tmp_path / "other")
    port = free_port()
    group = f"test-tls-{port}"
    tls = TlsFiles(certs["ca"], certs["agent"], certs["agent_key"])
    agent = AgentProcess("tls", state_dir=tmp_path / "state", group=group, tls=tls, listen=[f"127.0.0.1:{port}"])
    try:
        agent.start()
        target = f"127.0.0.1:{port}"
        good = channel_credentials(certs["ca"], certs["orchestrator"], certs["orchestrator_key"])
        with grpc.secure_channel(target, good) as ch:  # TCP on loopback, mTLS
            assert rpc.AgentStub(ch).ListState(pb.ListStateRequest(), timeout=10).host == "tls"
            assert rpc.AgentStub(ch).Capabilities(pb.CapabilitiesRequest(), timeout=30).max_local_hops == 16
            assert health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(
                service="vnfkit.v1.Agent"), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
            services = set(ProtoReflectionDescriptorDatabase(ch).get_services())
            assert {"vnfkit.v1.Agent", "grpc.health.v1.Health"} <= services
        callers = {
            "no client certificate": grpc.secure_channel(target, grpc.ssl_channel_credentials(
                root_certificates=certs["ca"].read_bytes())),
            "a certificate of another CA": grpc.secure_channel(target, channel_credentials(
                certs["ca"], other["client"], other["client_key"])),
            "plain text": grpc.insecure_channel(target),
        }
        for what, ch in callers.items():
            with ch, pytest.raises(grpc.RpcError) as info:
                rpc.AgentStub(ch).ListState(pb.ListStateRequest(), timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE, what
        # Right CA, wrong role: an operator's (client) or another agent's certificate may
        # see the agent's health but not drive its data path.
        for role in ("client", "agent"):
            with grpc.secure_channel(target, channel_credentials(certs["ca"], certs[role], certs[f"{role}_key"])) as ch:
                assert health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10).status == \
                    health_pb2.HealthCheckResponse.SERVING
                for call in (lambda: rpc.AgentStub(ch).ListState(pb.ListStateRequest(), timeout=10),
                             lambda: rpc.AgentStub(ch).Remove(pb.RemoveRequest(service="any"), timeout=10),
                             lambda: next(rpc.AgentStub(ch).WatchCounters(pb.WatchCountersRequest(), timeout=10))):
                    with pytest.raises(grpc.RpcError) as info:
                        call()
                    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, role
                    assert f"role {role}" in info.value.details() and "orchestrator" in info.value.details()
        assert "INSECURE" not in agent.log()
    finally:
        agent.close()
        PinGroup(group).remove()


class Orchestrator(rpc.OrchestratorServicer):
    """A real Orchestrator service that keeps what agents send it."""

    def __init__(self) -> None:
        self.registrations: list = []
        self.heartbeats: list = []
        self.reports: list = []

    def Register(self, request, context):  # noqa: ANN001, ANN201, N802
        self.registrations.append(request)
        return pb.RegisterReply(counter_interval_ms=100, heartbeat_interval_ms=100)

    def Heartbeat(self, request, context):  # noqa: ANN001, ANN201, N802
        self.heartbeats.append(request)
        return pb.HeartbeatReply()

    def ReportCounters(self, request_iterator, context):  # noqa: ANN001, ANN201, N802
        n = 0
        for report in request_iterator:
            self.reports.append(report)
            n += 1
        return pb.ReportCountersReply(received=n)


def start_orchestrator(address: str) -> tuple[grpc.Server, Orchestrator]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    orch = Orchestrator()
    rpc.add_OrchestratorServicer_to_server(orch, server)
    server.add_insecure_port(address)
    server.start()
    return server, orch


def test_counters_reach_the_orchestrator_watchers_and_metrics(site: dict) -> None:
    run = Path(tempfile.mkdtemp(prefix="vk-orch-"))
    address = f"unix:{run}/orch.sock"
    server, orch = start_orchestrator(address)
    port = free_port()
    try:
        agent = site["agent"](orchestrator=address, metrics=f"127.0.0.1:{port}")
        stub = agent.stub()
        stub.Apply(segment(site, 1))
        assert "INSECURE" in agent.log()  # the development mode says so at start
        reg = wait_for(lambda: orch.registrations, what="Register")[0]
        assert (reg.host, reg.address) == ("host", agent.address)
        assert site["c"].ifname_b in {i.name for i in reg.capabilities.interfaces}
        assert send(site, 30) == 30

        report = wait_for(lambda: next((r for r in list(orch.reports)
                                        if any(h.packets == 30 for h in r.counters.hops)), None), what="report")
        reports = [r for r in list(orch.reports) if r.sequence <= report.sequence]
        assert [r.sequence for r in reports] == list(range(1, len(reports) + 1))
        stamps = [r.counters.timestamp_ns for r in reports]
        assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
        epoch = stub.ListState(pb.ListStateRequest()).reset_epoch
        assert {r.counters.reset_epoch for r in reports} == {epoch} and epoch > 0
        mon = next(f for f in report.counters.functions if f.function == "mon")
        assert mon.counters["ipv4"].packets == 30 and mon.program_id > 0
        assert [(p.service, p.path, p.packets) for p in report.counters.paths] == [("web", "p", 30)]
        beat = wait_for(lambda: orch.heartbeats, what="Heartbeat")[-1]
        assert [(r.service, r.generation) for r in beat.services] == [("web", 1)]

        # The orchestrator goes away: the agent and its data path carry on; it comes back: the
        # agent registers again and reports on.
        server.stop(0).wait()
        assert send(site, 10) == 10 and stub.ListState(pb.ListStateRequest()).services[0].generation == 1
        server, orch = start_orchestrator(address)
        wait_for(lambda: orch.registrations, what="Register again")
        wait_for(lambda: any(h.packets == 40 for r in list(orch.reports) for h in r.counters.hops), what="report")

        # WatchCounters: a stream per caller; one that leaves mid-stream costs nothing.
        stream = stub.WatchCounters(pb.WatchCountersRequest(service="web", interval_ms=50))
        got = [next(stream) for _ in range(3)]
        stream.cancel()
        assert [len(g.functions) for g in got] == [2, 2, 2] and got[0].timestamp_ns < got[2].timestamp_ns
        assert stub.GetCounters(pb.CountersRequest(service="web"), timeout=10).paths[0].packets == 40

        with netns.enter(site["host"]):  # /metrics listens in the agent's namespace
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert 'vnfkit_hop_packets_total{si="255",spi="1"} 40.0' in text
        assert 'vnfkit_path_packets_total{path="p",service="web"} 40.0' in text
        assert 'vnfkit_function_packets_total{counter="ipv4",function="mon",service="web"} 40.0' in text
    finally:
        server.stop(0)
        shutil.rmtree(run, ignore_errors=True)


def test_a_client_generated_independently_from_the_proto_calls_the_agent(site: dict, tmp_path: Path) -> None:
    agent = site["agent"]()
    gen = tmp_path / "gen"
    gen.mkdir()
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO.parent}", f"--python_out={gen}",
                    f"--grpc_python_out={gen}", PROTO.name], check=True, capture_output=True)
    # A fresh interpreter with the generated modules and grpc; it imports nothing of vnfkit's.
    code = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(gen)!r})
        import grpc, vnfkit_pb2 as pb, vnfkit_pb2_grpc as rpc
        from google.protobuf import struct_pb2
        with grpc.insecure_channel({agent.address!r}) as ch:
            stub = rpc.AgentStub(ch)
            seg = pb.Segment(service="plain", generation=1, classify_on=[{site["c"].ifname_b!r}])
            seg.functions.add(id="m", vnf="monitor")
            seg.paths.add(spi=7, first_si=255, functions=["m"], end=pb.PATH_END_STACK, path="only")
            seg.rules.add(spi=7, si=255, match=pb.Match(dst={site["s"].addr_b + "/32"!r}),
                          interfaces=[{site["c"].ifname_b!r}])
            changed = stub.Apply(seg).changed
            caps = stub.Capabilities(pb.CapabilitiesRequest())
            state = stub.ListState(pb.ListStateRequest())
            print(json.dumps({{"changed": changed, "vnfs": list(caps.vnfs), "modules": sorted(
                m for m in sys.modules if m.startswith(("vnfkit", "datapath", "chaining"))),
                "functions": [(f.service, f.id) for f in state.functions]}}))
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["changed"] and "monitor" in out["vnfs"] and out["modules"] == ["vnfkit_pb2", "vnfkit_pb2_grpc"]
    assert out["functions"] == [["plain", "m"]]
    assert send(site, 10) == 10
    counters = agent.stub().GetCounters(pb.CountersRequest(service="plain"))
    assert [(h.spi, h.si, h.packets) for h in counters.hops] == [(7, 254, 10), (7, 255, 10)]


def test_check_reports_problems_and_exits_non_zero(site: dict, tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(f"name: h\ninsecure: true\nnetns: {site['host']}\ninterfaces: [{site['c'].ifname_b}, nope0]\n")
    res = subprocess.run([sys.executable, "-m", "vnfkit.agent", "--config", str(config), "--check"],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 1 and "interface 'nope0' (config 'interfaces') is missing" in res.stderr
    caps = json.loads(res.stdout)
    assert caps["root"] and caps["bpffs"] and caps["btf"] and site["c"].ifname_b in {
        i["name"] for i in caps["interfaces"]}
    config.write_text(f"name: h\ninsecure: true\nnetns: {site['host']}\ninterfaces: [{site['c'].ifname_b}]\n")
    res = subprocess.run([sys.executable, "-m", "vnfkit.agent", "--config", str(config), "--check"],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    config.write_text("name: h\nlisten_on: 1\n")
    res = subprocess.run([sys.executable, "-m", "vnfkit.agent", "--config", str(config)], capture_output=True,
                         text=True, cwd=ROOT)
    assert res.returncode == 2 and "unknown key(s) ['listen_on']" in res.stderr
    # Without certificates, and without --insecure, the check says how to make them.
    config.write_text(f"name: h\nnetns: {site['host']}\ntls: {{ca: {tmp_path}/ca.pem, cert: {tmp_path}/a.pem, "
                      f"key: {tmp_path}/a.key}}\n")
    res = subprocess.run([sys.executable, "-m", "vnfkit.agent", "--config", str(config), "--check"],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 1 and f"python -m vnfkit.agent.tls {tmp_path}" in res.stderr


def test_two_phase_change_prepare_commit_cleanup_and_abort(site: dict) -> None:
    stub = site["agent"]().stub()
    # Aborting puts the previous control settings back, so the firewall starts with some.
    first = segment(site, 1, fw_control={"default": "allow", "rules": "deny udp from any to any port 9"})
    assert stub.Prepare(first).changed
    assert send(site, 10) == 10 and not stub.GetCounters(pb.CountersRequest()).hops  # prepared: no rule yet
    state = stub.ListState(pb.ListStateRequest())
    assert [(s.generation, s.phase) for s in state.services] == [(1, pb.PHASE_PREPARED)]
    with pytest.raises(grpc.RpcError) as info:
        stub.Apply(segment(site, 2))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "waits for Commit" in info.value.details()
    stub.Commit(pb.Ref(service="web", generation=1))
    stub.Commit(pb.Ref(service="web", generation=1))  # a retried Commit is fine
    assert not stub.Apply(first).changed
    stub.Cleanup(pb.CleanupRequest())
    assert send(site, 10) == 10 and {h.si: h.packets for h in stub.GetCounters(pb.CountersRequest()).hops} == {
        255: 10, 254: 10, 253: 10}
    control = {"default": "allow", "rules": "deny udp from any to any"}
    assert stub.Prepare(segment(site, 2, fw_control=control)).changed
    stub.Abort(pb.Ref(service="web", generation=2))
    assert send(site, 10) == 10  # the abort put the old rules back
    state = stub.ListState(pb.ListStateRequest())
    assert [(s.generation, s.phase) for s in state.services] == [(1, pb.PHASE_APPLIED)]
