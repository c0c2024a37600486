"""The SFC classifier (progs/classifier.c, chaining/classifier.py) in the kernel: every match
field on scapy-built frames by BPF test-run, most specific first, replies before rules,
per-rule counters, refused rule sets, and rule-set swaps that no packet sees half done.

The forwarder's slot of sff_entry holds a probe (tests/bpf/cls_probe.c) that records the
(SPI, SI, TTL) the classifier handed over in the chain's per-CPU slot (chain.h's chain_meta) and
drops the frame; a frame the classifier passes on returns XDP_PASS without reaching it.
"""

from __future__ import annotations

import ipaddress
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.layers.sctp import SCTP
from scapy.packet import Packet, Raw

from chaining.classifier import MAX_RULES, Rule, flow_key
from chaining.local import ChainError, LocalChain
from chaining.service import Match
from datapath import netns
from datapath.libbpf import ffi
from datapath.objects import BpfObject, load

pytestmark = pytest.mark.kernel
PROBE = Path(__file__).parent / "bpf" / "cls_probe.c"
SRC, DST = "198.18.0.1", "198.19.0.1"
SPIS = (1, 2, 3, 4, 5)
OTHER_SI = 200  # path 5 starts at SI 200 on this host: the classifier must hand over that SI


def frame(l4: Packet | None = None, *, src: str = SRC, dst: str = DST, vlan: int | None = None, **ip: object) -> bytes:
    """An Ethernet frame (802.1Q-tagged with ``vlan``) carrying IPv4 ``src`` -> ``dst`` and ``l4``."""
    l2: Packet = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    if vlan is not None:
        l2 = l2 / Dot1Q(vlan=vlan)
    pkt = l2 / IP(src=src, dst=dst, **ip)
    if l4 is not None:
        pkt = pkt / l4
    return bytes(pkt)


def udp(sport: int = 4000, dport: int = 80, **kw: object) -> bytes:
    return frame(UDP(sport=sport, dport=dport) / (b"x" * 8), **kw)


def tcp(sport: int = 4000, dport: int = 80, **kw: object) -> bytes:
    return frame(TCP(sport=sport, dport=dport), **kw)


def later_fragment(dport: int) -> bytes:
    """A non-first UDP fragment whose payload starts with bytes that look like ports."""
    return frame(Raw(struct.pack("!HH", 4000, dport) + b"y" * 12), proto=17, frag=100)


class Lab:
    """A LocalChain with paths ``SPIS`` (all ending at the stack) and the probe as forwarder."""

    def __init__(self, chain: LocalChain, probe: BpfObject) -> None:
        self.chain, self.probe = chain, probe
        self.entry = chain.classifier.program("classifier")

    def run(self, data: bytes, ifindex: int | None = None) -> tuple[int, int, int] | None:
        """(SPI, SI, TTL) the classifier started ``data`` with, or None when it passed it on."""
        before = self.chain.counters()
        ctx = None
        if ifindex is not None:  # the kernel wants the context to describe the frame exactly
            ctx = ffi.new("struct xdp_md *", {"ingress_ifindex": ifindex, "data_end": len(data)})
        res = self.entry.test_run(data, ctx=ctx)
        moved = {k: v - before[k] for k, v in self.chain.counters().items() if v != before[k]}
        if res.verdict == "PASS":
            assert len(moved) == 1 and set(moved) <= {"cls_unmatched", "cls_not_ipv4"}, moved
            return None
        assert res.verdict == "DROP", res.verdict  # the probe ran
        assert len(moved) == 1 and set(moved) <= {"cls_matched", "cls_reply"}, moved
        last = self.probe.map("last")[0]
        return int(last["spi_si"]) >> 8, int(last["spi_si"]) & 0xFF, int(last["ttl"])

    def spi(self, data: bytes, ifindex: int | None = None) -> int | None:
        started = self.run(data, ifindex)
        return None if started is None else started[0]


@pytest.fixture
def lab() -> Iterator[Lab]:
    with LocalChain() as chain, load(PROBE, reuse_maps={"chain_meta": chain.sff.map("chain_meta")}) as probe:
        for spi in SPIS:
            chain.add_path(spi, [], first_si=OTHER_SI if spi == 5 else 255)
        chain._set_prog(chain.sff.map("sff_entry"), 0, probe.program("probe"))
        yield Lab(chain, probe)


# ---------------------------------------------------------------------------------------------
# Match fields, one rule at a time: frames that must match it and frames that must not

FIELD_CASES = {
    "src prefix": (Match(src="10.1.0.0/16"),
                   [udp(src="10.1.0.0"), udp(src="10.1.255.255"), frame(ICMP(), src="10.1.2.3")],
                   [udp(src="10.0.255.255"), udp(src="10.2.0.0")]),
    "dst prefix, tagged or not": (Match(dst="192.0.2.128/25"),
                                  [udp(dst="192.0.2.128"), udp(dst="192.0.2.255"), udp(dst="192.0.2.130", vlan=7)],
                                  [udp(dst="192.0.2.127"), udp(dst="192.0.3.128"), udp(dst="192.0.2.127", vlan=7)]),
    "protocol": (Match(proto=1), [frame(ICMP()), frame(ICMP(), vlan=3)], [udp(), tcp(), frame(proto=47)]),
    "dport range edges, any port protocol": (
        Match(dport=(1000, 2000)),
        [udp(dport=1000), tcp(dport=2000), frame(SCTP(sport=1, dport=1500)),
         frame(UDP(sport=4000, dport=1500) / (b"z" * 40), flags="MF"),                 # a first fragment has ports
         frame(TCP(dport=1500), options=[IPOption(b"\x01\x01\x01\x01")])],         # past IP options
        [udp(dport=999), tcp(dport=2001), frame(ICMP()), later_fragment(1500), frame(Raw(b"\x00" * 8), proto=47)]),
    "sport with a protocol": (Match(proto=17, sport=(53, 53)), [udp(sport=53)],
                              [tcp(sport=53), udp(sport=52), udp(sport=54)]),
    "ports 0 and 65535": (Match(sport=(0, 0), dport=(65535, 65535)), [udp(sport=0, dport=65535)],
                          [udp(sport=1, dport=65535), udp(sport=0, dport=65534)]),
    "the whole port range is still 'has ports'": (Match(proto=6, dport=(0, 65535)),
                                                  [tcp(dport=0), tcp(dport=65535)],
                                                  [udp(dport=80), frame(Raw(b"\x00" * 20), proto=6, frag=10)]),
    "vlan": (Match(vlan=5), [udp(vlan=5), frame(ICMP(), vlan=5)], [udp(vlan=6), udp(), udp(vlan=4095)]),
    "vlan 0 (priority tag) is not untagged": (Match(vlan=0), [udp(vlan=0)], [udp()]),
    "every field": (Match(src="10.0.0.0/24", dst="10.0.1.0/24", proto=6, sport=(1024, 65535), dport=(443, 443),
                          vlan=10),
                    [tcp(1024, 443, src="10.0.0.1", dst="10.0.1.1", vlan=10)],
                    [tcp(1024, 443, src="10.0.3.1", dst="10.0.1.1", vlan=10),
                     tcp(1024, 443, src="10.0.0.1", dst="10.0.2.1", vlan=10),
                     udp(1024, 443, src="10.0.0.1", dst="10.0.1.1", vlan=10),
                     tcp(1023, 443, src="10.0.0.1", dst="10.0.1.1", vlan=10),
                     tcp(1024, 444, src="10.0.0.1", dst="10.0.1.1", vlan=10),
                     tcp(1024, 443, src="10.0.0.1", dst="10.0.1.1", vlan=11),
                     tcp(1024, 443, src="10.0.0.1", dst="10.0.1.1")]),
}


@pytest.mark.parametrize("case", FIELD_CASES)
def test_each_field_matches_exactly_its_packets(lab: Lab, case: str) -> None:
    match, hits, misses = FIELD_CASES[case]
    lab.chain.set_rules([Rule(match, 2, ttl=17)])
    for i, data in enumerate(hits):
        assert lab.run(data) == (2, 255, 17), f"frame {i} should match: {Ether(data).summary()}"
    for i, data in enumerate(misses):
        assert lab.run(data) is None, f"frame {i} should not match: {Ether(data).summary()}"
    assert [s.packets for s in lab.chain.rule_stats()] == [len(hits)]


def test_ipv6_and_arp_pass_whatever_the_rules(lab: Lab) -> None:
    lab.chain.set_rules([Rule(Match(), 1)])  # a catch-all: every IPv4 packet starts on path 1
    assert lab.spi(udp()) == 1
    for data in (bytes(Ether() / IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(dport=80)),
                 bytes(Ether() / Dot1Q(vlan=5) / IPv6() / TCP()),
                 bytes(Ether(dst="ff:ff:ff:ff:ff:ff") / ARP(pdst="198.19.0.1"))):
        before = lab.chain.counters()["cls_not_ipv4"]
        assert lab.run(data) is None
        assert lab.chain.counters()["cls_not_ipv4"] == before + 1


def test_metadata_carries_the_paths_first_si_and_the_rules_ttl(lab: Lab) -> None:
    lab.chain.set_rules([Rule(Match(dst="198.19.0.0/24"), 5, ttl=3), Rule(Match(dst="198.19.1.0/24"), 1, ttl=63)])
    assert lab.run(udp(dst="198.19.0.9")) == (5, OTHER_SI, 3)
    assert lab.run(udp(dst="198.19.1.9")) == (1, 255, 63)


def test_most_specific_rule_wins_whatever_the_order_given(lab: Lab) -> None:
    rules = [Rule(Match(), 1),                                                    # everything
             Rule(Match(dst="198.19.0.0/16"), 2),
             Rule(Match(dst="198.19.7.0/24", proto=6), 3),
             Rule(Match(dst="198.19.7.0/24", proto=6, dport=(80, 80)), 4),
             Rule(Match(dst="198.19.7.0/24", proto=6, dport=(80, 80), vlan=9), 5)]
    for given in (rules, rules[::-1], [rules[2], rules[0], rules[4], rules[1], rules[3]]):
        assert lab.chain.set_rules(given) == rules[::-1]  # the scan order: most specific first
        assert lab.spi(udp(dst="203.0.113.1")) == 1
        assert lab.spi(udp(dst="198.19.7.1")) == 2
        assert lab.spi(tcp(dport=81, dst="198.19.7.1")) == 3
        assert lab.spi(tcp(dport=80, dst="198.19.7.1")) == 4
        assert lab.spi(tcp(dport=80, dst="198.19.7.1", vlan=9)) == 5
        assert lab.spi(tcp(dport=80, dst="198.19.7.1", vlan=8)) == 4


def test_ingress_interface(lab: Lab, topo) -> None:  # noqa: ANN001
    a, b = topo.add_ns("a"), topo.add_ns("b")
    one, two = topo.add_veth(a, b), topo.add_veth(a, b)
    prefix = "198.19.0.0/24"
    lab.chain.set_rules([Rule(Match(dst=prefix), 1, ifindex=one.ifindex_b),
                         Rule(Match(dst=prefix), 2, ifindex=two.ifindex_b),
                         Rule(Match(dst=prefix), 3)])
    with netns.enter(b):  # test-run resolves the context's ifindex in the caller's namespace
        assert lab.spi(udp(), ifindex=one.ifindex_b) == 1
        assert lab.spi(udp(), ifindex=two.ifindex_b) == 2
        assert lab.spi(udp(), ifindex=netns.ifindex(None, "lo")) == 3
        assert lab.spi(udp(dst="198.20.0.1"), ifindex=one.ifindex_b) is None


def test_a_reply_starts_on_its_reverse_flow_before_any_rule(lab: Lab) -> None:
    lab.chain.set_rules([Rule(Match(), 1), Rule(Match(dst=DST + "/32", proto=17), 2)])
    rev = lab.chain.sff.map("rev_flows")
    rev.update(flow_key(SRC, DST, 17, 4000, 80), {"spi_si": (5 << 8) | 199, "ttl": 9})
    rev.update(flow_key(SRC, DST, 1), {"spi_si": (3 << 8) | 250, "ttl": 4})  # ICMP: no ports

    before = lab.chain.counters()
    assert lab.run(udp(4000, 80)) == (5, 199, 9)
    assert lab.run(frame(ICMP(type=0))) == (3, 250, 4)
    assert lab.run(udp(4001, 80)) == (2, 255, 63)     # another flow: the rules
    assert lab.run(udp(80, 4000)) == (2, 255, 63)     # the 5-tuple is directional
    after = lab.chain.counters()
    assert after["cls_reply"] - before["cls_reply"] == 2
    assert after["cls_matched"] - before["cls_matched"] == 2
    assert [s.packets for s in lab.chain.rule_stats()] == [2, 0]  # replies count on no rule


def test_per_rule_counters_and_swaps(lab: Lab) -> None:
    r1, r2, r3 = (Rule(Match(dst=f"198.19.0.{i}/32"), i) for i in (1, 2, 3))
    lab.chain.set_rules([r1, r2])
    sizes = {1: len(udp(dst="198.19.0.1")), 2: len(udp(dst="198.19.0.2"))}
    for _ in range(3):
        lab.run(udp(dst="198.19.0.1"))
    for _ in range(2):
        lab.run(udp(dst="198.19.0.2"))
    assert [(s.rule, s.packets, s.bytes) for s in lab.chain.rule_stats()] == [
        (r1, 3, 3 * sizes[1]), (r2, 2, 2 * sizes[2])]
    assert lab.chain.counters()["cls_matched"] == 5

    lab.chain.set_rules([r3, r1])  # r1 kept: it keeps counting; r3 new: from 0
    lab.run(udp(dst="198.19.0.1"))
    lab.run(udp(dst="198.19.0.3"))
    assert lab.spi(udp(dst="198.19.0.2")) is None
    assert [(s.rule, s.packets) for s in lab.chain.rule_stats()] == [(r3, 1), (r1, 4)]  # the order given
    lab.chain.set_rules([r2])  # r2 came back: a new rule, its old count is gone
    assert [(s.rule, s.packets) for s in lab.chain.rule_stats()] == [(r2, 0)]


def test_classify_adds_a_destination_rule(lab: Lab) -> None:
    lab.chain.classify("198.19.0.0/24", 1)
    lab.chain.classify("198.19.0.0/16", 2, ttl=5)
    assert lab.run(udp(dst="198.19.0.7")) == (1, 255, 63)
    assert lab.run(udp(dst="198.19.9.7")) == (2, 255, 5)


BAD_RULE_SETS = [
    ([Rule(Match(dst="198.19.0.0/24"), 9)], r"no path 9 \(rules given: 0;"),
    ([Rule(Match(dst=f"10.0.{i // 256}.{i % 256}/32"), 1) for i in range(MAX_RULES + 1)], "at most 256"),
    ([Rule(Match(dst="2001:db8::/32"), 1)], "IPv6; the classifier matches IPv4 only"),
    ([Rule(Match(dst="10.0.0.1/8"), 1)], "host bits"),
    ([Rule(Match(), 1), Rule(Match(vlan=4096), 1)], r"rule 1 .*vlan 4096 is not a VLAN id"),
    ([Rule(Match(dport=(90, 80)), 1)], "dport .* not a port range"),
    ([Rule(Match(proto=1, sport=(1, 2)), 1)], "sport with proto 1: only tcp"),
    ([Rule(Match(proto=300), 1)], "proto 300"),
    ([Rule(Match(), 1, ttl=0)], "ttl 0 out of range"),
    ([Rule(Match(), 1, ttl=64)], "ttl 64 out of range"),
    ([Rule(Match(), 1, ifindex=-1)], "ifindex -1"),
    (["10.0.0.0/8"], "is not a Rule"),
    ([Rule(Match(dst="10.0.0.0/8"), 1), Rule(Match(dst="10.0.0.0/8"), 2)], "rules 0 .* and 1 .* overlap"),
    ([Rule(Match(dst="10.0.0.0/8", dport=(80, 80)), 1), Rule(Match(dst="10.1.0.0/16"), 2)], "overlap"),
    ([Rule(Match(dst="10.0.0.0/8"), 1, ttl=9), Rule(Match(dst="10.0.0.0/8"), 1, ttl=8)], "overlap"),
    ([Rule(Match(dst="0.0.0.0/0"), 1), Rule(Match(), 2)], "overlap"),  # the same packets for IPv4
    ([Rule(Match(), 1, ifindex=7), Rule(Match(dst="10.0.0.0/8"), 2)], "overlap"),  # crossed by interface
]


@pytest.mark.parametrize("rules, words", BAD_RULE_SETS, ids=range(len(BAD_RULE_SETS)))
def test_bad_rule_sets_are_refused_and_change_nothing(lab: Lab, rules: list, words: str) -> None:
    kept = lab.chain.set_rules([Rule(Match(dst=DST + "/32"), 4)])
    with pytest.raises(ChainError, match=words):
        lab.chain.set_rules(rules)
    assert lab.chain.rules == kept
    assert lab.spi(udp()) == 4


def test_rules_that_are_not_conflicts(lab: Lab) -> None:
    ok = [Rule(Match(dst="10.0.0.0/8", dport=(80, 80)), 1), Rule(Match(proto=1), 2),  # ports vs ICMP: disjoint
          Rule(Match(dst="10.0.0.0/8", proto=1), 3, ifindex=7), Rule(Match(dst="10.0.0.0/8", proto=1), 4, ifindex=8),
          Rule(Match(dst="10.0.0.0/8", dport=(80, 80)), 1), Rule(Match(), 5)]  # a repeat is dropped
    assert len(lab.chain.set_rules(ok)) == 5


# ---------------------------------------------------------------------------------------------
# Swaps while packets run

def test_swaps_are_atomic_for_packets(lab: Lab) -> None:
    """One thread flips between two full rule sets while this one test-runs the same frame.

    Set A finds the frame at its last rule (SPI 1, TTL 10); set B at its first (SPI 2, TTL 20)
    and holds a catch-all at its end (SPI 4). A packet that read a mix of the two (A's head,
    B's tail; a rule half written) would start with SPI 4, SPI 3, a TTL of the other set, or
    not at all: every start counted must be (1, 10) or (2, 20)."""
    probe_dst = ipaddress.IPv4Address("198.19.0.0")
    others = [f"{probe_dst + 1 + i}/32" for i in range(MAX_RULES - 2)]
    set_a = [*(Rule(Match(dst=d), 3, ttl=10) for d in others), Rule(Match(dst="198.19.1.0/32"), 3, ttl=10),
             Rule(Match(dst=f"{probe_dst}/32"), 1, ttl=10)]
    set_b = [Rule(Match(dst=f"{probe_dst}/32"), 2, ttl=20), *(Rule(Match(dst=d), 3, ttl=20) for d in others),
             Rule(Match(), 4, ttl=20)]
    assert len(set_a) == len(set_b) == MAX_RULES
    assert lab.chain.set_rules(set_a)[-1].spi == 1 and lab.chain.set_rules(set_b)[0].spi == 2
    data = udp(dst=str(probe_dst))
    flips, done, errors = 300, threading.Event(), []
    REPEAT = 20_000  # noqa: N806

    def flipper() -> None:
        try:
            for i in range(flips):
                lab.chain.set_rules(set_a if i % 2 == 0 else set_b)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
        finally:
            done.set()

    starts = lab.probe.map("starts")
    starts.clear()
    before = lab.chain.counters()
    thread = threading.Thread(target=flipper)
    thread.start()
    runs = 0
    try:
        while not done.is_set():
            # Long runs: the flipper's bank writes must land while packets are in the kernel,
            # not while this thread waits for the GIL.
            assert lab.entry.test_run(data, repeat=REPEAT).verdict == "DROP"
            runs += REPEAT
    finally:
        thread.join()
    assert not errors, errors
    seen = {(int(k["spi_si"]) >> 8, int(k["ttl"])): int(v) for k, v in starts.items()}
    assert set(seen) <= {(1, 10), (2, 20)}, seen
    assert sum(seen.values()) == runs
    assert len(seen) == 2, f"packets saw only {seen} during {flips} swaps: the test proved nothing"
    after = lab.chain.counters()
    assert after["cls_matched"] - before["cls_matched"] == runs and after["cls_unmatched"] == before["cls_unmatched"]


def test_without_a_forwarder_the_handover_fails_and_is_counted() -> None:
    with LocalChain() as chain:
        chain.add_path(8, [])
        chain.set_rules([Rule(Match(dst=DST + "/32"), 8)])
        entry = chain.classifier.program("classifier")
        assert entry.test_run(udp()).verdict == "PASS"  # the real forwarder: the path ends at the stack
        assert chain.counters()["sff_delivered"] == 1 and chain.hop_stats() == {(8, 255): 1}
        del chain.sff.map("sff_entry")[b"\0\0\0\0"]
        assert entry.test_run(udp()).verdict == "PASS"
        counters = chain.counters()
        assert counters["cls_no_forwarder"] == 1 and counters["cls_matched"] == 2 and counters["sff_delivered"] == 1


def test_real_frames_on_two_interfaces(topo) -> None:  # noqa: ANN001
    """The classifier at XDP (native) on two veths: frames sent through them, tagged and not,
    start on the path of their interface and VLAN."""
    a, b = topo.add_ns("a"), topo.add_ns("b")
    one, two = topo.add_veth(a, b), topo.add_veth(a, b)
    with LocalChain() as chain:
        for spi in (1, 2, 3):
            chain.add_path(spi, [])  # to the stack, which drops the frames (not for its MAC)
        rules = [Rule(Match(vlan=5), 1, ifindex=one.ifindex_b), Rule(Match(), 2, ifindex=two.ifindex_b),
                 Rule(Match(), 3)]
        chain.set_rules(rules)
        for pair in (one, two):
            chain.attach(b, pair.ifname_b, mode="native")

        def send(pair, vlan: int | None, count: int) -> None:  # noqa: ANN001
            netns.send_frames(a, pair.ifname_a, [udp(src=pair.addr_a, dst=pair.addr_b, vlan=vlan)] * count)

        send(one, 5, 3)
        send(one, None, 2)
        send(one, 6, 1)
        send(two, 5, 4)
        # veth runs XDP in NAPI: normally as the sender's syscall returns, but it may lag.
        deadline = time.monotonic() + 5
        while chain.counters()["cls_matched"] < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        stats = {s.rule.spi: s.packets for s in chain.rule_stats()}
        assert stats == {1: 3, 2: 4, 3: 3}
        assert chain.counters()["sff_delivered"] == 10
