"""The deploy benchmark: how long the orchestrator takes to deploy a service across hosts, and
how that grows with the number of agents registered with it.

1. **Real agents on three emulated hosts** (``vnfkit.emu``: namespaces, a development CA, the
   orchestrator and one ``vnfkit-agent`` per host, all over gRPC with mutual TLS on unix
   sockets, as ``vnfkit emu`` runs them). Services of 1, 5 and 20 functions (firewall and
   monitor alternating, one path, one classifier rule) with the hosts sized (``cpus``) so the
   default placement packs the functions over the three hosts (5: 2+2+1, 20: 7+7+6; one
   function has one host). Timed at the caller, each run:

   * ``deploy_cold``: ``Control.Deploy`` round trip (plan, place, compile, Prepare on every
     host at once, Commit host by host, the 0.1 s drain, Cleanup) with the agents' compile
     cache emptied first, so clang builds the VNFs inside the Prepare;
   * ``deploy_warm``: undeployed, then deployed again with the cache warm;
   * ``undeploy``: ``Control.Undeploy`` round trip (Remove on every host, one after the other);
   * the floor, ``direct_cold`` / ``direct_warm``: the same per-host segments (as the agents
     hold them after a deploy) ``Apply``'d by this process straight to every agent at once,
     cache emptied / warm; ``remove_direct``: ``Remove`` on every agent at once. The ratio
     deploy / direct (per run) is what the orchestrator adds on top of the agents' own work;
   * ``plan``: ``Orchestrator.plan`` (check, place, compile, per-host plans) run in this
     process against the same registered hosts: the orchestrator's own computing per deploy.

   After every deploy each host must hold its part of the service (``ListState``), and once
   per service size UDP sent from the client must be counted on the service's path.
2. **Registry scaling with stand-in agents**: 10, 50 and 100 registered agents that are NOT
   real agents: ``perf/stub_agents.py`` (lightweight gRPC servers on loopback unix sockets, 25
   per process, mutual TLS, accepting every request without touching the kernel; see there)
   registered with and heartbeating to a real orchestrator. A fixed 5-function service (placed
   on three of them, 2+2+1) is deployed and undeployed; ``plan`` as above with N hosts known;
   and the orchestrator's CPU use while idle (heartbeats only) from /proc.
3. **Counter streams**: the stand-ins above open no ``ReportCounters`` stream; a real agent keeps
   one open all the time. With 16 and 100 stand-ins that do, does the orchestrator still answer
   ``ListHosts`` within 5 s? (An open stream holds a server thread; the orchestrator had 16 in
   all until this benchmark found it silent at 16 agents, and now keeps threads for the unary
   calls beside one per agent up to --max-agents.)

Every number is a median of runs with min and max; the machine is a shared 2-vCPU VM.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from datapath import netns
from perf import report
from perf.engine_report import console as make_console
from perf.stub_agents import stub_name
from vnfkit.agent import tls
from vnfkit.agent.convert import struct_to_dict
from vnfkit.cli_orch import Control
from vnfkit.emu import control_plane
from vnfkit.emu.emulation import Emulation
from vnfkit.emu.topology import Endpoint, Host, Topology
from vnfkit.orchestrator.core import DRAIN_S, Orchestrator
from vnfkit.orchestrator.store import Store
from vnfkit.proto import load

pb, rpc = load()
REPO = Path(__file__).resolve().parent.parent
VNFS = ("firewall", "monitor")  # cheap to load and fine with many instances (perf/agent.py uses them too)
STUBS_PER_PROCESS = 25
HEARTBEAT_MS = 500  # what the emulator gives its agents
STREAM_PROBE = (16, 100)  # past the 16 threads the orchestrator once had (vnfkit/orchestrator/server.py)
PROFILES: dict[str, dict[str, Any]] = {
    "full": {"sizes": [1, 5, 20], "agents": [10, 50, 100], "registry_functions": 5, "idle_s": 2.0},
    "quick": {"sizes": [1, 5], "agents": [10, 20], "registry_functions": 5, "idle_s": 0.5},
}


# ---- services and hosts -------------------------------------------------------------------------
def service_yaml(name: str, functions: int, dst: str) -> str:
    """A service of ``functions`` functions (firewall and monitor alternating) on one path, with
    one classifier rule for ``dst``."""
    lines = ["descriptor_version: vnfkit/service/v1", f"name: {name}", "vendor: org.vnfkit.perf",
             "version: 1.0.0", f"description: deploy benchmark, {functions} functions", "functions:"]
    ids = [f"f{i:02d}" for i in range(functions)]
    for i, fid in enumerate(ids):
        vnf = VNFS[i % len(VNFS)]
        config = ", config: {default_allow: true}" if vnf == "firewall" else ""
        lines.append(f"  - {{id: {fid}, vnf: {vnf}{config}}}")
    lines += ["paths:", f"  - {{id: p, hops: [{', '.join(ids)}]}}", "classifier:",
              f'  - {{path: p, match: {{dst: "{dst}/32"}}}}']
    return "\n".join(lines) + "\n"


def host_cpus(functions: int, hosts: int = 3) -> list[int]:
    """Cores per host so that the default placement (1 core per function, a path stays on a
    host while it has room) spreads ``functions`` over ``hosts`` evenly, the first hosts fuller."""
    per = -(-functions // hosts)
    left, out = functions, []
    for _ in range(hosts):
        out.append(max(1, min(per, left)))
        left -= min(per, left)
    return out


def expected_placement(functions: int, cpus: list[int], hosts: list[str]) -> dict[str, str]:
    """Where ``pack`` must put f00, f01, ... on hosts of these sizes; a deploy placed otherwise
    would measure another spread than the one asked for, so the benchmark stops."""
    out, k = {}, 0
    for host, n in zip(hosts, cpus, strict=True):
        for _ in range(n):
            if k < functions:
                out[f"f{k:02d}"] = host
                k += 1
    return out


# ---- talking to agents directly -------------------------------------------------------------------
class Agents:
    """Agent stubs for hosts' unix sockets, with the orchestrator's client certificate (what the
    orchestrator itself uses), for the floor and for checks."""

    def __init__(self, addresses: dict[str, str], certs: Path) -> None:
        creds = tls.channel_credentials(certs / "ca.pem", certs / "orchestrator.pem", certs / "orchestrator.key")
        self.channels = {h: grpc.secure_channel(a, creds, tls.channel_options(a)) for h, a in addresses.items()}
        self.stubs = {h: rpc.AgentStub(ch) for h, ch in self.channels.items()}

    def held(self, host: str) -> dict[str, Any]:
        """service -> Segment the host has applied."""
        st = self.stubs[host].ListState(pb.ListStateRequest(), timeout=30)
        return {s.service: s.segment for s in st.services if s.phase == pb.PHASE_APPLIED}

    def on_all(self, call: Any, hosts: list[str]) -> float:
        """Run ``call(host)`` on every host at once (as the orchestrator prepares); wall seconds."""
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(hosts))) as pool:
            t0 = time.perf_counter()
            for f in [pool.submit(call, h) for h in hosts]:
                f.result()
            return time.perf_counter() - t0

    def close(self) -> None:
        for ch in self.channels.values():
            ch.close()


def check_held(agents: Agents, service: str, placement: dict[str, str]) -> None:
    """Every host placement chose holds the service with exactly its functions; no other host has it."""
    for host in agents.stubs:
        seg = agents.held(host).get(service)
        want = sorted(f for f, h in placement.items() if h == host)
        have = sorted(f.id for f in seg.functions) if seg is not None else []
        if have != want:
            raise RuntimeError(f"after deploying {service!r}, host {host} holds functions {have}, expected {want}")


def plan_seconds(hosts: list[Any], source: Path, runs: int) -> list[float]:
    """``Orchestrator.plan`` in this process against the hosts ``ListHosts`` returned (their
    capabilities as registered): the orchestrator's own work for one deploy, without RPCs."""
    tmp = Path(tempfile.mkdtemp(prefix="vk-perf-plan-"))
    try:
        store = Store(tmp / "orch.db")
        orch = Orchestrator(store, lambda rec: None)  # type: ignore[arg-type, return-value] - never connects
        for h in hosts:
            orch.register(h.host, h.address, struct_to_dict(h.capabilities))
        out = []
        for _ in range(runs):
            t0 = time.perf_counter()
            orch.plan(source)
            out.append(time.perf_counter() - t0)
        store.close()
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def timed(fn: Any, *args: Any) -> tuple[float, Any]:
    """(seconds, result) of ``fn(*args)``, timed at the caller."""
    t0 = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - t0, result


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while cleaning up: a second Ctrl-C (or a first one arriving
    during the clean-up) would otherwise stop it half way and leave pins or processes behind.
    A signal that came meanwhile is delivered when the block ends."""
    held = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextlib.contextmanager
def closing_uninterrupted(emu: Emulation) -> Iterator[Emulation]:
    """``with Emulation(...)``, with its close() under :func:`uninterrupted`."""
    try:
        yield emu
    finally:
        with uninterrupted():
            emu.close()


# ---- part 1: real agents on three emulated hosts ----------------------------------------------------
def traffic_check(control: Control, client_ns: str, dst: str, service: str, n: int = 20) -> bool:
    """UDP from the client to ``dst`` must show up on the service's path in the counters the
    agents report (every 0.5 s)."""
    before = control.counters(service).get(service, {}).get("paths", {}).get("p", 0)
    netns.udp_send(client_ns, dst, 9000, n)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if control.counters(service).get(service, {}).get("paths", {}).get("p", 0) - before >= n:
            return True
        time.sleep(0.25)
    return False


def measure_real(functions: int, runs: int, work: Path, log: Any) -> dict[str, Any]:
    """Part 1 for one service size; a new emulation (hosts sized for it) each time."""
    cpus = host_cpus(functions)
    hosts = ["h1", "h2", "h3"]
    topo = Topology(f"perf-deploy-{os.getpid()}", [Host(h, cpus=c) for h, c in zip(hosts, cpus, strict=True)],
                    [Endpoint("client", "h1", "client"), Endpoint("server", "h3", "server")])
    cache = Path(os.environ["VNFKIT_CACHE"]) / "bpf"
    values: dict[str, list[float]] = {k: [] for k in ("deploy_cold", "deploy_warm", "undeploy", "direct_cold",
                                                      "direct_warm", "remove_direct")}
    name = f"bench{functions}"
    with closing_uninterrupted(Emulation(topo)) as emu:
        prefix = emu.net.prefix  # namespaces and pin groups (emu-<prefix>-*) carry it; all removed on exit
        log(f"  emulation {topo.name!r}: namespaces and pin groups {prefix}-*, emu-{prefix}-* (all removed at the end)")
        state = emu.up()
        plane = control_plane.start(emu, work / name)
        server = state.endpoints["server"].ip
        source = work / f"{name}.yaml"
        source.write_text(service_yaml(name, functions, server))
        want = expected_placement(functions, cpus, hosts)
        control = Control(plane.orchestrator, plane.certs)
        agents = Agents({h: f"unix:{plane.workdir}/agent-{h}.sock" for h in hosts}, plane.certs)
        try:
            def deploy() -> float:
                t, reply = timed(control.call, "Deploy", control.pb.DeployRequest(path=str(source)))
                if dict(reply.service.placement) != want:
                    raise RuntimeError(f"{name}: placed {dict(reply.service.placement)}, expected {want}")
                check_held(agents, name, want)
                return t

            def undeploy() -> float:
                t, _ = timed(control.call, "Undeploy", control.pb.UndeployRequest(name=name))
                check_held(agents, name, {})
                return t

            segments: dict[str, Any] = {}
            traffic = None
            for i in range(runs):
                shutil.rmtree(cache, ignore_errors=True)  # the agents compile the VNFs again
                values["deploy_cold"].append(deploy())
                undeploy()
                values["deploy_warm"].append(deploy())
                if not segments:
                    segments = {h: seg for h in hosts if (seg := agents.held(h).get(name)) is not None}
                    traffic = traffic_check(control, state.endpoints["client"].ns, server, name)
                values["undeploy"].append(undeploy())
                # The floor: the same segments straight to the agents, no orchestrator.
                used = sorted(segments)
                for key, clear in (("direct_cold", True), ("direct_warm", False)):
                    if clear:
                        shutil.rmtree(cache, ignore_errors=True)
                    apply = agents.on_all(lambda h, segs=segments: agents.stubs[h].Apply(segs[h], timeout=300),
                                          used)
                    values[key].append(apply)
                    check_held(agents, name, want)
                    remove = agents.on_all(lambda h: agents.stubs[h].Remove(pb.RemoveRequest(service=name),
                                                                            timeout=300), used)
                    if not clear:
                        values["remove_direct"].append(remove)
                log(f"  {functions:2d} functions, run {i + 1}: deploy cold {values['deploy_cold'][-1]:.2f} s, "
                    f"warm {values['deploy_warm'][-1]:.2f} s, undeploy {values['undeploy'][-1]:.2f} s; direct Apply "
                    f"cold {values['direct_cold'][-1]:.2f} s, warm {values['direct_warm'][-1]:.2f} s")
            listed = control.call("ListHosts", control.pb.ListHostsRequest()).hosts
            values["plan"] = plan_seconds(listed, source, runs)
        finally:
            agents.close()
            control.close()
    out: dict[str, Any] = {k: report.summary(v) for k, v in values.items()}
    out["cold_over_direct"] = report.summary(report.paired(values["deploy_cold"], values["direct_cold"]))
    out["warm_over_direct"] = report.summary(report.paired(values["deploy_warm"], values["direct_warm"]))
    out["undeploy_over_direct"] = report.summary(report.paired(values["undeploy"], values["remove_direct"]))
    out["warm_minus_direct"] = report.summary(report.paired(values["deploy_warm"], values["direct_warm"], "diff"))
    out["setup"] = {"functions": functions, "host_cpus": dict(zip(hosts, cpus, strict=True)), "placement": want,
                    "hosts_used": sorted(set(want.values())), "traffic_counted_on_path": traffic,
                    "emu_prefix": prefix}
    return out


# ---- part 2: stand-in agents --------------------------------------------------------------------------
def _die_with_parent() -> None:
    # Runs in the child before exec: SIGTERM when the benchmark dies, even by SIGKILL (when
    # nothing of ours can clean up), so no orchestrator or stand-in outlives it.
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Processes:
    """Child processes in their own sessions, stopped (the whole group) on close, whatever happened."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, argv: list[str], log: Path, stdout: bool = False) -> subprocess.Popen[str]:
        out = open(log, "a")  # the child's log; closed in stop()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE if stdout else out, stderr=out, text=True, cwd=REPO,
                                start_new_session=True, preexec_fn=_die_with_parent)
        proc._log = out  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[str], timeout: float = 10.0) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
        proc._log.close()  # type: ignore[attr-defined]

    def close(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)
        self.procs.clear()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_orchestrator(procs: Processes, address: str, folder: Path) -> subprocess.Popen[str]:
    """The real orchestrator (``vnfkit-orchestrator``) with ``folder``/certs, as the emulator starts it:
    mutual TLS, heartbeats every 0.5 s, a fresh state."""
    return procs.start([sys.executable, "-m", "vnfkit.orchestrator.server", "--listen", address, "--state",
                        str(folder / "orchestrator.db"), "--certs", str(folder / "certs"), "--heartbeat-ms",
                        str(HEARTBEAT_MS), "--counter-ms", "500", "--log-level", "warning"],
                       folder / "orchestrator.log")


def wait_ready(proc: subprocess.Popen[str], log: Path, timeout: float = 120.0) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "ready N" once every stand-in registered
    if not line.startswith("ready"):
        raise RuntimeError(f"stand-in agents did not start (exit {proc.poll()}):\n"
                           + log.read_text(errors="replace")[-3000:])


def measure_registry(agents_n: int, functions: int, runs: int, idle_s: float, work: Path,
                     log: Any) -> dict[str, Any]:
    """Part 2 for one number of registered stand-ins: a fresh orchestrator and stand-ins each time."""
    from vnfkit.agent.tls import make_dev_certs

    folder = work / f"registry{agents_n}"
    certs = folder / "certs"
    make_dev_certs(certs)
    sockets = Path(tempfile.mkdtemp(prefix="vk-stubs-"))  # short: a unix socket path holds 107 bytes
    orch_addr = f"unix:{sockets}/orch.sock"
    procs = Processes()
    values: dict[str, list[float]] = {"deploy": [], "undeploy": [], "idle_cpu_pct": []}
    name = f"reg{functions}"
    try:
        orch = start_orchestrator(procs, orch_addr, folder)
        # One process after the other: the orchestrator places by registration order, so
        # stub-000, -001, -002 are always the hosts of the service.
        for first in range(0, agents_n, STUBS_PER_PROCESS):
            count = min(STUBS_PER_PROCESS, agents_n - first)
            plog = folder / f"stubs-{first:03d}.log"
            p = procs.start([sys.executable, "-m", "perf.stub_agents", "--orchestrator", orch_addr, "--certs",
                             str(certs), "--sockets", str(sockets), "--first", str(first), "--count", str(count)],
                            plog, stdout=True)
            wait_ready(p, plog)
        control = Control(orch_addr, certs)
        hosts = [stub_name(i) for i in range(3)]
        agents = Agents({h: f"unix:{sockets}/{h}.sock" for h in hosts}, certs)
        try:
            listed = control.call("ListHosts", control.pb.ListHostsRequest()).hosts
            alive = sum(h.alive for h in listed)
            if alive != agents_n:
                raise RuntimeError(f"{alive} of {agents_n} stand-in agents registered and alive")
            source = folder / f"{name}.yaml"
            source.write_text(service_yaml(name, functions, "198.18.250.1"))
            want = expected_placement(functions, [2, 2, 1], hosts)
            control.call("Deploy", control.pb.DeployRequest(path=str(source)))  # warm-up: descriptor caches
            control.call("Undeploy", control.pb.UndeployRequest(name=name))
            for i in range(runs):
                t, reply = timed(control.call, "Deploy", control.pb.DeployRequest(path=str(source)))
                if dict(reply.service.placement) != want:
                    raise RuntimeError(f"{name}: placed {dict(reply.service.placement)}, expected {want}")
                check_held(agents, name, want)
                values["deploy"].append(t)
                t, _ = timed(control.call, "Undeploy", control.pb.UndeployRequest(name=name))
                check_held(agents, name, {})
                values["undeploy"].append(t)
                c0, t0 = cpu_seconds(orch.pid), time.monotonic()
                time.sleep(idle_s)  # nothing but heartbeats
                values["idle_cpu_pct"].append(100 * (cpu_seconds(orch.pid) - c0) / (time.monotonic() - t0))
                log(f"  {agents_n:3d} stand-in agents, run {i + 1}: deploy {values['deploy'][-1] * 1e3:.0f} ms, "
                    f"undeploy {values['undeploy'][-1] * 1e3:.0f} ms, orchestrator idle CPU "
                    f"{values['idle_cpu_pct'][-1]:.1f}%")
            values["plan"] = plan_seconds(listed, source, runs)
            dead = [h.host for h in control.call("ListHosts", control.pb.ListHostsRequest()).hosts if not h.alive]
        finally:
            agents.close()
            control.close()
    finally:
        with uninterrupted():
            procs.close()
        shutil.rmtree(sockets, ignore_errors=True)
    out: dict[str, Any] = {k: report.summary(v) for k, v in values.items()}
    out["setup"] = {"agents": agents_n, "agents_are": "STAND-INS (perf/stub_agents.py), not vnfkit-agent",
                    "functions": functions, "placement": want, "processes":
                    -(-agents_n // STUBS_PER_PROCESS), "heartbeats_per_s": agents_n * 1000 / HEARTBEAT_MS,
                    "hosts_not_alive_at_end": dead}
    return out


def probe_counter_streams(agents_n: int, work: Path, log: Any) -> dict[str, Any]:
    """Stand-ins that each keep a ``ReportCounters`` stream open, as every real agent does: does
    the orchestrator still answer a ``ListHosts`` (within 5 s) with ``agents_n`` of them?

    Why it is here: a client stream holds a server thread for as long as it is open, so the
    number of agents an orchestrator can have is bounded by its pool, whatever the deploy times
    above say (with a pool of 16 it fell silent at 16 agents)."""
    from vnfkit.agent.tls import make_dev_certs
    from vnfkit.cli_orch import ControlError

    folder = work / f"streams{agents_n}"
    make_dev_certs(folder / "certs")
    sockets = Path(tempfile.mkdtemp(prefix="vk-stubs-"))
    orch_addr = f"unix:{sockets}/orch.sock"
    procs = Processes()
    try:
        start_orchestrator(procs, orch_addr, folder)
        plog = folder / "stubs.log"
        p = procs.start([sys.executable, "-m", "perf.stub_agents", "--orchestrator", orch_addr, "--certs",
                         str(folder / "certs"), "--sockets", str(sockets), "--count", str(agents_n),
                         "--counter-streams"], plog, stdout=True)
        wait_ready(p, plog)
        time.sleep(0.5)  # the last stream opens after the last Register
        control = Control(orch_addr, folder / "certs")
        try:
            t0 = time.perf_counter()
            try:
                hosts = control.call("ListHosts", control.pb.ListHostsRequest(), timeout=5).hosts
                out = {"answered": True, "ms": (time.perf_counter() - t0) * 1e3, "hosts": len(hosts)}
            except ControlError as exc:
                out = {"answered": False, "ms": None, "error": str(exc)}
        finally:
            control.close()
    finally:
        with uninterrupted():
            procs.close()
        shutil.rmtree(sockets, ignore_errors=True)
    log(f"  {agents_n} stand-ins with a counter stream each: the orchestrator "
        + (f"answers ListHosts in {out['ms']:.0f} ms" if out["answered"] else "does not answer ListHosts in 5 s"))
    return out


# ---- report ---------------------------------------------------------------------------------------------
def document(params: dict[str, Any], services: dict[str, Any], registry: dict[str, Any],
             wall_s: float) -> dict[str, Any]:
    base = registry[min(registry, key=int)]
    for r in registry.values():  # growth against the fewest agents, run i over run i
        r["deploy_over_fewest"] = report.summary(report.paired(r["deploy"]["values"], base["deploy"]["values"]))
    return {"benchmark": "deploy", "schema": 1, "timestamp": report.utc_stamp(), "wall_s": round(wall_s, 1),
            "machine": report.machine(), "versions": report.versions(), "parameters": params,
            "scenarios": {"services": services, "registry": registry}}


def plot(doc: dict[str, Any], path: Path) -> Path:
    import matplotlib.pyplot as plt

    sv, rg = doc["scenarios"]["services"], doc["scenarios"]["registry"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.8))
    sizes = sorted(sv, key=int)
    series = [("deploy_cold", "deploy, cold cache", "#c44e52"), ("direct_cold", "floor: direct Apply, cold", "#e8a8a8"),
              ("deploy_warm", "deploy, warm cache", "#4c72b0"), ("direct_warm", "floor: direct Apply, warm", "#a8b8d8"),
              ("undeploy", "undeploy", "#55a868")]
    width = 0.8 / len(series)
    for k, (key, label, color) in enumerate(series):
        med = [sv[s][key]["median"] for s in sizes]
        err = [[m - sv[s][key]["min"] for m, s in zip(med, sizes, strict=True)],
               [sv[s][key]["max"] - m for m, s in zip(med, sizes, strict=True)]]
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(sizes))]
        a.bar(xs, med, width, yerr=err, capsize=3, label=label, color=color, edgecolor="black")
    for i, s in enumerate(sizes):
        r = sv[s]["warm_over_direct"]["median"]
        top = max(sv[s][key]["max"] for key, _, _ in series)
        a.annotate(f"warm {r:.2f}× floor", (i, top), xytext=(0, 6),
                   textcoords="offset points", ha="center", fontsize=8)
    a.set_xticks(range(len(sizes)), [f"{s} function{'s' if s != '1' else ''}\n(hosts: "
                                     f"{len(sv[s]['setup']['hosts_used'])})" for s in sizes])
    a.set_ylabel("seconds")
    a.set_title("Real agents, 3 emulated hosts: deploy time by service size", fontsize=10)
    a.legend(fontsize=8)
    ns = sorted(rg, key=int)
    for key, label, color in (("deploy", "deploy (5 functions, 3 hosts)", "#4c72b0"),
                              ("undeploy", "undeploy", "#55a868"), ("plan", "plan, in-process", "#999999")):
        med = [rg[n][key]["median"] * 1e3 for n in ns]
        err = [[m - rg[n][key]["min"] * 1e3 for m, n in zip(med, ns, strict=True)],
               [rg[n][key]["max"] * 1e3 - m for m, n in zip(med, ns, strict=True)]]
        b.errorbar([int(n) for n in ns], med, yerr=err, marker="o", capsize=4, label=label, color=color)
    for n in ns:
        b.annotate(f"{rg[n]['deploy_over_fewest']['median']:.2f}×\nidle CPU {rg[n]['idle_cpu_pct']['median']:.0f}%",
                   (int(n), rg[n]["deploy"]["max"] * 1e3), xytext=(0, 6), textcoords="offset points",
                   ha="center", fontsize=8)
    b.axhline(DRAIN_S * 1e3, ls="--", color="#c44e52", lw=1)
    b.annotate(f"of which the orchestrator's drain sleep, {DRAIN_S * 1e3:.0f} ms", (int(ns[0]), DRAIN_S * 1e3),
               xytext=(0, -12), textcoords="offset points", fontsize=8, color="#c44e52")
    cs = doc["scenarios"].get("counter_streams", {})
    hung = [int(n) for n, p in cs.items() if not p["answered"]]
    if hung:
        b.annotate(f"with a counter stream per agent (as real\nagents keep one) the orchestrator stops\n"
                   f"answering at {min(hung)} agents: its gRPC\nthreads are all held by the streams", (0.02, 0.97),
                   xycoords="axes fraction", fontsize=8, color="#c44e52", va="top")
    b.set_xlabel("registered agents (STAND-INS: perf/stub_agents.py, no kernel work)")
    b.set_ylabel("milliseconds")
    b.set_ylim(0, max(rg[n]["deploy"]["max"] for n in ns) * 1e3 * 1.9)
    b.set_title("Orchestrator deploy time vs registered agents", fontsize=10)
    b.legend(fontsize=8)
    report.finish_figure(fig, report.figure_title(doc, "deploy"), path)
    plt.close(fig)
    return path


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    report.add_common_arguments(parser, quick_help="a smoke run: one run each, 1- and 5-function services, "
                                "10 and 20 stand-in agents (no medians)", cpu_help="(unused)")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    console = make_console()
    if os.geteuid() != 0:
        console.print("[red]the deploy benchmark needs root (namespaces, bpf(), XDP for the emulated hosts)[/]")
        return 2
    # SIGTERM unwinds like Ctrl-C: the emulation's with-block, the stand-ins' and orchestrators'
    # process groups and the work folder are all removed on the way out.
    signal.signal(signal.SIGTERM, _interrupt)
    name = "quick" if (args.quick or args.smoke) else "full"
    profile = PROFILES[name]
    runs = 1 if name == "quick" else args.runs
    console.print(f"[bold]deploy benchmark[/] ({name}, {runs} run{'s' if runs > 1 else ''}); a shared 2-vCPU VM")
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="vk-perf-deploy-"))
    old_cache = os.environ.get("VNFKIT_CACHE")
    # The agents inherit it: a compile cache of the benchmark's own, emptied for the cold runs.
    os.environ["VNFKIT_CACHE"] = str(work / "cache")
    try:
        services: dict[str, Any] = {}
        console.print("[bold]1. real agents, 3 emulated hosts, mutual TLS[/]")
        for n in profile["sizes"]:
            services[str(n)] = measure_real(n, runs, work, console.print)
        console.print("[bold]2. registered agents: STAND-INS (perf/stub_agents.py), real orchestrator[/]")
        registry: dict[str, Any] = {}
        for n in profile["agents"]:
            registry[str(n)] = measure_registry(n, profile["registry_functions"], runs, profile["idle_s"], work,
                                                console.print)
        console.print("[bold]3. stand-ins that stream counters as real agents do: does the orchestrator answer?[/]")
        streams = {str(n): probe_counter_streams(n, work, console.print) for n in STREAM_PROBE}
    finally:
        if old_cache is None:
            os.environ.pop("VNFKIT_CACHE", None)
        else:
            os.environ["VNFKIT_CACHE"] = old_cache
        shutil.rmtree(work, ignore_errors=True)
    params = {"profile": name, "runs": runs, "service_sizes": profile["sizes"], "vnfs": list(VNFS),
              "registered_agents": profile["agents"], "registry_functions": profile["registry_functions"],
              "idle_window_s": profile["idle_s"], "heartbeat_ms": HEARTBEAT_MS, "stubs_per_process": STUBS_PER_PROCESS,
              "transport": "gRPC with mutual TLS over unix sockets (as vnfkit emu)",
              "timed_at": "the caller: Control.Deploy / Undeploy round trips; the floor: Agent.Apply / Remove "
                          "sent to every host at once by this process",
              "stand_ins": "STAND-INS, not agents: part 2's agents are perf/stub_agents.py, gRPC servers that "
                           "accept every request without touching the kernel, registered with and heartbeating to "
                           "the real orchestrator; no counter streams",
              "machine_note": "shared 2-vCPU VM; other engineers ran test suites meanwhile",
              "workdir": str(work)}
    doc = document(params, services, registry, time.monotonic() - started)
    doc["scenarios"]["counter_streams"] = streams
    print_tables(console, doc)
    for path in report.save_run(doc, args.out, "deploy", plot):
        console.print(f"wrote {path}")
    return 0


def _ms(stat: dict[str, Any]) -> str:
    return f"{stat['median'] * 1e3:.0f} ({stat['min'] * 1e3:.0f}–{stat['max'] * 1e3:.0f})"


def print_tables(console: Any, doc: dict[str, Any]) -> None:
    from rich.table import Table

    t = Table(title="Deploy across 3 emulated hosts, real agents (mutual TLS)")
    for col in ("functions (hosts)", "what", "median s", "min–max s", "× floor (per run)"):
        t.add_column(col, justify="right")
    rows = (("deploy_cold", "deploy, cold cache", "cold_over_direct"),
            ("direct_cold", "floor: direct Apply, cold", None),
            ("deploy_warm", "deploy, warm cache", "warm_over_direct"),
            ("direct_warm", "floor: direct Apply, warm", None),
            ("undeploy", "undeploy", "undeploy_over_direct"), ("remove_direct", "floor: direct Remove", None),
            ("plan", "plan, in-process", None))
    for n, s in sorted(doc["scenarios"]["services"].items(), key=lambda kv: int(kv[0])):
        for k, (key, label, ratio) in enumerate(rows):
            first = f"{n} ({len(s['setup']['hosts_used'])})" if k == 0 else ""
            t.add_row(first, label, report.cell(s[key], "{:.3f}"), report.span(s[key], "{:.3f}"),
                      report.ratio_cell(s[ratio]) if ratio else "", end_section=k == len(rows) - 1)
    console.print(t)
    t = Table(title="Deploy of a 5-function service vs registered agents — STAND-IN agents "
                    "(perf/stub_agents.py), real orchestrator (ms: median (min–max))")
    for col in ("agents", "deploy", "× fewest", "undeploy", "plan (in-process)", "orchestrator idle CPU",
                "heartbeats/s"):
        t.add_column(col, justify="right")
    for n, r in sorted(doc["scenarios"]["registry"].items(), key=lambda kv: int(kv[0])):
        t.add_row(n, _ms(r["deploy"]), report.ratio_cell(r["deploy_over_fewest"]), _ms(r["undeploy"]),
                  f"{r['plan']['median'] * 1e3:.1f}",
                  f"{r['idle_cpu_pct']['median']:.1f}% ({r['idle_cpu_pct']['min']:.1f}–{r['idle_cpu_pct']['max']:.1f})",
                  f"{r['setup']['heartbeats_per_s']:.0f}")
    console.print(t)
    for n, probe in sorted(doc["scenarios"].get("counter_streams", {}).items(), key=lambda kv: int(kv[0])):
        console.print(f"With {n} stand-ins each streaming counters (as real agents do) the orchestrator "
                      + (f"answered ListHosts in {probe['ms']:.0f} ms" if probe["answered"]
                         else "[red]did not answer ListHosts within 5 s[/] (its gRPC threads all held by streams)"))
