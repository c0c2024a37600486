"""The byte layouts of fastpath.c's table keys and values, shared by model.py and control.py.

Addresses and ports are kept as the bytes they are in the packet (network order), as the C
keeps them; integers that are not from the packet (last_seen, flags) are host order, which on
x86 and on little-endian BPF is little-endian. Each ``struct.Struct`` below is the C struct
of the same name field for field, explicit padding included.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

NAT_KEY = struct.Struct("<4s4s2s2sB3x")  # addr, remote, port, rport, proto
NAT_VAL = struct.Struct("<4s2sBxQ")      # addr, port, flags, last_seen
FRAG_KEY = struct.Struct("<4s4s2sBx")    # remote, pool, IPv4 id, proto
FRAG_VAL = struct.Struct("<4s4xQ")       # inside, last_seen
PF_KEY = struct.Struct("<4s2sBx")        # outside addr, outside port, proto
PF_VAL = struct.Struct("<4s2s2x")        # inside addr, inside port

F_DNAT = 1  # NAT_F_DNAT: the session was made by a port forward


class NatKey(NamedTuple):
    """struct nat_key: one half of a session, seen from our side."""

    addr: bytes    # nat_fwd: the inside address; nat_rev: the pool address
    remote: bytes  # the outside peer
    port: bytes    # our side's port (ICMP: the echo id)
    rport: bytes   # the peer's port (ICMP: zero)
    proto: int

    def pack(self) -> bytes:
        return NAT_KEY.pack(*self)

    @classmethod
    def unpack(cls, raw: bytes) -> NatKey:
        return cls(*NAT_KEY.unpack(bytes(raw)))


class NatVal(NamedTuple):
    """struct nat_val: what our side's address and port become, and when it was last used."""

    addr: bytes
    port: bytes
    flags: int
    last_seen: int

    def pack(self) -> bytes:
        return NAT_VAL.pack(*self)

    @classmethod
    def unpack(cls, raw: bytes) -> NatVal:
        return cls(*NAT_VAL.unpack(bytes(raw)))


def frag_key(remote: bytes, pool: bytes, ip_id: bytes, proto: int) -> bytes:
    """struct frag_key."""
    return FRAG_KEY.pack(remote, pool, ip_id, proto)


def frag_val(inside: bytes, last_seen: int) -> bytes:
    """struct frag_val."""
    return FRAG_VAL.pack(inside, last_seen)


def pf_key(addr: bytes, port: bytes, proto: int) -> bytes:
    """struct pf_key."""
    return PF_KEY.pack(addr, port, proto)


def pf_val(addr: bytes, port: bytes) -> bytes:
    """struct pf_val."""
    return PF_VAL.pack(addr, port)
