"""The firewall benchmark: ns/packet against the number of rules, in the kernel and natively.

The firewall VNF (vnfs/firewall) with 10, 1,000 and 10,000 rules, in one run, on a 60-byte
UDP/IPv4 frame (64 B on the wire). Rule sets and cases:

* ``last``: N - 1 rules that do not match the frame (distinct /32 sources), then the one that
  does: the worst case for a linear scan, which would test every rule;
* ``first``: the same rules, a frame from rule 0's source: a linear scan's best case;
* ``spread``: the worst case for the firewall's bit vector search: half of the N - 1 rules
  match the frame's source (not its destination), half its destination (not its source),
  so every 64-rule word is a candidate and all of them are ANDed before the last rule wins;
* ``state`` (10,000 rules only): stateful mode, the frame belongs to a known flow: one flow
  table lookup and no classification.

Paths: the kernel (BPF_PROG_TEST_RUN with a large repeat; the kernel's own average), the floor
(the empty ``xdp_pass`` on the same frame, measured in every run), and the same fastpath.c
natively (``vk_native_run_batch`` on batches of 64). One kernel object and one native module
hold the rules; each run applies every rule set in turn (rotating order) and measures its
cases. Every number is a median of runs with min and max; ratios to the floor are per run.
Each measured path is checked: its verdict on every run, and the matched rule's hit counter
(or the flow counter) moving by exactly the packets run.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from rich.table import Table

from datapath.builtin import builtin
from datapath.errors import VnfkitError
from datapath.objects import load
from datapath.verdict import Verdict
from perf import report, traffic
from perf.engine_report import console as make_console
from perf.sdk import BATCH, SLOT_SIZE, NativeBatch
from vnfkit.descriptor import load_descriptor
from vnfkit.executors import make_executors
from vnfkit.pyfile import import_file

FW = report.REPO / "vnfs" / "firewall"
RULE_COUNTS = (10, 1_000, 10_000)
CASES = ("first", "last", "spread", "state")
SRC, DST, OTHER_BASE = "198.18.0.1", "198.18.1.1", int(ipaddress.IPv4Address("198.19.0.0"))
SPORT, DPORT = 4000, 9


@dataclass(frozen=True)
class Profile:
    """Work per run: test-run repetitions per kernel case, batch calls (of 64) per native case."""

    name: str
    repeat: int
    batch_calls: int


PROFILES = {
    "full": Profile("full", repeat=1_000_000, batch_calls=20_000),
    "quick": Profile("quick", repeat=200_000, batch_calls=4_000),
    # Hidden, for the CI smoke test: proves the whole pipeline works, numbers mean little.
    "smoke": Profile("smoke", repeat=5_000, batch_calls=100),
}


def _other(i: int) -> str:
    return str(ipaddress.IPv4Address(OTHER_BASE + i))


def linear_rules(n: int) -> list[str]:
    """N - 1 rules that miss the benchmark frame's source, then one that matches it."""
    return [f"deny udp from {_other(i)} to any port {DPORT}" for i in range(n - 1)] + \
        [f"allow udp from {SRC} to {DST} port {DPORT}"]


def spread_rules(n: int) -> list[str]:
    """Every word a candidate: even rules match the source only, odd ones the destination only."""
    out = [f"deny udp from {SRC} to {_other(i)} port {DPORT}" if i % 2 == 0 else
           f"deny udp from {_other(i)} to {DST} port {DPORT}" for i in range(n - 1)]
    return out + [f"allow udp from {SRC} to {DST} port {DPORT}"]


@dataclass
class Case:
    """One measured case: its frame, the verdict it must get, and the rule it must hit."""

    name: str          # e.g. last_10000
    case: str
    rules: int
    frame: bytes
    verdict: Verdict
    rule: int | None   # the rule the frame matches; None: a flow-table hit


@dataclass
class Group:
    """A rule set with its config and the cases measured while it is loaded."""

    name: str
    ruleset: Any
    config: dict[str, Any]
    cases: list[Case]


def build_groups(control: Any) -> tuple[list[Group], dict[str, float]]:
    """The rule sets, compiled (with analysis, as an operator would), and compile times."""
    def frame(src: str) -> bytes:
        return traffic.udp_frame("02:00:00:00:00:01", "02:00:00:00:00:02", src, DST, SPORT, DPORT)

    groups, compile_s = [], {}
    for n in RULE_COUNTS:
        t0 = time.perf_counter()
        linear = control.compile_rules(linear_rules(n))
        compile_s[f"linear_{n}"] = time.perf_counter() - t0
        spread = control.compile_rules(spread_rules(n))
        groups.append(Group(f"linear_{n}", linear, {}, [
            Case(f"first_{n}", "first", n, frame(_other(0) if n > 1 else SRC),
                 Verdict.DROP if n > 1 else Verdict.PASS, 0),
            Case(f"last_{n}", "last", n, frame(SRC), Verdict.PASS, n - 1)]))
        groups.append(Group(f"spread_{n}", spread, {}, [Case(f"spread_{n}", "spread", n, frame(SRC), Verdict.PASS,
                                                             n - 1)]))
    n = RULE_COUNTS[-1]
    groups.append(Group(f"state_{n}", groups[-2].ruleset, control.policy_config("deny", stateful=True), [
        Case(f"state_{n}", "state", n, frame(SRC), Verdict.PASS, None)]))
    return groups, compile_s


def _rotated(items: list[Any], i: int) -> list[Any]:
    k = i % len(items)
    return items[k:] + items[:k]


class Bench:
    """The kernel object, the native module and the floor, and how to measure one case."""

    def __init__(self, control: Any, profile: Profile) -> None:
        self.control, self.profile = control, profile
        self.defaults = load_descriptor(FW).param_defaults()
        self.kernel, self.native = make_executors(FW, ("kernel", "native"))
        self.floor = load(builtin("xdp_pass"))
        self.batches: dict[str, NativeBatch] = {}

    def close(self) -> None:
        self.floor.close()
        self.kernel.close()

    def load_group(self, g: Group) -> dict[str, float]:
        """Apply the group's rule set and config to both executors (hits reset, flows flushed)."""
        out = {}
        for ex in (self.kernel, self.native):
            ex.configure({**self.defaults, **g.config})
            t0 = time.perf_counter()
            self.control.apply(ex.tables, g.ruleset, flush_state=True)
            out[f"apply_{ex.name}_s"] = time.perf_counter() - t0
            ex.set_clock(0)  # the real clock
        return out

    def _count(self, ex: Any, c: Case) -> int:
        if c.rule is None:
            return ex.counters()["state_forward"][0]
        return int(self.control.rule_hits(ex.tables)[c.rule]["packets"])

    def measure(self, c: Case) -> dict[str, dict[str, float]]:
        """One timed kernel run and one timed native run of the case, both checked."""
        p = self.profile
        prog = self.kernel.prog
        first = prog.test_run(c.frame)  # for a flow-table case, this one opens the flow
        if first.verdict != c.verdict.name:
            raise RuntimeError(f"kernel {c.name}: {first.verdict} on the benchmark frame, expected {c.verdict.name}")
        before = self._count(self.kernel, c)
        t0 = time.thread_time_ns()
        res = prog.test_run(c.frame, repeat=p.repeat)
        cpu = time.thread_time_ns() - t0
        if res.verdict != c.verdict.name or self._count(self.kernel, c) - before != p.repeat:
            raise RuntimeError(f"kernel {c.name}: not the intended path ({res.verdict}, counter moved by "
                               f"{self._count(self.kernel, c) - before} in {p.repeat} runs)")
        kernel = {"ns": float(res.duration_ns), "thread_cpu_ns": cpu / p.repeat}

        nb = self.batches.setdefault(c.name, NativeBatch(self.native, c.frame))
        if self.native.run(c.frame).verdict != c.verdict:
            raise RuntimeError(f"native {c.name}: wrong verdict on the benchmark frame")
        before = self._count(self.native, c)
        wall, cpu = nb.run(p.batch_calls)
        packets = p.batch_calls * BATCH
        bad = int((nb.res_view[:, 0] != c.verdict).sum())
        if bad or self._count(self.native, c) - before != packets:
            raise RuntimeError(f"native {c.name}: not the intended path ({bad} wrong verdicts, counter moved by "
                               f"{self._count(self.native, c) - before} in {packets} packets)")
        native = {"ns": wall / packets, "thread_cpu_ns": cpu / packets}
        return {"kernel": kernel, "native": native}

    def measure_floor(self, frame: bytes) -> dict[str, float]:
        t0 = time.thread_time_ns()
        res = self.floor.program().test_run(frame, repeat=self.profile.repeat)
        cpu = time.thread_time_ns() - t0
        return {"ns": float(res.duration_ns), "thread_cpu_ns": cpu / self.profile.repeat}


def measure_all(profile: Profile, runs: int, log: Callable[[str], object] = print) -> tuple[
        dict[str, list[dict[str, float]]], dict[str, Any]]:
    """Every case on both paths, ``runs`` times, plus the floor; and the set-up and control-plane times."""
    control = import_file(FW / "control.py", "the firewall's control plane", VnfkitError)
    groups, compile_s = build_groups(control)
    bench = Bench(control, profile)
    results: dict[str, list[dict[str, float]]] = {"kernel_floor": []}
    applies: dict[str, list[float]] = {}
    try:
        for g in groups:  # warm-up: page in code, tables and buffers
            bench.load_group(g)
            for c in g.cases:
                bench.measure(c)
        for i in range(runs):
            results["kernel_floor"].append(bench.measure_floor(groups[0].cases[-1].frame))
            for g in _rotated(groups, i):
                for key, seconds in bench.load_group(g).items():
                    applies.setdefault(f"{g.name}_{key}", []).append(seconds)
                for c in g.cases:
                    for path, rec in bench.measure(c).items():
                        results.setdefault(f"{path}_{c.name}", []).append(rec)
            last = {n: results[f"kernel_last_{n}"][-1]["ns"] for n in RULE_COUNTS}
            log(f"run {i + 1}/{runs}: floor {results['kernel_floor'][-1]['ns']:.0f} ns, kernel last "
                + " / ".join(f"{v:.0f}" for v in last.values()) + f" ns at {' / '.join(map(str, RULE_COUNTS))} rules")
        layout = control.Layout.of(bench.kernel.tables)
        setup = {"compile_s": compile_s, "apply_s": {k: report.summary(v) for k, v in applies.items()},
                 "capacity_rules": layout.max_rules, "bitmap_words": layout.words,
                 "cases": {c.name: {"case": c.case, "rules": c.rules, "verdict": c.verdict.name, "rule": c.rule,
                                    "frame_src": ".".join(str(b) for b in c.frame[26:30])}
                           for g in groups for c in g.cases},
                 "groups": {g.name: {"rules": len(g.ruleset.rules), "config": g.config,
                                     "warnings": len(g.ruleset.warnings)} for g in groups}}
        return results, setup
    finally:
        bench.close()


# ---- the report ------------------------------------------------------------------------------
def document(params: dict[str, Any], results: dict[str, list[dict[str, float]]], setup: dict[str, Any],
             wall_s: float) -> dict[str, Any]:
    """The whole result as a JSON-ready dict: per-run values with median/min/max, ratios."""
    floor = [r["ns"] for r in results["kernel_floor"]]
    scenarios: dict[str, Any] = {}
    for name, runs in results.items():
        ns = [r["ns"] for r in runs]
        path, _, case_name = name.partition("_")
        entry: dict[str, Any] = {"path": path, "unit": "ns/packet", **report.summary(ns)}
        if name != "kernel_floor":
            entry.update(case=setup["cases"][case_name]["case"], rules=setup["cases"][case_name]["rules"])
        entry["over_floor"] = report.summary(report.paired(ns, floor))
        entry["thread_cpu_ns"] = report.summary([r["thread_cpu_ns"] for r in runs])
        scenarios[name] = {**entry, "runs": runs}
    scaling = {}
    for path in ("kernel", "native"):
        for case in ("first", "last", "spread"):
            lo, hi = (results[f"{path}_{case}_{n}"] for n in (RULE_COUNTS[0], RULE_COUNTS[-1]))
            scaling[f"{path}_{case}"] = report.summary(report.paired([r["ns"] for r in hi], [r["ns"] for r in lo]))
    return {"benchmark": "firewall", "schema": 1, "timestamp": report.utc_stamp(), "wall_s": round(wall_s, 1),
            "machine": report.machine(), "versions": report.versions(), "parameters": params, "setup": setup,
            "scenarios": scenarios,
            "derived": {f"rules_{RULE_COUNTS[-1]}_over_{RULE_COUNTS[0]}": scaling}}


def _cell(s: dict[str, Any]) -> str:
    return f"{s['median']:.0f} ({s['min']:.0f}–{s['max']:.0f}) · {s['over_floor']['median']:.1f}×"


def print_tables(con: Any, doc: dict[str, Any]) -> None:
    sc, p = doc["scenarios"], doc["parameters"]
    t = Table(title="Firewall: ns/packet by rule count (median (min–max) · × floor)",
              caption=f"{p['frame_bytes']} B UDP/IPv4 frame; median of {p['runs']} runs on CPU {p['cpu']}; "
                      f"floor xdp_pass {sc['kernel_floor']['median']:.1f} ns; "
                      f"test-run repeat {p['profile']['repeat']:,}, native batches of {BATCH}")
    t.add_column("path")
    t.add_column("case")
    for n in RULE_COUNTS:
        t.add_column(f"{n:,} rules", justify="right")
    t.add_column(f"{RULE_COUNTS[-1]:,} / {RULE_COUNTS[0]}", justify="right")
    scaling = doc["derived"][f"rules_{RULE_COUNTS[-1]}_over_{RULE_COUNTS[0]}"]
    for path in ("kernel", "native"):
        for case in CASES:
            cells = [_cell(sc[f"{path}_{case}_{n}"]) if f"{path}_{case}_{n}" in sc else "—" for n in RULE_COUNTS]
            ratio = scaling.get(f"{path}_{case}")
            t.add_row(path, case, *cells, report.ratio_cell(ratio) if ratio else "—")
    con.print(t)
    setup = doc["setup"]
    n = RULE_COUNTS[-1]
    con.print(f"control plane: compiling {n:,} rules (with analysis) took {setup['compile_s'][f'linear_{n}']:.2f} s; "
              f"applying them to the kernel's maps {setup['apply_s'][f'linear_{n}_apply_kernel_s']['median']:.2f} s "
              "(median)")


COLORS = {10: "#a6bddb", 1_000: "#3690c0", 10_000: "#034e7b"}


def plot(doc: dict[str, Any], path: Path) -> Path:
    """Two panels (kernel test-run, native batch): bars per case, one per rule count; the floor
    as a line in the kernel panel."""
    sc = doc["scenarios"]
    fig = Figure(figsize=(12, 5.2))
    axes = fig.subplots(1, 2)
    width = 0.26
    for ax, path_name, title in ((axes[0], "kernel", "kernel: XDP test-run"),
                                 (axes[1], "native", f"native: batches of {BATCH}")):
        for x, case in enumerate(CASES):
            counts = [n for n in RULE_COUNTS if f"{path_name}_{case}_{n}" in sc]
            for k, n in enumerate(counts):
                s = sc[f"{path_name}_{case}_{n}"]
                off = (k - (len(counts) - 1) / 2) * width
                ax.bar(x + off, s["median"], width, yerr=[[s["median"] - s["min"]], [s["max"] - s["median"]]],
                       capsize=3, color=COLORS[n], edgecolor="black", label=f"{n:,} rules" if x == 0 else None)
                ax.annotate(f"{s['median']:.0f}", (x + off, s["max"]), xytext=(0, 2), textcoords="offset points",
                            ha="center", va="bottom", fontsize=7)
        if path_name == "kernel":
            floor = sc["kernel_floor"]["median"]
            ax.axhline(floor, color="#9a9a9a", linestyle="--", label=f"floor xdp_pass {floor:.0f} ns")
        ax.set_xticks(range(len(CASES)), ["first rule", "last rule\n(linear worst)", "spread\n(bitmap worst)",
                                          "known flow\n(stateful)"], fontsize=8)
        ax.set_ylabel("ns/packet")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7, loc="upper left")
        ax.set_ylim(0, max(sc[n]["max"] for n in sc if n.startswith(path_name)) * 1.25)
    title = report.figure_title(doc, "firewall", "medians of {runs} runs on one CPU, bars min–max")
    return report.finish_figure(fig, title, path)


def save(doc: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write ``firewall-<UTC stamp>.json`` and the ``.png`` beside it; return both paths."""
    return report.save_run(doc, out_dir, "firewall", plot)


# ---- command line ------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``firewall`` subcommand's options."""
    report.add_common_arguments(parser, quick_help="shorter runs; still ≥ 5 runs",
                                cpu_help="CPU every path runs on (default: the highest allowed)")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Run the firewall benchmark; print the table and the paths of the JSON and PNG written."""
    console = make_console()
    if os.geteuid() != 0:
        console.print("[red]the firewall benchmark needs root (bpf() for the kernel executor)[/]")
        return 2
    profile = PROFILES["smoke" if args.smoke else "quick" if args.quick else "full"]
    cpu, _ = traffic.split_cpus(args.cpu)
    started = time.monotonic()
    with traffic.pinned({cpu}):  # test-run runs on the calling CPU; native shares it
        console.print(f"[bold]firewall benchmark[/] ({profile.name}, {args.runs} runs), on CPU {cpu}")
        results, setup = measure_all(profile, args.runs, log=console.print)
    params = {"profile": asdict(profile), "runs": args.runs, "cpu": cpu, "rule_counts": list(RULE_COUNTS),
              "frame_bytes": traffic.FRAME_BYTES, "frame": {"src": SRC, "dst": DST, "sport": SPORT, "dport": DPORT},
              "batch": BATCH, "slot_size": SLOT_SIZE,
              "rule_sets": {"linear": linear_rules(3), "spread": spread_rules(3)},
              "order": "rule sets applied in turn each run (rotating start); floor measured every run; "
                       "one untimed warm-up pass"}
    doc = document(params, results, setup, wall_s=time.monotonic() - started)
    print_tables(console, doc)
    for path in save(doc, args.out):
        console.print(f"wrote {path}")
    return 0
