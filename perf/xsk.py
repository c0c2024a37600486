"""The AF_XDP benchmark: packets/s of the firewall in user space, against XDP and a Python loop.

The firewall VNF (vnfs/firewall, one rule: allow UDP from one source to port 9, default deny)
behind three veths from namespace ``gen`` to ``dut``, each fed by the in-kernel live-frames
generator (``xdp_gen``) on the path CPU:

* ``xdp``: the firewall's BPF program at XDP (native) on the dut end;
* ``xsk``: the same fastpath.c in an AF_XDP worker (``datapath.xsk``, copy mode: veth has no
  zero-copy), batches of 1, 16, 64 and 256 frames per VNF call;
* ``python``: a pure-Python packet loop: an AF_PACKET socket, ``recv_into`` one frame, the
  firewall's native build on it (one cffi call), ``send`` it back when allowed.

Two cases: ``deny`` (a frame from another source: received, judged, dropped) on all three,
and ``allow`` (the allowed source: received, judged and sent back out of the dut end, where an
XDP_DROP on the gen end takes it) on the user-space paths; at XDP an allowed frame goes to
the host stack, which is not the same work, so that case is not measured there.

The rate is what the function itself handled: its own RX counter (the VNF's ``rx`` at XDP,
the runtime's ``rx`` in the worker, the loop's count), read in-process at the edges of a window
inside the sending (``traffic.measure``). The generator offers more than the user-space paths
take; the rest is dropped before them (counted by the kernel: ``k_rx_ring_full``). The AF_XDP
worker and the Python loop run on the other CPU (the kernel's side of their path, redirect and
copy, stays on the path CPU). Every run is checked: the function's verdict counter moved by
exactly the frames it handled. Medians of runs with min and max; ratios per run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.table import Table

from datapath import netns
from datapath.attach import attach_xdp
from datapath.builtin import builtin
from datapath.errors import VnfkitError
from datapath.objects import load
from datapath.verdict import Verdict
from datapath.xsk.service import XskFunction, XskOptions
from perf import engine, report, sinks, traffic
from perf.engine_report import console as make_console
from vnfkit.descriptor import load_descriptor
from vnfkit.executors import HEADROOM, NativeExecutor, make_executors
from vnfkit.instance import KernelInstance
from vnfkit.pyfile import import_file
from vnfkit.testing import prepare

FW = report.REPO / "vnfs" / "firewall"
BATCHES = (1, 16, 64, 256)
CASES = ("deny", "allow")
DENY_SRC = "198.19.255.254"       # any source but the allowed one: the default policy drops it
OTHER_MAC = "02:00:00:00:00:02"   # not the dut end's: the stack drops what reaches it at once
SOL_PACKET, PACKET_IGNORE_OUTGOING = 263, 23
PY_SNAPLEN = 2048


class PythonLoop:
    """The pure-Python user-space path: one thread, AF_PACKET, the native firewall per frame."""

    def __init__(self, ns: str, ifname: str, native: NativeExecutor, cpu: int) -> None:
        self.native, self.cpu = native, cpu
        with netns.enter(ns):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        self.sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)  # not our own sends
        self.sock.bind((ifname, 0))
        self.sock.settimeout(0.1)
        self.count = 0
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="python-af-packet-loop", daemon=True)
        self.error: BaseException | None = None

    def _main(self) -> None:
        try:
            os.sched_setaffinity(0, {self.cpu})
            ffi, lib = self.native.ffi, self.native.lib
            buf = bytearray(HEADROOM + PY_SNAPLEN)
            cbuf = ffi.from_buffer("uint8_t[]", buf)
            view = memoryview(buf)
            frame = view[HEADROOM:]
            res = ffi.new("struct vk_result *")
            recv_into, send, run = self.sock.recv_into, self.sock.send, lib.vk_native_run
            passed = int(Verdict.PASS)
            while not self._stop.is_set():
                try:
                    n = recv_into(frame)
                except TimeoutError:
                    continue
                run(cbuf, HEADROOM, n, res)
                self.count += 1
                if res.verdict == passed:
                    send(view[res.offset:res.offset + res.len])
                    self.sent += 1
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.error = exc

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()
        if self.error is not None:
            raise RuntimeError(f"the Python packet loop failed: {self.error}") from self.error


class Bench:
    """The three firewalls, their veths and generators; the scenarios measured on them."""

    def __init__(self, topo: netns.Topology, stack: contextlib.ExitStack, worker_cpu: int) -> None:
        control = import_file(FW / "control.py", "the firewall's control plane", VnfkitError)
        gen_ns, dut_ns = topo.add_ns("gen"), topo.add_ns("dut")
        self.pairs = {name: topo.add_veth(gen_ns, dut_ns) for name in ("xdp", "xsk", "python")}
        genobj = stack.enter_context(load(builtin("xdp_gen")))
        drop = stack.enter_context(load(builtin("xdp_pass"), defines={"VERDICT": "XDP_DROP"}))
        passer = stack.enter_context(load(builtin("xdp_pass")))
        for pair in self.pairs.values():  # takes what the user-space paths send back
            stack.callback(attach_xdp(drop.program(), pair.ifname_a, ns=gen_ns, mode="native").detach)
        allow_src = self.pairs["xdp"].addr_a
        self.rules_text = f"allow udp from {allow_src} to any port {traffic.DST_PORT}"
        rules = control.compile_rules(self.rules_text)
        self.policy = control.policy_config("deny")

        self.xdp = stack.enter_context(KernelInstance(FW, self.policy))
        control.apply(self.xdp.tables, rules)
        self.xdp.attach(dut_ns, self.pairs["xdp"].ifname_b, mode="native")

        self.xsk = stack.enter_context(XskFunction(FW, dut_ns, self.pairs["xsk"].ifname_b, config=self.policy,
                                                   options=XskOptions(batch=64, cpus=(worker_cpu,))))
        control.apply(self.xsk.tables, rules)
        self.xsk.start()
        self._xsk_stats = self.xsk.queues[0].shared

        [native] = make_executors(FW, ("native",))
        prepare([native], load_descriptor(FW), self.policy, {}, "python loop")
        control.apply(native.tables, rules)
        native.set_clock(0)
        # veth takes XDP-redirected frames only when its peer runs XDP: an XDP_PASS there.
        stack.callback(attach_xdp(passer.program(), self.pairs["python"].ifname_b, ns=dut_ns, mode="native").detach)
        self.native = native
        self.loop = PythonLoop(dut_ns, self.pairs["python"].ifname_b, native, worker_cpu)
        self.loop.start()
        stack.callback(self.loop.stop)

        def live(pair: netns.VethPair, src: str) -> traffic.FrameSender:
            frame = traffic.udp_frame(traffic.link_mac(pair.ns_a, pair.ifindex_a), OTHER_MAC, src, pair.addr_b,
                                      engine.BASE_PORT)
            return traffic.frame_sender(genobj, pair.ns_a, pair.ifindex_a, frame,
                                        flows=engine.FLOWS, base_port=engine.BASE_PORT)

        srcs = {"deny": DENY_SRC, "allow": allow_src}
        counters: dict[str, tuple[Callable[[], int], Callable[[str], int]]] = {
            "xdp": (lambda: self.xdp.counters()["rx"][0], lambda v: self.xdp.counters()[v][0]),
            "xsk": (lambda: int(self._xsk_stats.stats_view[0]), lambda v: self.xsk.counters()[v][0]),
            "python": (lambda: self.loop.count, lambda v: self.native.counters()[v][0]),
        }
        self.offered = 0.0  # frames/s the generator sends: what XDP, taking them all, handles
        self.scenarios: list[engine.Scenario] = []
        self.checks: dict[str, tuple[str, Callable[[str], int], Callable[[], None]]] = {}
        for case in CASES:
            verdict = "drop" if case == "deny" else "pass"
            for path in ("xdp", "python", "xsk"):
                if path == "xdp" and case == "allow":
                    continue
                rx, count = counters[path]
                for batch in (BATCHES if path == "xsk" else (None,)):
                    name = f"{path}_{case}" if batch is None else f"xsk_b{batch}_{case}"
                    sink = sinks.Sink(name, f"{path} firewall", f"{path}'s own RX count", self.pairs[path], rx)
                    self.scenarios.append(engine.Scenario(name, sink, live(self.pairs[path], srcs[case]), rx))
                    prep = (lambda b=batch: self.xsk.set_batch(b)) if batch else (lambda: None)
                    self.checks[name] = (verdict, count, prep)

    def run(self, s: engine.Scenario, profile: engine.Profile, cpu: int) -> dict[str, Any]:
        """One measured run, checked: the verdict counter moved by exactly the frames handled."""
        verdict, count, prep = self.checks[s.name]
        prep()
        # The frame budget follows what the generator offers, not what the function takes:
        # the user-space paths take a fraction, and the sender must outlast the window.
        s.estimate = max(s.estimate, self.offered)
        before_v, before_rx = count(verdict), s.rx()
        xsk_before = self.xsk.stats() if s.name.startswith("xsk") else {}
        rec = engine.one_run(s, profile, cpu)
        handled, judged = s.rx() - before_rx, count(verdict) - before_v
        if handled <= 0 or judged != handled:
            raise RuntimeError(f"{s.name}: {handled} frames handled but the '{verdict}' counter moved by {judged}: "
                               "not the intended path")
        rec["handled"] = handled
        if xsk_before:
            after = self.xsk.stats()
            rec.update({k: after[k] - xsk_before[k] for k in ("tx", "dropped_tx_full", "k_rx_ring_full",
                                                               "k_rx_fill_empty", "batches")})
        return rec


def measure_all(profile: engine.Profile, runs: int, cpu: int, worker_cpu: int,
                log: Callable[[str], object] = print) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """Every scenario ``runs`` times, interleaved in rotating order; plus the set-up."""
    with netns.Topology() as topo, contextlib.ExitStack() as stack:
        bench = Bench(topo, stack, worker_cpu)
        for s in bench.scenarios:  # xdp_deny first: it sets the offered rate
            bench.checks[s.name][2]()
            s.estimate = traffic.warm_up(s.sender, profile.warmup_frames, s.rx, cpu)
            bench.offered = max(bench.offered, s.estimate)
        results: dict[str, list[dict[str, Any]]] = {s.name: [] for s in bench.scenarios}
        for i in range(runs):
            k = i % len(bench.scenarios)
            for s in bench.scenarios[k:] + bench.scenarios[:k]:
                results[s.name].append(bench.run(s, profile, cpu))
            log(f"run {i + 1}/{runs}: " + ", ".join(f"{n} {r[-1]['mpps']:.3f}" for n, r in results.items()) + " Mpps")
        setup = {"rules": bench.rules_text, "policy": bench.policy, "xsk_mode": bench.xsk.queues[0].mode,
                 "xsk_options": asdict(bench.xsk.options), "xsk_final_stats": bench.xsk.stats(),
                 "python_loop_sent": bench.loop.sent, "veths": {k: asdict(v) for k, v in bench.pairs.items()}}
    return results, setup


# ---- the report ------------------------------------------------------------------------------
def document(params: dict[str, Any], results: dict[str, list[dict[str, Any]]], setup: dict[str, Any],
             wall_s: float) -> dict[str, Any]:
    scenarios = {name: {"unit": "Mpps", **report.summary([r["mpps"] for r in runs]), "runs": runs}
                 for name, runs in results.items()}
    mpps = {name: [r["mpps"] for r in runs] for name, runs in results.items()}
    ratios: dict[str, Any] = {}
    for b in BATCHES:
        ratios[f"xsk_b{b}_deny_over_xdp_deny"] = report.summary(report.paired(mpps[f"xsk_b{b}_deny"], mpps["xdp_deny"]))
        for case in CASES:
            ratios[f"xsk_b{b}_{case}_over_python_{case}"] = report.summary(
                report.paired(mpps[f"xsk_b{b}_{case}"], mpps[f"python_{case}"]))
    ratios["python_deny_over_xdp_deny"] = report.summary(report.paired(mpps["python_deny"], mpps["xdp_deny"]))
    return {"benchmark": "xsk", "schema": 1, "timestamp": report.utc_stamp(), "wall_s": round(wall_s, 1),
            "machine": report.machine(), "versions": report.versions(), "parameters": params, "setup": setup,
            "scenarios": scenarios, "derived": ratios}


def print_tables(con: Any, doc: dict[str, Any]) -> None:
    sc, d, p = doc["scenarios"], doc["derived"], doc["parameters"]
    t = Table(title="Firewall: Mpps handled, by path and batch (median (min–max))",
              caption=f"{p['frame_bytes']} B UDP frames from xdp_gen on CPU {p['path_cpu']}; AF_XDP worker and Python "
                      f"loop on CPU {p['worker_cpu']}; {p['runs']} runs; AF_XDP in {doc['setup']['xsk_mode']} mode")
    for col in ("path", *CASES, "deny vs XDP", "deny vs Python", "allow vs Python"):
        t.add_column(col, justify="left" if col == "path" else "right")

    def cells(prefix: str) -> list[str]:
        return [f"{report.cell(sc[f'{prefix}_{c}'], '{:.3f}')} ({report.span(sc[f'{prefix}_{c}'], '{:.3f}')})"
                if f"{prefix}_{c}" in sc else "—" for c in CASES]

    t.add_row("XDP (kernel)", *cells("xdp"), "1×", "—", "—")
    t.add_row("Python AF_PACKET loop", *cells("python"), report.ratio_cell(d["python_deny_over_xdp_deny"]), "1×", "1×")
    for b in BATCHES:
        t.add_row(f"AF_XDP, batch {b}", *cells(f"xsk_b{b}"), report.ratio_cell(d[f"xsk_b{b}_deny_over_xdp_deny"]),
                  report.ratio_cell(d[f"xsk_b{b}_deny_over_python_deny"]),
                  report.ratio_cell(d[f"xsk_b{b}_allow_over_python_allow"]))
    con.print(t)


def plot(doc: dict[str, Any], path: Path) -> Path:
    sc, d = doc["scenarios"], doc["derived"]
    panels = []
    for case in CASES:
        names = ([f"xdp_{case}"] if f"xdp_{case}" in sc else []) + [f"python_{case}"] + \
            [f"xsk_b{b}_{case}" for b in BATCHES]
        labels = [{"xdp": "XDP", "python": "Python loop"}.get(n.split("_")[0], f"AF_XDP b{n.split('_')[1][1:]}")
                  for n in names]
        notes = [f"{d[f'{n}_over_python_{case}']['median']:.1f}× Python" if n.startswith("xsk") else ""
                 for n in names]
        colors = ["#9a9a9a" if n.startswith("xdp") else "#dd8452" if n.startswith("python") else "#4c72b0"
                  for n in names]
        what = "received, judged, dropped" if case == "deny" else "received, judged, sent back"
        panels.append(report.Panel(f"{case}: {what}", "Mpps", labels, [sc[n] for n in names], notes, colors))
    title = report.figure_title(doc, "xsk", "firewall, medians of {runs} runs, bars min–max")
    return report.bar_chart(panels, path, title)


# ---- command line ------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``xsk`` subcommand's options."""
    report.add_common_arguments(parser, quick_help="shorter runs; still ≥ 5 runs",
                                cpu_help="CPU for the generator and the kernel's side (default: the highest allowed)")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Run the AF_XDP benchmark; print the table and the paths of the JSON and PNG written."""
    console = make_console()
    if os.geteuid() != 0:
        console.print("[red]the xsk benchmark needs root (bpf(), netns, XDP, AF_XDP)[/]")
        return 2
    profile = engine.PROFILES["smoke" if args.smoke else "quick" if args.quick else "full"]
    cpu, others = traffic.split_cpus(args.cpu)
    worker_cpu = min(others)
    started = time.monotonic()
    with traffic.pinned(others):
        console.print(f"[bold]xsk benchmark[/] ({profile.name}, {args.runs} runs): generator on CPU {cpu}, "
                      f"AF_XDP worker and Python loop on CPU {worker_cpu}")
        results, setup = measure_all(profile, args.runs, cpu, worker_cpu, log=console.print)
    params = {"profile": asdict(profile), "runs": args.runs, "path_cpu": cpu, "worker_cpu": worker_cpu,
              "frame_bytes": traffic.FRAME_BYTES, "flows": engine.FLOWS, "batches": list(BATCHES),
              "order": "scenarios interleaved per run, rotating start"}
    doc = document(params, results, setup, wall_s=time.monotonic() - started)
    print_tables(console, doc)
    for path in report.save_run(doc, args.out, "xsk", plot):
        console.print(f"wrote {path}")
    return 0
