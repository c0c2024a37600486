"""The host agent over real gRPC: a two-function segment (firewall -> monitor) applied,
configured and removed on a veth, with real packets following it; idempotent re-apply; bad
requests refused with a status that explains and the running segment untouched (checked by
traffic); a full disk under the state file; kill -9 under a counted stream and a new agent
adopting the pinned data path.

    client --c-- host --s-- server        the agent serves "host" (its own netns), on a unix socket
"""

from __future__ import annotations

import os
import socket
import subprocess
import time

import grpc
import pytest
from test_chaining_service import _Stream as Stream  # numbered datagrams, each must arrive once

from datapath import netns
from datapath.attach import xdp_query
from vnfkit.agent.convert import dict_to_struct
from vnfkit.proto import load

pytestmark = pytest.mark.kernel
pb, rpc = load()
PORT = 9300


def segment(site: dict, generation: int, *, fw_control: dict | None = None, mon_config: dict | None = None,
            **changes: object) -> object:
    """Service "web": firewall (allow by default) -> monitor, for traffic to the server."""
    seg = pb.Segment(service="web", generation=generation, classify_on=[site["c"].ifname_b])
    fw = seg.functions.add(id="fw", vnf="firewall", config=dict_to_struct({"default_allow": True}))
    if fw_control is not None:
        fw.control.CopyFrom(dict_to_struct(fw_control))
    seg.functions.add(id="mon", vnf="monitor", config=dict_to_struct(mon_config or {}))
    seg.paths.add(spi=1, first_si=255, functions=["fw", "mon"], end=pb.PATH_END_STACK, path="p")
    seg.rules.add(spi=1, si=255, match=pb.Match(dst=f"{site['s'].addr_b}/32"), interfaces=[site["c"].ifname_b],
                  name="p#0")
    for key, value in changes.items():
        if key == "classify_on":
            del seg.classify_on[:]
            seg.classify_on.extend(value)
    return seg


def send(site: dict, n: int, port: int = PORT) -> int:
    """n UDP datagrams client -> server:port; how many arrived."""
    with netns.enter(site["server"]):
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with rx:
        rx.bind((site["s"].addr_b, port))
        rx.settimeout(0.5)
        netns.udp_send(site["client"], site["s"].addr_b, port, n)
        got = 0
        try:
            while got < n:
                rx.recv(2048)
                got += 1
        except TimeoutError:
            pass
    return got


def hops(stub: object) -> dict[tuple[int, int], int]:
    return {(h.spi, h.si): h.packets for h in stub.GetCounters(pb.CountersRequest()).hops}


def fn_counter(stub: object, function: str, counter: str) -> int:
    c = stub.GetCounters(pb.CountersRequest(service="web"))
    return next(f.counters[counter].packets for f in c.functions if f.function == function)


def programs(stub: object) -> dict[str, int]:
    return {f.id: f.program_id for f in stub.ListState(pb.ListStateRequest()).functions}


def refused(call: object, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == code, info.value.details()
    return info.value.details()


def test_apply_configure_remove_a_two_function_segment(site: dict) -> None:
    stub = site["agent"]().stub()
    assert stub.Apply(segment(site, 1)).changed
    assert send(site, 50) == 50
    assert hops(stub) == {(1, 255): 50, (1, 254): 50, (1, 253): 50}  # fw, mon, then the stack
    assert fn_counter(stub, "fw", "default_allowed") == 50 and fn_counter(stub, "mon", "ipv4") == 50
    before = programs(stub)

    assert not stub.Apply(segment(site, 1)).changed  # idempotent: nothing reloaded
    assert programs(stub) == before
    assert send(site, 10) == 10 and hops(stub)[(1, 255)] == 60

    control = {"default": "allow", "rules": f"deny udp from any to any port {PORT}"}
    assert stub.Configure(pb.ConfigureRequest(service="web", generation=2, function="fw",
                                              config=dict_to_struct({"default_allow": True}),
                                              control=dict_to_struct(control))).changed
    assert send(site, 20) == 0 and send(site, 20, PORT + 1) == 20   # the new rule, in the kernel
    assert fn_counter(stub, "fw", "rule_denied") == 20
    assert programs(stub) == before                                   # changed in place
    state = stub.ListState(pb.ListStateRequest())
    assert [(s.service, s.generation, s.phase) for s in state.services] == [("web", 2, pb.PHASE_APPLIED)]
    assert [(a.kind, a.interface, a.pinned) for a in state.attachments] == [("classifier", site["c"].ifname_b, True)]
    assert [(p.service, p.path, p.spi, list(p.functions)) for p in state.paths] == [("web", "p", 1, ["fw", "mon"])]

    # A generation without the firewall's control: its rule must not stay behind in the kernel
    # (a new instance replaces the one the rule was written into).
    assert stub.Apply(segment(site, 3)).changed
    assert send(site, 20) == 20 and programs(stub)["fw"] != before["fw"]

    assert stub.Remove(pb.RemoveRequest(service="web")).removed
    assert xdp_query(site["c"].ifname_b, site["host"]) is None
    state = stub.ListState(pb.ListStateRequest())
    assert (list(state.services), list(state.functions), list(state.attachments)) == ([], [], [])
    assert send(site, 10) == 10  # routed by the host as before the segment
    assert not stub.Remove(pb.RemoveRequest(service="web")).removed


def test_bad_requests_are_refused_and_the_running_segment_is_untouched(site: dict) -> None:
    stub = site["agent"]().stub()
    stub.Apply(segment(site, 5))
    before = programs(stub)
    bad_vnf = segment(site, 6)
    bad_vnf.functions[1].vnf = "nope"
    cases = [
        (bad_vnf, grpc.StatusCode.INVALID_ARGUMENT, "functions[1] (mon): unknown VNF 'nope'"),
        (segment(site, 6, classify_on=["nope0"]), grpc.StatusCode.FAILED_PRECONDITION, "no interface 'nope0'"),
        (segment(site, 6, mon_config={"chained": 7}), grpc.StatusCode.INVALID_ARGUMENT, "greater than max 1"),
        (segment(site, 6, fw_control={"rules": "allow tcp from nowhere"}), grpc.StatusCode.INVALID_ARGUMENT,
         "firewall"),
        (segment(site, 4), grpc.StatusCode.FAILED_PRECONDITION, "generation 4 is older than generation 5"),
        (segment(site, 5, mon_config={"chained": 1}), grpc.StatusCode.ALREADY_EXISTS, "generation 5 is here already"),
    ]
    sent = 0
    for seg, code, words in cases:
        assert words in refused(lambda s=seg: stub.Apply(s), code)
        sent += 20
        assert send(site, 20) == 20 and hops(stub)[(1, 255)] == sent  # still running, through both functions
    assert "no function 'nat'" in refused(lambda: stub.Configure(pb.ConfigureRequest(
        service="web", generation=9, function="nat")), grpc.StatusCode.NOT_FOUND)
    state = stub.ListState(pb.ListStateRequest())
    assert [(s.generation, s.phase) for s in state.services] == [(5, pb.PHASE_APPLIED)]
    assert programs(stub) == before and state.problems == []


def test_a_full_disk_refuses_changes_and_the_data_path_runs_on(site: dict) -> None:
    state_dir = site["tmp"] / "state"
    state_dir.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(state_dir)], check=True)
    try:
        stub = site["agent"]().stub()
        stub.Apply(segment(site, 1))
        filler = state_dir / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:  # fill the file system to the last block
            while os.write(fd, bytes(4096)):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        control = {"default": "allow", "rules": f"deny udp from any to any port {PORT}"}
        details = refused(lambda: stub.Apply(segment(site, 2, fw_control=control)),
                          grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert "cannot write the desired state" in details and "full" in details
        assert send(site, 20) == 20 and hops(stub)[(1, 255)] == 20  # the old rules: nothing denied
        filler.unlink()
        assert stub.Apply(segment(site, 2, fw_control=control)).changed
        assert send(site, 20) == 0
    finally:
        subprocess.run(["umount", "-l", str(state_dir)], check=True)


def test_kill_9_under_traffic_loses_no_packet_and_the_new_agent_adopts(site: dict) -> None:
    first = site["agent"]()
    stub = first.stub()
    stub.Apply(segment(site, 1))
    state = stub.ListState(pb.ListStateRequest())
    with Stream(site) as stream:
        time.sleep(0.3)
        first.kill()
        time.sleep(0.3)                   # no agent at all: the pinned data path forwards alone
        second = site["agent"]()          # adopts while the stream runs
        time.sleep(0.3)
    assert stream.sent > 1000
    assert len(stream.got) == stream.sent and sorted(stream.got) == list(range(stream.sent))
    stub = second.stub()
    again = stub.ListState(pb.ListStateRequest())
    assert again.adopted and list(again.repairs) == [] and list(again.problems) == []
    for field in ("services", "functions", "paths", "attachments"):
        assert list(getattr(again, field)) == list(getattr(state, field)), field
    assert again.reset_epoch == state.reset_epoch
    assert hops(stub)[(1, 255)] == stream.sent  # the same counters, counting on

    # Drift while no agent runs: the classifier detached by hand. The next agent re-attaches it.
    second.kill()
    link = next(a.link_id for a in again.attachments)
    subprocess.run(["bpftool", "link", "detach", "id", str(link)], check=True, capture_output=True)
    third = site["agent"]()
    st = third.stub().ListState(pb.ListStateRequest())
    assert list(st.repairs) == [f"classifier on {site['c'].ifname_b} was detached; attached again"]
    assert send(site, 20) == 20 and hops(third.stub())[(1, 255)] == stream.sent + 20
