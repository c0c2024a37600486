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
