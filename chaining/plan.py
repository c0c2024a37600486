"""What one host installs for its part of services: a :class:`HostPlan`, plain data.

The orchestrator (or a test) turns a compiled service (``chaining.compiler``) and the hosts'
wiring (which interfaces face clients, servers and the underlay, and the underlay addresses)
into one plan per host with :func:`host_plans`; the host's data path
(``chaining.host.HostDataPath``) makes the kernel match a plan. Plans of several services on
one host are combined with :func:`merge_plans`. A plan round-trips through
``to_dict``/``from_dict`` (JSON-safe), which is how it travels to an agent.

Symmetric paths: the forward path ends on its last host with ``reverse=(reverse SPI, 255)``,
so the forwarder records each flow's reply there and the classifier, attached on that host's
server-facing interfaces, starts replies on the reverse path (RFC 7665 section 2.2). Replies
need no classifier rule of their own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from chaining.compiler import EGRESS, REMOTE, CompiledService
from chaining.local import FIRST_SI, ChainError
from chaining.service import Match, Service


@dataclass(frozen=True)
class HostWiring:
    """A host's interfaces as the orchestrator knows them (agents report them).

    ``ingress``: where traffic enters the service (client side); ``egress``: where replies of
    symmetric paths come back (server side); ``underlay``: the interface NSH leaves and arrives
    on, with its MAC and (for VXLAN-GPE) IPv4 address. ``ns`` is the network namespace the
    interfaces are in, as seen by whoever installs the plan (None: its own).
    """

    ns: str | None = None
    ingress: tuple[str, ...] = ()
    egress: tuple[str, ...] = ()
    underlay: str | None = None
    underlay_mac: str | None = None
    underlay_ip: str | None = None


@dataclass(frozen=True)
class FunctionSpec:
    """A VNF instance on the host. ``id`` is unique on the host: ``<service>/<function id>``."""

    id: str
    folder: str
    config: dict[str, Any] = field(default_factory=dict)
    control: dict[str, Any] | None = None


@dataclass(frozen=True)
class PeerSpec:
    """Another host's underlay end, the outer destination of NSH sent to it."""

    host: str
    mac: str
    ip: str | None = None


@dataclass(frozen=True)
class PathSpec:
    """One segment of a path on this host (``chaining.compiler.Segment`` with its wiring).

    ``end``: ``"stack"`` (the path ends here; the host routes the packet on) or ``"remote"``
    (NSH to ``next_host``). ``reverse``: on the segment where a symmetric path ends, the
    (SPI, SI) its replies start at.
    """

    spi: int
    first_si: int
    functions: tuple[str, ...]
    end: str
    next_host: str | None = None
    reverse: tuple[int, int] | None = None
    path: str = ""  # "<service>/<path id>", for counters


@dataclass(frozen=True)
class RuleSpec:
    """Classifier rule: traffic matching ``match`` arriving on ``interfaces`` starts at (spi, si)."""

    spi: int
    si: int
    match: Match
    interfaces: tuple[str, ...]
    name: str = ""  # "<service>/<path id>#<n>", for counters


@dataclass(frozen=True)
class HostPlan:
    """Everything one host's data path holds: functions, path segments, classifier rules, and
    the interfaces the classifier and NSH receive are attached to."""

    host: str
    ns: str | None = None
    functions: tuple[FunctionSpec, ...] = ()
    paths: tuple[PathSpec, ...] = ()
    rules: tuple[RuleSpec, ...] = ()
    classify_on: tuple[str, ...] = ()
    underlay: str | None = None
    underlay_ip: str | None = None
    peers: tuple[PeerSpec, ...] = ()
    encap: str = "eth"

    def function(self, fid: str) -> FunctionSpec:
        for f in self.functions:
            if f.id == fid:
                return f
        raise KeyError(fid)

    def peer(self, host: str) -> PeerSpec:
        for p in self.peers:
            if p.host == host:
                return p
        raise KeyError(host)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (tuples become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HostPlan:
        """The inverse of ``to_dict``; ChainError naming the field for anything malformed."""
        try:
            return cls(
                host=str(data["host"]), ns=data.get("ns"),
                functions=tuple(FunctionSpec(f["id"], f["folder"], dict(f.get("config") or {}), f.get("control"))
                                for f in data.get("functions", ())),
                paths=tuple(PathSpec(p["spi"], p["first_si"], tuple(p["functions"]), p["end"], p.get("next_host"),
                                     tuple(p["reverse"]) if p.get("reverse") else None, p.get("path", ""))
                            for p in data.get("paths", ())),
                rules=tuple(RuleSpec(r["spi"], r["si"], _match(r["match"]), tuple(r["interfaces"]), r.get("name", ""))
                            for r in data.get("rules", ())),
                classify_on=tuple(data.get("classify_on", ())), underlay=data.get("underlay"),
                underlay_ip=data.get("underlay_ip"),
                peers=tuple(PeerSpec(p["host"], p["mac"], p.get("ip")) for p in data.get("peers", ())),
                encap=data.get("encap", "eth"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ChainError(f"malformed host plan: {type(exc).__name__}: {exc}") from exc


def _match(data: Mapping[str, Any]) -> Match:
    fields = {f.name for f in dataclasses.fields(Match)}
    unknown = set(data) - fields
    if unknown:
        raise ValueError(f"match has unknown field(s) {sorted(unknown)}")
    return Match(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def host_plans(compiled: CompiledService, service: Service, wiring: Mapping[str, HostWiring], *,
               encap: str = "eth") -> dict[str, HostPlan]:
    """One plan per host the service uses, from its compiled paths and the hosts' wiring.

    Function ids become ``<service>/<id>`` so services sharing a host never collide. Forward
    rules go on the interfaces facing clients (``ingress``) of the host where each path starts;
    the classifier also runs on the server-facing interfaces (``egress``) of hosts where a
    symmetric path ends, for the replies. ChainError names a host without the wiring it needs.
    """
    name = compiled.service
    problems: list[str] = []
    hosts = sorted({seg.host for p in compiled.paths for seg in p.segments})
    for h in hosts:
        if h not in wiring:
            problems.append(f"host {h!r} has no wiring")
    if problems:
        raise ChainError("; ".join(problems))
    reverse_of = {p.reverse_of: p for p in compiled.paths if p.reverse_of is not None}
    paths: dict[str, list[PathSpec]] = {h: [] for h in hosts}
    rules: dict[str, list[RuleSpec]] = {h: [] for h in hosts}
    classify_on: dict[str, set[str]] = {h: set() for h in hosts}
    peers: dict[str, set[str]] = {h: set() for h in hosts}
    for p in compiled.paths:
        back = reverse_of.get(p.spi)
        for k, seg in enumerate(p.segments):
            last = k + 1 == len(p.segments)
            reverse = (back.spi, FIRST_SI) if back is not None and last else None
            if seg.end == REMOTE:
                peers[seg.host].add(seg.next_host or "")
                if wiring[seg.host].underlay is None:
                    problems.append(f"host {seg.host!r} sends path {p.id!r} on to {seg.next_host!r} "
                                    "but has no underlay")
                if wiring[seg.next_host or ""].underlay is None:
                    problems.append(f"host {seg.next_host!r} receives path {p.id!r} but has no underlay")
            end = "remote" if seg.end == REMOTE else "stack"
            assert seg.end in (REMOTE, EGRESS)
            paths[seg.host].append(PathSpec(p.spi, seg.first_si, tuple(f"{name}/{f}" for f in seg.functions), end,
                                            seg.next_host, reverse, f"{name}/{p.id}"))
            if reverse is not None:
                classify_on[seg.host].update(wiring[seg.host].egress)
                if not wiring[seg.host].egress:
                    problems.append(f"host {seg.host!r} ends symmetric path {p.id!r} but has no egress "
                                    "interface for the replies")
    for n, r in enumerate(compiled.classifier):
        first = compiled.path(_path_id(compiled, r.spi)).segments[0]
        w = wiring[first.host]
        if not w.ingress:
            problems.append(f"host {first.host!r} starts path {r.rule.path!r} but has no ingress interface")
        rules[first.host].append(RuleSpec(r.spi, first.first_si, r.rule.match, tuple(w.ingress),
                                          f"{name}/{r.rule.path}#{n}"))
        classify_on[first.host].update(w.ingress)
    if problems:
        raise ChainError("; ".join(problems))
    out = {}
    for h in hosts:
        w = wiring[h]
        fids = sorted({f for ps in paths[h] for f in ps.functions})
        functions = []
        for fid in fids:
            f = service.function(fid.split("/", 1)[1])
            functions.append(FunctionSpec(fid, str(f.folder), dict(f.config), f.control))
        out[h] = HostPlan(h, w.ns, tuple(functions), tuple(paths[h]), tuple(rules[h]), tuple(sorted(classify_on[h])),
                          w.underlay, w.underlay_ip,
                          tuple(PeerSpec(p, wiring[p].underlay_mac or "", wiring[p].underlay_ip)
                                for p in sorted(peers[h])), encap)
    return out


def _path_id(compiled: CompiledService, spi: int) -> str:
    return next(p.id for p in compiled.paths if p.spi == spi)


def merge_plans(plans: Iterable[HostPlan]) -> HostPlan:
    """The union of several services' plans for one host; ChainError on contradictions (two
    specs for one function id, an SPI segment twice, different underlays or namespaces)."""
    plans = list(plans)
    if not plans:
        raise ChainError("nothing to merge")
    first = plans[0]
    functions: dict[str, FunctionSpec] = {}
    segs: dict[tuple[int, int], PathSpec] = {}
    peers: dict[str, PeerSpec] = {}
    for p in plans:
        for attr in ("host", "ns", "encap"):
            if getattr(p, attr) != getattr(first, attr):
                raise ChainError(f"plans disagree on {attr}: {getattr(first, attr)!r} vs {getattr(p, attr)!r}")
        if p.underlay and first.underlay and p.underlay != first.underlay:
            raise ChainError(f"plans disagree on the underlay: {first.underlay!r} vs {p.underlay!r}")
        for f in p.functions:
            if functions.setdefault(f.id, f) != f:
                raise ChainError(f"function {f.id!r} is specified twice, differently")
        for s in p.paths:
            if segs.setdefault((s.spi, s.first_si), s) != s:
                raise ChainError(f"SPI {s.spi} SI {s.first_si} is in two plans")
        for peer in p.peers:
            if peers.setdefault(peer.host, peer) != peer:
                raise ChainError(f"peer {peer.host!r} has two addresses")
    underlay = next((p.underlay for p in plans if p.underlay), None)
    underlay_ip = next((p.underlay_ip for p in plans if p.underlay_ip), None)
    return HostPlan(first.host, first.ns, tuple(functions.values()), tuple(segs.values()),
                    tuple(r for p in plans for r in p.rules),
                    tuple(sorted({i for p in plans for i in p.classify_on})), underlay, underlay_ip,
                    tuple(peers.values()), first.encap)
