"""Tests for datapath.netns against real namespaces (needs root / CAP_NET_ADMIN)."""

import ipaddress
import os
import secrets
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from pyroute2 import IPRoute
from pyroute2 import netns as pr_netns

from datapath import netns
from datapath.netns import ADDR_RANGE, OWNER_DIR, Topology, enter

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

REPO = Path(__file__).resolve().parents[1]
_USED_PREFIXES: set[str] = set()


def fresh_prefix() -> str:
    """A unique default-style prefix, remembered for the leftover check."""
    prefix = "vk" + secrets.token_hex(2)
    _USED_PREFIXES.add(prefix)
    return prefix


def netns_ino() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def root_links() -> set[str]:
    with IPRoute() as ipr:
        return {link.get("ifname") for link in ipr.get_links()}


def all_netns() -> set[str]:
    return set(pr_netns.listnetns())


@pytest.fixture(scope="module", autouse=True)
def no_leftovers():
    """After all tests, nothing with any of our prefixes may remain."""
    yield
    ns_out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    link_out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    for prefix in _USED_PREFIXES:
        assert prefix not in ns_out, f"netns left behind: {ns_out}"
        assert prefix not in link_out, f"links left behind: {link_out}"
        assert not any(f.startswith(prefix) for f in os.listdir(OWNER_DIR))


@pytest.fixture
def topo():
    with Topology(prefix=fresh_prefix()) as t:
        yield t


def test_new_prefix_format_and_override(monkeypatch):
    monkeypatch.delenv("VNFKIT_NET_PREFIX", raising=False)
    prefixes = {netns.new_prefix() for _ in range(20)}
    assert all(len(p) == 6 and p.startswith("vk") and int(p[2:], 16) >= 0 for p in prefixes)
    assert all(p[2:] == p[2:].lower() for p in prefixes)
    assert len(prefixes) > 1
    monkeypatch.setenv("VNFKIT_NET_PREFIX", "vkbeef")
    assert netns.new_prefix() == "vkbeef"
    with Topology() as t:
        assert t.prefix == "vkbeef"
    monkeypatch.setenv("VNFKIT_NET_PREFIX", "bad-prefix")
    with pytest.raises(ValueError, match="bad-prefix"):
        netns.new_prefix()


def test_udp_datagram_crosses_veth(topo):
    a, b = topo.add_ns("a"), topo.add_ns("b")
    assert a == f"{topo.prefix}-a" and a in all_netns()
    pair = topo.add_veth(a, b)
    assert pair.ifindex_a == netns.ifindex(a, pair.ifname_a)
    assert pair.ifindex_b == netns.ifindex(b, pair.ifname_b)
    with enter(b):
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # The socket stays in b after leaving enter(): b's address is bindable here.
    with rx:
        rx.bind((pair.addr_b, 0))
        rx.settimeout(3)
        port = rx.getsockname()[1]
        assert netns.udp_send(a, pair.addr_b, port, 5, payload=b"hello vnfkit") == 5
        got = [rx.recvfrom(100) for _ in range(5)]
    assert all(data == b"hello vnfkit" and src[0] == pair.addr_a for data, src in got)


def test_routed_path_through_middle_namespace(topo):
    client, router, server = (topo.add_ns(n) for n in ("client", "router", "server"))
    left = topo.add_veth(client, router)
    right = topo.add_veth(router, server)
    topo.set_sysctl(router, "net.ipv4.ip_forward", "1")
    topo.add_route(client, "default", gateway=left.addr_b)
    topo.add_route(server, str(ipaddress.ip_interface(f"{left.addr_a}/30").network),
                   gateway=right.addr_a)
    with enter(server):
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with rx:
        rx.bind((right.addr_b, 0))
        rx.settimeout(3)
        netns.udp_send(client, right.addr_b, rx.getsockname()[1], 3)
        assert [rx.recvfrom(100)[1][0] for _ in range(3)] == [left.addr_a] * 3
    topo.add_route(client, "198.19.200.0/24", ifname=left.ifname_a)
    with netns._ipr(client) as ipr:
        onlink = ipr.route("get", dst="198.19.200.9")[0]
    assert onlink.get_attr("RTA_OIF") == left.ifindex_a and not onlink.get_attr("RTA_GATEWAY")
    with pytest.raises(ValueError, match="outside"):
        topo.add_route(client, "10.0.0.0/8", gateway=left.addr_b)
    with pytest.raises(ValueError, match="default route"):
        topo.add_route(None, "default", gateway=left.addr_b)


def test_auto_addresses_in_range_and_unique(topo):
    a, b = topo.add_ns("a"), topo.add_ns("b")
    pairs = [topo.add_veth(a, b) for _ in range(6)]
    addrs = [ip for p in pairs for ip in (p.addr_a, p.addr_b)]
    assert len(set(addrs)) == len(addrs)
    nets = set()
    for p in pairs:
        assert p.prefixlen == 30
        net_a = ipaddress.ip_interface(f"{p.addr_a}/{p.prefixlen}").network
        assert net_a == ipaddress.ip_interface(f"{p.addr_b}/{p.prefixlen}").network
        assert net_a.subnet_of(ADDR_RANGE)
        nets.add(net_a)
    assert len(nets) == len(pairs)
    assert len({p.ifname_a for p in pairs} | {p.ifname_b for p in pairs}) == 2 * len(pairs)
    # The addresses are really configured on the interfaces.
    with netns._ipr(a) as ipr:
        configured = {x.get_attr("IFA_ADDRESS") for x in ipr.get_addr(family=socket.AF_INET)}
    assert {p.addr_a for p in pairs} <= configured


def test_address_outside_range_refused(topo):
    a = topo.add_ns("a")
    for bad in ("10.0.0.1/24", "192.168.1.1/30", "198.20.0.1/30", "198.18.0.1/8", "198.18.0.1"):
        with pytest.raises(ValueError):
            topo.add_veth(a, None, addr_a=bad)
        with pytest.raises(ValueError):
            topo.add_veth(a, None, addr_a="198.18.0.1/30", addr_b=bad)
    with pytest.raises(ValueError, match="outside"):
        netns.udp_send(a, "192.0.2.1", 9, 1)
    assert not any(n.startswith(topo.prefix) for n in root_links())
    with netns._ipr(a) as ipr:
        assert [link.get("ifname") for link in ipr.get_links()] == ["lo"]


def test_explicit_names_and_mtu(topo):
    a = topo.add_ns("a")
    pair = topo.add_veth(a, None, name_a="in0", name_b="out0",
                         addr_a="198.19.7.1/24", addr_b="198.19.7.2/24", mtu=1400)
    assert (pair.ifname_a, pair.ifname_b) == (f"{topo.prefix}-in0", f"{topo.prefix}-out0")
    assert (pair.addr_a, pair.addr_b, pair.prefixlen) == ("198.19.7.1", "198.19.7.2", 24)
    with IPRoute() as ipr:
        assert ipr.get_links(pair.ifindex_b)[0].get_attr("IFLA_MTU") == 1400
    with pytest.raises(ValueError, match="already used"):
        topo.add_veth(a, None, name_a="in0")


def test_interface_name_too_long(topo):
    a = topo.add_ns("a")
    with pytest.raises(ValueError, match=f"{topo.prefix}-waytoolong"):
        topo.add_veth(a, None, name_a="waytoolong")
    assert not any(n.startswith(topo.prefix) for n in root_links())
    pair = topo.add_veth(a, None, name_a="eightchr")  # exactly 15 chars still fits
    assert len(pair.ifname_a) == 15 and netns.ifindex(a, pair.ifname_a) == pair.ifindex_a


def test_ifindex_missing_interface(topo):
    a = topo.add_ns("a")
    assert netns.ifindex(a, "lo") == 1
    with pytest.raises(LookupError, match=f"'nosuchif' in netns '{a}'"):
        netns.ifindex(a, "nosuchif")
    with pytest.raises(OSError, match=f"{topo.prefix}-missing"):
        netns.ifindex(f"{topo.prefix}-missing", "lo")


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_cleanup_when_body_raises(exc):
    prefix = fresh_prefix()
    with pytest.raises(exc), Topology(prefix=prefix) as t:
        a = t.add_ns("a")
        b = t.add_ns("b")
        t.add_veth(a, b)
        root_pair = t.add_veth(None, a)
        t.add_veth(None, None)
        with enter(a):  # a socket keeps the netns alive after its name is gone
            leaked = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        assert {a, b} <= all_netns() and root_pair.ifname_a in root_links()
        raise exc("boom")
    leaked.close()
    assert not any(n.startswith(prefix) for n in all_netns())
    assert not any(n.startswith(prefix) for n in root_links())
    assert not any(f.startswith(prefix) for f in os.listdir(OWNER_DIR))
    t.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        t.add_ns("c")


@pytest.mark.parametrize(("ending", "status"), [
    ("os.kill(os.getpid(), signal.SIGTERM)", -signal.SIGTERM),
    ("with enter(ns):\n    os.kill(os.getpid(), signal.SIGTERM)", -signal.SIGTERM),
    ("raise SystemExit(3)", 3),  # never closed: the atexit hook cleans
])
def test_cleanup_when_process_ends(ending, status):
    prefix = fresh_prefix()
    code = f"""
import os, signal
from datapath.netns import Topology, enter
t = Topology(prefix={prefix!r})
ns = t.add_ns("x")
t.add_veth(None, ns)
{ending}
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == status, proc.stderr
    assert not any(n.startswith(prefix) for n in all_netns() | root_links())
    assert not any(f.startswith(prefix) for f in os.listdir(OWNER_DIR))


def test_sigterm_handler_only_if_default():
    # An application's own SIGTERM handler is left alone.
    def mine(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        with Topology(prefix=fresh_prefix()) as t:
            t.add_ns("a")
            assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)
    with Topology(prefix=fresh_prefix()) as t:
        t.add_ns("a")
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_enter_restores_netns(topo):
    a = topo.add_ns("a")
    home = netns_ino()
    mnt = os.stat("/proc/thread-self/ns/mnt").st_ino
    with enter(a):
        assert netns_ino() == os.stat(f"/run/netns/{a}").st_ino != home
        with enter(None):
            assert netns_ino() != home
        assert os.stat("/proc/thread-self/ns/mnt").st_ino == mnt  # mounts untouched
    assert netns_ino() == home
    with pytest.raises(ZeroDivisionError), enter(a):
        assert netns_ino() != home
        raise ZeroDivisionError
    assert netns_ino() == home
    with pytest.raises(OSError, match="no-such-ns"), enter("no-such-ns"):
        pass
    assert netns_ino() == home


def test_enter_only_moves_calling_thread(topo):
    a = topo.add_ns("a")
    home = netns_ino()
    inside, release = threading.Event(), threading.Event()
    seen = []

    def worker():
        with enter(a):
            seen.append(netns_ino())
            inside.set()
            release.wait(5)

    th = threading.Thread(target=worker)
    th.start()
    assert inside.wait(5)
    assert netns_ino() == home  # the main thread did not move
    release.set()
    th.join()
    assert seen == [os.stat(f"/run/netns/{a}").st_ino]


def test_sysctl_only_in_its_namespace(topo):
    a, b = topo.add_ns("a"), topo.add_ns("b")
    key = "net.ipv4.ip_forward"
    root_before = netns.read_sysctl(None, key)
    value = "0" if root_before == "1" else "1"
    b_before = netns.read_sysctl(b, key)
    topo.set_sysctl(a, key, value)
    assert netns.read_sysctl(a, key) == value
    assert netns.read_sysctl(b, key) == b_before
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        assert f.read().strip() == root_before
    # /proc/sys/net follows the calling *thread*, so a worker thread works too.
    th = threading.Thread(target=topo.set_sysctl, args=(b, key, value))
    th.start()
    th.join()
    assert netns.read_sysctl(b, key) == value
    assert netns.read_sysctl(None, key) == root_before
    with pytest.raises(ValueError, match="net"):
        topo.set_sysctl(a, "kernel.panic", "0")


def test_send_frames_raw(topo):
    a, b = topo.add_ns("a"), topo.add_ns("b")
    pair = topo.add_veth(a, b)
    ethertype = 0x88B5  # IEEE local experimental
    with enter(b):
        rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ethertype))
    with rx:
        rx.bind((pair.ifname_b, ethertype))
        rx.settimeout(3)
        frames = [b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + struct.pack("!H", ethertype)
                  + bytes([i]) * 50 for i in range(4)]
        assert netns.send_frames(a, pair.ifname_a, iter(frames)) == 4
        assert [rx.recv(2048)[:64] for _ in range(4)] == [f[:64] for f in frames]
    with pytest.raises(LookupError):
        netns.send_frames(a, "nosuchif", frames)


def _orphan(*prefixes: str) -> None:
    """Leave behind what a run killed with SIGKILL leaves: no cleanup at all."""
    code = textwrap.dedent(f"""
        import os, signal
        from datapath.netns import Topology
        for prefix in {prefixes!r}:
            t = Topology(prefix=prefix)
            t.add_veth(None, t.add_ns("orphan"))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def test_cleanup_stale_removes_orphans_only():
    # "vkt..." does not match ^vk[0-9a-f]{4}: the default call must not touch
    # it, and parallel test runs (whose cleanup_stale() may remove our
    # default-style orphan first) cannot take it away from the exact check.
    dead, live, other = fresh_prefix(), fresh_prefix(), "vkt" + secrets.token_hex(2)
    _USED_PREFIXES.add(other)
    _orphan(dead, other)
    bare = f"{other}-noowner"  # no owner file at all
    pr_netns.create(bare)
    try:
        with Topology(prefix=live) as t:
            ns = t.add_ns("alive")
            pair = t.add_veth(None, ns)
            removed = netns.cleanup_stale()
            assert not any(n.startswith(live) for n in removed)
            assert ns in all_netns() and pair.ifname_a in root_links()
            assert not any(n.startswith(dead) for n in all_netns() | root_links())
            assert not any(f.startswith(dead) for f in os.listdir(OWNER_DIR))
            assert not any(n.startswith(other) for n in removed)
            assert {f"{other}-orphan", bare} <= all_netns()
            removed = netns.cleanup_stale(other)
            assert set(removed) == {f"{other}-orphan", bare, f"{other}v0a"}
            assert not any(n.startswith(other) for n in all_netns() | root_links())
            assert ns in all_netns() and pair.ifname_a in root_links()
    finally:
        netns.cleanup_stale(other)
        netns.cleanup_stale(dead)
