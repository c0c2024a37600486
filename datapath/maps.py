"""BPF maps as ``Table``s: keys and values typed by the map's BTF, read from the kernel.

A ``Map`` is built from a file descriptor alone (``Map.from_fd``), reading the map's info
and BTF from the kernel, so maps from a fresh load and maps re-opened from a pin in another
process behave the same. Batches use BPF_MAP_*_BATCH; BPF_F_MMAPABLE arrays are viewed
in place.
"""

from __future__ import annotations

import mmap
import os

import numpy as np

from datapath.btf import map_dtypes
from datapath.errors import MapError
from datapath.kernel import BPF_ANY, BPF_F_MMAPABLE, MapType
from datapath.libbpf import ffi, lib, num_possible_cpus
from datapath.tables import ENOENT, Table, round8, sum_records

__all__ = ["Map", "sum_records"]


class Map(Table):
    """One BPF map, by fd."""

    def __init__(self, fd: int, *, owns_fd: bool, name: str | None = None) -> None:
        self.fd = fd
        self._owns_fd = owns_fd
        self._mmap: mmap.mmap | None = None
        info = ffi.new("struct bpf_map_info *")
        size = ffi.new("__u32 *", ffi.sizeof("struct bpf_map_info"))
        if lib.bpf_obj_get_info_by_fd(fd, info, size) < 0:
            raise MapError(f"map fd {fd}: cannot read map info: {os.strerror(ffi.errno)}")
        self.id = info.id
        key_dtype, value_dtype = map_dtypes(info.btf_id, info.btf_key_type_id, info.btf_value_type_id,
                                            info.key_size, info.value_size)
        self._setup(name or ffi.string(info.name).decode(), info.type, info.key_size, info.value_size,
                    info.max_entries, info.map_flags, key_dtype, value_dtype, num_possible_cpus())

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

    # ---- raw operations: one syscall each ---------------------------------------------------
    def _raw_lookup(self, key: bytes) -> bytes | None:
        buf = ffi.new("char[]", self.stride * self.ncpus)
        if lib.bpf_map_lookup_elem(self.fd, key, buf) < 0:
            if ffi.errno == ENOENT:
                return None
            raise MapError(f"map '{self.name}': lookup failed: {os.strerror(ffi.errno)}")
        return ffi.buffer(buf)[:]

    def _raw_update(self, key: bytes, value: bytes, flags: int) -> int:
        return 0 if lib.bpf_map_update_elem(self.fd, key, value, flags) == 0 else -ffi.errno

    def _raw_delete(self, key: bytes) -> int:
        return 0 if lib.bpf_map_delete_elem(self.fd, key) == 0 else -ffi.errno

    def _raw_next_key(self, key: bytes | None) -> bytes | None:
        nxt = ffi.new("char[]", self.key_size)
        if lib.bpf_map_get_next_key(self.fd, ffi.NULL if key is None else key, nxt) < 0:
            return None
        return ffi.buffer(nxt)[:]

    # ---- batches: a few syscalls for the whole map ------------------------------------------
    def lookup_batch(self, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """All entries as (keys, values) arrays by BPF_MAP_LOOKUP_BATCH; falls back to
        iteration on map types without batch support (LPM trie)."""
        keys_out, vals_out = [], []
        token_in, token_out = ffi.NULL, ffi.new("char[]", max(self.key_size, 8))
        keys = ffi.new("char[]", self.key_size * chunk)
        vals = ffi.new("char[]", self.stride * self.ncpus * chunk)
        opts = ffi.new("struct bpf_map_batch_opts *", {"sz": ffi.sizeof("struct bpf_map_batch_opts")})
        while True:
            count = ffi.new("__u32 *", chunk)
            ret = lib.bpf_map_lookup_batch(self.fd, token_in, token_out, keys, vals, count, opts)
            err = ffi.errno if ret < 0 else 0
            if ret < 0 and err != ENOENT:
                if not keys_out and err in (22, 95, 524):  # EINVAL/EOPNOTSUPP/ENOTSUPP: no batch ops
                    return super().lookup_batch(chunk)
                raise MapError(f"map '{self.name}': batch lookup failed: {os.strerror(err)}")
            n = count[0]
            keys_out.append(np.frombuffer(ffi.buffer(keys, n * self.key_size)[:], dtype=self.key_dtype))
            raw = ffi.buffer(vals, n * self.stride * self.ncpus)[:]
            vals_out.append(self._decode_rows(raw, n))
            if err == ENOENT:
                break
            token_in = ffi.new("char[]", ffi.buffer(token_out)[:])
        return np.concatenate(keys_out), np.concatenate(vals_out)

    def _decode_rows(self, raw: bytes, n: int) -> np.ndarray:
        if not self.per_cpu:
            return np.frombuffer(raw, dtype=self.value_dtype, count=n)
        rows = np.ndarray((n, self.ncpus), dtype=self.value_dtype, buffer=raw,
                          strides=(self.stride * self.ncpus, self.stride))
        return np.array([sum_records(r) for r in rows], dtype=self.value_dtype)

    def update_batch(self, keys: object, values: object, flags: int = BPF_ANY) -> None:
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

    def delete_batch(self, keys: object) -> None:
        k = np.ascontiguousarray(np.asarray(keys, dtype=self.key_dtype))
        n = len(k)
        count = ffi.new("__u32 *", n)
        opts = ffi.new("struct bpf_map_batch_opts *", {"sz": ffi.sizeof("struct bpf_map_batch_opts")})
        if lib.bpf_map_delete_batch(self.fd, ffi.from_buffer(k), count, opts) < 0:
            raise MapError(f"map '{self.name}': batch delete stopped after {count[0]} of {n} entries: "
                           f"{os.strerror(ffi.errno)}")

    def as_array(self) -> np.ndarray:
        """An array map as a numpy array indexed by key.

        Maps created with BPF_F_MMAPABLE give a live, zero-copy view (writes go straight to
        the kernel's memory); others give a snapshot read in one batch. Per-CPU arrays are
        summed over CPUs (a snapshot).
        """
        self._require_array()
        if self.type == MapType.ARRAY and self.flags & BPF_F_MMAPABLE:
            if self._mmap is None:
                length = round8(self.value_size) * self.max_entries
                length = (length + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE
                self._mmap = mmap.mmap(self.fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            return np.ndarray((self.max_entries,), dtype=self.value_dtype, buffer=self._mmap,
                              strides=(round8(self.value_size),))
        return super().as_array()
