"""The main job: a service chain across three emulated hosts, deployed by the orchestrator,
carrying real HTTP, with live counters, a backend changed under load, and everything removed.

    client -- h1 [firewall] ==NSH== h2 [nat, l4lb] ==NSH== h3 [monitor] -- web1, web2

1. ``vnfkit emu`` brings up three hosts (namespaces) on one underlay, a client on h1 and two
   web servers on h3; a development CA, an orchestrator and one agent per host start, all
   talking gRPC with mutual TLS.
2. The service (firewall -> nat -> l4lb -> monitor, symmetric) is deployed through the
   orchestrator: placed by resources (h1: 1 cpu, h2: 2, h3: 1), compiled into SPIs and
   per-host segments, prepared on every agent, then committed.
3. The client fetches pages from the VIP; each answer says which server sent it. The counters
   the agents stream to the orchestrator are shown live.
4. web1 is taken out of the load balancer under load (a new generation of the service: l4lb's
   control settings change in place), and new requests go to web2.
5. The service is undeployed and the emulation removed.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from vnfkit.cli_orch import Control, counters_table
from vnfkit.emu import control_plane
from vnfkit.emu.emulation import Emulation, EndpointInfo
from vnfkit.emu.topology import Endpoint, Host, Topology
from vnfkit.emu.traffic import HttpLoad, LoadStats, WebServer

SERVICE = """\
descriptor_version: vnfkit/service/v1
name: web
vendor: org.vnfkit.demo
version: 1.0.0
description: the demo - filter, translate, balance and observe web traffic, both ways
functions:
  - id: fw
    vnf: firewall
    control: {{default: allow, rules: "deny udp from any to any port 9"}}
  - id: nat
    vnf: nat
    control: {{inside: ["{inside}"], pool: "{pool}"}}
  - id: lb
    vnf: l4lb
    control:
      services:
        web:
          mode: dnat
          vips: [{{addr: "{vip}", proto: tcp, port: 80}}]
          backends: [{backends}]
  - {{id: mon, vnf: monitor}}
paths:
  - {{id: web, hops: [fw, nat, lb, mon], symmetric: true}}
classifier:
  - {{path: web, match: {{dst: "{vip}/32", proto: tcp, dport: 80}}}}
"""


def service_text(client: EndpointInfo, webs: list[EndpointInfo], vip: str, pool: str) -> str:
    """The demo's service.yaml for an emulation's client and web servers, with a VIP for the
    load balancer and a NAT pool address (``emu.net.spare_addresses()``)."""
    return SERVICE.format(inside=f"{client.ip}/32", pool=pool, vip=vip,
                          backends=", ".join(f'{{addr: "{w.ip}", port: 8080}}' for w in webs))


def web_service(emu: Emulation, client: str, servers: list[str]) -> tuple[str, str, str]:
    """The demo's service for this emulation's endpoints ``client`` and ``servers``, with a VIP
    and a NAT pool the emulation's interfaces do not use: (service.yaml text, VIP, pool)."""
    vip, pool = emu.net.spare_addresses()
    eps = emu.state.endpoints
    return service_text(eps[client], [eps[w] for w in servers], vip, pool), vip, pool


def topology() -> Topology:
    return Topology("demo", [Host("h1", cpus=1), Host("h2", cpus=2), Host("h3", cpus=1)],
                    [Endpoint("client", "h1", "client"), Endpoint("web1", "h3", "server"),
                     Endpoint("web2", "h3", "server")])


def _answers_table(before: LoadStats, after: LoadStats | None = None) -> Table:
    t = Table(title="HTTP answers at the client, by server")
    t.add_column("server")
    t.add_column("before the change", justify="right")
    if after is not None:
        t.add_column("after it was applied", justify="right")
    for who in sorted(set(before.answers) | set(after.answers if after else {})):
        row = [who, f"{before.answers[who]:,}"]
        if after is not None:
            row.append(f"{after.answers[who] - before.answers[who]:,}")
        t.add_row(*row)
    errors = (after or before).errors  # cumulative: the later snapshot holds the earlier's
    kinds = ", ".join(f"{kind} ×{n}" for kind, n in errors.most_common())
    t.caption = f"{sum(errors.values())} failed request(s)" + (f": {kinds}" if kinds else "")
    return t


def _watch(console: Console, control: Control, load: HttpLoad, seconds: float) -> None:
    previous, last = None, time.monotonic()
    end = last + seconds
    with Live(console=console, refresh_per_second=4) as live:
        while time.monotonic() < end:
            time.sleep(0.5)
            now = time.monotonic()
            counters = control.counters("web")
            live.update(Group(counters_table(counters, previous, now - last), _answers_table(load.snapshot())))
            previous, last = counters, now


def run(seconds: float = 6.0, console: Console | None = None) -> int:
    console = console or Console()
    workdir = Path(tempfile.mkdtemp(prefix="vnfkit-demo-"))
    with Emulation(topology()) as emu:
        console.rule("1. three hosts, a client and two web servers (vnfkit emu)")
        state = emu.up()
        for name, h in state.hosts.items():
            console.print(f"  {name}: netns {h.ns}, underlay {h.underlay_ip}")
        for name, e in state.endpoints.items():
            console.print(f"  {name} ({e.role}) on {e.host}: {e.ip}")
        plane = control_plane.start(emu, workdir)
        console.print(f"  orchestrator and {len(state.hosts)} agents up, mutual TLS (certs in {plane.certs})")
        text, vip, pool = web_service(emu, "client", ["web1", "web2"])
        client = state.endpoints["client"]
        webs = [state.endpoints["web1"], state.endpoints["web2"]]
        service = workdir / "service.yaml"
        service.write_text(text)

        console.rule("2. deploy firewall -> nat -> l4lb -> monitor through the orchestrator")
        control = Control(plane.orchestrator, plane.certs)
        rep = control.call("Deploy", control.pb.DeployRequest(path=str(service)))
        for fid, host in sorted(rep.service.placement.items(), key=lambda kv: kv[1]):
            console.print(f"  {fid:4} -> {host}")
        console.print(f"  SPIs {list(rep.service.spis)} (the path and its reverse), VIP {vip}, NAT pool {pool}")

        servers = [WebServer(w_name, w.ns, w.ip) for w_name, w in (("web1", webs[0]), ("web2", webs[1]))]
        try:
            console.rule(f"3. HTTP from the client to {vip}:80, counters live")
            with HttpLoad(client.ns, vip, 80, threads=2) as load:
                _watch(console, control, load, seconds)
                before = load.snapshot()
                console.rule("4. take web1 out of the load balancer, under load")
                service.write_text(text.replace(f'{{addr: "{webs[0].ip}", port: 8080}}, ', ""))
                rep = control.call("Deploy", control.pb.DeployRequest(path=str(service), update=True))
                console.print(f"  generation {rep.service.generation} applied (new SPIs {list(rep.service.spis)}; "
                              "l4lb's tables changed in place, so its flow table stays)")
                console.print("  a request in flight to web1 at that moment moves to web2, which resets it: "
                              "removing a backend reschedules its flows (weight 0 would drain them instead)")
                applied = load.snapshot()  # requests made while the update was applied went to either
                _watch(console, control, load, seconds / 2)
                after = load.snapshot()
                after.answers.subtract(applied.answers)
                after.answers.update(before.answers)
        finally:
            for s in servers:
                s.close()
        console.print(_answers_table(before, after))
        counters = control.counters("web")["web"]
        fw, mon = counters["functions"].get("fw", {}), counters["functions"].get("mon", {})
        console.print(f"  every packet of both directions went through the same instances: firewall saw "
                      f"{int(fw.get('rx', [0])[0]):,}, monitor {int(mon.get('rx', [0])[0]):,}")
        console.rule("5. undeploy and tear down")
        control.call("Undeploy", control.pb.UndeployRequest(name="web"))
        control.close()
    ok = before.total > 0 and after.answers["web2"] > 0 and after.answers["web1"] == before.answers["web1"]
    console.print()
    console.print("[bold]What you saw[/]: three hosts emulated with namespaces, an orchestrator placing a "
                  "four-function chain across them and applying it on each host's agent in two phases over "
                  "mutual TLS; real HTTP through XDP functions joined by NSH, replies back through the same "
                  "instances; a backend removed under load without dropping the service.")
    console.print("[bold]Go further[/]: vnfkit emu up examples/topology.yaml · vnfkit deploy SERVICE.yaml · "
                  "vnfkit counters web --watch · vnfkit services · vnfkit hosts · vnfkit emu down demo · "
                  "make test · python -m perf chains")
    console.print("result: " + ("[green]OK[/]" if ok else "[red]unexpected answers (see the tables above)[/]"))
    return 0 if ok else 1
