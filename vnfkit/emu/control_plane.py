"""An emulation's control plane: a development CA, an orchestrator in the root namespace and one
agent per host namespace, all talking gRPC with mutual TLS over unix sockets in the
emulation's work folder (no management network needed), each process recorded in the state
file so ``vnfkit emu down`` stops it and removes its bpffs pins.

With ``domains``, some hosts form child domains: each domain gets an orchestrator of its own
(``--parent``: it registers with the top orchestrator as one host named after the domain),
and the domain's hosts' agents register with it instead of the top one (recursive
orchestration, ``vnfkit.orchestrator.domain``)."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from datapath.errors import PinError
from datapath.pins import PinGroup, project_root
from vnfkit.emu.emulation import EmuError, Emulation


@dataclass
class ControlPlane:
    workdir: Path
    certs: Path
    orchestrator: str  # its address, for the vnfkit CLI (--orchestrator)
    metrics: str = ""  # the orchestrator's /metrics (host:port), if it serves one
    domains: dict[str, str] = field(default_factory=dict)  # child domain -> its orchestrator's address

    def cli_args(self) -> list[str]:
        return ["--orchestrator", self.orchestrator, "--certs", str(self.certs)]


def pin_group(emu_prefix: str, host: str) -> str:
    return f"emu-{emu_prefix}-{host}"


def start(emu: Emulation, workdir: Path, *, timeout: float = 90.0, metrics: str = "",
          domains: Mapping[str, Sequence[str]] | None = None) -> ControlPlane:
    """Certificates, the orchestrator(s), the agents; returns once every agent (and every child
    domain) is registered. ``metrics`` (host:port): the orchestrator serves Prometheus /metrics
    there. ``domains``: child domain name -> the hosts in it."""
    from vnfkit.agent.tls import make_dev_certs

    workdir.mkdir(parents=True, exist_ok=True)
    certs = workdir / "certs"
    make_dev_certs(certs)
    orch = start_orchestrator(emu, workdir, metrics=metrics)
    plane = ControlPlane(workdir, certs, orch, metrics)
    reports_to: dict[str, str] = {}
    for domain, hosts in (domains or {}).items():
        unknown = set(hosts) - set(emu.state.hosts)
        if unknown or domain in emu.state.hosts:
            raise EmuError(f"domain {domain!r}: unknown host(s) {sorted(unknown)}, or a host has the domain's name")
        plane.domains[domain] = start_orchestrator(emu, workdir, domain=domain, parent=orch)
        reports_to.update(dict.fromkeys(hosts, plane.domains[domain]))
    for name, host in emu.state.hosts.items():
        cfg = {"name": name, "listen": [f"unix:{workdir}/agent-{name}.sock"], "state_dir": str(workdir / name),
               "pin_group": pin_group(emu.state.prefix, name), "netns": host.ns,
               "orchestrator": reports_to.get(name, orch),
               "tls": {"ca": str(certs / "ca.pem"), "cert": str(certs / "agent.pem"), "key": str(certs / "agent.key")},
               "counter_interval": 0.5, "heartbeat_interval": 0.5, "metrics": "",
               "ingress": host.ingress, "egress": host.egress, "underlay": host.underlay,
               "cpus": host.cpus, "memory_mb": host.memory_mb}
        path = workdir / f"agent-{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        emu.start(f"agent-{name}", None, [sys.executable, "-m", "vnfkit.agent.cli", "--config", str(path)],
                  workdir / f"agent-{name}.log")
    for domain, address in plane.domains.items():
        wait_registered(plane, set((domains or {})[domain]), timeout, emu, address)
    wait_registered(plane, (set(emu.state.hosts) - set(reports_to)) | set(plane.domains), timeout, emu)
    return plane


def start_orchestrator(emu: Emulation, workdir: Path, *, domain: str | None = None,
                       parent: str | None = None, metrics: str = "") -> str:
    """(Re)start the orchestrator of an emulation (or of its child ``domain``, registering with
    ``parent``); its address. Its state is in the work folder, so a restarted one knows the
    services; the agents' heartbeats find it again."""
    name = f"orchestrator-{domain}" if domain else "orchestrator"
    orch = f"unix:{workdir}/{name}.sock"
    argv = [sys.executable, "-m", "vnfkit.orchestrator.server", "--listen", orch,
            "--state", str(workdir / f"{name}.db"), "--certs", str(workdir / "certs"),
            "--heartbeat-ms", "500", "--counter-ms", "500"]
    if domain:
        argv += ["--domain", domain, "--parent", parent or ""]
    if metrics:
        argv += ["--metrics", metrics]
    emu.start(name, None, argv, workdir / f"{name}.log")
    return orch


def wait_registered(plane: ControlPlane, hosts: set[str], timeout: float, emu: Emulation,
                    orchestrator: str | None = None) -> None:
    """Wait until ``hosts`` are registered and alive at ``orchestrator`` (default: the top one)."""
    from vnfkit.agent.convert import struct_to_dict
    from vnfkit.cli_orch import Control, ControlError

    address = orchestrator or plane.orchestrator
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    while time.monotonic() < deadline:
        for key, proc in emu._processes.items():
            if proc.poll() is not None:
                log = Path(emu.state.agents[key]["log"])
                raise EmuError(f"{key} exited ({proc.returncode}); the end of {log}:\n"
                               + "\n".join(log.read_text(errors="replace").splitlines()[-15:]))
        try:
            c = Control(address, plane.certs)
            try:
                listed = {h.host: h for h in c.call("ListHosts", c.pb.ListHostsRequest(), timeout=2).hosts}
            finally:
                c.close()
            # A child domain counts once the parent holds what it advertises now: its first
            # registration may have come before all of its hosts had (it registers again).
            seen = {h for h, info in listed.items() if info.alive
                    and (h not in plane.domains or _advertised(plane, h, struct_to_dict(info.capabilities)))}
        except ControlError:
            seen = set()
        if hosts <= seen:
            return
        time.sleep(0.2)
    raise EmuError(f"not registered at {address} after {timeout:.0f} s: missing {sorted(hosts - seen)}")


def _advertised(plane: ControlPlane, domain: str, held: dict[str, object]) -> bool:
    """Whether ``held`` (a parent's record of the domain) is what the domain advertises now."""
    import grpc

    from vnfkit.agent import tls
    from vnfkit.proto import load

    pb, rpc = load()
    # Asked as its parent asks (an orchestrator's certificate: a domain's Agent service takes
    # no other role).
    creds = tls.channel_credentials(plane.certs / "ca.pem", plane.certs / "orchestrator.pem",
                                    plane.certs / "orchestrator.key")
    try:
        with grpc.secure_channel(plane.domains[domain], creds,
                                 options=[("grpc.ssl_target_name_override", "localhost")]) as ch:
            now = rpc.AgentStub(ch).Capabilities(pb.CapabilitiesRequest(), timeout=2)
    except grpc.RpcError:
        return False
    return (held.get("underlay"), held.get("cpus"), held.get("vnfs"), held.get("ingress"), held.get("egress")) == (
        now.underlay, now.cpus, list(now.vnfs), list(now.ingress), list(now.egress))


def remove_pins(emu_prefix: str) -> list[str]:
    """The bpffs pin groups of an emulation's agents (left when they were killed)."""
    gone = []
    for d in sorted(project_root().glob(f"emu-{emu_prefix}-*")):
        try:
            PinGroup(d.name).remove()  # the one way: links detached, the last group takes the root
        except PinError:
            continue  # still there: the caller's check of leftovers names it
        gone.append(str(d))
    return gone
