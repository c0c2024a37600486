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
from datapath.attach import Attachment
from datapath.errors import VnfkitError
from datapath.netns import ifindex
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


class HostDataPath:
    """``with HostDataPath() as dp: dp.apply(plan)``; ``dp.counters()``; ``dp.apply(next_plan)``."""

    def __init__(self, *, drain: float = DRAIN_S) -> None:
        self.chain = LocalChain()
        self.drain = drain
        self.plan: HostPlan | None = None
        self._functions: dict[str, _Function] = {}
        self._attached: dict[tuple[str, str], Attachment] = {}  # (kind, ifname) -> attachment
        self._pending: _Pending | None = None
        self._retired_plans: list[HostPlan | None] = []
        self._retired_instances: list[KernelInstance] = []

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
        undo: list[Callable[[], None]] = []
        swaps: list[tuple[str, KernelInstance, FunctionSpec, Any]] = []
        try:
            self._prepare(plan, undo, swaps)
            rules = self._kernel_rules(plan)
        except BaseException as exc:
            self._undo(undo)
            for _, inst, _, _ in swaps:
                inst.close()
            if isinstance(exc, VnfkitError | LookupError | OSError):
                raise ApplyError(f"plan refused, nothing changed: {exc}") from exc
            raise
        self._pending = _Pending(plan, undo, swaps, rules)

    def abort(self) -> None:
        """Undo a ``prepare`` that will not be committed (another host failed)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            self._undo(pending.undo)
            for _, inst, _, _ in pending.swaps:
                inst.close()

    def commit(self) -> None:
        """Phase 2: the switches, each atomic for packets: replaced functions' prog-array slots,
        then the classifier's rule set."""
        pending, self._pending = self._pending, None
        if pending is None:
            raise ApplyError("nothing prepared to commit")
        for fid, inst, spec, state in pending.swaps:
            self._retired_instances.append(self.chain.swap(fid, inst))
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
        for inst in self._retired_instances:
            inst.close()
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
                inst = chain.instance(spec.folder)
                try:
                    state = _config(inst, spec, None)
                except BaseException:
                    inst.close()
                    raise
                chain.load(spec.id, inst)
                self._functions[spec.id] = _Function(spec, state)
                undo.append(lambda fid=spec.id: (chain.unload(fid), self._functions.pop(fid)))
            elif have.spec == spec:
                continue
            elif Path(have.spec.folder).resolve() == Path(spec.folder).resolve():
                # Same VNF, new settings: in place, so its state (flows, mappings) survives.
                inst = chain.functions[spec.id][1]
                old = have.spec
                have.state = _config(inst, spec, have.state)
                have.spec = spec
                undo.append(lambda h=have, i=inst, o=old: (setattr(h, "state", _config(i, o, h.state)),
                                                          setattr(h, "spec", o)))
            else:
                inst = chain.instance(spec.folder)
                try:
                    state = _config(inst, spec, None)
                except BaseException:
                    inst.close()
                    raise
                swaps.append((spec.id, inst, spec, state))
        for p in plan.paths:
            if self._segment(p.spi, p.first_si) is not None:
                continue
            kwargs: dict[str, Any] = {"first_si": p.first_si, "end": p.end}
            if p.end == "remote":
                peer = plan.peer(p.next_host or "")
                kwargs["remote"] = RemoteHop(plan.ns, plan.underlay or "", peer.mac, encap=plan.encap,
                                             src_ip=plan.underlay_ip, dst_ip=peer.ip)
            if p.reverse is not None:
                kwargs["reverse"] = p.reverse
                kwargs["reverse_ttl"] = DEFAULT_TTL
            chain.add_path(p.spi, list(p.functions), **kwargs)
            undo.append(lambda spi=p.spi, si=p.first_si: chain.remove_path(spi, si))
        for name in plan.classify_on:
            if ("classifier", name) not in self._attached:
                self._attached["classifier", name] = chain.attach(plan.ns, name)
                undo.append(lambda n=name: self._detach("classifier", n))
        if plan.underlay and ("nsh_rx", plan.underlay) not in self._attached:
            self._attached["nsh_rx", plan.underlay] = chain.attach_underlay(plan.ns, plan.underlay)
            undo.append(lambda n=plan.underlay: self._detach("nsh_rx", n))

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
            self.chain.unload(fid)
            del self._functions[fid]
        wanted = {("classifier", n) for n in plan.classify_on}
        if plan.underlay:
            wanted.add(("nsh_rx", plan.underlay))
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

    def close(self) -> None:
        self.abort()
        for inst in self._retired_instances:
            inst.close()
        self._retired_instances.clear()
        self._attached.clear()
        self.chain.close()
        self._functions.clear()
        self.plan = None

    def __enter__(self) -> HostDataPath:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
