"""The engine benchmark's results: the JSON document, the tables, the plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from perf import report

TESTRUN_LABELS = {"xdp_pass": "xdp_pass (floor: empty program)",
                  "xdp_lookup": "xdp_lookup (hash hit, 10k entries)"}
# Bar colours: the floor grey, vnfkit's programs blue, peers orange.
FLOOR, OURS, PEER = "#9a9a9a", "#4c72b0", "#dd8452"
RATE_COLORS = [FLOOR, OURS, PEER, PEER]
RATE_LABELS = {"floor": "floor: xdp_gen → bare XDP_DROP",
               "xdp_count": "xdp_gen → xdp_count sink",
               "nft": "peer: xdp_gen → nftables ingress drop",
               "python_af_packet": "peer: Python AF_PACKET → xdp_count sink"}


def console() -> Console:
    """A console wide enough for the tables even when output goes to a file or a pipe."""
    c = Console()
    return c if c.is_terminal else Console(width=130)


def _derived(testrun: dict[str, list[dict]], rates: dict[str, list[dict]]) -> dict[str, Any]:
    ns = {name: [r["ns"] for r in runs] for name, runs in testrun.items()}
    mpps = {name: [r["mpps"] for r in runs] for name, runs in rates.items()}
    return {
        "lookup_minus_floor_ns": report.summary(report.paired(ns["xdp_lookup"], ns["xdp_pass"], "diff")),
        "lookup_over_floor": report.summary(report.paired(ns["xdp_lookup"], ns["xdp_pass"])),
        "rate_over_floor": {n: report.summary(report.paired(v, mpps["floor"])) for n, v in mpps.items()},
        "rate_over_nft": {n: report.summary(report.paired(v, mpps["nft"])) for n, v in mpps.items()},
        # Same xdp_count sink, two senders: what the in-kernel generator buys.
        "live_over_python_af_packet": report.summary(report.paired(mpps["xdp_count"], mpps["python_af_packet"])),
    }


def _warnings(rates: dict[str, list[dict]]) -> list[str]:
    out = []
    for name, runs in rates.items():
        sent, lost = sum(r["sent"] for r in runs), sum(r["lost"] for r in runs)
        if lost:
            out.append(f"{name}: {lost:,} of {sent:,} frames sent never reached the sink's receive queue")
        for i, r in enumerate(runs):
            if r["sink_counted"] != r["received"]:
                out.append(f"{name} run {i + 1}: the sink counted {r['sink_counted']:,} frames, "
                           f"its device received {r['received']:,}")
    return out


def document(params: dict[str, Any], testrun: dict[str, list[dict]], rates: dict[str, list[dict]],
             wall_s: float) -> dict[str, Any]:
    """The whole result as one JSON-ready dict: machine, versions, parameters, per-run raw
    values with their median/min/max (``scenarios``), and per-run ratios (``derived``)."""
    params = dict(params)
    how = params.pop("scenarios")
    scenarios: dict[str, Any] = {}
    for name, runs in testrun.items():
        scenarios[f"testrun_{name}"] = {"kind": "testrun", "unit": "ns/packet", "label": TESTRUN_LABELS[name],
                                        **report.summary([r["ns"] for r in runs]), "runs": runs}
    for name, runs in rates.items():
        scenarios[f"rate_{name}"] = {"kind": "rate", "unit": "Mpps", "label": RATE_LABELS[name], **how[name],
                                     **report.summary([r["mpps"] for r in runs]), "runs": runs}
    nft_version = report.command_output("nft", "--version")
    return {"benchmark": "engine", "schema": 1, "timestamp": report.utc_stamp(), "wall_s": round(wall_s, 1),
            "machine": report.machine(), "versions": report.versions(nft=nft_version), "parameters": params,
            "scenarios": scenarios, "derived": _derived(testrun, rates), "warnings": _warnings(rates)}


def print_tables(con: Console, doc: dict[str, Any]) -> None:
    """The medians, ranges and ratios, as two tables and a verdict line."""
    p, sc, d = doc["parameters"], doc["scenarios"], doc["derived"]
    t = Table(title="Per-packet cost (BPF_PROG_TEST_RUN)",
              caption=f"{p['frame_bytes']} B UDP/IPv4 frame ({p['frame_bytes_on_wire']} B on the wire), "
                      f"repeat {p['profile']['repeat']:,}, median of {p['runs']} runs")
    for col in ("program", "ns/packet", "min–max", "over the floor", "× floor"):
        t.add_column(col, justify="left" if col == "program" else "right")
    diff = d["lookup_minus_floor_ns"]
    t.add_row(TESTRUN_LABELS["xdp_pass"], report.cell(sc["testrun_xdp_pass"], "{:.1f}"),
              report.span(sc["testrun_xdp_pass"], "{:.0f}"), "—", "1.00×")
    t.add_row(TESTRUN_LABELS["xdp_lookup"], report.cell(sc["testrun_xdp_lookup"], "{:.1f}"),
              report.span(sc["testrun_xdp_lookup"], "{:.0f}"),
              f"+{diff['median']:.1f} ns ({diff['min']:.0f}–{diff['max']:.0f})",
              report.ratio_cell(d["lookup_over_floor"]))
    con.print(t)

    prof = p["profile"]
    t = Table(title="Rate received at the far end of a veth",
              caption=f"{prof['seconds']} s counting window per run, median of {p['runs']} runs, "
                      f"{p['flows']} flows, whole path on CPU {p['path_cpu']}")
    for col in ("scenario", "Mpps", "min–max", "× floor", "× nft peer", "lost"):
        t.add_column(col, justify="left" if col == "scenario" else "right")
    for name, label in RATE_LABELS.items():
        s = sc[f"rate_{name}"]
        sent, lost = sum(r["sent"] for r in s["runs"]), sum(r["lost"] for r in s["runs"])
        t.add_row(label, report.cell(s, "{:.3f}"), report.span(s, "{:.3f}"),
                  report.ratio_cell(d["rate_over_floor"][name]), report.ratio_cell(d["rate_over_nft"][name]),
                  f"{100 * lost / sent:.2f}%" if sent else "—")
    con.print(t)
    con.print("in-kernel generator over Python AF_PACKET, same xdp_count sink: "
              + report.ratio_cell(d["live_over_python_af_packet"]))
    con.print("ratios are medians of per-run ratios (runs interleaved), so their range is not the ratio of ranges")
    for w in doc["warnings"]:
        con.print(f"[yellow]warning:[/] {w}")


def save(doc: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write ``engine-<UTC stamp>.json`` and the ``.png`` beside it; return both paths."""
    stem = out_dir / f"engine-{doc['timestamp']}"
    png, js = stem.with_suffix(".png"), stem.with_suffix(".json")
    sc, d = doc["scenarios"], doc["derived"]
    m = doc["machine"]
    title = (f"vnfkit engine benchmark, {doc['timestamp']}: {m['hostname']}, kernel {m['kernel']}, "
             f"{m['cpu_model']} ×{m['nproc']}; medians of {doc['parameters']['runs']} runs, bars min–max")
    panels = [
        report.Panel("Per-packet cost (BPF_PROG_TEST_RUN)", "ns/packet", ["xdp_pass (floor)", "xdp_lookup"],
                     [sc["testrun_xdp_pass"], sc["testrun_xdp_lookup"]],
                     ["", f"{d['lookup_over_floor']['median']:.2f}× floor"], [FLOOR, OURS]),
        report.Panel("Rate received at the far end of a veth", "Mpps",
                     ["floor: XDP_DROP", "xdp_count", "nftables ingress", "Python AF_PACKET\n→ xdp_count"],
                     [sc[f"rate_{n}"] for n in RATE_LABELS],
                     [f"{d['rate_over_floor'][n]['median']:.2f}× floor" if n != "floor" else "" for n in RATE_LABELS],
                     RATE_COLORS),
    ]
    doc["files"] = {"json": str(js), "png": str(png)}
    report.bar_chart(panels, png, title)
    report.write_json(doc, js)
    return [js, png]
