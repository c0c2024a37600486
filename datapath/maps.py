"""Typed access to BPF maps: keys and values as numpy values shaped by the map's BTF.

A ``Map`` is built from a file descriptor alone (``Map.from_fd``), reading the map's info
and BTF from the kernel, so maps from a fresh load and maps re-opened from a pin in another
process behave the same.
"""

from __future__ import annotations

import ipaddress
import mmap
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from datapath.btf import map_dtypes
from datapath.errors import MapError
from datapath.kernel import ARRAY_MAP_TYPES, BPF_ANY, BPF_F_MMAPABLE, PERCPU_MAP_TYPES, MapType
from datapath.libbpf import ffi, lib, num_possible_cpus

_ENOENT = 2


def _round8(n: int) -> int:
    return (n + 7) & ~7


class Map:
    """One BPF map. ``lookup``/``update``/``delete``, ``keys``/``items``, batch variants,
    ``as_array`` for array maps. Per-CPU values are summed on read unless ``per_cpu=True``."""

    def __init__(self, fd: int, *, owns_fd: bool, name: str | None = None) -> None:
        self.fd = fd
        self._owns_fd = owns_fd
        info = ffi.new("struct bpf_map_info *")
        size = ffi.new("__u32 *", ffi.sizeof("struct bpf_map_info"))
        if lib.bpf_obj_get_info_by_fd(fd, info, size) < 0:
            raise MapError(f"map fd {fd}: cannot read map info: {os.strerror(ffi.errno)}")
        self.id = info.id
        self.name = name or ffi.string(info.name).decode()
        self.type = MapType(info.type) if info.type in MapType._value2member_map_ else info.type
        self.key_size = info.key_size
        self.value_size = info.value_size
        self.max_entries = info.max_entries
        self.flags = info.map_flags
        self.key_dtype, self.value_dtype = map_dtypes(
            info.btf_id, info.btf_key_type_id, info.btf_value_type_id, info.key_size, info.value_size
        )
        self.per_cpu = self.type in PERCPU_MAP_TYPES
        self.ncpus = num_possible_cpus() if self.per_cpu else 1
        # The kernel lays per-CPU values (and array map slots) out at 8-byte strides.
        self._stride = _round8(self.value_size) if self.per_cpu else self.value_size
        self._mmap: mmap.mmap | None = None

    @classmethod
    def from_fd(cls, fd: int, *, owns_fd: bool = False, name: str | None = None) -> Map:
        return cls(fd, owns_fd=owns_fd, name=name)

    def close(self) -> None:
        if self._mmap is not None:
            try:
                self._mmap.close()
            except BufferError:
                pass  # a numpy view still uses it; the mapping goes with the view
            self._mmap = None
        if self._owns_fd and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finaliser
            pass

    def __repr__(self) -> str:
        return (
            f"<Map {self.name!r} {getattr(self.type, 'name', self.type)} key={self.key_dtype} "
            f"value={self.value_dtype} max_entries={self.max_entries}>"
        )

    # ---- encoding -------------------------------------------------------------------------
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
                obj = tuple(obj.get(n, 0) for n in dtype.names)
            try:
                data = np.array(obj, dtype=dtype).tobytes()
            except (TypeError, ValueError, OverflowError) as exc:
                raise MapError(f"map '{self.name}': cannot encode {what} {obj!r} as {dtype}: {exc}") from exc
        if len(data) != size:
            raise MapError(f"map '{self.name}': {what} is {len(data)} bytes, the map's {what} is {size} bytes")
        return data

    def _lpm_key(self, text: str) -> bytes:
        """'198.18.0.0/15' -> LPM trie key: u32 prefix length (host order) + address bytes."""
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError as exc:
            raise MapError(f"map '{self.name}': bad prefix {text!r}: {exc}") from exc
        return np.uint32(net.prefixlen).tobytes() + net.network_address.packed

    def _value_buffer(self):  # noqa: ANN202 - cffi buffer
        return ffi.new("char[]", self._stride * self.ncpus)

    def _decode_value(self, buf: bytes, per_cpu: bool) -> Any:
        if not self.per_cpu:
            return np.frombuffer(buf, dtype=self.value_dtype, count=1)[0]
        rows = np.ndarray((self.ncpus,), dtype=self.value_dtype, buffer=buf, strides=(self._stride,))
        return rows.copy() if per_cpu else sum_records(rows)

    def _encode_value(self, value: Any) -> bytes:
        if not self.per_cpu:
            return self._pack(value, self.value_dtype, "value")
        if isinstance(value, np.ndarray) and value.shape == (self.ncpus,):
            cells = [self._pack(v, self.value_dtype, "value") for v in value]
        else:  # one value: the same on every CPU
            cells = [self._pack(value, self.value_dtype, "value")] * self.ncpus
        pad = b"\0" * (self._stride - self.value_size)
        return b"".join(c + pad for c in cells)

    # ---- single elements ------------------------------------------------------------------
    def lookup(self, key: Any, default: Any = None, *, per_cpu: bool = False) -> Any:
        """The value at ``key`` (summed over CPUs for per-CPU maps), or ``default``."""
        k = self._pack(key, self.key_dtype, "key")
        buf = self._value_buffer()
        if lib.bpf_map_lookup_elem(self.fd, k, buf) < 0:
            if ffi.errno == _ENOENT:
                return default
            raise MapError(f"map '{self.name}': lookup failed: {os.strerror(ffi.errno)}")
        return self._decode_value(ffi.buffer(buf)[:], per_cpu)

    def update(self, key: Any, value: Any, flags: int = BPF_ANY) -> None:
        k = self._pack(key, self.key_dtype, "key")
        v = self._encode_value(value)
        if lib.bpf_map_update_elem(self.fd, k, v, flags) < 0:
            raise MapError(f"map '{self.name}': update of key {key!r} failed: {os.strerror(ffi.errno)}")

    def delete(self, key: Any) -> None:
        k = self._pack(key, self.key_dtype, "key")
        if lib.bpf_map_delete_elem(self.fd, k) < 0:
            if ffi.errno == _ENOENT:
                raise KeyError(key)
            raise MapError(f"map '{self.name}': delete of key {key!r} failed: {os.strerror(ffi.errno)}")

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
        missing = object()
        return self.lookup(key, missing) is not missing

    # ---- iteration ------------------------------------------------------------------------
    def keys(self) -> Iterator[Any]:
        """Keys by BPF_MAP_GET_NEXT_KEY (entries changing under it may be seen or missed)."""
        prev = ffi.NULL
        nxt = ffi.new("char[]", self.key_size)
        while lib.bpf_map_get_next_key(self.fd, prev, nxt) == 0:
            raw = ffi.buffer(nxt)[:]
            yield np.frombuffer(raw, dtype=self.key_dtype, count=1)[0]
            prev = ffi.new("char[]", raw)

    def items(self, *, per_cpu: bool = False) -> Iterator[tuple[Any, Any]]:
        for k in self.keys():
            v = self.lookup(k, per_cpu=per_cpu)
            if v is not None:
                yield k, v

    def __iter__(self) -> Iterator[Any]:
        return self.keys()

    def __len__(self) -> int:
        return sum(1 for _ in self.keys())

    # ---- batches --------------------------------------------------------------------------
    def lookup_batch(self, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """All entries as (keys, values) arrays in a few syscalls (BPF_MAP_LOOKUP_BATCH);
        falls back to iteration on map types without batch support (LPM trie)."""
        keys_out, vals_out = [], []
        token_in, token_out = ffi.NULL, ffi.new("char[]", max(self.key_size, 8))
        keys = ffi.new("char[]", self.key_size * chunk)
        vals = ffi.new("char[]", self._stride * self.ncpus * chunk)
        opts = ffi.new("struct bpf_map_batch_opts *", {"sz": ffi.sizeof("struct bpf_map_batch_opts")})
        while True:
            count = ffi.new("__u32 *", chunk)
            ret = lib.bpf_map_lookup_batch(self.fd, token_in, token_out, keys, vals, count, opts)
            err = ffi.errno if ret < 0 else 0
            if ret < 0 and err not in (_ENOENT,):
                if not keys_out and err in (22, 95, 524):  # EINVAL/EOPNOTSUPP/ENOTSUPP: no batch ops
                    return self._lookup_by_iteration()
                raise MapError(f"map '{self.name}': batch lookup failed: {os.strerror(err)}")
            n = count[0]
            keys_out.append(np.frombuffer(ffi.buffer(keys, n * self.key_size)[:], dtype=self.key_dtype))
            raw = ffi.buffer(vals, n * self._stride * self.ncpus)[:]
            vals_out.append(self._decode_rows(raw, n))
            if err == _ENOENT:
                break
            token_in = ffi.new("char[]", ffi.buffer(token_out)[:])
        return np.concatenate(keys_out), np.concatenate(vals_out)

    def _decode_rows(self, raw: bytes, n: int) -> np.ndarray:
        if not self.per_cpu:
            return np.frombuffer(raw, dtype=self.value_dtype, count=n)
        rows = np.ndarray((n, self.ncpus), dtype=self.value_dtype, buffer=raw,
                          strides=(self._stride * self.ncpus, self._stride))
        return np.array([sum_records(r) for r in rows], dtype=self.value_dtype)

    def _lookup_by_iteration(self) -> tuple[np.ndarray, np.ndarray]:
        pairs = list(self.items())
        keys = np.array([k for k, _ in pairs], dtype=self.key_dtype)
        vals = np.array([v for _, v in pairs], dtype=self.value_dtype)
        return keys, vals

    def update_batch(self, keys: Any, values: Any, flags: int = BPF_ANY) -> None:
        """Write many entries in one syscall (BPF_MAP_UPDATE_BATCH)."""
        k = np.ascontiguousarray(np.asarray(keys, dtype=self.key_dtype))
        if self.per_cpu:
            v = b"".join(self._encode_value(x) for x in values)
        else:
            v = np.ascontiguousarray(np.asarray(values, dtype=self.value_dtype)).tobytes()
        n = len(k)
        count = ffi.new("__u32 *", n)
        opts = ffi.new("struct bpf_map_batch_opts *", {"sz": ffi.sizeof("struct bpf_map_batch_opts"),
                                                       "elem_flags": flags})
        if lib.bpf_map_update_batch(self.fd, ffi.from_buffer(k), v, count, opts) < 0:
            raise MapError(f"map '{self.name}': batch update stopped after {count[0]} of {n} entries: "
                           f"{os.strerror(ffi.errno)}")

    def delete_batch(self, keys: Any) -> None:
        k = np.ascontiguousarray(np.asarray(keys, dtype=self.key_dtype))
        n = len(k)
        count = ffi.new("__u32 *", n)
        opts = ffi.new("struct bpf_map_batch_opts *", {"sz": ffi.sizeof("struct bpf_map_batch_opts")})
        if lib.bpf_map_delete_batch(self.fd, ffi.from_buffer(k), count, opts) < 0:
            raise MapError(f"map '{self.name}': batch delete stopped after {count[0]} of {n} entries: "
                           f"{os.strerror(ffi.errno)}")

    def clear(self) -> None:
        """Delete every entry (hash-like maps); array maps are zeroed instead."""
        if self.type in ARRAY_MAP_TYPES:
            zero = np.zeros((), dtype=self.value_dtype)
            for i in range(self.max_entries):
                self.update(i, zero)
            return
        for k in list(self.keys()):
            try:
                self.delete(k)
            except KeyError:
                pass

    # ---- arrays as numpy ------------------------------------------------------------------
    def as_array(self) -> np.ndarray:
        """An array map as a numpy array indexed by key.

        Maps created with BPF_F_MMAPABLE give a live, zero-copy view (writes go straight to
        the kernel's memory); others give a snapshot read in one batch. Per-CPU arrays are
        summed over CPUs (a snapshot).
        """
        if self.type not in ARRAY_MAP_TYPES:
            raise MapError(f"map '{self.name}' is a {getattr(self.type, 'name', self.type)}, not an array map")
        if self.type == MapType.ARRAY and self.flags & BPF_F_MMAPABLE:
            if self._mmap is None:
                length = _round8(self.value_size) * self.max_entries
                length = (length + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE
                self._mmap = mmap.mmap(self.fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            return np.ndarray((self.max_entries,), dtype=self.value_dtype, buffer=self._mmap,
                              strides=(_round8(self.value_size),))
        keys, values = self.lookup_batch()
        out = np.zeros(self.max_entries, dtype=self.value_dtype)
        out[keys.view(np.uint32) if keys.dtype.kind == "V" else keys.astype(np.uint32)] = values
        return out


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
