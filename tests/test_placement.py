"""The default placement plug-in (pure Python): packing by resource needs, chains kept local,
clients' and servers' sides respected, clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from chaining.service import load_service
from vnfkit.orchestrator.placement import HostOffer, PlacementError, load_placement, pack

WEB = Path(__file__).parent / "data" / "services" / "web.yaml"  # fw -> nat -> lb -> mon, symmetric


def test_packs_along_the_path_from_clients_to_servers() -> None:
    s = load_service(WEB)
    hosts = [HostOffer("h3", cpus=1, egress=True), HostOffer("h2", cpus=2), HostOffer("h1", cpus=1, ingress=True)]
    assert pack(s, hosts) == {"fw": "h1", "nat": "h2", "lb": "h2", "mon": "h3"}


def test_one_big_host_takes_the_whole_chain() -> None:
    s = load_service(WEB)
    hosts = [HostOffer("h1", cpus=8, ingress=True, egress=True), HostOffer("h2", cpus=8)]
    assert set(pack(s, hosts).values()) == {"h1"}


def test_symmetric_path_ends_where_the_servers_are() -> None:
    s = load_service(WEB)
    hosts = [HostOffer("a", cpus=8, ingress=True), HostOffer("b", cpus=8, egress=True)]
    p = pack(s, hosts)
    assert p["fw"] == "a" and p["mon"] == "b"


def test_refusals_name_the_function_and_why() -> None:
    s = load_service(WEB)
    with pytest.raises(PlacementError, match=r"function 'lb'.*no host offers VNF 'l4lb'"):
        pack(s, [HostOffer("h1", cpus=8, vnfs=frozenset({"firewall", "nat", "monitor"}))])
    with pytest.raises(PlacementError, match=r"no room left on h1"):
        pack(s, [HostOffer("h1", cpus=2)])
    with pytest.raises(PlacementError, match="no host is registered"):
        pack(s, [])


def test_plugins_by_name() -> None:
    assert load_placement("pack") is pack
    assert load_placement("vnfkit.orchestrator.placement:pack") is pack
    with pytest.raises(PlacementError, match="nope"):
        load_placement("vnfkit.orchestrator.placement:nope")
