"""XDP and TC attached to veths in namespaces, counting real packets sent from another one."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from datapath import netns
from datapath.attach import attach_tc, attach_xdp, xdp_query
from datapath.builtin import COUNT_SLOTS, builtin
from datapath.errors import AttachError
from datapath.objects import load

pytestmark = pytest.mark.kernel
UDP_SLOT = COUNT_SLOTS.index("udp")


@pytest.mark.parametrize("mode", ["native", "generic"])
def test_xdp_counts_exactly_the_packets_sent(pair, mode: str) -> None:  # noqa: ANN001
    with load(builtin("xdp_count")) as obj:
        att = attach_xdp(obj.program(), pair.ifname_b, ns=pair.ns_b, mode=mode)
        try:
            assert att.mode == mode and att.hook == "xdp"
            assert xdp_query(pair.ifname_b, pair.ns_b) == (att.prog_id, mode)
            sent = netns.udp_send(pair.ns_a, pair.addr_b, 9999, count=137)
            assert sent == 137
            assert obj.map("counters")[UDP_SLOT]["packets"] == 137
        finally:
            att.detach()
        assert xdp_query(pair.ifname_b, pair.ns_b) is None  # a clean detach leaves nothing


def test_auto_mode_reports_what_it_chose(pair) -> None:  # noqa: ANN001
    with load(builtin("xdp_count")) as obj:
        att = attach_xdp(obj.program(), pair.ifname_b, ns=pair.ns_b)
        try:
            assert att.mode == "native"  # veth has a native XDP driver on this kernel
        finally:
            att.detach()


@pytest.mark.parametrize("mode", ["tcx", "clsact"])
def test_tc_ingress_counts_the_same(pair, mode: str) -> None:  # noqa: ANN001
    with load(builtin("tc_count")) as obj:
        att = attach_tc(obj.program(), pair.ifname_b, ns=pair.ns_b, direction="ingress", mode=mode)
        try:
            assert att.mode == mode and att.hook == "tc-ingress"
            netns.udp_send(pair.ns_a, pair.addr_b, 9999, count=64)
            assert obj.map("counters")[1]["packets"] == 64
        finally:
            att.detach()
        qdiscs = subprocess.run(["ip", "-n", pair.ns_b, "qdisc", "show", "dev", pair.ifname_b],
                                capture_output=True, text=True).stdout
        assert "clsact" not in qdiscs  # the fallback removed the qdisc it made


def test_tc_egress(pair) -> None:  # noqa: ANN001
    with load(builtin("tc_count")) as obj:
        att = attach_tc(obj.program(), pair.ifname_a, ns=pair.ns_a, direction="egress")
        try:
            netns.udp_send(pair.ns_a, pair.addr_b, 9999, count=10)
            assert obj.map("counters")[1]["packets"] == 10
        finally:
            att.detach()


def test_missing_interface_is_named(pair) -> None:  # noqa: ANN001
    with load(builtin("xdp_pass")) as obj:
        with pytest.raises(AttachError, match="no interface 'nosuch0'"):
            attach_xdp(obj.program(), "nosuch0", ns=pair.ns_b)
        with pytest.raises(AttachError, match="no interface 'nosuch0'"):
            attach_tc(obj.program(), "nosuch0", ns=pair.ns_b)


def test_foreign_xdp_program_is_reported_and_left_alone(pair, tmp_path: Path) -> None:  # noqa: ANN001
    from datapath.compiler import compile_bpf

    obj_file = compile_bpf(builtin("xdp_pass"))
    # Attached by iproute2 over netlink, as an operator would: not ours.
    subprocess.run(["ip", "-n", pair.ns_b, "link", "set", "dev", pair.ifname_b, "xdpgeneric",
                    "obj", str(obj_file), "sec", "xdp"], check=True)
    before = xdp_query(pair.ifname_b, pair.ns_b)
    assert before is not None
    with load(builtin("xdp_count")) as obj:
        with pytest.raises(AttachError, match=r"already has XDP program id \d+ \('xdp_pass', generic mode\)"):
            attach_xdp(obj.program(), pair.ifname_b, ns=pair.ns_b)
    assert xdp_query(pair.ifname_b, pair.ns_b) == before  # the host is as it was
    subprocess.run(["ip", "-n", pair.ns_b, "link", "set", "dev", pair.ifname_b, "xdpgeneric", "off"], check=True)


def test_bad_mode_is_refused(pair) -> None:  # noqa: ANN001
    with load(builtin("xdp_pass")) as obj:
        with pytest.raises(AttachError, match="XDP mode must be one of"):
            attach_xdp(obj.program(), pair.ifname_b, ns=pair.ns_b, mode="turbo")
