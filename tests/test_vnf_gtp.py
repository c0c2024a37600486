"""The gtp VNF: its packet tests and 10,000 fuzzed packets on the kernel, native and model
executors; the control side's errors; and real UDP and TCP applications talking through a
GTP-U tunnel that the VNF terminates at XDP."""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import select
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from vnfkit.descriptor import load_descriptor
from vnfkit.executors import make_executors
from vnfkit.pyfile import import_file
from vnfkit.testing import PacketTestError, fuzz, load_packet_tests, run_tests

pytestmark = pytest.mark.kernel
ROOT = Path(__file__).resolve().parent.parent
GTP = ROOT / "vnfs" / "gtp"
control = import_file(GTP / "control.py", "gtp's control side", PacketTestError)


@pytest.fixture(scope="module")
def executors():  # noqa: ANN201
    exs = make_executors(GTP)
    yield exs
    for ex in exs:
        ex.close()


def test_packet_tests_agree_on_all_executors(executors) -> None:  # noqa: ANN001
    tests, _ = load_packet_tests(GTP)
    report = run_tests(executors, tests, load_descriptor(GTP))
    assert report.ran == len(tests) >= 40
    assert report.ok, [(f.test, f.reason) for f in report.failures]


def test_ten_thousand_fuzzed_packets_agree_and_reach_every_decision(executors) -> None:  # noqa: ANN001
    _, setup = load_packet_tests(GTP)
    report = fuzz(executors, 10_000, seed=2152, desc=load_descriptor(GTP), setup=setup)
    assert report.ran == 10_000
    assert report.ok, [(f.test, f.reason) for f in report.failures]
    counts = {name: n for name, (n, _) in executors[0].counters().items()}
    for name in (c.name for c in load_descriptor(GTP).counters):
        assert counts[name] >= 20, (name, counts)  # agreeing means something only if it was reached
    assert counts["aborted"] == 0


def test_fuzzing_with_the_switches_flipped_agrees(executors) -> None:  # noqa: ANN001
    """The other side of every config switch: no source check, echo left to the stack,
    fragments passed, a small MTU."""
    _, setup = load_packet_tests(GTP)
    flipped = {**setup, "config": {**setup["config"], "check_src": 0, "echo_reply": 0, "frag_pass": 1, "mtu": 200}}
    report = fuzz(executors, 3000, seed=29281, desc=load_descriptor(GTP), setup=flipped)
    assert report.ok, [(f.test, f.reason) for f in report.failures]
    counts = {name: n for name, (n, _) in executors[0].counters().items()}
    assert counts["up_spoofed"] == counts["echo_answered"] == 0
    assert counts["echo_passed"] > 0 and counts["down_too_big"] > 0 and counts["up_decap"] > 0


# ---- the control side ----------------------------------------------------------------------

def test_control_sessions_drive_the_fast_path_and_report_usage(executors) -> None:  # noqa: ANN001
    """Sessions installed through GtpControl on each executor's tables: a G-PDU is decapsulated
    and counted against its session; after removal the same packet is an unknown TEID."""
    from scapy.contrib.gtp import GTP_U_Header
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    from datapath.verdict import Verdict

    desc = load_descriptor(GTP)
    inner = IP(src="198.18.7.10", dst="198.18.1.1") / UDP() / b"usage"
    pkt = bytes(Ether() / IP(src="198.18.0.2", dst="198.18.0.1") / UDP(sport=2152, dport=2152)
                / GTP_U_Header(teid=0x42) / inner)
    for ex in executors:
        ex.reset()
        ctl = control.GtpControl(ex.vnf_tables(), "198.18.0.1")
        ex.configure(dict(desc.param_defaults(), **control.gateway_config({"gw_addr": "198.18.0.1"})))
        ctl.add_session({"teid_up": 0x42, "teid_down": 0x99, "peer": "198.18.0.2", "ue4": "198.18.7.10",
                         "ue6": "2001:db8:7:a::5"})
        assert ctl.session(0x42).ue6 == ipaddress.IPv6Network("2001:db8:7:a::/64")
        ex.set_clock(5_000_000_000)
        assert ex.run(pkt).verdict == Verdict.PASS, ex.name
        usage = ctl.usage(0x42)
        assert usage == {"up_packets": 1, "up_bytes": len(inner), "down_packets": 0, "down_bytes": 0,
                         "last_seen": 5_000_000_000}, ex.name
        ctl.remove_session(0x42)
        assert ex.run(pkt).verdict == Verdict.DROP
        assert ex.counters()["up_unknown_teid"][0] == 1
        assert not list(ex.vnf_tables()["ue4"].keys()) and not list(ex.vnf_tables()["ue6"].keys())


GOOD = {"teid_up": 1, "teid_down": 2, "peer": "198.18.0.2", "ue4": "198.18.7.1"}


@pytest.mark.parametrize("sessions, message", [
    ([GOOD, dict(GOOD, ue4="198.18.7.2", name="bob")],
     "sessions[1], session 'bob' (teid_up 0x1): teid_up 0x1 is already used by sessions[0]"),
    ([GOOD, dict(GOOD, teid_up=5)], "sessions[1], session teid_up 0x5: ue4 198.18.7.1 is already used by sessions[0]"),
    ([dict(GOOD, teid_up=0)], "sessions[0]: teid_up 0 is not in 1..0xffffffff"),
    ([dict(GOOD, teid_down=1 << 32)], "teid_down 4294967296 is not in 1..0xffffffff"),
    ([dict(GOOD, teid_up="0xzz")], "teid_up '0xzz' is not a number"),
    ([dict(GOOD, peer="198.18.0.300")], "sessions[0]: peer '198.18.0.300' is not an IPv4 address"),
    ([dict(GOOD, peer="224.0.0.1")], "peer 224.0.0.1 is not a unicast address"),
    ([dict(GOOD, ue4="2001:db8::1")], "ue4 '2001:db8::1' is not an IPv4 address"),
    ([dict(GOOD, ue6="2001:db8:7::/80")], "longer than /64"),
    ([dict(GOOD, ue6="fe80::1")], "not a global or unique-local prefix"),
    ([dict(GOOD, ue4=None)], "needs a UE address"),
    ([dict(GOOD, qfi=64)], "qfi 64 is not in 0..63"),
    ([dict(GOOD, teid=3)], "unknown field(s) ['teid']"),
    ([{"teid_up": 1, "peer": "198.18.0.2", "ue4": "198.18.7.1"}], "sessions[0]: teid_down is missing"),
])
def test_control_names_the_bad_session(sessions: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(control.GtpConfigError) as err:
        control.table_entries(sessions)
    assert message in str(err.value)


def test_control_refuses_conflicts_with_installed_sessions_and_bad_settings(executors) -> None:  # noqa: ANN001
    model = next(ex for ex in executors if ex.name == "model")
    model.reset()
    tables = model.vnf_tables()
    spec = {"gateway": {"gw_addr": "198.18.0.1"}, "sessions": [GOOD], "pools": ["198.18.7.0/24"]}
    assert control.apply(spec, tables) == {"gw_addr": "198.18.0.1"}
    ctl = control.GtpControl(tables, "198.18.0.1")
    with pytest.raises(control.GtpConfigError, match="teid_up 0x1 is already in use by session teid_up 0x1"):
        ctl.add_session(dict(GOOD, ue4="198.18.7.9"))
    with pytest.raises(control.GtpConfigError, match="ue4 198.18.7.1 is already in use by session teid_up 0x1"):
        ctl.add_session(dict(GOOD, teid_up=7))
    with pytest.raises(control.GtpConfigError, match="198.18.0.1 is the gateway's own address"):
        ctl.add_session(dict(GOOD, teid_up=8, ue4="198.18.0.1"))
    # A batch with one conflict writes nothing.
    with pytest.raises(control.GtpConfigError, match=r"sessions\[1\], session teid_up 0x15: ue4 198.18.7.1 is alr"):
        ctl.add_sessions([dict(GOOD, teid_up=20, ue4="198.18.7.20"), dict(GOOD, teid_up=21)])
    assert 20 not in tables["sessions"]
    with pytest.raises(control.GtpConfigError, match="no session with teid_up 0x63"):
        ctl.remove_session(0x63)
    with pytest.raises(control.GtpConfigError, match="pools\\[0\\]: '198.18.7.1/24' is not a prefix"):
        control.apply({"gateway": {"gw_addr": "198.18.0.1"}, "pools": ["198.18.7.1/24"]}, tables)
    with pytest.raises(control.GtpConfigError, match="gw_addr .* is missing"):
        control.gateway_config({"mtu": 1400})
    with pytest.raises(control.GtpConfigError, match="unknown setting"):
        control.gateway_config({"gw_addr": "198.18.0.1", "mut": 1400})
    with pytest.raises(control.GtpConfigError, match="gw_addr 0.0.0.0 is not a unicast address"):
        control.gateway_config({"gw_addr": "0.0.0.0"})


# ---- end to end ----------------------------------------------------------------------------

TUNSETIFF, IFF_TUN, IFF_NO_PI = 0x400454CA, 0x0001, 0x1000
TEID_UP, TEID_DOWN = 0x1001, 0x2001
UE6, SERVER6, GW6 = "2001:db8:7:a::10", "2001:db8:1::2", "2001:db8:1::1"


@dataclass
class Net:
    """The end-to-end set-up: namespaces, links and addresses."""

    enb: str
    gw: str
    srv: str
    access: Any  # VethPair enb <-> gw: the S1-U / N3 link
    core: Any    # VethPair gw <-> srv: the SGi / N6 link
    ue4: str

    @property
    def gw_addr(self) -> str:
        return self.access.addr_b

    @property
    def enb_addr(self) -> str:
        return self.access.addr_a

    @property
    def server(self) -> str:
        return self.core.addr_b


def _ipr(ns: str) -> Any:
    """An IPRoute socket made inside ``ns`` (it stays bound there)."""
    from pyroute2 import IPRoute

    from datapath import netns

    with netns.enter(ns):
        return IPRoute()


def _add_v6(ns: str, ifname: str, addr: str, route: tuple[str, str] | None = None) -> None:
    with _ipr(ns) as ipr:
        idx = ipr.link_lookup(ifname=ifname)[0]
        ipr.addr("add", index=idx, address=addr, prefixlen=64, flags=0x02)  # IFA_F_NODAD
        if route:
            ipr.route("add", dst=route[0], gateway=route[1], family=socket.AF_INET6)


def _ethtool(ns: str, ifname: str, *features: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "ethtool", "-K", ifname, *features], check=True, capture_output=True)


def _free_ue_address(used: list[ipaddress.IPv4Network]) -> str:
    """A UE address in 198.18.0.0/15 that no veth of this run uses."""
    for third in range(200, 256):
        addr = ipaddress.IPv4Address(f"198.19.{third}.10")
        if not any(addr in net for net in used):
            return str(addr)
    raise AssertionError("no free UE address")


def _build(topo: Any) -> Net:
    """enb —access— gw —core— srv, IPv4 and IPv6, the gateway forwarding."""
    enb, gw, srv = topo.add_ns("enb"), topo.add_ns("gw"), topo.add_ns("srv")
    for ns in (enb, gw, srv):
        topo.set_sysctl(ns, "net.ipv6.conf.default.accept_dad", "0")  # no DAD wait on the veths
    access, core = topo.add_veth(enb, gw, ipv6=True), topo.add_veth(gw, srv, ipv6=True)
    net = Net(enb, gw, srv, access, core,
              _free_ue_address([ipaddress.ip_interface(f"{a}/30").network for a in (access.addr_b, core.addr_b)]))
    for key, value in (("net.ipv4.ip_forward", "1"), ("net.ipv6.conf.all.forwarding", "1"),
                       ("net.ipv4.conf.all.rp_filter", "0"), (f"net.ipv4.conf.{access.ifname_b}.rp_filter", "0"),
                       # Encapsulated downlink packets come in on the core link from the
                       # gateway's own address: the stack must accept them to route them on.
                       ("net.ipv4.conf.all.accept_local", "1"), (f"net.ipv4.conf.{core.ifname_a}.accept_local", "1")):
        topo.set_sysctl(gw, key, value)
    topo.add_route(srv, f"{net.ue4}/32", gateway=core.addr_a)
    _add_v6(gw, core.ifname_a, GW6)
    _add_v6(srv, core.ifname_b, SERVER6, ("2001:db8:7:a::/64", GW6))
    # veth hands locally sent packets on with their checksums unfinished (CHECKSUM_PARTIAL, for
    # a NIC that never comes): the tunnel would carry inner UDP/TCP checksums nobody completes.
    # Checksumming in software on the senders' links makes them behave like real wires.
    _ethtool(enb, access.ifname_a, "tx", "off")
    _ethtool(srv, core.ifname_b, "tx", "off")
    return net


class Enb:
    """A small eNB built on scapy's GTP-U, independent of the VNF: the UE's side is a TUN
    device in the eNB's namespace (the UE's applications bind its addresses), the network
    side a UDP socket on port 2152. Every frame on the eNB's link to the gateway is kept
    (an AF_PACKET capture), to check what crossed the wire."""

    def __init__(self, net: Net, tun: str) -> None:
        from datapath import netns

        self.gw = net.gw_addr
        with netns.enter(net.enb):
            self.tun = os.open("/dev/net/tun", os.O_RDWR)
            fcntl.ioctl(self.tun, TUNSETIFF, struct.pack("16sH", tun.encode(), IFF_TUN | IFF_NO_PI))
            self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.cap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))  # ETH_P_ALL
        self.udp.bind((net.enb_addr, 2152))
        self.cap.bind((net.access.ifname_a, 0))
        self.cap.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        with _ipr(net.enb) as ipr:  # the UE: its addresses on the TUN device, the server through it
            idx = ipr.link_lookup(ifname=tun)[0]
            ipr.link("set", index=idx, mtu=1400, state="up")  # room for the 36 bytes of encapsulation
            ipr.addr("add", index=idx, address=net.ue4, prefixlen=32)
            ipr.addr("add", index=idx, address=UE6, prefixlen=128, flags=0x02)
            ipr.route("add", dst=f"{net.server}/32", oif=idx)
            ipr.route("add", dst="2001:db8:1::/64", oif=idx, family=socket.AF_INET6)
        self.frames: list[bytes] = []
        self.echo_responses: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Enb:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        for s in (self.udp, self.cap):
            s.close()
        os.close(self.tun)

    def send_gtp(self, data: bytes) -> None:
        self.udp.sendto(data, (self.gw, 2152))

    def _run(self) -> None:
        from scapy.contrib.gtp import GTP_U_Header
        from scapy.packet import Raw

        while not self._stop.is_set():
            ready, _, _ = select.select([self.tun, self.udp, self.cap], [], [], 0.1)
            if self.tun in ready:  # uplink: the UE's packet, tunnelled to the gateway
                self.send_gtp(bytes(GTP_U_Header(teid=TEID_UP, gtp_type=255) / Raw(os.read(self.tun, 65535))))
            if self.udp in ready:  # downlink: check the header, hand the T-PDU to the UE
                gtp = GTP_U_Header(self.udp.recv(65535))
                if gtp.gtp_type == 255 and gtp.teid == TEID_DOWN:
                    os.write(self.tun, bytes(gtp.payload))
                elif gtp.gtp_type == 2:
                    self.echo_responses.append(bytes(gtp))
            if self.cap in ready:
                self.frames.append(self.cap.recv(65535))


def _sock(ns: str, family: int, kind: int, bind: tuple[Any, ...], timeout: float = 5) -> socket.socket:
    from datapath import netns

    with netns.enter(ns):
        s = socket.socket(family, kind)
    s.settimeout(timeout)
    s.bind(bind)
    return s


def _udp_round_trip(net: Net, family: int, ue_ip: str, srv_ip: str) -> tuple[bytes, bytes]:
    """A datagram from the UE's socket to the server's and a reply back; both must arrive
    whole, from the right address. Returns (request, reply)."""
    with _sock(net.srv, family, socket.SOCK_DGRAM, (srv_ip, 7000)) as server, \
            _sock(net.enb, family, socket.SOCK_DGRAM, (ue_ip, 40000)) as ue:
        request = f"GTP-U carried this from {ue_ip} ".encode() + bytes(range(256)) * 3
        ue.sendto(request, (srv_ip, 7000))
        data, peer = server.recvfrom(4096)
        assert data == request and peer[0] == ue_ip  # the UE's own address: no NAT, no proxy
        reply = request[::-1]
        server.sendto(reply, peer)
        data, peer = ue.recvfrom(4096)
        assert data == reply and peer[0] == srv_ip
    return request, reply


def _tcp_round_trip(net: Net, blob: bytes) -> None:
    """A TCP connection from the UE to the server; ``blob`` goes up and is echoed back."""
    seen: dict[str, Any] = {}
    with _sock(net.srv, socket.AF_INET, socket.SOCK_STREAM, (net.server, 7001)) as listener, \
            _sock(net.enb, socket.AF_INET, socket.SOCK_STREAM, (net.ue4, 0), timeout=10) as client:
        listener.listen(1)

        def serve() -> None:
            conn, seen["peer"] = listener.accept()
            with conn:
                conn.settimeout(10)
                got = b""
                while len(got) < len(blob) and (chunk := conn.recv(65536)):
                    got += chunk
                seen["data"] = got
                conn.sendall(got)

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        client.connect((net.server, 7001))
        client.sendall(blob)
        echoed = b""
        while len(echoed) < len(blob) and (chunk := client.recv(65536)):
            echoed += chunk
        server.join(10)
    assert seen["peer"][0] == net.ue4 and seen["data"] == blob and echoed == blob


def _tunnelled_payloads(net: Net, frames: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """The UDP payloads inside G-PDUs on the eNB's link: (uplink, downlink), each checked for
    the session's TEID and the outer addresses and ports."""
    from scapy.contrib.gtp import GTP_U_Header
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    up, down = [], []
    for frame in map(Ether, frames):
        if GTP_U_Header not in frame or frame[GTP_U_Header].gtp_type != 255:
            continue
        outer, gtp, inner = frame[IP], frame[GTP_U_Header], frame[GTP_U_Header].payload
        payload = bytes(inner[UDP].payload) if UDP in inner else b""
        if outer.src == net.enb_addr and gtp.teid == TEID_UP:
            up.append(payload)
        elif outer.src == net.gw_addr:
            assert outer.dst == net.enb_addr and gtp.teid == TEID_DOWN
            assert frame[UDP].sport == frame[UDP].dport == 2152 and frame[UDP].chksum == 0
            assert isinstance(inner, IP | IPv6) and inner.dst in (net.ue4, UE6)
            down.append(payload)
    return up, down


def test_udp_and_tcp_cross_a_gtp_tunnel_terminated_at_xdp(topo) -> None:  # noqa: ANN001
    """UE + eNB ns (TUN + scapy GTP-U) — gw ns (the gtp VNF at XDP on both links, forwarding
    on) — server ns. UDP over IPv4 and IPv6 and a TCP connection between the UE's and the
    server's sockets arrive byte-identical from the UE's address; on the eNB's link they are
    GTP-U with the session's TEIDs; an echo request is answered by the VNF; a G-PDU with a
    wrong TEID delivers nothing."""
    from scapy.contrib.gtp import GTP_U_Header, GTPEchoRequest
    from scapy.layers.inet import IP, UDP

    from datapath.attach import attach_xdp
    from datapath.objects import load
    from vnfkit.instance import KernelInstance

    net = _build(topo)
    with contextlib.ExitStack() as stack:
        vnf = stack.enter_context(KernelInstance(GTP))
        spec = {"gateway": {"gw_addr": net.gw_addr},
                "sessions": [{"name": "ue", "teid_up": TEID_UP, "teid_down": TEID_DOWN, "peer": net.enb_addr,
                              "ue4": net.ue4, "ue6": UE6}],
                "pools": [str(ipaddress.ip_network(f"{net.ue4}/24", strict=False))]}
        vnf.configure(control.apply(spec, vnf.tables))
        vnf.attach(net.gw, net.access.ifname_b)
        vnf.attach(net.gw, net.core.ifname_a)
        # A veth wakes its peer for frames sent back with XDP_TX (the echo responses) only
        # when the peer runs an XDP program too: the eNB's end gets one that passes everything.
        passer = stack.enter_context(load(ROOT / "datapath" / "progs" / "xdp_pass.c"))
        stack.callback(attach_xdp(passer.program(), net.access.ifname_a, ns=net.enb).detach)
        enb = stack.enter_context(Enb(net, f"{topo.prefix}-ue"))

        payloads = [_udp_round_trip(net, socket.AF_INET, net.ue4, net.server),
                    _udp_round_trip(net, socket.AF_INET6, UE6, SERVER6)]
        _tcp_round_trip(net, bytes((i * 7) & 0xFF for i in range(65536)))
        enb.send_gtp(bytes(GTP_U_Header(gtp_type=1, S=1, seq=77, teid=0) / GTPEchoRequest()))
        with _sock(net.srv, socket.AF_INET, socket.SOCK_DGRAM, (net.server, 7002), timeout=1) as stray:
            enb.send_gtp(bytes(GTP_U_Header(teid=0xBAD, gtp_type=255)
                               / IP(src=net.ue4, dst=net.server) / UDP(sport=1, dport=7002) / b"lost"))
            with pytest.raises(TimeoutError):
                stray.recv(100)
        for _ in range(50):  # bounded wait for the eNB's loop to pick up the echo response
            if enb.echo_responses:
                break
            time.sleep(0.1)
        counts = vnf.counters()
        usage = control.GtpControl(vnf.tables).usage(TEID_UP)

    up, down = _tunnelled_payloads(net, enb.frames)
    for request, reply in payloads:
        assert request in up and reply in down  # the applications' bytes, inside GTP-U on the wire
    assert enb.echo_responses and GTP_U_Header(enb.echo_responses[0]).seq == 77
    assert counts["up_decap"][0] >= 2 + 40 and counts["down_encap"][0] >= 2 + 40  # 2 datagrams, 64 KiB of TCP
    assert counts["up_unknown_teid"][0] == 1 and counts["echo_answered"][0] == 1
    assert counts["down_too_big"][0] == counts["aborted"][0] == 0
    assert usage["up_packets"] == counts["up_decap"][0] and usage["down_packets"] == counts["down_encap"][0]
