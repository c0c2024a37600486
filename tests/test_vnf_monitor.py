"""The monitor VNF: packet tests and fuzzing on three executors, its control plane's reading of
the tables and its errors, and an end-to-end run with real UDP and TCP applications."""

from __future__ import annotations

import json
import random
import selectors
import socket
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from datapath.errors import VnfkitError
from vnfkit.descriptor import load_descriptor
from vnfkit.executors import Executor, make_executors
from vnfkit.pyfile import import_file
from vnfkit.testing import compare_state, fuzz, load_packet_tests, prepare, run_tests

pytestmark = pytest.mark.kernel
MONITOR = Path(__file__).resolve().parent.parent / "vnfs" / "monitor"
ctl: ModuleType = import_file(MONITOR / "control.py", "the monitor's control plane", VnfkitError)
model: ModuleType = import_file(MONITOR / "model.py", "the monitor's model and hash functions", VnfkitError)
DESC = load_descriptor(MONITOR)
DECISIONS = ("malformed", "non_ip", "ipv4", "ipv6", "fragment", "icmp", "no_ports", "tagged", "flow_new",
             "flow_update")


@pytest.fixture(scope="module")
def executors() -> Iterator[list[Executor]]:
    exs = make_executors(MONITOR)
    yield exs
    for ex in exs:
        ex.close()


def packet_counts(ex: Executor) -> dict[str, int]:
    return {name: n for name, (n, _) in ex.counters().items()}


# ---- the three executors ------------------------------------------------------------------

def test_packet_tests_agree_on_all_executors(executors: list[Executor]) -> None:
    tests, _ = load_packet_tests(MONITOR)
    report = run_tests(executors, tests, DESC)
    assert report.ran == len(tests) >= 15
    assert report.ok, [(f.test, f.reason) for f in report.failures]


def test_ten_thousand_fuzzed_packets_agree_and_reach_every_decision(executors: list[Executor]) -> None:
    _, setup = load_packet_tests(MONITOR)
    report = fuzz(executors, 10_000, seed=7, desc=DESC, setup=setup)
    assert report.ran == 10_000
    assert report.ok, [(f.test, f.reason) for f in report.failures]
    counts = packet_counts(executors[0])
    assert counts["pass"] == 10_000
    for name in DECISIONS:
        assert counts[name] > 100, (name, counts)
    assert counts["flow_lost"] == 0  # only a lost race between CPUs gets there
    # The FUZZ set-up put a flow in the table that the sketch never saw: the control plane
    # notices an estimate below an exact count instead of reporting nonsense.
    with pytest.raises(ctl.MonitorError, match=r"flow 'udp 198.18.0.1:4000 > 198.18.1.1:53': sketch estimate"):
        ctl.Monitor(executors[0].vnf_tables()).top_k()


def test_chained_mode_fuzzes_to_next(executors: list[Executor]) -> None:
    _, setup = load_packet_tests(MONITOR)
    report = fuzz(executors, 2_000, seed=8, desc=DESC, setup={**setup, "config": ctl.config(mode="next")})
    assert report.ok, [(f.test, f.reason) for f in report.failures]
    counts = packet_counts(executors[0])
    assert counts["next"] == 2_000 and counts["pass"] == 0


def test_control_plane_reads_the_same_on_every_executor(executors: list[Executor]) -> None:
    """Known packets: exact flow counts, timestamps, TCP flags, VLAN keys, estimates equal to
    the exact counts (no collisions among a few flows), identical exports everywhere."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Dot1Q, Ether

    def udp(i: int) -> bytes:
        return bytes(Ether() / IP(src="198.18.0.1", dst="198.18.1.1") / UDP(sport=1000 + i % 5, dport=53) / (b"x" * i))

    frames = [udp(i) for i in range(50)]
    frames += [bytes(Ether() / Dot1Q(vlan=42) / IPv6(src="2001:db8::1", dst="2001:db8:1::1")
                     / TCP(sport=5, dport=80, flags=f)) for f in ("S", "A", "PA", "FA")]
    seed = 0x0BADC0DE
    exports = []
    for ex in executors:
        prepare([ex], DESC, ctl.config(seed=seed), {}, "control plane test")
        for i, frame in enumerate(frames):
            ex.set_clock(1_000 + i)
            ex.run(frame)
        mon = ctl.Monitor(ex.vnf_tables(), seed=seed)
        top = mon.top_k(10, by="packets")
        assert len(top) == 6 and top[-1].key.proto == 6  # 4 TCP segments; each UDP flow has 10
        tcp = top[-1]
        assert str(tcp.key) == "tcp [2001:db8::1]:5 > [2001:db8:1::1]:80 vlan 42"
        assert (tcp.exact.packets, tcp.exact.tcp_flags, tcp.exact.first_ns, tcp.exact.last_ns) == (4, 0x1B, 1050, 1053)
        for h in top:
            assert (h.estimate.packets, h.estimate.bytes) == (h.exact.packets, h.exact.bytes)
        assert mon.estimate("udp 198.18.0.1:1003 > 198.18.1.1:53").packets == 10
        assert mon.estimate("udp 198.18.0.1:999 > 198.18.1.1:53").packets == 0  # never seen
        hist = mon.histograms()
        assert hist["vlan"] == {"42": ctl.Count(4, sum(len(f) for f in frames[50:]))}
        assert sum(c.packets for c in hist["size"].values()) == len(frames)
        exports.append(json.loads(mon.export_json()))
    assert exports[0] == exports[1] == exports[2]
    assert compare_state(executors) is None
    mon.reset()
    assert mon.flows() == [] and mon.totals(mon.sketch()) == ctl.Count(0, 0) and mon.histograms()["size"] == {}


def test_python_hash_matches_itself_on_arrays() -> None:
    """model.py's hash runs on ints (model) and numpy arrays (control plane): the same answers."""
    import numpy as np

    rng = random.Random(1)
    keys = [bytes(rng.randrange(256) for _ in range(model.KEY_SIZE)) for _ in range(200)]
    words = np.frombuffer(b"".join(keys), dtype="<u4").astype(np.uint64).reshape(-1, model.KEY_WORDS)
    cols = model.sketch_cols([words[:, i] for i in range(model.KEY_WORDS)], 12345)
    for i, key in enumerate(keys):
        assert [int(c[i]) for c in cols] == model.sketch_cols(model.key_words(key), 12345)
    assert all(0 <= int(c.min()) and int(c.max()) < model.SKETCH_COLS for c in cols)


# ---- the control plane's errors -----------------------------------------------------------

@pytest.mark.parametrize(("call", "message"), [
    (lambda: ctl.config(mode="drop"), r"mode 'drop' is not one of pass, next"),
    (lambda: ctl.config(seed=2**32), r"seed 4294967296 is not an integer"),
    (lambda: ctl.flow_key("198.18.0.1", "2001:db8::1", "udp"), r"source 198.18.0.1 is IPv4 but destination"),
    (lambda: ctl.flow_key("198.18.0.1", "198.18.0.300", "udp"), r"flow 'udp 198.18.0.1 > 198.18.0.300'"),
    (lambda: ctl.flow_key("198.18.0.1", "198.18.0.2", "udp", 70000), r"source port 70000 is not in 0..65535"),
    (lambda: ctl.flow_key("198.18.0.1", "198.18.0.2", "gre", 1, 2), r"ports must be 0"),
    (lambda: ctl.flow_key("198.18.0.1", "198.18.0.2", "tcp", 1, 2, fragment=True), r"ports must be 0"),
    (lambda: ctl.flow_key("198.18.0.1", "198.18.0.2", "udp", vlans=(1, 2, 3)), r"3 VLAN tags"),
    (lambda: ctl.flow_key("198.18.0.1", "198.18.0.2", "udp", vlans=(4096,)), r"VLAN id 4096"),
    (lambda: ctl.flow_key("198.18.0.1", "198.18.0.2", "quic"), r"unknown protocol 'quic'"),
    (lambda: ctl.parse_flow("udp 198.18.0.1:53 198.18.0.2:53"), r"expected 'PROTO SRC\[:PORT\] > DST"),
    (lambda: ctl.parse_flow("udp 198.18.0.1:x > 198.18.0.2:53"), r"port 'x' of '198.18.0.1:x'"),
    (lambda: ctl.parse_flow("icmp 198.18.0.1 > 198.18.0.2 type 300/0"), r"'type 300/0' is not TYPE/CODE"),
    (lambda: ctl.parse_flow("udp 198.18.0.1:1 > 198.18.0.2:2 vlan x"), r"'vlan x' is not VID"),
    (lambda: ctl.parse_flow("udp 198.18.0.1:1 > 198.18.0.2:2 please"), r"flow 'udp .*': unexpected 'please'"),
    (lambda: ctl.Monitor({}), r"not the monitor's tables: flows, sketch, .* missing"),
])
def test_bad_input_is_named(call: object, message: str) -> None:
    with pytest.raises(VnfkitError, match=message):
        call()


def test_bad_queries_and_a_wrong_seed_are_named(executors: list[Executor]) -> None:
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    native = next(ex for ex in executors if ex.name == "native")
    prepare([native], DESC, {}, {}, "seed test")
    native.run(bytes(Ether() / IP(src="198.18.0.1", dst="198.18.1.1") / UDP(sport=1, dport=2)))
    mon = ctl.Monitor(native.vnf_tables())
    with pytest.raises(ctl.MonitorError, match=r"top_k: k=0 is not a positive integer"):
        mon.top_k(0)
    with pytest.raises(ctl.MonitorError, match=r"top_k: by='flows' is not 'bytes' or 'packets'"):
        mon.top_k(by="flows")
    with pytest.raises(ctl.MonitorError, match=r"another sketch_seed than 0x1"):
        ctl.Monitor(native.vnf_tables(), seed=1).top_k()
    assert [str(h.key) for h in mon.top_k()] == ["udp 198.18.0.1:1 > 198.18.1.1:2"]


def test_flow_text_round_trips() -> None:
    for text in ("udp 198.18.0.1:4000 > 198.18.1.1:53", "tcp [2001:db8::1]:5 > [2001:db8:1::1]:80 vlan 42",
                 "icmp 198.18.0.1 > 198.18.1.1 type 8/0 vlan 100.7", "udp 198.18.0.1 > 198.18.1.1 frag",
                 "gre 2001:db8::1 > 2001:db8::2", "icmpv6 2001:db8::1 > 2001:db8::2 type 128/0"):
        key = ctl.parse_flow(text)
        assert str(key) == text
        assert ctl.FlowKey.unpack(key.pack()) == key


def test_descriptor_default_seed_is_the_control_planes() -> None:
    assert DESC.param_defaults()["sketch_seed"] == ctl.DEFAULT_SEED


# ---- end to end ---------------------------------------------------------------------------

UDP_HDRS = {4: 14 + 20 + 8, 6: 14 + 40 + 8}  # Ethernet + IP + UDP header bytes per frame
# linux/tcp.h struct tcp_info: u32 tcpi_segs_out at byte 136, u64 tcpi_bytes_sent at 200.
TCPI_SEGS_OUT, TCPI_BYTES_SENT = 136, 200
# With timestamps, SACK and window scaling off in the client's namespace, every segment has a
# bare 20-byte TCP header except the SYN, which carries the 4-byte MSS option.
TCP_HDR, SYN_OPTIONS = 14 + 20 + 20, 4
WINDOW = 128  # datagrams in flight at most: well below veth's 256-frame XDP ring and the socket buffer


class Receiver:
    """The server's applications: two UDP sockets (IPv4, IPv6) and a TCP listener, served by
    one thread. Records what each source sent: {(address, port): [datagrams, bytes]}."""

    def __init__(self, ns: str, addr4: str, addr6: str) -> None:
        from datapath import netns

        with netns.enter(ns):
            self.udp4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.udp6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.udp4.bind((addr4, 5001))
        self.udp6.bind((addr6, 5002))
        self.listener.bind((addr4, 5003))
        self.listener.listen(4)
        self.udp: dict[tuple[str, int], list[int]] = {}
        self.tcp: dict[tuple[str, int], int] = {}  # connections accepted: peer -> bytes received
        self.changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        for s in (self.udp4, self.udp6, self.listener):
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
        while not self._stop.is_set():
            for ev, _ in sel.select(timeout=0.1):
                sock = ev.fileobj
                with self.changed:
                    if sock is self.listener:
                        conn, peer = sock.accept()
                        conn.setblocking(False)
                        self.tcp[peer[:2]] = 0
                        sel.register(conn, selectors.EVENT_READ, peer[:2])
                    elif ev.data is not None:  # a TCP connection
                        data = sock.recv(1 << 16)
                        self.tcp[ev.data] += len(data)
                        if not data:
                            sel.unregister(sock)
                            sock.close()
                    else:
                        while True:
                            try:
                                data, peer = sock.recvfrom(2048)
                            except BlockingIOError:
                                break
                            seen = self.udp.setdefault(peer[:2], [0, 0])
                            seen[0] += 1
                            seen[1] += len(data)
                    self.changed.notify_all()
        for key in list(sel.get_map().values()):
            if key.data is not None:
                key.fileobj.close()  # connections still open
        sel.close()

    def wait_udp(self, peer: tuple[str, int], datagrams: int) -> None:
        with self.changed:
            ok = self.changed.wait_for(lambda: self.udp.get(peer, [0])[0] >= datagrams, timeout=20)
        assert ok, f"{peer}: {self.udp.get(peer, [0])[0]} of {datagrams} datagrams arrived"

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for s in (self.udp4, self.udp6, self.listener):
            s.close()


def send_udp(rx: Receiver, ns: str, family: int, dst: tuple[str, int], count: int, size: int,
             sport: int = 0) -> tuple[str, int]:
    """``count`` datagrams of ``size`` bytes from a fresh socket (bound to ``sport`` if given),
    WINDOW at a time, each window waited for at the server; returns the socket's (address, port)."""
    from datapath import netns

    with netns.enter(ns):
        sock = socket.socket(family, socket.SOCK_DGRAM)
    with sock:
        if sport:
            sock.bind(("", sport))
        sock.connect(dst)
        me = sock.getsockname()[:2]
        for sent in range(0, count, WINDOW):
            for _ in range(min(WINDOW, count - sent)):
                sock.send(b"m" * size)
            rx.wait_udp(me, min(sent + WINDOW, count))
    return me


def send_tcp(ns: str, dst: tuple[str, int], nbytes: int) -> tuple[tuple[str, int], int, int]:
    """One connection that sends ``nbytes`` and closes; returns the client's address and its
    kernel's count of segments and data bytes sent (retransmissions included)."""
    from datapath import netns

    with netns.enter(ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(20)
        sock.connect(dst)
        sock.sendall(b"t" * nbytes)
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1) == b""  # the server read everything and closed; our last ACK is out
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
        assert len(info) >= TCPI_BYTES_SENT + 8, f"struct tcp_info of {len(info)} bytes has no tcpi_bytes_sent"
        segs = struct.unpack_from("I", info, TCPI_SEGS_OUT)[0]
        sent = struct.unpack_from("Q", info, TCPI_BYTES_SENT)[0]
        return sock.getsockname()[:2], segs, sent


def wait_for(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Poll ``check()`` until true (bounded: no timing assumption, only a generous limit)."""
    import time

    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_end_to_end_heavy_hitters_on_a_real_veth(topo) -> None:  # noqa: ANN001
    """The monitor at XDP on the server's end of a veth. Heavy UDP (IPv4, IPv6) and TCP flows
    plus 300 light ones from real sockets: the top-K names the heavy flows in order with
    estimates within the sketch's bound of what the senders sent, the flow table holds
    exactly what the servers received plus each frame's headers, and the histograms add up."""
    from vnfkit.instance import KernelInstance

    client, server = topo.add_ns("client"), topo.add_ns("server")
    pair = topo.add_veth(client, server, ipv6=True)
    c6, s6 = "2001:db8:0:1::1", "2001:db8:0:1::2"
    for ns, ifname, addr in ((client, pair.ifname_a, c6), (server, pair.ifname_b, s6)):
        subprocess.run(["ip", "-n", ns, "addr", "add", f"{addr}/64", "dev", ifname, "nodad"], check=True)
    for key in ("tcp_timestamps", "tcp_sack", "tcp_window_scaling"):
        topo.set_sysctl(client, f"net.ipv4.{key}", "0")

    seed = 0x1234ABCD
    rx = Receiver(server, pair.addr_b, s6)
    try:
        with KernelInstance(MONITOR, config=ctl.config(seed=seed)) as vnf:
            att = vnf.attach(server, pair.ifname_b)
            mon = ctl.Monitor(vnf.tables, seed=seed)
            udp4 = send_udp(rx, client, socket.AF_INET, (pair.addr_b, 5001), 5_000, 300)
            udp6 = send_udp(rx, client, socket.AF_INET6, (s6, 5002), 2_000, 400)
            tcp, segs, tcp_sent = send_tcp(client, (pair.addr_b, 5003), 2_000_000)
            # Light flows from ports of their own: a fresh socket's ephemeral port may repeat.
            rng = random.Random(5)
            light = {send_udp(rx, client, socket.AF_INET, (pair.addr_b, 5001), n, size, sport=20_000 + i): (n, size)
                     for i, (n, size) in enumerate((rng.randint(1, 3), rng.randint(10, 60)) for _ in range(300))}
            keys = {"udp4": ctl.flow_key(udp4[0], pair.addr_b, "udp", udp4[1], 5001),
                    "udp6": ctl.flow_key(udp6[0], s6, "udp", udp6[1], 5002),
                    "tcp": ctl.flow_key(tcp[0], pair.addr_b, "tcp", tcp[1], 5003)}

            def tcp_seen() -> bool:
                flow = {f.key: f for f in mon.flows()}.get(keys["tcp"])
                return flow is not None and flow.packets >= segs

            wait_for(tcp_seen, "the TCP flow's last segment at XDP")
            att.detach()  # nothing changes while we read

            # What the applications saw: connections, sources, bytes.
            assert rx.tcp == {tcp: 2_000_000} and tcp[0] == pair.addr_a
            assert rx.udp[udp4] == [5_000, 5_000 * 300] and udp4[0] == pair.addr_a
            assert rx.udp[udp6] == [2_000, 2_000 * 400] and udp6[0] == c6
            truth = {"udp4": (5_000, 5_000 * (300 + UDP_HDRS[4])), "udp6": (2_000, 2_000 * (400 + UDP_HDRS[6])),
                     "tcp": (segs, tcp_sent + segs * TCP_HDR + SYN_OPTIONS)}

            # The flow table: exactly the servers' bytes plus every frame's headers.
            flows = {f.key: f for f in mon.flows()}
            for name, key in keys.items():
                assert (flows[key].packets, flows[key].bytes) == truth[name], name
            for (addr, port), (n, size) in light.items():
                assert rx.udp[(addr, port)] == [n, n * size]
                f = flows[ctl.flow_key(addr, pair.addr_b, "udp", port, 5001)]
                assert (f.packets, f.bytes) == (n, n * (size + UDP_HDRS[4]))
            assert flows[keys["tcp"]].tcp_flags & 0x1B == 0x1B  # SYN, ACK, PSH and FIN seen

            # Heavy hitters, in order, within the bound of the senders' counts.
            for by, order, col in (("bytes", ["tcp", "udp4", "udp6"], 1), ("packets", ["udp4", "udp6", "tcp"], 0)):
                top = mon.top_k(3, by=by)
                assert [h.key for h in top] == [keys[n] for n in order], by
                for name, h in zip(order, top, strict=True):
                    est, bound = (h.estimate.bytes, h.estimate.bound_bytes) if col else \
                        (h.estimate.packets, h.estimate.bound_packets)
                    assert truth[name][col] <= est <= truth[name][col] + bound, (by, name, est, bound)

            # The histograms add up to the packet totals.
            counts, hist = vnf.counters(), mon.histograms()
            total = mon.totals(mon.sketch())
            ip_packets = counts["ipv4"][0] + counts["ipv6"][0]
            assert sum(c.packets for c in hist["size"].values()) == counts["rx"][0]
            assert sum(c.bytes for c in hist["size"].values()) == counts["rx"][1]
            assert sum(c.packets for c in hist["proto"].values()) == ip_packets == total.packets
            assert sum(f.packets for f in flows.values()) == ip_packets
            assert sum(f.bytes for f in flows.values()) == total.bytes == counts["ipv4"][1] + counts["ipv6"][1]
            assert hist["proto"]["udp"].packets >= 7_000 + sum(n for n, _ in light.values())
            assert hist["proto"]["tcp"].packets >= segs

            exported = json.loads(mon.export_json(k=3))
            assert [ctl.parse_flow(h["key"]) for h in exported["top"]] == [keys[n] for n in ("tcp", "udp4", "udp6")]
            assert len(exported["flows"]) == len(flows) >= 303
            mon.reset()
            assert mon.flows() == [] and mon.top_k() == [] and mon.histograms() == {"proto": {}, "size": {}, "vlan": {}}
    finally:
        rx.close()


def test_every_table_is_listed_and_sized_as_the_control_plane_reads() -> None:
    sizes = {t.name: t.max_entries for t in DESC.tables}
    assert set(sizes) == set(ctl.TABLES)
    assert sizes["sketch"] == model.SKETCH_ROWS * model.SKETCH_COLS
