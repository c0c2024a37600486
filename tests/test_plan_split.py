"""A parent's plan for a whole domain cut into its hosts' plans (``chaining.plan.split_plan``):
pure data, no kernel. The parent's plans are made as a parent makes them (compile, then
``host_plans`` with the domain's advertised wiring)."""

from __future__ import annotations

from pathlib import Path

import pytest

from chaining.compiler import compile_paths
from chaining.local import ChainError
from chaining.plan import HostPlan, HostWiring, PathSpec, domain_pins, host_plans, qualify, split_plan, unqualify
from chaining.service import load_service

WEB = Path(__file__).parent / "data" / "services" / "web.yaml"  # fw -> nat -> lb -> mon, symmetric

# The domain d1: h2 (the gateway: its underlay is what d1 advertises) and h3 (servers behind it).
INNER = {
    "h2": HostWiring(None, (), (), "u2", "02:00:00:00:00:02", "198.18.0.2"),
    "h3": HostWiring(None, (), ("srv0", "srv1"), "u3", "02:00:00:00:00:03", "198.18.0.3"),
}
OUTER = {
    "h1": HostWiring(None, ("cli0",), (), "u1", "02:00:00:00:00:01", "198.18.0.1"),
    "d1": HostWiring(None, (), (qualify("h3", "srv0"), qualify("h3", "srv1")), qualify("h2", "u2"),
                     "02:00:00:00:00:02", "198.18.0.2"),
}


def parent_plans(placement: dict[str, str]) -> dict[str, HostPlan]:
    service = load_service(WEB)
    return host_plans(compile_paths(service, placement), service, OUTER)


def test_qualified_names_round_trip_and_refuse_plain_ones() -> None:
    assert unqualify(qualify("h3", "veth0")) == ("h3", "veth0")
    with pytest.raises(ChainError, match="names no host"):
        unqualify("veth0")


def test_the_domain_part_keeps_spis_and_sis_and_goes_on_where_the_parent_said() -> None:
    parent = parent_plans({"fw": "h1", "nat": "d1", "lb": "d1", "mon": "d1"})
    d1 = parent["d1"]
    pins = domain_pins(d1, INNER)
    # NSH from h1 arrives at the gateway h2; the symmetric path ends, and replies start, on h3.
    assert {f: p.host for f, p in pins.items()} == {"web-edge/nat": "h2", "web-edge/mon": "h3"}
    plans = split_plan(d1, {"web-edge/nat": "h2", "web-edge/lb": "h2", "web-edge/mon": "h3"}, INNER)
    assert sorted(plans) == ["h2", "h3"]
    h2, h3 = plans["h2"], plans["h3"]
    fwd, rev = sorted({p.spi for p in d1.paths})
    assert set(h2.paths) == {
        PathSpec(fwd, 254, ("web-edge/nat", "web-edge/lb"), "remote", "h3", None, "web-edge/web"),
        PathSpec(rev, 254, ("web-edge/lb", "web-edge/nat"), "remote", "h1", None, "web-edge/web.reverse"),
    }
    assert set(h3.paths) == {
        PathSpec(fwd, 252, ("web-edge/mon",), "stack", None, (rev, 255), "web-edge/web"),
        PathSpec(rev, 255, ("web-edge/mon",), "remote", "h2", None, "web-edge/web.reverse"),
    }
    # Each host on its own underlay; peers inside the domain and the parent's host as the plan gave it.
    assert (h2.underlay, h3.underlay) == ("u2", "u3")
    assert {p.host: p.mac for p in h2.peers} == {"h1": "02:00:00:00:00:01", "h3": "02:00:00:00:00:03"}
    assert {p.host: p.mac for p in h3.peers} == {"h2": "02:00:00:00:00:02"}
    # Replies are classified on h3's own (unqualified) server-facing interfaces.
    assert h3.classify_on == ("srv0", "srv1") and h2.classify_on == ()
    assert [f.id for f in h2.functions] == ["web-edge/lb", "web-edge/nat"]
    assert d1.function("web-edge/nat") == h2.function("web-edge/nat")


def test_a_whole_path_inside_the_domain_starts_at_its_rules_host() -> None:
    inner = {**INNER, "h2": HostWiring(None, ("cli0",), (), "u2", "02:00:00:00:00:02", "198.18.0.2")}
    outer = {"d1": HostWiring(None, (qualify("h2", "cli0"),), (qualify("h3", "srv0"),), qualify("h2", "u2"),
                              "02:00:00:00:00:02", "198.18.0.2")}
    service = load_service(WEB)
    d1 = host_plans(compile_paths(service, dict.fromkeys(("fw", "nat", "lb", "mon"), "d1")), service, outer)["d1"]
    placement = {"web-edge/fw": "h2", "web-edge/nat": "h2", "web-edge/lb": "h3", "web-edge/mon": "h3"}
    plans = split_plan(d1, placement, inner)
    (rule,) = plans["h2"].rules
    assert rule.interfaces == ("cli0",) and (rule.spi, rule.si) == (d1.rules[0].spi, 255)
    assert plans["h2"].classify_on == ("cli0",) and plans["h3"].classify_on == ("srv0",)
    ends = {(p.spi, p.first_si): (p.end, p.next_host) for h in plans.values() for p in h.paths}
    assert ends[(rule.spi, 255)] == ("remote", "h3") and ends[(rule.spi, 253)] == ("stack", None)


def test_contradictions_are_refused_with_the_reason() -> None:
    d1 = parent_plans({"fw": "h1", "nat": "d1", "lb": "d1", "mon": "d1"})["d1"]
    with pytest.raises(ChainError, match=r"'web-edge/nat' is placed on 'h3' but must run on 'h2'.*gateway"):
        split_plan(d1, {"web-edge/nat": "h3", "web-edge/lb": "h3", "web-edge/mon": "h3"}, INNER)
    with pytest.raises(ChainError, match="placed on no host"):
        split_plan(d1, {"web-edge/nat": "h2", "web-edge/mon": "h3"}, INNER)
    # One function that must both take the parent's NSH (on h2) and end at the servers' stack (on h3).
    only_mon = parent_plans({"fw": "h1", "nat": "h1", "lb": "h1", "mon": "d1"})["d1"]
    with pytest.raises(ChainError, match=r"'web-edge/mon' must run on 'h2'.*and on 'h3'"):
        domain_pins(only_mon, INNER)
    # The same domain with a gateway that faces the servers can run it.
    gw3 = HostPlan(**{**only_mon.__dict__, "underlay": qualify("h3", "u3")})
    assert split_plan(gw3, {"web-edge/mon": "h3"}, INNER).keys() == {"h3"}
    no_servers = {h: HostWiring(None, (), (), w.underlay, w.underlay_mac, w.underlay_ip) for h, w in INNER.items()}
    with pytest.raises(ChainError, match="no single host facing servers"):
        domain_pins(d1, no_servers)


def test_a_parent_host_named_like_a_domain_host_is_renamed() -> None:
    outer = {"h2": OUTER["h1"], "d1": OUTER["d1"]}
    service = load_service(WEB)
    d1 = host_plans(compile_paths(service, {"fw": "h2", "nat": "d1", "lb": "d1", "mon": "d1"}), service,
                    outer)["d1"]
    plans = split_plan(d1, {"web-edge/nat": "h2", "web-edge/lb": "h2", "web-edge/mon": "h3"}, INNER)
    back = next(p for p in plans["h2"].paths if p.end == "remote" and p.next_host != "h3")
    assert back.next_host == "h2@parent"
    assert plans["h2"].peer("h2@parent").mac == "02:00:00:00:00:01"


def test_placing_in_the_domain_pins_first_then_asks_the_plugin() -> None:
    from vnfkit.orchestrator.domain import place_in_domain
    from vnfkit.orchestrator.placement import HostOffer, PlacementError, pack

    d1 = parent_plans({"fw": "h1", "nat": "d1", "lb": "d1", "mon": "d1"})["d1"]
    pins = domain_pins(d1, INNER)
    offers = [HostOffer("h3", cpus=1, egress=True), HostOffer("h2", cpus=2)]
    placement = place_in_domain(d1, offers, pack, pins)
    assert placement == {"web-edge/nat": "h2", "web-edge/lb": "h2", "web-edge/mon": "h3"}
    assert split_plan(d1, placement, INNER).keys() == {"h2", "h3"}
    # The gateway full: the pinned function is refused with the reason, not moved elsewhere.
    with pytest.raises(PlacementError, match=r"'web-edge/nat' must run on 'h2'.*gateway.*no room"):
        place_in_domain(d1, [HostOffer("h3", cpus=4, egress=True), HostOffer("h2", cpus=1, used_cpus=1)], pack, pins)
    with pytest.raises(PlacementError, match=r"'web-edge/mon' must run on 'h3'.*does not offer VNF 'monitor'"):
        place_in_domain(d1, [HostOffer("h3", cpus=4, egress=True, vnfs=frozenset({"nat"})), HostOffer("h2", cpus=2)],
                        pack, pins)
