"""Recursive orchestration end to end on the emulator (SONATA's recursive domains): the parent
orchestrator has h1's agent and a child orchestrator, domain d1, which has the agents of h2
and h3. A firewall -> nat -> l4lb -> monitor service deployed from the parent runs its
firewall on h1 and the rest in d1, which spreads it over h2 and h3 with the parent's SPIs;
real HTTP goes from the client on h1 to the web servers on h3 and back. Undeploy through the
parent empties every host; a deploy that fails inside the child rolls back every host, h1
included; a restarted child still knows its part."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

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
    with Emulation(topology()) as emu:  # h1 (1 cpu, the client), h2 (2 cpus), h3 (1 cpu, two web servers)
        state = emu.up()
        plane = control_plane.start(emu, tmp_path / "work", domains={"d1": ["h2", "h3"]})
        vip, pool = emu.net.spare_addresses()
        client, webs = state.endpoints["client"], [state.endpoints["web1"], state.endpoints["web2"]]
        service = tmp_path / "service.yaml"
        service.write_text(service_text(client, webs, vip, pool))
        parent = Control(plane.orchestrator, plane.certs)
        child = Control(plane.domains["d1"], plane.certs)
        try:
            yield {"emu": emu, "plane": plane, "parent": parent, "child": child, "service": service, "vip": vip,
                   "client": client, "webs": webs, "work": tmp_path / "work"}
        finally:
            parent.close()
            child.close()


def _agent_state(address: str, certs: Path):  # noqa: ANN202 - a pb.State
    """ListState over the Agent service (an agent's, or a child orchestrator's), with mTLS."""
    import grpc

    from vnfkit.agent import tls
    from vnfkit.proto import load

    pb, rpc = load()
    creds = tls.channel_credentials(certs / "ca.pem", certs / "orchestrator.pem", certs / "orchestrator.key")
    with grpc.secure_channel(address, creds, options=[("grpc.ssl_target_name_override", "localhost")]) as ch:
        return rpc.AgentStub(ch).ListState(pb.ListStateRequest(), timeout=10)


def _services(lab: dict, host: str) -> dict[str, int]:
    """What a host's agent holds and runs: service -> generation."""
    from vnfkit.proto import load

    pb, _ = load()
    state = _agent_state(f"unix:{lab['work']}/agent-{host}.sock", lab["plane"].certs)
    return {s.service: s.generation for s in state.services if s.phase == pb.PHASE_APPLIED}


def _wait_counters(control: Control, functions: set[str]) -> dict:
    """The service's counters once every function in ``functions`` has counted packets (the
    agents report every 0.5 s, the child passes them on at the same pace)."""
    deadline = time.monotonic() + 20
    while True:
        counters = control.counters("web")["web"]
        if all(int(counters["functions"].get(f, {}).get("rx", [0])[0]) > 0 for f in functions):
            return counters
        if time.monotonic() > deadline:
            return counters
        time.sleep(0.5)


def test_a_parent_deploys_through_a_child_domain(lab: dict) -> None:
    parent, child = lab["parent"], lab["child"]
    hosts = {h.host: h for h in parent.call("ListHosts", parent.pb.ListHostsRequest()).hosts}
    assert sorted(hosts) == ["d1", "h1"] and all(h.alive for h in hosts.values())
    caps = hosts["d1"].capabilities
    assert caps["cpus"] == 3 and caps["underlay"].startswith("h2/") and caps["egress"][0].startswith("h3/")

    svc = parent.call("Deploy", parent.pb.DeployRequest(path=str(lab["service"]))).service
    assert dict(svc.placement) == {"fw": "h1", "nat": "d1", "lb": "d1", "mon": "d1"}
    assert list(svc.hosts) == ["d1", "h1"] and svc.state == "deployed"
    for host in ("h1", "h2", "h3"):
        assert _services(lab, host) == {"web": 1}

    servers = [WebServer(n, w.ns, w.ip) for n, w in zip(("web1", "web2"), lab["webs"], strict=True)]
    try:
        with HttpLoad(lab["client"].ns, lab["vip"], 80, threads=2) as load:
            time.sleep(3)
        stats = load.snapshot()
    finally:
        for s in servers:
            s.close()
    assert stats.answers["web1"] > 0 and stats.answers["web2"] > 0

    # Inside the domain: the parent's nat, lb and mon spread over h2 and h3, counting packets.
    inner = _wait_counters(child, {"nat", "lb", "mon"})
    assert {f: v["host"] for f, v in inner["functions"].items()} == {"nat": "h2", "lb": "h2", "mon": "h3"}
    for f in ("nat", "lb", "mon"):
        assert int(inner["functions"][f]["rx"][0]) > 0, inner
    hops_on = {key.split(":")[0] for key, n in inner["hops"].items() if int(n) > 0}
    assert hops_on == {"h2", "h3"}, inner["hops"]
    assert {int(key.split(":")[1]) for key in inner["hops"]} <= set(svc.spis)  # the parent's SPIs
    # The parent sees the domain as one host, with the counters it passes on.
    outer = _wait_counters(parent, {"fw", "nat", "lb", "mon"})
    assert {f: v["host"] for f, v in outer["functions"].items()} == dict(svc.placement)
    assert all(int(outer["functions"][f]["rx"][0]) > 0 for f in ("fw", "nat", "lb", "mon")), outer
    assert any(key.startswith("d1:") and int(n) > 0 for key, n in outer["hops"].items()), outer["hops"]

    parent.call("Undeploy", parent.pb.UndeployRequest(name="web"))
    assert [s.name for s in parent.call("ListServices", parent.pb.ListServicesRequest()).services] == []
    for host in ("h1", "h2", "h3"):
        assert _services(lab, host) == {}
    assert list(_agent_state(lab["plane"].domains["d1"], lab["plane"].certs).services) == []


def test_a_deploy_failing_inside_the_child_rolls_back_every_host(lab: dict) -> None:
    parent, emu = lab["parent"], lab["emu"]
    os.killpg(emu.state.agents["agent-h3"]["pid"], signal.SIGKILL)  # gone before its heartbeat runs out
    with pytest.raises(ControlError, match=r"ABORTED.*host d1: .*domain d1.*host h3"):
        parent.call("Deploy", parent.pb.DeployRequest(path=str(lab["service"])))
    for host in ("h1", "h2"):
        assert _services(lab, host) == {}  # prepared, then aborted: as before
    assert [s.name for s in parent.call("ListServices", parent.pb.ListServicesRequest()).services] == []
    assert list(_agent_state(lab["plane"].domains["d1"], lab["plane"].certs).services) == []


def test_a_restarted_child_knows_its_part(lab: dict) -> None:
    parent, emu, plane = lab["parent"], lab["emu"], lab["plane"]
    parent.call("Deploy", parent.pb.DeployRequest(path=str(lab["service"])))
    emu.stop("orchestrator-d1")
    control_plane.start_orchestrator(emu, lab["work"], domain="d1", parent=plane.orchestrator)
    control_plane.wait_registered(plane, {"h2", "h3"}, 60, emu, plane.domains["d1"])
    state = _agent_state(plane.domains["d1"], plane.certs)
    assert [(s.service, s.generation) for s in state.services] == [("web", 1)]
    parent.call("Undeploy", parent.pb.UndeployRequest(name="web"))
    for host in ("h1", "h2", "h3"):
        assert _services(lab, host) == {}
