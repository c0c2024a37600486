"""Reference model of the firewall: fastpath.c's logic in Python, step for step.

Sizes (words per bitmap, port bounds) come from the tables' dtypes, which come from the C's
BTF, so the model cannot drift from the C's constants.
"""

from __future__ import annotations

import struct

import numpy as np

from vnfkit.model import (
    ETH_P_IP,
    ETH_P_IPV6,
    FRAG_LATER,
    FRAG_NONE,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPV6_EXT,
    MAX_OFF,
    Hdrs,
    ModelContext,
    Result,
    Verdict,
    parse,
    u16,
)

BPF_ANY = 0
FLAGS_NONE, FLAGS_FRAG = 256, 257  # flag_rules slots, as FW_FLAGS_NONE / FW_FLAGS_FRAG
FRAG_MATCH, FRAG_DROP, FRAG_PASS = 0, 1, 2
OPEN, CLOSING = 0, 1
NO_RULE = 0xFFFFFFFF
WILD_SPORT, WILD_DPORT = 1, 2  # enum fw_wild
TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10
SEARCH_STEPS = 15
ECHO_TYPES = {4: (8, 0), 6: (128, 129)}  # echo request and reply, ICMP and ICMPv6


class Packet:
    """struct fw_pkt: what the rules and the flow table need from a frame."""

    __slots__ = ("family", "proto", "saddr", "daddr", "sport_be", "dport_be", "length", "sport", "dport",
                 "flags_slot", "tcp_flags", "has_ports", "later")

    def key(self) -> bytes:
        """struct fw_conn_key of the packet's own direction."""
        return bytes((self.family, self.proto)) + self.sport_be + self.dport_be + b"\0\0" + self.saddr + self.daddr

    def reverse_key(self) -> bytes:
        """The key a reply would have made."""
        return bytes((self.family, self.proto)) + self.dport_be + self.sport_be + b"\0\0" + self.daddr + self.saddr


def ctz(x: int) -> int:
    """fw_ctz64: index of the lowest set bit of x != 0."""
    return (x & -x).bit_length() - 1


def first_match(bitmaps: list[np.ndarray]) -> int:
    """fw_first_match: candidate words from the AND of summaries, lowest first."""
    words = bitmaps[0]["w"].shape[0]
    sums = [[int(v) for v in b["sum"]] for b in bitmaps]
    for j in range(len(sums[0])):
        cand = sums[0][j]
        for s in sums[1:]:
            cand &= s[j]
        for _ in range(64):
            if not cand:
                break
            i = j * 64 + ctz(cand)
            if i >= words:
                break
            m = int(bitmaps[0]["w"][i])
            for b in bitmaps[1:]:
                m &= int(b["w"][i])
            if m:
                return i * 64 + ctz(m)
            cand &= cand - 1
    return -1


def port_interval(pi: np.ndarray, port: int) -> int:
    """fw_port_interval: the bitmap id of the interval holding ``port`` (binary search)."""
    bounds = pi["lo"].shape[0]
    n, base = int(pi["n"]), 0
    if n == 0 or n > bounds:
        return 0
    lo = pi["lo"]
    for _ in range(SEARCH_STEPS):
        half = n >> 1
        if not half:
            break
        mid = base + half
        if mid >= bounds:
            break
        if int(lo[mid]) <= port:
            base += half
        n -= half
    if base >= bounds:
        return 0
    return int(pi["bm"][base])


def port_rules(ctx: ModelContext, field: int, fp: Packet, port: int) -> np.ndarray | None:
    pi = ctx.tables["port_index"].lookup_ref(field)
    if pi is None:
        return None
    if fp.later:
        bm = int(pi["frag_bm"])
    elif not fp.has_ports:
        bm = int(pi["none_bm"])
    else:
        bm = port_interval(pi, port)
    return ctx.tables["port_rules"].lookup_ref(bm)


def classify(ctx: ModelContext, fp: Packet) -> int:
    """fw_classify: the first matching rule, or -1. Port fields no rule constrains (``wild``)
    are skipped: the source bitmap stands in for theirs."""
    t = ctx.tables
    head = struct.pack("<I", 160) + bytes((fp.family, 0, 0, 0))
    rs = t["ruleset"].lookup_ref(0)
    bs, bd = t["src_rules"].lookup_ref(head + fp.saddr), t["dst_rules"].lookup_ref(head + fp.daddr)
    if rs is None or bs is None or bd is None:
        return -1
    wild = int(rs["wild"])
    found = [bs, bd,
             t["proto_rules"].lookup_ref(fp.proto), t["flag_rules"].lookup_ref(fp.flags_slot),
             bs if wild & WILD_SPORT else port_rules(ctx, 0, fp, fp.sport),
             bs if wild & WILD_DPORT else port_rules(ctx, 1, fp, fp.dport)]
    if any(b is None for b in found):
        return -1
    return first_match(found)


def timeout_ns(cfg: np.void, proto: int, state: int) -> int:
    seconds = cfg["other_timeout"]
    if proto == IPPROTO_TCP:
        seconds = cfg["tcp_closing_timeout"] if state == CLOSING else cfg["tcp_timeout"]
    elif proto == IPPROTO_UDP:
        seconds = cfg["udp_timeout"]
    return int(seconds) * 1_000_000_000


def known_flow(ctx: ModelContext, fp: Packet, now: int) -> bool:
    """fw_known_flow: the packet belongs to a live flow (either direction)."""
    conns = ctx.tables["conns"]
    fwd, rev = fp.key(), fp.reverse_key()
    reply = False
    c = conns.lookup_ref(fwd)
    if c is None:
        c = conns.lookup_ref(rev)
        reply = True
    if c is None:
        return False
    last = int(c["last_seen"])
    age = now - last if now > last else 0
    if age > timeout_ns(ctx.config, fp.proto, int(c["state"])):
        conns.fp_delete(rev if reply else fwd)
        ctx.count("state_expired", fp.length)
        return False
    c["last_seen"] = now
    if fp.tcp_flags & (TCP_FIN | TCP_RST):
        c["state"] = CLOSING
    elif not reply and fp.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN:
        c["state"] = OPEN
    ctx.count("state_reply" if reply else "state_forward", fp.length)
    return True


def decide(ctx: ModelContext, fp: Packet) -> Verdict:
    """fw_decide: fragment policy, flow table, rules, default policy."""
    cfg = ctx.config
    if fp.later:
        if cfg["frag_mode"] == FRAG_DROP:
            ctx.count("frag_dropped", fp.length)
            return Verdict.DROP
        if cfg["frag_mode"] == FRAG_PASS:
            ctx.count("frag_passed", fp.length)
            return Verdict.PASS
        ctx.count("frag_l3", fp.length)
    track = bool(cfg["stateful"]) and not fp.later
    now = ctx.now() if track else 0
    if track and known_flow(ctx, fp, now):
        return Verdict.PASS

    rule = classify(ctx, fp)
    if rule >= 0:
        hits = ctx.tables["rule_hits"].lookup_ref(rule)
        if hits is not None:
            hits["packets"] += 1
            hits["bytes"] += fp.length
        rs = ctx.tables["ruleset"].lookup_ref(0)
        word = rule // 64
        allow = rs is not None and word < rs["allow"].shape[0] and bool((int(rs["allow"][word]) >> (rule % 64)) & 1)
        ctx.count("rule_allowed" if allow else "rule_denied", fp.length)
    else:
        allow = bool(cfg["default_allow"])
        ctx.count("default_allowed" if allow else "default_denied", fp.length)
    if not allow:
        return Verdict.DROP
    if track and not fp.tcp_flags & TCP_RST:
        conn = {"last_seen": now, "rule": rule if rule >= 0 else NO_RULE,
                "state": CLOSING if fp.tcp_flags & TCP_FIN else OPEN}
        ctx.tables["conns"].fp_update(fp.key(), conn, BPF_ANY)
        ctx.count("state_created", fp.length)
    return Verdict.PASS


def _fits(pkt: bytearray, off: int, length: int) -> bool:
    return off <= MAX_OFF and off + length <= len(pkt)


def _icmp(h: Hdrs) -> bool:
    """vk_icmp's protocol test: ICMP over IPv4 or ICMPv6 over IPv6."""
    return (h.l4_proto == IPPROTO_ICMP and h.l3_proto == ETH_P_IP) or \
        (h.l4_proto == IPPROTO_ICMPV6 and h.l3_proto == ETH_P_IPV6)


def process(pkt: bytearray, ctx: ModelContext) -> Result:
    """The firewall's verdict on one frame; it never rewrites the frame."""
    cfg = ctx.config
    h = parse(pkt)
    if h.error:
        ctx.count("malformed", len(pkt))
        return Result(Verdict.DROP, pkt)
    fp = Packet()
    fp.length = len(pkt)
    ip = h.l3_off
    if h.l3_proto == ETH_P_IP:
        l3_end = ip + u16(pkt, ip + 2)
        bad = h.l4_proto == IPPROTO_TCP and (u16(pkt, ip + 6) & 0x1FFF) == 1  # RFC 1858
        fp.family = 4
        fp.saddr, fp.daddr = bytes(pkt[ip + 12:ip + 16]) + bytes(12), bytes(pkt[ip + 16:ip + 20]) + bytes(12)
    elif h.l3_proto == ETH_P_IPV6:
        l3_end = ip + 40 + u16(pkt, ip + 4)
        bad = h.frag != FRAG_LATER and h.l4_proto in IPV6_EXT  # a chain longer than parse walks
        fp.family = 6
        fp.saddr, fp.daddr = bytes(pkt[ip + 8:ip + 24]), bytes(pkt[ip + 24:ip + 40])
    else:
        ctx.count("non_ip", len(pkt))
        return Result(Verdict.DROP if cfg["non_ip_drop"] else Verdict.PASS, pkt)
    if bad or l3_end > len(pkt) or h.payload_off > l3_end:
        ctx.count("malformed", len(pkt))
        return Result(Verdict.DROP, pkt)

    fp.proto = h.l4_proto
    fp.later = h.frag == FRAG_LATER
    fp.flags_slot = FLAGS_FRAG if fp.later else FLAGS_NONE
    fp.tcp_flags, fp.has_ports, fp.sport, fp.dport = 0, False, 0, 0
    fp.sport_be = fp.dport_be = b"\0\0"
    l4 = h.l4_off
    if l4 and h.l4_proto == IPPROTO_TCP:
        fp.tcp_flags = fp.flags_slot = pkt[l4 + 13]
        fp.has_ports = True
        fp.sport_be, fp.dport_be = bytes(pkt[l4:l4 + 2]), bytes(pkt[l4 + 2:l4 + 4])
    elif l4 and h.l4_proto == IPPROTO_UDP:
        ulen = u16(pkt, l4 + 4)
        if h.frag == FRAG_NONE and (ulen < 8 or l4 + ulen > l3_end):
            ctx.count("malformed", len(pkt))
            return Result(Verdict.DROP, pkt)
        fp.has_ports = True
        fp.sport_be, fp.dport_be = bytes(pkt[l4:l4 + 2]), bytes(pkt[l4 + 2:l4 + 4])
    elif l4 and _icmp(h) and _fits(pkt, l4, 8) and pkt[l4] in ECHO_TYPES[fp.family]:
        fp.sport_be = fp.dport_be = bytes(pkt[l4 + 4:l4 + 6])  # the echo identifier
    if fp.has_ports:
        fp.sport, fp.dport = int.from_bytes(fp.sport_be, "big"), int.from_bytes(fp.dport_be, "big")
    return Result(decide(ctx, fp), pkt)
