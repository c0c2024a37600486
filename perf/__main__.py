"""``python -m perf <benchmark> [options]``: the project's benchmarks.

Benchmarks: ``engine`` (per-packet cost by test-run, rate at the far end of a veth), ``sdk`` (one
VNF source on its kernel, native and model executors, ns/packet side by side), ``firewall``
(the firewall VNF's ns/packet at 10, 1,000 and 10,000 rules), ``chains`` (service function
paths by hop count), ``xsk`` (the firewall in user space over AF_XDP: packets/s against XDP and a
Python loop), ``agent`` (vnfkit-agent: time to apply a segment, counter latency), ``deploy`` (the orchestrator:
deploy time by service size on real agents and by the number of registered stand-in agents) and ``suite`` (all of it
side by side with the floors and the peers: ``vnfkit bench``).
Per-VNF figure scripts live beside them: perf/{gtp,l4lb,monitor,nat,ratelimit}.py.
"""

from __future__ import annotations

import argparse
import sys

from perf import agent, chains, deploy, engine, firewall, sdk, suite, xsk


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one benchmark; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m perf", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    engine.add_arguments(sub.add_parser("engine", help="eBPF engine: ns/packet and Mpps against floor and peers",
                                        description=engine.__doc__.splitlines()[0]))
    sdk.add_arguments(sub.add_parser("sdk", help="VNF SDK: ns/packet of one VNF in the kernel, native and in Python",
                                     description=sdk.__doc__.splitlines()[0]))
    firewall.add_arguments(sub.add_parser("firewall", help="firewall VNF: ns/packet at 10, 1,000 and 10,000 rules",
                                          description=firewall.__doc__.splitlines()[0]))
    chains.add_arguments(sub.add_parser("chains", help="service function paths: ns/packet and Mpps by hop count",
                                        description=chains.__doc__.splitlines()[0]))
    xsk.add_arguments(sub.add_parser("xsk", help="firewall in user space over AF_XDP: Mpps against XDP and a "
                                     "Python loop", description=xsk.__doc__.splitlines()[0]))
    agent.add_arguments(sub.add_parser("agent", help="host agent: time to apply a 5-function segment, counter latency",
                                       description=agent.__doc__.splitlines()[0]))
    deploy.add_arguments(sub.add_parser("deploy", help="orchestrator: deploy time by service size (real agents, "
                                        "3 emulated hosts) and by registered agents (stand-ins)",
                                        description=deploy.__doc__.splitlines()[0]))
    suite.add_arguments(sub.add_parser("suite", help="every scenario side by side: floors, VNFs, chains, peers "
                                       "(also `vnfkit bench`)", description=suite.__doc__.splitlines()[0]))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        # Namespaces, XDP links and nft state are gone by now: the with-blocks unwound.
        print("interrupted; everything the benchmark set up has been removed", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
