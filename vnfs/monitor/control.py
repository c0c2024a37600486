"""The monitor's control plane: configuration, and reading what the fast path counted.

``config()`` turns human settings into the descriptor's parameter values. ``Monitor`` reads
the tables of any executor or of a ``KernelInstance`` (anything mapping table names to
``datapath.tables.Table``) and answers: the resident flows, the count-min sketch's estimate
for a flow with its error bound, the top-K heavy hitters, the histograms; it resets the
tables and exports everything as a dict or JSON for an agent.

Count-min sketch (Cormode and Muthukrishnan, 2005): d = 4 rows of w = 2048 cells; a flow
adds its packets and bytes to one cell per row and its estimate is the minimum over rows.
With N the total of the stream (all packets or bytes counted), the estimate is never below
the true count and exceeds it by more than eps * N, eps = e / w = 0.13 %, with probability
at most delta = e^-d = 1.8 %.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from datapath.errors import MapError, VnfkitError
from datapath.tables import Table
from vnfkit.pyfile import import_file

_HERE = Path(__file__).parent
model = import_file(_HERE / "model.py", "the monitor's model and hash functions", VnfkitError)
fk = import_file(_HERE / "flowkey.py", "the monitor's flow keys", VnfkitError)

FlowKey = fk.FlowKey
FlowKeyError = fk.FlowKeyError
flow_key = fk.flow_key
parse_flow = fk.parse_flow

DEFAULT_SEED = 0x5A5A5A5A  # vnf.yaml's sketch_seed default
EPSILON = math.e / model.SKETCH_COLS
DELTA = math.exp(-model.SKETCH_ROWS)
TABLES = ("flows", "sketch", "proto_hist", "size_hist", "vlan_hist")
ARRAYS = TABLES[1:]
MODES = {"pass": 0, "next": 1}


class MonitorError(VnfkitError):
    """Bad input to the monitor's control plane, or tables that are not the monitor's."""


def config(mode: str = "pass", seed: int = DEFAULT_SEED) -> dict[str, int]:
    """Parameter values for ``KernelInstance(..., config=...)`` or ``configure()``:
    ``mode`` "pass" (standalone) or "next" (in a service chain), the sketch's hash ``seed``."""
    if mode not in MODES:
        raise MonitorError(f"monitor config: mode {mode!r} is not one of {', '.join(MODES)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= 0xFFFFFFFF:
        raise MonitorError(f"monitor config: seed {seed!r} is not an integer in 0..2**32-1")
    return {"chained": MODES[mode], "sketch_seed": seed}


@dataclass
class Count:
    packets: int
    bytes: int


@dataclass
class FlowStats:
    """A resident flow's exact counts (from the ``flows`` table)."""

    key: Any  # FlowKey
    packets: int
    bytes: int
    first_ns: int
    last_ns: int
    tcp_flags: int
    min_len: int
    max_len: int

    def as_dict(self) -> dict[str, Any]:
        return {"key": str(self.key), "packets": self.packets, "bytes": self.bytes, "first_ns": self.first_ns,
                "last_ns": self.last_ns, "tcp_flags": self.tcp_flags, "min_len": self.min_len, "max_len": self.max_len}


@dataclass
class Estimate:
    """A sketch estimate: ``true <= packets`` and ``packets <= true + bound_packets`` with
    probability ``confidence`` (the same for bytes)."""

    packets: int
    bytes: int
    bound_packets: float
    bound_bytes: float
    confidence: float


@dataclass
class HeavyHitter:
    key: Any  # FlowKey
    estimate: Estimate
    exact: FlowStats | None  # the flow table's counts while the flow is resident

    def as_dict(self) -> dict[str, Any]:
        return {"key": str(self.key), "estimate": asdict(self.estimate),
                "exact": None if self.exact is None else {"packets": self.exact.packets, "bytes": self.exact.bytes}}


class Monitor:
    """The monitor's tables, read and reset. ``tables``: ``KernelInstance.tables``,
    ``Executor.vnf_tables()`` or any mapping of the names in TABLES to ``Table``s; ``seed``:
    the ``sketch_seed`` the fast path runs with (estimates need the same hash)."""

    def __init__(self, tables: Mapping[str, Table], seed: int = DEFAULT_SEED) -> None:
        missing = [t for t in TABLES if t not in tables]
        if missing:
            raise MonitorError(f"not the monitor's tables: {', '.join(missing)} missing "
                               f"(have: {', '.join(tables) or 'none'})")
        cells = tables["sketch"].max_entries
        if cells != model.SKETCH_ROWS * model.SKETCH_COLS:
            raise MonitorError(f"table 'sketch' has {cells} cells; this control plane reads "
                               f"{model.SKETCH_ROWS} x {model.SKETCH_COLS} = {model.SKETCH_ROWS * model.SKETCH_COLS}")
        self.seed = config(seed=seed)["sketch_seed"]
        self.tables = tables

    # ---- reading -------------------------------------------------------------------------
    def _read_flows(self) -> tuple[np.ndarray, np.ndarray]:
        """The flow table as (keys as an (n, 44) uint8 array, values), in key byte order."""
        keys, values = self.tables["flows"].lookup_batch()
        raw = np.frombuffer(keys.tobytes(), dtype=np.uint8).reshape(-1, model.KEY_SIZE)
        order = np.lexsort(raw.T[::-1]) if len(raw) else np.arange(0)
        return raw[order], values[order]

    @staticmethod
    def _stats(raw_key: np.ndarray, v: Any) -> FlowStats:
        return FlowStats(FlowKey.unpack(raw_key.tobytes()), int(v["packets"]), int(v["bytes"]), int(v["first_ns"]),
                         int(v["last_ns"]), int(v["tcp_flags"]), int(v["min_len"]), int(v["max_len"]))

    def flows(self) -> list[FlowStats]:
        """Every resident flow with its exact counts, in key order (the same on every executor)."""
        keys, values = self._read_flows()
        return [self._stats(k, v) for k, v in zip(keys, values, strict=True)]

    def sketch(self) -> np.ndarray:
        """The sketch as a (rows, cols) array of {packets, bytes} records (a snapshot)."""
        return self.tables["sketch"].as_array().reshape(model.SKETCH_ROWS, model.SKETCH_COLS)

    @staticmethod
    def totals(sketch: np.ndarray) -> Count:
        """N, the stream's total: every packet adds to exactly one cell of each row."""
        return Count(int(sketch[0]["packets"].sum()), int(sketch[0]["bytes"].sum()))

    def _estimates(self, keys: np.ndarray, sketch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sketch estimates (packets, bytes) of an (n, 44) array of packed keys, all at once:
        the minimum over rows of the key's cell in each row."""
        words = np.ascontiguousarray(keys).view("<u4").astype(np.uint64)
        cols = model.sketch_cols([words[:, i] for i in range(model.KEY_WORDS)], self.seed)
        cells = np.stack([sketch[row][np.asarray(col, dtype=np.int64)] for row, col in enumerate(cols)])
        return cells["packets"].min(axis=0), cells["bytes"].min(axis=0)

    def _estimate(self, packets: int, nbytes: int, total: Count) -> Estimate:
        return Estimate(int(packets), int(nbytes), EPSILON * total.packets, EPSILON * total.bytes, 1 - DELTA)

    def estimate(self, flow: Any) -> Estimate:
        """The sketch's estimate for one flow (a FlowKey or its text), resident or not."""
        key = parse_flow(flow) if isinstance(flow, str) else flow
        sketch = self.sketch()
        packets, nbytes = self._estimates(np.frombuffer(key.pack(), dtype=np.uint8).reshape(1, -1), sketch)
        return self._estimate(packets[0], nbytes[0], self.totals(sketch))

    def top_k(self, k: int = 10, by: str = "bytes") -> list[HeavyHitter]:
        """The ``k`` resident flows with the largest estimates of ``by`` ("bytes" or
        "packets"), largest first, ties in key order. Candidates are the flow table's keys (a
        flow evicted from it still counts in every estimate, but cannot be named)."""
        if by not in ("bytes", "packets"):
            raise MonitorError(f"top_k: by={by!r} is not 'bytes' or 'packets'")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise MonitorError(f"top_k: k={k!r} is not a positive integer")
        keys, values = self._read_flows()  # before the sketch: the fast path adds to the sketch first
        sketch = self.sketch()
        packets, nbytes = self._estimates(keys, sketch)
        low = np.flatnonzero((packets < values["packets"]) | (nbytes < values["bytes"]))
        if len(low):
            i = low[0]
            f = self._stats(keys[i], values[i])
            raise MonitorError(f"flow '{f.key}': sketch estimate {int(packets[i])} packets / {int(nbytes[i])} bytes "
                               f"is below its exact {f.packets} / {f.bytes}: the fast path hashes with another "
                               f"sketch_seed than {self.seed:#x}, or the sketch was reset apart from the flows")
        est = packets if by == "packets" else nbytes
        order = np.argsort(-est.astype(np.int64), kind="stable")[:k]  # keys are sorted: ties stay in key order
        total = self.totals(sketch)
        return [HeavyHitter(FlowKey.unpack(keys[i].tobytes()), self._estimate(packets[i], nbytes[i], total),
                            self._stats(keys[i], values[i])) for i in order]

    def histograms(self) -> dict[str, dict[str, Count]]:
        """Non-empty bins: by IP protocol, by frame size (log2 bins), by outer VLAN id."""
        out: dict[str, dict[str, Count]] = {}
        for table, label in (("proto_hist", lambda i: fk.PROTOCOL_NAMES.get(i, str(i))),
                             ("size_hist", lambda i: f"{1 << i}-{(2 << i) - 1}"), ("vlan_hist", str)):
            arr = self.tables[table].as_array()
            out[table.removesuffix("_hist")] = {label(int(i)): Count(int(arr[i]["packets"]), int(arr[i]["bytes"]))
                                                for i in np.flatnonzero(arr["packets"])}
        return out

    # ---- writing -------------------------------------------------------------------------
    def reset(self) -> None:
        """Empty the flow table and zero the sketch and histograms. The sketch goes first,
        so packets arriving meanwhile never leave an estimate below an exact count."""
        for name in ARRAYS:
            table = self.tables[name]
            zeros = np.zeros(table.max_entries, dtype=table.value_dtype)
            try:
                table.update_batch(np.arange(table.max_entries, dtype=np.uint32), zeros)  # one syscall on a map
            except MapError:
                table.clear()
        self.tables["flows"].clear()

    # ---- export --------------------------------------------------------------------------
    def export(self, k: int = 10) -> dict[str, Any]:
        """Everything as plain data (JSON-ready): sketch parameters and totals, the top-k by
        bytes, every resident flow, the histograms."""
        top = self.top_k(k)
        sketch = self.sketch()
        return {
            "sketch": {"rows": model.SKETCH_ROWS, "cols": model.SKETCH_COLS, "seed": self.seed, "epsilon": EPSILON,
                       "delta": DELTA, "total": asdict(self.totals(sketch))},
            "top": [h.as_dict() for h in top],
            "flows": [f.as_dict() for f in sorted(self.flows(), key=lambda f: -f.bytes)],  # stable: ties in key order
            "histograms": {name: {label: asdict(c) for label, c in bins.items()}
                           for name, bins in self.histograms().items()},
        }

    def export_json(self, k: int = 10) -> str:
        return json.dumps(self.export(k), indent=2)
