"""The orchestrator's logic, independent of gRPC: registrations, deploy / update / undeploy in
two phases across hosts, and the counters agents report.

A deploy: check the service (``load_service``), place it (a placement plug-in), compile its
paths with SPIs no other service holds, make one plan per host from the agents' wiring,
record the desired state, then **prepare** on every host (each agent verifies and loads
everything, switching no packet); if any host fails, **abort** the others, so every host is as
before, and report which host and why; else **commit** everywhere (hosts downstream first, the
classifiers' hosts last), wait a drain, and **clean up** everywhere.

Agents are reached through :class:`AgentClient` (the gRPC stubs in ``server.py``; a child
orchestrator for recursive domains looks the same).
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from chaining.compiler import CompileError, compile_paths
from chaining.plan import HostPlan, HostWiring, host_plans
from chaining.service import load_service
from datapath.errors import VnfkitError
from vnfkit.descriptor import DescriptorError
from vnfkit.orchestrator.placement import HostOffer, Placement, PlacementError, capacity_used, pack
from vnfkit.orchestrator.store import AgentRecord, ServiceRecord, Store

log = logging.getLogger("vnfkit.orchestrator")
DRAIN_S = 0.1
HEARTBEAT_TIMEOUT_S = 15.0


class OrchestratorError(VnfkitError):
    """A request refused; ``code`` is the gRPC status name it maps to."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


class AgentClient(Protocol):
    """What the orchestrator asks of a host's agent (or of a child orchestrator)."""

    def prepare(self, service: str, generation: int, plan: HostPlan) -> None: ...
    def commit(self, service: str, generation: int) -> None: ...
    def abort(self, service: str, generation: int) -> None: ...
    def cleanup(self) -> None: ...
    def remove(self, service: str) -> None: ...
    def close(self) -> None: ...


def wiring_of(capabilities: dict[str, Any]) -> HostWiring:
    """The host's interfaces as its agent reported them."""
    return HostWiring(None, tuple(capabilities.get("ingress", ())), tuple(capabilities.get("egress", ())),
                      capabilities.get("underlay") or None, capabilities.get("underlay_mac") or None,
                      capabilities.get("underlay_ip") or None)


@dataclass
class HostView:
    record: AgentRecord
    alive: bool

    @property
    def name(self) -> str:
        return self.record.host


@dataclass
class Counters:
    """The latest report of each host, and when it came."""

    reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    received: dict[str, float] = field(default_factory=dict)


class Orchestrator:
    def __init__(self, store: Store, connect: Callable[[AgentRecord], AgentClient], *,
                 placement: Placement = pack, drain: float = DRAIN_S,
                 heartbeat_timeout: float = HEARTBEAT_TIMEOUT_S) -> None:
        self.store = store
        self.connect = connect
        self.placement = placement
        self.drain = drain
        self.heartbeat_timeout = heartbeat_timeout
        self.counters = Counters()
        self._lock = threading.RLock()  # one deploy / undeploy at a time
        self._clients: dict[str, tuple[str, AgentClient]] = {}

    # ---- agents ----------------------------------------------------------------------------
    def register(self, host: str, address: str, capabilities: dict[str, Any]) -> None:
        if not host:
            raise OrchestratorError("INVALID_ARGUMENT", "register: the host name is empty")
        self.store.put_agent(host, address, capabilities)
        with self._lock:
            old = self._clients.pop(host, None)
        if old is not None:
            old[1].close()
        log.info("agent registered host=%s address=%s", host, address)

    def heartbeat(self, host: str) -> bool:
        """False if the host is unknown (the agent then registers again)."""
        return self.store.touch_agent(host)

    def hosts(self) -> list[HostView]:
        now = time.time()
        return [HostView(a, now - a.last_seen <= self.heartbeat_timeout) for a in self.store.agents()]

    def client(self, host: str) -> AgentClient:
        rec = next((a for a in self.store.agents() if a.host == host), None)
        if rec is None:
            raise OrchestratorError("FAILED_PRECONDITION", f"host {host!r} is not registered")
        with self._lock:
            have = self._clients.get(host)
            if have is None or have[0] != rec.address:
                if have is not None:
                    have[1].close()
                have = (rec.address, self.connect(rec))
                self._clients[host] = have
            return have[1]

    # ---- services --------------------------------------------------------------------------
    def used(self, exclude: str = "", *, delegated: bool = True) -> dict[str, list[float]]:
        """Per host, [cpus, memory MB] taken by deployed services other than ``exclude`` (and,
        with ``delegated``, by the parts of a parent's services this domain runs)."""
        used: dict[str, list[float]] = {}
        for rec in self.store.services():
            if rec.name == exclude or rec.state not in ("deployed", "deploying"):
                continue
            try:
                svc = load_service(rec.source)
            except DescriptorError:
                continue
            for host, (c, m) in capacity_used(svc, rec.placement).items():
                u = used.setdefault(host, [0.0, 0])
                u[0] += c
                u[1] += m
        for d in self.store.delegated() if delegated else ():
            if d.name == exclude:
                continue
            for host, (c, m) in d.usage.items():
                u = used.setdefault(host, [0.0, 0])
                u[0] += c
                u[1] += m
        return used

    def offers(self, exclude: str) -> list[HostOffer]:
        used = self.used(exclude)
        offers = []
        for h in self.hosts():
            if not h.alive:
                continue
            cap = h.record.capabilities
            u = used.get(h.name, [0.0, 0])
            offers.append(HostOffer(h.name, float(cap.get("cpus", 4)), int(cap.get("memory_mb", 4096)),
                                    frozenset(cap.get("vnfs", ())), bool(cap.get("ingress")), bool(cap.get("egress")),
                                    u[0], int(u[1])))
        return offers

    def plan(self, source: str | Path) -> tuple[Any, dict[str, str], Any, dict[str, HostPlan]]:
        """Check, place and compile a service without touching any host: (service, placement,
        compiled, plans). OrchestratorError (INVALID_ARGUMENT / FAILED_PRECONDITION) says why not."""
        try:
            service = load_service(source)
        except DescriptorError as exc:
            raise OrchestratorError("INVALID_ARGUMENT", str(exc)) from exc
        try:
            placement = self.placement(service, self.offers(service.name))
        except PlacementError as exc:
            raise OrchestratorError("FAILED_PRECONDITION", str(exc)) from exc
        reserved = {spi for rec in self.store.services() if rec.name != service.name or rec.state == "deployed"
                    for spi in rec.spis}
        reserved |= {spi for d in self.store.delegated() for spi in d.spis}  # a parent's, on our hosts
        first = max(reserved, default=0) + 1
        try:
            compiled = compile_paths(service, placement, first_spi=first, reserved_spis=reserved)
        except CompileError as exc:
            raise OrchestratorError("FAILED_PRECONDITION", str(exc)) from exc
        agents = {a.host: a for a in self.store.agents()}
        wiring = {h: wiring_of(agents[h].capabilities) for h in set(placement.values())}
        try:
            plans = host_plans(compiled, service, wiring)
        except VnfkitError as exc:
            raise OrchestratorError("FAILED_PRECONDITION", str(exc)) from exc
        return service, placement, compiled, plans

    def deploy(self, source: str | Path, *, update: bool = False) -> ServiceRecord:
        """Deploy (or, with ``update``, replace) the service in ``source``; see the module doc."""
        with self._lock:
            service, placement, compiled, plans = self.plan(source)
            old = self.store.service(service.name)
            if self.store.delegated_service(service.name) is not None:
                raise OrchestratorError("ALREADY_EXISTS", f"service {service.name!r} runs in this domain for the "
                                        "parent orchestrator; a service of this domain's own needs another name")
            if old is not None and not update:
                raise OrchestratorError("ALREADY_EXISTS", f"service {service.name!r} is already deployed "
                                        f"(generation {old.generation}); update it or undeploy it first")
            if old is None and update:
                raise OrchestratorError("NOT_FOUND", f"service {service.name!r} is not deployed")
            generation = (old.generation + 1) if old else 1
            rec = ServiceRecord(service.name, str(Path(source).resolve()), generation, placement,
                                sorted(p.spi for p in compiled.paths), sorted(plans), "deploying")
            if old is not None:
                # Hosts the old generation used and the new one does not get an empty segment.
                for h in old.hosts:
                    if h not in plans:
                        plans[h] = HostPlan(h)
                rec.hosts = sorted(plans)
            rec.plans = {h: p.to_dict() for h, p in plans.items()}
            self.store.put_service(rec)
            self._two_phase(service.name, generation, plans, old)
            rec.state = "deployed"
            self.store.put_service(rec)
            log.info("deployed service=%s generation=%d hosts=%s", service.name, generation, ",".join(rec.hosts))
            return rec

    def _two_phase(self, name: str, generation: int, plans: dict[str, HostPlan], old: ServiceRecord | None) -> None:
        try:
            self.prepare_hosts(name, generation, plans)
        except OrchestratorError:
            if old is None:
                self.store.delete_service(name)
            else:
                self.store.put_service(old)
            raise
        committed: list[str] = []
        try:
            self.commit_hosts(name, generation, plans, committed)
        except Exception as exc:  # noqa: BLE001 - an agent died or refused between the phases
            order = self.commit_order(plans)
            failed = order[len(committed)]
            self._undo_commits(name, generation, order, committed, failed, old)
            raise OrchestratorError("ABORTED", f"deploy of {name!r} generation {generation} rolled back: "
                                    f"host {failed}: commit failed: {exc}") from exc
        time.sleep(self.drain)
        self.cleanup_hosts(plans)

    def _undo_commits(self, name: str, generation: int, order: list[str], committed: list[str], failed: str,
                      old: ServiceRecord | None) -> None:
        """A commit failed on ``failed`` after ``committed`` switched: put every host back as it
        was. Hosts not yet switched abort; switched hosts lose the service, or (an update) get
        the old plan again as generation + 1, since agents refuse a generation older than theirs."""
        for host in order[order.index(failed):]:
            try:
                self.client(host).abort(name, generation)
            except Exception as exc:  # noqa: BLE001 - a dead agent restarts on its old desired state
                log.warning("abort after a failed commit failed host=%s error=%s", host, exc)
        back = generation + 1
        for host in committed:
            try:
                if old is None or host not in old.plans:
                    self.client(host).remove(name)
                else:
                    # The agent first clears the old generation's state, kept for the drain, since
                    # the old plan reuses its SPIs: until the commit below, packets of the old
                    # generation that reach this host are dropped, a failure path's cost.
                    self.client(host).prepare(name, back, HostPlan.from_dict(old.plans[host]))
                    self.client(host).commit(name, back)
            except Exception as exc:  # noqa: BLE001 - said, and kept in the record
                log.error("rollback failed host=%s service=%s error=%s", host, name, exc)
                if old is not None:
                    old.error = f"rollback of generation {generation} failed on host {host}: {exc}"
        if old is None:
            self.store.delete_service(name)
        else:
            old.generation = back  # what the rolled-back hosts now hold; the next deploy goes past it
            self.store.put_service(old)


    def prepare_hosts(self, name: str, generation: int, plans: dict[str, HostPlan]) -> None:
        """Phase 1 on every host of ``plans``, in parallel. If any host fails, abort those that
        prepared, so every host is as before, and raise OrchestratorError(ABORTED) naming each
        failed host and why."""
        prepared: list[str] = []
        failures: dict[str, str] = {}
        # Every client first (a host not registered fails before any host is prepared), here
        # under the caller's lock: the pool's threads would wait on it.
        clients = {h: self.client(h) for h in plans}
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(plans))) as pool:
            futures = {pool.submit(clients[h].prepare, name, generation, p): h for h, p in plans.items()}
            for fut in concurrent.futures.as_completed(futures):
                host = futures[fut]
                try:
                    fut.result()
                    prepared.append(host)
                except Exception as exc:  # noqa: BLE001 - every host's failure is reported
                    failures[host] = str(exc)
        if failures:
            for host, error in self.abort_hosts(name, generation, prepared).items():
                failures[host] = f"(prepared, then abort failed: {error})"
            why = "; ".join(f"host {h}: {m}" for h, m in sorted(failures.items()))
            raise OrchestratorError("ABORTED", f"deploy of {name!r} generation {generation} rolled back: {why}")

    @staticmethod
    def commit_order(plans: dict[str, HostPlan]) -> list[str]:
        """Downstream first: a classifier switches traffic only once every later hop is live."""
        return sorted(plans, key=lambda h: bool(plans[h].rules))

    def commit_hosts(self, name: str, generation: int, plans: dict[str, HostPlan],
                     committed: list[str] | None = None) -> None:
        """Phase 2, in ``commit_order``; ``committed`` collects the hosts that switched, for a
        caller that must undo them when a later one fails."""
        for host in self.commit_order(plans):
            self.client(host).commit(name, generation)
            if committed is not None:
                committed.append(host)

    def abort_hosts(self, name: str, generation: int, hosts: Iterable[str]) -> dict[str, str]:
        """Undo a prepare on ``hosts``; the failures by host (an abort that fails leaves that
        host's prepared change waiting, which blocks its next change: say so)."""
        errors = {}
        for host in hosts:
            try:
                self.client(host).abort(name, generation)
            except Exception as exc:  # noqa: BLE001 - try every host
                errors[host] = str(exc)
        return errors

    def cleanup_hosts(self, hosts: Iterable[str]) -> None:
        """Phase 3, after the drain."""
        for host in sorted(hosts):
            try:
                self.client(host).cleanup()
            except Exception as exc:  # noqa: BLE001 - old state left behind is harmless; say so
                log.warning("cleanup failed host=%s error=%s", host, exc)

    def undeploy(self, name: str) -> None:
        with self._lock:
            rec = self.store.service(name)
            if rec is None:
                known = ", ".join(r.name for r in self.store.services()) or "none"
                raise OrchestratorError("NOT_FOUND", f"no service {name!r} is deployed (deployed: {known})")
            rec.state = "removing"
            self.store.put_service(rec)
            errors = []
            for host in rec.hosts:
                try:
                    self.client(host).remove(name)
                except Exception as exc:  # noqa: BLE001
                    errors.append(f"host {host}: {exc}")
            if errors:
                rec.state, rec.error = "failed", "; ".join(errors)
                self.store.put_service(rec)
                raise OrchestratorError("UNAVAILABLE", f"undeploy of {name!r} incomplete: {rec.error}")
            self.store.delete_service(name)
            log.info("undeployed service=%s", name)

    def services(self) -> list[ServiceRecord]:
        return self.store.services()

    # ---- counters --------------------------------------------------------------------------
    def report(self, host: str, report: dict[str, Any]) -> None:
        self.counters.reports[host] = report
        self.counters.received[host] = time.time()

    def service_counters(self, name: str | None = None) -> dict[str, Any]:
        """Per service: its functions' counters (from the host each runs on), its paths'
        packets (at each path's first hop) and hops, from the latest reports."""
        out: dict[str, Any] = {}
        for rec in [*self.store.services(), *self.store.delegated()]:  # own, and a parent's parts
            if name is not None and rec.name != name:
                continue
            functions: dict[str, Any] = {}
            paths: dict[str, int] = {}
            hops: dict[str, int] = {}
            for host in rec.hosts:
                r = self.counters.reports.get(host, {})
                for fid, c in r.get("functions", {}).items():
                    svc, _, local = fid.partition("/")
                    if svc == rec.name:
                        functions[local] = {"host": host, **c}
                for path, n in r.get("paths", {}).items():
                    svc, _, local = path.partition("/")
                    if svc == rec.name:
                        paths[local] = max(paths.get(local, 0), n)
                for key, n in r.get("hops", {}).items():
                    spi = int(key.split(":")[0])
                    if spi in rec.spis:
                        hops[f"{host}:{key}"] = n
            out[rec.name] = {"generation": rec.generation, "state": rec.state, "functions": functions,
                             "paths": paths, "hops": hops}
        return out
