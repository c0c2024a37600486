"""Reference model of l4lb: what fastpath.c does, in Python, packet for packet.

Tables hold C structs; keys and values are handled as their raw bytes, laid out as in
fastpath.c (addresses are 16 bytes in network order, ports as they sit in the packet).
The LRU tables (conns, nat_revs) and the per-CPU stats are used through the fast-path verbs
(``lookup_ref``, ``fp_update``), as the C uses bpf_map_*_elem.
"""

from __future__ import annotations

import struct
from pathlib import Path

from datapath.errors import VnfkitError
from vnfkit.model import (
    ETH_P_IP,
    ETH_P_IPV6,
    FRAG_NONE,
    IPPROTO_TCP,
    IPPROTO_UDP,
    Hdrs,
    ModelContext,
    Result,
    Verdict,
    csum_replace4,
    parse,
)
from vnfkit.pyfile import import_file

maglev = import_file(Path(__file__).with_name("maglev.py"), "l4lb's flow hash", VnfkitError)

FAM_V4, FAM_V6 = 4, 6
MODE_DNAT = 1
ADDR_F_FRAG_PASS = 1
ENCAP_TTL = 64
IPPROTO_IPIP, IPPROTO_IPV6 = 4, 41
U64 = (1 << 64) - 1
BPF_ANY = 0


def _fold(s: int) -> int:
    s = (s & 0xFFFF) + (s >> 16)
    return (s & 0xFFFF) + (s >> 16)


def _le32(b: bytes | bytearray, off: int = 0) -> int:
    return int.from_bytes(b[off:off + 4], "little")


def _le16(b: bytes | bytearray, off: int = 0) -> int:
    return int.from_bytes(b[off:off + 2], "little")


def _csum_diff4(acc: int, frm: bytes, to: bytes) -> int:
    """C ``csum_diff4`` on the words as C loads them (little-endian)."""
    f, t = _le32(frm), _le32(to)
    return acc + (~f & 0xFFFF) + (~(f >> 16) & 0xFFFF) + (t & 0xFFFF) + (t >> 16)


def _csum_apply(pkt: bytearray, off: int, diff: int, is_udp: bool) -> None:
    old = _le16(pkt, off)
    if is_udp and old == 0:
        return
    new = ~_fold((~old & 0xFFFF) + diff) & 0xFFFF
    if is_udp and new == 0:
        new = 0xFFFF
    pkt[off:off + 2] = new.to_bytes(2, "little")


def _rewrite(pkt: bytearray, h: Hdrs, dst: bool, addr: bytes, port: bytes) -> int:
    """C ``rewrite``: one address (16 bytes) and its port, with both checksums. 0 or -1."""
    if not h.l4_off:
        return -1
    l3, diff = h.l3_off, 0
    if h.l3_proto == ETH_P_IP:
        off = l3 + (16 if dst else 12)
        frm, to = bytes(pkt[off:off + 4]), addr[:4]
        diff = _csum_diff4(diff, frm, to)
        check = csum_replace4(struct.unpack_from("!H", pkt, l3 + 10)[0], int.from_bytes(frm, "big"),
                              int.from_bytes(to, "big"))
        struct.pack_into("!H", pkt, l3 + 10, check)
        pkt[off:off + 4] = to
    elif h.l3_proto == ETH_P_IPV6:
        off = l3 + (24 if dst else 8)
        for i in range(4):
            at = off + 4 * i
            diff = _csum_diff4(diff, bytes(pkt[at:at + 4]), addr[4 * i:4 * i + 4])
            pkt[at:at + 4] = addr[4 * i:4 * i + 4]
    else:
        return -1
    if h.l4_proto not in (IPPROTO_UDP, IPPROTO_TCP):
        return -1
    l4 = h.l4_off
    field = l4 + (2 if dst else 0)
    diff += (~_le16(pkt, field) & 0xFFFF) + _le16(port)
    pkt[field:field + 2] = port
    is_udp = h.l4_proto == IPPROTO_UDP
    _csum_apply(pkt, l4 + (6 if is_udp else 16), diff, is_udp)
    return 0


def _ipv4_csum(hdr: bytes) -> int:
    return ~_fold(sum(struct.unpack("!10H", hdr))) & 0xFFFF


def _encap4(pkt: bytearray, h: Hdrs, be: bytes, ctx: ModelContext) -> Result:
    l3 = h.l3_off
    tot_len = (struct.unpack_from("!H", pkt, l3 + 2)[0] + 20) & 0xFFFF
    outer = bytearray(struct.pack("!BBHHHBBH", 0x45, pkt[l3 + 1], tot_len, 0, 0, ENCAP_TTL, IPPROTO_IPIP, 0))
    outer += ctx.config["encap_src4"].tobytes() + be[:4]
    struct.pack_into("!H", outer, 10, _ipv4_csum(outer))
    out = pkt[:l3] + outer + pkt[l3:]
    ctx.count("encap4", len(out))
    return Result(Verdict.PASS, out)


def _encap6(pkt: bytearray, h: Hdrs, be: bytes, ctx: ModelContext, hsh: int) -> Result:
    l3 = h.l3_off
    first, payload_len = struct.unpack_from("!IH", pkt, l3)
    word0 = (6 << 28) | (first & 0x0FF00000) | (hsh & 0xFFFFF)
    outer = struct.pack("!IHBB", word0, (payload_len + 40) & 0xFFFF, IPPROTO_IPV6, ENCAP_TTL)
    outer += ctx.config["encap_src6"].tobytes() + be
    out = pkt[:l3] + outer + pkt[l3:]
    ctx.count("encap6", len(out))
    return Result(Verdict.PASS, out)


def _dnat(pkt: bytearray, h: Hdrs, fk: bytes, be_addr: bytes, be_port: bytes, ctx: ModelContext) -> Result:
    port = be_port if be_port != b"\0\0" else fk[34:36]
    rk = be_addr + fk[0:16] + port + fk[32:34] + fk[36:38] + b"\0\0"
    want = fk[16:32] + fk[34:36] + b"\0\0"
    if _rewrite(pkt, h, True, be_addr, port):
        return Result(Verdict.ABORTED, pkt)
    nat_revs = ctx.tables["nat_revs"]
    have = nat_revs.lookup_ref(rk)
    if have is None or have.tobytes() != want:
        nat_revs.fp_update(rk, want, BPF_ANY)
    ctx.count("dnat", len(pkt))
    return Result(Verdict.PASS, pkt)


def _reverse(pkt: bytearray, h: Hdrs, fk: bytes, has_ports: bool, ctx: ModelContext) -> Result:
    rv = ctx.tables["nat_revs"].lookup_ref(fk) if has_ports and h.frag == FRAG_NONE else None
    if rv is None:
        ctx.count("not_vip", len(pkt))
        return Result(Verdict.PASS, pkt)
    raw = rv.tobytes()
    if _rewrite(pkt, h, False, raw[0:16], raw[16:18]):
        return Result(Verdict.ABORTED, pkt)
    ctx.count("snat", len(pkt))
    return Result(Verdict.PASS, pkt)


def _schedule(pkt: bytearray, fk: bytes, svc: bytes, ctx: ModelContext, hsh: int) -> bytes | None:
    """C ``schedule``: the backend struct's bytes, or None (no backend)."""
    cfg, tables = ctx.config, ctx.tables
    ring_base, ring_size, family = _le32(svc, 0), _le32(svc, 4), svc[9]
    now = ctx.now()
    c = tables["conns"].lookup_ref(fk)
    if c is not None:
        timeout = int(cfg["conn_timeout_ms"])
        if timeout and (now - int(c["last_ns"])) & U64 > timeout * 1_000_000:
            ctx.count("conn_expired", len(pkt))
        else:
            be = tables["backends"].lookup_ref(int(c["backend"]))
            if be is not None and be.tobytes()[18] == family:
                c["last_ns"] = now
                ctx.count("conn_hit", len(pkt))
                return be.tobytes()
            ctx.count("conn_stale", len(pkt))
    ctx.count("conn_miss", len(pkt))
    slot = (ring_base + hsh % ring_size) & 0xFFFFFFFF  # a u32 sum in C
    be_id = tables["ring"].lookup_ref(slot)
    if be_id is None or int(be_id) == 0:
        return None
    be = tables["backends"].lookup_ref(int(be_id))
    if be is None or be.tobytes()[18] != family:
        return None
    tables["conns"].fp_update(fk, struct.pack("<IIQ", int(be_id), 0, now), BPF_ANY)
    return be.tobytes()


def process(pkt: bytearray, ctx: ModelContext) -> Result:
    cfg, tables = ctx.config, ctx.tables
    h = parse(pkt)
    if h.error:
        ctx.count("malformed", len(pkt))
        return Result(Verdict.PASS, pkt)
    l3 = h.l3_off
    if h.l3_proto == ETH_P_IP:
        src, dst, family = bytes(pkt[l3 + 12:l3 + 16]) + bytes(12), bytes(pkt[l3 + 16:l3 + 20]) + bytes(12), FAM_V4
    elif h.l3_proto == ETH_P_IPV6:
        src, dst, family = bytes(pkt[l3 + 8:l3 + 24]), bytes(pkt[l3 + 24:l3 + 40]), FAM_V6
    else:
        ctx.count("non_ip", len(pkt))
        return Result(Verdict.PASS, pkt)
    has_ports = bool(h.l4_off) and h.l4_proto in (IPPROTO_TCP, IPPROTO_UDP)
    ports = bytes(pkt[h.l4_off:h.l4_off + 4]) if has_ports else bytes(4)
    fk = src + dst + ports + bytes([h.l4_proto, family, 0, 0])

    av = tables["vip_addrs"].lookup(dst + bytes([family, 0, 0, 0]))
    if av is None:
        return _reverse(pkt, h, fk, has_ports, ctx)
    if h.frag != FRAG_NONE:
        if int(av["flags"]) & ADDR_F_FRAG_PASS:
            ctx.count("frag_pass", len(pkt))
            return Result(Verdict.PASS, pkt)
        ctx.count("frag_drop", len(pkt))
        return Result(Verdict.DROP, pkt)
    if not has_ports:
        ctx.count("vip_miss", len(pkt))
        return Result(Verdict.PASS, pkt)

    vips = tables["vips"]
    vv = vips.lookup(dst + ports[2:4] + bytes([h.l4_proto, family]))
    if vv is None:
        vv = vips.lookup(dst + b"\0\0" + bytes([h.l4_proto, family]))  # a VIP for every port
    if vv is None:
        ctx.count("vip_miss", len(pkt))
        return Result(Verdict.PASS, pkt)
    st = tables["vip_stats"].lookup_ref(int(vv["stat"]))
    if st is not None:
        st["packets"] += 1
        st["bytes"] += len(pkt)
    svc_rec = tables["services"].lookup_ref(int(vv["svc"]))
    svc = svc_rec.tobytes() if svc_rec is not None else None
    if svc is None or _le32(svc, 4) == 0 or svc[9] != family:
        ctx.count("no_backend", len(pkt))
        return Result(Verdict.DROP, pkt)

    hsh = maglev.flow_hash(fk, int(cfg["hash_seed"]))
    be = _schedule(pkt, fk, svc, ctx, hsh)
    if be is None:
        ctx.count("no_backend", len(pkt))
        return Result(Verdict.DROP, pkt)
    if svc[8] == MODE_DNAT:
        return _dnat(pkt, h, fk, be[0:16], be[16:18], ctx)
    if family == FAM_V4:
        return _encap4(pkt, h, be, ctx)
    return _encap6(pkt, h, be[0:16], ctx, hsh)
