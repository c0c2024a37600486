"""Traffic for rate benchmarks: test frames, senders that run on one pinned CPU, and the
windowed rate measured at the receiving device.

Why a window and a second thread: every live-frames call ends with the kernel tearing
down its page pool, which waits for an RCU grace period (24–31 ms idle on these VMs,
whatever the frame count). Timing the call from outside would charge that idle time to
the path under test, more for fast paths than for slow ones. So the sender runs on the
path CPU while this thread, on another CPU, reads the sink device's receive counter at
the edges of a window that lies wholly inside one call.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from pyroute2 import IPRoute
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from datapath import netns
from datapath.maps import Map
from datapath.objects import BpfObject, Program

FRAME_BYTES = 60  # a "64-byte frame" of RFC 2544: 60 bytes + the 4-byte FCS the kernel never sees
DST_PORT = 9  # discard
SOL_PACKET, PACKET_QDISC_BYPASS = 263, 20  # <linux/if_packet.h>
HEAD_BYTES = 42  # what xdp_gen restores on every run when asked: Ethernet + IPv4 + UDP headers


def udp_frame(src_mac: str, dst_mac: str, src_ip: str, dst_ip: str, sport: int,
              dport: int = DST_PORT, size: int = FRAME_BYTES) -> bytes:
    """An option-less IPv4/UDP frame of ``size`` bytes. The UDP checksum is zero (legal
    for IPv4) so a generator can rewrite ports without fixing it."""
    head = Ether(src=src_mac, dst=dst_mac) / IP(src=src_ip, dst=dst_ip) / UDP(sport=sport, dport=dport, chksum=0)
    return bytes(head / bytes(max(0, size - len(head))))


def link_mac(ns: str | None, ifindex: int) -> str:
    """The MAC address of an interface, so test frames are addressed to the host (PACKET_HOST)."""
    with netns.enter(ns), IPRoute() as ipr:
        return ipr.get_links(ifindex)[0].get_attr("IFLA_ADDRESS")


# ---- CPUs ------------------------------------------------------------------------------------
def split_cpus(path_cpu: int | None = None) -> tuple[int, set[int]]:
    """(CPU for the path under test, CPUs for everything else). The path gets the highest
    allowed CPU unless told; with one CPU the measuring side has to share it."""
    allowed = os.sched_getaffinity(0)
    cpu = max(allowed) if path_cpu is None else path_cpu
    if cpu not in allowed:
        raise ValueError(f"CPU {cpu} is not allowed for this process (allowed: {sorted(allowed)})")
    return cpu, (allowed - {cpu}) or allowed


@contextlib.contextmanager
def pinned(cpus: set[int]) -> Iterator[None]:
    """Pin the calling thread (sched_setaffinity(0) is per thread on Linux) and restore."""
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, saved)


# ---- senders ---------------------------------------------------------------------------------
class Sender(Protocol):
    """Sends up to ``count`` frames, earlier if ``stop`` is set; returns how many it sent."""

    name: str

    def send(self, count: int, stop: threading.Event) -> int: ...


@dataclass
class LiveFrames:
    """The in-kernel generator: ``xdp_gen`` run with live frames inside ``ns``, redirecting
    every frame out of ``ifindex``. One call cannot be stopped early (only by a signal)."""

    program: Program
    cfg: Map
    ns: str
    ifindex: int
    frame: bytes
    flows: int
    base_port: int
    batch_size: int = 64
    name: str = "xdp_gen live frames"
    interval_ns: int = 0  # pacing: one frame per interval (0: as fast as it can); see xdp_gen.c
    limit: int = 0        # frames to send at most (0: one per repetition)
    head: Map | None = None  # xdp_gen's head map: restore the headers on every run (receivers that rewrite)

    def send(self, count: int, stop: threading.Event) -> int:
        # One generator object may serve several veths: its target is set per call.
        if self.head is not None:
            self.head[0] = self.frame[:HEAD_BYTES]
        self.cfg[0] = {"ifindex": self.ifindex, "flows": self.flows, "base_port": self.base_port,
                       "interval_ns": self.interval_ns, "limit": self.limit, "rewrite_head": int(self.head is not None)}
        with netns.enter(self.ns):
            self.program.send_live(self.frame, count, self.ifindex, batch_size=self.batch_size)
        return count


@dataclass
class SocketFrames:
    """The generator where the kernel refuses live frames (``live_frames_allowed``): the same
    frames, the same flows (source ports ``base_port`` ... ``base_port + flows - 1``) and the
    same pacing and limit, sent out of ``ifindex`` in batches by sendmmsg() on an AF_PACKET
    socket that bypasses the qdisc, from C (``datapath/_sockgen_build.py``). Each frame is
    an skb through veth, which the peer's XDP copies into a page of its own: dearer per frame
    than live frames, so rates measured with it are lower, for the floor and every path alike.
    ``stats`` is its record of the last send, in xdp_gen's ``state`` fields."""

    ns: str
    ifindex: int
    frame: bytes
    flows: int
    base_port: int
    name: str = "sendmmsg AF_PACKET (live frames refused by this kernel)"
    interval_ns: int = 0
    limit: int = 0
    stats: dict[str, int] = field(default_factory=dict)

    def send(self, count: int, stop: threading.Event) -> int:
        from datapath._sockgen import ffi, lib

        if self.limit:
            count = min(count, self.limit)
        frames = []
        for i in range(max(1, self.flows)):
            f = bytearray(self.frame)
            if self.flows > 1:
                f[34:36] = ((self.base_port + i) & 0xFFFF).to_bytes(2, "big")  # UDP source port
            frames.append(bytes(f))
        buf = b"".join(frames)
        flag = ffi.new("uint32_t *")
        st = ffi.new("struct vk_sockgen_stats *")
        done = threading.Event()

        def watch() -> None:  # the C loop reads *flag: turn the Event into it
            while not done.is_set():
                if stop.wait(0.01):
                    flag[0] = 1
                    return

        with netns.enter(self.ns):
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: never receives
        watcher = threading.Thread(target=watch, daemon=True)
        with sock:
            sock.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
            sock.bind((netns.ifname(self.ns, self.ifindex), 0))
            watcher.start()
            try:
                sent = lib.vk_sockgen_send(sock.fileno(), ffi.from_buffer(buf), len(self.frame), len(frames), count,
                                           self.interval_ns, flag, st)
            finally:
                done.set()
                watcher.join()
        if sent < 0:
            raise OSError(-sent, f"sendmmsg on ifindex {self.ifindex} in {self.ns}: {os.strerror(-sent)}")
        self.stats = {k: int(getattr(st, k)) for k in ("sent", "dropped", "first_ns", "last_ns", "late")}
        return int(sent)


FrameSender = LiveFrames | SocketFrames


@functools.cache
def live_frames_allowed() -> bool:
    """Whether this kernel runs XDP live frames (some refuse them: EPERM on 6.18.44-fc)."""
    from datapath.probe import probe

    return probe().live_frames


def frame_sender(gen: BpfObject, ns: str, ifindex: int, frame: bytes, *, flows: int, base_port: int,
                 rewrite_head: bool = False) -> FrameSender:
    """The rate benchmarks' generator out of ``ifindex``: xdp_gen's live frames (``gen``: the
    loaded ``datapath/progs/xdp_gen.c``) where the kernel allows them, else ``SocketFrames``.
    ``rewrite_head``: the receiver rewrites headers (live frames must then restore them)."""
    if live_frames_allowed():
        return LiveFrames(gen.program(), gen.map("cfg"), ns, ifindex, frame, flows=flows, base_port=base_port,
                          head=gen.map("head") if rewrite_head else None)
    return SocketFrames(ns, ifindex, frame, flows=flows, base_port=base_port)


def sent_record(sender: FrameSender, state: Map) -> dict[str, int]:
    """What the last paced or limited send recorded (sent, first_ns, last_ns, late): xdp_gen's
    ``state`` map for live frames, the sender's own record for ``SocketFrames``."""
    if isinstance(sender, SocketFrames):
        return sender.stats
    st = state[0]
    return {k: int(st[k]) for k in ("sent", "first_ns", "last_ns", "late")}


@dataclass
class PacketSocket:
    """A pure-Python AF_PACKET loop, one send() per frame, cycling over ``frames``: what a
    user-space generator without batching or kernel help gets out of the same CPU."""

    ns: str
    ifname: str
    frames: list[bytes]
    name: str = "Python AF_PACKET loop"

    def send(self, count: int, stop: threading.Event) -> int:
        with netns.enter(self.ns):
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: never receives
        sent, frames, send = 0, self.frames, sock.send
        with sock:
            sock.bind((self.ifname, 0))
            while sent < count and not stop.is_set():
                for frame in frames:
                    send(frame)
                sent += len(frames)
        return sent


# ---- measuring -------------------------------------------------------------------------------
class DeviceRx:
    """The receive packet counter of an interface (rtnetlink stats64), read in-process.

    veth counts every frame that reaches its receive queue here, whether an XDP program
    drops it or the stack takes it, and never counts frames refused before its ring.
    """

    def __init__(self, ns: str | None, ifindex: int) -> None:
        self.ifindex = ifindex
        with netns.enter(ns):
            self._ipr = IPRoute()  # bound to ns for its lifetime

    def __call__(self) -> int:
        return int(self._ipr.get_links(self.ifindex)[0].get_attr("IFLA_STATS64")["rx_packets"])

    def close(self) -> None:
        self._ipr.close()


@dataclass
class Window:
    """One rate measurement: frames received per second inside the window, and what the
    whole run sent and the device received (the difference is loss on the way)."""

    mpps: float
    window_s: float
    sent: int
    received: int
    sender_s: float  # the sender's whole call, idle teardown included


class _Worker:
    """Runs ``sender.send`` in a thread pinned to the path CPU."""

    def __init__(self, sender: Sender, count: int, cpu: int) -> None:
        self.stop = threading.Event()
        self.sent = 0
        self.error: BaseException | None = None
        self.start = self.end = 0.0
        self._args = (sender, count, cpu)
        self._thread = threading.Thread(target=self._main, name=f"sender-{sender.name}", daemon=True)

    def _main(self) -> None:
        sender, count, cpu = self._args
        try:
            os.sched_setaffinity(0, {cpu})
            self.start = time.perf_counter()
            self.sent = sender.send(count, self.stop)
        except BaseException as exc:  # noqa: BLE001 - handed to the measuring thread
            self.error = exc
        finally:
            self.end = time.perf_counter()

    def run(self) -> _Worker:
        self._thread.start()
        return self

    def finish(self) -> None:
        """Stop (where the sender can), wait, and re-raise the sender's error."""
        self.stop.set()
        self._thread.join()  # a live-frames call cannot be abandoned: wait it out
        error, self.error = self.error, None  # raise it once, however often finish() is called
        if error is not None:
            raise error

    @property
    def running(self) -> bool:
        return self._thread.is_alive()


def _sample(rx: Callable[[], int]) -> tuple[float, int]:
    t0 = time.perf_counter()
    value = rx()
    return (t0 + time.perf_counter()) / 2, value


def settled(rx: Callable[[], int], quiet: float = 0.01, limit: float = 2.0) -> int:
    """The counter once it has stopped moving (frames still in the veth ring land late)."""
    last, deadline = rx(), time.monotonic() + limit
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = rx()
        if now == last:
            return now
        last = now
    return last


def _wait_for_traffic(rx: Callable[[], int], before: int, worker: _Worker, limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while rx() == before:
        if not worker.running or time.monotonic() > deadline:
            worker.finish()  # surfaces the sender's own error first, if it had one
            raise RuntimeError("no frame reached the sink: is an XDP program or GRO enabled on the peer "
                               "(veth refuses redirected frames otherwise)?")
        time.sleep(0.001)


def warm_up(sender: Sender, count: int, rx: Callable[[], int], cpu: int) -> float:
    """Send ``count`` frames and return a rate estimate in frames/s, which sizes the
    measured runs; also proves that frames arrive. The estimate comes from polling the
    receiver while frames flow, because the sender's wall time would include the idle
    teardown of a live-frames call and undershoot badly for short warm-ups."""
    before = rx()
    worker = _Worker(sender, count, cpu).run()
    try:
        _wait_for_traffic(rx, before, worker)
        first = last = _sample(rx)
        while worker.running:
            time.sleep(0.001)
            now = _sample(rx)
            if now[1] > last[1]:
                last = now
    finally:
        worker.finish()
    received = settled(rx) - before
    if last[0] - first[0] > 0.002:
        return (last[1] - first[1]) / (last[0] - first[0])
    return received / max(worker.end - worker.start, 1e-6)  # too quick to poll: a low estimate


def measure(sender: Sender, count: int, rx: Callable[[], int], cpu: int, *,
            seconds: float, lead: float) -> Window | None:
    """Run ``sender`` for up to ``count`` frames on ``cpu``; ``lead`` seconds after the
    first frame arrives, count received frames for ``seconds``. None if the sender ran
    out before the window closed (the caller retries with a larger count)."""
    before = rx()
    worker = _Worker(sender, count, cpu).run()
    try:
        _wait_for_traffic(rx, before, worker)
        time.sleep(lead)  # skip the start: page-pool set-up, cold caches
        t0, c0 = _sample(rx)
        time.sleep(seconds)
        t1, c1 = _sample(rx)
        # Frames still arriving just after the window prove it lay wholly inside the
        # sending (a live-frames call idles ~25 ms at its end while still "running").
        time.sleep(0.005)
        covered = rx() > c1
    finally:
        worker.finish()
    received = settled(rx) - before
    if not covered:
        return None
    return Window(mpps=(c1 - c0) / (t1 - t0) / 1e6, window_s=t1 - t0, sent=worker.sent, received=received,
                  sender_s=worker.end - worker.start)


def run_once(sender: Sender, count: int, rx: Callable[[], int], cpu: int) -> tuple[int, float]:
    """Run ``sender`` for ``count`` frames (repetitions) on ``cpu`` to the end; return the
    frames the receiver counted (once its counter settled) and the sender's wall time."""
    before = rx()
    worker = _Worker(sender, count, cpu).run()
    worker.finish()
    return settled(rx) - before, worker.end - worker.start
