"""Packet tests of the firewall (each runs on the kernel, native and model executors) and the
fuzzer's set-up. Table contents are compiled from rule text by control.py, as in production."""

from __future__ import annotations

from pathlib import Path

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Packet

from vnfkit.pyfile import import_file
from vnfkit.testing import PacketTest, PacketTestError

HERE = Path(__file__).resolve().parent.parent
control = import_file(HERE / "control.py", "the firewall's control plane", PacketTestError)
LAYOUT = control.Layout.of_folder(HERE)

A, B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
NOW = 1_000_000_000  # PacketTest's default clock
SEC = 1_000_000_000

RULES = """
allow tcp from 198.18.0.0/24 to 198.18.1.0/24 port 80,443 flags S/SA   # 0: new web connections
deny tcp from 198.18.0.66 to any port 22                                # 1: one host may not ssh ...
allow tcp from 198.18.0.0/16 to 198.18.1.10 port 22                     # 2: ... the others may
deny udp from any to any port 9                                         # 3
allow udp from 198.18.0.0/24 port 1024-65535 to 198.18.1.0/24 port 53   # 4: DNS from high ports
allow icmp from any4 to 198.18.1.0/24                                   # 5
allow icmp6 from 2001:db8::/48 to any                                   # 6
allow tcp from 2001:db8::/48 to 2001:db8:1::/64 port 80-443             # 7
deny gre from any to any                                                # 8
allow esp from 198.18.7.0/24 to any                                     # 9
"""
TABLES = control.table_entries(control.compile_rules(RULES), LAYOUT, sparse=True)
EMPTY = control.table_entries(control.compile_rules([]), LAYOUT, sparse=True)


def eth(*tags: int) -> Packet:
    """Ethernet with 0, 1 or 2 VLAN tags (802.1ad outside 802.1Q, as the fuzzer makes them)."""
    l2 = Ether(src=A, dst=B)
    if len(tags) == 2:
        return l2 / Dot1AD(vlan=tags[0]) / Dot1Q(vlan=tags[1])
    if len(tags) == 1:
        return l2 / Dot1Q(vlan=tags[0])
    return l2


def tcp4(src: str, dst: str, dport: int, flags: str = "S", sport: int = 40000, tags: tuple[int, ...] = (),
         **ip: object) -> Packet:
    return eth(*tags) / IP(src=src, dst=dst, **ip) / TCP(sport=sport, dport=dport, flags=flags)


def udp4(src: str, dst: str, dport: int, sport: int = 40000, tags: tuple[int, ...] = (), **ip: object) -> Packet:
    return eth(*tags) / IP(src=src, dst=dst, **ip) / UDP(sport=sport, dport=dport) / b"query"


def tcp6(src: str, dst: str, dport: int, flags: str = "S", sport: int = 40000) -> Packet:
    return eth() / IPv6(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags)


def with_state(*flows: tuple[bytes, int, int]) -> dict:
    """TABLES plus flows in conns: (key, last_seen, state)."""
    return {**TABLES, "conns": {key: {"last_seen": seen, "rule": 0, "state": state} for key, seen, state in flows}}


STATEFUL = {"stateful": True}
WEB = control.conn_key("198.18.0.5", "198.18.1.5", 6, 40000, 443)  # a flow rule 0 opened
SYN = tcp4("198.18.0.5", "198.18.1.5", 443)
SYN_ACK_BACK = tcp4("198.18.1.5", "198.18.0.5", 40000, "SA", sport=443)
lying_ip = bytearray(bytes(udp4("198.18.0.5", "198.18.1.1", 53)))
lying_ip[16:18] = (200).to_bytes(2, "big")  # IPv4 total length: 200 bytes in a 47-byte frame
lying_udp = bytearray(bytes(udp4("198.18.0.5", "198.18.1.1", 53)))
lying_udp[38:40] = (64).to_bytes(2, "big")  # UDP length past the IP packet's end
short_udp = bytearray(bytes(udp4("198.18.0.5", "198.18.1.1", 53)))
short_udp[38:40] = (7).to_bytes(2, "big")  # below the UDP header's own 8 bytes
lying_ip6 = bytearray(bytes(tcp6("2001:db8::1", "2001:db8:1::2", 443)))
lying_ip6[18:20] = (100).to_bytes(2, "big")  # IPv6 payload length past the frame
tcp_past_ip = bytes(eth() / IP(src="198.18.0.5", dst="198.18.1.5", len=30) / TCP(dport=443, flags="S"))
padded = bytes(udp4("198.18.0.5", "198.18.1.1", 53)) + bytes(20)  # Ethernet padding after the IP packet
overlap = eth() / IP(src="198.18.0.5", dst="198.18.1.10", proto=6, frag=1) / (b"\x9c\x40\x00\x16" + bytes(36))


def long_chain(n: int, dport: int) -> Packet:
    """IPv6 with ``n`` destination-options headers before TCP (vk_parse walks 6)."""
    ip6 = IPv6(src="2001:db8::1", dst="2001:db8:1::2")
    for _ in range(n):
        ip6 = ip6 / IPv6ExtHdrDestOpt()
    return eth() / ip6 / TCP(sport=40000, dport=dport, flags="S")


TESTS = [
    # ---- rules, first match wins ----
    PacketTest("a SYN to a web port is allowed by rule 0", SYN, expect="pass", output=SYN, tables=TABLES,
               counters={"rule_allowed": 1, "pass": 1}),
    PacketTest("a SYN-ACK fails rule 0's S/SA and meets the default (deny)",
               tcp4("198.18.0.5", "198.18.1.5", 443, "SA"), expect="drop", tables=TABLES,
               counters={"default_denied": 1, "rule_allowed": 0}),
    PacketTest("the one denied host is stopped by rule 1 before rule 2", tcp4("198.18.0.66", "198.18.1.10", 22),
               expect="drop", tables=TABLES, counters={"rule_denied": 1}),
    PacketTest("another host reaches ssh through rule 2", tcp4("198.18.0.67", "198.18.1.10", 22), expect="pass",
               tables=TABLES, counters={"rule_allowed": 1}),
    PacketTest("udp to the discard port is denied", udp4("198.18.0.5", "198.18.1.1", 9), expect="drop", tables=TABLES,
               counters={"rule_denied": 1}),
    PacketTest("dns from a high port is allowed", udp4("198.18.0.5", "198.18.1.1", 53), expect="pass", tables=TABLES,
               counters={"rule_allowed": 1}),
    PacketTest("dns from a low source port is not", udp4("198.18.0.5", "198.18.1.1", 53, sport=53), expect="drop",
               tables=TABLES, counters={"default_denied": 1}),
    PacketTest("icmp echo into 198.18.1.0/24 is allowed",
               eth() / IP(src="198.18.7.1", dst="198.18.1.1") / ICMP(), expect="pass", tables=TABLES,
               counters={"rule_allowed": 1}),
    PacketTest("icmpv6 from 2001:db8::/48 is allowed",
               eth() / IPv6(src="2001:db8::1", dst="2001:db8:1::1") / ICMPv6EchoRequest(), expect="pass",
               tables=TABLES, counters={"rule_allowed": 1}),
    PacketTest("ipv6 tcp within rule 7's range is allowed", tcp6("2001:db8::1", "2001:db8:1::2", 443), expect="pass",
               tables=TABLES, counters={"rule_allowed": 1}),
    PacketTest("ipv6 tcp outside it is not", tcp6("2001:db8::1", "2001:db8:1::2", 8080), expect="drop", tables=TABLES,
               counters={"default_denied": 1}),
    PacketTest("an ipv6 source outside /48 is not", tcp6("2001:db8:5::1", "2001:db8:1::2", 443), expect="drop",
               tables=TABLES, counters={"default_denied": 1}),
    PacketTest("gre is denied by rule 8", eth() / IP(src="198.18.0.5", dst="198.18.1.1", proto=47), expect="drop",
               tables=TABLES, counters={"rule_denied": 1}),
    PacketTest("esp from 198.18.7.0/24 is allowed", eth() / IP(src="198.18.7.9", dst="198.18.0.1", proto=50),
               expect="pass", tables=TABLES, counters={"rule_allowed": 1}),
    PacketTest("an IPv4 packet with options is judged the same", tcp4("198.18.0.5", "198.18.1.5", 80,
               options=b"\x01\x01\x01\x00"), expect="pass", tables=TABLES, counters={"rule_allowed": 1}),
    # ---- 802.1Q ----
    PacketTest("one VLAN tag: judged by the inner headers", tcp4("198.18.0.5", "198.18.1.5", 80, tags=(100,)),
               expect="pass", tables=TABLES, counters={"rule_allowed": 1}),
    PacketTest("two VLAN tags: judged by the inner headers", udp4("198.18.0.5", "198.18.1.1", 9, tags=(200, 10)),
               expect="drop", tables=TABLES, counters={"rule_denied": 1}),
    # ---- policy ----
    PacketTest("the default policy can allow", udp4("198.18.9.9", "198.18.9.8", 7), expect="pass", tables=TABLES,
               config={"default_allow": True}, counters={"default_allowed": 1}),
    PacketTest("no rules, default deny: everything IP is dropped", SYN, expect="drop", tables=EMPTY,
               counters={"default_denied": 1}),
    PacketTest("no rules, default allow: everything passes", SYN, expect="pass", tables=EMPTY,
               config={"default_allow": True}, counters={"default_allowed": 1}),
    PacketTest("ARP passes by default (not IP)", eth() / ARP(psrc="198.18.0.1", pdst="198.18.0.2"), expect="pass",
               tables=TABLES, counters={"non_ip": 1}),
    PacketTest("ARP is dropped with non_ip_drop", eth() / ARP(psrc="198.18.0.1", pdst="198.18.0.2"), expect="drop",
               tables=TABLES, config={"non_ip_drop": True}, counters={"non_ip": 1}),
    # ---- fragments ----
    PacketTest("a first fragment is judged by its L4 header", tcp4("198.18.0.66", "198.18.1.10", 22, flags=1),
               expect="drop", tables=TABLES, counters={"rule_denied": 1}),
    PacketTest("a later fragment matches allow rules on L3 and protocol (rule 0)",
               eth() / IP(src="198.18.0.5", dst="198.18.1.5", proto=6, frag=20) / (b"x" * 40), expect="pass",
               tables=TABLES, counters={"frag_l3": 1, "rule_allowed": 1}),
    PacketTest("a later fragment skips deny rules with ports: rule 1 no, rule 2 yes",
               eth() / IP(src="198.18.0.66", dst="198.18.1.10", proto=6, frag=20) / (b"x" * 40), expect="pass",
               tables=TABLES, counters={"frag_l3": 1, "rule_allowed": 1, "rule_denied": 0}),
    PacketTest("a later fragment matching no L3 rule meets the default",
               eth() / IP(src="198.18.9.9", dst="198.18.1.5", proto=17, frag=20) / (b"x" * 40), expect="drop",
               tables=TABLES, counters={"frag_l3": 1, "default_denied": 1}),
    PacketTest("a later IPv6 fragment is judged on L3 (rule 7)",
               eth() / IPv6(src="2001:db8::1", dst="2001:db8:1::2") / IPv6ExtHdrFragment(nh=6, offset=5) / (b"x" * 40),
               expect="pass", tables=TABLES, counters={"frag_l3": 1, "rule_allowed": 1}),
    PacketTest("frag_mode 1 drops later fragments",
               eth() / IP(src="198.18.0.5", dst="198.18.1.5", proto=6, frag=20) / (b"x" * 40), expect="drop",
               tables=TABLES, config={"frag_mode": 1}, counters={"frag_dropped": 1, "frag_l3": 0}),
    PacketTest("frag_mode 2 passes them",
               eth() / IP(src="198.18.9.9", dst="198.18.9.8", proto=17, frag=20) / (b"x" * 40), expect="pass",
               tables=TABLES, config={"frag_mode": 2}, counters={"frag_passed": 1}),
    # ---- bad input ----
    PacketTest("a truncated IPv4 header is malformed", bytes(SYN)[:24], expect="drop", tables=TABLES,
               counters={"malformed": 1}),
    PacketTest("a truncated TCP header is malformed", bytes(SYN)[:44], expect="drop", tables=TABLES,
               counters={"malformed": 1}),
    PacketTest("an IPv4 total length past the frame is malformed", bytes(lying_ip), expect="drop", tables=TABLES,
               counters={"malformed": 1}),
    PacketTest("a UDP length past the IP packet is malformed", bytes(lying_udp), expect="drop", tables=TABLES,
               counters={"malformed": 1}),
    PacketTest("a UDP length below 8 is malformed", bytes(short_udp), expect="drop", tables=TABLES,
               counters={"malformed": 1}),
    PacketTest("an IPv6 payload length past the frame is malformed", bytes(lying_ip6), expect="drop", tables=TABLES,
               counters={"malformed": 1}),
    PacketTest("a TCP header past the IPv4 total length is malformed", tcp_past_ip, expect="drop", tables=TABLES,
               counters={"malformed": 1}),
    PacketTest("a TCP fragment at offset 8 bytes (overwriting the header) is malformed", overlap, expect="drop",
               tables=TABLES, counters={"malformed": 1, "frag_l3": 0}),
    PacketTest("six IPv6 extension headers are walked: judged by TCP", long_chain(6, 443), expect="pass",
               tables=TABLES, counters={"rule_allowed": 1}),
    PacketTest("a seventh is past the parser: malformed, not judged by its extension header", long_chain(7, 443),
               expect="drop", config={"default_allow": True}, tables=TABLES, counters={"malformed": 1}),
    PacketTest("Ethernet padding after the IP packet is fine", padded, expect="pass", output=padded, tables=TABLES,
               counters={"rule_allowed": 1}),
    # ---- stateful ----
    PacketTest("stateful: an allowed SYN records its flow", SYN, expect="pass", tables=TABLES, config=STATEFUL,
               counters={"rule_allowed": 1, "state_created": 1}),
    PacketTest("stateless: the reply meets the rules (and the default)", SYN_ACK_BACK, expect="drop",
               tables=with_state((WEB, NOW - SEC, 0)), counters={"default_denied": 1}),
    PacketTest("stateful: the reply of a known flow passes", SYN_ACK_BACK, expect="pass", config=STATEFUL,
               tables=with_state((WEB, NOW - SEC, 0)), counters={"state_reply": 1, "default_denied": 0}),
    PacketTest("stateful: the initiator's later packets pass without rule 0's SYN test",
               tcp4("198.18.0.5", "198.18.1.5", 443, "PA"), expect="pass", config=STATEFUL,
               tables=with_state((WEB, NOW - SEC, 0)), counters={"state_forward": 1}),
    PacketTest("stateful: a flow past its timeout is removed, the reply dropped", SYN_ACK_BACK, expect="drop",
               config={**STATEFUL, "tcp_timeout": 5}, now=NOW + 10 * SEC, tables=with_state((WEB, NOW, 0)),
               counters={"state_expired": 1, "default_denied": 1}),
    PacketTest("stateful: a closing flow has the short timeout", SYN_ACK_BACK, expect="drop",
               config={**STATEFUL, "tcp_closing_timeout": 2}, now=NOW + 3 * SEC, tables=with_state((WEB, NOW, 1)),
               counters={"state_expired": 1}),
    PacketTest("stateful: the other side cannot open a new flow", tcp4("198.18.1.5", "198.18.0.5", 5000),
               expect="drop", config=STATEFUL, tables=with_state((WEB, NOW - SEC, 0)),
               counters={"default_denied": 1}),
    PacketTest("stateful: an echo reply with the request's id passes",
               eth() / IP(src="198.18.1.1", dst="198.18.7.1") / ICMP(type=0, id=77), expect="pass", config=STATEFUL,
               tables=with_state((control.conn_key("198.18.7.1", "198.18.1.1", 1, 77, 77), NOW, 0)),
               counters={"state_reply": 1}),
    PacketTest("stateful: an echo reply with another id does not",
               eth() / IP(src="198.18.1.1", dst="198.18.7.1") / ICMP(type=0, id=78), expect="drop", config=STATEFUL,
               tables=with_state((control.conn_key("198.18.7.1", "198.18.1.1", 1, 77, 77), NOW, 0)),
               counters={"default_denied": 1}),
    PacketTest("stateful: an IPv6 reply passes",
               eth() / IPv6(src="2001:db8:1::1", dst="2001:db8::1") / ICMPv6EchoReply(id=5), expect="pass",
               config=STATEFUL, tables=with_state((control.conn_key("2001:db8::1", "2001:db8:1::1", 58, 5, 5), NOW, 0)),
               counters={"state_reply": 1}),
    PacketTest("stateful: an allowed RST records nothing", tcp4("198.18.9.9", "198.18.9.8", 7, "R"), expect="pass",
               config={**STATEFUL, "default_allow": True},
               tables=TABLES, counters={"default_allowed": 1, "state_created": 0}),
]

# ---- the fuzzer: rules for its addresses (198.18.{0,1,7}.x, 2001:db8::x -> 2001:db8:1::x) and
# ports (9, 53, 80, 443, 2152, 4789, 4790, 100-104), flows in both directions, and a clock
# slow enough (20 ms a packet) that flows time out between their packets now and then.
FUZZ_RULES = """
allow udp from 198.18.0.0/24 to 198.18.1.0/24 port 53
allow tcp from 198.18.0.0/24 to 198.18.1.0/24 port 443 flags S/SA
deny udp from any to any port 9
deny tcp from 198.18.7.0/25 to any port 100-104
allow tcp from 198.18.0.0/16 port 1024-65535 to 198.18.7.0/24 port 80,443
allow icmp from 198.18.0.0/24 to any4
allow icmp6 from 2001:db8::/48 to any6
allow tcp from 2001:db8::/48 to 2001:db8:1::/48 port 80,2152
deny tcp from any to any flags R
allow udp from 2001:db8::/32 port 1024-65535 to any port 4789-4790
deny gre from any to any
allow esp,sctp from 198.18.1.0/24 to any
allow udp from 198.18.7.128/25 to 198.18.0.0/16
allow any from 198.18.7.7 to any
allow tcp from 198.18.1.0/24 to 198.18.0.0/24 port 100-102,104
"""


def _fuzz_templates() -> list[Packet]:
    c4, s4, c6, s6 = "198.18.0.10", "198.18.1.20", "2001:db8::10", "2001:db8:1::20"
    return [
        udp4(c4, s4, 53, sport=41000), udp4(s4, c4, 41000, sport=53),                      # DNS and its answer
        udp4(c4, s4, 53, sport=41000, tags=(100,)), udp4(s4, c4, 41000, sport=53, tags=(200, 7)),
        tcp4(c4, s4, 443, "S", 41001), tcp4(s4, c4, 41001, "SA", 443), tcp4(c4, s4, 443, "A", 41001),
        tcp4(c4, s4, 443, "FA", 41001), tcp4(s4, c4, 41001, "R", 443),
        tcp4(s4, c4, 5000, "S", 443),                                                       # the server calls
        tcp6(c6, s6, 80, "S", 41002), tcp6(s6, c6, 41002, "SA", 80), tcp6(c6, s6, 80, "A", 41002),
        eth() / IP(src="198.18.0.12", dst="198.18.1.22") / ICMP(type=8, id=9) / b"ping",
        eth() / IP(src="198.18.1.22", dst="198.18.0.12") / ICMP(type=0, id=9) / b"ping",
        eth() / IPv6(src=c6, dst=s6) / ICMPv6EchoRequest(id=3), eth() / IPv6(src=s6, dst=c6) / ICMPv6EchoReply(id=3),
        eth() / IP(src=c4, dst=s4, proto=6, frag=100) / (b"y" * 64),                          # later fragments
        eth() / IPv6(src=c6, dst=s6) / IPv6ExtHdrFragment(nh=17, offset=9) / (b"y" * 64),
        eth() / IP(src="198.18.7.7", dst="198.18.1.1", proto=253) / b"experimental",         # only rule 13
        lying_ip, lying_udp, lying_ip6, overlap, long_chain(7, 22),
    ]


FUZZ = {
    "tables": control.table_entries(control.compile_rules(FUZZ_RULES), LAYOUT, sparse=True),
    "config": {"stateful": True, "tcp_timeout": 4, "tcp_closing_timeout": 1, "udp_timeout": 2, "other_timeout": 1},
    "templates": _fuzz_templates(),
    "step_ns": 20_000_000,
}
