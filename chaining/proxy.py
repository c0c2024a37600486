"""The SFC proxy (RFC 7665 section 4.6): a function that knows nothing of NSH in a service path.

The function is a network namespace that routes (running nftables, say), or any process on a
pair of interfaces: packets go in by its ``in`` interface and come out of its ``out``
interface, each the far end of a veth whose near end is in the chain's host namespace.
:meth:`LocalChain.load_proxy` gives it a slot of the forwarder like a VNF's, so a path names
it like any function; ``progs/proxy.c`` does the work:

* ``proxy_out`` (the slot's program) remembers the packet's 5-tuple -> where its path
  resumes (the next SI, the TTL) and redirects the frame, addressed to the function's
  interface, out of the near end of the ``in`` veth;
* ``proxy_in`` (XDP on the near ends of both veths) finds the path again by the 5-tuple, or
  else takes the interface's default path (:meth:`ProxyFunction.set_default`: for functions
  that rewrite addresses, NAT), or else hands the packet to the host stack and counts it.

Limits that follow from keeping state by 5-tuple: a path may cross one proxied function only
once (the entry of a second visit would overwrite the first's while packets are inside), and a
flow on two paths through the same function resumes on whichever wrote its entry last. A
function that rewrites addresses needs a default path on its return interface, one per
interface. Frames redirected by XDP lose their checksum-offload state (as in NSH): a sender on
the same machine needs ``ethtool -K IF tx off``.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from chaining.local import DEFAULT_TTL, PROGS, ChainError, mac_of
from datapath.attach import Attachment, attach_xdp
from datapath.builtin import builtin
from datapath.maps import Map
from datapath.netns import ifindex, veth_peer_ifindex
from datapath.objects import BpfObject, Program, load

if TYPE_CHECKING:
    from chaining.local import LocalChain

# proxy.c's enum px_counter, in order.
PX_COUNTERS = ("sent", "untracked", "bad_meta", "returned_by_flow", "returned_by_default", "unknown",
               "not_ipv4", "no_room", "no_forwarder")
IN, OUT = 0, 1   # proxy.c's enum px_side: the function's in and out interfaces
MAX_NSH_TTL = 63  # TTL is 6 bits in NSH: a path that later crosses hosts carries no more


class ProxyFunction:
    """An NSH-unaware function behind the proxy; made by :meth:`LocalChain.load_proxy`."""

    def __init__(self, chain: LocalChain, name: str, *, to_fn: tuple[str | None, str],
                 from_fn: tuple[str | None, str], function: tuple[str | None, str, str],
                 reuse_maps: dict[str, Map], mode: str = "auto") -> None:
        self.chain = chain
        self.name = name
        fn_ns, fn_in, fn_out = function
        if to_fn[0] != from_fn[0]:
            raise ChainError(f"proxy '{name}': to_fn {to_fn} and from_fn {from_fn} must be in one netns, "
                             "the chain's host")
        if to_fn == from_fn or fn_in == fn_out:
            raise ChainError(f"proxy '{name}': the function needs two interfaces, in and out "
                             f"(to_fn {to_fn}, from_fn {from_fn}, function {function})")
        # (host end, function end) of the in and out veths, indexed by IN and OUT.
        self.ends = ((to_fn, (fn_ns, fn_in)), (from_fn, (fn_ns, fn_out)))
        ports = [self._port_value(*ends) for ends in self.ends]   # refuses before anything is loaded
        self.ifindexes = tuple(ifindex(*host) for host, _ in self.ends)
        self.defaults: dict[int, int] = {}   # side -> the SPI whose default it holds
        self.attachments: list[Attachment] = []
        self.obj: BpfObject = load(PROGS / "proxy.c", reuse_maps=reuse_maps)
        self._pass: BpfObject | None = None
        try:
            for side, value in enumerate(ports):
                self.obj.map("px_ports").update(struct.pack("=I", side), value)
            # veth delivers an XDP-redirected frame only when the receiving end runs an XDP
            # program itself (the frame goes through that end's XDP rx path, or is dropped):
            # the function's ends get one that passes everything.
            self._pass = load(builtin("xdp_pass"))
            for _, (ns, ifname) in self.ends:
                self.attachments.append(attach_xdp(self._pass.program("xdp_pass"), ifname, ns=ns, mode=mode))
            for (ns, ifname), _ in self.ends:
                self.attachments.append(attach_xdp(self.obj.program("proxy_in"), ifname, ns=ns, mode=mode))
        except BaseException:
            self.close()
            raise

    def _port_value(self, host: tuple[str | None, str], fn: tuple[str | None, str]) -> bytes:
        """proxy.c's ``struct px_port`` for sending into the function through ``host`` -> ``fn``."""
        peer = veth_peer_ifindex(*host)
        if peer is not None and peer != ifindex(*fn):
            raise ChainError(f"proxy '{self.name}': {host[1]} is a veth whose other end is ifindex {peer}, "
                             f"not {fn[1]} (ifindex {ifindex(*fn)}) in netns {fn[0]}")
        return struct.pack("=I6s6s", ifindex(*host), mac_of(*fn), mac_of(*host))

    @property
    def program(self) -> Program:
        """What goes in the forwarder's slot."""
        return self.obj.program("proxy_out")

    def _resume_si(self, spi: int) -> int:
        """The SI at which path ``spi`` resumes after this function."""
        segments = self.chain.paths.get(spi)
        if segments is None:
            raise ChainError(f"no path {spi} (paths: {sorted(self.chain.paths)})")
        for first_si, path in segments.items():
            if self.name in path:
                return first_si - path.index(self.name) - 1
        shown = " | ".join(" -> ".join(p) for p in segments.values())
        raise ChainError(f"path {spi} ({shown}) does not go through '{self.name}'")

    def _side_back(self, spi: int) -> int:
        """The interface packets of path ``spi`` come back out of the function by."""
        return IN if spi in self.obj.map("px_reverse") else OUT

    def set_reverse(self, spi: int) -> None:
        """Path ``spi`` crosses the function backwards (the reverse path of a symmetric chain):
        its packets go in by the function's ``out`` interface and come back by ``in``."""
        self._resume_si(spi)
        if self.defaults.get(OUT) == spi:
            raise ChainError(f"path {spi} already has its default on the out interface of '{self.name}': "
                             "set the direction before the default")
        self.obj.map("px_reverse")[spi] = 1

    def set_default(self, spi: int, ttl: int = DEFAULT_TTL) -> None:
        """Packets that come back out of the function without a flow entry (it rewrote their
        addresses) resume path ``spi`` after this function, with ``ttl``.

        One default per interface (``out``, or ``in`` for a :meth:`set_reverse` path): setting
        another path's replaces it.
        """
        si = self._resume_si(spi)
        if not 1 <= ttl <= MAX_NSH_TTL:
            raise ChainError(f"ttl {ttl} out of range (1 .. {MAX_NSH_TTL})")
        side = self._side_back(spi)
        self.obj.map("px_default")[self.ifindexes[side]] = {"spi_si": (spi << 8) | si, "ttl": ttl}
        self.defaults[side] = spi

    def counters(self) -> dict[str, int]:
        """Packets by counter (``PX_COUNTERS``), summed over CPUs."""
        packets = self.obj.map("px_counters").as_array()["packets"]
        return {n: int(packets[i]) for i, n in enumerate(PX_COUNTERS)}

    def close(self) -> None:
        for att in self.attachments:
            att.detach()
        self.attachments.clear()
        if self._pass is not None:
            self._pass.close()
            self._pass = None
        self.obj.close()
