"""The benchmark suite's results: the JSON document, the ratio tables, the plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from rich.console import Console
from rich.table import Table

from perf import jobs, peers, report
from perf.engine_report import console as console  # noqa: PLC0414 - the same console for every benchmark

FLOOR, OURS, PEER, CHAIN = "#9a9a9a", "#4c72b0", "#dd8452", "#55a868"
GROUP_COLORS = {"floor": FLOOR, "function": OURS, "peer": PEER, "chain": CHAIN}
RULES = jobs.FIREWALL_RULES
HOPS = (1, 2, 4, 8, 16)

# Scenario -> (its floor, the peers doing the same job). Ratios are ours / theirs: > 1 is faster.
COMPARE: dict[str, tuple[str, tuple[str, ...]]] = {
    **{f"firewall_{n}": ("floor_drop", (f"nft_fw_{n}", f"ipt_fw_{n}")) for n in RULES},
    **{f"nft_fw_{n}": ("floor_drop", ()) for n in RULES},
    **{f"ipt_fw_{n}": ("floor_drop", ()) for n in RULES},
    "nat": ("floor_pass", ("nft_snat",)),
    "l4lb": ("floor_pass", ("nft_lb_jhash", "nft_lb_numgen")),
    "ratelimit": ("floor_drop", ("nft_limit",)),
    "monitor": ("floor_pass", ()),  # no peer does its job here; floor_pass is Linux forwarding behind XDP
    "gtp": ("floor_pass", ()),
    "floor_redirect": ("floor_redirect", ("linux_forward", "python_fwd", "testpmd_af_packet", "testpmd_af_xdp")),
    "floor_pass": ("floor_redirect", ("linux_forward",)),
    "floor_drop": ("floor_drop", ()),
    **{f"chain_local_{n}": ("floor_drop", ()) for n in HOPS},
    "chain_remote_2": ("floor_drop", ("chain_local_2",)),
    **{n: ("floor_redirect", ()) for n in ("linux_forward", "nft_snat", "nft_lb_jhash", "nft_lb_numgen",
                                           "python_fwd", "testpmd_af_packet", "testpmd_af_xdp")},
    "nft_limit": ("floor_drop", ()),
}


def _base(name: str) -> tuple[str, str]:
    """``firewall_1000@1518`` -> (``firewall_1000``, ``@1518``)."""
    base, at, size = name.partition("@")
    return base, at + size


def _paired(a: list[float], b: list[float]) -> dict[str, Any] | None:
    if len(a) != len(b) or not a:
        return None
    return report.summary(report.paired(a, b))


def document(params: dict[str, Any], per_packet: dict[str, list[dict[str, float]]], fn_setup: dict[str, Any],
             rates: dict[str, list[dict[str, Any]]], rate_setup: dict[str, Any], wall_s: float) -> dict[str, Any]:
    """Everything as one JSON-ready dict: per-run values with median/min/max, ratios per run."""
    pp: dict[str, Any] = {}
    floor_ns = [r["ns"] for r in per_packet["testrun_floor"]]
    for name, runs in per_packet.items():
        ns = [r["ns"] for r in runs]
        entry: dict[str, Any] = {"unit": "ns/packet", **report.summary(ns), "runs": runs}
        if name.startswith("testrun_"):
            entry["over_floor"] = _paired(ns, floor_ns)
        pp[name] = entry
    for name in list(pp):
        if name.startswith("native_"):
            kernel = [r["ns"] for r in per_packet["testrun_" + name.removeprefix("native_")]]
            pp[name]["kernel_over_native"] = _paired(kernel, [r["ns"] for r in per_packet[name]])

    mpps = {n: [r["mpps"] for r in runs] for n, runs in rates.items()}
    nodrop = {n: [r["no_drop_mpps"] for r in runs] for n, runs in rates.items() if all("no_drop_mpps" in r
                                                                                        for r in runs)}
    sc: dict[str, Any] = {}
    for name, runs in rates.items():
        base, size = _base(name)
        rig = rate_setup["rigs"].get(base, {})
        entry = {"unit": "Mpps", "group": rig.get("group"), "what": rig.get("what"), "end": rig.get("end"),
                 "frame_bytes_on_wire": int(size[1:]) if size else 64, **report.summary(mpps[name])}
        if name in nodrop:
            entry["no_drop"] = report.summary(nodrop[name])
        sent, lost = sum(r["sent"] for r in runs), sum(r["lost"] for r in runs)
        entry["loss_in_throughput_runs"] = lost / sent if sent else None
        floor, peer_names = COMPARE.get(base, ("floor_drop", ()))
        if floor + size in mpps and floor != base:
            entry["over_floor"] = _paired(mpps[name], mpps[floor + size])
            entry["floor"] = floor + size
        entry["vs_peers"] = {p + size: _paired(mpps[name], mpps[p + size]) for p in peer_names if p + size in mpps}
        entry["no_drop_vs_peers"] = {p + size: _paired(nodrop[name], nodrop[p + size]) for p in peer_names
                                     if name in nodrop and p + size in nodrop}
        entry["runs"] = runs
        sc[name] = entry
    warnings = []
    for name, runs in rates.items():
        for i, r in enumerate(runs):
            if "work" in r and r["work"] < r["received"] * 0.99 and sc[name]["end"] == "drop":
                warnings.append(f"{name} run {i + 1}: the DUT did its job on {r['work']:,} frames, its device "
                                f"received {r['received']:,}")
    unavailable = dict(rate_setup["unavailable"])
    return {"benchmark": "suite", "schema": 1, "timestamp": report.utc_stamp(), "wall_s": round(wall_s, 1),
            "machine": report.machine(),
            "versions": report.versions(nft=report.command_output("nft", "--version"),
                                        iptables=peers.iptables_version(),
                                        testpmd=report.command_output("dpkg-query", "-W", "-f=${Version}",
                                                                      "dpdk-dev")),
            "parameters": params, "setup": {"functions": fn_setup, **rate_setup}, "per_packet": pp,
            "scenarios": sc, "unavailable": unavailable, "warnings": warnings}


# ---- tables ----------------------------------------------------------------------------------------
def _mpps(s: dict[str, Any]) -> str:
    return f"{s['median']:.3f} ({s['min']:.3f}–{s['max']:.3f})"


def _ratio(s: dict[str, Any] | None) -> str:
    return "—" if s is None else f"{s['median']:.2f}×"


def ratio_rows(doc: dict[str, Any]) -> list[list[str]]:
    """The headline table's rows: scenario, what, Mpps, no-drop Mpps, × floor, vs peers."""
    rows = []
    for name, s in doc["scenarios"].items():
        if "@" in name:
            continue
        nd = _mpps(s["no_drop"]) if "no_drop" in s else "—"
        floor = f"{_ratio(s.get('over_floor'))} {s.get('floor', '')}" if s.get("over_floor") else "1.00×" \
            if s["group"] == "floor" else "—"
        vs = ", ".join(f"{_ratio(v)} {p}" for p, v in s["vs_peers"].items() if v)
        rows.append([name, s["what"] or "", _mpps(s), nd, floor, vs or "—"])
    return rows


def print_tables(con: Console, doc: dict[str, Any]) -> None:
    p, pp, sc = doc["parameters"], doc["per_packet"], doc["scenarios"]
    t = Table(title="Rates at the receiver, side by side (ratios: this scenario over the other, per run, median)",
              caption=f"median (min–max) of {p['runs']} runs, {p['profile']['seconds']} s windows, 64 B frames, "
                      f"{p['flows']} flows; path on CPU {p['path_cpu']}; no-drop: binary search, loss ≤ "
                      f"{p['loss_threshold']:.2%}; generator: "
                      f"{doc.get('machine', {}).get('rate_generator', 'xdp_gen live frames')}")
    for col in ("scenario", "Mpps", "no-drop Mpps", "× floor", "vs peers (> 1: this one is faster)"):
        t.add_column(col, overflow="fold")
    rows = ratio_rows(doc)
    for row in rows:
        t.add_row(row[0], *row[2:])
    con.print(t)
    for row in rows:
        con.print(f"  [bold]{row[0]}[/]: {row[1]}", highlight=False)

    t = Table(title="Per-packet cost of each VNF's job: kernel (test-run) and native (batch of 64)",
              caption="test-run: mean of one-repetition runs, the kernel's duration; floor: xdp_pass the same way; "
                      "live: bpf run-time stats under live traffic (one extra run)")
    for col in ("function", "kernel ns", "× floor", "native ns", "kernel / native", "live ns/run"):
        t.add_column(col, justify="left" if col == "function" else "right")
    fl = pp["testrun_floor"]
    t.add_row("floor (xdp_pass)", f"{fl['median']:.0f} ({fl['min']:.0f}–{fl['max']:.0f})", "1.00×", "—", "—",
              _live_ns(doc, "floor_drop"))
    for name in pp:
        if not name.startswith("testrun_") or name == "testrun_floor":
            continue
        fn = name.removeprefix("testrun_")
        k, n = pp[name], pp[f"native_{fn}"]
        t.add_row(fn, f"{k['median']:.0f} ({k['min']:.0f}–{k['max']:.0f})", _ratio(k["over_floor"]),
                  f"{n['median']:.0f} ({n['min']:.0f}–{n['max']:.0f})", _ratio(n["kernel_over_native"]),
                  _live_ns(doc, fn))
    con.print(t)

    sized = sorted({_base(n)[0] for n in sc if "@" in n})
    if sized:
        sizes = sorted({sc[n]["frame_bytes_on_wire"] for n in sc if _base(n)[0] in sized})
        t = Table(title="Mpps (Gbit/s on the wire) by frame size")
        t.add_column("scenario")
        for size in sizes:
            t.add_column(f"{size} B", justify="right")
        for base in sized:
            cells = []
            for size in sizes:
                s = sc.get(base if size == 64 else f"{base}@{size}")
                cells.append(f"{s['median']:.3f} ({s['median'] * (size + 20) * 8 / 1e3:.2f})" if s else "—")
            t.add_row(base, *cells)
        con.print(t)
    for name, why in doc["unavailable"].items():
        con.print(f"[yellow]not measured:[/] {name}: {why}")
    for w in doc["warnings"]:
        con.print(f"[yellow]warning:[/] {w}")


def _live_ns(doc: dict[str, Any], scenario: str) -> str:
    stats = doc["setup"].get("bpf_stats", {}).get(scenario)
    if not stats:
        return "—"
    vals = [v["ns_per_run"] for k, v in stats.items() if isinstance(v, dict) and v.get("ns_per_run")]
    return " + ".join(f"{v:.0f}" for v in vals) or "—"


# ---- plots ---------------------------------------------------------------------------------------
def _line(ax: Any, xs: list[int], stats: list[dict[str, Any]], label: str, color: str, marker: str = "o",
          style: str = "-") -> None:
    med = [s["median"] for s in stats]
    err = [[m - s["min"] for m, s in zip(med, stats, strict=True)],
           [s["max"] - m for m, s in zip(med, stats, strict=True)]]
    ax.errorbar(xs, med, yerr=err, marker=marker, capsize=3, color=color, label=label, linestyle=style)


def _rate_axes(ax: Any, xlabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel("Mpps received")
    ax.set_title(title, fontsize=10)
    ax.set_ylim(0, None)
    ax.legend(fontsize=7)


def plot(doc: dict[str, Any], path: Path) -> Path:
    """Six panels: throughput vs rules, vs chain length, vs frame size; per executor (ns);
    every rate scenario (bars by group); no-drop rates."""
    sc, pp = doc["scenarios"], doc["per_packet"]
    fig = Figure(figsize=(18, 10))
    axes = fig.subplots(2, 3)
    floor = sc.get("floor_drop")

    ax = axes[0][0]
    for prefix, label, color, marker in (("firewall", "firewall VNF (XDP)", OURS, "o"),
                                         ("nft_fw", "nftables (netdev ingress)", PEER, "s"),
                                         ("ipt_fw", "iptables legacy (raw PREROUTING)", "#c44e52", "^")):
        xs = [n for n in RULES if f"{prefix}_{n}" in sc]
        if xs:
            _line(ax, xs, [sc[f"{prefix}_{n}"] for n in xs], label, color, marker)
    if floor:
        ax.axhline(floor["median"], color=FLOOR, linestyle="--", label=f"floor: XDP_DROP {floor['median']:.2f}")
    ax.set_xscale("log")
    ax.set_yscale("log")  # the peers fall by orders of magnitude
    ax.set_xlabel("rules (the frames match the last)")
    ax.set_ylabel("Mpps received (log)")
    ax.set_title("Firewall: throughput vs rules", fontsize=10)
    ax.legend(fontsize=7)

    ax = axes[0][1]
    xs = [n for n in HOPS if f"chain_local_{n}" in sc]
    if xs:
        _line(ax, xs, [sc[f"chain_local_{n}"] for n in xs], "one host", CHAIN)
    if "chain_remote_2" in sc:
        _line(ax, [2], [sc["chain_remote_2"]], "two hosts (NSH over a veth underlay)", PEER, "D")
    if floor:
        ax.axhline(floor["median"], color=FLOOR, linestyle="--", label="floor: XDP_DROP")
    _rate_axes(ax, "functions in the path", "Service chains: throughput vs chain length")

    ax = axes[0][2]
    sized = sorted({_base(n)[0] for n in sc if "@" in n})
    size_colors = {"floor_drop": "#333333", "floor_redirect": FLOOR, "firewall_1000": OURS, "nft_fw_1000": PEER}
    for base in sized:
        pts = sorted(((sc[n]["frame_bytes_on_wire"], sc[n]) for n in sc if _base(n)[0] == base), key=lambda p: p[0])
        _line(ax, [x for x, _ in pts], [s for _, s in pts], base, size_colors.get(base, CHAIN))
    _rate_axes(ax, "frame size on the wire (bytes)", "Throughput vs frame size")

    ax = axes[1][0]
    fns = [n.removeprefix("testrun_") for n in pp if n.startswith("testrun_") and n != "testrun_floor"]
    width = 0.38
    for k, (kind, label, color) in enumerate((("testrun", "kernel (test-run)", OURS),
                                              ("native", "native (batch of 64)", CHAIN))):
        stats = [pp[f"{kind}_{f}"] for f in fns]
        med = [s["median"] for s in stats]
        ax.bar([i + (k - 0.5) * width for i in range(len(fns))], med, width,
               yerr=[[m - s["min"] for m, s in zip(med, stats, strict=True)],
                     [s["max"] - m for m, s in zip(med, stats, strict=True)]],
               capsize=2, color=color, edgecolor="black", label=label)
    ax.axhline(pp["testrun_floor"]["median"], color=FLOOR, linestyle="--",
               label=f"floor xdp_pass {pp['testrun_floor']['median']:.0f} ns")
    ax.set_xticks(range(len(fns)), fns, rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("ns/packet")
    ax.set_title("Per executor: each VNF's job, ns/packet", fontsize=10)
    ax.legend(fontsize=7)

    for ax, key, title in ((axes[1][1], None, "Throughput, 64 B"),
                           (axes[1][2], "no_drop", "No-drop rate, 64 B (where searched)")):
        names = [n for n in sc if "@" not in n and (key is None or key in sc[n])]
        stats = [sc[n] if key is None else sc[n][key] for n in names]
        med = [s["median"] for s in stats]
        ax.barh(range(len(names)), med, xerr=[[m - s["min"] for m, s in zip(med, stats, strict=True)],
                                              [s["max"] - m for m, s in zip(med, stats, strict=True)]],
                capsize=2, color=[GROUP_COLORS.get(sc[n]["group"], OURS) for n in names], edgecolor="black")
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("Mpps received")
        ax.set_title(title + ": grey floor, blue VNF, green chain, orange peer", fontsize=9)
        for i, m in enumerate(med):
            ax.annotate(f"{m:.2f}", (m, i), xytext=(3, 0), textcoords="offset points", va="center", fontsize=6)
    title = report.figure_title(doc, "suite", "medians of {runs} runs on one CPU, bars min–max")
    return report.finish_figure(fig, title, path)


def save(doc: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write ``suite-<UTC stamp>.json`` and the ``.png`` beside it; return both paths."""
    return report.save_run(doc, out_dir, "suite", plot)
