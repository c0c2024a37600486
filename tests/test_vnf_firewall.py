"""The firewall VNF: its packet tests and 10,000 fuzzed packets on the kernel, native and model
executors; its control plane's errors and warnings; 10,000 rules; and real TCP through it,
attached at XDP between two network namespaces."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from datapath import netns
from datapath.errors import VnfkitError
from datapath.verdict import Verdict
from vnfkit.descriptor import load_descriptor
from vnfkit.executors import Executor, make_executors
from vnfkit.pyfile import import_file
from vnfkit.testing import fuzz, load_packet_tests, prepare, run_tests

pytestmark = pytest.mark.kernel
FW = Path(__file__).resolve().parent.parent / "vnfs" / "firewall"
control = import_file(FW / "control.py", "the firewall's control plane", VnfkitError)
DESC = load_descriptor(FW)
DECISIONS = ("malformed", "non_ip", "frag_l3", "rule_allowed", "rule_denied", "default_denied", "state_forward",
             "state_reply", "state_created", "state_expired")
# Every packet ends in exactly one of these (frag_l3, state_created and state_expired count on the way).
FINAL = ("malformed", "non_ip", "frag_dropped", "frag_passed", "rule_allowed", "rule_denied", "default_allowed",
         "default_denied", "state_forward", "state_reply")


@pytest.fixture(scope="module")
def executors() -> Iterator[list[Executor]]:
    exs = make_executors(FW)
    yield exs
    for ex in exs:
        ex.close()


def counts(ex: Executor) -> dict[str, int]:
    return {name: n for name, (n, _) in ex.counters().items()}


# ---- the three executors agree ----------------------------------------------------------------
def test_packet_tests_agree_on_all_executors(executors: list[Executor]) -> None:
    tests, _ = load_packet_tests(FW)
    report = run_tests(executors, tests, DESC)
    assert report.ran == len(tests) >= 40
    assert report.ok, [(f.test, f.reason) for f in report.failures]


def test_ten_thousand_fuzzed_packets_agree_and_reach_every_decision(executors: list[Executor]) -> None:
    _, setup = load_packet_tests(FW)
    report = fuzz(executors, 10_000, seed=7, desc=DESC, setup=setup)
    assert report.ran == 10_000
    assert report.ok, [(f.test, f.reason) for f in report.failures]
    got = counts(executors[0])
    for name in DECISIONS:  # the FUZZ policy: stateful, default deny, later fragments judged on L3
        assert got[name] > 20, (name, got)
    assert sum(got[name] for name in FINAL) == got["rx"] == 10_000
    hits = control.rule_hits(executors[0].tables, len(control.parse_rules(_fuzz_rules())))
    assert (hits["packets"] > 0).all(), hits  # every rule of the FUZZ set matched something


def _fuzz_rules() -> str:
    return import_file(FW / "tests" / "packets.py", "packet tests", VnfkitError).FUZZ_RULES


PORTLESS_RULES = """
    allow udp from 198.18.0.0/24 to 198.18.1.0/24
    deny tcp from 198.18.7.0/25 to any flags S/SA
    allow icmp from 198.18.0.0/24 to any4
    allow tcp from 2001:db8::/48 to 2001:db8:1::/48
    deny gre from any to any
    allow any from 198.18.7.0/24 to any
"""


@pytest.mark.parametrize(("policy", "rules", "reached"), [
    ({"default_allow": True, "frag_mode": 1, "non_ip_drop": True}, None, ("default_allowed", "frag_dropped")),
    ({"frag_mode": 2}, None, ("frag_passed",)),
    ({}, PORTLESS_RULES, ("rule_allowed", "rule_denied", "state_reply")),  # no port constrained: both skipped
])
def test_the_other_policies_agree_too(executors: list[Executor], policy: dict[str, Any], rules: str | None,
                                      reached: tuple[str, ...]) -> None:
    """What one FUZZ set-up cannot reach: the default allowing, later fragments dropped or
    passed, and rule sets whose port fields classification skips."""
    _, setup = load_packet_tests(FW)
    setup = {**setup, "config": {**setup["config"], **policy}}
    if rules:
        compiled = control.compile_rules(rules)
        assert compiled.wild == 3  # source and destination ports: every rule leaves them open
        setup["tables"] = control.table_entries(compiled, control.Layout.of(executors[0].tables), sparse=True)
    report = fuzz(executors, 2_000, seed=11, desc=DESC, setup=setup)
    assert report.ok, [(f.test, f.reason) for f in report.failures]
    got = counts(executors[0])
    for name in reached:
        assert got[name] > 5, (name, got)
    if policy.get("non_ip_drop"):
        assert got["non_ip"] > 0 and got["drop"] >= got["non_ip"]


def run_all(executors: list[Executor], pkt: bytes, now: int) -> Verdict:
    for ex in executors:
        ex.set_clock(now)
    results = [ex.run(pkt) for ex in executors]
    assert len({(r.verdict, bytes(r.data)) for r in results}) == 1, results
    return results[0].verdict


def test_a_stateful_conversation_and_per_rule_hits(executors: list[Executor]) -> None:
    """Packets in sequence (tables persist between them), on all three executors."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    rs = control.compile_rules("""
        allow tcp from 198.18.0.0/24 to 198.18.1.0/24 port 443 flags S/SA
        deny tcp from any to any port 22
    """)
    prepare(executors, DESC, control.policy_config("deny", stateful=True, tcp_timeout=30), {}, "conversation")
    for ex in executors:
        control.apply(ex.tables, rs)

    def tcp(src: str, dst: str, sport: int, dport: int, flags: str) -> bytes:
        return bytes(Ether() / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags))

    c, s, sec = "198.18.0.5", "198.18.1.5", 1_000_000_000
    steps = [  # (packet, seconds, verdict)
        (tcp(c, s, 40000, 443, "S"), 1, Verdict.PASS),       # rule 0 opens the flow
        (tcp(s, c, 443, 40000, "SA"), 2, Verdict.PASS),      # the reply, by state
        (tcp(c, s, 40000, 443, "A"), 3, Verdict.PASS),       # not a SYN: by state, not rule 0
        (tcp(s, c, 5555, 40000, "S"), 4, Verdict.DROP),      # the server opening its own: default deny
        (tcp(c, s, 40001, 22, "S"), 5, Verdict.DROP),        # rule 1
        (tcp(s, c, 443, 40000, "A"), 40, Verdict.DROP),      # 37 s idle > tcp_timeout: the flow is gone
    ]
    for pkt, at, want in steps:
        assert run_all(executors, pkt, at * sec) == want
    for ex in executors:
        got = counts(ex)
        assert (got["state_created"], got["state_reply"], got["state_forward"], got["state_expired"]) == (1, 1, 1, 1)
        hits = control.rule_hits(ex.tables, 2)
        assert hits["packets"].tolist() == [1, 1], ex.name
        assert control.connections(ex.tables) == []  # the expired flow was removed
    assert "40001" not in control.hit_report(executors[0].tables, rs)  # one line per rule, not per packet


def test_apply_replaces_the_previous_rule_set(executors: list[Executor]) -> None:
    """Stale prefixes and bitmaps are deleted, arrays rewritten whole: only the new set acts."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.l2 import Ether

    old = control.compile_rules([f"deny tcp from 198.19.{i}.0/24 to any port {1000 + i}" for i in range(200)])
    new = control.compile_rules("allow udp from 198.18.0.0/24 to any port 53")
    prepare(executors, DESC, {}, {}, "replace")
    for ex in executors:
        control.apply(ex.tables, old)
        control.apply(ex.tables, new)
        want = control.table_entries(new, control.Layout.of(ex.tables))
        for name in ("src_rules", "dst_rules", "port_rules"):
            assert len(ex.tables[name]) == len(want[name]), (ex.name, name)
    old_match = bytes(Ether() / IP(src="198.19.5.1", dst="198.18.1.1") / TCP(dport=1005))
    new_match = bytes(Ether() / IP(src="198.18.0.5", dst="198.18.1.1") / UDP(dport=53))
    assert run_all(executors, old_match, 1) == Verdict.DROP
    assert run_all(executors, new_match, 2) == Verdict.PASS
    for ex in executors:
        got = counts(ex)
        assert (got["default_denied"], got["rule_denied"], got["rule_allowed"]) == (1, 0, 1), ex.name


def test_ten_thousand_rules_on_all_executors(executors: list[Executor]) -> None:
    """10,000 rules: a packet meets the first, the last, or none (and the default)."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    lines = [f"deny udp from 198.19.{i // 256}.{i % 256} to any port 9" for i in range(9_999)]
    lines.append("allow udp from 198.18.0.1 to 198.18.1.1 port 9")
    rs = control.compile_rules(lines)
    assert len(rs.rules) == 10_000 and not rs.warnings
    prepare(executors, DESC, {}, {}, "10,000 rules")
    for ex in executors:
        control.apply(ex.tables, rs)

    def udp(src: str) -> bytes:
        return bytes(Ether() / IP(src=src, dst="198.18.1.1") / UDP(dport=9))

    assert run_all(executors, udp("198.19.0.0"), 1) == Verdict.DROP       # rule 0
    assert run_all(executors, udp("198.19.39.14"), 2) == Verdict.DROP     # rule 9,998
    assert run_all(executors, udp("198.18.0.1"), 3) == Verdict.PASS       # rule 9,999
    assert run_all(executors, udp("198.18.0.2"), 4) == Verdict.DROP       # none: the default
    for ex in executors:
        hits = control.rule_hits(ex.tables)
        assert {i for i in range(len(hits)) if hits[i]["packets"]} == {0, 9_998, 9_999}, ex.name
        assert counts(ex)["default_denied"] == 1


# ---- the control plane's errors and warnings --------------------------------------------------
@pytest.mark.parametrize(("text", "message"), [
    ("allow tcpp from any to any", r"rule 1 \(line 3\) 'allow tcpp from any to any': unknown protocol 'tcpp'"),
    ("permit tcp from any to any", r"rule 1 .*: the action must be allow or deny, not 'permit'"),
    ("allow tcp from 198.18.0.1/16 to any", r"host bits set \(did you mean 198.18.0.0/16\?\)"),
    ("allow tcp from 198.18.0.0/16 to 2001:db8::/32", r"IPv4 only and the destination IPv6 only"),
    ("allow tcp from any to any port 70000", r"port 70000 is above 65535"),
    ("allow tcp from any to any port 443-80", r"port range '443-80' runs backwards"),
    ("allow icmp from any to any port 80", r"ports need protocol tcp or udp \(this rule's protocol is icmp\)"),
    ("allow udp from any to any flags S", r"flags need protocol tcp alone"),
    ("allow tcp from any to any flags SX", r"unknown flag 'X'"),
    ("allow tcp from any to any flags SA/S", r"A is set but not in the mask"),
    ("allow tcp port 22", r"unexpected 'port' \(ports follow an address: 'to any port 22'\)"),
    ("allow tcp from any to", r"'to' needs an address"),
    ("allow icmp from 2001:db8::/32 to any", r"IPv6 uses icmp6"),
])
def test_bad_rules_are_refused_naming_rule_and_text(text: str, message: str) -> None:
    with pytest.raises(control.RuleError, match=message):
        control.compile_rules(f"# two good rules first\nallow tcp from any to any port 80\n{text}\n")


def test_bad_dict_rules_are_refused() -> None:
    with pytest.raises(control.RuleError, match=r"rule 1 'action=allow, src=any, bogus=1': unknown key\(s\) bogus"):
        control.compile_rules([{"action": "deny"}, {"action": "allow", "src": "any", "bogus": 1}])
    with pytest.raises(control.RuleError, match=r"rule 0 'proto=tcp': no action"):
        control.compile_rules([{"proto": "tcp"}])
    rs = control.compile_rules([{"action": "allow", "proto": "tcp", "dst": ["198.18.1.0/24", "2001:db8::/32"],
                                 "dport": [80, "8000-8080"], "flags": "S/SA"}])
    assert rs.rules[0].text == "allow tcp from any to 198.18.1.0/24,2001:db8::/32 port 80,8000-8080 flags S/SA"


def test_shadowed_and_conflicting_rules_are_warned_about_not_refused() -> None:
    rs = control.compile_rules("""
        allow tcp from 198.18.0.0/16 to any port 80-443
        deny tcp from 198.18.0.0/24 to any port 100-200     # 1: never matched (shadowed by 0)
        allow tcp from 198.18.0.5 to any port 443            # 2: never matched (redundant)
        deny tcp from any to any port 443                    # 3: overlaps 0 with the other action
        allow tcp from any to any                            # 4: 3 is an exception inside it
    """)
    got = {(w.rule, w.kind, w.other) for w in rs.warnings}
    assert got == {(1, "shadowed", 0), (2, "redundant", 0), (3, "conflict", 0), (4, "exception", 3)}
    by_rule = {w.rule: str(w) for w in rs.warnings}
    assert "rule 1 (line 3) 'deny tcp from 198.18.0.0/24 to any port 100-200'" in by_rule[1]
    assert "is never matched: rule 0 (line 2)" in by_rule[1]
    assert "packets matching both are allowed by rule 0" in by_rule[3]


def test_policy_and_capacity_errors() -> None:
    assert control.policy_config("allow", stateful=True, fragments="drop", udp_timeout=5) == {
        "default_allow": True, "stateful": True, "frag_mode": 1, "non_ip_drop": False, "udp_timeout": 5}
    with pytest.raises(control.ConfigError, match="default policy must be 'allow' or 'deny', not 'permit'"):
        control.policy_config("permit")
    with pytest.raises(control.ConfigError, match="fragments must be one of match, drop, pass"):
        control.policy_config(fragments="reassemble")
    with pytest.raises(control.ConfigError, match="udp_timeout must be a whole number of seconds"):
        control.policy_config(udp_timeout=0)
    with pytest.raises(control.ConfigError, match="unknown timeout 'icmp_timeout'"):
        control.policy_config(icmp_timeout=3)
    too_many = control.compile_rules([f"deny udp from any to any port {i}" for i in range(10_241)], analyse=False)
    with pytest.raises(control.CapacityError, match="10241 rules; the firewall holds 10240"):
        control.table_entries(too_many, control.Layout.of_folder(FW))
    with pytest.raises(control.FirewallError, match="not the firewall's tables: no src_rules"):
        control.apply({"blocklist": None}, too_many)
    assert issubclass(control.FirewallError, VnfkitError)


# ---- end to end: real TCP through the firewall at XDP ------------------------------------------
C6, S6 = "2001:db8:f::1", "2001:db8:f::2"


def _listen(ns: str, addr: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with netns.enter(ns):
        sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((addr, port))
    sock.listen(4)
    sock.settimeout(10)
    return sock


def _connect(ns: str, addr: str, port: int, timeout: float) -> socket.socket:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with netns.enter(ns):
        sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect((addr, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(1 << 16, n - got))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


class Server:
    """Accepts one connection in a thread, reads ``expect`` bytes, answers ``answer`` bytes."""

    def __init__(self, listener: socket.socket, expect: int, answer: int) -> None:
        self.listener, self.expect, self.answer = listener, expect, answer
        self.peer: Any = None
        self.received = b""
        self.conn: socket.socket | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.conn, self.peer = self.listener.accept()
        self.conn.settimeout(10)
        self.received = _recv_exactly(self.conn, self.expect)
        self.conn.sendall(b"s" * self.answer)

    def join(self) -> None:
        self.thread.join(15)
        assert not self.thread.is_alive(), "the server never finished"


def _never_accepted(listener: socket.socket) -> bool:
    listener.settimeout(0)
    with contextlib.suppress(BlockingIOError):
        listener.accept()[0].close()
        return False
    return True


def _iperf3(client: str, server: str, addr: str, port: int, nbytes: int) -> dict[str, Any]:
    srv = subprocess.Popen(["ip", "netns", "exec", server, "iperf3", "-s", "-1", "-B", addr, "-p", str(port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while f":{port} " not in subprocess.run(["ip", "netns", "exec", server, "ss", "-ltnH"], capture_output=True,
                                                text=True).stdout:
            assert time.monotonic() < deadline and srv.poll() is None, "iperf3 -s never listened"
            time.sleep(0.05)
        res = subprocess.run(["ip", "netns", "exec", client, "iperf3", "-c", addr, "-p", str(port), "-n", str(nbytes),
                              "-J"],
                             capture_output=True, text=True, timeout=30)
        assert res.returncode == 0, res.stdout + res.stderr
        return json.loads(res.stdout)["end"]
    finally:
        srv.kill()
        srv.wait()


def test_real_tcp_through_the_firewall(topo: netns.Topology) -> None:
    """Client and server namespaces joined by a veth; the firewall (one instance, shared
    tables) at XDP on both ends: the server's end sees the client's packets, the client's end
    the server's. Stateful, default deny, and one rule that lets the client open connections."""
    from vnfkit.instance import KernelInstance

    client, server = topo.add_ns("client"), topo.add_ns("server")
    pair = topo.add_veth(client, server, ipv6=True)
    c4, s4 = pair.addr_a, pair.addr_b
    for ns, ifname, addr in ((client, pair.ifname_a, C6), (server, pair.ifname_b, S6)):
        subprocess.run(["ip", "-n", ns, "addr", "add", f"{addr}/64", "dev", ifname, "nodad"], check=True)
    rs = control.compile_rules(f"""
        allow icmp6 from any to any                                       # 0: neighbour discovery
        allow tcp from {c4},{C6} to {s4},{S6} port 5201-5210 flags S/SA   # 1: the client opens
        deny tcp from any to any port 5299                                # 2: never this port
    """)
    with KernelInstance(FW, config=control.policy_config("deny", stateful=True)) as fw:
        control.apply(fw.tables, rs)
        fw.attach(server, pair.ifname_b)
        fw.attach(client, pair.ifname_a)
        listeners = []
        try:
            # IPv4: 2 MB up, 1 MB down, every byte delivered, from the client's own address.
            listeners.append(lst := _listen(server, s4, 5201))
            srv = Server(lst, 2 << 20, 1 << 20)
            conn = _connect(client, s4, 5201, 5)
            conn.sendall(b"c" * (2 << 20))
            down = _recv_exactly(conn, 1 << 20)
            srv.join()
            assert len(srv.received) == 2 << 20 and len(down) == 1 << 20
            assert srv.peer[0] == c4
            # IPv6, the same.
            listeners.append(lst6 := _listen(server, S6, 5202))
            srv6 = Server(lst6, 256 << 10, 64 << 10)
            with _connect(client, S6, 5202, 5) as conn6:
                conn6.sendall(b"6" * (256 << 10))
                assert len(_recv_exactly(conn6, 64 << 10)) == 64 << 10
            srv6.join()
            assert len(srv6.received) == 256 << 10 and srv6.peer[0] == C6
            # iperf3: a control and a data connection, 64 MiB of bulk data through. (Exact delivery
            # is what the sockets above check: iperf3's server stops counting at the client's
            # end-of-test message, which can overtake the last data in flight.)
            end = _iperf3(client, server, s4, 5203, 64 << 20)
            # iperf3 -n stops at the first block boundary at or past the count (128 KiB blocks).
            assert 64 << 20 <= end["sum_sent"]["bytes"] < (64 << 20) + (128 << 10)
            assert 0 < end["sum_received"]["bytes"] <= end["sum_sent"]["bytes"]
            # Denied: by rule 2, and by the default (no rule). The SYNs vanish: connect times out.
            for port in (5299, 5300):
                listeners.append(lst := _listen(server, s4, port))
                with pytest.raises((TimeoutError, socket.timeout)):
                    _connect(client, s4, port, 1.5)
                assert _never_accepted(lst), port
            # The server opening a connection to the client: no flow, no rule, dropped ...
            listeners.append(back := _listen(client, c4, 6000))
            with pytest.raises((TimeoutError, socket.timeout)):
                _connect(server, c4, 6000, 1.5)
            assert _never_accepted(back)
            # ... while the replies of the client's connection still pass, both ways.
            conn.sendall(b"c" * 1000)
            assert len(_recv_exactly(srv.conn, 1000)) == 1000
            srv.conn.sendall(b"s" * 1000)
            assert len(_recv_exactly(conn, 1000)) == 1000
            conn.close()

            got = {name: n for name, (n, _) in fw.counters().items()}
            hits = control.rule_hits(fw.tables, 3)["packets"].tolist()
            assert hits[1] >= 4 and hits[2] >= 1, hits  # 4 connections opened; port 5299 SYNs
            assert got["state_reply"] > 100 and got["state_forward"] > 100, got
            assert got["default_denied"] >= 2 and got["state_created"] >= 4, got
            flows = control.connections(fw.tables)
            assert any(f["src"] == c4 and f["dst"] == s4 and f["dport"] == 5201 and f["rule"] == 1 for f in flows)

            # Stateless, the same rule lets the SYN in but the SYN-ACK is dropped on its way back.
            fw.configure(control.policy_config("deny", stateful=False))
            with pytest.raises((TimeoutError, socket.timeout)):
                _connect(client, s4, 5201, 1.5)
        finally:
            for lst in listeners:
                lst.close()
