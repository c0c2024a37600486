"""What every benchmark reports the same way: summaries of repeated runs, the machine and
tool versions, the JSON document, a bar chart with min–max error bars, and table cells.

A benchmark result here is always a list of per-run values; the median is the number,
min and max say how much it moved. Ratios are taken per run (run i of A over run i of B,
measured back to back) before the median, so drift across a session cancels.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: benchmarks run on headless hosts and under pytest

import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path(__file__).resolve().parent / "out"  # git-ignored


def add_common_arguments(parser: argparse.ArgumentParser, quick_help: str, cpu_help: str) -> None:
    """The options every benchmark takes: --quick, --runs (>= 5: a median needs them), --out,
    --cpu and the hidden --smoke the tests use."""
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--runs", type=_runs, default=7, help="runs per scenario, ≥ 5 (default 7)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--cpu", type=int, default=None, help=cpu_help)
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)


def _runs(text: str) -> int:
    n = int(text)
    if n < 5:
        raise argparse.ArgumentTypeError("a median needs at least 5 runs")
    return n


def save_run(doc: dict[str, Any], out_dir: Path, benchmark: str, plot: Any) -> list[Path]:
    """Write ``<benchmark>-<UTC stamp>.json`` and the PNG ``plot(doc, path)`` draws beside it;
    return both paths (recorded in the document too)."""
    stem = out_dir / f"{benchmark}-{doc['timestamp']}"
    png, js = stem.with_suffix(".png"), stem.with_suffix(".json")
    doc["files"] = {"json": str(js), "png": str(png)}
    plot(doc, png)
    write_json(doc, js)
    return [js, png]


def figure_title(doc: dict[str, Any], benchmark: str, what: str = "medians of {runs} runs, bars min–max") -> str:
    """The line every plot carries: which benchmark, when, on what machine."""
    m = doc["machine"]
    return (f"vnfkit {benchmark} benchmark, {doc['timestamp']}: {m['hostname']}, kernel {m['kernel']}, "
            f"{m['cpu_model']} ×{m['nproc']}; " + what.format(runs=doc["parameters"]["runs"]))


def finish_figure(fig: Any, title: str, path: Path) -> Path:
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def summary(values: Sequence[float]) -> dict[str, Any]:
    """``{"values", "median", "min", "max"}`` of per-run values."""
    if not values:
        raise ValueError("no runs to summarise")
    vals = [float(v) for v in values]
    return {"values": vals, "median": statistics.median(vals), "min": min(vals), "max": max(vals)}


def paired(a: Sequence[float], b: Sequence[float], op: str = "ratio") -> list[float]:
    """Per-run ``a[i] / b[i]`` (op="ratio") or ``a[i] - b[i]`` (op="diff")."""
    if len(a) != len(b):
        raise ValueError(f"paired runs differ in length: {len(a)} and {len(b)}")
    if op == "ratio":
        return [x / y if y else float("nan") for x, y in zip(a, b, strict=True)]
    return [x - y for x, y in zip(a, b, strict=True)]


def utc_stamp() -> str:
    """A file-name-safe UTC timestamp, e.g. ``20250102T030405Z``."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def machine() -> dict[str, Any]:
    """Where the numbers were taken: they mean little without it."""
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    from perf.traffic import live_frames_allowed  # probes the kernel once per process

    # Which generator the rates came from: live frames, or sendmmsg where the kernel refuses them.
    generator = "xdp_gen live frames" if live_frames_allowed() else "sendmmsg AF_PACKET (live frames refused)"
    return {"hostname": socket.gethostname(), "kernel": platform.release(), "kernel_build": platform.version(),
            "cpu_model": model, "nproc": os.cpu_count(), "cpus_allowed": sorted(os.sched_getaffinity(0)),
            "rate_generator": generator}


def command_output(*cmd: str) -> str:
    """A command's stdout, or "unknown" if it cannot run (versions are informative, not required)."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _libbpf_version() -> str:
    # The binding does not export libbpf_version_string; dlopen by soname returns the copy
    # the binding already loaded, so this is the version actually in use.
    with contextlib.suppress(OSError, AttributeError):
        lib = ctypes.CDLL("libbpf.so.1")
        lib.libbpf_version_string.restype = ctypes.c_char_p
        return lib.libbpf_version_string().decode()
    return "unknown"


def versions(**extra: str) -> dict[str, Any]:
    """Versions of everything that shapes the numbers, plus the tree they came from."""
    from datapath.compiler import clang_version

    try:
        clang = clang_version()
    except Exception:  # noqa: BLE001 - a missing clang only blanks this field
        clang = "unknown"
    dirty = command_output("git", "-C", str(REPO), "status", "--porcelain")
    return {"python": sys.version.split()[0], "clang": clang, "libbpf": _libbpf_version(),
            "vnfkit_commit": command_output("git", "-C", str(REPO), "rev-parse", "HEAD"),
            "vnfkit_tree_dirty": dirty not in ("", "unknown"), **extra}


def write_json(doc: dict[str, Any], path: Path) -> Path:
    """Write ``doc`` as indented JSON, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    return path


@dataclass
class Panel:
    """One bar chart: a bar per label at its median, error bars from min to max."""

    title: str
    unit: str
    labels: list[str]
    stats: list[dict[str, Any]]  # summary() of each bar
    notes: list[str] | None = None  # printed above each bar, e.g. "0.45× floor"
    colors: list[str] | None = None  # one per bar, e.g. to set floor and peers apart


def bar_chart(panels: Sequence[Panel], path: Path, title: str) -> Path:
    """Side-by-side bar charts of medians with min–max error bars, saved as PNG."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.8), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        med = [s["median"] for s in panel.stats]
        err = [[m - s["min"] for m, s in zip(med, panel.stats, strict=True)],
               [s["max"] - m for m, s in zip(med, panel.stats, strict=True)]]
        bars = ax.bar(range(len(med)), med, yerr=err, capsize=6, color=panel.colors or "#4c72b0",
                      edgecolor="black")
        ax.set_xticks(range(len(med)), panel.labels, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel(panel.unit)
        ax.set_title(panel.title, fontsize=10)
        top = max(s["max"] for s in panel.stats)
        ax.set_ylim(0, top * 1.25)
        for i, (bar, m) in enumerate(zip(bars, med, strict=True)):
            text = f"{m:.3g}" + (f"\n{panel.notes[i]}" if panel.notes and panel.notes[i] else "")
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, panel.stats[i]["max"]),
                        xytext=(0, 4), textcoords="offset points", ha="center", va="bottom", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def cell(stat: dict[str, Any], fmt: str = "{:.2f}") -> str:
    """A table cell for a summary: the median."""
    return fmt.format(stat["median"])


def span(stat: dict[str, Any], fmt: str = "{:.2f}") -> str:
    """A table cell for a summary's range: ``min–max``."""
    return f"{fmt.format(stat['min'])}–{fmt.format(stat['max'])}"


def ratio_cell(stat: dict[str, Any] | None) -> str:
    """``0.45× (0.43–0.47)`` for a per-run ratio summary; an em dash for none."""
    if stat is None:
        return "—"
    return f"{stat['median']:.2f}× ({stat['min']:.2f}–{stat['max']:.2f})"
