"""The SDK benchmark: one VNF source on its three executors, cost per packet side by side.

The VNF is vnfkit's skeleton (one hash lookup of the IPv4 source in ``blocklist``), with the
table holding 10,000 sources. Two 60-byte UDP/IPv4 frames (64 B on the wire): a source that
is not in the table (a miss, PASS) and one that is (a hit, DROP).

1. kernel: the VNF's XDP program under BPF_PROG_TEST_RUN with a large repeat (the kernel's
   own average ns/run), and the floor: the empty ``xdp_pass`` on the same frame;
2. native: the same fastpath.c as a cffi shared object, ``vk_native_run_batch`` on batches of
   64 frames prepared once, timed over many calls; the one-packet ``vk_native_run``; and an
   empty batch (n = 0), which is the cost of one call from Python into C and nothing else;
3. model: the Python reference model through ``ModelExecutor.run``.

Everything runs on one pinned CPU in this thread (test-run runs on the calling CPU), so all
paths share a core and its caches. Scenarios are interleaved run by run in rotating order,
every number is a median over runs with min and max, and ratios are taken per run.
Verdicts are checked on every run and the VNF's counters at the end, so a number always
belongs to the path it claims to measure.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import itertools
import os
import re
import sysconfig
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cffi
import numpy as np

from datapath.builtin import builtin
from datapath.compiler import cache_dir
from datapath.native import CFLAGS
from datapath.objects import load
from datapath.verdict import Verdict
from perf import report, sdk_report, traffic
from vnfkit.cli_vnf import SKELETON
from vnfkit.descriptor import load_descriptor
from vnfkit.executors import HEADROOM, TAILROOM, KernelExecutor, ModelExecutor, NativeExecutor, make_executors

VNF_NAME = "sdk-blocklist"
BLOCKLIST_ENTRIES = 10_000
# The skeleton declares 1024 entries; the copy gets room for 10,000 (a power of two, so the
# kernel's bucket count, rounded up to one, is the same as the declared size).
BLOCKLIST_MAX = 16_384
BLOCKLIST_BASE = ipaddress.IPv4Address("198.19.0.0")  # blocked: BLOCKLIST_BASE + 0 .. + 9,999
MISS_SRC = "198.18.0.1"
HIT_SRC = str(BLOCKLIST_BASE + BLOCKLIST_ENTRIES // 2)
DST = "198.18.1.1"
SPORT = 4000
BATCH = 64
# A packet slot per frame, as an AF_XDP umem frame (2 KiB): the layout a batch would have in
# a real deployment, rather than frames packed closer than any NIC would place them.
SLOT_SIZE = 2048
PACKETS = {"miss": Verdict.PASS, "hit": Verdict.DROP}  # packet kind -> the VNF's verdict


@dataclass(frozen=True)
class Profile:
    """How much work one run of each scenario does: ``repeat`` test-run repetitions, calls
    of the native batch / single / empty path, and packets through the Python model."""

    name: str
    repeat: int
    batch_calls: int
    single_calls: int
    empty_calls: int
    model_packets: int


PROFILES = {
    # About 1.5 s per round of all scenarios on the reference VM (most of it the model): with
    # 7 rounds ~15 s in all, so a host three times slower still fits in a minute.
    "full": Profile("full", repeat=1_000_000, batch_calls=100_000, single_calls=1_000_000, empty_calls=500_000,
                    model_packets=100_000),
    "quick": Profile("quick", repeat=200_000, batch_calls=20_000, single_calls=200_000, empty_calls=100_000,
                     model_packets=20_000),
    # Hidden, for the CI smoke test: proves the whole pipeline works, numbers mean little.
    "smoke": Profile("smoke", repeat=20_000, batch_calls=500, single_calls=5_000, empty_calls=2_000,
                     model_packets=500),
}


@dataclass
class Scenario:
    """One measured path on one packet kind; ``measure()`` does one run and returns its record
    (``ns`` is the headline: ns/packet, or ns/call for the empty native call)."""

    name: str
    path: str        # kernel_floor | kernel | native_batch | native_single | native_call | model
    packet: str      # miss | hit | none
    unit: str
    measure: Callable[[], dict[str, float]]
    packets_per_run: int  # packets the VNF processes in one run (for the counter check)
    executor: str | None = None  # whose counters those packets land in
    notes: dict[str, Any] = field(default_factory=dict)


# ---- the VNF -----------------------------------------------------------------------------------
def _resize(text: str, pattern: str, what: str) -> str:
    """Replace the one number ``pattern``'s group 2 matches with BLOCKLIST_MAX."""
    new, n = re.subn(pattern, lambda m: f"{m.group(1)}{BLOCKLIST_MAX}", text)
    if n != 1:  # the skeleton changed shape: measuring a 1024-entry table would be a lie
        raise RuntimeError(f"the skeleton's {what} has no single blocklist size to raise ({n} matches)")
    return new


def prepare_vnf(folder: Path | None = None) -> Path:
    """Write the skeleton VNF, named VNF_NAME, with a BLOCKLIST_MAX-entry blocklist, to ``folder``.

    The default folder is a fixed one in vnfkit's cache, not a fresh temporary directory: the
    BPF and native build caches key on the source's path, so a new directory per run would
    leave a new object and shared library behind every time. Files are only rewritten when
    their content changes, each atomically, so concurrent runs never see half a file.
    """
    folder = folder or cache_dir().parent / "perf" / VNF_NAME
    files = {name: (SKELETON / name).read_text().replace("{{name}}", VNF_NAME)
             for name in ("vnf.yaml", "fastpath.c", "model.py")}  # tests/ is not needed here
    files["fastpath.c"] = _resize(files["fastpath.c"], r"(VK_HASH\(\s*blocklist\s*,[^,]+,[^,]+,\s*)(\d+)",
                                  "fastpath.c")
    files["vnf.yaml"] = _resize(files["vnf.yaml"], r"(name:\s*blocklist\b[^\n]*?max_entries:\s*)(\d+)", "vnf.yaml")
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = folder / name
        if path.is_file() and path.read_text() == text:
            continue
        tmp = path.with_name(f".{name}.{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)
    return folder


def fill_blocklist(executor: Any) -> None:
    """BLOCKLIST_ENTRIES sources in the executor's ``blocklist`` (one batch syscall in the kernel)."""
    table = executor.tables["blocklist"]
    addrs = int(BLOCKLIST_BASE) + np.arange(BLOCKLIST_ENTRIES, dtype=np.uint32)
    # fastpath.c keys by ip->saddr as loaded from the packet: the address's wire bytes.
    keys = np.frombuffer(addrs.astype(">u4").tobytes(), dtype=table.key_dtype)
    table.update_batch(keys, np.ones(BLOCKLIST_ENTRIES, dtype=table.value_dtype))
    if len(table) != BLOCKLIST_ENTRIES:
        raise RuntimeError(f"{executor.name}: blocklist holds {len(table)} entries, not {BLOCKLIST_ENTRIES}")


def frames() -> dict[str, bytes]:
    """The two benchmark frames by kind, 60 bytes each (64 on the wire)."""
    src = {"miss": MISS_SRC, "hit": HIT_SRC}
    return {kind: traffic.udp_frame("02:00:00:00:00:01", "02:00:00:00:00:02", src[kind], DST, SPORT)
            for kind in PACKETS}


# ---- measurements ------------------------------------------------------------------------------
def _check(name: str, got: int, want: Verdict) -> None:
    if got != want:
        raise RuntimeError(f"{name}: verdict {got} on the benchmark frame, expected {want.name} ({int(want)})")


def _timed(loop: Callable[..., Any], *args: Any) -> tuple[int, int, Any]:
    """(wall ns, this thread's CPU ns, what it returned) of one call of ``loop(*args)``."""
    w0, c0 = time.perf_counter_ns(), time.thread_time_ns()
    out = loop(*args)
    return time.perf_counter_ns() - w0, time.thread_time_ns() - c0, out


# The timed loops take everything as arguments: locals are the cheapest names to load, and
# itertools.repeat the cheapest iteration, so the loop adds as little as Python can to a call.
def _batch_loop(calls: int, fn: Callable[..., None], buf: Any, slot_size: int, n: int, offsets: Any, lens: Any,
                res: Any) -> None:
    """``vk_native_run_batch(buf, slot_size, n, offsets, lens, res)`` ``calls`` times."""
    for _ in itertools.repeat(None, calls):
        fn(buf, slot_size, n, offsets, lens, res)


def _copy_loop(calls: int, copy: Callable[..., None], dst: Any, src: Any) -> None:
    for _ in itertools.repeat(None, calls):
        copy(dst, src)


def _fresh_batch_loop(calls: int, copy: Callable[..., None], dst: Any, src: Any, fn: Callable[..., None], buf: Any,
                      slot_size: int, n: int, offsets: Any, lens: Any, res: Any) -> None:
    """``_batch_loop`` with the frames restored before every call."""
    for _ in itertools.repeat(None, calls):
        copy(dst, src)
        fn(buf, slot_size, n, offsets, lens, res)


def _single_loop(calls: int, fn: Callable[..., None], buf: Any, offset: int, length: int, res: Any) -> None:
    """``vk_native_run(buf, offset, length, res)`` ``calls`` times."""
    for _ in itertools.repeat(None, calls):
        fn(buf, offset, length, res)


def _model_loop(packets: int, run: Callable[[bytes], Any], frame: bytes) -> Any:
    """``run(frame)`` ``packets`` times; the last result, so its verdict can be checked untimed."""
    result = None
    for _ in itertools.repeat(None, packets):
        result = run(frame)
    return result


def kernel_scenario(name: str, path: str, packet: str, prog: Any, frame: bytes, want: str, repeat: int,
                    executor: str | None) -> Scenario:
    """Test-run with ``repeat`` repetitions; the kernel's average is the number."""
    def measure() -> dict[str, float]:
        t0 = time.thread_time_ns()
        res = prog.test_run(frame, repeat=repeat)
        cpu = time.thread_time_ns() - t0
        if res.verdict != want:
            raise RuntimeError(f"{name}: {res.verdict} on the benchmark frame, expected {want}")
        # duration_ns is whole ns. This thread's CPU time is kept as a finer cross-check; wall
        # time is not, since a repeated XDP test-run idles in an RCU wait (see perf/engine.py).
        return {"ns": float(res.duration_ns), "thread_cpu_ns": cpu / repeat}

    return Scenario(name, path, packet, "ns/packet", measure, repeat, executor, {"repeat": repeat})


class NativeBatch:
    """BATCH copies of one frame in one buffer of SLOT_SIZE slots, with offsets, lengths and
    results, all allocated once; ``run(calls, n)`` times ``calls`` batch calls of ``n`` frames."""

    def __init__(self, native: NativeExecutor, frame: bytes) -> None:
        self.ffi, self.lib, self.frame = native.ffi, native.lib, frame
        self.template = np.zeros(BATCH * SLOT_SIZE, dtype=np.uint8)
        slots = self.template.reshape(BATCH, SLOT_SIZE)
        slots[:, HEADROOM:HEADROOM + len(frame)] = np.frombuffer(frame, dtype=np.uint8)
        self.buf = self.template.copy()
        self.offsets = np.full(BATCH, HEADROOM, dtype=np.uint32)
        self.lens = np.full(BATCH, len(frame), dtype=np.uint32)
        self.c_buf = self.ffi.from_buffer("uint8_t[]", self.buf)
        self.c_offsets = self.ffi.from_buffer("uint32_t[]", self.offsets)
        self.c_lens = self.ffi.from_buffer("uint32_t[]", self.lens)
        self.res = self.ffi.new("struct vk_result[]", BATCH)
        # The results as numpy, to check every verdict of a run without a Python loop.
        self.res_view = np.frombuffer(self.ffi.buffer(self.res), dtype=np.uint32).reshape(BATCH, 4)
        # The single-packet path gets a buffer of its own, as NativeExecutor.run lays it out.
        self.one = bytearray(HEADROOM + len(frame) + TAILROOM)
        self.one[HEADROOM:HEADROOM + len(frame)] = frame
        self.c_one = self.ffi.from_buffer("uint8_t[]", self.one)
        self.one_res = self.ffi.new("struct vk_result *")

    def refresh(self) -> None:
        """Put the pristine frames back: this VNF rewrites nothing, but another one would."""
        np.copyto(self.buf, self.template)
        self.res_view[:] = 0xFFFF  # so a verdict left from the last run cannot pass the check

    def run(self, calls: int, n: int = BATCH) -> tuple[int, int]:
        """Time ``calls`` calls of ``vk_native_run_batch`` on the first ``n`` frames."""
        self.refresh()
        wall, cpu, _ = _timed(_batch_loop, calls, self.lib.vk_native_run_batch, self.c_buf, SLOT_SIZE, n,
                              self.c_offsets, self.c_lens, self.res)
        return wall, cpu

    def run_fresh(self, calls: int) -> tuple[int, int, int]:
        """Time ``calls`` batch calls, each on pristine frames (the frame bytes of every slot
        copied back first, as a NIC would have written new ones): a VNF that rewrites frames in
        place would otherwise see its own output from the second call on. Returns wall and CPU
        ns of the whole loop and the wall ns of the same copies alone, to subtract."""
        self.refresh()
        view = self.buf.reshape(BATCH, SLOT_SIZE)[:, HEADROOM:HEADROOM + len(self.frame)]
        pristine = view.copy()
        copies, _, _ = _timed(_copy_loop, calls, np.copyto, view, pristine)
        wall, cpu, _ = _timed(_fresh_batch_loop, calls, np.copyto, view, pristine, self.lib.vk_native_run_batch,
                              self.c_buf, SLOT_SIZE, BATCH, self.c_offsets, self.c_lens, self.res)
        return wall, cpu, copies

    def run_single(self, calls: int) -> tuple[int, int]:
        """Time ``calls`` calls of ``vk_native_run`` on one frame."""
        self.one[HEADROOM:HEADROOM + len(self.frame)] = self.frame
        self.one_res.verdict = 0xFFFF
        wall, cpu, _ = _timed(_single_loop, calls, self.lib.vk_native_run, self.c_one, HEADROOM, len(self.frame),
                              self.one_res)
        return wall, cpu


def native_scenarios(native: NativeExecutor, frame_by_kind: dict[str, bytes], profile: Profile) -> list[Scenario]:
    """Batch and single-packet scenarios per packet kind, plus the empty call."""
    out = []
    batches = {kind: NativeBatch(native, frame) for kind, frame in frame_by_kind.items()}
    for kind, nb in batches.items():
        want = PACKETS[kind]

        def batch(nb: NativeBatch = nb, kind: str = kind, want: Verdict = want) -> dict[str, float]:
            wall, cpu = nb.run(profile.batch_calls)
            bad = np.flatnonzero(nb.res_view[:, 0] != want)
            if bad.size:
                _check(f"native_batch_{kind} frame {bad[0]}", int(nb.res_view[bad[0], 0]), want)
            pkts = profile.batch_calls * BATCH
            return {"ns": wall / pkts, "thread_cpu_ns": cpu / pkts, "ns_per_call": wall / profile.batch_calls}

        def single(nb: NativeBatch = nb, kind: str = kind, want: Verdict = want) -> dict[str, float]:
            wall, cpu = nb.run_single(profile.single_calls)
            _check(f"native_single_{kind}", nb.one_res.verdict, want)
            return {"ns": wall / profile.single_calls, "thread_cpu_ns": cpu / profile.single_calls}

        out.append(Scenario(f"native_batch_{kind}", "native_batch", kind, "ns/packet", batch,
                            profile.batch_calls * BATCH, "native",
                            {"calls": profile.batch_calls, "batch": BATCH, "slot_size": SLOT_SIZE}))
        out.append(Scenario(f"native_single_{kind}", "native_single", kind, "ns/packet", single,
                            profile.single_calls, "native", {"calls": profile.single_calls}))

    nb = batches["miss"]

    def empty() -> dict[str, float]:
        wall, cpu = nb.run(profile.empty_calls, n=0)
        return {"ns": wall / profile.empty_calls, "thread_cpu_ns": cpu / profile.empty_calls}

    out.append(Scenario("native_call", "native_call", "none", "ns/call", empty, 0, None,
                        {"calls": profile.empty_calls, "what": "vk_native_run_batch with n = 0: the Python "
                         "loop plus one cffi call with the batch's six arguments, no packet"}))
    return out


def model_scenarios(model: ModelExecutor, frame_by_kind: dict[str, bytes], profile: Profile) -> list[Scenario]:
    """``ModelExecutor.run(frame)`` per packet kind: the model's own cost plus the executor's
    bookkeeping (rx and verdict counters, the Result), as the packet tests and fuzzer pay it."""
    out = []
    n = profile.model_packets
    for kind, frame in frame_by_kind.items():
        def measure(frame: bytes = frame, kind: str = kind) -> dict[str, float]:
            gc.collect()  # garbage from the last scenario is not this run's to collect
            wall, cpu, last = _timed(_model_loop, n, model.run, frame)
            _check(f"model_{kind}", last.verdict, PACKETS[kind])
            return {"ns": wall / n, "thread_cpu_ns": cpu / n}

        out.append(Scenario(f"model_{kind}", "model", kind, "ns/packet", measure, n, "model", {"packets": n}))
    return out


def _rotated(items: list[Any], i: int) -> list[Any]:
    k = i % len(items)
    return items[k:] + items[:k]


def _progress(i: int, runs: int, results: dict[str, list[dict[str, float]]]) -> str:
    """One line per run: the latest ns of every path, miss/hit."""
    def last(name: str) -> str:
        v = results[name][-1]["ns"]
        return f"{v:.0f}" if v >= 100 else f"{v:.1f}"

    short = {"kernel": "kernel", "native_batch": "batch", "native_single": "single", "model": "model"}
    pairs = " | ".join(f"{short[p]} {last(p + '_miss')}/{last(p + '_hit')}" for p in short)
    return (f"run {i + 1}/{runs}: floor {last('kernel_floor')} | {pairs} | empty call {last('native_call')} "
            "ns (miss/hit)")


def _counter_snapshot(executors: dict[str, Any]) -> dict[str, dict[str, int]]:
    return {name: {c: n for c, (n, _) in ex.counters().items()} for name, ex in executors.items()}


def measure_all(profile: Profile, runs: int, log: Callable[[str], object] = print) -> tuple[
        dict[str, Scenario], dict[str, list[dict[str, float]]], dict[str, Any]]:
    """Build the VNF's three executors, fill the blocklist, and run every scenario ``runs``
    times, interleaved. Returns the scenarios, their per-run records, and the set-up."""
    folder = prepare_vnf()
    defaults = load_descriptor(folder).param_defaults()
    by_kind = frames()
    t0 = time.monotonic()
    exs = make_executors(folder, ("kernel", "native", "model"))
    build_s = time.monotonic() - t0
    executors = {ex.name: ex for ex in exs}
    try:
        kernel: KernelExecutor = executors["kernel"]  # type: ignore[assignment]
        native: NativeExecutor = executors["native"]  # type: ignore[assignment]
        model: ModelExecutor = executors["model"]  # type: ignore[assignment]
        for ex in exs:
            ex.configure(defaults)
            fill_blocklist(ex)
            for kind, frame in by_kind.items():  # the packets take the intended path, or nothing runs
                _check(f"{ex.name} {kind}", ex.run(frame).verdict, PACKETS[kind])
        with load(builtin("xdp_pass")) as floor_obj:
            scenarios = [kernel_scenario("kernel_floor", "kernel_floor", "miss", floor_obj.program(),
                                         by_kind["miss"], "PASS", profile.repeat, None)]
            scenarios += [kernel_scenario(f"kernel_{kind}", "kernel", kind, kernel.prog, frame,
                                          PACKETS[kind].name, profile.repeat, "kernel")
                          for kind, frame in by_kind.items()]
            scenarios += native_scenarios(native, by_kind, profile)
            scenarios += model_scenarios(model, by_kind, profile)
            for s in scenarios:  # warm-up: page in code, tables and buffers; first-call costs
                s.measure()
            before = _counter_snapshot(executors)
            results: dict[str, list[dict[str, float]]] = {s.name: [] for s in scenarios}
            for i in range(runs):
                for s in _rotated(scenarios, i):
                    results[s.name].append(s.measure())
                log(_progress(i, runs, results))
        _check_counters(scenarios, runs, before, _counter_snapshot(executors))
        setup = {"vnf_folder": str(folder), "config": defaults, "build_s": round(build_s, 2),
                 "kernel_program": kernel.prog.name, "floor_program": "datapath/progs/xdp_pass.c",
                 "blocklist_max_entries": int(kernel.tables["blocklist"].max_entries)}
        return {s.name: s for s in scenarios}, results, setup
    finally:
        for ex in exs:
            ex.close()


def _check_counters(scenarios: list[Scenario], runs: int, before: dict[str, dict[str, int]],
                    after: dict[str, dict[str, int]]) -> None:
    """Every packet a run claims was processed by the VNF went through its lookup, the right
    way: misses counted ``allowed``, hits ``blocked``, nothing else."""
    want: dict[str, dict[str, int]] = {}
    for s in scenarios:
        if s.executor:
            w = want.setdefault(s.executor, {"rx": 0, "allowed": 0, "blocked": 0})
            w["rx"] += runs * s.packets_per_run
            w["allowed" if s.packet == "miss" else "blocked"] += runs * s.packets_per_run
    for ex, w in want.items():
        got = {c: after[ex][c] - before[ex][c] for c in w}
        if got != w:
            raise RuntimeError(f"{ex}: counters moved by {got} over the timed runs, expected {w}")


# ---- command line ------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``sdk`` subcommand's options."""
    report.add_common_arguments(parser, quick_help="shorter runs (under 15 s in all); still ≥ 5 runs",
                                cpu_help="CPU every path runs on (default: the highest allowed)")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Run the SDK benchmark; print the tables and the paths of the JSON and PNG written."""
    console = sdk_report.console()
    if os.geteuid() != 0:
        console.print("[red]the sdk benchmark needs root (bpf() for the kernel executor)[/]")
        return 2
    profile = PROFILES["smoke" if args.smoke else "quick" if args.quick else "full"]
    cpu, _ = traffic.split_cpus(args.cpu)
    started = time.monotonic()
    # One CPU for everything: test-run runs on the calling CPU, and native and model share it,
    # so every path sees the same core, frequency and caches.
    with traffic.pinned({cpu}):
        console.print(f"[bold]sdk benchmark[/] ({profile.name}, {args.runs} runs), on CPU {cpu}")
        scenarios, results, setup = measure_all(profile, args.runs, log=console.print)
    cc = (sysconfig.get_config_var("CC") or "cc").split()
    params = {"profile": asdict(profile), "runs": args.runs, "cpu": cpu,
              "frame_bytes": traffic.FRAME_BYTES, "frame_bytes_on_wire": traffic.FRAME_BYTES + 4,
              "blocklist_entries": BLOCKLIST_ENTRIES,
              "blocklist_keys": f"{BLOCKLIST_BASE} + 0..{BLOCKLIST_ENTRIES - 1}",
              "packets": {"miss": {"src": MISS_SRC, "dst": DST, "verdict": "PASS"},
                          "hit": {"src": HIT_SRC, "dst": DST, "verdict": "DROP"}},
              "batch": BATCH, "slot_size": SLOT_SIZE, "headroom": HEADROOM,
              "timers": {"kernel": "BPF_PROG_TEST_RUN duration (kernel average, whole ns)",
                         "native": "time.perf_counter_ns around the call loop", "model": "time.perf_counter_ns"},
              "order": "scenarios interleaved per run, rotating start; one untimed warm-up run each",
              **setup}
    extra = {"cffi": cffi.__version__, "native_cc": report.command_output(*cc, "--version").split("\n")[0],
             "native_cflags": " ".join(CFLAGS)}
    doc = sdk_report.document(params, scenarios, results, extra, wall_s=time.monotonic() - started)
    sdk_report.print_tables(console, doc)
    for path in sdk_report.save(doc, args.out):
        console.print(f"wrote {path}")
    return 0
