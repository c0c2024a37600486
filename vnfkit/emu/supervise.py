"""``vnfkit emu up`` runs this in the background: it brings the emulation up with its control
plane (a development CA, an orchestrator and one agent per host, ``control_plane.start``),
marks it ready in the state file, and holds it (namespaces, XDP programs, processes) until
SIGTERM or SIGINT, when it takes everything down again.

    python -m vnfkit.emu.supervise TOPOLOGY [--bare] [--metrics HOST:PORT]

``--bare``: hosts, underlay and endpoints only. Otherwise every server endpoint also runs a
web server on port 8080 that answers "served by NAME", and with a client among the endpoints
it writes the demo's service for this emulation's addresses beside the state file
(``<name>/web.service.yaml``), ready for ``vnfkit deploy ... --emu NAME``.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import threading

from vnfkit.emu.emulation import STATE_DIR, Emulation
from vnfkit.emu.topology import load_topology


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m vnfkit.emu.supervise")
    p.add_argument("topology")
    p.add_argument("--bare", action="store_true")
    p.add_argument("--metrics", default="")
    args = p.parse_args(argv)
    stop = threading.Event()
    # Ours before the namespaces exist, so datapath.netns leaves SIGTERM to us.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    topology = load_topology(args.topology)
    workdir = STATE_DIR / topology.name
    try:
        with Emulation(topology) as emu:
            emu.up()
            if not args.bare:
                from vnfkit.emu import control_plane

                emu.state.extra["workdir"] = str(workdir)
                emu.state.write()  # before anything is in it, so 'emu down' removes it after a crash
                plane = control_plane.start(emu, workdir, metrics=args.metrics)
                emu.state.extra["control_plane"] = {"orchestrator": plane.orchestrator, "certs": str(plane.certs),
                                                    "metrics": plane.metrics}
                _serve_web(emu)
            emu.state.ready = True
            emu.state.write()
            print(f"emulation {topology.name} is up (prefix {emu.net.prefix})", flush=True)
            while not stop.wait(1.0):
                pass
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"emulation {topology.name} is down", flush=True)
    return 0


def _serve_web(emu: Emulation) -> None:
    from vnfkit.demo_chain import web_service

    eps = emu.state.endpoints
    clients = [n for n, e in eps.items() if e.role == "client"]
    servers = [n for n, e in eps.items() if e.role == "server"]
    if not servers:
        return
    work = STATE_DIR / emu.topology.name
    for name in servers:
        site = work / f"web-{name}"
        site.mkdir(parents=True, exist_ok=True)
        (site / "index.html").write_text(f"served by {name}\n")
        emu.start(f"web-{name}", eps[name].ns, [sys.executable, "-m", "http.server", "8080", "--bind", eps[name].ip,
                                                "--directory", str(site)], work / f"web-{name}.log")
    if not clients:
        return
    text, vip, _pool = web_service(emu, clients[0], servers)
    path = work / "web.service.yaml"
    path.write_text(text)
    emu.state.extra["service"] = {"path": str(path), "vip": vip, "client": clients[0], "servers": servers}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
