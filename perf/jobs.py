"""What each example VNF is asked to do in the benchmark suite, set up the same way on every
executor (the kernel at XDP under live traffic, test-run, the native batch) and described
in words a peer configuration (perf/peers.py) can be checked against.

A job is configured for the addresses of one set-up (``Addrs``: the generator's source and
prefix, where its frames go, spare addresses for pools and VIPs), writes the VNF's tables
through its control plane and returns the config values. ``work`` names the VNF counters
that must account for every frame it received (their sum equals ``rx``), so a live rate
always belongs to the job it names: a firewall frame that missed its rule, or a NAT frame
that went untranslated, makes the run an error instead of a faster number.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datapath.verdict import Verdict
from perf.report import REPO
from vnfkit import control as vnf_control
from vnfkit.pyfile import import_file

VNFS = REPO / "vnfs"
DPORT = 9  # discard: what every generator frame is sent to
# The firewall's non-matching rules name sources from 100.64.0.0/10 (shared address space):
# patterns only, no frame is ever sent from them, and no benchmark address can fall inside.
OTHER_SOURCES = int(ipaddress.IPv4Address("100.64.0.0"))
LB_BACKENDS = 4
RATE_LIMIT_PPS = 10_000  # far below any rate here: nearly every frame exceeds and is dropped
RATE_LIMIT_BURST = 1_000


@dataclass(frozen=True)
class Addrs:
    """The addresses a job is configured for."""

    client: str       # the generator's source address
    client_net: str   # its prefix (what a NAT calls inside)
    server: str       # the far end: where forwarded frames are routed to
    spare: tuple[str, str]  # two addresses no interface uses (a NAT pool, a VIP)
    backends: tuple[str, ...] = ()  # l4lb's backends, routed like the server


@dataclass(frozen=True)
class Job:
    """One VNF's benchmark job."""

    vnf: str
    what: str            # what it does to the benchmark traffic, in a line
    end: str             # "drop": frames end at the DUT; "forward": the DUT routes them on to the server
    verdict: Verdict     # on the benchmark frame
    work: tuple[str, ...]  # counters whose sum must equal rx
    dst: Callable[[Addrs], str]   # the frames' destination address
    configure: Callable[[Mapping[str, Any], Addrs], dict[str, Any]]  # tables -> config values
    rules: int = 0       # firewall only: the rule count
    also: tuple[Verdict, ...] = ()  # other verdicts some frames may get (ratelimit: the few that conform)

    @property
    def folder(self) -> Path:
        return VNFS / self.vnf

    @property
    def verdicts(self) -> tuple[Verdict, ...]:
        return (self.verdict, *self.also)


def _other(i: int) -> str:
    return str(ipaddress.IPv4Address(OTHER_SOURCES + i))


def firewall_rules(n: int, a: Addrs) -> list[str]:
    """``n - 1`` rules that miss the benchmark frames (other sources), then the one that drops
    them: the worst case for a linear scan, the same list nftables and iptables are given."""
    if n < 1:
        raise ValueError(f"a firewall job needs at least one rule, not {n}")
    return [f"allow udp from {_other(i)} to any port {DPORT}" for i in range(n - 1)] + \
        [f"deny udp from {a.client} to {a.server} port {DPORT}"]


def _firewall_config(n: int) -> Callable[[Mapping[str, Any], Addrs], dict[str, Any]]:
    def configure(tables: Mapping[str, Any], a: Addrs) -> dict[str, Any]:
        config, _ = vnf_control.configure(VNFS / "firewall", {"rules": firewall_rules(n, a), "default": "allow"},
                                          tables)
        return config
    return configure


def nat_spec(a: Addrs) -> dict[str, Any]:
    """Source NAT of the client's prefix to one pool address, ports 20000-60000."""
    return {"inside": [a.client_net], "pool": a.spare[0], "ports": "20000-60000"}


def _nat_config(tables: Mapping[str, Any], a: Addrs) -> dict[str, Any]:
    config, _ = vnf_control.configure(VNFS / "nat", nat_spec(a), tables)
    return config


def lb_spec(a: Addrs) -> dict[str, Any]:
    """One UDP VIP (spare[1], port DPORT) over the backends, DNAT mode."""
    return {"services": {"bench": {"mode": "dnat", "vips": [{"addr": a.spare[1], "proto": "udp", "port": DPORT}],
                                   "backends": [{"addr": b, "port": DPORT} for b in a.backends]}}}


def _lb_config(tables: Mapping[str, Any], a: Addrs) -> dict[str, Any]:
    config, _ = vnf_control.configure(VNFS / "l4lb", lb_spec(a), tables)
    return config


def ratelimit_policy(a: Addrs) -> dict[str, Any]:
    """One packet bucket on the client's prefix, far below the offered rate, excess dropped."""
    return {"exceed": "drop", "buckets": [{"name": "bench", "rate": RATE_LIMIT_PPS, "burst": RATE_LIMIT_BURST,
                                           "unit": "packets", "prefixes": [a.client_net]}]}


def _ratelimit_config(tables: Mapping[str, Any], a: Addrs) -> dict[str, Any]:
    ctl = import_file(VNFS / "ratelimit" / "control.py", "ratelimit's control plane", RuntimeError)
    return ctl.apply(ctl.parse_policy(ratelimit_policy(a)), tables)


def _monitor_config(tables: Mapping[str, Any], a: Addrs) -> dict[str, Any]:
    ctl = import_file(VNFS / "monitor" / "control.py", "monitor's control plane", RuntimeError)
    return ctl.config("pass")


def gtp_spec(a: Addrs) -> dict[str, Any]:
    """One PDU session: the server address is the UE, so the frames are downlink; the gNB is
    spare[0] (routed like the server), the gateway spare[1]."""
    return {"gateway": {"gw_addr": a.spare[1]},
            "sessions": [{"teid_up": 0x100, "teid_down": 0x8001, "peer": a.spare[0], "ue4": a.server}]}


def _gtp_config(tables: Mapping[str, Any], a: Addrs) -> dict[str, Any]:
    ctl = import_file(VNFS / "gtp" / "control.py", "gtp's control plane", RuntimeError)
    return ctl.apply(gtp_spec(a), tables)


def _server(a: Addrs) -> str:
    return a.server


def firewall(n: int) -> Job:
    return Job("firewall", f"{n:,} rules, the frames match the last (deny)", "drop", Verdict.DROP, ("rule_denied",),
               _server, _firewall_config(n), rules=n)


JOBS: dict[str, Job] = {
    "nat": Job("nat", "source NAT to a pool address (new flows allocate a port, then mapping hits)", "forward",
               Verdict.PASS, ("out_translated",), _server, _nat_config),
    "l4lb": Job("l4lb", f"UDP VIP over {LB_BACKENDS} backends, Maglev + connection table, DNAT", "forward",
                Verdict.PASS, ("dnat",), lambda a: a.spare[1], _lb_config),
    "ratelimit": Job("ratelimit", f"token bucket of {RATE_LIMIT_PPS:,} pps on the source prefix, excess dropped",
                     "drop", Verdict.DROP, ("conform", "exceed_drop"), _server, _ratelimit_config,
                     also=(Verdict.PASS,)),
    "monitor": Job("monitor", "per-flow stats, count-min sketch, histograms; passes", "forward", Verdict.PASS,
                   ("ipv4",), _server, _monitor_config),
    "gtp": Job("gtp", "GTP-U downlink encapsulation toward the gNB", "forward", Verdict.PASS, ("down_encap",),
               _server, _gtp_config),
}
FIREWALL_RULES = (10, 1_000, 10_000)
FUNCTIONS = ("firewall", *JOBS)  # the example VNFs, in the order tables show them


def job(name: str) -> Job:
    """``firewall`` (10 rules), ``firewall_1000``, ``nat``, ... by name."""
    if name.startswith("firewall"):
        _, _, n = name.partition("_")
        return firewall(int(n) if n else FIREWALL_RULES[0])
    if name not in JOBS:
        raise KeyError(f"no benchmark job '{name}' (jobs: firewall[_N], {', '.join(JOBS)})")
    return JOBS[name]


def test_addrs() -> Addrs:
    """Fixed addresses for test-run and native runs, where no interface exists."""
    return Addrs(client="198.18.0.1", client_net="198.18.0.0/30", server="198.18.1.2",
                 spare=("198.18.2.1", "198.18.2.2"),
                 backends=tuple(f"198.18.3.{i + 1}" for i in range(LB_BACKENDS)))
