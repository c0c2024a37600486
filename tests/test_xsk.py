"""The AF_XDP user-space path: the firewall's fastpath.c in a worker process, fed by a real
AF_XDP socket on a veth, judged against the firewall's Python model frame by frame."""

from __future__ import annotations

import random
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether

from datapath import netns
from datapath.errors import VnfkitError
from datapath.netns import Topology, VethPair
from datapath.verdict import Verdict
from datapath.xsk.errors import XskError, XskWorkerDied
from datapath.xsk.service import XskFunction, XskOptions
from perf.traffic import link_mac
from vnfkit.descriptor import load_descriptor
from vnfkit.executors import make_executors
from vnfkit.pyfile import import_file
from vnfkit.testing import prepare

pytestmark = pytest.mark.kernel
ROOT = Path(__file__).resolve().parent.parent
FW = ROOT / "vnfs" / "firewall"
control = import_file(FW / "control.py", "the firewall's control plane", VnfkitError)

RULES = """
allow udp from any to any port 1000-1999
deny udp from any to any port 2000-2999
allow tcp from any to any port 80 flags S/SA
deny tcp from any to any port 80
allow icmp from any to any
allow udp from any to any port 53
"""
POLICY = control.policy_config("deny")


def wait_for(what: str, done: Callable[[], bool], limit: float = 20.0) -> None:
    """Poll ``done`` until it holds; fail naming ``what`` if it never does (a hang, not a speed)."""
    deadline = time.monotonic() + limit
    while not done():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting: {what}")
        time.sleep(0.01)


@pytest.fixture
def wire(topo: Topology) -> VethPair:
    """src -- dut: the worker sits on dut's end and sends what it passes back to src."""
    return topo.add_veth(topo.add_ns("src"), topo.add_ns("dut"))


class Capture:
    """Frames arriving at src's end (not the ones src sends), kept as bytes."""

    def __init__(self, pair: VethPair) -> None:
        with netns.enter(pair.ns_a):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind((pair.ifname_a, 0))
        self.sock.settimeout(0.2)

    def take(self, want: int, limit: float = 10.0) -> list[bytes]:
        """Frames until ``want`` have come, then until the wire is quiet (no extra ones)."""
        got: list[bytes] = []
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            try:
                data, addr = self.sock.recvfrom(65536)
            except TimeoutError:
                if len(got) >= want:
                    break
                continue
            if addr[2] != socket.PACKET_OUTGOING:
                got.append(data)
        return got

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def capture(wire: VethPair) -> Iterator[Capture]:
    cap = Capture(wire)
    yield cap
    cap.close()


def mixed_frames(pair: VethPair, n: int, seed: int = 7) -> list[bytes]:
    """n distinct frames (a sequence number in each) of every kind the rules and policy tell
    apart: allowed, denied and unmatched UDP, TCP SYN and non-SYN, ICMP, IPv6, ARP, malformed."""
    rng = random.Random(seed)
    mac_a, mac_b = link_mac(pair.ns_a, pair.ifindex_a), link_mac(pair.ns_b, pair.ifindex_b)
    eth = Ether(src=mac_a, dst=mac_b)
    ip = IP(src=pair.addr_a, dst=pair.addr_b)
    out = []
    for i in range(n):
        tag = f"vk-xsk-{i:06d}".encode() + bytes(rng.randrange(0, 600))
        kind = rng.randrange(9)
        if kind == 0:
            f = eth / ip / UDP(sport=rng.randrange(1024, 65535), dport=rng.randrange(1000, 2000)) / tag
        elif kind == 1:
            f = eth / ip / UDP(sport=5000, dport=rng.randrange(2000, 3000)) / tag
        elif kind == 2:
            f = eth / ip / UDP(sport=5000, dport=rng.choice((53, 3000, 9))) / tag
        elif kind == 3:
            flags = rng.choice(("S", "SA", "A", "PA"))
            f = eth / ip / TCP(sport=rng.randrange(1024, 65535), dport=80, flags=flags) / tag
        elif kind == 4:
            f = eth / ip / ICMP(type=8, id=rng.randrange(65536), seq=i) / tag
        elif kind == 5:
            f = eth / IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=5000, dport=rng.randrange(900, 2100)) / tag
        elif kind == 6:
            f = eth / ARP(psrc=pair.addr_a, pdst=pair.addr_b, hwsrc=mac_a) / tag
        elif kind == 7:
            f = eth / IP(src=pair.addr_a, dst=pair.addr_b, ihl=4) / UDP(dport=1500) / tag  # ihl < 5
        else:
            f = eth / IP(src=pair.addr_a, dst=pair.addr_b, proto=47) / tag
        out.append(bytes(f))
    return out


def model_run(frames: list[bytes], rules: Any, policy: dict[str, Any]) -> tuple[Any, list[Any]]:
    """The firewall's model.py with the same rules and policy, on the same frames."""
    [model] = make_executors(FW, ("model",))
    prepare([model], load_descriptor(FW), policy, {}, "xsk model")
    control.apply(model.tables, rules)
    return model, [model.run(f) for f in frames]


def accounted(stats: dict[str, int]) -> int:
    """Frames the worker took that ended somewhere: sent or dropped for a counted reason."""
    return (stats["tx"] + stats["dropped_verdict"] + stats["dropped_tx_full"] + stats["dropped_unsupported"]
            + stats["dropped_chain"])


@pytest.mark.parametrize("batch,mode", [(64, "wakeup"), (1, "busy-poll"), (256, "wakeup")])
def test_firewall_in_user_space_passes_exactly_what_the_model_allows(wire: VethPair, capture: Capture, batch: int,
                                                                     mode: str) -> None:
    frames = mixed_frames(wire, 600)
    rules = control.compile_rules(RULES)
    model, results = model_run(frames, rules, POLICY)
    allowed = Counter(bytes(r.data) for r in results if r.verdict == Verdict.PASS)
    assert 0 < len(allowed) < len(frames)  # both verdicts are exercised

    with XskFunction(FW, wire.ns_b, wire.ifname_b, config=POLICY, options=XskOptions(batch=batch, mode=mode)) as fw:
        control.apply(fw.tables, rules)
        fw.start()
        assert fw.queues[0].mode == "copy"  # veth has no AF_XDP zero-copy
        view = fw.queues[0].tables["vk_counters"].per_cpu_array()  # taken once: a live view
        netns.send_frames(wire.ns_a, wire.ifname_a, frames)
        wait_for("the worker took every frame", lambda: fw.stats()["rx"] == len(frames))
        assert int(view[0][0]["packets"]) == len(frames)  # the worker's writes, seen without a copy
        got = capture.take(sum(allowed.values()))
        live = fw.counters()
        final = fw.stop()

    # Every allowed frame came back out exactly once, unchanged; nothing else did.
    assert Counter(got) == allowed
    # The VNF's counters (packets and bytes) are the model's, counter by counter.
    assert live == model.counters()
    # Every frame is accounted for, and nothing is in flight after the drain.
    assert final["rx"] == len(frames) == accounted(final)
    assert final["tx"] == sum(allowed.values()) == final["tx_completed"]
    assert final["tx_lost"] == 0 and final["dropped_tx_full"] == 0
    assert final["k_rx_dropped"] == final["k_rx_ring_full"] == 0


# ---- bad input: clear errors or counted drops, never a hang, the host left as it was --------------
def nothing_left(ns: str | None, ifname: str) -> None:
    from datapath.attach import xdp_query

    assert xdp_query(ifname, ns) is None


def test_bad_options_are_refused_by_name() -> None:
    for opts, field in ((XskOptions(batch=0), "batch"), (XskOptions(batch=257), "batch"),
                        (XskOptions(tx_size=1000), "tx_size"), (XskOptions(frame_size=3000), "frame_size"),
                        (XskOptions(mode="spin"), "mode"), (XskOptions(zerocopy="maybe"), "zerocopy")):
        with pytest.raises(XskError, match=field):
            opts.check(1)


def test_an_interface_without_native_xdp_is_refused_when_native_is_required(topo: Topology) -> None:
    ns = topo.add_ns("lo")
    with XskFunction(FW, ns, "lo", xdp_mode="native") as fw, pytest.raises(XskError, match="lo.*XDP"):
        fw.start()
    nothing_left(ns, "lo")


def test_a_missing_interface_is_named(topo: Topology) -> None:
    ns = topo.add_ns("none")
    with pytest.raises(XskError, match="nosuch0"):
        XskFunction(FW, ns, "nosuch0")


def test_a_queue_that_does_not_exist_is_refused_before_anything_is_set_up(wire: VethPair) -> None:
    with pytest.raises(XskError, match=r"has 1 RX queue\(s\) \(0\.\.0\); there is no queue 3"):
        XskFunction(FW, wire.ns_b, wire.ifname_b, queues=(0, 3))
    nothing_left(wire.ns_b, wire.ifname_b)


def test_a_umem_that_cannot_be_allocated_is_a_clear_error(wire: VethPair) -> None:
    # More than the machine's memory and swap: refused by mmap, never pinned.
    with open("/proc/sys/vm/overcommit_memory") as f:
        assert f.read().strip() != "1", "with overcommit_memory=1 this test would try to pin it all"
    meminfo = dict(line.split(":") for line in open("/proc/meminfo"))
    total = sum(int(meminfo[k].split()[0]) * 1024 for k in ("MemTotal", "SwapTotal"))
    frames = 2 * total // 4096
    opts = XskOptions(frames=frames, frame_size=4096)
    with XskFunction(FW, wire.ns_b, wire.ifname_b, options=opts) as fw:
        with pytest.raises(XskError, match=rf"UMEM of {frames} frames x 4096 B .* could not be allocated"):
            fw.start()
        assert not fw.queues[0].alive()
    nothing_left(wire.ns_b, wire.ifname_b)


def test_a_crashing_vnf_kills_only_its_worker(wire: VethPair, capture: Capture,
                                               caplog: pytest.LogCaptureFixture) -> None:
    crasher = ROOT / "tests" / "vnfs" / "crasher"
    mac_a, mac_b = link_mac(wire.ns_a, wire.ifindex_a), link_mac(wire.ns_b, wire.ifindex_b)

    def frame(dport: int, i: int) -> bytes:
        return bytes(Ether(src=mac_a, dst=mac_b) / IP(src=wire.addr_a, dst=wire.addr_b) / UDP(dport=dport)
                     / f"vk-xsk-{i:06d}".encode())

    with XskFunction(crasher, wire.ns_b, wire.ifname_b) as fn:
        fn.start()
        before = [frame(7000, i) for i in range(20)]
        netns.send_frames(wire.ns_a, wire.ifname_a, before)
        assert sorted(capture.take(len(before))) == sorted(before)

        netns.send_frames(wire.ns_a, wire.ifname_a, [frame(6666, 99)])
        wait_for("the worker to die", lambda: not fn.queues[0].alive())
        with pytest.raises(XskWorkerDied, match="queue 0 died: killed by SIGSEGV"):
            fn.check()
        wait_for("the parent to record the failure", lambda: 0 in fn.failures())
        assert "SIGSEGV" in fn.failures()[0]
        assert any("died: killed by SIGSEGV" in r.getMessage() for r in caplog.records)
        # Its counters outlive it: the poisoned frame was counted in before the crash.
        assert fn.counters()["rx"][0] == fn.counters()["udp"][0] == 21
        assert fn.stats()["tx"] == 20

        # The host side goes on: the kernel took the socket out of the XSKMAP, frames go to the stack.
        after = fn.redirect_counters()["no_socket"]
        netns.send_frames(wire.ns_a, wire.ifname_a, [frame(7000, 100 + i) for i in range(5)])
        # (>=: the stack's answers bring ARP replies back through the program too)
        wait_for("frames to reach the stack", lambda: fn.redirect_counters()["no_socket"] >= after + 5)
        fn.stop()  # stops cleanly with a dead worker
    nothing_left(wire.ns_b, wire.ifname_b)


def test_a_full_tx_ring_drops_and_counts_what_does_not_fit(wire: VethPair, capture: Capture) -> None:
    frames = [f for f in mixed_frames(wire, 1200)
              if f[12:15] == b"\x08\x00\x45" and f[23] == 17 and 1000 <= int.from_bytes(f[36:38], "big") < 2000]
    frames = frames[:100]
    assert len(frames) == 100  # all allowed: every one wants the TX ring
    opts = XskOptions(batch=64, tx_size=16)
    with XskFunction(FW, wire.ns_b, wire.ifname_b, config=POLICY, options=opts) as fw:
        control.apply(fw.tables, control.compile_rules(RULES))
        fw.start()
        with fw.paused():  # the frames queue up on the RX ring, then come in batches of 64
            netns.send_frames(wire.ns_a, wire.ifname_a, frames)
            wait_for("100 frames waiting on the RX ring", lambda: fw.stats()["rx_pending"] == len(frames))
        wait_for("the worker took every frame", lambda: fw.stats()["rx"] == len(frames))
        final = fw.stop()
        passed = fw.counters()["pass"][0]
    got = capture.take(final["tx"])
    assert passed == len(frames)  # the VNF allowed them all: what was lost, the runtime dropped
    assert final["dropped_tx_full"] > 0
    assert final["tx"] + final["dropped_tx_full"] == len(frames) == accounted(final)
    assert len(got) == final["tx"] == final["tx_completed"] and set(got) <= set(frames)


def test_zero_copy_required_on_veth_is_a_clear_error(wire: VethPair) -> None:
    with XskFunction(FW, wire.ns_b, wire.ifname_b, options=XskOptions(zerocopy="require")) as fw:
        with pytest.raises(XskError, match="queue 0 .* zero-copy mode: Operation not supported"):
            fw.start()
    nothing_left(wire.ns_b, wire.ifname_b)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_under_load_drains_and_accounts_for_every_frame(wire: VethPair, capture: Capture,
                                                                  sig: signal.Signals) -> None:
    frames = mixed_frames(wire, 3000, seed=11)
    with XskFunction(FW, wire.ns_b, wire.ifname_b, config=POLICY) as fw:
        control.apply(fw.tables, control.compile_rules(RULES))
        fw.start()
        sender = threading.Thread(target=netns.send_frames, args=(wire.ns_a, wire.ifname_a, frames))
        sender.start()
        wait_for("traffic to flow", lambda: fw.stats()["rx"] > 200)
        proc = fw.queues[0].proc
        assert proc is not None
        proc.send_signal(sig)  # mid-stream: the worker leaves the XSKMAP, drains, exits
        wait_for("the worker to exit", lambda: proc.poll() is not None)
        sender.join()
        assert proc.returncode == 0
        wait_for("the parent to notice", lambda: 0 in fw.failures())
        assert "stopped on its own" in fw.failures()[0]  # not a crash, but not asked for either
        final = fw.stop()
    # After the worker left, frames go to dut's stack, whose answers (ICMP, RST) come back too.
    sent = set(frames)
    got = [f for f in capture.take(final["tx"]) if f in sent]
    assert 0 < final["rx"] <= len(frames)
    assert final["rx"] == accounted(final)           # every frame taken ended somewhere counted
    assert final["tx"] == final["tx_completed"] and final["tx_lost"] == 0
    assert final["rx_pending"] == 0                   # nothing left behind on the RX ring
    assert len(got) == final["tx"]                    # and what was sent arrived
