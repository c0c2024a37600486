"""Reference model of the nat VNF: fastpath.c's rules in Python, function for function.

The executors run this beside the C (in the kernel and natively) and demand the same verdict,
bytes, tables and counters, so every branch, table operation and counter here has its twin in
fastpath.c under the same name (``nat_touch`` is ``_touch``, and so on). Tables are used with
the fast path's verbs (``lookup_ref``, ``fp_update``, ``fp_delete``), as the C uses
bpf_map_*_elem.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, NamedTuple

from datapath.errors import VnfkitError
from vnfkit.model import (
    ETH_P_IP,
    ETH_P_IPV6,
    FRAG_FIRST,
    FRAG_LATER,
    FRAG_NONE,
    IPPROTO_ICMP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    ModelContext,
    Result,
    Verdict,
    csum_replace2,
    csum_replace4,
    fmix32,
    parse,
)
from vnfkit.pyfile import import_file

_layout = import_file(Path(__file__).with_name("layout.py"), "nat's table layouts", VnfkitError)
NatKey, NatVal = _layout.NatKey, _layout.NatVal

MAX_PROBES = 16   # NAT_MAX_PROBES
EEXIST = 17
NOEXIST, ANY = 1, 0
F_DNAT = _layout.F_DNAT
NS = 1_000_000_000
MAX_OFF = 1024    # VK_MAX_OFF: vk_ptr refuses offsets beyond it
M32 = 0xFFFFFFFF
ICMP_ECHOREPLY, ICMP_DEST_UNREACH, ICMP_ECHO, ICMP_TIME_EXCEEDED, ICMP_PARAMETERPROB = 0, 3, 8, 11, 12
ICMP_ERRORS = (ICMP_DEST_UNREACH, ICMP_TIME_EXCEEDED, ICMP_PARAMETERPROB)
FLOW_OK, FLOW_ICMP_ERROR, FLOW_UNSUPPORTED, FLOW_SHORT = range(4)


# ---- bytes -------------------------------------------------------------------------------------

def _fits(pkt: bytearray, off: int, n: int) -> bool:
    """vk_ptr: n bytes at off are inside the packet, and off is within VK_MAX_OFF."""
    return off <= MAX_OFF and off + n <= len(pkt)


def _be16(pkt: bytearray, off: int) -> int:
    return (pkt[off] << 8) | pkt[off + 1]


def _be32(raw: bytes | bytearray) -> int:
    return int.from_bytes(raw, "big")


def _le(raw: bytes | bytearray) -> int:
    """A field as the C reads it into a register on a little-endian machine."""
    return int.from_bytes(raw, "little")


def _put16(pkt: bytearray, off: int, value: int) -> None:
    struct.pack_into("!H", pkt, off, value)


def _udp_csum_replace2(csum: int, old: int, new: int) -> int:
    """vk_udp_csum_replace2: a zero UDP checksum stays zero; a computed zero is sent as 0xffff."""
    if csum == 0:
        return 0
    return csum_replace2(csum, old, new) or 0xFFFF


def _udp_csum_replace4(csum: int, old: int, new: int) -> int:
    if csum == 0:
        return 0
    return csum_replace4(csum, old, new) or 0xFFFF


# ---- hashing, pool, time --------------------------------------------------------------------

def _mix(h: int, w: int) -> int:
    h = ((h ^ w) * 0x9E3779B1) & M32
    return h ^ (h >> 15)


def _pool_first(cfg: Any) -> int:
    """pool_first in host order (the config holds the address's wire bytes)."""
    return _be32(int(cfg["pool_first"]).to_bytes(4, "little"))


def pool_addr(cfg: Any, inside_addr: bytes) -> bytes:
    """nat_pool_addr: the pool address an inside host always gets."""
    idx = fmix32(_mix(int(cfg["hash_seed"]), _le(inside_addr))) % int(cfg["pool_count"])
    return ((_pool_first(cfg) + idx) & M32).to_bytes(4, "big")


def _hash_flow(cfg: Any, k: NatKey) -> int:
    h = _mix(int(cfg["hash_seed"]) ^ 0x5BD1E995, _le(k.addr))
    h = _mix(h, _le(k.remote))
    h = _mix(h, _le(k.port) | (_le(k.rport) << 16))
    h = _mix(h, k.proto)
    return fmix32(h)


def _in_pool(cfg: Any, addr: bytes) -> bool:
    return ((_be32(addr) - _pool_first(cfg)) & M32) < int(cfg["pool_count"])


def _is_inside(ctx: ModelContext, addr: bytes) -> bool:
    return ctx.tables["inside"].lookup_ref(struct.pack("<I", 32) + addr) is not None


def _timeout(cfg: Any, proto: int) -> int:
    name = "tcp_timeout" if proto == IPPROTO_TCP else "udp_timeout" if proto == IPPROTO_UDP else "icmp_timeout"
    return int(cfg[name]) * NS


def _expired(last_seen: int, now: int, timeout: int) -> bool:
    return now > last_seen and now - last_seen > timeout


# ---- verdicts --------------------------------------------------------------------------------

def _drop(ctx: ModelContext, pkt: bytearray, counter: str) -> Result:
    ctx.count(counter, len(pkt))
    return Result(Verdict.DROP, pkt)


def _pass(ctx: ModelContext, pkt: bytearray, counter: str) -> Result:
    ctx.count(counter, len(pkt))
    return Result(Verdict.PASS, pkt)


def _unmatched(ctx: ModelContext, pkt: bytearray, counter: str) -> Result:
    ctx.count(counter, len(pkt))
    return Result(Verdict.PASS if ctx.config["pass_unmatched"] else Verdict.DROP, pkt)


# ---- sessions --------------------------------------------------------------------------------

def _table(ctx: ModelContext, rev: bool) -> Any:
    return ctx.tables["nat_rev" if rev else "nat_fwd"]


def _other_key(k: NatKey, v: NatVal) -> NatKey:
    return k._replace(addr=v.addr, port=v.port)


def _points_back(v: NatVal, k: NatKey) -> bool:
    return v.addr == k.addr and v.port == k.port


def _remove(ctx: ModelContext, rev: bool, k: NatKey, v: NatVal) -> None:
    o = _other_key(k, v)
    orec = _table(ctx, not rev).lookup_ref(o.pack())
    if orec is not None and _points_back(NatVal.unpack(orec.tobytes()), k):
        _table(ctx, not rev).fp_delete(o.pack())
    _table(ctx, rev).fp_delete(k.pack())


def _touch(ctx: ModelContext, pkt: bytearray, rev: bool, k: NatKey, now: int) -> NatVal | None:
    rec = _table(ctx, rev).lookup_ref(k.pack())
    if rec is None:
        return None
    cur = NatVal.unpack(rec.tobytes())
    orec = _table(ctx, not rev).lookup_ref(_other_key(k, cur).pack())
    if (_expired(cur.last_seen, now, _timeout(ctx.config, k.proto)) or orec is None
            or not _points_back(NatVal.unpack(orec.tobytes()), k)):
        _remove(ctx, rev, k, cur)
        ctx.count("expired", len(pkt))
        return None
    rec["last_seen"] = now
    orec["last_seen"] = now
    return cur


def _claim(ctx: ModelContext, pkt: bytearray, rev: bool, k: NatKey, v: NatVal, now: int) -> int:
    table = _table(ctx, rev)
    ret = table.fp_update(k.pack(), v.pack(), NOEXIST)
    if ret != -EEXIST:
        return ret
    old = table.lookup_ref(k.pack())
    if old is not None:
        cur = NatVal.unpack(old.tobytes())
        if not _expired(cur.last_seen, now, _timeout(ctx.config, k.proto)):
            return ret
        _remove(ctx, rev, k, cur)
        ctx.count("expired", len(pkt))
    return table.fp_update(k.pack(), v.pack(), NOEXIST)


def _allocate(ctx: ModelContext, pkt: bytearray, k: NatKey, now: int) -> NatVal | None:
    cfg = ctx.config
    port_min, port_max = int(cfg["port_min"]), int(cfg["port_max"])
    if not int(cfg["pool_count"]) or port_max < port_min:
        return None
    size = port_max - port_min + 1
    probes = min(int(cfg["max_probes"]), size)
    off = _hash_flow(cfg, k) % size
    rk = k._replace(addr=pool_addr(cfg, k.addr))
    rv = NatVal(k.addr, k.port, 0, now)
    ret = -EEXIST
    for _ in range(min(MAX_PROBES, probes)):
        rk = rk._replace(port=((port_min + off) & 0xFFFF).to_bytes(2, "big"))
        ret = _claim(ctx, pkt, True, rk, rv, now)
        if ret != -EEXIST:
            break
        off = 0 if off + 1 == size else off + 1
    if ret:
        return None
    fv = NatVal(rk.addr, rk.port, 0, now)
    if _claim(ctx, pkt, False, k, fv, now):
        _table(ctx, True).fp_delete(rk.pack())
        return None
    ctx.count("created", len(pkt))
    return fv


def _port_forward(ctx: ModelContext, pkt: bytearray, rk: NatKey, now: int) -> int | NatVal:
    """A session made by a port forward (a NatVal), 0 for no forward, -1 for a failed insert."""
    if rk.proto not in (IPPROTO_TCP, IPPROTO_UDP):
        return 0
    pf = ctx.tables["port_fwd"].lookup_ref(_layout.pf_key(rk.addr, rk.port, rk.proto))
    if pf is None:
        return 0
    raw = pf.tobytes()
    rv = NatVal(raw[0:4], raw[4:6], F_DNAT, now)
    fv = NatVal(rk.addr, rk.port, F_DNAT, now)
    fk = _other_key(rk, rv)
    if _claim(ctx, pkt, True, rk, rv, now):
        return -1
    if _claim(ctx, pkt, False, fk, fv, now):
        _table(ctx, True).fp_delete(rk.pack())
        return -1
    ctx.count("dnat_created", len(pkt))
    return rv


# ---- packets ---------------------------------------------------------------------------------

class Fields(NamedTuple):
    """nat_fields: offsets of what a translation rewrites."""

    addr: int
    port: int
    csum: int
    pseudo: bool
    udp: bool


def _flow(pkt: bytearray, h: Any, out: bool) -> tuple[int, NatKey | None, Fields | None]:
    ip = h.l3_off
    src, dst = bytes(pkt[ip + 12:ip + 16]), bytes(pkt[ip + 16:ip + 20])
    ours, remote = (src, dst) if out else (dst, src)
    addr_off = ip + (12 if out else 16)
    l4 = h.l4_off
    if l4 and h.l4_proto in (IPPROTO_TCP, IPPROTO_UDP):
        sport, dport = bytes(pkt[l4:l4 + 2]), bytes(pkt[l4 + 2:l4 + 4])
        port, rport = (sport, dport) if out else (dport, sport)
        udp = h.l4_proto == IPPROTO_UDP
        fields = Fields(addr_off, l4 + (0 if out else 2), l4 + (6 if udp else 16), True, udp)
        return FLOW_OK, NatKey(ours, remote, port, rport, h.l4_proto), fields
    if l4 and h.l4_proto == IPPROTO_ICMP:
        if not _fits(pkt, l4, 8):
            return FLOW_SHORT, None, None
        if pkt[l4] in (ICMP_ECHO, ICMP_ECHOREPLY):
            key = NatKey(ours, remote, bytes(pkt[l4 + 4:l4 + 6]), b"\0\0", IPPROTO_ICMP)
            return FLOW_OK, key, Fields(addr_off, l4 + 4, l4 + 2, False, False)
        if pkt[l4] in ICMP_ERRORS:
            return FLOW_ICMP_ERROR, None, None
    return FLOW_UNSUPPORTED, None, None


def _rewrite(pkt: bytearray, ip: int, f: Fields, addr: bytes, port: bytes) -> None:
    old_addr, old_port = _be32(pkt[f.addr:f.addr + 4]), _be16(pkt, f.port)
    new_addr, new_port = _be32(addr), _be16(port, 0)
    pkt[f.addr:f.addr + 4] = addr
    pkt[f.port:f.port + 2] = port
    _put16(pkt, ip + 10, csum_replace4(_be16(pkt, ip + 10), old_addr, new_addr))
    csum = _be16(pkt, f.csum)
    if f.udp:
        csum = _udp_csum_replace2(_udp_csum_replace4(csum, old_addr, new_addr), old_port, new_port)
    else:
        if f.pseudo:
            csum = csum_replace4(csum, old_addr, new_addr)
        csum = csum_replace2(csum, old_port, new_port)
    _put16(pkt, f.csum, csum)


def _icmp_error(ctx: ModelContext, pkt: bytearray, h: Any, out: bool) -> Result:
    res = _icmp_error_translate(ctx, pkt, h, out)
    if res is not None:
        return res
    return _drop(ctx, pkt, "icmp_err_bad") if out else _unmatched(ctx, pkt, "icmp_err_bad")


def _icmp_error_translate(ctx: ModelContext, pkt: bytearray, h: Any, out: bool) -> Result | None:
    """nat_icmp_error up to its `bad` label: the translated packet, or None."""
    icmp = h.l4_off
    if not _fits(pkt, icmp, 8):
        return None
    il3 = icmp + 8
    if not _fits(pkt, il3, 20):
        return None
    version, ihl = pkt[il3] >> 4, pkt[il3] & 0xF
    if version != 4 or ihl < 5 or _be16(pkt, il3 + 6) & 0x1FFF:
        return None
    il4 = il3 + ihl * 4
    if not _fits(pkt, il4, 8):
        return None
    proto = pkt[il3 + 9]
    isrc, idst = bytes(pkt[il3 + 12:il3 + 16]), bytes(pkt[il3 + 16:il3 + 20])
    ours_off = il3 + (16 if out else 12)
    remote = isrc if out else idst
    pseudo, udp = True, False
    if proto in (IPPROTO_TCP, IPPROTO_UDP):
        port_off = il4 + (2 if out else 0)
        rport = bytes(pkt[il4 + (0 if out else 2):il4 + (2 if out else 4)])
        if proto == IPPROTO_UDP:
            csum_off: int | None = il4 + 6
            udp = True
        else:
            csum_off = il4 + 16 if _fits(pkt, il4 + 16, 2) else None
    elif proto == IPPROTO_ICMP and pkt[il4] in (ICMP_ECHO, ICMP_ECHOREPLY):
        port_off, rport, csum_off, pseudo = il4 + 4, b"\0\0", il4 + 2, False
    else:
        return None
    k = NatKey(bytes(pkt[ours_off:ours_off + 4]), remote, bytes(pkt[port_off:port_off + 2]), rport, proto)
    rec = _table(ctx, not out).lookup_ref(k.pack())
    if rec is None:
        return None
    v = NatVal.unpack(rec.tobytes())
    if _expired(v.last_seen, ctx.now(), _timeout(ctx.config, proto)):
        return None

    from_addr, to_addr = _be32(k.addr), _be32(v.addr)
    from_port, to_port = _be16(k.port, 0), _be16(v.port, 0)
    icsum = _be16(pkt, icmp + 2)
    old_check = _be16(pkt, il3 + 10)
    pkt[ours_off:ours_off + 4] = v.addr
    new_check = csum_replace4(old_check, from_addr, to_addr)
    _put16(pkt, il3 + 10, new_check)
    icsum = csum_replace2(csum_replace4(icsum, from_addr, to_addr), old_check, new_check)

    pkt[port_off:port_off + 2] = v.port
    icsum = csum_replace2(icsum, from_port, to_port)
    if csum_off is not None:
        old_l4 = _be16(pkt, csum_off)
        if udp:
            new_l4 = _udp_csum_replace2(_udp_csum_replace4(old_l4, from_addr, to_addr), from_port, to_port)
        else:
            new_l4 = csum_replace4(old_l4, from_addr, to_addr) if pseudo else old_l4
            new_l4 = csum_replace2(new_l4, from_port, to_port)
        _put16(pkt, csum_off, new_l4)
        icsum = csum_replace2(icsum, old_l4, new_l4)
    _put16(pkt, icmp + 2, icsum)

    ip = h.l3_off
    outer = ip + (12 if out else 16)
    old_outer = _be32(pkt[outer:outer + 4])
    pkt[outer:outer + 4] = v.addr
    _put16(pkt, ip + 10, csum_replace4(_be16(pkt, ip + 10), old_outer, to_addr))
    return _pass(ctx, pkt, "icmp_err_out" if out else "icmp_err_in")


def _outbound(ctx: ModelContext, pkt: bytearray, h: Any) -> Result:
    kind, k, f = _flow(pkt, h, True)
    if kind == FLOW_ICMP_ERROR:
        return _icmp_error(ctx, pkt, h, True)
    if kind == FLOW_SHORT:
        return _drop(ctx, pkt, "malformed")
    if kind != FLOW_OK:
        return _drop(ctx, pkt, "unsupported")
    now = ctx.now()
    v = _touch(ctx, pkt, False, k, now) or _allocate(ctx, pkt, k, now)
    if v is None:
        return _drop(ctx, pkt, "alloc_fail")
    _rewrite(pkt, h.l3_off, f, v.addr, v.port)
    return _pass(ctx, pkt, "out_translated")


def _inbound(ctx: ModelContext, pkt: bytearray, h: Any) -> Result:
    kind, k, f = _flow(pkt, h, False)
    if kind == FLOW_ICMP_ERROR:
        return _icmp_error(ctx, pkt, h, False)
    if kind == FLOW_SHORT:
        return _drop(ctx, pkt, "malformed")
    if kind != FLOW_OK:
        return _unmatched(ctx, pkt, "unsupported")
    now = ctx.now()
    v = _touch(ctx, pkt, True, k, now)
    if v is None:
        made = _port_forward(ctx, pkt, k, now)
        if made == -1:
            return _drop(ctx, pkt, "alloc_fail")
        if made == 0:
            return _unmatched(ctx, pkt, "inbound_miss")
        v = made
    ip = h.l3_off
    if h.frag == FRAG_FIRST:
        key = _layout.frag_key(bytes(pkt[ip + 12:ip + 16]), bytes(pkt[ip + 16:ip + 20]), bytes(pkt[ip + 4:ip + 6]),
                               pkt[ip + 9])
        ctx.tables["frags"].fp_update(key, _layout.frag_val(v.addr, now), ANY)
    _rewrite(pkt, ip, f, v.addr, v.port)
    return _pass(ctx, pkt, "in_translated")


def _fragment(ctx: ModelContext, pkt: bytearray, h: Any, out: bool) -> Result:
    cfg, ip = ctx.config, h.l3_off
    if out:
        if not int(cfg["pool_count"]):
            return _drop(ctx, pkt, "alloc_fail")
        old = bytes(pkt[ip + 12:ip + 16])
        to = pool_addr(cfg, old)
        pkt[ip + 12:ip + 16] = to
        _put16(pkt, ip + 10, csum_replace4(_be16(pkt, ip + 10), _be32(old), _be32(to)))
        return _pass(ctx, pkt, "frag_out")
    frags = ctx.tables["frags"]
    key = _layout.frag_key(bytes(pkt[ip + 12:ip + 16]), bytes(pkt[ip + 16:ip + 20]), bytes(pkt[ip + 4:ip + 6]),
                           pkt[ip + 9])
    rec = frags.lookup_ref(key)
    if rec is None:
        return _unmatched(ctx, pkt, "frag_miss")
    raw = rec.tobytes()
    if _expired(int(rec["last_seen"]), ctx.now(), int(cfg["frag_timeout"]) * NS):
        frags.fp_delete(key)
        return _unmatched(ctx, pkt, "frag_miss")
    old, to = bytes(pkt[ip + 16:ip + 20]), raw[0:4]
    pkt[ip + 16:ip + 20] = to
    _put16(pkt, ip + 10, csum_replace4(_be16(pkt, ip + 10), _be32(old), _be32(to)))
    return _pass(ctx, pkt, "frag_in")


def process(pkt: bytearray, ctx: ModelContext) -> Result:
    """One packet, as fastpath.c's process()."""
    cfg = ctx.config
    h = parse(pkt)
    if h.error:
        return _drop(ctx, pkt, "malformed")
    if h.l3_proto == ETH_P_IPV6:
        return _pass(ctx, pkt, "ipv6")
    if h.l3_proto != ETH_P_IP:
        return _pass(ctx, pkt, "other_l3")
    ip = h.l3_off
    src, dst = bytes(pkt[ip + 12:ip + 16]), bytes(pkt[ip + 16:ip + 20])
    if _is_inside(ctx, src):
        if _in_pool(cfg, dst):
            return _pass(ctx, pkt, "hairpin")
        out = True
    elif _in_pool(cfg, dst):
        out = False
    else:
        return _pass(ctx, pkt, "not_nat")
    if h.frag != FRAG_NONE and not cfg["translate_fragments"]:
        return _drop(ctx, pkt, "frag_dropped")
    if h.frag == FRAG_LATER:
        return _fragment(ctx, pkt, h, out)
    return _outbound(ctx, pkt, h) if out else _inbound(ctx, pkt, h)
