"""A worker's tables, counters and control words in shared memory (``struct vk_xsk_shm``).

The parent makes a memfd, maps it, and lets ``vk_xsk_shm_init`` lay out the header and make
every table of the VNF in the arena behind it. The worker maps the same memfd at the same
address (``MAP_FIXED_NOREPLACE``), so the tables' internal pointers hold in both processes,
and points its module's tables at them (``vk_xsk_shm_attach``). The parent's ``NativeTable``s
and numpy views read and write that memory directly: no copies, no messages.

A memfd rather than a file in /dev/shm: nothing is left behind when both processes are gone,
however they end.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import numpy as np

from datapath.native_tables import NativeTable
from datapath.xsk.errors import XskError

PAGE = 4096
# Virtual size of the parent's mapping: memfd pages cost memory only once touched, so this is
# a ceiling on the tables, not an allocation. The worker maps only what the tables use.
DEFAULT_RESERVE = 4 << 30


class SharedTables:
    """One worker's shared mapping, made and owned by the parent."""

    def __init__(self, module: ModuleType, label: str, table_info: dict[str, Any],
                 reserve: int = DEFAULT_RESERVE) -> None:
        self.module, self.ffi, self.lib = module, module.ffi, module.lib
        self.fd = os.memfd_create(f"vnfkit-xsk-{label}", os.MFD_CLOEXEC)
        self.reserve = reserve
        self.addr = 0
        try:
            os.ftruncate(self.fd, reserve)
            ptr = self.lib.vk_xsk_shm_map(self.fd, reserve, 0)
            if ptr == self.ffi.NULL:
                raise XskError(f"{label}: mapping {reserve >> 20} MiB of shared memory for the tables failed: "
                               f"{os.strerror(self.ffi.errno)}")
            self.addr = int(self.ffi.cast("uintptr_t", ptr))
            self.shm = self.ffi.cast("struct vk_xsk_shm *", ptr)
            err = self.lib.vk_xsk_shm_init(self.shm, reserve, 1)  # one worker is one CPU slot
            if err:
                raise XskError(f"{label}: the VNF's tables do not fit in {reserve >> 20} MiB of shared memory "
                               f"({os.strerror(-err)})")
        except BaseException:
            self.close()
            raise
        self.tables: dict[str, NativeTable] = {}
        self._structs = []  # the parent's struct vk_table copies, kept alive with the tables
        globals_by_name = {}
        for i in range(self.lib.vk_native_table_count()):
            t = self.lib.vk_native_table(i)
            globals_by_name[self.ffi.string(t.name).decode()] = t
        for i in range(self.shm.ntables):
            ref = self.shm.tables[i]
            name = self.ffi.string(ref.name).decode()
            g = globals_by_name[name]
            t = self.ffi.new("struct vk_table *", {"name": g.name, "type": g.type, "key_size": g.key_size,
                                                  "value_size": g.value_size, "max_entries": g.max_entries,
                                                  "flags": g.flags, "impl": self.ffi.cast("void *", ref.impl)})
            self._structs.append(t)
            info = table_info.get(name)
            self.tables[name] = NativeTable(self.ffi, self.lib, t, key_dtype=info.key_dtype if info else None,
                                            value_dtype=info.value_dtype if info else None, ncpus=1, owner=self)
        names = []
        while (n := self.lib.vk_xsk_stat_name(len(names))) != self.ffi.NULL:
            names.append(self.ffi.string(n).decode())
        self.stat_names: tuple[str, ...] = tuple(names)
        stats_buf = self.ffi.buffer(self.ffi.addressof(self.shm, "stats"), 8 * len(names))
        # A live view: the worker writes, this reads (aligned 64-bit words: no torn reads on x86).
        self.stats_view = np.frombuffer(stats_buf, dtype=np.uint64)

    @property
    def worker_size(self) -> int:
        """What the worker maps: the header and the part of the arena the tables use."""
        used = int(self.ffi.cast("uintptr_t", self.shm.arena.base)) - self.addr + int(self.shm.arena.used)
        return (used + PAGE - 1) // PAGE * PAGE

    @property
    def ctl(self) -> Any:
        return self.shm.ctl

    def stats(self) -> dict[str, int]:
        """The runtime's counters (``vk_xsk.h``), by name."""
        return dict(zip(self.stat_names, (int(v) for v in self.stats_view), strict=True))

    def error(self) -> str:
        return self.ffi.string(self.shm.error).decode(errors="replace")

    def close(self) -> None:
        """Unmap and close. The tables (and views of them) must not be used afterwards."""
        if self.addr:
            self.tables = {}
            self.stats_view = np.zeros(0, dtype=np.uint64)
            self.lib.vk_xsk_shm_unmap(self.ffi.cast("void *", self.addr), self.reserve)
            self.addr = 0
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
