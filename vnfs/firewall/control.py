"""The firewall's control plane: rules and policy in, table entries and config values out.

    rs = compile_rules('''
        allow tcp from 198.18.0.0/16 to 198.18.1.0/24 port 80-443 flags S/SA
        deny udp from any to any port 9
    ''')
    for w in rs.warnings: print(w)             # shadowed rules, conflicting overlaps
    apply(instance.tables, rs)                 # any executor's tables, or a KernelInstance's
    instance.configure(policy_config(default="deny", stateful=True))
    print(hit_report(instance.tables, rs))     # per-rule packet and byte counts

Compilation (the linear bit vector search's tables, see README): every field gets a
partition of its values into classes with a bitmap of the rules each class satisfies. Rule r
is bit r; bitmaps are Python ints until they are written as ``struct fw_bitmap`` (words plus
a summary bit per non-zero word). Sizes come from the tables' dtypes, i.e. from the C.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from datapath.errors import MapError, VnfkitError
from vnfkit.pyfile import import_file

_HERE = Path(__file__).resolve().parent
# Siblings by path: a VNF folder is not a package (control.py is loaded by path, too).
rules = import_file(_HERE / "rules.py", "the firewall's rule parser", VnfkitError)
analysis = import_file(_HERE / "analysis.py", "the firewall's rule analysis", VnfkitError)
FirewallError = rules.FirewallError
RuleError = rules.RuleError
Rule = rules.Rule
parse_rules = rules.parse_rules
RuleWarning = analysis.RuleWarning


class ConfigError(FirewallError):
    """A policy setting (default action, fragment mode, timeout) that is not valid."""


class CapacityError(FirewallError):
    """More rules, prefixes or port intervals than the tables hold."""


KEY_BITS = 160  # struct fw_lpm_key: family (8) + padding (24) + address (128)
FLAG_SLOTS = 258  # 256 flag bytes, FW_FLAGS_NONE, FW_FLAGS_FRAG
FLAGS_NONE, FLAGS_FRAG = 256, 257
WILD_SPORT, WILD_DPORT = 1, 2  # enum fw_wild
TABLES = ("src_rules", "dst_rules", "proto_rules", "flag_rules", "port_index", "port_rules", "ruleset",
          "rule_hits", "conns")


# ---- the tables' shapes -------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """The C's sizes, read from the tables' dtypes (BTF): bitmap words, port bounds, capacities."""

    bitmap: np.dtype
    ports: np.dtype
    ruleset: np.dtype
    max_prefixes: int
    max_bitmaps: int

    @property
    def words(self) -> int:
        return self.bitmap["w"].shape[0]

    @property
    def sum_words(self) -> int:
        return self.bitmap["sum"].shape[0]

    @property
    def max_rules(self) -> int:
        return self.words * 64

    @property
    def bounds(self) -> int:
        return self.ports["lo"].shape[0]

    @classmethod
    def of(cls, tables: Mapping[str, Any]) -> Layout:
        """From a VNF's tables (``Table``s, or ``TableInfo``s from ``vnfkit.introspect``)."""
        missing = [t for t in TABLES if t not in tables]
        if missing:
            raise FirewallError(f"not the firewall's tables: no {', '.join(missing)} (got {', '.join(tables)})")
        return cls(bitmap=tables["src_rules"].value_dtype, ports=tables["port_index"].value_dtype,
                   ruleset=tables["ruleset"].value_dtype, max_prefixes=int(tables["src_rules"].max_entries),
                   max_bitmaps=int(tables["port_rules"].max_entries))

    @classmethod
    def of_folder(cls, folder: str | Path = _HERE) -> Layout:
        """From the VNF's compiled C (cached), without loading anything into the kernel."""
        from vnfkit.introspect import introspect

        return cls.of(introspect(Path(folder)).tables)


# ---- compilation --------------------------------------------------------------------------------
@dataclass
class PortField:
    """One port field's elementary intervals: interval k is [starts[k], starts[k + 1])."""

    starts: list[int]
    bitmaps: list[int]
    none: int   # packets without ports: rules that do not constrain this field
    frag: int   # later fragments: those, plus allow rules that do


@dataclass
class Ruleset:
    """Compiled rules: per-field bitmaps (ints, bit r = rule r) and the analysis' warnings."""

    rules: list[Any]
    src: dict[tuple[int, int], int]     # LPM key (prefix length, value) -> rules containing it
    dst: dict[tuple[int, int], int]
    protos: list[int]                   # 256
    flags: list[int]                    # FLAG_SLOTS
    ports: tuple[PortField, PortField]  # source, destination
    allow: int
    wild: int = 0  # enum fw_wild: port fields no rule constrains, which classification skips
    warnings: list[Any] = field(default_factory=list)  # RuleWarning


def _lpm_keys(rule: Any, nets: tuple[Any, ...] | None) -> list[tuple[int, int]]:
    """A rule's address side as LPM keys (prefix length, the prefix's bits as an int)."""
    if nets is None:
        if len(rule.families) == 2:
            return [(0, 0)]
        return [(8, f) for f in sorted(rule.families)]
    out = []
    for n in nets:
        bits = 32 if n.version == 4 else 128
        plen = 32 + n.prefixlen
        out.append((plen, (n.version << (24 + n.prefixlen)) | (int(n.network_address) >> (bits - n.prefixlen))))
    return out


def _lpm_bitmaps(own: dict[tuple[int, int], int]) -> dict[tuple[int, int], int]:
    """For every key, the rules whose key contains it: the longest match then says it all."""
    lengths = sorted({plen for plen, _ in own})
    out = {}
    for plen, value in own:
        bits = 0
        for length in lengths:
            if length > plen:
                break
            bits |= own.get((length, value >> (plen - length)), 0)
        out[(plen, value)] = bits
    return out


def _port_field(rule_list: list[Any], attr: str, allow: int) -> PortField:
    wild = constrained = 0
    toggles: dict[int, int] = {}
    for r in rule_list:
        ranges = getattr(r, attr)
        if ranges is None:
            wild |= 1 << r.index
            continue
        constrained |= 1 << r.index
        for lo, hi in ranges:  # merged: disjoint and not adjacent, so toggling is exact
            toggles[lo] = toggles.get(lo, 0) ^ (1 << r.index)
            if hi < 65535:
                toggles[hi + 1] = toggles.get(hi + 1, 0) ^ (1 << r.index)
    starts = sorted({0, *toggles})
    bitmaps, cur = [], 0
    for s in starts:
        cur ^= toggles.get(s, 0)
        bitmaps.append(wild | cur)
    return PortField(starts, bitmaps, none=wild, frag=wild | (constrained & allow))


def compile_rules(rule_input: str | Iterable[Any], *, analyse: bool = True) -> Ruleset:
    """Parse (unless given ``Rule``s) and compile; with ``analyse``, find shadowed and
    conflicting rules (``Ruleset.warnings``). Raises RuleError naming the first bad rule."""
    rule_list = list(rule_input) if not isinstance(rule_input, str) else []
    if isinstance(rule_input, str) or not all(isinstance(r, Rule) for r in rule_list):
        rule_list = parse_rules(rule_input if isinstance(rule_input, str) else rule_list)
    for position, r in enumerate(rule_list):
        if r.index != position:  # bit r.index is rule r.index: numbers must be the positions
            raise FirewallError(f"{r.where()} is at position {position}: parse the rules together "
                                "(parse_rules) so their numbers are their positions")
    own_src: dict[tuple[int, int], int] = {}
    own_dst: dict[tuple[int, int], int] = {}
    protos_any = allow = 0
    protos = [0] * 256
    flag_preds: dict[tuple[int, int] | None, int] = {}
    keys = []
    for r in rule_list:
        bit = 1 << r.index
        keys.append((_lpm_keys(r, r.src), _lpm_keys(r, r.dst)))
        for own, rule_keys in ((own_src, keys[-1][0]), (own_dst, keys[-1][1])):
            for key in rule_keys:
                own[key] = own.get(key, 0) | bit
        if r.protos is None:
            protos_any |= bit
        else:
            for p in r.protos:
                protos[p] |= bit
        flag_preds[r.flags] = flag_preds.get(r.flags, 0) | bit
        if r.allow:
            allow |= bit
    flags = []
    for slot in range(FLAG_SLOTS):
        bits = flag_preds.get(None, 0)  # rules without flags are in every slot
        for pred, pred_bits in flag_preds.items():
            if pred is None:
                continue
            if slot < 256 and (slot & pred[1]) == pred[0]:
                bits |= pred_bits
            elif slot == FLAGS_FRAG:
                bits |= pred_bits & allow  # later fragments: allow rules judged on L3
        flags.append(bits)
    wild = sum(bit for bit, unused in ((WILD_SPORT, all(r.sport is None for r in rule_list)),
                                       (WILD_DPORT, all(r.dport is None for r in rule_list))) if unused)
    rs = Ruleset(rule_list, _lpm_bitmaps(own_src), _lpm_bitmaps(own_dst), [b | protos_any for b in protos], flags,
                 (_port_field(rule_list, "sport", allow), _port_field(rule_list, "dport", allow)), allow, wild)
    if analyse:
        rs.warnings = analysis.analyse(rs, own_src, own_dst, keys)
    return rs


# ---- encoding for the tables --------------------------------------------------------------------
def lpm_key_bytes(key: tuple[int, int]) -> bytes:
    """struct fw_lpm_key for (prefix length, prefix bits)."""
    plen, value = key
    return struct.pack("<I", plen) + (value << (KEY_BITS - plen)).to_bytes(KEY_BITS // 8, "big")


def bitmap_records(bitmaps: list[int], layout: Layout) -> np.ndarray:
    """``struct fw_bitmap`` records: the words, and the summary bit of every non-zero word."""
    words = layout.words
    out = np.zeros(len(bitmaps), dtype=layout.bitmap)
    if not bitmaps:
        return out
    raw = b"".join(b.to_bytes(words * 8, "little") for b in bitmaps)
    w = np.frombuffer(raw, dtype="<u8").reshape(len(bitmaps), words)
    nonzero = np.zeros((len(bitmaps), layout.sum_words * 64), dtype=bool)
    nonzero[:, :words] = w != 0
    out["w"] = w
    out["sum"] = np.packbits(nonzero, axis=1, bitorder="little").view("<u8")
    return out


def _check_capacity(rs: Ruleset, layout: Layout) -> None:
    if len(rs.rules) > layout.max_rules:
        raise CapacityError(f"{len(rs.rules)} rules; the firewall holds {layout.max_rules}")
    for side, keys in (("source", rs.src), ("destination", rs.dst)):
        if len(keys) > layout.max_prefixes:
            raise CapacityError(f"{len(keys)} distinct {side} prefixes; the trie holds {layout.max_prefixes}")
    for name, pf in zip(("source", "destination"), rs.ports, strict=True):
        if len(pf.starts) > layout.bounds:
            raise CapacityError(f"{len(pf.starts)} {name} port intervals; the index holds {layout.bounds}")


def table_entries(rs: Ruleset, layout: Layout, *, sparse: bool = False) -> dict[str, dict[Any, Any]]:
    """Every table's entries as {key: value} (keys and values as the tables take them).

    ``sparse`` leaves out all-zero array entries: enough for tables that were just reset
    (packet tests), not for overwriting a rule set (``apply`` writes arrays whole)."""
    _check_capacity(rs, layout)
    ids: dict[int, int] = {}  # bitmap -> 1-based id; the empty bitmap is 0, which has no entry

    def bitmap_id(bits: int) -> int:
        return ids.setdefault(bits, len(ids) + 1) if bits else 0

    index = np.zeros(2, dtype=layout.ports)
    for k, pf in enumerate(rs.ports):
        index[k]["n"] = len(pf.starts)
        index[k]["none_bm"], index[k]["frag_bm"] = bitmap_id(pf.none), bitmap_id(pf.frag)
        index[k]["lo"][:len(pf.starts)] = pf.starts
        index[k]["bm"][:len(pf.starts)] = [bitmap_id(b) for b in pf.bitmaps]
    if len(ids) > layout.max_bitmaps:
        raise CapacityError(f"{len(ids)} distinct port bitmaps; port_rules holds {layout.max_bitmaps}")
    ruleset = np.zeros((), dtype=layout.ruleset)
    ruleset["count"] = len(rs.rules)
    ruleset["wild"] = rs.wild
    ruleset["allow"] = np.frombuffer(rs.allow.to_bytes(layout.words * 8, "little"), dtype="<u8")

    out: dict[str, dict[Any, Any]] = {}
    for name, keys in (("src_rules", rs.src), ("dst_rules", rs.dst)):
        records = bitmap_records(list(keys.values()), layout)
        out[name] = {lpm_key_bytes(k): records[i] for i, k in enumerate(keys)}
    for name, bitmaps in (("proto_rules", rs.protos), ("flag_rules", rs.flags)):
        records = bitmap_records(bitmaps, layout)
        out[name] = {i: records[i] for i, b in enumerate(bitmaps) if b or not sparse}
    records = bitmap_records(list(ids), layout)
    out["port_rules"] = {ident: records[i] for i, ident in enumerate(ids.values())}
    out["port_index"] = {k: index[k] for k in range(2)}
    out["ruleset"] = {0: ruleset}
    return out


# ---- writing a rule set -------------------------------------------------------------------------
def _write(table: Any, entries: dict[Any, Any]) -> None:
    if not entries:
        return
    keys = list(entries)
    try:  # one syscall in the kernel where the map type has batch updates
        packed = np.frombuffer(b"".join(table.pack_key(k) for k in keys), dtype=table.key_dtype)
        values = np.array([np.asarray(v).tobytes() for v in entries.values()], dtype=f"V{table.value_size}")
        table.update_batch(packed, values.view(table.value_dtype))
    except MapError:  # e.g. LPM tries, which have no batch updates: one entry at a time
        for k, v in entries.items():
            table[k] = v


def apply(tables: Mapping[str, Any], rs: Ruleset, *, reset_hits: bool = True, flush_state: bool = False) -> None:
    """Write a compiled rule set into a firewall's tables (an executor's, or a
    ``KernelInstance``'s), replacing the previous one: stale prefixes and bitmaps are deleted.

    Hit counters are zeroed (rule numbers change meaning) unless ``reset_hits`` is False;
    tracked flows stay unless ``flush_state``. Not atomic: packets judged during an apply may
    see parts of both rule sets (see README, limits)."""
    layout = Layout.of(tables)
    entries = table_entries(rs, layout)
    # Bitmaps before the index that names them, tries before the arrays: a packet during the
    # update finds fewer dangling references.
    for name in ("port_rules", "src_rules", "dst_rules", "proto_rules", "flag_rules", "port_index", "ruleset"):
        table = tables[name]
        _write(table, entries[name])
        if name in ("port_rules", "src_rules", "dst_rules"):
            keep = {table.pack_key(k) for k in entries[name]}
            for raw in [k for k in table.raw_keys() if k not in keep]:
                table.delete(raw)
    if reset_hits:
        tables["rule_hits"].clear()
    if flush_state:
        tables["conns"].clear()


# ---- policy (config values) ---------------------------------------------------------------------
FRAG_MODES = {"match": 0, "drop": 1, "pass": 2}
TIMEOUTS = ("tcp_timeout", "tcp_closing_timeout", "udp_timeout", "other_timeout")


def policy_config(default: str = "deny", *, stateful: bool = False, fragments: str = "match",
                  non_ip: str = "pass", **timeouts: int) -> dict[str, Any]:
    """The config values for a policy, checked: ``default`` allow|deny, ``fragments``
    match|drop|pass (later fragments), ``non_ip`` pass|drop, timeouts in seconds."""
    if default not in ("allow", "deny"):
        raise ConfigError(f"default policy must be 'allow' or 'deny', not {default!r}")
    if fragments not in FRAG_MODES:
        raise ConfigError(f"fragments must be one of {', '.join(FRAG_MODES)}, not {fragments!r}")
    if non_ip not in ("pass", "drop"):
        raise ConfigError(f"non_ip must be 'pass' or 'drop', not {non_ip!r}")
    out: dict[str, Any] = {"default_allow": default == "allow", "stateful": bool(stateful),
                           "frag_mode": FRAG_MODES[fragments], "non_ip_drop": non_ip == "drop"}
    for name, seconds in timeouts.items():
        if name not in TIMEOUTS:
            raise ConfigError(f"unknown timeout {name!r} (timeouts: {', '.join(TIMEOUTS)})")
        if not isinstance(seconds, int) or isinstance(seconds, bool) or not 1 <= seconds < 1 << 32:
            raise ConfigError(f"{name} must be a whole number of seconds from 1 to {(1 << 32) - 1}, not {seconds!r}")
        out[name] = seconds
    return out


# ---- reading back -------------------------------------------------------------------------------
def rule_hits(tables: Mapping[str, Any], count: int | None = None) -> np.ndarray:
    """Packets and bytes per rule (summed over CPUs): a structured array indexed by rule number."""
    hits = tables["rule_hits"].as_array()
    return hits[:count] if count is not None else hits


def hit_report(tables: Mapping[str, Any], rs: Ruleset) -> str:
    """One line per rule: number, packets, bytes, text."""
    hits = rule_hits(tables, len(rs.rules))
    lines = [f"{'rule':>5} {'packets':>12} {'bytes':>14}  text"]
    for r in rs.rules:
        lines.append(f"{r.index:>5} {int(hits[r.index]['packets']):>12,} {int(hits[r.index]['bytes']):>14,}  {r.text}")
    return "\n".join(lines)


def conn_key(src: str, dst: str, proto: int, sport: int = 0, dport: int = 0) -> bytes:
    """``struct fw_conn_key`` of a flow (addresses as text; for ICMP echo, both ports are the
    identifier): e.g. to look a flow up, or to put one in a packet test's ``conns``."""
    import ipaddress

    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version != d.version:
        raise FirewallError(f"flow {src} -> {dst}: the addresses are of different families")
    return (bytes((s.version, proto)) + struct.pack("!HH", sport, dport) + b"\0\0"
            + s.packed.ljust(16, b"\0") + d.packed.ljust(16, b"\0"))


def connections(tables: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The flow table, decoded: src, dst, proto, sport, dport, last_seen (ns), rule, state."""
    import ipaddress

    out = []
    for key, value in tables["conns"].items():
        raw = bytes(key)
        family, proto = raw[0], raw[1]
        sport, dport = struct.unpack("!HH", raw[2:6])
        size = 4 if family == 4 else 16
        rule = int(value["rule"])
        out.append({"src": str(ipaddress.ip_address(raw[8:8 + size])),
                    "dst": str(ipaddress.ip_address(raw[24:24 + size])), "proto": proto, "sport": sport,
                    "dport": dport, "last_seen": int(value["last_seen"]), "rule": None if rule == 0xFFFFFFFF else rule,
                    "state": "closing" if int(value["state"]) else "open"})
    return out


# ---- the uniform entry point (vnfkit.control) -----------------------------------------------------
def configure(spec: Mapping[str, Any], tables: Mapping[str, Any], state: Any = None) -> tuple[dict[str, Any], Any]:
    """A service's ``control:`` for a firewall: ``{"rules": "allow tcp ...\\n deny ...", "default":
    "allow"|"deny", "stateful": bool, ...policy_config's other keywords}``. Writes the rules
    into ``tables``; returns the config values and the compiled rule set."""
    known = ("rules", "default", "stateful", "fragments", "non_ip", *TIMEOUTS)
    unknown = sorted(set(spec) - set(known))
    if unknown:
        raise ConfigError(f"unknown setting(s) {unknown} (known: {', '.join(known)})")
    text = spec.get("rules", "")
    rs = compile_rules("\n".join(text) if isinstance(text, list) else str(text))
    policy = policy_config(**{k: v for k, v in spec.items() if k != "rules"})
    apply(tables, rs)
    return policy, rs
