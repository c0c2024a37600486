"""Placement: which host runs each function of a service. A plug-in interface and the default.

A placement plug-in is any callable ``(service, hosts) -> {function id: host name}`` raising
:class:`PlacementError` with every reason it could not place; an operator names their own
with ``--placement module:callable``. The default, :func:`pack`, packs functions on hosts by
their declared resource needs (a VNF's first deployment flavour, or :data:`DEFAULT_NEEDS`) and
keeps chains local where it can:

* walk each path in order; the first function goes on a host facing the service's clients
  (one with ingress interfaces), and the path stays on the current host while it has room;
  when it has none, the path moves to the next host (hosts facing servers come last);
* a symmetric path's last function goes on a host facing the servers, because replies are
  classified where they arrive (``chaining.plan``);
* a host must offer the VNF (its agent lists the VNFs it can run).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from chaining.service import Service, cached_descriptor
from datapath.errors import VnfkitError

DEFAULT_NEEDS = (1.0, 256)  # cpu cores, memory MB of a VNF that declares no deployment flavour


class PlacementError(VnfkitError):
    """The service cannot be placed on these hosts; ``reasons`` lists why."""

    def __init__(self, reasons: list[str]) -> None:
        self.reasons = list(reasons)
        super().__init__("cannot place the service:\n  " + "\n  ".join(self.reasons))


@dataclass(frozen=True)
class HostOffer:
    """What a host offers for placement (from its agent's registration)."""

    name: str
    cpus: float = 4.0
    memory_mb: int = 4096
    vnfs: frozenset[str] = frozenset()  # VNF names it can run; empty = any
    ingress: bool = False  # faces clients
    egress: bool = False   # faces servers
    used_cpus: float = 0.0  # taken by services already deployed
    used_memory_mb: int = 0

    def supports(self, vnf: str) -> bool:
        return not self.vnfs or vnf in self.vnfs


Placement = Callable[[Service, list[HostOffer]], dict[str, str]]


def needs(folder: object) -> tuple[float, int]:
    """(cpu cores, memory MB) a VNF asks for: its first deployment flavour, or the default."""
    flavours = cached_descriptor(folder).deployment_flavours
    return (flavours[0].cpu_cores, flavours[0].memory_mb) if flavours else DEFAULT_NEEDS


@dataclass
class _Room:
    offer: HostOffer
    cpus: float = field(init=False)
    memory_mb: int = field(init=False)

    def __post_init__(self) -> None:
        self.cpus = self.offer.cpus - self.offer.used_cpus
        self.memory_mb = self.offer.memory_mb - self.offer.used_memory_mb

    def fits(self, need: tuple[float, int]) -> bool:
        return self.cpus + 1e-9 >= need[0] and self.memory_mb >= need[1]

    def take(self, need: tuple[float, int]) -> None:
        self.cpus -= need[0]
        self.memory_mb -= need[1]


def pack(service: Service, hosts: list[HostOffer]) -> dict[str, str]:
    """The default placement (see the module doc)."""
    if not hosts:
        raise PlacementError(["no host is registered"])
    # Clients' side first, servers' side last, registration order in between.
    order = sorted(hosts, key=lambda h: (not h.ingress, h.egress))
    rooms = {h.name: _Room(h) for h in order}
    placed: dict[str, str] = {}
    reasons: list[str] = []
    need = {f.id: needs(f.folder) for f in service.functions}

    def candidates(fid: str, start: int) -> list[HostOffer]:
        vnf = service.function(fid).vnf
        return [h for h in order[start:] if h.supports(vnf) and rooms[h.name].fits(need[fid])]

    for path in service.paths:
        hops = [h for h in path.hops if h not in placed]
        at = 0  # index in order of the host the path is on
        for k, fid in enumerate(hops):
            last = k == len(hops) - 1 and path.symmetric
            options = candidates(fid, at)
            if last:
                options = [h for h in options if h.egress] or options
            if not options:
                vnf = service.function(fid).vnf
                anywhere = [h.name for h in hosts if h.supports(vnf)]
                why = ("no host offers VNF " + repr(vnf)) if not anywhere else (
                    f"no room left on {', '.join(anywhere)} for {need[fid][0]:g} cpu / {need[fid][1]} MB")
                reasons.append(f"function {fid!r} (path {path.id!r}): {why}")
                continue
            host = options[0]
            rooms[host.name].take(need[fid])
            placed[fid] = host.name
            at = order.index(host)
    if reasons:
        raise PlacementError(reasons)
    return placed


def load_placement(spec: str) -> Placement:
    """A placement plug-in named ``module:callable`` (or ``pack`` for the default)."""
    if spec in ("", "pack"):
        return pack
    module, _, name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name or "place")
    except (ImportError, AttributeError) as exc:
        raise PlacementError([f"placement plug-in {spec!r}: {exc}"]) from exc
    if not callable(fn):
        raise PlacementError([f"placement plug-in {spec!r} is not callable"])
    return fn


def capacity_used(service: Service, placement: Mapping[str, str]) -> dict[str, tuple[float, int]]:
    """Per host, the (cpus, memory MB) a placed service takes."""
    out: dict[str, tuple[float, int]] = {}
    for f in service.functions:
        host = placement.get(f.id)
        if host is not None:
            c, m = out.get(host, (0.0, 0))
            n = needs(f.folder)
            out[host] = (c + n[0], m + n[1])
    return out
