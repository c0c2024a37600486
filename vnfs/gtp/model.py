"""Reference model of the gtp VNF: fastpath.c's decisions, in Python, packet for packet.

Uplink G-PDUs to the gateway are decapsulated by TEID, downlink packets to UE addresses are
encapsulated in outer IPv4 / UDP / GTP-U, echo requests are answered. Each function here has
a twin of the same name in fastpath.c; the checks run in the same order, so the same counter
explains every packet on every executor.
"""

from __future__ import annotations

import struct
import sys
from typing import Any

from vnfkit.model import (
    ETH_P_IP,
    ETH_P_IPV6,
    FRAG_FIRST,
    FRAG_LATER,
    IPPROTO_UDP,
    MAX_OFF,
    Hdrs,
    ModelContext,
    Result,
    Verdict,
    parse,
)

GTPU_PORT = 2152
GTP_V1_PT, GTP_E, GTP_S, GTP_OPT = 0x30, 0x04, 0x02, 0x07
GTP_ECHO_REQ, GTP_ECHO_RSP, GTP_GPDU = 1, 2, 255
GTP_EXT_PDU_SESSION, GTP_EXT_REQUIRED, GTP_MAX_EXT = 0x85, 0x80, 4
GTP_IE_RECOVERY = 14
PDU_TYPE_UL = 1
OUTER_HLEN = 28  # IPv4 + UDP
SESS_V4, SESS_V6 = 0x01, 0x02


def fits(pkt: bytes | bytearray, off: int, length: int) -> bool:
    """vk_ptr's test: ``length`` bytes at ``off`` are in the frame and ``off`` is in range."""
    return off <= MAX_OFF and off + length <= len(pkt)


def be16(pkt: bytes | bytearray, off: int) -> int:
    return (pkt[off] << 8) | pkt[off + 1]


def verdict(ctx: ModelContext, pkt: bytes | bytearray, counter: str, v: Verdict) -> Result:
    """Count ``pkt`` in ``counter`` and decide ``v``: the C ``verdict()``."""
    ctx.count(counter, len(pkt))
    return Result(v, pkt)


def ipv4_header(tos: int, tot_len: int, ttl: int, src: bytes, dst: bytes) -> bytes:
    """``outer_ipv4``: no options, DF, ID 0, checksum computed."""
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, tos, tot_len, 0, 0x4000, ttl, IPPROTO_UDP, 0, src, dst))
    s = sum(struct.unpack("!10H", hdr))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    struct.pack_into("!H", hdr, 10, ~s & 0xFFFF)
    return bytes(hdr)


def l2_header(pkt: bytes | bytearray, h: Hdrs, proto: int, swap: bool = False) -> bytes:
    """``l2_save`` + ``l2_restore``: the MACs (swapped for a reply), the VLAN tags, ``proto``."""
    macs = pkt[6:12] + pkt[0:6] if swap else pkt[0:12]
    return bytes(macs) + bytes(pkt[12:12 + 4 * h.vlans]) + struct.pack("!H", proto)


def session_used(ctx: ModelContext, s: Any, direction: str, nbytes: int) -> None:
    """Per-session usage, written through the table's record as the C writes its pointer."""
    s[f"{direction}_packets"] += 1
    s[f"{direction}_bytes"] += nbytes
    s["last_seen"] = ctx.now()


# ---- downlink ---------------------------------------------------------------------------------

def encap(pkt: bytearray, h: Hdrs, ctx: ModelContext, s: Any, inner_len: int, tos: int) -> Result:
    cfg = ctx.config
    qfi = int(s["qfi"])
    ghlen = 16 if qfi else 8
    push = OUTER_HLEN + ghlen
    outer_len = push + inner_len
    if outer_len > cfg["mtu"]:
        return verdict(ctx, pkt, "down_too_big", Verdict.DROP)
    gw = int(cfg["gw_addr"]).to_bytes(4, sys.byteorder)  # a __be32 field: the record holds its wire bytes
    peer = int(s["peer"]).to_bytes(4, sys.byteorder)
    flags = GTP_V1_PT | GTP_E if qfi else GTP_V1_PT
    outer = (ipv4_header(tos, outer_len, int(cfg["ttl"]), gw, peer)
             + struct.pack("!HHHH", GTPU_PORT, GTPU_PORT, outer_len - 20, 0)
             + struct.pack("!BBHI", flags, GTP_GPDU, inner_len + ghlen - 8, int(s["teid_down"])))
    if qfi:
        # sequence 0, N-PDU 0, next: PDU session container (length 1, DL, QFI, no next)
        outer += bytes((0, 0, 0, GTP_EXT_PDU_SESSION, 1, 0, qfi & 0x3F, 0))
    out = bytearray(l2_header(pkt, h, ETH_P_IP) + outer + pkt[h.l3_off:])
    session_used(ctx, s, "down", inner_len)
    return verdict(ctx, out, "down_encap", Verdict.PASS)


def lookup_session(ctx: ModelContext, table: str, key: bytes, pool: str, pool_key: bytes,
                   pkt: bytearray) -> Any | Result:
    """The UE table, then the session; a Result when the packet ends here."""
    teid = ctx.tables[table].lookup_ref(key)
    if teid is None:
        if ctx.tables[pool].lookup_ref(pool_key) is not None:
            return verdict(ctx, pkt, "down_no_session", Verdict.DROP)
        return verdict(ctx, pkt, "passed", Verdict.PASS)
    s = ctx.tables["sessions"].lookup_ref(int(teid))
    if s is None:  # the control plane is between writes
        return verdict(ctx, pkt, "down_no_session", Verdict.DROP)
    return s


def downlink4(pkt: bytearray, h: Hdrs, ctx: ModelContext) -> Result:
    ip = h.l3_off
    dst = bytes(pkt[ip + 16:ip + 20])
    s = lookup_session(ctx, "ue4", dst, "pool4", struct.pack("<I", 32) + dst, pkt)
    if isinstance(s, Result):
        return s
    inner_len = be16(pkt, ip + 2)
    if inner_len > len(pkt) - ip:  # the header's length: Ethernet padding stays out
        return verdict(ctx, pkt, "down_bad_len", Verdict.DROP)
    return encap(pkt, h, ctx, s, inner_len, pkt[ip + 1])


def downlink6(pkt: bytearray, h: Hdrs, ctx: ModelContext) -> Result:
    ip = h.l3_off
    dst = bytes(pkt[ip + 24:ip + 40])
    s = lookup_session(ctx, "ue6", dst[:8], "pool6", struct.pack("<I", 128) + dst, pkt)
    if isinstance(s, Result):
        return s
    inner_len = 40 + be16(pkt, ip + 4)
    if inner_len > len(pkt) - ip:
        return verdict(ctx, pkt, "down_bad_len", Verdict.DROP)
    tclass = ((pkt[ip] << 4) | (pkt[ip + 1] >> 4)) & 0xFF
    return encap(pkt, h, ctx, s, inner_len, tclass)


# ---- uplink -----------------------------------------------------------------------------------

def walk_extensions(pkt: bytearray, g: int) -> int | None:
    """The GTP-U header length with its extension headers (E flag set), or None if they are
    not understood, too many, or leave the frame."""
    nxt = pkt[g + 11]
    hdr = 12
    for _ in range(GTP_MAX_EXT):
        if not nxt:
            break
        if nxt != GTP_EXT_PDU_SESSION and nxt & GTP_EXT_REQUIRED:
            return None
        if not fits(pkt, g + hdr, 4):
            return None
        elen = pkt[g + hdr] * 4
        if not elen or (nxt == GTP_EXT_PDU_SESSION and pkt[g + hdr + 1] >> 4 != PDU_TYPE_UL):
            return None
        if not fits(pkt, g + hdr + elen - 1, 1):
            return None
        nxt = pkt[g + hdr + elen - 1]
        hdr += elen
    return None if nxt else hdr


def gpdu(pkt: bytearray, h: Hdrs, ctx: ModelContext, g: int, glen: int) -> Result:
    cfg = ctx.config
    teid = struct.unpack_from("!I", pkt, g + 4)[0]
    s = ctx.tables["sessions"].lookup_ref(teid)
    if s is None:
        return verdict(ctx, pkt, "up_unknown_teid", Verdict.DROP)
    flags = pkt[g]
    hdr = 8
    if flags & GTP_OPT:
        if not fits(pkt, g + 8, 4):
            return verdict(ctx, pkt, "up_bad_gtp", Verdict.DROP)
        hdr = 12
        if flags & GTP_E:
            walked = walk_extensions(pkt, g)
            if walked is None:
                return verdict(ctx, pkt, "up_bad_ext", Verdict.DROP)
            hdr = walked
    if hdr > glen + 8:
        return verdict(ctx, pkt, "up_bad_ext", Verdict.DROP)

    inner, inner_len = g + hdr, glen + 8 - hdr
    if not fits(pkt, inner, 1) or not inner_len:
        return verdict(ctx, pkt, "up_bad_inner", Verdict.DROP)
    version = pkt[inner] >> 4
    if version == 4:
        ihl = pkt[inner] & 0xF
        if not fits(pkt, inner, 20) or inner_len < 20:
            return verdict(ctx, pkt, "up_bad_inner", Verdict.DROP)
        tot = be16(pkt, inner + 2)
        if ihl < 5 or tot < ihl * 4 or tot > inner_len:
            return verdict(ctx, pkt, "up_bad_inner", Verdict.DROP)
        ue = int(s["ue4"]).to_bytes(4, sys.byteorder)
        if cfg["check_src"] and (not s["flags"] & SESS_V4 or pkt[inner + 12:inner + 16] != ue):
            return verdict(ctx, pkt, "up_spoofed", Verdict.DROP)
        proto = ETH_P_IP
    elif version == 6:
        if not fits(pkt, inner, 40) or inner_len < 40 or 40 + be16(pkt, inner + 4) > inner_len:
            return verdict(ctx, pkt, "up_bad_inner", Verdict.DROP)
        if cfg["check_src"] and (not s["flags"] & SESS_V6 or pkt[inner + 8:inner + 16] != bytes(s["ue6"])):
            return verdict(ctx, pkt, "up_spoofed", Verdict.DROP)
        proto = ETH_P_IPV6
    else:
        return verdict(ctx, pkt, "up_bad_inner", Verdict.DROP)

    out = bytearray(l2_header(pkt, h, proto) + pkt[inner:])
    session_used(ctx, s, "up", inner_len)
    return verdict(ctx, out, "up_decap", Verdict.PASS)


def echo(pkt: bytearray, h: Hdrs, ctx: ModelContext, g: int) -> Result:
    """Echo request -> echo response with a Recovery IE, back out of the same port."""
    cfg = ctx.config
    ip, l4 = h.l3_off, h.l4_off
    if not cfg["echo_reply"] or pkt[ip] & 0xF != 5 or not pkt[g] & GTP_S:
        return verdict(ctx, pkt, "echo_passed", Verdict.PASS)
    if not fits(pkt, g + 8, 2):
        return verdict(ctx, pkt, "up_bad_gtp", Verdict.DROP)
    src, dst = bytes(pkt[ip + 12:ip + 16]), bytes(pkt[ip + 16:ip + 20])
    reply = (l2_header(pkt, h, ETH_P_IP, swap=True)
             + ipv4_header(pkt[ip + 1], OUTER_HLEN + 14, int(cfg["ttl"]), dst, src)
             + struct.pack("!HHHH", be16(pkt, l4 + 2), be16(pkt, l4), 8 + 14, 0)
             + struct.pack("!BBHI", GTP_V1_PT | GTP_S, GTP_ECHO_RSP, 6, 0)
             + bytes(pkt[g + 8:g + 10]) + bytes((0, 0, GTP_IE_RECOVERY, 0)))
    # The frame grew by 2 bytes at the front; what followed the request's 12-byte header
    # (Ethernet padding, private extensions) is still there, after the IE.
    out = bytearray(reply + pkt[len(reply) - 2:])
    return verdict(ctx, out, "echo_answered", Verdict.TX)


def uplink(pkt: bytearray, h: Hdrs, ctx: ModelContext) -> Result:
    l4 = h.l4_off
    udp_len = be16(pkt, l4 + 4)
    if udp_len < 16 or udp_len > len(pkt) - l4:
        return verdict(ctx, pkt, "up_bad_gtp", Verdict.DROP)
    g = l4 + 8
    if not fits(pkt, g, 8) or pkt[g] & 0xF0 != GTP_V1_PT:  # bit 4 is spare: ignored
        return verdict(ctx, pkt, "up_bad_gtp", Verdict.DROP)
    glen = be16(pkt, g + 2)
    if glen + 16 > udp_len or (pkt[g] & GTP_OPT and glen < 4):
        return verdict(ctx, pkt, "up_bad_gtp", Verdict.DROP)
    msg = pkt[g + 1]
    if msg == GTP_GPDU:
        return gpdu(pkt, h, ctx, g, glen)
    if msg == GTP_ECHO_REQ:
        return echo(pkt, h, ctx, g)
    return verdict(ctx, pkt, "up_other_msg", Verdict.PASS)


def process(pkt: bytearray, ctx: ModelContext) -> Result:
    """One frame in, a verdict and the frame out: the C ``process``."""
    h = parse(pkt)
    if h.error:
        return verdict(ctx, pkt, "malformed", Verdict.DROP)
    ip = h.l3_off
    if h.l3_proto == ETH_P_IP:
        gw = int(ctx.config["gw_addr"]).to_bytes(4, sys.byteorder)
        if pkt[ip + 16:ip + 20] == gw and pkt[ip + 9] == IPPROTO_UDP:
            gtpu = bool(h.l4_off) and be16(pkt, h.l4_off + 2) == GTPU_PORT
            # Outer fragments would need reassembly: dropped, or left to the stack.
            if h.frag == FRAG_LATER or (h.frag == FRAG_FIRST and gtpu):
                return verdict(ctx, pkt, "up_frag", Verdict.PASS if ctx.config["frag_pass"] else Verdict.DROP)
            if gtpu:
                return uplink(pkt, h, ctx)
        return downlink4(pkt, h, ctx)
    if h.l3_proto == ETH_P_IPV6:
        return downlink6(pkt, h, ctx)
    return verdict(ctx, pkt, "passed", Verdict.PASS)
