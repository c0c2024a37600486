"""Reference model of the monitor: fastpath.c in Python, packet for packet, with the twins of
``struct flow_key``, ``flow_hash`` and ``sketch_col`` (control.py uses them too, so the hash
exists once in Python and the model stays self-contained, as a package ships it).

Flow table updates use the fast-path verbs (``lookup_ref``, ``fp_update``) because ``flows``
is an LRU hash whose recency the C refreshes on every lookup; the arrays are written
through ``lookup_ref`` records as the C writes through its pointers. The hash functions
work on Python ints (here, one packet at a time) and on numpy ``uint64`` arrays (control.py,
every resident flow at once): every intermediate value stays below 2**64 and is masked to
32 bits where C wraps.
"""

from __future__ import annotations

import struct
from typing import Any

from datapath.kernel import BPF_NOEXIST
from vnfkit.model import (
    ETH_P_IP,
    ETH_P_IPV6,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    ModelContext,
    Result,
    Verdict,
    fmix32,
    murmur3_words,
    parse,
)

# ---- the flow key and the sketch's hash family -----------------------------------------------

SKETCH_ROWS = 4        # d
SKETCH_COLS = 2048     # w, a power of two
PRIME = 0x7FFFFFFF     # 2**31 - 1
GOLDEN = 0x9E3779B9
M32 = 0xFFFFFFFF
FLOW_F_FRAG = 0x01

# struct flow_key: src[16] dst[16] sport dport vid[2] (host order, little-endian here as on
# every host vnfkit builds for) proto ipver vlans flags. 44 bytes, eleven 32-bit words.
KEY_FORMAT = "<16s16sHHHHBBBB"
KEY_SIZE = struct.calcsize(KEY_FORMAT)
KEY_WORDS = KEY_SIZE // 4
assert KEY_SIZE == 44


def pack_key(src: bytes, dst: bytes, sport: int, dport: int, vid0: int, vid1: int, proto: int, ipver: int,
             vlans: int, flags: int) -> bytes:
    """The 44 bytes of a ``struct flow_key`` (addresses as packet bytes, zero-padded to 16)."""
    return struct.pack(KEY_FORMAT, src.ljust(16, b"\0"), dst.ljust(16, b"\0"), sport, dport, vid0, vid1,
                       proto, ipver, vlans, flags)


def mod_p(v: Any) -> Any:
    """``v mod (2**31 - 1)`` for ``v < 2**62``, folded as the C does (no division there)."""
    v = (v & PRIME) + (v >> 31)
    v = (v & PRIME) + (v >> 31)  # now v <= 2**31, so v >= p only for p and p + 1
    return v - PRIME * ((v + 1) >> 31)


def flow_hash(words: list[Any], seed: int) -> Any:
    """MurmurHash3 (x86, 32-bit) of a key given as its eleven little-endian 32-bit words."""
    return murmur3_words(words, seed)


def row_params(seed: int, row: int) -> tuple[int, int]:
    """(a, b) of row ``row``'s function ((a x + b) mod p) mod w, derived from the seed."""
    a = mod_p(fmix32((seed ^ (GOLDEN * (2 * row + 1))) & M32))
    b = mod_p(fmix32((seed ^ (GOLDEN * (2 * row + 2))) & M32))
    return (a or 1), b


def sketch_cols(words: list[Any], seed: int) -> list[Any]:
    """The column of the key in each sketch row (ints, or arrays for arrays of words)."""
    x = mod_p(flow_hash(words, seed))
    cols = []
    for row in range(SKETCH_ROWS):
        a, b = row_params(seed, row)
        cols.append(mod_p(x * a + b) & (SKETCH_COLS - 1))
    return cols


def key_words(key: bytes) -> list[int]:
    """A packed key's eleven words, as the C reads ``const __u32 *``."""
    return list(struct.unpack(f"<{KEY_WORDS}I", key))


# ---- the packet path ------------------------------------------------------------------------

def _add(table: Any, index: int, nbytes: int) -> None:
    """MON_ADD: one packet of ``nbytes`` in a {packets, bytes} array cell."""
    cell = table.lookup_ref(index)
    if cell is not None:
        cell["packets"] += 1
        cell["bytes"] += nbytes


def process(pkt: bytearray, ctx: ModelContext) -> Result:
    """Account the frame in the tables and counters; pass it on unchanged."""
    cfg = ctx.config
    verdict = Verdict.NEXT if int(cfg["chained"]) & 1 else Verdict.PASS
    n = len(pkt)
    h = parse(pkt)
    _add(ctx.tables["size_hist"], n.bit_length() - 1, n)
    if h.vlans:
        ctx.count("tagged", n)
        _add(ctx.tables["vlan_hist"], h.vlan_tci[0] & 0x0FFF, n)
    if h.error:
        ctx.count("malformed", n)
        return Result(verdict, pkt)

    l3 = h.l3_off
    if h.l3_proto == ETH_P_IP:
        src, dst, ipver = bytes(pkt[l3 + 12:l3 + 16]), bytes(pkt[l3 + 16:l3 + 20]), 4
    elif h.l3_proto == ETH_P_IPV6:
        src, dst, ipver = bytes(pkt[l3 + 8:l3 + 24]), bytes(pkt[l3 + 24:l3 + 40]), 6
    else:
        ctx.count("non_ip", n)
        return Result(verdict, pkt)
    ctx.count("ipv4" if ipver == 4 else "ipv6", n)

    # Fragments (first ones too) are keyed by L3 alone; ICMP by type << 8 | code.
    proto, l4 = h.l4_proto, h.l4_off
    sport = dport = flags = tcp_flags = 0
    icmp = (proto == IPPROTO_ICMP and ipver == 4) or (proto == IPPROTO_ICMPV6 and ipver == 6)
    if h.frag:
        flags = FLOW_F_FRAG
        ctx.count("fragment", n)
    elif l4 and proto in (IPPROTO_TCP, IPPROTO_UDP):
        sport, dport = (pkt[l4] << 8) | pkt[l4 + 1], (pkt[l4 + 2] << 8) | pkt[l4 + 3]
        if proto == IPPROTO_TCP:
            tcp_flags = pkt[l4 + 13]
    elif l4 and icmp:
        dport = (pkt[l4] << 8) | pkt[l4 + 1]
        ctx.count("icmp", n)
    else:
        ctx.count("no_ports", n)
    key = pack_key(src, dst, sport, dport, h.vlan_tci[0] & 0x0FFF, h.vlan_tci[1] & 0x0FFF, proto, ipver,
                      h.vlans, flags)
    _account(ctx, key, proto, n, tcp_flags, int(cfg["sketch_seed"]))
    return Result(verdict, pkt)


def _account(ctx: ModelContext, key: bytes, proto: int, n: int, tcp_flags: int, seed: int) -> None:
    """mon_account: protocol histogram, sketch, then the flow table."""
    now = ctx.now()
    n16 = min(n, 0xFFFF)
    _add(ctx.tables["proto_hist"], proto, n)
    sketch = ctx.tables["sketch"]
    for row, col in enumerate(sketch_cols(key_words(key), seed)):
        _add(sketch, row * SKETCH_COLS + col, n)
    flows = ctx.tables["flows"]
    flow = flows.lookup_ref(key)
    if flow is None:
        fresh = {"packets": 1, "bytes": n, "first_ns": now, "last_ns": now, "tcp_flags": tcp_flags,
                 "min_len": n16, "max_len": n16}
        if flows.fp_update(key, fresh, BPF_NOEXIST) == 0:
            ctx.count("flow_new", n)
            return
        flow = flows.lookup_ref(key)
        if flow is None:
            ctx.count("flow_lost", n)
            return
    flow["packets"] += 1
    flow["bytes"] += n
    flow["last_ns"] = now
    flow["tcp_flags"] |= tcp_flags
    flow["min_len"] = min(int(flow["min_len"]), n16)
    flow["max_len"] = max(int(flow["max_len"]), n16)
    ctx.count("flow_update", n)
