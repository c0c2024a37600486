"""A chain that mixes kernel and user-space hops: monitor (XDP) -> firewall (AF_XDP worker) ->
monitor (XDP) -> host stack, carrying real TCP between namespaces."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from chaining.local import ChainError, LocalChain
from datapath.errors import VnfkitError
from datapath.xsk.service import XskOptions
from tests.test_chaining_local import tcp_transfer
from vnfkit.pyfile import import_file

pytestmark = pytest.mark.kernel
ROOT = Path(__file__).resolve().parent.parent
FW = ROOT / "vnfs" / "firewall"
control = import_file(FW / "control.py", "the firewall's control plane", VnfkitError)


@pytest.fixture
def lab(topo):  # noqa: ANN001, ANN201
    """client -- router -- server; the chain sits at the router's client side, and the
    router has a veth pair (near, far) for the user-space function."""
    client, router, server = topo.add_ns("client"), topo.add_ns("router"), topo.add_ns("server")
    inner = topo.add_veth(client, router)
    outer = topo.add_veth(router, server)
    hop = topo.add_veth(router, router, mtu=1600)
    topo.set_sysctl(router, "net.ipv4.ip_forward", "1")
    # The path ends in the router's stack on the near end, not on the interface the client's
    # frames came in by: the reverse-path filter must let that be.
    for key in ("all", hop.ifname_a):
        topo.set_sysctl(router, f"net.ipv4.conf.{key}.rp_filter", "0")
    topo.add_route(client, f"{outer.addr_b}/32", gateway=inner.addr_b)
    topo.add_route(server, f"{inner.addr_a}/32", gateway=outer.addr_a)
    # Frames leave the kernel's skb world on the way to the worker: no partial checksums.
    subprocess.run(["ip", "netns", "exec", client, "ethtool", "-K", inner.ifname_a, "tx", "off"], check=True,
                   capture_output=True)
    return {"client": client, "router": router, "server": server, "inner": inner, "outer": outer, "hop": hop}


def test_tcp_through_kernel_and_user_space_hops(lab: dict) -> None:
    router, hop = lab["router"], lab["hop"]
    with LocalChain() as chain:
        mon1 = chain.load("mon1", ROOT / "vnfs" / "monitor")
        fw = chain.load_user("fw", FW, ns=router, near=hop.ifname_a, far=hop.ifname_b,
                             config=control.policy_config("deny"), options=XskOptions(batch=16))
        mon2 = chain.load("mon2", ROOT / "vnfs" / "monitor")
        with fw.paused():
            control.apply(fw.tables, control.compile_rules("allow tcp from any to any port 7000"))
        hops = chain.add_path(10, ["mon1", "fw", "mon2"])
        assert [(h.si, h.function) for h in hops] == [(255, "mon1"), (254, "fw"), (253, "mon2"), (252, "<stack>")]
        chain.classify(f"{lab['outer'].addr_b}/32", 10)
        chain.attach(router, lab["inner"].ifname_b)

        assert tcp_transfer(lab, 300_000) == 300_000

        # Every packet went through every hop in order, the user-space one included: it left
        # with SI 254 and came back as SI 253 (NSH popped by nsh_rx), nothing lost on the way.
        seen = mon1.counters()["rx"][0]
        assert seen > 10
        stats = chain.hop_stats()
        assert stats[(10, 255)] == stats[(10, 254)] == stats[(10, 253)] == stats[(10, 252)] == seen
        assert fw.counters()["rx"][0] == fw.counters()["rule_allowed"][0] == seen == mon2.counters()["rx"][0]
        xs = fw.stats()
        assert xs["rx"] == xs["tx"] == seen and xs["dropped_chain"] == 0
        c = chain.counters()
        assert c["rx_eth"] == seen and c["sff_delivered"] == seen
        assert fw.queues[0].mode == "copy"

        # The user-space firewall denies the next port: nothing gets past it to the second monitor.
        with pytest.raises(OSError):
            tcp_transfer(lab, 1000, port=7001, timeout=1.5)
        assert fw.counters()["default_denied"][0] >= 1
        assert mon2.counters()["rx"][0] == seen
        assert fw.failures() == {}


def test_a_hop_pair_without_room_for_the_nsh_is_refused(topo) -> None:  # noqa: ANN001
    ns = topo.add_ns("router")
    hop = topo.add_veth(ns, ns)  # MTU 1500
    with LocalChain() as chain, pytest.raises(ChainError, match="MTU 1500 .* at least 1538"):
        chain.load_user("fw", FW, ns=ns, near=hop.ifname_a, far=hop.ifname_b)
    assert chain.functions == {}
