"""The engine's own BPF programs (``datapath/progs``): the demo's counter, the benchmark
floor and one-lookup programs, the live-frames generator, and a TC counter."""

from __future__ import annotations

from pathlib import Path

from datapath.compiler import PROGS_DIR

# Slot numbers of xdp_count.c's `counters` map, in order.
COUNT_SLOTS = ("all", "ipv4", "ipv6", "tcp", "udp", "icmp", "other")


def builtin(name: str) -> Path:
    """Path of a built-in program by stem (``"xdp_count"``)."""
    path = PROGS_DIR / f"{name}.c"
    if not path.is_file():
        known = sorted(p.stem for p in PROGS_DIR.glob("*.c"))
        raise FileNotFoundError(f"no built-in program '{name}' (known: {', '.join(known)})")
    return path
