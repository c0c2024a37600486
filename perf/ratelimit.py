"""Measured figures for README.md: ``.venv/bin/python perf/ratelimit.py [--quick]``.

1. Cost per packet of each policing path: the kernel's own ns/run under BPF_PROG_TEST_RUN
   (against the empty ``xdp_pass`` floor), the native build in batches of 64, the model.
2. Policing accuracy with the real clock on real veths: datagrams sent as fast as Python
   can from one CPU, then from two CPUs at once into one bucket (the lock-free case).
3. iperf3 through a byte-rate bucket: TCP goodput and UDP received against the configured rate.

Numbers are medians over runs; a shared 2-vCPU VM moves them by tens of percent.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from datapath import netns
from datapath.builtin import builtin
from datapath.errors import VnfkitError
from datapath.objects import load
from vnfkit.descriptor import load_descriptor
from vnfkit.executors import HEADROOM, make_executors
from vnfkit.pyfile import import_file

VNF = Path(__file__).resolve().parent.parent / "vnfs" / "ratelimit"
control = import_file(VNF / "control.py", "the ratelimit control plane", VnfkitError)
BIG = 4_000_000_000  # a rate and burst no benchmark run can exhaust
L2 = Ether(src="02:00:00:00:00:0a", dst="02:00:00:00:00:0b")
PKT4 = bytes(L2 / IP(src="198.18.0.9", dst="198.18.1.1") / UDP(sport=4000, dport=53) / (b"x" * 18))
PKT6 = bytes(L2 / IPv6(src="2001:db8::9", dst="2001:db8:1::1") / UDP(sport=4000, dport=53) / (b"x" * 18))
PREFIXES = ["198.18.0.0/24", "2001:db8::/64"]

SCENARIOS: dict[str, tuple[bytes, dict[str, Any]]] = {
    "unmatched (no bucket, per-flow off)": (PKT4, {}),
    "prefix bucket, conform": (PKT4, {"buckets": [{"name": "t", "rate": BIG, "burst": BIG, "prefixes": PREFIXES}]}),
    "prefix bucket, exceed -> drop": (PKT4, {"buckets": [{"name": "t", "rate": 0, "burst": 1, "prefixes": PREFIXES}]}),
    "prefix bucket, exceed -> mark": (PKT4, {"exceed": "mark",
                                             "buckets": [{"name": "t", "rate": 0, "burst": 1, "prefixes": PREFIXES}]}),
    "prefix + flow, conform (IPv4)": (PKT4, {"flow": {"rate": BIG, "burst": BIG},
                                             "buckets": [{"name": "t", "rate": BIG, "burst": BIG,
                                                          "prefixes": PREFIXES}]}),
    "prefix + flow, conform (IPv6)": (PKT6, {"flow": {"rate": BIG, "burst": BIG},
                                             "buckets": [{"name": "t", "rate": BIG, "burst": BIG,
                                                          "prefixes": PREFIXES}]}),
}


def per_packet_costs(runs: int, repeat: int) -> dict[str, dict[str, float]]:
    """ns/packet of every scenario on the three executors (kernel: the kernel's own timing)."""
    desc = load_descriptor(VNF)
    kernel, native, model = make_executors(VNF)
    out: dict[str, dict[str, float]] = {}
    try:
        with load(builtin("xdp_pass")) as floor:
            prog = floor.programs["xdp_pass"] if "xdp_pass" in floor.programs else next(iter(floor.programs.values()))
            out["floor: empty xdp_pass"] = {"kernel": statistics.median(
                prog.test_run(PKT4, repeat).duration_ns for _ in range(runs))}
        for name, (pkt, spec) in SCENARIOS.items():
            policy = control.parse_policy(spec)
            row = {}
            for ex in (kernel, native, model):
                ex.reset()
                ex.configure(dict(desc.param_defaults(), **control.apply(policy, ex.vnf_tables())))
                ex.set_clock(0)  # the real clock, as in production
                ex.run(pkt)  # the first packet fills the bucket
            row["kernel"] = statistics.median(kernel.prog.test_run(pkt, repeat).duration_ns for _ in range(runs))
            row["native batch"] = _native_batch_ns(native, pkt, runs, max(1, repeat // 64))
            t0 = time.perf_counter_ns()
            for _ in range(2000):
                model.run(pkt)
            row["model"] = (time.perf_counter_ns() - t0) / 2000
            out[name] = row
    finally:
        for ex in (kernel, native, model):
            ex.close()
    return out


def _native_batch_ns(native: Any, pkt: bytes, runs: int, calls: int) -> float:
    """ns/packet of ``vk_native_run_batch`` on 64 frames laid out once (the C call alone, as
    perf/sdk.py measures it; the frames are not restored, which no scenario here needs)."""
    slot = 2048
    buf = bytearray(64 * slot)
    for i in range(64):
        buf[i * slot + HEADROOM:i * slot + HEADROOM + len(pkt)] = pkt
    ffi, fn = native.ffi, native.lib.vk_native_run_batch
    args = (ffi.from_buffer("uint8_t[]", buf), slot, 64,
            ffi.from_buffer("uint32_t[]", np.full(64, HEADROOM, dtype=np.uint32)),
            ffi.from_buffer("uint32_t[]", np.full(64, len(pkt), dtype=np.uint32)), ffi.new("struct vk_result[]", 64))
    times = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        for _ in range(calls):
            fn(*args)
        times.append((time.perf_counter_ns() - t0) / (calls * 64))
    return statistics.median(times)


def _blast(ns: str, src: str, dst: str, seconds: float, cpu: int, result: Any) -> None:
    """A child process: pinned to ``cpu``, sends UDP from ``src`` for ``seconds``."""
    os.sched_setaffinity(0, {cpu})
    with netns.enter(ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((src, 0))
    sent, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < seconds:
        for _ in range(64):
            sock.sendto(b"x" * 18, (dst, 9))
        sent += 64
    result.put((sent, time.monotonic() - t0))


def accuracy(seconds: float) -> dict[str, dict[str, float]]:
    """Conforming packets against rate x duration + burst, with one and with two senders."""
    from vnfkit.instance import KernelInstance

    out = {}
    with netns.Topology() as topo:
        server = topo.add_ns("server")
        links = [topo.add_veth(topo.add_ns(f"c{i}"), server) for i in range(2)]
        with KernelInstance(VNF) as vnf:
            for link in links:
                vnf.attach(server, link.ifname_b)
            for senders in (1, 2):
                rate, burst = 20_000, 1000
                prefixes = [str(ipaddress.ip_interface(f"{link.addr_a}/30").network) for link in links]
                policy = control.parse_policy({"buckets": [{"name": "shared", "rate": rate, "burst": burst,
                                                            "prefixes": prefixes}]})
                vnf.obj.map("vk_counters").clear()
                vnf.configure(control.apply(policy, vnf.tables))
                queue: Any = multiprocessing.get_context("fork").Queue()
                procs = [multiprocessing.get_context("fork").Process(
                    target=_blast, args=(links[i].ns_a, links[i].addr_a, links[i].addr_b, seconds, i, queue))
                    for i in range(senders)]
                for p in procs:
                    p.start()
                results = [queue.get(timeout=60) for _ in procs]
                for p in procs:
                    p.join()
                time.sleep(0.2)
                c = vnf.counters()
                sent = sum(r[0] for r in results)
                duration = max(r[1] for r in results)
                expected = burst + rate * duration
                out[f"{senders} sender(s)"] = {"sent": sent, "pps offered": sent / duration,
                                               "conform": c["conform"][0], "expected": round(expected),
                                               "error %": round(100 * (c["conform"][0] - expected) / expected, 2)}
    return out


def iperf_through_bucket(seconds: int) -> dict[str, str]:
    """iperf3 through a 100 Mbit/s (12.5 MB/s) byte bucket with a 1 MB burst: TCP goodput,
    and UDP offered at 200 Mbit/s in 1400-byte datagrams (payload Mbit/s received)."""
    from vnfkit.instance import KernelInstance

    out = {}
    with netns.Topology() as topo:
        client, server = topo.add_ns("tc"), topo.add_ns("ts")
        link = topo.add_veth(client, server)
        bucket = {"buckets": [{"name": "b", "rate": "12.5M", "burst": "1M", "unit": "bytes",
                               "prefixes": [f"{link.addr_a}/32"]}]}
        runs = (("TCP, VNF attached, no bucket", {}, []), ("TCP, 12.5 MB/s bucket", bucket, []),
                ("UDP 200 Mbit/s offered, 12.5 MB/s bucket", bucket, ["-u", "-b", "200M", "-l", "1400"]))
        with KernelInstance(VNF) as vnf:
            vnf.attach(server, link.ifname_b)
            for label, spec, extra in runs:
                policy = control.parse_policy(spec)
                vnf.configure(control.apply(policy, vnf.tables))
                srv = subprocess.Popen(["ip", "netns", "exec", server, "iperf3", "-s", "-1", "-B", link.addr_b],
                                       stdout=subprocess.DEVNULL)
                time.sleep(0.5)
                res = subprocess.run(["ip", "netns", "exec", client, "iperf3", "-c", link.addr_b, "-t", str(seconds),
                                      "-J", *extra], capture_output=True, text=True, timeout=seconds + 30)
                srv.wait(timeout=30)
                end = json.loads(res.stdout)["end"]
                if not extra:
                    out[label] = f"{end['sum_received']['bits_per_second'] / 1e6:.1f} Mbit/s goodput"
                    continue
                # UDP: the IP bytes the bucket admitted against rate x duration + burst.
                st = control.read_stats(policy, vnf.tables)["b"]
                ip_bytes = st["conform_bytes"] - 14 * st["conform_packets"]  # frames less their Ethernet header
                expected = 1_000_000 + 12_500_000 * end["sum"]["seconds"]
                error = 100 * (ip_bytes - expected) / expected
                out[label] = (f"{ip_bytes * 8 / end['sum']['seconds'] / 1e6:.1f} Mbit/s of IP admitted, "
                              f"{st['exceed_packets']} datagrams dropped, error {error:+.2f} %")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs, shorter traffic")
    args = parser.parse_args()
    runs, repeat, seconds = (3, 20_000, 1.0) if args.quick else (7, 200_000, 3.0)
    costs = per_packet_costs(runs, repeat)
    print(f"{'ns/packet':40} {'kernel':>8} {'native':>8} {'model':>9}")
    for name, row in costs.items():
        print(f"{name:40} {row.get('kernel', 0):8.1f} {row.get('native batch', 0):8.1f} {row.get('model', 0):9.0f}")
    for name, row in accuracy(seconds).items():
        print(f"accuracy, {name}: {row}")
    for name, result in iperf_through_bucket(int(seconds) + 2).items():
        print(f"iperf3 {name}: {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
