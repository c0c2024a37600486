"""``vnfkit deploy|undeploy|services|hosts|counters``: an operator's commands to an orchestrator
(its Control service, over mutual TLS with the ``client`` certificate of ``vnfkit certs``)."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from datapath.errors import VnfkitError

console = Console()
DEFAULT_ADDRESS = "127.0.0.1:50050"


class ControlError(VnfkitError):
    """The orchestrator refused or could not be reached; the message is its status."""


def register(subparsers: argparse._SubParsersAction) -> None:
    def common(s: argparse.ArgumentParser) -> None:
        s.add_argument("--orchestrator", default=os.environ.get("VNFKIT_ORCHESTRATOR", DEFAULT_ADDRESS),
                       help="its address (default $VNFKIT_ORCHESTRATOR or %(default)s; unix:PATH works)")
        s.add_argument("--certs", type=Path, default=Path(os.environ.get("VNFKIT_CERTS", "/etc/vnfkit/certs")),
                       help="folder with ca.pem, client.pem and client.key (default $VNFKIT_CERTS)")
        s.add_argument("--insecure", action="store_true", help="plain gRPC (an orchestrator in --insecure mode)")
        s.add_argument("--emu", metavar="NAME", help="the orchestrator of emulation NAME ('vnfkit emu up'): its "
                       "address and certificates, instead of --orchestrator and --certs")

    s = subparsers.add_parser("certs", help="a development CA and certificates for the orchestrator, agents and "
                              "operators (mutual TLS)")
    s.add_argument("folder", metavar="FOLDER", type=Path)
    s.add_argument("--name", action="append", default=[], help="another DNS name or IP they are valid for")
    s.add_argument("--force", action="store_true", help="replace a CA already in FOLDER")
    s.set_defaults(func=cmd_certs)
    s = subparsers.add_parser("deploy", help="deploy a service.yaml through the orchestrator")
    s.add_argument("service", metavar="SERVICE_YAML")
    s.add_argument("--update", action="store_true", help="replace the deployed service of that name")
    common(s)
    s.set_defaults(func=cmd_deploy)
    s = subparsers.add_parser("undeploy", help="remove a deployed service from every host")
    s.add_argument("name", metavar="NAME")
    common(s)
    s.set_defaults(func=cmd_undeploy)
    s = subparsers.add_parser("services", help="the deployed services and where their functions run")
    common(s)
    s.set_defaults(func=cmd_services)
    s = subparsers.add_parser("hosts", help="the registered hosts")
    common(s)
    s.set_defaults(func=cmd_hosts)
    s = subparsers.add_parser("counters", help="per-function and per-path counters (--watch: live, with rates)")
    s.add_argument("name", metavar="SERVICE", nargs="?", default="")
    s.add_argument("--watch", action="store_true")
    s.add_argument("--interval", type=float, default=1.0)
    common(s)
    s.set_defaults(func=cmd_counters)


class Control:
    """A Control stub with errors as ControlError."""

    def __init__(self, address: str, certs: Path | None) -> None:
        import grpc

        from vnfkit.proto import load

        self.pb, rpc = load()
        if certs is None:
            self.channel = grpc.insecure_channel(address)
        else:
            from vnfkit.agent import tls

            creds = tls.channel_credentials(certs / "ca.pem", certs / "client.pem", certs / "client.key")
            self.channel = grpc.secure_channel(address, creds,
                                               options=[("grpc.ssl_target_name_override", "localhost")])
        self.stub = rpc.ControlStub(self.channel)
        self.address = address

    def call(self, method: str, request: Any, timeout: float = 300.0) -> Any:
        import grpc

        try:
            return getattr(self.stub, method)(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise ControlError(f"{method}: {exc.code().name}: {exc.details()}") from exc

    def counters(self, name: str = "") -> dict[str, Any]:
        from vnfkit.agent.convert import struct_to_dict

        return struct_to_dict(self.call("ServiceCounters", self.pb.ServiceCountersRequest(name=name)).counters)

    def close(self) -> None:
        self.channel.close()


def cmd_certs(args: argparse.Namespace) -> int:
    from vnfkit.agent.tls import make_dev_certs

    if (args.folder / "ca.pem").exists() and not args.force:
        # A new CA would orphan every certificate the old one signed: say so instead.
        raise ControlError(f"{args.folder / 'ca.pem'} exists: every certificate it signed would stop working; "
                           "--force replaces it")
    for what, path in make_dev_certs(args.folder, args.name).items():
        console.print(f"{what:18} {path}")
    console.print("development certificates: a CA whose key sits beside them; use your own PKI in production")
    return 0


def _control(args: argparse.Namespace) -> Control:
    if args.emu:
        from vnfkit.emu.emulation import EmuError, State

        plane = State.read(args.emu).extra.get("control_plane")
        if not plane:
            raise EmuError(f"emulation {args.emu!r} runs no control plane (it was brought up with --bare)")
        return Control(plane["orchestrator"], Path(plane["certs"]))
    return Control(args.orchestrator, None if args.insecure else args.certs)


def cmd_deploy(args: argparse.Namespace) -> int:
    c = _control(args)
    rep = c.call("Deploy", c.pb.DeployRequest(path=str(Path(args.service).resolve()), update=args.update))
    s = rep.service
    console.print(f"deployed [bold]{s.name}[/] generation {s.generation} on {', '.join(s.hosts)} "
                  f"(SPIs {', '.join(map(str, s.spis))})")
    for fid, host in sorted(s.placement.items()):
        console.print(f"  {fid:12} -> {host}")
    return 0


def cmd_undeploy(args: argparse.Namespace) -> int:
    c = _control(args)
    c.call("Undeploy", c.pb.UndeployRequest(name=args.name))
    console.print(f"undeployed {args.name}")
    return 0


def cmd_services(args: argparse.Namespace) -> int:
    c = _control(args)
    t = Table(title="services")
    for col in ("name", "generation", "state", "hosts", "placement", "SPIs"):
        t.add_column(col)
    for s in c.call("ListServices", c.pb.ListServicesRequest()).services:
        t.add_row(s.name, str(s.generation), s.state + (f" ({s.error})" if s.error else ""), ", ".join(s.hosts),
                  ", ".join(f"{k}@{v}" for k, v in sorted(s.placement.items())), ", ".join(map(str, s.spis)))
    console.print(t)
    return 0


def cmd_hosts(args: argparse.Namespace) -> int:
    from vnfkit.agent.convert import struct_to_dict

    c = _control(args)
    t = Table(title="hosts")
    for col in ("host", "address", "alive", "last seen", "cpus", "underlay", "ingress", "egress"):
        t.add_column(col)
    for h in c.call("ListHosts", c.pb.ListHostsRequest()).hosts:
        cap = struct_to_dict(h.capabilities)
        t.add_row(h.host, h.address, "yes" if h.alive else "[red]no[/]", f"{h.last_seen_age_s:.1f} s ago",
                  str(cap.get("cpus", "")), f"{cap.get('underlay', '')} {cap.get('underlay_ip', '')}",
                  ", ".join(cap.get("ingress", [])), ", ".join(cap.get("egress", [])))
    console.print(t)
    return 0


def counters_table(counters: dict[str, Any], previous: dict[str, Any] | None = None, dt: float = 1.0) -> Table:
    """Functions' rx/pass/drop with rates (packets/s against ``previous``), and path packets."""
    t = Table(title="counters")
    for col in ("service", "function", "host", "rx", "rx/s", "passed on", "dropped"):
        t.add_column(col, justify="right" if col not in ("service", "function", "host") else "left")
    for name, svc in sorted(counters.items()):
        for fid, c in sorted(svc.get("functions", {}).items()):
            rx = int(c.get("rx", [0])[0])
            before = (previous or {}).get(name, {}).get("functions", {}).get(fid, {}).get("rx", [rx])[0]
            passed = int(c.get("pass", [0])[0]) + int(c.get("next", [0])[0])
            dropped = int(c.get("drop", [0])[0]) + int(c.get("aborted", [0])[0])
            t.add_row(name, fid, c.get("host", ""), f"{rx:,}", f"{(rx - int(before)) / dt:,.0f}", f"{passed:,}",
                      f"{dropped:,}")
        for path, n in sorted(svc.get("paths", {}).items()):
            t.add_row(name, f"path {path}", "", f"{int(n):,}", "", "", "")
    return t


def cmd_counters(args: argparse.Namespace) -> int:
    c = _control(args)
    if not args.watch:
        console.print(counters_table(c.counters(args.name)))
        return 0
    previous, last = None, time.monotonic()
    with Live(console=console, refresh_per_second=4) as live:
        while True:
            now = time.monotonic()
            counters = c.counters(args.name)
            live.update(counters_table(counters, previous, max(now - last, 1e-3)))
            previous, last = counters, now
            time.sleep(args.interval)
