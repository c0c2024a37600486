"""The SFC classifier's per-packet cost by rule count: ``.venv/bin/python perf/classifier.py [--quick]``.

BPF_PROG_TEST_RUN of ``chaining/progs/classifier.c`` (the kernel's own ns/run over ``repeat``
repetitions of one 64-byte UDP frame) with 1, 16 and 256 rules, in these cases:

* ``miss``: rules for other /32 destinations; every rule is compared, the frame passes.
* ``last``: the same rules, the last one matching: every rule compared, then the metadata,
  the tail call to the forwarder and its lookup of a path that ends at the stack.
* ``first``: the first rule matches, then the same hand-over.
* ``reply``: a rev_flows entry matches before any rule is looked at, the same hand-over.
* ``last by port``: rules for one destination that differ only in their port, the last one
  matching: every rule passes the address test and is compared whole (the worst case).

Against the floor (the empty ``xdp_pass``: the harness) and the classifier with no rules.
Every measurement must have moved the counter of where the frame should go (the matching
rule's, ``cls_unmatched`` or ``cls_reply``) by exactly its repetitions, or the script stops.
Cases of one rule set are interleaved run by run; numbers are medians over runs with min and
max, on one pinned CPU. A shared 2-vCPU VM moves them by tens of percent between sessions.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import statistics
import sys
from collections.abc import Callable

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from chaining.classifier import Rule, flow_key
from chaining.local import FIRST_SI, LocalChain
from chaining.service import Match
from datapath.builtin import builtin
from datapath.objects import Program, load

RULES = (1, 16, 256)
SPI = 7
SRC, DST, SPORT = "198.18.0.1", ipaddress.IPv4Address("198.19.0.0"), 4000

Case = tuple[Program, bytes, Callable[[], int] | None]  # program, frame, the counter it must move


def frame(dst: ipaddress.IPv4Address, dport: int = 80) -> bytes:
    pkt = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src=SRC, dst=str(dst)) / UDP(
        sport=SPORT, dport=dport)
    return bytes(pkt).ljust(64, b"\0")


def timed(name: str, case: Case, repeat: int) -> float:
    """The kernel's ns/run over ``repeat`` runs, after checking every run went where named."""
    prog, data, moved = case
    before = moved() if moved else 0
    res = prog.test_run(data, repeat=repeat)
    counted = moved() - before if moved else repeat
    if res.verdict != "PASS" or counted != repeat:
        raise RuntimeError(f"{name}: {res.verdict}, {counted} counted for {repeat} runs: "
                           "the number would not belong to the case it names")
    return float(res.duration_ns)


def interleaved(cases: dict[str, Case], runs: int, repeat: int, out: dict[str, list[float]]) -> None:
    for _ in range(runs):
        for name, case in cases.items():
            out.setdefault(name, []).append(timed(name, case, repeat))


def measure(runs: int, repeat: int) -> dict[str, list[float]]:
    """ns/run of every case, ``runs`` times each."""
    out: dict[str, list[float]] = {}
    with load(builtin("xdp_pass")) as floor, LocalChain() as chain:
        chain.add_path(SPI, [])  # straight to the stack: the hand-over costs one forwarder lookup
        entry = chain.classifier.program("classifier")
        reply = chain.sff.map("rev_flows")
        key = flow_key(SRC, str(DST), 17, SPORT, 80)

        def counter(name: str) -> Callable[[], int]:
            return lambda: chain.counters()[name]

        def rule_hits(i: int) -> Callable[[], int]:
            return lambda: chain.rule_stats()[i].packets

        interleaved({"floor (xdp_pass)": (floor.program(), frame(DST), None),
                     "no rules": (entry, frame(DST), counter("cls_unmatched"))}, runs, repeat, out)
        for n in RULES:
            # Rule i matches DST + 1 + i; all /32s, so they are scanned in the order given.
            chain.set_rules([Rule(Match(dst=f"{DST + 1 + i}/32"), SPI) for i in range(n)])
            interleaved({f"{n} rules: miss": (entry, frame(DST), counter("cls_unmatched")),
                         f"{n} rules: last": (entry, frame(DST + n), rule_hits(n - 1)),
                         f"{n} rules: first": (entry, frame(DST + 1), rule_hits(0))}, runs, repeat, out)
            reply.update(key, {"spi_si": (SPI << 8) | FIRST_SI, "ttl": 63})
            interleaved({f"{n} rules: reply": (entry, frame(DST), counter("cls_reply"))}, runs, repeat, out)
            del reply[key]
            chain.set_rules([Rule(Match(dst=f"{DST}/32", proto=17, dport=(100 + i, 100 + i)), SPI) for i in range(n)])
            interleaved({f"{n} rules: last by port": (entry, frame(DST, dport=100 + n - 1), rule_hits(n - 1))},
                        runs, repeat, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 runs of 20,000 repetitions (default 7 of 200,000)")
    args = parser.parse_args(argv)
    runs, repeat = (3, 20_000) if args.quick else (7, 200_000)
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    results = measure(runs, repeat)
    print(f"{'case':<24} {'median ns':>10} {'min':>8} {'max':>8}   ({runs} runs x {repeat} repetitions)")
    for name, values in results.items():
        print(f"{name:<24} {statistics.median(values):>10.1f} {min(values):>8.1f} {max(values):>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
