"""Tables of the pure-Python reference model, with the kernel's (and the native executor's)
semantics.

A VNF's tables are BPF maps in the kernel, ``vk_tables.c`` tables in the native executor and
``ModelTable``s in the Python reference model; differential tests feed all three the same
packets and demand the same results, so every rule here mirrors ``datapath/native/vk_tables.c``
(which mirrors the kernel): flag checks before capacity checks, -E2BIG for a full hash,
eviction of the least recently used entry for a full LRU hash, -ENOSPC for a full LPM trie,
arrays that always hold ``max_entries`` zero-initialised values, LPM iteration in the
kernel's postorder, and so on.

Two sets of verbs, as in C:

* the ``Table`` verbs (``lookup``, ``update``, ``delete``, iteration) are the control plane's,
  the bpf() syscall's: lookups do not refresh LRU recency, per-CPU values are all CPUs'
  slots (summed on lookup, written all at once by update);
* ``lookup_ref`` / ``fp_update`` / ``fp_delete`` are the fast path's, ``bpf_map_lookup_elem``
  and friends: ``lookup_ref`` refreshes LRU recency and returns a writable numpy record
  (write through it as C writes through the pointer), per-CPU tables act on slot ``cpu``.

Model code that mirrors a ``fastpath.c`` must use the fast-path verbs wherever the C calls
``bpf_map_*_elem`` on an LRU or per-CPU table; on other tables the two sets agree.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

from datapath.errors import MapError
from datapath.kernel import BPF_ANY, BPF_EXIST, BPF_NOEXIST, MapType
from datapath.native_tables import VK_MAX_CPUS, sum_cpu_rows
from datapath.tables import E2BIG, EEXIST, EINVAL, ENOENT, ENOSPC, Table, round8

__all__ = ["ModelTable"]

_TYPES = {MapType.HASH, MapType.LRU_HASH, MapType.ARRAY, MapType.PERCPU_ARRAY, MapType.LPM_TRIE}


class ModelTable(Table):
    """A table in Python memory. Keys and values are stored as raw bytes (bytearrays for
    values, so ``lookup_ref`` views stay attached to them); ``cpu`` is the slot the
    fast-path verbs use on per-CPU tables (the model runs as CPU 0)."""

    def __init__(self, name: str, type: int, key_size: int, value_size: int, max_entries: int,
                 key_dtype: np.dtype | None = None, value_dtype: np.dtype | None = None, ncpus: int = 1,
                 flags: int = 0) -> None:
        # The checks of vk_table_init (themselves the kernel's), so a table one refuses the
        # other refuses too.
        if type not in _TYPES:
            raise MapError(f"model table '{name}': unsupported type {type}")
        if key_size <= 0 or value_size <= 0 or max_entries <= 0 or value_size > 1 << 20:
            raise MapError(f"model table '{name}': bad sizes (key {key_size}, value {value_size}, "
                           f"max_entries {max_entries})")
        if not 1 <= ncpus <= VK_MAX_CPUS:
            raise MapError(f"model table '{name}': ncpus {ncpus} is not in 1..{VK_MAX_CPUS}")
        if (type in (MapType.ARRAY, MapType.PERCPU_ARRAY) and key_size != 4
                or type == MapType.LPM_TRIE and not 5 <= key_size <= 4 + 256
                or type in (MapType.HASH, MapType.LRU_HASH) and key_size > 512):
            raise MapError(f"model table '{name}': key size {key_size} is not valid for a {MapType(type).name}")
        self._setup(name, type, key_size, value_size, max_entries, flags, key_dtype, value_dtype, ncpus)
        for what, dtype, size in (("key", self.key_dtype, key_size), ("value", self.value_dtype, value_size)):
            if dtype.itemsize != size:
                raise MapError(f"model table '{name}': {what} dtype {dtype} is {dtype.itemsize} bytes, "
                               f"the table's {what} is {size} bytes")
        self.cpu = 0
        # Iteration order, rebuilt after a change of membership (or of LRU recency).
        self._order: list[bytes] | None = None
        self._pos: dict[bytes, int] = {}
        self._lengths: list[int] | None = None  # LPM: prefix lengths in use, longest first
        if type in (MapType.ARRAY, MapType.PERCPU_ARRAY):
            # The native layout: max_entries values at 8-byte strides, one block per CPU.
            self._astride = round8(value_size)
            self._block = self._astride * max_entries
            self._mem = bytearray(self._block * self.ncpus)
        elif type == MapType.LPM_TRIE:
            self._bits = (key_size - 4) * 8
            # prefix length -> prefix bits (an int) -> [stored key bytes, value]
            self._lpm: dict[int, dict[int, list[Any]]] = {}
            self._lpm_count = 0
        else:
            self._entries: dict[bytes, bytearray] = OrderedDict() if type == MapType.LRU_HASH else {}

    # ---- helpers ----------------------------------------------------------------------------
    def _index(self, key: bytes) -> int:
        return int.from_bytes(key[:4], "little")

    def _lpm_split(self, key: bytes) -> tuple[int, int]:
        """(prefix length, the key's first prefix-length bits as an int)."""
        plen = int.from_bytes(key[:4], "little")
        return plen, int.from_bytes(key[4:], "big") >> (self._bits - plen)

    def _lpm_match(self, key: bytes) -> list[Any] | None:
        """The longest entry whose length is <= the key's and whose bits agree with it."""
        plen = int.from_bytes(key[:4], "little")
        if plen > self._bits:
            return None
        data = int.from_bytes(key[4:], "big")
        if self._lengths is None:
            self._lengths = sorted(self._lpm, reverse=True)
        for length in self._lengths:
            if length <= plen:
                entry = self._lpm[length].get(data >> (self._bits - length))
                if entry is not None:
                    return entry
        return None

    def _changed(self) -> None:
        self._order = None
        self._lengths = None

    def _ordered_keys(self) -> list[bytes]:
        if self._order is None:
            if self.type == MapType.LPM_TRIE:
                # The kernel's postorder: longer prefixes before the prefix they extend, a 0
                # bit before a 1 bit; i.e. sort by the prefix's bits followed by a '2'.
                order = []
                for length, entries in self._lpm.items():
                    for bits, entry in entries.items():
                        order.append(((format(bits, f"0{length}b") if length else "") + "2", entry[0]))
                self._order = [k for _, k in sorted(order)]
            else:
                self._order = list(self._entries)
            self._pos = {k: i for i, k in enumerate(self._order)}
        return self._order

    # ---- raw operations: the control plane's verbs ------------------------------------------
    def _raw_lookup(self, key: bytes) -> bytes | None:
        if self.type in (MapType.ARRAY, MapType.PERCPU_ARRAY):
            i = self._index(key)
            if i >= self.max_entries:
                return None
            off = i * self._astride
            if self.type == MapType.ARRAY:
                return bytes(self._mem[off:off + self.value_size])
            # Whole 8-byte slots, padding included, as the kernel copies them.
            return b"".join(bytes(self._mem[c * self._block + off:c * self._block + off + self._astride])
                            for c in range(self.ncpus))
        if self.type == MapType.LPM_TRIE:
            entry = self._lpm_match(key)
            return None if entry is None else bytes(entry[1])
        value = self._entries.get(key)  # no LRU refresh: the kernel's lookups from bpf() do not
        return None if value is None else bytes(value)

    def _raw_update(self, key: bytes, value: bytes, flags: int) -> int:
        if self.type == MapType.PERCPU_ARRAY:
            ret = self._array_check(key, flags)
            if ret:
                return ret
            off = self._index(key) * self._astride
            for c in range(self.ncpus):
                at = c * self._block + off
                self._mem[at:at + self._astride] = value[c * self._astride:(c + 1) * self._astride]
            return 0
        return self._update(key, value, flags)

    def _raw_delete(self, key: bytes) -> int:
        if self.type in (MapType.ARRAY, MapType.PERCPU_ARRAY):
            return -EINVAL  # array elements cannot be deleted
        if self.type == MapType.LPM_TRIE:
            if not self._lpm_plen_ok(key):
                return -EINVAL
            plen, bits = self._lpm_split(key)
            entries = self._lpm.get(plen)
            if not entries or bits not in entries:
                return -ENOENT
            del entries[bits]
            if not entries:
                del self._lpm[plen]
            self._lpm_count -= 1
            self._changed()
            return 0
        if key not in self._entries:
            return -ENOENT
        del self._entries[key]
        self._changed()
        return 0

    def _raw_next_key(self, key: bytes | None) -> bytes | None:
        if self.type in (MapType.ARRAY, MapType.PERCPU_ARRAY):
            i = self.max_entries if key is None else self._index(key)
            if i >= self.max_entries:
                i = 0
            elif i == self.max_entries - 1:
                return None
            else:
                i += 1
            return i.to_bytes(4, "little")
        order = self._ordered_keys()
        if key is not None and self.type == MapType.LPM_TRIE:
            # Entries are found by prefix; the stored key may differ in bits past it.
            entry = self._lpm_exact(key)
            key = entry[0] if entry is not None else None
        at = self._pos.get(key) if key is not None else None
        nxt = 0 if at is None else at + 1  # an absent key restarts at the first, as in the kernel
        return order[nxt] if nxt < len(order) else None

    # ---- shared by both sets of verbs -------------------------------------------------------
    def _lpm_plen_ok(self, key: bytes) -> bool:
        return int.from_bytes(key[:4], "little") <= self._bits

    def _lpm_exact(self, key: bytes) -> list[Any] | None:
        if not self._lpm_plen_ok(key):
            return None
        plen, bits = self._lpm_split(key)
        return self._lpm.get(plen, {}).get(bits)

    def _array_check(self, key: bytes, flags: int) -> int:
        # The kernel's order: flags, then bounds, then NOEXIST (every element exists).
        if flags not in (BPF_ANY, BPF_NOEXIST, BPF_EXIST):
            return -EINVAL
        if self._index(key) >= self.max_entries:
            return -E2BIG
        if flags == BPF_NOEXIST:
            return -EEXIST
        return 0

    def _update(self, key: bytes, value: bytes, flags: int) -> int:
        """One value (value_size bytes) for every type; per-CPU arrays write slot ``cpu``."""
        if self.type in (MapType.ARRAY, MapType.PERCPU_ARRAY):
            ret = self._array_check(key, flags)
            if ret:
                return ret
            at = self._array_offset(key)
            if at is None:
                return -EINVAL  # a cpu the table has no slot for
            self._mem[at:at + self.value_size] = value
            return 0
        if flags not in (BPF_ANY, BPF_NOEXIST, BPF_EXIST):
            return -EINVAL
        if self.type == MapType.LPM_TRIE:
            return self._lpm_update(key, value, flags)
        # Flags before capacity, as the kernel checks them.
        current = self._entries.get(key)
        if current is not None:
            if flags == BPF_NOEXIST:
                return -EEXIST
            current[:] = value  # in place: lookup_ref views see it, as C pointers do
            if self.type == MapType.LRU_HASH:
                self._entries.move_to_end(key)
                self._changed()
            return 0
        if flags == BPF_EXIST:
            return -ENOENT
        if len(self._entries) >= self.max_entries:
            if self.type != MapType.LRU_HASH:
                return -E2BIG
            self._entries.popitem(last=False)  # evict the least recently used
        self._entries[key] = bytearray(value)
        self._changed()
        return 0

    def _lpm_update(self, key: bytes, value: bytes, flags: int) -> int:
        if not self._lpm_plen_ok(key):
            return -EINVAL
        plen, bits = self._lpm_split(key)
        entry = self._lpm.get(plen, {}).get(bits)
        if entry is not None:
            if flags == BPF_NOEXIST:
                return -EEXIST
            entry[0] = key  # the kernel keeps the data bytes of the key that wrote last
            entry[1][:] = value
            self._changed()
            return 0
        if flags == BPF_EXIST:
            return -ENOENT
        if self._lpm_count >= self.max_entries:
            return -ENOSPC
        self._lpm.setdefault(plen, {})[bits] = [key, bytearray(value)]
        self._lpm_count += 1
        self._changed()
        return 0

    def _array_offset(self, key: bytes) -> int | None:
        i = self._index(key)
        if i >= self.max_entries:
            return None
        if self.type == MapType.PERCPU_ARRAY:
            if not 0 <= self.cpu < self.ncpus:
                return None
            return self.cpu * self._block + i * self._astride
        return i * self._astride

    # ---- the fast path's verbs --------------------------------------------------------------
    def lookup_ref(self, key: Any) -> np.ndarray | None:
        """``bpf_map_lookup_elem``: the value as a writable 0-d numpy record whose writes
        persist in the table (slot ``cpu`` of per-CPU tables), or None. Refreshes LRU
        recency. Like the C pointer it stays attached to the entry while the entry exists."""
        raw = self.pack_key(key)
        if self.type in (MapType.ARRAY, MapType.PERCPU_ARRAY):
            at = self._array_offset(raw)
            if at is None:
                return None
            return np.ndarray((), dtype=self.value_dtype, buffer=self._mem, offset=at)
        if self.type == MapType.LPM_TRIE:
            entry = self._lpm_match(raw)
            value = None if entry is None else entry[1]
        else:
            value = self._entries.get(raw)
            if value is not None and self.type == MapType.LRU_HASH:
                self._entries.move_to_end(raw)
                self._changed()
        return None if value is None else np.ndarray((), dtype=self.value_dtype, buffer=value)

    def fp_update(self, key: Any, value: Any, flags: int = BPF_ANY) -> int:
        """``bpf_map_update_elem``: 0 or a negative errno; per-CPU tables write slot ``cpu``."""
        return self._update(self.pack_key(key), self._pack(value, self.value_dtype, "value"), flags)

    def fp_delete(self, key: Any) -> int:
        """``bpf_map_delete_elem``: 0 or a negative errno."""
        return self._raw_delete(self.pack_key(key))

    # ---- numpy views ----------------------------------------------------------------------
    def _cpu_blocks(self) -> np.ndarray:
        return np.ndarray((self.ncpus, self.max_entries), dtype=self.value_dtype, buffer=self._mem,
                          strides=(self._block, self._astride))

    def as_array(self) -> np.ndarray:
        """An ARRAY table as a live numpy view of its storage; a PERCPU_ARRAY as a snapshot
        summed over CPUs (``per_cpu_array`` is the live view)."""
        self._require_array()
        if self.type == MapType.ARRAY:
            return self._cpu_blocks()[0]
        return sum_cpu_rows(self._cpu_blocks())

    def per_cpu_array(self) -> np.ndarray:
        """A PERCPU_ARRAY table as a live (ncpus, max_entries) view of every CPU's slots."""
        if self.type != MapType.PERCPU_ARRAY:
            raise MapError(f"table '{self.name}' is a {getattr(self.type, 'name', self.type)}, not a per-CPU array")
        return self._cpu_blocks()
