"""BPF_PROG_TEST_RUN: verdicts and output bytes, timing, live frames, and run-time stats."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from datapath import netns
from datapath.attach import attach_xdp
from datapath.builtin import COUNT_SLOTS, builtin
from datapath.errors import BpfError
from datapath.kernel import XdpAction
from datapath.objects import load
from datapath.probe import probe
from datapath.stats import runtime_stats

pytestmark = pytest.mark.kernel
BPF = Path(__file__).parent / "bpf"
UDP_SLOT = COUNT_SLOTS.index("udp")


def test_verdict_and_output_bytes_match_scapy_prediction() -> None:
    pkt = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="198.18.0.1", dst="198.18.0.2") / \
        UDP(sport=1234, dport=53) / b"query"
    expected = pkt.copy()
    expected.src, expected.dst = pkt.dst, pkt.src
    with load(BPF / "swap_macs.c") as obj:
        res = obj.program().test_run(pkt)
    assert res.retval == XdpAction.TX and res.verdict == "TX"
    assert res.data == bytes(expected)


def test_frame_shorter_than_ethernet_is_refused_by_name() -> None:
    with load(BPF / "swap_macs.c") as obj:
        with pytest.raises(BpfError, match="test-run of program 'swap_macs' on a 10-byte packet"):
            obj.program().test_run(bytes(10))  # the kernel wants at least an Ethernet header


def test_repeat_gives_a_duration_and_runs_that_many_times() -> None:
    with load(builtin("xdp_count")) as obj:
        res = obj.program().test_run(Ether() / IP() / UDP(), repeat=5000)
        assert res.duration_ns > 0
        assert obj.map("counters")[UDP_SLOT]["packets"] == 5000


def _sink_counts(sink, n: int) -> int:  # noqa: ANN001
    received = 0
    for _ in range(100):  # frames cross the veth asynchronously (NAPI on the peer)
        received = int(sink.map("counters")[UDP_SLOT]["packets"])
        if received >= n:
            break
        time.sleep(0.02)
    return received


def test_live_frames_arrive_at_the_peer_or_the_probe_says_why_not(pair) -> None:  # noqa: ANN001
    """The in-kernel generator sends N frames out of the client's veth; the server's XDP
    counter (as a sink) sees exactly N. On a kernel that refuses live frames (6.18.44-fc:
    EPERM), the probe must say so, with the same reason the run gets: the benchmarks pick their
    generator by it."""
    frame = Ether(dst="02:00:00:00:00:02") / IP(src=pair.addr_a, dst=pair.addr_b) / UDP(sport=4000, dport=9, chksum=0) \
        / bytes(18)
    caps = probe()
    with load(builtin("xdp_gen")) as gen, load(builtin("xdp_count")) as sink:
        sink.map("action")[0] = int(XdpAction.DROP)
        att = attach_xdp(sink.program(), pair.ifname_b, ns=pair.ns_b)
        try:
            gen.map("cfg")[0] = {"ifindex": pair.ifindex_a, "flows": 16, "base_port": 4000}
            with netns.enter(pair.ns_a):
                if not caps.live_frames:
                    with pytest.raises(BpfError) as refused:
                        gen.program().send_live(frame, count=2000, ingress_ifindex=pair.ifindex_a, batch_size=16)
                    assert caps.errors["live_frames"] in str(refused.value)
                    assert _sink_counts(sink, 1) == 0
                    return
                gen.program().send_live(frame, count=2000, ingress_ifindex=pair.ifindex_a, batch_size=16)
            assert int(gen.map("seq")[0]) == 2000
            assert _sink_counts(sink, 2000) == 2000
        finally:
            att.detach()


@pytest.mark.parametrize("paced", [False, True], ids=["flat-out", "paced"])
def test_the_socket_generator_sends_every_frame_on_every_flow(pair, paced: bool) -> None:  # noqa: ANN001
    """perf's generator where live frames are refused (perf.traffic.SocketFrames, sendmmsg from
    C): N frames leave and the sink counts N; paced, no frame leaves before it is due, so its
    record spans at least the schedule."""
    import threading

    from perf import traffic

    frame = traffic.udp_frame("02:00:00:00:00:01", traffic.link_mac(pair.ns_b, pair.ifindex_b), pair.addr_a,
                              pair.addr_b, 4000)
    with load(builtin("xdp_count")) as sink:
        sink.map("action")[0] = int(XdpAction.DROP)
        att = attach_xdp(sink.program(), pair.ifname_b, ns=pair.ns_b)
        try:
            sender = traffic.SocketFrames(pair.ns_a, pair.ifindex_a, frame, flows=16, base_port=4000,
                                          interval_ns=100_000 if paced else 0)
            n = 200 if paced else 20000
            assert sender.send(n, threading.Event()) == n
            assert _sink_counts(sink, n) == n
            st = sender.stats
            assert st["sent"] == n and st["dropped"] == 0
            if paced:  # 200 frames 100 us apart: about 20 ms from first to last
                assert (st["last_ns"] - st["first_ns"]) >= 199 * 100_000 * 0.9
        finally:
            att.detach()


def test_runtime_stats_count_runs(pair) -> None:  # noqa: ANN001
    with load(builtin("xdp_count")) as obj:
        prog = obj.program()
        att = attach_xdp(prog, pair.ifname_b, ns=pair.ns_b)
        try:
            with runtime_stats():
                before = prog.stats()
                netns.udp_send(pair.ns_a, pair.addr_b, 9999, count=40)
                after = prog.stats()
            assert after.run_cnt - before.run_cnt >= 40
            assert after.run_time_ns > before.run_time_ns
        finally:
            att.detach()


def test_probe_reports_this_kernel() -> None:
    caps = probe()
    # The machines vnfkit targets (kernel 6.6+, veth) have all of these; the probe must find them.
    assert caps.btf and caps.bpffs and caps.xdp_native_veth and caps.xdp_generic
    assert caps.tcx and caps.af_xdp and caps.bpf_stats, caps.errors
    # Live frames: some kernels refuse them (6.18.44-fc: EPERM); then the probe names why.
    assert caps.live_frames or caps.errors.get("live_frames"), caps.errors
