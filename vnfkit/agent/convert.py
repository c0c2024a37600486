"""``Segment`` messages to and from ``chaining.plan.HostPlan``, checking what a request says.

A segment names things in its service's own terms (function ``fw``, path ``web``); on the host
they become ``<service>/fw`` and ``<service>/web``, so services sharing a host never collide.
Everything a request can get wrong without looking at the host (names, numbers in range, VNFs
that exist, config values within their parameters' ranges, references between functions,
paths and rules) is refused here, with every problem named, before anything is touched.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from google.protobuf import json_format, struct_pb2

from chaining.plan import FunctionSpec, HostPlan, PathSpec, PeerSpec, RuleSpec
from chaining.service import Match
from datapath.errors import VnfkitError
from vnfkit.agent.errors import INVALID_ARGUMENT, AgentError
from vnfkit.descriptor import config_values, load_descriptor
from vnfkit.proto import load

pb, _ = load()
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # services and functions: pin and label safe
PATH_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")  # the compiler names reverse paths "<id>.reverse"
MAC = re.compile(r"^[0-9a-fA-F]{2}([:-][0-9a-fA-F]{2}){5}$")
MAX_SPI = (1 << 24) - 1
ENCAPS = {pb.ENCAP_UNSPECIFIED: "eth", pb.ENCAP_ETH: "eth", pb.ENCAP_VXLAN_GPE: "vxlan-gpe"}
ENDS = {pb.PATH_END_STACK: "stack", pb.PATH_END_REMOTE: "remote"}


def struct_to_dict(s: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as plain data; whole numbers come back as ints (Struct keeps every number as a
    double, and VNF parameters are mostly integers)."""
    def fix(v: Any) -> Any:
        if isinstance(v, float) and math.isfinite(v) and v.is_integer():
            return int(v)
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v

    return fix(json_format.MessageToDict(s))


def dict_to_struct(d: Mapping[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(_plain(d))
    return s


def _plain(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    return v


def known_vnfs(vnfs_dir: Path) -> list[str]:
    return sorted(p.name for p in vnfs_dir.iterdir() if (p / "vnf.yaml").is_file()) if vnfs_dir.is_dir() else []


def resolve_vnf(vnf: str, vnfs_dir: Path) -> Path:
    """A segment's ``vnf``: a folder name under ``vnfs_dir`` or an absolute path to a VNF folder."""
    if vnf.startswith("/"):
        folder = Path(vnf)
    elif NAME.match(vnf):
        folder = vnfs_dir / vnf
    else:
        raise ValueError(f"VNF {vnf!r} is neither a name under {vnfs_dir} nor an absolute path")
    if not (folder / "vnf.yaml").is_file():
        raise ValueError(f"unknown VNF {vnf!r}: {folder} has no vnf.yaml (known: {', '.join(known_vnfs(vnfs_dir))})")
    return folder


def digest(seg: Any) -> str:
    """What a segment asks for, without its generation: equal digests, equal requests."""
    copy = pb.Segment()
    copy.CopyFrom(seg)
    copy.generation = 0
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


def reconfigured(segment: bytes, generation: int, function: str, config: Any, control: Any | None) -> Any:
    """A stored Segment as a new generation with one function's config (and, unless None, its
    control settings) replaced: what ``Configure`` applies. KeyError if it has no such function."""
    seg = pb.Segment.FromString(segment)
    fn = next((f for f in seg.functions if f.id == function), None)
    if fn is None:
        raise KeyError(f"service {seg.service!r} has no function {function!r} (it has {[f.id for f in seg.functions]})")
    fn.config.CopyFrom(config)
    if control is not None:
        fn.control.CopyFrom(control)
    seg.generation = generation
    return seg


def plan_from_segment(seg: Any, host: str, vnfs_dir: Path) -> HostPlan:
    """The host plan of one service's segment; AgentError(INVALID_ARGUMENT) listing every problem."""
    problems: list[str] = []
    svc = seg.service
    if not NAME.match(svc):
        raise AgentError(INVALID_ARGUMENT, f"service name {svc!r}: 1-64 letters, digits, '_' or '-'")
    if seg.generation <= 0:
        problems.append("generation must be > 0")
    functions: list[FunctionSpec] = []
    ids: set[str] = set()
    for i, f in enumerate(seg.functions):
        where = f"functions[{i}] ({f.id or '?'})"
        if not NAME.match(f.id):
            problems.append(f"{where}: id must be 1-64 letters, digits, '_' or '-'")
            continue
        if f.id in ids:
            problems.append(f"{where}: a second function with this id")
            continue
        ids.add(f.id)
        try:
            folder = resolve_vnf(f.vnf, vnfs_dir)
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            continue
        config = struct_to_dict(f.config)
        try:
            config_values(load_descriptor(folder), config)
        except VnfkitError as exc:
            problems.append(f"{where}: config: {exc}")
            continue
        control = struct_to_dict(f.control) if f.HasField("control") else None
        functions.append(FunctionSpec(f"{svc}/{f.id}", str(folder), config, control))
    peers = {p.host for p in seg.peers}
    segments = set()
    paths: list[PathSpec] = []
    for i, p in enumerate(seg.paths):
        where = f"paths[{i}] ({p.path or p.spi})"
        if p.path and not PATH_NAME.match(p.path):
            problems.append(f"{where}: path id must be 1-128 letters, digits, '_', '-' or '.'")
        if not 0 < p.spi <= MAX_SPI:
            problems.append(f"{where}: SPI {p.spi} out of range (1 .. {MAX_SPI})")
        if not len(p.functions) <= p.first_si <= 255 or p.first_si == 0:
            problems.append(f"{where}: first SI {p.first_si} out of range ({max(len(p.functions), 1)} .. 255)")
        unknown = [f for f in p.functions if f not in ids]
        if unknown:
            problems.append(f"{where}: unknown function(s) {unknown} (the segment has {sorted(ids)})")
        end = ENDS.get(p.end)
        if end is None:
            problems.append(f"{where}: end must be PATH_END_STACK or PATH_END_REMOTE")
        elif end == "remote" and p.next_host not in peers:
            problems.append(f"{where}: goes on to {p.next_host!r}, which is not among the segment's peers")
        reverse = None
        if p.HasField("reverse"):
            if not (0 < p.reverse.spi <= MAX_SPI and 0 < p.reverse.si <= 255):
                problems.append(f"{where}: reverse (SPI {p.reverse.spi}, SI {p.reverse.si}) out of range")
            reverse = (p.reverse.spi, p.reverse.si)
        segments.add((p.spi, p.first_si))
        paths.append(PathSpec(p.spi, p.first_si, tuple(f"{svc}/{f}" for f in p.functions), end or "",
                              p.next_host or None, reverse, f"{svc}/{p.path}" if p.path else ""))
    rules: list[RuleSpec] = []
    for i, r in enumerate(seg.rules):
        where = f"rules[{i}] ({r.name or i})"
        if (r.spi, r.si) not in segments:
            problems.append(f"{where}: starts at SPI {r.spi} SI {r.si}, where no path segment of the service begins")
        if not r.interfaces:
            problems.append(f"{where}: names no interface")
        m = r.match
        match = Match(dst=m.dst or None, src=m.src or None, proto=m.proto if m.HasField("proto") else None,
                      dport=(m.dport.first, m.dport.last) if m.HasField("dport") else None,
                      sport=(m.sport.first, m.sport.last) if m.HasField("sport") else None,
                      vlan=m.vlan if m.HasField("vlan") else None)
        rules.append(RuleSpec(r.spi, r.si, match, tuple(r.interfaces), f"{svc}/{r.name}" if r.name else f"{svc}#{i}"))
    if seg.encap not in ENCAPS:
        problems.append(f"encap {seg.encap} is not one of {sorted(ENCAPS)}")
    for i, peer in enumerate(seg.peers):
        if not MAC.match(peer.mac):
            problems.append(f"peers[{i}] ({peer.host}): {peer.mac!r} is not a MAC address")
    if problems:
        raise AgentError(INVALID_ARGUMENT, f"segment of service {svc!r} generation {seg.generation} refused:\n  "
                         + "\n  ".join(problems))
    return HostPlan(host=host, functions=tuple(functions), paths=tuple(paths), rules=tuple(rules),
                    classify_on=tuple(seg.classify_on), underlay=seg.underlay or None,
                    underlay_ip=seg.underlay_ip or None,
                    peers=tuple(PeerSpec(p.host, p.mac, p.ip or None) for p in seg.peers),
                    encap=ENCAPS.get(seg.encap, "eth"))


def segment_from_plan(plan: HostPlan, service: str, generation: int, vnfs_dir: Path | None = None) -> Any:
    """The Segment message of one service's host plan (``chaining.plan.host_plans``); VNF
    folders under ``vnfs_dir`` travel by name, others as absolute paths."""
    def local(name: str) -> str:
        return name.removeprefix(f"{service}/")

    def vnf(folder: str) -> str:
        path = Path(folder).resolve()
        if vnfs_dir is not None and path.parent == Path(vnfs_dir).resolve():
            return path.name
        return str(path)

    seg = pb.Segment(service=service, generation=generation, classify_on=list(plan.classify_on),
                     underlay=plan.underlay or "", underlay_ip=plan.underlay_ip or "",
                     encap=pb.ENCAP_VXLAN_GPE if plan.encap == "vxlan-gpe" else pb.ENCAP_ETH)
    for f in plan.functions:
        fn = seg.functions.add(id=local(f.id), vnf=vnf(f.folder), config=dict_to_struct(f.config))
        if f.control is not None:
            fn.control.CopyFrom(dict_to_struct(f.control))
    for p in plan.paths:
        ps = seg.paths.add(spi=p.spi, first_si=p.first_si, functions=[local(f) for f in p.functions],
                           end=pb.PATH_END_REMOTE if p.end == "remote" else pb.PATH_END_STACK,
                           next_host=p.next_host or "", path=local(p.path))
        if p.reverse is not None:
            ps.reverse.CopyFrom(pb.Hop(spi=p.reverse[0], si=p.reverse[1]))
    for r in plan.rules:
        m = pb.Match(dst=r.match.dst or "", src=r.match.src or "")
        if r.match.proto is not None:
            m.proto = r.match.proto
        if r.match.dport is not None:
            m.dport.CopyFrom(pb.PortRange(first=r.match.dport[0], last=r.match.dport[1]))
        if r.match.vlan is not None:
            m.vlan = r.match.vlan
        if r.match.sport is not None:
            m.sport.CopyFrom(pb.PortRange(first=r.match.sport[0], last=r.match.sport[1]))
        seg.rules.add(spi=r.spi, si=r.si, match=m, interfaces=list(r.interfaces), name=local(r.name))
    for peer in plan.peers:
        seg.peers.add(host=peer.host, mac=peer.mac, ip=peer.ip or "")
    return seg
