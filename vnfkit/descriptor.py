"""The VNF descriptor (vnf.yaml): load it, check it, and say exactly where it is wrong.

A descriptor is YAML checked against ``schema/vnfd.schema.json`` (field names from SONATA's
VNFD and ETSI SOL006), then against the rules a schema cannot express (a default within its
range and its C type, names unique across sections, the files the folder must hold). Every
problem carries the file, line and column of the YAML node at fault and its path such as
``parameters[2].max``; all problems are reported at once, as ``DescriptorError``, and no
input, however malformed, ends in a traceback.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, ValidationError, validators
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from datapath.errors import VnfkitError

SCHEMA_PATH = Path(__file__).parent / "schema" / "vnfd.schema.json"
DESCRIPTOR_FILE = "vnf.yaml"
REQUIRED_FILES = {"fastpath.c": "the C fast path", "model.py": "the pure-Python reference model"}
# Limits that keep hostile input cheap: a billion-laughs alias bomb or absurd nesting is refused
# before jsonschema would walk the expanded tree.
MAX_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_NODES = 100_000

INT_RANGES: dict[str, tuple[int, int]] = {
    "u8": (0, 2**8 - 1),
    "u16": (0, 2**16 - 1),
    "u32": (0, 2**32 - 1),
    "u64": (0, 2**64 - 1),
    "i32": (-(2**31), 2**31 - 1),
    "i64": (-(2**63), 2**63 - 1),
}
PARAM_TYPES = (*INT_RANGES, "bool", "ipv4", "ipv6", "mac")
# Parameters become struct fields and counters become enum entries: a C keyword cannot be either.
C_KEYWORDS = frozenset(
    "auto break case char const continue default do double else enum extern float for goto if inline int long "
    "register restrict return short signed sizeof static struct switch typedef union unsigned void volatile while "
    "_Alignas _Alignof _Atomic _Bool _Complex _Generic _Imaginary _Noreturn _Static_assert _Thread_local".split()
)
_MAC = re.compile(r"[0-9a-fA-F]{2}(?P<sep>[:-])[0-9a-fA-F]{2}(?:(?P=sep)[0-9a-fA-F]{2}){4}")
_MERGE_TAG = "tag:yaml.org,2002:merge"

YamlPath = tuple[str | int, ...]
Value = int | bool | str


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with a VNF, where it is: ``file:line:column: path: message``.

    ``line`` is 1-based; 0 means the problem has no position (a missing file, a config value).
    """

    file: str
    line: int
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}" if self.line > 0 else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class DescriptorError(VnfkitError):
    """The descriptor (or a configuration for it) is invalid; ``problems`` lists every reason."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems) or "invalid descriptor")


@dataclass(frozen=True)
class ConnectionPoint:
    """An interface of the VNF (SONATA connection point)."""

    id: str
    type: str


@dataclass(frozen=True)
class Parameter:
    """A configuration value: a field of the C ``struct vnf_config`` with the same name."""

    name: str
    type: str
    default: Value
    min: int | None = None
    max: int | None = None
    description: str = ""


@dataclass(frozen=True)
class TableSpec:
    """A table of the VNF: a BPF map (or its native twin) with the table's name."""

    name: str
    type: str
    max_entries: int
    description: str = ""


@dataclass(frozen=True)
class CounterSpec:
    """A custom counter: ``X(name)`` in the C ``VNF_COUNTERS`` X-macro, ``CTR_name`` in the enum."""

    name: str
    description: str = ""


@dataclass(frozen=True)
class MonitoringParameter:
    """Something the platform should monitor (SONATA monitoring_parameters)."""

    name: str
    unit: str
    description: str = ""


@dataclass(frozen=True)
class DeploymentFlavour:
    """A resource profile to deploy with (ETSI SOL006 deployment flavour)."""

    id: str
    cpu_cores: float
    memory_mb: int
    description: str = ""


@dataclass(frozen=True)
class Descriptor:
    """A loaded, checked vnf.yaml with defaults applied. ``raw`` is the YAML as written."""

    name: str
    vendor: str
    version: str
    description: str
    author: str
    hooks: list[str]
    executors: list[str]
    connection_points: list[ConnectionPoint]
    parameters: list[Parameter]
    tables: list[TableSpec]
    counters: list[CounterSpec]
    monitoring_parameters: list[MonitoringParameter]
    deployment_flavours: list[DeploymentFlavour]
    fsm: Path | None  # the function-specific manager, absolute
    folder: Path  # the VNF folder, absolute
    source: str  # vnf.yaml as the caller named it, for messages
    raw: dict[str, Any] = field(repr=False)
    positions: dict[YamlPath, tuple[int, int]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def fastpath(self) -> Path:
        """The C fast path, ``fastpath.c``."""
        return self.folder / "fastpath.c"

    @property
    def model(self) -> Path:
        """The pure-Python reference model, ``model.py``."""
        return self.folder / "model.py"

    def param_defaults(self) -> dict[str, Value]:
        """Every parameter's default value, by name."""
        return {p.name: p.default for p in self.parameters}

    def where(self, path: YamlPath) -> tuple[int, int]:
        """Line and column (1-based) of a YAML path such as ``("parameters", 2, "max")``, or of
        its nearest ancestor present in the file."""
        for n in range(len(path), -1, -1):
            if path[:n] in self.positions:
                return self.positions[path[:n]]
        return (1, 1)

    def problem(self, path: YamlPath, message: str) -> Problem:
        """A Problem at a YAML path of this descriptor (used by cross-checks)."""
        line, col = self.where(path)
        return Problem(self.source, line, col, format_path(path), message)


def format_path(path: YamlPath) -> str:
    """``("parameters", 2, "max")`` -> ``parameters[2].max``."""
    out = ""
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


# ---------------------------------------------------------------------------------------------
# Values of parameter types


def parse_value(ptype: str, value: object, *, text: bool = False) -> Value:
    """Check that ``value`` is representable in parameter type ``ptype``; return its normal form
    (int, bool, or a canonical address string). ``text=True`` also accepts strings as typed on a
    command line ("0x50", "yes"). Raises ValueError with a one-line reason."""
    if ptype in INT_RANGES:
        number = _as_int(value, text)
        if number is None:
            raise ValueError(f"expected an integer for {ptype}, got {describe_value(value)}")
        lo, hi = INT_RANGES[ptype]
        if number > hi:
            raise ValueError(f"{number} is greater than the maximum {hi} of {ptype}")
        if number < lo:
            raise ValueError(f"{number} is less than the minimum {lo} of {ptype}")
        return number
    if ptype == "bool":
        if isinstance(value, bool):
            return value
        if text and isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.strip().lower()]
        raise ValueError(f"expected true or false for bool, got {describe_value(value)}")
    if ptype in ("ipv4", "ipv6"):
        if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
            value = str(value)
        kind: type[ipaddress.IPv4Address | ipaddress.IPv6Address] = (
            ipaddress.IPv4Address if ptype == "ipv4" else ipaddress.IPv6Address)
        example = "192.0.2.1" if ptype == "ipv4" else "2001:db8::1"
        # A scope ("%eth0") parses as IPv6 but has no place in a 16-byte field.
        if isinstance(value, str) and "%" not in value:
            try:
                return str(kind(value))
            except ValueError:
                pass
        raise ValueError(f"{describe_value(value)} is not an IPv{ptype[-1]} address (like {example})")
    if ptype == "mac":
        if isinstance(value, str) and _MAC.fullmatch(value):
            return value.lower().replace("-", ":")
        raise ValueError(f"{describe_value(value)} is not a MAC address (six hex pairs like 02:00:00:00:00:01)")
    raise ValueError(f"unknown parameter type {ptype!r}")


_BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def _as_int(value: object, text: bool) -> int | None:
    if isinstance(value, bool):  # bool is an int in Python, never in a descriptor
        return None
    if isinstance(value, int):
        return value
    # JSON Schema counts 3.0 as an integer, so the descriptor may hold one.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if text and isinstance(value, str):
        try:
            return int(value.strip(), 0)
        except ValueError:
            return None
    return None


def describe_value(value: object) -> str:
    if isinstance(value, str):
        return repr(value) if len(value) <= 60 else repr(value[:57]) + "..."
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return kind_of(value)


def kind_of(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if value is None:
        return "null"
    if isinstance(value, str):
        return "a string"
    return f"a {type(value).__name__}"


# ---------------------------------------------------------------------------------------------
# YAML with positions


class _Loader(yaml.SafeLoader):
    """SafeLoader whose constructors report any failure as a YAML error at the failing node.

    PyYAML's constructors raise ValueError, KeyError or TypeError for explicitly tagged scalars
    they cannot read (``!!int abc``, ``!!bool maybe``); those must become positioned problems.
    """

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (yaml.YAMLError, RecursionError):
            raise
        except Exception as exc:
            tag = node.tag.rsplit(":", 1)[-1]
            shown = describe_value(node.value) if isinstance(node.value, str) else "this value"
            message = f"cannot read {shown} as {tag}"
            raise yaml.constructor.ConstructorError(None, None, message, node.start_mark) from exc


class _Stop(Exception):
    """The document is refused as a whole (alias bomb, recursion); carries the one problem."""

    def __init__(self, mark: yaml.Mark | None, message: str) -> None:
        super().__init__(message)
        self.mark = mark
        self.message = message


@dataclass
class YamlDocument:
    """A parsed YAML document and, for every path in it, where it was written."""

    data: Any
    positions: dict[YamlPath, tuple[int, int]]
    texts: dict[YamlPath, str]  # plain scalars as written, to explain YAML's conversions


class _Walker:
    """Walks the composed node tree: maps each path to its position, finds duplicate keys."""

    def __init__(self, loader: _Loader) -> None:
        self.loader = loader
        self.positions: dict[YamlPath, tuple[int, int]] = {}
        self.texts: dict[YamlPath, str] = {}
        self.duplicates: list[tuple[YamlPath, yaml.Mark, str]] = []
        self.flattened: set[int] = set()
        self.visited = 0

    def walk(self, node: Node, path: YamlPath, ancestors: frozenset[int]) -> None:
        self.visited += 1
        if self.visited > MAX_NODES:
            raise _Stop(node.start_mark, f"the document expands to more than {MAX_NODES} nodes (an alias bomb?)")
        if id(node) in ancestors:
            raise _Stop(node.start_mark, "an alias refers to a node that contains it (recursive structure)")
        if len(path) > MAX_DEPTH:
            raise _Stop(node.start_mark, f"nested deeper than {MAX_DEPTH} levels")
        self.positions.setdefault(path, _pos(node.start_mark))
        inner = ancestors | {id(node)}
        if isinstance(node, ScalarNode) and node.style is None:
            self.texts[path] = node.value
        elif isinstance(node, SequenceNode):
            for i, child in enumerate(node.value):
                self.walk(child, (*path, i), inner)
        elif isinstance(node, MappingNode):
            # Once per node: an alias revisits it, and after flattening a merge its overridden
            # keys would look like duplicates.
            if id(node) not in self.flattened:
                self.flattened.add(id(node))
                self._find_duplicates(node, path)
                # Resolve '<<' merges the way the constructor will, so merged keys get positions too.
                self.loader.flatten_mapping(node)
            entries: dict[Any, tuple[Node, Node]] = {}
            for key_node, value_node in node.value:
                if isinstance(key_node, ScalarNode):  # complex keys: the constructor refuses them
                    entries[self.loader.construct_object(key_node, deep=True)] = (key_node, value_node)
            for key, (key_node, value_node) in entries.items():
                # A field's problems point at its key, as compilers point at a declaration.
                self.positions[(*path, key)] = _pos(key_node.start_mark)
                self.walk(value_node, (*path, key), inner)

    def _find_duplicates(self, node: MappingNode, path: YamlPath) -> None:
        # Only keys written in this mapping: a key overriding a '<<' merge is allowed by YAML.
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            key = self.loader.construct_object(key_node, deep=True)
            if key in seen:
                self.duplicates.append(
                    ((*path, key), key_node.start_mark, f"duplicate key {key!r} (first at line {seen[key].line + 1})")
                )
            else:
                seen[key] = key_node.start_mark


def _pos(mark: yaml.Mark | None) -> tuple[int, int]:
    return (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)


def parse_yaml(text: str, file: str) -> tuple[YamlDocument | None, list[Problem]]:
    """YAML text -> data with positions, or the problems that stop it from being read."""
    loader: _Loader | None = None
    try:
        loader = _Loader(text)
        root = loader.get_single_node()
        if root is None:
            return None, [Problem(file, 1, 1, "", "the file is empty; a descriptor needs at least "
                                  "descriptor_version, name, vendor, version and description")]
        walker = _Walker(loader)
        walker.walk(root, (), frozenset())
        if walker.duplicates:
            return None, [Problem(file, *_pos(mark), format_path(path), msg) for path, mark, msg in walker.duplicates]
        data = loader.construct_document(root)
        return YamlDocument(data, walker.positions, walker.texts), []
    except _Stop as stop:
        return None, [Problem(file, *_pos(stop.mark), "", stop.message)]
    except yaml.MarkedYAMLError as exc:
        message = exc.problem or str(exc)
        if exc.context:
            at = f", line {exc.context_mark.line + 1}" if exc.context_mark is not None else ""
            message += f" ({exc.context}{at})"
        kind = "YAML" if isinstance(exc, yaml.constructor.ConstructorError) else "YAML syntax error"
        mark = exc.problem_mark or exc.context_mark
        # "found <stream end>" sits past the last line; where the unclosed construct began helps more.
        if mark is not None and exc.context_mark is not None and mark.index >= len(text.rstrip()):
            mark = exc.context_mark
        return None, [Problem(file, *_pos(mark), "", f"{kind}: {message}")]
    except yaml.reader.ReaderError as exc:
        line, col = _offset_to_pos(text, exc.position)
        return None, [Problem(file, line, col, "", f"character U+{exc.character:04X} is not allowed in YAML")]
    except yaml.YAMLError as exc:
        return None, [Problem(file, 1, 1, "", f"YAML: {exc}")]
    except RecursionError:
        return None, [Problem(file, 1, 1, "", f"nested too deeply (the limit is {MAX_DEPTH} levels)")]
    finally:
        if loader is not None:
            loader.dispose()


def _offset_to_pos(text: str, offset: int) -> tuple[int, int]:
    before = text[:offset]
    return before.count("\n") + 1, offset - (before.rfind("\n") + 1) + 1


# ---------------------------------------------------------------------------------------------
# Schema


@cache
def schema() -> dict[str, Any]:
    """The descriptor's JSON Schema (draft 2020-12)."""
    return json.loads(SCHEMA_PATH.read_text())


def fullmatch_pattern(validator: Any, pattern: str, instance: Any, _schema: Any) -> Iterator[ValidationError]:
    # JSON Schema patterns use re.search, and Python's '$' also matches before a final newline;
    # a name like "fw\n" would pass and then break C code and file names.
    if validator.is_type(instance, "string") and re.fullmatch(pattern, instance) is None:
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


@cache
def _validator() -> Any:
    cls = validators.extend(Draft202012Validator, {"pattern": fullmatch_pattern})
    return cls(schema())


_TYPE_WORDS = {"string": "a string", "integer": "an integer", "number": "a number", "boolean": "true or false",
               "array": "a list", "object": "a mapping", "null": "null"}


def _schema_problems(doc: YamlDocument, file: str) -> tuple[list[Problem], set[YamlPath]]:
    """Schema errors as positioned problems, and the set of paths they concern."""
    found: dict[tuple[YamlPath, str], None] = {}  # ordered, de-duplicated
    for err in _validator().iter_errors(doc.data):
        for path, message in explain_schema_error(err, doc):
            found[(path, message)] = None
    problems = []
    for path, message in found:
        line, col = nearest_position(doc.positions, path)
        problems.append(Problem(file, line, col, format_path(path), message))
    return problems, {path for path, _ in found}


def nearest_position(positions: Mapping[YamlPath, tuple[int, int]], path: YamlPath) -> tuple[int, int]:
    for n in range(len(path), -1, -1):
        if path[:n] in positions:
            return positions[path[:n]]
    return (1, 1)


def explain_schema_error(err: ValidationError, doc: YamlDocument) -> list[tuple[YamlPath, str]]:
    """Turn a jsonschema error into (path, message) pairs a VNF developer can act on."""
    path: YamlPath = tuple(err.absolute_path)
    kind, value, inst = err.validator, err.validator_value, err.instance
    if kind == "additionalProperties" and isinstance(inst, dict):
        allowed = sorted(err.schema.get("properties", {}))
        out = []
        for key in inst:
            if key in allowed:
                continue
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(allowed)}"
            out.append(((*path, key), f"unknown field {key!r} ({hint})"))
        return out
    if kind == "required" and isinstance(inst, dict):
        # One problem per mapping, naming every missing field (jsonschema reports each separately).
        missing = [name for name in value if name not in inst]
        plural = "s" if len(missing) > 1 else ""
        return [(path, f"missing required field{plural} {', '.join(repr(m) for m in missing)}")]
    written, reading = _shown(inst, doc, path)
    if kind == "type":
        wanted = [value] if isinstance(value, str) else list(value)
        notes = [reading] if reading else []
        if "string" in wanted and not isinstance(inst, list | dict) and inst is not None:
            notes.append("write it in quotes to make it a string")
        message = f"expected {' or '.join(_TYPE_WORDS.get(w, w) for w in wanted)}, got {written}"
        return [(path, message + (f" ({'; '.join(notes)})" if notes else ""))]
    shown = f"{written} ({reading})" if reading else written
    if kind == "enum":
        message = f"{shown} is not one of: {', '.join(str(v) for v in value)}"
        close = difflib.get_close_matches(inst, [str(v) for v in value], n=1) if isinstance(inst, str) else []
        return [(path, message + (f" (did you mean {close[0]!r}?)" if close else ""))]
    if kind == "const":
        return [(path, f"must be {value!r}, not {shown}")]
    if kind == "pattern":
        return [(path, f"{shown} is not valid: {err.schema.get('description', f'it must match {value}')}")]
    if kind in ("minItems", "minLength"):
        return [(path, "must not be empty" if value == 1 else f"needs at least {value} items")]
    if kind == "maxLength":
        return [(path, f"is longer than {value} characters")]
    if kind == "uniqueItems" and isinstance(inst, list):
        dup = next((a for i, a in enumerate(inst) if a in inst[:i]), None)
        return [(path, f"lists {describe_value(dup)} more than once")]
    if kind == "minimum":
        return [(path, f"{shown} is less than the minimum {value}")]
    if kind == "maximum":
        return [(path, f"{shown} is greater than the maximum {value}")]
    if kind == "exclusiveMinimum":
        return [(path, f"{shown} must be greater than {value}")]
    return [(path, err.message)]


def _shown(inst: Any, doc: YamlDocument, path: YamlPath) -> tuple[str, str | None]:
    """A value as the developer wrote it, and what YAML made of it when that differs: YAML reads
    `on` as true and `1.10` as the number 1.1, which explains many a surprising error."""
    shown = describe_value(inst)
    written = doc.texts.get(path)
    if written is not None and not isinstance(inst, str) and written != shown:
        return written, f"YAML reads it as {shown}"
    return shown, None


# ---------------------------------------------------------------------------------------------
# Rules the schema cannot express


def _semantic(data: dict[str, Any], folder: Path, bad: set[YamlPath]) -> list[tuple[YamlPath, str]]:
    """Checks on the items the schema accepted (an item with schema errors is not re-judged)."""

    def ok(prefix: YamlPath) -> bool:
        return not any(p[: len(prefix)] == prefix for p in bad)

    def items(section: str) -> Iterator[tuple[YamlPath, dict[str, Any]]]:
        value = data.get(section)
        if isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, dict) and ok((section, i)):
                    yield (section, i), item

    out: list[tuple[YamlPath, str]] = []
    for at, param in items("parameters"):
        out += _check_parameter(param, at)

    # Parameters, tables and counters share one C namespace in generated code and in messages.
    seen: dict[str, YamlPath] = {}
    for section, what in (("parameters", "parameter"), ("tables", "table"), ("counters", "counter")):
        for at, item in items(section):
            name = item["name"]
            if name in C_KEYWORDS:
                out.append(((*at, "name"), f"{name!r} is a C keyword and cannot name a {what}"))
            if name in seen:
                out.append(((*at, "name"), f"name {name!r} is already used by {format_path(seen[name])}"))
            else:
                seen[name] = at

    for section, key in (("connection_points", "id"), ("monitoring_parameters", "name"),
                         ("deployment_flavours", "id")):
        first: dict[str, YamlPath] = {}
        for at, item in items(section):
            if item[key] in first:
                out.append(((*at, key), f"{key} {item[key]!r} is already used by {format_path(first[item[key]])}"))
            else:
                first[item[key]] = at
    cps = data.get("connection_points")
    if isinstance(cps, list) and ok(("connection_points",)) and not any(cp.get("type") == "ingress" for cp in cps):
        out.append((("connection_points",), "needs at least one connection point of type ingress"))

    managers = data.get("managers")
    if isinstance(managers, dict) and ok(("managers",)):
        message = _check_fsm(managers["fsm"], folder)
        if message:
            out.append((("managers", "fsm"), message))
    return out


def _check_parameter(param: dict[str, Any], at: YamlPath) -> list[tuple[YamlPath, str]]:
    ptype = param["type"]
    out: list[tuple[YamlPath, str]] = []
    if ptype not in INT_RANGES:
        out += [((*at, key), f"{key} applies only to integer types, not {ptype}") for key in ("min", "max")
                if key in param]
        try:
            parse_value(ptype, param["default"])
        except ValueError as exc:
            out.append(((*at, "default"), str(exc)))
        return out
    values: dict[str, int] = {}
    for key in ("min", "max", "default"):
        if key in param:
            try:
                values[key] = int(parse_value(ptype, param[key]))
            except ValueError as exc:
                out.append(((*at, key), str(exc)))
    lo, hi, default = values.get("min"), values.get("max"), values.get("default")
    if lo is not None and hi is not None and lo > hi:
        out.append(((*at, "min"), f"min {lo} is greater than max {hi}"))
    elif default is not None:
        if lo is not None and default < lo:
            out.append(((*at, "default"), f"default {default} is less than min {lo}"))
        if hi is not None and default > hi:
            out.append(((*at, "default"), f"default {default} is greater than max {hi}"))
    return out


def _check_fsm(fsm: str, folder: Path) -> str | None:
    rel = Path(fsm)
    if rel.is_absolute():
        return f"{fsm!r} must be a path relative to the VNF folder"
    if os.path.normpath(fsm).split(os.sep)[0] == "..":
        return f"{fsm!r} points outside the VNF folder"
    try:
        target = (folder / rel).resolve()
        if not target.is_relative_to(folder.resolve()):
            return f"{fsm!r} points outside the VNF folder"
        if not target.is_file():
            return f"{fsm} does not exist in the VNF folder {folder}"
    except (OSError, ValueError) as exc:  # NUL bytes, loops of symlinks
        return f"{fsm!r} is not a usable path: {exc}"
    return None


# ---------------------------------------------------------------------------------------------
# Loading


def _locate(path: str | Path) -> tuple[Path, Path]:
    """(vnf.yaml, its folder) for a folder or a descriptor file."""
    p = Path(path)
    if p.is_dir():
        return p / DESCRIPTOR_FILE, p
    return p, p.parent


def load_descriptor(path: str | Path) -> Descriptor:
    """Load and check a VNF descriptor: ``path`` is the VNF folder or its vnf.yaml.

    Raises DescriptorError listing every problem found (never any other exception for bad input).
    """
    try:
        yaml_path, folder = _locate(path)
    except (OSError, ValueError) as exc:
        raise DescriptorError([Problem(str(path), 0, 0, "", f"cannot use this path: {exc}")]) from None
    file = str(yaml_path)
    text, problems = read_descriptor_text(yaml_path)
    doc = None
    if text is not None:
        doc, problems = parse_yaml(text, file)
    if doc is not None and not isinstance(doc.data, dict):
        line, col = doc.positions.get((), (1, 1))
        problems = [Problem(file, line, col, "", "the descriptor must be a mapping of fields (name: ..., vendor: ...),"
                                                 f" not {kind_of(doc.data)}")]
        doc = None
    if doc is not None:
        problems, bad = _schema_problems(doc, file)
        for at, message in _semantic(doc.data, folder, bad):
            problems.append(Problem(file, *nearest_position(doc.positions, at), format_path(at), message))
    # The folder's own files matter whatever the YAML says, so report them in every case.
    if folder.is_dir():
        for name, what in REQUIRED_FILES.items():
            if not (folder / name).is_file():
                problems.append(Problem(str(folder / name), 0, 0, "", f"missing: a VNF folder holds {what} in {name}"))
    if problems:
        raise DescriptorError(sorted(problems, key=lambda p: (p.file != file, p.file, p.line, p.column)))
    assert doc is not None
    return _build(doc, folder, file)


def read_descriptor_text(yaml_path: Path) -> tuple[str | None, list[Problem]]:
    file = str(yaml_path)
    try:
        with open(yaml_path, "rb") as fh:
            data = fh.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return None, [Problem(file, 0, 0, "", "no such file (a VNF folder holds its descriptor in vnf.yaml)")]
    except (OSError, ValueError) as exc:
        return None, [Problem(file, 0, 0, "", f"cannot read: {getattr(exc, 'strerror', None) or exc}")]
    if len(data) > MAX_BYTES:
        return None, [Problem(file, 0, 0, "", f"larger than {MAX_BYTES} bytes; a descriptor is a short YAML file")]
    try:
        return data.decode("utf-8-sig"), []
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        return None, [Problem(file, line, col, "", f"not UTF-8 text (byte 0x{data[exc.start]:02x})")]


def _build(doc: YamlDocument, folder: Path, file: str) -> Descriptor:
    """The typed Descriptor from checked data, with the schema's defaults applied."""
    data: dict[str, Any] = doc.data
    props = schema()["properties"]

    def get(key: str) -> Any:
        return data[key] if key in data else props[key].get("default")

    def as_int(value: Any) -> int | None:
        return None if value is None else int(value)

    managers = data.get("managers")
    return Descriptor(
        name=data["name"],
        vendor=data["vendor"],
        version=data["version"],
        description=data["description"],
        author=data.get("author", ""),
        hooks=list(get("hooks")),
        executors=list(get("executors")),
        connection_points=[ConnectionPoint(cp["id"], cp["type"]) for cp in get("connection_points")],
        parameters=[
            Parameter(p["name"], p["type"], parse_value(p["type"], p["default"]), as_int(p.get("min")),
                      as_int(p.get("max")), p.get("description", ""))
            for p in get("parameters")
        ],
        tables=[TableSpec(t["name"], t["type"], int(t["max_entries"]), t.get("description", ""))
                for t in get("tables")],
        counters=[CounterSpec(c["name"], c.get("description", "")) for c in get("counters")],
        monitoring_parameters=[MonitoringParameter(m["name"], m["unit"], m.get("description", ""))
                               for m in get("monitoring_parameters")],
        deployment_flavours=[
            DeploymentFlavour(d["id"], float(d["resources"]["cpu_cores"]), int(d["resources"]["memory_mb"]),
                              d.get("description", ""))
            for d in get("deployment_flavours")
        ],
        # Lexically normalised, not resolved: the descriptor's own name for the file is what a
        # package must hold, even when it is a symlink.
        fsm=Path(os.path.normpath(folder.resolve() / managers["fsm"])) if managers else None,
        folder=folder.resolve(),
        source=file,
        raw=data,
        positions=dict(doc.positions),
    )


def config_values(desc: Descriptor, overrides: Mapping[str, object] | None = None) -> dict[str, Value]:
    """The descriptor's defaults merged with ``overrides``, each checked against its parameter's
    name, type and [min, max]. Strings are parsed as typed on a command line ("0x50", "yes").

    Raises DescriptorError (file ``<config>``, path = the parameter's name) listing every problem.
    """
    params = {p.name: p for p in desc.parameters}
    values: dict[str, Value] = desc.param_defaults()
    problems: list[Problem] = []
    for name, raw in (overrides or {}).items():
        param = params.get(name) if isinstance(name, str) else None
        if param is None:
            close = difflib.get_close_matches(str(name), list(params), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"{desc.name} has: {', '.join(params) or 'none'}"
            problems.append(Problem("<config>", 0, 0, str(name), f"unknown parameter ({hint})"))
            continue
        try:
            value = parse_value(param.type, raw, text=True)
            if isinstance(value, int) and not isinstance(value, bool):
                if param.min is not None and value < param.min:
                    raise ValueError(f"{value} is less than min {param.min}")
                if param.max is not None and value > param.max:
                    raise ValueError(f"{value} is greater than max {param.max}")
        except ValueError as exc:
            problems.append(Problem("<config>", 0, 0, name, str(exc)))
            continue
        values[name] = value
    if problems:
        raise DescriptorError(problems)
    return values
