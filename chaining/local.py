"""Service function paths inside one host: classifier, forwarder, functions by tail call.

RFC 7665's roles on one host: the classifier (``progs/classifier.c``) matches ingress
traffic and starts it on a path, putting SPI and SI in a per-CPU slot; the forwarder
(``progs/sff.c``) looks (SPI, SI) up and tail-calls the next function; each function, when
it passes the packet on (``VK_PASS``/``VK_NEXT``), decrements SI and tail-calls the
forwarder again (``vnfkit.h``); at the end of the path the packet goes to the host stack or
out of an interface. No header is pushed between local hops.

Paths across hosts: a hop whose next function is on another host is ``end="remote"``
(:class:`RemoteHop`); the forwarder pushes an RFC 8300 NSH (MD type 1, next protocol Ethernet)
under an Ethernet (0x894F) or VXLAN-GPE outer header and redirects it out of the underlay,
where the next host's ``progs/nsh_rx.c`` (:meth:`LocalChain.attach_underlay`) validates and
pops it and hands SPI/SI/TTL back to that host's forwarder. The next host installs
its segment with ``add_path(..., first_si=...)``.
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from chaining.classifier import Rule, RuleBanks, RuleStats
from chaining.errors import ChainError
from chaining.service import Match
from datapath import netns
from datapath.attach import Attachment, attach_xdp
from datapath.maps import Map
from datapath.netns import ifindex
from datapath.objects import BpfObject, Program, load
from datapath.pins import PinGroup, PinnedObject
from vnfkit.instance import KernelInstance

if TYPE_CHECKING:
    from chaining.proxy import ProxyFunction

PROGS = Path(__file__).parent / "progs"
FIRST_SI = 255
DEFAULT_TTL = 63
MAX_FUNCTIONS = 64     # sff_progs slots
TAIL_CALL_LIMIT = 33   # the kernel's MAX_TAIL_CALL_CNT
HOP_STATS_SLOTS = 4096  # hop_stats entries in sff.c
MAX_LOCAL_HOPS = (TAIL_CALL_LIMIT - 1) // 2  # 16
SFF_LOCAL, SFF_STACK, SFF_EGRESS, SFF_REMOTE = 1, 2, 3, 4
# no_meta: the per-CPU SPI/SI slot could not be had (never; kept so the counter set is stable).
SFF_COUNTERS = ("no_meta", "unknown", "ttl", "no_function", "delivered", "redirected",
                "remote_sent", "no_remote", "no_room")
# nsh_rx.c's enum rx_counter, in order: passed on (by encapsulation), then dropped.
RX_COUNTERS = ("not_nsh", "eth", "vxlan_gpe", "bad_version", "bad_length", "mdtype_reserved",
               "mdtype_unknown", "bad_nextproto", "ttl_expired", "no_mac", "no_room", "no_forwarder")
ENCAPS = {"eth": 1, "vxlan-gpe": 2}   # sff.c's enum sff_encap
SIOCGIFHWADDR = 0x8927
# classifier.c's enum cls_counter: started by a rule, passed, not IPv4, the two failures to hand
# over, and started by a reply's reverse-flow entry.
CLS_COUNTERS = ("matched", "unmatched", "not_ipv4", "no_room", "no_forwarder", "reply")


@dataclass
class Hop:
    spi: int
    si: int
    function: str


@dataclass
class RemoteHop:
    """The next hop of a path is on another host, reached out of ``ifname`` in ``ns``.

    ``peer_mac`` is the peer host's underlay MAC (outer destination). ``encap`` is ``"eth"``
    (NSH right after Ethernet, ethertype 0x894F) or ``"vxlan-gpe"`` (outer IPv4
    ``src_ip`` -> ``dst_ip``, UDP to 4790, VXLAN-GPE next protocol NSH); ``sport`` is the base
    of the outer UDP source port, to which a hash of the inner addresses is added. ``mdtype``
    1 sends the fixed 16 context bytes (zeros); 2 sends no context or, with ``tlv``, one
    context header (RFC 8300 section 2.5.1).
    """

    ns: str | None
    ifname: str
    peer_mac: str
    encap: str = "eth"
    src_ip: str | None = None
    dst_ip: str | None = None
    sport: int = 49152
    mdtype: int = 1
    tlv: tuple[int, int, bytes] | None = None  # MD type 2: one context header (class, type, 4-byte value)


def _u32(value: int) -> bytes:
    return np.uint32(value).tobytes()


def mac_of(ns: str | None, ifname: str) -> bytes:
    """The hardware address of ``ifname`` in netns ``ns`` (6 bytes)."""
    ifindex(ns, ifname)  # a clear LookupError for a missing interface
    with netns.enter(ns), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        # /sys/class/net shows the namespace sysfs was mounted in, not ns: ask the kernel.
        req = struct.pack("256s", ifname.encode())
        return fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, req)[18:24]


def _mac(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text.replace(":", "").replace("-", ""))
    except ValueError:
        raw = b""
    if len(raw) != 6:
        raise ChainError(f"{text!r} is not a MAC address")
    return raw


def _remote_value(hop: RemoteHop) -> bytes:
    """``struct sff_remote`` (sff.c) for ``hop``, packed as the kernel lays it out."""
    if hop.encap not in ENCAPS:
        raise ChainError(f"encap must be one of {sorted(ENCAPS)}, not {hop.encap!r}")
    saddr = daddr = bytes(4)
    if hop.encap == "vxlan-gpe":
        if not hop.src_ip or not hop.dst_ip:
            raise ChainError("encap='vxlan-gpe' needs src_ip and dst_ip (the outer IPv4 addresses)")
        saddr, daddr = (ipaddress.IPv4Address(a).packed for a in (hop.src_ip, hop.dst_ip))
    if not 0 <= hop.sport <= 0xFFFF - 0x3FFF:
        raise ChainError(f"sport {hop.sport}: the flow hash adds up to 0x3fff, so at most {0xFFFF - 0x3FFF}")
    if hop.mdtype not in (1, 2):
        raise ChainError(f"mdtype must be 1 or 2, not {hop.mdtype!r}")
    tlv_class, tlv_type, tlv_value = hop.tlv or (0, 0, bytes(4))
    if hop.tlv is not None:
        if hop.mdtype != 2:
            raise ChainError("a context TLV needs mdtype=2")
        if not (0 <= tlv_class <= 0xFFFF and 0 <= tlv_type <= 0xFF) or (tlv_class, tlv_type) == (0, 0):
            raise ChainError(f"TLV class {tlv_class} / type {tlv_type}: class is 16 bits, type 8, not both 0")
        if len(tlv_value) != 4:
            raise ChainError(f"the forwarder sends a 4-byte TLV value, not {len(tlv_value)} bytes")
    return (struct.pack("=IBBH6s6s4s4s", ifindex(hop.ns, hop.ifname), ENCAPS[hop.encap], hop.mdtype,
                        hop.sport, _mac(hop.peer_mac), mac_of(hop.ns, hop.ifname), saddr, daddr)
            + struct.pack("!HBx4s", tlv_class, tlv_type, tlv_value))


class LocalChain:
    """``with LocalChain() as chain:`` load functions, add paths, classify, attach."""

    def __init__(self, pins: PinGroup | None = None, *, adopt: bool = False) -> None:
        """``pins``: keep the host's programs and maps pinned there too, so the data path
        outlives this process (``HostDataPath`` pins functions and links); ``adopt=True``
        re-opens what an earlier process pinned there instead of loading anything."""
        self.pins = pins
        self.nsh_rx: BpfObject | PinnedObject | None = None  # loaded by the first attach_underlay()
        if adopt:
            if pins is None:
                raise ChainError("adopt=True needs the pin group to adopt from")
            self.sff: BpfObject | PinnedObject = pins.open_object("sff")
            self.classifier: BpfObject | PinnedObject = pins.open_object("cls")
            if pins.has_object("rx"):
                self.nsh_rx = pins.open_object("rx")
            entry = self.sff.map("sff_entry")
        else:
            self.sff = load(PROGS / "sff.c")
            entry = self.sff.map("sff_entry")
            self._set_prog(entry, 0, self.sff.program("sff"))
        # chain.h's maps: one of each per host, created by the forwarder's object; every other
        # program of the host's chains is loaded reusing them.
        self.shared_maps: dict[str, Map] = {"sff_entry": entry, "rev_flows": self.sff.map("rev_flows"),
                                            "chain_meta": self.sff.map("chain_meta")}
        if not adopt:
            self.classifier = load(PROGS / "classifier.c", reuse_maps=self.shared_maps)
            if pins is not None:
                pins.pin_object(self.sff, "sff")
                pins.pin_object(self.classifier, "cls")
        self._rules = RuleBanks(self.classifier)
        self.functions: dict[str, tuple[int, KernelInstance | ProxyFunction]] = {}
        # SPI -> {first SI: functions}: a path that comes back to a host has two segments here.
        self.paths: dict[int, dict[int, list[str]]] = {}
        self._hop_slots: dict[tuple[int, int], int] = {}
        self.first_si: dict[int, int] = {}  # SPI -> the highest first SI of its segments here
        self.attachments: list[Attachment] = []

    @staticmethod
    def _set_prog(prog_array: Map, slot: int, prog: Program) -> None:
        # A program array's values are program fds going in (ids coming out): raw u32s.
        prog_array.update(_u32(slot), _u32(prog.fd))

    def _new_slot(self, name: str) -> int:
        """The sff_progs slot a new function called ``name`` takes: the lowest free one."""
        if name in self.functions:
            raise ChainError(f"a function called '{name}' is already loaded")
        used = {slot for slot, _ in self.functions.values()}
        for slot in range(MAX_FUNCTIONS):
            if slot not in used:
                return slot
        raise ChainError(f"at most {MAX_FUNCTIONS} functions per host")

    def instance(self, folder: str | Path, config: dict[str, Any] | None = None) -> KernelInstance:
        """Load (and verify) a VNF for this host's chains without putting it on any: its vk_chain
        is the forwarder. ``load`` or ``swap`` then makes it a function."""
        return KernelInstance(folder, config, reuse_maps={"vk_chain": self.sff.map("sff_entry"),
                                                          "vk_chain_meta": self.sff.map("chain_meta")})

    def load(self, name: str, folder: str | Path | KernelInstance, config: dict[str, Any] | None = None
             ) -> KernelInstance:
        """Load a VNF (or take an ``instance()``) as function ``name`` of this host's chains."""
        slot = self._new_slot(name)
        inst = folder if isinstance(folder, KernelInstance) else self.instance(folder, config)
        self._set_prog(self.sff.map("sff_progs"), slot, inst.obj.program("vnf_xdp"))
        self.functions[name] = (slot, inst)
        return inst

    def load_proxy(self, name: str, *, to_fn: tuple[str | None, str], from_fn: tuple[str | None, str],
                   function: tuple[str | None, str, str], mode: str = "auto") -> ProxyFunction:
        """Put an NSH-unaware function (a namespace that routes, ...) in this host's chains behind
        the SFC proxy (:mod:`chaining.proxy`); paths then name it like any function.

        ``to_fn`` and ``from_fn`` are the host's ends (netns, ifname) of the veths to the
        function's in and out interfaces; ``function`` is (netns, in ifname, out ifname).
        """
        from chaining.proxy import ProxyFunction  # proxy.py builds on this module

        slot = self._new_slot(name)
        proxy = ProxyFunction(self, name, to_fn=to_fn, from_fn=from_fn, function=function,
                              reuse_maps=self.shared_maps, mode=mode)
        try:
            self._set_prog(self.sff.map("sff_progs"), slot, proxy.program)
        except BaseException:
            proxy.close()
            raise
        self.functions[name] = (slot, proxy)
        return proxy

    def swap(self, name: str, inst: KernelInstance) -> KernelInstance:
        """Put ``inst`` in function ``name``'s place in one prog-array update: every path through
        it goes on to the new program at once, with no packet lost or sent to neither. The old
        instance is returned still loaded (a packet may be inside it on another CPU): close it
        after a moment (``HostDataPath`` waits for the drain)."""
        if name not in self.functions:
            raise ChainError(f"no function called '{name}' (loaded: {sorted(self.functions)})")
        slot, old = self.functions[name]
        self._set_prog(self.sff.map("sff_progs"), slot, inst.obj.program("vnf_xdp"))
        self.functions[name] = (slot, inst)
        return old

    def unload(self, name: str) -> None:
        """Remove a function no path uses any more; its slot is free for the next load."""
        users = sorted(spi for spi, segs in self.paths.items() if any(name in f for f in segs.values()))
        if users:
            raise ChainError(f"function '{name}' is on path(s) {users}: remove them first")
        slot, inst = self.functions.pop(name)
        self.sff.map("sff_progs").delete(_u32(slot))
        inst.close()

    def add_path(self, spi: int, functions: list[str], *, end: str = "stack",
                 egress: tuple[str | None, str] | None = None, first_si: int = FIRST_SI,
                 remote: RemoteHop | None = None, reverse: tuple[int, int] | None = None,
                 reverse_ttl: int = DEFAULT_TTL) -> list[Hop]:
        """Install path ``spi`` through ``functions`` in order; at its end the packet goes to the
        host stack (``end="stack"``), out of ``egress=(netns, ifname)`` (``end="egress"``) or,
        in NSH, to the host that runs the rest of the path (``end="remote"``,
        ``remote=RemoteHop(...)``).

        ``first_si`` is the SI of this host's first function: a host running the middle or the
        end of a path installs its segment from the SI the previous host sent. A path that
        comes back to this host installs one segment per visit (same SPI, other SIs).

        ``reverse=(spi, si)``, on the segment where a symmetric path ends: the forwarder
        records each flow's reply 5-tuple there, and the classifier starts replies at that
        (SPI, SI), the reverse path's first hop on this host.
        """
        if not 0 < spi < 1 << 24:
            raise ChainError(f"SPI {spi} out of range (1 .. 2^24-1)")
        if not len(functions) <= first_si <= FIRST_SI:
            # SI counts down once per function and cannot go below 0 at the path's end.
            raise ChainError(f"first_si {first_si}: {len(functions)} function(s) need "
                             f"{len(functions)} .. {FIRST_SI}")
        for si0, fns in self.paths.get(spi, {}).items():
            if si0 - len(fns) <= first_si and first_si - len(functions) <= si0:
                raise ChainError(f"SPI {spi} SI {first_si}..{first_si - len(functions)} overlaps its segment "
                                 f"SI {si0}..{si0 - len(fns)} ({' -> '.join(fns) or 'no function'})")
        if reverse is not None:
            if end == "remote":
                raise ChainError("reverse= belongs on the segment where the path ends, not one that goes on")
            if not (0 < reverse[0] < 1 << 24 and 0 < reverse[1] <= FIRST_SI):
                raise ChainError(f"reverse {reverse}: (SPI 1 .. 2^24-1, SI 1 .. {FIRST_SI})")
        if 2 * len(functions) + 1 > TAIL_CALL_LIMIT:
            # classifier -> sff, then sff -> f and f -> sff for every function: 2n + 1 tail calls
            raise ChainError(f"path {spi} has {len(functions)} functions; one host takes at most "
                             f"{MAX_LOCAL_HOPS} (2n+1 tail calls, the kernel allows {TAIL_CALL_LIMIT}); "
                             "split it across hosts")
        unknown = [f for f in functions if f not in self.functions]
        if unknown:
            raise ChainError(f"path {spi} names unknown function(s) {unknown} (loaded: {sorted(self.functions)})")
        from chaining.proxy import ProxyFunction

        twice = sorted({f for f in functions if functions.count(f) > 1
                        and isinstance(self.functions[f][1], ProxyFunction)})
        if twice:
            # The proxy finds a packet's path again by its 5-tuple: a second visit would be
            # indistinguishable from the first.
            raise ChainError(f"path {spi} crosses proxied function(s) {twice} more than once")
        if end == "egress":
            if egress is None:
                raise ChainError("end='egress' needs egress=(netns, ifname)")
            last = (SFF_EGRESS, ifindex(*egress))
        elif end == "stack":
            last = (SFF_STACK, 0)
        elif end == "remote":
            if remote is None:
                raise ChainError("end='remote' needs remote=RemoteHop(...)")
            last = (SFF_REMOTE, 0)
            remote_value = _remote_value(remote)  # before anything is written: it may refuse
        else:
            raise ChainError(f"end must be 'stack', 'egress' or 'remote', not {end!r}")
        table = self.sff.map("sff_table")
        hops = []
        for i, name in enumerate(functions):
            si = first_si - i
            table[(spi << 8) | si] = {"action": SFF_LOCAL, "arg": self.functions[name][0],
                                      "stats": self._stats_slot(spi, si)}
            hops.append(Hop(spi, si, name))
        si = first_si - len(functions)
        if end == "remote":
            # The parameters first: the forwarder must never see REMOTE without them.
            self.sff.map("sff_remote").update(_u32((spi << 8) | si), remote_value)
        rev_spi_si = (reverse[0] << 8) | reverse[1] if reverse else 0
        table[(spi << 8) | si] = {"action": last[0], "arg": last[1], "stats": self._stats_slot(spi, si),
                                  "reverse_spi_si": rev_spi_si, "reverse_ttl": reverse_ttl if reverse else 0}
        hops.append(Hop(spi, si, f"<{end}>"))
        self.paths.setdefault(spi, {})[first_si] = list(functions)
        self.first_si[spi] = max(self.paths[spi])
        return hops

    def remove_path(self, spi: int, first_si: int | None = None) -> None:
        """Delete path ``spi``'s entries on this host (one segment with ``first_si``, or all).
        Packets still carrying the SPI are then dropped as unknown: switch the classifier
        away from it first (``HostDataPath`` does)."""
        segs = self.paths.get(spi, {})
        chosen = [first_si] if first_si is not None else list(segs)
        missing = [si for si in chosen if si not in segs]
        if not segs or missing:
            raise ChainError(f"no path {spi}" + (f" segment at SI {missing[0]}" if segs else ""))
        table, remote = self.sff.map("sff_table"), self.sff.map("sff_remote")
        for si0 in chosen:
            for si in range(si0, si0 - len(segs[si0]) - 1, -1):
                key = (spi << 8) | si
                for m, k in ((table, key), (remote, _u32(key))):
                    if k in m:
                        del m[k]
            del segs[si0]
        if segs:
            self.first_si[spi] = max(segs)
        else:
            del self.paths[spi]
            del self.first_si[spi]

    def set_rules(self, rules: list[Rule]) -> list[Rule]:
        """Replace the classifier's rules, atomically for packets; returns them in the order
        the kernel scans them (most specific first). Every rule's SPI must be a path of this
        host (it starts at the path's first SI here). Raises ChainError, leaving the rules
        as they were, for an unknown path, a bad field, more than 256 rules, or rules for
        different paths that overlap with neither the more specific."""
        return self._rules.install(rules, self.first_si)

    @property
    def rules(self) -> list[Rule]:
        """The installed rules, in scan order."""
        return list(self._rules.rules)

    def rule_stats(self) -> list[RuleStats]:
        """Packets and bytes each installed rule started on its path, in scan order."""
        return self._rules.stats()

    def classify(self, dst_prefix: str, spi: int, ttl: int = DEFAULT_TTL) -> None:
        """Add a rule: traffic to ``dst_prefix`` (IPv4) starts on path ``spi`` (replacing a rule
        with the same match)."""
        match = Match(dst=dst_prefix)
        self.set_rules([*(r for r in self.rules if (r.match, r.ifindex) != (match, 0)), Rule(match, spi, ttl)])

    def attach(self, ns: str | None, ifname: str, mode: str = "auto") -> Attachment:
        """Put the classifier at XDP on an ingress interface."""
        att = attach_xdp(self.classifier.program("classifier"), ifname, ns=ns, mode=mode)
        self.attachments.append(att)
        return att

    def attach_underlay(self, ns: str | None, ifname: str, mode: str = "auto") -> Attachment:
        """Receive NSH on an underlay interface: put ``progs/nsh_rx.c`` at its XDP hook, with
        the interface's MAC as the new destination of the frames it decapsulates.

        Also what lets a peer's forwarder redirect into this end of a veth: veth delivers
        XDP-redirected frames only to a peer that runs an XDP program.
        """
        if self.nsh_rx is None:
            self.nsh_rx = load(PROGS / "nsh_rx.c", reuse_maps=self.shared_maps)
            if self.pins is not None:
                self.pins.pin_object(self.nsh_rx, "rx")
        self.nsh_rx.map("rx_ifmac").update(_u32(ifindex(ns, ifname)), mac_of(ns, ifname))
        att = attach_xdp(self.nsh_rx.program("nsh_rx"), ifname, ns=ns, mode=mode)
        self.attachments.append(att)
        return att

    def load_user(self, name: str, folder: str | Path, *, ns: str | None, near: str, far: str,
                  config: dict[str, Any] | None = None, options: Any = None) -> Any:
        """Load a VNF as a user-space function of this host's chains: an AF_XDP worker on
        ``far``, reached through ``near`` (a veth pair in ``ns``, MTU >= 1538), SPI/SI carried
        as NSH both ways (``chaining/user.py``). Returns the
        ``UserFunction`` (tables, counters, runtime stats); ``options`` is an ``XskOptions``."""
        from chaining.user import UserFunction

        slot = self._new_slot(name)
        fn = UserFunction(self, folder, ns=ns, near=near, far=far, config=config, options=options)
        try:
            assert fn.hop is not None
            self._set_prog(self.sff.map("sff_progs"), slot, fn.hop.program("user_hop"))
        except BaseException:
            fn.close()
            raise
        self.functions[name] = (slot, fn)
        return fn

    def _stats_slot(self, spi: int, si: int) -> int:
        """The hop_stats slot of (SPI, SI): one per installed hop, never reused while loaded."""
        key = (spi, si)
        if key not in self._hop_slots:
            # After the highest slot in use (adopted slots need not start at 0), zeroed: a slot
            # an earlier process used and freed may still hold its counts.
            slot = max(self._hop_slots.values(), default=-1) + 1
            if slot >= HOP_STATS_SLOTS:
                raise ChainError(f"more than {HOP_STATS_SLOTS} hops installed on this host")
            self.sff.map("hop_stats")[slot] = {"packets": 0, "bytes": 0}
            self._hop_slots[key] = slot
        return self._hop_slots[key]

    # ---- adoption: a new process takes over what an earlier one left pinned ------------------
    def slot_programs(self) -> dict[int, int]:
        """The forwarder's function slots as the kernel holds them: slot -> program id."""
        progs = self.sff.map("sff_progs")
        out = {}
        for slot in range(MAX_FUNCTIONS):
            raw = progs._raw_lookup(_u32(slot))
            if raw is not None:
                out[slot] = int(np.frombuffer(raw[:4], dtype=np.uint32)[0])
        return out

    def adopt_function(self, name: str, slot: int, inst: KernelInstance) -> bool:
        """Register ``inst`` as function ``name`` in ``slot`` without loading anything; puts its
        program in the slot if the kernel does not hold it there. True if it had to."""
        if name in self.functions:
            raise ChainError(f"a function called '{name}' is already loaded")
        prog = inst.obj.program("vnf_xdp")
        repaired = self.slot_programs().get(slot) != prog.id
        if repaired:
            self._set_prog(self.sff.map("sff_progs"), slot, prog)
        self.functions[name] = (slot, inst)
        return repaired

    def release_slot(self, slot: int) -> None:
        """Empty a function slot no adopted function uses (a change that was never committed)."""
        self.sff.map("sff_progs").delete(_u32(slot))

    def adopt_hops(self) -> set[tuple[int, int]]:
        """Take the hop counter slots from the forwarder's table, so paths installed again with
        ``add_path`` keep their slots and counts; the (SPI, SI)s the table holds."""
        table = self.sff.map("sff_table")
        found = set()
        for key, value in table.items():
            spi_si = int(key)
            found.add((spi_si >> 8, spi_si & 0xFF))
            self._hop_slots[(spi_si >> 8, spi_si & 0xFF)] = int(value["stats"])
        return found

    def forget_hop(self, spi: int, si: int) -> None:
        """Delete a forwarder entry no installed path has (left by an uncommitted change)."""
        key = (spi << 8) | si
        for m, k in ((self.sff.map("sff_table"), key), (self.sff.map("sff_remote"), _u32(key))):
            if k in m:
                del m[k]
        self._hop_slots.pop((spi, si), None)

    def release(self) -> None:
        """Close this process's hold on everything and leave the pinned data path running (an
        agent that stops; the next one adopts it). ``close()`` tears it down instead."""
        for att in self.attachments:
            att.close()
        self.attachments.clear()
        for _, inst in self.functions.values():
            inst.obj.close()
        self.functions.clear()
        for obj in (self.classifier, self.nsh_rx, self.sff):
            if obj is not None:
                obj.close()
        self.nsh_rx = None

    def hop_stats(self) -> dict[tuple[int, int], int]:
        """Packets the forwarder handed on, by (SPI, SI), for the hops that have seen any."""
        packets = self.sff.map("hop_stats").as_array()["packets"]
        return {key: int(packets[slot]) for key, slot in self._hop_slots.items() if packets[slot]}

    def counters(self) -> dict[str, int]:
        """Packets by counter: the forwarder's (``sff_``), the classifier's (``cls_``; per rule:
        :meth:`rule_stats`) and NSH receive's (``rx_``, all 0 until :meth:`attach_underlay`)."""
        sff = self.sff.map("sff_counters").as_array()["packets"]
        cls = self.classifier.map("cls_counters").as_array()["packets"]
        rx = (self.nsh_rx.map("rx_counters").as_array()["packets"] if self.nsh_rx is not None
              else np.zeros(len(RX_COUNTERS), dtype=np.uint64))
        return {**{f"sff_{n}": int(sff[i]) for i, n in enumerate(SFF_COUNTERS)},
                **{f"cls_{n}": int(cls[i]) for i, n in enumerate(CLS_COUNTERS)},
                **{f"rx_{n}": int(rx[i]) for i, n in enumerate(RX_COUNTERS)}}

    def close(self) -> None:
        for att in self.attachments:
            att.detach()
        self.attachments.clear()
        for _, inst in self.functions.values():
            inst.close()
        self.functions.clear()
        self.classifier.close()
        if self.nsh_rx is not None:
            self.nsh_rx.close()
            self.nsh_rx = None
        self.sff.close()

    def __enter__(self) -> LocalChain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
