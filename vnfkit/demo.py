"""`vnfkit demo --engine`: the eBPF engine end to end, on real packets.

Probe the kernel, compile and verify a counting XDP program, attach it natively to the
server end of a veth between two namespaces, pin it, send real UDP, TCP and ICMP traffic
from the client, show the counters live, check them against what was sent, time the
program with test-run, and clean everything up.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from dataclasses import dataclass

from rich.console import Console
from rich.live import Live
from rich.table import Table
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from datapath import netns
from datapath.attach import attach_xdp
from datapath.builtin import COUNT_SLOTS, builtin
from datapath.compiler import compile_bpf
from datapath.objects import load
from datapath.pins import PinGroup, ensure_bpffs
from datapath.probe import probe
from datapath.stats import runtime_stats

UDP_PORT, TCP_PORT = 9000, 8080


@dataclass
class Traffic:
    udp_sent: int = 0
    udp_received: int = 0
    tcp_bytes: int = 0
    pings: int = 0
    done: bool = False


def _udp_server(sock: socket.socket, traffic: Traffic) -> None:
    sock.settimeout(0.2)
    while not traffic.done:
        try:
            sock.recv(2048)
            traffic.udp_received += 1
        except TimeoutError:
            continue


def _tcp_server(sock: socket.socket, traffic: Traffic) -> None:
    sock.settimeout(5)
    conn, _ = sock.accept()
    with conn:
        while chunk := conn.recv(65536):
            traffic.tcp_bytes += len(chunk)


def _client(ns: str, server_ip: str, seconds: float, traffic: Traffic) -> None:
    with netns.enter(ns):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tcp = socket.create_connection((server_ip, TCP_PORT), timeout=5)
    deadline = time.monotonic() + seconds
    with udp, tcp:
        while time.monotonic() < deadline:
            for _ in range(50):
                udp.sendto(b"vnfkit-demo".ljust(64, b"."), (server_ip, UDP_PORT))
                traffic.udp_sent += 1
            tcp.sendall(b"x" * 16384)
            time.sleep(0.01)
    # ICMP from the real ping tool (`ip netns exec` is fine here: ping needs no bpffs).
    res = subprocess.run(["ip", "netns", "exec", ns, "ping", "-c", "3", "-i", "0.2", "-q", server_ip],
                         capture_output=True, text=True)
    traffic.pings = 3 if res.returncode == 0 else 0


def _table(counters, prev: dict[str, int], dt: float) -> tuple[Table, dict[str, int]]:  # noqa: ANN001
    table = Table(title="xdp_count on the server's veth (per-CPU counters, summed)")
    for col in ("slot", "packets", "bytes", "packets/s"):
        table.add_column(col, justify="right" if col != "slot" else "left")
    values = counters.as_array()
    now = {}
    for i, slot in enumerate(COUNT_SLOTS):
        pk = int(values[i]["packets"])
        now[slot] = pk
        rate = (pk - prev.get(slot, 0)) / dt if dt > 0 else 0
        table.add_row(slot, f"{pk:,}", f"{int(values[i]['bytes']):,}", f"{rate:,.0f}")
    return table, now


def run(seconds: float = 4.0, console: Console | None = None) -> int:
    """Run the demo; returns a process exit code (0 when every count matches)."""
    console = console or Console()
    ensure_bpffs()
    caps = probe()
    console.print(f"[bold]kernel {caps.kernel}[/]: " + ", ".join(
        f"{k}={'yes' if v else 'no'}" for k, v in caps.as_dict().items() if isinstance(v, bool)))

    with netns.Topology() as topo:
        client, server = topo.add_ns("client"), topo.add_ns("server")
        link = topo.add_veth(client, server)
        console.print(f"namespaces {client} ({link.addr_a}) <-> {server} ({link.addr_b}) over "
                      f"{link.ifname_a}/{link.ifname_b}")

        t0 = time.perf_counter()
        obj_path = compile_bpf(builtin("xdp_count"))
        t1 = time.perf_counter()
        obj = load(obj_path)
        t2 = time.perf_counter()
        console.print(f"compiled {obj_path.name} in {1000 * (t1 - t0):.0f} ms (cached by content), "
                      f"verified and loaded in {1000 * (t2 - t1):.0f} ms")

        group = PinGroup(f"demo-{topo.prefix}")
        try:
            prog, counters = obj.program(), obj.map("counters")
            att = attach_xdp(prog, link.ifname_b, ns=server)
            group.pin_object(obj)
            group.pin_link(att, f"xdp_count@{link.ifname_b}")
            console.print(f"attached '{prog.name}' (id {prog.id}) at XDP, {att.mode} mode; "
                          f"pinned under {group.path}")

            traffic = Traffic()
            with netns.enter(server):
                udp_srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                udp_srv.bind((link.addr_b, UDP_PORT))
                tcp_srv = socket.create_server((link.addr_b, TCP_PORT))
            servers = [threading.Thread(target=_udp_server, args=(udp_srv, traffic), daemon=True),
                       threading.Thread(target=_tcp_server, args=(tcp_srv, traffic), daemon=True)]
            for t in servers:
                t.start()
            with runtime_stats():
                client_thread = threading.Thread(target=_client, args=(client, link.addr_b, seconds, traffic))
                client_thread.start()
                prev, start = {}, time.monotonic()
                last = start
                table, prev = _table(counters, prev, 0)
                with Live(table, console=console, refresh_per_second=4) as live:
                    while client_thread.is_alive():
                        time.sleep(0.5)
                        now = time.monotonic()
                        table, prev = _table(counters, prev, now - last)
                        last = now
                        live.update(table)
                    time.sleep(0.2)  # let the last frames land
                    # The final frame shows the average rate over the whole run.
                    table, prev = _table(counters, {}, time.monotonic() - start)
                    live.update(table)
                if not console.is_terminal:
                    console.print()  # Live leaves the cursor after the table when not on a terminal
                client_thread.join()
                stats = prog.stats()
            traffic.done = True
            for t in servers:
                t.join(timeout=1)
            udp_srv.close()
            tcp_srv.close()

            udp_counted = prev["udp"]
            ok = udp_counted == traffic.udp_sent == traffic.udp_received and traffic.pings == 3
            console.print(
                f"client sent {traffic.udp_sent:,} UDP datagrams; XDP counted {udp_counted:,}; "
                f"the server socket received {traffic.udp_received:,}. "
                f"TCP carried {traffic.tcp_bytes:,} bytes; ping answered {traffic.pings}/3.")
            console.print(f"kernel bpf stats: {stats.run_cnt:,} runs, {stats.ns_per_run:.0f} ns per run "
                          "under live traffic")
            frame = Ether() / IP(src=link.addr_a, dst=link.addr_b) / UDP(dport=UDP_PORT) / bytes(18)
            res = prog.test_run(frame, repeat=200_000)
            console.print(f"test-run: {res.duration_ns} ns per packet over 200,000 runs, verdict {res.verdict}")
            console.print("[bold green]counts match[/]" if ok else "[bold red]counts do not match[/]")
            return 0 if ok else 1
        finally:
            group.remove()
            obj.close()
            console.print(f"detached, unpinned {group.path}, removed namespaces {client} and {server}")
