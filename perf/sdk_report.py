"""The SDK benchmark's results: the JSON document, the table, the log-scale plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter
from rich.console import Console
from rich.table import Table

from perf import report
from perf.engine_report import console as _console

# Paths in the order they are reported, with what each one is.
PATH_LABELS = {
    "kernel_floor": "kernel: xdp_pass (floor)",
    "kernel": "kernel: VNF, test-run",
    "native_batch": "native: batch of 64",
    "native_single": "native: 1 per call",
    "native_call": "native: empty call (n=0)",
    "model": "model: Python",
}
PACKET_ORDER = ("miss", "hit", "none")
PACKET_LABELS = {"miss": "miss → PASS", "hit": "hit → DROP", "none": "—"}
PLOT_PATHS = ("kernel_floor", "kernel", "native_batch", "native_single", "model")
PLOT_NAMES = {"kernel_floor": "kernel floor\n(xdp_pass)", "kernel": "kernel\n(test-run)",
              "native_batch": "native\nbatch of 64", "native_single": "native\n1 per call",
              "model": "Python model"}
# The engine report's palette (floor grey, the kernel blue), one more colour per executor.
COLORS = {"kernel_floor": "#9a9a9a", "kernel": "#4c72b0", "native_batch": "#55a868", "native_single": "#8fd19e",
          "model": "#dd8452"}
WALL_OVER_CPU_WARN = 1.10  # a run whose wall time exceeds its CPU time by more lost the CPU
SPREAD_WARN = 0.25  # (max - min) / median above which a scenario's runs are called unsteady


def console() -> Console:
    """The same console as the engine benchmark's: wide enough when output is not a terminal."""
    return _console()


def _ratio(ns: dict[str, list[float]], a: str, b: str) -> dict[str, Any]:
    return report.summary(report.paired(ns[a], ns[b]))


def _derived(ns: dict[str, list[float]]) -> dict[str, Any]:
    kinds = ("miss", "hit")
    return {
        "native_batch_over_kernel": {k: _ratio(ns, f"native_batch_{k}", f"kernel_{k}") for k in kinds},
        "kernel_over_floor": {k: _ratio(ns, f"kernel_{k}", "kernel_floor") for k in kinds},
        "kernel_minus_floor_ns": {k: report.summary(report.paired(ns[f"kernel_{k}"], ns["kernel_floor"], "diff"))
                                  for k in kinds},
        "model_over_native_batch": {k: _ratio(ns, f"model_{k}", f"native_batch_{k}") for k in kinds},
        "model_over_kernel": {k: _ratio(ns, f"model_{k}", f"kernel_{k}") for k in kinds},
        "native_single_over_batch": {k: _ratio(ns, f"native_single_{k}", f"native_batch_{k}") for k in kinds},
        # What handing C one packet per call costs over 64 per call: the call, mostly.
        "native_single_minus_batch_ns": {
            k: report.summary(report.paired(ns[f"native_single_{k}"], ns[f"native_batch_{k}"], "diff"))
            for k in kinds},
        "native_call_per_packet_in_batch_ns": report.summary([v / 64 for v in ns["native_call"]]),
    }


def _warnings(scenarios: dict[str, Any]) -> list[str]:
    out = []
    for name, s in scenarios.items():
        if s["median"] and (s["max"] - s["min"]) / s["median"] > SPREAD_WARN:
            out.append(f"{name}: runs spread {s['min']:.1f}–{s['max']:.1f} {s['unit']} "
                       f"({100 * (s['max'] - s['min']) / s['median']:.0f}% of the median)")
        if s["path"].startswith("kernel"):
            continue  # test-run's own average excludes the syscall; thread time does not
        for i, r in enumerate(s["runs"]):
            if r["thread_cpu_ns"] and r["ns"] / r["thread_cpu_ns"] > WALL_OVER_CPU_WARN:
                out.append(f"{name} run {i + 1}: wall time {r['ns'] / r['thread_cpu_ns']:.2f}× this thread's "
                           "CPU time: it lost the CPU to something else for part of the run")
    return out


def document(params: dict[str, Any], scenarios: dict[str, Any], results: dict[str, list[dict[str, float]]],
             versions_extra: dict[str, str], wall_s: float) -> dict[str, Any]:
    """The whole result as one JSON-ready dict: machine, versions, parameters, per-run raw
    values with their median/min/max (``scenarios``), and per-run ratios (``derived``).

    ``scenarios`` maps names to ``perf.sdk.Scenario``; ``results`` their per-run records."""
    out: dict[str, Any] = {}
    order = sorted(scenarios.values(), key=lambda s: (list(PATH_LABELS).index(s.path), PACKET_ORDER.index(s.packet)))
    for s in order:
        name = s.name
        runs = results[name]
        ns = [r["ns"] for r in runs]
        entry = {"path": s.path, "packet": s.packet, "unit": s.unit, "label": PATH_LABELS[s.path],
                 **report.summary(ns)}
        if s.unit == "ns/packet":
            entry["packets_per_s"] = report.summary([1e9 / v for v in ns])
        entry["thread_cpu_ns"] = report.summary([r["thread_cpu_ns"] for r in runs])
        out[name] = {**entry, **s.notes, "runs": runs}
    ns_values = {name: [r["ns"] for r in runs] for name, runs in results.items()}
    return {"benchmark": "sdk", "schema": 1, "timestamp": report.utc_stamp(), "wall_s": round(wall_s, 1),
            "machine": report.machine(), "versions": report.versions(**versions_extra), "parameters": params,
            "scenarios": out, "derived": _derived(ns_values), "warnings": _warnings(out)}


def _rate(pps: float) -> str:
    return f"{pps / 1e6:.2f} M" if pps >= 1e6 else f"{pps / 1e3:.0f} k"


def _fmt(v: float) -> str:
    """ns with the precision that means something at its size."""
    return f"{v:.1f}" if v < 1000 else f"{v:,.0f}"


def _comparison(name: str, s: dict[str, Any], d: dict[str, Any]) -> str:
    """The one ratio that matters for a row: kernel vs floor, native vs kernel, model vs native."""
    k = s["packet"]
    if s["path"] == "kernel":
        diff = d["kernel_minus_floor_ns"][k]
        return f"{report.ratio_cell(d['kernel_over_floor'][k])} floor, +{diff['median']:.0f} ns"
    if s["path"] == "native_batch":
        return f"{report.ratio_cell(d['native_batch_over_kernel'][k])} kernel"
    if s["path"] == "native_single":
        return f"{report.ratio_cell(d['native_single_over_batch'][k])} batch"
    if s["path"] == "model":
        r = d["model_over_native_batch"][k]
        return f"{r['median']:.0f}× ({r['min']:.0f}–{r['max']:.0f}) native batch"
    if s["path"] == "native_call":
        per = d["native_call_per_packet_in_batch_ns"]
        return f"= {per['median']:.1f} ns/packet over 64"
    return "1.00× (floor)"


def print_tables(con: Console, doc: dict[str, Any]) -> None:
    """The medians, ranges and headline ratios as one table, then notes and warnings."""
    p, sc, d = doc["parameters"], doc["scenarios"], doc["derived"]
    t = Table(title=f"One VNF source on three executors (skeleton: hash lookup, {p['blocklist_entries']:,} entries)",
              caption=f"{p['frame_bytes']} B UDP/IPv4 frame ({p['frame_bytes_on_wire']} B on the wire); "
                      f"median of {p['runs']} runs on CPU {p['cpu']}; test-run repeat {p['profile']['repeat']:,}")
    for col in ("path", "packet", "ns/packet", "min–max", "packets/s", "per-run ratio (min–max)"):
        t.add_column(col, justify="left" if col in ("path", "packet") else "right")
    for name, s in sc.items():
        unit = "" if s["unit"] == "ns/packet" else " /call"
        t.add_row(s["label"], PACKET_LABELS[s["packet"]], _fmt(s["median"]) + unit,
                  f"{_fmt(s['min'])}–{_fmt(s['max'])}",
                  _rate(s["packets_per_s"]["median"]) if "packets_per_s" in s else "—", _comparison(name, s, d))
    con.print(t)
    single = d["native_single_minus_batch_ns"]["miss"]
    con.print(f"one packet per cffi call costs {single['median']:.0f} ns/packet more than 64 per call "
              f"(miss; an empty call alone is {sc['native_call']['median']:.0f} ns); "
              f"the model is {d['model_over_kernel']['miss']['median']:.0f}× the kernel path")
    con.print("ratios are medians of per-run ratios (runs interleaved), so their range is not the ratio of ranges")
    for w in doc["warnings"]:
        con.print(f"[yellow]warning:[/] {w}")


def _bar_note(path: str, kind: str, d: dict[str, Any]) -> str:
    """The headline ratio printed under a bar's value, or nothing."""
    if path == "kernel":
        return f"{d['kernel_over_floor'][kind]['median']:.2f}× floor"
    if path == "native_batch":
        return f"{d['native_batch_over_kernel'][kind]['median']:.2f}× kernel"
    if path == "model":
        return f"{d['model_over_native_batch'][kind]['median']:.0f}× native"
    return ""


def plot(doc: dict[str, Any], path: Path) -> Path:
    """Grouped bars of ns/packet on a log scale (the model is two to three orders of magnitude
    above the rest): one group per path, miss solid and hit hatched, error bars min–max."""
    sc, d, m = doc["scenarios"], doc["derived"], doc["machine"]
    # The object API, not pyplot: no backend or global figure state, so nothing depends on
    # which module chose matplotlib's backend first.
    fig = Figure(figsize=(11, 5.6))
    ax = fig.subplots()
    width = 0.38
    ticks = []
    for x, p in enumerate(PLOT_PATHS):
        names = ["kernel_floor"] if p == "kernel_floor" else [f"{p}_miss", f"{p}_hit"]
        offsets = [0.0] if len(names) == 1 else [-width / 2, width / 2]
        for name, off in zip(names, offsets, strict=True):
            s = sc[name]
            med = s["median"]
            ax.bar(x + off, med, width, yerr=[[med - s["min"]], [s["max"] - med]], capsize=4, color=COLORS[p],
                   edgecolor="black", hatch="//" if s["packet"] == "hit" else None)
            note = _bar_note(p, s["packet"], d)
            text = _fmt(med) + (f"\n{note}" if note else "")
            ax.annotate(text, (x + off, s["max"]), xytext=(0, 3), textcoords="offset points", ha="center",
                        va="bottom", fontsize=7)
        ticks.append(PLOT_NAMES[p])
    ax.set_yscale("log")
    lo = min(sc[n]["min"] for n in sc if sc[n]["unit"] == "ns/packet")
    hi = max(sc[n]["max"] for n in sc if sc[n]["unit"] == "ns/packet")
    ax.set_ylim(lo / 2, hi * 6)  # room above the tallest bar for its label, on a log axis
    ax.set_xticks(range(len(PLOT_PATHS)), ticks, fontsize=8)
    ax.set_ylabel("ns/packet (log scale)")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.grid(axis="y", which="major", alpha=0.3)
    ax.legend(handles=[Rectangle((0, 0), 1, 1, facecolor="white", edgecolor="black", label="miss → PASS"),
                       Rectangle((0, 0), 1, 1, facecolor="white", edgecolor="black", hatch="//",
                                 label="hit → DROP")], loc="upper left", fontsize=8)
    p = doc["parameters"]
    ax.set_title(f"One VNF source, three executors: hash lookup in {p['blocklist_entries']:,} entries, "
                 f"{p['frame_bytes_on_wire']} B frame", fontsize=10)
    fig.suptitle(f"vnfkit sdk benchmark, {doc['timestamp']}: {m['hostname']}, kernel {m['kernel']}, "
                 f"{m['cpu_model']} ×{m['nproc']}; medians of {p['runs']} runs on one CPU, bars min–max",
                 fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def save(doc: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write ``sdk-<UTC stamp>.json`` and the ``.png`` beside it; return both paths."""
    return report.save_run(doc, out_dir, "sdk", plot)
