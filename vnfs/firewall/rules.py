"""The firewall's rule language: text lines or dicts in, checked ``Rule`` objects out.

    RULE   := ACTION [PROTO] [from ADDRS [port PORTS]] [to ADDRS [port PORTS]] [flags FLAGS]
    ACTION := allow | deny
    PROTO  := any | tcp | udp | icmp | icmp6 | gre | esp | ah | sctp | 0-255, or a comma list
    ADDRS  := any | any4 | any6 | an address or prefix (IPv4 or IPv6), or a comma list
    PORTS  := N | N-M, or a comma list (tcp and udp only)
    FLAGS  := SET[/MASK] of F S R P A U E C: of the flags in MASK exactly SET are on
              (MASK defaults to SET: "flags S" is "SYN on", "flags S/SA" is "SYN on, ACK off")

``#`` starts a comment; blank lines are skipped. Dicts use the keys ``action``, ``proto``,
``src``, ``sport``, ``dst``, ``dport``, ``flags`` with the same values (lists allowed).
Every error names the rule: its number (0-based, the index of its hit counter), its line
for text input, and its text.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from datapath.errors import VnfkitError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

PROTOCOLS = {"icmp": 1, "tcp": 6, "udp": 17, "gre": 47, "esp": 50, "ah": 51, "icmp6": 58, "ipv6-icmp": 58,
             "sctp": 132}
PROTO_NAMES = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp6", 47: "gre", 50: "esp", 51: "ah", 132: "sctp"}
ANY_PROTO = {"any", "ip", "all"}
PORT_PROTOS = frozenset({6, 17})  # the protocols vk_parse reads ports of
FLAG_BITS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10, "U": 0x20, "E": 0x40, "C": 0x80}
FAMILIES = {"any": frozenset({4, 6}), "any4": frozenset({4}), "any6": frozenset({6})}
DICT_KEYS = ("action", "proto", "src", "sport", "dst", "dport", "flags")
KEYWORDS = ("from", "to", "port", "flags")


class FirewallError(VnfkitError):
    """Base of the firewall control plane's errors."""


class RuleError(FirewallError):
    """A rule that does not parse or could never match; the message names it."""


@dataclass(frozen=True)
class Rule:
    """One parsed rule. ``None`` in a match field means any; prefix lists are collapsed and
    port ranges merged, so equal sets compare equal."""

    index: int
    action: str                                     # "allow" or "deny"
    protos: frozenset[int] | None
    families: frozenset[int]                        # {4}, {6} or {4, 6}
    src: tuple[Network, ...] | None
    dst: tuple[Network, ...] | None
    sport: tuple[tuple[int, int], ...] | None
    dport: tuple[tuple[int, int], ...] | None
    flags: tuple[int, int] | None                   # (value, mask)
    line: int | None = None                         # text input: its line number (1-based)
    written: str = ""                               # the rule as given

    @property
    def allow(self) -> bool:
        return self.action == "allow"

    @property
    def text(self) -> str:
        """The rule in canonical form."""
        parts = [self.action, _protos_text(self.protos)]
        parts += ["from", _addrs_text(self.src, self.families)]
        if self.sport:
            parts += ["port", _ports_text(self.sport)]
        parts += ["to", _addrs_text(self.dst, self.families)]
        if self.dport:
            parts += ["port", _ports_text(self.dport)]
        if self.flags:
            parts += ["flags", flags_text(*self.flags)]
        return " ".join(parts)

    def where(self) -> str:
        """``rule 3 (line 5) 'allow tcp ...'``: how messages name a rule."""
        line = f" (line {self.line})" if self.line is not None else ""
        return f"rule {self.index}{line} '{self.written or self.text}'"


# ---- formatting -------------------------------------------------------------------------------
def _protos_text(protos: frozenset[int] | None) -> str:
    if protos is None:
        return "any"
    return ",".join(PROTO_NAMES.get(p, str(p)) for p in sorted(protos))


def _addrs_text(nets: tuple[Network, ...] | None, families: frozenset[int]) -> str:
    if nets is None:
        return {frozenset({4}): "any4", frozenset({6}): "any6"}.get(families, "any")
    return ",".join(str(n) for n in nets)


def _ports_text(ranges: tuple[tuple[int, int], ...]) -> str:
    return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ranges)


def flags_text(value: int, mask: int) -> str:
    """``S/SA`` for (SYN, SYN|ACK); ``S`` when the mask is the value."""
    def letters(bits: int) -> str:
        return "".join(c for c, b in FLAG_BITS.items() if bits & b)

    return letters(value) if value == mask else f"{letters(value)}/{letters(mask)}"


# ---- field parsers: each raises ValueError with a message for the user ----------------------
def parse_protos(text: str) -> frozenset[int] | None:
    items = [t for t in text.lower().split(",") if t]
    if not items:
        raise ValueError("empty protocol")
    if any(t in ANY_PROTO for t in items):
        if len(items) > 1:
            raise ValueError(f"'{text}': 'any' cannot be part of a list")
        return None
    out = set()
    for t in items:
        if t in PROTOCOLS:
            out.add(PROTOCOLS[t])
        elif t.isdigit() and int(t) <= 255:
            out.add(int(t))
        else:
            raise ValueError(f"unknown protocol '{t}' (known: {', '.join(PROTOCOLS)}, any, or a number 0-255)")
    return frozenset(out)


def parse_addrs(text: str) -> tuple[tuple[Network, ...] | None, frozenset[int]]:
    """(prefixes collapsed per family, or None for any; the families they cover)."""
    items = [t for t in text.split(",") if t]
    if not items:
        raise ValueError("empty address")
    if any(t.lower() in FAMILIES for t in items):
        if len(items) > 1:
            raise ValueError(f"'{text}': any/any4/any6 cannot be part of a list")
        return None, FAMILIES[items[0].lower()]
    nets: list[Network] = []
    for t in items:
        try:
            nets.append(ipaddress.ip_network(t, strict=True))
        except ValueError as exc:
            try:
                hint = f" (did you mean {ipaddress.ip_network(t, strict=False)}?)"
            except ValueError:
                hint = ""
            raise ValueError(f"bad address '{t}': {exc}{hint}") from None
    v4 = list(ipaddress.collapse_addresses(n for n in nets if n.version == 4))
    v6 = list(ipaddress.collapse_addresses(n for n in nets if n.version == 6))
    return tuple(v4 + v6), frozenset(n.version for n in nets)


def parse_ports(text: str) -> tuple[tuple[int, int], ...] | None:
    """Merged ranges, or None when they cover every port."""
    ranges = []
    for t in (t for t in text.split(",")):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", t)
        if not m:
            raise ValueError(f"bad port '{t}' (a number 0-65535 or a range like 1024-65535)")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi > 65535:
            raise ValueError(f"port {hi} is above 65535")
        if lo > hi:
            raise ValueError(f"port range '{t}' runs backwards")
        ranges.append((lo, hi))
    merged: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    if merged == [[0, 65535]]:
        return None
    return tuple((lo, hi) for lo, hi in merged)


def parse_flags(text: str) -> tuple[int, int]:
    value_text, _, mask_text = text.partition("/")
    if "/" in text and not mask_text:
        raise ValueError(f"flags '{text}': empty mask after '/'")

    def bits(s: str) -> int:
        out = 0
        for c in s.upper():
            if c not in FLAG_BITS:
                raise ValueError(f"flags '{text}': unknown flag '{c}' (flags: {''.join(FLAG_BITS)})")
            out |= FLAG_BITS[c]
        return out

    value = bits(value_text)
    mask = bits(mask_text) if "/" in text else value
    if not mask:
        raise ValueError(f"flags '{text}': no flag to test")
    if value & ~mask:
        raise ValueError(f"flags '{text}': {flags_text(value & ~mask, value & ~mask)} is set but not in the mask")
    return value, mask


# ---- whole rules ------------------------------------------------------------------------------
def _build(index: int, written: str, line: int | None, action: str, proto: str | None, src: str | None,
           sport: str | None, dst: str | None, dport: str | None, flags: str | None) -> Rule:
    """A Rule from its fields as text, checked as a whole; errors name the rule."""
    where = f"rule {index}" + (f" (line {line})" if line is not None else "") + f" '{written}'"
    try:
        if action not in ("allow", "deny"):
            raise ValueError(f"the action must be allow or deny, not '{action}'")
        protos = parse_protos(proto) if proto is not None else None
        src_nets, src_fam = parse_addrs(src) if src is not None else (None, FAMILIES["any"])
        dst_nets, dst_fam = parse_addrs(dst) if dst is not None else (None, FAMILIES["any"])
        families = src_fam & dst_fam
        if not families:
            raise ValueError(f"the source is IPv{min(src_fam)} only and the destination IPv{min(dst_fam)} "
                             "only: the rule could never match")
        for side, nets in (("source", src_nets), ("destination", dst_nets)):
            for n in nets or ():
                if n.version not in families:
                    raise ValueError(f"{side} {n} is IPv{n.version}, but the other side is "
                                     f"IPv{min(families)} only")
        if protos == frozenset({1}) and families == frozenset({6}):
            raise ValueError("icmp is IPv4's ICMP (protocol 1); IPv6 uses icmp6")
        if protos == frozenset({58}) and families == frozenset({4}):
            raise ValueError("icmp6 is IPv6's ICMP (protocol 58); IPv4 uses icmp")
        sports = parse_ports(sport) if sport is not None else None
        dports = parse_ports(dport) if dport is not None else None
        if (sport is not None or dport is not None) and (protos is None or not protos <= PORT_PROTOS):
            raise ValueError(f"ports need protocol tcp or udp (this rule's protocol is {_protos_text(protos)})")
        flag_pair = parse_flags(flags) if flags is not None else None
        if flag_pair and protos != frozenset({6}):
            raise ValueError(f"flags need protocol tcp alone (this rule's protocol is {_protos_text(protos)})")
    except ValueError as exc:
        raise RuleError(f"{where}: {exc}") from None
    return Rule(index, action, protos, families, src_nets, dst_nets, sports, dports, flag_pair, line, written)


def parse_rule(text: str, index: int = 0, line: int | None = None) -> Rule:
    """One rule in the text syntax (module docstring)."""
    written = " ".join(text.split("#", 1)[0].split())
    tokens = re.sub(r"\s*,\s*", ",", written).split()
    where = f"rule {index}" + (f" (line {line})" if line is not None else "") + f" '{written}'"
    if not tokens:
        raise RuleError(f"{where}: empty rule")
    fields: dict[str, str | None] = dict.fromkeys(("proto", "src", "sport", "dst", "dport", "flags"))
    action, pos = tokens[0].lower(), 1
    if pos < len(tokens) and tokens[pos].lower() not in KEYWORDS:
        fields["proto"], pos = tokens[pos], pos + 1
    for keyword, addr_key, port_key in (("from", "src", "sport"), ("to", "dst", "dport")):
        if pos < len(tokens) and tokens[pos].lower() == keyword:
            if pos + 1 >= len(tokens):
                raise RuleError(f"{where}: '{keyword}' needs an address, a prefix or any")
            fields[addr_key], pos = tokens[pos + 1], pos + 2
            if pos < len(tokens) and tokens[pos].lower() == "port":
                if pos + 1 >= len(tokens):
                    raise RuleError(f"{where}: 'port' needs a port, a range or a list")
                fields[port_key], pos = tokens[pos + 1], pos + 2
    if pos < len(tokens) and tokens[pos].lower() == "flags":
        if pos + 1 >= len(tokens):
            raise RuleError(f"{where}: 'flags' needs flags such as S or S/SA")
        fields["flags"], pos = tokens[pos + 1], pos + 2
    if pos < len(tokens):
        hint = " (ports follow an address: 'to any port 22')" if tokens[pos].lower() == "port" else ""
        raise RuleError(f"{where}: unexpected '{tokens[pos]}'{hint}; the order is: action, protocol, "
                        "from ADDR [port P], to ADDR [port P], flags F")
    return _build(index, written, line, action, **fields)


def rule_from_dict(entry: Mapping[str, Any], index: int = 0) -> Rule:
    """One rule as a dict: {"action": "allow", "proto": "tcp", "dst": "198.18.1.0/24", "dport": 443}."""
    written = ", ".join(f"{k}={v}" for k, v in entry.items())
    unknown = sorted(set(entry) - set(DICT_KEYS))
    if unknown:
        raise RuleError(f"rule {index} '{written}': unknown key(s) {', '.join(unknown)} "
                        f"(keys: {', '.join(DICT_KEYS)})")
    if "action" not in entry:
        raise RuleError(f"rule {index} '{written}': no action (allow or deny)")

    def text(key: str) -> str | None:
        value = entry.get(key)
        if value is None:
            return None
        if isinstance(value, list | tuple | set | frozenset):
            return ",".join(str(v) for v in value)
        return str(value).replace(" ", "")

    return _build(index, written, None, str(entry["action"]).lower(), text("proto"), text("src"), text("sport"),
                  text("dst"), text("dport"), text("flags"))


def parse_rules(rules: str | Iterable[str | Mapping[str, Any]]) -> list[Rule]:
    """Rules from text (one per line, ``#`` comments) or from a list of lines and/or dicts.
    The first bad rule raises RuleError naming it."""
    out: list[Rule] = []
    if isinstance(rules, str):
        for n, line in enumerate(rules.splitlines(), start=1):
            if line.split("#", 1)[0].strip():
                out.append(parse_rule(line, len(out), n))
        return out
    for entry in rules:
        if isinstance(entry, Mapping):
            out.append(rule_from_dict(entry, len(out)))
        elif isinstance(entry, str):
            out.append(parse_rule(entry, len(out)))
        else:
            raise RuleError(f"rule {len(out)}: {entry!r} is neither a rule text nor a dict")
    return out
