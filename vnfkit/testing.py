"""Packet tests and the fuzzer: the same packets through every executor, compared.

A VNF's ``tests/packets.py`` defines ``TESTS``, a list of ``PacketTest``: a packet (scapy
or bytes), the tables and config to set up first, and what to expect. ``run_tests`` sets up
each executor identically, runs the packet on each, and reports any difference between
executors (the C against the model, the kernel against the native build) as well as any
difference from the expectation. ``fuzz`` does the same for generated packets.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from datapath.errors import MapError, VnfkitError
from datapath.verdict import Verdict
from vnfkit.descriptor import Descriptor, DescriptorError, config_values
from vnfkit.executors import Executor
from vnfkit.model import Result
from vnfkit.pyfile import import_file


class PacketTestError(VnfkitError):
    """A packet test file is wrong (missing, a table that does not exist, a bad verdict)."""


@dataclass
class PacketTest:
    """One packet and what it should do. ``expect`` is a verdict name or Verdict;
    ``output`` the expected output packet (None: not checked); ``counters`` expected packet
    counts by counter name; ``tables`` {table: {key: value}} and ``config`` {param: value}
    are set up before the packet runs."""

    name: str
    packet: Any
    expect: str | Verdict | None = None
    output: Any = None
    port: str | None = None
    tables: dict[str, dict[Any, Any]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    now: int = 1_000_000_000  # what vk_now() returns while the packet runs (ns)


CLOCK_STEP = 1_000_000  # the fuzzer's clock advances 1 ms per packet


@dataclass
class Failure:
    test: str
    packet: bytes
    reason: str
    results: dict[str, Result]


@dataclass
class Report:
    ran: int = 0
    failures: list[Failure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def load_packet_tests(folder: Path) -> tuple[list[PacketTest], dict[str, Any]]:
    """TESTS from ``folder/tests/packets.py``, and its optional FUZZ setup dict."""
    path = folder / "tests" / "packets.py"
    module = import_file(path, "packet tests live there", PacketTestError)
    tests = getattr(module, "TESTS", None)
    if not isinstance(tests, list) or not all(isinstance(t, PacketTest) for t in tests):
        raise PacketTestError(f"{path}: TESTS must be a list of vnfkit.testing.PacketTest")
    return tests, getattr(module, "FUZZ", {})


def prepare(executors: list[Executor], desc: Descriptor, config: dict[str, Any],
            tables: dict[str, dict[Any, Any]], where: str) -> None:
    """Reset every executor and give each the same config (the descriptor's defaults plus
    ``config``, checked against the parameters' types and ranges) and table contents."""
    try:
        values = config_values(desc, config)
    except DescriptorError as exc:
        raise PacketTestError(f"{where}: config: {exc}") from None
    for ex in executors:
        ex.reset()
        ex.configure(values)
        for tname, entries in tables.items():
            table = ex.tables.get(tname)
            if table is None or tname.startswith("vk_"):
                raise PacketTestError(f"{where}: no table '{tname}' (tables: {', '.join(ex.vnf_tables()) or 'none'})")
            for key, value in entries.items():
                try:
                    table[key] = value
                except MapError as exc:
                    raise PacketTestError(f"{where}: table '{tname}': {exc}") from None


def _same(results: dict[str, Result]) -> bool:
    first = next(iter(results.values()))
    return all((r.verdict, bytes(r.data), r.port) == (first.verdict, bytes(first.data), first.port)
               for r in results.values())


def run_one(executors: list[Executor], pkt: bytes) -> dict[str, Result]:
    return {ex.name: ex.run(pkt) for ex in executors}


def run_tests(executors: list[Executor], tests: list[PacketTest], desc: Descriptor) -> Report:
    report = Report()
    ports = executors[0].intro.ports
    for t in tests:
        pkt = bytes(t.packet)
        prepare(executors, desc, t.config, t.tables, f"test '{t.name}'")
        for ex in executors:
            ex.set_clock(t.now)
        results = run_one(executors, pkt)
        report.ran += 1
        if not _same(results):
            report.failures.append(Failure(t.name, pkt, "the executors disagree", results))
            continue
        got = next(iter(results.values()))
        if t.expect is not None:
            want = t.expect if isinstance(t.expect, Verdict) else _verdict(t.expect, t.name)
            if got.verdict != want:
                report.failures.append(Failure(t.name, pkt, f"expected {want.name}, got {got.verdict.name}", results))
                continue
        if t.port is not None and (t.port not in ports or got.port != ports.index(t.port)):
            report.failures.append(Failure(t.name, pkt, f"expected port '{t.port}', got port {got.port}", results))
            continue
        if t.output is not None and bytes(got.data) != bytes(t.output):
            expected = Result(got.verdict, bytes(t.output), got.port)
            report.failures.append(Failure(t.name, pkt, "output differs from the expected packet",
                                           {**results, "expected": expected}))
            continue
        for ex in executors:
            counts = ex.counters()
            for cname, want_n in t.counters.items():
                if cname not in counts:
                    raise PacketTestError(f"test '{t.name}': no counter '{cname}' (counters: {', '.join(counts)})")
                if counts[cname][0] != want_n:
                    report.failures.append(Failure(t.name, pkt, f"{ex.name}: counter '{cname}' is "
                                                   f"{counts[cname][0]}, expected {want_n}", results))
    return report


def _verdict(name: str, test: str) -> Verdict:
    try:
        return Verdict[name.upper()]
    except KeyError:
        raise PacketTestError(f"test '{test}': expect='{name}' is not a verdict "
                              f"({', '.join(v.name.lower() for v in Verdict)})") from None


def compare_state(executors: list[Executor]) -> str | None:
    """Tables and counters after a run: None if every executor holds the same.

    Per-CPU values are compared summed: the kernel has a slot per CPU of the machine, the
    native and model executors one."""
    def value(table: Any, key: bytes) -> bytes:
        raw = table._raw_lookup(key) or b""
        if raw and table.per_cpu:
            return np.asarray(table._decode_value(raw, False)).tobytes()
        return bytes(raw)

    def snapshot(ex: Executor) -> dict[str, Any]:
        tables = {}
        for name, table in ex.vnf_tables().items():
            tables[name] = sorted((bytes(k), value(table, k)) for k in table.raw_keys())
        return {"tables": tables, "counters": ex.counters()}

    snaps = {ex.name: snapshot(ex) for ex in executors}
    first_name, first = next(iter(snaps.items()))
    for name, snap in snaps.items():
        for tname, entries in snap["tables"].items():
            if entries != first["tables"][tname]:
                return f"table '{tname}' differs between {first_name} and {name}"
        for cname, value in snap["counters"].items():
            if value != first["counters"][cname]:
                return f"counter '{cname}': {first_name} has {first['counters'][cname]}, {name} has {value}"
    return None


# ---- the fuzzer ------------------------------------------------------------------------------

PORTS = (9, 53, 80, 443, 2152, 4789, 4790, 100, 101, 102, 103, 104)


def _addr4(rng: random.Random) -> str:
    return f"198.18.{rng.choice((0, 1, 7))}.{rng.randrange(256)}"


def _base_packet(rng: random.Random) -> bytes:
    """A plausible frame: VLAN tags, IPv4 with options or IPv6 with extension headers,
    fragments, TCP/UDP/ICMP or odd protocols, NSH, ARP."""
    from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP
    from scapy.layers.inet6 import (
        ICMPv6EchoRequest,
        IPv6,
        IPv6ExtHdrDestOpt,
        IPv6ExtHdrFragment,
        IPv6ExtHdrHopByHop,
        IPv6ExtHdrRouting,
    )
    from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
    from scapy.packet import Raw

    l2 = Ether(src=f"02:00:00:00:00:{rng.randrange(256):02x}", dst=f"02:00:00:00:01:{rng.randrange(256):02x}")
    tags = rng.choice((0, 0, 0, 1, 1, 2))
    if tags == 2:
        l2 = l2 / Dot1AD(vlan=rng.choice((100, 200, rng.randrange(4096)))) / Dot1Q(vlan=rng.randrange(4096))
    elif tags == 1:
        l2 = l2 / Dot1Q(vlan=rng.choice((100, 101, rng.randrange(4096))))
    kind = rng.random()
    payload = Raw(bytes(rng.randrange(256) for _ in range(rng.choice((0, 4, 18, 64, 300)))))
    if kind < 0.05:
        return bytes(l2 / ARP(psrc=_addr4(rng), pdst=_addr4(rng)))
    if kind < 0.1:  # NSH (ver 0, TTL 63, 2 words, MD type 2, next: Ethernet) around a frame
        spi_si = (rng.randrange(1 << 24) << 8) | rng.randrange(256)
        nsh = struct.pack("!HBBI", (63 << 6) | 2, 2, 3, spi_si)
        outer = Ether(src=l2.src, dst=l2.dst, type=0x894F)
        return bytes(outer) + nsh + bytes(Ether() / IP(src=_addr4(rng), dst=_addr4(rng)) / UDP())
    l4_choice = rng.random()
    if l4_choice < 0.4:
        l4 = UDP(sport=rng.randrange(1024, 65536), dport=rng.choice(PORTS)) / payload
    elif l4_choice < 0.75:
        l4 = TCP(sport=rng.randrange(1024, 65536), dport=rng.choice(PORTS),
                 flags=rng.choice(("S", "SA", "A", "FA", "R")),
                 options=rng.choice(([], [("MSS", 1460)], [("NOP", None), ("WScale", 7)]))) / payload
    elif l4_choice < 0.9:
        l4 = ICMP(type=rng.choice((0, 8, 3, 11))) / payload
    else:
        l4 = payload  # an odd protocol number below
    if rng.random() < 0.7:
        ip = IP(src=_addr4(rng), dst=_addr4(rng), ttl=rng.choice((0, 1, 2, 64, 255)),
                options=[IPOption_NOP()] * rng.choice((0, 0, 4)))
        if rng.random() < 0.1:
            ip.flags, ip.frag = rng.choice((("MF", 0), ("MF", 10), (0, 20)))
        if l4 is payload:
            ip.proto = rng.choice((47, 50, 132, 253))
        return bytes(l2 / ip / l4)
    ip6 = IPv6(src=f"2001:db8::{rng.randrange(65536):x}", dst=f"2001:db8:1::{rng.randrange(65536):x}")
    for _ in range(rng.choice((0, 0, 1, 2, 3))):
        ip6 = ip6 / rng.choice((IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt(), IPv6ExtHdrRouting(),
                                IPv6ExtHdrFragment(m=rng.choice((0, 1)), offset=rng.choice((0, 0, 5)))))
    if isinstance(l4, ICMP):
        l4 = ICMPv6EchoRequest() / payload
    return bytes(l2 / ip6 / l4)


def _mutate(rng: random.Random, pkt: bytes) -> bytes:
    """Truncate, flip bytes, or corrupt a length field; never below 14 bytes (the kernel's
    test-run, like a NIC, does not deliver shorter frames)."""
    data = bytearray(pkt)
    choice = rng.random()
    if choice < 0.35:
        return bytes(data[:rng.randrange(14, max(15, len(data)))])
    if choice < 0.7:
        for _ in range(rng.randrange(1, 4)):
            i = rng.randrange(12, len(data)) if len(data) > 12 else 0
            data[i] = rng.randrange(256)
        return bytes(data)
    # Corrupt the byte where an IPv4 IHL / total length or a TCP data offset usually sits.
    for off in (14, 16, 18, 46, 50):
        if off < len(data) and rng.random() < 0.5:
            data[off] = rng.randrange(256)
    return bytes(data)


def fuzz_packets(n: int, seed: int, templates: list[bytes] | None = None) -> Iterator[bytes]:
    """``n`` packets: about a third as generated, the rest mutated. With ``templates`` (a
    VNF's own packet shapes, e.g. GTP-U), half of the packets start from one of them."""
    rng = random.Random(seed)
    for _ in range(n):
        pkt = rng.choice(templates) if templates and rng.random() < 0.5 else _base_packet(rng)
        yield pkt if rng.random() < 0.35 else _mutate(rng, pkt)


def fuzz(executors: list[Executor], n: int, seed: int, desc: Descriptor, setup: dict[str, Any],
         pcap: Path | None = None) -> Report:
    """Run ``n`` generated packets through every executor; any disagreement is a failure
    (and its packets are written to ``pcap``). Tables and counters are compared at the end.

    ``setup`` is the VNF's FUZZ dict: ``tables`` and ``config`` to set up first, ``templates``
    (packets the fuzzer starts from half of the time), ``start_ns``/``step_ns`` for the clock."""
    prepare(executors, desc, setup.get("config", {}), setup.get("tables", {}), "FUZZ setup")
    report = Report()
    templates = [bytes(t) for t in setup.get("templates", [])]
    for i, pkt in enumerate(fuzz_packets(n, seed, templates)):
        for ex in executors:
            ex.set_clock(setup.get("start_ns", 1_000_000_000) + i * setup.get("step_ns", CLOCK_STEP))
        results = run_one(executors, pkt)
        report.ran += 1
        if not _same(results):
            report.failures.append(Failure(f"fuzz #{i} (seed {seed})", pkt, "the executors disagree", results))
            if len(report.failures) >= 10:
                break
    state = compare_state(executors)
    if state:
        report.failures.append(Failure(f"fuzz (seed {seed}): state after {report.ran} packets", b"", state, {}))
    if pcap and any(f.packet for f in report.failures):
        from scapy.layers.l2 import Ether
        from scapy.utils import wrpcap

        wrpcap(str(pcap), [Ether(f.packet) for f in report.failures if f.packet])
    return report
