"""The Network Service Header (RFC 8300) in Python: what the control plane and the tests use
to build and read NSH, checked against independent dissectors (scapy's contrib NSH layer
and Wireshark's tshark).

Layout (RFC 8300 section 2):

    base header   Ver(2) O(1) U(1) TTL(6) Length(6) | U(4) MD-Type(4) | Next Protocol(8)
    service path  SPI(24) SI(8)
    context       MD type 1: 16 bytes; MD type 2: TLVs of Class(16) Type(8) U(1) Len(7) + value
                  padded to 4 bytes

Length counts 4-byte words of the whole NSH (base + service path + context).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum

from datapath.errors import VnfkitError

ETHERTYPE_NSH = 0x894F
VXLAN_GPE_PORT = 4790
MAX_TTL = 63
DEFAULT_TTL = 63


class NshError(VnfkitError):
    """Bytes that are not a valid NSH, or header fields out of range."""


class NextProto(IntEnum):
    IPV4 = 1
    IPV6 = 2
    ETHERNET = 3
    NSH = 4
    MPLS = 5


@dataclass(frozen=True)
class ContextTlv:
    """One MD type 2 context header."""

    md_class: int
    type: int
    value: bytes = b""

    def encode(self) -> bytes:
        if not 0 <= self.md_class <= 0xFFFF or not 0 <= self.type <= 0xFF:
            raise NshError(f"MD type 2 TLV class {self.md_class} / type {self.type} out of range")
        if len(self.value) > 127:
            raise NshError(f"MD type 2 TLV value of {len(self.value)} bytes: at most 127")
        pad = (-len(self.value)) % 4
        return struct.pack("!HBB", self.md_class, self.type, len(self.value)) + self.value + bytes(pad)


@dataclass(frozen=True)
class Nsh:
    """An NSH header. ``context`` is MD type 1's 16 bytes; ``tlvs`` MD type 2's headers."""

    spi: int
    si: int
    next_proto: int = NextProto.ETHERNET
    ttl: int = DEFAULT_TTL
    md_type: int = 1
    context: bytes = bytes(16)
    tlvs: tuple[ContextTlv, ...] = field(default_factory=tuple)
    oam: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.spi < 1 << 24:
            raise NshError(f"SPI {self.spi} out of range (24 bits)")
        if not 0 <= self.si <= 255:
            raise NshError(f"SI {self.si} out of range (8 bits)")
        if not 0 <= self.ttl <= MAX_TTL:
            raise NshError(f"TTL {self.ttl} out of range (6 bits)")
        if self.md_type not in (1, 2):
            raise NshError(f"MD type {self.md_type}: vnfkit speaks MD types 1 and 2")
        if self.md_type == 1 and len(self.context) != 16:
            raise NshError(f"MD type 1 needs 16 bytes of context, not {len(self.context)}")
        if not 0 <= self.next_proto <= 255:
            raise NshError(f"next protocol {self.next_proto} out of range")

    @property
    def length_words(self) -> int:
        return len(self.encode()) // 4

    def encode(self) -> bytes:
        context = self.context if self.md_type == 1 else b"".join(t.encode() for t in self.tlvs)
        words = 2 + len(context) // 4
        if words > 0x3F:
            raise NshError(f"NSH of {words * 4} bytes: Length has 6 bits (at most 252 bytes)")
        first = (0 << 14) | (int(self.oam) << 13) | (self.ttl << 6) | words
        return struct.pack("!HBBI", first, self.md_type & 0x0F, self.next_proto, (self.spi << 8) | self.si) + context

    def decremented(self) -> Nsh:
        """The header after one service function: SI - 1 (RFC 8300 section 2.3)."""
        if self.si == 0:
            raise NshError("SI is already 0: the packet must be dropped")
        return Nsh(self.spi, self.si - 1, self.next_proto, self.ttl, self.md_type, self.context, self.tlvs, self.oam)


def decode(data: bytes) -> tuple[Nsh, bytes]:
    """Parse an NSH at the start of ``data``; returns the header and what follows it."""
    if len(data) < 8:
        raise NshError(f"{len(data)} bytes: an NSH needs at least 8")
    first, md_byte, next_proto, sp = struct.unpack_from("!HBBI", data)
    version, oam, ttl, words = first >> 14, bool(first & 0x2000), (first >> 6) & 0x3F, first & 0x3F
    if version != 0:
        raise NshError(f"NSH version {version}: only version 0 exists")
    md_type = md_byte & 0x0F
    length = words * 4
    if words < 2 or length > len(data):
        raise NshError(f"NSH Length says {length} bytes, {len(data)} are there")
    context = data[8:length]
    tlvs: list[ContextTlv] = []
    if md_type == 1:
        if words != 6:
            raise NshError(f"MD type 1 has Length 6, this header says {words}")
    elif md_type == 2:
        off = 0
        while off < len(context):
            if off + 4 > len(context):
                raise NshError(f"MD type 2 TLV header truncated at context byte {off}")
            md_class, tlv_type, tlv_len = struct.unpack_from("!HBB", context, off)
            tlv_len &= 0x7F
            end = off + 4 + tlv_len
            if end > len(context):
                raise NshError(f"MD type 2 TLV (class {md_class:#x}, type {tlv_type}) runs past the header")
            tlvs.append(ContextTlv(md_class, tlv_type, bytes(context[off + 4:end])))
            off = end + (-tlv_len) % 4
    else:
        raise NshError(f"MD type {md_type}: vnfkit speaks MD types 1 and 2")
    nsh = Nsh(spi=sp >> 8, si=sp & 0xFF, next_proto=next_proto, ttl=ttl, md_type=md_type,
              context=bytes(context) if md_type == 1 else bytes(16), tlvs=tuple(tlvs), oam=oam)
    return nsh, data[length:]


def vxlan_gpe(vni: int, next_proto: int = NextProto.NSH) -> bytes:
    """A VXLAN-GPE header (draft-ietf-nvo3-vxlan-gpe): flags I and P set, next protocol."""
    if not 0 <= vni < 1 << 24:
        raise NshError(f"VNI {vni} out of range (24 bits)")
    return struct.pack("!BBBBI", 0x0C, 0, 0, next_proto, vni << 8)
