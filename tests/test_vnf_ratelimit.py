"""The ratelimit VNF: packet tests and fuzzing on every executor, its control plane's errors,
and end to end on real veths with real sockets (what the server application receives)."""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from datapath import netns
from datapath.errors import VnfkitError
from datapath.verdict import Verdict
from vnfkit.descriptor import load_descriptor
from vnfkit.executors import Executor, make_executors
from vnfkit.pyfile import import_file
from vnfkit.testing import fuzz, load_packet_tests, run_tests

pytestmark = pytest.mark.kernel

VNF = Path(__file__).resolve().parent.parent / "vnfs" / "ratelimit"
control = import_file(VNF / "control.py", "the ratelimit control plane", VnfkitError)
PORT = 5001
TOS_ECT0 = 0x02  # ECN-capable transport: must survive marking


@pytest.fixture(scope="module")
def executors() -> Iterator[list[Executor]]:
    exs = make_executors(VNF)
    try:
        yield exs
    finally:
        for ex in exs:
            ex.close()


def counts(ex: Executor) -> dict[str, int]:
    """Packets per counter name."""
    return {name: packets for name, (packets, _) in ex.counters().items()}


# ---- (1) the three executors agree -------------------------------------------------------------

def test_packet_tests_agree_on_every_executor(executors: list[Executor]) -> None:
    tests, _ = load_packet_tests(VNF)
    report = run_tests(executors, tests, load_descriptor(VNF))
    assert report.ok, [(f.test, f.reason) for f in report.failures]
    assert report.ran == len(tests) >= 30


def test_fuzz_mark_mode_agrees_and_reaches_every_policing_path(executors: list[Executor]) -> None:
    _, setup = load_packet_tests(VNF)
    report = fuzz(executors, 10_000, 1, load_descriptor(VNF), setup)
    assert report.ok, [(f.test, f.reason) for f in report.failures]
    c = counts(executors[0])
    for name in ("malformed", "not_ip", "no_bucket", "flow_new", "conform", "exceed_prefix", "exceed_flow",
                 "exceed_drop", "exceed_mark"):
        assert c[name] > 0, f"the fuzzer never reached {name}: {c}"
    stats = executors[0].tables["bucket_stats"]
    for bucket_id in (1, 2, 3):  # the FUZZ buckets: drop, bytes/mark, IPv6
        assert stats[bucket_id]["conform_packets"] > 0 and stats[bucket_id]["exceed_packets"] > 0


def test_fuzz_drop_mode_without_flows_reaches_the_other_switches(executors: list[Executor]) -> None:
    _, setup = load_packet_tests(VNF)
    setup = {**setup, "config": {"drop_later_frags": 1}}  # drop on exceed, no per-flow policing
    report = fuzz(executors, 5_000, 2, load_descriptor(VNF), setup)
    assert report.ok, [(f.test, f.reason) for f in report.failures]
    c = counts(executors[0])
    for name in ("frag_dropped", "unmatched", "exceed_drop", "conform"):
        assert c[name] > 0, f"the fuzzer never reached {name}: {c}"
    assert c["exceed_mark"] == c["flow_new"] == 0


def test_control_plane_policy_polices_identically_on_every_executor(executors: list[Executor]) -> None:
    """apply() through the Table interface, then a timed burst: the same verdicts everywhere,
    and the ones the token arithmetic predicts (rate 10/s, burst 3, a packet every 30 ms)."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    policy = control.parse_policy({"buckets": [{"name": "t", "rate": 10, "burst": 3, "prefixes": ["198.18.0.0/24"]}]})
    pkt = bytes(Ether() / IP(src="198.18.0.9", dst="198.18.1.1") / UDP(dport=53))
    verdicts = {}
    for ex in executors:
        ex.reset()
        ex.configure(dict(load_descriptor(VNF).param_defaults(), **control.apply(policy, ex.vnf_tables())))
        seq = []
        for i in range(12):
            ex.set_clock(10**9 + i * 30_000_000)
            seq.append(ex.run(pkt).verdict)
        verdicts[ex.name] = seq
        assert control.read_stats(policy, ex.vnf_tables())["t"]["conform_packets"] == seq.count(Verdict.PASS)
    # 3 tokens, then 0.3 per packet: 2, 1.3, 0.6 | 0.9 | 1.2-1=0.2 | 0.5 | 0.8 | 1.1-1=0.1 | 0.4 | 0.7 |
    # exactly 1.0 at 300 ms, which passes (>=) | 0.3.
    P, D = Verdict.PASS, Verdict.DROP
    assert verdicts["model"] == [P, P, P, D, P, D, D, P, D, D, P, D]
    assert verdicts["kernel"] == verdicts["native"] == verdicts["model"]


# ---- (2) the control plane's errors ------------------------------------------------------------

def bucket(**kw: Any) -> dict[str, Any]:
    """A one-bucket policy, with ``kw`` overriding or adding the bucket's fields."""
    return {"buckets": [{"name": "tenant-a", "rate": 1, "burst": 20, "prefixes": ["198.18.0.0/24"], **kw}]}


@pytest.mark.parametrize(("policy", "message"), [
    (bucket(prefixes=["198.18.0.1/24"]), "bucket 'tenant-a': prefix '198.18.0.1/24': 198.18.0.1/24 has host bits set"),
    (bucket(prefixes=["198.18.0.0/33"]), "bucket 'tenant-a': prefix '198.18.0.0/33'"),
    (bucket(prefixes=[]), "bucket 'tenant-a': prefixes must be a non-empty list"),
    (bucket(prefixes="198.18.0.0/24"), "bucket 'tenant-a': prefixes must be a non-empty list"),
    (bucket(rate=-1), "bucket 'tenant-a': rate -1 is not in 0..4294967295"),
    (bucket(rate="fast"), "bucket 'tenant-a': rate 'fast' is not a number"),
    (bucket(rate=1.5), "bucket 'tenant-a': rate 1.5 is not a whole number"),
    (bucket(burst=0), "bucket 'tenant-a': burst 0 is not in 1..4294967295"),
    (bucket(burst="5G"), "bucket 'tenant-a': burst '5G' is not in 1..4294967295"),
    (bucket(unit="bits"), "bucket 'tenant-a': unit 'bits' is not one of packets, bytes"),
    (bucket(unit="bytes", burst=100), "bucket 'tenant-a': a burst of 100 bytes is less than one 1500-byte packet"),
    (bucket(action="reject"), "bucket 'tenant-a': action 'reject' is not one of default, drop, mark"),
    (bucket(id=1024), "bucket 'tenant-a': id 1024 is not in 1..1023"),
    (bucket(rte=5), "bucket 'tenant-a': unknown field 'rte' (did you mean 'rate'?)"),
    ({"buckets": [{"rate": 1, "burst": 2, "prefixes": ["198.18.0.0/24"]}]}, "bucket #1: needs a name"),
    ({"buckets": [{"name": "a", "burst": 2, "prefixes": ["198.18.0.0/24"]}]}, "bucket 'a': needs rate"),
    ({"buckets": [{"name": "a", "rate": 1, "burst": 2, "prefixes": ["198.18.0.0/24"]},
                  {"name": "b", "rate": 1, "burst": 2, "prefixes": ["2001:db8::/32", "198.18.0.0/24"]}]},
     "bucket 'b': prefix 198.18.0.0/24 is already in bucket 'a'"),
    ({"buckets": [{"name": "a", "rate": 1, "burst": 2, "prefixes": ["198.18.0.0/24"]},
                  {"name": "a", "rate": 1, "burst": 2, "prefixes": ["198.18.1.0/24"]}]},
     "bucket 'a': the name is used twice"),
    ({"buckets": [{"name": "a", "id": 3, "rate": 1, "burst": 2, "prefixes": ["198.18.0.0/24"]},
                  {"name": "b", "id": 3, "rate": 1, "burst": 2, "prefixes": ["198.18.1.0/24"]}]},
     "bucket 'b': id 3 is already bucket 'a''s"),
    ({"exceed": "shape"}, "policy: exceed 'shape' is not one of drop, mark"),
    ({"mark_dscp": 64}, "policy: mark_dscp 64 is not 0..63"),
    ({"later_fragments": "reassemble"}, "policy: later_fragments 'reassemble' is not one of police, drop"),
    ({"flow": {"rate": 10}}, "flow: needs a burst"),
    ({"flow": {"rate": 10, "burst": 5, "per": "s"}}, "flow: unknown field 'per'"),
    ({"bukets": []}, "policy: unknown field 'bukets' (did you mean 'buckets'?)"),
])
def test_control_rejects_bad_policies_naming_the_culprit(policy: dict[str, Any], message: str) -> None:
    with pytest.raises(control.RateLimitConfigError) as info:
        control.parse_policy(policy)
    assert message in str(info.value)
    assert isinstance(info.value, VnfkitError)


def test_control_rejects_more_prefixes_than_the_trie_holds(executors: list[Executor]) -> None:
    nets = [str(n) for n in ipaddress.ip_network("198.18.0.0/16").subnets(new_prefix=29)][:4097]
    policy = control.parse_policy({"buckets": [{"name": "wide", "rate": 1, "burst": 1, "prefixes": nets}]})
    with pytest.raises(control.RateLimitConfigError, match="4097 IPv4 prefixes, but table src4 holds 4096"):
        control.apply(policy, executors[2].vnf_tables())


def test_control_reads_names_and_suffixes() -> None:
    policy = control.parse_policy({"exceed": "mark", "mark_dscp": "af21", "flow": {"rate": "2.5k", "burst": "1M",
                                                                                  "unit": "bytes"},
                                   "buckets": [{"name": "a", "rate": "10M", "burst": 64000, "unit": "bytes",
                                                "action": "drop", "prefixes": ["2001:db8:a::/48"]}]})
    assert policy.config == {"exceed_action": 1, "mark_dscp": 18, "drop_later_frags": 0, "flow_rate": 2500,
                             "flow_burst": 1_000_000, "flow_unit": 1}
    a = policy.bucket("a")
    assert (a.id, a.rate, a.burst, a.unit, a.action) == (1, 10_000_000, 64000, 1, 1)


# ---- (3) end to end: real sockets through the VNF at XDP ---------------------------------------

class Server:
    """A UDP socket in the server namespace that reports each datagram's source and IP TOS."""

    def __init__(self, ns: str) -> None:
        with netns.enter(ns):
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_RECVTOS, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind(("0.0.0.0", PORT))

    def receive(self, n: int) -> list[tuple[bytes, tuple[str, int], int]]:
        """Exactly ``n`` datagrams as (payload, source, TOS), then none more (a generous bounded wait)."""
        out = []
        self.sock.settimeout(10)
        for _ in range(n):
            data, anc, _, src = self.sock.recvmsg(2048, socket.CMSG_SPACE(1))
            tos = next(d[0] for level, kind, d in anc if level == socket.IPPROTO_IP and kind == socket.IP_TOS)
            out.append((data, src, tos))
        self.sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            self.sock.recv(2048)  # the counters said n passed: anything more is a bug
        return out


def send_burst(ns: str, src: str, dst: str, count: int, sport: int = 0, tos: int = 0) -> None:
    """``count`` datagrams as fast as Python sends them, numbered in their payload."""
    with netns.enter(ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, tos)
        sock.bind((src, sport))
        for i in range(count):
            sock.sendto(b"%04d" % i + b"." * 96, (dst, PORT))


def wait_policed(vnf: Any, total: int) -> dict[str, int]:
    """The counters once the VNF has judged ``total`` datagrams (bounded wait; no timing assumed)."""
    deadline = time.monotonic() + 15
    while True:
        c = {name: packets for name, (packets, _) in vnf.counters().items()}
        if c["conform"] + c["exceed_drop"] + c["exceed_mark"] >= total or time.monotonic() > deadline:
            return c
        time.sleep(0.02)


@pytest.fixture
def net(topo: Any) -> Iterator[Any]:
    """Two clients, each on its own veth (its own /30) to one server; the VNF at XDP on both
    server ends, one instance so they share tables."""
    from vnfkit.instance import KernelInstance

    server_ns = topo.add_ns("server")
    a = topo.add_veth(topo.add_ns("client"), server_ns)
    b = topo.add_veth(topo.add_ns("other"), server_ns)
    server = Server(server_ns)
    with server.sock, KernelInstance(VNF) as vnf:
        vnf.attach(server_ns, a.ifname_b)
        vnf.attach(server_ns, b.ifname_b)
        yield SimpleNamespace(a=a, b=b, server=server, vnf=vnf)


def prefix(addr: str) -> str:
    """The /30 an automatic veth address belongs to."""
    return str(ipaddress.ip_interface(f"{addr}/30").network)


def install(vnf: Any, spec: dict[str, Any]) -> Any:
    """Parse and apply a policy on a KernelInstance, with its config; return the Policy."""
    policy = control.parse_policy(spec)
    vnf.configure(control.apply(policy, vnf.tables))
    return policy


def test_e2e_burst_then_drop_and_a_second_prefix_policed_independently(net: Any) -> None:
    a, b, vnf, server = net.a, net.b, net.vnf, net.server
    policy = install(vnf, {"buckets": [
        {"name": "client", "rate": 1, "burst": 20, "prefixes": [prefix(a.addr_a)]},
        {"name": "other", "rate": 1, "burst": 5, "prefixes": [prefix(b.addr_a)]}]})
    send_burst(a.ns_a, a.addr_a, a.addr_b, 60)
    c = wait_policed(vnf, 60)
    # A token may refill (1/s) during the send: 20 or 21 get through, never fewer or more.
    assert 20 <= c["conform"] <= 21 and c["conform"] + c["exceed_drop"] == 60
    assert c["exceed_prefix"] == 60 - c["conform"]
    got = server.receive(c["conform"])
    assert {src[0] for _, src, _ in got} == {a.addr_a}
    assert [int(d[:4]) for d, _, _ in got[:20]] == list(range(20))  # the burst is the first 20, in order
    assert sum(len(d) for d, _, _ in got) == 100 * c["conform"]

    # The second client's bucket is untouched by the first client's overrun.
    send_burst(b.ns_a, b.addr_a, b.addr_b, 30)
    c2 = wait_policed(vnf, 90)
    other = c2["conform"] - c["conform"]
    assert 5 <= other <= 6
    got = server.receive(other)
    assert {src[0] for _, src, _ in got} == {b.addr_a}
    stats = control.read_stats(policy, vnf.tables)
    assert stats["client"]["conform_packets"] == c["conform"] and stats["client"]["exceed_packets"] == 60 - c["conform"]
    assert stats["other"]["conform_packets"] == other and stats["other"]["exceed_packets"] == 30 - other
    assert c2["malformed"] == 0


def test_e2e_mark_mode_delivers_everything_and_marks_beyond_the_burst(net: Any) -> None:
    a, vnf, server = net.a, net.vnf, net.server
    install(vnf, {"exceed": "mark", "mark_dscp": "AF11",
                  "buckets": [{"name": "client", "rate": 1, "burst": 20, "prefixes": [prefix(a.addr_a)]}]})
    send_burst(a.ns_a, a.addr_a, a.addr_b, 50, tos=TOS_ECT0)
    c = wait_policed(vnf, 50)
    assert 20 <= c["conform"] <= 21 and c["conform"] + c["exceed_mark"] == 50 and c["exceed_drop"] == 0
    got = server.receive(50)  # nothing dropped: the UDP checksum and IPv4 header checksum held
    assert [int(d[:4]) for d, _, _ in got] == list(range(50))
    tos = [t for _, _, t in got]
    af11 = (10 << 2) | TOS_ECT0
    assert tos[:20] == [TOS_ECT0] * 20  # within the burst: untouched
    assert tos[c["conform"]:] == [af11] * c["exceed_mark"]  # beyond: DSCP AF11, ECN bits kept
    assert tos.count(af11) == c["exceed_mark"]


def test_e2e_per_flow_limits_each_flow_of_one_source_separately(net: Any) -> None:
    a, vnf, server = net.a, net.vnf, net.server
    install(vnf, {"flow": {"rate": 1, "burst": 4}})
    for sport in (40001, 40002):
        send_burst(a.ns_a, a.addr_a, a.addr_b, 12, sport=sport)
    c = wait_policed(vnf, 24)
    assert c["flow_new"] == 2 and c["exceed_flow"] == c["exceed_drop"] == 24 - c["conform"]
    got = server.receive(c["conform"])
    per_port = {p: sum(1 for _, src, _ in got if src[1] == p) for p in (40001, 40002)}
    assert all(4 <= n <= 5 for n in per_port.values()), per_port
    assert len(vnf.tables["flows"]) == 2


def test_control_reapply_replaces_prefixes_and_unconfigures_old_buckets(executors: list[Executor]) -> None:
    first = control.parse_policy({"buckets": [
        {"name": "a", "rate": 1, "burst": 2, "prefixes": ["198.18.0.0/24", "2001:db8:a::/48"]},
        {"name": "b", "id": 9, "rate": 1, "burst": 2, "prefixes": ["198.18.1.0/24"]}]})
    second = control.parse_policy({"buckets": [{"name": "c", "rate": 5, "burst": 7, "prefixes": ["198.18.7.0/24"]}]})
    for ex in executors:
        ex.reset()
        tables = ex.vnf_tables()
        control.apply(first, tables)
        control.apply(second, tables)
        assert [(int(k["prefixlen"]), bytes(k["addr"]), int(v)) for k, v in tables["src4"].items()] == \
            [(24, bytes([198, 18, 7, 0]), 1)]
        assert len(tables["src6"]) == 0
        assert (int(tables["buckets"][1]["rate"]), int(tables["buckets"][1]["burst"])) == (5, 7)
        assert int(tables["buckets"][9]["burst"]) == 0  # unconfigured: no longer polices


def test_control_swaps_a_full_trie_for_another(executors: list[Executor]) -> None:
    """Old and new prefixes do not both fit: apply deletes the old ones first."""
    nets = [str(n) for n in ipaddress.ip_network("198.18.0.0/15").subnets(new_prefix=29)]
    model_tables = executors[2].vnf_tables()
    for chunk in (nets[:4096], nets[4096:8192]):
        control.apply(control.parse_policy({"buckets": [{"name": "w", "rate": 1, "burst": 1, "prefixes": chunk}]}),
                      model_tables)
    assert len(model_tables["src4"]) == 4096 and "198.18.0.0/29" not in model_tables["src4"]


@pytest.fixture
def net6(topo: Any) -> Iterator[Any]:
    """A client and a server joined by one IPv6 veth (2001:db8:5::/64, static neighbours, no DAD)."""
    from pyroute2 import IPRoute

    from vnfkit.instance import KernelInstance

    client_ns, server_ns = topo.add_ns("client6"), topo.add_ns("server6")
    link = topo.add_veth(client_ns, server_ns, ipv6=True)
    ends = ((client_ns, link.ifname_a, link.ifindex_a, "2001:db8:5::1"),
            (server_ns, link.ifname_b, link.ifindex_b, "2001:db8:5::2"))
    macs = {}
    for ns, ifname, index, addr in ends:
        topo.set_sysctl(ns, f"net/ipv6/conf/{ifname}/accept_dad", "0")  # usable at once
        with netns.enter(ns), IPRoute() as ipr:
            ipr.addr("add", index=index, address=addr, prefixlen=64)
            macs[ns] = ipr.get_links(index)[0].get_attr("IFLA_ADDRESS")
    # Static neighbours: no neighbour discovery from the client's address to be policed too.
    for (ns, _, index, _), (peer_ns, _, _, peer_addr) in zip(ends, reversed(ends), strict=True):
        with netns.enter(ns), IPRoute() as ipr:
            ipr.neigh("add", dst=peer_addr, lladdr=macs[peer_ns], ifindex=index, state=0x80)  # NUD_PERMANENT
    with netns.enter(server_ns):
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVTCLASS, 1)
    sock.bind(("::", PORT))
    with sock, KernelInstance(VNF) as vnf:
        vnf.attach(server_ns, link.ifname_b)
        yield SimpleNamespace(client_ns=client_ns, client="2001:db8:5::1", server="2001:db8:5::2", sock=sock, vnf=vnf)


def test_e2e_ipv6_mark_mode_sets_the_traffic_class_beyond_the_burst(net6: Any) -> None:
    vnf = net6.vnf
    policy = install(vnf, {"exceed": "mark", "mark_dscp": "CS1",
                           "buckets": [{"name": "v6", "rate": 1, "burst": 10, "prefixes": ["2001:db8:5::/64"]}]})
    with netns.enter(net6.client_ns):
        client = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    with client:
        client.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, TOS_ECT0)
        client.bind((net6.client, 0))
        for i in range(30):
            client.sendto(b"%04d" % i, (net6.server, PORT))
    c = wait_policed(vnf, 30)
    stats = control.read_stats(policy, vnf.tables)["v6"]
    assert 10 <= stats["conform_packets"] <= 11 and stats["exceed_packets"] == 30 - stats["conform_packets"]
    net6.sock.settimeout(10)
    got = []
    for _ in range(30):
        data, anc, _, src = net6.sock.recvmsg(64, socket.CMSG_SPACE(4))
        tclass = next(int.from_bytes(d[:4], "little") for level, kind, d in anc
                      if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_TCLASS)
        got.append((int(data), src[0], tclass))
    assert [seq for seq, _, _ in got] == list(range(30)) and {s for _, s, _ in got} == {net6.client}
    cs1 = (8 << 2) | TOS_ECT0
    assert [t for _, _, t in got[:10]] == [TOS_ECT0] * 10
    assert [t for _, _, t in got[stats["conform_packets"]:]] == [cs1] * stats["exceed_packets"]
    assert c["exceed_mark"] == stats["exceed_packets"] and c["exceed_drop"] == 0
