"""The benchmark suite: every scenario side by side with the floors and the peers, in one run.

``python -m perf suite`` or ``vnfkit bench``: every scenario of the project against the floor
and against what a user would otherwise run.

Scenarios (perf/rigs.py builds them, one DUT namespace each):

* floor: an empty XDP program that drops (``floor_drop``), one that redirects to the egress
  veth (``floor_redirect``), and one that passes to Linux forwarding (``floor_pass``);
* functions: each example VNF alone at XDP doing its job (perf/jobs.py): the firewall at
  10 / 1,000 / 10,000 rules, nat, l4lb, ratelimit, monitor, gtp; and the same jobs in the
  kernel by test-run and natively by the batch call (perf/functions.py);
* chains: 1 to 16 hops in one host, and 2 hops over two hosts (NSH over an underlay veth);
* peers: nftables and iptables with the firewall's rules translated, nftables SNAT with
  conntrack, nftables DNAT load balancing (jhash and numgen), nftables limit (tc police is
  not built into this kernel: said in the report), Linux forwarding, a pure-Python
  AF_PACKET forwarder, and dpdk-testpmd over net_af_packet and net_af_xdp where it runs;
* sizes: the floors and the 1,000-rule firewall against nftables at 64 to 1518-byte frames.

Traffic: the in-kernel live-frames generator (1,024 UDP 5-tuples), counted at the receiver
(the DUT's ingress for jobs that drop, the far end of its egress for jobs that forward).
Each rate run measures the throughput in a window inside the sending, then searches for the
no-drop rate with the paced generator (perf/ratesearch.py). One more run per kernel rig
with bpf run-time stats on gives each program's ns per run under live traffic (not part of
the rates: the stats slow every program down).

Not here yet: the user-space AF_XDP executor (datapath/xsk, being built separately). It plugs
in as a third column of perf/functions.py (its per-packet cost beside kernel and native) and
as a rig in perf/rigs.py (``Lab.function(name)`` with the VNF behind an XSK socket on the
DUT's ingress, forwarding to the egress), measured like testpmd_af_xdp.

Every number is a median over runs with min and max; rate scenarios are interleaved run by
run (rotating order) and ratios taken per run. The generator, the DUT and user-space peers
share one pinned CPU; the measuring thread keeps to another.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from datapath import netns
from datapath.stats import runtime_stats
from perf import functions, jobs, peers, ratesearch, report, rigs, suite_report, traffic

SIZES_FULL = (64, 128, 256, 512, 1024, 1518)
SIZES_QUICK = (64, 1518)
SIZE_RIGS = ("floor_drop", "floor_redirect", "firewall_1000", "nft_fw_1000")
COUNT_MARGIN = 1.15


@dataclass(frozen=True)
class Profile:
    """How long and how hard: the throughput window and lead, warm-up frames, the search's
    trial length, resolution and trial cap, which rigs get a search, test-run and native work."""

    name: str
    seconds: float
    lead: float
    warmup_frames: int
    trial_s: float
    resolution: float
    max_trials: int
    search: tuple[str, ...] | None  # rigs whose no-drop rate is searched; None: all
    sizes: tuple[int, ...]
    calls: int
    batch_calls: int


PROFILES = {
    "full": Profile("full", seconds=1.0, lead=0.1, warmup_frames=1 << 19, trial_s=0.2, resolution=0.02,
                    max_trials=7, search=None, sizes=SIZES_FULL, calls=20_000, batch_calls=2_000),
    "quick": Profile("quick", seconds=0.15, lead=0.03, warmup_frames=1 << 16, trial_s=0.08, resolution=0.05,
                     max_trials=5, search=("floor_drop", "floor_redirect", "firewall_1000", "nft_fw_1000",
                                           "ipt_fw_1000", "nat", "nft_snat"),
                     sizes=SIZES_QUICK, calls=4_000, batch_calls=400),
    # Hidden, for the CI smoke test: every code path once, numbers mean nothing.
    "smoke": Profile("smoke", seconds=0.02, lead=0.01, warmup_frames=1 << 13, trial_s=0.02, resolution=0.25,
                     max_trials=2, search=("floor_drop", "nat"), sizes=(64, 1518), calls=200, batch_calls=20),
}

# Scenario name -> how the lab builds its rig.
BUILDERS: dict[str, Callable[[rigs.Lab], rigs.Rig]] = {
    "floor_drop": rigs.Lab.floor_drop, "floor_redirect": rigs.Lab.floor_redirect, "floor_pass": rigs.Lab.floor_pass,
    **{f"firewall_{n}": (lambda lab, n=n: lab.function(f"firewall_{n}")) for n in jobs.FIREWALL_RULES},
    **{name: (lambda lab, name=name: lab.function(name)) for name in jobs.JOBS},
    **{f"chain_local_{n}": (lambda lab, n=n: lab.chain_local(n)) for n in (1, 2, 4, 8, 16)},
    "chain_remote_2": lambda lab: lab.chain_remote(2),
    **{f"nft_fw_{n}": (lambda lab, n=n: lab.nft_firewall(n)) for n in jobs.FIREWALL_RULES},
    **{f"ipt_fw_{n}": (lambda lab, n=n: lab.iptables_firewall(n)) for n in jobs.FIREWALL_RULES},
    "linux_forward": rigs.Lab.linux_forward, "nft_snat": rigs.Lab.nft_snat,
    "nft_lb_jhash": lambda lab: lab.nft_lb("jhash"), "nft_lb_numgen": lambda lab: lab.nft_lb("numgen"),
    "nft_limit": rigs.Lab.nft_limit, "python_fwd": rigs.Lab.python_forward,
    "testpmd_af_packet": lambda lab: lab.testpmd("af_packet"), "testpmd_af_xdp": lambda lab: lab.testpmd("af_xdp"),
}
QUICK_SKIP = ("chain_local_4", "chain_local_8", "firewall_10", "nft_fw_10", "ipt_fw_10", "nft_lb_numgen")
# The smoke test builds every kind of rig once; larger copies of the same code path stay out.
SMOKE_SKIP = (*QUICK_SKIP, "firewall_10000", "nft_fw_10000", "ipt_fw_10000", "chain_local_16")


@dataclass
class Scenario:
    """A rig at one frame size, with the frame budget its next run needs."""

    name: str
    rig: rigs.Rig
    size: int
    sender: traffic.FrameSender
    estimate: float = 0.0


def _one_rate_run(s: Scenario, lab: rigs.Lab, profile: Profile, cpu: int, spins: float, loss: float
                  ) -> dict[str, Any]:
    """Throughput in a window, then (if the profile says so) the no-drop search."""
    rig = s.rig
    budget = int(s.estimate * (profile.seconds + 2 * profile.lead) * COUNT_MARGIN) + 4096
    with _running(rig):
        window, attempts = None, 0
        while window is None:
            attempts += 1
            if attempts > 8:  # a busy machine (CI beside other jobs) can stall the measuring side
                raise RuntimeError(f"{s.name}: the sender never covered a {profile.seconds} s window")
            if attempts > 1:
                budget *= 2  # the sender ran dry inside the window: the estimate was too low
            work_before = rig.work() if rig.work else 0
            try:
                window = traffic.measure(s.sender, budget, rig.rx, cpu, seconds=profile.seconds, lead=profile.lead)
            except RuntimeError as exc:
                raise RuntimeError(f"{s.name}: {exc}") from exc
        # The budget follows the fastest rate seen: one run slowed by a neighbour on this busy
        # machine must not shrink the next budget below a window (a larger one costs only time).
        s.estimate = max(s.estimate, window.mpps * 1e6)
        out: dict[str, Any] = {**asdict(window), "lost": window.sent - window.received, "attempts": attempts}
        if rig.work:
            out["work"] = rig.work() - work_before
        if rig.check:
            rig.check()
        if s.size == 64 and (profile.search is None or rig.name in profile.search):
            state = lab.gen.map("state")
            result = ratesearch.search(
                lambda rate: ratesearch.trial(s.sender, state, rig.rx, cpu, rate, profile.trial_s, spins),
                max_pps=s.estimate * 1.05, loss=loss, resolution=profile.resolution,
                max_trials=profile.max_trials)
            out["search"] = result
            out["no_drop_mpps"] = result["no_drop_mpps"]
            if rig.check:
                rig.check()
    return out


@contextlib.contextmanager
def _running(rig: rigs.Rig) -> Iterator[None]:
    """A user-space peer runs only while its own scenario is measured: a busy-polling
    testpmd would otherwise take half of the path CPU from every other scenario."""
    if rig.process is None:
        yield
        return
    rig.process.resume()
    try:
        yield
    finally:
        rig.process.pause()


def _stats_run(s: Scenario, profile: Profile, cpu: int) -> dict[str, Any] | None:
    """One more throughput run with bpf run-time stats on: ns per run of the rig's programs."""
    if not s.rig.programs:
        return None
    budget = int(s.estimate * (profile.seconds + 2 * profile.lead) * COUNT_MARGIN) + 4096
    with runtime_stats():
        before = {n: p.stats() for n, p in s.rig.programs.items()}
        window = traffic.measure(s.sender, budget * 2, s.rig.rx, cpu, seconds=profile.seconds, lead=profile.lead)
        after = {n: p.stats() for n, p in s.rig.programs.items()}
    out: dict[str, Any] = {"mpps_with_stats": window.mpps if window else None}
    for n in s.rig.programs:
        cnt = after[n].run_cnt - before[n].run_cnt
        out[n] = {"run_cnt": cnt, "ns_per_run": (after[n].run_time_ns - before[n].run_time_ns) / cnt if cnt else None}
    return out


def select(profile: Profile, only: list[str] | None) -> list[str]:
    names = list(BUILDERS)
    skip = {"quick": QUICK_SKIP, "smoke": SMOKE_SKIP}.get(profile.name, ())
    names = [n for n in names if n not in skip]
    if only:
        unknown = [n for n in only if n not in BUILDERS]
        if unknown:
            raise SystemExit(f"unknown scenario(s) {unknown}; known: {', '.join(BUILDERS)}")
        names = [n for n in names if n in only]
    return names


def measure_rates(names: list[str], profile: Profile, runs: int, cpu: int, nic: tuple[str, str] | None,
                  loss: float, log: Callable[[str], object]) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """Every rate scenario, ``runs`` runs each: interleaved on veth, one rig after the other
    on real NICs (one DUT namespace can hold the NIC at a time)."""
    results: dict[str, list[dict[str, Any]]] = {}
    setup: dict[str, Any] = {"rigs": {}, "unavailable": {}, "bpf_stats": {}}
    ok, why = peers.tc_police_available()
    # Written on a kernel without the police action, the suite has no tc police rig: one that
    # never ran would be a guess. Where the kernel has it, the report says so.
    setup["unavailable"]["tc_police"] = why if not ok else (
        f"{why}, but the suite has no tc police rig yet (written on a kernel without the action); "
        "nftables' limit is the policer measured")
    with netns.Topology() as topo, contextlib.ExitStack() as stack:
        lab = rigs.Lab(topo, stack, cpu, nic=nic)
        if nic is None:
            scenarios, spins = _build(lab, names, profile, cpu, setup, log)
            for i in range(runs):
                t0 = time.monotonic()
                for s in scenarios[i % len(scenarios):] + scenarios[:i % len(scenarios)]:
                    results.setdefault(s.name, []).append(_one_rate_run(s, lab, profile, cpu, spins, loss))
                log(f"rates {i + 1}/{runs} ({time.monotonic() - t0:.0f} s): " + ", ".join(
                    f"{n} {r[-1]['mpps']:.2f}" for n, r in results.items() if "@" not in n) + " Mpps")
            for s in scenarios:
                if s.size == 64:
                    stats = _stats_run(s, profile, cpu)
                    if stats:
                        setup["bpf_stats"][s.name] = stats
        else:
            for name in names:
                with lab.scope():
                    scenarios, spins = _build(lab, [name], profile, cpu, setup, log)
                    for s in scenarios:
                        for _ in range(runs):
                            results.setdefault(s.name, []).append(_one_rate_run(s, lab, profile, cpu, spins, loss))
                        if s.size == 64 and (stats := _stats_run(s, profile, cpu)):
                            setup["bpf_stats"][s.name] = stats
                        log(f"{s.name}: " + ", ".join(f"{r['mpps']:.2f}" for r in results[s.name]) + " Mpps")
    return results, setup


def _build(lab: rigs.Lab, names: list[str], profile: Profile, cpu: int, setup: dict[str, Any],
           log: Callable[[str], object]) -> tuple[list[Scenario], float]:
    scenarios: list[Scenario] = []
    for name in names:
        t0 = time.monotonic()
        try:
            rig = BUILDERS[name](lab)
        except rigs.Unavailable as exc:
            setup["unavailable"][name] = str(exc)
            log(f"[yellow]{name}: not available here: {exc}[/]")
            continue
        if rig.process is not None:
            rig.process.pause()  # it runs only while its own scenario is measured
        setup["rigs"][name] = {"group": rig.group, "what": rig.what, "end": rig.end, "counted_at": rig.counted_at,
                               "setup_s": round(time.monotonic() - t0, 2), **rig.info}
        sizes = profile.sizes if name in SIZE_RIGS else (64,)
        for size in sizes:
            scenarios.append(Scenario(name if size == 64 else f"{name}@{size}", rig, size, lab.sender(rig, size)))
    spins = 0.0
    for s in scenarios:
        with _running(s.rig):
            s.estimate = traffic.warm_up(s.sender, profile.warmup_frames, s.rig.rx, cpu)
            if not spins:
                spins = ratesearch.spin_rate(s.sender, lab.gen.map("state"), s.rig.rx, cpu)
    return scenarios, spins


# ---- command line --------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``suite`` subcommand's options (``vnfkit bench`` takes the same)."""
    report.add_common_arguments(parser, quick_help="fewer scenarios and sizes, short windows: under five minutes",
                                cpu_help="CPU for the path under test (default: the highest allowed)")
    parser.add_argument("--only", nargs="+", metavar="SCENARIO", help="run only these rate scenarios")
    parser.add_argument("--loss", type=float, default=0.001,
                        help="loss threshold of the no-drop search (default 0.001 = 0.1%%; RFC 2544 uses 0)")
    parser.add_argument("--iface", help="real NIC the DUT receives on (moved into the DUT namespaces for the run)")
    parser.add_argument("--peer-iface", help="real NIC cabled to --iface that the generator sends out of")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Run the suite; print the tables and the files written."""
    console = suite_report.console()
    if os.geteuid() != 0:
        console.print("[red]the benchmark suite needs root (bpf(), netns, XDP, nftables)[/]")
        return 2
    if bool(args.iface) != bool(args.peer_iface):
        console.print("[red]--iface and --peer-iface go together: the DUT's NIC and the generator's, cabled[/]")
        return 2
    if not 0 <= args.loss < 1:
        console.print("[red]--loss is a fraction of the frames sent, from 0 to below 1[/]")
        return 2
    profile = PROFILES["smoke" if args.smoke else "quick" if args.quick else "full"]
    names = select(profile, args.only)
    nic = (args.iface, args.peer_iface) if args.iface else None
    cpu, others = traffic.split_cpus(args.cpu)
    started = time.monotonic()
    console.print(f"[bold]benchmark suite[/] ({profile.name}, {args.runs} runs, {len(names)} rate scenarios"
                  f"{', NICs ' + ' <- '.join(nic) if nic else ', veth'}), path on CPU {cpu}")
    fn_names = [f"firewall_{n}" for n in jobs.FIREWALL_RULES] + list(jobs.JOBS)
    with traffic.pinned({cpu}):  # test-run and native run on the calling CPU
        per_packet, fn_setup = functions.measure(fn_names, functions.Work(profile.calls, profile.batch_calls),
                                                 args.runs, log=console.print)
    with traffic.pinned(others):  # the measuring side keeps off the path CPU
        rates, rate_setup = measure_rates(names, profile, args.runs, cpu, nic, args.loss, log=console.print)
    params = {"profile": asdict(profile), "runs": args.runs, "path_cpu": cpu, "measuring_cpus": sorted(others),
              "loss_threshold": args.loss, "flows": rigs.FLOWS, "base_port": rigs.BASE_PORT, "dst_port": jobs.DPORT,
              "links": {"iface": args.iface, "peer_iface": args.peer_iface} if nic else "veth",
              "xdp_mode": "native", "count_margin": COUNT_MARGIN, "scenarios": names,
              "order": "interleaved per run, rotating start" if nic is None else "one rig after the other (NICs)"}
    doc = suite_report.document(params, per_packet, fn_setup, rates, rate_setup, time.monotonic() - started)
    suite_report.print_tables(console, doc)
    for path in suite_report.save(doc, args.out):
        console.print(f"wrote {path}")
    return 0
