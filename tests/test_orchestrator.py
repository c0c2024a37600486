"""The orchestrator end to end on the emulator: three hosts each with its own agent process,
mutual TLS over unix sockets, a four-function symmetric service deployed across them carrying
real HTTP; a deploy that fails on one host rolls back everywhere; a restarted orchestrator
knows its services and agents again; bad requests are refused with a status that says why."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from vnfkit.cli_orch import Control, ControlError
from vnfkit.demo_chain import service_text, topology
from vnfkit.emu import control_plane
from vnfkit.emu.emulation import Emulation
from vnfkit.emu.traffic import HttpLoad, WebServer

pytestmark = pytest.mark.kernel


@pytest.fixture
def lab(tmp_path: Path, monkeypatch):  # noqa: ANN001, ANN201
    monkeypatch.setattr("vnfkit.emu.emulation.STATE_DIR", tmp_path / "emu")
    with Emulation(topology()) as emu:
        state = emu.up()
        plane = control_plane.start(emu, tmp_path / "work")
        vip, pool = emu.net.spare_addresses()
        client, webs = state.endpoints["client"], [state.endpoints["web1"], state.endpoints["web2"]]
        service = tmp_path / "service.yaml"
        service.write_text(service_text(client, webs, vip, pool))
        control = Control(plane.orchestrator, plane.certs)
        try:
            yield {"emu": emu, "plane": plane, "control": control, "service": service, "vip": vip, "pool": pool,
                   "client": client, "webs": webs, "work": tmp_path / "work"}
        finally:
            control.close()


def _agent_services(lab: dict, host: str) -> dict[str, int]:
    """What an agent holds: service -> generation (asked over its own gRPC, with mTLS)."""
    import grpc

    from vnfkit.agent import tls
    from vnfkit.proto import load

    pb, rpc = load()
    certs = lab["plane"].certs
    creds = tls.channel_credentials(certs / "ca.pem", certs / "orchestrator.pem", certs / "orchestrator.key")
    with grpc.secure_channel(f"unix:{lab['work']}/agent-{host}.sock", creds,
                             options=[("grpc.ssl_target_name_override", "localhost")]) as ch:
        state = rpc.AgentStub(ch).ListState(pb.ListStateRequest(), timeout=10)
    return {s.service: s.generation for s in state.services if s.phase == pb.PHASE_APPLIED}


def test_deploy_across_three_hosts_carries_http_both_ways(lab: dict) -> None:
    c = lab["control"]
    svc = c.call("Deploy", c.pb.DeployRequest(path=str(lab["service"]))).service
    assert dict(svc.placement) == {"fw": "h1", "nat": "h2", "lb": "h2", "mon": "h3"}
    assert list(svc.hosts) == ["h1", "h2", "h3"] and svc.state == "deployed"
    servers = [WebServer(n, w.ns, w.ip) for n, w in zip(("web1", "web2"), lab["webs"], strict=True)]
    try:
        with HttpLoad(lab["client"].ns, lab["vip"], 80, threads=2) as load:
            time.sleep(3)
        answers = load.snapshot().answers
        assert answers["web1"] > 0 and answers["web2"] > 0
    finally:
        for s in servers:
            s.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the agents report every 0.5 s
        counters = c.counters("web")["web"]
        if all(int(counters["functions"].get(f, {}).get("rx", [0])[0]) > 0 for f in ("fw", "nat", "lb", "mon")):
            break
        time.sleep(0.5)
    assert {f: v["host"] for f, v in counters["functions"].items()} == dict(svc.placement)
    for host in ("h1", "h2", "h3"):
        assert _agent_services(lab, host) == {"web": 1}

    with pytest.raises(ControlError, match="ALREADY_EXISTS"):
        c.call("Deploy", c.pb.DeployRequest(path=str(lab["service"])))
    with pytest.raises(ControlError, match="NOT_FOUND.*no service 'nope'"):
        c.call("Undeploy", c.pb.UndeployRequest(name="nope"))
    bad = lab["service"].with_name("bad.yaml")
    bad.write_text(lab["service"].read_text().replace("vnf: nat", "vnf: natt"))
    with pytest.raises(ControlError, match="INVALID_ARGUMENT.*did you mean 'nat'"):
        c.call("Deploy", c.pb.DeployRequest(path=str(bad)))
    c.call("Undeploy", c.pb.UndeployRequest(name="web"))
    assert [s.name for s in c.call("ListServices", c.pb.ListServicesRequest()).services] == []
    for host in ("h1", "h2", "h3"):
        assert _agent_services(lab, host) == {}


def test_an_agent_dead_during_deploy_rolls_back_everywhere(lab: dict) -> None:
    c, emu = lab["control"], lab["emu"]
    pid = emu.state.agents["agent-h3"]["pid"]
    os.killpg(pid, signal.SIGKILL)  # h3's agent is gone before its heartbeat runs out
    with pytest.raises(ControlError, match=r"ABORTED.*host h3"):
        c.call("Deploy", c.pb.DeployRequest(path=str(lab["service"])))
    for host in ("h1", "h2"):
        assert _agent_services(lab, host) == {}  # prepared, then aborted: as before
    assert [s.name for s in c.call("ListServices", c.pb.ListServicesRequest()).services] == []


def test_a_restarted_orchestrator_knows_its_services_and_agents(lab: dict) -> None:
    c, emu = lab["control"], lab["emu"]
    c.call("Deploy", c.pb.DeployRequest(path=str(lab["service"])))
    emu.stop("orchestrator")
    control_plane.start_orchestrator(emu, lab["work"])
    control_plane.wait_registered(lab["plane"], {"h1", "h2", "h3"}, 60, emu)
    again = Control(lab["plane"].orchestrator, lab["plane"].certs)
    try:
        services = again.call("ListServices", again.pb.ListServicesRequest()).services
        assert [(s.name, s.generation, s.state) for s in services] == [("web", 1, "deployed")]
        again.call("Undeploy", again.pb.UndeployRequest(name="web"))
    finally:
        again.close()
    assert _agent_services(lab, "h2") == {}


class _KillBeforeCommit:
    """The real gRPC client of one agent, whose agent is killed (-9) just before its commit:
    the worst moment for a two-phase deploy (some hosts switched, this one prepared)."""

    def __init__(self, inner: Any, pid: int | None) -> None:
        self.inner, self.pid = inner, pid

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def commit(self, service: str, generation: int) -> None:
        if self.pid is not None:
            os.killpg(self.pid, signal.SIGKILL)
            self.pid = None
        self.inner.commit(service, generation)


@pytest.mark.parametrize("update", [False, True], ids=["deploy", "update"])
def test_an_agent_dead_between_prepare_and_commit_is_rolled_back_everywhere(lab: dict, tmp_path: Path,
                                                                           update: bool) -> None:
    """A deploy or an update whose commit fails on h3 (its agent killed after it prepared): h2,
    switched already, loses the service or gets the old generation back; h1 aborts; after an
    update, traffic keeps going through the old generation."""
    from vnfkit.agent import tls
    from vnfkit.orchestrator.core import Orchestrator, OrchestratorError
    from vnfkit.orchestrator.server import GrpcAgent
    from vnfkit.orchestrator.store import Store

    c, emu, certs = lab["control"], lab["emu"], lab["plane"].certs
    if update:
        c.call("Deploy", c.pb.DeployRequest(path=str(lab["service"])))
    # A second orchestrator on a copy of the first one's state, so the fault can be injected
    # into its client of h3; everything else (agents, gRPC, mTLS, kernels) is the real thing.
    emu.stop("orchestrator")  # one orchestrator at a time talks to the agents (and its WAL is folded in)
    shutil.copy(lab["work"] / "orchestrator.db", tmp_path / "orch.db")
    creds = tls.channel_credentials(certs / "ca.pem", certs / "orchestrator.pem", certs / "orchestrator.key")
    h3_pid = emu.state.agents["agent-h3"]["pid"]
    orch = Orchestrator(Store(tmp_path / "orch.db"), lambda rec: _KillBeforeCommit(
        GrpcAgent(rec, creds), h3_pid if rec.host == "h3" else None), heartbeat_timeout=3600)
    updated = lab["service"].with_name("updated.yaml")
    updated.write_text(lab["service"].read_text().replace(f'{{addr: "{lab["webs"][0].ip}", port: 8080}}, ', ""))
    with pytest.raises(OrchestratorError, match=r"rolled back: host h3: commit failed") as failed:
        orch.deploy(updated, update=update)
    assert failed.value.code == "ABORTED"
    if not update:
        assert _agent_services(lab, "h1") == {} and _agent_services(lab, "h2") == {}
        assert orch.store.services() == []
        return
    assert _agent_services(lab, "h1") == {"web": 1}  # aborted: still the first generation
    assert _agent_services(lab, "h2") == {"web": 3}  # switched, then given the first one's plan again
    rec = orch.store.service("web")
    assert rec is not None and rec.state == "deployed" and rec.generation == 3
    # h3's data path outlived its agent; both backends still answer, as before the update.
    servers = [WebServer(n, w.ns, w.ip) for n, w in zip(("web1", "web2"), lab["webs"], strict=True)]
    try:
        with HttpLoad(lab["client"].ns, lab["vip"], 80, threads=2) as load:
            time.sleep(2)
        assert load.snapshot().answers["web1"] > 0 and load.snapshot().answers["web2"] > 0
    finally:
        for s in servers:
            s.close()
        orch.store.close()
