"""An emulation's control plane: a development CA, an orchestrator in the root namespace and one
agent per host namespace, all talking gRPC with mutual TLS over unix sockets in the
emulation's work folder (no management network needed), each process recorded in the state
file so ``vnfkit emu down`` stops it and removes its bpffs pins."""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from datapath.pins import project_root
from vnfkit.emu.emulation import EmuError, Emulation


@dataclass
class ControlPlane:
    workdir: Path
    certs: Path
    orchestrator: str  # its address, for the vnfkit CLI (--orchestrator)
    metrics: str = ""  # the orchestrator's /metrics (host:port), if it serves one

    def cli_args(self) -> list[str]:
        return ["--orchestrator", self.orchestrator, "--certs", str(self.certs)]


def pin_group(emu_prefix: str, host: str) -> str:
    return f"emu-{emu_prefix}-{host}"


def start(emu: Emulation, workdir: Path, *, timeout: float = 90.0, metrics: str = "") -> ControlPlane:
    """Certificates, the orchestrator, the agents; returns once every agent is registered.
    ``metrics`` (host:port): the orchestrator serves Prometheus /metrics there."""
    from vnfkit.agent.tls import make_dev_certs

    workdir.mkdir(parents=True, exist_ok=True)
    certs = workdir / "certs"
    make_dev_certs(certs)
    orch = start_orchestrator(emu, workdir, metrics=metrics)
    for name, host in emu.state.hosts.items():
        cfg = {"name": name, "listen": [f"unix:{workdir}/agent-{name}.sock"], "state_dir": str(workdir / name),
               "pin_group": pin_group(emu.state.prefix, name), "netns": host.ns, "orchestrator": orch,
               "tls": {"ca": str(certs / "ca.pem"), "cert": str(certs / "agent.pem"), "key": str(certs / "agent.key")},
               "counter_interval": 0.5, "heartbeat_interval": 0.5, "metrics": "",
               "ingress": host.ingress, "egress": host.egress, "underlay": host.underlay,
               "cpus": host.cpus, "memory_mb": host.memory_mb}
        path = workdir / f"agent-{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        emu.start(f"agent-{name}", None, [sys.executable, "-m", "vnfkit.agent.cli", "--config", str(path)],
                  workdir / f"agent-{name}.log")
    plane = ControlPlane(workdir, certs, orch, metrics)
    wait_registered(plane, set(emu.state.hosts), timeout, emu)
    return plane


def start_orchestrator(emu: Emulation, workdir: Path, *, metrics: str = "") -> str:
    """(Re)start the orchestrator of an emulation; its address. Its state is in the work folder,
    so a restarted one knows the services; the agents' heartbeats find it again."""
    orch = f"unix:{workdir}/orchestrator.sock"
    emu.start("orchestrator", None, [sys.executable, "-m", "vnfkit.orchestrator.server", "--listen", orch,
                                     "--state", str(workdir / "orchestrator.db"), "--certs", str(workdir / "certs"),
                                     "--heartbeat-ms", "500", "--counter-ms", "500",
                                     *(["--metrics", metrics] if metrics else [])],
              workdir / "orchestrator.log")
    return orch


def wait_registered(plane: ControlPlane, hosts: set[str], timeout: float, emu: Emulation) -> None:
    from vnfkit.cli_orch import Control, ControlError

    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    while time.monotonic() < deadline:
        for key, proc in emu._processes.items():
            if proc.poll() is not None:
                log = Path(emu.state.agents[key]["log"])
                raise EmuError(f"{key} exited ({proc.returncode}); the end of {log}:\n"
                               + "\n".join(log.read_text(errors="replace").splitlines()[-15:]))
        try:
            c = Control(plane.orchestrator, plane.certs)
            try:
                seen = {h.host for h in c.call("ListHosts", c.pb.ListHostsRequest(), timeout=2).hosts if h.alive}
            finally:
                c.close()
        except ControlError:
            seen = set()
        if hosts <= seen:
            return
        time.sleep(0.2)
    raise EmuError(f"agents not registered after {timeout:.0f} s: missing {sorted(hosts - seen)}")


def remove_pins(emu_prefix: str) -> list[str]:
    """The bpffs pin groups of an emulation's agents (left when they were killed)."""
    root = project_root()
    gone = []
    for d in sorted(root.glob(f"emu-{emu_prefix}-*")):
        shutil.rmtree(d, ignore_errors=True)
        gone.append(str(d))
    return gone
