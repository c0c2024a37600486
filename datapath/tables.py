"""What every table looks like from Python, wherever it lives.

A VNF's tables live in the kernel (BPF maps, ``datapath.maps.Map``), in a native shared
object's memory (``datapath.native``) or in the Python reference model. All three are a
``Table``: the same key/value encoding (numpy dtypes from BTF), the same dict-like verbs,
the same per-CPU summing. A subclass supplies four raw operations on bytes; everything
else is here, once.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from datapath.errors import MapError
from datapath.kernel import ARRAY_MAP_TYPES, BPF_ANY, PERCPU_MAP_TYPES, MapType

ENOENT, EEXIST, EINVAL, ENOSPC, E2BIG = 2, 17, 22, 28, 7


def round8(n: int) -> int:
    return (n + 7) & ~7


class Table:
    """A typed table. Subclasses set the attributes in ``_setup`` and implement the
    ``_raw_*`` operations; per-CPU values travel as ``ncpus`` slots of ``stride`` bytes."""

    name: str
    type: MapType | int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    key_dtype: np.dtype
    value_dtype: np.dtype

    def _setup(self, name: str, type_: int, key_size: int, value_size: int, max_entries: int, flags: int,
               key_dtype: np.dtype | None, value_dtype: np.dtype | None, ncpus: int) -> None:
        self.name = name
        self.type = MapType(type_) if type_ in MapType._value2member_map_ else type_
        self.key_size, self.value_size = key_size, value_size
        self.max_entries, self.flags = max_entries, flags
        self.key_dtype = key_dtype if key_dtype is not None else np.dtype(f"V{key_size}")
        self.value_dtype = value_dtype if value_dtype is not None else np.dtype(f"V{value_size}")
        self.per_cpu = self.type in PERCPU_MAP_TYPES
        self.ncpus = ncpus if self.per_cpu else 1
        # The kernel lays per-CPU values out at 8-byte strides.
        self.stride = round8(value_size) if self.per_cpu else value_size

    # ---- the raw operations a subclass provides -------------------------------------------
    def _raw_lookup(self, key: bytes) -> bytes | None:
        raise NotImplementedError

    def _raw_update(self, key: bytes, value: bytes, flags: int) -> int:
        """0, or a negative errno (-EEXIST, -ENOENT, -E2BIG, ...) as the kernel would return."""
        raise NotImplementedError

    def _raw_delete(self, key: bytes) -> int:
        raise NotImplementedError

    def _raw_next_key(self, key: bytes | None) -> bytes | None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.name!r} {getattr(self.type, 'name', self.type)} "
                f"key={self.key_dtype} value={self.value_dtype} max_entries={self.max_entries}>")

    # ---- encoding -------------------------------------------------------------------------
    def pack_key(self, key: Any) -> bytes:
        return self._pack(key, self.key_dtype, "key")

    def _pack(self, obj: Any, dtype: np.dtype, what: str) -> bytes:
        size = dtype.itemsize
        if isinstance(obj, bytes | bytearray | memoryview):
            data = bytes(obj)
        elif isinstance(obj, np.ndarray | np.generic):
            data = obj.tobytes()
        elif isinstance(obj, str) and what == "key" and self.type == MapType.LPM_TRIE:
            data = self._lpm_key(obj)
        else:
            if isinstance(obj, dict) and dtype.names:
                unknown = set(obj) - set(dtype.names)
                if unknown:
                    raise MapError(f"table '{self.name}': {what} has no field(s) {sorted(unknown)} "
                                   f"(fields: {list(dtype.names)})")
                obj = tuple(obj.get(n, 0) for n in dtype.names)
            try:
                data = np.array(obj, dtype=dtype).tobytes()
            except (TypeError, ValueError, OverflowError) as exc:
                raise MapError(f"table '{self.name}': cannot encode {what} {obj!r} as {dtype}: {exc}") from exc
        if len(data) != size:
            raise MapError(f"table '{self.name}': {what} is {len(data)} bytes, the table's {what} is {size} bytes")
        return data

    def _lpm_key(self, text: str) -> bytes:
        """'198.18.0.0/15' -> LPM trie key: u32 prefix length (host order) + address bytes."""
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError as exc:
            raise MapError(f"table '{self.name}': bad prefix {text!r}: {exc}") from exc
        data = np.uint32(net.prefixlen).tobytes() + net.network_address.packed
        return data.ljust(self.key_size, b"\0")

    def _decode_value(self, raw: bytes, per_cpu: bool) -> Any:
        if not self.per_cpu:
            return np.frombuffer(raw, dtype=self.value_dtype, count=1)[0]
        rows = np.ndarray((self.ncpus,), dtype=self.value_dtype, buffer=raw, strides=(self.stride,))
        return rows.copy() if per_cpu else sum_records(rows)

    def _encode_value(self, value: Any) -> bytes:
        if not self.per_cpu:
            return self._pack(value, self.value_dtype, "value")
        if isinstance(value, np.ndarray) and value.shape == (self.ncpus,):
            cells = [self._pack(v, self.value_dtype, "value") for v in value]
        else:  # one value: the same on every CPU
            cells = [self._pack(value, self.value_dtype, "value")] * self.ncpus
        pad = b"\0" * (self.stride - self.value_size)
        return b"".join(c + pad for c in cells)

    def _decode_key(self, raw: bytes) -> Any:
        return np.frombuffer(raw, dtype=self.key_dtype, count=1)[0]

    # ---- single elements ------------------------------------------------------------------
    def lookup(self, key: Any, default: Any = None, *, per_cpu: bool = False) -> Any:
        """The value at ``key`` (summed over CPUs for per-CPU tables), or ``default``."""
        raw = self._raw_lookup(self.pack_key(key))
        return default if raw is None else self._decode_value(raw, per_cpu)

    def update(self, key: Any, value: Any, flags: int = BPF_ANY) -> None:
        ret = self._raw_update(self.pack_key(key), self._encode_value(value), flags)
        if ret < 0:
            raise MapError(f"table '{self.name}': update of key {key!r} failed: {os.strerror(-ret)}")

    def delete(self, key: Any) -> None:
        ret = self._raw_delete(self.pack_key(key))
        if ret == -ENOENT:
            raise KeyError(key)
        if ret < 0:
            raise MapError(f"table '{self.name}': delete of key {key!r} failed: {os.strerror(-ret)}")

    def __getitem__(self, key: Any) -> Any:
        missing = object()
        value = self.lookup(key, missing)
        if value is missing:
            raise KeyError(key)
        return value

    def __setitem__(self, key: Any, value: Any) -> None:
        self.update(key, value)

    def __delitem__(self, key: Any) -> None:
        self.delete(key)

    def __contains__(self, key: Any) -> bool:
        return self._raw_lookup(self.pack_key(key)) is not None

    # ---- iteration ------------------------------------------------------------------------
    def raw_keys(self) -> Iterator[bytes]:
        key = self._raw_next_key(None)
        while key is not None:
            yield key
            key = self._raw_next_key(key)

    def keys(self) -> Iterator[Any]:
        """Keys in the table's own order (entries changing under it may be seen or missed)."""
        for raw in self.raw_keys():
            yield self._decode_key(raw)

    def items(self, *, per_cpu: bool = False) -> Iterator[tuple[Any, Any]]:
        for raw in self.raw_keys():
            value = self._raw_lookup(raw)
            if value is not None:
                yield self._decode_key(raw), self._decode_value(value, per_cpu)

    def __iter__(self) -> Iterator[Any]:
        return self.keys()

    def __len__(self) -> int:
        return sum(1 for _ in self.raw_keys())

    # ---- batches (subclasses may do these in fewer calls) ---------------------------------
    def lookup_batch(self, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """All entries as (keys, values) arrays."""
        pairs = list(self.items())
        keys = np.array([k for k, _ in pairs], dtype=self.key_dtype)
        values = np.array([v for _, v in pairs], dtype=self.value_dtype)
        return keys, values

    def update_batch(self, keys: Any, values: Any, flags: int = BPF_ANY) -> None:
        for k, v in zip(np.asarray(keys, dtype=self.key_dtype), values, strict=True):
            self.update(k, v, flags)

    def delete_batch(self, keys: Any) -> None:
        for k in np.asarray(keys, dtype=self.key_dtype):
            self.delete(k)

    def clear(self) -> None:
        """Delete every entry; array tables are zeroed instead (their entries always exist)."""
        if self.type in ARRAY_MAP_TYPES:  # one batch: a 65,537-slot ring is one syscall in the kernel
            self.update_batch(np.arange(self.max_entries, dtype=np.uint32),
                              np.zeros(self.max_entries, dtype=self.value_dtype))
            return
        for raw in list(self.raw_keys()):
            self._raw_delete(raw)

    def as_array(self) -> np.ndarray:
        """An array table as a numpy array indexed by key (a snapshot here; subclasses with
        shared memory return live views)."""
        self._require_array()
        keys, values = self.lookup_batch()
        out = np.zeros(self.max_entries, dtype=self.value_dtype)
        out[keys.view(np.uint32) if keys.dtype.kind == "V" else keys.astype(np.uint32)] = values
        return out

    def _require_array(self) -> None:
        if self.type not in ARRAY_MAP_TYPES:
            raise MapError(f"table '{self.name}' is a {getattr(self.type, 'name', self.type)}, not an array")


def sum_records(rows: np.ndarray) -> Any:
    """Sum per-CPU rows field by field (nested structs too); bytes fields come from CPU 0."""
    dtype = rows.dtype
    if dtype.names is None:
        if dtype.kind in "iuf" or (dtype.subdtype and dtype.subdtype[0].kind in "iuf"):
            return rows.sum(axis=0, dtype=dtype.base if dtype.subdtype else dtype)
        return rows[0]
    out = np.zeros((), dtype=dtype)
    for name in dtype.names:
        out[name] = sum_records(rows[name])
    return out[()]


__all__ = ["Table", "sum_records", "round8", "ENOENT", "EEXIST", "EINVAL", "ENOSPC", "E2BIG"]
