"""The agent's logic, without gRPC: segments in, desired state on disk, the kernel made to match.

``HostAgent`` keeps one segment per service (``store``), merges them into the host's plan
(``chaining.plan.merge_plans``) and applies it with a pinned ``HostDataPath``. Every request is
checked completely before anything is written or touched; the desired state is written before
the agent acts; a refusal (``AgentError``) leaves the data path and the desired state as they
were. At start the agent adopts the data path its predecessor left pinned (or builds one) and
brings it to the desired state.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from pathlib import Path
from typing import Any

from chaining.host import ApplyError, HostDataPath
from chaining.local import ChainError
from chaining.plan import HostPlan, PathSpec, merge_plans
from datapath.netns import ifindex
from datapath.pins import PinGroup, ensure_bpffs
from vnfkit.agent.convert import digest, plan_from_segment, reconfigured
from vnfkit.agent.errors import ALREADY_EXISTS, FAILED_PRECONDITION, INVALID_ARGUMENT, NOT_FOUND, AgentError
from vnfkit.agent.logs import event
from vnfkit.agent.store import Store, Stored, StoreError
from vnfkit.control import ControlError
from vnfkit.descriptor import DescriptorError
from vnfkit.proto import load

pb, _ = load()
log = logging.getLogger("vnfkit.agent")
APPLIED, PENDING, FAILED = "applied", "pending", "failed"


@dataclasses.dataclass
class _Prepared:
    row: Stored              # what Commit records
    plan: HostPlan           # the merged plan prepared


def _service_of(p: PathSpec) -> str:
    return (p.path or (p.functions[0] if p.functions else "")).split("/", 1)[0]


def _status(exc: ApplyError) -> str:
    """A refused plan's status: the request's fault (a VNF refusing its settings) or the host's."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ControlError | DescriptorError):
            return INVALID_ARGUMENT
        cause = cause.__cause__
    return FAILED_PRECONDITION


class HostAgent:
    """``agent = HostAgent(name, state_dir, pin_group, vnfs_dir); agent.start(); agent.apply(segment)``."""

    def __init__(self, name: str, state_dir: Path, pin_group: str, vnfs_dir: Path, *, drain: float = 0.05) -> None:
        self.name = name
        self.vnfs_dir = vnfs_dir
        self.drain = drain
        self.store = Store(state_dir / "agent.db")
        self.pins = PinGroup(pin_group)
        self.lock = threading.RLock()
        self.dp: HostDataPath | None = None
        self.prepared: _Prepared | None = None
        self.repairs: list[str] = []
        self.problems: list[str] = []
        self.adopted = False
        self.reset_epoch = 0
        self._plans: dict[str, tuple[str, HostPlan]] = {}  # service -> (digest, plan), parsed rows

    # ---- start and stop ---------------------------------------------------------------------
    def start(self) -> None:
        """Adopt the pinned data path (or build one) and bring it to the desired state."""
        ensure_bpffs()
        with self.lock:
            snapshot = self.store.snapshot()
            if snapshot is not None and self.pins.has_object("sff"):
                self.dp, self.repairs, self.problems = HostDataPath.adopt(self.pins, snapshot, drain=self.drain)
                self.adopted = True
                event(log, "adopted", group=self.pins.name, repairs=self.repairs, problems=self.problems)
            else:
                if self.pins.exists():
                    self.pins.remove()
                    self.repairs.append(f"{self.pins.path} held pins but no snapshot recorded them: removed")
                self.dp = HostDataPath(drain=self.drain, pins=self.pins)
                event(log, "data path created", group=self.pins.name)
            for msg in self.repairs:
                event(log, "repaired", level=logging.WARNING, what=msg)
            for msg in self.problems:
                event(log, "problem", level=logging.ERROR, what=msg)
            self._reset_epoch()
            self._reconcile()

    def _reset_epoch(self) -> None:
        """Counters restart from 0 with a new data path; the epoch says which one they count in."""
        assert self.dp is not None
        map_id = str(self.dp.chain.sff.map("sff_counters").id)
        epoch = self.store.get("reset_epoch")
        if self.adopted and epoch and self.store.get("counters_map") == map_id:
            self.reset_epoch = int(epoch)
            return
        self.reset_epoch = time.time_ns()
        try:
            self.store.set(reset_epoch=str(self.reset_epoch), counters_map=map_id)
        except StoreError as exc:
            self.problems.append(str(exc))

    def _reconcile(self) -> None:
        """Apply the desired state if the data path differs from it: all services at once, or
        else one by one, those that fail marked so (they stay desired)."""
        assert self.dp is not None
        rows = self.store.segments()
        plans = {}
        for svc, row in rows.items():
            try:
                plans[svc] = self._plan_of(row)
            except AgentError as exc:
                self._mark(svc, FAILED, str(exc))
        if self._merge(plans) == self.dp.plan:
            for svc in plans:
                if rows[svc].phase != APPLIED:
                    self._mark(svc, APPLIED)
            return
        try:
            self._apply_plan(self._merge(plans))
            for svc in plans:
                self._mark(svc, APPLIED)
            return
        except AgentError as exc:
            event(log, "desired state refused as a whole; trying service by service", level=logging.WARNING,
                  error=str(exc))
        ok: dict[str, HostPlan] = {}
        for svc, plan in plans.items():
            try:
                self._apply_plan(self._merge({**ok, svc: plan}))
                ok[svc] = plan
                self._mark(svc, APPLIED)
            except AgentError as exc:
                self._mark(svc, FAILED, str(exc))
        if self._merge(ok) != self.dp.plan:
            try:
                self._apply_plan(self._merge(ok))
            except AgentError as exc:
                self.problems.append(f"could not reach the desired state: {exc}")

    def _mark(self, svc: str, phase: str, message: str = "") -> None:
        if phase == FAILED:
            event(log, "service failed", level=logging.ERROR, service=svc, error=message)
        try:
            self.store.set_phase(svc, phase, message)
        except StoreError as exc:
            self.problems.append(str(exc))

    def release(self) -> None:
        """Stop: close the store and let go of the data path, which runs on from its pins."""
        with self.lock:
            if self.dp is not None:
                self.dp.release()
                self.dp = None
            self.store.close()

    # ---- plans --------------------------------------------------------------------------------
    def _plan_of(self, row: Stored) -> HostPlan:
        cached = self._plans.get(row.service)
        if cached is None or cached[0] != row.digest:
            seg = pb.Segment.FromString(row.segment)
            cached = (row.digest, plan_from_segment(seg, self.name, self.vnfs_dir))
            self._plans[row.service] = cached
        return cached[1]

    def _merge(self, plans: dict[str, HostPlan]) -> HostPlan:
        if not plans:
            return HostPlan(host=self.name)
        try:
            return merge_plans(plans[s] for s in sorted(plans))
        except ChainError as exc:
            raise AgentError(FAILED_PRECONDITION, f"conflicts with another service on this host: {exc}") from exc

    def _desired_with(self, service: str, plan: HostPlan | None) -> HostPlan:
        """The host's merged plan with ``service``'s part replaced by ``plan`` (None: removed)."""
        plans = {s: self._plan_of(r) for s, r in self.store.segments().items()
                 if s != service and r.phase != FAILED}
        if plan is not None:
            plans[service] = plan
        return self._merge(plans)

    @staticmethod
    def _check_host(plan: HostPlan) -> None:
        problems = []
        names = {*plan.classify_on, *(i for r in plan.rules for i in r.interfaces)}
        if plan.underlay:
            names.add(plan.underlay)
        for name in sorted(names):
            try:
                ifindex(None, name)
            except LookupError:
                problems.append(f"this host has no interface {name!r}")
        if problems:
            raise AgentError(FAILED_PRECONDITION, f"segment of service refused: {'; '.join(problems)}")

    def _apply_plan(self, plan: HostPlan) -> None:
        """prepare, record the snapshot, commit, drain, clean up."""
        assert self.dp is not None
        try:
            self.dp.prepare(plan)
        except ApplyError as exc:
            raise AgentError(_status(exc), str(exc)) from exc
        try:
            self.store.put_snapshot(self.dp.snapshot())
        except StoreError:
            self.dp.abort()
            raise
        self.dp.commit()
        time.sleep(self.drain)
        self.dp.cleanup()

    def _check_request(self, seg: Any) -> tuple[HostPlan, Stored | None, bool]:
        """The segment's plan, the service's current row, and whether the request is already
        satisfied (same generation and content). Refuses what must be refused."""
        if self.prepared is not None:
            p = self.prepared.row
            raise AgentError(FAILED_PRECONDITION, f"service {p.service!r} generation {p.generation} is prepared "
                                                  "and waits for Commit or Abort")
        plan = plan_from_segment(seg, self.name, self.vnfs_dir)
        prev = self.store.segments().get(seg.service)
        if prev is not None:
            if seg.generation < prev.generation:
                raise AgentError(FAILED_PRECONDITION, f"service {seg.service!r}: generation {seg.generation} is older "
                                                      f"than generation {prev.generation}, which this host has")
            if seg.generation == prev.generation:
                if digest(seg) != prev.digest:
                    raise AgentError(ALREADY_EXISTS, f"service {seg.service!r}: generation {seg.generation} is here "
                                                     "already with other content; a change takes a new generation")
                if prev.phase == APPLIED:
                    return plan, prev, True
        self._check_host(plan)
        return plan, prev, False

    # ---- requests -----------------------------------------------------------------------------
    def apply(self, seg: Any) -> bool:
        """Make ``seg`` (one service's segment) run here; False if it already does."""
        with self.lock:
            plan, prev, done = self._check_request(seg)
            if done:
                return False
            merged = self._desired_with(seg.service, plan)
            row = Stored(seg.service, seg.generation, digest(seg), seg.SerializeToString(deterministic=True), PENDING)
            self.store.put(row)  # what was asked, on disk before acting
            try:
                self._apply_plan(merged)
            except BaseException as exc:
                self._restore(seg.service, prev)
                event(log, "apply refused", level=logging.WARNING, service=seg.service,
                      generation=seg.generation, error=str(exc))
                raise
            self._mark(seg.service, APPLIED)
            event(log, "applied", service=seg.service, generation=seg.generation)
            return True

    def _restore(self, service: str, prev: Stored | None) -> None:
        try:
            self.store.restore(service, prev)
        except StoreError as exc:
            self.problems.append(f"service {service!r}: the refused request stays in the desired state: {exc}")

    def prepare(self, seg: Any) -> bool:
        """Phase 1 of a change across hosts; False if this generation runs here already."""
        with self.lock:
            plan, _, done = self._check_request(seg)
            if done:
                return False
            merged = self._desired_with(seg.service, plan)
            assert self.dp is not None
            try:
                self.dp.prepare(merged)
            except ApplyError as exc:
                raise AgentError(_status(exc), str(exc)) from exc
            row = Stored(seg.service, seg.generation, digest(seg), seg.SerializeToString(deterministic=True), APPLIED)
            self.prepared = _Prepared(row, merged)
            event(log, "prepared", service=seg.service, generation=seg.generation)
            return True

    def commit(self, service: str, generation: int) -> None:
        """Phase 2: record the prepared segment as desired (and the snapshot), then switch."""
        with self.lock:
            p = self.prepared
            if p is None or (p.row.service, p.row.generation) != (service, generation):
                row = self.store.segments().get(service)
                if p is None and row is not None and row.generation == generation and row.phase == APPLIED:
                    return  # committed already: a retried Commit
                waiting = f" (prepared: {p.row.service!r} generation {p.row.generation})" if p else ""
                raise AgentError(FAILED_PRECONDITION,
                                 f"nothing prepared for service {service!r} generation {generation}{waiting}")
            assert self.dp is not None
            self.store.put(p.row, snapshot=self.dp.snapshot())
            self.dp.commit()
            self.prepared = None
            event(log, "committed", service=service, generation=generation)

    def abort(self, service: str, generation: int) -> None:
        """Undo a Prepare (nothing prepared for it: nothing to do)."""
        with self.lock:
            p = self.prepared
            if p is not None and (p.row.service, p.row.generation) == (service, generation):
                assert self.dp is not None
                self.dp.abort()
                self.prepared = None
                event(log, "aborted", service=service, generation=generation)

    def cleanup(self) -> None:
        """Phase 3, after the drain: remove what the committed state no longer has."""
        with self.lock:
            assert self.dp is not None
            self.dp.cleanup()

    def remove(self, service: str) -> bool:
        """Take ``service`` off this host; False if it was not here."""
        with self.lock:
            if self.prepared is not None:
                raise AgentError(FAILED_PRECONDITION, "a prepared change waits for Commit or Abort")
            prev = self.store.segments().get(service)
            if prev is None:
                return False
            merged = self._desired_with(service, None)
            self.store.delete(service)
            try:
                self._apply_plan(merged)
            except BaseException:
                self._restore(service, prev)
                raise
            self._plans.pop(service, None)
            event(log, "removed", service=service)
            return True

    def configure(self, service: str, generation: int, function: str, config: Any, control: Any | None) -> bool:
        """A new generation of ``service``'s segment with one function's config (and control)
        replaced; the function keeps running and is changed in place."""
        with self.lock:
            row = self.store.segments().get(service)
            if row is None:
                raise AgentError(NOT_FOUND, f"no service {service!r} on this host")
            try:
                seg = reconfigured(row.segment, generation, function, config, control)
            except KeyError as exc:
                raise AgentError(NOT_FOUND, exc.args[0]) from exc
            return self.apply(seg)

    # ---- reading ------------------------------------------------------------------------------
    def state(self) -> Any:
        with self.lock:
            assert self.dp is not None
            st = pb.State(host=self.name, problems=self.problems, repairs=self.repairs,
                          reset_epoch=self.reset_epoch, adopted=self.adopted)
            phases = {APPLIED: pb.PHASE_APPLIED, PENDING: pb.PHASE_APPLIED, FAILED: pb.PHASE_FAILED}
            for svc, row in self.store.segments().items():
                st.services.add(service=svc, generation=row.generation, phase=phases[row.phase],
                                message=row.message, segment=pb.Segment.FromString(row.segment))
            if self.prepared is not None:
                r = self.prepared.row
                st.services.add(service=r.service, generation=r.generation, phase=pb.PHASE_PREPARED,
                                segment=pb.Segment.FromString(r.segment))
            plan = self.dp.plan or HostPlan(host=self.name)
            for f in plan.functions:
                svc, fid = f.id.split("/", 1)
                slot, inst = self.dp.chain.functions[f.id]
                st.functions.add(service=svc, id=fid, vnf=f.folder, slot=slot,
                                 program_id=inst.obj.program("vnf_xdp").id)
            for p in plan.paths:
                st.paths.add(service=_service_of(p), path=p.path.split("/", 1)[-1], spi=p.spi, first_si=p.first_si,
                             functions=[f.split("/", 1)[1] for f in p.functions],
                             end=pb.PATH_END_REMOTE if p.end == "remote" else pb.PATH_END_STACK,
                             next_host=p.next_host or "")
            for (kind, ifname), att in sorted(self.dp.attachments().items()):
                st.attachments.add(kind=kind, interface=ifname, program_id=att.prog_id, link_id=att.link_id,
                                   pinned=att.pin_path is not None)
            return st

    def counters(self, service: str = "") -> Any:
        """Counters of every service (or one), read now, with the monotonic time and reset epoch."""
        with self.lock:
            assert self.dp is not None
            raw = self.dp.counters()
            plan = self.dp.plan or HostPlan(host=self.name)
            programs = {fid: inst.obj.program("vnf_xdp").id for fid, (_, inst) in self.dp.chain.functions.items()}
        out = pb.Counters(host=self.name, timestamp_ns=time.monotonic_ns(), reset_epoch=self.reset_epoch)
        for fid, counters in sorted(raw["functions"].items()):
            svc, name = fid.split("/", 1)
            if service in ("", svc):
                fc = out.functions.add(service=svc, function=name, program_id=programs.get(fid, 0))
                for cname, (packets, nbytes) in counters.items():
                    fc.counters[cname].packets = packets
                    fc.counters[cname].bytes = nbytes
        hops = {(p.spi, p.first_si - i) for p in plan.paths if service in ("", _service_of(p))
                for i in range(len(p.functions) + 1)}
        for (spi, si), packets in sorted(raw["hops"].items()):
            if (spi, si) in hops:
                out.hops.add(spi=spi, si=si, packets=packets)
        for name, packets in sorted(raw["paths"].items()):
            svc, _, path = name.partition("/")
            if service in ("", svc):
                out.paths.add(service=svc, path=path, packets=packets)
        if not service:
            for name, value in raw["host"].items():
                out.host_counters[name] = value
        return out
