"""Check a VNF: its descriptor, then the descriptor against what the C fast path declares.

The descriptor and fastpath.c describe the same VNF twice (counters, configuration fields,
tables); this is where they are held to agree, each disagreement pointing at the descriptor
line to change. The C side comes from ``vnfkit.introspect``, which compiles fastpath.c and
reads the object's BTF and maps.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from datapath.errors import CompileError
from vnfkit.descriptor import Descriptor, DescriptorError, Problem, load_descriptor

# What struct vnf_config field (numpy kind, size in bytes) each parameter type may live in.
_FIELD_KINDS: dict[str, set[tuple[str, int]]] = {
    "u8": {("u", 1)},
    "u16": {("u", 2)},
    "u32": {("u", 4)},
    "u64": {("u", 8)},
    "i32": {("i", 4)},
    "i64": {("i", 8)},
    "bool": {("u", 1), ("b", 1)},
}
# Addresses are bytes in network order: any field of the right size holds them (__be32, __u8[6], in6_addr).
_FIELD_SIZES = {"ipv4": 4, "ipv6": 16, "mac": 6}
_C_SPELLING = {"u8": "a __u8", "u16": "a __u16", "u32": "a __u32", "u64": "a __u64", "i32": "a __s32",
               "i64": "a __s64", "bool": "a __u8 or bool", "ipv4": "a __be32 or another 4-byte field",
               "ipv6": "16 bytes (__u8[16] or struct in6_addr)", "mac": "6 bytes (__u8[6])"}


def validate(path: str | Path, *, build: bool = True) -> list[Problem]:
    """Every problem with the VNF at ``path`` (its folder or vnf.yaml); empty when it is valid.

    Descriptor problems come first; when they exist the C is not looked at. With ``build`` the
    fast path is compiled and cross-checked; a compile error becomes problems at its
    ``fastpath.c`` lines. Errors of the environment (no clang) are raised, not reported.
    """
    try:
        desc = load_descriptor(path)
    except DescriptorError as exc:
        return exc.problems
    if not build:
        return []
    # Imported late: introspection needs clang, and descriptor-only checks must not.
    introspect = importlib.import_module("vnfkit.introspect")
    try:
        info = introspect.introspect(desc.folder)
    except CompileError as exc:
        return compile_problems(desc, exc)
    return cross_check(desc, info)


def compile_problems(desc: Descriptor, err: CompileError) -> list[Problem]:
    """A compile error as problems at clang's ``file:line:col`` (errors only, unless there are none)."""
    shown_c = str(Path(desc.source).parent / "fastpath.c")
    diags = [d for d in err.diagnostics if d.severity in ("error", "fatal error")] or list(err.diagnostics)
    problems = []
    for d in diags:
        file = shown_c if _same_file(d.file, desc.fastpath) else d.file
        problems.append(Problem(file, d.line, d.column, "", f"{d.severity}: {d.message}"))
    if not problems:
        first = next((line for line in (err.output or str(err)).splitlines() if line.strip()), "compile failed")
        problems.append(Problem(shown_c, 0, 0, "", f"does not compile: {first.strip()}"))
    return problems


def _same_file(name: str, path: Path) -> bool:
    try:
        return Path(name).resolve() == path.resolve()
    except (OSError, ValueError):
        return False


def cross_check(desc: Descriptor, info: Any) -> list[Problem]:
    """Where the descriptor and the compiled fast path (an ``Introspection``) disagree."""
    problems = _check_counters(desc, list(info.counters))
    problems += _check_config(desc, dict(info.config_fields))
    problems += _check_tables(desc, dict(info.tables))
    return sorted(problems, key=lambda p: (p.line, p.column, p.path))


def _check_counters(desc: Descriptor, in_c: list[str]) -> list[Problem]:
    out = [desc.problem(("counters", i, "name"), f"counter {c.name!r} is not in fastpath.c's VNF_COUNTERS "
                                                  f"(add X({c.name}) there, or remove it here)")
           for i, c in enumerate(desc.counters) if c.name not in in_c]
    listed = {c.name for c in desc.counters}
    out += [desc.problem(("counters",), f"fastpath.c counts {name!r} (CTR_{name}) but the descriptor does not "
                                        f"list it under counters")
            for name in in_c if name not in listed]
    return out


def _check_config(desc: Descriptor, fields: dict[str, tuple[str, int]]) -> list[Problem]:
    out = []
    for i, p in enumerate(desc.parameters):
        if p.name not in fields:
            where = "struct vnf_config has no field" if fields else "fastpath.c declares no struct vnf_config for"
            out.append(desc.problem(("parameters", i, "name"), f"{where} {p.name!r} ({_needs(p.type)})"))
            continue
        kind, size = fields[p.name]
        fits = (kind, size) in _FIELD_KINDS[p.type] if p.type in _FIELD_KINDS else size == _FIELD_SIZES[p.type]
        if not fits:
            out.append(desc.problem(("parameters", i, "type"),
                                    f"{p.name} is {p.type} here but {_field_words(kind, size)} in struct vnf_config "
                                    f"({_needs(p.type)})"))
    params = {p.name for p in desc.parameters}
    out += [desc.problem(("parameters",), f"struct vnf_config has field {name!r} ({_field_words(*fields[name])}) "
                                          f"but the descriptor has no parameter of that name")
            for name in fields if name not in params]
    return out


def _needs(ptype: str) -> str:
    return f"{'an' if ptype.startswith('i') else 'a'} {ptype} parameter needs {_C_SPELLING[ptype]}"


def _field_words(kind: str, size: int) -> str:
    if kind in ("u", "i"):
        return f"a{'n un' if kind == 'u' else ' '}signed {size * 8}-bit integer"
    if kind == "b":
        return "a bool"
    return f"{'an' if str(size).startswith('8') else 'a'} {size}-byte field"


def _check_tables(desc: Descriptor, tables: dict[str, Any]) -> list[Problem]:
    # Only one direction: vnfkit.h declares maps of its own (counters, config) the descriptor never lists.
    out = []
    for i, t in enumerate(desc.tables):
        info = tables.get(t.name)
        if info is None:
            out.append(desc.problem(("tables", i, "name"), f"fastpath.c declares no table {t.name!r}"))
            continue
        if info.type != t.type:
            out.append(desc.problem(("tables", i, "type"), f"{t.name} is {info.type} in fastpath.c, not {t.type}"))
        if info.max_entries != t.max_entries:
            out.append(desc.problem(("tables", i, "max_entries"),
                                    f"{t.name} holds {info.max_entries} entries in fastpath.c, not {t.max_entries}"))
    return out
