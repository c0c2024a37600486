"""Packet tests of the monitor: each runs on the kernel, native and model executors, which must
agree with each other and with the verdict and counters expected here. (Table contents are
compared across executors by the fuzzer and checked in tests/test_vnf_monitor.py.)"""

import ipaddress
from pathlib import Path

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

from datapath.errors import VnfkitError
from vnfkit.pyfile import import_file
from vnfkit.testing import PacketTest

model = import_file(Path(__file__).parent.parent / "model.py", "the monitor's model and hash functions", VnfkitError)

A, B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
C4, S4 = "198.18.0.1", "198.18.1.1"
C6, S6 = "2001:db8::1", "2001:db8:1::1"


def eth() -> Ether:
    return Ether(src=A, dst=B)


def udp4(sport: int = 4000, dport: int = 53, payload: bytes = b"query") -> Ether:
    return eth() / IP(src=C4, dst=S4) / UDP(sport=sport, dport=dport) / payload


UDP4 = udp4()
# The key the C builds for UDP4 (ports in host order, the IPv4 addresses zero-padded).
UDP4_KEY = model.pack_key(ipaddress.ip_address(C4).packed, ipaddress.ip_address(S4).packed, 4000, 53, 0, 0, 17, 4, 0, 0)
SEEN = {"packets": 3, "bytes": 300, "first_ns": 5, "last_ns": 6, "tcp_flags": 0, "min_len": 100, "max_len": 100}

TESTS = [
    PacketTest("IPv4 UDP passes unchanged and starts a flow", UDP4, expect="pass", output=UDP4,
               counters={"ipv4": 1, "flow_new": 1, "pass": 1, "rx": 1}),
    PacketTest("chained: the verdict is NEXT, the frame unchanged", UDP4, expect="next", output=UDP4,
               config={"chained": 1}, counters={"ipv4": 1, "flow_new": 1, "next": 1}),
    PacketTest("a known flow is updated, not created", UDP4, expect="pass", tables={"flows": {UDP4_KEY: SEEN}},
               counters={"flow_update": 1, "flow_new": 0}),
    PacketTest("IPv6 TCP SYN starts a flow", eth() / IPv6(src=C6, dst=S6) / TCP(sport=40000, dport=443, flags="S"),
               expect="pass", counters={"ipv6": 1, "flow_new": 1}),
    PacketTest("one 802.1Q tag: counted under its VID", eth() / Dot1Q(vlan=100) / IP(src=C4, dst=S4) / UDP(),
               expect="pass", counters={"tagged": 1, "ipv4": 1, "flow_new": 1}),
    PacketTest("two tags (802.1ad + 802.1Q) over IPv6", eth() / Dot1AD(vlan=200) / Dot1Q(vlan=7) / IPv6() / UDP(),
               expect="pass", counters={"tagged": 1, "ipv6": 1, "flow_new": 1}),
    PacketTest("an IPv4 first fragment is keyed by L3", eth() / IP(src=C4, dst=S4, flags="MF") / UDP() / (b"x" * 32),
               expect="pass", counters={"fragment": 1, "flow_new": 1}),
    PacketTest("an IPv4 later fragment is keyed by L3", eth() / IP(src=C4, dst=S4, frag=10, proto=17) / (b"x" * 32),
               expect="pass", counters={"fragment": 1, "flow_new": 1}),
    PacketTest("an IPv6 later fragment is keyed by L3",
               eth() / IPv6(src=C6, dst=S6) / IPv6ExtHdrFragment(offset=5, nh=17) / (b"x" * 16),
               expect="pass", counters={"fragment": 1, "ipv6": 1}),
    PacketTest("ICMP echo: keyed by type and code", eth() / IP(src=C4, dst=S4) / ICMP(type=8), expect="pass",
               counters={"icmp": 1, "flow_new": 1}),
    PacketTest("ICMPv6 after a hop-by-hop header", eth() / IPv6(src=C6, dst=S6) / IPv6ExtHdrHopByHop()
               / ICMPv6EchoRequest(), expect="pass", counters={"icmp": 1, "ipv6": 1}),
    PacketTest("GRE has no ports", eth() / IP(src=C4, dst=S4, proto=47) / Raw(b"\0" * 8), expect="pass",
               counters={"no_ports": 1, "flow_new": 1}),
    PacketTest("ARP is not IP: size histogram only", eth() / ARP(psrc=C4, pdst=S4), expect="pass",
               counters={"non_ip": 1, "flow_new": 0}),
    PacketTest("a truncated IPv4 header is malformed but still passes", bytes(udp4())[:24], expect="pass",
               counters={"malformed": 1, "ipv4": 0, "flow_new": 0}),
    PacketTest("a tagged malformed frame still counts under its VID", bytes(eth() / Dot1Q(vlan=5) / IP())[:22],
               expect="pass", counters={"malformed": 1, "tagged": 1}),
]

# The fuzzer's own packet shapes: a few fixed flows it meets again and again (so existing
# entries are updated, not only created), in both families, tagged and fragmented.
TEMPLATES = [
    udp4(),
    udp4(sport=4001, payload=b"y" * 200),
    eth() / IP(src=C4, dst=S4) / TCP(sport=40000, dport=80, flags="PA") / (b"z" * 100),
    eth() / Dot1Q(vlan=100) / IPv6(src=C6, dst=S6) / UDP(sport=5000, dport=4789) / (b"v" * 50),
    eth() / Dot1AD(vlan=200) / Dot1Q(vlan=7) / IP(src=C4, dst=S4) / UDP(sport=6000, dport=2152) / b"gtp",
    eth() / IP(src=C4, dst=S4, flags="MF", id=7) / UDP(sport=7000, dport=9) / (b"f" * 64),
    eth() / IP(src=C4, dst=S4, frag=9, id=7, proto=17) / (b"f" * 64),
    eth() / IPv6(src=C6, dst=S6) / IPv6ExtHdrFragment(offset=0, m=1, id=9) / UDP(sport=7001, dport=9) / (b"g" * 64),
    eth() / IP(src=C4, dst=S4) / ICMP(type=8, id=1, seq=1) / (b"p" * 56),
]

FUZZ = {
    # Flows the fuzzer's templates update from the start.
    "tables": {"flows": {UDP4_KEY: SEEN}},
    "templates": TEMPLATES,
}
