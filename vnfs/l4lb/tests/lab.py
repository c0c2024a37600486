"""A load-balancing lab in network namespaces, for l4lb's end-to-end test and benchmark.

    client ──veth── lb ──veth── b0   each backend: an HTTP server on [::]:8080 (IPv4 and IPv6)
                       ──veth── b1   naming itself, the encap VIPs on its loopback and
                       ...           backend_decap.c at XDP to strip the outer header

The lb namespace routes (IPv4 and IPv6 forwarding) and runs l4lb at XDP on every interface,
one KernelInstance, so the DNAT reverse entries made on the client side serve the replies
arriving from the backends. Addresses: IPv4 /30s from the Topology, IPv6 2001:db8:1::/64 on
the client link and 2001:db8:10:<i>::/64 on backend i's link.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from datapath import netns
from datapath.attach import attach_xdp
from datapath.netns import Topology
from datapath.objects import load
from vnfkit.instance import KernelInstance

VNF = Path(__file__).resolve().parent.parent
HTTP_PORT = 8080
IFA_F_NODAD = 0x02  # no duplicate address detection: IPv6 addresses usable at once
CLIENT6, LB6 = "2001:db8:1::2", "2001:db8:1::1"
BACKEND_MTU = 1600


class _Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6  # [::] with IPV6_V6ONLY off: IPv4 too
    daemon_threads = True


def _handler(name: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: sessions stay on one connection

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            body = json.dumps({"backend": name, "client": _unmap(self.client_address[0]),
                               "local": _unmap(self.connection.getsockname()[0]), "path": self.path}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


def _unmap(addr: str) -> str:
    """'::ffff:198.18.0.1' (an IPv4 client of a dual-stack socket) -> '198.18.0.1'."""
    ip = ipaddress.ip_address(addr.split("%")[0])
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip)


def _add_addr(ns: str, ifname: str, addr: str, prefixlen: int) -> None:
    with netns.enter(ns), IPRoute() as ipr:
        ipr.addr("add", index=ipr.link_lookup(ifname=ifname)[0], address=addr, prefixlen=prefixlen, flags=IFA_F_NODAD)


def _add_route6(ns: str, dst: str, gateway: str) -> None:
    with netns.enter(ns), IPRoute() as ipr:
        ipr.route("add", dst=dst, gateway=gateway)


@dataclass
class BackendHost:
    name: str
    ns: str
    addr4: str
    addr6: str
    lb_ifname: str  # the lb's end of its link


class Session:
    """A keep-alive HTTP connection from a fixed client port; it never reconnects silently."""

    def __init__(self, lab: Lab, host: str, port: int, sport: int) -> None:
        src = CLIENT6 if ":" in host else lab.client4
        self.conn = http.client.HTTPConnection(host, port, timeout=5, source_address=(src, sport))
        self.conn.auto_open = 0  # a closed connection raises instead of opening a new one
        with netns.enter(lab.client_ns):
            self.conn.connect()
        self.local = self.conn.sock.getsockname()[:2]

    def get(self, path: str = "/") -> dict[str, str]:
        self.conn.request("GET", path)
        reply = json.loads(self.conn.getresponse().read())
        assert self.conn.sock is not None and self.conn.sock.getsockname()[:2] == self.local
        return reply

    def close(self) -> None:
        self.conn.close()


class Lab:
    """``with Lab(5, encap_vips=[...]) as lab:`` builds the namespaces, servers and the
    attached l4lb (``lab.instance``, at ``hook``: "xdp" or "tc-ingress"); everything is removed
    on exit, also on errors."""

    def __init__(self, n_backends: int, encap_vips: tuple[str, ...] = (), config: dict[str, Any] | None = None,
                 hook: str = "xdp") -> None:
        self.n_backends, self.encap_vips, self.config, self.hook = n_backends, encap_vips, config or {}, hook
        self.backends: list[BackendHost] = []
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Lab:
        try:
            self._build()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _build(self) -> None:
        topo = self.topo = self._stack.enter_context(Topology())
        self.client_ns, self.lb_ns = topo.add_ns("client"), topo.add_ns("lb")
        up = topo.add_veth(self.client_ns, self.lb_ns, ipv6=True)
        self.client4, self.lb_up = up.addr_a, up.ifname_b
        topo.add_route(self.client_ns, "default", gateway=up.addr_b)
        _add_addr(self.client_ns, up.ifname_a, CLIENT6, 64)
        _add_addr(self.lb_ns, up.ifname_b, LB6, 64)
        _add_route6(self.client_ns, "::/0", LB6)
        topo.set_sysctl(self.lb_ns, "net.ipv4.ip_forward", "1")
        topo.set_sysctl(self.lb_ns, "net.ipv6.conf.all.forwarding", "1")
        decap = load(VNF / "backend_decap.c")
        self._stack.callback(decap.close)
        for i in range(self.n_backends):
            self.backends.append(self._backend(i, decap))
        self.instance = self._stack.enter_context(KernelInstance(VNF, self.config))
        for ifname in (up.ifname_b, *(b.lb_ifname for b in self.backends)):
            self.instance.attach(self.lb_ns, ifname, hook=self.hook)

    def _backend(self, i: int, decap: Any) -> BackendHost:
        ns = self.topo.add_ns(f"b{i}")
        # Encapsulation adds 20 (IPIP) or 40 (IP6IP6) bytes: the links to the backends carry
        # full-size client packets plus the outer header, as a real deployment must.
        link = self.topo.add_veth(self.lb_ns, ns, ipv6=True, mtu=BACKEND_MTU)
        self.topo.add_route(ns, "default", gateway=link.addr_a)
        _add_addr(self.lb_ns, link.ifname_a, f"2001:db8:10:{i}::1", 64)
        _add_addr(ns, link.ifname_b, f"2001:db8:10:{i}::2", 64)
        _add_route6(ns, "::/0", f"2001:db8:10:{i}::1")
        for vip in self.encap_vips:  # direct server return: the backend owns the VIP
            _add_addr(ns, "lo", vip, 32 if "." in vip else 128)
        att = attach_xdp(decap.program("vnf_xdp"), link.ifname_b, ns=ns)
        self._stack.callback(att.detach)
        with netns.enter(ns):
            server = _Server(("::", HTTP_PORT), _handler(f"b{i}"))
        thread = threading.Thread(target=server.serve_forever, name=f"l4lb-b{i}", daemon=True)
        thread.start()
        self._stack.callback(server.server_close)
        self._stack.callback(server.shutdown)
        return BackendHost(f"b{i}", ns, link.addr_b, str(ipaddress.ip_address(f"2001:db8:10:{i}::2")), link.ifname_a)

    def get(self, host: str, port: int, sport: int) -> dict[str, str]:
        """One GET on a new connection from client port ``sport``."""
        session = Session(self, host, port, sport)
        try:
            return session.get()
        finally:
            session.close()

    def session(self, host: str, port: int, sport: int) -> Session:
        return Session(self, host, port, sport)
