"""Rule-set analysis: rules no packet can reach, and overlaps of rules with opposite actions.

It works on the compiled classes the data path itself uses (a prefix's LPM class, a port
interval, a protocol, a flags slot), with rule sets as ints (bit r = rule r):

* rule j is *covered* by rule i when, in every field, every class j occupies also holds i.
  Then every packet j matches, i matches too: j is never reached if i comes first.
* rules i and j *overlap* when, in every field, some class holds both.

Per field, "the rules present in every class of j" is an AND and "the rules present in some
class of j" an OR over j's classes; contiguous classes (prefixes within a prefix, port
intervals within a range) come from segment trees, so 10,000 rules take about a second.
Coverage by one earlier rule is found; coverage only by several earlier rules together is not.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

KEY_BITS = 160
FLAG_SLOTS, FLAGS_NONE, FLAGS_FRAG = 258, 256, 257
ALL = -1  # every bit set: the identity of AND


@dataclass
class RuleWarning:
    """A rule never matched (``shadowed``: an earlier rule of the other action covers it;
    ``redundant``: one of the same action does), or one overlapping an earlier rule of the
    opposite action (``conflict``; ``exception`` when the earlier rule lies wholly inside
    it, the usual way to carve out an exception)."""

    kind: str
    rule: int
    other: int
    message: str

    def __str__(self) -> str:
        return self.message


class _Tree:
    """A segment tree: ``op`` over any contiguous run of leaves in O(log n) operations."""

    def __init__(self, leaves: list[int], op: Callable[[int, int], int], identity: int) -> None:
        self.n, self.op, self.identity = len(leaves), op, identity
        self.t = [identity] * self.n + list(leaves)
        for i in range(self.n - 1, 0, -1):
            self.t[i] = op(self.t[2 * i], self.t[2 * i + 1])

    def query(self, lo: int, hi: int) -> int:
        """``op`` over leaves lo .. hi - 1."""
        out = self.identity
        lo += self.n
        hi += self.n
        while lo < hi:
            if lo & 1:
                out = self.op(out, self.t[lo])
                lo += 1
            if hi & 1:
                hi -= 1
                out = self.op(out, self.t[hi])
            lo >>= 1
            hi >>= 1
        return out


def _and(a: int, b: int) -> int:
    return a & b


def _or(a: int, b: int) -> int:
    return a | b


class _Prefixes:
    """One address field: (cover, overlap) of a rule's LPM keys."""

    def __init__(self, lpm: dict[tuple[int, int], int], own: dict[tuple[int, int], int]) -> None:
        self.lpm = lpm  # key -> rules whose key contains it
        ordered = sorted(own, key=lambda k: (k[1] << (KEY_BITS - k[0]), k[0]))
        self.starts = [v << (KEY_BITS - p) for p, v in ordered]
        self.inside = _Tree([own[k] for k in ordered], _or, 0)  # rules with a key inside a range

    def classes(self, keys: list[tuple[int, int]]) -> tuple[int, int]:
        cover, overlap = ALL, 0
        for plen, value in keys:
            start = value << (KEY_BITS - plen)
            end = start + (1 << (KEY_BITS - plen))
            cover &= self.lpm[(plen, value)]
            lo, hi = bisect.bisect_left(self.starts, start), bisect.bisect_left(self.starts, end)
            overlap |= self.lpm[(plen, value)] | self.inside.query(lo, hi)
        return cover, overlap


class _Ports:
    """One port field: (cover, overlap) of a rule's ranges, memoised by (ranges, action)."""

    def __init__(self, pf: Any) -> None:
        self.pf = pf
        self.cover = _Tree(pf.bitmaps, _and, ALL)
        self.overlap = _Tree(pf.bitmaps, _or, 0)
        self.memo: dict[tuple[Any, bool], tuple[int, int]] = {}

    def classes(self, ranges: tuple[tuple[int, int], ...] | None, allow: bool) -> tuple[int, int]:
        key = (ranges, allow)
        if key not in self.memo:
            pf = self.pf
            if ranges is None:  # every interval, the portless class and the fragment class
                cover = self.cover.query(0, len(pf.starts)) & pf.none & pf.frag
                overlap = self.overlap.query(0, len(pf.starts)) | pf.none | pf.frag
            else:
                cover, overlap = ALL, 0
                for lo, hi in ranges:
                    a, b = bisect.bisect_left(pf.starts, lo), bisect.bisect_right(pf.starts, hi)
                    cover &= self.cover.query(a, b)
                    overlap |= self.overlap.query(a, b)
                if allow:  # allow rules with ports also judge later fragments
                    cover &= pf.frag
                    overlap |= pf.frag
            self.memo[key] = (cover, overlap)
        return self.memo[key]


def _slot_classes(bitmaps: list[int], slots: list[int]) -> tuple[int, int]:
    cover, overlap = ALL, 0
    for s in slots:
        cover &= bitmaps[s]
        overlap |= bitmaps[s]
    return cover, overlap


def _flag_slots(flags: tuple[int, int] | None, allow: bool) -> list[int]:
    if flags is None:
        return list(range(FLAG_SLOTS))
    value, mask = flags
    return [s for s in range(256) if s & mask == value] + ([FLAGS_FRAG] if allow else [])


def analyse(rs: Any, own_src: dict[tuple[int, int], int], own_dst: dict[tuple[int, int], int],
            keys: list[tuple[list[tuple[int, int]], list[tuple[int, int]]]]) -> list[RuleWarning]:
    """Warnings for a compiled ``Ruleset``; ``own_*`` map each LPM key to the rules that
    name it, ``keys[r]`` are rule r's (source, destination) keys."""
    src, dst = _Prefixes(rs.src, own_src), _Prefixes(rs.dst, own_dst)
    sport, dport = _Ports(rs.ports[0]), _Ports(rs.ports[1])
    proto_memo: dict[Any, tuple[int, int]] = {}
    flag_memo: dict[tuple[Any, bool], tuple[int, int]] = {}
    everyone = (1 << len(rs.rules)) - 1
    covers: list[int] = []
    dead = 0  # rules never matched: their overlaps do not matter
    warnings: list[RuleWarning] = []
    for r in rs.rules:
        j = r.index
        if r.protos not in proto_memo:
            proto_memo[r.protos] = _slot_classes(rs.protos, sorted(r.protos) if r.protos else list(range(256)))
        if (r.flags, r.allow) not in flag_memo:
            flag_memo[(r.flags, r.allow)] = _slot_classes(rs.flags, _flag_slots(r.flags, r.allow))
        parts = [src.classes(keys[j][0]), dst.classes(keys[j][1]), proto_memo[r.protos],
                 flag_memo[(r.flags, r.allow)], sport.classes(r.sport, r.allow), dport.classes(r.dport, r.allow)]
        cover, overlap = ALL, everyone
        for c, o in parts:
            cover &= c
            overlap &= o
        covers.append(cover)
        earlier = (1 << j) - 1
        if cover & earlier:
            dead |= 1 << j
            i = _lowest(cover & earlier)
            other = rs.rules[i]
            if other.action == r.action:
                warnings.append(RuleWarning("redundant", j, i, f"{r.where()} is never matched: {other.where()} "
                                            "matches every packet it would, with the same action (redundant)"))
            else:
                warnings.append(RuleWarning("shadowed", j, i, f"{r.where()} is never matched: {other.where()} "
                                            f"matches every packet it would and {_verb(other)} it"))
            continue
        opposite = everyone & ~rs.allow if r.allow else rs.allow
        conflicts = overlap & earlier & opposite & ~dead
        if conflicts:
            i = _lowest(conflicts)
            other = rs.rules[i]
            more = bin(conflicts).count("1") - 1
            also = f" (and {more} more earlier rule{'s' if more > 1 else ''})" if more else ""
            if covers[i] >> j & 1:
                warnings.append(RuleWarning("exception", j, i, f"{r.where()} has an exception: {other.where()}{also}, "
                                            f"earlier and inside it, {_verb(other)} part of its packets"))
            else:
                outcome = "allowed" if other.allow else "denied"
                warnings.append(RuleWarning("conflict", j, i, f"{r.where()} overlaps {other.where()}{also} with the "
                                            f"opposite action: packets matching both are {outcome} by rule {i}"))
    return warnings


def _lowest(bits: int) -> int:
    return (bits & -bits).bit_length() - 1


def _verb(rule: Any) -> str:
    return "allows" if rule.allow else "denies"
