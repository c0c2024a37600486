"""The engine benchmark: per-packet cost by test-run, and rate at the far end of a veth.

1. Per-packet cost (BPF_PROG_TEST_RUN, large repeat): the empty ``xdp_pass`` (the floor)
   and ``xdp_lookup`` with a 10,000-entry hash that holds the frame's destination.
2. Rate: namespaces ``gen`` and ``sink``; the in-kernel live-frames generator in ``gen``
   sends out of a veth; frames are counted where they arrive. Receivers: a bare XDP_DROP
   (the floor), ``xdp_count`` as a sink, and nftables (count + drop at netdev ingress, no
   XDP, GRO on) as the peer; plus a pure-Python AF_PACKET sender into the same xdp_count
   sink, to show what the in-kernel generator buys.

Every number is a median over runs with min and max; scenarios are interleaved run by run
(in rotating order) so slow drift of a shared VM spreads over all of them, and ratios are
taken per run. Each receiver has a veth of its own between the same two namespaces, so
runs can alternate without re-attaching anything. The path under test (generator, veth,
sink) runs on one pinned CPU; the measuring thread stays off it.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from datapath import netns
from datapath.builtin import builtin
from datapath.objects import load
from perf import engine_report, report, sinks, traffic

FLOWS = 64  # UDP source ports the generators cycle through
BASE_PORT = 4000
LOOKUP_ENTRIES = 10_000
LOOKUP_BASE = ipaddress.IPv4Address("198.19.0.0")  # the map's keys: LOOKUP_BASE + 0 .. + 9,999
TESTRUN_PROGS = ("xdp_pass", "xdp_lookup")
RATE_SCENARIOS = ("floor", "xdp_count", "nft", "python_af_packet")
COUNT_MARGIN = 1.15  # frames budgeted per run over what the window needs at the expected rate


@dataclass(frozen=True)
class Profile:
    """How long and how hard to measure. ``seconds`` is the counting window of one rate
    run, ``lead`` the time skipped after the first frame arrives."""

    name: str
    repeat: int
    seconds: float
    lead: float
    warmup_frames: int


PROFILES = {
    "full": Profile("full", repeat=1_000_000, seconds=1.0, lead=0.1, warmup_frames=1 << 19),
    "quick": Profile("quick", repeat=200_000, seconds=0.2, lead=0.05, warmup_frames=1 << 17),
    # Hidden, for the CI smoke test: proves the whole pipeline works, numbers mean little.
    "smoke": Profile("smoke", repeat=20_000, seconds=0.02, lead=0.01, warmup_frames=1 << 15),
}


# ---- per-packet cost ---------------------------------------------------------------------------
def _fill_lookup(lookup_map: Any) -> str:
    """Put LOOKUP_ENTRIES destinations in ``dst_hits``; return one of them for the frame."""
    addrs = int(LOOKUP_BASE) + np.arange(LOOKUP_ENTRIES, dtype=np.uint32)
    # The program keys by ip->daddr as loaded from the packet: network byte order.
    keys = np.frombuffer(addrs.astype(">u4").tobytes(), dtype=lookup_map.key_dtype)
    lookup_map.update_batch(keys, np.zeros(LOOKUP_ENTRIES, dtype=lookup_map.value_dtype))
    return str(LOOKUP_BASE + LOOKUP_ENTRIES // 2)


def measure_testrun(profile: Profile, runs: int, cpu: int) -> dict[str, list[dict[str, float]]]:
    """ns/packet of the floor and the one-lookup program: ``runs`` interleaved test-runs of
    ``profile.repeat`` repetitions each, on ``cpu``."""
    with load(builtin("xdp_pass")) as floor, load(builtin("xdp_lookup")) as lookup, traffic.pinned({cpu}):
        dst_hits = lookup.map("dst_hits")
        dst = _fill_lookup(dst_hits)
        frame = traffic.udp_frame("02:00:00:00:00:01", "02:00:00:00:00:02", "198.18.0.1", dst, BASE_PORT)
        progs = {"xdp_pass": (floor.program(), "PASS"), "xdp_lookup": (lookup.program(), "DROP")}
        for name, (prog, verdict) in progs.items():  # measure the intended path, or nothing
            got = prog.test_run(frame).verdict
            if got != verdict:
                raise RuntimeError(f"{name} returned {got} on the benchmark frame, expected {verdict}")
        key = ipaddress.IPv4Address(dst).packed
        hits_before = int(dst_hits[key])
        out: dict[str, list[dict[str, float]]] = {name: [] for name in progs}
        for i in range(runs):
            for name in _rotated(list(progs), i):
                t0 = time.thread_time()
                res = progs[name][0].test_run(frame, repeat=profile.repeat)
                cpu_s = time.thread_time() - t0
                # duration_ns is the kernel's average, in whole ns. This thread's CPU time is
                # kept as a finer cross-check; wall time is not, since every repeated XDP
                # test-run idles ~25 ms in an RCU wait when it swaps the XDP dispatcher.
                out[name].append({"ns": float(res.duration_ns),
                                  "thread_cpu_ns": cpu_s / profile.repeat * 1e9})
        hits = int(dst_hits[key]) - hits_before
        if hits != runs * profile.repeat:
            raise RuntimeError(f"xdp_lookup hit {hits} times in {runs * profile.repeat} runs: not a hit path")
    return out


def _rotated(items: list[Any], i: int) -> list[Any]:
    k = i % len(items)
    return items[k:] + items[:k]


# ---- rate --------------------------------------------------------------------------------------
@dataclass
class Scenario:
    """One rate scenario: a sender into a sink, measured at the sink device's receive counter
    (``rx``: a ``traffic.DeviceRx``, or any counter of frames handled, read in-process)."""

    name: str
    sink: sinks.Sink
    sender: traffic.Sender
    rx: Callable[[], int]
    estimate: float = 0.0  # frames/s, sizes the next run's frame budget


def _build_scenarios(topo: netns.Topology, stack: contextlib.ExitStack) -> tuple[list[Scenario], dict[str, Any]]:
    gen_ns, sink_ns = topo.add_ns("gen"), topo.add_ns("sink")
    pairs = {name: topo.add_veth(gen_ns, sink_ns) for name in ("floor", "xdp_count", "nft")}
    gen = stack.enter_context(load(builtin("xdp_gen")))

    def frame(pair: netns.VethPair, sport: int = BASE_PORT) -> bytes:
        return traffic.udp_frame(traffic.link_mac(pair.ns_a, pair.ifindex_a),
                                 traffic.link_mac(pair.ns_b, pair.ifindex_b), pair.addr_a, pair.addr_b, sport)

    def live(pair: netns.VethPair) -> traffic.FrameSender:
        return traffic.frame_sender(gen, pair.ns_a, pair.ifindex_a, frame(pair), flows=FLOWS, base_port=BASE_PORT)

    def rx(pair: netns.VethPair) -> traffic.DeviceRx:
        return stack.enter_context(contextlib.closing(traffic.DeviceRx(pair.ns_b, pair.ifindex_b)))

    floor = sinks.xdp_drop_floor(stack, pairs["floor"])
    counting, _ = sinks.xdp_count_sink(stack, pairs["xdp_count"])
    nft, rules = sinks.nft_sink(pairs["nft"], traffic.DST_PORT)
    py = traffic.PacketSocket(gen_ns, pairs["xdp_count"].ifname_a,
                              [frame(pairs["xdp_count"], BASE_PORT + i) for i in range(FLOWS)])
    scenarios = [Scenario("floor", floor, live(pairs["floor"]), rx(pairs["floor"])),
                 Scenario("xdp_count", counting, live(pairs["xdp_count"]), rx(pairs["xdp_count"])),
                 Scenario("nft", nft, live(pairs["nft"]), rx(pairs["nft"])),
                 Scenario("python_af_packet", counting, py, rx(pairs["xdp_count"]))]
    setup = {"namespaces": [gen_ns, sink_ns], "veths": {k: asdict(v) for k, v in pairs.items()},
             "nft_ruleset": rules}
    return scenarios, setup


def one_run(s: Scenario, profile: Profile, cpu: int) -> dict[str, float]:
    """One windowed rate run of ``s``; doubles the frame budget until the sender covers the window."""
    budget = int(s.estimate * (profile.seconds + 2 * profile.lead) * COUNT_MARGIN) + 4096
    for attempt in range(1, 6):
        counted_before = s.sink.count()
        window = traffic.measure(s.sender, budget, s.rx, cpu, seconds=profile.seconds, lead=profile.lead)
        if window is not None:
            s.estimate = window.mpps * 1e6
            return {**asdict(window), "sink_counted": s.sink.count() - counted_before,
                    "lost": window.sent - window.received, "attempts": attempt}
        budget *= 2  # the sender ran dry inside the window: the estimate was too low
    raise RuntimeError(f"{s.name}: the sender never covered a {profile.seconds} s window")


def measure_rates(profile: Profile, runs: int, cpu: int,
                  log: Callable[[str], object] = print) -> tuple[dict[str, list[dict[str, float]]], dict[str, Any]]:
    """Mpps received for every rate scenario, ``runs`` interleaved runs each; plus the set-up
    (veths, nft ruleset) and how each scenario was sent and counted."""
    with netns.Topology() as topo, contextlib.ExitStack() as stack:
        scenarios, setup = _build_scenarios(topo, stack)
        for s in scenarios:
            s.estimate = traffic.warm_up(s.sender, profile.warmup_frames, s.rx, cpu)
        results: dict[str, list[dict[str, float]]] = {s.name: [] for s in scenarios}
        for i in range(runs):
            for s in _rotated(scenarios, i):
                results[s.name].append(one_run(s, profile, cpu))
            log(f"run {i + 1}/{runs}: " + ", ".join(f"{n} {r[-1]['mpps']:.3f}" for n, r in results.items())
                + " Mpps")
        setup["scenarios"] = {s.name: {"sink": s.sink.description, "sender": s.sender.name,
                                       "counted_by": s.sink.counted_by, "rate_from": "sink veth rx_packets "
                                       "(rtnetlink) over the window"} for s in scenarios}
    return results, setup


# ---- command line ------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``engine`` subcommand's options."""
    report.add_common_arguments(parser, quick_help="shorter runs (about 10 s in all); still ≥ 5 runs",
                                cpu_help="CPU for the path under test (default: the highest allowed)")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Run the engine benchmark; print tables and the paths of the JSON and PNG written."""
    console = engine_report.console()
    if os.geteuid() != 0:
        console.print("[red]the engine benchmark needs root (bpf(), netns, XDP)[/]")
        return 2
    profile = PROFILES["smoke" if args.smoke else "quick" if args.quick else "full"]
    cpu, others = traffic.split_cpus(args.cpu)
    started = time.monotonic()
    with traffic.pinned(others):  # the measuring side keeps off the path CPU
        console.print(f"[bold]engine benchmark[/] ({profile.name}, {args.runs} runs), path on CPU {cpu}")
        testrun = measure_testrun(profile, args.runs, cpu)
        rates, setup = measure_rates(profile, args.runs, cpu, log=console.print)
    params = {"profile": asdict(profile), "runs": args.runs, "path_cpu": cpu, "measuring_cpus": sorted(others),
              "frame_bytes": traffic.FRAME_BYTES, "frame_bytes_on_wire": traffic.FRAME_BYTES + 4,
              "flows": FLOWS, "base_port": BASE_PORT, "dst_port": traffic.DST_PORT,
              "lookup_entries": LOOKUP_ENTRIES, "xdp_mode": "native", "count_margin": COUNT_MARGIN,
              "order": "scenarios interleaved per run, rotating start", **setup}
    doc = engine_report.document(params, testrun, rates, wall_s=time.monotonic() - started)
    engine_report.print_tables(console, doc)
    paths = engine_report.save(doc, args.out)
    for path in paths:
        console.print(f"wrote {path}")
    return 0
