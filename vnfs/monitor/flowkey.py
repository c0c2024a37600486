"""Flow keys for people: ``FlowKey`` is ``struct flow_key`` with addresses, protocol names and
ports, written and read as text such as ``udp 198.18.0.1:4000 > 198.18.1.1:53 vlan 100``.

Every bad input raises ``FlowKeyError`` naming the flow it came from.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datapath.errors import VnfkitError
from vnfkit.pyfile import import_file

model = import_file(Path(__file__).with_name("model.py"), "the monitor's model and hash functions", VnfkitError)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
PROTOCOLS = {"icmp": 1, "igmp": 2, "tcp": 6, "udp": 17, "gre": 47, "esp": 50, "ah": 51, "icmpv6": 58,
             "sctp": 132}
PROTOCOL_NAMES = {v: k for k, v in PROTOCOLS.items()}
PORTED = (6, 17)  # protocols keyed with ports; ICMP is keyed by type and code instead


class FlowKeyError(VnfkitError):
    """A flow given to the monitor's control plane is not a valid flow; the message names it."""


def _is_icmp(proto: int, ipver: int) -> bool:
    return (proto == 1 and ipver == 4) or (proto == 58 and ipver == 6)


@dataclass(frozen=True)
class FlowKey:
    """One flow as the fast path keys it. For ICMP/ICMPv6 ``dport`` is ``type << 8 | code``;
    fragments (``fragment=True``) and protocols without ports have ports 0."""

    src: IPAddress
    dst: IPAddress
    proto: int
    sport: int = 0
    dport: int = 0
    vlans: tuple[int, ...] = ()
    fragment: bool = False

    @property
    def ipver(self) -> int:
        return self.src.version

    def pack(self) -> bytes:
        """The 44 bytes of ``struct flow_key``: the key of the ``flows`` table."""
        vids = (*self.vlans, 0, 0)
        return model.pack_key(self.src.packed, self.dst.packed, self.sport, self.dport, vids[0], vids[1], self.proto,
                              self.ipver, len(self.vlans), model.FLOW_F_FRAG if self.fragment else 0)

    @classmethod
    def unpack(cls, raw: bytes | Any) -> FlowKey:
        """A key read from the ``flows`` table (bytes or a numpy record)."""
        data = raw.tobytes() if hasattr(raw, "tobytes") else bytes(raw)
        if len(data) != model.KEY_SIZE:
            raise FlowKeyError(f"a flow key is {model.KEY_SIZE} bytes, not {len(data)}")
        src, dst, sport, dport, vid0, vid1, proto, ipver, vlans, flags = struct.unpack(model.KEY_FORMAT, data)
        if ipver not in (4, 6) or vlans > 2:
            raise FlowKeyError(f"not a monitor flow key (IP version {ipver}, {vlans} tags): {data.hex()}")
        size = 4 if ipver == 4 else 16
        return cls(ipaddress.ip_address(src[:size]), ipaddress.ip_address(dst[:size]), proto, sport, dport,
                   (vid0, vid1)[:vlans], bool(flags & model.FLOW_F_FRAG))

    def __str__(self) -> str:
        name = PROTOCOL_NAMES.get(self.proto, str(self.proto))
        if self.proto in PORTED and not self.fragment:
            text = f"{name} {_endpoint(self.src, self.sport)} > {_endpoint(self.dst, self.dport)}"
        else:
            text = f"{name} {self.src} > {self.dst}"
        if _is_icmp(self.proto, self.ipver) and not self.fragment:
            text += f" type {self.dport >> 8}/{self.dport & 0xFF}"
        if self.vlans:
            text += " vlan " + ".".join(str(v) for v in self.vlans)
        return text + (" frag" if self.fragment else "")


def _endpoint(addr: IPAddress, port: int) -> str:
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"


def flow_key(src: str | IPAddress, dst: str | IPAddress, proto: int | str, sport: int = 0, dport: int = 0,
             vlans: tuple[int, ...] | list[int] = (), fragment: bool = False, *, where: str | None = None) -> FlowKey:
    """A checked ``FlowKey``; ``where`` names the flow in errors (default: the arguments)."""
    where = where or f"{proto} {src} > {dst}"

    def bad(why: str) -> FlowKeyError:
        return FlowKeyError(f"flow '{where}': {why}")

    number = _protocol(proto, bad)
    try:
        a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    except ValueError as exc:
        raise bad(str(exc)) from None
    if a.version != b.version:
        raise bad(f"source {a} is IPv{a.version} but destination {b} is IPv{b.version}")
    for name, port in (("source port", sport), ("destination port", dport)):
        if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
            raise bad(f"{name} {port!r} is not in 0..65535")
    if (sport or dport) and (fragment or (number not in PORTED and not _is_icmp(number, a.version))):
        raise bad("only unfragmented TCP and UDP are keyed by ports (ICMP by type/code), so ports must be 0")
    if _is_icmp(number, a.version) and sport:
        raise bad("ICMP flows have source port 0 (the type and code are the destination port)")
    vids = tuple(vlans)
    if len(vids) > 2:
        raise bad(f"{len(vids)} VLAN tags; the monitor keys at most 2")
    for vid in vids:
        if not isinstance(vid, int) or not 0 <= vid <= 4095:
            raise bad(f"VLAN id {vid!r} is not in 0..4095")
    return FlowKey(a, b, number, sport, dport, vids, bool(fragment))


def _protocol(proto: int | str, bad: Any) -> int:
    if isinstance(proto, str):
        if proto.lower() in PROTOCOLS:
            return PROTOCOLS[proto.lower()]
        if not proto.isdigit():
            raise bad(f"unknown protocol {proto!r} (names: {', '.join(PROTOCOLS)}, or a number)")
        proto = int(proto)
    if not isinstance(proto, int) or not 0 <= proto <= 255:
        raise bad(f"protocol {proto!r} is not in 0..255")
    return proto


def parse_flow(text: str) -> FlowKey:
    """``FlowKey`` from its text: ``PROTO SRC[:PORT] > DST[:PORT] [type T/C] [vlan V[.V]] [frag]``
    (IPv6 with a port as ``[2001:db8::1]:53``), the format ``str(FlowKey)`` writes."""
    words = text.split()

    def bad(why: str) -> FlowKeyError:
        return FlowKeyError(f"flow '{text}': {why}")

    if len(words) < 4 or words[2] != ">":
        raise bad("expected 'PROTO SRC[:PORT] > DST[:PORT] [type T/C] [vlan V[.V]] [frag]'")
    (src, sport), (dst, dport) = _split_endpoint(words[1], bad), _split_endpoint(words[3], bad)
    vlans: tuple[int, ...] = ()
    fragment = False
    rest = words[4:]
    while rest:
        word = rest.pop(0)
        if word == "frag":
            fragment = True
        elif word in ("vlan", "type") and rest:
            value = rest.pop(0)
            sep = "." if word == "vlan" else "/"
            try:
                numbers = tuple(int(v) for v in value.split(sep))
            except ValueError:
                raise bad(f"'{word} {value}' is not {'VID[.VID]' if word == 'vlan' else 'TYPE/CODE'}") from None
            if word == "vlan":
                vlans = numbers
            elif len(numbers) != 2 or not all(0 <= v <= 255 for v in numbers):
                raise bad(f"'type {value}' is not TYPE/CODE with both in 0..255")
            else:
                dport = numbers[0] << 8 | numbers[1]
        else:
            raise bad(f"unexpected '{word}'")
    return flow_key(src, dst, words[0], sport, dport, vlans, fragment, where=text)


def _split_endpoint(word: str, bad: Any) -> tuple[str, int]:
    """'198.18.0.1:53' / '[2001:db8::1]:53' / '2001:db8::1' / '198.18.0.1' -> (address, port)."""
    if word.startswith("["):
        addr, _, port = word[1:].partition("]")
        port = port.removeprefix(":")
    elif word.count(":") == 1:
        addr, port = word.split(":")
    else:
        addr, port = word, ""
    if port and not port.isdigit():
        raise bad(f"port {port!r} of '{word}' is not a number")
    return addr, int(port) if port else 0
