"""The network service descriptor (service.yaml): VNF instances, the paths through them, the
classifier, and constituent services, loaded, checked and flattened.

A service is YAML checked against ``schema/service.schema.json`` (in the spirit of SONATA's
NSD and ETSI SOL006), then against what a schema cannot express: unique ids, hops and rules
that name something that exists, VNFs that exist and accept the given config, no service that
includes itself (directly or through others), and classifier rules that never leave a packet
with two equally good paths. Every problem is a :class:`vnfkit.descriptor.Problem` with file,
line, column and YAML path, all reported at once as :class:`vnfkit.descriptor.DescriptorError`;
functions on no path are warnings (``Service.warnings``), not errors.

Constituent services are flattened: a function ``fw`` of the service included as ``edge``
becomes ``edge.fw`` (its ``name`` stays ``fw``, so its counters keep their names), and a hop
naming ``edge`` expands into the hops of the constituent's single path. Only the outermost
service's classifier and ``symmetric`` flags count: a constituent is a piece of a path.

Classifier overlap (kept simple on purpose): each match field is a set of packets (a prefix,
a protocol, a port range, a VLAN; an absent field matches everything). As in
``progs/classifier.c``, the most specific rule wins; so two rules for different paths conflict
when some packet matches both and neither is strictly more specific, i.e. every field of one
is equal to or inside the other's, at least one strictly. Identical matches and "crossed"
rules (one narrower in ``dst``, the other in ``dport``) are errors. A rule with ports matches
only TCP, UDP and SCTP, so it is disjoint from a rule for another protocol.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, ValidationError, validators

from datapath.errors import VnfkitError
from vnfkit.control import check as control_check

# Private helpers of the VNF descriptor loader, reused so both descriptors share one YAML
# position engine and one wording for schema errors.
from vnfkit.descriptor import (
    Descriptor,
    DescriptorError,
    Problem,
    Value,
    YamlDocument,
    YamlPath,
    config_values,
    describe_value,
    explain_schema_error,
    format_path,
    fullmatch_pattern,
    kind_of,
    load_descriptor,
    nearest_position,
    parse_yaml,
    read_descriptor_text,
)

SCHEMA_PATH = Path(__file__).parent / "schema" / "service.schema.json"
SERVICE_FILE = "service.yaml"
VNFS_DIR = Path(__file__).resolve().parent.parent / "vnfs"
MAX_NESTING = 8  # constituent services inside services: deeper is surely a mistake
PROTOCOLS = {"icmp": 1, "tcp": 6, "udp": 17, "icmpv6": 58, "sctp": 132}
PORT_PROTOCOLS = frozenset({6, 17, 132})


@dataclass(frozen=True)
class Function:
    """A VNF instance of the flattened service.

    ``id`` is unique in the service (``edge.fw`` for ``fw`` of constituent ``edge``); ``name`` is
    the id as its own service wrote it, the name its counters go by.
    """

    id: str
    name: str
    vnf: str  # the VNF's name from its vnf.yaml
    folder: Path  # the VNF folder, absolute
    config: dict[str, Value]  # the overrides as written, checked against the VNF's parameters
    source: str  # the service.yaml that declared it
    control: dict[str, Any] | None = None  # for the VNF's control.py configure() (vnfkit.control)


@dataclass(frozen=True)
class ServicePath:
    """A service function path: flattened function ids in visiting order."""

    id: str
    hops: list[str]
    symmetric: bool = False


@dataclass(frozen=True)
class Match:
    """What a classifier rule matches; ``None`` matches anything. Ports are inclusive ranges;
    a match with ports matches TCP, UDP and SCTP only (and no non-first fragment)."""

    dst: str | None = None
    src: str | None = None
    proto: int | None = None
    dport: tuple[int, int] | None = None
    vlan: int | None = None
    sport: tuple[int, int] | None = None


MATCH_FIELDS = ("dst", "src", "proto", "sport", "dport", "vlan")


@dataclass(frozen=True)
class ClassifierRule:
    """Traffic matching ``match`` starts on path ``path``."""

    path: str
    match: Match


@dataclass(frozen=True)
class Service:
    """A loaded, checked and flattened service.yaml."""

    name: str
    vendor: str
    version: str
    description: str
    functions: list[Function]
    paths: list[ServicePath]
    classifier: list[ClassifierRule]
    source: str
    warnings: list[Problem] = field(default_factory=list)

    def function(self, function_id: str) -> Function:
        """The function with this (flattened) id; KeyError if there is none."""
        for f in self.functions:
            if f.id == function_id:
                return f
        raise KeyError(function_id)

    def path(self, path_id: str) -> ServicePath:
        """The path with this id; KeyError if there is none."""
        for p in self.paths:
            if p.id == path_id:
                return p
        raise KeyError(path_id)


# ---------------------------------------------------------------------------------------------
# Schema


@cache
def schema() -> dict[str, Any]:
    """The service descriptor's JSON Schema (draft 2020-12)."""
    return json.loads(SCHEMA_PATH.read_text())


@cache
def _validator() -> Any:
    cls = validators.extend(Draft202012Validator, {"pattern": fullmatch_pattern})
    return cls(schema())


def _explain_any(err: ValidationError, doc: YamlDocument) -> list[tuple[YamlPath, str]]:
    # jsonschema's anyOf message dumps the sub-schemas; the field's description says it better.
    if err.validator == "anyOf":
        what = err.schema.get("description", "see the schema")
        return [(tuple(err.absolute_path), f"{describe_value(err.instance)} is not valid: {what}")]
    return explain_schema_error(err, doc)


def _schema_problems(doc: YamlDocument, file: str) -> tuple[list[Problem], set[YamlPath]]:
    found: dict[tuple[YamlPath, str], None] = {}  # ordered, de-duplicated
    for err in _validator().iter_errors(doc.data):
        for path, message in _explain_any(err, doc):
            found[(path, message)] = None
    problems = [Problem(file, *nearest_position(doc.positions, path), format_path(path), message)
                for path, message in found]
    return problems, {path for path, _ in found}


# ---------------------------------------------------------------------------------------------
# VNFs


@cache
def _descriptor(folder: str, mtime_ns: int) -> Descriptor | DescriptorError:
    # Cached by modification time: a service names the same few VNFs over and over.
    try:
        return load_descriptor(folder)
    except DescriptorError as exc:
        return exc


def cached_descriptor(folder: str | Path) -> Descriptor:
    """``load_descriptor(folder)``, loaded once per change of its vnf.yaml (placement asks for
    every function of every deployed service on each deploy). DescriptorError as it would."""
    path = Path(folder).resolve()
    try:
        mtime = (path / "vnf.yaml").stat().st_mtime_ns
    except OSError:
        return load_descriptor(folder)  # which says what is wrong with the folder
    loaded = _descriptor(str(path), mtime)
    if isinstance(loaded, DescriptorError):
        raise loaded
    return loaded


def _resolve_vnf(ref: str, base: Path) -> tuple[Descriptor | None, str | None]:
    """The descriptor a ``vnf:`` reference names, or why there is none."""
    # A bare name is a folder of vnfs/; anything with a slash is a path from the service file.
    bare = "/" not in ref and ref not in (".", "..")
    folder = VNFS_DIR / ref if bare else base / ref
    try:
        desc_file = folder / "vnf.yaml"
        if not desc_file.is_file():
            if bare:
                known = sorted(p.name for p in VNFS_DIR.iterdir() if (p / "vnf.yaml").is_file())
                close = difflib.get_close_matches(ref, known, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(known)}"
                return None, f"no VNF named {ref!r} in {VNFS_DIR} ({hint})"
            return None, f"{ref!r} is not a VNF folder (no vnf.yaml in {folder})"
        loaded = _descriptor(str(folder.resolve()), desc_file.stat().st_mtime_ns)
    except (OSError, ValueError) as exc:  # NUL bytes, permissions, loops of symlinks
        return None, f"cannot use {ref!r} as a VNF: {exc}"
    if isinstance(loaded, DescriptorError):
        first = loaded.problems[0] if loaded.problems else "invalid"
        more = f" (and {len(loaded.problems) - 1} more)" if len(loaded.problems) > 1 else ""
        return None, f"the VNF {ref!r} is invalid: {first}{more}"
    return loaded, None


# ---------------------------------------------------------------------------------------------
# Classifier matches as packet sets


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _parse_match(match: dict[str, Any], at: YamlPath) -> tuple[Match | None, list[tuple[YamlPath, str]]]:
    out: list[tuple[YamlPath, str]] = []
    nets: dict[str, Network] = {}
    for key in ("dst", "src"):
        if key in match:
            try:
                nets[key] = ipaddress.ip_network(match[key], strict=True)
            except ValueError as exc:
                out.append(((*at, key), f"{describe_value(match[key])} is not a prefix such as '10.0.0.0/8': {exc}"))
    if len({n.version for n in nets.values()}) > 1:
        out.append(((*at, "src"), "src and dst are of different IP versions; no packet can match both"))
    proto = match.get("proto")
    proto_num = PROTOCOLS[proto] if isinstance(proto, str) else proto
    ports: dict[str, tuple[int, int]] = {}
    for key in ("sport", "dport"):
        if key in match:
            raw = match[key]
            lo, hi = (int(x) for x in raw.split("-")) if isinstance(raw, str) else (raw, raw)
            if not 0 <= lo <= hi <= 65535:
                out.append(((*at, key), f"{raw!r} is not a port range lo-hi with 0 <= lo <= hi <= 65535"))
            ports[key] = (lo, hi)
            if proto_num is not None and proto_num not in PORT_PROTOCOLS:
                out.append(((*at, key), f"protocol {proto} has no ports ({key} needs tcp, udp or sctp)"))
    if out:
        return None, out
    return Match(dst=str(nets["dst"]) if "dst" in nets else None, src=str(nets["src"]) if "src" in nets else None,
                 proto=proto_num, dport=ports.get("dport"), vlan=match.get("vlan"), sport=ports.get("sport")), []


@cache
def _network(text: str) -> Network:
    # Parsed once: ordering a classifier's rules compares every pair.
    return ipaddress.ip_network(text)


def _relation(a: Any, b: Any) -> str:
    """How one field's packet set relates to another's: 'eq', 'sub' (a inside b), 'sup', 'disjoint'
    or 'cross' (they intersect but neither holds the other: only port ranges can)."""
    if a == b:
        return "eq"
    if a is None:
        return "sup"
    if b is None:
        return "sub"
    if isinstance(a, str):  # prefixes
        na, nb = _network(a), _network(b)
        if na.version != nb.version:
            return "disjoint"
        if na.subnet_of(nb):  # type: ignore[arg-type]
            return "sub"
        if nb.subnet_of(na):  # type: ignore[arg-type]
            return "sup"
        return "disjoint"  # two prefixes either nest or are disjoint
    if isinstance(a, tuple):
        if a[1] < b[0] or b[1] < a[0]:
            return "disjoint"
        if b[0] <= a[0] and a[1] <= b[1]:
            return "sub"
        if a[0] <= b[0] and b[1] <= a[1]:
            return "sup"
        return "cross"
    return "disjoint"  # single values (proto, vlan) that differ


def _ports_exclude(a: Match, b: Match) -> bool:
    """``a`` has ports and ``b`` is for a protocol without: no packet matches both."""
    return (a.sport is not None or a.dport is not None) and b.proto is not None and b.proto not in PORT_PROTOCOLS


def relation(a: Match, b: Match, extra: Iterable[tuple[Any, Any]] = ()) -> str:
    """How the packets ``a`` matches relate to those ``b`` matches: 'eq', 'sub' (a strictly
    inside b), 'sup', 'disjoint', or 'overlap' (some packet matches both, neither is inside the
    other). ``extra`` adds field pairs the descriptor does not have (the classifier's ingress
    interface), ``None`` meaning any, compared like the others."""
    if _ports_exclude(a, b) or _ports_exclude(b, a):
        return "disjoint"
    rels = {_relation(getattr(a, f), getattr(b, f)) for f in MATCH_FIELDS}
    rels.update(_relation(x, y) for x, y in extra)
    if "disjoint" in rels:
        return "disjoint"
    if rels == {"eq"}:
        return "eq"
    if rels <= {"eq", "sub"}:
        return "sub"
    if rels <= {"eq", "sup"}:
        return "sup"
    return "overlap"


def conflict(a: Match, b: Match) -> bool:
    """Whether a packet may match both ``a`` and ``b`` with neither the more specific rule."""
    return relation(a, b) in ("eq", "overlap")


# ---------------------------------------------------------------------------------------------
# Loading


def load_service(path: str | Path) -> Service:
    """Load, check and flatten a service: ``path`` is a service.yaml or a folder holding one.

    Raises DescriptorError listing every problem (in this file and in constituent services);
    never any other exception for bad input. Warnings are in the result's ``warnings``.
    """
    try:
        p = Path(path)
        file = p / SERVICE_FILE if p.is_dir() else p
    except (OSError, ValueError, TypeError) as exc:
        raise DescriptorError([Problem(str(path), 0, 0, "", f"cannot use this path: {exc}")]) from None
    service, errors, warnings = _Loader().load(file, str(file), ())
    if errors or service is None:
        raise DescriptorError(sorted(errors, key=lambda q: (q.file != str(file), q.file, q.line, q.column)))
    return dataclasses.replace(service, warnings=warnings)


class _Loader:
    """One load: collects errors and warnings across the tree of constituent services."""

    def __init__(self) -> None:
        self.errors: list[Problem] = []
        self.warnings: list[Problem] = []

    def load(self, file: Path, shown: str, stack: tuple[Path, ...]) -> tuple[Service | None, list[Problem],
                                                                           list[Problem]]:
        """The service in ``file`` (named ``shown`` in messages), included through ``stack``."""
        service = self._load(file, shown, stack)
        return service, self.errors, self.warnings

    def _load(self, file: Path, shown: str, stack: tuple[Path, ...]) -> Service | None:
        try:
            exists = file.is_file()
        except (OSError, ValueError):
            exists = False
        if not exists:
            self.errors.append(Problem(shown, 0, 0, "", "no such file (a service is described in a service.yaml)"))
            return None
        text, problems = read_descriptor_text(file)
        doc = None
        if text is not None:
            doc, problems = parse_yaml(text, shown)
        self.errors += problems
        if doc is None:
            return None
        if not isinstance(doc.data, dict):
            self.errors.append(Problem(shown, *doc.positions.get((), (1, 1)), "",
                                       f"a service must be a mapping of fields (name: ..., functions: ...), "
                                       f"not {kind_of(doc.data)}"))
            return None
        problems, bad = _schema_problems(doc, shown)
        self.errors += problems
        before = len(self.errors)
        service = _Checker(self, doc, file, shown, stack, bad).run()
        return service if not problems and len(self.errors) == before else None


class _Checker:
    """The checks a schema cannot express, on one service file, and its flattening."""

    def __init__(self, loader: _Loader, doc: YamlDocument, file: Path, shown: str, stack: tuple[Path, ...],
                 bad: set[YamlPath]) -> None:
        self.loader, self.doc, self.file, self.shown, self.bad = loader, doc, file, shown, bad
        self.stack = (*stack, file.resolve())
        self.data: dict[str, Any] = doc.data

    def error(self, at: YamlPath, message: str) -> None:
        where = nearest_position(self.doc.positions, at)
        self.loader.errors.append(Problem(self.shown, *where, format_path(at), message))

    def warn(self, at: YamlPath, message: str) -> None:
        where = nearest_position(self.doc.positions, at)
        self.loader.warnings.append(Problem(self.shown, *where, format_path(at), message))

    def section(self, name: str) -> list[Any]:
        """A section's items, or none if the section is not a list (the schema has said so)."""
        value = self.data.get(name)
        return value if isinstance(value, list) else []

    def items(self, section: str) -> Iterator[tuple[YamlPath, dict[str, Any]]]:
        """The items of a section the schema accepted (an item with schema errors is not re-judged)."""
        value = self.data.get(section)
        if isinstance(value, list):
            for i, item in enumerate(value):
                at: YamlPath = (section, i)
                if isinstance(item, dict) and not any(p[:2] == at for p in self.bad):
                    yield at, item

    def run(self) -> Service | None:
        functions: list[Function] = []
        declared: dict[str, YamlPath] = {}  # every function id, valid or not, against dangling-hop noise
        expansions: dict[str, list[str] | None] = {}  # id -> its hops (None: broken, already reported)
        for at, item in self.items("functions"):
            fid = item["id"]
            if fid in declared:
                self.error((*at, "id"), f"id {fid!r} is already used by {format_path(declared[fid])}")
                continue
            declared[fid] = at
            expansions[fid] = None
            if ("vnf" in item) == ("service" in item):
                self.error(at, "a function has either 'vnf' (a VNF instance) or 'service' (a constituent service)")
            elif "vnf" in item:
                fn = self._vnf(at, item)
                if fn is not None:
                    functions.append(fn)
                    expansions[fid] = [fid]
            else:
                for key in ("config", "control"):
                    if key in item:
                        self.error((*at, key), f"{key} applies to a VNF, not to a constituent service")
                inner = self._constituent(at, item)
                if inner is not None:
                    functions += [dataclasses.replace(f, id=f"{fid}.{f.id}") for f in inner.functions]
                    if len(inner.paths) == 1:
                        expansions[fid] = [f"{fid}.{h}" for h in inner.paths[0].hops]
                    else:
                        # Kept as a marker so a hop naming it can say why it cannot expand.
                        expansions[fid] = []
        # Ids of items the schema refused still count as declared: a hop naming one is not dangling.
        for i, item in enumerate(self.section("functions")):
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                declared.setdefault(item["id"], ("functions", i))

        paths: list[ServicePath] = []
        path_ids: dict[str, YamlPath] = {}
        used: set[str] = set()
        for at, item in self.items("paths"):
            pid = item["id"]
            if pid in path_ids:
                self.error((*at, "id"), f"id {pid!r} is already used by {format_path(path_ids[pid])}")
                continue
            path_ids[pid] = at
            hops: list[str] = []
            for j, hop in enumerate(item["hops"]):
                used.add(hop)
                if hop not in declared:
                    close = difflib.get_close_matches(hop, list(declared), n=1)
                    hint = f"did you mean {close[0]!r}?" if close else f"declared: {', '.join(declared) or 'none'}"
                    self.error((*at, "hops", j), f"unknown function {hop!r} ({hint})")
                elif expansions.get(hop) == []:
                    self.error((*at, "hops", j), f"{hop!r} is a constituent service with more than one path; "
                                                 "a hop can only expand a service with exactly one")
                else:
                    hops += expansions.get(hop) or []
            paths.append(ServicePath(pid, hops, bool(item.get("symmetric", False))))
        for i, item in enumerate(self.section("paths")):
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                path_ids.setdefault(item["id"], ("paths", i))

        rules: list[tuple[YamlPath, ClassifierRule]] = []
        for at, item in self.items("classifier"):
            if item["path"] not in path_ids:
                close = difflib.get_close_matches(item["path"], list(path_ids), n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"paths: {', '.join(path_ids) or 'none'}"
                self.error((*at, "path"), f"unknown path {item['path']!r} ({hint})")
                continue
            match, problems = _parse_match(item["match"], (*at, "match"))
            for where, message in problems:
                self.error(where, message)
            if match is None:
                continue
            for other_at, other in rules:
                if other.path != item["path"] and conflict(match, other.match):
                    self.error((*at, "match"), f"overlaps {format_path(other_at)} (path {other.path!r}): a packet "
                                               f"can match both and neither is more specific, so it could go on "
                                               f"path {item['path']!r} or {other.path!r}")
                elif other.path == item["path"] and match == other.match:
                    self.warn((*at, "match"), f"the same match as {format_path(other_at)}; the rule is redundant")
            rules.append((at, ClassifierRule(item["path"], match)))

        for fid, at in declared.items():
            if fid not in used and fid in expansions:
                self.warn((*at, "id"), f"function {fid!r} is on no path: no traffic reaches it")

        if not all(k in self.data and isinstance(self.data[k], str) for k in ("name", "vendor", "version")):
            return None
        return Service(self.data["name"], self.data["vendor"], self.data["version"],
                       str(self.data.get("description", "")), functions, paths, [r for _, r in rules], self.shown)

    def _vnf(self, at: YamlPath, item: dict[str, Any]) -> Function | None:
        desc, why = _resolve_vnf(item["vnf"], self.file.parent)
        if desc is None:
            self.error((*at, "vnf"), why or "not a VNF")
            return None
        config = item.get("config") or {}
        control = item.get("control")
        implied: dict[str, Any] = {}
        if control is not None:
            try:
                implied = control_check(desc.folder, control)
            except VnfkitError as exc:
                self.error((*at, "control"), str(exc))
                return None
            both = sorted(set(implied) & set(config))
            if both:
                self.error((*at, "config"), f"{', '.join(both)}: set by both config and control; keep one")
                return None
        try:
            config_values(desc, {**implied, **config})
        except DescriptorError as exc:
            for p in exc.problems:
                self.error((*at, "config", p.path), f"{desc.name}: {p.message}")
            return None
        return Function(item["id"], item["id"], desc.name, desc.folder, dict(config), self.shown,
                        dict(control) if control is not None else None)

    def _constituent(self, at: YamlPath, item: dict[str, Any]) -> Service | None:
        ref = item["service"]
        try:
            target = self.file.parent / ref
            if target.is_dir():
                target = target / SERVICE_FILE
            resolved = target.resolve()
        except (OSError, ValueError, RuntimeError) as exc:
            self.error((*at, "service"), f"cannot use {ref!r} as a service: {exc}")
            return None
        if resolved in self.stack:
            chain = [*self.stack[self.stack.index(resolved):], resolved]
            self.error((*at, "service"), "service recursion: " + " -> ".join(os.path.relpath(p) for p in chain)
                       + " (a service cannot include itself)")
            return None
        if len(self.stack) > MAX_NESTING:
            self.error((*at, "service"), f"constituent services nested deeper than {MAX_NESTING} levels")
            return None
        shown = os.path.normpath(os.path.join(os.path.dirname(self.shown), ref))
        if target.name == SERVICE_FILE and not shown.endswith(SERVICE_FILE):
            shown = os.path.join(shown, SERVICE_FILE)
        before = len(self.loader.errors)
        inner = self.loader._load(target, shown, self.stack)
        if inner is None and len(self.loader.errors) > before:
            # The inner file's problems are reported in it; say here where it was included from.
            self.error((*at, "service"), f"the constituent service {ref!r} is invalid (see its problems)")
        return inner
