"""Packet tests of the exercise VNF: each runs on the kernel, native and model executors."""

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether

from vnfkit.testing import PacketTest

A, B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"


def udp(dport: int, **ip: object) -> Ether:
    return Ether(src=A, dst=B) / IP(src="198.18.0.1", dst="198.18.1.1", **ip) / UDP(sport=4000, dport=dport) / b"hello"


reflected = Ether(src=A, dst=B) / IP(src="198.18.0.1", dst="198.18.7.7", ttl=64) / TCP(dport=80)
expected_reflection = Ether(src=B, dst=A) / IP(src="198.18.0.1", dst="198.18.7.7", ttl=63) / TCP(dport=80)

TESTS = [
    PacketTest("udp to the drop port is dropped and counted", udp(9), expect="drop",
               counters={"dropped": 1, "rx": 1, "drop": 1}),
    PacketTest("other udp passes untouched", udp(53), expect="pass", output=udp(53)),
    PacketTest("a tag is pushed for ports in push_vlan", udp(4789), expect="next",
               tables={"push_vlan": {4789: {"vid": 42}}},
               output=Ether(src=A, dst=B) / Dot1Q(vlan=42) / IP(src="198.18.0.1", dst="198.18.1.1")
               / UDP(sport=4000, dport=4789) / b"hello",
               counters={"pushed": 1}),
    PacketTest("the pop VID's tag is removed", Ether(src=A, dst=B) / Dot1Q(vlan=100) / IP() / UDP(), expect="pass",
               output=Ether(src=A, dst=B) / IP() / UDP(), counters={"popped": 1}),
    PacketTest("reflected with TTL-1, swapped MACs and a fixed checksum", reflected, expect="tx",
               tables={"reflect": {"198.18.7.0/24": 1}}, output=expected_reflection, counters={"rewritten": 1}),
    PacketTest("reflection at the minimum TTL drops", reflected, expect="drop", config={"ttl_min": 64},
               tables={"reflect": {"198.18.7.0/24": 1}}, counters={"dropped": 1, "hits": 1}),
    PacketTest("IPv6 UDP goes to port out", Ether() / IPv6() / UDP(), expect="redirect", port="out"),
    PacketTest("a truncated IPv4 header is malformed", bytes(Ether() / IP())[:20], expect="drop",
               counters={"malformed": 1}),
]

# The fuzzer's set-up: tables that give its packets something to hit.
FUZZ = {
    "tables": {
        "push_vlan": {4789: {"vid": 7}, 2152: {"vid": 4095}},
        "reflect": {"198.18.7.0/24": 1, "198.18.1.128/25": 2},
    },
}
