"""Packet tests of {{name}}: `vnfkit test` runs each on the kernel, native and model
executors and demands they agree with each other and with what is expected here."""

import ipaddress

from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from vnfkit.testing import PacketTest

BLOCKED = "198.18.0.66"
# Table keys are C values: the source address as its packet bytes.
BLOCKLIST = {ipaddress.ip_address(BLOCKED).packed: 1}


def udp_from(src: str) -> Ether:
    return Ether() / IP(src=src, dst="198.18.1.1") / UDP(dport=53) / b"query"


TESTS = [
    PacketTest("a blocked source is dropped", udp_from(BLOCKED), expect="drop",
               tables={"blocklist": BLOCKLIST}, counters={"blocked": 1}),
    PacketTest("monitor mode only counts", udp_from(BLOCKED), expect="pass", config={"enforce": 0},
               tables={"blocklist": BLOCKLIST}, counters={"blocked": 1}),
    PacketTest("other sources pass untouched", udp_from("198.18.0.1"), expect="pass", output=udp_from("198.18.0.1"),
               tables={"blocklist": BLOCKLIST}, counters={"allowed": 1}),
    PacketTest("IPv6 passes", Ether() / IPv6() / UDP(), expect="pass"),
]

# What `vnfkit test --fuzz N` sets up before its generated packets.
FUZZ = {"tables": {"blocklist": BLOCKLIST}}
