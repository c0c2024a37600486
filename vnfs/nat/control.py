"""nat's control plane: a human configuration in, table entries and parameters out.

    spec = {
        "inside": ["198.18.10.0/24"],                  # prefixes whose sources are translated
        "pool": "198.18.40.0/30",                      # CIDR (every address), "first-last" or one address
        "ports": "1024-65535",                         # outside ports (and ICMP echo ids) to allocate
        "forwards": [{"proto": "tcp", "outside": "198.18.40.1:8080", "inside": "198.18.10.2:8000"}],
        "timeouts": {"tcp": 7440, "udp": 300, "icmp": 60, "fragments": 30},   # seconds
        "max_probes": 8, "hash_seed": 0, "translate_fragments": True, "pass_unmatched": False,
    }
    p = plan(spec)                 # validates everything; NatConfigError names each offending entry
    instance.configure(p.config)   # a KernelInstance (or an executor, with descriptor defaults merged)
    apply(p, instance.tables)      # writes `inside` and `port_fwd` through the Table interface

``sessions(tables)`` reads the live mappings back; ``session_entries`` builds the two halves
of a mapping as table entries (to pre-seed tables in tests). The byte layouts are layout.py's.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datapath.errors import VnfkitError
from datapath.tables import Table
from vnfkit.pyfile import import_file

_layout = import_file(Path(__file__).with_name("layout.py"), "nat's table layouts", VnfkitError)

PROTOS = {"tcp": 6, "udp": 17}
PROTO_NAMES = {6: "tcp", 17: "udp", 1: "icmp"}
MAX_INSIDE = 256      # the `inside` table's max_entries
MAX_FORWARDS = 1024   # the `port_fwd` table's max_entries
MAX_POOL = 65536      # pool_count's max
MAX_PROBES = 16       # NAT_MAX_PROBES
TIMEOUTS = {"tcp": ("tcp_timeout", 7440), "udp": ("udp_timeout", 300), "icmp": ("icmp_timeout", 60),
            "fragments": ("frag_timeout", 30)}
KNOWN = ("inside", "pool", "ports", "forwards", "timeouts", "max_probes", "hash_seed", "translate_fragments",
         "pass_unmatched")


class NatConfigError(VnfkitError):
    """A nat configuration is wrong; ``problems`` holds one line per offending setting or entry."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("nat configuration: " + "; ".join(problems))


@dataclass(frozen=True)
class PortForward:
    """Outside address:port of one protocol to an inside address:port."""

    proto: str
    outside: ipaddress.IPv4Address
    outside_port: int
    inside: ipaddress.IPv4Address
    inside_port: int

    def __str__(self) -> str:
        return f"{self.proto} {self.outside}:{self.outside_port} -> {self.inside}:{self.inside_port}"

    def entry(self) -> tuple[bytes, bytes]:
        """The `port_fwd` key and value."""
        return (_layout.pf_key(self.outside.packed, self.outside_port.to_bytes(2, "big"), PROTOS[self.proto]),
                _layout.pf_val(self.inside.packed, self.inside_port.to_bytes(2, "big")))


@dataclass
class NatPlan:
    """A validated configuration: ``config`` for the VNF's parameters, and table contents."""

    inside: list[ipaddress.IPv4Network]
    pool_first: ipaddress.IPv4Address
    pool_count: int
    forwards: list[PortForward]
    config: dict[str, Any] = field(default_factory=dict)

    def tables(self) -> dict[str, dict[Any, Any]]:
        """{table: {key: value}}, in the form PacketTest.tables and Table.update take."""
        return {"inside": {str(net): 1 for net in self.inside},
                "port_fwd": dict(f.entry() for f in self.forwards)}


def plan(spec: Mapping[str, Any]) -> NatPlan:
    """Validate ``spec`` (see the module docstring) and turn it into a NatPlan.

    Raises NatConfigError listing every problem, each naming its setting or entry.
    """
    problems: list[str] = []
    for key in spec:
        if key not in KNOWN:
            problems.append(f"unknown setting {key!r} (known: {', '.join(KNOWN)})")
    inside = _inside(spec.get("inside"), problems)
    pool = _pool(spec.get("pool"), problems)
    for i, net in enumerate(inside):
        if pool and _overlaps(net, pool):
            problems.append(f"inside[{i}] {net} overlaps the pool {_pool_text(pool)}")
    port_min, port_max = _ports(spec.get("ports", "1024-65535"), problems)
    config: dict[str, Any] = {"port_min": port_min, "port_max": port_max}
    if pool:
        config.update(pool_first=str(pool[0]), pool_count=pool[1])
    timeouts = spec.get("timeouts", {})
    if not isinstance(timeouts, Mapping):
        problems.append(f"timeouts: expected a mapping of {', '.join(TIMEOUTS)} to seconds, got {timeouts!r}")
        timeouts = {}
    for key, seconds in timeouts.items():
        if key not in TIMEOUTS:
            problems.append(f"timeouts.{key}: unknown (known: {', '.join(TIMEOUTS)})")
        elif _int_in(seconds, 1, 2**32 - 1):
            config[TIMEOUTS[key][0]] = seconds
        else:
            problems.append(f"timeouts.{key}: {seconds!r} is not a number of seconds in 1..{2**32 - 1}")
    for key, low, high in (("max_probes", 1, MAX_PROBES), ("hash_seed", 0, 2**32 - 1)):
        if key in spec:
            if _int_in(spec[key], low, high):
                config[key] = spec[key]
            else:
                problems.append(f"{key}: {spec[key]!r} is not an integer in {low}..{high}")
    for key in ("translate_fragments", "pass_unmatched"):
        if key in spec:
            if isinstance(spec[key], bool) or spec[key] in (0, 1):
                config[key] = int(spec[key])
            else:
                problems.append(f"{key}: {spec[key]!r} is not true or false")
    forwards = _forwards(spec.get("forwards", []), inside, pool, (port_min, port_max), problems)
    if problems:
        raise NatConfigError(problems)
    assert pool is not None
    return NatPlan(inside, pool[0], pool[1], forwards, config)


def apply(nat_plan: NatPlan, tables: Mapping[str, Table]) -> None:
    """Make the `inside` and `port_fwd` tables hold exactly the plan's entries.

    New entries are written before stale ones are deleted, so a live VNF never sees a table
    emptied in between. Sessions already made by a removed forward live until they time out.
    """
    for name, entries in nat_plan.tables().items():
        table = tables[name]
        wanted = set()
        for key, value in entries.items():
            table[key] = value
            wanted.add(table.pack_key(key))
        for raw in list(table.raw_keys()):
            if raw not in wanted:
                table.delete(raw)


@dataclass(frozen=True)
class Session:
    """One mapping, read from nat_fwd."""

    proto: str
    inside: tuple[str, int]
    outside: tuple[str, int]
    remote: tuple[str, int]
    last_seen: int
    dnat: bool

    def __str__(self) -> str:
        kind = "forward" if self.dnat else "snat"
        return (f"{self.proto} {self.inside[0]}:{self.inside[1]} = {self.outside[0]}:{self.outside[1]} "
                f"<-> {self.remote[0]}:{self.remote[1]} ({kind}, last seen {self.last_seen} ns)")


def sessions(tables: Mapping[str, Table]) -> list[Session]:
    """Every mapping in nat_fwd, decoded (expired ones included until the fast path removes them)."""
    out = []
    fwd = tables["nat_fwd"]
    for raw in fwd.raw_keys():
        value = fwd.lookup(raw)
        if value is None:
            continue  # removed while we iterated
        k, v = _layout.NatKey.unpack(raw), _layout.NatVal.unpack(value.tobytes())
        out.append(Session(PROTO_NAMES.get(k.proto, str(k.proto)), _endpoint(k.addr, k.port),
                           _endpoint(v.addr, v.port), _endpoint(k.remote, k.rport), v.last_seen,
                           bool(v.flags & _layout.F_DNAT)))
    return out


def session_entries(proto: str, inside: str, outside: str, remote: str, last_seen: int,
                    dnat: bool = False) -> dict[str, dict[bytes, bytes]]:
    """Both halves of one mapping as {table: {key: value}}: ``inside``, ``outside`` and
    ``remote`` are "address:port" (for ICMP the port is the echo id, and the remote's is 0)."""
    number = {"icmp": 1, **PROTOS}.get(proto)
    try:
        if number is None:
            raise ValueError(f"session: proto {proto!r} is not tcp, udp or icmp")
        (ia, ip_), (oa, op), (ra, rp) = (_parse_endpoint(e, "session") for e in (inside, outside, remote))
    except ValueError as exc:
        raise NatConfigError([str(exc)]) from None
    flags = _layout.F_DNAT if dnat else 0
    fwd_key = _layout.NatKey(ia, ra, ip_, rp, number)
    rev_key = _layout.NatKey(oa, ra, op, rp, number)
    return {"nat_fwd": {fwd_key.pack(): _layout.NatVal(oa, op, flags, last_seen).pack()},
            "nat_rev": {rev_key.pack(): _layout.NatVal(ia, ip_, flags, last_seen).pack()}}


def fragment_entry(remote: str, pool: str, ip_id: int, proto: int, inside: str,
                   last_seen: int) -> dict[str, dict[bytes, bytes]]:
    """The `frags` record an inbound first fragment leaves for the later fragments of its
    datagram (``remote`` to ``pool`` with IPv4 id ``ip_id``, bound for ``inside``)."""
    try:
        raw = [ipaddress.IPv4Address(a).packed for a in (remote, pool, inside)]
    except ValueError as exc:
        raise NatConfigError([f"fragment: {exc}"]) from None
    key = _layout.frag_key(raw[0], raw[1], ip_id.to_bytes(2, "big"), proto)
    return {"frags": {key: _layout.frag_val(raw[2], last_seen)}}


# ---- validation helpers ----------------------------------------------------------------------

def _int_in(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _inside(value: Any, problems: list[str]) -> list[ipaddress.IPv4Network]:
    if value is None:
        problems.append("inside: missing (the prefixes whose sources are translated)")
        return []
    items = [value] if isinstance(value, str) else list(value)
    if not items:
        problems.append("inside: empty (name at least one prefix)")
    if len(items) > MAX_INSIDE:
        problems.append(f"inside: {len(items)} prefixes, the table holds {MAX_INSIDE}")
    nets = []
    for i, text in enumerate(items):
        try:
            net = ipaddress.ip_network(str(text))
        except ValueError as exc:
            problems.append(f"inside[{i}] {text!r}: {exc}")
            continue
        if net.version != 4:
            problems.append(f"inside[{i}] {text!r}: IPv6 is not translated (no NAT66); IPv6 passes untouched")
            continue
        nets.append(net)
    return nets


def _pool(value: Any, problems: list[str]) -> tuple[ipaddress.IPv4Address, int] | None:
    """(first address, count) from "a.b.c.d/nn", "first-last" or one address."""
    if value is None:
        problems.append("pool: missing (the outside addresses to translate to)")
        return None
    text = str(value).strip()
    try:
        if "/" in text:
            net = ipaddress.ip_network(text)
            first, count = net.network_address, net.num_addresses
        elif "-" in text:
            low, high = (ipaddress.ip_address(t.strip()) for t in text.split("-", 1))
            if int(high) < int(low):
                problems.append(f"pool {text!r}: the last address is below the first")
                return None
            first, count = low, int(high) - int(low) + 1
        else:
            first, count = ipaddress.ip_address(text), 1
    except ValueError as exc:
        problems.append(f"pool {text!r}: {exc}")
        return None
    if first.version != 4:
        problems.append(f"pool {text!r}: IPv6 is not translated (no NAT66)")
        return None
    if count > MAX_POOL:
        problems.append(f"pool {text!r}: {count} addresses, at most {MAX_POOL}")
        return None
    return first, count


def _pool_text(pool: tuple[ipaddress.IPv4Address, int]) -> str:
    first, count = pool
    return str(first) if count == 1 else f"{first}-{first + (count - 1)}"


def _in_pool(addr: ipaddress.IPv4Address, pool: tuple[ipaddress.IPv4Address, int]) -> bool:
    return 0 <= int(addr) - int(pool[0]) < pool[1]


def _overlaps(net: ipaddress.IPv4Network, pool: tuple[ipaddress.IPv4Address, int]) -> bool:
    first, count = int(pool[0]), pool[1]
    return int(net.network_address) < first + count and first <= int(net.broadcast_address)


def _ports(value: Any, problems: list[str]) -> tuple[int, int]:
    try:
        if isinstance(value, str):
            low_text, _, high_text = value.partition("-")
            low, high = int(low_text), int(high_text or low_text)
        else:
            low, high = (int(v) for v in value)
    except (TypeError, ValueError):
        problems.append(f"ports {value!r}: expected \"min-max\" or (min, max)")
        return 1024, 65535
    if not 1 <= low <= high <= 65535:
        problems.append(f"ports {value!r}: need 1 <= min <= max <= 65535")
        return 1024, 65535
    return low, high


def _parse_endpoint(text: Any, where: str) -> tuple[bytes, bytes]:
    addr, port = _split_endpoint(text, where)
    return addr.packed, port.to_bytes(2, "big")


def _split_endpoint(text: Any, where: str) -> tuple[ipaddress.IPv4Address, int]:
    host, sep, port_text = str(text).rpartition(":")
    try:
        addr = ipaddress.IPv4Address(host)
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{where}: {text!r} is not \"a.b.c.d:port\"") from None
    if not 0 <= port <= 65535 or not sep:
        raise ValueError(f"{where}: {text!r} is not \"a.b.c.d:port\"")
    return addr, port


def _endpoint(addr: bytes, port: bytes) -> tuple[str, int]:
    return str(ipaddress.IPv4Address(addr)), int.from_bytes(port, "big")


def _forwards(items: Any, inside: list[ipaddress.IPv4Network], pool: tuple[ipaddress.IPv4Address, int] | None,
              ports: tuple[int, int], problems: list[str]) -> list[PortForward]:
    if not isinstance(items, list | tuple):
        problems.append(f"forwards: expected a list, got {items!r}")
        return []
    if len(items) > MAX_FORWARDS:
        problems.append(f"forwards: {len(items)} entries, the table holds {MAX_FORWARDS}")
    out: list[PortForward] = []
    seen: dict[tuple[str, ipaddress.IPv4Address, int], int] = {}
    for i, item in enumerate(items):
        where = f"forwards[{i}]"
        if not isinstance(item, Mapping):
            problems.append(f"{where}: expected {{proto, outside, inside}}, got {item!r}")
            continue
        unknown = set(item) - {"proto", "outside", "inside"}
        if unknown:
            problems.append(f"{where}: unknown field(s) {', '.join(sorted(unknown))} (fields: proto, outside, inside)")
            continue
        proto = str(item.get("proto", "")).lower()
        if proto not in PROTOS:
            problems.append(f"{where}: proto {item.get('proto')!r} is not tcp or udp")
            continue
        try:
            outside, outside_port = _split_endpoint(item.get("outside"), f"{where}.outside")
            inside_addr, inside_port = _split_endpoint(item.get("inside"), f"{where}.inside")
        except ValueError as exc:
            problems.append(str(exc))
            continue
        fwd = PortForward(proto, outside, outside_port, inside_addr, inside_port)
        where = f"{where} ({fwd})"
        bad = len(problems)
        if pool and not _in_pool(outside, pool):
            problems.append(f"{where}: outside address {outside} is not in the pool {_pool_text(pool)}")
        if not 1 <= outside_port <= 65535 or not 1 <= inside_port <= 65535:
            problems.append(f"{where}: ports must be in 1..65535")
        elif ports[0] <= outside_port <= ports[1]:
            problems.append(f"{where}: outside port {outside_port} is inside the allocated range "
                            f"{ports[0]}-{ports[1]}; a dynamic mapping could shadow it")
        if inside and not any(inside_addr in net for net in inside):
            problems.append(f"{where}: inside address {inside_addr} is not in an inside prefix "
                            f"({', '.join(map(str, inside))}), so its replies would not be translated")
        first = seen.setdefault((proto, outside, outside_port), i)
        if first != i:
            problems.append(f"{where}: duplicates forwards[{first}] ({proto} {outside}:{outside_port})")
        if len(problems) == bad:
            out.append(fwd)
    return out


def configure(spec: Mapping[str, Any], tables: Mapping[str, Table], state: Any = None) -> tuple[dict[str, Any], Any]:
    """A service's ``control:`` for nat (the spec of the module docstring): writes the tables,
    returns the config values and the plan (the uniform entry point of ``vnfkit.control``)."""
    p = plan(spec)
    apply(p, tables)
    return dict(p.config), p
