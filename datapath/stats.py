"""Kernel bpf run-time statistics: run count and run time per program under live traffic."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from datapath.errors import BpfError
from datapath.kernel import BPF_STATS_RUN_TIME
from datapath.libbpf import ffi, lib


@contextlib.contextmanager
def runtime_stats() -> Iterator[None]:
    """Keep kernel bpf stats on while the block runs (BPF_ENABLE_STATS: the kernel turns them
    off again when the last holder closes its fd, so a crash cannot leave them on)."""
    fd = lib.bpf_enable_stats(BPF_STATS_RUN_TIME)
    if fd < 0:
        raise BpfError("enabling bpf run-time stats", ffi.errno)
    try:
        yield
    finally:
        os.close(fd)
