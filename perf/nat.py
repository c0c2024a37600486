"""Measure nat: kernel ns per packet on each path, and TCP throughput through a NAT router.

    .venv/bin/python perf/nat.py [--seconds 5] [--runs 3]

1. Per path, the program's run time in the kernel (bpf run-time stats over 5,000 test-runs of
   one packet shape; a test-run starts from a fresh copy of the packet, so the hit paths really
   hit and each "new flow" packet has a new source port).
2. iperf3 TCP client -> server through a router namespace: plain forwarding, forwarding with
   the engine's empty XDP program on both router interfaces (what XDP on veth costs by itself),
   and with nat there (the server then has a route to the pool only). Checksum offloads are off
   on every veth end in all three (see the README). The median of --runs runs each, and the
   programs' ns per packet under that traffic.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether

from datapath.attach import attach_xdp
from datapath.builtin import builtin
from datapath.errors import VnfkitError
from datapath.netns import Topology
from datapath.objects import load
from datapath.stats import runtime_stats
from vnfkit.descriptor import config_values, load_descriptor
from vnfkit.executors import encode_config
from vnfkit.instance import KernelInstance
from vnfkit.introspect import introspect
from vnfkit.pyfile import import_file

HERE = Path(__file__).resolve().parent.parent / "vnfs" / "nat"
control = import_file(HERE / "control.py", "nat's control plane", VnfkitError)
SPEC = {"inside": ["198.18.10.0/24"], "pool": "198.18.40.0/30", "ports": "20000-60000"}
C, R, P = "198.18.10.2", "198.18.30.2", "198.18.40.1"


def kernel_paths(runs: int = 5000) -> dict[str, float]:
    """ns per packet of each path, from bpf run-time stats over ``runs`` test-runs."""
    nat_plan = control.plan(SPEC)
    intro = introspect(HERE)
    out: dict[str, float] = {}
    with load(intro.object_path) as obj, runtime_stats():
        obj.map("vk_config")[0] = encode_config(intro.config_dtype, config_values(load_descriptor(HERE),
                                                                                   nat_plan.config))
        control.apply(nat_plan, obj.maps)
        prog = obj.program("vnf_xdp")
        syn = bytes(Ether() / IP(src=C, dst=R) / TCP(sport=5555, dport=80, flags="S"))
        prog.test_run(syn)  # the mapping the hit paths use
        (session,) = control.sessions(obj.maps)
        reply = bytes(Ether() / IP(src=R, dst=session.outside[0]) / TCP(sport=80, dport=session.outside[1]))
        error = bytes(Ether() / IP(src=R, dst=session.outside[0]) / ICMP(type=3, code=3)
                      / bytes(IP(src=session.outside[0], dst=R) / TCP(sport=session.outside[1], dport=80))[:28])
        shapes: dict[str, Any] = {
            "not NAT traffic (pass)": lambda i: bytes(Ether() / IP(src=R, dst="198.18.30.9") / UDP()),
            "outbound, mapping hit": lambda i: syn,
            "inbound, mapping hit": lambda i: reply,
            "outbound, new flow (allocation)": lambda i: bytes(Ether() / IP(src=C, dst=R)
                                                               / TCP(sport=1024 + i, dport=443, flags="S")),
            "inbound ICMP error, quote translated": lambda i: error,
        }
        for name, make in shapes.items():
            packets = [make(i) for i in range(runs)]
            before = prog.stats()
            for pkt in packets:
                prog.test_run(pkt)
            after = prog.stats()
            out[name] = (after.run_time_ns - before.run_time_ns) / max(1, after.run_cnt - before.run_cnt)
    return out


def _ns(ns: str, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=timeout,
                          check=True)


def iperf(seconds: int, runs: int) -> dict[str, Any]:
    """iperf3 TCP throughput (Gbit/s) through a plain router, one running the engine's empty
    XDP program (xdp_pass: the cost of XDP on veth itself) and one running nat; nat's ns/packet."""
    results: dict[str, Any] = {}
    for case in ("plain", "xdp_pass", "nat"):
        with Topology() as topo:
            client, router, server = topo.add_ns("client"), topo.add_ns("router"), topo.add_ns("server")
            inner = topo.add_veth(client, router, addr_a=f"{C}/24", addr_b="198.18.10.1/24")
            outer = topo.add_veth(router, server, addr_a="198.18.30.1/24", addr_b=f"{R}/24")
            topo.add_route(client, "default", gateway="198.18.10.1")
            topo.add_route(server, "198.18.40.0/30" if case == "nat" else "198.18.10.0/24", gateway="198.18.30.1")
            topo.set_sysctl(router, "net.ipv4.ip_forward", "1")
            for key in ("all", "default", inner.ifname_b, outer.ifname_a):
                topo.set_sysctl(router, f"net/ipv4/conf/{key}/rp_filter", "0")
            for ns, ifname in ((client, inner.ifname_a), (router, inner.ifname_b), (router, outer.ifname_a),
                               (server, outer.ifname_b)):
                _ns(ns, "ethtool", "-K", ifname, "tx", "off", "rx", "off")
            srv = subprocess.Popen(["ip", "netns", "exec", server, "iperf3", "-s", "-B", R],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                with KernelInstance(HERE, config=control.plan(SPEC).config) as nat, \
                        load(builtin("xdp_pass")) as passer:
                    prog = nat.obj.program("vnf_xdp")
                    attachments = []
                    if case == "nat":
                        control.apply(control.plan(SPEC), nat.tables)
                        attachments = [nat.attach(router, inner.ifname_b), nat.attach(router, outer.ifname_a)]
                    elif case == "xdp_pass":
                        prog = passer.program()
                        attachments = [attach_xdp(prog, ifname, ns=router)
                                       for ifname in (inner.ifname_b, outer.ifname_a)]
                    if attachments:
                        results[f"{case}_xdp_mode"] = "/".join(sorted({a.mode for a in attachments}))
                    rates, per_packet = [], []
                    try:
                        with runtime_stats():
                            for _ in range(runs):
                                before = prog.stats()
                                res = _ns(client, "iperf3", "-c", R, "-t", str(seconds), "-J",
                                          "--connect-timeout", "5000", timeout=seconds + 30)
                                after = prog.stats()
                                rates.append(json.loads(res.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9)
                                if after.run_cnt > before.run_cnt:
                                    per_packet.append((after.run_time_ns - before.run_time_ns)
                                                      / (after.run_cnt - before.run_cnt))
                    finally:
                        if case == "xdp_pass":
                            for att in attachments:
                                att.detach()
                    results[f"{case}_gbit_s"] = round(statistics.median(rates), 2)
                    if per_packet:
                        results[f"{case}_ns_per_packet_live"] = round(statistics.median(per_packet), 1)
                    if case == "nat":
                        results["nat_counters"] = {k: v[0] for k, v in nat.counters().items() if v[0]}
            finally:
                srv.terminate()
                srv.wait(10)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)
    for name, ns in kernel_paths().items():
        print(f"kernel  {name:<42} {ns:7.1f} ns/packet")
    for key, value in iperf(args.seconds, args.runs).items():
        print(f"iperf3  {key:<42} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
