"""The agent benchmark: how long ``vnfkit-agent`` takes to put a segment on a host, and how
fresh the counters it reports are.

One host namespace between a client and a server, an agent serving it (its own process, gRPC
on a unix socket, as in the tests), and a real Orchestrator service in this process.

1. Apply of a 5-function segment (firewall -> monitor -> firewall -> monitor -> firewall, one
   path, one classifier rule), timed at the caller from the Apply call to its reply, i.e.
   checked, written to SQLite, compiled (or not), loaded and verified, configured, pinned,
   switched, drained and cleaned up:

   * ``apply_cold``: a new agent with an empty compile cache (``VNFKIT_CACHE``), so clang
     builds the VNFs (two distinct ones) inside the Apply. The agent's own start (forwarder,
     classifier, the proto code) is before the clock starts.
   * ``apply_cached``: the same agent again after a Remove: objects from the compile cache,
     everything else as above.

   After every Apply, packets are sent through the segment and every hop must count them.
2. Counter report latency: the agent streams ``CounterReport``s (``ReportCounters``) every
   ``--interval``; each report's latency is the orchestrator's CLOCK_MONOTONIC when it
   arrives minus the report's ``timestamp_ns`` (when the agent read the kernel counters;
   same host, same clock). ``report_latency`` is the median over a run's reports.
   ``getcounters_rtt`` is a unary GetCounters round trip at the caller, for comparison.

Every number is a median over runs with min and max.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from datapath import netns
from datapath.pins import PinGroup
from perf import report
from perf.engine_report import console as make_console
from vnfkit.agent.convert import dict_to_struct
from vnfkit.agent.process import AgentProcess
from vnfkit.proto import load

pb, rpc = load()
FUNCTIONS = ("firewall", "monitor", "firewall", "monitor", "firewall")
PORT = 9400
PROFILES = {"full": {"reports": 50, "interval": 0.05}, "quick": {"reports": 20, "interval": 0.05},
            "smoke": {"reports": 5, "interval": 0.05}}


def segment(generation: int, ingress: str, dst: str) -> Any:
    seg = pb.Segment(service="bench", generation=generation, classify_on=[ingress])
    for i, vnf in enumerate(FUNCTIONS):
        config = {"default_allow": True} if vnf == "firewall" else {}
        seg.functions.add(id=f"f{i}", vnf=vnf, config=dict_to_struct(config))
    seg.paths.add(spi=1, first_si=255, functions=[f"f{i}" for i in range(len(FUNCTIONS))],
                  end=pb.PATH_END_STACK, path="p")
    seg.rules.add(spi=1, si=255, match=pb.Match(dst=f"{dst}/32"), interfaces=[ingress], name="p#0")
    return seg


class Orchestrator(rpc.OrchestratorServicer):
    """Keeps each report's arrival time (CLOCK_MONOTONIC) beside the report."""

    def __init__(self) -> None:
        self.reports: list[tuple[int, Any]] = []
        self.lock = threading.Lock()

    def Register(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC names
        return pb.RegisterReply()

    def Heartbeat(self, request: Any, context: Any) -> Any:  # noqa: N802
        return pb.HeartbeatReply()

    def ReportCounters(self, request_iterator: Any, context: Any) -> Any:  # noqa: N802
        for r in request_iterator:
            now = time.monotonic_ns()
            with self.lock:
                self.reports.append((now, r))
        return pb.ReportCountersReply()


class Site:
    """client --c-- host --s-- server, and an Orchestrator server on a unix socket."""

    def __init__(self, topo: netns.Topology, tmp: Path) -> None:
        self.client, self.host, self.server = topo.add_ns("client"), topo.add_ns("host"), topo.add_ns("server")
        self.c = topo.add_veth(self.client, self.host)
        self.s = topo.add_veth(self.host, self.server)
        topo.set_sysctl(self.host, "net.ipv4.ip_forward", "1")
        topo.add_route(self.client, f"{self.s.addr_b}/32", gateway=self.c.addr_b)
        self.tmp = tmp
        self.group = f"perf-{topo.prefix}-agent"
        self.orch = Orchestrator()
        self.orch_address = f"unix:{tmp}/orch.sock"
        self.grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        rpc.add_OrchestratorServicer_to_server(self.orch, self.grpc)
        self.grpc.add_insecure_port(self.orch_address)
        self.grpc.start()

    def agent(self, state: str, interval: float, cache: Path | None = None) -> AgentProcess:
        env = {"VNFKIT_CACHE": str(cache)} if cache is not None else None
        return AgentProcess("host", netns=self.host, state_dir=self.tmp / state, group=self.group,
                            orchestrator=self.orch_address, counter_interval=interval, env=env).start()

    def check_traffic(self, stub: Any, n: int = 20) -> None:
        """Send n packets through the segment; every hop must have counted them."""
        before = {(h.spi, h.si): h.packets for h in stub.GetCounters(pb.CountersRequest()).hops}
        netns.udp_send(self.client, self.s.addr_b, PORT, n)
        deadline = time.monotonic() + 5
        while True:
            after = {(h.spi, h.si): h.packets for h in stub.GetCounters(pb.CountersRequest()).hops}
            moved = {k: after.get(k, 0) - before.get(k, 0) for k in after}
            if len(moved) == len(FUNCTIONS) + 1 and set(moved.values()) == {n}:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"after an Apply, {n} packets moved the hop counters by {moved}")
            time.sleep(0.01)

    def close(self) -> None:
        self.grpc.stop(0)
        PinGroup(self.group).remove()


def timed_apply(stub: Any, seg: Any) -> float:
    t0 = time.perf_counter()
    assert stub.Apply(seg, timeout=300).changed
    return time.perf_counter() - t0


def measure(runs: int, profile: dict[str, Any], log: Any = print) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"apply_cold": [], "apply_cached": [], "report_latency": [], "getcounters_rtt": []}
    tmp = Path(tempfile.mkdtemp(prefix="vk-perf-agent-"))
    try:
        with netns.Topology() as topo:
            site = Site(topo, tmp)
            try:
                for i in range(runs):  # cold: a new agent and an empty compile cache each run
                    cache = tmp / f"cache{i}"
                    agent = site.agent(f"cold{i}", profile["interval"], cache)
                    try:
                        stub = agent.stub()
                        out["apply_cold"].append(timed_apply(stub, segment(1, site.c.ifname_b, site.s.addr_b)))
                        site.check_traffic(stub)
                        stub.Remove(pb.RemoveRequest(service="bench"))
                    finally:
                        agent.close()
                        shutil.rmtree(cache, ignore_errors=True)
                    log(f"  cold run {i + 1}: apply {out['apply_cold'][-1]:.2f} s")
                agent = site.agent("warm", profile["interval"])
                try:
                    stub = agent.stub()
                    stub.Apply(segment(1, site.c.ifname_b, site.s.addr_b))  # fills the compile cache
                    for i in range(runs):
                        stub.Remove(pb.RemoveRequest(service="bench"))
                        out["apply_cached"].append(timed_apply(stub, segment(2 + i, site.c.ifname_b,
                                                                             site.s.addr_b)))
                        site.check_traffic(stub)
                        with site.orch.lock:
                            site.orch.reports.clear()
                        while len(site.orch.reports) < profile["reports"]:
                            time.sleep(profile["interval"])
                        with site.orch.lock:
                            lat = [(now - r.counters.timestamp_ns) / 1e6 for now, r in site.orch.reports]
                        out["report_latency"].append(report.summary(lat)["median"])
                        rtt = []
                        for _ in range(profile["reports"]):
                            t0 = time.perf_counter()
                            stub.GetCounters(pb.CountersRequest())
                            rtt.append((time.perf_counter() - t0) * 1e3)
                        out["getcounters_rtt"].append(report.summary(rtt)["median"])
                        log(f"  cached run {i + 1}: apply {out['apply_cached'][-1]:.2f} s, report latency "
                            f"{out['report_latency'][-1]:.2f} ms, GetCounters {out['getcounters_rtt'][-1]:.2f} ms")
                finally:
                    agent.close()
            finally:
                site.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


UNITS = {"apply_cold": "s", "apply_cached": "s", "report_latency": "ms", "getcounters_rtt": "ms"}


def document(params: dict[str, Any], values: dict[str, list[float]], wall_s: float) -> dict[str, Any]:
    scenarios = {name: {"unit": UNITS[name], **report.summary(v)} for name, v in values.items()}
    scenarios["apply_cold"]["over_cached"] = report.summary(report.paired(values["apply_cold"],
                                                                          values["apply_cached"]))
    return {"benchmark": "agent", "schema": 1, "timestamp": report.utc_stamp(), "wall_s": round(wall_s, 1),
            "machine": report.machine(), "versions": report.versions(), "parameters": params,
            "scenarios": scenarios}


def plot(doc: dict[str, Any], path: Path) -> Path:
    sc = doc["scenarios"]
    panels = [report.Panel("Apply of a 5-function segment", "seconds", ["cold compile", "cached compile"],
                           [sc["apply_cold"], sc["apply_cached"]],
                           notes=[f"{sc['apply_cold']['over_cached']['median']:.1f}× cached", ""]),
              report.Panel("Counter freshness", "milliseconds", ["report: read -> orchestrator", "GetCounters RTT"],
                           [sc["report_latency"], sc["getcounters_rtt"]])]
    return report.bar_chart(panels, path, report.figure_title(doc, "agent"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    report.add_common_arguments(parser, quick_help="fewer counter reports per run", cpu_help="(unused)")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    console = make_console()
    if os.geteuid() != 0:
        console.print("[red]the agent benchmark needs root (bpf(), netns, XDP)[/]")
        return 2
    name = "smoke" if args.smoke else "quick" if args.quick else "full"
    profile = PROFILES[name]
    console.print(f"[bold]agent benchmark[/] ({name}, {args.runs} runs)")
    started = time.monotonic()
    values = measure(args.runs, profile, log=console.print)
    params = {"profile": name, "runs": args.runs, "functions": list(FUNCTIONS), **profile,
              "transport": "gRPC over a unix socket, insecure", "timed_at": "the caller (Apply to its reply)"}
    doc = document(params, values, time.monotonic() - started)
    for scenario, s in doc["scenarios"].items():
        console.print(f"  {scenario:16} {report.cell(s, '{:.3f}')} {s['unit']} ({report.span(s, '{:.3f}')})")
    for path in report.save_run(doc, args.out, "agent", plot):
        console.print(f"wrote {path}")
    return 0
