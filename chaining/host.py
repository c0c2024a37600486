"""One host's data path made to match a :class:`chaining.plan.HostPlan`, make-before-break.

``HostDataPath.apply(plan)`` goes in three phases, so that what is running keeps running until
the new state is complete and a failure leaves the host as it was:

1. **prepare** — everything that can fail and touches no packet: check interfaces and
   peers, load and verify new functions (and replacements of changed ones), write their
   config and control tables, install new path segments under their SPIs (no classifier
   rule points at them yet), attach the classifier / NSH receive to new interfaces. Any
   error undoes what this phase did, in reverse, and is raised.
2. **commit** — the switches, each one atomic for packets: a replaced function's
   prog-array slot, then the classifier's rule set (one flip of its active bank).
3. **cleanup**, after a short drain (packets already inside the old state finish in
   microseconds; ``drain`` seconds is generous): remove segments, functions and attachments
   the plan no longer has.

A changed path takes a new SPI (the compiler allocates it), so in-flight packets of the old
path never meet half of the new one. Changing a function's config or control is done in
place, table by table.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chaining.classifier import Rule, order
from chaining.local import DEFAULT_TTL, ChainError, LocalChain, RemoteHop
from chaining.plan import FunctionSpec, HostPlan, PathSpec
from datapath.attach import Attachment, xdp_query
from datapath.errors import PinError, VnfkitError
from datapath.netns import ifindex
from datapath.pins import PinGroup
from vnfkit import control as vnf_control
from vnfkit.instance import KernelInstance

DRAIN_S = 0.05


class ApplyError(ChainError):
    """A plan that could not be applied; the host is as it was before the call."""


@dataclass
class _Function:
    spec: FunctionSpec
    state: Any = None  # what the VNF's control.py configure() keeps between calls


@dataclass
class _Pending:
    """A prepared plan: what commit switches to, and how to undo the prepare."""

    plan: HostPlan
    undo: list[Callable[[], None]]
    swaps: list[tuple[str, KernelInstance, FunctionSpec, Any]]
    rules: list[Any]


def _config(inst: KernelInstance, spec: FunctionSpec, state: Any) -> Any:
    """Write ``spec``'s control tables and config into ``inst``; the control state."""
    implied: dict[str, Any] = {}
    if spec.control is not None:
        implied, state = vnf_control.configure(spec.folder, spec.control, inst.tables, state)
    inst.configure({**implied, **spec.config})
    return state


def _in_place(old: FunctionSpec, new: FunctionSpec) -> bool:
    """Whether ``new`` can be written over a running ``old`` instance. Writing only sets what
    ``new`` names: a setting or a whole ``control:`` that ``new`` drops would stay behind in
    the kernel, so then a fresh instance replaces the old one (its flow state goes with it).
    A changed ``control:`` is written whole by the VNF's configure(), so it stays in place."""
    return (Path(old.folder).resolve() == Path(new.folder).resolve()
            and not (old.control is not None and new.control is None) and set(old.config) <= set(new.config))


def _fn_prefix(fid: str, program_id: int | None) -> str:
    """Pin prefix of a function instance: ``fn@<service>:<id>@<program id>`` (two instances of
    one function coexist while one replaces the other; bpffs takes no dots or slashes)."""
    return f"fn@{fid.replace('/', ':')}@{program_id}"


def _program_id(inst: KernelInstance) -> int:
    return inst.obj.program("vnf_xdp").id


def _link_name(kind: str, ifname: str) -> str:
    return f"link@{kind}@{ifname.replace('.', ':')}"


class HostDataPath:
    """``with HostDataPath() as dp: dp.apply(plan)``; ``dp.counters()``; ``dp.apply(next_plan)``.

    With ``pins``, everything the data path needs is pinned in that group as it is made
    (forwarder, classifier and NSH receive objects, every function instance, the XDP links),
    so it keeps running when this process dies; ``HostDataPath.adopt`` takes it over in the
    next process. ``release()`` leaves it running; ``close()`` tears it down and removes the group.
    """

    def __init__(self, *, drain: float = DRAIN_S, pins: PinGroup | None = None, _adopt: bool = False) -> None:
        self.pins = pins
        self.chain = LocalChain(pins, adopt=_adopt)
        self.drain = drain
        self.plan: HostPlan | None = None
        self._functions: dict[str, _Function] = {}
        self._attached: dict[tuple[str, str], Attachment] = {}  # (kind, ifname) -> attachment
        self._pending: _Pending | None = None
        self._retired_plans: list[HostPlan | None] = []
        self._retired_instances: list[tuple[str, KernelInstance]] = []

    # ---- checks -----------------------------------------------------------------------------
    def _check(self, plan: HostPlan) -> None:
        problems = []
        ifaces = {*plan.classify_on, *(i for r in plan.rules for i in r.interfaces)}
        if plan.underlay:
            ifaces.add(plan.underlay)
        for name in sorted(ifaces):
            try:
                ifindex(plan.ns, name)
            except LookupError as exc:
                problems.append(str(exc))
        fids = {f.id for f in plan.functions}
        for p in plan.paths:
            missing = [f for f in p.functions if f not in fids]
            if missing:
                problems.append(f"path {p.path or p.spi} (SPI {p.spi}) names function(s) {missing} the plan lacks")
            if p.end == "remote":
                if not plan.underlay:
                    problems.append(f"path {p.path or p.spi} (SPI {p.spi}) goes on to {p.next_host!r}; "
                                    "the plan has no underlay")
                try:
                    plan.peer(p.next_host or "")
                except KeyError:
                    problems.append(f"path {p.path or p.spi} (SPI {p.spi}) goes on to {p.next_host!r}, "
                                    "a host the plan gives no address for")
            elif p.end != "stack":
                problems.append(f"path {p.path or p.spi} (SPI {p.spi}): end must be 'stack' or 'remote', not {p.end!r}")
        segs = {(p.spi, p.first_si) for p in plan.paths}
        for r in plan.rules:
            if (r.spi, r.si) not in segs:
                problems.append(f"classifier rule {r.name or r.spi} starts at SPI {r.spi} SI {r.si}, "
                                "where no segment of the plan begins")
        for key in segs:
            cur = self._segment(*key)
            new = next(p for p in plan.paths if (p.spi, p.first_si) == key)
            if cur is not None and cur != new:
                problems.append(f"SPI {key[0]} SI {key[1]} changed ({' -> '.join(cur.functions)} to "
                                f"{' -> '.join(new.functions)}): a changed path takes a new SPI")
        for f in plan.functions:
            if not Path(f.folder, "vnf.yaml").is_file():
                problems.append(f"function {f.id}: {f.folder} is not a VNF folder (no vnf.yaml)")
        if problems:
            raise ApplyError("plan refused, nothing changed:\n  " + "\n  ".join(problems))

    def _segment(self, spi: int, first_si: int) -> PathSpec | None:
        if self.plan is None:
            return None
        return next((p for p in self.plan.paths if (p.spi, p.first_si) == (spi, first_si)), None)

    # ---- apply ------------------------------------------------------------------------------
    def apply(self, plan: HostPlan) -> None:
        """Make this host's data path match ``plan``: ``prepare``, ``commit``, a drain, ``cleanup``
        (see the module doc). ApplyError, with the host unchanged, if the prepare fails."""
        self.prepare(plan)
        self.commit()
        time.sleep(self.drain)
        self.cleanup()

    def prepare(self, plan: HostPlan) -> None:
        """Phase 1: load, verify and install everything ``plan`` adds, with no packet switched to
        it yet. ApplyError (host as it was) on any failure. Across hosts, prepare them all
        before committing any, so a path's later hosts know its SPI before traffic takes it."""
        if self._pending is not None:
            raise ApplyError("a prepared plan is waiting: commit() or abort() it first")
        self._check(plan)
        # A commit whose cleanup never came (a caller that failed in between, a rollback): the
        # old state still holds SPIs and functions the new plan may reuse. Its drain is over.
        self.cleanup()
        undo: list[Callable[[], None]] = []
        swaps: list[tuple[str, KernelInstance, FunctionSpec, Any]] = []
        try:
            self._prepare(plan, undo, swaps)
            rules = self._kernel_rules(plan)
        except BaseException as exc:
            self._undo(undo)
            for fid, inst, _, _ in swaps:
                self._close_instance(fid, inst)
            if isinstance(exc, VnfkitError | LookupError | OSError):
                raise ApplyError(f"plan refused, nothing changed: {exc}") from exc
            raise
        self._pending = _Pending(plan, undo, swaps, rules)

    def abort(self) -> None:
        """Undo a ``prepare`` that will not be committed (another host failed)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            self._undo(pending.undo)
            for fid, inst, _, _ in pending.swaps:
                self._close_instance(fid, inst)

    def commit(self) -> None:
        """Phase 2: the switches, each atomic for packets: replaced functions' prog-array slots,
        then the classifier's rule set."""
        pending, self._pending = self._pending, None
        if pending is None:
            raise ApplyError("nothing prepared to commit")
        for fid, inst, spec, state in pending.swaps:
            self._retired_instances.append((fid, self.chain.swap(fid, inst)))
            self._functions[fid] = _Function(spec, state)
        self._set_rules(pending.rules)
        self._retired_plans.append(self.plan)
        self.plan = pending.plan

    def cleanup(self) -> None:
        """Phase 3, once packets that entered the old state have left it (a drain after the last
        host's commit): remove what the committed plan no longer has."""
        if self.plan is None:
            return
        for previous in self._retired_plans:
            self._cleanup(previous, self.plan)
        self._retired_plans.clear()
        for fid, inst in self._retired_instances:
            self._close_instance(fid, inst)
        self._retired_instances.clear()

    def _undo(self, undo: list[Callable[[], None]]) -> None:
        for fn in reversed(undo):
            try:
                fn()
            except Exception:  # noqa: BLE001, S110 - best effort: the first error is the one raised
                pass

    def _prepare(self, plan: HostPlan, undo: list[Callable[[], None]],
                 swaps: list[tuple[str, KernelInstance, FunctionSpec, Any]]) -> None:
        chain = self.chain
        for spec in plan.functions:
            have = self._functions.get(spec.id)
            if have is None:
                inst, state = self._new_instance(spec)
                chain.load(spec.id, inst)
                self._functions[spec.id] = _Function(spec, state)
                undo.append(lambda fid=spec.id: self._unload(fid))
            elif have.spec == spec:
                continue
            elif _in_place(have.spec, spec):
                # Same VNF, new settings: in place, so its state (flows, mappings) survives.
                inst = chain.functions[spec.id][1]
                old = have.spec
                have.state = _config(inst, spec, have.state)
                have.spec = spec
                undo.append(lambda h=have, i=inst, o=old: (setattr(h, "state", _config(i, o, h.state)),
                                                          setattr(h, "spec", o)))
            else:
                inst, state = self._new_instance(spec)
                swaps.append((spec.id, inst, spec, state))
        for p in plan.paths:
            if self._segment(p.spi, p.first_si) is not None:
                continue
            self._add_path(plan, p)
            undo.append(lambda spi=p.spi, si=p.first_si: chain.remove_path(spi, si))
        for kind, name in self._wanted_attachments(plan):
            if (kind, name) not in self._attached:
                self._attach(plan, kind, name)
                undo.append(lambda k=kind, n=name: self._detach(k, n))

    def _new_instance(self, spec: FunctionSpec) -> tuple[KernelInstance, Any]:
        """A function instance loaded, configured and (with pins) pinned; its control state."""
        inst = self.chain.instance(spec.folder)
        try:
            state = _config(inst, spec, None)
            if self.pins is not None:
                self.pins.pin_object(inst.obj, _fn_prefix(spec.id, _program_id(inst)))
        except BaseException:
            self._close_instance(spec.id, inst)
            raise
        return inst, state

    def _close_instance(self, fid: str, inst: KernelInstance) -> None:
        if self.pins is not None:
            self.pins.unpin_object(_fn_prefix(fid, _program_id(inst)))
        inst.close()

    def _unload(self, fid: str) -> None:
        if self.pins is not None:
            self.pins.unpin_object(_fn_prefix(fid, _program_id(self.instance(fid))))
        self.chain.unload(fid)
        self._functions.pop(fid)

    def _add_path(self, plan: HostPlan, p: PathSpec) -> None:
        kwargs: dict[str, Any] = {"first_si": p.first_si, "end": p.end}
        if p.end == "remote":
            peer = plan.peer(p.next_host or "")
            kwargs["remote"] = RemoteHop(plan.ns, plan.underlay or "", peer.mac, encap=plan.encap,
                                         src_ip=plan.underlay_ip, dst_ip=peer.ip)
        if p.reverse is not None:
            kwargs["reverse"] = p.reverse
            kwargs["reverse_ttl"] = DEFAULT_TTL
        self.chain.add_path(p.spi, list(p.functions), **kwargs)

    @staticmethod
    def _wanted_attachments(plan: HostPlan) -> list[tuple[str, str]]:
        wanted = [("classifier", n) for n in plan.classify_on]
        return wanted + ([("nsh_rx", plan.underlay)] if plan.underlay else [])

    def _attach(self, plan: HostPlan, kind: str, name: str) -> Attachment:
        if kind == "classifier":
            att = self.chain.attach(plan.ns, name)
        else:
            att = self.chain.attach_underlay(plan.ns, name)
        self._attached[kind, name] = att
        if self.pins is not None:
            try:
                self.pins.pin_link(att, _link_name(kind, name))
            except BaseException:
                self._detach(kind, name)
                raise
        return att

    def _detach(self, kind: str, name: str) -> None:
        att = self._attached.pop((kind, name))
        att.detach()
        self.chain.attachments.remove(att)

    def _kernel_rules(self, plan: HostPlan) -> list[Rule]:
        """The plan's classifier rules as the kernel classifier takes them: one per interface
        it names (the ingress ifindex is part of the match)."""
        rules = [Rule(r.match, r.spi, DEFAULT_TTL, ifindex(plan.ns, name)) for r in plan.rules for name in r.interfaces]
        order(rules)  # every check the kernel's rule set gets, before the switch rather than in it
        return rules

    def _set_rules(self, rules: list[Rule]) -> None:
        self.chain.set_rules(rules)  # atomic for packets: the classifier flips banks

    def _cleanup(self, previous: HostPlan | None, plan: HostPlan) -> None:
        if previous is None:
            return
        keep = {(p.spi, p.first_si) for p in plan.paths}
        for p in previous.paths:
            if (p.spi, p.first_si) not in keep:
                self.chain.remove_path(p.spi, p.first_si)
        fids = {f.id for f in plan.functions}
        for fid in [f for f in self._functions if f not in fids]:
            self._unload(fid)
        wanted = set(self._wanted_attachments(plan))
        for key in [k for k in self._attached if k not in wanted]:
            self._detach(*key)

    # ---- reading ----------------------------------------------------------------------------
    def instance(self, fid: str) -> KernelInstance:
        """The running instance of function ``fid``."""
        return self.chain.functions[fid][1]

    def counters(self) -> dict[str, Any]:
        """Per function (its counters), per hop ((SPI, SI) -> packets), per path segment
        (packets in at its first hop), and the host's forwarder/classifier/NSH counters."""
        hops = self.chain.hop_stats()
        paths: dict[str, int] = {}
        for p in self.plan.paths if self.plan else ():
            name = p.path or str(p.spi)
            paths[name] = paths.get(name, 0) + hops.get((p.spi, p.first_si), 0)
        return {"functions": {fid: self.instance(fid).counters() for fid in self._functions},
                "hops": hops, "paths": paths, "host": self.chain.counters()}

    def snapshot(self) -> dict[str, Any]:
        """What a commit leaves running (the prepared plan's, else the committed one's): the plan
        and each function's slot and program id. An agent records it before committing, so
        ``adopt`` can finish an interrupted commit."""
        pending = self._pending
        plan = pending.plan if pending is not None else self.plan
        if plan is None:
            return {"plan": None, "functions": {}}
        swapped = {fid: inst for fid, inst, _, _ in pending.swaps} if pending is not None else {}
        functions = {}
        for spec in plan.functions:
            slot, inst = self.chain.functions[spec.id]
            inst = swapped.get(spec.id, inst)
            functions[spec.id] = {"slot": slot, "program_id": _program_id(inst)}
        return {"plan": plan.to_dict(), "functions": functions}

    def attachments(self) -> dict[tuple[str, str], Attachment]:
        """(kind, interface) -> the attachment: the classifier's and NSH receive's."""
        return dict(self._attached)

    def close(self) -> None:
        """Tear the data path down: detach, unload, and remove the pin group."""
        self.abort()
        for fid, inst in self._retired_instances:
            self._close_instance(fid, inst)
        self._retired_instances.clear()
        self._attached.clear()
        self.chain.close()
        self._functions.clear()
        self.plan = None
        if self.pins is not None:
            self.pins.remove()

    def release(self) -> None:
        """Let go of the data path and leave it running from its pins (for ``adopt``)."""
        if self.pins is None:
            raise ChainError("release() needs a data path made with pins=; close() it instead")
        self._pending = None  # prepared, uncommitted objects: adoption removes them
        self._retired_instances.clear()
        self._attached.clear()
        self.chain.release()
        self._functions.clear()
        self.plan = None

    # ---- adoption -----------------------------------------------------------------------------
    @classmethod
    def adopt(cls, pins: PinGroup, snapshot: dict[str, Any], *, drain: float = DRAIN_S
              ) -> tuple[HostDataPath, list[str], list[str]]:
        """Take over the data path an earlier process left pinned in ``pins``, as its last
        ``snapshot()`` describes it; returns it with the repairs made and the problems left.

        Nothing that is right is touched, so packets flow on throughout. The snapshot's plan is
        rolled forward: each function's pinned instance goes (back) in its slot (finishing an
        interrupted commit), paths are registered from the forwarder's table (entries rewritten
        with the same values), the classifier's rules set, XDP links re-opened from their pins.
        Drift is repaired: a function without a usable pinned instance is loaded anew, a link
        detached by hand is attached again. A foreign XDP program on an interface the plan
        needs is reported in the problems, never replaced. What the plan does not have (a
        prepared change never committed, an instance a commit retired) is removed last.
        """
        dp = cls(drain=drain, pins=pins, _adopt=True)
        repairs: list[str] = []
        problems: list[str] = []
        try:
            plan = HostPlan.from_dict(snapshot["plan"]) if snapshot.get("plan") else HostPlan(host="")
            dp._adopt_functions(plan, snapshot.get("functions") or {}, repairs)
            installed = dp.chain.adopt_hops()
            for p in plan.paths:
                dp._add_path(plan, p)
            dp._set_rules(dp._kernel_rules(plan))
            dp._adopt_links(plan, repairs, problems)
            wanted = {(p.spi, p.first_si - i) for p in plan.paths for i in range(len(p.functions) + 1)}
            for spi, si in sorted(installed - wanted):
                dp.chain.forget_hop(spi, si)
            dp.plan = plan
        except BaseException:
            dp.release()
            raise
        return dp, repairs, problems

    def _adopt_functions(self, plan: HostPlan, recorded: dict[str, Any], repairs: list[str]) -> None:
        assert self.pins is not None
        # Every pinned function instance, by prefix (fn@<service>:<id>@<program id>@<name>).
        pinned = {"@".join(n.split("@")[:3]) for n in self.pins.names("progs") if n.startswith("fn@")}
        kernel_slots = self.chain.slot_programs()
        used_slots = set()
        for spec in plan.functions:
            rec = recorded.get(spec.id) or {}
            slot = rec.get("slot")
            prefix = _fn_prefix(spec.id, rec.get("program_id"))
            inst = None
            if prefix in pinned:
                try:
                    inst = KernelInstance(spec.folder, adopt=self.pins.open_object(prefix))
                except (PinError, VnfkitError, OSError) as exc:
                    repairs.append(f"function {spec.id}: its pinned instance is unusable ({exc}); loaded anew")
            else:
                repairs.append(f"function {spec.id}: no pinned instance; loaded anew")
            if inst is None:
                inst, _ = self._new_instance(spec)
            if slot is None or slot in used_slots:
                slot = self.chain._free_slot()
            if self.chain.adopt_function(spec.id, slot, inst):
                if kernel_slots.get(slot) is not None:
                    repairs.append(f"function {spec.id}: slot {slot} held program {kernel_slots[slot]}; "
                                   f"put program {_program_id(inst)} back")
                else:
                    repairs.append(f"function {spec.id}: slot {slot} was empty; put its program back")
            used_slots.add(slot)
            self._functions[spec.id] = _Function(spec, None)  # control state is rebuilt on the next change
            pinned.discard(_fn_prefix(spec.id, _program_id(inst)))
        for slot in sorted(set(kernel_slots) - used_slots):
            self.chain.release_slot(slot)
        for prefix in pinned:  # retired or never committed
            self.pins.unpin_object(prefix)

    def _adopt_links(self, plan: HostPlan, repairs: list[str], problems: list[str]) -> None:
        assert self.pins is not None
        wanted = self._wanted_attachments(plan)
        for name in self.pins.names("links"):
            if name in {_link_name(kind, ifname) for kind, ifname in wanted}:
                continue
            try:
                Attachment.from_pin(self.pins.path / "links" / name).detach()
            except PinError:
                self.pins.unpin("links", name)
        for kind, ifname in wanted:
            obj = self.chain.classifier if kind == "classifier" else self.chain.nsh_rx
            expected = obj.program(kind).id if obj is not None else None
            att = None
            try:
                att = self.pins.link(_link_name(kind, ifname))
            except PinError:
                pass
            if att is not None:
                if att.ifindex == ifindex(plan.ns, ifname) and att.prog_id == expected:
                    att.ifname, att.netns, att.mode = ifname, plan.ns, "link"
                    self._attached[kind, ifname] = att
                    self.chain.attachments.append(att)
                    continue
                att.detach()  # defunct (detached by hand, or its device went): drop the pin
            existing = xdp_query(ifname, plan.ns)
            if existing is not None:
                pid, mode = existing
                problems.append(f"{ifname} has a foreign XDP program (id {pid}, {mode} mode) where the {kind} "
                                "belongs: not replaced; detach it and restart the agent")
                continue
            self._attach(plan, kind, ifname)
            repairs.append(f"{kind} on {ifname} was detached; attached again")

    def __enter__(self) -> HostDataPath:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
