"""Measure l4lb: fast-path ns/packet (kernel test-run and the native batch), Maglev's flow
movement and build time, and real traffic through the lab (HTTP connections/s, iperf3).

    .venv/bin/python perf/l4lb.py [--quick]

Prints markdown tables (the README's "Measured" section). Needs root, like the kernel tests.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from datapath.errors import VnfkitError
from vnfkit.pyfile import import_file

HERE = Path(__file__).resolve().parent.parent / "vnfs" / "l4lb"


def _load(rel: str) -> ModuleType:
    return import_file(HERE / rel, "part of l4lb", VnfkitError)


def fast_path(repeat: int) -> None:
    """ns/packet of each path, after one warm-up packet (so the connection-table paths are
    hits): the kernel's own timing of test-run, and the native build's C batch loop alone."""
    import numpy as np

    from vnfkit.descriptor import load_descriptor
    from vnfkit.executors import HEADROOM, make_executors
    from vnfkit.testing import prepare

    packets = _load("tests/packets.py")
    kernel, native = make_executors(HERE, ("kernel", "native"))
    cases = [
        ("not a VIP (pass)", packets.tcp4("198.18.1.99", 80)),
        ("VIP address, no VIP for the port (pass)", packets.tcp4(packets.WEB, 81)),
        ("DNAT IPv4, connection hit", packets.tcp4(packets.WEB, 80)),
        ("DNAT reply (SNAT)", packets.REPLY),
        ("DNAT IPv6 + dest-opts, hit", packets.tcp6(packets.WEB6, 443, ext=packets.IPv6ExtHdrDestOpt())),
        ("IPIP encap, hit", packets.udp4(packets.DNS, 53)),
        ("IPIP encap under 2 tags, hit", packets.udp4(packets.DNS, 53, tags=(100, 7))),
        ("IP6IP6 encap, hit", packets.tcp6(packets.TUN6, 80)),
        ("no backend (drop)", packets.tcp4(packets.EMPTY, 80)),
    ]
    from datapath.builtin import builtin
    from datapath.objects import load

    with load(builtin("xdp_pass")) as empty:
        floor = _kernel_ns(empty.program("xdp_pass"), bytes(cases[0][1]), repeat // 10)
    print(f"| path | kernel ns/pkt (test-run, less the empty program's {floor:.0f}) "
          f"| native ns/pkt (C loop over {repeat}) |")
    print("| --- | ---: | ---: |")
    for name, pkt in cases:
        data = bytes(pkt)
        for ex in (kernel, native):
            prepare([ex], load_descriptor(HERE), {}, packets.T, "bench")
            ex.set_clock(0)
            if name.startswith("DNAT reply"):  # the reply needs the forward packet's reverse entry
                ex.run(bytes(packets.tcp4(packets.WEB, 80)))
            ex.run(data)  # warm-up: makes the connection entry
        print(f"| {name} | {_kernel_ns(kernel.prog, data, repeat // 10) - floor:.0f} | "
              f"{_native_ns(native, data, repeat, HEADROOM, np):.0f} |")
    for ex in (kernel, native):
        ex.close()


def _kernel_ns(prog: Any, data: bytes, n: int) -> float:
    """Mean of the kernel's own run time over n test-runs of one run each: test-run's repeat
    would run the program again on the packet it has just rewritten (a DNAT'd packet is no
    longer to the VIP), so each run gets the original packet afresh. This includes the
    timer's overhead, measured on the empty program (the floor) and subtracted."""
    return sum(prog.test_run(data).duration_ns for _ in range(n)) / n


def _native_ns(native: Any, data: bytes, n: int, headroom: int, np: Any) -> float:
    """Time vk_native_run_batch alone (run_batch would add Python's buffer building)."""
    slot = 2048
    buf = bytearray(n * slot)
    for i in range(n):
        buf[i * slot + headroom:i * slot + headroom + len(data)] = data
    offsets = np.full(n, headroom, dtype=np.uint32)
    lens = np.full(n, len(data), dtype=np.uint32)
    res = native.ffi.new("struct vk_result[]", n)
    cbuf, coff, clen = (native.ffi.from_buffer(t, b) for t, b in (("uint8_t[]", buf), ("uint32_t[]", offsets),
                                                                 ("uint32_t[]", lens)))
    t0 = time.perf_counter_ns()
    native.lib.vk_native_run_batch(cbuf, slot, n, coff, clen, res)
    return (time.perf_counter_ns() - t0) / n


def maglev_figures(flows: int) -> None:
    maglev = _load("maglev.py")
    print("\n| N | M | flows moved | on the removed backend | ideal 1/N |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for m in (251, 1021, 65537):
        for n in (5, 7, 10):
            mv = maglev.flow_movement(n, m, flows=flows, seed=n)
            print(f"| {n} | {m} | {mv.moved:.2%} | {mv.on_removed:.2%} | {mv.ideal:.2%} |")
    t0 = time.perf_counter()
    maglev.populate([(f"198.18.60.{i}:80", 1) for i in range(10)], 65537)
    print(f"\nMaglev table, M=65537, 10 backends: built in {time.perf_counter() - t0:.3f} s (Python)")


def traffic(seconds: int) -> None:
    """Real traffic through the lab: HTTP connection rate through a DNAT VIP, and iperf3 bulk
    TCP through a DNAT VIP, an IPIP VIP and, for reference, routed past l4lb to a backend."""
    control, lab_mod = _load("control.py"), _load("tests/lab.py")
    http_vip, iperf_vip, tun_vip = "198.18.200.1", "198.18.200.2", "198.18.200.3"
    with lab_mod.Lab(2, encap_vips=(tun_vip,)) as lab:
        lb = control.LoadBalancer(lab.instance.tables, ring_size=1021)
        for name, mode, vip, port in (("http", "dnat", http_vip, 80), ("iperf", "dnat", iperf_vip, 5201),
                                      ("tun", "encap", tun_vip, 5201)):
            lb.add_service(name, mode, 4)
            lb.add_vip(vip, "tcp", port, name)
            # iperf3's control and data connections must meet the same server: one backend.
            for be in lab.backends if name == "http" else lab.backends[:1]:
                lb.add_backend(name, be.addr4, {"http": lab_mod.HTTP_PORT, "iperf": 5201}.get(name, 0))
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            lab.get(http_vip, 80, 20000 + n)
            n += 1
        print(f"\nHTTP GETs through DNAT, one new TCP connection each: {n / (time.perf_counter() - t0):.0f}/s")
        print("\n| iperf3 TCP, 1 stream | Gbit/s |")
        print("| --- | ---: |")
        for name, host in (("routed past l4lb to a backend (not a VIP)", lab.backends[0].addr4),
                           ("DNAT VIP", iperf_vip), ("IPIP VIP (direct server return)", tun_vip)):
            print(f"| {name} | {_iperf(lab, host, seconds):.2f} |")


def _iperf(lab: Any, host: str, seconds: int) -> float:
    servers = [subprocess.Popen(["ip", "netns", "exec", b.ns, "iperf3", "-s", "-1", "-p", "5201"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for b in lab.backends]
    try:
        time.sleep(0.5)
        out = subprocess.run(["ip", "netns", "exec", lab.client_ns, "iperf3", "-c", host, "-p", "5201", "-t",
                              str(seconds), "-J"], capture_output=True, text=True, timeout=seconds + 30)
        return json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9
    finally:
        for s in servers:
            s.terminate()
            s.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, shorter traffic runs")
    args = parser.parse_args()
    fast_path(2_000 if args.quick else 100_000)
    maglev_figures(20_000 if args.quick else 100_000)
    traffic(2 if args.quick else 10)


if __name__ == "__main__":
    main()
