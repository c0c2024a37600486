"""Reference model of the exercise VNF: the same rules as fastpath.c, in Python."""

from __future__ import annotations

import struct

from vnfkit.model import ETH_P_IP, ETH_P_IPV6, IPPROTO_UDP, ModelContext, Result, Verdict, csum_replace2, parse, u16

BPF_NOEXIST = 1


def process(pkt: bytearray, ctx: ModelContext) -> Result:
    cfg = ctx.config
    ctx.tables["len_hist"].lookup_ref(min(len(pkt) // 128, 15))[()] += 1
    h = parse(pkt)
    if h.error:
        ctx.count("malformed", len(pkt))
        return Result(Verdict.DROP, pkt)
    if h.vlans == 1 and (h.vlan_tci[0] & 0x0FFF) == cfg["pop_vid"]:
        out = pkt[:12] + pkt[16:]
        ctx.count("popped", len(out))
        return Result(Verdict.PASS, out)
    if h.l3_proto == ETH_P_IPV6:
        if h.l4_proto == cfg["redirect_proto"]:
            return Result(Verdict.REDIRECT, pkt, port=ctx.ports["out"])
        return Result(Verdict.PASS, pkt)
    if h.l3_proto != ETH_P_IP:
        return Result(Verdict.PASS, pkt)

    ip = h.l3_off
    ctx.tables["proto_hits"].lookup_ref(pkt[ip + 9])[()] += 1
    src = bytes(pkt[ip + 12:ip + 16])  # the C keys by the raw address bytes
    seen = ctx.tables["seen"]
    if src in seen:
        seen.lookup_ref(src)[()] += 1
    else:
        seen.update(src, 1, BPF_NOEXIST)

    if h.l4_off and h.l4_proto == IPPROTO_UDP:
        dport = u16(pkt, h.l4_off + 2)
        if dport == cfg["drop_port"]:
            ctx.count("dropped", len(pkt))
            return Result(Verdict.DROP, pkt)
        push = ctx.tables["push_vlan"].lookup(dport)
        if push is not None:
            out = pkt[:12] + struct.pack("!HH", 0x8100, int(push["vid"]) & 0x0FFF) + pkt[12:]
            ctx.count("pushed", len(out))
            return Result(Verdict.NEXT, out)

    if ctx.tables["reflect"].lookup(struct.pack("<I", 32) + bytes(pkt[ip + 16:ip + 20])) is not None:
        ctx.count("hits", len(pkt))
        if pkt[ip + 8] <= cfg["ttl_min"]:
            ctx.count("dropped", len(pkt))
            return Result(Verdict.DROP, pkt)
        old = u16(pkt, ip + 8)  # TTL and protocol share a checksum word
        pkt[ip + 8] -= 1
        struct.pack_into("!H", pkt, ip + 10, csum_replace2(u16(pkt, ip + 10), old, u16(pkt, ip + 8)))
        pkt[0:6], pkt[6:12] = pkt[6:12], pkt[0:6]
        ctx.count("rewritten", len(pkt))
        return Result(Verdict.TX, pkt)
    return Result(Verdict.PASS, pkt)
