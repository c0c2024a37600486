"""The devices under test of the benchmark suite: one set-up ("rig") per scenario, all built the
same way so that their numbers can be divided by each other.

    gen ns --ingress--> DUT ns (one per rig) --egress--> out ns
    xdp_gen live frames   the program, rules or process     XDP_DROP on every egress end

A rig whose job ends in a drop (a firewall, a policer, the drop floor) is counted where the
frames arrive, at the DUT's ingress; a rig that forwards (NAT, load balancing, the redirect
floor, user-space forwarders) is counted at the far end of its egress veth, in ``out``. Every
DUT has a namespace of its own, so one peer's conntrack or nftables state never touches
another's and runs can alternate between rigs without re-configuring anything.

With real NICs (``Lab(nic=(iface, peer_iface))``) the ingress veth is replaced by the two
NICs, cabled to each other: the generator sends out of ``peer_iface`` and the DUT receives
on ``iface``. One DUT namespace can hold ``iface`` at a time, so the suite then builds and
measures the rigs one after the other (``Lab.nic_dut`` moves the NIC in; when the DUT
namespace goes, the kernel returns the NIC to the host namespace, without its address).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from chaining.local import LocalChain, RemoteHop, mac_of
from datapath import netns
from datapath.attach import attach_xdp
from datapath.builtin import builtin
from datapath.objects import BpfObject, Program, load
from perf import jobs, peers, traffic
from perf.sinks import in_ns
from vnfkit.descriptor import load_descriptor
from vnfkit.instance import KernelInstance

FLOWS, BASE_PORT = 1024, 4000  # UDP source ports the generator cycles through: 1,024 5-tuples
CHAIN_SPI = 300
UNDERLAY_MTU = 1600  # room for NSH and the outer Ethernet header on the two-host underlay
STRAY_FRAMES = 10  # frames a VNF may see besides the generator's (ARP, say) before a run is an error


@dataclass
class Dut:
    """A device under test: its namespace, the ingress link (``a``: generator side, ``b``: the
    DUT's), the egress veth (``a``: the DUT's, ``b``: out's) and the addresses of the job."""

    name: str
    ns: str
    ingress: netns.VethPair
    egress: netns.VethPair | None
    addrs: jobs.Addrs


@dataclass
class Rig:
    """A scenario's device under test, set up; ``rx`` counts where its frames end."""

    name: str
    group: str            # floor, function, peer, chain
    what: str
    end: str              # drop | forward
    dut: Dut
    rx: traffic.DeviceRx
    counted_at: str
    programs: dict[str, Program] = field(default_factory=dict)  # the DUT's BPF programs (run-time stats)
    work: Callable[[], int] | None = None  # frames the DUT did its job on, read before and after a run
    check: Callable[[], None] | None = None  # raises if the DUT took another path than its job's
    info: dict[str, Any] = field(default_factory=dict)
    process: peers.Process | None = None

    @property
    def dst(self) -> str:
        return self.info["dst"]


class Lab:
    """The namespaces, the generator and the sinks every rig shares; builds rigs by name."""

    def __init__(self, topo: netns.Topology, stack: contextlib.ExitStack, cpu: int,
                 nic: tuple[str, str] | None = None) -> None:
        self.topo, self.stack, self.cpu, self.nic = topo, stack, cpu, nic
        self._lab_stack = stack  # what outlives every rig (``scope`` swaps self.stack per rig)
        self.gen_ns, self.out_ns = topo.add_ns("gen"), topo.add_ns("out")
        self.gen: BpfObject = stack.enter_context(load(builtin("xdp_gen")))
        self.drop: BpfObject = stack.enter_context(load(builtin("xdp_pass"), defines={"VERDICT": "XDP_DROP"}))
        self.pass_: BpfObject = stack.enter_context(load(builtin("xdp_pass")))
        self.spare = topo.spare_addresses()
        self.backends = topo.reserve_net(29)
        self._duts = 0
        self._chain_folder: Path | None = None
        self._nic_addrs: tuple[str, str] | None = None

    # ---- plumbing ----------------------------------------------------------------------------
    def _xdp(self, prog: Program, ns: str | None, ifname: str) -> None:
        att = attach_xdp(prog, ifname, ns=ns, mode="native")
        self.stack.callback(att.detach)

    def _rx(self, ns: str | None, ifindex: int) -> traffic.DeviceRx:
        return self.stack.enter_context(contextlib.closing(traffic.DeviceRx(ns, ifindex)))

    def dut(self, name: str, forward: bool, routed: bool = True) -> Dut:
        """A DUT namespace with its ingress link and, to forward, an egress veth to ``out``
        whose far end drops at XDP, routes to everything a job sends to, and a static
        neighbour entry (the far end's XDP would drop ARP). ``routed=False`` leaves IP
        forwarding off: a user-space forwarder reads copies of the frames, and the stack must
        not forward the originals beside it."""
        self._duts += 1
        ns = self.topo.add_ns(f"d{self._duts}")
        ingress = self._nic_ingress(ns) if self.nic else self.topo.add_veth(self.gen_ns, ns)
        egress = None
        server = ingress.addr_b
        if forward:
            egress = self.topo.add_veth(ns, self.out_ns)
            self._xdp(self.drop.program(), self.out_ns, egress.ifname_b)
            self.topo.set_sysctl(ns, "net.ipv4.ip_forward", "1" if routed else "0")
            mac = mac_of(self.out_ns, egress.ifname_b).hex(":")
            in_ns(ns, "ip", "neigh", "replace", egress.addr_b, "lladdr", mac, "dev", egress.ifname_a, "nud",
                  "permanent")
            for dst in (*(f"{a}/32" for a in self.spare), str(self.backends)):
                self.topo.add_route(ns, dst, gateway=egress.addr_b)
            server = egress.addr_b
        client_net = ipaddress.ip_interface(f"{ingress.addr_a}/{ingress.prefixlen}").network
        backends = tuple(str(self.backends.network_address + 1 + i) for i in range(jobs.LB_BACKENDS))
        addrs = jobs.Addrs(client=ingress.addr_a, client_net=str(client_net), server=server, spare=self.spare,
                           backends=backends)
        return Dut(name, ns, ingress, egress, addrs)

    def _nic_ingress(self, ns: str) -> netns.VethPair:
        """Move the NIC pair in: ``peer_iface`` to the generator's namespace (once), ``iface``
        to this DUT's (and back to the host namespace when the rig's stack unwinds), with the
        two addresses of one /30 of the benchmark range."""
        iface, peer_iface = self.nic  # type: ignore[misc]
        if self._nic_addrs is None:
            self._nic_addrs = self.topo.spare_addresses()
            _move_link(None, peer_iface, self.gen_ns, self._nic_addrs[0])
            # Some drivers transmit redirected frames only with an XDP program of their own.
            self._xdp(self.pass_.program(), self.gen_ns, peer_iface)
        gen_addr, dut_addr = self._nic_addrs
        _move_link(None, iface, ns, dut_addr)
        self.stack.callback(_move_home, ns, iface)
        return netns.VethPair(self.gen_ns, peer_iface, netns.ifindex(self.gen_ns, peer_iface), gen_addr,
                              ns, iface, netns.ifindex(ns, iface), dut_addr, 30)

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """Rigs built inside go when the block ends (NIC mode: one rig at a time)."""
        outer = self.stack
        with contextlib.ExitStack() as inner:
            self.stack = inner
            try:
                yield
            finally:
                self.stack = outer

    def sender(self, rig: Rig, size: int) -> traffic.FrameSender:
        """Live frames of ``size`` bytes on the wire (FCS included) from the generator to the rig."""
        i = rig.dut.ingress
        frame = traffic.udp_frame(traffic.link_mac(i.ns_a, i.ifindex_a), traffic.link_mac(i.ns_b, i.ifindex_b),
                                  i.addr_a, rig.dst, BASE_PORT, jobs.DPORT, size=size - 4)
        return traffic.frame_sender(self.gen, i.ns_a, i.ifindex_a, frame, flows=FLOWS, base_port=BASE_PORT,
                                    rewrite_head=True)

    def _rig(self, name: str, group: str, what: str, dut: Dut, dst: str, **kw: Any) -> Rig:
        if dut.egress is not None:
            rx, at, end = self._rx(self.out_ns, dut.egress.ifindex_b), "far end of the egress veth (rx)", "forward"
        else:
            rx, at, end = self._rx(dut.ns, dut.ingress.ifindex_b), "DUT ingress (rx)", "drop"
        rig = Rig(name, group, what, end, dut, rx, at, **kw)
        rig.info = {"dst": dst, "dut_ns": dut.ns, "ingress": dut.ingress.ifname_b,
                    "egress": dut.egress.ifname_a if dut.egress else None, **rig.info}
        return rig

    def _stack_ingress(self, dut: Dut) -> None:
        # No XDP here: veth then takes redirected frames only with GRO on (it builds skbs in NAPI).
        in_ns(dut.ns, "ethtool", "-K", dut.ingress.ifname_b, "gro", "on")

    # ---- floors --------------------------------------------------------------------------------
    def floor_drop(self) -> Rig:
        dut = self.dut("floor_drop", forward=False)
        self._xdp(self.drop.program(), dut.ns, dut.ingress.ifname_b)
        return self._rig("floor_drop", "floor", "empty XDP program returning XDP_DROP", dut, dut.addrs.server,
                         programs={"xdp_drop": self.drop.program()})

    def floor_redirect(self) -> Rig:
        dut = self.dut("floor_redirect", forward=True)
        assert dut.egress is not None
        obj = self.stack.enter_context(load(builtin("xdp_fwd"), defines={"IFINDEX": str(dut.egress.ifindex_a)}))
        self._xdp(obj.program(), dut.ns, dut.ingress.ifname_b)
        return self._rig("floor_redirect", "floor", "empty XDP program: XDP_REDIRECT to the egress veth", dut,
                         dut.addrs.server, programs={"xdp_fwd": obj.program()})

    def floor_pass(self) -> Rig:
        dut = self.dut("floor_pass", forward=True)
        self._xdp(self.pass_.program(), dut.ns, dut.ingress.ifname_b)
        return self._rig("floor_pass", "floor", "empty XDP program returning XDP_PASS, then Linux forwards "
                         "(what every VNF that passes pays besides its own work)", dut, dut.addrs.server,
                         programs={"xdp_pass": self.pass_.program()})

    def linux_forward(self) -> Rig:
        dut = self.dut("linux_forward", forward=True)
        self._stack_ingress(dut)
        return self._rig("linux_forward", "peer", "Linux IP forwarding, no XDP (GRO on)", dut, dut.addrs.server)

    # ---- the example VNFs ----------------------------------------------------------------------
    def function(self, name: str) -> Rig:
        """A VNF alone at XDP on the DUT's ingress, configured for its job (``firewall_1000``, ``nat``...)."""
        job = jobs.job(name)
        dut = self.dut(name, forward=job.end == "forward")
        inst = self.stack.enter_context(KernelInstance(job.folder))
        config = job.configure(inst.tables, dut.addrs)
        inst.configure({**load_descriptor(job.folder).param_defaults(), **config})
        inst.attach(dut.ns, dut.ingress.ifname_b, mode="native")
        self.stack.callback(inst.close)

        def work() -> int:
            counters = inst.counters()
            return sum(counters[c][0] for c in job.work)

        def check() -> None:
            # A few frames that are not the generator's may arrive (an ARP reply to the ICMP
            # error the stack sends for a frame that was passed to it): tolerated, no more.
            counters = inst.counters()
            done, rx = sum(counters[c][0] for c in job.work), counters["rx"][0]
            if rx - done > max(STRAY_FRAMES, rx // 10_000):
                others = {k: v[0] for k, v in counters.items() if v[0] and k not in job.work}
                raise RuntimeError(f"{name}: {rx} frames received, {done} went through {'+'.join(job.work)}; "
                                   f"other counters: {others}: the VNF was not doing its benchmark job")
        return self._rig(name, "function", f"{job.vnf}: {job.what}", dut, job.dst(dut.addrs),
                         programs={job.vnf: inst.obj.program("vnf_xdp")}, work=work, check=check,
                         info={"vnf": job.vnf, "config": {k: _jsonable(v) for k, v in config.items()}})

    # ---- peers -----------------------------------------------------------------------------------
    def nft_firewall(self, rules: int) -> Rig:
        dut = self.dut(f"nft_fw_{rules}", forward=False)
        self._stack_ingress(dut)
        ruleset = peers.nft_firewall(jobs.firewall_rules(rules, dut.addrs), dut.ingress.ifname_b)
        peers.load_nft(dut.ns, ruleset)
        loaded = peers.nft_counter_rules(dut.ns)
        if loaded != rules:
            raise RuntimeError(f"nftables holds {loaded} rules, {rules} were loaded")
        return self._rig(f"nft_fw_{rules}", "peer", f"nftables netdev ingress, the same {rules:,} rules", dut,
                         dut.addrs.server, info={"rules": rules, "ruleset_head": ruleset[:600]})

    def iptables_firewall(self, rules: int) -> Rig:
        dut = self.dut(f"ipt_fw_{rules}", forward=False)
        self._stack_ingress(dut)
        doc = peers.iptables_firewall(jobs.firewall_rules(rules, dut.addrs), dut.ingress.ifname_b)
        version = peers.load_iptables(dut.ns, doc)
        cmd = peers.iptables_command().replace("-restore", "")

        def work() -> int:  # x_tables counts every rule: the last one's packets did the job
            out = in_ns(dut.ns, cmd, "-t", "raw", "-L", "VNFKIT_BENCH", "-v", "-x", "-n")
            return int(out.strip().splitlines()[-1].split()[0])
        return self._rig(f"ipt_fw_{rules}", "peer", f"iptables (legacy x_tables) raw PREROUTING, the same "
                         f"{rules:,} rules", dut, dut.addrs.server, work=work,
                         info={"rules": rules, "iptables": version, "document_head": doc[:600]})

    def nft_snat(self) -> Rig:
        dut = self.dut("nft_snat", forward=True)
        assert dut.egress is not None
        self._stack_ingress(dut)
        ruleset = peers.nft_snat(dut.egress.ifname_a, dut.addrs.spare[0])
        peers.load_nft(dut.ns, ruleset)
        return self._rig("nft_snat", "peer", "nftables source NAT with conntrack (postrouting snat)", dut,
                         dut.addrs.server, info={"ruleset": ruleset})

    def nft_lb(self, how: str) -> Rig:
        dut = self.dut(f"nft_lb_{how}", forward=True)
        self._stack_ingress(dut)
        ruleset = peers.nft_lb(dut.addrs.spare[1], jobs.DPORT, dut.addrs.backends, how)
        peers.load_nft(dut.ns, ruleset)
        return self._rig(f"nft_lb_{how}", "peer", f"nftables DNAT to {len(dut.addrs.backends)} backends by {how}, "
                         "conntrack", dut, dut.addrs.spare[1], info={"ruleset": ruleset})

    def nft_limit(self) -> Rig:
        dut = self.dut("nft_limit", forward=False)
        self._stack_ingress(dut)
        ruleset = peers.nft_limit(dut.ingress.ifname_b, dut.addrs.client_net, jobs.RATE_LIMIT_PPS,
                                  jobs.RATE_LIMIT_BURST)
        peers.load_nft(dut.ns, ruleset)
        return self._rig("nft_limit", "peer", f"nftables limit rate over {jobs.RATE_LIMIT_PPS:,}/s on the source "
                         "prefix at netdev ingress, excess dropped", dut, dut.addrs.server, info={"ruleset": ruleset})

    def python_forward(self) -> Rig:
        dut = self.dut("python_fwd", forward=True, routed=False)
        assert dut.egress is not None
        self._stack_ingress(dut)
        proc = self.stack.enter_context(peers.started(
            "python forwarder", dut.ns, peers.python_forwarder(dut.ingress.ifname_b, dut.egress.ifname_a),
            str(self.cpu)))
        return self._rig("python_fwd", "peer", "pure-Python AF_PACKET forwarder (recv + send per frame), "
                         "on the path CPU", dut, dut.addrs.server, process=proc, info={"command": proc.command})

    def testpmd(self, driver: str) -> Rig:
        ok, why = peers.testpmd_available()
        if not ok:
            raise Unavailable(why)
        dut = self.dut(f"testpmd_{driver}", forward=True, routed=False)
        assert dut.egress is not None
        if driver == "af_packet":
            self._stack_ingress(dut)
        others = sorted(os.sched_getaffinity(0) - {self.cpu})
        if not others:
            raise Unavailable("testpmd needs a second CPU for its main lcore")
        cmd = peers.testpmd(driver, dut.ingress.ifname_b, dut.egress.ifname_a, self.cpu, others[0])
        self.stack.callback(peers.remove_runtime, driver)  # after the process has stopped (LIFO)
        try:
            proc = self.stack.enter_context(peers.started(f"testpmd {driver}", dut.ns, cmd,
                                                          f"{others[0]},{self.cpu}", ready=1.0))
        except RuntimeError as exc:
            raise Unavailable(str(exc)) from exc
        return self._rig(f"testpmd_{driver}", "peer", f"DPDK dpdk-testpmd io forwarding over net_{driver}, "
                         "one busy-polling lcore on the path CPU", dut, dut.addrs.server, process=proc,
                         info={"command": proc.command})

    # ---- chains ----------------------------------------------------------------------------------
    def _chain_function(self) -> Path:
        if self._chain_folder is None:
            from perf.chains import trivial_function
            self._chain_folder = self._lab_stack.enter_context(trivial_function())
        return self._chain_folder

    def chain_local(self, hops: int) -> Rig:
        """``hops`` functions in one host: hops - 1 pass-through skeletons, then one that drops."""
        from perf.chains import DROPPER, FUNCTION, describe
        folder = self._chain_function()
        dut = self.dut(f"chain_local_{hops}", forward=False)
        chain = self.stack.enter_context(LocalChain())
        chain.load(FUNCTION, folder)
        dropper = chain.load(DROPPER, folder)
        dropper.tables["blocklist"][ipaddress.ip_address(dut.addrs.client).packed] = 1
        route = chain.add_path(CHAIN_SPI, [FUNCTION] * (hops - 1) + [DROPPER], end="stack")
        chain.classify(f"{dut.addrs.server}/32", CHAIN_SPI)
        chain.attach(dut.ns, dut.ingress.ifname_b, mode="native")
        return self._rig(f"chain_local_{hops}", "chain", f"{hops} hops in one host", dut, dut.addrs.server,
                         programs={"classifier": chain.classifier.program("classifier")},
                         work=lambda: dropper.counters()["blocked"][0], info={"path": describe(route[:-1])})

    def chain_remote(self, hops: int = 2) -> Rig:
        """``hops`` functions over two hosts: hostA (the DUT) runs hops - 1 pass-through skeletons
        and sends the rest of the path in NSH over Ethernet on an underlay veth to hostB, whose
        nsh_rx continues it into the dropper. Counted where hostB receives the underlay."""
        from perf.chains import DROPPER, FUNCTION, describe
        folder = self._chain_function()
        dut = self.dut(f"chain_remote_{hops}", forward=False)
        host_b = self.topo.add_ns(f"h{self._duts}")
        u = self.topo.add_veth(dut.ns, host_b, mtu=UNDERLAY_MTU)
        a = self.stack.enter_context(LocalChain())
        b = self.stack.enter_context(LocalChain())
        a.load(FUNCTION, folder)
        dropper = b.load(DROPPER, folder)
        dropper.tables["blocklist"][ipaddress.ip_address(dut.addrs.client).packed] = 1
        remote = RemoteHop(dut.ns, u.ifname_a, mac_of(host_b, u.ifname_b).hex(":"), encap="eth",
                           src_ip=u.addr_a, dst_ip=u.addr_b)
        route_a = a.add_path(CHAIN_SPI, [FUNCTION] * (hops - 1), end="remote", remote=remote)
        first_b = route_a[-1].si
        route_b = b.add_path(CHAIN_SPI, [DROPPER], first_si=first_b)
        a.classify(f"{dut.addrs.server}/32", CHAIN_SPI)
        a.attach(dut.ns, dut.ingress.ifname_b, mode="native")
        b.attach_underlay(host_b, u.ifname_b, mode="native")
        rig = self._rig(f"chain_remote_{hops}", "chain", f"{hops} hops over two hosts (NSH over Ethernet)", dut,
                        dut.addrs.server, programs={"classifier": a.classifier.program("classifier")},
                        work=lambda: dropper.counters()["blocked"][0],
                        info={"path_host_a": describe(route_a), "path_host_b": describe(route_b[:-1]),
                              "underlay": u.ifname_a, "host_b": host_b})
        rig.rx = self._rx(host_b, u.ifindex_b)
        rig.counted_at = "host B's underlay veth (rx)"
        return rig


class Unavailable(RuntimeError):
    """A peer that cannot run on this host; the reason goes into the report."""


def _move_link(ns_from: str | None, ifname: str, ns_to: str, addr: str) -> None:
    """Move ``ifname`` into ``ns_to``, give it ``addr``/30 and bring it up."""
    with netns.enter(ns_from), IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            raise LookupError(f"no interface {ifname!r} in the host namespace (is it a NIC of this host?)")
        ipr.link("set", index=idx[0], net_ns_fd=f"/run/netns/{ns_to}")
    with netns.enter(ns_to), IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)[0]
        ipr.flush_addr(index=idx)
        ipr.addr("add", index=idx, address=addr, prefixlen=30)
        ipr.link("set", index=idx, state="up")


def _move_home(ns: str, ifname: str) -> None:
    """Give a NIC back to the host namespace (that of PID 1)."""
    with netns.enter(ns), IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if idx:
            ipr.link("set", index=idx[0], net_ns_pid=1)


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)
