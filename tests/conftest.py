"""Shared fixtures, and the rule that makes CI honest: with CI set, a skipped test fails.

Kernel tests (marked ``kernel``) need root, a mounted bpffs, clang and the built libbpf
binding. Off CI they skip with the reason when something is missing; in CI that skip is
turned into a failure, because a suite whose kernel tests skipped has tested nothing.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

CI = bool(os.environ.get("CI"))


def _kernel_missing() -> str | None:
    if os.geteuid() != 0:
        return "kernel tests need root (CAP_BPF, CAP_NET_ADMIN)"
    if not shutil.which("clang"):
        return "clang is not installed (run `make setup`)"
    try:
        from datapath.pins import ensure_bpffs

        ensure_bpffs()
    except Exception as exc:  # noqa: BLE001 - any reason is a reason to skip
        return str(exc)
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    # A hook, not a fixture, so it runs before module-scoped fixtures that load programs.
    if item.get_closest_marker("kernel"):
        reason = _kernel_missing()
        if reason:
            pytest.skip(reason)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, which counts as a failure: {report.longrepr}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say how many tests ran in the real kernel, so a run that skipped them all shows."""
    counts: dict[str, int] = {}
    for outcome in ("passed", "failed", "skipped", "error"):
        for rep in terminalreporter.stats.get(outcome, []):
            if getattr(rep, "when", "call") in ("call", "setup") and "kernel" in getattr(rep, "keywords", {}):
                if outcome == "passed" and rep.when != "call":
                    continue
                counts[outcome] = counts.get(outcome, 0) + 1
    parts = ", ".join(f"{n} {k}" for k, n in counts.items()) or "none ran"
    terminalreporter.write_line(f"kernel tests: {parts}")


@pytest.fixture
def topo() -> Iterator[object]:
    """A fresh set of network namespaces and veths, removed after the test."""
    from datapath.netns import Topology

    with Topology() as t:
        yield t


@pytest.fixture
def pins(topo: object) -> Iterator[object]:
    """A pin group of the test's own, removed (links detached) after the test."""
    from datapath.pins import PinGroup

    group = PinGroup(f"test-{topo.prefix}")
    try:
        yield group
    finally:
        group.remove()


@pytest.fixture
def pair(topo: object) -> object:
    """Two namespaces, 'client' and 'server', joined by one veth with addresses."""
    client = topo.add_ns("client")
    server = topo.add_ns("server")
    return topo.add_veth(client, server)


@pytest.fixture
def site(topo: object, tmp_path: Path) -> Iterator[dict]:
    """client --c-- host --s-- server; ``site["agent"](**options)`` starts an agent serving
    "host" (tests/test_agent.py); agents and their pin group are removed after the test."""
    from datapath.pins import PinGroup
    from vnfkit.agent.process import AgentProcess

    client, host, server = topo.add_ns("client"), topo.add_ns("host"), topo.add_ns("server")
    c = topo.add_veth(client, host)
    s = topo.add_veth(host, server)
    topo.set_sysctl(host, "net.ipv4.ip_forward", "1")
    topo.add_route(client, f"{s.addr_b}/32", gateway=c.addr_b)
    topo.add_route(server, f"{c.addr_a}/32", gateway=s.addr_a)
    group = f"test-{topo.prefix}-agent"
    agents: list[AgentProcess] = []

    def agent(**kwargs: object) -> AgentProcess:
        a = AgentProcess("host", netns=host, state_dir=tmp_path / "state", group=group, **kwargs)
        agents.append(a)
        return a.start()

    try:
        yield {"client": client, "host": host, "server": server, "c": c, "s": s, "agent": agent, "group": group,
               "tmp": tmp_path}
    finally:
        for a in agents:
            a.close()
        PinGroup(group).remove()
