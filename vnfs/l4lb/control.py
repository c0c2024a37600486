"""The control plane of l4lb: services, VIPs and backends in, table entries out.

``LoadBalancer`` keeps the configuration in Python and writes the fast path's tables through
the ``datapath.tables.Table`` interface, so it drives a ``KernelInstance``'s BPF maps, an
executor's tables or, for packet tests, plain dicts alike. Changing a service's backends
recomputes its Maglev table and writes only the slots that changed; the connection table in
the fast path keeps established flows where they are.

    lb = LoadBalancer(instance.tables, ring_size=65537)
    lb.add_service("web", mode="dnat", family=4)
    lb.add_vip("198.18.200.1", "tcp", 80, service="web")
    lb.add_backend("web", "198.18.60.2", port=8080, weight=2)

or declaratively, adding, reweighting and removing whatever differs from the current state:

    lb.apply({"services": {"web": {"mode": "dnat", "vips": [{"addr": "198.18.200.1", "proto": "tcp",
              "port": 80}], "backends": [{"addr": "198.18.60.2", "port": 8080, "weight": 2}]}}})

Every refusal is an ``LbConfigError`` naming the service, VIP or backend at fault.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from datapath.errors import VnfkitError
from datapath.tables import Table
from vnfkit.pyfile import import_file

MODES = {"dnat": 1, "encap": 2}
PROTOS = {"tcp": 6, "udp": 17}
FRAGMENTS = {"drop": 0, "pass": 1}
# Table sizes as fastpath.c declares them; a Table reports its own (max_entries).
CAPACITY = {"vips": 1024, "services": 256, "ring": 65537, "backends": 4096, "vip_stats": 1024}
MAX_WEIGHT = 65535

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

maglev = import_file(Path(__file__).with_name("maglev.py"), "l4lb's Maglev tables", VnfkitError)
# The control plane's what-if: the share of flows that move when one of N backends goes.
flow_movement = maglev.flow_movement


class LbConfigError(VnfkitError):
    """A load-balancer configuration the fast path cannot serve; the message names the entry
    (and, for ``apply``, where in the spec it is: ``services.web.backends[2]``)."""

    def __init__(self, message: str, where: list[str] | None = None) -> None:
        self.message, self.where = message, list(where or [])
        super().__init__(f"{'.'.join(self.where)}: {message}" if self.where else message)


# ---- C layouts (fastpath.c) -----------------------------------------------------------------

def addr16(addr: Address) -> bytes:
    """An address as the fast path stores it: 16 bytes, an IPv4 address in the first 4."""
    return addr.packed.ljust(16, b"\0")


def family_of(addr: Address) -> int:
    """The family byte of the fast path's keys: 4 or 6."""
    return 4 if addr.version == 4 else 6


def flow_key(src: str | Address, dst: str | Address, sport: int, dport: int, proto: str | int = "tcp") -> bytes:
    """``struct flow_key`` of a packet from ``src:sport`` to ``dst:dport``."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    number = PROTOS.get(proto, proto) if isinstance(proto, str) else proto
    return addr16(s) + addr16(d) + struct.pack("!HHBBxx", sport, dport, number, family_of(d))


def _vip_key(addr: Address, proto: int, port: int) -> bytes:
    return addr16(addr) + struct.pack("!HBB", port, proto, family_of(addr))


def _addr_key(addr: Address) -> bytes:
    return addr16(addr) + bytes([family_of(addr), 0, 0, 0])


# ---- the configuration as the control plane keeps it ------------------------------------------

@dataclass
class Backend:
    """A backend of one service; ``id`` indexes the backends table and fills ring slots."""

    addr: Address
    port: int
    weight: int
    id: int

    @property
    def name(self) -> str:
        """Its identity in the Maglev permutation: stable across processes and reorderings."""
        return f"[{self.addr}]:{self.port}" if self.addr.version == 6 else f"{self.addr}:{self.port}"


@dataclass
class Service:
    """A pool of backends with its forwarding mode and its slice of the ring table."""

    name: str
    mode: str
    family: int
    index: int
    ring_base: int
    ring_size: int
    backends: dict[tuple[Address, int], Backend] = field(default_factory=dict)
    ring: list[int] = field(default_factory=list)  # backend id per slot, as written (0: none)


@dataclass
class Vip:
    """An (address, protocol, port) leading to a service; ``stat`` is its vip_stats slot."""

    addr: Address
    proto: int
    port: int
    service: str
    fragments: str
    stat: int

    def __str__(self) -> str:
        proto = {v: k for k, v in PROTOS.items()}[self.proto]
        host = f"[{self.addr}]" if self.addr.version == 6 else str(self.addr)
        return f"{proto}://{host}:{self.port or '*'}"


def _parse_addr(value: Any, what: str) -> Address:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise LbConfigError(f"{what}: {value!r} is not an IPv4 or IPv6 address") from None


def _parse_int(value: Any, lo: int, hi: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise LbConfigError(f"{what}: {value!r} is not an integer in {lo}..{hi}")
    return value


def _parse_proto(value: Any, what: str) -> int:
    if isinstance(value, str) and value.lower() in PROTOS:
        return PROTOS[value.lower()]
    if value in PROTOS.values() and not isinstance(value, bool):
        return int(value)
    raise LbConfigError(f"{what}: protocol {value!r} is not tcp or udp")


class LoadBalancer:
    """Services (a mode, a family, a Maglev ring and weighted backends) and the VIPs that lead
    to them, mirrored into the fast path's tables as they change."""

    def __init__(self, tables: Mapping[str, Any], ring_size: int = 1021) -> None:
        """``tables``: the VNF's tables by name (``KernelInstance.tables``, an executor's
        ``tables``, or dicts). ``ring_size``: the default Maglev table size M, a prime."""
        missing = {"vips", "vip_addrs", "services", "ring", "backends", "vip_stats"} - set(tables)
        if missing:
            raise LbConfigError(f"tables {sorted(missing)} are missing: is this the l4lb VNF's table set?")
        self.tables = tables
        self.capacity = {n: getattr(tables[n], "max_entries", c) for n, c in CAPACITY.items()}
        self.ring_size = self._check_ring_size(ring_size, "ring_size")
        self.services: dict[str, Service] = {}
        self.vips: dict[tuple[Address, int, int], Vip] = {}
        self._addr_vips: dict[Address, int] = {}
        self._next_backend = 1  # ids rotate so a removed backend's id is not reused at once

    # ---- services -----------------------------------------------------------------------------
    def add_service(self, name: str, mode: str = "dnat", family: int = 4, ring_size: int | None = None) -> Service:
        """A service with no backends yet (its VIPs drop until one is added)."""
        what = f"service {name!r}"
        if not isinstance(name, str) or not name or len(name) > 64:
            raise LbConfigError(f"service name {name!r}: use 1 to 64 characters")
        if name in self.services:
            raise LbConfigError(f"{what} already exists")
        if mode not in MODES:
            raise LbConfigError(f"{what}: mode {mode!r} is not one of {', '.join(MODES)}")
        if family not in (4, 6):
            raise LbConfigError(f"{what}: family {family!r} is not 4 or 6")
        size = self._check_ring_size(self.ring_size if ring_size is None else ring_size, f"{what}: ring_size")
        index = next((i for i in range(self.capacity["services"]) if i not in self._service_indexes()), None)
        if index is None:
            raise LbConfigError(f"{what}: all {self.capacity['services']} service slots are in use")
        base = self._allocate_ring(size, what)
        svc = Service(name, mode, family, index, base, size, ring=[0] * size)
        self.tables["services"][index] = struct.pack("<IIBBxx", base, size, MODES[mode], family)
        self.services[name] = svc
        return svc

    def remove_service(self, name: str) -> None:
        """Remove a service without VIPs: its ring slice and backends are cleared."""
        svc = self._service(name)
        used = [str(v) for v in self.vips.values() if v.service == name]
        if used:
            raise LbConfigError(f"service {name!r} still has VIPs: {', '.join(used)}")
        self.tables["services"][svc.index] = bytes(12)  # ring_size 0: no such service
        self._write_ring(svc, [0] * svc.ring_size)
        for be in svc.backends.values():
            self.tables["backends"][be.id] = bytes(20)
        del self.services[name]

    # ---- VIPs ---------------------------------------------------------------------------------
    def add_vip(self, addr: str | Address, proto: str | int, port: int, service: str,
                fragments: str = "drop") -> Vip:
        """Send ``proto`` traffic to ``addr:port`` (port 0: every port) to ``service``.
        ``fragments``: what happens to fragments to the address ("drop", Katran's choice, or
        "pass" to the host's stack); all VIPs on one address must agree."""
        what = f"VIP {addr}/{proto}/{port}"
        a = _parse_addr(addr, what)
        number = _parse_proto(proto, what)
        port = _parse_int(port, 0, 65535, f"{what}: port")
        vip = Vip(a, number, port, service, fragments, -1)
        what = f"VIP {vip}"
        svc = self._service(service, what)
        if family_of(a) != svc.family:
            raise LbConfigError(f"{what}: an IPv{a.version} VIP cannot lead to IPv{svc.family} service {service!r}")
        if fragments not in FRAGMENTS:
            raise LbConfigError(f"{what}: fragments {fragments!r} is not one of {', '.join(FRAGMENTS)}")
        key = (a, number, port)
        if key in self.vips:
            raise LbConfigError(f"{what} already exists (service {self.vips[key].service!r})")
        other = next((v for v in self.vips.values() if v.addr == a and v.fragments != fragments), None)
        if other is not None:
            raise LbConfigError(f"{what}: fragments={fragments!r} contradicts VIP {other} on the same address "
                                f"(fragments={other.fragments!r}); fragments carry no port to tell them apart")
        used = {v.stat for v in self.vips.values()}
        stat = next((i for i in range(self.capacity["vip_stats"]) if i not in used), None)
        if stat is None or len(self.vips) >= self.capacity["vips"]:
            raise LbConfigError(f"{what}: the VIP tables are full ({len(self.vips)} VIPs)")
        vip.stat = stat
        self.tables["vip_stats"][stat] = bytes(16)  # a reused slot starts from zero
        self.tables["vips"][_vip_key(a, number, port)] = struct.pack("<II", svc.index, stat)
        self._addr_vips[a] = self._addr_vips.get(a, 0) + 1
        # The address becomes a VIP address last: until then its packets are not ours.
        self.tables["vip_addrs"][_addr_key(a)] = struct.pack("<II", self._addr_vips[a], FRAGMENTS[fragments])
        self.vips[key] = vip
        return vip

    def remove_vip(self, addr: str | Address, proto: str | int, port: int) -> None:
        what = f"VIP {addr}/{proto}/{port}"
        key = (_parse_addr(addr, what), _parse_proto(proto, what), _parse_int(port, 0, 65535, f"{what}: port"))
        vip = self.vips.get(key)
        if vip is None:
            raise LbConfigError(f"{what} does not exist")
        a = vip.addr
        self._addr_vips[a] -= 1
        if self._addr_vips[a]:
            self.tables["vip_addrs"][_addr_key(a)] = struct.pack("<II", self._addr_vips[a], FRAGMENTS[vip.fragments])
        else:
            del self._addr_vips[a]
            del self.tables["vip_addrs"][_addr_key(a)]
        del self.tables["vips"][_vip_key(a, vip.proto, vip.port)]
        del self.vips[key]

    # ---- backends -----------------------------------------------------------------------------
    def add_backend(self, service: str, addr: str | Address, port: int = 0, weight: int = 1) -> int:
        """Add a backend; returns how many ring slots changed. ``port``: DNAT's target port (0
        keeps the VIP's); encap services cannot change ports. Weight 0 adds it drained."""
        what = f"backend {addr}:{port} of service {service!r}"
        svc = self._service(service, what)
        a = _parse_addr(addr, what)
        port = _parse_int(port, 0, 65535, f"{what}: port")
        weight = _parse_int(weight, 0, MAX_WEIGHT, f"{what}: weight")
        if family_of(a) != svc.family:
            raise LbConfigError(f"{what}: an IPv{a.version} backend cannot serve an IPv{svc.family} service")
        if svc.mode == "encap" and port:
            raise LbConfigError(f"{what}: encap services forward to the VIP's port; give port 0")
        if (a, port) in svc.backends:
            raise LbConfigError(f"{what} already exists")
        if sum(1 for b in svc.backends.values() if b.weight) + (weight > 0) > svc.ring_size:
            raise LbConfigError(f"{what}: more backends than the {svc.ring_size} slots of the Maglev table")
        be = Backend(a, port, weight, self._allocate_backend_id(what))
        # The backend exists before any slot points at it.
        self.tables["backends"][be.id] = addr16(a) + struct.pack("!H", port) + bytes([svc.family, 0])
        svc.backends[(a, port)] = be
        return self._rebuild(svc)

    def remove_backend(self, service: str, addr: str | Address, port: int = 0) -> int:
        """Remove a backend; returns how many ring slots changed. Flows it served are
        scheduled again (their connection entries name a removed backend)."""
        svc, be = self._backend(service, addr, port)
        del svc.backends[(be.addr, be.port)]
        changed = self._rebuild(svc)  # no slot points at it any more ...
        self.tables["backends"][be.id] = bytes(20)  # ... before it disappears
        return changed

    def set_weight(self, service: str, addr: str | Address, port: int, weight: int) -> int:
        """Reweight a backend (0 drains it: no new flows, established ones stay); returns how
        many ring slots changed."""
        svc, be = self._backend(service, addr, port)
        be.weight = _parse_int(weight, 0, MAX_WEIGHT, f"backend {addr}:{port} of service {service!r}: weight")
        return self._rebuild(svc)

    # ---- the declarative form -----------------------------------------------------------------
    def apply(self, spec: Mapping[str, Any]) -> None:
        """Make the configuration equal to ``spec`` (see the module docstring), changing only
        what differs. Errors name the entry as ``services.web.backends[2]``."""
        services = spec.get("services", {})
        if not isinstance(services, Mapping):
            raise LbConfigError("services: expected a mapping of service name to service")
        unknown = set(spec) - {"services"}
        if unknown:
            raise LbConfigError(f"unknown top-level keys {sorted(unknown)} (expected: services)")
        for name in list(self.services):
            if name not in services:
                for vip in [v for v in self.vips.values() if v.service == name]:
                    self.remove_vip(vip.addr, vip.proto, vip.port)
                self.remove_service(name)
        for name, body in services.items():
            with _at(f"services.{name}"):
                self._apply_service(name, body)

    def _apply_service(self, name: str, body: Any) -> None:
        if not isinstance(body, Mapping):
            raise LbConfigError("expected a mapping with mode, vips and backends")
        unknown = set(body) - {"mode", "family", "ring_size", "vips", "backends"}
        if unknown:
            raise LbConfigError(f"unknown keys {sorted(unknown)} (expected: mode, family, ring_size, vips, backends)")
        vips, backends = body.get("vips", []), body.get("backends", [])
        family = body.get("family") or _infer_family([*vips, *backends])
        mode, ring_size = body.get("mode", "dnat"), body.get("ring_size")
        svc = self.services.get(name)
        if svc is not None and (svc.mode != mode or svc.family != family
                                or ring_size is not None and ring_size != svc.ring_size):
            # A service cannot change its mode, family or ring size in place: rebuild it.
            for vip in [v for v in self.vips.values() if v.service == name]:
                self.remove_vip(vip.addr, vip.proto, vip.port)
            self.remove_service(name)
            svc = None
        if svc is None:
            svc = self.add_service(name, mode, family, ring_size)
        wanted: dict[tuple[Address, int], int] = {}
        for i, entry in enumerate(backends):
            with _at(f"backends[{i}]"):
                _require_mapping(entry, {"addr", "port", "weight"})
                key = (_parse_addr(entry.get("addr"), "addr"), entry.get("port", 0))
                wanted[key] = entry.get("weight", 1)
                if key not in svc.backends:
                    self.add_backend(name, key[0], key[1], wanted[key])
                elif svc.backends[key].weight != wanted[key]:
                    self.set_weight(name, key[0], key[1], wanted[key])
        for key in [k for k in svc.backends if k not in wanted]:
            self.remove_backend(name, *key)
        wanted_vips = set()
        for i, entry in enumerate(vips):
            with _at(f"vips[{i}]"):
                _require_mapping(entry, {"addr", "proto", "port", "fragments"})
                a = _parse_addr(entry.get("addr"), "addr")
                key = (a, _parse_proto(entry.get("proto", "tcp"), "proto"), entry.get("port", 0))
                wanted_vips.add(key)
                have = self.vips.get(key)
                fragments = entry.get("fragments", "drop")
                if have is not None and (have.service, have.fragments) != (name, fragments):
                    self.remove_vip(*key)
                    have = None
                if have is None:
                    self.add_vip(a, key[1], key[2], name, fragments)
        for key in [k for k, v in self.vips.items() if v.service == name and k not in wanted_vips]:
            self.remove_vip(*key)

    # ---- what the fast path will do ------------------------------------------------------------
    def backend_for(self, service: str, key: bytes, hash_seed: int = 0) -> Backend | None:
        """The backend the ring gives a new flow with this ``flow_key`` (the connection table
        may keep an established flow elsewhere)."""
        svc = self._service(service)
        slot = maglev.flow_hash(key, hash_seed) % svc.ring_size
        by_id = {b.id: b for b in svc.backends.values()}
        return by_id.get(svc.ring[slot])

    def ring_share(self, service: str) -> dict[str, int]:
        """Ring slots per backend name: the share of new flows each gets."""
        svc = self._service(service)
        names = {b.id: b.name for b in svc.backends.values()}
        out = dict.fromkeys(sorted(names.values()), 0)
        for bid in svc.ring:
            if bid:
                out[names[bid]] += 1
        return out

    def vip_stats(self) -> dict[str, tuple[int, int]]:
        """(packets, bytes) per VIP, read from the fast path's vip_stats table."""
        table = self.tables["vip_stats"]
        out = {}
        for vip in self.vips.values():
            rec = table[vip.stat]
            out[str(vip)] = (int(rec["packets"]), int(rec["bytes"]))
        return out

    # ---- internals ----------------------------------------------------------------------------
    @staticmethod
    def _check_ring_size(size: Any, what: str) -> int:
        size = _parse_int(size, 2, CAPACITY["ring"], what)
        if not maglev.is_prime(size):
            raise LbConfigError(f"{what}: {size} is not prime (Maglev needs a prime table size, e.g. 251, 1021, "
                                f"65537)")
        return size

    def _service_indexes(self) -> set[int]:
        return {s.index for s in self.services.values()}

    def _allocate_ring(self, size: int, what: str) -> int:
        """First fit in the ring table among the other services' slices."""
        start = 0
        for base, length in sorted((s.ring_base, s.ring_size) for s in self.services.values()):
            if base - start >= size:
                break
            start = max(start, base + length)
        if start + size > self.capacity["ring"]:
            raise LbConfigError(f"{what}: no room for a ring of {size} slots (the ring table holds "
                                f"{self.capacity['ring']}, {sum(s.ring_size for s in self.services.values())} in use)")
        return start

    def _allocate_backend_id(self, what: str) -> int:
        used = {b.id for s in self.services.values() for b in s.backends.values()}
        cap = self.capacity["backends"]
        for i in range(cap - 1):
            candidate = (self._next_backend - 1 + i) % (cap - 1) + 1  # 1..cap-1; 0 means none
            if candidate not in used:
                self._next_backend = candidate % (cap - 1) + 1
                return candidate
        raise LbConfigError(f"{what}: all {cap - 1} backend ids are in use")

    def _service(self, name: str, what: str | None = None) -> Service:
        svc = self.services.get(name)
        if svc is None:
            prefix = f"{what}: " if what else ""
            raise LbConfigError(f"{prefix}no service {name!r} (services: {', '.join(self.services) or 'none'})")
        return svc

    def _backend(self, service: str, addr: str | Address, port: int) -> tuple[Service, Backend]:
        what = f"backend {addr}:{port} of service {service!r}"
        svc = self._service(service, what)
        be = svc.backends.get((_parse_addr(addr, what), port))
        if be is None:
            have = ", ".join(b.name for b in svc.backends.values()) or "none"
            raise LbConfigError(f"{what} does not exist (backends: {have})")
        return svc, be

    def _rebuild(self, svc: Service) -> int:
        """Recompute the service's Maglev table; write the slots that changed."""
        backends = list(svc.backends.values())
        table = maglev.populate([(b.name, b.weight) for b in backends], svc.ring_size)
        return self._write_ring(svc, [backends[i].id if i >= 0 else 0 for i in table])

    def _write_ring(self, svc: Service, ids: list[int]) -> int:
        changed = [i for i, (old, new) in enumerate(zip(svc.ring, ids, strict=True)) if old != new]
        ring = self.tables["ring"]
        if isinstance(ring, Table) and changed:
            ring.update_batch(np.array([svc.ring_base + i for i in changed], dtype=np.uint32),
                              np.array([ids[i] for i in changed], dtype=np.uint32))
        else:
            for i in changed:
                ring[svc.ring_base + i] = ids[i]
        svc.ring = list(ids)
        return len(changed)


@contextmanager
def _at(path: str) -> Iterator[None]:
    """Prefix errors raised inside with where in the spec they come from."""
    try:
        yield
    except LbConfigError as exc:
        raise LbConfigError(exc.message, [path, *exc.where]) from None


def _require_mapping(entry: Any, allowed: set[str]) -> None:
    if not isinstance(entry, Mapping):
        raise LbConfigError(f"expected a mapping with {', '.join(sorted(allowed))}, got {entry!r}")
    unknown = set(entry) - allowed
    if unknown:
        raise LbConfigError(f"unknown keys {sorted(unknown)} (expected: {', '.join(sorted(allowed))})")


def _infer_family(entries: list[Any]) -> int:
    for entry in entries:
        if isinstance(entry, Mapping) and "addr" in entry:
            return family_of(_parse_addr(entry["addr"], "addr"))
    return 4


def configure(spec: Mapping[str, Any], tables: Mapping[str, Any],
              state: LoadBalancer | None = None) -> tuple[dict[str, Any], LoadBalancer]:
    """A service's ``control:`` for l4lb (``LoadBalancer.apply``'s spec). The LoadBalancer is
    the state kept between calls, so a later spec changes only what differs and established
    flows keep their backends (the uniform entry point of ``vnfkit.control``)."""
    lb = state if state is not None else LoadBalancer(tables)
    lb.apply(spec)
    return {}, lb
