"""The VNF descriptor: loading with defaults, positioned problems for every kind of bad input,
config values, the cross-check against a (faked) compiled fast path, and fuzzing that proves no
input ends in a traceback."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import shutil
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from datapath.errors import CompileError, Diagnostic, VnfkitError
from vnfkit import cli_sdk
from vnfkit.descriptor import (
    SCHEMA_PATH,
    DescriptorError,
    Problem,
    config_values,
    load_descriptor,
)
from vnfkit.validate import validate

DATA = Path(__file__).parent / "data" / "descriptors"
FULL = DATA / "full"
FULL_TEXT = (FULL / "vnf.yaml").read_text()
MINIMAL_TEXT = (DATA / "minimal" / "vnf.yaml").read_text()


def make_vnf(folder: Path, text: str | bytes, *, files: tuple[str, ...] = ("fastpath.c", "model.py")) -> Path:
    """A VNF folder holding ``text`` as vnf.yaml and placeholder ``files``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vnf.yaml").write_bytes(text.encode() if isinstance(text, str) else text)
    for name in files:
        shutil.copy(DATA / "minimal" / name, folder / name)
    return folder


def full_vnf(folder: Path, text: str = FULL_TEXT) -> Path:
    """The full fixture (with its manager files) under ``folder``, vnf.yaml replaced by ``text``."""
    shutil.copytree(FULL, folder)
    (folder / "vnf.yaml").write_text(text)
    return folder


def problems_of(path: Path) -> list[Problem]:
    with pytest.raises(DescriptorError) as info:
        load_descriptor(path)
    assert info.value.problems, "a DescriptorError always lists its problems"
    return info.value.problems


def position(text: str, needle: str) -> tuple[int, int]:
    """1-based line and column of the first ``needle`` in ``text``."""
    offset = text.index(needle)
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


# ---------------------------------------------------------------------------------------------
# Good descriptors


def test_schema_is_valid_draft_2020_12_and_strict_everywhere() -> None:
    schema = json.loads(SCHEMA_PATH.read_text())
    Draft202012Validator.check_schema(schema)

    def objects(node: Any) -> Iterator[dict[str, Any]]:
        if isinstance(node, dict):
            if node.get("type") == "object":
                yield node
            for value in node.values():
                yield from objects(value)
        elif isinstance(node, list):
            for value in node:
                yield from objects(value)

    assert all(obj.get("additionalProperties") is False for obj in objects(schema))
    assert set(schema["required"]) == {"descriptor_version", "name", "vendor", "version", "description"}


def test_minimal_descriptor_gets_the_defaults() -> None:
    desc = load_descriptor(DATA / "minimal")
    assert (desc.name, desc.vendor, desc.version) == ("minimal", "org.vnfkit.test", "0.1.0")
    assert desc.hooks == ["xdp"]
    assert desc.executors == ["kernel", "native"]
    assert [(cp.id, cp.type) for cp in desc.connection_points] == [("in", "ingress")]
    assert desc.parameters == desc.tables == desc.counters == []
    assert desc.fsm is None and desc.author == ""
    assert desc.folder == (DATA / "minimal").resolve()
    assert desc.fastpath == desc.folder / "fastpath.c"
    assert "hooks" not in desc.raw  # raw is the YAML as written
    with pytest.raises(dataclasses.FrozenInstanceError):
        desc.name = "other"  # type: ignore[misc]


def test_loading_the_yaml_file_equals_loading_the_folder() -> None:
    assert load_descriptor(FULL / "vnf.yaml") == load_descriptor(FULL)


def test_full_descriptor_is_typed_and_normalised() -> None:
    desc = load_descriptor(FULL)
    assert desc.hooks == ["xdp", "tc"]
    assert desc.param_defaults() == {
        "max_rate": 10000, "port": 80, "strict": True, "gateway": "198.18.0.1",
        "gateway6": "2001:db8::1", "router_mac": "02:00:00:00:00:0a", "offset": -5,
    }
    rate = desc.parameters[0]
    assert (rate.type, rate.min, rate.max, rate.description) == ("u32", 1, 1_000_000, "packets per second per source")
    assert [(t.name, t.type, t.max_entries) for t in desc.tables] == [
        ("allowed_ports", "hash", 1024), ("sources", "lru_hash", 65536), ("routes", "lpm_trie", 10000)]
    assert [c.name for c in desc.counters] == ["allowed", "denied", "limited"]
    assert desc.monitoring_parameters[0].unit == "packets/s"
    assert [(d.id, d.cpu_cores, d.memory_mb) for d in desc.deployment_flavours] == [("small", 0.5, 64),
                                                                                     ("large", 4.0, 512)]
    assert desc.fsm == (FULL / "fsm" / "scaler.py").resolve()
    assert desc.where(("parameters", 1, "default")) == position(FULL_TEXT, "default: 80")
    assert desc.where(("parameters", 1, "nonexistent")) == position(FULL_TEXT, "name: port")


def test_yaml_merge_keys_are_resolved_not_reported_as_duplicates(tmp_path: Path) -> None:
    tables = "tables:\n  - &base {name: a, type: hash, max_entries: 16}\n  - &b\n    <<: *base\n    name: b\n"
    desc = load_descriptor(make_vnf(tmp_path, MINIMAL_TEXT + tables))
    assert [(t.name, t.max_entries) for t in desc.tables] == [("a", 16), ("b", 16)]
    # An alias to a merged mapping is not a duplicate key either; only the reused name is wrong.
    make_vnf(tmp_path, MINIMAL_TEXT + tables + "  - *b\n")
    assert [(p.path, p.message) for p in problems_of(tmp_path)] == [
        ("tables[2].name", "name 'b' is already used by tables[1]")]
    # Merged fields a counter does not have are caught at the line they came from.
    make_vnf(tmp_path, MINIMAL_TEXT + tables + "counters:\n  - {<<: *b, name: c}\n")
    assert [(p.path, p.line) for p in problems_of(tmp_path)] == [("counters[0].type", 8),
                                                                 ("counters[0].max_entries", 8)]


# ---------------------------------------------------------------------------------------------
# Bad descriptors: each problem at the right line, column and path

# (case, text of vnf.yaml, needle whose position the problem must have, path, words in the message)
BAD: list[tuple[str, str, str, str, str]] = [
    ("syntax error", MINIMAL_TEXT + "hooks: [xdp, tc\n", "hooks", "", "YAML syntax error"),
    ("bad indentation", MINIMAL_TEXT.replace("vendor:", "  vendor:"), "  vendor:", "", "YAML syntax error"),
    ("duplicate key", MINIMAL_TEXT + "name: again\n", "name: again", "name", "duplicate key 'name' (first at line"),
    ("nested duplicate key", FULL_TEXT.replace("    default: 80\n", "    default: 80\n    type: u64\n"),
     "type: u64", "parameters[1].type", "duplicate key 'type'"),
    ("not a mapping", "- name: x\n- vendor: y\n", "- name", "", "must be a mapping of fields"),
    ("a bare scalar", "just words\n", "just", "", "not a string"),
    ("empty file", "", "", "", "the file is empty"),
    ("typo at top level", FULL_TEXT.replace("hooks:", "hoks:"), "hoks:", "hoks",
     "unknown field 'hoks' (did you mean 'hooks'?)"),
    ("typo in a table", FULL_TEXT.replace("    max_entries: 1024", "    max_entires: 1024"), "max_entires",
     "tables[0].max_entires", "did you mean 'max_entries'?"),
    ("missing required fields", "descriptor_version: vnfkit/v1\nname: x\n", "descriptor_version", "",
     "missing required fields 'vendor', 'version', 'description'"),
    ("wrong descriptor_version", MINIMAL_TEXT.replace("vnfkit/v1", "vnfkit/v2"), "descriptor_version",
     "descriptor_version", "must be 'vnfkit/v1'"),
    ("version read as a number", MINIMAL_TEXT.replace("version: 0.1.0", "version: 1.10"), "version: 1.10",
     "version", "expected a string, got 1.10 (YAML reads it as 1.1; write it in quotes"),
    ("max_entries as a string", FULL_TEXT.replace("max_entries: 1024", "max_entries: lots"), "max_entries: lots",
     "tables[0].max_entries", "expected an integer, got 'lots'"),
    ("uppercase name", MINIMAL_TEXT.replace("name: minimal", "name: Minimal"), "name:", "name",
     "'Minimal' is not valid: lowercase letters"),
    ("name with a trailing newline", MINIMAL_TEXT.replace("name: minimal", 'name: "minimal\\n"'), "name:", "name",
     "is not valid"),
    ("hook read as a boolean", FULL_TEXT.replace("hooks: [xdp, tc]", "hooks: [xdp, on]"), "on]", "hooks[1]",
     "on (YAML reads it as true) is not one of: xdp, tc"),
    ("hook listed twice", FULL_TEXT.replace("hooks: [xdp, tc]", "hooks: [xdp, xdp]"), "hooks:", "hooks",
     "lists 'xdp' more than once"),
    ("max_entries too large", FULL_TEXT.replace("max_entries: 1024", "max_entries: 16777217"), "max_entries: 1677",
     "tables[0].max_entries", "16777217 is greater than the maximum 16777216"),
    ("max above the type", FULL_TEXT.replace("    default: 80\n", "    default: 80\n    max: 70000\n"), "max: 70000",
     "parameters[1].max", "70000 is greater than the maximum 65535 of u16"),
    ("default above the type", FULL_TEXT.replace("default: 80", "default: 70000"), "default: 70000",
     "parameters[1].default", "70000 is greater than the maximum 65535 of u16"),
    ("negative unsigned default", FULL_TEXT.replace("default: 80", "default: -1"), "default: -1",
     "parameters[1].default", "-1 is less than the minimum 0 of u16"),
    ("default above max", FULL_TEXT.replace("default: 10000", "default: 2000000"), "default: 2000000",
     "parameters[0].default", "default 2000000 is greater than max 1000000"),
    ("default below min", FULL_TEXT.replace("default: -5", "default: -500"), "default: -500",
     "parameters[6].default", "default -500 is less than min -100"),
    ("min above max", FULL_TEXT.replace("min: -100", "min: 200"), "min: 200", "parameters[6].min",
     "min 200 is greater than max 100"),
    ("min on a bool", FULL_TEXT.replace("default: true", "default: true\n    min: 0"), "min: 0",
     "parameters[2].min", "min applies only to integer types, not bool"),
    ("bool default that is a number", FULL_TEXT.replace("default: true", "default: 1"), "default: 1\n",
     "parameters[2].default", "expected true or false, got 1"),
    ("bad ipv4 default", FULL_TEXT.replace("default: 198.18.0.1", "default: 198.18.0.256"), "default: 198.18.0.256",
     "parameters[3].default", "'198.18.0.256' is not an IPv4 address"),
    ("ipv4 default with a prefix", FULL_TEXT.replace("default: 198.18.0.1", "default: 198.18.0.0/15"),
     "default: 198.18.0.0/15", "parameters[3].default", "is not an IPv4 address"),
    ("ipv6 default with a scope", FULL_TEXT.replace('default: "2001:DB8:0:0::1"', 'default: "fe80::1%eth0"'),
     'default: "fe80', "parameters[4].default", "is not an IPv6 address"),
    ("bad mac default", FULL_TEXT.replace("default: 02-00-00-00-00-0A", "default: 02:00:00:00:00"),
     "default: 02:00", "parameters[5].default", "is not a MAC address"),
    ("counter named like a parameter", FULL_TEXT.replace("  - name: denied", "  - name: port"),
     "name: port\n  - name: limited",
     "counters[1].name", "name 'port' is already used by parameters[1]"),
    ("table named like a counter", FULL_TEXT.replace("name: routes", "name: allowed"),
     "name: allowed\n    description: packets", "counters[0].name", "name 'allowed' is already used by tables[2]"),
    ("counter that is a C keyword", FULL_TEXT.replace("  - name: denied", "  - name: int"), "name: int",
     "counters[1].name", "'int' is a C keyword"),
    ("duplicate connection point id", FULL_TEXT.replace("id: out", "id: in"), "id: in\n    type: egress",
     "connection_points[1].id", "id 'in' is already used by connection_points[0]"),
    ("no ingress connection point", FULL_TEXT.replace("type: ingress", "type: egress"), "connection_points:",
     "connection_points", "needs at least one connection point of type ingress"),
    ("manager that does not exist", FULL_TEXT.replace("fsm/scaler.py", "fsm/nope.py"), "fsm: fsm/nope.py",
     "managers.fsm", "fsm/nope.py does not exist in the VNF folder"),
    ("manager outside the folder", FULL_TEXT.replace("fsm/scaler.py", "../full/fsm/scaler.py"), "fsm: ../",
     "managers.fsm", "points outside the VNF folder"),
    ("alias bomb", "a: &a [x,x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
     "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
     "e: [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
     "f: [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\n",
     "", "", "an alias bomb"),
    ("recursive alias", MINIMAL_TEXT + "hooks: &h [*h]\n", "[*h]", "", "recursive structure"),
    ("absurd nesting", "a: " + "[" * 3000 + "]" * 3000 + "\n", "", "", "nested too deeply"),
    ("tagged scalar that is not one", MINIMAL_TEXT + "author: !!int many\n", "!!int", "",
     "cannot read 'many' as int"),
    ("python tag", MINIMAL_TEXT + "author: !!python/object/apply:os.system [ls]\n", "!!python", "",
     "could not determine a constructor"),
    ("two documents", MINIMAL_TEXT + "---\nname: second\n", "---", "", "expected a single document"),
    ("control character", MINIMAL_TEXT.replace("Passes", "Pa\x07sses"), "\x07", "", "U+0007 is not allowed"),
]


@pytest.mark.parametrize(("text", "needle", "path", "words"), [case[1:] for case in BAD],
                         ids=[case[0] for case in BAD])
def test_bad_descriptor_problem_is_positioned(tmp_path: Path, text: str, needle: str, path: str, words: str) -> None:
    problems = problems_of(full_vnf(tmp_path / "vnf", text))
    matching = [p for p in problems if words in p.message]
    assert matching, "\n".join(map(str, problems))
    problem = matching[0]
    expected_line = position(text, needle)[0] if needle else problem.line
    assert (problem.file, problem.path) == (str(tmp_path / "vnf" / "vnf.yaml"), path)
    assert problem.line == expected_line, str(problem)
    if needle and path:  # field problems point at the key, as compilers point at a declaration
        assert problem.column == position(text, needle)[1], str(problem)


def test_error_text_is_one_line_per_problem(tmp_path: Path) -> None:
    text = FULL_TEXT.replace("    default: 80\n", "    default: 80\n    max: 70000\n").replace("hooks:", "hoks:")
    folder = full_vnf(tmp_path / "vnf", text)
    with pytest.raises(DescriptorError) as info:
        load_descriptor(folder)
    assert isinstance(info.value, VnfkitError)
    line, col = position(text, "max: 70000")
    hline, hcol = position(text, "hoks")
    assert str(info.value).splitlines() == [
        f"{folder}/vnf.yaml:{hline}:{hcol}: hoks: unknown field 'hoks' (did you mean 'hooks'?)",
        f"{folder}/vnf.yaml:{line}:{col}: parameters[1].max: 70000 is greater than the maximum 65535 of u16",
    ]


def test_missing_fastpath_and_model_are_named(tmp_path: Path) -> None:
    problems = problems_of(DATA / "no-fastpath")
    assert [str(p) for p in problems] == [
        f"{DATA / 'no-fastpath' / 'fastpath.c'}: missing: a VNF folder holds the C fast path in fastpath.c"]
    problems = problems_of(make_vnf(tmp_path, MINIMAL_TEXT, files=()))
    assert {Path(p.file).name for p in problems} == {"fastpath.c", "model.py"}
    assert all(p.line == 0 and p.path == "" for p in problems)


def test_missing_files_are_reported_along_with_yaml_problems(tmp_path: Path) -> None:
    problems = problems_of(make_vnf(tmp_path, "name: [\n", files=("model.py",)))
    assert [Path(p.file).name for p in problems] == ["vnf.yaml", "fastpath.c"]


def test_unusable_paths_are_problems(tmp_path: Path) -> None:
    assert "no such file" in problems_of(tmp_path / "nowhere")[0].message
    assert "no such file" in problems_of(tmp_path)[0].message  # a folder without vnf.yaml
    (tmp_path / "vnf.yaml").write_bytes(b"name: \xff\xfe\n")
    problem = problems_of(tmp_path / "vnf.yaml")[0]
    assert (problem.line, problem.column, problem.message) == (1, 7, "not UTF-8 text (byte 0xff)")
    (tmp_path / "vnf.yaml").write_text("a: b\n" * 300_000)
    assert "larger than" in problems_of(tmp_path)[0].message
    assert "cannot" in problems_of(tmp_path / "bad\x00name")[0].message


# ---------------------------------------------------------------------------------------------
# Configuration values


def test_config_values_merge_and_parse() -> None:
    desc = load_descriptor(FULL)
    values = config_values(desc, {"port": "0x1f90", "strict": "no", "gateway": "198.19.0.1", "offset": 7,
                                  "router_mac": "02-AA-00-00-00-01", "gateway6": "2001:db8:0::2"})
    assert values == {**desc.param_defaults(), "port": 8080, "strict": False, "gateway": "198.19.0.1", "offset": 7,
                      "router_mac": "02:aa:00:00:00:01", "gateway6": "2001:db8::2"}
    assert config_values(desc, {}) == desc.param_defaults()
    assert config_values(desc, None) == desc.param_defaults()


def test_config_values_name_every_bad_parameter() -> None:
    desc = load_descriptor(FULL)
    with pytest.raises(DescriptorError) as info:
        config_values(desc, {"prot": 1, "port": 70000, "max_rate": 0, "strict": 2, "gateway": "host", "offset": True})
    assert str(info.value).splitlines() == [
        "<config>: prot: unknown parameter (did you mean 'port'?)",
        "<config>: port: 70000 is greater than the maximum 65535 of u16",
        "<config>: max_rate: 0 is less than min 1",
        "<config>: strict: expected true or false for bool, got 2",
        "<config>: gateway: 'host' is not an IPv4 address (like 192.0.2.1)",
        "<config>: offset: expected an integer for i32, got true",
    ]


# ---------------------------------------------------------------------------------------------
# Cross-checks against the compiled fast path (introspection faked)


def introspection(**changes: Any) -> SimpleNamespace:
    """What introspecting the full fixture's C would give if it agreed with the descriptor."""
    table = SimpleNamespace
    base: dict[str, Any] = {
        "counters": ["allowed", "denied", "limited"],
        "config_fields": {"max_rate": ("u", 4), "port": ("u", 2), "strict": ("b", 1), "gateway": ("u", 4),
                          "gateway6": ("V", 16), "router_mac": ("V", 6), "offset": ("i", 4)},
        "tables": {"allowed_ports": table(type="hash", key_size=2, value_size=1, max_entries=1024),
                   "sources": table(type="lru_hash", key_size=4, value_size=16, max_entries=65536),
                   "routes": table(type="lpm_trie", key_size=8, value_size=4, max_entries=10000),
                   "vnf_counters": table(type="percpu_array", key_size=4, value_size=16, max_entries=8)},
    }
    base.update(changes)
    return SimpleNamespace(**base)


@pytest.fixture
def fake_introspect(monkeypatch: pytest.MonkeyPatch) -> Callable[[Any], list[Path]]:
    """Make ``vnfkit.introspect.introspect`` return (or raise) what the test says; it records the
    folders it was asked about. Works before the real module exists, too."""
    try:
        import vnfkit.introspect as module
    except ImportError:
        module = types.ModuleType("vnfkit.introspect")
        monkeypatch.setitem(sys.modules, "vnfkit.introspect", module)
    calls: list[Path] = []

    def install(result: Any) -> list[Path]:
        def fake(folder: Path) -> Any:
            calls.append(Path(folder))
            if isinstance(result, BaseException):
                raise result
            return result

        monkeypatch.setattr(module, "introspect", fake, raising=False)
        return calls

    return install


def test_agreeing_c_and_descriptor_are_valid(fake_introspect: Callable[[Any], list[Path]]) -> None:
    calls = fake_introspect(introspection())
    assert validate(FULL) == []
    assert calls == [FULL.resolve()]


def test_alternative_field_layouts_are_accepted(fake_introspect: Callable[[Any], list[Path]]) -> None:
    fields = introspection().config_fields | {"strict": ("u", 1), "gateway": ("V", 4)}
    fake_introspect(introspection(config_fields=fields))
    assert validate(FULL) == []


def test_no_build_does_not_introspect(fake_introspect: Callable[[Any], list[Path]]) -> None:
    calls = fake_introspect(RuntimeError("must not be called"))
    assert validate(FULL, build=False) == []
    assert calls == []


def test_descriptor_problems_stop_before_the_build(tmp_path: Path,
                                                  fake_introspect: Callable[[Any], list[Path]]) -> None:
    calls = fake_introspect(introspection())
    problems = validate(full_vnf(tmp_path / "vnf", FULL_TEXT.replace("hooks:", "hoks:")))
    assert [p.path for p in problems] == ["hoks"] and calls == []


def cross_problems(fake_introspect: Callable[[Any], list[Path]], **changes: Any) -> list[str]:
    fake_introspect(introspection(**changes))
    problems = validate(FULL)
    assert all(p.file == str(FULL / "vnf.yaml") for p in problems)
    return [f"{p.line}:{p.path}: {p.message}" for p in problems]


def test_counter_missing_in_c_and_extra_in_c(fake_introspect: Callable[[Any], list[Path]]) -> None:
    line_denied = position(FULL_TEXT, "name: denied")[0]
    line_counters = position(FULL_TEXT, "counters:")[0]
    assert cross_problems(fake_introspect, counters=["allowed", "limited", "sampled"]) == [
        f"{line_counters}:counters: fastpath.c counts 'sampled' (CTR_sampled) but the descriptor does not list it "
        "under counters",
        f"{line_denied}:counters[1].name: counter 'denied' is not in fastpath.c's VNF_COUNTERS (add X(denied) there,"
        " or remove it here)",
    ]


def test_config_field_type_mismatches(fake_introspect: Callable[[Any], list[Path]]) -> None:
    fields = introspection().config_fields | {"port": ("u", 4), "offset": ("u", 4), "router_mac": ("V", 8),
                                              "strict": ("u", 2)}
    assert cross_problems(fake_introspect, config_fields=fields) == [
        f"{position(FULL_TEXT, 'type: u16')[0]}:parameters[1].type: port is u16 here but an unsigned 32-bit integer "
        "in struct vnf_config (a u16 parameter needs a __u16)",
        f"{position(FULL_TEXT, 'type: bool')[0]}:parameters[2].type: strict is bool here but an unsigned 16-bit "
        "integer in struct vnf_config (a bool parameter needs a __u8 or bool)",
        f"{position(FULL_TEXT, 'type: mac')[0]}:parameters[5].type: router_mac is mac here but an 8-byte field in "
        "struct vnf_config (a mac parameter needs 6 bytes (__u8[6]))",
        f"{position(FULL_TEXT, 'type: i32')[0]}:parameters[6].type: offset is i32 here but an unsigned 32-bit "
        "integer in struct vnf_config (an i32 parameter needs a __s32)",
    ]


def test_config_fields_missing_and_extra(fake_introspect: Callable[[Any], list[Path]]) -> None:
    fields = dict(introspection().config_fields)
    del fields["gateway"]
    fields["burst"] = ("u", 4)
    assert cross_problems(fake_introspect, config_fields=fields) == [
        f"{position(FULL_TEXT, 'parameters:')[0]}:parameters: struct vnf_config has field 'burst' (an unsigned "
        "32-bit integer) but the descriptor has no parameter of that name",
        f"{position(FULL_TEXT, 'name: gateway')[0]}:parameters[3].name: struct vnf_config has no field 'gateway' "
        "(an ipv4 parameter needs a __be32 or another 4-byte field)",
    ]
    messages = cross_problems(fake_introspect, config_fields={})
    assert len(messages) == 7 and all("fastpath.c declares no struct vnf_config" in m for m in messages)


def test_table_mismatches(fake_introspect: Callable[[Any], list[Path]]) -> None:
    tables = dict(introspection().tables)
    del tables["routes"]
    tables["allowed_ports"] = SimpleNamespace(type="array", key_size=4, value_size=1, max_entries=1024)
    tables["sources"] = SimpleNamespace(type="lru_hash", key_size=4, value_size=16, max_entries=4096)
    assert cross_problems(fake_introspect, tables=tables) == [
        f"{position(FULL_TEXT, 'type: hash')[0]}:tables[0].type: allowed_ports is array in fastpath.c, not hash",
        f"{position(FULL_TEXT, 'max_entries: 65536')[0]}:tables[1].max_entries: sources holds 4096 entries in "
        "fastpath.c, not 65536",
        f"{position(FULL_TEXT, 'name: routes')[0]}:tables[2].name: fastpath.c declares no table 'routes'",
    ]


def test_compile_error_points_at_fastpath_lines(fake_introspect: Callable[[Any], list[Path]]) -> None:
    source = str((FULL / "fastpath.c").resolve())
    diags = [Diagnostic(source, 12, 5, "error", "use of undeclared identifier 'x'"),
             Diagnostic(source, 12, 5, "note", "did you mean 'y'?"),
             Diagnostic("/usr/include/linux/bpf.h", 3, 1, "fatal error", "oops")]
    fake_introspect(CompileError(source, diags, "..."))
    assert [str(p) for p in validate(FULL)] == [
        f"{FULL / 'fastpath.c'}:12:5: error: use of undeclared identifier 'x'",
        "/usr/include/linux/bpf.h:3:1: fatal error: oops",
    ]
    fake_introspect(CompileError(source, [], "clang: no input files\n"))
    assert [str(p) for p in validate(FULL)] == [f"{FULL / 'fastpath.c'}: does not compile: clang: no input files"]


# ---------------------------------------------------------------------------------------------
# The CLI handler


def run_validate(path: Path, *, build: bool = False) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    cli_sdk.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["validate", str(path), *([] if build else ["--no-build"])])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = args.func(args)
    return code, out.getvalue()


def test_cli_validate(tmp_path: Path, fake_introspect: Callable[[Any], list[Path]]) -> None:
    assert run_validate(FULL) == (0, f"{FULL}: valid\n")
    fake_introspect(introspection(counters=["allowed", "denied"]))
    code, out = run_validate(FULL, build=True)
    assert code == 1 and out.count("\n") == 1 and "counters[2].name: counter 'limited'" in out
    bad = full_vnf(tmp_path / "vnf", FULL_TEXT.replace("default: 80", "default: 70000"))
    code, out = run_validate(bad)
    line, col = position(FULL_TEXT, "default: 80")
    assert (code, out) == (1, f"{bad}/vnf.yaml:{line}:{col}: parameters[1].default: 70000 is greater than the "
                              "maximum 65535 of u16\n")


# ---------------------------------------------------------------------------------------------
# Fuzzing: nothing but problems, whatever the input


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_vnf(tmp_path_factory.mktemp("fuzz") / "vnf", "")


def check_never_raises(folder: Path, content: str | bytes) -> None:
    (folder / "vnf.yaml").write_bytes(content.encode("utf-8", "surrogatepass") if isinstance(content, str)
                                      else content)
    problems = validate(folder, build=False)
    assert isinstance(problems, list) and all(isinstance(p, Problem) for p in problems)
    for p in problems:
        assert isinstance(p.line, int) and isinstance(p.column, int) and str(p)
    try:
        load_descriptor(folder)
    except DescriptorError as exc:
        assert exc.problems == problems
    code, out = run_validate(folder)
    assert code == (1 if problems else 0) and out


YAML_TOKENS = st.sampled_from([
    "\n", " ", "  ", "- ", ": ", ":", "[", "]", "{", "}", ",", "&a ", "*a", "<<: ", "!!int ", "!!str ", "!!binary ",
    "!!set ", "!!timestamp ", "? ", "'", '"', "#", "|", ">", "---\n", "...\n", "%YAML 1.1\n", "~", "null", "yes",
    "1.0", "0x1F", "-1", "1e999", ".nan", "2001-01-01", "name", "parameters", "tables", "type", "default", "u16",
    "ipv4", "max", "min", "\t", "\\", "\x00", "\ufeff", "é", "vnfkit/v1",
])
JSON_SCALARS = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True)
                | st.text(max_size=12) | st.sampled_from(["xdp", "tc", "u8", "ipv6", "mac", "hash", "ingress", ""]))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8) | st.sampled_from(["name", "type", "default"]),
                                             inner, max_size=3), max_leaves=8)
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(content=st.text(max_size=200) | st.binary(max_size=200))
def test_fuzz_arbitrary_text(fuzz_dir: Path, content: str | bytes) -> None:
    check_never_raises(fuzz_dir, content)


@FUZZ
@given(tokens=st.lists(YAML_TOKENS, max_size=40))
def test_fuzz_yaml_token_soup(fuzz_dir: Path, tokens: list[str]) -> None:
    check_never_raises(fuzz_dir, "".join(tokens))


def all_paths(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(node, dict):
        for key, value in node.items():
            yield from all_paths(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from all_paths(value, (*path, i))


@FUZZ
@given(data=st.data())
def test_fuzz_mutated_valid_descriptor(fuzz_dir: Path, data: st.DataObject) -> None:
    doc = yaml.safe_load(FULL_TEXT)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(list(all_paths(doc))))
        action = data.draw(st.sampled_from(["replace", "delete", "add"]))
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        if not path:
            doc = data.draw(JSON_VALUES) if action == "replace" else doc
        elif action == "replace":
            parent[path[-1]] = data.draw(JSON_VALUES)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[data.draw(st.text(max_size=10))] = data.draw(JSON_VALUES)
        else:
            parent.insert(path[-1], data.draw(JSON_VALUES))
        if not isinstance(doc, dict | list):
            break
    check_never_raises(fuzz_dir, yaml.safe_dump(doc, allow_unicode=True))


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, len(FULL_TEXT)), st.integers(0, 8), YAML_TOKENS | st.text(max_size=3)),
                      min_size=1, max_size=4))
def test_fuzz_text_edits_of_valid_descriptor(fuzz_dir: Path, edits: list[tuple[int, int, str]]) -> None:
    text = FULL_TEXT.replace("fsm/scaler.py", "fastpath.c")  # the fuzz folder has no fsm/
    for at, cut, insert in edits:
        text = text[:at] + insert + text[at + cut:]
    check_never_raises(fuzz_dir, text)
