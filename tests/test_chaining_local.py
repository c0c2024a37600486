"""Service function paths in one host: classifier -> functions by tail call -> host stack,
with SPI/SI in the chain's per-CPU slot, carrying real TCP between namespaces."""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from chaining.local import ChainError, LocalChain
from datapath import netns

pytestmark = pytest.mark.kernel
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def lab(topo, tmp_path: Path):  # noqa: ANN001, ANN201
    """client -- router -- server; the router forwards, the chain sits at its client side."""
    client, router, server = topo.add_ns("client"), topo.add_ns("router"), topo.add_ns("server")
    inner = topo.add_veth(client, router)
    outer = topo.add_veth(router, server)
    topo.set_sysctl(router, "net.ipv4.ip_forward", "1")
    topo.add_route(client, f"{outer.addr_b}/32", gateway=inner.addr_b)
    topo.add_route(server, f"{inner.addr_a}/32", gateway=outer.addr_a)
    subprocess.run([sys.executable, "-m", "vnfkit.cli", "new", "blocker"], cwd=tmp_path, check=True,
                   capture_output=True)
    return {"client": client, "router": router, "server": server, "inner": inner, "outer": outer,
            "blocker": tmp_path / "blocker"}


def tcp_transfer(lab: dict, nbytes: int, port: int = 7000, timeout: float = 5.0) -> int:
    """Send nbytes client -> server over TCP; returns what the server received."""
    with netns.enter(lab["server"]):
        srv = socket.create_server((lab["outer"].addr_b, port))
    got = bytearray()

    def serve() -> None:
        srv.settimeout(timeout)
        try:
            conn, _ = srv.accept()
        except TimeoutError:
            return
        with conn:
            while chunk := conn.recv(65536):
                got.extend(chunk)

    t = threading.Thread(target=serve)
    t.start()
    try:
        with netns.enter(lab["client"]):
            cli = socket.create_connection((lab["outer"].addr_b, port), timeout=timeout)
        with cli:
            cli.sendall(b"c" * nbytes)
    finally:
        t.join(timeout + 1)
        srv.close()
    return len(got)


def test_tcp_through_a_two_function_path(lab: dict) -> None:
    with LocalChain() as chain:
        blocker = chain.load("blocker", lab["blocker"])
        monitor = chain.load("monitor", ROOT / "vnfs" / "monitor")
        hops = chain.add_path(10, ["blocker", "monitor"])
        assert [(h.si, h.function) for h in hops] == [(255, "blocker"), (254, "monitor"), (253, "<stack>")]
        chain.classify(f"{lab['outer'].addr_b}/32", 10)
        chain.attach(lab["router"], lab["inner"].ifname_b)

        assert tcp_transfer(lab, 300_000) == 300_000

        stats = chain.hop_stats()
        # Every packet went through every hop, in order: the counts agree hop by hop.
        seen = blocker.counters()["rx"][0]
        assert seen > 10
        assert stats[(10, 255)] == seen == monitor.counters()["rx"][0] == stats[(10, 254)] == stats[(10, 253)]
        assert chain.counters()["cls_matched"] == seen and chain.counters()["sff_delivered"] == seen

        # The first function drops the client now: nothing reaches the second one any more.
        blocker.tables["blocklist"][ipaddress.ip_address(lab["inner"].addr_a).packed] = 1
        with pytest.raises(OSError):
            tcp_transfer(lab, 1000, port=7001, timeout=1.5)
        assert blocker.counters()["blocked"][0] >= 1
        assert chain.hop_stats()[(10, 254)] == stats[(10, 254)]


def test_unknown_hop_is_dropped_and_counted(lab: dict) -> None:
    with LocalChain() as chain:
        chain.load("blocker", lab["blocker"])
        chain.add_path(20, ["blocker"])
        chain.classify(f"{lab['outer'].addr_b}/32", 20)
        chain.attach(lab["router"], lab["inner"].ifname_b)
        del chain.sff.map("sff_table")[(20 << 8) | 254]  # the path's end is gone
        netns.udp_send(lab["client"], lab["outer"].addr_b, 9999, count=5)
        assert chain.counters()["sff_unknown"] == 5
        assert chain.hop_stats()[(20, 255)] == 5


def test_sixteen_hops_fit_the_tail_call_limit_and_seventeen_do_not(lab: dict) -> None:
    with LocalChain() as chain:
        blocker = chain.load("blocker", lab["blocker"])
        chain.add_path(30, ["blocker"] * 16)  # 33 tail calls: exactly the kernel's limit
        chain.classify(f"{lab['outer'].addr_b}/32", 30)
        chain.attach(lab["router"], lab["inner"].ifname_b)
        assert tcp_transfer(lab, 50_000) == 50_000
        stats = chain.hop_stats()
        assert stats[(30, 255)] == stats[(30, 240)] == stats[(30, 239)] > 0  # first, 16th, delivery
        assert blocker.counters()["rx"][0] == 16 * stats[(30, 255)]
        assert chain.counters()["sff_no_function"] == 0
        with pytest.raises(ChainError, match="at most 16"):
            chain.add_path(31, ["blocker"] * 17)


def test_bad_paths_are_refused(lab: dict) -> None:
    with LocalChain() as chain:
        chain.load("blocker", lab["blocker"])
        with pytest.raises(ChainError, match=r"unknown function\(s\) \['nope'\]"):
            chain.add_path(1, ["blocker", "nope"])
        chain.add_path(1, ["blocker"])
        with pytest.raises(ChainError, match="SPI 1 SI 255..254 overlaps its segment"):
            chain.add_path(1, ["blocker"])
        with pytest.raises(ChainError, match="split it across hosts"):
            chain.add_path(2, ["blocker"] * 20)
        with pytest.raises(ChainError, match="no path 3"):
            chain.classify("198.18.0.0/16", 3)
        with pytest.raises(ChainError, match="already loaded"):
            chain.load("blocker", lab["blocker"])
