"""Packet tests of l4lb: each runs on the kernel, native and model executors.

Tables are built by control.py's LoadBalancer writing into plain dicts, exactly what it
writes into BPF maps. Expected packets are built with scapy (which computes checksums from
scratch), so they check the fast path's incremental checksum updates too.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether

from vnfkit.pyfile import import_file
from vnfkit.testing import PacketTest, PacketTestError

HERE = Path(__file__).resolve().parent.parent
control = import_file(HERE / "control.py", "l4lb's control plane", PacketTestError)
maglev = import_file(HERE / "maglev.py", "l4lb's flow hash", PacketTestError)

TABLES = ("vips", "vip_addrs", "services", "ring", "backends", "vip_stats", "conns", "nat_revs")
MAC_C, MAC_LB = "02:00:00:00:00:0c", "02:00:00:00:00:1b"
CLIENT, CLIENT6 = "198.18.0.10", "2001:db8::10"
ENCAP_SRC4, ENCAP_SRC6 = "198.18.254.1", "2001:db8:fe::1"  # the descriptor's defaults

# The test set-up: every kind of service once, with a single backend where the output is
# checked byte for byte (so the expected packet does not depend on the hash).
WEB, WEB_BE = "198.18.1.10", "198.18.7.20"          # DNAT, tcp/80 -> 8080
DNS, DNS_BE = "198.18.1.11", "198.18.7.30"          # IPIP, udp/53
WEB6, WEB6_BE = "2001:db8:1::10", "2001:db8:7::20"  # DNAT, tcp/443 -> 8443
TUN6, TUN6_BE = "2001:db8:1::11", "2001:db8:7::30"  # IP6IP6, tcp/80
ANY, ANY_BE = "198.18.1.12", "198.18.7.40"          # DNAT, udp/every port, ports kept
EMPTY = "198.18.1.13"                               # tcp/80, a service without backends
FRAGOK = "198.18.1.14"                              # udp/4789, fragments passed
PAIR, PAIR_BE = "198.18.1.15", ("198.18.7.50", "198.18.7.51")  # DNAT, two backends


def build(lb: Any) -> None:
    """The services and VIPs the packet tests use."""
    for name, mode, family in (("web", "dnat", 4), ("dns", "encap", 4), ("web6", "dnat", 6), ("tun6", "encap", 6),
                               ("any", "dnat", 4), ("empty", "dnat", 4), ("frag", "encap", 4), ("pair", "dnat", 4)):
        lb.add_service(name, mode, family)
    lb.add_vip(WEB, "tcp", 80, "web")
    lb.add_backend("web", WEB_BE, 8080)
    lb.add_vip(DNS, "udp", 53, "dns")
    lb.add_backend("dns", DNS_BE)
    lb.add_vip(WEB6, "tcp", 443, "web6")
    lb.add_backend("web6", WEB6_BE, 8443)
    lb.add_vip(TUN6, "tcp", 80, "tun6")
    lb.add_backend("tun6", TUN6_BE)
    lb.add_vip(ANY, "udp", 0, "any")
    lb.add_backend("any", ANY_BE)
    lb.add_vip(EMPTY, "tcp", 80, "empty")
    lb.add_vip(FRAGOK, "udp", 4789, "frag", fragments="pass")
    lb.add_backend("frag", "198.18.7.60")
    lb.add_vip(PAIR, "tcp", 80, "pair")
    for be in PAIR_BE:
        lb.add_backend("pair", be, 8080)


def lb_tables(setup: Callable[[Any], None] = build, ring_size: int = 251,
              extra: dict[str, dict[Any, Any]] | None = None) -> dict[str, dict[Any, Any]]:
    """What LoadBalancer writes for ``setup``, as PacketTest/FUZZ tables, plus ``extra``."""
    tables: dict[str, dict[Any, Any]] = {name: {} for name in TABLES}
    setup(control.LoadBalancer(tables, ring_size=ring_size))
    for name, entries in (extra or {}).items():
        tables[name].update(entries)
    return {name: entries for name, entries in tables.items() if entries}


def _lb() -> Any:
    lb = control.LoadBalancer({name: {} for name in TABLES}, ring_size=251)
    build(lb)
    return lb


LB = _lb()  # the same configuration, to look backend ids up


def backend_id(service: str, addr: str, port: int = 0) -> int:
    return LB.services[service].backends[(control.ipaddress.ip_address(addr), port)].id


def conn(backend: int, last_ns: int = 1_000_000_000) -> bytes:
    """A connection-table value."""
    return struct.pack("<IIQ", backend, 0, last_ns)


def eth(*tags: int) -> Ether:
    frame = Ether(src=MAC_C, dst=MAC_LB)
    if len(tags) == 2:
        return frame / Dot1AD(vlan=tags[0]) / Dot1Q(vlan=tags[1])
    if tags:
        return frame / Dot1Q(vlan=tags[0])
    return frame


def tcp4(dst: str, dport: int, src: str = CLIENT, sport: int = 40000, **ip: Any) -> Any:
    return eth() / IP(src=src, dst=dst, **ip) / TCP(sport=sport, dport=dport, flags="S", seq=1000) / b"GET /"


def udp4(dst: str, dport: int, src: str = CLIENT, sport: int = 40001, tags: tuple[int, ...] = (), **ip: Any) -> Any:
    return eth(*tags) / IP(src=src, dst=dst, **ip) / UDP(sport=sport, dport=dport) / b"query"


def tcp6(dst: str, dport: int, src: str = CLIENT6, sport: int = 40002, ext: Any = None, **ip6: Any) -> Any:
    l3 = IPv6(src=src, dst=dst, **ip6)
    if ext is not None:
        l3 = l3 / ext
    return eth() / l3 / TCP(sport=sport, dport=dport, flags="S", seq=7) / b"GET /"


def flow_label(dst: str, dport: int, sport: int = 40002) -> int:
    return maglev.flow_hash(control.flow_key(CLIENT6, dst, sport, dport), 0) & 0xFFFFF


REPLY = eth() / IP(src=WEB_BE, dst=CLIENT) / TCP(sport=8080, dport=40000, flags="SA", seq=5, ack=1001) / b"200"
REV_KEY = control.flow_key(WEB_BE, CLIENT, 8080, 40000)
REV_VAL = control.addr16(control.ipaddress.ip_address(WEB)) + struct.pack("!H", 80) + b"\0\0"
FWD_KEY = control.flow_key(CLIENT, PAIR, 40000, 80)

T = lb_tables()
T_STALE = lb_tables(extra={"conns": {control.flow_key(CLIENT, WEB, 40000, 80): conn(4000)}})
T_PINNED = lb_tables(extra={"conns": {FWD_KEY: conn(backend_id("pair", PAIR_BE[1], 8080))}})
T_EXPIRING = lb_tables(extra={"conns": {FWD_KEY: conn(backend_id("pair", PAIR_BE[1], 8080), 7_000_000_000)}})

TESTS = [
    # -- DNAT and its reverse --------------------------------------------------------------------
    PacketTest("DNAT: a TCP SYN to the VIP goes to the backend's address and port", tcp4(WEB, 80), expect="pass",
               tables=T, output=eth() / IP(src=CLIENT, dst=WEB_BE) / TCP(sport=40000, dport=8080, flags="S",
                                                                       seq=1000) / b"GET /",
               counters={"conn_miss": 1, "dnat": 1, "pass": 1}),
    PacketTest("DNAT keeps IPv4 options and fixes the checksums around them",
               tcp4(WEB, 80, options=[IPOption_NOP()] * 4), expect="pass", tables=T,
               output=eth() / IP(src=CLIENT, dst=WEB_BE, options=[IPOption_NOP()] * 4)
               / TCP(sport=40000, dport=8080, flags="S", seq=1000) / b"GET /", counters={"dnat": 1}),
    PacketTest("DNAT of UDP without a checksum leaves it without one",
               eth() / IP(src=CLIENT, dst=ANY) / UDP(sport=40001, dport=5000, chksum=0) / b"query", expect="pass",
               tables=T, output=eth() / IP(src=CLIENT, dst=ANY_BE) / UDP(sport=40001, dport=5000, chksum=0) / b"query",
               counters={"dnat": 1}),
    PacketTest("a port-0 VIP takes every port and keeps it", udp4(ANY, 5353), expect="pass", tables=T,
               output=eth() / IP(src=CLIENT, dst=ANY_BE) / UDP(sport=40001, dport=5353) / b"query",
               counters={"dnat": 1, "conn_miss": 1}),
    PacketTest("DNAT over IPv6, with a destination-options header", tcp6(WEB6, 443, ext=IPv6ExtHdrDestOpt()),
               expect="pass", tables=T,
               output=eth() / IPv6(src=CLIENT6, dst=WEB6_BE) / IPv6ExtHdrDestOpt()
               / TCP(sport=40002, dport=8443, flags="S", seq=7) / b"GET /", counters={"dnat": 1}),
    PacketTest("a DNAT reply is translated back to the VIP", REPLY, expect="pass",
               tables={**T, "nat_revs": {REV_KEY: REV_VAL}},
               output=eth() / IP(src=WEB, dst=CLIENT) / TCP(sport=80, dport=40000, flags="SA", seq=5, ack=1001)
               / b"200", counters={"snat": 1, "not_vip": 0}),
    PacketTest("a reply without a reverse entry is someone else's traffic", REPLY, expect="pass", tables=T,
               output=REPLY, counters={"not_vip": 1, "snat": 0}),
    # -- encapsulation ---------------------------------------------------------------------------
    PacketTest("IPIP: an outer IPv4 header to the backend, from encap_src4", udp4(DNS, 53, tos=0x28), expect="pass",
               tables=T, output=eth() / IP(src=ENCAP_SRC4, dst=DNS_BE, ttl=64, id=0, flags=0, tos=0x28)
               / IP(src=CLIENT, dst=DNS, tos=0x28) / UDP(sport=40001, dport=53) / b"query",
               counters={"encap4": 1, "conn_miss": 1}),
    PacketTest("IPIP under one 802.1Q tag: the outer header goes after the tag", udp4(DNS, 53, tags=(5,)),
               expect="pass", tables=T,
               output=eth(5) / IP(src=ENCAP_SRC4, dst=DNS_BE, ttl=64, id=0, flags=0) / IP(src=CLIENT, dst=DNS)
               / UDP(sport=40001, dport=53) / b"query", counters={"encap4": 1}),
    PacketTest("IPIP under two tags (802.1ad + 802.1Q)", udp4(DNS, 53, tags=(100, 7)), expect="pass", tables=T,
               output=eth(100, 7) / IP(src=ENCAP_SRC4, dst=DNS_BE, ttl=64, id=0, flags=0) / IP(src=CLIENT, dst=DNS)
               / UDP(sport=40001, dport=53) / b"query", counters={"encap4": 1}),
    PacketTest("IPIP from a configured outer source", udp4(DNS, 53), expect="pass", tables=T,
               config={"encap_src4": "198.18.9.9"},
               output=eth() / IP(src="198.18.9.9", dst=DNS_BE, ttl=64, id=0, flags=0) / IP(src=CLIENT, dst=DNS)
               / UDP(sport=40001, dport=53) / b"query"),
    PacketTest("IP6IP6: traffic class kept, the flow hash in the flow label", tcp6(TUN6, 80, tc=0x28), expect="pass",
               tables=T, output=eth() / IPv6(src=ENCAP_SRC6, dst=TUN6_BE, hlim=64, tc=0x28, fl=flow_label(TUN6, 80))
               / IPv6(src=CLIENT6, dst=TUN6, tc=0x28) / TCP(sport=40002, dport=80, flags="S", seq=7) / b"GET /",
               counters={"encap6": 1}),
    # -- the connection table --------------------------------------------------------------------
    PacketTest("an established flow stays on its backend whatever the ring says", tcp4(PAIR, 80), expect="pass",
               tables=T_PINNED, output=eth() / IP(src=CLIENT, dst=PAIR_BE[1]) / TCP(sport=40000, dport=8080,
                                                                                     flags="S", seq=1000) / b"GET /",
               counters={"conn_hit": 1, "conn_miss": 0}),
    PacketTest("a flow whose backend was removed is scheduled again", tcp4(WEB, 80), expect="pass", tables=T_STALE,
               output=eth() / IP(src=CLIENT, dst=WEB_BE) / TCP(sport=40000, dport=8080, flags="S", seq=1000)
               / b"GET /", counters={"conn_stale": 1, "conn_miss": 1, "conn_hit": 0}),
    PacketTest("an idle flow past conn_timeout_ms is scheduled again", tcp4(PAIR, 80), expect="pass",
               tables=T_EXPIRING, config={"conn_timeout_ms": 1000}, now=10_000_000_000,
               counters={"conn_expired": 1, "conn_miss": 1, "conn_hit": 0}),
    PacketTest("a flow idle for less than conn_timeout_ms is a hit", tcp4(PAIR, 80), expect="pass",
               tables=T_EXPIRING, config={"conn_timeout_ms": 5000}, now=10_000_000_000,
               output=eth() / IP(src=CLIENT, dst=PAIR_BE[1]) / TCP(sport=40000, dport=8080, flags="S", seq=1000)
               / b"GET /", counters={"conn_hit": 1, "conn_expired": 0}),
    # -- what is not load-balanced ---------------------------------------------------------------
    PacketTest("a service without backends drops", tcp4(EMPTY, 80), expect="drop", tables=T,
               counters={"no_backend": 1, "drop": 1}),
    PacketTest("a VIP address on a port without a VIP is passed", tcp4(WEB, 81), expect="pass", tables=T,
               output=tcp4(WEB, 81), counters={"vip_miss": 1}),
    PacketTest("ICMP to a VIP address is the stack's business", eth() / IP(src=CLIENT, dst=WEB) / ICMP(),
               expect="pass", tables=T, counters={"vip_miss": 1}),
    PacketTest("a first fragment to a VIP address is dropped", tcp4(WEB, 80, flags="MF"), expect="drop", tables=T,
               counters={"frag_drop": 1, "dnat": 0}),
    PacketTest("a later fragment to a VIP address is dropped", eth() / IP(src=CLIENT, dst=WEB, frag=20, proto=6)
               / (b"x" * 40), expect="drop", tables=T, counters={"frag_drop": 1}),
    PacketTest("an IPv6 fragment to a VIP address is dropped",
               tcp6(WEB6, 443, ext=IPv6ExtHdrFragment(m=1)), expect="drop", tables=T, counters={"frag_drop": 1}),
    PacketTest("fragments to an address with fragments=pass go to the stack",
               udp4(FRAGOK, 4789, flags="MF"), expect="pass", tables=T, counters={"frag_pass": 1}),
    PacketTest("traffic to other addresses passes untouched", tcp4("198.18.1.99", 80), expect="pass", tables=T,
               output=tcp4("198.18.1.99", 80), counters={"not_vip": 1}),
    PacketTest("ARP is not IP", eth() / ARP(pdst=WEB), expect="pass", tables=T, counters={"non_ip": 1}),
    PacketTest("a truncated IPv4 header is malformed and passed", bytes(tcp4(WEB, 80))[:30], expect="pass",
               tables=T, counters={"malformed": 1}),
]

# ---- the fuzzer's set-up ---------------------------------------------------------------------
# The fuzzer's IPv4 destinations are 198.18.{0,1,7}.x: half of 198.18.1.0/24 becomes VIPs with
# fragments dropped, the other half with fragments passed, so random packets reach every path.
# Templates (half of the fuzzer's packets start from one) add flows that repeat: connection
# hits, expiries (conn_timeout_ms of 40 against a 1 ms clock step), DNAT replies and IPv6.


def fuzz_build(lb: Any) -> None:
    for name, mode, family in (("web", "dnat", 4), ("dns", "encap", 4), ("empty", "dnat", 4), ("any", "dnat", 4),
                               ("web6", "dnat", 6), ("tun6", "encap", 6)):
        lb.add_service(name, mode, family)
    for i, weight in enumerate((1, 1, 2, 0)):  # the last one drained
        lb.add_backend("web", f"198.18.7.{20 + i}", 8080, weight)
    for i in range(3):
        lb.add_backend("dns", f"198.18.7.{30 + i}")
    lb.add_backend("any", "198.18.7.40")
    lb.add_backend("any", "198.18.7.41", weight=3)
    lb.add_backend("web6", "2001:db8:7::20", 8443)
    lb.add_backend("web6", "2001:db8:7::21", 8443)
    lb.add_backend("tun6", "2001:db8:7::30")
    for host in range(128):
        lb.add_vip(f"198.18.1.{host}", "tcp", 80, "web")
        lb.add_vip(f"198.18.1.{host}", "udp", 53, "dns")
        lb.add_vip(f"198.18.1.{host}", "tcp", 443, "empty")
        lb.add_vip(f"198.18.1.{128 + host}", "udp", 0, "any", fragments="pass")
        lb.add_vip(f"198.18.1.{128 + host}", "tcp", 443, "web", fragments="pass")
    lb.add_vip("2001:db8:1::10", "tcp", 443, "web6")
    lb.add_vip("2001:db8:1::11", "tcp", 80, "tun6")
    lb.add_vip("2001:db8:1::12", "udp", 0, "tun6", fragments="pass")


def _fuzz_lb() -> Any:
    lb = control.LoadBalancer({name: {} for name in TABLES}, ring_size=251)
    fuzz_build(lb)
    return lb


def _reply(lb: Any, service: str, client: str, vip: str, sport: int, dport: int, proto: str = "tcp") -> Any:
    """The backend's answer to a template flow (the backend the ring picks for it)."""
    be = lb.backend_for(service, control.flow_key(client, vip, sport, dport, proto))
    port = be.port or dport
    if be.addr.version == 4:
        l4 = TCP(sport=port, dport=sport, flags="A") if proto == "tcp" else UDP(sport=port, dport=sport)
        return eth() / IP(src=str(be.addr), dst=client) / l4 / b"answer"
    return eth() / IPv6(src=str(be.addr), dst=client) / TCP(sport=port, dport=sport, flags="A") / b"answer"


FUZZ_LB = _fuzz_lb()
# Template flows that go through the connection table, as (flow key, packet).
FUZZ_FLOWS = [
    (control.flow_key("198.18.0.50", "198.18.1.5", 40000, 80), tcp4("198.18.1.5", 80, src="198.18.0.50")),
    (control.flow_key("198.18.0.51", "198.18.1.6", 40001, 53, "udp"), udp4("198.18.1.6", 53, src="198.18.0.51")),
    (control.flow_key("198.18.0.52", "198.18.1.200", 40003, 9999, "udp"),
     udp4("198.18.1.200", 9999, src="198.18.0.52", sport=40003)),
    (control.flow_key("198.18.0.53", "198.18.1.201", 40000, 443),
     tcp4("198.18.1.201", 443, src="198.18.0.53", options=[IPOption_NOP()] * 4)),
    (control.flow_key(CLIENT6, "2001:db8:1::10", 40002, 443), tcp6("2001:db8:1::10", 443)),
    (control.flow_key(CLIENT6, "2001:db8:1::11", 40002, 80), tcp6("2001:db8:1::11", 80, ext=IPv6ExtHdrDestOpt())),
]
FUZZ: dict[str, Any] = {
    # Each template flow starts pinned to a backend id that no longer exists (conn_stale
    # when the flow comes back before its entry expires).
    "tables": lb_tables(fuzz_build, extra={"conns": {key: conn(4000 + i) for i, (key, _) in enumerate(FUZZ_FLOWS)}}),
    "config": {"conn_timeout_ms": 40},
    "templates": [
        *(pkt for _, pkt in FUZZ_FLOWS),
        _reply(FUZZ_LB, "web", "198.18.0.50", "198.18.1.5", 40000, 80),
        _reply(FUZZ_LB, "any", "198.18.0.52", "198.18.1.200", 40003, 9999, "udp"),
        _reply(FUZZ_LB, "web6", CLIENT6, "2001:db8:1::10", 40002, 443),
        udp4("198.18.1.6", 53, src="198.18.0.51", tags=(100, 7)),
        eth(3) / IPv6(src=CLIENT6, dst="2001:db8:1::12") / UDP(sport=5, dport=6) / b"x",
        tcp4("198.18.1.7", 443),
        tcp4("198.18.1.8", 80, flags="MF"),
        udp4("198.18.1.130", 4789, frag=10),
    ],
}
