"""The three executors of one VNF: the kernel (BPF_PROG_TEST_RUN on the real verifier-checked
program), the native shared object (cffi), and the Python reference model.

All three present the same face: ``tables`` (``Table``s with the same keys and values),
``configure``, ``run(pkt) -> Result``, ``counters()``, ``reset()``. The packet tests and the
fuzzer drive them side by side and demand the same answers.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any

import numpy as np

from datapath.errors import VnfkitError
from datapath.native import build_native, load_native
from datapath.native_tables import NativeTable
from datapath.objects import load
from datapath.tables import Table
from datapath.verdict import Verdict
from vnfkit.introspect import Introspection, introspect
from vnfkit.model import ModelContext, Result
from vnfkit.model_tables import ModelTable
from vnfkit.pyfile import import_file

HEADROOM = 256  # bytes before a native packet: room to push headers, as XDP's headroom
TAILROOM = 64
MAX_COUNTERS = 64
EXECUTORS = ("kernel", "native", "model")


class ExecutorError(VnfkitError):
    """An executor could not be built or could not run a packet."""


def encode_config(dtype: np.dtype | None, values: dict[str, Any]) -> np.ndarray | None:
    """Config values (from the descriptor) as the C ``struct vnf_config`` record.

    Addresses are stored as their wire bytes, as C code compares them with header fields.
    """
    if dtype is None:
        if values:
            raise ExecutorError(f"config values {sorted(values)} given, but fastpath.c has no struct vnf_config")
        return None
    rec = np.zeros((), dtype=dtype)
    for name, value in values.items():
        if name not in dtype.names:
            raise ExecutorError(f"config parameter '{name}' is not a field of struct vnf_config "
                                f"(fields: {', '.join(dtype.names)})")
        sub = dtype.fields[name][0]
        if isinstance(value, str):
            try:
                raw = ipaddress.ip_address(value).packed
            except ValueError:
                raw = bytes.fromhex(value.replace(":", ""))  # a MAC address
            rec[name] = np.frombuffer(raw.ljust(sub.itemsize, b"\0")[:sub.itemsize], dtype=sub)[0] \
                if not sub.shape else np.frombuffer(raw, dtype=sub.base)
        else:
            rec[name] = value
    return rec


class Executor:
    """The common face. Subclasses build ``tables`` (the VNF's and the vk_* internals)."""

    name: str

    def __init__(self, intro: Introspection) -> None:
        self.intro = intro
        self.tables: dict[str, Table] = {}

    def vnf_tables(self) -> dict[str, Table]:
        return {n: t for n, t in self.tables.items() if n in self.intro.tables}

    def configure(self, values: dict[str, Any]) -> None:
        rec = encode_config(self.intro.config_dtype, values)
        if rec is not None:
            self.tables["vk_config"][0] = rec

    def set_clock(self, now_ns: int) -> None:
        """Fix what vk_now() returns (0: the real clock again)."""
        self.tables["vk_clock"][0] = now_ns

    def set_port(self, port: str, ifindex: int) -> None:
        if port not in self.intro.ports:
            raise ExecutorError(f"no port '{port}' (ports: {', '.join(self.intro.ports) or 'none'})")
        self.tables["vk_ports"][self.intro.ports.index(port)] = ifindex

    def counters(self) -> dict[str, tuple[int, int]]:
        """Every counter by name: (packets, bytes), summed over CPUs."""
        arr = self._counter_array()
        return {name: (int(arr[slot, 0]), int(arr[slot, 1])) for name, slot in self.intro.counter_ids.items()}

    def _counter_array(self) -> np.ndarray:
        values = self.tables["vk_counters"].as_array()
        return np.stack([values["packets"], values["bytes"]], axis=1)

    def reset(self) -> None:
        """Empty every table and counter, as a freshly loaded VNF."""
        for table in self.tables.values():
            table.clear()

    def run(self, pkt: bytes) -> Result:
        raise NotImplementedError

    def close(self) -> None:
        pass


class KernelExecutor(Executor):
    """The BPF object in the real kernel, run with BPF_PROG_TEST_RUN at XDP."""

    name = "kernel"

    def __init__(self, intro: Introspection) -> None:
        super().__init__(intro)
        self.obj = load(intro.object_path)
        self.prog = self.obj.program("vnf_xdp")
        self.tables = dict(self.obj.maps)
        # Test-run runs on the calling CPU; pinning this thread to one CPU makes the per-CPU
        # vk_state slot it writes the one we read.
        self._affinity = os.sched_getaffinity(0)
        self.cpu = min(self._affinity)
        os.sched_setaffinity(0, {self.cpu})

    def run(self, pkt: bytes) -> Result:
        res = self.prog.test_run(pkt)
        state = self.tables["vk_state"].lookup(0, per_cpu=True)[self.cpu]
        return Result(Verdict(int(state["verdict"])), res.data, int(state["port"]))

    def close(self) -> None:
        os.sched_setaffinity(0, self._affinity)
        self.obj.close()


class NativeExecutor(Executor):
    """The same fastpath.c as a native shared object, through cffi."""

    name = "native"

    def __init__(self, intro: Introspection, source: Path) -> None:
        super().__init__(intro)
        self.module = load_native(build_native(source))
        self.ffi, self.lib = self.module.ffi, self.module.lib
        err = self.lib.vk_native_init(1)
        if err:
            raise ExecutorError(f"{source}: native tables could not be allocated: {os.strerror(-err)}")
        infos = {**intro.tables, **intro.internal}
        for i in range(self.lib.vk_native_table_count()):
            ptr = self.lib.vk_native_table(i)
            name = self.ffi.string(ptr.name).decode()
            info = infos.get(name)
            self.tables[name] = NativeTable(self.ffi, self.lib, ptr, key_dtype=info.key_dtype if info else None,
                                            value_dtype=info.value_dtype if info else None, ncpus=1)
        self._res = self.ffi.new("struct vk_result *")

    def counter_view(self) -> np.ndarray:
        """The counters as a live (ncpus, VK_MAX_COUNTERS) numpy view of the C memory (no
        copy): fields ``packets`` and ``bytes``, indexed by ``intro.counter_ids``."""
        return self.tables["vk_counters"].per_cpu_array()

    def run(self, pkt: bytes) -> Result:
        buf = bytearray(HEADROOM + len(pkt) + TAILROOM)
        buf[HEADROOM:HEADROOM + len(pkt)] = pkt
        cbuf = self.ffi.from_buffer("uint8_t[]", buf)
        self.lib.vk_native_run(cbuf, HEADROOM, len(pkt), self._res)
        r = self._res
        return Result(Verdict(r.verdict), bytes(buf[r.offset:r.offset + r.len]), r.port)

    def run_batch(self, packets: list[bytes], slot_size: int = 2048) -> list[Result]:
        """Many packets in one C call: one contiguous buffer plus offsets and lengths."""
        n = len(packets)
        buf = bytearray(n * slot_size)
        offsets = np.full(n, HEADROOM, dtype=np.uint32)
        lens = np.array([len(p) for p in packets], dtype=np.uint32)
        for i, p in enumerate(packets):
            buf[i * slot_size + HEADROOM:i * slot_size + HEADROOM + len(p)] = p
        res = self.ffi.new("struct vk_result[]", n)
        self.lib.vk_native_run_batch(self.ffi.from_buffer("uint8_t[]", buf), slot_size, n,
                                     self.ffi.from_buffer("uint32_t[]", offsets),
                                     self.ffi.from_buffer("uint32_t[]", lens), res)
        return [Result(Verdict(r.verdict), bytes(buf[i * slot_size + r.offset:i * slot_size + r.offset + r.len]),
                       r.port) for i, r in enumerate(res)]


class ModelExecutor(Executor):
    """The VNF's model.py, with ModelTables shaped like the C declarations."""

    name = "model"

    def __init__(self, intro: Introspection, model_path: Path) -> None:
        super().__init__(intro)
        self.process = _load_model(model_path)
        for name, info in {**intro.tables, **intro.internal}.items():
            if info.type == "other":
                continue  # kernel plumbing (vk_chain's program array), not data a model holds
            self.tables[name] = ModelTable(name, info.map_type, info.key_size, info.value_size, info.max_entries,
                                           key_dtype=info.key_dtype, value_dtype=info.value_dtype, ncpus=1,
                                           flags=info.flags)
        self.ctx = ModelContext(self.vnf_tables(), None, intro.counter_ids,
                                {p: i for i, p in enumerate(intro.ports)}, MAX_COUNTERS)
        self.ctx.clock = self.tables["vk_clock"]

    def configure(self, values: dict[str, Any]) -> None:
        super().configure(values)
        if self.intro.config_dtype is not None:
            self.ctx.config = self.tables["vk_config"][0]

    def reset(self) -> None:
        super().reset()
        self.ctx.counters[:] = 0

    def _counter_array(self) -> np.ndarray:
        return self.ctx.counters

    def run(self, pkt: bytes) -> Result:
        self.ctx.count("rx", len(pkt))
        try:
            result = self.process(bytearray(pkt), self.ctx)
        except Exception as exc:  # noqa: BLE001 - a model bug is reported with the packet
            raise ExecutorError(f"model.py raised {type(exc).__name__}: {exc}") from exc
        verdict = Verdict(result.verdict)
        data = bytes(result.data)
        self.ctx.count(verdict.name.lower(), len(data))
        return Result(verdict, data, result.port)


def _load_model(path: Path) -> Any:
    module = import_file(path, "a VNF folder needs model.py", ExecutorError)
    process = getattr(module, "process", None)
    if not callable(process):
        raise ExecutorError(f"{path}: defines no function process(pkt, ctx)")
    return process


def make_executors(folder: Path, which: tuple[str, ...] = EXECUTORS) -> list[Executor]:
    """Build the requested executors for the VNF in ``folder``."""
    intro = introspect(folder)
    out: list[Executor] = []
    for name in which:
        if name == "kernel":
            out.append(KernelExecutor(intro))
        elif name == "native":
            out.append(NativeExecutor(intro, folder / "fastpath.c"))
        elif name == "model":
            out.append(ModelExecutor(intro, folder / "model.py"))
        else:
            raise ExecutorError(f"unknown executor '{name}' (known: {', '.join(EXECUTORS)})")
    return out
