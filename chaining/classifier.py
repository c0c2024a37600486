"""The classifier's rule set (``progs/classifier.c``): the rules, their scan order, their
encoding, the atomic swap, and per-rule counters.

A :class:`Rule` is a service descriptor's :class:`~chaining.service.Match` plus what placement
adds: the ingress interface (``ifindex``, 0 for any) and the path's start (SPI, TTL). The
kernel scans rules in order and the first match wins, so :func:`order` puts them most
specific first: by the number of packet headers a rule can match, which is strictly smaller
for a rule strictly inside another (a linear extension of "strictly inside"). That order is
right only if rules for different starts that overlap are nested, which :func:`order`
checks, as the service loader does (``chaining.service.conflict``), the interface included.

Swaps are atomic for packets: the kernel has two banks, each a whole rule set in one map
value, and ``cls_active``, an array of maps whose one slot points at the bank in use.
:meth:`RuleBanks.install` writes the bank no packet reads, then repoints the slot. That
update returns only after every program that could still hold the old pointer has finished
(the kernel waits for an RCU grace period on map-in-map updates from user space), so the
next install may rewrite the old bank, and a rule's counter is final once it is gone.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from chaining.errors import ChainError
from chaining.nsh import DEFAULT_TTL, MAX_TTL
from chaining.service import PORT_PROTOCOLS, Match, relation
from datapath.maps import Map
from datapath.objects import BpfObject

MAX_RULES = 256              # CLS_MAX_RULES in classifier.c
STATS_SLOTS = 2 * MAX_RULES  # cls_rule_stats: the installed set and the one replacing it
MAX_SPI = (1 << 24) - 1
# classifier.c's encodings of "no VLAN tag" and "the packet has ports" in its packet keys.
UNTAGGED, HAS_PORTS = 0x1000, 0x10000
ANY_PORT_SPAN = 0x1FFFF  # with lo 0: every port key, "no ports" included
BANKS = ("cls_bank0", "cls_bank1")
# Sizes of each field's set of values, for the scan order (see _size). "Any" is one more than
# the widest value a rule can give: no ports also matches packets without ports, no VLAN
# also untagged frames.
_ANY_PORTS, _ANY_PROTO, _ANY_VLAN, _ANY_IFINDEX = 65536 + 1, 256, 4096 + 1, 1 << 32


@dataclass(frozen=True)
class Rule:
    """Traffic matching ``match`` that arrives on ``ifindex`` (0: any interface; see
    ``datapath.netns.ifindex``) starts on path ``spi`` with ``ttl`` forwarder visits left."""

    match: Match
    spi: int
    ttl: int = DEFAULT_TTL
    ifindex: int = 0

    def __str__(self) -> str:
        m = self.match
        parts = [f"{f} {_show(getattr(m, f))}" for f in ("src", "dst", "proto", "sport", "dport", "vlan")
                 if getattr(m, f) is not None]
        if self.ifindex:
            parts.append(f"ifindex {self.ifindex}")
        return f"{' '.join(parts) or 'any'} -> SPI {self.spi} (ttl {self.ttl})"


@dataclass(frozen=True)
class RuleStats:
    """Packets and bytes a rule started on its path, summed over CPUs, since it was installed."""

    rule: Rule
    packets: int
    bytes: int


def _show(value: object) -> str:
    if isinstance(value, tuple):
        return str(value[0]) if value[0] == value[1] else f"{value[0]}-{value[1]}"
    return str(value)


def _ipv4(rule_no: int, what: str, text: str | None) -> ipaddress.IPv4Network | None:
    if text is None:
        return None
    try:
        net = ipaddress.ip_network(text, strict=True)
    except (ValueError, TypeError) as exc:
        raise ChainError(f"rule {rule_no}: {what} {text!r} is not a prefix such as '10.0.0.0/8': {exc}") from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise ChainError(f"rule {rule_no}: {what} {text!r} is IPv6; the classifier matches IPv4 only")
    return net


def _check(rule_no: int, rule: Rule) -> None:
    """Refuse a rule whose fields the kernel cannot hold, naming the rule and the field."""
    if not isinstance(rule, Rule) or not isinstance(rule.match, Match):
        raise ChainError(f"rule {rule_no}: {rule!r} is not a Rule(Match(...), spi, ...)")
    m = rule.match
    bad: list[str] = []

    def whole(value: object, lo: int, hi: int) -> bool:
        return isinstance(value, int | np.integer) and not isinstance(value, bool) and lo <= value <= hi

    _ipv4(rule_no, "src", m.src)
    _ipv4(rule_no, "dst", m.dst)
    if m.proto is not None and not whole(m.proto, 0, 255):
        bad.append(f"proto {m.proto!r} is not an IP protocol number 0 .. 255")
    for name in ("sport", "dport"):
        ports = getattr(m, name)
        if ports is None:
            continue
        if not (isinstance(ports, tuple) and len(ports) == 2 and all(whole(p, 0, 65535) for p in ports)
                and ports[0] <= ports[1]):
            bad.append(f"{name} {ports!r} is not a port range (lo, hi) with 0 <= lo <= hi <= 65535")
        elif m.proto is not None and m.proto not in PORT_PROTOCOLS:
            bad.append(f"{name} with proto {m.proto}: only tcp (6), udp (17) and sctp (132) have ports")
    if m.vlan is not None and not whole(m.vlan, 0, 4095):
        bad.append(f"vlan {m.vlan!r} is not a VLAN id 0 .. 4095")
    if not whole(rule.ifindex, 0, (1 << 32) - 1):
        bad.append(f"ifindex {rule.ifindex!r} is not an interface index (0: any)")
    if not whole(rule.spi, 1, MAX_SPI):
        bad.append(f"SPI {rule.spi!r} out of range (1 .. {MAX_SPI})")
    if not whole(rule.ttl, 1, MAX_TTL):
        bad.append(f"ttl {rule.ttl!r} out of range (1 .. {MAX_TTL}, NSH's 6 bits)")
    if bad:
        raise ChainError(f"rule {rule_no} ({rule.match}): " + "; ".join(bad))


def _kernel_match(m: Match) -> Match:
    """The match as the kernel sees it: an IPv4 /0 is any address."""
    return dataclasses.replace(m, dst=None if m.dst == "0.0.0.0/0" else m.dst,
                               src=None if m.src == "0.0.0.0/0" else m.src)


def _relation(a: Rule, b: Rule) -> str:
    return relation(_kernel_match(a.match), _kernel_match(b.match), [(a.ifindex or None, b.ifindex or None)])


def _size(rule: Rule) -> int:
    """How many (src, dst, proto, sport, dport, vlan, ifindex) values the rule matches, each
    "any" counted one above the field's widest value. A rule strictly inside another is
    smaller in one factor and no larger in any, so smaller overall: sorting by size puts
    every rule before the rules that contain it."""
    m = _kernel_match(rule.match)
    size = 1
    for prefix in (m.src, m.dst):
        size *= 1 << (32 - (ipaddress.ip_network(prefix).prefixlen if prefix else 0))
    size *= 1 if m.proto is not None else _ANY_PROTO
    for ports in (m.sport, m.dport):
        size *= ports[1] - ports[0] + 1 if ports else _ANY_PORTS
    size *= 1 if m.vlan is not None else _ANY_VLAN
    size *= 1 if rule.ifindex else _ANY_IFINDEX
    return size


def order(rules: Sequence[Rule]) -> list[Rule]:
    """``rules`` checked, without repeats, in the order the kernel scans them (most specific
    first). Raises ChainError for a bad field, too many rules, or two rules with different
    starts (SPI, TTL) that a packet can match both of with neither the more specific."""
    unique: dict[Rule, int] = {}
    for i, rule in enumerate(rules):
        _check(i, rule)
        unique.setdefault(rule, i)
    if len(unique) > MAX_RULES:
        raise ChainError(f"{len(unique)} rules; the classifier holds at most {MAX_RULES}")
    items = list(unique.items())
    for x, (a, i) in enumerate(items):
        for b, j in items[x + 1:]:
            if (a.spi, a.ttl) != (b.spi, b.ttl) and _relation(a, b) in ("eq", "overlap"):
                raise ChainError(f"rules {i} ({a}) and {j} ({b}) overlap: a packet can match both and neither "
                                 "is more specific, so which path it takes would depend on rule order")
    return [rule for rule, _ in sorted(items, key=lambda item: (_size(item[0]), item[1]))]


def _be32(net: ipaddress.IPv4Network | None) -> tuple[int, int]:
    """(address, mask) as u32s whose bytes in memory are in network order."""
    if net is None:
        return 0, 0
    return (int.from_bytes(net.network_address.packed, sys.byteorder),
            int.from_bytes(net.netmask.packed, sys.byteorder))


def encode(rules: Sequence[Rule], first_si: Mapping[int, int], slots: Sequence[int], dtype: np.dtype) -> np.ndarray:
    """``struct cls_bank`` holding ``rules`` (checked and ordered) in that order; rule ``i``
    counts into ``slots[i]`` and starts at SI ``first_si[spi]``."""
    bank = np.zeros((), dtype=dtype)
    bank["count"] = len(rules)
    for i, (rule, slot) in enumerate(zip(rules, slots, strict=True)):
        m = rule.match
        r, action = bank["rules"][i], bank["actions"][i]
        r["saddr"], r["smask"] = _be32(_ipv4(i, "src", m.src))
        r["daddr"], r["dmask"] = _be32(_ipv4(i, "dst", m.dst))
        misc = mask = 0
        if rule.ifindex:
            misc, mask = misc | rule.ifindex << 32, mask | 0xFFFFFFFF << 32
        if m.vlan is not None:
            misc, mask = misc | m.vlan << 8, mask | (UNTAGGED | 0xFFF) << 8  # an untagged frame differs
        if m.proto is not None:
            misc, mask = misc | m.proto, mask | 0xFF
        r["misc"], r["misc_mask"] = misc, mask
        for name, ports in (("sport", m.sport), ("dport", m.dport)):
            lo, span = (HAS_PORTS | ports[0], ports[1] - ports[0]) if ports else (0, ANY_PORT_SPAN)
            r[f"{name}_lo"], r[f"{name}_span"] = lo, span
        action["path"]["spi_si"] = (rule.spi << 8) | first_si[rule.spi]
        action["path"]["ttl"] = rule.ttl
        action["stats"] = slot
    return bank


def flow_key(src: str, dst: str, proto: int, sport: int = 0, dport: int = 0) -> bytes:
    """chain.h's ``struct flow_key`` for a 5-tuple (ports 0 for protocols without them): the
    key of ``rev_flows``, whose value is ``{"spi_si": ..., "ttl": ...}``."""
    return (ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed
            + sport.to_bytes(2, "big") + dport.to_bytes(2, "big") + bytes([proto, 0, 0, 0]))


class RuleBanks:
    """The classifier's two rule banks, the switch between them and the per-rule counters."""

    def __init__(self, obj: BpfObject) -> None:
        self._banks: list[Map] = [obj.map(name) for name in BANKS]
        self._switch = obj.map("cls_active")
        self._stats = obj.map("cls_rule_stats")
        # classifier.c starts with cls_active[0] = cls_bank0; a classifier adopted from pins may
        # be on either bank (a lookup of an array of maps gives the inner map's id).
        raw = self._switch._raw_lookup(np.uint32(0).tobytes())
        active_id = int.from_bytes(raw, "little") if raw else self._banks[0].id
        self._active = next((i for i, b in enumerate(self._banks) if b.id == active_id), 0)
        self.rules: list[Rule] = []  # installed, in scan order
        self._slots: dict[Rule, int] = {}

    def install(self, rules: Sequence[Rule], first_si: Mapping[int, int]) -> list[Rule]:
        """Replace the rule set with ``rules``; returns them in scan order. ``first_si`` maps
        every installed SPI to the SI of its first hop on this host. A rule kept from the
        current set keeps its counter; a new one starts at 0."""
        ordered = order(rules)
        missing = sorted({r.spi for r in ordered if r.spi not in first_si})
        if missing:
            which = ", ".join(str(i) for i, r in enumerate(rules) if r.spi in missing)
            raise ChainError(f"no path {', '.join(map(str, missing))} (rules given: {which}; installed paths: "
                             f"{sorted(first_si)})")
        free = iter(sorted(set(range(STATS_SLOTS)) - set(self._slots.values())))
        slots = {rule: self._slots[rule] if rule in self._slots else next(free) for rule in ordered}
        fresh = [slot for rule, slot in slots.items() if rule not in self._slots]
        if fresh:
            zero = np.zeros(len(fresh), dtype=self._stats.value_dtype)
            self._stats.update_batch(np.array(fresh, dtype=np.uint32), zero)
        spare = 1 - self._active
        bank = self._banks[spare]
        bank[0] = encode(ordered, first_si, [slots[r] for r in ordered], bank.value_dtype)
        # The flip: one pointer exchange, returning once no program still reads the old bank.
        self._switch.update(np.uint32(0).tobytes(), np.uint32(bank.fd).tobytes())
        self._active, self.rules, self._slots = spare, ordered, slots
        return list(ordered)

    def stats(self) -> list[RuleStats]:
        """Per installed rule, in scan order, what it matched (summed over CPUs)."""
        counts = self._stats.as_array()
        return [RuleStats(rule, int(counts[slot]["packets"]), int(counts[slot]["bytes"]))
                for rule, slot in ((r, self._slots[r]) for r in self.rules)]
