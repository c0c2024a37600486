"""Network namespaces, veth pairs, addresses and routes with guaranteed cleanup.

Everything this module creates is named with a short per-run prefix
(``"vk" + 4 hex chars``) so parallel runs never collide and leftovers of a
killed run can be found again by :func:`cleanup_stale`.

Naming scheme (the default prefix is 6 chars; Linux allows 15 per ifname):

* netns:              ``f"{prefix}-{name}"``          e.g. ``vk3f2a-client``
* explicit interface: ``f"{prefix}-{name}"``          e.g. ``vk3f2a-eth0``
  (so ``name`` may be at most 8 chars with the default prefix)
* automatic veth:     ``f"{prefix}v{n}a"`` / ``"b"``  e.g. ``vk3f2av0a``

Explicit and automatic names cannot collide (``-`` versus ``v`` after the
prefix), and a prefix may not contain ``-``, so ``<stem>.owner`` files under
:data:`OWNER_DIR` are unambiguous: a stem with ``-`` is a netns, one without
is a whole run (covering its root-namespace interfaces).

All addresses come from 198.18.0.0/15 (RFC 2544 benchmarking space) and
all traffic helpers refuse destinations outside it.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import ipaddress
import logging
import os
import re
import secrets
import signal
import socket
import threading
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pyroute2 import IPRoute, NetlinkError
from pyroute2 import netns as pr_netns

log = logging.getLogger(__name__)

ADDR_RANGE = ipaddress.IPv4Network("198.18.0.0/15")
NETNS_DIR = "/run/netns"
OWNER_DIR = "/run/vnfkit/netns"
IFNAME_MAX = 15  # IFNAMSIZ - 1 for the trailing NUL
CLONE_NEWNET = 0x40000000
_BLOCK = 4  # automatic pairs get a /30: .1 and .2
_N_BLOCKS = ADDR_RANGE.num_addresses // _BLOCK
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_]{1,10}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_DEFAULT_STALE_RE = re.compile(r"^vk[0-9a-f]{4}")

# Python 3.11 has no os.setns; glibc's wrapper is in the already-loaded libc.
_libc = ctypes.CDLL(None, use_errno=True)


def new_prefix() -> str:
    """Return a unique per-run name prefix (``vk`` + 4 hex chars).

    ``VNFKIT_NET_PREFIX`` overrides it, e.g. to make a debugging run predictable.
    """
    prefix = os.environ.get("VNFKIT_NET_PREFIX") or "vk" + secrets.token_hex(2)
    _check_prefix(prefix)
    return prefix


def _check_prefix(prefix: str) -> None:
    if not _PREFIX_RE.match(prefix):
        raise ValueError(f"bad name prefix {prefix!r}: need 1-10 of [A-Za-z0-9_]")


def _check_ifname(ifname: str) -> str:
    if len(ifname) > IFNAME_MAX:
        raise ValueError(f"interface name {ifname!r} is {len(ifname)} chars; "
                         f"Linux allows at most {IFNAME_MAX}")
    return ifname


def _check_name(name: str, what: str) -> str:
    if not _NAME_RE.match(name) or name in (".", ".."):
        raise ValueError(f"bad {what} name {name!r}")
    return name


def _parse_addr(addr: str) -> ipaddress.IPv4Interface:
    """Parse "198.18.x.y/nn", refusing anything whose subnet leaves the range."""
    if "/" not in addr:
        raise ValueError(f"address {addr!r} needs a prefix length, e.g. 198.18.0.1/30")
    iface = ipaddress.ip_interface(addr)
    if not isinstance(iface, ipaddress.IPv4Interface) or not iface.network.subnet_of(ADDR_RANGE):
        raise ValueError(f"address {addr!r} is outside {ADDR_RANGE}")
    return iface


def _check_in_range(ip: str) -> str:
    if ipaddress.ip_address(ip) not in ADDR_RANGE:
        raise ValueError(f"address {ip!r} is outside {ADDR_RANGE}")
    return ip


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns into netns {what!r} failed: {os.strerror(err)}")


def _open_ns(ns: str) -> int:
    _check_name(ns, "netns")
    try:
        return os.open(f"{NETNS_DIR}/{ns}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise OSError(e.errno, f"cannot open netns {ns!r}: {e.strerror}") from None


@contextlib.contextmanager
def _enter_fd(fd: int, what: str) -> Iterator[None]:
    # thread-self, not self: setns only moves this thread, and /proc/self
    # would name the main thread's namespace.
    saved = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(fd, what)
        try:
            yield
        finally:
            _setns(saved, "<original>")
    finally:
        os.close(saved)


@contextlib.contextmanager
def enter(ns: str | None) -> Iterator[None]:
    """Move the calling thread into netns ``ns`` (a name under /run/netns).

    Only the network namespace changes (the mount namespace, hence /sys and
    bpffs, stay), so bpf() calls and sockets made inside see ``ns``; sockets
    stay bound to it after leaving.  The original netns is restored on exit,
    also on exceptions.  ``None`` means stay where the thread is.
    """
    if ns is None:
        yield
        return
    fd = _open_ns(ns)
    try:
        with _enter_fd(fd, ns):
            yield
    finally:
        os.close(fd)


def join(ns: str) -> None:
    """Move the calling thread into netns ``ns`` for good; threads it starts afterwards are
    born there. A daemon serving one emulated host calls it first thing, before any library
    starts threads of its own (the mount namespace, hence bpffs, stays the host's)."""
    fd = _open_ns(ns)
    try:
        _setns(fd, ns)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _ipr(ns: str | None) -> Iterator[IPRoute]:
    # The netlink socket is created inside the netns (instead of
    # IPRoute(netns=...), which forks a helper) so this is thread-friendly.
    with enter(ns):
        ipr = IPRoute()
        try:
            yield ipr
        finally:
            ipr.close()


def ifindex(ns: str | None, ifname: str) -> int:
    """Return the ifindex of ``ifname`` inside netns ``ns`` (None: current)."""
    with enter(ns):
        try:
            return socket.if_nametoindex(ifname)
        except OSError:
            raise LookupError(f"no interface {ifname!r} in netns {ns or '<current>'!r}") from None


def ifname(ns: str | None, index: int) -> str:
    """Return the name of interface ``index`` inside netns ``ns`` (None: current)."""
    with enter(ns):
        try:
            return socket.if_indextoname(index)
        except OSError:
            raise LookupError(f"no interface with ifindex {index} in netns {ns or '<current>'!r}") from None


def veth_peer_ifindex(ns: str | None, ifname: str) -> int | None:
    """The ifindex of the other end of veth ``ifname`` in ``ns`` (in the netns that end is
    in), or None when ``ifname`` is not a veth."""
    idx = ifindex(ns, ifname)
    with _ipr(ns) as ipr:
        link = ipr.get_links(idx)[0]
    info = link.get_attr("IFLA_LINKINFO")
    if info is None or info.get_attr("IFLA_INFO_KIND") != "veth":
        return None
    return link.get_attr("IFLA_LINK")


def read_sysctl(ns: str | None, key: str) -> str:
    """Read a ``net.*`` sysctl as seen from netns ``ns``."""
    with enter(ns), open(_sysctl_path(key)) as f:
        return f.read().strip()


def _sysctl_path(key: str) -> str:
    # sysctl(8) convention: with a "/" the key is a path and dots are literal
    # (interface names may contain dots).
    rel = key if "/" in key else key.replace(".", "/")
    if not rel.startswith("net/") or ".." in rel.split("/"):
        raise ValueError(f"sysctl {key!r}: only per-netns net.* keys are allowed")
    return "/proc/sys/" + rel


def _write_sysctl(key: str, value: str) -> None:
    # /proc/sys/net resolves against the *calling thread's* netns, so callers
    # must already be inside the target namespace.
    with open(_sysctl_path(key), "w") as f:
        f.write(value)


def send_frames(ns: str | None, ifname: str, frames: Iterable[bytes]) -> int:
    """Send raw Ethernet frames out of ``ifname`` in ``ns``; return the count."""
    count = 0
    with enter(ns), socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as s:
        ifindex(None, ifname)  # clear LookupError instead of a bare OSError
        s.bind((ifname, 0))
        for frame in frames:
            s.send(frame)
            count += 1
    return count


def udp_send(ns: str | None, dst_ip: str, dst_port: int, count: int,
             payload: bytes = b"x" * 18, src_port: int | None = None) -> int:
    """Send ``count`` UDP datagrams to ``dst_ip`` from a socket created inside ``ns``.

    Over veth the first hop's ARP completes within the first sendto (the
    peer answers in softirq context), so none of the datagrams is dropped
    waiting for a neighbour.
    """
    _check_in_range(dst_ip)
    with enter(ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        if src_port is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("0.0.0.0", src_port))
        for _ in range(count):
            sock.sendto(payload, (dst_ip, dst_port))
    return count


@dataclass
class VethPair:
    """Both ends of a veth; ifindexes are as seen inside each end's netns."""

    ns_a: str | None
    ifname_a: str
    ifindex_a: int
    addr_a: str | None
    ns_b: str | None
    ifname_b: str
    ifindex_b: int
    addr_b: str | None
    prefixlen: int | None


class Topology:
    """Namespaces and veths that are removed again, whatever happens.

    Use as ``with Topology() as topo:``.  ``None`` as a netns means the
    namespace the Topology was created in (the root namespace in tests).
    """

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = new_prefix() if prefix is None else prefix
        _check_prefix(self.prefix)
        self._pid = os.getpid()  # forked children must never clean our objects
        self._home_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self._namespaces: list[str] = []
        self._root_links: list[str] = []
        self._ifnames: set[str] = set()
        self._nets: list[ipaddress.IPv4Network] = []
        # Start each run at a different /30 so root-namespace ends of
        # parallel runs are unlikely to share a subnet.
        self._next_block = zlib.crc32(self.prefix.encode()) % _N_BLOCKS
        self._seq = 0
        self._root_sysctls: dict[str, str] = {}
        self._claimed = False
        self._closed = False

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _in(self, ns: str | None) -> Iterator[None]:
        if ns is not None:
            with enter(ns):
                yield
        else:
            with _enter_fd(self._home_fd, "<home>"):
                yield

    @contextlib.contextmanager
    def _ipr(self, ns: str | None) -> Iterator[IPRoute]:
        with self._in(ns):
            ipr = IPRoute()
        with contextlib.closing(ipr):
            yield ipr

    def _claim(self) -> None:
        if self._closed:
            raise RuntimeError(f"topology {self.prefix} is closed")
        if not self._claimed:
            # The run's owner file exists before any object does, so
            # cleanup_stale() in another process never sees an unowned one.
            _write_owner(self.prefix)
            _register(self)
            self._claimed = True

    def _check_ns(self, ns: str | None) -> None:
        if ns is not None and ns not in self._namespaces:
            raise ValueError(f"netns {ns!r} was not created by this topology")

    def add_ns(self, name: str) -> str:
        """Create netns ``{prefix}-{name}`` with ``lo`` up; return its full name."""
        full = f"{self.prefix}-{_check_name(name, 'netns')}"
        if full in self._namespaces or os.path.lexists(f"{NETNS_DIR}/{full}"):
            raise ValueError(f"netns {full!r} already exists")
        self._claim()
        _write_owner(full)
        self._namespaces.append(full)  # before create: a half-made netns is ours too
        pr_netns.create(full)
        with self._ipr(full) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        return full

    def _allocate(self) -> tuple[ipaddress.IPv4Interface, ipaddress.IPv4Interface]:
        for _ in range(_N_BLOCKS):
            block = self._next_block
            self._next_block = (block + 1) % _N_BLOCKS
            net = ipaddress.IPv4Network((int(ADDR_RANGE.network_address) + block * _BLOCK, 30))
            if not any(net.overlaps(used) for used in self._nets):
                self._nets.append(net)
                return (ipaddress.IPv4Interface((net.network_address + 1, 30)),
                        ipaddress.IPv4Interface((net.network_address + 2, 30)))
        raise RuntimeError(f"{ADDR_RANGE} exhausted")

    def spare_addresses(self) -> tuple[str, str]:
        """Two addresses of a /30 no interface of this topology uses (and none will): for
        addresses that live only in tables, such as a load balancer's VIP or a NAT pool."""
        a, b = self._allocate()
        return str(a.ip), str(b.ip)

    def reserve_net(self, prefixlen: int) -> ipaddress.IPv4Network:
        """A subnet of 198.18.0.0/15 no other object of this topology uses: for addresses
        given by hand (a shared segment behind a bridge)."""
        if not ADDR_RANGE.prefixlen <= prefixlen <= 30:
            raise ValueError(f"prefix length {prefixlen}: between {ADDR_RANGE.prefixlen} and 30")
        size = 1 << (32 - prefixlen)
        count = ADDR_RANGE.num_addresses // size
        start = self._next_block * _BLOCK // size
        for i in range(count):
            net = ipaddress.IPv4Network((int(ADDR_RANGE.network_address) + (start + i) % count * size, prefixlen))
            if not any(net.overlaps(used) for used in self._nets):
                self._nets.append(net)
                return net
        raise RuntimeError(f"{ADDR_RANGE} has no free /{prefixlen}")

    def add_bridge(self, ns: str, name: str) -> str:
        """A Linux bridge ``{prefix}-{name}`` in child netns ``ns`` (it goes with the netns), up."""
        self._check_ns(ns)
        if ns is None:
            raise ValueError("bridges live in a child netns, never the root namespace")
        ifname = self._ifname(name, "")
        self._claim()
        with self._ipr(ns) as ipr:
            ipr.link("add", ifname=ifname, kind="bridge")
            ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], state="up")
        self._ifnames.add(ifname)
        return ifname

    def set_master(self, ns: str, ifname: str, bridge: str) -> None:
        """Make ``ifname`` a port of ``bridge`` (both in ``ns``)."""
        self._check_ns(ns)
        with self._ipr(ns) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0],
                     master=ipr.link_lookup(ifname=bridge)[0])

    def add_veth(self, ns_a: str | None, ns_b: str | None,
                 name_a: str | None = None, name_b: str | None = None,
                 addr_a: str | None = None, addr_b: str | None = None,
                 mtu: int | None = None, ipv6: bool = False) -> VethPair:
        """Create a veth between ``ns_a`` and ``ns_b`` (None: root), both ends up.

        Without addresses a /30 from 198.18.0.0/15 is allocated.  IPv6 is
        disabled on both ends unless ``ipv6`` so that no ND/MLD chatter
        reaches the programs under test.
        """
        self._check_ns(ns_a)
        self._check_ns(ns_b)
        while {self._ifname(None, "a"), self._ifname(None, "b")} & self._ifnames:
            self._seq += 1
        if_a, if_b = self._ifname(name_a, "a"), self._ifname(name_b, "b")
        for name in sorted({if_a, if_b} & self._ifnames) or ([if_a] if if_a == if_b else []):
            raise ValueError(f"interface name {name!r} already used in this topology")
        if addr_a is None and addr_b is None:
            ia, ib = self._allocate()
        else:
            ia, ib = (_parse_addr(a) if a else None for a in (addr_a, addr_b))
            if ia and ib and ia.network.prefixlen != ib.network.prefixlen:
                raise ValueError(f"prefix lengths of {addr_a} and {addr_b} differ")
            self._nets.extend(i.network for i in (ia, ib) if i)
        self._claim()
        self._seq += 1
        self._ifnames |= {if_a, if_b}
        # Create in ns_a with the peer placed straight into ns_b, so a
        # namespaced end never appears in the root namespace.
        peer_fd = _open_ns(ns_b) if ns_b is not None else os.dup(self._home_fd)
        try:
            with self._ipr(ns_a) as ipr:
                ipr.link("add", ifname=if_a, kind="veth",
                         peer={"ifname": if_b, "net_ns_fd": peer_fd})
        finally:
            os.close(peer_fd)
        new_root = [n for ns, n in ((ns_a, if_a), (ns_b, if_b)) if ns is None]
        self._root_links.extend(new_root)
        try:
            idx_a = self._configure(ns_a, if_a, ia, mtu, ipv6)
            idx_b = self._configure(ns_b, if_b, ib, mtu, ipv6)
        except BaseException:
            self._delete_link(ns_a, if_a)  # takes the peer with it
            for n in new_root:
                self._root_links.remove(n)
            raise
        known = ia or ib
        return VethPair(ns_a, if_a, idx_a, str(ia.ip) if ia else None,
                        ns_b, if_b, idx_b, str(ib.ip) if ib else None,
                        known.network.prefixlen if known else None)

    def _ifname(self, name: str | None, end: str) -> str:
        if name is None:
            return _check_ifname(f"{self.prefix}v{self._seq}{end}")
        return _check_ifname(f"{self.prefix}-{_check_name(name, 'interface')}")

    def _configure(self, ns: str | None, ifname: str, iface: ipaddress.IPv4Interface | None,
                   mtu: int | None, ipv6: bool) -> int:
        with self._in(ns):
            if not ipv6 and os.path.exists("/proc/sys/net/ipv6"):
                _write_sysctl(f"net/ipv6/conf/{ifname}/disable_ipv6", "1")
            idx = ifindex(None, ifname)
        with self._ipr(ns) as ipr:
            if mtu is not None:
                ipr.link("set", index=idx, mtu=mtu)
            if iface is not None:
                ipr.addr("add", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
            ipr.link("set", index=idx, state="up")
        return idx

    def add_route(self, ns: str | None, dst: str, gateway: str | None = None,
                  ifname: str | None = None) -> None:
        """Add a route to ``dst`` (in 198.18.0.0/15, or "default" in a child netns)."""
        self._check_ns(ns)
        if dst in ("default", "0.0.0.0/0"):
            if ns is None:
                raise ValueError("refusing to change the root namespace's default route")
            dst = "0.0.0.0/0"
        elif not ipaddress.ip_network(dst, strict=False).subnet_of(ADDR_RANGE):
            raise ValueError(f"route destination {dst!r} is outside {ADDR_RANGE}")
        if gateway is None and ifname is None:
            raise ValueError("add_route needs a gateway or an ifname")
        spec: dict[str, object] = {"dst": str(ipaddress.ip_network(dst, strict=False))}
        if gateway is not None:
            spec["gateway"] = _check_in_range(gateway)
        self._claim()
        with self._in(ns), IPRoute() as ipr:
            if ifname is not None:
                spec["oif"] = ifindex(None, ifname)
            ipr.route("add", **spec)

    def set_sysctl(self, ns: str | None, key: str, value: str) -> None:
        """Set a per-netns ``net.*`` sysctl in ``ns``; root values are restored on close."""
        self._check_ns(ns)
        self._claim()
        with self._in(ns):
            if ns is None and key not in self._root_sysctls:
                with open(_sysctl_path(key)) as f:
                    self._root_sysctls[key] = f.read().strip()
            _write_sysctl(key, value)

    def _delete_link(self, ns: str | None, ifname: str) -> None:
        try:
            with self._ipr(ns) as ipr:
                for idx in ipr.link_lookup(ifname=ifname):
                    ipr.link("del", index=idx)
        except (OSError, NetlinkError) as e:
            log.debug("deleting %s in %s: %s", ifname, ns, e)

    def close(self) -> None:
        """Remove everything this topology created; idempotent, never raises."""
        if os.getpid() != self._pid or self._home_fd < 0:
            return
        # Iterate over snapshots and drop entries only when done, so a
        # SIGTERM arriving mid-close (which re-enters close) finishes the job.
        for name in list(self._root_links):
            self._delete_link(None, name)
            _discard(self._root_links, name)
        for ns in list(self._namespaces):
            _remove_ns(ns)
            _discard(self._namespaces, ns)
        for key, value in list(self._root_sysctls.items()):
            try:
                with self._in(None):
                    _write_sysctl(key, value)
            except OSError as e:
                log.debug("restoring %s: %s", key, e)
            self._root_sysctls.pop(key, None)
        if self._claimed:
            _remove_owner(self.prefix)
        self._closed = True
        _unregister(self)
        with contextlib.suppress(OSError):
            os.close(self._home_fd)
        self._home_fd = -1


def _discard(items: list[str], item: str) -> None:
    with contextlib.suppress(ValueError):
        items.remove(item)


def _write_owner(stem: str) -> None:
    os.makedirs(OWNER_DIR, exist_ok=True)
    with open(f"{OWNER_DIR}/{stem}.owner", "w") as f:
        f.write(f"{os.getpid()}\n")


def _remove_owner(stem: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(f"{OWNER_DIR}/{stem}.owner")


def _remove_ns(ns: str) -> None:
    # Delete links first: a socket left open inside the netns keeps it (and
    # the root-side peers of its veths) alive after the name is unmounted.
    try:
        with _ipr(ns) as ipr:
            for link in ipr.get_links():
                if link.get("ifname") != "lo":
                    with contextlib.suppress(NetlinkError):
                        ipr.link("del", index=link["index"])
    except (OSError, NetlinkError) as e:
        log.debug("flushing links of %s: %s", ns, e)
    try:
        pr_netns.remove(ns)
    except OSError as e:
        log.debug("removing netns %s: %s", ns, e)
    _remove_owner(ns)


# Live topologies of this process, for the atexit hook and SIGTERM handler.
_LIVE: dict[int, Topology] = {}
_atexit_registered = False


def _register(topo: Topology) -> None:
    global _atexit_registered
    _LIVE[id(topo)] = topo
    if not _atexit_registered:
        atexit.register(_cleanup_all)
        _atexit_registered = True
    # Only take over SIGTERM if nobody else handles it; signal.signal is
    # only allowed in the main thread.
    if (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL):
        signal.signal(signal.SIGTERM, _on_sigterm)


def _unregister(topo: Topology) -> None:
    _LIVE.pop(id(topo), None)
    if (not _LIVE and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is _on_sigterm):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _cleanup_all() -> None:
    for topo in list(_LIVE.values()):
        try:
            topo.close()
        except Exception:  # one broken topology must not leak the others
            log.exception("cleaning up topology %s", topo.prefix)


def _on_sigterm(signum: int, frame: object) -> None:
    _cleanup_all()
    # Die of SIGTERM as if we had never caught it, keeping the exit status.
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # zombies are dead
    except (OSError, IndexError):
        return False


def cleanup_stale(prefix: str = "vk") -> list[str]:
    """Remove netns and root-netns interfaces left by dead runs; return their names.

    An object belongs to a live run if an owner file named after it, or
    after its run prefix, holds the pid of a live process.  With the default
    prefix only names matching ``^vk[0-9a-f]{4}`` are considered.
    """
    pattern = _DEFAULT_STALE_RE if prefix == "vk" else re.compile("^" + re.escape(prefix))
    # List objects *before* reading owner files: a run writes its owner file
    # before creating anything, so every object listed here is covered.
    namespaces = sorted(n for n in pr_netns.listnetns() if pattern.match(n))
    with IPRoute() as ipr:
        links = [(link["index"], link.get_attr("IFLA_IFNAME")) for link in ipr.get_links()]
    owners: dict[str, bool] = {}
    with contextlib.suppress(FileNotFoundError):
        for fname in os.listdir(OWNER_DIR):
            if fname.endswith(".owner"):
                try:
                    with open(f"{OWNER_DIR}/{fname}") as f:
                        pid = int(f.read().split()[0])
                except (OSError, ValueError, IndexError):
                    pid = 0
                owners[fname[: -len(".owner")]] = pid > 0 and _pid_alive(pid)

    def live(name: str) -> bool:
        return any(alive and (name == stem or ("-" not in stem and name.startswith(stem)))
                   for stem, alive in owners.items())

    removed = []
    for ns in namespaces:
        if not live(ns):
            _remove_ns(ns)
            removed.append(ns)
    with IPRoute() as ipr:
        for index, name in links:
            if name and pattern.match(name) and not live(name):
                try:
                    ipr.link("del", index=index)
                except NetlinkError as e:
                    # ENODEV: it already went with its peer's netns above.
                    if e.code != errno.ENODEV:
                        log.debug("deleting %s: %s", name, e)
                        continue
                removed.append(name)
    for stem, alive in owners.items():
        if pattern.match(stem) and not alive:
            _remove_owner(stem)
    return removed
