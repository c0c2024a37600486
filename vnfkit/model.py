"""What a VNF's reference model (``model.py``) works with.

A model is a pure function ``process(pkt: bytearray, ctx: ModelContext) -> Result``: packet
bytes, tables and config in; verdict and output bytes out. It is the specification the C
fast path is checked against, packet for packet, so the helpers here are the Python twins
of ``vnfkit.h``: ``parse`` mirrors ``vk_parse`` field for field, ``csum_replace2/4`` mirror
the RFC 1624 helpers, and the tables are ``Table``s with the kernel's semantics.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from datapath.tables import Table
from datapath.verdict import Verdict

__all__ = ["Verdict", "Result", "ModelContext", "Hdrs", "parse", "csum_replace2", "csum_replace4",
           "fmix32", "murmur3_words", "PARSE_OK", "PARSE_TRUNCATED", "PARSE_BAD"]

ETH_P_IP, ETH_P_IPV6, ETH_P_NSH, ETH_P_8021Q, ETH_P_8021AD = 0x0800, 0x86DD, 0x894F, 0x8100, 0x88A8
IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP, IPPROTO_ICMPV6 = 6, 17, 1, 58
IPV6_EXT = {0, 43, 44, 60, 51}  # hop-by-hop, routing, fragment, destination options, AH
MAX_OFF, MAX_VLANS, MAX_IPV6_EXT = 1024, 2, 6  # as VK_MAX_OFF, VK_MAX_VLANS, VK_MAX_IPV6_EXT
PARSE_OK, PARSE_TRUNCATED, PARSE_BAD = 0, -1, -2
FRAG_NONE, FRAG_FIRST, FRAG_LATER = 0, 1, 2


@dataclass
class Result:
    verdict: Verdict
    data: bytes | bytearray
    port: int = 0


@dataclass
class Hdrs:
    """What ``parse`` found; the same fields as ``struct vk_hdrs``."""

    error: int = PARSE_OK
    l3_proto: int = 0
    l3_off: int = 0
    l4_off: int = 0
    payload_off: int = 0
    l4_proto: int = 0
    vlans: int = 0
    frag: int = FRAG_NONE
    ip_hlen: int = 0
    vlan_tci: list[int] = field(default_factory=lambda: [0, 0])


def _fits(pkt: bytes | bytearray, off: int, length: int) -> bool:
    """vk_ptr: ``length`` bytes at ``off`` are inside the packet, and ``off`` is in range."""
    return off <= MAX_OFF and off + length <= len(pkt)


def _be16(pkt: bytes | bytearray, off: int) -> int:
    return (pkt[off] << 8) | pkt[off + 1]


def _parse_l4(pkt: bytes | bytearray, h: Hdrs, off: int, proto: int) -> int:
    h.l4_proto = proto
    if proto == IPPROTO_TCP:
        if not _fits(pkt, off, 20):
            return PARSE_TRUNCATED
        hlen = (pkt[off + 12] >> 4) * 4
        if hlen < 20:
            return PARSE_BAD
    elif proto == IPPROTO_UDP:
        hlen = 8
    elif proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
        hlen = 4
    else:
        return PARSE_OK
    if not _fits(pkt, off, hlen):
        return PARSE_TRUNCATED
    h.l4_off, h.payload_off = off, off + hlen
    return PARSE_OK


def _parse_ipv4(pkt: bytes | bytearray, h: Hdrs, off: int) -> int:
    if not _fits(pkt, off, 20):
        return PARSE_TRUNCATED
    version, hlen = pkt[off] >> 4, (pkt[off] & 0xF) * 4
    if version != 4 or hlen < 20 or _be16(pkt, off + 2) < hlen:
        return PARSE_BAD
    if not _fits(pkt, off, hlen):
        return PARSE_TRUNCATED
    h.ip_hlen = hlen
    frag = _be16(pkt, off + 6)
    if frag & 0x1FFF:
        h.frag, h.l4_proto = FRAG_LATER, pkt[off + 9]
        return PARSE_OK
    if frag & 0x2000:
        h.frag = FRAG_FIRST
    return _parse_l4(pkt, h, off + hlen, pkt[off + 9])


def _parse_ipv6(pkt: bytes | bytearray, h: Hdrs, off: int) -> int:
    if not _fits(pkt, off, 40):
        return PARSE_TRUNCATED
    if pkt[off] >> 4 != 6:
        return PARSE_BAD
    h.ip_hlen = 40
    nxt = pkt[off + 6]
    off += 40
    for _ in range(MAX_IPV6_EXT):
        if nxt not in IPV6_EXT:
            break
        if not _fits(pkt, off, 8):
            return PARSE_TRUNCATED
        if nxt == 44:  # fragment header
            fo = _be16(pkt, off + 2)
            nxt = pkt[off]
            off += 8
            if fo & 0xFFF8:
                h.frag, h.l4_proto = FRAG_LATER, nxt
                return PARSE_OK
            if fo & 1:
                h.frag = FRAG_FIRST
            continue
        length = (pkt[off + 1] + 2) * 4 if nxt == 51 else (pkt[off + 1] + 1) * 8
        nxt = pkt[off]
        off += length
    return _parse_l4(pkt, h, off, nxt)


def parse(pkt: bytes | bytearray) -> Hdrs:
    """The twin of ``vk_parse``: Ethernet, two VLAN tags, IPv4/IPv6/NSH, TCP/UDP/ICMP."""
    h = Hdrs()
    h.error = _parse(pkt, h)
    return h


def _parse(pkt: bytes | bytearray, h: Hdrs) -> int:
    if not _fits(pkt, 0, 14):
        return PARSE_TRUNCATED
    proto, off = _be16(pkt, 12), 14
    for i in range(MAX_VLANS):
        if proto not in (ETH_P_8021Q, ETH_P_8021AD):
            break
        if not _fits(pkt, off, 4):
            return PARSE_TRUNCATED
        h.vlan_tci[i] = _be16(pkt, off)
        h.vlans = i + 1
        proto = _be16(pkt, off + 2)
        off += 4
    h.l3_proto, h.l3_off = proto, off
    if proto == ETH_P_IP:
        return _parse_ipv4(pkt, h, off)
    if proto == ETH_P_IPV6:
        return _parse_ipv6(pkt, h, off)
    if proto == ETH_P_NSH:
        if not _fits(pkt, off, 8):
            return PARSE_TRUNCATED
        words = _be16(pkt, off) & 0x3F
        if words < 2:
            return PARSE_BAD
        if not _fits(pkt, off, words * 4):
            return PARSE_TRUNCATED
    return PARSE_OK


M32 = 0xFFFFFFFF


# The hash twins take ints or numpy uint64 arrays (a control plane hashing many keys at once):
# every product is masked to 32 bits, which a 64-bit wrap-around does not disturb.

def _rotl32(x: Any, r: int) -> Any:
    return ((x << r) | (x >> (32 - r))) & M32


def fmix32(h: Any) -> Any:
    """The twin of ``vk_fmix32``: MurmurHash3's finaliser."""
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & M32
    return h ^ (h >> 16)


def murmur3_words(words: Sequence[Any], seed: int) -> Any:
    """The twin of ``vk_murmur3_words``: MurmurHash3 (x86, 32-bit) of little-endian words."""
    h: Any = seed & M32
    for w in words:
        k = _rotl32((w * 0xCC9E2D51) & M32, 15) * 0x1B873593 & M32
        h = (_rotl32(h ^ k, 13) * 5 + 0xE6546B64) & M32
    return fmix32(h ^ (len(words) * 4))


def _fold(s: int) -> int:
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return s


def csum_replace2(csum: int, old: int, new: int) -> int:
    """RFC 1624 eqn. 3 for a 16-bit field, values as big-endian ints: the new checksum."""
    return ~_fold((~csum & 0xFFFF) + (~old & 0xFFFF) + new) & 0xFFFF


def csum_replace4(csum: int, old: int, new: int) -> int:
    s = (~csum & 0xFFFF) + (~old & 0xFFFF) + (~(old >> 16) & 0xFFFF) + (new & 0xFFFF) + (new >> 16)
    return ~_fold(s) & 0xFFFF


class ModelContext:
    """Tables, config, counters and port ids the model sees; one per model executor."""

    def __init__(self, tables: dict[str, Table], config: Any, counter_ids: dict[str, int], ports: dict[str, int],
                 max_counters: int = 64) -> None:
        self.tables = tables
        self.config = config
        self.counter_ids = counter_ids
        self.ports = ports
        self.counters = np.zeros((max_counters, 2), dtype=np.uint64)  # packets, bytes
        self.clock: Table | None = None  # vk_clock, set by the model executor

    def now(self) -> int:
        """As ``vk_now()``: the test clock (``vk_clock``) when set, else monotonic ns."""
        clock = self.clock.lookup(0) if self.clock is not None else 0
        return int(clock) if clock else time.monotonic_ns()

    def count(self, name: str, nbytes: int) -> None:
        """As ``vk_count``: one packet of ``nbytes`` in counter ``name``."""
        slot = self.counter_ids[name]
        self.counters[slot, 0] += 1
        self.counters[slot, 1] += nbytes


def u16(pkt: bytes | bytearray, off: int) -> int:
    return struct.unpack_from("!H", pkt, off)[0]
