"""Cost per packet of the gtp VNF's paths on the kernel, native and model executors.

``.venv/bin/python perf/gtp.py [--runs 5]`` prints a table: median ns/packet over runs
(min-max), for uplink decapsulation, downlink encapsulation (plain and with a 5G PDU session
container), the echo response, an unknown-TEID drop and a packet that is not the VNF's.

How: decapsulation and encapsulation move the frame's head, and a repeated XDP test-run reruns
the program on the frame it left behind (the decapsulated packet, a twice-encapsulated one),
so the kernel is timed by test-runs of one repetition each, averaging the kernel's own
duration; the empty ``xdp_pass`` measured the same way is the floor. Native: batches of 64
pristine frames per ``vk_native_run_batch`` call, the cost of restoring them (a numpy copy,
timed alone) subtracted. Model: ``ModelExecutor.run``. One pinned CPU for everything.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from datapath.builtin import builtin
from datapath.objects import load
from datapath.verdict import Verdict
from vnfkit.descriptor import load_descriptor
from vnfkit.executors import HEADROOM, make_executors
from vnfkit.pyfile import import_file
from vnfkit.testing import PacketTestError, prepare

HERE = Path(__file__).resolve().parent.parent / "vnfs" / "gtp"

BATCH, SLOT = 64, 2048


def frames() -> dict[str, tuple[bytes, Verdict]]:
    """The benchmark frames (from the packet tests' builders) and the verdict each must get."""
    from scapy.contrib.gtp import GTP_U_Header, GTPEchoRequest
    from scapy.layers.inet import IP, UDP

    pk = import_file(HERE / "tests" / "packets.py", "gtp's packet tests", PacketTestError)
    payload = bytes(18)  # inner IPv4/UDP of 46 bytes: a 64-byte frame once decapsulated
    inner_up = IP(src=pk.UE_A, dst=pk.SERVER) / UDP() / payload
    return {
        "uplink decap": (bytes(pk.up(inner_up)), Verdict.PASS),
        "downlink encap": (bytes(pk.down(IP(src=pk.SERVER, dst=pk.UE_A) / UDP() / payload)), Verdict.PASS),
        "downlink encap + QFI": (bytes(pk.down(IP(src=pk.SERVER, dst=pk.UE_B) / UDP() / payload)), Verdict.PASS),
        "echo response": (bytes(pk.up(GTPEchoRequest(), gtp=GTP_U_Header(gtp_type=1, S=1, seq=1, teid=0))),
                          Verdict.TX),
        "unknown TEID (drop)": (bytes(pk.up(inner_up, teid=0x999)), Verdict.DROP),
        "not GTP, no UE (pass)": (bytes(pk.down(IP(src=pk.SERVER, dst="198.18.1.50") / UDP() / payload)),
                                  Verdict.PASS),
    }


def kernel_ns(prog: object, frame: bytes, n: int) -> float:
    """Mean of the kernel's duration over ``n`` one-repetition test-runs."""
    return sum(prog.test_run(frame).duration_ns for _ in range(n)) / n


def native_ns(native: object, frame: bytes, calls: int) -> float:
    """ns/packet of vk_native_run_batch on BATCH pristine copies, restoring them excluded."""
    ffi, lib = native.ffi, native.lib
    template = np.zeros(BATCH * SLOT, dtype=np.uint8)
    template.reshape(BATCH, SLOT)[:, HEADROOM:HEADROOM + len(frame)] = np.frombuffer(frame, dtype=np.uint8)
    buf = template.copy()
    offsets = np.full(BATCH, HEADROOM, dtype=np.uint32)
    lens = np.full(BATCH, len(frame), dtype=np.uint32)
    c_buf, c_off, c_len = (ffi.from_buffer(t, a) for t, a in (("uint8_t[]", buf), ("uint32_t[]", offsets),
                                                               ("uint32_t[]", lens)))
    res = ffi.new("struct vk_result[]", BATCH)
    t0 = time.perf_counter_ns()
    for _ in range(calls):
        np.copyto(buf, template)
        lib.vk_native_run_batch(c_buf, SLOT, BATCH, c_off, c_len, res)
    both = time.perf_counter_ns() - t0
    t0 = time.perf_counter_ns()
    for _ in range(calls):
        np.copyto(buf, template)
    copy = time.perf_counter_ns() - t0
    return (both - copy) / (calls * BATCH)


def model_ns(model: object, frame: bytes, n: int) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(n):
        model.run(frame)
    return (time.perf_counter_ns() - t0) / n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per scenario (the median is shown)")
    args = parser.parse_args()
    os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    pk = import_file(HERE / "tests" / "packets.py", "gtp's packet tests", PacketTestError)
    exs = make_executors(HERE)
    kernel, native, model = exs
    prepare(exs, load_descriptor(HERE), pk.CONFIG, pk.TABLES, "bench")
    floor = load(builtin("xdp_pass"))
    try:
        cases = frames()
        for name, (frame, want) in cases.items():  # every path is the one it claims to be
            assert all(ex.run(frame).verdict == want for ex in exs), name
        results: dict[str, dict[str, list[float]]] = {n: {"kernel": [], "native": [], "model": []} for n in cases}
        floor_ns: list[float] = []
        for _ in range(args.runs):  # interleaved, so drift of a shared VM spreads over all
            floor_ns.append(kernel_ns(floor.program(), cases["uplink decap"][0], 20000))
            for name, (frame, _) in cases.items():
                results[name]["kernel"].append(kernel_ns(kernel.prog, frame, 20000))
                results[name]["native"].append(native_ns(native, frame, 2000))
                results[name]["model"].append(model_ns(model, frame, 2000))
    finally:
        floor.close()
        for ex in exs:
            ex.close()

    def cell(values: list[float]) -> str:
        return f"{statistics.median(values):8.1f} ({min(values):.0f}-{max(values):.0f})"

    print(f"{'path':24} {'kernel ns':>22} {'native ns':>22} {'model ns':>26}")
    print(f"{'floor (xdp_pass)':24} {cell(floor_ns):>22}")
    for name, r in results.items():
        print(f"{name:24} {cell(r['kernel']):>22} {cell(r['native']):>22} {cell(r['model']):>26}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
