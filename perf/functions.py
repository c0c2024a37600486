"""Per-packet cost of each example VNF doing its suite job (perf/jobs.py), in the kernel by
test-run and natively by the batch call, against the empty program on the same frame.

* kernel: one-repetition test-runs in a tight loop (``perf.chains.SingleShot``), the kernel's
  own duration averaged. Not ``repeat=N``: a repeated test-run keeps one buffer for all its
  repetitions, so a VNF that rewrites the frame (NAT, DNAT, GTP encapsulation) would see its
  own output from the second repetition on and take another path. The floor is ``xdp_pass``
  measured the same way.
* native: ``vk_native_run_batch`` on batches of 64, the frames restored before every call;
  the cost of the restoring copies is measured alone and taken off.

After every measurement the VNF's work counters (``Job.work``) must have moved by exactly the
packets run, and every verdict must be the job's, or this raises.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from datapath.builtin import builtin
from datapath.kernel import XdpAction
from datapath.objects import load
from perf import jobs, traffic
from perf.chains import SingleShot
from perf.sdk import BATCH, NativeBatch
from vnfkit.descriptor import load_descriptor
from vnfkit.executors import make_executors

SPORT = 4000


@dataclass(frozen=True)
class Work:
    """Test-run calls and native batch calls per measurement."""

    calls: int
    batch_calls: int


def _frame(job: jobs.Job, a: jobs.Addrs) -> bytes:
    return traffic.udp_frame("02:00:00:00:00:01", "02:00:00:00:00:02", a.client, job.dst(a), SPORT, jobs.DPORT)


class Function:
    """One job's kernel and native executors, configured alike, and its benchmark frame."""

    def __init__(self, name: str) -> None:
        self.name, self.job = name, jobs.job(name)
        a = jobs.test_addrs()
        self.frame = _frame(self.job, a)
        self.kernel, self.native = make_executors(self.job.folder, ("kernel", "native"))
        defaults = load_descriptor(self.job.folder).param_defaults()
        for ex in (self.kernel, self.native):
            config = self.job.configure(ex.tables, a)
            ex.configure({**defaults, **config})
            ex.set_clock(0)  # the real clock: token buckets and timeouts as in a live run
        self.single = SingleShot(self.kernel.prog, self.frame,
                                 frozenset(int(XdpAction[v.name]) for v in self.job.verdicts))
        self.batch = NativeBatch(self.native, self.frame)

    def close(self) -> None:
        self.kernel.close()

    def _work(self, ex: Any) -> int:
        counters = ex.counters()
        return sum(counters[c][0] for c in self.job.work)

    def _checked(self, ex: Any, packets: int, measure: Callable[[], dict[str, float]]) -> dict[str, float]:
        before = self._work(ex)
        out = measure()
        moved = self._work(ex) - before
        if moved != packets:
            raise RuntimeError(f"{self.name} ({ex.name}): {'+'.join(self.job.work)} moved by {moved} in {packets} "
                               "packets: not the job's path")
        return out

    def measure_kernel(self, calls: int) -> dict[str, float]:
        return self._checked(self.kernel, calls, lambda: self.single.run(calls))

    def measure_native(self, batch_calls: int) -> dict[str, float]:
        def run() -> dict[str, float]:
            wall, cpu, copies = self.batch.run_fresh(batch_calls)
            bad = int((~np.isin(self.batch.res_view[:, 0], [int(v) for v in self.job.verdicts])).sum())
            if bad:
                raise RuntimeError(f"{self.name} (native): {bad} of {BATCH} frames did not get "
                                   f"{'/'.join(v.name for v in self.job.verdicts)}")
            packets = batch_calls * BATCH
            return {"ns": (wall - copies) / packets, "with_copy_ns": wall / packets, "copy_ns": copies / packets,
                    "thread_cpu_ns": cpu / packets}
        return self._checked(self.native, batch_calls * BATCH, run)


def measure(names: list[str], work: Work, runs: int, log: Callable[[str], object] = print) -> tuple[
        dict[str, list[dict[str, float]]], dict[str, Any]]:
    """``testrun_floor``, ``testrun_<job>`` and ``native_<job>`` for every job, ``runs``
    interleaved runs each (rotating order), on the calling thread's CPU."""
    functions = {n: Function(n) for n in names}
    out: dict[str, list[dict[str, float]]] = {"testrun_floor": []}
    try:
        with load(builtin("xdp_pass")) as floor_obj:
            frame = next(iter(functions.values())).frame
            floor = SingleShot(floor_obj.program(), frame)
            steps: list[tuple[str, Callable[[], dict[str, float]]]] = [
                ("testrun_floor", lambda: floor.run(work.calls))]
            for n, f in functions.items():
                steps.append((f"testrun_{n}", lambda f=f: f.measure_kernel(work.calls)))
                steps.append((f"native_{n}", lambda f=f: f.measure_native(work.batch_calls)))
            for _, step in steps:  # untimed warm-up: page in code and tables, open flows
                step()
            for i in range(runs):
                k = i % len(steps)
                t0 = time.monotonic()
                for name, step in steps[k:] + steps[:k]:
                    out.setdefault(name, []).append(step())
                log(f"functions {i + 1}/{runs} ({time.monotonic() - t0:.1f} s): floor "
                    f"{out['testrun_floor'][-1]['ns']:.0f} ns; " + ", ".join(
                        f"{n} {out[f'testrun_{n}'][-1]['ns']:.0f}/{out[f'native_{n}'][-1]['ns']:.0f}"
                        for n in functions) + " ns (kernel/native)")
        setup = {n: {"vnf": f.job.vnf, "what": f.job.what, "verdict": f.job.verdict.name, "work": list(f.job.work),
                     "frame_bytes": len(f.frame)} for n, f in functions.items()}
        setup["method"] = {"kernel": "mean of one-repetition test-runs (slowest 1% out), kernel's duration",
                           "native": f"vk_native_run_batch, batches of {BATCH}, frames restored before each call, "
                                     "restore cost measured alone and subtracted"}
        return out, setup
    finally:
        for f in functions.values():
            f.close()


def median_ns(values: list[dict[str, float]]) -> float:
    return float(np.median([v["ns"] for v in values]))
