"""service.yaml loading/checking/flattening and the path compiler (pure Python, no kernel)."""

from __future__ import annotations

import copy
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chaining.compiler import CompileError, compile_paths
from chaining.service import Match, Service, ServicePath, conflict, load_service, relation
from vnfkit.descriptor import DescriptorError, Problem

DATA = Path(__file__).parent / "data" / "services"

HEAD = """\
descriptor_version: vnfkit/service/v1
name: test
vendor: org.example
version: 1.0.0
description: a test service
"""
# line 6 is "functions:"
BODY = """\
functions:
  - {id: fw, vnf: firewall}
  - {id: nat, vnf: nat}
paths:
  - {id: p, hops: [fw, nat]}
"""


def problems(tmp_path: Path, text: str, name: str = "service.yaml") -> list[Problem]:
    f = tmp_path / name
    f.write_text(text)
    with pytest.raises(DescriptorError) as exc:
        load_service(f)
    return exc.value.problems


def one(tmp_path: Path, text: str) -> Problem:
    found = problems(tmp_path, text)
    assert len(found) == 1, found
    return found[0]


# ---------------------------------------------------------------------------------------------
# Valid services


def test_valid_service_loads() -> None:
    s = load_service(DATA / "web.yaml")
    assert [f.id for f in s.functions] == ["fw", "nat", "lb", "mon"]
    assert [f.vnf for f in s.functions] == ["firewall", "nat", "l4lb", "monitor"]
    assert s.function("fw").config == {"default_allow": True}
    assert s.paths[0].hops == ["fw", "nat", "lb", "mon"] and s.paths[0].symmetric
    assert s.classifier[0].match == Match(dst="198.51.100.0/24", proto=6, dport=(80, 80))
    assert s.warnings == []


def test_control_settings_are_checked_and_kept(tmp_path: Path) -> None:
    text = HEAD + BODY.replace("{id: nat, vnf: nat}", "{id: nat, vnf: nat, control: {inside: [10.1.0.0/16], "
                                                      "pool: 10.9.0.0/30}}")
    f = tmp_path / "service.yaml"
    f.write_text(text)
    s = load_service(f)
    assert s.function("nat").control == {"inside": ["10.1.0.0/16"], "pool": "10.9.0.0/30"}
    assert s.function("fw").control is None


def test_recursive_service_is_flattened() -> None:
    s = load_service(DATA / "nested.yaml")
    assert [(f.id, f.name, f.vnf) for f in s.functions] == [
        ("edge.fw", "fw", "firewall"), ("edge.rl", "rl", "ratelimit"), ("mon", "mon", "monitor")]
    assert s.path("all").hops == ["edge.fw", "edge.rl", "mon"]
    assert s.function("edge.fw").source.endswith("edge.yaml")


def test_folder_path_and_unreachable_warning(tmp_path: Path) -> None:
    extra = "  - {id: nat, vnf: nat}\n  - {id: mon, vnf: monitor}\n"
    (tmp_path / "service.yaml").write_text(HEAD + BODY.replace("  - {id: nat, vnf: nat}\n", extra))
    s = load_service(tmp_path)
    assert [(w.line, w.path) for w in s.warnings] == [(9, "functions[2].id")]
    assert "on no path" in s.warnings[0].message


# ---------------------------------------------------------------------------------------------
# Bad input: every problem with its line and path


@pytest.mark.parametrize("body, line, path, words", [
    (BODY.replace("vnf: nat}", "vnf: nat, colour: red}"), 8, "functions[1].colour", "unknown field"),
    (BODY.replace("{id: fw,", "{id: Fw,"), 7, "functions[0].id", "is not valid"),
    (BODY.replace("hops: [fw, nat]", "hops: []"), 10, "paths[0].hops", "must not be empty"),
    (BODY.replace("vnf: nat", "vnf: natt"), 8, "functions[1].vnf", "did you mean 'nat'"),
    (BODY.replace("{id: nat, vnf: nat}", "{id: nat}"), 8, "functions[1]", "either 'vnf'"),
    (BODY.replace("{id: fw, vnf: firewall}", "{id: fw, vnf: firewall, config: {stateful: maybe}}"),
     7, "functions[0].config.stateful", "firewall: expected true or false"),
    (BODY.replace("{id: fw, vnf: firewall}", "{id: fw, vnf: firewall, config: {nope: 1}}"),
     7, "functions[0].config.nope", "unknown parameter"),
    (BODY.replace("hops: [fw, nat]", "hops: [fw, nta]"), 10, "paths[0].hops[1]", "unknown function 'nta'"),
    (BODY.replace("{id: nat, vnf: nat}", "{id: fw, vnf: nat}"), 8, "functions[1].id", "already used"),
    (BODY + "  - {id: p, hops: [nat]}\n", 11, "paths[1].id", "already used"),
    (BODY + "classifier:\n  - {path: q, match: {dst: 10.0.0.0/8}}\n", 12, "classifier[0].path", "unknown path 'q'"),
    (BODY + "classifier:\n  - {path: p, match: {dst: 10.0.0.1/8}}\n", 12, "classifier[0].match.dst", "host bits"),
    (BODY + "classifier:\n  - {path: p, match: {proto: icmp, dport: 80}}\n", 12, "classifier[0].match.dport",
     "has no ports"),
    (BODY + "classifier:\n  - {path: p, match: {dport: 90-80}}\n", 12, "classifier[0].match.dport", "lo <= hi"),
    (BODY + "classifier:\n  - {path: p, match: {dport: http}}\n", 12, "classifier[0].match.dport", "port"),
    (BODY + "classifier:\n  - {path: p, match: {vlan: 5000}}\n", 12, "classifier[0].match.vlan", "maximum 4095"),
    (BODY.replace("{id: nat, vnf: nat}", "{id: nat, vnf: nat, control: {inside: [10.0.0.0/33], pool: 10.9.0.1}}"),
     8, "functions[1].control", "nat: nat configuration"),
    (BODY.replace("{id: nat, vnf: nat}", "{id: nat, vnf: nat, control: {pool: 10.9.0.1, colour: red}}"),
     8, "functions[1].control", "unknown setting 'colour'"),
    (BODY.replace("{id: nat, vnf: nat}", "{id: nat, vnf: monitor, control: {a: 1}}"),
     8, "functions[1].control", "takes no 'control' settings"),
    (BODY.replace("{id: nat, vnf: nat}", "{id: nat, vnf: nat, config: {pool_count: 2}, "
                  "control: {inside: [10.1.0.0/16], pool: 10.9.0.1}}"),
     8, "functions[1].config", "set by both config and control"),
    (BODY.replace("{id: fw, vnf: firewall}", "{id: fw, vnf: firewall, control: {rules: 'allow tcp from nowhere'}}"),
     7, "functions[0].control", "firewall"),
    (BODY + "classifier:\n  - {path: p, match: {proto: icmp, sport: 53}}\n", 12, "classifier[0].match.sport",
     "sport needs tcp, udp or sctp"),
    (BODY + "classifier:\n  - {path: p, match: {sport: 2-1}}\n", 12, "classifier[0].match.sport", "lo <= hi"),
    (BODY + "classifier:\n  - {path: p, match: {sport: 70000}}\n", 12, "classifier[0].match.sport", "port"),
])
def test_bad_input(tmp_path: Path, body: str, line: int, path: str, words: str) -> None:
    # The first problem is the one planted; a renamed id may also leave a hop dangling after it.
    p = problems(tmp_path, HEAD + body)[0]
    assert (p.line, p.path) == (line, path), p
    assert words in p.message, p
    assert p.file.endswith("service.yaml")


def test_missing_fields_and_yaml_errors(tmp_path: Path) -> None:
    p = one(tmp_path, HEAD)
    assert p.line == 1 and "'functions', 'paths'" in p.message
    p = one(tmp_path, HEAD + "functions: [\n")
    assert p.line == 7 and "YAML syntax error" in p.message
    p = one(tmp_path, HEAD + BODY + "paths: []\n")
    assert p.line == 11 and "duplicate key 'paths'" in p.message
    with pytest.raises(DescriptorError, match="no such file"):
        load_service(tmp_path / "absent.yaml")


OVERLAP = HEAD + BODY + "  - {id: q, hops: [nat]}\nclassifier:\n  - {path: p, match: %s}\n  - {path: q, match: %s}\n"


@pytest.mark.parametrize("a, b, bad", [
    ("{dst: 10.0.0.0/8}", "{dst: 10.0.0.0/8}", True),                      # same match
    ("{dst: 10.0.0.0/8}", "{dst: 10.1.0.0/16}", False),                    # longest prefix wins
    ("{dst: 10.0.0.0/8, dport: 80}", "{dst: 10.1.0.0/16}", True),          # crossed: each narrower somewhere
    ("{dst: 10.0.0.0/8, proto: tcp}", "{dst: 10.0.0.0/8, proto: udp}", False),  # disjoint
    ("{dport: 1-100}", "{dport: 50-200}", True),                           # ranges cross
    ("{dport: 1-100}", "{dport: 50-60, vlan: 3}", False),                  # strictly inside
    ("{}", "{src: 192.0.2.0/24}", False),                                  # catch-all and a narrower rule
    ("{sport: 1024-65535}", "{dport: 53}", True),                          # crossed in two port fields
    ("{proto: udp, sport: 53}", "{proto: udp, sport: 53, dport: 53}", False),  # strictly inside
    ("{sport: 53}", "{proto: udp}", True),                                 # udp sport 53: neither holds it
    ("{dport: 80}", "{proto: icmp}", False),                               # ports never match ICMP
    ("{dport: 80, dst: 10.0.0.0/8}", "{proto: 47, dst: 10.0.0.0/16}", False),  # nor GRE
])
def test_classifier_overlap(tmp_path: Path, a: str, b: str, bad: bool) -> None:
    text = OVERLAP % (a, b)
    if not bad:
        load_service_text(tmp_path, text)
        return
    p = one(tmp_path, text)
    assert (p.line, p.path) == (14, "classifier[1].match") and "overlaps classifier[0]" in p.message


def load_service_text(tmp_path: Path, text: str) -> Service:
    f = tmp_path / "service.yaml"
    f.write_text(text)
    return load_service(f)


def test_sport_is_a_match_field(tmp_path: Path) -> None:
    s = load_service_text(tmp_path, HEAD + BODY + "classifier:\n  - {path: p, match: {proto: udp, sport: 1024-2048}}\n"
                          "  - {path: p, match: {sport: 53}}\n")
    assert [r.match for r in s.classifier] == [Match(proto=17, sport=(1024, 2048)), Match(sport=(53, 53))]


def test_relation_with_an_extra_field() -> None:
    a, b = Match(dst="10.0.0.0/8"), Match(dst="10.0.0.0/8", dport=(80, 80))
    assert relation(a, b) == "sup" and relation(b, a) == "sub" and relation(a, a) == "eq"
    # The classifier's interface: one rule narrower in ports, the other in interface.
    assert relation(a, b, [(7, None)]) == "overlap"
    assert relation(a, b, [(7, 8)]) == "disjoint"
    assert relation(a, a, [(7, None)]) == "sub"


def test_conflict_is_symmetric() -> None:
    a, b = Match(dst="10.0.0.0/8", dport=(80, 80)), Match(dst="10.1.0.0/16")
    assert conflict(a, b) and conflict(b, a)
    assert not conflict(Match(dst="10.0.0.0/8"), Match(dst="2001:db8::/32"))


def test_service_recursion_reports_chain() -> None:
    with pytest.raises(DescriptorError) as exc:
        load_service(DATA / "cycle_a.yaml")
    cycle = [p for p in exc.value.problems if "recursion" in p.message]
    assert len(cycle) == 1
    assert cycle[0].file.endswith("cycle_b.yaml") and (cycle[0].line, cycle[0].path) == (8, "functions[1].service")
    assert "cycle_a.yaml -> " in cycle[0].message and "cycle_b.yaml -> " in cycle[0].message
    outer = [p for p in exc.value.problems if p.file.endswith("cycle_a.yaml")]
    assert outer and outer[0].line == 8


def test_self_inclusion_and_inner_problems(tmp_path: Path) -> None:
    p = one(tmp_path, HEAD + BODY.replace("{id: nat, vnf: nat}", "{id: nat, service: service.yaml}"))
    assert (p.line, p.path) == (8, "functions[1].service") and "recursion" in p.message
    (tmp_path / "inner.yaml").write_text(HEAD + BODY.replace("nat]", "rl]"))
    found = problems(tmp_path, HEAD + BODY.replace("{id: nat, vnf: nat}", "{id: nat, service: inner.yaml}"))
    inner = [q for q in found if q.file.endswith("inner.yaml")]
    assert [(q.line, q.path) for q in inner] == [(10, "paths[0].hops[1]")]


def test_hop_on_multi_path_constituent(tmp_path: Path) -> None:
    (tmp_path / "two.yaml").write_text(HEAD + BODY + "  - {id: q, hops: [nat]}\n")
    p = one(tmp_path, HEAD + BODY.replace("{id: nat, vnf: nat}", "{id: nat, service: two.yaml}"))
    assert (p.line, p.path) == (10, "paths[0].hops[1]") and "more than one path" in p.message


# ---------------------------------------------------------------------------------------------
# Fuzzing: nothing but DescriptorError, ever

_SEEDS = {name: yaml.safe_load((DATA / name).read_text()) for name in ("web.yaml", "nested.yaml")}
_JUNK = st.one_of(st.none(), st.booleans(), st.integers(-2, 70000), st.text(max_size=12),
                  st.sampled_from(["firewall", "nat", "fw", "web", "edge.yaml", "nested.yaml", "10.0.0.0/8",
                                   "1-2", "tcp", "../vnfs/nat", "/", "\x00"]),
                  st.lists(st.sampled_from(["fw", "nat", "lb", "mon", "edge", "x"]), max_size=4),
                  st.dictionaries(st.sampled_from(["id", "vnf", "service", "dst", "dport"]), st.text(max_size=5),
                                  max_size=2))


def _paths(node: object, at: tuple = ()) -> list[tuple]:
    out = [at]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*at, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*at, i))
    return out


@st.composite
def _mutants(draw: st.DrawFn) -> str:
    data = copy.deepcopy(_SEEDS[draw(st.sampled_from(sorted(_SEEDS)))])
    for _ in range(draw(st.integers(1, 4))):
        target = draw(st.sampled_from(_paths(data)[1:]))
        parent = data
        for part in target[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "delete":
            del parent[target[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.sampled_from(["id", "hops", "paths", "junk", "symmetric"]))] = draw(_JUNK)
        else:
            parent[target[-1]] = draw(_JUNK)
        if not _paths(data)[1:]:
            break
    return yaml.safe_dump(data)


@pytest.fixture(scope="module")
def fuzz_dir() -> object:
    with tempfile.TemporaryDirectory() as d:
        shutil.copytree(DATA, Path(d), dirs_exist_ok=True)
        yield Path(d)


def _only_descriptor_errors(folder: Path, text: str | bytes) -> None:
    f = folder / "fuzz.yaml"
    if isinstance(text, bytes):
        f.write_bytes(text)
    else:
        f.write_text(text, errors="surrogatepass")
    try:
        load_service(f)
    except DescriptorError as exc:
        assert exc.problems and all(isinstance(p, Problem) for p in exc.problems)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_mutants())
def test_fuzz_mutated_services(fuzz_dir: Path, text: str) -> None:
    _only_descriptor_errors(fuzz_dir, text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.binary(max_size=200), st.text(alphabet="{}[]:-,&*!|>'\"# \nabc12\t", max_size=200),
                      st.builds(lambda a, b: (DATA / "web.yaml").read_text()[:a] + b,
                                st.integers(0, 600), st.text(max_size=20))))
def test_fuzz_malformed_yaml(fuzz_dir: Path, text: str | bytes) -> None:
    _only_descriptor_errors(fuzz_dir, text)


# ---------------------------------------------------------------------------------------------
# The compiler

TWO_HOSTS = {"fw": "host-a", "nat": "host-a", "lb": "host-b", "mon": "host-b"}


def test_compile_two_hosts_and_symmetric_reverse() -> None:
    c = compile_paths(load_service(DATA / "web.yaml"), TWO_HOSTS, first_spi=10)
    fwd, rev = c.path("web"), c.path("web.reverse")
    assert (fwd.spi, fwd.reverse_spi, rev.spi, rev.reverse_of) == (10, 11, 11, 10)
    assert [(s.host, s.functions, s.first_si, s.end, s.next_host, s.next_si) for s in fwd.segments] == [
        ("host-a", ["fw", "nat"], 255, "remote", "host-b", 253),
        ("host-b", ["lb", "mon"], 253, "egress", None, 251)]
    assert [(s.host, s.functions, s.first_si, s.end, s.next_host, s.next_si) for s in rev.segments] == [
        ("host-b", ["mon", "lb"], 255, "remote", "host-a", 253),
        ("host-a", ["nat", "fw"], 253, "egress", None, 251)]
    assert fwd.segments[1].last_si == 252
    assert [r.spi for r in c.classifier] == [10]
    assert [(spi, s.functions) for spi, s in c.by_host()["host-a"]] == [(10, ["fw", "nat"]), (11, ["nat", "fw"])]


def test_compile_constituent_placed_by_its_id() -> None:
    c = compile_paths(load_service(DATA / "nested.yaml"), {"edge": "a", "edge.rl": "b", "mon": "b"})
    assert [(s.host, s.functions, s.first_si) for s in c.path("all").segments] == [
        ("a", ["edge.fw"], 255), ("b", ["edge.rl", "mon"], 254)]


def _long(n: int) -> Service:
    s = load_service(DATA / "web.yaml")
    hops = [f"f{i}" for i in range(n)]
    return Service(s.name, s.vendor, s.version, s.description, s.functions, [ServicePath("long", hops)], [], s.source)


def test_compile_refusals() -> None:
    web = load_service(DATA / "web.yaml")
    with pytest.raises(CompileError, match=r"function 'mon' \(on path 'web'\) is placed on no host"):
        compile_paths(web, {k: v for k, v in TWO_HOSTS.items() if k != "mon"})
    with pytest.raises(CompileError, match="collide with reserved SPI\\(s\\) 11"):
        compile_paths(web, TWO_HOSTS, first_spi=10, reserved_spis={11, 99})
    assert compile_paths(web, TWO_HOSTS, first_spi=12, reserved_spis={11}).path("web").spi == 12
    with pytest.raises(CompileError, match="outside 1"):
        compile_paths(web, TWO_HOSTS, first_spi=0)
    one_host = {f"f{i}": "h1" for i in range(300)}
    compile_paths(_long(16), one_host)
    with pytest.raises(CompileError, match="path 'long': 17 consecutive hops on host 'h1'.*split it across hosts"):
        compile_paths(_long(17), one_host)
    alternating = {f"f{i}": f"h{i // 10}" for i in range(300)}
    assert compile_paths(_long(255), alternating).path("long").segments[-1].next_si == 0
    with pytest.raises(CompileError, match="path 'long' has 256 hops; a path holds at most 255"):
        compile_paths(_long(256), alternating)
