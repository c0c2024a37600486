"""A user-space function as a hop of a host's chains (``LocalChain.load_user``).

SPI/SI cross the user-space hop like this:

1. The forwarder tail-calls the function's slot in ``sff_progs``: ``progs/user_hop.c`` pushes
   an RFC 8300 NSH (MD type 1, next protocol Ethernet: the function's SPI and SI, the TTL)
   under an Ethernet header (0x894F) and redirects the frame out of the near end of a veth
   pair that belongs to the function.
2. At the far end, the AF_XDP redirect program (``xsk_redirect_chain``) hands NSH frames to
   the function's worker, which reads SPI/SI/TTL from the header and runs the VNF on the
   inner frame.
3. When the VNF passes the frame (PASS/NEXT), the worker pushes a new NSH (SI - 1, the same
   TTL) in front of whatever the VNF made of the frame and sends it out of the far end; DROP
   drops it there (counted by the runtime).
4. It arrives at the near end, where ``nsh_rx.c`` (``LocalChain.attach_underlay``) checks and
   pops the NSH, puts SPI/SI/TTL back in the chain's per-CPU slot and tail-calls the
   forwarder, which goes on along the path from the next SI.

So SPI/SI cross the user-space boundary as a real NSH both ways: the same header, and the
same receive code, as a hop on another host (the per-CPU slot that carries them between
local hops lives only as long as one XDP run). The veth pair needs room for the NSH: an MTU
of at least 1500 + 38 bytes. nsh_rx counts the return as a hop against the TTL, so a
user-space hop costs two TTL units (the forwarder's and nsh_rx's).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyroute2 import IPRoute

from datapath import netns
from datapath.objects import BpfObject, load
from datapath.xsk.service import ChainPort, XskFunction, XskOptions

if TYPE_CHECKING:
    from chaining.local import LocalChain

PROGS = Path(__file__).parent / "progs"
NSH_OVERHEAD = 38  # outer Ethernet 14 + NSH MD type 1 24
MIN_MTU = 1500 + NSH_OVERHEAD


def _mtu(ns: str | None, ifname: str) -> int:
    idx = netns.ifindex(ns, ifname)
    with netns.enter(ns), IPRoute() as ipr:
        return int(ipr.get_links(idx)[0].get_attr("IFLA_MTU"))


def _c_bytes(mac: bytes) -> str:
    """A MAC as the initializer list a -D define puts in a C array."""
    return ",".join(f"0x{x:02x}" for x in mac)


class UserFunction(XskFunction):
    """A VNF in an AF_XDP worker on ``far``, reached from the forwarder through ``near``
    (the two ends of one veth pair in ``ns``, the chain's host). Made by
    ``LocalChain.load_user``; tables, counters and runtime stats as ``XskFunction``."""

    def __init__(self, chain: LocalChain, folder: str | Path, *, ns: str | None, near: str, far: str,
                 config: dict[str, Any] | None = None, options: XskOptions | None = None) -> None:
        from chaining.local import ChainError, mac_of

        try:
            for end in (near, far):
                if (mtu := _mtu(ns, end)) < MIN_MTU:
                    raise ChainError(f"{end}: MTU {mtu} leaves no room for the NSH the user-space hop adds "
                                     f"({NSH_OVERHEAD} bytes): set at least {MIN_MTU} on both ends")
        except LookupError as exc:
            raise ChainError(str(exc)) from None
        port = ChainPort(dmac=mac_of(ns, near), smac=mac_of(ns, far))
        super().__init__(folder, ns, far, config=config, options=options, chain=port)
        self.hop: BpfObject | None = None
        try:
            self.hop = load(PROGS / "user_hop.c", reuse_maps=chain.shared_maps, defines={
                "NEAR_IFINDEX": str(netns.ifindex(ns, near)),
                "NEAR_MAC": _c_bytes(port.dmac), "FAR_MAC": _c_bytes(port.smac)})
            self.start()
            chain.attach_underlay(ns, near)  # the way back in
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        super().close()
        if self.hop is not None:
            self.hop.close()
            self.hop = None
