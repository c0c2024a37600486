"""Packet tests of the ratelimit VNF: each runs on the kernel, native and model executors.

Every test starts from empty tables, so the token state a test needs is written into the
tables directly: a bucket with ``last_ns`` 0 starts full; one with ``last_ns == NOW`` holds
exactly ``tokens`` nano-tokens (1 token = 1e9).
"""

import ipaddress
import struct

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

from vnfkit.testing import PacketTest

A, B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
NOW = 1_000_000_000  # PacketTest's default clock
SEC = 1_000_000_000  # nano-tokens per token, ns per second
TENANT4, TENANT6 = "198.18.0.0/24", "2001:db8::/64"


def flow_key(src: str, dst: str, proto: int, sport: int = 0, dport: int = 0) -> bytes:
    """The C struct flow_key of a 5-tuple: addresses padded to 16 bytes, ports in network order."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    return (s.packed.ljust(16, b"\0") + d.packed.ljust(16, b"\0") + struct.pack("!HH", sport, dport)
            + bytes((proto, s.version, 0, 0)))


def bucket(rate: int, burst: int, tokens: int = 0, last_ns: int = 0, unit: int = 0, action: int = 0) -> dict:
    """A struct bucket value (tokens in nano-tokens)."""
    return {"rate": rate, "burst": burst, "tokens": tokens, "last_ns": last_ns, "unit": unit, "action": action}


def udp4(src: str = "198.18.0.5", tos: int = 0, **kw: object) -> Ether:
    """UDP/IPv4 to port 53 from ``src``; ``kw`` are further IP fields."""
    return Ether(src=A, dst=B) / IP(src=src, dst="198.18.1.1", tos=tos, **kw) / UDP(sport=4000, dport=53) / b"hello"


def tcp6(src: str = "2001:db8::5", tc: int = 0, fl: int = 0x12345) -> Ether:
    """TCP/IPv6 to port 443 with a Traffic Class and a flow label (kept by marking)."""
    return Ether(src=A, dst=B) / IPv6(src=src, dst="2001:db8:1::1", tc=tc, fl=fl) / TCP(sport=4000, dport=443)


def empty(**kw: object) -> dict:
    """A tenant bucket (id 1) with no tokens left at NOW: the next packet exceeds."""
    return {"src4": {TENANT4: 1}, "src6": {TENANT6: 1}, "buckets": {1: bucket(1, 5, last_ns=NOW, **kw)}}


MARK = {"exceed_action": 1, "mark_dscp": 10}
frag_first = Ether(src=A, dst=B) / IP(src="198.18.0.5", dst="198.18.1.1", flags="MF") / UDP(sport=4000, dport=53)
frag_later = Ether(src=A, dst=B) / IP(src="198.18.0.5", dst="198.18.1.1", frag=20, proto=17) / Raw(b"x" * 16)
big = (Ether(src=A, dst=B) / Dot1Q(vlan=7) / IP(src="198.18.0.5", dst="198.18.1.1") / UDP(sport=1, dport=2)
       / (b"x" * 972))
BIG_L3 = 1000  # the IP packet above: bytes charged in byte mode (tags and Ethernet are not)

TESTS = [
    # ---- prefix buckets -----------------------------------------------------------------------
    PacketTest("a fresh bucket starts full: the first packet conforms", udp4(), expect="pass", output=udp4(),
               tables={"src4": {TENANT4: 1}, "buckets": {1: bucket(1, 5)}},
               counters={"conform": 1, "pass": 1, "exceed_prefix": 0}),
    PacketTest("an empty bucket drops (exceed_action 0)", udp4(), expect="drop", tables=empty(),
               counters={"exceed_prefix": 1, "exceed_drop": 1, "drop": 1, "conform": 0}),
    PacketTest("mark mode: DSCP rewritten, ECN kept, IPv4 checksum updated (RFC 1624)", udp4(tos=0x03),
               expect="pass", output=udp4(tos=(10 << 2) | 3), tables=empty(), config=MARK,
               counters={"exceed_mark": 1, "pass": 1}),
    PacketTest("mark mode with IPv4 options: the checksum still matches", udp4(tos=0xfe, options=b"\x01" * 4),
               expect="pass", output=udp4(tos=(63 << 2) | 2, options=b"\x01" * 4), tables=empty(),
               config={"exceed_action": 1, "mark_dscp": 63}, counters={"exceed_mark": 1}),
    PacketTest("mark mode on IPv6: the Traffic Class's DSCP, ECN and flow label kept", tcp6(tc=0x01),
               expect="pass", output=tcp6(tc=(10 << 2) | 1), tables=empty(), config=MARK,
               counters={"exceed_mark": 1}),
    PacketTest("IPv6 sources are matched in src6", tcp6(), expect="drop", tables=empty(),
               counters={"exceed_prefix": 1, "exceed_drop": 1}),
    PacketTest("a bucket's own action (mark) overrides exceed_action (drop)", udp4(), expect="pass",
               output=udp4(tos=1 << 2), tables=empty(action=2), counters={"exceed_mark": 1}),
    PacketTest("a bucket's own action (drop) overrides exceed_action (mark)", udp4(), expect="drop",
               tables=empty(action=1), config=MARK, counters={"exceed_drop": 1}),
    PacketTest("refill is exact: 0.5 s at 2/s is one whole token", udp4(), expect="pass", now=NOW,
               tables={"src4": {TENANT4: 1}, "buckets": {1: bucket(2, 5, last_ns=NOW - SEC // 2)}},
               counters={"conform": 1}),
    PacketTest("refill is exact: 1 ns short of a token exceeds", udp4(), expect="drop",
               tables={"src4": {TENANT4: 1}, "buckets": {1: bucket(2, 5, last_ns=NOW - SEC // 2 + 1)}},
               counters={"exceed_prefix": 1}),
    PacketTest("refill stops at the burst", udp4(), expect="pass", now=3600 * SEC,
               tables={"src4": {TENANT4: 1}, "buckets": {1: bucket(4_000_000_000, 4_000_000_000, last_ns=SEC)}},
               counters={"conform": 1}),
    PacketTest("tokens above a lowered burst are cut to it", udp4(), expect="pass",
               tables={"src4": {TENANT4: 1}, "buckets": {1: bucket(0, 1, tokens=50 * SEC, last_ns=NOW)}},
               counters={"conform": 1}),
    PacketTest("a clock behind last_ns adds nothing", udp4(), expect="drop", now=NOW,
               tables={"src4": {TENANT4: 1}, "buckets": {1: bucket(1000, 5, last_ns=NOW + SEC)}},
               counters={"exceed_prefix": 1}),
    PacketTest("rate 0: the burst, then nothing", udp4(), expect="drop", now=NOW,
               tables={"src4": {TENANT4: 1}, "buckets": {1: bucket(0, 5, last_ns=1)}},
               counters={"exceed_prefix": 1}),
    PacketTest("byte mode: the IP packet's length, not the tag or Ethernet header, is charged", big,
               expect="pass", output=big,
               tables={"src4": {TENANT4: 1}, "buckets": {1: bucket(1, 2000, tokens=BIG_L3 * SEC, last_ns=NOW,
                                                                    unit=1)}},
               counters={"conform": 1}),
    PacketTest("byte mode: one byte short exceeds", big, expect="drop",
               tables={"src4": {TENANT4: 1}, "buckets": {1: bucket(1, 2000, tokens=BIG_L3 * SEC - 1, last_ns=NOW,
                                                                    unit=1)}},
               counters={"exceed_prefix": 1}),
    PacketTest("the longest prefix wins", udp4(src="198.18.0.200"), expect="pass",
               tables={"src4": {TENANT4: 1, "198.18.0.128/25": 2},
                       "buckets": {1: bucket(1, 5, last_ns=NOW), 2: bucket(1, 5)}},
               counters={"conform": 1}),
    PacketTest("a prefix whose bucket is unconfigured (burst 0) is counted and passed", udp4(), expect="pass",
               tables={"src4": {TENANT4: 3}}, counters={"no_bucket": 1, "unmatched": 1}),
    PacketTest("a bucket id past the array is counted and passed", udp4(), expect="pass",
               tables={"src4": {TENANT4: 5000}}, counters={"no_bucket": 1, "unmatched": 1}),
    PacketTest("a source in no prefix, per-flow off: passed unpoliced", udp4(src="198.18.7.1"), expect="pass",
               tables={"src4": {TENANT4: 1}}, counters={"unmatched": 1, "conform": 0}),
    # ---- 802.1Q ---------------------------------------------------------------------------------
    PacketTest("one 802.1Q tag: policed by the inner IPv4, marked in place",
               Ether(src=A, dst=B) / Dot1Q(vlan=100) / IP(src="198.18.0.5", dst="198.18.1.1") / UDP(),
               expect="pass", output=Ether(src=A, dst=B) / Dot1Q(vlan=100)
               / IP(src="198.18.0.5", dst="198.18.1.1", tos=40) / UDP(),
               tables=empty(), config=MARK, counters={"exceed_mark": 1}),
    PacketTest("two tags (802.1ad + 802.1Q): policed by the inner IPv6, marked in place",
               Ether(src=A, dst=B) / Dot1AD(vlan=200) / Dot1Q(vlan=7) / tcp6()[IPv6], expect="pass",
               output=Ether(src=A, dst=B) / Dot1AD(vlan=200) / Dot1Q(vlan=7) / tcp6(tc=40)[IPv6],
               tables=empty(), config=MARK, counters={"exceed_mark": 1}),
    # ---- per flow -------------------------------------------------------------------------------
    PacketTest("per flow: a new flow is created full and conforms", udp4(src="198.18.7.1"), expect="pass",
               config={"flow_rate": 1, "flow_burst": 3}, counters={"flow_new": 1, "conform": 1}),
    PacketTest("per flow: an empty flow bucket exceeds",
               udp4(src="198.18.7.1"), expect="drop", config={"flow_rate": 1, "flow_burst": 3},
               tables={"flows": {flow_key("198.18.7.1", "198.18.1.1", 17, 4000, 53): {"tokens": 0, "last_ns": NOW}}},
               counters={"exceed_flow": 1, "exceed_drop": 1, "flow_new": 0}),
    PacketTest("per flow: another source port is another flow",
               udp4(src="198.18.7.1"), expect="pass", config={"flow_rate": 1, "flow_burst": 3},
               tables={"flows": {flow_key("198.18.7.1", "198.18.1.1", 17, 4001, 53): {"tokens": 0, "last_ns": NOW}}},
               counters={"flow_new": 1, "conform": 1}),
    PacketTest("per flow, IPv6 TCP: an empty flow bucket marks", tcp6(src="2001:db8:9::1"), expect="pass",
               output=tcp6(src="2001:db8:9::1", tc=40), config={"flow_rate": 1, "flow_burst": 3, **MARK},
               tables={"flows": {flow_key("2001:db8:9::1", "2001:db8:1::1", 6, 4000, 443):
                                 {"tokens": 0, "last_ns": NOW}}},
               counters={"exceed_flow": 1, "exceed_mark": 1}),
    PacketTest("per flow: a full flow bucket does not rescue an empty prefix bucket", udp4(), expect="drop",
               tables=empty(), config={"flow_rate": 1, "flow_burst": 3},
               counters={"exceed_prefix": 1, "exceed_flow": 0, "flow_new": 1}),
    PacketTest("prefix says mark, flow says drop (exceed_action 0): drop wins", udp4(), expect="drop",
               tables={**empty(action=2),
                       "flows": {flow_key("198.18.0.5", "198.18.1.1", 17, 4000, 53): {"tokens": 0, "last_ns": NOW}}},
               config={"flow_rate": 1, "flow_burst": 3}, counters={"exceed_prefix": 1, "exceed_flow": 1,
                                                                    "exceed_drop": 1}),
    PacketTest("per flow in byte mode", big, expect="drop", config={"flow_rate": 1, "flow_burst": 999, "flow_unit": 1},
               counters={"exceed_flow": 1, "flow_new": 1}),
    # ---- fragments ------------------------------------------------------------------------------
    PacketTest("a first fragment is policed by its 5-tuple", frag_first, expect="drop",
               config={"flow_rate": 1, "flow_burst": 3},
               tables={"flows": {flow_key("198.18.0.5", "198.18.1.1", 17, 4000, 53): {"tokens": 0, "last_ns": NOW}}},
               counters={"exceed_flow": 1}),
    PacketTest("a later fragment is policed by prefix and 3-tuple (ports 0)", frag_later, expect="drop",
               config={"flow_rate": 1, "flow_burst": 3},
               tables={"flows": {flow_key("198.18.0.5", "198.18.1.1", 17): {"tokens": 0, "last_ns": NOW}}},
               counters={"exceed_flow": 1}),
    PacketTest("a later fragment in an empty prefix bucket exceeds", frag_later, expect="drop", tables=empty(),
               counters={"exceed_prefix": 1}),
    PacketTest("drop_later_frags drops later fragments before any bucket", frag_later, expect="drop",
               tables={"src4": {TENANT4: 1}, "buckets": {1: bucket(1, 5)}}, config={"drop_later_frags": 1},
               counters={"frag_dropped": 1, "conform": 0}),
    PacketTest("drop_later_frags leaves first fragments alone", frag_first, expect="pass",
               tables={"src4": {TENANT4: 1}, "buckets": {1: bucket(1, 5)}}, config={"drop_later_frags": 1},
               counters={"frag_dropped": 0, "conform": 1}),
    PacketTest("an IPv6 later fragment is dropped by drop_later_frags",
               Ether(src=A, dst=B) / IPv6(src="2001:db8::5", dst="2001:db8:1::1")
               / IPv6ExtHdrFragment(offset=5, nh=17) / Raw(b"y" * 8),
               expect="drop", config={"drop_later_frags": 1}, counters={"frag_dropped": 1}),
    # ---- not policed ----------------------------------------------------------------------------
    PacketTest("ARP passes unpoliced", Ether(src=A, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc="198.18.0.5"),
               expect="pass", tables=empty(), counters={"not_ip": 1}),
    PacketTest("a truncated IPv4 header is malformed and dropped", bytes(udp4())[:30], expect="drop",
               counters={"malformed": 1}),
]

# The fuzzer's set-up. Its packets come from 198.18.{0,1,7}.x and 2001:db8::x at 1000 packets
# per simulated second (step 1 ms): bucket 1 (drop) and bucket 3 are overrun now and then,
# bucket 2 in byte mode marks; 198.18.7.128/25 points at an unconfigured bucket. Per-flow
# policing (5 packets, 20/s) bites on the templates, which repeat the same flows.
FUZZ = {
    "config": {"exceed_action": 1, "mark_dscp": 46, "flow_rate": 20, "flow_burst": 5},
    "tables": {
        "src4": {"198.18.0.0/24": 1, "198.18.1.0/25": 2, "198.18.7.128/25": 4},
        "src6": {"2001:db8::/64": 3},
        "buckets": {1: bucket(150, 10, action=1), 2: bucket(60_000, 3000, unit=1), 3: bucket(100, 8)},
    },
    "templates": [
        udp4(),
        tcp6(),
        frag_first,
        frag_later,
        big,
        Ether(src=A, dst=B) / Dot1AD(vlan=200) / Dot1Q(vlan=7) / IP(src="198.18.1.9", dst="198.18.0.1", tos=0xb9)
        / TCP(sport=5000, dport=80, flags="S"),
        Ether(src=A, dst=B) / IPv6(src="2001:db8::7", dst="2001:db8:1::1") / IPv6ExtHdrFragment(m=1, nh=17)
        / UDP(sport=7, dport=9),
    ],
}
