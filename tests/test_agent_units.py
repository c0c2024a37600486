"""The agent's pieces without a kernel: host plans to Segment messages and back (what an
orchestrator sends is what the agent installs), the checks on a segment, the config file,
development certificates, and the desired-state store's transactions."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from chaining.compiler import compile_paths
from chaining.plan import HostWiring, host_plans
from chaining.service import load_service
from vnfkit.agent.config import ConfigError, load_config
from vnfkit.agent.convert import dict_to_struct, digest, plan_from_segment, segment_from_plan, struct_to_dict
from vnfkit.agent.errors import AgentError
from vnfkit.agent.store import Store, Stored
from vnfkit.agent.tls import make_dev_certs
from vnfkit.proto import load

pb, _ = load()
ROOT = Path(__file__).resolve().parent.parent
VNFS = ROOT / "vnfs"
SERVICE = """\
descriptor_version: vnfkit/service/v1
name: web
vendor: org.vnfkit.tests
version: 1.0.0
description: two hosts, symmetric
functions:
  - {id: fw, vnf: firewall, control: {default: allow, rules: "deny udp from any to any port 9"}}
  - {id: lb, vnf: l4lb, config: {}}
  - {id: mon, vnf: monitor, config: {sketch_seed: 7}}
paths:
  - {id: web, hops: [fw, lb, mon], symmetric: true}
classifier:
  - {path: web, match: {dst: 198.18.9.9/32, proto: tcp, dport: "80-81"}}
"""


def test_host_plans_travel_as_segments_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "service.yaml"
    path.write_text(SERVICE)
    service = load_service(path)
    wiring = {"A": HostWiring(ingress=("c0",), underlay="u0", underlay_mac="02:00:00:00:00:0a",
                              underlay_ip="198.18.1.1"),
              "B": HostWiring(egress=("s0",), underlay="u1", underlay_mac="02:00:00:00:00:0b",
                              underlay_ip="198.18.1.2")}
    plans = host_plans(compile_paths(service, {"fw": "A", "lb": "B", "mon": "B"}), service, wiring, encap="vxlan-gpe")
    for host, plan in plans.items():
        seg = segment_from_plan(plan, "web", 3, VNFS)
        assert {f.vnf for f in seg.functions} <= {"firewall", "l4lb", "monitor"}  # by name, under vnfs/
        wire = pb.Segment.FromString(seg.SerializeToString())
        back = plan_from_segment(wire, host, VNFS)
        assert back == plan, host
        assert digest(wire) == digest(segment_from_plan(plan, "web", 4, VNFS))  # the generation is not content


def test_struct_values_come_back_typed() -> None:
    data = {"n": 600, "big": 1515870810, "f": 0.5, "b": True, "s": "x", "l": [1, {"k": 2}], "none": None}
    assert struct_to_dict(dict_to_struct(data)) == data


def _seg(**kw: object) -> object:
    seg = pb.Segment(service="svc", generation=1)
    seg.functions.add(id="m", vnf="monitor")
    seg.paths.add(spi=5, first_si=255, functions=["m"], end=pb.PATH_END_STACK, path="p")
    seg.rules.add(spi=5, si=255, match=pb.Match(dst="198.18.0.0/16"), interfaces=["c0"])
    for k, v in kw.items():
        setattr(seg, k, v)
    return seg


@pytest.mark.parametrize(("change", "words"), [
    (lambda s: setattr(s, "service", "a/b"), "service name 'a/b'"),
    (lambda s: setattr(s, "generation", 0), "generation must be > 0"),
    (lambda s: setattr(s.functions[0], "vnf", "../etc"), "neither a name under"),
    (lambda s: setattr(s.functions[0], "vnf", "nope"), "unknown VNF 'nope'"),
    (lambda s: s.functions[0].config.CopyFrom(dict_to_struct({"chained": 3})), "chained"),
    (lambda s: s.functions[0].config.CopyFrom(dict_to_struct({"colour": 3})), "unknown parameter"),
    (lambda s: s.functions.add(id="m", vnf="monitor"), "a second function with this id"),
    (lambda s: setattr(s.paths[0], "spi", 1 << 24), "SPI 16777216 out of range"),
    (lambda s: s.paths[0].functions.append("x"), "unknown function(s) ['x']"),
    (lambda s: setattr(s.paths[0], "end", pb.PATH_END_REMOTE), "not among the segment's peers"),
    (lambda s: setattr(s.rules[0], "si", 254), "where no path segment of the service begins"),
    (lambda s: s.peers.add(host="B", mac="zz"), "'zz' is not a MAC address"),
])
def test_a_bad_segment_is_refused_naming_the_field(change: object, words: str) -> None:
    seg = _seg()
    change(seg)
    with pytest.raises(AgentError) as info:
        plan_from_segment(seg, "h", VNFS)
    assert info.value.code == "INVALID_ARGUMENT" and words in str(info.value)


def test_config_defaults_file_and_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    cfg = load_config(empty)  # defaults that work on one machine
    assert cfg.listen == ["127.0.0.1:50051"] and cfg.group == f"agent-{cfg.name}" and not cfg.insecure
    assert (cfg.vnfs_dir / "firewall" / "vnf.yaml").is_file() and cfg.metrics == "127.0.0.1:9464"
    example = load_config(ROOT / "contrib" / "agent.yaml")
    assert example.name == "host-a" and example.tls.ca == Path("/etc/vnfkit/certs/ca.pem")
    bad = tmp_path / "bad.yaml"
    for text, words in (("counter_interval: -1\n", "counter_interval: must be > 0"),
                        ("insecure: yes please\n", "insecure: true or false"),
                        ("tls: {ca: a, pem: b}\n", "tls takes ca, cert and key"),
                        ("- a\n", "a mapping")):
        bad.write_text(text)
        with pytest.raises(ConfigError, match=words):
            load_config(bad)
    assert load_config(empty, {"listen": "unix:/x", "name": None}).listen == ["unix:/x"]


def test_dev_certs_are_signed_by_their_ca_for_the_names_given(tmp_path: Path) -> None:
    files = make_dev_certs(tmp_path, ["host-a", "198.18.0.1"])
    ca = x509.load_pem_x509_certificate(files["ca"].read_bytes())
    for role in ("agent", "orchestrator", "client"):
        cert = x509.load_pem_x509_certificate(files[role].read_bytes())
        cert.verify_directly_issued_by(ca)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert "host-a" in names.get_values_for_type(x509.DNSName)
        assert (files[f"{role}_key"].stat().st_mode & 0o777) == 0o600


def test_store_writes_all_or_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "agent.db")
    row = Stored("svc", 1, "d1", b"seg", "applied")
    store.put(row, snapshot={"plan": None, "functions": {}})
    assert store.segments() == {"svc": row} and store.snapshot() == {"plan": None, "functions": {}}
    store.db.execute("CREATE TRIGGER no_more BEFORE INSERT ON snapshot BEGIN SELECT RAISE(ABORT, 'refused'); END")
    with pytest.raises(AgentError, match="cannot write the desired state.*refused"):
        store.put(Stored("svc", 2, "d2", b"seg2", "applied"), snapshot={"plan": "x"})
    assert store.segments() == {"svc": row}  # the segment row rolled back with the snapshot
    store.restore("svc", None)
    assert store.segments() == {}
    store.close()
    assert Store(tmp_path / "agent.db").snapshot() == {"plan": None, "functions": {}}


def test_the_systemd_unit_is_valid_and_names_a_config_that_loads(tmp_path: Path) -> None:
    """systemd's own checker on contrib/vnfkit-agent.service (installed under /opt/vnfkit, so
    that prefix is this checkout here), and contrib/agent.yaml is a config the agent takes."""
    import shutil
    import subprocess

    root = Path(__file__).resolve().parent.parent
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / "vnfkit-agent.service"
    unit.write_text((root / "contrib" / "vnfkit-agent.service").read_text().replace("/opt/vnfkit", str(root)))
    res = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr
    assert load_config(root / "contrib" / "agent.yaml").name
