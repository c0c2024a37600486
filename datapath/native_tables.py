"""The native executor's tables (``datapath/native/vk_tables.c``) as ``Table``s.

The native executor compiles ``vk_tables.c`` together with a VNF's ``fastpath.c`` into one
cffi extension; a ``NativeTable`` wraps one of its ``struct vk_table *`` through that
extension's ``ffi``/``lib`` pair. The control-plane verbs (``lookup``, ``update``, iteration)
go through the ``vk_table_sys_*`` functions, which behave like the bpf() syscall on a map;
``lookup_ref``/``fp_update``/``fp_delete`` are the fast path's verbs, for tests and models
that must act exactly as ``fastpath.c`` does (LRU refresh, this CPU's slot, in-place writes).

The extension must declare (cdef) the functions of ``vnfkit/native_tables.h`` and the full
``struct vk_table``; see ``NATIVE_TABLES_CDEF``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from datapath.errors import MapError
from datapath.kernel import BPF_ANY, MapType
from datapath.tables import ENOENT, Table, round8

__all__ = ["NativeTable", "NATIVE_TABLES_CDEF", "VK_MAX_CPUS", "sum_cpu_rows"]

VK_MAX_CPUS = 64

# What a cffi extension built with vk_tables.c must cdef for NativeTable to work: the whole
# header, with the struct spelled out (API mode checks it against the real one at build time).
NATIVE_TABLES_CDEF = r"""
enum vk_table_type {
    VK_T_HASH = 1, VK_T_ARRAY = 2, VK_T_PERCPU_ARRAY = 6, VK_T_LRU_HASH = 9, VK_T_LPM_TRIE = 11
};
#define VK_ANY 0
#define VK_NOEXIST 1
#define VK_EXIST 2
#define VK_MAX_CPUS 64
struct vk_table {
    const char *name;
    uint32_t type;
    uint32_t key_size;
    uint32_t value_size;
    uint32_t max_entries;
    uint32_t flags;
    void *impl;
};
struct vk_arena {
    unsigned char *base;
    uint64_t size;
    uint64_t used;
};
void vk_tables_set_arena(struct vk_arena *arena);
int vk_table_init(struct vk_table *t, uint32_t ncpus);
void vk_table_free(struct vk_table *t);
void *vk_table_lookup(struct vk_table *t, const void *key);
int vk_table_update(struct vk_table *t, const void *key, const void *value, uint64_t flags);
int vk_table_delete(struct vk_table *t, const void *key);
int vk_table_sys_lookup(struct vk_table *t, const void *key, void *values);
int vk_table_sys_update(struct vk_table *t, const void *key, const void *values, uint64_t flags);
int vk_table_next_key(struct vk_table *t, const void *key, void *next_key);
void *vk_table_array_base(struct vk_table *t);
extern uint32_t vk_cpu;  /* __thread in C: API mode takes its address on each access, so
                            lib.vk_cpu reads and writes the calling thread's own */
"""


def sum_cpu_rows(rows: np.ndarray) -> np.ndarray:
    """Sum an (ncpus, n) array of records over CPUs, field by field (nested structs too);
    non-numeric fields come from CPU 0, as ``datapath.tables.sum_records`` does for one row."""
    dtype = rows.dtype
    if dtype.names is None:
        if dtype.kind in "iuf":
            return rows.sum(axis=0, dtype=dtype)
        return rows[0].copy()
    out = np.zeros(rows.shape[1:], dtype=dtype)
    for name in dtype.names:
        out[name] = sum_cpu_rows(rows[name])
    return out


class NativeTable(Table):
    """One ``struct vk_table`` of a cffi extension built with ``vk_tables.c``.

    ``table_ptr`` is a ``struct vk_table *`` (or the struct itself, e.g. ``lib.flows``)
    already set up with ``vk_table_init``; the caller keeps it (and the extension) alive
    and frees it, after which this object and its array views must not be used.
    ``ncpus`` is the count the table was initialised with: by default it is read from the
    table; a different explicit count is refused rather than risking reads past the values.
    Not thread-safe: the control-plane verbs must not run while a worker uses the table.
    """

    def __init__(self, ffi: Any, lib: Any, table_ptr: Any, key_dtype: np.dtype | None = None,
                 value_dtype: np.dtype | None = None, ncpus: int | None = None, *, owner: Any = None) -> None:
        if ffi.typeof(table_ptr).kind == "struct":
            table_ptr = ffi.addressof(table_ptr)
        self._ffi, self._lib, self._t = ffi, lib, table_ptr
        self._owner = owner  # whatever owns the struct's memory, kept alive with the table
        t = table_ptr
        name = ffi.string(t.name).decode() if t.name != ffi.NULL else "?"
        if t.impl == ffi.NULL:
            raise MapError(f"native table '{name}' is not initialised (call vk_table_init first)")
        # vk_tables.c keeps {u32 type; u32 ncpus} at the start of every impl for this check.
        real_ncpus = int(ffi.cast("uint32_t *", t.impl)[1])
        if ncpus is not None and t.type == MapType.PERCPU_ARRAY and ncpus != real_ncpus:
            raise MapError(f"native table '{name}' was initialised for {real_ncpus} CPUs, not {ncpus}")
        self._setup(name, t.type, t.key_size, t.value_size, t.max_entries, t.flags,
                    key_dtype, value_dtype, real_ncpus)
        for what, dtype, size in (("key", self.key_dtype, self.key_size), ("value", self.value_dtype,
                                                                            self.value_size)):
            if dtype.itemsize != size:
                raise MapError(f"native table '{name}': {what} dtype {dtype} is {dtype.itemsize} bytes, "
                               f"the table's {what} is {size} bytes")
        self._value_bytes = self.stride * self.ncpus

    @property
    def ptr(self) -> Any:
        """The ``struct vk_table *`` this wraps."""
        return self._t

    # ---- raw operations: the control plane's verbs ------------------------------------------
    def _raw_lookup(self, key: bytes) -> bytes | None:
        buf = self._ffi.new("char[]", self._value_bytes)
        ret = self._lib.vk_table_sys_lookup(self._t, key, buf)
        if ret == -ENOENT:
            return None
        if ret < 0:
            raise MapError(f"native table '{self.name}': lookup failed with errno {-ret}")
        return self._ffi.buffer(buf)[:]

    def _raw_update(self, key: bytes, value: bytes, flags: int) -> int:
        if len(value) != self._value_bytes:  # the C reads exactly this many bytes
            raise MapError(f"native table '{self.name}': value is {len(value)} bytes, not {self._value_bytes}")
        return self._lib.vk_table_sys_update(self._t, key, value, flags)

    def _raw_delete(self, key: bytes) -> int:
        return self._lib.vk_table_delete(self._t, key)

    def _raw_next_key(self, key: bytes | None) -> bytes | None:
        nxt = self._ffi.new("char[]", self.key_size)
        if self._lib.vk_table_next_key(self._t, self._ffi.NULL if key is None else key, nxt) < 0:
            return None
        return self._ffi.buffer(nxt)[:]

    # ---- the fast path's verbs --------------------------------------------------------------
    def lookup_ref(self, key: Any) -> np.ndarray | None:
        """``vk_table_lookup``: the value as a writable 0-d record over the table's own memory
        (the calling thread's ``vk_cpu`` slot for per-CPU tables; refreshes LRU recency), or
        None. Valid while the entry exists, like the C pointer."""
        ptr = self._lib.vk_table_lookup(self._t, self.pack_key(key))
        if ptr == self._ffi.NULL:
            return None
        buf = self._ffi.buffer(self._ffi.cast("char *", ptr), self.value_size)
        return np.ndarray((), dtype=self.value_dtype, buffer=buf)

    def fp_update(self, key: Any, value: Any, flags: int = BPF_ANY) -> int:
        """``vk_table_update``: 0 or a negative errno; per-CPU tables write this CPU's slot."""
        return self._lib.vk_table_update(self._t, self.pack_key(key), self._pack(value, self.value_dtype, "value"),
                                         flags)

    def fp_delete(self, key: Any) -> int:
        """``vk_table_delete``: 0 or a negative errno."""
        return self._lib.vk_table_delete(self._t, self.pack_key(key))

    # ---- numpy views ----------------------------------------------------------------------
    def _cpu_blocks(self, ncpus: int) -> np.ndarray:
        base = self._lib.vk_table_array_base(self._t)
        stride = round8(self.value_size)
        block = stride * self.max_entries
        buf = self._ffi.buffer(self._ffi.cast("char *", base), block * ncpus)
        return np.ndarray((ncpus, self.max_entries), dtype=self.value_dtype, buffer=buf, strides=(block, stride))

    def as_array(self) -> np.ndarray:
        """An ARRAY table as a live, zero-copy numpy view (writes go to the table); a
        PERCPU_ARRAY as a snapshot summed over CPUs (``per_cpu_array`` is the live view)."""
        self._require_array()
        if self.type == MapType.ARRAY:
            return self._cpu_blocks(1)[0]
        return sum_cpu_rows(self.per_cpu_array())

    def per_cpu_array(self) -> np.ndarray:
        """A PERCPU_ARRAY table as a live (ncpus, max_entries) view of every CPU's slots."""
        if self.type != MapType.PERCPU_ARRAY:
            raise MapError(f"table '{self.name}' is a {getattr(self.type, 'name', self.type)}, not a per-CPU array")
        return self._cpu_blocks(self.ncpus)
