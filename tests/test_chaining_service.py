"""A service from service.yaml, compiled, planned and applied on two hosts: firewall -> nat ->
l4lb -> monitor, symmetric, carrying real TCP both ways through the same instances.

    client --c-- hostA ==u (NSH)== hostB --s-- server
                 [fw, nat]  ------> [lb, mon] -> stack -> server:8080
                 stack <- [nat, fw] <------ [lb, mon] <- classifier (replies)

The client connects to the VIP on port 80; nat turns its source into the pool address, l4lb
(DNAT) sends it to the server's port 8080. Replies are classified on hostB's server side by the
flow the forwarder recorded at the forward path's end, run monitor and l4lb (back to the VIP),
cross to hostA in NSH, and run nat (back to the client) and the firewall.
"""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from chaining.compiler import compile_paths
from chaining.host import ApplyError, HostDataPath
from chaining.local import mac_of
from chaining.plan import HostPlan, HostWiring, host_plans
from chaining.service import load_service
from datapath import netns

pytestmark = pytest.mark.kernel
ROOT = Path(__file__).resolve().parent.parent
UNDERLAY_MTU = 1600
SO_RCVBUFFORCE = 33  # <asm-generic/socket.h>; Python does not name it
PLACEMENT = {"fw": "A", "nat": "A", "lb": "B", "mon": "B"}
SERVICE = """\
descriptor_version: vnfkit/service/v1
name: web
vendor: org.vnfkit.tests
version: 1.0.0
description: filter, translate, balance, observe - both ways
functions:
  - id: fw
    vnf: firewall
    control: {{default: allow, rules: "deny udp from any to any port 9"}}
  - id: nat
    vnf: nat
    control: {{inside: ["{inside}"], pool: "{pool}"}}
  - id: lb
    vnf: l4lb
    control:
      services:
        web:
          mode: dnat
          vips: [{{addr: "{vip}", proto: tcp, port: 80}}]
          backends: [{{addr: "{backend}", port: 8080}}]
  - {{id: mon, vnf: monitor}}
paths:
  - {{id: web, hops: [fw, nat, lb, mon], symmetric: true}}
classifier:
  - {{path: web, match: {{dst: "{vip}/32", proto: tcp, dport: 80}}}}
"""


def _tx_off(ns: str, ifname: str) -> None:
    # Functions rewrite headers in XDP, where a partial (offloaded) checksum cannot be finished.
    subprocess.run(["ip", "netns", "exec", ns, "ethtool", "-K", ifname, "tx", "off"], check=True, capture_output=True)


@pytest.fixture
def lab(topo, tmp_path: Path):  # noqa: ANN001, ANN201
    client, host_a = topo.add_ns("client"), topo.add_ns("hostA")
    host_b, server = topo.add_ns("hostB"), topo.add_ns("server")
    c = topo.add_veth(client, host_a)
    u = topo.add_veth(host_a, host_b, mtu=UNDERLAY_MTU)
    s = topo.add_veth(host_b, server)
    vip, pool = topo.spare_addresses()
    for h in (host_a, host_b):
        topo.set_sysctl(h, "net.ipv4.ip_forward", "1")
    topo.add_route(client, f"{vip}/32", gateway=c.addr_b)
    topo.add_route(server, f"{pool}/32", gateway=s.addr_a)
    topo.add_route(host_b, f"{pool}/32", gateway=u.addr_a)
    topo.add_route(host_b, f"{c.addr_a}/32", gateway=u.addr_a)
    topo.add_route(host_a, f"{s.addr_b}/32", gateway=u.addr_b)
    _tx_off(client, c.ifname_a)
    _tx_off(server, s.ifname_b)
    path = tmp_path / "service.yaml"
    path.write_text(SERVICE.format(inside=f"{c.addr_a}/32", pool=pool, vip=vip, backend=s.addr_b))
    wiring = {
        "A": HostWiring(host_a, ingress=(c.ifname_b,), underlay=u.ifname_a,
                        underlay_mac=mac_of(host_a, u.ifname_a).hex(":"), underlay_ip=u.addr_a),
        "B": HostWiring(host_b, egress=(s.ifname_a,), underlay=u.ifname_b,
                        underlay_mac=mac_of(host_b, u.ifname_b).hex(":"), underlay_ip=u.addr_b),
    }
    return {"client": client, "server": server, "c": c, "s": s, "vip": vip, "pool": pool,
            "service": path, "wiring": wiring}


def plans(lab: dict, encap: str = "eth") -> dict[str, HostPlan]:
    service = load_service(lab["service"])
    compiled = compile_paths(service, PLACEMENT)
    return host_plans(compiled, service, lab["wiring"], encap=encap)


def echo(lab: dict, nbytes: int, timeout: float = 5.0) -> tuple[bytes, str, str]:
    """Client -> VIP:80, the server (on :8080) echoes; returns what came back, the peer the
    server saw and the peer the client saw."""
    with netns.enter(lab["server"]):
        srv = socket.create_server((lab["s"].addr_b, 8080))
    seen: list[str] = []

    def serve() -> None:
        srv.settimeout(timeout)
        try:
            conn, peer = srv.accept()
        except TimeoutError:
            return
        seen.append(peer[0])
        with conn:
            while chunk := conn.recv(65536):
                conn.sendall(chunk)

    t = threading.Thread(target=serve)
    t.start()
    got = bytearray()
    try:
        with netns.enter(lab["client"]):
            cli = socket.create_connection((lab["vip"], 80), timeout=timeout)
        with cli:
            peer = cli.getpeername()[0]
            cli.sendall(b"e" * nbytes)
            cli.shutdown(socket.SHUT_WR)
            while chunk := cli.recv(65536):
                got.extend(chunk)
    finally:
        t.join(timeout + 1)
        srv.close()
    return bytes(got), (seen or [""])[0], peer


@pytest.mark.parametrize("encap", ["eth", "vxlan-gpe"])
def test_symmetric_chain_of_four_vnfs_across_two_hosts_carries_tcp(lab: dict, encap: str) -> None:
    p = plans(lab, encap)
    fwd, rev = 1, 2  # compile_paths: the path, then its reverse
    assert [(s.spi, s.first_si, s.functions, s.end, s.reverse) for s in p["A"].paths] == [
        (fwd, 255, ("web/fw", "web/nat"), "remote", None), (rev, 253, ("web/nat", "web/fw"), "stack", None)]
    assert [(s.spi, s.first_si, s.functions, s.end, s.reverse) for s in p["B"].paths] == [
        (fwd, 253, ("web/lb", "web/mon"), "stack", (rev, 255)), (rev, 255, ("web/mon", "web/lb"), "remote", None)]
    assert HostPlan.from_dict(p["A"].to_dict()) == p["A"]  # what an agent would get over the wire

    with HostDataPath() as a, HostDataPath() as b:
        b.apply(p["B"])
        a.apply(p["A"])
        data, server_saw, client_saw = echo(lab, 200_000)
        assert len(data) == 200_000 and set(data) == {ord("e")}
        assert (server_saw, client_saw) == (lab["pool"], lab["vip"])  # nat and l4lb, both ways

        ha, hb = a.chain.hop_stats(), b.chain.hop_stats()
        forward = ha[(fwd, 255)]
        replies = hb[(rev, 255)]
        assert forward > 10 and replies > 10
        # Every forward packet went fw -> nat -> (NSH) -> lb -> mon -> stack, every reply
        # mon -> lb -> (NSH) -> nat -> fw -> stack: the same instances, in order.
        assert ha[(fwd, 254)] == ha[(fwd, 253)] == hb[(fwd, 253)] == hb[(fwd, 252)] == hb[(fwd, 251)] == forward
        assert hb[(rev, 254)] == hb[(rev, 253)] == ha[(rev, 253)] == ha[(rev, 252)] == ha[(rev, 251)] == replies
        for dp, fid in ((a, "web/fw"), (a, "web/nat"), (b, "web/lb"), (b, "web/mon")):
            assert dp.instance(fid).counters()["rx"][0] == forward + replies, fid
        assert a.instance("web/nat").counters()["out_translated"][0] == forward
        assert a.instance("web/nat").counters()["in_translated"][0] == replies
        assert b.instance("web/lb").counters()["dnat"][0] == forward
        assert b.instance("web/lb").counters()["snat"][0] == replies
        assert b.counters()["host"]["cls_reply"] == replies
        counters = a.counters()
        assert counters["paths"] == {"web/web": forward, "web/web.reverse": replies}


def test_a_bad_plan_changes_nothing(lab: dict) -> None:
    p = plans(lab)
    with HostDataPath() as a, HostDataPath() as b:
        b.apply(p["B"])
        a.apply(p["A"])
        before = a.counters()["functions"].keys()
        broken = HostPlan.from_dict({**p["A"].to_dict(), "classify_on": ["nope0"]})
        with pytest.raises(ApplyError, match="nope0"):
            a.apply(broken)
        bad_control = p["A"].to_dict()
        bad_control["functions"][1]["control"] = {"inside": ["not-a-prefix"], "pool": lab["pool"]}
        with pytest.raises(ApplyError, match="nat.*not-a-prefix"):
            a.apply(HostPlan.from_dict(bad_control))
        assert a.counters()["functions"].keys() == before
        data, _, _ = echo(lab, 10_000)
        assert len(data) == 10_000  # still running as before


STREAM = """\
descriptor_version: vnfkit/service/v1
name: stream
vendor: org.vnfkit.tests
version: 1.0.0
description: a path that changes under traffic
functions:
  - {{id: fw, vnf: firewall, config: {{default_allow: true}}}}
  - {{id: mon, vnf: monitor}}
  - {{id: mon2, vnf: monitor}}
paths:
  - {{id: p, hops: [{hops}]}}
classifier:
  - {{path: p, match: {{dst: "{dst}/32"}}}}
"""


class _Stream:
    """UDP datagrams numbered 0, 1, 2, ... from the client to the server until stopped; the
    server keeps every number it receives."""

    def __init__(self, lab: dict, port: int = 9100) -> None:
        with netns.enter(lab["server"]):
            self.rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rx.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 32 << 20)  # root may exceed rmem_max
        self.rx.bind((lab["s"].addr_b, port))
        self.rx.settimeout(1.0)
        with netns.enter(lab["client"]):
            self.tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.dst = (lab["s"].addr_b, port)
        self.sent = 0
        self.got: list[int] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._send), threading.Thread(target=self._recv)]

    def _send(self) -> None:
        while not self.stop.is_set():
            for _ in range(20):  # ~20 kpps: well under what the receiver's socket drains
                self.tx.sendto(self.sent.to_bytes(8, "big") + bytes(56), self.dst)
                self.sent += 1
            time.sleep(0.001)

    def _recv(self) -> None:
        while True:
            try:
                data = self.rx.recv(2048)
            except TimeoutError:
                if self.stop.is_set():
                    return
                continue
            self.got.append(int.from_bytes(data[:8], "big"))

    def __enter__(self) -> _Stream:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)
        self.rx.close()
        self.tx.close()


def test_zero_loss_while_a_hop_is_swapped_and_the_path_changes(lab: dict, topo, tmp_path: Path) -> None:  # noqa: ANN001
    dst = lab["s"].addr_b
    topo.add_route(lab["client"], f"{dst}/32", gateway=lab["c"].addr_b)
    placement = {"fw": "A", "mon": "B", "mon2": "B"}

    def stream_plans(hops: str, first_spi: int) -> dict[str, HostPlan]:
        path = tmp_path / f"stream{first_spi}.yaml"
        path.write_text(STREAM.format(hops=hops, dst=dst))
        service = load_service(path)
        return host_plans(compile_paths(service, placement, first_spi=first_spi), service, lab["wiring"])

    def switch(a: HostDataPath, b: HostDataPath, p: dict[str, HostPlan]) -> None:
        # The orchestrator's order: prepare everywhere, commit everywhere, drain, clean up.
        b.prepare(p["B"])
        a.prepare(p["A"])
        a.commit()
        b.commit()
        time.sleep(0.05)
        a.cleanup()
        b.cleanup()

    short, long_ = stream_plans("fw, mon", 1), stream_plans("fw, mon, mon2", 10)
    monitor = str(ROOT / "vnfs" / "monitor")
    swapped = dataclasses.replace(short["A"], functions=tuple(
        dataclasses.replace(f, folder=monitor, config={}) for f in short["A"].functions))
    with HostDataPath() as a, HostDataPath() as b:
        switch(a, b, short)
        with _Stream(lab) as stream:
            for step in (lambda: a.apply(swapped),        # the fw hop becomes a monitor, in place
                         lambda: switch(a, b, long_),     # a new path (SPI 10) with one more hop
                         lambda: switch(a, b, short)):    # and back to SPI 1, the fw hop a firewall again
                time.sleep(0.3)
                step()
            time.sleep(0.3)
        hops_a, hops_b = a.chain.hop_stats(), b.chain.hop_stats()
    assert stream.sent > 1000
    # Each of the four states carried part of the stream ...
    assert hops_a[(1, 255)] > 0 and hops_a[(10, 255)] > 0 and hops_b[(10, 253)] > 0
    # ... and every datagram arrived, exactly once.
    assert len(stream.got) == stream.sent, f"sent {stream.sent}, received {len(stream.got)}"
    assert sorted(stream.got) == list(range(stream.sent))


def test_a_path_that_comes_back_to_a_host(lab: dict, topo, tmp_path: Path) -> None:  # noqa: ANN001
    """fw on A, mon on B, mon2 on A again: A holds two segments of the same SPI."""
    dst = lab["s"].addr_b
    topo.add_route(lab["client"], f"{dst}/32", gateway=lab["c"].addr_b)
    path = tmp_path / "back.yaml"
    path.write_text(STREAM.format(hops="fw, mon, mon2", dst=dst))
    service = load_service(path)
    p = host_plans(compile_paths(service, {"fw": "A", "mon": "B", "mon2": "A"}), service, lab["wiring"])
    assert [(s.spi, s.first_si, s.end, s.next_host) for s in p["A"].paths] == [(1, 255, "remote", "B"),
                                                                               (1, 253, "stack", None)]
    with HostDataPath() as a, HostDataPath() as b:
        b.apply(p["B"])
        a.apply(p["A"])
        with _Stream(lab) as stream:
            time.sleep(0.5)
        ha, hb = a.chain.hop_stats(), b.chain.hop_stats()
    assert len(stream.got) == stream.sent > 100
    assert ha[(1, 255)] == ha[(1, 254)] == hb[(1, 254)] == hb[(1, 253)] == ha[(1, 253)] == ha[(1, 252)] == stream.sent
