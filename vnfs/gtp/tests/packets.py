"""Packet tests of the gtp VNF: each runs on the kernel, native and model executors.

Packets and expected outputs are built with scapy's own GTP-U layers (scapy.contrib.gtp), an
implementation independent of fastpath.c and model.py. Tables come from control.py, so the
tests also check that what the control side writes is what the fast path reads.
"""

from pathlib import Path

from scapy.contrib.gtp import (
    GTP_PDCP_PDU_ExtensionHeader,
    GTP_U_Header,
    GTP_UDPPort_ExtensionHeader,
    GTPEchoRequest,
    GTPEchoResponse,
    GTPPDUSessionContainer,
    IE_Recovery,
)
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Packet, Raw

from vnfkit.pyfile import import_file
from vnfkit.testing import PacketTest, PacketTestError

control = import_file(Path(__file__).resolve().parents[1] / "control.py", "gtp's control side", PacketTestError)

GW, ENB, GNB = "198.18.0.1", "198.18.0.2", "198.18.0.6"
SERVER, SERVER6 = "198.18.1.1", "2001:db8:1::1"
UE_A, UE_A6, UE_B, UE_C6 = "198.18.7.10", "2001:db8:7:a::10", "198.18.7.20", "2001:db8:7:c::1"
ENB_MAC, GW_MAC, ROUTER_MAC = "02:00:00:00:0e:01", "02:00:00:00:0a:01", "02:00:00:00:0c:01"

SESSIONS = [
    # a 4G bearer (S1-U: plain GTP-U) with both address families
    {"name": "ue-a", "teid_up": 0x100, "teid_down": 0x8001, "peer": ENB, "ue4": UE_A, "ue6": "2001:db8:7:a::/64"},
    # a 5G PDU session (N3: downlink carries a PDU session container with QFI 9)
    {"name": "ue-b", "teid_up": 0x200, "teid_down": 0x8002, "peer": GNB, "ue4": UE_B, "qfi": 9},
    # IPv6 only, 5G
    {"name": "ue-c", "teid_up": 0x300, "teid_down": 0x8003, "peer": GNB, "ue6": UE_C6, "qfi": 5},
]
POOLS = ["198.18.7.0/24", "2001:db8:7::/48"]
TABLES = control.table_entries(SESSIONS, POOLS)
CONFIG = {"gw_addr": GW}


def up(inner: Packet, teid: int = 0x100, gtp: Packet | None = None, l2: Packet | None = None, **ip: object) -> Packet:
    """An uplink frame: eNB -> gateway, G-PDU around ``inner``."""
    return ((l2 or Ether(src=ENB_MAC, dst=GW_MAC)) / IP(src=ENB, dst=GW, **ip) / UDP(sport=2152, dport=2152)
            / (gtp if gtp is not None else GTP_U_Header(teid=teid)) / inner)


def down(inner: Packet, l2: Packet | None = None) -> Packet:
    """A downlink frame: the core router -> gateway, an IP packet to a UE."""
    return (l2 or Ether(src=ROUTER_MAC, dst=GW_MAC)) / inner


def encapsulated(inner: Packet, teid: int, peer: str, gtp_ext: Packet | None = None, tos: int = 0,
                 l2: Packet | None = None) -> Packet:
    """What the gateway makes of ``down(inner)``: outer IPv4 (DF, ID 0, TTL 64) / UDP 2152 with
    no checksum / GTP-U with the peer's TEID."""
    gtp = GTP_U_Header(teid=teid, gtp_type=255)
    if gtp_ext is not None:
        gtp = gtp / gtp_ext
    return ((l2 or Ether(src=ROUTER_MAC, dst=GW_MAC)) / IP(src=GW, dst=peer, tos=tos, id=0, flags="DF", ttl=64)
            / UDP(sport=2152, dport=2152, chksum=0) / gtp / inner)


UP4 = IP(src=UE_A, dst=SERVER) / UDP(sport=40000, dport=53) / b"uplink datagram"
UP6 = IPv6(src=UE_A6, dst=SERVER6) / UDP(sport=40000, dport=53) / b"uplink v6"
DOWN4 = IP(src=SERVER, dst=UE_A, tos=0xB8) / UDP(sport=53, dport=40000) / b"downlink datagram"
DOWN6 = IPv6(src=SERVER6, dst="2001:db8:7:a::99", tc=0x28) / TCP(sport=443, dport=40001, flags="A") / b"down v6"
ECHO = up(GTPEchoRequest(), gtp=GTP_U_Header(gtp_type=1, S=1, seq=0x1234, teid=0)).copy()
ECHO[UDP].sport = 33000
ECHO_REPLY = (Ether(src=GW_MAC, dst=ENB_MAC) / IP(src=GW, dst=ENB, id=0, flags="DF", ttl=64)
              / UDP(sport=2152, dport=33000, chksum=0) / GTP_U_Header(gtp_type=2, S=1, seq=0x1234, teid=0)
              / GTPEchoResponse(IE_list=[IE_Recovery(restart_counter=0)]))
QINQ = Ether(src=ENB_MAC, dst=GW_MAC) / Dot1AD(vlan=100) / Dot1Q(vlan=200)
FIVE_EXT = GTP_U_Header(teid=0x100, gtp_type=255)  # one more skippable extension than the walk takes
for _next in (0x40, 0x40, 0x40, 0x40, 0):
    FIVE_EXT = FIVE_EXT / GTP_UDPPort_ExtensionHeader(udp_port=2152, next_ex=_next)
ECHO_OPTIONS = up(GTPEchoRequest(), gtp=GTP_U_Header(gtp_type=1, S=1, seq=3, teid=0), options=b"\x01\x01\x01\x00")


def t(name: str, packet: Packet | bytes, expect: str, output: Packet | bytes | None = None,
      counters: dict[str, int] | None = None, config: dict[str, int] | None = None) -> PacketTest:
    """A test on the standard sessions and pools."""
    return PacketTest(name, packet, expect=expect, output=output, counters=counters or {},
                      tables=TABLES, config={**CONFIG, **(config or {})})


TESTS = [
    # ---- uplink ----
    t("uplink G-PDU: inner IPv4 decapsulated, Ethernet header kept", up(UP4), "pass",
      Ether(src=ENB_MAC, dst=GW_MAC) / UP4, {"up_decap": 1, "pass": 1, "rx": 1}),
    t("uplink G-PDU: inner IPv6 gets the IPv6 ethertype", up(UP6), "pass",
      Ether(src=ENB_MAC, dst=GW_MAC, type=0x86DD) / UP6, {"up_decap": 1}),
    t("uplink with the sequence number field (S flag)", up(UP4, gtp=GTP_U_Header(teid=0x100, S=1, seq=9)), "pass",
      Ether(src=ENB_MAC, dst=GW_MAC) / UP4, {"up_decap": 1}),
    t("uplink 5G: UL PDU session container skipped",
      up(IP(src=UE_B, dst=SERVER) / UDP() / b"5g",
         gtp=GTP_U_Header(teid=0x200) / GTPPDUSessionContainer(type=1, QFI=9)),
      "pass", Ether(src=ENB_MAC, dst=GW_MAC) / IP(src=UE_B, dst=SERVER) / UDP() / b"5g", {"up_decap": 1}),
    t("uplink: a skippable extension (UDP port) chained before the container",
      up(UP4, gtp=GTP_U_Header(teid=0x100, gtp_type=255) / GTP_UDPPort_ExtensionHeader(udp_port=2152, next_ex=0x85)
         / GTPPDUSessionContainer(type=1, QFI=1)),
      "pass", Ether(src=ENB_MAC, dst=GW_MAC) / UP4, {"up_decap": 1}),
    t("uplink: an extension the receiver must understand (PDCP PDU number) is refused",
      up(UP4, gtp=GTP_U_Header(teid=0x100, gtp_type=255) / GTP_PDCP_PDU_ExtensionHeader(pdcp_pdu=5)),
      "drop", counters={"up_bad_ext": 1}),
    t("uplink: a DL PDU session container on the uplink is refused",
      up(UP4, gtp=GTP_U_Header(teid=0x100) / GTPPDUSessionContainer(type=0, QFI=9)), "drop",
      counters={"up_bad_ext": 1}),
    t("uplink: more extension headers than the walk allows are refused", up(UP4, gtp=FIVE_EXT), "drop",
      counters={"up_bad_ext": 1}),
    t("uplink: unknown TEID dropped", up(UP4, teid=0x999), "drop", counters={"up_unknown_teid": 1, "drop": 1}),
    t("uplink: inner source not the session's UE is dropped", up(IP(src=UE_B, dst=SERVER) / UDP()), "drop",
      counters={"up_spoofed": 1}),
    t("uplink: any inner source with check_src off", up(IP(src=UE_B, dst=SERVER) / UDP()), "pass",
      Ether(src=ENB_MAC, dst=GW_MAC) / IP(src=UE_B, dst=SERVER) / UDP(), {"up_decap": 1}, {"check_src": 0}),
    t("uplink: IPv6 on an IPv4-only session is spoofed",
      up(IPv6(src="2001:db8:7:b::1", dst=SERVER6) / UDP(), teid=0x200), "drop", counters={"up_spoofed": 1}),
    t("uplink: IPv6 from the session's /64, any interface id",
      up(IPv6(src="2001:db8:7:c::abcd", dst=SERVER6) / UDP() / b"x", teid=0x300), "pass",
      Ether(src=ENB_MAC, dst=GW_MAC, type=0x86DD) / IPv6(src="2001:db8:7:c::abcd", dst=SERVER6) / UDP() / b"x",
      {"up_decap": 1}),
    t("uplink: GTPv2 (version 2) to the GTP-U port is bad GTP",
      up(UP4, gtp=GTP_U_Header(teid=0x100, version=2)), "drop", counters={"up_bad_gtp": 1}),
    t("uplink: GTP' (PT 0) is bad GTP", up(UP4, gtp=GTP_U_Header(teid=0x100, PT=0)), "drop",
      counters={"up_bad_gtp": 1}),
    t("uplink: GTP length beyond the datagram is bad GTP",
      up(UP4, gtp=GTP_U_Header(teid=0x100, length=500)), "drop", counters={"up_bad_gtp": 1}),
    t("uplink: a T-PDU that is not IP is dropped",
      up(Raw(b"\x50" + bytes(30)), gtp=GTP_U_Header(teid=0x100, gtp_type=255)), "drop", counters={"up_bad_inner": 1}),
    t("uplink: an inner IPv4 length beyond the T-PDU is dropped",
      up(IP(bytes(IP(src=UE_A, dst=SERVER, len=300) / UDP()))), "drop", counters={"up_bad_inner": 1}),
    t("uplink 802.1Q: the tag stays, the ethertype after it changes",
      up(UP6, l2=Ether(src=ENB_MAC, dst=GW_MAC) / Dot1Q(vlan=42)), "pass",
      Ether(src=ENB_MAC, dst=GW_MAC) / Dot1Q(vlan=42, type=0x86DD) / UP6, {"up_decap": 1}),
    t("uplink QinQ: both tags stay", up(UP4, l2=QINQ), "pass", QINQ / UP4, {"up_decap": 1}),
    t("uplink: outer IPv4 options are removed with the outer header",
      up(UP4, options=b"\x01\x01\x01\x00"), "pass", Ether(src=ENB_MAC, dst=GW_MAC) / UP4, {"up_decap": 1}),
    t("outer first fragment to the GTP-U port: dropped", up(UP4, flags="MF"), "drop", counters={"up_frag": 1}),
    t("outer later fragment (no port) to the gateway: dropped",
      Ether() / IP(src=ENB, dst=GW, proto=17, frag=100) / Raw(bytes(40)), "drop", counters={"up_frag": 1}),
    t("outer fragments go to the stack with frag_pass", up(UP4, flags="MF"), "pass",
      up(UP4, flags="MF"), {"up_frag": 1}, {"frag_pass": 1}),
    t("echo request answered with an echo response, back out", ECHO, "tx", ECHO_REPLY,
      {"echo_answered": 1, "tx": 1}),
    t("echo request on QinQ answered with the tags kept",
      up(GTPEchoRequest(), l2=QINQ, gtp=GTP_U_Header(gtp_type=1, S=1, seq=7, teid=0)), "tx",
      Ether(src=GW_MAC, dst=ENB_MAC) / Dot1AD(vlan=100) / Dot1Q(vlan=200)
      / IP(src=GW, dst=ENB, id=0, flags="DF", ttl=64) / UDP(sport=2152, dport=2152, chksum=0)
      / GTP_U_Header(gtp_type=2, S=1, seq=7, teid=0) / GTPEchoResponse(IE_list=[IE_Recovery(restart_counter=0)]),
      {"echo_answered": 1}),
    t("echo request left to the stack with echo_reply off", ECHO, "pass", ECHO, {"echo_passed": 1},
      {"echo_reply": 0}),
    t("echo request with outer IPv4 options left to the stack", ECHO_OPTIONS, "pass", ECHO_OPTIONS,
      {"echo_passed": 1}),
    t("error indication goes to the stack", up(Raw(b"\x10\x00\x00\x00\x01"), gtp=GTP_U_Header(gtp_type=26)),
      "pass", counters={"up_other_msg": 1}),
    t("UDP 2152 to another address is just traffic",
      Ether() / IP(src=ENB, dst=SERVER) / UDP(sport=2152, dport=2152) / GTP_U_Header(teid=0x100) / UP4, "pass",
      counters={"passed": 1}),
    # ---- downlink ----
    t("downlink IPv4 to a UE: encapsulated to its eNB, TOS copied out", down(DOWN4), "pass",
      encapsulated(DOWN4, 0x8001, ENB, tos=0xB8), {"down_encap": 1, "pass": 1}),
    t("downlink IPv6 to a UE's /64: encapsulated", down(DOWN6), "pass",
      encapsulated(DOWN6, 0x8001, ENB, tos=0x28), {"down_encap": 1}),
    t("downlink 5G: a DL PDU session container with the QFI",
      down(IP(src=SERVER, dst=UE_B) / UDP() / b"5g down"), "pass",
      encapsulated(IP(src=SERVER, dst=UE_B) / UDP() / b"5g down", 0x8002, GNB, GTPPDUSessionContainer(type=0, QFI=9)),
      {"down_encap": 1}),
    t("downlink 5G IPv6", down(IPv6(src=SERVER6, dst=UE_C6) / UDP()), "pass",
      encapsulated(IPv6(src=SERVER6, dst=UE_C6) / UDP(), 0x8003, GNB, GTPPDUSessionContainer(type=0, QFI=5)),
      {"down_encap": 1}),
    t("downlink 802.1Q: the tag stays, the ethertype becomes IPv4",
      down(DOWN6, l2=Ether(src=ROUTER_MAC, dst=GW_MAC) / Dot1Q(vlan=7)), "pass",
      encapsulated(DOWN6, 0x8001, ENB, tos=0x28, l2=Ether(src=ROUTER_MAC, dst=GW_MAC) / Dot1Q(vlan=7, type=0x0800)),
      {"down_encap": 1}),
    t("downlink inner fragments are tunnelled like any packet",
      down(IP(src=SERVER, dst=UE_A, flags="MF", frag=0) / UDP() / bytes(16)), "pass",
      encapsulated(IP(src=SERVER, dst=UE_A, flags="MF", frag=0) / UDP() / bytes(16), 0x8001, ENB),
      {"down_encap": 1}),
    t("downlink: Ethernet padding stays outside the tunnel",
      bytes(down(IP(src=SERVER, dst=UE_A) / UDP())) + b"\0" * 10, "pass",
      bytes(encapsulated(IP(src=SERVER, dst=UE_A) / UDP(), 0x8001, ENB)) + b"\0" * 10, {"down_encap": 1}),
    t("downlink to a pool address without a session: dropped", down(IP(src=SERVER, dst="198.18.7.99") / UDP()),
      "drop", counters={"down_no_session": 1}),
    t("downlink IPv6 to a pool prefix without a session: dropped",
      down(IPv6(src=SERVER6, dst="2001:db8:7:ff::1") / UDP()), "drop", counters={"down_no_session": 1}),
    t("downlink beyond the MTU: dropped", down(IP(src=SERVER, dst=UE_A) / UDP() / bytes(1450)), "drop",
      counters={"down_too_big": 1}),
    t("downlink with a smaller MTU configured", down(DOWN4 / bytes(64)), "drop", counters={"down_too_big": 1},
      config={"mtu": 96}),
    t("downlink shorter than its IP length: dropped", bytes(down(IP(src=SERVER, dst=UE_A, len=200) / UDP())),
      "drop", counters={"down_bad_len": 1}),
    # ---- neither ----
    t("IPv4 to elsewhere passes", down(IP(src=SERVER, dst="198.18.1.50") / UDP()), "pass",
      counters={"passed": 1}),
    t("ARP passes", Ether() / ARP(psrc=ENB, pdst=GW), "pass", counters={"passed": 1}),
    t("a truncated IPv4 header is malformed", bytes(Ether() / IP(dst=GW))[:24], "drop",
      counters={"malformed": 1}),
]

# The fuzzer's set-up: its addresses are 198.18.{0,1,7}.x and 2001:db8:1::x, so sessions and
# pools there give its generated packets UEs to hit, and the templates below (mutated half of
# the time) exercise every branch of the GTP-U parser.
FUZZ_SESSIONS = SESSIONS + [
    {"teid_up": 0x400, "teid_down": 0x8004, "peer": ENB, "ue4": "198.18.1.7", "ue6": "2001:db8:1::/64"},
    {"teid_up": 0x500, "teid_down": 0x8005, "peer": GNB, "ue4": "198.18.1.8", "qfi": 63},
]
FUZZ = {
    "tables": control.table_entries(FUZZ_SESSIONS, POOLS + ["198.18.1.0/28"]),
    "config": CONFIG,
    "templates": [
        up(UP4), up(UP6), up(UP4, l2=QINQ), up(UP6, l2=Ether(src=ENB_MAC, dst=GW_MAC) / Dot1Q(vlan=5)),
        up(UP4, gtp=GTP_U_Header(teid=0x100, S=1, seq=9)),
        up(IP(src=UE_B, dst=SERVER) / UDP() / b"5g", gtp=GTP_U_Header(teid=0x200) / GTPPDUSessionContainer(type=1)),
        up(UP4, gtp=GTP_U_Header(teid=0x100, gtp_type=255) / GTP_UDPPort_ExtensionHeader(udp_port=9, next_ex=0x85)
           / GTPPDUSessionContainer(type=1, QFI=1)),
        up(IPv6(src="2001:db8:7:c::1", dst=SERVER6) / TCP() / b"v6 5g", teid=0x300),
        up(UP4, teid=0x999), up(UP4, flags="MF"), up(IP(src=UE_B, dst=SERVER) / UDP()),
        up(UP4, gtp=FIVE_EXT), up(UP4, gtp=GTP_U_Header(teid=0x100) / GTPPDUSessionContainer(type=0, QFI=9)),
        up(UP4, gtp=GTP_U_Header(teid=0x100, gtp_type=255) / GTP_PDCP_PDU_ExtensionHeader(pdcp_pdu=5)),
        ECHO, ECHO_OPTIONS, up(GTPEchoRequest(), gtp=GTP_U_Header(gtp_type=1, teid=0)),
        up(GTPEchoRequest(), l2=QINQ, gtp=GTP_U_Header(gtp_type=1, S=1, seq=7, teid=0)),
        up(Raw(b"\x10\x00\x00\x00\x01"), gtp=GTP_U_Header(gtp_type=26)),
        down(DOWN4), down(DOWN6), down(IP(src=SERVER, dst=UE_B) / UDP() / b"5g down"),
        down(IPv6(src=SERVER6, dst=UE_C6) / UDP()), down(IP(src=SERVER, dst="198.18.7.99") / UDP()),
        down(DOWN4, l2=QINQ), down(IP(src=SERVER, dst=UE_A) / UDP() / bytes(1440)),
    ],
}
