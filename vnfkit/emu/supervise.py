"""``vnfkit emu up`` runs this in the background: it brings the emulation up, marks it ready in
the state file, and holds it (namespaces, XDP programs, agents) until SIGTERM or SIGINT, when
it takes everything down again."""

from __future__ import annotations

import signal
import sys
import threading

from vnfkit.emu.emulation import Emulation
from vnfkit.emu.topology import load_topology


def main(argv: list[str]) -> int:
    stop = threading.Event()
    # Ours before the namespaces exist, so datapath.netns leaves SIGTERM to us.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    topology = load_topology(argv[0])
    with Emulation(topology) as emu:
        emu.up()
        emu.state.ready = True
        emu.state.write()
        print(f"emulation {topology.name} is up (prefix {emu.net.prefix})", flush=True)
        while not stop.wait(1.0):
            pass
    print(f"emulation {topology.name} is down", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
