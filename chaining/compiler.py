"""Compile a service's paths for a placement: SPIs, SIs and per-host segments.

Every path gets an SPI (RFC 8300), allocated in the order the service lists its paths from
``first_spi``; a symmetric path's reverse (its hops backwards, for replies) gets the next SPI
and the two name each other. SI starts at 255 at a path's first hop and goes down by one per
hop, as each function decrements it when it passes the packet on (``vnfkit.h``).

A path is then cut where consecutive hops change host: each :class:`Segment` is what one host
installs with ``LocalChain.add_path(spi, segment.functions, first_si=segment.first_si, ...)``,
``end="remote"`` toward ``segment.next_host`` (which sees the packet with ``segment.next_si``)
or, at the path's end, ``end="egress"``. A path that comes back to a host it left gives that
host two segments of the same SPI.

Nothing here touches a kernel; the output is plain data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from chaining.local import FIRST_SI, MAX_LOCAL_HOPS
from chaining.service import ClassifierRule, Service
from datapath.errors import VnfkitError

MAX_SPI = (1 << 24) - 1  # SPI is a 24-bit field of the NSH service path header
EGRESS = "egress"
REMOTE = "remote"


class CompileError(VnfkitError):
    """The service cannot be compiled for this placement; ``reasons`` lists every one."""

    def __init__(self, reasons: list[str]) -> None:
        self.reasons = list(reasons)
        super().__init__("\n".join(self.reasons))


@dataclass(frozen=True)
class Segment:
    """The consecutive hops of one path on one host.

    ``end`` is ``"remote"`` (NSH to ``next_host``, arriving with SI ``next_si``) or ``"egress"``
    (the path ends here; ``next_host`` is None and ``next_si`` the SI left after the last hop).
    """

    host: str
    functions: list[str]  # flattened function ids, in hop order
    first_si: int
    end: str
    next_host: str | None
    next_si: int

    @property
    def last_si(self) -> int:
        """SI of the segment's last function."""
        return self.first_si - len(self.functions) + 1


@dataclass(frozen=True)
class CompiledPath:
    """A path (or the reverse of a symmetric one) with its SPI and its per-host segments."""

    id: str  # the path's id; a reverse path is "<id>.reverse" (ids cannot hold dots, so no clash)
    spi: int
    hops: list[str]
    segments: list[Segment]
    reverse_spi: int | None = None  # on a symmetric path's forward direction
    reverse_of: int | None = None  # on a reverse path: the forward path's SPI


@dataclass(frozen=True)
class CompiledRule:
    """A classifier rule with the SPI its path got."""

    spi: int
    rule: ClassifierRule


@dataclass(frozen=True)
class CompiledService:
    """Everything the hosts install for a service."""

    service: str
    paths: list[CompiledPath]
    classifier: list[CompiledRule]
    placement: dict[str, str] = field(default_factory=dict)  # flattened function id -> host

    def path(self, path_id: str) -> CompiledPath:
        """The compiled path with this id (``<id>.reverse`` for a reverse path); KeyError if none."""
        for p in self.paths:
            if p.id == path_id:
                return p
        raise KeyError(path_id)

    def by_host(self) -> dict[str, list[tuple[int, Segment]]]:
        """Per host, the (SPI, segment) pairs it installs, in path order."""
        out: dict[str, list[tuple[int, Segment]]] = {}
        for p in self.paths:
            for seg in p.segments:
                out.setdefault(seg.host, []).append((p.spi, seg))
        return out


def _host_of(fid: str, placement: Mapping[str, str]) -> str | None:
    # A constituent's functions may be placed together by the constituent's id ("edge" for
    # "edge.fw"); the most specific entry wins.
    parts = fid.split(".")
    for n in range(len(parts), 0, -1):
        host = placement.get(".".join(parts[:n]))
        if host is not None:
            return host
    return None


def _segments(path_id: str, hops: list[str], hosts: list[str], reasons: list[str]) -> list[Segment]:
    runs: list[tuple[str, list[str], int]] = []  # (host, functions, first SI)
    for i, (fid, host) in enumerate(zip(hops, hosts, strict=True)):
        if runs and runs[-1][0] == host:
            runs[-1][1].append(fid)
        else:
            runs.append((host, [fid], FIRST_SI - i))
    segments = []
    for k, (host, functions, first_si) in enumerate(runs):
        if len(functions) > MAX_LOCAL_HOPS:
            reasons.append(f"path {path_id!r}: {len(functions)} consecutive hops on host {host!r} "
                           f"({functions[0]} .. {functions[-1]}); one host runs at most {MAX_LOCAL_HOPS} "
                           "local hops (the kernel's tail-call limit): split it across hosts")
        next_si = first_si - len(functions)
        if k + 1 < len(runs):
            segments.append(Segment(host, functions, first_si, REMOTE, runs[k + 1][0], next_si))
        else:
            segments.append(Segment(host, functions, first_si, EGRESS, None, next_si))
    return segments


def compile_paths(service: Service, placement: Mapping[str, str], *, first_spi: int = 1,
                  reserved_spis: Iterable[int] = ()) -> CompiledService:
    """Allocate SPIs and SIs for every path of ``service`` and split each into per-host segments.

    ``placement`` maps a flattened function id (or a constituent's id, for all its functions) to
    a host. SPIs are ``first_spi``, ``first_spi + 1``, ... in path order, a symmetric path's
    reverse right after it. Raises CompileError naming every path and host at fault: a function
    with no host, more than 16 consecutive hops on one host, a path of more than 255 hops, or an
    SPI outside 1 .. 2^24-1 or among ``reserved_spis`` (already used on the hosts).
    """
    reasons: list[str] = []
    reserved = set(reserved_spis)
    wanted = sum(2 if p.symmetric else 1 for p in service.paths)
    spis = list(range(first_spi, first_spi + wanted))
    if spis and not (1 <= spis[0] and spis[-1] <= MAX_SPI):
        reasons.append(f"SPIs {spis[0]} .. {spis[-1]} for {wanted} path(s) are outside 1 .. {MAX_SPI}")
    clash = sorted(reserved.intersection(spis))
    if clash:
        reasons.append(f"SPIs {first_spi} .. {first_spi + wanted - 1} for {wanted} path(s) collide with "
                       f"reserved SPI(s) {', '.join(map(str, clash))}: choose another first_spi")

    unplaced: dict[str, list[str]] = {}
    for p in service.paths:
        for fid in p.hops:
            if _host_of(fid, placement) is None and p.id not in unplaced.get(fid, []):
                unplaced.setdefault(fid, []).append(p.id)
    for fid, on in unplaced.items():
        reasons.append(f"function {fid!r} (on path {', '.join(map(repr, on))}) is placed on no host")

    compiled: list[CompiledPath] = []
    rules: list[CompiledRule] = []
    next_spi = iter(spis)
    for p in service.paths:
        spi = next(next_spi)
        reverse_spi = next(next_spi) if p.symmetric else None
        if len(p.hops) > FIRST_SI:
            # SI goes down by one per hop from 255 and cannot go below 0 at the path's end.
            reasons.append(f"path {p.id!r} has {len(p.hops)} hops; a path holds at most {FIRST_SI} (SI is 8 bits)")
            continue
        if any(fid in unplaced for fid in p.hops):
            continue
        hosts = [_host_of(fid, placement) or "" for fid in p.hops]
        compiled.append(CompiledPath(p.id, spi, list(p.hops), _segments(p.id, p.hops, hosts, reasons),
                                     reverse_spi=reverse_spi))
        if reverse_spi is not None:
            back = list(reversed(p.hops))
            rid = f"{p.id}.reverse"
            compiled.append(CompiledPath(rid, reverse_spi, back, _segments(rid, back, hosts[::-1], reasons),
                                         reverse_of=spi))
        rules += [CompiledRule(spi, r) for r in service.classifier if r.path == p.id]
    if reasons:
        raise CompileError(reasons)
    placed = {f.id: host for f in service.functions if (host := _host_of(f.id, placement)) is not None}
    return CompiledService(service.name, compiled, rules, placed)
