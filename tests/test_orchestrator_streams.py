"""The orchestrator keeps answering however many agents stream counters: each open stream
holds a server thread, so streams past --max-agents are refused and the unary calls keep
theirs. (With a fixed pool of 16, 16 agents' streams used to silence it.)"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from vnfkit.orchestrator.server import serve
from vnfkit.proto import load

pb, rpc = load()


def test_streams_past_the_limit_are_refused_and_the_rest_still_answers(tmp_path: Path) -> None:
    address = f"unix:{tmp_path}/o.sock"
    running = serve([address], tmp_path / "o.db", tls_files=None, max_agents=2)
    release = threading.Event()

    def reports(host: str) -> Iterator[Any]:
        yield pb.CounterReport(host=host)
        release.wait(30)  # the stream stays open, as an agent's does

    channel = grpc.insecure_channel(address)
    stub, control = rpc.OrchestratorStub(channel), rpc.ControlStub(channel)
    try:
        open_streams = [stub.ReportCounters.future(reports(f"h{i}")) for i in range(2)]
        for i in range(2):  # registered, so they show in ListHosts
            stub.Register(pb.RegisterRequest(host=f"h{i}", address=f"unix:/nonexistent/{i}"), timeout=10)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ReportCounters(reports("h9"), timeout=10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-agents" in refused.value.details()
        # The unary calls still have threads (a hang would end at the timeout, an error).
        hosts = control.ListHosts(pb.ListHostsRequest(), timeout=10).hosts
        assert sorted(h.host for h in hosts) == ["h0", "h1"]
        release.set()
        assert [f.result(timeout=10).received for f in open_streams] == [1, 1]
        # Their threads are back: a new stream is taken.
        release.clear()
        late = stub.ReportCounters.future(reports("h2"))
        release.set()
        assert late.result(timeout=10).received == 1
    finally:
        release.set()
        channel.close()
        running.stop()


def test_mtls_callers_may_call_only_what_their_role_allows(tmp_path: Path) -> None:
    """Right CA is not enough: an operator (client) drives Control, agents and child domains
    report to Orchestrator, only a parent orchestrator uses the Agent service; any other role
    gets PERMISSION_DENIED naming the one it needs."""
    from vnfkit.agent.config import TlsFiles
    from vnfkit.agent.tls import channel_credentials, channel_options, make_dev_certs

    certs = make_dev_certs(tmp_path / "certs")
    address = f"unix:{tmp_path}/o.sock"
    running = serve([address], tmp_path / "o.db", tls_files=TlsFiles(certs["ca"], certs["orchestrator"],
                                                                      certs["orchestrator_key"]))

    def stubs(role: str) -> tuple[grpc.Channel, Any, Any, Any]:
        ch = grpc.secure_channel(address, channel_credentials(certs["ca"], certs[role], certs[f"{role}_key"]),
                                 options=channel_options(address))
        return ch, rpc.ControlStub(ch), rpc.OrchestratorStub(ch), rpc.AgentStub(ch)

    calls = {
        "Control": lambda s: s[1].ListHosts(pb.ListHostsRequest(), timeout=10),
        "Orchestrator": lambda s: s[2].Register(pb.RegisterRequest(host="h1", address="unix:/nonexistent/h1"),
                                                timeout=10),
        "Agent": lambda s: s[3].ListState(pb.ListStateRequest(), timeout=10),
    }
    allowed = {"client": {"Control"}, "agent": {"Orchestrator"}, "orchestrator": {"Orchestrator", "Agent"}}
    try:
        for role, may in allowed.items():
            s = stubs(role)
            with s[0]:
                for service, call in calls.items():
                    if service in may:
                        call(s)  # answers (an error here fails the test)
                        continue
                    with pytest.raises(grpc.RpcError) as info:
                        call(s)
                    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, (role, service)
                    assert f"role {role}" in info.value.details(), info.value.details()
    finally:
        running.stop()
