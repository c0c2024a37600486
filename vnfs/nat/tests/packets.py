"""Packet tests of the nat VNF: each runs on the kernel, native and model executors.

Tables and parameters come from control.py (``plan`` and ``session_entries``), so the tests
also exercise the control plane's encoding. Expected packets are built from scratch by scapy:
an incremental checksum update that disagreed with a full recomputation would show here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Packet, Raw

from vnfkit.pyfile import import_file
from vnfkit.testing import PacketTest, PacketTestError

control = import_file(Path(__file__).resolve().parents[1] / "control.py", "nat's control plane", PacketTestError)

A, B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
C, C5, C6 = "198.18.10.2", "198.18.10.5", "198.18.10.6"    # inside hosts
R, R2, HOP = "198.18.30.2", "198.18.30.9", "198.18.30.1"   # outside hosts, a router on the way
P = "198.18.40.1"                                          # the pool
S = 1_000_000_000                                          # one second in ns
NOW = PacketTest("", b"").now                              # the clock during a packet test (default)

BASE = control.plan({
    "inside": ["198.18.10.0/24"],
    "pool": P,
    "ports": "40000-40000",  # one port: a new flow's port is known without the hash
    "forwards": [{"proto": "tcp", "outside": f"{P}:8080", "inside": f"{C5}:80"},
                 {"proto": "udp", "outside": f"{P}:5353", "inside": f"{C6}:53"}],
})


def cfg(**over: Any) -> dict[str, Any]:
    return {**BASE.config, **over}


def tables(*sessions: dict[str, dict[bytes, bytes]], **extra: dict[Any, Any]) -> dict[str, dict[Any, Any]]:
    """BASE's tables plus the given sessions' halves and extra tables."""
    out: dict[str, dict[Any, Any]] = {name: dict(entries) for name, entries in BASE.tables().items()}
    for s in sessions:
        for name, entries in s.items():
            out.setdefault(name, {}).update(entries)
    for name, entries in extra.items():
        out.setdefault(name, {}).update(entries)
    return out


def session(proto: str, inside: str, outside: str, remote: str, last_seen: int = NOW - S,
            dnat: bool = False) -> dict[str, dict[bytes, bytes]]:
    return control.session_entries(proto, inside, outside, remote, last_seen, dnat)


def eth(l3: Packet) -> Packet:
    return Ether(src=A, dst=B) / l3


def quote(pkt: Packet, extra: int = 0) -> bytes:
    """What an ICMP error quotes of ``pkt``: its IPv4 header and 8 bytes of L4 (plus ``extra``)."""
    raw = bytes(pkt)
    return raw[:(raw[0] & 0xF) * 4 + 8 + extra]


def icmp_error(src: str, dst: str, quoted: bytes, type_: int = 3, code: int = 3) -> Packet:
    return eth(IP(src=src, dst=dst) / ICMP(type=type_, code=code) / Raw(quoted))


TCP_SESSION = session("tcp", f"{C}:5555", f"{P}:41000", f"{R}:80")
UDP_SESSION = session("udp", f"{C}:5555", f"{P}:41000", f"{R}:53")
ICMP_SESSION = session("icmp", f"{C}:4660", f"{P}:41000", f"{R}:0")
FWD_SESSION = session("tcp", f"{C5}:80", f"{P}:8080", f"{R}:33333", dnat=True)
UDP_FWD_SESSION = session("udp", f"{C6}:53", f"{P}:5353", f"{R}:33333", dnat=True)
OTHER_HOLDER = session("tcp", f"{C6}:7777", f"{P}:40000", f"{R}:80")  # holds the one port for R:80

syn_out = eth(IP(src=C, dst=R) / TCP(sport=5555, dport=80, flags="S", seq=1000))
syn_out_nat = eth(IP(src=P, dst=R) / TCP(sport=40000, dport=80, flags="S", seq=1000))
synack_in = eth(IP(src=R, dst=P) / TCP(sport=80, dport=41000, flags="SA", seq=7, ack=1001))
synack_in_nat = eth(IP(src=R, dst=C) / TCP(sport=80, dport=5555, flags="SA", seq=7, ack=1001))
udp_out = eth(IP(src=C, dst=R) / UDP(sport=5555, dport=53) / b"query")
ping = eth(IP(src=C, dst=R) / ICMP(type=8, id=0x1234, seq=1) / b"abcdefgh")
pong = eth(IP(src=R, dst=P) / ICMP(type=0, id=41000, seq=1) / b"abcdefgh")

TESTS = [
    # ---- outbound: allocation and reuse ----
    PacketTest("a new outbound TCP flow gets the pool address and the free port", syn_out, expect="pass",
               config=cfg(), tables=tables(), output=syn_out_nat, counters={"created": 1, "out_translated": 1}),
    PacketTest("outbound UDP: addresses, port and checksum translated",
               udp_out, expect="pass", config=cfg(), tables=tables(),
               output=eth(IP(src=P, dst=R) / UDP(sport=40000, dport=53) / b"query"), counters={"created": 1}),
    PacketTest("outbound UDP without a checksum keeps it zero",
               eth(IP(src=C, dst=R) / UDP(sport=5555, dport=53, chksum=0) / b"query"), expect="pass",
               config=cfg(), tables=tables(),
               output=eth(IP(src=P, dst=R) / UDP(sport=40000, dport=53, chksum=0) / b"query")),
    PacketTest("an existing mapping is reused", syn_out, expect="pass", config=cfg(), tables=tables(TCP_SESSION),
               output=eth(IP(src=P, dst=R) / TCP(sport=41000, dport=80, flags="S", seq=1000)),
               counters={"created": 0, "out_translated": 1}),
    PacketTest("an echo request's identifier is the port", ping, expect="pass", config=cfg(), tables=tables(),
               output=eth(IP(src=P, dst=R) / ICMP(type=8, id=40000, seq=1) / b"abcdefgh"),
               counters={"created": 1, "out_translated": 1}),
    PacketTest("a mapping past its timeout is replaced", udp_out, expect="pass", config=cfg(),
               tables=tables(UDP_SESSION), now=NOW + 400 * S,
               output=eth(IP(src=P, dst=R) / UDP(sport=40000, dport=53) / b"query"),
               counters={"expired": 1, "created": 1}),
    PacketTest("a taken port is skipped", syn_out, expect="pass", config=cfg(port_max=40001),
               tables=tables(OTHER_HOLDER),
               output=eth(IP(src=P, dst=R) / TCP(sport=40001, dport=80, flags="S", seq=1000)),
               counters={"created": 1}),
    PacketTest("no free port: dropped, the live holder keeps its port", syn_out, expect="drop", config=cfg(),
               tables=tables(OTHER_HOLDER), counters={"alloc_fail": 1, "created": 0, "expired": 0}),
    PacketTest("a holder past its timeout gives its port up", syn_out, expect="pass", config=cfg(),
               tables=tables(OTHER_HOLDER), now=NOW + 8000 * S, output=syn_out_nat,
               counters={"expired": 1, "created": 1}),
    PacketTest("the same port is free for another remote endpoint",
               eth(IP(src=C, dst=R2) / TCP(sport=5555, dport=80, flags="S")), expect="pass", config=cfg(),
               tables=tables(OTHER_HOLDER),
               output=eth(IP(src=P, dst=R2) / TCP(sport=40000, dport=80, flags="S")), counters={"created": 1}),
    PacketTest("no pool: outbound flows are dropped", syn_out, expect="drop", config=cfg(pool_count=0),
               tables=tables(), counters={"alloc_fail": 1}),

    # ---- inbound ----
    PacketTest("a reply to a mapping is translated back", synack_in, expect="pass", config=cfg(),
               tables=tables(TCP_SESSION), output=synack_in_nat, counters={"in_translated": 1}),
    PacketTest("an echo reply goes back to its inside host and id", pong, expect="pass", config=cfg(),
               tables=tables(ICMP_SESSION),
               output=eth(IP(src=R, dst=C) / ICMP(type=0, id=0x1234, seq=1) / b"abcdefgh"),
               counters={"in_translated": 1}),
    PacketTest("inbound without a mapping is dropped", synack_in, expect="drop", config=cfg(), tables=tables(),
               counters={"inbound_miss": 1}),
    PacketTest("pass_unmatched leaves unmatched inbound to the stack", synack_in, expect="pass",
               config=cfg(pass_unmatched=1), tables=tables(), output=synack_in, counters={"inbound_miss": 1}),
    PacketTest("a mapping answers only its own remote endpoint",
               eth(IP(src=R2, dst=P) / TCP(sport=80, dport=41000, flags="SA")), expect="drop", config=cfg(),
               tables=tables(TCP_SESSION), counters={"inbound_miss": 1}),
    PacketTest("an expired mapping no longer answers", synack_in, expect="drop", config=cfg(),
               tables=tables(TCP_SESSION), now=NOW + 8000 * S, counters={"expired": 1, "inbound_miss": 1}),
    PacketTest("an inbound protocol NAT does not translate is dropped",
               eth(IP(src=R, dst=P, proto=47) / Raw(b"\0" * 8)), expect="drop", config=cfg(), tables=tables(),
               counters={"unsupported": 1}),

    # ---- port forwards ----
    PacketTest("a port forward makes a session to its inside host",
               eth(IP(src=R, dst=P) / TCP(sport=33333, dport=8080, flags="S")), expect="pass", config=cfg(),
               tables=tables(), output=eth(IP(src=R, dst=C5) / TCP(sport=33333, dport=80, flags="S")),
               counters={"dnat_created": 1, "in_translated": 1}),
    PacketTest("a UDP port forward",
               eth(IP(src=R, dst=P) / UDP(sport=33333, dport=5353) / b"q"), expect="pass", config=cfg(),
               tables=tables(), output=eth(IP(src=R, dst=C6) / UDP(sport=33333, dport=53) / b"q"),
               counters={"dnat_created": 1}),
    PacketTest("the forwarded host's reply leaves from the forwarded port",
               eth(IP(src=C5, dst=R) / TCP(sport=80, dport=33333, flags="SA")), expect="pass", config=cfg(),
               tables=tables(FWD_SESSION), output=eth(IP(src=P, dst=R) / TCP(sport=8080, dport=33333, flags="SA")),
               counters={"out_translated": 1, "created": 0}),
    PacketTest("a forward whose inside flow is mapped already is refused",
               eth(IP(src=R, dst=P) / TCP(sport=33333, dport=8080, flags="S")), expect="drop", config=cfg(),
               tables=tables(session("tcp", f"{C5}:80", f"{P}:40000", f"{R}:33333")), counters={"alloc_fail": 1}),

    # ---- ICMP errors ----
    PacketTest("port unreachable quoting UDP: quote, its checksums and the outer header translated back",
               icmp_error(R, P, quote(IP(src=P, dst=R) / UDP(sport=41000, dport=53))), expect="pass",
               config=cfg(), tables=tables(UDP_SESSION),
               output=icmp_error(R, C, quote(IP(src=C, dst=R) / UDP(sport=5555, dport=53))),
               counters={"icmp_err_in": 1}),
    PacketTest("time exceeded from a router on the way, quoting a whole TCP header",
               icmp_error(HOP, P, quote(IP(src=P, dst=R, ttl=1) / TCP(sport=41000, dport=80, flags="S"), 12), 11, 0),
               expect="pass", config=cfg(), tables=tables(TCP_SESSION),
               output=icmp_error(HOP, C, quote(IP(src=C, dst=R, ttl=1) / TCP(sport=5555, dport=80, flags="S"), 12),
                                 11, 0),
               counters={"icmp_err_in": 1}),
    PacketTest("an error quoting only 8 bytes of TCP (no checksum) is translated",
               icmp_error(R, P, quote(IP(src=P, dst=R) / TCP(sport=41000, dport=80))), expect="pass",
               config=cfg(), tables=tables(TCP_SESSION),
               output=icmp_error(R, C, quote(IP(src=C, dst=R) / TCP(sport=5555, dport=80)))),
    PacketTest("an error quoting an echo request",
               icmp_error(R, P, quote(IP(src=P, dst=R) / ICMP(type=8, id=41000, seq=1)), 3, 1), expect="pass",
               config=cfg(), tables=tables(ICMP_SESSION),
               output=icmp_error(R, C, quote(IP(src=C, dst=R) / ICMP(type=8, id=0x1234, seq=1)), 3, 1)),
    PacketTest("an inside host's error about a forwarded flow leaves with the forward's address",
               icmp_error(C6, R, quote(IP(src=R, dst=C6) / UDP(sport=33333, dport=53))), expect="pass",
               config=cfg(), tables=tables(UDP_FWD_SESSION),
               output=icmp_error(P, R, quote(IP(src=R, dst=P) / UDP(sport=33333, dport=5353))),
               counters={"icmp_err_out": 1}),
    PacketTest("an error about no mapping is dropped",
               icmp_error(R, P, quote(IP(src=P, dst=R) / UDP(sport=41000, dport=53))), expect="drop",
               config=cfg(), tables=tables(), counters={"icmp_err_bad": 1}),
    PacketTest("an error quoting a later fragment is dropped",
               icmp_error(R, P, bytes(IP(src=P, dst=R, frag=10, proto=17) / Raw(b"\0" * 8))), expect="drop",
               config=cfg(), tables=tables(UDP_SESSION), counters={"icmp_err_bad": 1}),
    PacketTest("an outbound ICMP type NAT does not translate is dropped, not leaked",
               eth(IP(src=C, dst=R) / ICMP(type=13)), expect="drop", config=cfg(), tables=tables(),
               counters={"unsupported": 1}),

    # ---- 802.1Q, options ----
    PacketTest("one 802.1Q tag: translated behind the tag",
               Ether(src=A, dst=B) / Dot1Q(vlan=10) / IP(src=C, dst=R) / TCP(sport=5555, dport=80, flags="S"),
               expect="pass", config=cfg(), tables=tables(),
               output=Ether(src=A, dst=B) / Dot1Q(vlan=10) / IP(src=P, dst=R) / TCP(sport=40000, dport=80, flags="S")),
    PacketTest("two tags (802.1ad + 802.1Q), inbound",
               Ether(src=A, dst=B) / Dot1AD(vlan=100) / Dot1Q(vlan=10) / IP(src=R, dst=P)
               / TCP(sport=80, dport=41000, flags="A"), expect="pass", config=cfg(), tables=tables(TCP_SESSION),
               output=Ether(src=A, dst=B) / Dot1AD(vlan=100) / Dot1Q(vlan=10) / IP(src=R, dst=C)
               / TCP(sport=80, dport=5555, flags="A")),
    PacketTest("IPv4 options are stepped over",
               eth(IP(src=C, dst=R, options=[IPOption_NOP()] * 4) / UDP(sport=5555, dport=53) / b"x"),
               expect="pass", config=cfg(), tables=tables(),
               output=eth(IP(src=P, dst=R, options=[IPOption_NOP()] * 4) / UDP(sport=40000, dport=53) / b"x")),

    # ---- what is not translated ----
    PacketTest("IPv6 passes untouched (no NAT66)",
               eth(IPv6(src="2001:db8::2", dst="2001:db8:1::2") / UDP(sport=5555, dport=53)), expect="pass",
               config=cfg(), tables=tables(),
               output=eth(IPv6(src="2001:db8::2", dst="2001:db8:1::2") / UDP(sport=5555, dport=53)),
               counters={"ipv6": 1}),
    PacketTest("ARP passes", eth(ARP(psrc=C, pdst="198.18.10.1")), expect="pass", config=cfg(), tables=tables(),
               counters={"other_l3": 1}),
    PacketTest("traffic between outside hosts passes untouched",
               eth(IP(src=R, dst=R2) / UDP(sport=1, dport=2)), expect="pass", config=cfg(), tables=tables(),
               output=eth(IP(src=R, dst=R2) / UDP(sport=1, dport=2)), counters={"not_nat": 1}),
    PacketTest("inside to the pool (hairpin) passes untouched",
               eth(IP(src=C, dst=P) / TCP(sport=5555, dport=8080)), expect="pass", config=cfg(), tables=tables(),
               counters={"hairpin": 1}),
    PacketTest("a truncated TCP header is dropped", bytes(syn_out)[:40], expect="drop", config=cfg(),
               tables=tables(), counters={"malformed": 1}),
    PacketTest("an echo request under 8 bytes is dropped", bytes(ping)[:14 + 20 + 6], expect="drop",
               config=cfg(), tables=tables(), counters={"malformed": 1}),

    # ---- fragments ----
    PacketTest("an outbound first fragment is translated by its UDP header",
               eth(IP(src=C, dst=R, flags="MF", id=777) / UDP(sport=5555, dport=53) / (b"a" * 32)), expect="pass",
               config=cfg(), tables=tables(),
               output=eth(IP(src=P, dst=R, flags="MF", id=777) / UDP(sport=40000, dport=53) / (b"a" * 32)),
               counters={"created": 1, "out_translated": 1}),
    PacketTest("an outbound later fragment gets its host's pool address",
               eth(IP(src=C, dst=R, frag=5, id=777, proto=17) / (b"b" * 16)), expect="pass", config=cfg(),
               tables=tables(), output=eth(IP(src=P, dst=R, frag=5, id=777, proto=17) / (b"b" * 16)),
               counters={"frag_out": 1}),
    PacketTest("an inbound first fragment is translated (and remembered)",
               eth(IP(src=R, dst=P, flags="MF", id=778) / UDP(sport=53, dport=41000) / (b"c" * 32)), expect="pass",
               config=cfg(), tables=tables(UDP_SESSION),
               output=eth(IP(src=R, dst=C, flags="MF", id=778) / UDP(sport=53, dport=5555) / (b"c" * 32)),
               counters={"in_translated": 1}),
    PacketTest("an inbound later fragment follows its first",
               eth(IP(src=R, dst=P, frag=5, id=778, proto=17) / (b"d" * 16)), expect="pass", config=cfg(),
               tables=tables(control.fragment_entry(R, P, 778, 17, C, NOW - S)),
               output=eth(IP(src=R, dst=C, frag=5, id=778, proto=17) / (b"d" * 16)), counters={"frag_in": 1}),
    PacketTest("an inbound later fragment without its first is dropped",
               eth(IP(src=R, dst=P, frag=5, id=779, proto=17) / (b"d" * 16)), expect="drop", config=cfg(),
               tables=tables(), counters={"frag_miss": 1}),
    PacketTest("translate_fragments=0 drops fragments",
               eth(IP(src=C, dst=R, flags="MF", id=777) / UDP(sport=5555, dport=53) / (b"a" * 32)), expect="drop",
               config=cfg(translate_fragments=0), tables=tables(), counters={"frag_dropped": 1}),
]


# ---- the fuzzer's set-up: a small pool and port range, short timeouts, and templates ----

FZ_R = "198.18.1.1"
FZ_POOL = ("198.18.7.0", "198.18.7.1")
FZ_PORTS = range(100, 104)
FZ_PLAN = control.plan({
    "inside": ["198.18.0.0/24"],
    "pool": f"{FZ_POOL[0]}-{FZ_POOL[1]}",
    "ports": f"{FZ_PORTS[0]}-{FZ_PORTS[-1]}",   # 4 ports per pool address and remote endpoint: exhaustion
    "max_probes": 4,
    "timeouts": {"tcp": 3, "udp": 2, "icmp": 1, "fragments": 1},  # the fuzz clock runs 10 s
    "forwards": [{"proto": "tcp", "outside": f"{FZ_POOL[1]}:80", "inside": "198.18.0.80:8080"},
                 {"proto": "tcp", "outside": f"{FZ_POOL[0]}:443", "inside": "198.18.0.44:443"},
                 {"proto": "udp", "outside": f"{FZ_POOL[0]}:53", "inside": "198.18.0.53:53"}],
})


def _templates() -> list[Packet]:
    t: list[Packet] = []
    for host in range(10, 14):
        for sport in (1000, 1001):
            inside = f"198.18.0.{host}"
            t.append(eth(IP(src=inside, dst=FZ_R) / TCP(sport=sport, dport=80, flags="S")))
            t.append(eth(IP(src=inside, dst=FZ_R) / UDP(sport=sport, dport=53) / b"q"))
        t.append(eth(IP(src=f"198.18.0.{host}", dst=FZ_R) / ICMP(type=8, id=host)))
    for pool in FZ_POOL:
        for port in FZ_PORTS:
            t.append(eth(IP(src=FZ_R, dst=pool) / TCP(sport=80, dport=port, flags="SA")))
            t.append(eth(IP(src=FZ_R, dst=pool) / UDP(sport=53, dport=port) / b"a"))
            t.append(eth(IP(src=FZ_R, dst=pool) / ICMP(type=0, id=port)))
            t.append(icmp_error(FZ_R, pool, quote(IP(src=pool, dst=FZ_R) / UDP(sport=port, dport=53))))
            t.append(icmp_error("198.18.1.254", pool, quote(IP(src=pool, dst=FZ_R) / TCP(sport=port, dport=80), 12),
                                11, 0))
            t.append(icmp_error(FZ_R, pool, quote(IP(src=pool, dst=FZ_R) / ICMP(type=8, id=port))))
        t.append(eth(IP(src=FZ_R, dst=pool, flags="MF", id=4242) / UDP(sport=53, dport=FZ_PORTS[0]) / (b"f" * 16)))
        t.append(eth(IP(src=FZ_R, dst=pool, frag=3, id=4242, proto=17) / (b"g" * 16)))
    t += [
        eth(IP(src=FZ_R, dst=FZ_POOL[1]) / TCP(sport=40000, dport=80, flags="S")),
        eth(IP(src="198.18.0.80", dst=FZ_R) / TCP(sport=8080, dport=40000, flags="SA")),
        eth(IP(src=FZ_R, dst=FZ_POOL[0]) / UDP(sport=5000, dport=53) / b"q"),
        eth(IP(src="198.18.0.53", dst=FZ_R) / UDP(sport=53, dport=5000) / b"a"),
        icmp_error("198.18.0.53", FZ_R, quote(IP(src=FZ_R, dst="198.18.0.53") / UDP(sport=5000, dport=53))),
        eth(IP(src="198.18.0.10", dst=FZ_R, flags="MF", id=99) / UDP(sport=1000, dport=53) / (b"h" * 16)),
        eth(IP(src="198.18.0.10", dst=FZ_R, frag=3, id=99, proto=17) / (b"i" * 16)),
        Ether(src=A, dst=B) / Dot1Q(vlan=5) / IP(src="198.18.0.11", dst=FZ_R) / TCP(sport=1000, dport=80, flags="A"),
        Ether(src=A, dst=B) / Dot1AD(vlan=6) / Dot1Q(vlan=7) / IP(src=FZ_R, dst=FZ_POOL[1])
        / TCP(sport=80, dport=FZ_PORTS[1], flags="A"),
        eth(IP(src="198.18.0.12", dst=FZ_POOL[0]) / UDP(sport=1, dport=53)),   # hairpin
        eth(IP(src="198.18.0.12", dst=FZ_R, proto=47) / Raw(b"\0" * 8)),      # unsupported outbound
    ]
    return t


FUZZ = {
    "config": FZ_PLAN.config,
    "tables": FZ_PLAN.tables(),
    "templates": _templates(),
    "step_ns": 3_000_000,
}
