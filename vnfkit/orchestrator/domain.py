"""An orchestrator as one host of a parent orchestrator: SONATA's recursive orchestration.

The orchestrator serves the ``Agent`` service too (``server.py``), so a parent can treat a
whole domain as one host. Started with ``--parent ADDR --domain NAME`` it registers with the
parent's Orchestrator service as host NAME, heartbeats, and streams counters, exactly as an
agent does (``vnfkit.agent.report.Reporter``: the same backoff, the same re-registration).

What the domain advertises, from its live hosts (``Domain.capabilities``):

* the VNFs any of them can run (the union), and their cpus and memory summed, less what the
  domain's own services take (the parent accounts for what it places itself);
* a wiring taken from single hosts, because a path segment starts and ends on one host: the
  **gateway**'s underlay (``--gateway``, else the first host by name that does not face
  servers), where every NSH from the parent arrives; the client-facing interfaces of one
  host, and the server-facing interfaces of one host. Names are qualified ``host/ifname``
  (``chaining.plan.qualify``), so names that repeat across hosts stay apart and the domain
  maps the parent's plan back to its hosts without asking.

On ``Prepare`` the parent's segment is checked as an agent checks it, placed on the domain's
hosts by the orchestrator's placement plug-in, the functions the wiring fixes pinned first
(``chaining.plan.domain_pins``), cut into one plan per host keeping the parent's SPIs and
SIs (``chaining.plan.split_plan``), and prepared on every host; a failure aborts the hosts
that prepared and names the one that failed. Commit, Abort, Cleanup and Remove go to the
hosts the part is on. What the parent asked is recorded (``Store.put_delegated``) before it
is committed, so a restarted domain still knows where its parts are.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chaining.local import MAX_FUNCTIONS, MAX_LOCAL_HOPS, ChainError
from chaining.plan import HostPlan, Pin, domain_pins, qualify, split_plan
from chaining.service import Function, Service, ServicePath
from datapath.errors import VnfkitError
from vnfkit.agent.convert import digest, plan_from_segment, reconfigured
from vnfkit.agent.errors import AgentError
from vnfkit.orchestrator.core import Orchestrator, OrchestratorError, wiring_of
from vnfkit.orchestrator.placement import HostOffer, Placement, PlacementError, needs
from vnfkit.orchestrator.store import DelegatedRecord
from vnfkit.proto import load

pb, _ = load()
log = logging.getLogger("vnfkit.orchestrator.domain")
VNFS_DIR = Path(__file__).resolve().parents[2] / "vnfs"
VERSION = "orchestrator 0.1.0"


def place_in_domain(plan: HostPlan, offers: list[HostOffer], placement: Placement,
                    pins: Mapping[str, Pin]) -> dict[str, str]:
    """Every function of ``plan`` on a host of ``offers``: the pinned ones where the wiring
    says (their room taken first), the others by the placement plug-in, given the plan's
    segments as paths with the pinned hops left out. PlacementError lists what cannot go."""
    reasons: list[str] = []
    by_name = {o.name: o for o in offers}
    used = {o.name: [o.used_cpus, o.used_memory_mb] for o in offers}
    placed: dict[str, str] = {}
    for f in plan.functions:
        pin = pins.get(f.id)
        if pin is None:
            continue
        offer = by_name.get(pin.host)
        vnf = Path(f.folder).name
        if offer is None:
            reasons.append(f"function {f.id!r} must run on {pin.host!r} ({pin.why}), which is not alive")
            continue
        if not offer.supports(vnf):
            reasons.append(f"function {f.id!r} must run on {pin.host!r} ({pin.why}), which does not offer VNF {vnf!r}")
            continue
        c, m = needs(f.folder)
        u = used[pin.host]
        if u[0] + c > offer.cpus + 1e-9 or u[1] + m > offer.memory_mb:
            reasons.append(f"function {f.id!r} must run on {pin.host!r} ({pin.why}), which has no room left for "
                           f"{c:g} cpu / {m} MB")
            continue
        u[0] += c
        u[1] += m
        placed[f.id] = pin.host
    rest = [f for f in plan.functions if f.id not in pins]
    if rest and not reasons:
        free = {f.id for f in rest}
        functions = [Function(f.id, f.id, Path(f.folder).name, Path(f.folder), dict(f.config), "parent", f.control)
                     for f in rest]
        paths = [ServicePath(f"{p.path or p.spi}@{p.first_si}", [fid for fid in p.functions if fid in free])
                 for p in plan.paths]
        service = Service(plan.host, "parent", "0", "a parent's part", functions, [p for p in paths if p.hops],
                          [], "parent")
        gateway = plan.underlay.split("/", 1)[0] if plan.underlay else None
        # The gateway counts as facing clients: the parent's traffic comes in there.
        room = [HostOffer(o.name, o.cpus, o.memory_mb, o.vnfs, o.ingress or o.name == gateway, o.egress,
                          used[o.name][0], int(used[o.name][1])) for o in offers]
        try:
            placed.update(placement(service, room))
        except PlacementError as exc:
            reasons += exc.reasons
    if reasons:
        raise PlacementError(reasons)
    return placed


@dataclass
class _Prepared:
    rec: DelegatedRecord
    plans: dict[str, HostPlan]


def _epoch(parts: Mapping[str, int]) -> int:
    """One reset epoch for counters summed over hosts: it changes when any host's does."""
    text = ",".join(f"{h}={e}" for h, e in sorted(parts.items()))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


class Domain:
    """The Agent service's work for an orchestrator that is a parent's host (module doc)."""

    def __init__(self, orch: Orchestrator, name: str, *, gateway: str | None = None,
                 vnfs_dir: Path = VNFS_DIR) -> None:
        self.orch = orch
        self.name = name
        self.gateway_host = gateway
        self.vnfs_dir = vnfs_dir
        self._prepared: dict[str, _Prepared] = {}
        self._to_clean: set[str] = set()

    @property
    def lock(self) -> threading.RLock:
        return self.orch._lock  # noqa: SLF001 - one change at a time, the domain's own deploys included

    # ---- what the parent sees -------------------------------------------------------------------
    def live(self) -> dict[str, dict[str, Any]]:
        """Capabilities of the domain's live hosts, by name."""
        return {h.name: h.record.capabilities for h in self.orch.hosts() if h.alive}

    def gateway(self, live: Mapping[str, dict[str, Any]]) -> str | None:
        """Where NSH from the parent arrives: ``--gateway`` if alive, else the first host by
        name with an underlay that does not face servers (so a chain entering the domain can
        spread before it reaches the servers' host), else the first with an underlay."""
        if self.gateway_host in live and live[self.gateway_host].get("underlay"):
            return self.gateway_host
        hosts = sorted((bool(c.get("egress")), h) for h, c in live.items() if c.get("underlay"))
        return hosts[0][1] if hosts else None

    @staticmethod
    def facing(live: Mapping[str, dict[str, Any]], side: str) -> str | None:
        """The one host whose ``side`` ("ingress" or "egress") interfaces the domain advertises."""
        return next((h for h in sorted(live) if live[h].get(side)), None)

    def capabilities(self) -> Any:
        """HostCapabilities of the whole domain, as its parent places and plans by them (module doc)."""
        live = self.live()
        problems = [] if live else ["no host of the domain is alive"]
        # The parent accounts for what it places itself; the domain's own services it cannot see.
        own = self.orch.used(delegated=False)
        own_cpus = sum(own.get(h, [0.0, 0])[0] for h in live)
        own_mem = int(sum(own.get(h, [0.0, 0])[1] for h in live))
        gw = self.gateway(live)
        ingress, egress = self.facing(live, "ingress"), self.facing(live, "egress")
        interfaces = []
        underlay = ""
        if gw is not None:
            underlay = qualify(gw, live[gw]["underlay"])
            ip = live[gw].get("underlay_ip") or ""
            interfaces.append(pb.Interface(name=underlay, mac=live[gw].get("underlay_mac") or "",
                                           addresses=[f"{ip}/32"] if ip else []))
        return pb.HostCapabilities(
            host=self.name, agent_version=VERSION,
            kernel=", ".join(sorted({c.get("kernel", "") for c in live.values()})),
            root=True, bpffs=True, btf=True, interfaces=interfaces,
            vnfs=sorted({v for c in live.values() for v in c.get("vnfs", ())}),
            encaps=[pb.ENCAP_ETH, pb.ENCAP_VXLAN_GPE], max_functions=MAX_FUNCTIONS * max(1, len(live)),
            max_local_hops=MAX_LOCAL_HOPS,
            problems=problems + [f"{h}: {p}" for h, c in sorted(live.items()) for p in c.get("problems", ())],
            ingress=[qualify(ingress, i) for i in live[ingress]["ingress"]] if ingress else [],
            egress=[qualify(egress, i) for i in live[egress]["egress"]] if egress else [],
            underlay=underlay, cpus=max(0, int(sum(float(c.get("cpus", 4)) for c in live.values()) - own_cpus)),
            memory_mb=max(0, sum(int(c.get("memory_mb", 4096)) for c in live.values()) - own_mem))

    # ---- the Agent service's work ---------------------------------------------------------------
    def prepare(self, seg: Any) -> bool:
        """Split the parent's segment over the domain's hosts and prepare it on each (module
        doc); False if this generation runs here already."""
        with self.lock:
            if self._prepared:
                p = next(iter(self._prepared.values())).rec
                raise OrchestratorError("FAILED_PRECONDITION", f"domain {self.name}: service {p.name!r} generation "
                                        f"{p.generation} is prepared and waits for Commit or Abort")
            try:
                plan = plan_from_segment(seg, self.name, self.vnfs_dir)
            except AgentError as exc:
                raise OrchestratorError(exc.code, f"domain {self.name}: {exc}") from exc
            old = self.orch.store.delegated_service(seg.service)
            if old is not None:
                if seg.generation < old.generation:
                    raise OrchestratorError("FAILED_PRECONDITION", f"domain {self.name}: service {seg.service!r}: "
                                            f"generation {seg.generation} is older than {old.generation}, which runs")
                if seg.generation == old.generation:
                    if digest(seg) != old.digest:
                        raise OrchestratorError("ALREADY_EXISTS", f"domain {self.name}: service {seg.service!r}: "
                                                f"generation {seg.generation} runs already with other content")
                    return False
            if self.orch.store.service(seg.service) is not None:
                raise OrchestratorError("FAILED_PRECONDITION", f"domain {self.name}: a service of the domain's own "
                                        f"is named {seg.service!r}")
            spis = sorted({p.spi for p in plan.paths})
            own = {spi for r in self.orch.store.services() for spi in r.spis}
            if own & set(spis):
                raise OrchestratorError("FAILED_PRECONDITION", f"domain {self.name}: SPI(s) "
                                        f"{sorted(own & set(spis))} are held by the domain's own services")
            plans, placement = self._split(plan, seg.service)
            if old is not None:  # hosts the old generation used and this one does not: an empty part
                for h in old.hosts:
                    plans.setdefault(h, HostPlan(h))
            usage: dict[str, list[float]] = {}
            for f in plan.functions:
                c, m = needs(f.folder)
                u = usage.setdefault(placement[f.id], [0.0, 0])
                u[0] += c
                u[1] += m
            rec = DelegatedRecord(seg.service, seg.generation, digest(seg), seg.SerializeToString(deterministic=True),
                                  placement, sorted(plans), spis, usage)
            try:
                self.orch.prepare_hosts(seg.service, seg.generation, plans)
            except OrchestratorError as exc:
                raise OrchestratorError(exc.code, f"domain {self.name}: {exc}") from exc
            self._prepared[seg.service] = _Prepared(rec, plans)
            log.info("prepared service=%s generation=%d placement=%s", seg.service, seg.generation, placement)
            return True

    def _split(self, plan: HostPlan, service: str) -> tuple[dict[str, HostPlan], dict[str, str]]:
        live = self.live()
        wiring = {h: wiring_of(c) for h, c in live.items()}
        egress = self.facing(live, "egress")
        try:
            pins = domain_pins(plan, wiring, egress_host=egress)
            placement = place_in_domain(plan, self.orch.offers(exclude=service), self.orch.placement, pins)
            return split_plan(plan, placement, wiring, egress_host=egress), placement
        except (ChainError, PlacementError) as exc:
            raise OrchestratorError("FAILED_PRECONDITION", f"domain {self.name} cannot run its part of service "
                                    f"{service!r} (live hosts: {', '.join(sorted(live)) or 'none'}): {exc}") from exc

    def commit(self, service: str, generation: int) -> None:
        with self.lock:
            p = self._prepared.get(service)
            if p is None or p.rec.generation != generation:
                row = self.orch.store.delegated_service(service)
                if p is None and row is not None and row.generation == generation:
                    return  # committed already: a retried Commit
                raise OrchestratorError("FAILED_PRECONDITION", f"domain {self.name}: nothing prepared for service "
                                        f"{service!r} generation {generation}")
            self.orch.store.put_delegated(p.rec)  # desired, before anything switches
            del self._prepared[service]
            self._to_clean.update(p.plans)
            self.orch.commit_hosts(service, generation, p.plans)
            log.info("committed service=%s generation=%d hosts=%s", service, generation, ",".join(p.plans))

    def abort(self, service: str, generation: int) -> None:
        with self.lock:
            p = self._prepared.get(service)
            if p is None or p.rec.generation != generation:
                return
            del self._prepared[service]
            errors = self.orch.abort_hosts(service, generation, sorted(p.plans))
            if errors:
                raise OrchestratorError("UNAVAILABLE", f"domain {self.name}: " + "; ".join(
                    f"host {h}: abort failed: {e}" for h, e in sorted(errors.items())))

    def cleanup(self) -> None:
        with self.lock:
            hosts, self._to_clean = self._to_clean, set()
            self.orch.cleanup_hosts(hosts)

    def apply(self, seg: Any) -> bool:
        """All phases in one call."""
        with self.lock:
            if not self.prepare(seg):
                return False
            self.commit(seg.service, seg.generation)
            time.sleep(self.orch.drain)
            self.cleanup()
            return True

    def remove(self, service: str) -> bool:
        with self.lock:
            if self._prepared:
                raise OrchestratorError("FAILED_PRECONDITION", f"domain {self.name}: a prepared change waits for "
                                        "Commit or Abort")
            rec = self.orch.store.delegated_service(service)
            if rec is None:
                return False
            errors = []
            for host in rec.hosts:
                try:
                    self.orch.client(host).remove(service)
                except Exception as exc:  # noqa: BLE001 - try every host, then say which failed
                    errors.append(f"host {host}: {exc}")
            if errors:
                raise OrchestratorError("UNAVAILABLE", f"domain {self.name}: remove of {service!r} incomplete: "
                                        + "; ".join(errors))
            self.orch.store.delete_delegated(service)
            log.info("removed service=%s hosts=%s", service, ",".join(rec.hosts))
            return True

    def configure(self, service: str, generation: int, function: str, config: Any, control: Any | None) -> bool:
        """A new generation of the part with one function's config (and control) replaced."""
        with self.lock:
            rec = self.orch.store.delegated_service(service)
            if rec is None:
                raise OrchestratorError("NOT_FOUND", f"domain {self.name}: no service {service!r}")
            try:
                seg = reconfigured(rec.segment, generation, function, config, control)
            except KeyError as exc:
                raise OrchestratorError("NOT_FOUND", f"domain {self.name}: {exc.args[0]}") from exc
            return self.apply(seg)

    # ---- reading --------------------------------------------------------------------------------
    def state(self) -> Any:
        """The parent's parts as the parent asked for them (the hosts' own state is theirs to tell)."""
        st = pb.State(host=self.name)
        for rec in self.orch.store.delegated():
            seg = pb.Segment.FromString(rec.segment)
            st.services.add(service=rec.name, generation=rec.generation, phase=pb.PHASE_APPLIED, segment=seg)
            for p in seg.paths:
                st.paths.add(service=rec.name, path=p.path, spi=p.spi, first_si=p.first_si, functions=p.functions,
                             end=p.end, next_host=p.next_host)
        for p in list(self._prepared.values()):
            st.services.add(service=p.rec.name, generation=p.rec.generation, phase=pb.PHASE_PREPARED,
                            segment=pb.Segment.FromString(p.rec.segment))
        for h in self.orch.hosts():
            if not h.alive:
                st.problems.append(f"host {h.name} has not been heard from for more than "
                                   f"{self.orch.heartbeat_timeout:g} s")
        return st

    def counters(self, service: str = "") -> Any:
        """The parent's parts' counters from the hosts' latest reports: each function from the
        host it runs on; hops and paths as the largest count any host gives (a hop at a cut
        between two hosts is counted on both sides); the hosts' own counters summed."""
        reports = self.orch.counters.reports
        out = pb.Counters(host=self.name, timestamp_ns=time.monotonic_ns())
        epochs: dict[str, int] = {}
        hops: dict[tuple[int, int], int] = {}
        paths: dict[tuple[str, str], int] = {}
        hosts: set[str] = set()
        for rec in self.orch.store.delegated():
            if service not in ("", rec.name):
                continue
            for host in rec.hosts:
                r = reports.get(host)
                if r is None:
                    continue
                hosts.add(host)
                epochs[host] = int(r.get("reset_epoch", 0))
                for fid, counters in r.get("functions", {}).items():
                    svc, _, local = fid.partition("/")
                    if svc == rec.name:
                        fc = out.functions.add(service=svc, function=local)
                        for cname, (packets, nbytes) in counters.items():
                            fc.counters[cname].packets = packets
                            fc.counters[cname].bytes = nbytes
                for key, n in r.get("hops", {}).items():
                    spi, si = (int(x) for x in key.split(":"))
                    if spi in rec.spis:
                        hops[(spi, si)] = max(hops.get((spi, si), 0), n)
                for name, n in r.get("paths", {}).items():
                    svc, _, path = name.partition("/")
                    if svc == rec.name:
                        paths[(svc, path)] = max(paths.get((svc, path), 0), n)
        for (spi, si), n in sorted(hops.items()):
            out.hops.add(spi=spi, si=si, packets=n)
        for (svc, path), n in sorted(paths.items()):
            out.paths.add(service=svc, path=path, packets=n)
        if not service:
            total: dict[str, int] = {}
            for host in hosts:
                for k, v in reports[host].get("host", {}).items():
                    total[k] = total.get(k, 0) + int(v)
            for k, v in total.items():
                out.host_counters[k] = v
        out.reset_epoch = _epoch(epochs)
        return out


class CapabilityWatch:
    """Starts reporting to the parent once the domain has a live host, and registers again
    whenever what it advertises changes (a host came or went, the gateway moved)."""

    def __init__(self, domain: Domain, start: Callable[[], None], refresh: Callable[[], None],
                 interval: float) -> None:
        self.domain, self.start, self.refresh, self.interval = domain, start, refresh, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vnfkit-domain-watch", daemon=True)
        self.advertised: bytes | None = None

    def begin(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while True:
            try:
                caps = self.domain.capabilities()
                if self.domain.live():
                    now = caps.SerializeToString(deterministic=True)
                    if self.advertised is None:
                        self.start()
                    elif now != self.advertised:
                        log.info("capabilities changed; registering again with the parent")
                        self.refresh()
                    self.advertised = now
            except VnfkitError as exc:
                log.warning("domain capabilities: %s", exc)
            except Exception:  # noqa: BLE001 - a bug here must not end the watch
                log.exception("domain capabilities failed")
            if self._stop.wait(self.interval):
                return
