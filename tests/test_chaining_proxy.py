"""The SFC proxy: a namespace running real nftables, which knows nothing of NSH or metadata,
as the middle hop of a path between two kernel functions, carrying real TCP.

    client --c-- router --s-- server
                 |    |
             vin |    | vout
                 in  out
                  [nft]       a namespace that routes: in -> out, nftables in its forward hook

The router's classifier starts client -> server traffic on path 50 [blocker, nft, monitor]:
the proxy sends it into nft's ``in``, nft routes it out of ``out`` (its default route) and
the proxy puts it back on the path. Replies take plain routes unless a test says otherwise.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from chaining.local import DEFAULT_TTL, ChainError, LocalChain
from chaining.proxy import ProxyFunction
from datapath import netns
from datapath.attach import xdp_query
from datapath.errors import VnfkitError
from tests.test_chaining_local import tcp_transfer
from tests.test_chaining_nsh import _ethtool_tx_off
from vnfkit.pyfile import import_file

pytestmark = pytest.mark.kernel
ROOT = Path(__file__).resolve().parent.parent
monitor_control = import_file(ROOT / "vnfs" / "monitor" / "control.py", "the monitor's control plane", VnfkitError)
SPI, REV_SPI = 50, 51
BLOCKED = 7001   # the TCP/UDP port nftables drops
OPEN_UDP = 9000


def nft(ns: str, *args: str, stdin: str | None = None) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "nft", *args], input=stdin, capture_output=True, text=True,
                          check=True).stdout


def nft_counters(ns: str) -> dict[str, int]:
    """nftables' named counters in ``ns``, in packets."""
    out = json.loads(nft(ns, "-j", "list", "counters"))
    return {c["counter"]["name"]: c["counter"]["packets"] for c in out["nftables"] if "counter" in c}


def firewall(lab: dict, *, stateful: bool = False) -> str:
    """An nftables ruleset for the function: drop the client's traffic to BLOCKED, count what
    it lets through; ``stateful``: replies pass only as part of a connection it saw start."""
    client, server = lab["c"].addr_a, lab["s"].addr_b
    replies = f"ct state established,related ip saddr {server} ip daddr {client} counter name replies accept"
    return f"""
table inet vkproxy {{
    counter accepted {{}}
    counter blocked {{}}
    counter replies {{}}
    chain forward {{
        type filter hook forward priority 0; policy {'drop' if stateful else 'accept'};
        {replies if stateful else ''}
        ip saddr {client} ip daddr {server} meta l4proto {{ tcp, udp }} th dport {BLOCKED} counter name blocked drop
        ip saddr {client} ip daddr {server} counter name accepted accept
    }}
}}
"""


@pytest.fixture
def lab(topo, tmp_path: Path):  # noqa: ANN001, ANN201
    client, router, server, fn = (topo.add_ns(n) for n in ("client", "router", "server", "nft"))
    c = topo.add_veth(client, router)
    s = topo.add_veth(router, server)
    vin = topo.add_veth(router, fn)
    vout = topo.add_veth(router, fn)
    topo.set_sysctl(router, "net.ipv4.ip_forward", "1")
    topo.set_sysctl(fn, "net.ipv4.ip_forward", "1")
    topo.add_route(client, f"{s.addr_b}/32", gateway=c.addr_b)
    topo.add_route(server, f"{c.addr_a}/32", gateway=s.addr_a)
    topo.add_route(fn, "default", gateway=vout.addr_a)
    for ns, ifname in ((client, c.ifname_a), (server, s.ifname_b)):
        _ethtool_tx_off(ns, ifname)   # the proxy redirects their frames: see test_chaining_nsh
    for ifname in (vin.ifname_b, vout.ifname_b):
        # GRO in the function would merge TCP segments (its ends run XDP, so veth has NAPI):
        # nftables would count fewer, larger packets than the proxy sent. Off, so the counts
        # of both can be compared packet for packet.
        subprocess.run(["ip", "netns", "exec", fn, "ethtool", "-K", ifname, "gro", "off"], check=True,
                       capture_output=True)
    subprocess.run([sys.executable, "-m", "vnfkit.cli", "new", "blocker"], cwd=tmp_path, check=True,
                   capture_output=True)
    # tcp_transfer (from the local tests) knows the ends as client/server and inner/outer.
    return {"client": client, "router": router, "server": server, "fn": fn, "c": c, "s": s, "vin": vin,
            "vout": vout, "inner": c, "outer": s, "blocker": tmp_path / "blocker", "topo": topo}


def load_nft(chain: LocalChain, lab: dict) -> ProxyFunction:
    r, vin, vout = lab["router"], lab["vin"], lab["vout"]
    return chain.load_proxy("nft", to_fn=(r, vin.ifname_a), from_fn=(r, vout.ifname_a),
                            function=(lab["fn"], vin.ifname_b, vout.ifname_b))


def three_hop_chain(lab: dict) -> LocalChain:
    """[blocker, nft, monitor] on path SPI for client -> server, classified at the router."""
    chain = LocalChain()
    try:
        chain.load("blocker", lab["blocker"])
        load_nft(chain, lab)
        chain.load("monitor", ROOT / "vnfs" / "monitor")
        hops = chain.add_path(SPI, ["blocker", "nft", "monitor"])
        assert [(h.si, h.function) for h in hops] == \
            [(255, "blocker"), (254, "nft"), (253, "monitor"), (252, "<stack>")]
        chain.classify(f"{lab['s'].addr_b}/32", SPI)
        chain.attach(lab["router"], lab["c"].ifname_b)
    except BaseException:
        chain.close()
        raise
    return chain


def udp_server(lab: dict, port: int) -> socket.socket:
    with netns.enter(lab["server"]):
        srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind((lab["s"].addr_b, port))
    srv.settimeout(2.0)
    return srv


def flow_key(src: str, dst: str, sport: int, dport: int, proto: int) -> bytes:
    """chain.h's struct flow_key."""
    return struct.pack("!4s4sHHB3x", socket.inet_aton(src), socket.inet_aton(dst), sport, dport, proto)


def test_tcp_through_nftables_between_two_kernel_functions(lab: dict) -> None:
    nft(lab["fn"], "-f", "-", stdin=firewall(lab))
    with three_hop_chain(lab) as chain:
        blocker, proxy, monitor = (chain.functions[n][1] for n in ("blocker", "nft", "monitor"))
        assert tcp_transfer(lab, 300_000) == 300_000

        seen = blocker.counters()["rx"][0]
        assert seen > 10
        stats, px, fw = chain.hop_stats(), proxy.counters(), nft_counters(lab["fn"])
        # Every packet went blocker -> proxy -> nftables -> proxy -> monitor -> stack, in order:
        # each stage counts the same packets.
        assert stats[(SPI, 255)] == seen == stats[(SPI, 254)] == px["sent"] == fw["accepted"]
        assert fw["accepted"] == px["returned_by_flow"] == stats[(SPI, 253)] == monitor.counters()["rx"][0]
        assert stats[(SPI, 253)] == stats[(SPI, 252)] == chain.counters()["sff_delivered"]
        assert px["returned_by_default"] == px["unknown"] == px["untracked"] == px["bad_meta"] == 0
        assert px["no_room"] == px["no_forwarder"] == fw["blocked"] == 0

        # nftables drops the blocked port: TCP cannot connect, and UDP stops in the function.
        with pytest.raises(OSError):
            tcp_transfer(lab, 1000, port=BLOCKED, timeout=1.5)
        syns = nft_counters(lab["fn"])["blocked"]
        assert syns >= 1
        netns.udp_send(lab["client"], lab["s"].addr_b, BLOCKED, count=5, src_port=40000)
        fw, px2 = nft_counters(lab["fn"]), proxy.counters()
        assert fw["blocked"] == syns + 5
        assert px2["sent"] == px2["returned_by_flow"] + fw["blocked"]   # what went in came out or was dropped
        assert px2["returned_by_flow"] == px["returned_by_flow"]
        assert monitor.counters()["rx"][0] == stats[(SPI, 253)]
        # The flow entry holds where the path resumes: the monitor's SI, the TTL after two hops.
        entry = proxy.obj.map("px_flows")[flow_key(lab["c"].addr_a, lab["s"].addr_b, 40000, BLOCKED, 17)]
        assert (int(entry["spi_si"]), int(entry["ttl"])) == ((SPI << 8) | 253, DEFAULT_TTL - 2)

        # TTL crosses the function: two hops leave none for the third, whatever nftables does.
        chain.classify(f"{lab['s'].addr_b}/32", SPI, ttl=2)
        before = chain.counters()["sff_ttl"]
        netns.udp_send(lab["client"], lab["s"].addr_b, OPEN_UDP, count=4)
        assert chain.counters()["sff_ttl"] - before == 4
        assert proxy.counters()["returned_by_flow"] == px2["returned_by_flow"] + 4
        assert monitor.counters()["rx"][0] == stats[(SPI, 253)]


def test_a_function_that_rewrites_addresses_rejoins_by_the_default(lab: dict) -> None:
    """nftables masquerades out of ``out``: the flow entry misses, the interface's default
    takes the packets on to the monitor. The server's replies come back through nft (which
    undoes the NAT) and out of its ``in``, where nothing is known of them: to the stack."""
    fn, vin, vout = lab["fn"], lab["vin"], lab["vout"]
    nft(fn, "-f", "-", stdin=f"""
table ip vknat {{
    counter masqueraded {{}}
    chain post {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "{vout.ifname_b}" counter name masqueraded masquerade
    }}
}}
""")
    lab["topo"].add_route(fn, f"{lab['c'].addr_a}/32", gateway=vin.addr_a)   # replies back by in
    lab["topo"].add_route(lab["server"], f"{vout.addr_b}/32", gateway=lab["s"].addr_a)
    with three_hop_chain(lab) as chain:
        proxy, monitor = chain.functions["nft"][1], chain.functions["monitor"][1]
        proxy.set_default(SPI)
        assert tcp_transfer(lab, 200_000) == 200_000

        px, stats = proxy.counters(), chain.hop_stats()
        assert nft_counters(fn)["masqueraded"] == 1   # one connection, NATed once
        assert px["sent"] == stats[(SPI, 254)] > 10
        assert px["returned_by_flow"] == 0
        assert px["returned_by_default"] == px["sent"] == stats[(SPI, 253)] == monitor.counters()["rx"][0]
        assert px["unknown"] > 0   # the replies, out of nft's in
        # The monitor (after nft) saw the client's flow with nft's address as its source.
        sources = {str(f.key.src) for f in monitor_control.Monitor(monitor.tables).flows()}
        assert sources == {vout.addr_b}


def test_return_with_neither_flow_nor_default_goes_to_the_stack(lab: dict) -> None:
    """Traffic the function starts itself (here: UDP from its own address) matches no flow;
    without a default it is handed to the router's stack, which forwards it, and counted."""
    with three_hop_chain(lab) as chain:
        proxy, monitor = chain.functions["nft"][1], chain.functions["monitor"][1]
        with udp_server(lab, OPEN_UDP) as srv:
            netns.udp_send(lab["fn"], lab["s"].addr_b, OPEN_UDP, count=5, payload=b"from-the-function")
            got = [srv.recvfrom(2048) for _ in range(5)]
        assert got == [(b"from-the-function", (lab["vout"].addr_b, got[0][1][1]))] * 5
        px = proxy.counters()
        assert px["unknown"] == 5
        assert px["not_ipv4"] >= 1   # its ARP for the router passed to the stack too
        assert px["sent"] == px["returned_by_flow"] == px["returned_by_default"] == 0
        assert monitor.counters()["rx"][0] == 0 and chain.hop_stats() == {}


def test_reverse_path_crosses_the_function_backwards(lab: dict) -> None:
    """A stateful nftables between client and server in both directions: path SPI carries
    client -> server in by nft's ``in``, path REV_SPI carries server -> client in by its
    ``out``. Replies pass only because nftables saw the connections start."""
    fn, vin = lab["fn"], lab["vin"]
    nft(fn, "-f", "-", stdin=firewall(lab, stateful=True))
    lab["topo"].add_route(fn, f"{lab['c'].addr_a}/32", gateway=vin.addr_a)   # replies back by in
    with three_hop_chain(lab) as chain:
        proxy = chain.functions["nft"][1]
        chain.add_path(REV_SPI, ["nft"])
        proxy.set_reverse(REV_SPI)
        chain.classify(f"{lab['c'].addr_a}/32", REV_SPI)
        chain.attach(lab["router"], lab["s"].ifname_a)

        assert tcp_transfer(lab, 200_000) == 200_000
        px, stats, fw = proxy.counters(), chain.hop_stats(), nft_counters(fn)
        assert px["sent"] == stats[(SPI, 254)] + stats[(REV_SPI, 255)]
        assert px["returned_by_flow"] == px["sent"] and px["unknown"] == px["returned_by_default"] == 0
        assert stats[(SPI, 253)] == fw["accepted"] > 10
        assert stats[(REV_SPI, 254)] == stats[(REV_SPI, 255)] == fw["replies"] > 0
        # Where the reply path resumes: its end, SI 254.
        ports = proxy.obj.map("px_flows")
        rev = [k for k in ports.raw_keys() if k[:4] == socket.inet_aton(lab["s"].addr_b)]
        assert rev and all(int(ports[k]["spi_si"]) == (REV_SPI << 8) | 254 for k in rev)

        # What the server starts is no reply: nftables (policy drop) keeps it from the client.
        with netns.enter(lab["client"]):
            cli = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with cli:
            cli.bind((lab["c"].addr_a, OPEN_UDP))
            cli.settimeout(1.0)
            netns.udp_send(lab["server"], lab["c"].addr_a, OPEN_UDP, count=3)
            with pytest.raises(TimeoutError):
                cli.recv(2048)
        assert proxy.counters()["sent"] == px["sent"] + 3
        assert chain.hop_stats()[(REV_SPI, 254)] == stats[(REV_SPI, 254)]


def test_bad_proxy_set_ups_are_refused_and_leave_nothing(lab: dict) -> None:
    r, vin, vout, fn = lab["router"], lab["vin"], lab["vout"], lab["fn"]
    with LocalChain() as chain:
        # The function's ends swapped: in is not the other end of to_fn's veth.
        with pytest.raises(ChainError, match=f"{vin.ifname_a} is a veth whose other end is ifindex"):
            chain.load_proxy("nft", to_fn=(r, vin.ifname_a), from_fn=(r, vout.ifname_a),
                             function=(fn, vout.ifname_b, vin.ifname_b))
        with pytest.raises(LookupError, match="no interface 'nope'"):
            chain.load_proxy("nft", to_fn=(r, vin.ifname_a), from_fn=(r, vout.ifname_a),
                             function=(fn, vin.ifname_b, "nope"))
        with pytest.raises(ChainError, match="needs two interfaces"):
            chain.load_proxy("nft", to_fn=(r, vin.ifname_a), from_fn=(r, vin.ifname_a),
                             function=(fn, vin.ifname_b, vin.ifname_b))
        assert chain.functions == {}
        ends = [(r, vin.ifname_a), (r, vout.ifname_a), (fn, vin.ifname_b), (fn, vout.ifname_b)]
        assert all(xdp_query(ifname, ns) is None for ns, ifname in ends)

        proxy = load_nft(chain, lab)
        assert all(xdp_query(ifname, ns) is not None for ns, ifname in ends)
        chain.load("blocker", lab["blocker"])
        with pytest.raises(ChainError, match=r"crosses proxied function\(s\) \['nft'\] more than once"):
            chain.add_path(SPI, ["nft", "blocker", "nft"])
        chain.add_path(SPI, ["blocker"])
        with pytest.raises(ChainError, match=r"path 50 \(blocker\) does not go through 'nft'"):
            proxy.set_default(SPI)
        with pytest.raises(ChainError, match="no path 52"):
            proxy.set_default(52)
        chain.add_path(REV_SPI, ["blocker", "nft"])
        with pytest.raises(ChainError, match="ttl 64 out of range"):
            proxy.set_default(REV_SPI, ttl=64)
        proxy.set_default(REV_SPI)
        with pytest.raises(ChainError, match="set the direction before the default"):
            proxy.set_reverse(REV_SPI)
    assert all(xdp_query(ifname, ns) is None for ns, ifname in ends)   # close() detached everything
