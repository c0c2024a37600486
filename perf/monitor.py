"""Rough figures for the monitor's README: cost per packet on each executor and the control
plane's read times. Run as root: ``.venv/bin/python perf/monitor.py``.

Kernel: BPF_PROG_TEST_RUN of the XDP program, the kernel's own ns/run (a repeated run of
one frame updates one flow; single runs of distinct frames each create a flow), beside the
empty ``xdp_pass`` on the same frame. Native: ``vk_native_run_batch`` over 64 copies of
the frame (perf/sdk.py's harness).
Model: ``ModelExecutor.run``. Control plane: ``Monitor.top_k`` and ``export`` over N flows
created by test-runs of distinct frames. Medians of a few runs; a shared machine's noise
stays in them.
"""

from __future__ import annotations

import statistics
import struct
import time
from collections.abc import Callable
from pathlib import Path

from datapath.builtin import builtin
from datapath.errors import VnfkitError
from datapath.objects import load
from perf.sdk import BATCH, NativeBatch
from vnfkit.executors import make_executors
from vnfkit.instance import KernelInstance
from vnfkit.pyfile import import_file

HERE = Path(__file__).resolve().parent.parent / "vnfs" / "monitor"
ctl = import_file(HERE / "control.py", "the monitor's control plane", VnfkitError)


def udp_frame(i: int, payload: int = 18) -> bytes:
    """A UDP/IPv4 frame from 198.18.x.y:i (60 bytes with the default payload): one flow per i."""
    eth = b"\x02\0\0\0\0\x0b\x02\0\0\0\0\x0a\x08\x00"
    src = bytes((198, 18, (i >> 8) & 0xFF, i & 0xFF))
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + payload, 0, 0, 64, 17, 0, src, bytes((198, 18, 1, 1)))
    udp = struct.pack("!HHHH", 1024 + (i >> 16), 53, 8 + payload, 0)
    return eth + ip + udp + b"q" * payload


def median(fn: Callable[[], float], runs: int = 5) -> float:
    return statistics.median(fn() for _ in range(runs))


def kernel_figures() -> None:
    frame = udp_frame(1)
    with KernelInstance(HERE) as vnf, load(builtin("xdp_pass")) as floor:
        prog = vnf.obj.program("vnf_xdp")
        update = median(lambda: prog.test_run(frame, repeat=200_000).duration_ns)
        empty = median(lambda: floor.program().test_run(frame, repeat=200_000).duration_ns)
        fresh = statistics.median(prog.test_run(udp_frame(i)).duration_ns for i in range(2, 5_002))
        print(f"kernel XDP: flow update {update:.0f} ns/packet (repeat), new flow {fresh:.0f} ns (single runs), "
              f"xdp_pass floor {empty:.0f} ns")


def executor_figures() -> None:
    native, model = make_executors(HERE, ("native", "model"))
    try:
        for ex in (native, model):
            ex.reset()
            ex.configure(ctl.config())
        frame = udp_frame(1)
        batch = NativeBatch(native, frame)  # perf/sdk.py's: 64 copies of the frame, buffers made once
        native_ns = median(lambda: batch.run(20_000)[0] / (20_000 * BATCH))

        def one() -> float:
            t0 = time.perf_counter_ns()
            for _ in range(2_000):
                model.run(frame)
            return (time.perf_counter_ns() - t0) / 2_000 / 1_000

        print(f"native: flow update {native_ns:.0f} ns/packet (vk_native_run_batch, 64 frames a call); "
              f"model: {median(one):.0f} us/packet")
    finally:
        native.close()
        model.close()


def control_figures(n: int) -> None:
    with KernelInstance(HERE) as vnf:
        prog = vnf.obj.program("vnf_xdp")
        for i in range(n):
            prog.test_run(udp_frame(i, payload=18 + i % 64))
        mon = ctl.Monitor(vnf.tables)

        def timed(fn: Callable[[], object]) -> float:
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1_000

        top = median(lambda: timed(lambda: mon.top_k(10)), 3)
        export = median(lambda: timed(lambda: mon.export_json(10)), 3)
        reset = timed(mon.reset)
        print(f"control plane, {n:,} flows in the kernel: top_k(10) {top:.0f} ms, export_json {export:.0f} ms, "
              f"reset {reset:.0f} ms")


if __name__ == "__main__":
    kernel_figures()
    executor_figures()
    for flows in (1_000, 10_000, 50_000):
        control_figures(flows)
