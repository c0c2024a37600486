"""Receivers for rate benchmarks: the end of a veth where frames are counted and dropped.

Each sink has its own tally (``count``), read before and after a run to prove it handled
every frame the device received. Rates themselves come from the device's receive counter
(``traffic.DeviceRx``), the same for every sink.

Everything a sink sets up is undone by the ExitStack it is given or goes away with its
namespace (nftables state lives in the sink's netns, so the Topology takes it along).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

from datapath.attach import attach_xdp
from datapath.builtin import COUNT_SLOTS, builtin
from datapath.kernel import XdpAction
from datapath.netns import VethPair
from datapath.objects import BpfObject, load


@dataclass
class Sink:
    """Where a scenario's frames end: the sink end (``b``) of ``pair``."""

    name: str
    description: str
    counted_by: str
    pair: VethPair
    count: Callable[[], int]  # the sink's own tally of frames it handled


def in_ns(ns: str, *cmd: str, stdin: str | None = None) -> str:
    """Run a network tool inside ``ns``. ``ip netns exec`` remounts /sys, which only
    matters to bpffs users; nft and ethtool talk netlink/ioctl and are fine."""
    res = subprocess.run(["ip", "netns", "exec", ns, *cmd], input=stdin, capture_output=True, text=True,
                         timeout=30)
    if res.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` in netns {ns} failed: {res.stderr.strip() or res.returncode}")
    return res.stdout


def veth_stats(ns: str, ifname: str) -> dict[str, int]:
    """``ethtool -S``: veth's per-queue counters (XDP drops, xmit errors, ...)."""
    out: dict[str, int] = {}
    for line in in_ns(ns, "ethtool", "-S", ifname).splitlines()[1:]:
        key, _, value = line.strip().partition(":")
        with contextlib.suppress(ValueError):
            out[key.strip()] = int(value)
    return out


def _sum(stats: dict[str, int], prefix: str, suffix: str) -> int:
    return sum(v for k, v in stats.items() if k.startswith(prefix) and k.endswith(suffix))


def xdp_drop_floor(stack: contextlib.ExitStack, pair: VethPair) -> Sink:
    """The floor: ``xdp_pass`` built to return XDP_DROP, natively on the sink end.

    Counted by veth's own per-queue ``xdp_drops`` (ethtool -S), which the driver keeps for
    every frame anyway. Not by bpf run-time stats: those put two clock reads around every
    program run system-wide (the generator's too) and cost about a third of the floor's
    rate here. Not by xdp_count: a counting program is no longer the bare floor.
    """
    obj = stack.enter_context(load(builtin("xdp_pass"), defines={"VERDICT": "XDP_DROP"}))
    att = attach_xdp(obj.program(), pair.ifname_b, ns=pair.ns_b, mode="native")
    stack.callback(att.detach)
    return Sink("floor", "bare XDP_DROP", "veth rx_queue_*_xdp_drops (ethtool -S)", pair,
                lambda: _sum(veth_stats(pair.ns_b, pair.ifname_b), "rx_queue_", "_xdp_drops"))


def xdp_count_sink(stack: contextlib.ExitStack, pair: VethPair) -> tuple[Sink, BpfObject]:
    """``xdp_count`` as a counting sink (its ``action`` map set to XDP_DROP)."""
    obj = stack.enter_context(load(builtin("xdp_count")))
    obj.map("action")[0] = int(XdpAction.DROP)
    att = attach_xdp(obj.program(), pair.ifname_b, ns=pair.ns_b, mode="native")
    stack.callback(att.detach)
    counters, slot = obj.map("counters"), COUNT_SLOTS.index("all")
    return Sink("xdp_count", "xdp_count, counting sink", "xdp_count's per-CPU counters", pair,
                lambda: int(counters[slot]["packets"])), obj


NFT_TABLE = "vnfkit_perf"


def nft_ruleset(ifname: str, dst_ip: str, dport: int) -> str:
    """A netdev-ingress chain that counts and drops the benchmark flow: the earliest hook
    nftables has, so the strongest nftables answer to an XDP drop."""
    return f"""table netdev {NFT_TABLE} {{
    counter sunk {{ }}
    chain ingress {{
        type filter hook ingress device "{ifname}" priority filter; policy accept;
        ip daddr {dst_ip} udp dport {dport} counter name "sunk" drop
    }}
}}
"""


def nft_sink(pair: VethPair, dport: int) -> tuple[Sink, str]:
    """No XDP on the sink end, GRO on (veth then accepts redirected frames and builds skbs
    in NAPI), and an nftables ingress rule that counts and drops. Returns the ruleset."""
    ns, ifname = pair.ns_b, pair.ifname_b
    in_ns(ns, "ethtool", "-K", ifname, "gro", "on")
    rules = nft_ruleset(ifname, pair.addr_b, dport)
    in_ns(ns, "nft", "-f", "-", stdin=rules)

    def count() -> int:
        doc = json.loads(in_ns(ns, "nft", "-j", "list", "counter", "netdev", NFT_TABLE, "sunk"))
        return next(int(o["counter"]["packets"]) for o in doc["nftables"] if "counter" in o)

    return Sink("nft", "nftables netdev ingress: count + drop (GRO on)", "nft named counter", pair, count), rules
