"""Service function paths across two hosts: NSH (RFC 8300) on the wire between them, over
Ethernet (0x894F) and VXLAN-GPE, carrying real TCP; the wire format checked by tshark and
scapy; malformed NSH dropped and counted by reason.

    client --c-- hostA ==u== hostB --s-- server
                 [blocker] -NSH-> [monitor] -> stack

Path 40 runs the blocker on hostA (SI 255), crosses to hostB with SI 254, runs the monitor
there and ends in hostB's stack, which forwards to the server. Replies take plain routes
(hostB -> hostA -> client): the chain is one-directional here.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scapy.contrib.nsh import NSH
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from chaining.local import DEFAULT_TTL, LocalChain, RemoteHop, mac_of
from chaining.nsh import ETHERTYPE_NSH, VXLAN_GPE_PORT, decode, vxlan_gpe
from datapath import netns
from datapath.attach import attach_xdp
from datapath.objects import load
from tests.test_chaining_local import tcp_transfer

pytestmark = pytest.mark.kernel
ROOT = Path(__file__).resolve().parent.parent
SPI = 40
UNDERLAY_MTU = 1600   # the inner 1514-byte frame plus up to 74 bytes of outer headers and NSH
ENCAPS = ["eth", "vxlan-gpe"]
# The forwarder takes one from TTL at every visit: hostA's SI 255 (blocker) and SI 254 (remote).
WIRE_TTL = DEFAULT_TTL - 2
PACKET_OUTGOING = 4


def _ethtool_tx_off(ns: str, ifname: str) -> None:
    # XDP_REDIRECT turns the skb into an xdp_frame and loses CHECKSUM_PARTIAL: a client
    # leaving its TCP checksum to "the hardware" would arrive at the server with a bad one.
    subprocess.run(["ip", "netns", "exec", ns, "ethtool", "-K", ifname, "tx", "off"], check=True,
                   capture_output=True)


@pytest.fixture
def lab(topo, tmp_path: Path):  # noqa: ANN001, ANN201
    """Two router hosts joined by a veth underlay, a client behind A, a server behind B."""
    client, host_a = topo.add_ns("client"), topo.add_ns("hostA")
    host_b, server = topo.add_ns("hostB"), topo.add_ns("server")
    c = topo.add_veth(client, host_a)
    u = topo.add_veth(host_a, host_b, mtu=UNDERLAY_MTU)
    s = topo.add_veth(host_b, server)
    for h in (host_a, host_b):
        topo.set_sysctl(h, "net.ipv4.ip_forward", "1")
    topo.add_route(client, f"{s.addr_b}/32", gateway=c.addr_b)
    topo.add_route(host_a, f"{s.addr_b}/32", gateway=u.addr_b)
    topo.add_route(host_b, f"{c.addr_a}/32", gateway=u.addr_a)
    topo.add_route(server, f"{c.addr_a}/32", gateway=s.addr_a)
    _ethtool_tx_off(client, c.ifname_a)
    subprocess.run([sys.executable, "-m", "vnfkit.cli", "new", "blocker"], cwd=tmp_path, check=True,
                   capture_output=True)
    # tcp_transfer (from the local tests) knows the ends as client/server and inner/outer.
    return {"client": client, "hostA": host_a, "hostB": host_b, "server": server, "c": c, "u": u, "s": s,
            "inner": c, "outer": s, "blocker": tmp_path / "blocker"}


# The MD types the forwarder sends: the fixed context of type 1, type 2 without context, and
# type 2 with one context header (an experimental class, RFC 8300 section 9.1.4).
MD = {"md1": {}, "md2": {"mdtype": 2}, "md2-tlv": {"mdtype": 2, "tlv": (0xFFF6, 0x42, b"\x00\x00\x30\x39")}}


def remote_hop(lab: dict, encap: str, md: str = "md1") -> RemoteHop:
    u = lab["u"]
    peer = mac_of(lab["hostB"], u.ifname_b).hex(":")
    return RemoteHop(lab["hostA"], u.ifname_a, peer, encap=encap, src_ip=u.addr_a, dst_ip=u.addr_b, **MD[md])


def host_a_chain(lab: dict, encap: str, md: str = "md1") -> LocalChain:
    """hostA: classifier on the client side, [blocker], then NSH to hostB."""
    chain = LocalChain()
    try:
        chain.load("blocker", lab["blocker"])
        hops = chain.add_path(SPI, ["blocker"], end="remote", remote=remote_hop(lab, encap, md))
        assert [(h.si, h.function) for h in hops] == [(255, "blocker"), (254, "<remote>")]
        chain.classify(f"{lab['s'].addr_b}/32", SPI)
        chain.attach(lab["hostA"], lab["c"].ifname_b)
    except BaseException:
        chain.close()
        raise
    return chain


def host_b_chain(lab: dict) -> LocalChain:
    """hostB: nsh_rx on the underlay, [monitor] from SI 254, then the stack."""
    chain = LocalChain()
    try:
        chain.load("monitor", ROOT / "vnfs" / "monitor")
        hops = chain.add_path(SPI, ["monitor"], first_si=254)
        assert [(h.si, h.function) for h in hops] == [(254, "monitor"), (253, "<stack>")]
        chain.attach_underlay(lab["hostB"], lab["u"].ifname_b)
    except BaseException:
        chain.close()
        raise
    return chain


@pytest.mark.parametrize(("encap", "md"), [("eth", "md1"), ("vxlan-gpe", "md1"), ("eth", "md2-tlv")])
def test_tcp_crosses_hosts_in_nsh(lab: dict, encap: str, md: str) -> None:
    with host_a_chain(lab, encap, md) as a, host_b_chain(lab) as b:
        assert tcp_transfer(lab, 300_000) == 300_000

        sent = a.functions["blocker"][1].counters()["rx"][0]
        assert sent > 10
        # Every packet hostA's function saw crossed in NSH and went through hostB's function.
        assert b.functions["monitor"][1].counters()["rx"][0] == sent
        sa, sb = a.hop_stats(), b.hop_stats()
        assert sa[(SPI, 255)] == sa[(SPI, 254)] == sb[(SPI, 254)] == sb[(SPI, 253)] == sent
        ca, cb = a.counters(), b.counters()
        assert ca["sff_remote_sent"] == sent and ca["sff_no_room"] == ca["sff_no_remote"] == 0
        assert cb["rx_" + encap.replace("-", "_")] == sent and cb["sff_delivered"] == sent
        dropped = ("bad_version", "bad_length", "mdtype_reserved", "mdtype_unknown", "bad_nextproto",
                   "ttl_expired", "no_mac", "no_room", "no_forwarder")
        assert all(cb[f"rx_{n}"] == 0 for n in dropped)


def _read_nsh(sock: socket.socket, want: int, timeout: float) -> list[bytes]:
    """Up to ``want`` received frames that carry NSH (either encapsulation)."""
    frames: list[bytes] = []
    deadline = time.monotonic() + timeout
    with sock:
        while len(frames) < want and time.monotonic() < deadline:
            try:
                data, addr = sock.recvfrom(65535)
            except TimeoutError:
                continue
            if addr[2] == PACKET_OUTGOING:
                continue
            ethertype = struct.unpack_from("!H", data, 12)[0]
            gpe = ethertype == 0x0800 and data[23] == 17 and struct.unpack_from("!H", data, 36)[0] == VXLAN_GPE_PORT
            if ethertype == ETHERTYPE_NSH or gpe:
                frames.append(data)
    return frames


@pytest.mark.parametrize(("encap", "md"), [("eth", "md1"), ("vxlan-gpe", "md1"), ("eth", "md2"),
                                           ("vxlan-gpe", "md2-tlv")])
def test_tshark_and_scapy_read_the_nsh_on_the_wire(lab: dict, encap: str, md: str, tmp_path: Path) -> None:
    # A frame redirected out of a veth by XDP never passes the sender's packet taps, and at
    # the receiver nsh_rx pops the NSH before the taps see it; so here hostB's underlay runs
    # a pass-through XDP program (veth still needs one to take redirected frames) and the
    # capture on it sees the NSH exactly as hostA's forwarder wrote it.
    count = 6
    u = lab["u"]
    with load(ROOT / "datapath" / "progs" / "xdp_pass.c") as tap, host_a_chain(lab, encap, md) as a:
        att = attach_xdp(tap.program("xdp_pass"), u.ifname_b, ns=lab["hostB"])
        try:
            with netns.enter(lab["hostB"]):
                sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))  # ETH_P_ALL
            sock.bind((u.ifname_b, 0))
            sock.settimeout(0.2)
            netns.udp_send(lab["client"], lab["s"].addr_b, 9000, count=count, payload=b"nsh-on-the-wire")
            frames = _read_nsh(sock, count, timeout=3.0)
        finally:
            att.detach()
        assert a.counters()["sff_remote_sent"] == count
    assert len(frames) == count

    pcap = tmp_path / f"{encap}.pcap"
    wrpcap(str(pcap), [Ether(f) for f in frames])
    mdtype = MD[md].get("mdtype", 1)
    tlv = MD[md].get("tlv")
    words = 6 if mdtype == 1 else 4 if tlv else 2
    out = subprocess.run(["tshark", "-r", str(pcap), "-T", "fields", "-e", "nsh.spi", "-e", "nsh.si", "-e", "nsh.ttl",
                          "-e", "nsh.mdtype", "-e", "nsh.nextproto", "-e", "nsh.length", "-e", "nsh.metadataclass",
                          "-e", "nsh.metadatatype", "-e", "nsh.metadatalen", "-e", "nsh.metadata"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    rows = [line.split("\t") for line in out]
    assert [[int(v, 0) for v in r[:6]] for r in rows] == [[SPI, 254, WIRE_TTL, mdtype, 3, words]] * count
    want_tlv = [str(tlv[0]), str(tlv[1]), "4", tlv[2].hex()] if tlv else ["", "", "", ""]
    got_tlv = [r[6:] for r in rows]
    for g in got_tlv:  # tshark prints numbers in hex or decimal and the value with colons, by version
        for i in range(3):
            g[i] = str(int(g[i], 0)) if g[i] else ""
        g[3] = g[3].replace(":", "")
    assert got_tlv == [want_tlv] * count

    a_mac, b_mac = mac_of(lab["hostA"], u.ifname_a), mac_of(lab["hostB"], u.ifname_b)
    for f in frames:
        outer = Ether(f)
        assert (bytes.fromhex(outer.src.replace(":", "")), bytes.fromhex(outer.dst.replace(":", ""))) == (a_mac, b_mac)
        if encap == "eth":
            assert outer.type == ETHERTYPE_NSH
            nsh_bytes = f[14:]
        else:
            ip = outer[IP]
            assert (ip.src, ip.dst, ip[UDP].dport, ip[UDP].chksum) == (u.addr_a, u.addr_b, VXLAN_GPE_PORT, 0)
            # The outer IPv4 checksum the forwarder computed is the one scapy computes.
            fresh = IP(bytes(ip)[:20])
            fresh.chksum = None
            assert IP(bytes(fresh)).chksum == ip.chksum
            assert ip.len == len(f) - 14
            assert f[42:50] == vxlan_gpe(0)
            nsh_bytes = f[50:]
        nsh = NSH(nsh_bytes)
        assert (nsh.ver, nsh.spi, nsh.si, nsh.ttl, nsh.mdtype, nsh.nextproto, nsh.length) == \
            (0, SPI, 254, WIRE_TTL, mdtype, 3, words)
        ours = decode(nsh_bytes)[0]  # the project's own codec agrees
        assert [(t.md_class, t.type, t.value) for t in ours.tlvs] == ([tlv] if tlv else [])
        inner = nsh[Ether]  # next protocol 3: the client's whole frame
        assert (inner[IP].dst, inner[UDP].dport, bytes(inner[UDP].payload)) == \
            (lab["s"].addr_b, 9000, b"nsh-on-the-wire")


def _nsh(*, ttl: int = 63, words: int = 6, mdtype: int = 1, next_proto: int = 3, si: int = 254) -> bytes:
    """Raw NSH bytes, any field allowed to be wrong (the codec in chaining.nsh refuses to)."""
    first = (ttl << 6) | words
    return struct.pack("!HBBI", first, mdtype, next_proto, (SPI << 8) | si) + bytes(16)


MALFORMED = {
    "bad_length": _nsh(words=5),
    "mdtype_reserved": _nsh(mdtype=0),
    "mdtype_unknown": _nsh(mdtype=0xF),
    "bad_nextproto": _nsh(next_proto=0x42),
    "ttl_expired": _nsh(ttl=1),
}


@pytest.mark.parametrize("encap", ENCAPS)
def test_malformed_nsh_is_dropped_and_counted_by_reason(lab: dict, encap: str) -> None:
    u, s = lab["u"], lab["s"]
    a_mac, b_mac = mac_of(lab["hostA"], u.ifname_a), mac_of(lab["hostB"], u.ifname_b)
    inner = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                  / IP(src=lab["c"].addr_a, dst=s.addr_b) / UDP(sport=5555, dport=9001) / b"malformed")

    def frame(nsh: bytes) -> bytes:
        eth = Ether(src=a_mac.hex(":"), dst=b_mac.hex(":"))
        if encap == "eth":
            return bytes(eth)[:12] + struct.pack("!H", ETHERTYPE_NSH) + nsh + inner
        return bytes(eth / IP(src=u.addr_a, dst=u.addr_b) / UDP(sport=50000, dport=VXLAN_GPE_PORT)
                     / (vxlan_gpe(0) + nsh + inner))

    with netns.enter(lab["server"]):
        srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with srv, host_b_chain(lab) as b:
        srv.bind((s.addr_b, 9001))
        srv.settimeout(1.0)
        for reason, nsh in MALFORMED.items():
            before = b.counters()
            netns.send_frames(lab["hostA"], u.ifname_a, [frame(nsh)] * 3)
            after = b.counters()
            changed = {k: after[k] - before[k] for k in after if after[k] != before[k]}
            assert changed == {f"rx_{reason}": 3}, reason  # one counter per reason, nothing else
        with pytest.raises(TimeoutError):
            srv.recv(2048)  # reached nobody
        assert b.hop_stats() == {}

        # The same frame with a sound header is delivered: what stopped the others was the header.
        netns.send_frames(lab["hostA"], u.ifname_a, [frame(_nsh())])
        assert srv.recv(2048) == b"malformed"
        assert b.counters()["rx_" + encap.replace("-", "_")] == 1
        assert b.hop_stats()[(SPI, 253)] == 1
