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


# ---- recursive domains ------------------------------------------------------------------------
# A child orchestrator registers with its parent as one host. It advertises its hosts'
# interfaces under qualified names, "<host>/<ifname>" (a slash never occurs in a Linux
# interface name), so names that repeat on several hosts of the domain stay apart and the child
# can tell, from the parent's plan alone, which of its hosts each interface belongs to.


def qualify(host: str, ifname: str) -> str:
    """An interface of one host of a domain, as the domain advertises it: ``host/ifname``."""
    return f"{host}/{ifname}"


def unqualify(name: str) -> tuple[str, str]:
    """(host, ifname) of a name made by :func:`qualify`; ChainError if it is not one."""
    host, sep, ifname = name.partition("/")
    if not sep or not host or not ifname:
        raise ChainError(f"interface {name!r} names no host of the domain (expected HOST/IFNAME)")
    return host, ifname


@dataclass(frozen=True)
class Pin:
    """A function the domain's wiring puts on one host, and why."""

    host: str
    why: str


def _egress_host(plan: HostPlan, wiring: Mapping[str, HostWiring], egress_host: str | None) -> str | None:
    if egress_host is not None:
        return egress_host
    named = set()
    for name in plan.classify_on:
        host, ifname = unqualify(name)
        if host in wiring and ifname in wiring[host].egress:
            named.add(host)
    if len(named) == 1:
        return named.pop()
    facing = sorted(h for h, w in wiring.items() if w.egress)
    return facing[0] if len(facing) == 1 else None


def domain_pins(plan: HostPlan, wiring: Mapping[str, HostWiring], *,
                egress_host: str | None = None) -> dict[str, Pin]:
    """The functions of a parent's plan that the domain's wiring fixes to one of its hosts.

    A segment's first function runs where its packets enter the domain: on the host of its
    classifier rule's interfaces, on the host facing servers for the replies of a symmetric
    path (they are classified where the forward path ended), else on the gateway, the host whose
    underlay the domain advertised (``plan.underlay``), where the parent's NSH arrives. A
    segment of a forward path that ends at the stack ends on the host facing servers
    (``egress_host``, or the one host of ``wiring`` with egress interfaces): that host routes the
    packet on, and records the flows whose replies come back. A reverse path ends where its
    forward path began (its last function is the forward path's first, pinned by the rule), so
    its end adds no pin. ChainError lists every contradiction.
    """
    problems: list[str] = []
    gateway = unqualify(plan.underlay)[0] if plan.underlay else None
    egress = _egress_host(plan, wiring, egress_host)
    rule_hosts: dict[tuple[int, int], set[str]] = {}
    for r in plan.rules:
        for name in r.interfaces:
            rule_hosts.setdefault((r.spi, r.si), set()).add(unqualify(name)[0])
    reply_starts = {p.reverse for p in plan.paths if p.reverse is not None}
    # The compiler names a symmetric path's reverse "<id>.reverse" (ids hold no dots).
    reverse_spis = {spi for spi, _ in reply_starts} | {p.spi for p in plan.paths if p.path.endswith(".reverse")}
    pins: dict[str, Pin] = {}

    def pin(fid: str, host: str | None, why: str, missing: str) -> None:
        if host is None:
            problems.append(f"{missing}: {why}")
            return
        if host not in wiring:
            problems.append(f"function {fid!r} must run on {host!r} ({why}), which is not a live host of the domain")
            return
        have = pins.setdefault(fid, Pin(host, why))
        if have.host != host:
            problems.append(f"function {fid!r} must run on {have.host!r} ({have.why}) and on {host!r} ({why}): "
                            "the domain cannot run it")

    for p in plan.paths:
        if not p.functions:
            continue
        where = f"path {p.path or p.spi} (SPI {p.spi} SI {p.first_si})"
        key = (p.spi, p.first_si)
        if key in rule_hosts:
            hosts = sorted(rule_hosts[key])
            if len(hosts) > 1:
                problems.append(f"{where}: its classifier rule names interfaces on {', '.join(hosts)}; "
                                "a segment starts on one host")
                continue
            pin(p.functions[0], hosts[0], f"{where} starts at its classifier rule's interfaces on {hosts[0]}",
                where)
        elif key in reply_starts:
            pin(p.functions[0], egress, f"{where} carries replies, classified on the host facing servers",
                f"{where} carries replies but the domain has no single host facing servers")
        else:
            pin(p.functions[0], gateway, f"{where} arrives as NSH at the domain's gateway {gateway}",
                f"{where} arrives as NSH but the plan names no underlay of the domain")
        if p.end == "stack" and p.spi not in reverse_spis:
            pin(p.functions[-1], egress, f"{where} ends at the stack of the host facing servers {egress}",
                f"{where} ends at the stack but the domain has no single host facing servers")
    if problems:
        raise ChainError("; ".join(problems))
    return pins


def split_plan(plan: HostPlan, placement: Mapping[str, str], wiring: Mapping[str, HostWiring], *,
               egress_host: str | None = None) -> dict[str, HostPlan]:
    """A parent's plan for a whole domain, cut into one plan per host of the domain.

    ``placement`` maps each of the plan's function ids to a host of ``wiring`` (it must honour
    :func:`domain_pins`). The parent's SPIs and SIs are kept: a segment is cut where consecutive
    functions change host, the cut carried as NSH between the domain's hosts (SI going on from
    where it was), and its last piece ends as the parent said, at the stack (with the reverse
    hop of a symmetric path) or as NSH to the parent's ``next_host``, whose address comes from
    the plan's peers (renamed ``<name>@parent`` if a host of the domain has the same name).
    Interfaces the parent names (``host/ifname``) go back to their host. ChainError lists every
    problem.
    """
    problems: list[str] = []
    try:
        pins = domain_pins(plan, wiring, egress_host=egress_host)
    except ChainError as exc:
        problems.append(str(exc))
        pins = {}
    for fid, p in pins.items():
        if placement.get(fid) not in (None, p.host):
            problems.append(f"function {fid!r} is placed on {placement[fid]!r} but must run on {p.host!r} ({p.why})")
    for f in plan.functions:
        if f.id not in placement:
            problems.append(f"function {f.id!r} is placed on no host of the domain")
        elif placement[f.id] not in wiring:
            problems.append(f"function {f.id!r} is placed on {placement[f.id]!r}, which is not a host of the domain")
    if problems:
        raise ChainError("; ".join(problems))

    def outer(name: str) -> str:
        return f"{name}@parent" if name in wiring else name

    hosts = sorted({placement[f.id] for f in plan.functions})
    paths: dict[str, list[PathSpec]] = {}
    rules: dict[str, list[RuleSpec]] = {}
    classify_on: dict[str, set[str]] = {}
    peers: dict[str, dict[str, PeerSpec]] = {}

    def add_peer(host: str, peer: PeerSpec) -> None:
        peers.setdefault(host, {})[peer.host] = peer

    for p in plan.paths:
        runs: list[tuple[str, list[str], int]] = []
        for i, fid in enumerate(p.functions):
            h = placement[fid]
            if runs and runs[-1][0] == h:
                runs[-1][1].append(fid)
            else:
                runs.append((h, [fid], p.first_si - i))
        for k, (h, fids, first_si) in enumerate(runs):
            if k + 1 < len(runs):
                nxt = runs[k + 1][0]
                w = wiring[nxt]
                if not wiring[h].underlay or not w.underlay:
                    problems.append(f"path {p.path or p.spi} goes from {h!r} to {nxt!r} inside the domain, "
                                    "but one of them has no underlay")
                add_peer(h, PeerSpec(nxt, w.underlay_mac or "", w.underlay_ip))
                spec = PathSpec(p.spi, first_si, tuple(fids), "remote", nxt, None, p.path)
            elif p.end == "remote":
                try:
                    peer = plan.peer(p.next_host or "")
                except KeyError:
                    problems.append(f"path {p.path or p.spi} goes on to {p.next_host!r}, which the plan gives "
                                    "no address for")
                    continue
                add_peer(h, PeerSpec(outer(peer.host), peer.mac, peer.ip))
                spec = PathSpec(p.spi, first_si, tuple(fids), "remote", outer(peer.host), None, p.path)
            else:
                # The replies' classifier runs on the interfaces the parent's classify_on names.
                spec = PathSpec(p.spi, first_si, tuple(fids), p.end, None, p.reverse, p.path)
            paths.setdefault(h, []).append(spec)
    for r in plan.rules:
        names = [unqualify(i) for i in r.interfaces]
        for h in {h for h, _ in names}:
            if h not in wiring:
                problems.append(f"classifier rule {r.name or r.spi} names interfaces of {h!r}, "
                                "which is not a host of the domain")
                continue
            ifnames = tuple(i for hh, i in names if hh == h)
            rules.setdefault(h, []).append(RuleSpec(r.spi, r.si, r.match, ifnames, r.name))
            classify_on.setdefault(h, set()).update(ifnames)
    for name in plan.classify_on:
        h, ifname = unqualify(name)
        if h not in wiring:
            problems.append(f"the plan classifies on {name!r}, an interface of no host of the domain")
            continue
        classify_on.setdefault(h, set()).add(ifname)
    if problems:
        raise ChainError("; ".join(problems))
    out = {}
    for h in sorted({*hosts, *rules, *classify_on}):
        w = wiring[h]
        out[h] = HostPlan(h, w.ns, tuple(f for f in plan.functions if placement[f.id] == h), tuple(paths.get(h, ())),
                          tuple(rules.get(h, ())), tuple(sorted(classify_on.get(h, ()))), w.underlay, w.underlay_ip,
                          tuple(sorted(peers.get(h, {}).values(), key=lambda p: p.host)), plan.encap)
    return out
