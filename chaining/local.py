"""Service function paths inside one host: classifier, forwarder, functions by tail call.

RFC 7665's roles on one host: the classifier (``progs/classifier.c``) matches ingress
traffic and starts it on a path, putting SPI and SI in XDP metadata; the forwarder
(``progs/sff.c``) looks (SPI, SI) up and tail-calls the next function; each function, when
it passes the packet on (``VK_PASS``/``VK_NEXT``), decrements SI and tail-calls the
forwarder again (``vnfkit.h``); at the end of the path the packet goes to the host stack or
out of an interface. No header is pushed between local hops.

This is the local half of the SFC layer; paths across hosts (NSH on the wire), the service
descriptor and the path compiler build on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from datapath.attach import Attachment, attach_xdp
from datapath.errors import VnfkitError
from datapath.maps import Map
from datapath.netns import ifindex
from datapath.objects import BpfObject, Program, load
from vnfkit.instance import KernelInstance

PROGS = Path(__file__).parent / "progs"
FIRST_SI = 255
DEFAULT_TTL = 63
MAX_FUNCTIONS = 64     # sff_progs slots
TAIL_CALL_LIMIT = 33   # the kernel's MAX_TAIL_CALL_CNT
MAX_LOCAL_HOPS = (TAIL_CALL_LIMIT - 1) // 2  # 16
SFF_LOCAL, SFF_STACK, SFF_EGRESS = 1, 2, 3
SFF_COUNTERS = ("no_meta", "unknown", "ttl", "no_function", "delivered", "redirected")
CLS_COUNTERS = ("matched", "unmatched", "not_ipv4", "no_room", "no_forwarder")


class ChainError(VnfkitError):
    """A path that cannot be installed as asked."""


@dataclass
class Hop:
    spi: int
    si: int
    function: str


def _u32(value: int) -> bytes:
    return np.uint32(value).tobytes()


class LocalChain:
    """``with LocalChain() as chain:`` load functions, add paths, classify, attach."""

    def __init__(self) -> None:
        self.sff: BpfObject = load(PROGS / "sff.c")
        entry = self.sff.map("sff_entry")
        self._set_prog(entry, 0, self.sff.program("sff"))
        self.classifier: BpfObject = load(PROGS / "classifier.c", reuse_maps={"sff_entry": entry})
        self.functions: dict[str, tuple[int, KernelInstance]] = {}
        self.paths: dict[int, list[str]] = {}
        self.attachments: list[Attachment] = []

    @staticmethod
    def _set_prog(prog_array: Map, slot: int, prog: Program) -> None:
        # A program array's values are program fds going in (ids coming out): raw u32s.
        prog_array.update(_u32(slot), _u32(prog.fd))

    def load(self, name: str, folder: str | Path, config: dict[str, Any] | None = None) -> KernelInstance:
        """Load a VNF as a function of this host's chains (its vk_chain is the forwarder)."""
        if name in self.functions:
            raise ChainError(f"a function called '{name}' is already loaded")
        slot = len(self.functions)
        if slot >= MAX_FUNCTIONS:
            raise ChainError(f"at most {MAX_FUNCTIONS} functions per host")
        inst = KernelInstance(folder, config, reuse_maps={"vk_chain": self.sff.map("sff_entry")})
        self._set_prog(self.sff.map("sff_progs"), slot, inst.obj.program("vnf_xdp"))
        self.functions[name] = (slot, inst)
        return inst

    def add_path(self, spi: int, functions: list[str], *, end: str = "stack",
                 egress: tuple[str | None, str] | None = None) -> list[Hop]:
        """Install path ``spi`` through ``functions`` in order; at its end the packet goes to the
        host stack (``end="stack"``) or out of ``egress=(netns, ifname)`` (``end="egress"``)."""
        if not 0 < spi < 1 << 24:
            raise ChainError(f"SPI {spi} out of range (1 .. 2^24-1)")
        if spi in self.paths:
            raise ChainError(f"SPI {spi} is already a path ({' -> '.join(self.paths[spi])})")
        if 2 * len(functions) + 1 > TAIL_CALL_LIMIT:
            # classifier -> sff, then sff -> f and f -> sff for every function: 2n + 1 tail calls
            raise ChainError(f"path {spi} has {len(functions)} functions; one host takes at most "
                             f"{MAX_LOCAL_HOPS} (2n+1 tail calls, the kernel allows {TAIL_CALL_LIMIT}); "
                             "split it across hosts")
        unknown = [f for f in functions if f not in self.functions]
        if unknown:
            raise ChainError(f"path {spi} names unknown function(s) {unknown} (loaded: {sorted(self.functions)})")
        if end == "egress":
            if egress is None:
                raise ChainError("end='egress' needs egress=(netns, ifname)")
            last = (SFF_EGRESS, ifindex(*egress))
        elif end == "stack":
            last = (SFF_STACK, 0)
        else:
            raise ChainError(f"end must be 'stack' or 'egress', not {end!r}")
        table = self.sff.map("sff_table")
        hops = []
        for i, name in enumerate(functions):
            si = FIRST_SI - i
            table[(spi << 8) | si] = {"action": SFF_LOCAL, "arg": self.functions[name][0]}
            hops.append(Hop(spi, si, name))
        si = FIRST_SI - len(functions)
        table[(spi << 8) | si] = {"action": last[0], "arg": last[1]}
        hops.append(Hop(spi, si, f"<{end}>"))
        self.paths[spi] = list(functions)
        return hops

    def classify(self, dst_prefix: str, spi: int, ttl: int = DEFAULT_TTL) -> None:
        """Start traffic to ``dst_prefix`` (IPv4) on path ``spi``."""
        if spi not in self.paths:
            raise ChainError(f"no path {spi} (paths: {sorted(self.paths)})")
        self.classifier.map("cls_rules")[dst_prefix] = {"spi_si": (spi << 8) | FIRST_SI, "ttl": ttl}

    def attach(self, ns: str | None, ifname: str, mode: str = "auto") -> Attachment:
        """Put the classifier at XDP on an ingress interface."""
        att = attach_xdp(self.classifier.program("classifier"), ifname, ns=ns, mode=mode)
        self.attachments.append(att)
        return att

    def hop_stats(self) -> dict[tuple[int, int], int]:
        """Packets the forwarder handed on, by (SPI, SI)."""
        return {(int(k) >> 8, int(k) & 0xFF): int(v["packets"]) for k, v in self.sff.map("hop_stats").items()}

    def counters(self) -> dict[str, int]:
        sff = self.sff.map("sff_counters").as_array()["packets"]
        cls = self.classifier.map("cls_counters").as_array()["packets"]
        return {**{f"sff_{n}": int(sff[i]) for i, n in enumerate(SFF_COUNTERS)},
                **{f"cls_{n}": int(cls[i]) for i, n in enumerate(CLS_COUNTERS)}}

    def close(self) -> None:
        for att in self.attachments:
            att.detach()
        self.attachments.clear()
        for _, inst in self.functions.values():
            inst.close()
        self.functions.clear()
        self.classifier.close()
        self.sff.close()

    def __enter__(self) -> LocalChain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
