"""The chains benchmark: what one local hop of a service function path costs.

The function is vnfkit's skeleton (``vnfkit new blocker``: one hash lookup of the IPv4 source,
nothing blocked), the same one repeated along paths of 1, 2, 4, 8 and 16 hops (16 is the most
one host takes: 2n + 1 tail calls, the kernel allows 33). Paths are built with
``chaining.local.LocalChain``: classifier -> forwarder -> function -> forwarder -> ...

1. Per-packet cost (BPF_PROG_TEST_RUN) of the classifier entry program, for 0 hops
   (classifier -> forwarder -> stack: the chain's fixed cost) and every hop count, against
   the floor (the empty ``xdp_pass``) and the function standalone (its ``vnf_xdp`` loaded by
   ``KernelInstance``, not in a chain). Paths end at the stack, so test-run returns XDP_PASS.

   A repeated test-run keeps one xdp_buff for all its repetitions, metadata included; the
   classifier sizes its metadata to exactly one ``vk_meta`` whatever it finds, so every
   repetition traverses the path (an earlier classifier grew it by 8 bytes per run and fell
   out of the path after 27). Two measurements, both checked against the hop counters:

   * ``testrun`` (hot, the main number): the classifier entry program, ``repeat=N``.
   * ``single`` (cross-check): the entry program exactly as loaded, one repetition per
     test-run call (a fresh xdp_buff each), the kernel's own duration averaged over many
     calls (the slowest 1% left out). Caches are colder and the harness costs more per
     packet, so the floor is higher; the per-hop cost should agree with the hot one.

   After every measurement each (SPI, SI) of the path must have moved by exactly the packets
   run, and the function's ``rx`` counter by packets x hops.
2. Rate received at the far end of a veth: namespaces ``gen`` and ``sink``, the in-kernel
   live-frames generator in ``gen`` (``traffic.frame_sender``: sendmmsg where the kernel
   refuses live frames), the classifier at XDP (native) on the receiving veth in
   ``sink``, one veth per hop count (its destination address selects the path) plus one for
   the floor (bare XDP_DROP). Counted at the receiver, as in the engine benchmark: the rate
   from the receiving veth's rx counter over a window inside the sending.

   How the path ends: with a function that drops. The last hop is a second instance of the
   same skeleton ("dropper") holding the generators' sources in its blocklist, so an n-hop
   path is n - 1 pass-through hops and the dropper, and every frame ends as XDP_DROP on the
   device it arrived on, exactly as the floor's do: rate minus floor is the chain and
   nothing else. Its own ``blocked`` counter is the sink's tally: every hop's (SPI, SI)
   counter must agree with it (an error otherwise), and so should the device's received
   frames (a warning otherwise, as in the engine benchmark). The other choice,
   ``end="egress"`` to a dummy veth whose peer drops, would add a redirect and a second
   device's receive path to every hop count, a fixed cost that is not the chain's; a second
   place to lose frames (a full ring on the dummy veth) after the chain did its work; and
   the count at a device the chain does not run on. The price of the dropper: it is one of
   the 16 functions the tail-call limit allows, and unlike the others it does not go back
   to the forwarder; the per-hop cost (the slope) is unaffected, since adding a hop adds a
   pass-through function either way.

3. One inter-host NSH hop, in the kernel's CPU time (single-shot test-runs only: both sides
   rewrite the frame's headers, and a repeated test-run would hand the rewritten frame to the
   next repetition). ``nsh_send``: the classifier entry on a frame whose path runs the function
   once and then leaves in NSH over Ethernet for another host (the forwarder pushes NSH and
   redirects: XDP_REDIRECT, not carried out by test-run); ``nsh_receive``: ``nsh_rx`` on that
   NSH frame, which checks and strips NSH and runs the function once to the stack. The extra
   CPU of splitting two hops over two hosts is ``nsh_send + nsh_receive - 2 hops`` (each
   over the floor): push and strip NSH, a second entry, minus the local tail call between the
   functions. The veth transit and the second host's receive path are not in it; the live rate
   of a chain across two hosts is in ``vnfkit bench`` (chain_2hops_2hosts).

Every number is a median over runs with min and max; scenarios are interleaved run by run
(rotating order) and ratios and per-hop fits are taken per run. The per-hop cost is the
slope of a least-squares line through (hops, ns/packet) for 1..16 hops, and per step
(n -> 2n) the difference divided by the hops added; for rates the same on 1/rate, the
path CPU's nanoseconds per received frame.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from rich.table import Table

from chaining.local import FIRST_SI, Hop, LocalChain
from datapath import netns
from datapath.builtin import builtin
from datapath.errors import BpfError
from datapath.kernel import XdpAction
from datapath.libbpf import ffi, lib
from datapath.objects import Program, load
from perf import report, sinks, traffic
from perf.engine_report import console as make_console
from vnfkit.instance import KernelInstance

HOPS = (1, 2, 4, 8, 16)
TESTRUN_HOPS = (0, *HOPS)  # 0: classifier -> forwarder -> stack, what every path pays once
STEPS = ((0, 1), (1, 2), (2, 4), (4, 8), (8, 16))
FUNCTION, DROPPER = "blocker", "dropper"
TESTRUN_SPI, RATE_SPI = 100, 200  # SPI = base + hops
NSH_SPI = 150
PEER_MAC = "02:00:00:00:00:99"  # the other host's underlay MAC (test-run transmits nothing)
TESTRUN_SRC = "198.18.0.1"
TESTRUN_DST = ipaddress.IPv4Address("198.19.255.0")  # path n's frames go to TESTRUN_DST + n
NSH_SEND_DST = TESTRUN_DST + 100
FLOWS, BASE_PORT = 64, 4000
COUNT_MARGIN = 1.15  # frames budgeted per rate run over what the window needs at the expected rate
PASS = int(XdpAction.PASS)


@dataclass(frozen=True)
class Profile:
    """How long to measure: test-run repetitions per hot run, test-run calls per single-shot
    run, and for rates the counting window and the time skipped after the first frame."""

    name: str
    repeat: int
    calls: int
    seconds: float
    lead: float
    warmup_frames: int


PROFILES = {
    "full": Profile("full", repeat=200_000, calls=20_000, seconds=0.8, lead=0.1, warmup_frames=1 << 18),
    "quick": Profile("quick", repeat=50_000, calls=4_000, seconds=0.12, lead=0.03, warmup_frames=1 << 16),
    # Hidden, for the CI smoke test: proves the whole pipeline works, numbers mean little.
    "smoke": Profile("smoke", repeat=2_000, calls=200, seconds=0.02, lead=0.01, warmup_frames=1 << 14),
}


def _rotated(items: list[Any], i: int) -> list[Any]:
    k = i % len(items)
    return items[k:] + items[:k]


@contextlib.contextmanager
def trivial_function() -> Iterator[Path]:
    """``vnfkit new blocker`` in a temporary folder, removed afterwards: the trivial function."""
    with tempfile.TemporaryDirectory(prefix="vnfkit-chains-") as tmp:
        # The CLI, as a developer would type it: the benchmark measures what `new` gives them.
        subprocess.run([sys.executable, "-m", "vnfkit.cli", "new", FUNCTION], cwd=tmp, check=True,
                       capture_output=True, timeout=60)
        yield Path(tmp) / FUNCTION


def describe(route: list[Hop], note: str = "") -> str:
    """A path as ``SPI 104: SI 255–252 blocker ×4 → SI 251 <stack>`` (runs of one function folded)."""
    parts: list[str] = []
    i = 0
    while i < len(route):
        j = i
        while j + 1 < len(route) and route[j + 1].function == route[i].function:
            j += 1
        si = f"SI {route[i].si}" if i == j else f"SI {route[i].si}–{route[j].si}"
        count = f" ×{j - i + 1}" if j > i else ""
        parts.append(f"{si} {route[i].function}{count}")
        i = j + 1
    return f"SPI {route[0].spi}: classifier → " + " → ".join(parts) + note


def _hop_counts(chain: LocalChain, route: list[Hop]) -> list[int]:
    stats = chain.hop_stats()
    return [stats.get((h.spi, h.si), 0) for h in route]


# ---- per-packet cost -----------------------------------------------------------------------------
class SingleShot:
    """Test-runs of one repetition each, in a tight loop: every call gets a fresh xdp_buff.
    The options are built once; only the kernel's own ``duration`` is kept (the syscall and
    Python around it are not the program's cost)."""

    def __init__(self, prog: Program, frame: bytes, expect: frozenset[int] = frozenset({PASS}),
                 ifindex: int | None = None) -> None:
        self.prog, self.expect = prog, expect
        self._data = bytes(frame)  # kept alive: the options point into it
        self._opts = ffi.new("struct bpf_test_run_opts *")
        self._opts.sz = ffi.sizeof("struct bpf_test_run_opts")
        self._opts.data_in = ffi.from_buffer(self._data)
        self._opts.data_size_in = len(self._data)
        self._opts.repeat = 1
        if ifindex is not None:  # a program that reads ctx->ingress_ifindex (the kernel checks data_end)
            self._ctx = ffi.new("struct xdp_md *", {"ingress_ifindex": ifindex, "data_end": len(self._data)})
            self._opts.ctx_in = self._ctx
            self._opts.ctx_size_in = ffi.sizeof("struct xdp_md")

    def run(self, calls: int) -> dict[str, float]:
        """The kernel-measured ns of ``calls`` calls, each returning one of ``expect`` or this raises.

        One call's duration ticks in steps of about 10 ns on these VMs, so a median would be
        quantised to the tick: ``ns`` is the mean, whose rounding averages out, without the
        slowest 1% of calls (an interrupt inside one call would add microseconds to it).
        The plain mean and the median are kept beside it."""
        run, fd, opts, expect = lib.bpf_prog_test_run_opts, self.prog.fd, self._opts, self.expect
        durations = np.empty(calls, dtype=np.uint32)
        wrong = 0
        for i in range(calls):
            ret = run(fd, opts)
            if ret < 0:
                raise BpfError(f"test-run of program '{self.prog.name}'", -ret)
            durations[i] = opts.duration
            wrong += opts.retval not in expect
        if wrong:
            raise RuntimeError(f"{self.prog.name}: {wrong} of {calls} single-shot runs did not return "
                               f"{'/'.join(XdpAction(e).name for e in sorted(expect))}")
        durations.sort()
        kept = durations[:max(1, calls - calls // 100)]
        return {"ns": float(kept.mean()), "mean_ns": float(durations.mean()), "median_ns": float(np.median(durations))}


@dataclass
class TestrunCase:
    """One measured program and frame, with how to prove its packets took the path named."""

    name: str
    prog: Program
    frame: bytes
    snapshot: Callable[[], list[int]]  # counters that must move
    expected: Callable[[int], list[int]]  # ... by this much for k packets
    expect: frozenset[int] = frozenset({PASS})  # the verdicts it may return
    ifindex: int | None = None  # ctx->ingress_ifindex, for a program that reads it


def _testrun_cases(chain: LocalChain, fn: KernelInstance, solo: KernelInstance, floor: Program,
                   hot: Program, stack: contextlib.ExitStack) -> tuple[list[TestrunCase], list[TestrunCase],
                                                                     dict[int, list[Hop]]]:
    """Install the test-run paths; return the hot cases, the single-shot cases and the routes."""
    routes: dict[int, list[Hop]] = {}
    frame0 = traffic.udp_frame("02:00:00:00:00:01", "02:00:00:00:00:02", TESTRUN_SRC, str(TESTRUN_DST), BASE_PORT)

    def fn_rx() -> int:
        return fn.counters()["rx"][0]

    def path_case(n: int, prog: Program, kind: str) -> TestrunCase:
        route = routes[n]
        dst = str(TESTRUN_DST + n)
        frame = traffic.udp_frame("02:00:00:00:00:01", "02:00:00:00:00:02", TESTRUN_SRC, dst, BASE_PORT)
        # Every (SPI, SI) of the path, its end included, once per packet; the function n times.
        return TestrunCase(f"{kind}_path_{n}", prog, frame, lambda: [*_hop_counts(chain, route), fn_rx()],
                           lambda k: [k] * len(route) + [k * n])

    def solo_case(kind: str) -> TestrunCase:
        return TestrunCase(f"{kind}_standalone", solo.obj.program("vnf_xdp"), frame0,
                           lambda: [solo.counters()["rx"][0], solo.counters()["allowed"][0]], lambda k: [k, k])

    def floor_case(kind: str) -> TestrunCase:
        return TestrunCase(f"{kind}_floor", floor, frame0, list, lambda k: [])

    for n in TESTRUN_HOPS:
        spi = TESTRUN_SPI + n
        routes[n] = chain.add_path(spi, [FUNCTION] * n, end="stack")
        chain.classify(f"{TESTRUN_DST + n}/32", spi)
    entry = chain.classifier.program("classifier")
    hot_cases = [floor_case("testrun"), solo_case("testrun"), *(path_case(n, hot, "testrun") for n in TESTRUN_HOPS)]
    single_cases = [floor_case("single"), solo_case("single"), *(path_case(n, entry, "single") for n in TESTRUN_HOPS),
                    *_nsh_cases(chain, fn_rx, stack)]
    return hot_cases, single_cases, routes


def _nsh_cases(chain: LocalChain, fn_rx: Callable[[], int], stack: contextlib.ExitStack) -> list[TestrunCase]:
    """The two sides of an inter-host hop (see the module doc), on the loopback device: test-run
    needs a real ingress device for nsh_rx and a real egress for the forwarder's redirect, and
    neither sends anything."""
    from chaining.local import PROGS, RemoteHop

    lo = netns.ifindex(None, "lo")
    send = chain.add_path(NSH_SPI, [FUNCTION], end="remote", remote=RemoteHop(None, "lo", PEER_MAC))
    chain.classify(f"{NSH_SEND_DST}/32", NSH_SPI)
    inner = traffic.udp_frame("02:00:00:00:00:01", "02:00:00:00:00:02", TESTRUN_SRC, str(NSH_SEND_DST), BASE_PORT)
    out = chain.classifier.program("classifier").test_run(inner)
    if out.verdict != "REDIRECT":
        raise RuntimeError(f"nsh_send: the forwarder returned {out.verdict}, expected REDIRECT")
    # The receiving host's segment, here too: the same SPI, one SI further down (a segment's
    # range may not touch another's on one host), and the frame the forwarder sent with its SI
    # byte set to it: the frame nsh_rx gets is the one a peer would have received.
    receive = chain.add_path(NSH_SPI, [FUNCTION], end="stack", first_si=FIRST_SI - 2)
    sent = bytearray(out.data)
    if sent[12:14] != b"\x89\x4f" or int.from_bytes(sent[18:21], "big") != NSH_SPI:
        raise RuntimeError(f"nsh_send: the forwarder sent no NSH for SPI {NSH_SPI}: {bytes(sent[:24]).hex()}")
    sent[21] = FIRST_SI - 2  # SI: the low byte of the service path header, after 4 bytes of NSH
    rx = load(PROGS / "nsh_rx.c", reuse_maps=chain.shared_maps)
    stack.enter_context(rx)
    rx.map("rx_ifmac").update(np.uint32(lo).tobytes(), bytes(6))
    return [
        TestrunCase("single_nsh_send", chain.classifier.program("classifier"), inner,
                    lambda: [*_hop_counts(chain, send), fn_rx()], lambda k: [k] * len(send) + [k],
                    frozenset({int(XdpAction.REDIRECT)})),
        TestrunCase("single_nsh_receive", rx.program("nsh_rx"), bytes(sent),
                    lambda: [*_hop_counts(chain, receive), fn_rx()], lambda k: [k] * len(receive) + [k],
                    ifindex=lo),
    ]


def _checked(case: TestrunCase, packets: int, measure: Callable[[], dict[str, float]]) -> dict[str, float]:
    """Run ``measure`` and prove its ``packets`` took the case's path (or raise)."""
    before = case.snapshot()
    value = measure()
    moved = [a - b for a, b in zip(case.snapshot(), before, strict=True)]
    if moved != case.expected(packets):
        raise RuntimeError(f"{case.name}: counters moved by {moved} for {packets} packets, expected "
                           f"{case.expected(packets)}: the number would not belong to the path it names")
    return value


def measure_testrun(profile: Profile, runs: int, folder: Path, log: Callable[[str], object] = print) -> tuple[
        dict[str, list[dict[str, float]]], dict[str, Any]]:
    """ns/packet of the floor, the function standalone and every path, hot (repeat) and
    single-shot, ``runs`` interleaved runs each (on the calling thread's CPU)."""
    with contextlib.ExitStack() as stack:
        chain = stack.enter_context(LocalChain())
        fn = chain.load(FUNCTION, folder)
        solo = stack.enter_context(KernelInstance(folder))
        floor = stack.enter_context(load(builtin("xdp_pass")))
        entry = chain.classifier.program("classifier")
        hot, single, routes = _testrun_cases(chain, fn, solo, floor.program(), entry, stack)
        # A repeated test-run of the entry must stay on the path (reported in the JSON).
        before = chain.counters()
        probe = entry.test_run(hot[-1].frame, repeat=1000)
        after = chain.counters()
        entry_repeat = {"repeat": 1000, "verdict": probe.verdict, "ns": probe.duration_ns,
                        **{k: after[k] - before[k] for k in ("cls_matched", "cls_no_room", "sff_delivered")}}

        singles = {c.name: SingleShot(c.prog, c.frame, c.expect, c.ifindex) for c in single}
        cases = {c.name: c for c in (*hot, *single)}

        def one(name: str, scale: int = 1) -> dict[str, float]:
            case = cases[name]
            if name in singles:
                calls = max(1, profile.calls // scale)
                return _checked(case, calls, lambda: singles[name].run(calls))
            repeat = max(2, profile.repeat // scale)

            def hot_run() -> dict[str, float]:
                res = case.prog.test_run(case.frame, repeat=repeat)
                if res.verdict != "PASS":
                    raise RuntimeError(f"{name}: {res.verdict} on the benchmark frame, expected PASS")
                return {"ns": float(res.duration_ns)}  # the kernel's average over the repetitions
            return _checked(case, repeat, hot_run)

        for name in cases:  # untimed warm-up: page in code, maps and the rotating order's first pass
            one(name, scale=10)
        out: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
        for i in range(runs):
            for name in _rotated(list(cases), i):
                out[name].append(one(name))
            log(f"test-run {i + 1}/{runs}: floor {out['testrun_floor'][-1]['ns']:.0f} ns, paths "
                + " / ".join(f"{out[f'testrun_path_{n}'][-1]['ns']:.0f}" for n in TESTRUN_HOPS)
                + f" ns at {' / '.join(map(str, TESTRUN_HOPS))} hops")
        if chain.counters()["cls_no_room"] != entry_repeat["cls_no_room"]:
            raise RuntimeError("the classifier ran out of metadata room during a measurement")
        setup = {"paths": {n: describe(r) for n, r in routes.items()},
                 "frames": {n: {"src": TESTRUN_SRC, "dst": str(TESTRUN_DST + n)} for n in TESTRUN_HOPS},
                 "entry_repeated_as_loaded": entry_repeat,
                 "chain_counters": chain.counters()}
    return out, setup


# ---- rate ----------------------------------------------------------------------------------------
@dataclass
class RateCase:
    """A sender into one veth and what proves where its frames went."""

    name: str
    hops: int  # 0: the floor
    sender: traffic.FrameSender
    rx: traffic.DeviceRx
    count: Callable[[], int]  # frames the receiving end's last program dropped
    hop_counts: Callable[[], list[int]]  # per (SPI, SI) of the path; [] for the floor
    route: list[Hop]
    estimate: float = 0.0  # frames/s, sizes the next run's frame budget


def _rate_cases(topo: netns.Topology, stack: contextlib.ExitStack, folder: Path) -> tuple[
        list[RateCase], dict[str, Any]]:
    gen_ns, sink_ns = topo.add_ns("gen"), topo.add_ns("sink")
    names = ["floor", *(f"path_{n}" for n in HOPS)]
    pairs = {name: topo.add_veth(gen_ns, sink_ns) for name in names}
    gen = stack.enter_context(load(builtin("xdp_gen")))
    chain = stack.enter_context(LocalChain())
    chain.load(FUNCTION, folder)
    dropper = chain.load(DROPPER, folder)

    def case(name: str, hops: int, count: Callable[[], int], route: list[Hop]) -> RateCase:
        pair = pairs[name]
        frame = traffic.udp_frame(traffic.link_mac(pair.ns_a, pair.ifindex_a),
                                  traffic.link_mac(pair.ns_b, pair.ifindex_b), pair.addr_a, pair.addr_b, BASE_PORT)
        sender = traffic.frame_sender(gen, pair.ns_a, pair.ifindex_a, frame, flows=FLOWS, base_port=BASE_PORT)
        rx = stack.enter_context(contextlib.closing(traffic.DeviceRx(pair.ns_b, pair.ifindex_b)))
        return RateCase(name, hops, sender, rx, count, lambda: _hop_counts(chain, route), route)

    floor = sinks.xdp_drop_floor(stack, pairs["floor"])
    cases = [case("floor", 0, floor.count, [])]
    blocklist = dropper.tables["blocklist"]
    for n in HOPS:
        pair = pairs[f"path_{n}"]
        blocklist[ipaddress.ip_address(pair.addr_a).packed] = 1  # the dropper drops this generator
        route = chain.add_path(RATE_SPI + n, [FUNCTION] * (n - 1) + [DROPPER], end="stack")
        chain.classify(f"{pair.addr_b}/32", RATE_SPI + n)
        chain.attach(pair.ns_b, pair.ifname_b, mode="native")
        # The path's last hop is the dropper: its SI never reaches the end-of-path entry.
        cases.append(case(f"path_{n}", n, lambda: dropper.counters()["blocked"][0], route[:-1]))
    setup = {"namespaces": [gen_ns, sink_ns], "veths": {k: asdict(v) for k, v in pairs.items()},
             "paths": {c.hops: describe(c.route, " (drops)") for c in cases if c.hops},
             "floor": floor.description, "floor_counted_by": floor.counted_by,
             "chain_counted_by": "the dropper's 'blocked' counter; every hop's (SPI, SI) counter must agree"}
    return cases, setup


def _rate_run(c: RateCase, profile: Profile, cpu: int) -> dict[str, float]:
    budget = int(c.estimate * (profile.seconds + 2 * profile.lead) * COUNT_MARGIN) + 4096
    for attempt in range(1, 6):
        counted_before, hops_before = c.count(), c.hop_counts()
        window = traffic.measure(c.sender, budget, c.rx, cpu, seconds=profile.seconds, lead=profile.lead)
        if window is not None:
            c.estimate = window.mpps * 1e6
            counted = c.count() - counted_before
            moved = [a - b for a, b in zip(c.hop_counts(), hops_before, strict=True)]
            if any(m != counted for m in moved):
                raise RuntimeError(f"{c.name}: hop counters moved by {moved} while the dropper dropped {counted}: "
                                   "frames left the path before its end")
            return {**asdict(window), "sink_counted": counted, "lost": window.sent - window.received,
                    "attempts": attempt}
        budget *= 2  # the sender ran dry inside the window: the estimate was too low
    raise RuntimeError(f"{c.name}: the sender never covered a {profile.seconds} s window")


def measure_rates(profile: Profile, runs: int, cpu: int, folder: Path,
                  log: Callable[[str], object] = print) -> tuple[dict[str, list[dict[str, float]]], dict[str, Any]]:
    """Mpps received at the floor and at every path, ``runs`` interleaved runs each."""
    with netns.Topology() as topo, contextlib.ExitStack() as stack:
        cases, setup = _rate_cases(topo, stack, folder)
        for c in cases:
            c.estimate = traffic.warm_up(c.sender, profile.warmup_frames, c.rx, cpu)
        out: dict[str, list[dict[str, float]]] = {f"rate_{c.name}": [] for c in cases}
        for i in range(runs):
            for c in _rotated(cases, i):
                out[f"rate_{c.name}"].append(_rate_run(c, profile, cpu))
            log(f"rate {i + 1}/{runs}: " + ", ".join(f"{n.removeprefix('rate_')} {r[-1]['mpps']:.3f}"
                                                    for n, r in out.items()) + " Mpps")
    return out, setup


# ---- the report ------------------------------------------------------------------------------------
def _fit(hops: tuple[int, ...], values: list[float]) -> tuple[float, float]:
    slope, intercept = np.polyfit(np.array(hops, dtype=float), np.array(values, dtype=float), 1)
    return float(slope), float(intercept)


def _per_hop(series: dict[int, list[float]], steps: tuple[tuple[int, int], ...]) -> dict[str, Any]:
    """Per run: the least-squares slope over HOPS and the cost of each step per hop added."""
    runs = len(series[HOPS[0]])
    fits = [_fit(HOPS, [series[n][i] for n in HOPS]) for i in range(runs)]
    med = [float(np.median(series[n])) for n in HOPS]
    slope, intercept = _fit(HOPS, med)
    pred = slope * np.array(HOPS) + intercept
    resid = float(np.sum((np.array(med) - pred) ** 2))
    total = float(np.sum((np.array(med) - np.mean(med)) ** 2))
    return {"slope_ns_per_hop": report.summary([f[0] for f in fits]),
            "intercept_ns": report.summary([f[1] for f in fits]),
            "r2_of_medians": 1 - resid / total if total else float("nan"),
            "steps_ns_per_hop": {f"{a}->{b}": report.summary([(series[b][i] - series[a][i]) / (b - a)
                                                              for i in range(runs)])
                                 for a, b in steps if a in series and b in series}}


def document(params: dict[str, Any], testrun: dict[str, list[dict[str, float]]],
             rates: dict[str, list[dict[str, float]]], setup: dict[str, Any], wall_s: float) -> dict[str, Any]:
    """The whole result as a JSON-ready dict: per-run values with median/min/max and ratios to
    the floor of the same kind, and the per-hop costs."""
    scenarios: dict[str, Any] = {}
    for name, runs in testrun.items():
        kind = name.split("_", 1)[0]
        ns = [r["ns"] for r in runs]
        floor = [r["ns"] for r in testrun[f"{kind}_floor"]]
        scenarios[name] = {"kind": kind, "unit": "ns/packet", **report.summary(ns),
                           "over_floor": report.summary(report.paired(ns, floor)),
                           "minus_floor_ns": report.summary(report.paired(ns, floor, "diff"))}
    floor_mpps = [r["mpps"] for r in rates["rate_floor"]]
    for name, runs in rates.items():
        mpps = [r["mpps"] for r in runs]
        ns = [1e3 / m for m in mpps]
        scenarios[name] = {"kind": "rate", "unit": "Mpps", **report.summary(mpps),
                           "over_floor": report.summary(report.paired(mpps, floor_mpps)),
                           "ns_per_frame": report.summary(ns), "runs": runs}
    derived: dict[str, Any] = {}
    for kind in ("testrun", "single"):
        series = {n: [r["ns"] for r in testrun[f"{kind}_path_{n}"]] for n in TESTRUN_HOPS}
        per_hop = _per_hop(series, STEPS)
        solo = report.paired([r["ns"] for r in testrun[f"{kind}_standalone"]],
                             [r["ns"] for r in testrun[f"{kind}_floor"]], "diff")
        fits = per_hop["slope_ns_per_hop"]["values"]
        # What a hop costs beyond the function's own work: forwarder lookup, hop counter, tail calls.
        per_hop["forwarder_share_ns_per_hop"] = report.summary(report.paired(fits, solo, "diff"))
        per_hop["standalone_minus_floor_ns"] = report.summary(solo)
        derived[kind] = per_hop
    single = {k: [r["ns"] for r in v] for k, v in testrun.items() if k.startswith("single_")}
    # Two hops over two hosts (send: one function then NSH out; receive: NSH in then one
    # function) against the same two hops in one host, each over the floor (one harness each).
    extra = [s + r - two - f for s, r, two, f in zip(single["single_nsh_send"], single["single_nsh_receive"],
                                                      single["single_path_2"], single["single_floor"], strict=True)]
    derived["nsh"] = {
        "send_minus_path_1_ns": report.summary(report.paired(single["single_nsh_send"], single["single_path_1"],
                                                             "diff")),
        "receive_minus_path_1_ns": report.summary(report.paired(single["single_nsh_receive"],
                                                                single["single_path_1"], "diff")),
        "inter_host_hop_extra_ns": report.summary(extra),
        "local_hop_ns": derived["single"]["slope_ns_per_hop"],
    }
    rate_series = {n: [1e3 / r["mpps"] for r in rates[f"rate_path_{n}"]] for n in HOPS}
    derived["rate"] = _per_hop(rate_series, STEPS[1:])
    return {"benchmark": "chains", "schema": 1, "timestamp": report.utc_stamp(), "wall_s": round(wall_s, 1),
            "machine": report.machine(), "versions": report.versions(), "parameters": params, "setup": setup,
            "scenarios": scenarios, "derived": derived, "warnings": _warnings(rates)}


def _warnings(rates: dict[str, list[dict[str, float]]]) -> list[str]:
    out = []
    for name, runs in rates.items():
        sent, lost = sum(r["sent"] for r in runs), sum(r["lost"] for r in runs)
        if lost:
            out.append(f"{name}: {lost:,} of {sent:,} frames sent never reached the receiving veth")
        for i, r in enumerate(runs):
            if r["sink_counted"] != r["received"]:
                out.append(f"{name} run {i + 1}: dropped {r['sink_counted']:,} frames, "
                           f"the device received {r['received']:,}")
    return out


def _ns(s: dict[str, Any]) -> str:
    return f"{s['median']:.0f} ({s['min']:.0f}–{s['max']:.0f})"


def print_tables(con: Any, doc: dict[str, Any]) -> None:
    """The paths, one table of every scenario side by side, and one of the per-hop costs."""
    sc, d, p, setup = doc["scenarios"], doc["derived"], doc["parameters"], doc["setup"]
    con.print("[bold]paths[/] (test-run, end at the stack):")
    for n in TESTRUN_HOPS:
        con.print(f"  {n:>2} hops  {setup['testrun']['paths'][n]}")
    con.print("[bold]paths[/] (rate, the last function drops):")
    for n in HOPS:
        con.print(f"  {n:>2} hops  {setup['rate']['paths'][n]}")

    prof = p["profile"]
    t = Table(title="Service function path in one host: cost by hop count",
              caption=f"{p['frame_bytes']} B UDP/IPv4 frame; median (min–max) of {p['runs']} runs on CPU "
                      f"{p['path_cpu']}. Floor: xdp_pass (test-run), bare XDP_DROP (rate); '{FUNCTION} alone': its "
                      f"vnf_xdp outside any chain. Hot: test-run repeat {prof['repeat']:,} of the classifier "
                      f"entry; single-shot: mean of {prof['calls']:,} one-repetition test-runs "
                      f"(slowest 1% out) of the entry as loaded; rate: {prof['seconds']} s window at the receiving "
                      "veth, ns/frame = 1/rate; generator: "
                      f"{doc.get('machine', {}).get('rate_generator', 'xdp_gen live frames')}")
    for col in ("scenario", "hot ns/pkt", "× floor", "single-shot ns/pkt", "× floor", "rate Mpps",
                "× floor", "ns/frame", "lost"):
        t.add_column(col, justify="left" if col == "scenario" else "right")
    rows = [("floor", "floor"), ("standalone", f"{FUNCTION} alone"),
            *((f"path_{n}", f"{n} hop{'s' if n != 1 else ''}") for n in TESTRUN_HOPS),
            ("nsh_send", "1 hop, then NSH out"), ("nsh_receive", "NSH in, then 1 hop")]
    for key, label in rows:
        cells = []
        for kind in ("testrun", "single"):
            s = sc.get(f"{kind}_{key}")
            cells += [_ns(s), "1.00×" if key == "floor" else f"{s['over_floor']['median']:.2f}×"] if s else ["—", "—"]
        r = sc.get(f"rate_{key}")
        if r:
            sent, lost = sum(x["sent"] for x in r["runs"]), sum(x["lost"] for x in r["runs"])
            cells += [f"{r['median']:.3f} ({r['min']:.3f}–{r['max']:.3f})",
                      "1.00×" if key == "floor" else f"{r['over_floor']['median']:.2f}×",
                      f"{r['ns_per_frame']['median']:.0f}", f"{100 * lost / sent:.2f}%" if sent else "—"]
        else:
            cells += ["—"] * 4
        t.add_row(label, *cells)
    con.print(t)

    t = Table(title="One local hop (classifier → forwarder → function → forwarder), ns per hop added",
              caption="slope: least squares over 1, 2, 4, 8, 16 hops, fitted per run; steps: (ns(b) − ns(a)) / "
                      "(b − a) per run; rate: on 1/rate, the path CPU's ns per received frame")
    for col in ("measure", "slope", *(f"{a}→{b}" for a, b in STEPS), "R² (medians)"):
        t.add_column(col, justify="left" if col == "measure" else "right")
    labels = {"testrun": "test-run (hot)", "single": "test-run single-shot", "rate": "live rate (1/Mpps)"}
    for kind, label in labels.items():
        dk = d[kind]
        steps = [_ns(dk["steps_ns_per_hop"][f"{a}->{b}"]) if f"{a}->{b}" in dk["steps_ns_per_hop"] else "—"
                 for a, b in STEPS]
        t.add_row(label, _ns(dk["slope_ns_per_hop"]), *steps, f"{dk['r2_of_medians']:.4f}")
    con.print(t)
    for kind in ("testrun", "single"):
        dk = d[kind]
        con.print(f"{labels[kind]}: {FUNCTION} standalone costs {_ns(dk['standalone_minus_floor_ns'])} ns over the "
                  f"floor; the rest of a hop (forwarder, hop counter, two tail calls) "
                  f"{_ns(dk['forwarder_share_ns_per_hop'])} ns")
    nsh = d["nsh"]
    con.print(f"one inter-host NSH hop (single-shot): sending costs {_ns(nsh['send_minus_path_1_ns'])} ns over the "
              f"same hop ending at the stack (push NSH, redirect), receiving {_ns(nsh['receive_minus_path_1_ns'])} ns "
              f"over the classifier's entry (check and strip NSH); two hops across two hosts cost "
              f"{_ns(nsh['inter_host_hop_extra_ns'])} ns more CPU than in one host, whose local hop costs "
              f"{_ns(nsh['local_hop_ns'])} ns (veth transit and the second host's receive path not included: "
              "see vnfkit bench's chain across two hosts)")
    er = setup["testrun"]["entry_repeated_as_loaded"]
    con.print(f"check: test-run of the entry with repeat {er['repeat']} went down the path "
              f"{er['cls_matched']} times and took the no-room exit {er['cls_no_room']} times")
    con.print("ratios are medians of per-run ratios (runs interleaved), so their range is not the ratio of ranges")
    for w in doc["warnings"]:
        con.print(f"[yellow]warning:[/] {w}")


FLOOR, OURS, CROSS = "#9a9a9a", "#4c72b0", "#55a868"


def _line(ax: Any, xs: list[int], stats: list[dict[str, Any]], label: str, color: str, marker: str = "o") -> None:
    med = [s["median"] for s in stats]
    err = [[m - s["min"] for m, s in zip(med, stats, strict=True)],
           [s["max"] - m for m, s in zip(med, stats, strict=True)]]
    ax.errorbar(xs, med, yerr=err, marker=marker, capsize=3, color=color, label=label)


def plot(doc: dict[str, Any], path: Path) -> Path:
    """ns/packet vs hop count (test-run, hot and single-shot, floors and the standalone function
    as lines) and Mpps vs hop count (floor as a line)."""
    sc, d = doc["scenarios"], doc["derived"]
    fig = Figure(figsize=(12, 5.2))
    ax1, ax2 = fig.subplots(1, 2)
    xs = list(TESTRUN_HOPS)
    for kind, color, label in (("testrun", OURS, "test-run, hot (repeat)"),
                               ("single", CROSS, "test-run, single-shot")):
        slope = d[kind]["slope_ns_per_hop"]["median"]
        _line(ax1, xs, [sc[f"{kind}_path_{n}"] for n in xs], f"{label}: {slope:.0f} ns/hop", color)
        style = "--" if kind == "testrun" else ":"
        ax1.axhline(sc[f"{kind}_floor"]["median"], color=FLOOR, linestyle=style,
                    label=f"floor xdp_pass ({'hot' if kind == 'testrun' else 'single-shot'}) "
                          f"{sc[f'{kind}_floor']['median']:.0f} ns")
        ax1.axhline(sc[f"{kind}_standalone"]["median"], color=color, linestyle=style, alpha=0.5,
                    label=f"{FUNCTION} standalone ({'hot' if kind == 'testrun' else 'single-shot'}) "
                          f"{sc[f'{kind}_standalone']['median']:.0f} ns")
    ax1.set_xticks(xs)
    ax1.set_xlabel("local hops in the path")
    ax1.set_ylabel("ns/packet")
    ax1.set_title("Per-packet cost (BPF_PROG_TEST_RUN of the classifier)", fontsize=10)
    ax1.set_ylim(0, None)
    ax1.legend(fontsize=7, loc="upper left")

    _line(ax2, list(HOPS), [sc[f"rate_path_{n}"] for n in HOPS],
          f"chain, last hop drops: {d['rate']['slope_ns_per_hop']['median']:.0f} ns/hop on 1/rate", OURS)
    fl = sc["rate_floor"]
    ax2.axhline(fl["median"], color=FLOOR, linestyle="--", label=f"floor: bare XDP_DROP {fl['median']:.2f} Mpps")
    ax2.axhspan(fl["min"], fl["max"], color=FLOOR, alpha=0.2)
    for n in HOPS:
        s = sc[f"rate_path_{n}"]
        ax2.annotate(f"{s['median']:.2f}", (n, s["max"]), xytext=(0, 4), textcoords="offset points", ha="center",
                     fontsize=7)
    ax2.set_xticks(list(HOPS))
    ax2.set_xlabel("local hops in the path")
    ax2.set_ylabel("Mpps received")
    ax2.set_title("Rate at the far end of a veth (live-frames generator)", fontsize=10)
    ax2.set_ylim(0, max(fl["max"], *(sc[f"rate_path_{n}"]["max"] for n in HOPS)) * 1.15)
    ax2.legend(fontsize=7, loc="upper right")
    title = report.figure_title(doc, "chains", "medians of {runs} runs on one CPU, bars min–max")
    return report.finish_figure(fig, title, path)


def save(doc: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write ``chains-<UTC stamp>.json`` and the ``.png`` beside it; return both paths."""
    return report.save_run(doc, out_dir, "chains", plot)


# ---- command line --------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``chains`` subcommand's options."""
    report.add_common_arguments(parser, quick_help="shorter runs (under 20 s in all); still ≥ 5 runs",
                                cpu_help="CPU for the path under test (default: the highest allowed)")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Run the chains benchmark; print the paths, the tables and the files written."""
    console = make_console()
    if os.geteuid() != 0:
        console.print("[red]the chains benchmark needs root (bpf(), netns, XDP)[/]")
        return 2
    profile = PROFILES["smoke" if args.smoke else "quick" if args.quick else "full"]
    cpu, others = traffic.split_cpus(args.cpu)
    started = time.monotonic()
    console.print(f"[bold]chains benchmark[/] ({profile.name}, {args.runs} runs), path on CPU {cpu}")
    with trivial_function() as folder:
        with traffic.pinned({cpu}):  # test-run runs on the calling CPU
            testrun, testrun_setup = measure_testrun(profile, args.runs, folder, log=console.print)
        with traffic.pinned(others):  # the measuring side keeps off the path CPU
            rates, rate_setup = measure_rates(profile, args.runs, cpu, folder, log=console.print)
    params = {"profile": asdict(profile), "runs": args.runs, "path_cpu": cpu, "measuring_cpus": sorted(others),
              "hops": list(HOPS), "testrun_hops": list(TESTRUN_HOPS), "function": f"vnfkit new {FUNCTION}",
              "first_si": FIRST_SI, "frame_bytes": traffic.FRAME_BYTES, "flows": FLOWS, "base_port": BASE_PORT,
              "dst_port": traffic.DST_PORT, "xdp_mode": "native", "count_margin": COUNT_MARGIN,
              "order": "scenarios interleaved per run, rotating start; one untimed test-run warm-up pass"}
    doc = document(params, testrun, rates, {"testrun": testrun_setup, "rate": rate_setup},
                   wall_s=time.monotonic() - started)
    print_tables(console, doc)
    for path in save(doc, args.out):
        console.print(f"wrote {path}")
    return 0
