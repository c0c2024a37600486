"""``vnfkit emu up|down|status``: the multi-host emulator from the command line."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

console = Console()


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``emu`` with ``up``, ``down`` and ``status`` to the CLI's subparsers."""
    emu = subparsers.add_parser("emu", help="emulated hosts, underlay and endpoints on namespaces")
    sub = emu.add_subparsers(dest="emu_command", required=True)
    s = sub.add_parser("up", help="bring up the topology of a topology.yaml (in the background)")
    s.add_argument("topology", metavar="TOPOLOGY", help="the topology.yaml")
    s.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for it to be ready")
    s.add_argument("--bare", action="store_true", help="no control plane: hosts, underlay and endpoints only")
    s.add_argument("--metrics", default="", metavar="HOST:PORT", help="the orchestrator's Prometheus /metrics")
    s.set_defaults(func=cmd_up)
    s = sub.add_parser("down", help="remove an emulation, also what a crashed 'emu up' left")
    s.add_argument("name", metavar="NAME")
    s.set_defaults(func=cmd_down)
    s = sub.add_parser("status", help="the emulations that are up, or one in detail")
    s.add_argument("name", metavar="NAME", nargs="?")
    s.set_defaults(func=cmd_status)


def cmd_up(args: argparse.Namespace) -> int:
    from vnfkit.emu.emulation import STATE_DIR, EmuError, State
    from vnfkit.emu.topology import load_topology

    topology = load_topology(args.topology)  # refuse a bad file here, not in the background
    log = STATE_DIR / f"{topology.name}.log"
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        argv = [sys.executable, "-m", "vnfkit.emu.supervise", str(Path(args.topology).resolve())]
        argv += ["--bare"] if args.bare else []
        argv += ["--metrics", args.metrics] if args.metrics else []
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EmuError(f"emu up failed (exit {proc.returncode}); its log, {log}:\n{log.read_text()}")
        try:
            state = State.read(topology.name)
        except EmuError:
            state = None
        if state is not None and state.ready and state.pid == proc.pid:
            _show(state)
            console.print(f"up; 'vnfkit emu down {topology.name}' removes it (log: {log})")
            return 0
        time.sleep(0.2)
    raise EmuError(f"emu up: not ready after {args.timeout:.0f} s; see {log}")


def cmd_down(args: argparse.Namespace) -> int:
    from vnfkit.emu.emulation import down

    removed = down(args.name)
    extra = f" (and what a crash left: {', '.join(removed)})" if removed else ""
    console.print(f"emulation {args.name} is down{extra}")
    return 0


def _show(state: object) -> None:
    t = Table(title=f"emulation {state.name} (prefix {state.prefix})")
    for col in ("name", "kind", "netns", "address", "attached to"):
        t.add_column(col)
    for name, h in state.hosts.items():
        t.add_row(name, "host", h.ns, f"{h.underlay_ip} ({h.underlay})", "underlay")
    for name, e in state.endpoints.items():
        t.add_row(name, e.role, e.ns, e.ip, e.host)
    for key, proc in state.agents.items():
        t.add_row(key, "process", proc.get("ns") or "-", f"pid {proc['pid']}", proc.get("log", ""))
    console.print(t)
    plane = state.extra.get("control_plane")
    if plane:
        console.print(f"orchestrator {plane['orchestrator']} (mutual TLS, certificates in {plane['certs']})"
                      + (f", /metrics on {plane['metrics']}" if plane.get("metrics") else ""))
        service = state.extra.get("service")
        if service:
            console.print(f"a service for it: {service['path']} (firewall -> nat -> l4lb -> monitor, VIP "
                          f"{service['vip']}:80 from {service['client']} to {', '.join(service['servers'])})")
            client_ns = state.endpoints[service["client"]].ns
            console.print(f"  vnfkit deploy {service['path']} --emu {state.name}")
            console.print(f"  ip netns exec {client_ns} curl -s http://{service['vip']}/")
        console.print(f"  vnfkit hosts --emu {state.name} · vnfkit services --emu {state.name} · "
                      f"vnfkit counters --watch --emu {state.name}")


def cmd_status(args: argparse.Namespace) -> int:
    from vnfkit.emu.emulation import STATE_DIR, State

    if args.name:
        _show(State.read(args.name))
        return 0
    names = sorted(p.stem for p in STATE_DIR.glob("*.json")) if STATE_DIR.is_dir() else []
    console.print("\n".join(names) if names else "no emulation is up")
    return 0
