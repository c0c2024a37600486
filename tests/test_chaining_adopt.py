"""A pinned host data path outlives the object that made it and is adopted by the next one:
``HostDataPath(pins=...)``, ``release()``, ``HostDataPath.adopt(pins, snapshot)``.

One host between a client and a server; a two-function path (firewall -> monitor) on the
client-facing interface. Releasing closes every fd this process holds, as a dying agent's
would; traffic must keep flowing on the pins alone, and the adopter must find the same
functions, paths, counters and links, repair a link detached by hand, report (and leave) a
foreign XDP program, and finish a commit interrupted after its snapshot was recorded.
"""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest

from chaining.host import HostDataPath
from chaining.plan import FunctionSpec, HostPlan, PathSpec, RuleSpec
from chaining.service import Match
from datapath import netns
from datapath.attach import attach_xdp, xdp_query
from datapath.builtin import builtin
from datapath.objects import load

pytestmark = pytest.mark.kernel
ROOT = Path(__file__).resolve().parent.parent
FW = str(ROOT / "vnfs" / "firewall")
MON = str(ROOT / "vnfs" / "monitor")
PORT = 9200


@pytest.fixture
def hop(topo):  # noqa: ANN001, ANN201
    """client --c-- host --s-- server; the host routes; a UDP socket on the server."""
    client, host, server = topo.add_ns("client"), topo.add_ns("host"), topo.add_ns("server")
    c = topo.add_veth(client, host)
    s = topo.add_veth(host, server)
    topo.set_sysctl(host, "net.ipv4.ip_forward", "1")
    topo.add_route(client, f"{s.addr_b}/32", gateway=c.addr_b)
    topo.add_route(server, f"{c.addr_a}/32", gateway=s.addr_a)
    return {"client": client, "host": host, "server": server, "c": c, "s": s}


def plan_for(hop: dict) -> HostPlan:
    return HostPlan(
        host="h", ns=hop["host"],
        functions=(FunctionSpec("svc/fw", FW, {"default_allow": True}),
                   FunctionSpec("svc/mon", MON)),
        paths=(PathSpec(1, 255, ("svc/fw", "svc/mon"), "stack", path="svc/p"),),
        rules=(RuleSpec(1, 255, Match(dst=f"{hop['s'].addr_b}/32"), (hop["c"].ifname_b,), "svc/p#0"),),
        classify_on=(hop["c"].ifname_b,))


def pinned_functions(pins) -> list[str]:  # noqa: ANN001
    return [n for n in pins.names("progs") if n.startswith("fn@") and n.endswith("@vnf_xdp")]


def send(hop: dict, n: int) -> int:
    """Send n datagrams client -> server; how many arrived."""
    import socket

    with netns.enter(hop["server"]):
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with rx:
        rx.bind((hop["s"].addr_b, PORT))
        rx.settimeout(0.5)
        netns.udp_send(hop["client"], hop["s"].addr_b, PORT, n)
        got = 0
        try:
            while got < n:
                rx.recv(2048)
                got += 1
        except TimeoutError:
            pass
    return got


def test_released_data_path_keeps_forwarding_and_is_adopted_unchanged(hop: dict, pins) -> None:  # noqa: ANN001
    plan = plan_for(hop)
    dp = HostDataPath(pins=pins)
    dp.apply(plan)
    assert send(hop, 50) == 50
    snap = dp.snapshot()
    before = dp.counters()
    dp.release()  # every fd of this process closed: only the pins hold the data path

    assert send(hop, 40) == 40
    dp2, repairs, problems = HostDataPath.adopt(pins, snap)
    try:
        assert (repairs, problems) == ([], [])
        assert dp2.plan == plan and dp2.snapshot() == snap
        after = dp2.counters()
        assert after["hops"][(1, 255)] == before["hops"][(1, 255)] + 40  # the same maps, still counting
        assert after["functions"]["svc/mon"]["ipv4"][0] == before["functions"]["svc/mon"]["ipv4"][0] + 40
        # The adopter changes it like its own: one function replaced, in place.
        dp2.apply(dataclasses.replace(plan, functions=(plan.functions[0], FunctionSpec("svc/mon", FW, {
            "default_allow": True}))))
        assert send(hop, 30) == 30
        assert dp2.instance("svc/mon").counters()["default_allowed"][0] == 30
        assert len(pinned_functions(pins)) == 2  # the retired one unpinned
    finally:
        dp2.close()
    assert not pins.exists() and xdp_query(hop["c"].ifname_b, hop["host"]) is None


def test_adoption_repairs_a_detached_link_and_reports_a_foreign_program(hop: dict, pins) -> None:  # noqa: ANN001
    plan = plan_for(hop)
    dp = HostDataPath(pins=pins)
    dp.apply(plan)
    snap = dp.snapshot()
    link_id = dp.attachments()["classifier", hop["c"].ifname_b].link_id
    dp.release()
    subprocess.run(["bpftool", "link", "detach", "id", str(link_id)], check=True, capture_output=True)
    assert xdp_query(hop["c"].ifname_b, hop["host"]) is None

    dp2, repairs, problems = HostDataPath.adopt(pins, snap)
    assert problems == [] and repairs == [f"classifier on {hop['c'].ifname_b} was detached; attached again"]
    hops = dp2.counters()["hops"].get((1, 255), 0)
    assert send(hop, 20) == 20 and dp2.counters()["hops"][(1, 255)] == hops + 20
    link_id = dp2.attachments()["classifier", hop["c"].ifname_b].link_id
    dp2.release()

    subprocess.run(["bpftool", "link", "detach", "id", str(link_id)], check=True, capture_output=True)
    with load(builtin("xdp_pass")) as foreign:
        att = attach_xdp(foreign.program(), hop["c"].ifname_b, ns=hop["host"])
        try:
            dp3, repairs, problems = HostDataPath.adopt(pins, snap)
            try:
                assert repairs == [] and len(problems) == 1
                assert f"{hop['c'].ifname_b} has a foreign XDP program (id {att.prog_id}" in problems[0]
                assert xdp_query(hop["c"].ifname_b, hop["host"])[0] == att.prog_id  # not clobbered
            finally:
                dp3.close()
        finally:
            att.detach()


def test_adoption_finishes_a_commit_recorded_before_it_ran(hop: dict, pins) -> None:  # noqa: ANN001
    plan = plan_for(hop)
    dp = HostDataPath(pins=pins)
    dp.apply(plan)
    swapped = dataclasses.replace(plan, functions=(plan.functions[0], FunctionSpec("svc/mon", FW, {
        "default_allow": True})))
    dp.prepare(swapped)
    snap = dp.snapshot()   # what an agent records before committing ...
    dp.release()           # ... and then it dies before the commit
    assert send(hop, 10) == 10  # still the old state

    dp2, repairs, problems = HostDataPath.adopt(pins, snap)
    try:
        assert problems == [] and len(repairs) == 1 and "svc/mon: slot" in repairs[0]
        assert dp2.plan == swapped
        assert send(hop, 10) == 10
        assert dp2.instance("svc/mon").counters()["default_allowed"][0] == 10  # the new instance runs
        assert len(pinned_functions(pins)) == 2  # the old one unpinned
    finally:
        dp2.close()
