"""topology.yaml: the emulated hosts, their underlay and the traffic endpoints, loaded and checked.

Problems come back as ``vnfkit.descriptor.DescriptorError`` with file, line and field, like a
VNF or service descriptor's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, validators

from vnfkit.descriptor import (
    DescriptorError,
    Problem,
    explain_schema_error,
    format_path,
    fullmatch_pattern,
    nearest_position,
    parse_yaml,
    read_descriptor_text,
)

SCHEMA_PATH = Path(__file__).with_name("topology.schema.json")


@dataclass(frozen=True)
class Impairment:
    """netem on a link: one-way delay (ms) and random loss (%)."""

    delay_ms: float = 0.0
    loss_pct: float = 0.0

    def __bool__(self) -> bool:
        return bool(self.delay_ms or self.loss_pct)


@dataclass(frozen=True)
class Host:
    name: str
    cpus: int = 4
    memory_mb: int = 4096


@dataclass(frozen=True)
class Endpoint:
    name: str
    host: str
    role: str  # "client" or "server"
    impairment: Impairment = field(default_factory=Impairment)


@dataclass(frozen=True)
class Topology:
    name: str
    hosts: list[Host]
    endpoints: list[Endpoint]
    underlay_mtu: int = 1600
    underlay_impairment: Impairment = field(default_factory=Impairment)
    source: str = ""

    def host(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)


@cache
def _validator() -> Any:
    cls = validators.extend(Draft202012Validator, {"pattern": fullmatch_pattern})
    return cls(json.loads(SCHEMA_PATH.read_text()))


def load_topology(path: str | Path) -> Topology:
    """Read and check a topology.yaml; DescriptorError lists every problem with its position."""
    shown = str(path)
    text, problems = read_descriptor_text(Path(path))
    doc = None
    if text is not None:
        doc, problems = parse_yaml(text, shown)
    if doc is None:
        raise DescriptorError(problems)

    def problem(at: tuple, message: str) -> Problem:
        return Problem(shown, *nearest_position(doc.positions, at), format_path(at), message)

    if not isinstance(doc.data, dict):
        raise DescriptorError([problem((), "a topology is a mapping (name: ..., hosts: ...)")])
    found = {(p, m): None for err in _validator().iter_errors(doc.data) for p, m in explain_schema_error(err, doc)}
    if found:
        raise DescriptorError([problem(p, m) for p, m in found])
    data = doc.data
    errors = []
    names: dict[str, tuple] = {}
    for section in ("hosts", "endpoints"):
        for i, item in enumerate(data.get(section, [])):
            at = (section, i, "name")
            if item["name"] in names:
                first = format_path(names[item["name"]])
                errors.append(problem(at, f"name {item['name']!r} is already used by {first}"))
            names.setdefault(item["name"], at[:2])
    hosts = [Host(h["name"], h.get("cpus", 4), h.get("memory_mb", 4096)) for h in data["hosts"]]
    host_names = {h.name for h in hosts}
    for i, e in enumerate(data.get("endpoints", [])):
        if e["host"] not in host_names:
            errors.append(problem(("endpoints", i, "host"),
                                  f"unknown host {e['host']!r} (hosts: {', '.join(sorted(host_names))})"))
    if errors:
        raise DescriptorError(errors)
    under = data.get("underlay", {})
    return Topology(
        data["name"], hosts,
        [Endpoint(e["name"], e["host"], e["role"], Impairment(e.get("delay_ms", 0), e.get("loss_pct", 0)))
         for e in data.get("endpoints", [])],
        under.get("mtu", 1600), Impairment(under.get("delay_ms", 0), under.get("loss_pct", 0)), shown)
