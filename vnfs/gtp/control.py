"""The gtp VNF's control side: PDU sessions and UE pools in, table entries and config out.

A session (what a packet core's control plane, e.g. an SMF over PFCP, would install) is::

    {"teid_up": 0x100, "teid_down": 0x8001, "peer": "198.18.0.2",
     "ue4": "198.18.7.10", "ue6": "2001:db8:7:1::/64", "qfi": 9, "name": "imsi-001010000000001"}

``teid_up`` is the gateway's own TEID (uplink G-PDUs carry it; it keys the session),
``teid_down`` the eNB/gNB's, ``peer`` the eNB/gNB's GTP-U IPv4 address, ``ue4``/``ue6`` the UE's
IPv4 address and IPv6 /64 (at least one), ``qfi`` a 5G QoS flow id (0: plain GTP-U, as on
S1-U; 1-63: downlink packets carry a PDU session container with it).

Everything is checked before anything is written, and every error names the session or pool
at fault. Writes go through ``datapath.tables.Table``, so the same code fills a
``KernelInstance``'s BPF maps, the native executor's tables or the model's.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from datapath.errors import MapError, VnfkitError
from datapath.tables import Table

MAX_TEID = 0xFFFFFFFF
MAX_QFI = 63
SESS_V4, SESS_V6 = 0x01, 0x02  # as in fastpath.c
SESSION_KEYS = {"teid_up", "teid_down", "peer", "ue4", "ue6", "qfi", "name"}
CONFIG_KEYS = {"gw_addr", "mtu", "ttl", "echo_reply", "check_src", "frag_pass"}


class GtpConfigError(VnfkitError):
    """A session, pool or gateway setting is wrong; the message names which and why."""


@dataclass(frozen=True)
class Session:
    """One PDU session, validated: TEIDs are ints, addresses ``ipaddress`` objects."""

    teid_up: int
    teid_down: int
    peer: ipaddress.IPv4Address
    ue4: ipaddress.IPv4Address | None = None
    ue6: ipaddress.IPv6Network | None = None  # a /64
    qfi: int = 0
    name: str = ""

    @property
    def label(self) -> str:
        """How errors name the session."""
        teid = f"teid_up {self.teid_up:#x}"
        return f"session {self.name!r} ({teid})" if self.name else f"session {teid}"


# ---- parsing human input -------------------------------------------------------------------------

def _teid(value: Any, what: str, where: str) -> int:
    try:
        teid = int(value, 0) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        raise GtpConfigError(f"{where}: {what} {value!r} is not a number") from None
    if isinstance(value, bool) or not 1 <= teid <= MAX_TEID:
        raise GtpConfigError(f"{where}: {what} {value!r} is not in 1..{MAX_TEID:#x} (TEID 0 is reserved "
                             f"for path management)")
    return teid


def _unicast4(value: Any, what: str, where: str) -> ipaddress.IPv4Address:
    try:
        addr = ipaddress.IPv4Address(str(value))
    except ValueError:
        raise GtpConfigError(f"{where}: {what} {value!r} is not an IPv4 address") from None
    if addr.is_unspecified or addr.is_multicast or addr.is_loopback or addr == ipaddress.IPv4Address(0xFFFFFFFF):
        raise GtpConfigError(f"{where}: {what} {addr} is not a unicast address")
    return addr


def _ue6(value: Any, where: str) -> ipaddress.IPv6Network:
    """A UE's IPv6 address or prefix -> its /64 (the fast path keys IPv6 UEs by /64)."""
    text = str(value)
    try:
        net = ipaddress.IPv6Network(text, strict=False) if "/" in text else \
            ipaddress.IPv6Network(f"{ipaddress.IPv6Address(text)}/64", strict=False)
    except ValueError:
        raise GtpConfigError(f"{where}: ue6 {value!r} is not an IPv6 address or prefix") from None
    if net.prefixlen > 64:
        raise GtpConfigError(f"{where}: ue6 {value!r} is longer than /64; IPv6 UEs are matched by their /64")
    if net.is_multicast or net.is_loopback or net.is_link_local or net.is_unspecified:
        raise GtpConfigError(f"{where}: ue6 {value!r} is not a global or unique-local prefix")
    return ipaddress.IPv6Network((net.network_address, 64))


def parse_session(spec: Mapping[str, Any] | Session, where: str = "session") -> Session:
    """One session from a dict (or a Session, re-checked), with errors naming ``where``."""
    if isinstance(spec, Session):
        return spec
    if not isinstance(spec, Mapping):
        raise GtpConfigError(f"{where}: expected a mapping of {sorted(SESSION_KEYS)}, got {type(spec).__name__}")
    unknown = set(spec) - SESSION_KEYS
    if unknown:
        raise GtpConfigError(f"{where}: unknown field(s) {sorted(unknown)} (fields: {sorted(SESSION_KEYS)})")
    name = str(spec.get("name", ""))
    if name:
        where = f"{where} {name!r}"
    for key in ("teid_up", "teid_down", "peer"):
        if key not in spec:
            raise GtpConfigError(f"{where}: {key} is missing")
    teid_up = _teid(spec["teid_up"], "teid_up", where)
    teid_down = _teid(spec["teid_down"], "teid_down", where)
    peer = _unicast4(spec["peer"], "peer", where)
    ue4 = _unicast4(spec["ue4"], "ue4", where) if spec.get("ue4") is not None else None
    ue6 = _ue6(spec["ue6"], where) if spec.get("ue6") is not None else None
    if ue4 is None and ue6 is None:
        raise GtpConfigError(f"{where}: a session needs a UE address (ue4 and/or ue6)")
    qfi = spec.get("qfi", 0)
    if isinstance(qfi, bool) or not isinstance(qfi, int) or not 0 <= qfi <= MAX_QFI:
        raise GtpConfigError(f"{where}: qfi {qfi!r} is not in 0..{MAX_QFI} (0: no PDU session container)")
    return Session(teid_up, teid_down, peer, ue4, ue6, qfi, name)


def parse_pool(value: Any, where: str = "pool") -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A UE pool prefix such as ``198.18.64.0/18`` or ``2001:db8:7::/48``."""
    try:
        net = ipaddress.ip_network(str(value), strict=True)
    except ValueError as exc:
        raise GtpConfigError(f"{where}: {value!r} is not a prefix ({exc})") from None
    return net


def gateway_config(params: Mapping[str, Any]) -> dict[str, Any]:
    """The VNF's config values from the human ones: ``gw_addr`` is required and unicast; the
    rest (mtu, ttl, echo_reply, check_src, frag_pass) are range-checked by the descriptor."""
    unknown = set(params) - CONFIG_KEYS
    if unknown:
        raise GtpConfigError(f"gateway: unknown setting(s) {sorted(unknown)} (settings: {sorted(CONFIG_KEYS)})")
    if "gw_addr" not in params:
        raise GtpConfigError("gateway: gw_addr (the gateway's GTP-U IPv4 address) is missing")
    out = dict(params)
    out["gw_addr"] = str(_unicast4(params["gw_addr"], "gw_addr", "gateway"))
    return out


# ---- table entries ---------------------------------------------------------------------------

def _be32(addr: ipaddress.IPv4Address) -> int:
    """A __be32 field's value as numpy reads it: the wire bytes in host order."""
    return int.from_bytes(addr.packed, sys.byteorder)


def _from_be32(value: Any) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(int(value).to_bytes(4, sys.byteorder))


def session_value(s: Session) -> dict[str, Any]:
    """The ``sessions`` table value (usage counters zero)."""
    return {"teid_down": s.teid_down, "peer": _be32(s.peer),
            "ue4": _be32(s.ue4) if s.ue4 else 0,
            "ue6": list(s.ue6.network_address.packed[:8]) if s.ue6 else [0] * 8,
            "flags": (SESS_V4 if s.ue4 else 0) | (SESS_V6 if s.ue6 else 0), "qfi": s.qfi}


def ue6_key(net: ipaddress.IPv6Network) -> bytes:
    return net.network_address.packed[:8]


def pool_key(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bytes:
    """An LPM key: the prefix length (host order u32), then the address bytes."""
    return net.prefixlen.to_bytes(4, sys.byteorder) + net.network_address.packed


def table_entries(sessions: Iterable[Mapping[str, Any] | Session],
                  pools: Iterable[str] = ()) -> dict[str, dict[Any, Any]]:
    """{table: {key: value}} for a whole configuration, checked as a whole (duplicate TEIDs
    and UE addresses between sessions). The shape ``PacketTest.tables`` takes."""
    parsed = _check_unique([parse_session(s, f"sessions[{i}]") for i, s in enumerate(sessions)])
    out: dict[str, dict[Any, Any]] = {"sessions": {}, "ue4": {}, "ue6": {}, "pool4": {}, "pool6": {}}
    for s in parsed:
        out["sessions"][s.teid_up] = session_value(s)
        if s.ue4:
            out["ue4"][s.ue4.packed] = s.teid_up
        if s.ue6:
            out["ue6"][ue6_key(s.ue6)] = s.teid_up
    for i, p in enumerate(pools):
        net = parse_pool(p, f"pools[{i}]")
        out["pool4" if net.version == 4 else "pool6"][pool_key(net)] = 1
    return {name: entries for name, entries in out.items() if entries}


def _check_unique(sessions: list[Session]) -> list[Session]:
    """Refuse two sessions of one batch sharing a TEID or a UE address."""
    seen: dict[Any, tuple[int, Session]] = {}
    for i, s in enumerate(sessions):
        for key, what in (((0, s.teid_up), f"teid_up {s.teid_up:#x}"), ((4, s.ue4), f"ue4 {s.ue4}"),
                          ((6, s.ue6), f"ue6 {s.ue6}")):
            if key[1] is None:
                continue
            if key in seen:
                j, other = seen[key]
                raise GtpConfigError(f"sessions[{i}], {s.label}: {what} is already used by sessions[{j}], "
                                     f"{other.label}")
            seen[key] = (i, s)
    return sessions


class GtpControl:
    """Sessions and pools on a running gtp VNF (or any executor's tables).

    Writes are ordered for a fast path that runs meanwhile: a session's record before the UE
    entries that lead to it, and on removal the UE entries before the record, so a packet
    never finds a UE entry without its session (and if it did, it would be dropped and
    counted as ``down_no_session``, not misrouted).
    """

    def __init__(self, tables: Mapping[str, Table], gw_addr: str | None = None) -> None:
        missing = {"sessions", "ue4", "ue6", "pool4", "pool6"} - set(tables)
        if missing:
            raise GtpConfigError(f"these tables are not gtp's: {sorted(missing)} are missing")
        self.tables = tables
        self.gw_addr = ipaddress.IPv4Address(gw_addr) if gw_addr else None

    def _check_free(self, s: Session) -> None:
        """Refuse a session whose TEID or UE addresses are already installed."""
        if s.teid_up in self.tables["sessions"]:
            raise GtpConfigError(f"{s.label}: teid_up {s.teid_up:#x} is already in use by "
                                 f"{self.session(s.teid_up).label}")
        if s.ue4 and s.ue4.packed in self.tables["ue4"]:
            other = int(self.tables["ue4"][s.ue4.packed])
            raise GtpConfigError(f"{s.label}: ue4 {s.ue4} is already in use by session teid_up {other:#x}")
        if s.ue6 and ue6_key(s.ue6) in self.tables["ue6"]:
            other = int(self.tables["ue6"][ue6_key(s.ue6)])
            raise GtpConfigError(f"{s.label}: ue6 {s.ue6} is already in use by session teid_up {other:#x}")
        if self.gw_addr is not None and self.gw_addr in (s.ue4, s.peer):
            raise GtpConfigError(f"{s.label}: {self.gw_addr} is the gateway's own address")

    def _install(self, s: Session) -> None:
        try:
            self.tables["sessions"][s.teid_up] = session_value(s)
            if s.ue4:
                self.tables["ue4"][s.ue4.packed] = s.teid_up
            if s.ue6:
                self.tables["ue6"][ue6_key(s.ue6)] = s.teid_up
        except MapError as exc:  # a full table: undo this session's writes
            self._unlink(s)
            raise GtpConfigError(f"{s.label}: cannot be installed: {exc}") from None

    def add_session(self, spec: Mapping[str, Any] | Session) -> Session:
        """Install one session; refuses a TEID or UE address already in use."""
        s = parse_session(spec)
        self._check_free(s)
        self._install(s)
        return s

    def add_sessions(self, specs: Iterable[Mapping[str, Any] | Session]) -> list[Session]:
        """Install many, all checked (against each other and the tables) before any is written."""
        parsed = _check_unique([parse_session(s, f"sessions[{i}]") for i, s in enumerate(specs)])
        for i, s in enumerate(parsed):
            try:
                self._check_free(s)
            except GtpConfigError as exc:
                raise GtpConfigError(f"sessions[{i}], {exc}") from None
        for s in parsed:
            self._install(s)
        return parsed

    def _unlink(self, s: Session) -> None:
        for table, key in (("ue4", s.ue4.packed if s.ue4 else None), ("ue6", ue6_key(s.ue6) if s.ue6 else None),
                           ("sessions", s.teid_up)):
            if key is not None and key in self.tables[table]:
                del self.tables[table][key]

    def remove_session(self, teid_up: int) -> Session:
        """Remove the session with this uplink TEID; returns what it was."""
        s = self.session(teid_up)
        self._unlink(s)
        return s

    def session(self, teid_up: int) -> Session:
        """The installed session with this uplink TEID."""
        value = self.tables["sessions"].lookup(teid_up)
        if value is None:
            raise GtpConfigError(f"no session with teid_up {teid_up:#x}")
        flags = int(value["flags"])
        ue4 = _from_be32(value["ue4"]) if flags & SESS_V4 else None
        ue6 = ipaddress.IPv6Network((bytes(value["ue6"]) + bytes(8), 64)) if flags & SESS_V6 else None
        return Session(teid_up, int(value["teid_down"]), _from_be32(value["peer"]), ue4, ue6, int(value["qfi"]))

    def usage(self, teid_up: int) -> dict[str, int]:
        """Packets and inner bytes each way, and the time (vk_now ns) of the last packet."""
        value = self.tables["sessions"].lookup(teid_up)
        if value is None:
            raise GtpConfigError(f"no session with teid_up {teid_up:#x}")
        return {k: int(value[k]) for k in ("up_packets", "up_bytes", "down_packets", "down_bytes", "last_seen")}

    def add_pool(self, prefix: str) -> None:
        """A UE pool: downlink packets to it that match no session are dropped, not routed."""
        net = parse_pool(prefix, f"pool {prefix}")
        try:
            self.tables["pool4" if net.version == 4 else "pool6"][pool_key(net)] = 1
        except MapError as exc:
            raise GtpConfigError(f"pool {prefix}: cannot be installed: {exc}") from None


def apply(spec: Mapping[str, Any], tables: Mapping[str, Table]) -> dict[str, Any]:
    """A whole configuration — ``{"gateway": {...}, "sessions": [...], "pools": [...]}`` —
    checked, written to ``tables``; returns the config values for the VNF
    (``KernelInstance(folder, config=...)`` or ``.configure(...)``)."""
    unknown = set(spec) - {"gateway", "sessions", "pools"}
    if unknown:
        raise GtpConfigError(f"unknown section(s) {sorted(unknown)} (sections: gateway, sessions, pools)")
    config = gateway_config(spec.get("gateway", {}))
    pools = [parse_pool(p, f"pools[{i}]") for i, p in enumerate(spec.get("pools", []))]
    control = GtpControl(tables, config["gw_addr"])
    control.add_sessions(spec.get("sessions", []))  # all checked before any is written
    for net in pools:
        control.add_pool(str(net))
    return config
