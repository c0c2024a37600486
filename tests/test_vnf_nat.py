"""The nat VNF: its packet tests and 10,000 fuzzed packets on the kernel, native and model
executors; control.py's refusals; and a router between real applications.

The end-to-end topology is client (inside, 198.18.10.2) - router - server (198.18.30.2). The
server has a route to the pool only, never to the inside network, so every reply it sends
reaches the client only if the NAT translated the request and translates the reply back.
Checksum offloads are off on every veth end, so each receiving stack verifies the checksums
the NAT rewrote instead of trusting a partial one.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from datapath import netns
from vnfkit.descriptor import load_descriptor
from vnfkit.executors import make_executors
from vnfkit.pyfile import import_file
from vnfkit.testing import fuzz, load_packet_tests, prepare, run_tests

pytestmark = pytest.mark.kernel

NAT = Path(__file__).resolve().parents[1] / "vnfs" / "nat"
control = import_file(NAT / "control.py", "nat's control plane", RuntimeError)

CLIENT, ROUTER_IN, ROUTER_OUT, SERVER = "198.18.10.2", "198.18.10.1", "198.18.30.1", "198.18.30.2"
POOL = "198.18.40.0/30"
FORWARD = ("198.18.40.1", 8080, 8000)  # outside address, outside port -> the client's port
SPEC = {
    "inside": ["198.18.10.0/24"],
    "pool": POOL,
    "ports": "20000-60000",
    "forwards": [{"proto": "tcp", "outside": f"{FORWARD[0]}:{FORWARD[1]}", "inside": f"{CLIENT}:{FORWARD[2]}"}],
}
TIMEOUT = 10.0  # generous bounded waits: the machine may be busy


# ---- 1. packet tests and the fuzzer on the three executors ------------------------------------

def test_packet_tests_and_fuzz_agree_and_reach_every_path() -> None:
    desc = load_descriptor(NAT)
    tests, setup = load_packet_tests(NAT)
    executors = make_executors(NAT)
    try:
        report = run_tests(executors, tests, desc)
        assert report.ok, [f"{f.test}: {f.reason}" for f in report.failures]
        assert report.ran == len(tests) >= 40
        freport = fuzz(executors, 10_000, 1, desc, setup)
        assert freport.ok, [f"{f.test}: {f.reason}" for f in freport.failures]
        counts = {name: n for name, (n, _) in executors[0].counters().items()}
    finally:
        for ex in executors:
            ex.close()
    # Every decision the fuzzer can reach was reached (frag_dropped needs translate_fragments=0,
    # which a packet test covers).
    unreached = [c.name for c in desc.counters if c.name != "frag_dropped" and counts[c.name] == 0]
    assert not unreached, counts


def test_a_live_mapping_is_never_overwritten_and_an_expired_one_is_reused() -> None:
    """The only port is held by another flow: while it is live the new flow is dropped and the
    holder's halves stay as they were; once it has timed out both its halves go and the new
    flow gets the port. Checked in every executor's tables."""
    packets = import_file(NAT / "tests" / "packets.py", "nat's packet tests", RuntimeError)
    desc = load_descriptor(NAT)
    executors = make_executors(NAT)
    held = {"remote": ("198.18.30.2", 80), "outside": ("198.18.40.1", 40000)}

    def holder(ex: Any) -> tuple[str, int] | None:
        found = [s.inside for s in control.sessions(ex.tables) if (s.remote, s.outside) == tuple(held.values())]
        return found[0] if found else None

    try:
        for now, verdict, owner in ((packets.NOW, "DROP", ("198.18.10.6", 7777)),
                                    (packets.NOW + 8000 * 10**9, "PASS", ("198.18.10.2", 5555))):
            prepare(executors, desc, packets.cfg(), packets.tables(packets.OTHER_HOLDER), "holder")
            for ex in executors:
                ex.set_clock(now)
                assert ex.run(bytes(packets.syn_out)).verdict.name == verdict, ex.name
                assert holder(ex) == owner, ex.name
                assert len(ex.tables["nat_fwd"]) == len(ex.tables["nat_rev"]) == 1, ex.name
    finally:
        for ex in executors:
            ex.close()


# ---- 2. control.py refuses bad input, naming what is wrong ------------------------------------

GOOD = {"inside": ["198.18.10.0/24"], "pool": "198.18.40.0/30", "ports": "20000-60000"}


@pytest.mark.parametrize(("change", "message"), [
    ({"inside": None}, "inside: missing"),
    ({"inside": ["198.18.10.1/24"]}, "inside[0] '198.18.10.1/24'"),
    ({"inside": ["2001:db8::/64"]}, "no NAT66"),
    ({"inside": ["198.18.40.0/24"]}, "overlaps the pool"),
    ({"pool": "198.18.40.9-198.18.40.1"}, "below the first"),
    ({"pool": "198.18.0.0/8"}, "pool '198.18.0.0/8': 198.18.0.0/8 has host bits set"),
    ({"ports": "60000-20000"}, "need 1 <= min <= max <= 65535"),
    ({"ports": "many"}, "expected \"min-max\""),
    ({"timeouts": {"tcp": 0}}, "timeouts.tcp"),
    ({"timeouts": {"sctp": 5}}, "timeouts.sctp: unknown"),
    ({"max_probes": 17}, "max_probes: 17"),
    ({"pass_unmatched": "maybe"}, "pass_unmatched"),
    ({"colour": "blue"}, "unknown setting 'colour'"),
    ({"forwards": [{"proto": "sctp", "outside": "198.18.40.1:80", "inside": "198.18.10.2:80"}]},
     "forwards[0]: proto 'sctp'"),
    ({"forwards": [{"proto": "tcp", "outside": "198.18.50.1:80", "inside": "198.18.10.2:80"}]},
     "forwards[0] (tcp 198.18.50.1:80 -> 198.18.10.2:80): outside address 198.18.50.1 is not in the pool"),
    ({"forwards": [{"proto": "tcp", "outside": "198.18.40.1:30000", "inside": "198.18.10.2:80"}]},
     "outside port 30000 is inside the allocated range 20000-60000"),
    ({"forwards": [{"proto": "udp", "outside": "198.18.40.1:53", "inside": "198.18.11.2:53"}]},
     "inside address 198.18.11.2 is not in an inside prefix"),
    ({"forwards": [{"proto": "tcp", "outside": "198.18.40.1", "inside": "198.18.10.2:80"}]},
     "forwards[0].outside: '198.18.40.1' is not \"a.b.c.d:port\""),
    ({"forwards": [{"proto": "tcp", "outside": "198.18.40.1:80", "inside": "198.18.10.2:80", "ttl": 3}]},
     "forwards[0]: unknown field(s) ttl"),
    ({"forwards": [{"proto": "tcp", "outside": "198.18.40.1:80", "inside": "198.18.10.2:80"},
                   {"proto": "tcp", "outside": "198.18.40.1:80", "inside": "198.18.10.3:80"}]},
     "forwards[1] (tcp 198.18.40.1:80 -> 198.18.10.3:80): duplicates forwards[0]"),
])
def test_control_refuses_bad_configuration(change: dict[str, Any], message: str) -> None:
    spec = {**GOOD, **change}
    spec = {k: v for k, v in spec.items() if v is not None}
    with pytest.raises(control.NatConfigError) as err:
        control.plan(spec)
    assert message in str(err.value)
    assert isinstance(err.value, control.VnfkitError)


def test_control_reports_every_problem_and_plans_good_input() -> None:
    with pytest.raises(control.NatConfigError) as err:
        control.plan({"pool": "nonsense", "ports": "0-5"})
    assert len(err.value.problems) == 3  # inside missing, pool unparsable, ports out of range
    nat_plan = control.plan({**SPEC, "timeouts": {"udp": 30}, "pass_unmatched": True})
    assert nat_plan.config == {"port_min": 20000, "port_max": 60000, "pool_first": "198.18.40.0", "pool_count": 4,
                               "udp_timeout": 30, "pass_unmatched": 1}
    assert nat_plan.tables()["inside"] == {"198.18.10.0/24": 1}
    assert [str(f) for f in nat_plan.forwards] == ["tcp 198.18.40.1:8080 -> 198.18.10.2:8000"]


# ---- 3. a router between real applications ----------------------------------------------------

def _ns_run(ns: str, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=timeout)


def _socket(ns: str, kind: int) -> socket.socket:
    with netns.enter(ns):
        sock = socket.socket(socket.AF_INET, kind)
    sock.settimeout(TIMEOUT)
    return sock


def _in_thread(fn: Callable[[], Any]) -> Callable[[], Any]:
    """Run ``fn`` in a thread; the returned function joins it and returns (or raises) its result."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the joining thread
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()

    def join() -> Any:
        thread.join(TIMEOUT * 3)
        assert not thread.is_alive(), "the peer thread did not finish"
        if "error" in result:
            raise result["error"]
        return result["value"]

    return join


@pytest.fixture
def nat_router(topo: Any) -> Iterator[dict[str, Any]]:
    """client - router (nat at XDP on both interfaces) - server; yields names and the instance."""
    from vnfkit.instance import KernelInstance

    client, router, server = topo.add_ns("client"), topo.add_ns("router"), topo.add_ns("server")
    inner = topo.add_veth(client, router, name_a="c0", name_b="r0", addr_a=f"{CLIENT}/24", addr_b=f"{ROUTER_IN}/24")
    outer = topo.add_veth(router, server, name_a="r1", name_b="s0", addr_a=f"{ROUTER_OUT}/24",
                          addr_b=f"{SERVER}/24")
    topo.add_route(client, "default", gateway=ROUTER_IN)
    topo.add_route(server, POOL, gateway=ROUTER_OUT)  # the pool only: no route to the inside
    topo.set_sysctl(router, "net.ipv4.ip_forward", "1")
    for key in ("all", "default", inner.ifname_b, outer.ifname_a):
        # Outbound packets leave XDP with a pool source the router has no route back to.
        topo.set_sysctl(router, f"net/ipv4/conf/{key}/rp_filter", "0")
    for ns, ifname in ((client, inner.ifname_a), (router, inner.ifname_b), (router, outer.ifname_a),
                       (server, outer.ifname_b)):
        res = _ns_run(ns, "ethtool", "-K", ifname, "tx", "off", "rx", "off")
        assert res.returncode == 0, res.stderr
    nat_plan = control.plan(SPEC)
    with KernelInstance(NAT, config=nat_plan.config) as nat:
        control.apply(nat_plan, nat.tables)
        nat.attach(router, inner.ifname_b)
        nat.attach(router, outer.ifname_a)
        yield {"client": client, "router": router, "server": server, "nat": nat}


def _pool_addresses() -> set[str]:
    return {str(a) for a in ipaddress.ip_network(POOL)}


def test_router_translates_real_applications(nat_router: dict[str, Any]) -> None:
    client, server, nat = nat_router["client"], nat_router["server"], nat_router["nat"]

    # ICMP echo: the real ping, whose replies come back only through the echo-id mapping.
    res = _ns_run(client, "ping", "-c", "3", "-i", "0.2", "-W", "5", SERVER)
    assert res.returncode == 0 and " 0% packet loss" in res.stdout, res.stdout + res.stderr

    # TCP: 4 MiB delivered intact; the server sees a pool address as its peer.
    payload = os.urandom(4 << 20)
    listener = _socket(server, socket.SOCK_STREAM)
    with listener:
        listener.bind((SERVER, 5001))
        listener.listen(1)

        def tcp_server() -> tuple[tuple[str, int], int, str]:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(TIMEOUT)
                digest, total = hashlib.sha256(), 0
                while chunk := conn.recv(1 << 16):
                    digest.update(chunk)
                    total += len(chunk)
                conn.sendall(digest.hexdigest().encode())
                return conn.getpeername(), total, digest.hexdigest()

        join = _in_thread(tcp_server)
        with _socket(client, socket.SOCK_STREAM) as sock:
            sock.connect((SERVER, 5001))
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            echoed = sock.recv(100).decode()
        peer, total, digest = join()
    assert total == len(payload) and echoed == digest == hashlib.sha256(payload).hexdigest()
    assert peer[0] in _pool_addresses() and 20000 <= peer[1] <= 60000

    # UDP: an exchange of 20 datagrams, each answered; the server sees the pool address.
    with _socket(server, socket.SOCK_DGRAM) as srv, _socket(client, socket.SOCK_DGRAM) as cli:
        srv.bind((SERVER, 5002))

        def udp_server() -> set[tuple[str, int]]:
            peers = set()
            for _ in range(20):
                data, addr = srv.recvfrom(2048)
                peers.add(addr)
                srv.sendto(data.upper(), addr)
            return peers

        join = _in_thread(udp_server)
        answers = []
        for i in range(20):
            cli.sendto(b"ping %d" % i, (SERVER, 5002))
            answers.append(cli.recv(2048))
        peers = join()
    assert answers == [b"PING %d" % i for i in range(20)]
    assert len(peers) == 1 and next(iter(peers))[0] in _pool_addresses()

    # ICMP error: the server's port unreachable (sent to the pool address) reaches the client's
    # connected socket only if the NAT translated the quoted header back.
    with _socket(client, socket.SOCK_DGRAM) as cli:
        cli.connect((SERVER, 5999))
        cli.send(b"anyone?")
        with pytest.raises(ConnectionRefusedError):
            cli.recv(100)

    # Port forward: the server reaches a server on the client through the pool address.
    with _socket(client, socket.SOCK_STREAM) as inside_listener:
        inside_listener.bind((CLIENT, FORWARD[2]))
        inside_listener.listen(1)

        def inside_server() -> tuple[str, int]:
            conn, peer = inside_listener.accept()
            with conn:
                conn.settimeout(TIMEOUT)
                conn.sendall(conn.recv(100)[::-1])
                return peer

        join = _in_thread(inside_server)
        with _socket(server, socket.SOCK_STREAM) as sock:
            sock.connect((FORWARD[0], FORWARD[1]))
            sock.sendall(b"forwarded")
            assert sock.recv(100) == b"dedrawrof"
            assert sock.getpeername() == (FORWARD[0], FORWARD[1])
        assert join()[0] == SERVER  # destination NAT only: the inside server sees the real client

    counts = {name: n for name, (n, _) in nat.counters().items()}
    assert counts["created"] >= 4 and counts["dnat_created"] == 1 and counts["icmp_err_in"] >= 1
    assert counts["out_translated"] > 100 and counts["in_translated"] > 100
    assert counts["alloc_fail"] == counts["malformed"] == counts["inbound_miss"] == 0
    kinds = {(s.proto, s.dnat) for s in control.sessions(nat.tables)}
    assert {("icmp", False), ("tcp", False), ("udp", False), ("tcp", True)} <= kinds
