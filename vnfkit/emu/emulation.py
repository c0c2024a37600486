"""An emulated deployment on one machine, in the spirit of SONATA's son-emu but on namespaces.

    underlay netns:  bridge  <- one veth port per host
    host netns:      <underlay iface, address in one shared subnet>  + one veth per endpoint
    endpoint netns:  one veth to its host, default route through it

Hosts forward (``ip_forward``) and route every endpoint's subnet through the endpoint's host on
the underlay, so traffic that no chain takes still gets where it is going. The bridge ports
run ``datapath/progs/xdp_impair.c``: a veth delivers frames an XDP program redirects into it
(the forwarder's NSH) only when its peer has an XDP program, and that one also drops frames at
random for ``loss_pct``.

Impairments: loss is done by xdp_impair (on the bridge port, for what a host sends into the
underlay; in the endpoint's netns, for what reaches the endpoint), since this machine's kernel
has no sch_netem. Delay needs netem: it is applied with ``tc ... netem delay`` where the kernel
has it, and refused with a clear message where it does not.

Everything is named with a per-run prefix (``datapath.netns``) and recorded in a state file
(``STATE_DIR/<name>.json``) before it is made, so ``vnfkit emu down`` removes it all even after
``emu up`` crashed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from chaining.local import mac_of
from chaining.plan import HostWiring
from datapath import netns
from datapath.attach import Attachment, attach_xdp
from datapath.errors import VnfkitError
from datapath.objects import BpfObject, load
from vnfkit.emu.topology import Impairment, Topology

STATE_DIR = Path(os.environ.get("VNFKIT_EMU_DIR", "/run/vnfkit/emu"))
XDP_IMPAIR = Path(__file__).resolve().parents[2] / "datapath" / "progs" / "xdp_impair.c"


class EmuError(VnfkitError):
    """The emulation cannot be brought up or down as asked."""


@dataclass
class HostInfo:
    ns: str
    underlay: str
    underlay_mac: str
    underlay_ip: str
    ingress: list[str] = field(default_factory=list)   # interfaces facing client endpoints
    egress: list[str] = field(default_factory=list)    # interfaces facing server endpoints
    cpus: int = 4
    memory_mb: int = 4096

    def wiring(self) -> HostWiring:
        """The host as chaining.plan sees it (from the agent's own namespace: ns None)."""
        return HostWiring(None, tuple(self.ingress), tuple(self.egress), self.underlay, self.underlay_mac,
                          self.underlay_ip)


@dataclass
class EndpointInfo:
    ns: str
    host: str
    role: str
    ip: str
    gateway: str
    ifname: str


@dataclass
class State:
    """What an emulation made, as written to its state file."""

    name: str
    prefix: str
    pid: int
    hosts: dict[str, HostInfo] = field(default_factory=dict)
    endpoints: dict[str, EndpointInfo] = field(default_factory=dict)
    underlay_ns: str = ""
    agents: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # what else runs (an orchestrator, say)
    ready: bool = False

    @classmethod
    def read(cls, name: str) -> State:
        path = STATE_DIR / f"{name}.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise EmuError(f"no emulation {name!r} is up (no {path})") from None
        except (OSError, ValueError) as exc:
            raise EmuError(f"{path}: unreadable state: {exc}") from exc
        return cls(data["name"], data["prefix"], data["pid"],
                   {k: HostInfo(**v) for k, v in data.get("hosts", {}).items()},
                   {k: EndpointInfo(**v) for k, v in data.get("endpoints", {}).items()},
                   data.get("underlay_ns", ""), data.get("agents", {}), data.get("extra", {}),
                   data.get("ready", False))

    def write(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        path = STATE_DIR / f"{self.name}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, path)  # readers never see half a file


def _delay(ns: str, ifname: str, delay_ms: float) -> None:
    if not delay_ms:
        return
    res = subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", ifname, "root", "netem",
                          "delay", f"{delay_ms}ms"], capture_output=True, text=True)
    if res.returncode:
        raise EmuError(f"delay_ms {delay_ms} on {ifname}: tc netem failed ({res.stderr.strip()}); this kernel "
                       f"({os.uname().release}) seems to lack sch_netem: leave delay_ms out (loss_pct works)")


def _tx_off(ns: str, ifname: str) -> None:
    # An endpoint's own packets would leave with partial checksums (veth offload), which XDP
    # functions that rewrite headers cannot finish; a real NIC hands them over complete.
    subprocess.run(["ip", "netns", "exec", ns, "ethtool", "-K", ifname, "tx", "off"], capture_output=True,
                   check=True)


class Emulation:
    """``with Emulation(load_topology(path)) as emu: emu.up(); ...`` — everything goes on exit."""

    def __init__(self, topology: Topology, prefix: str | None = None) -> None:
        self.topology = topology
        self.net = netns.Topology(prefix)
        self.state = State(topology.name, self.net.prefix, os.getpid())
        self._xdp: BpfObject | None = None  # the loss-free impair program, shared
        self._objects: list[BpfObject] = []  # one per lossy link
        self._links: list[tuple[str, BpfObject]] = []
        self._attachments: list[Attachment] = []
        self._processes: dict[str, subprocess.Popen[bytes]] = {}

    def up(self) -> State:
        if (STATE_DIR / f"{self.topology.name}.json").exists():
            try:
                old = State.read(self.topology.name)
            except EmuError:
                old = None
            if old is not None and _alive(old.pid):
                raise EmuError(f"emulation {self.topology.name!r} is already up (pid {old.pid}); "
                               f"'vnfkit emu down {self.topology.name}' first")
            down(self.topology.name)  # a crashed run's leftovers
        self.state.write()  # the prefix is on disk before anything exists
        t, net = self.topology, self.net
        ul = net.add_ns("ul")
        self.state.underlay_ns = ul
        bridge = net.add_bridge(ul, "br")
        subnet = net.reserve_net(24)
        self._xdp = load(XDP_IMPAIR)
        for i, h in enumerate(t.hosts):
            ns = net.add_ns(h.name)
            ip = subnet.network_address + i + 1
            pair = net.add_veth(ns, ul, addr_a=f"{ip}/{subnet.prefixlen}", mtu=t.underlay_mtu)
            net.set_master(ul, pair.ifname_b, bridge)
            net.set_sysctl(ns, "net.ipv4.ip_forward", "1")
            self._impair(ul, pair.ifname_b, t.underlay_impairment)
            self.state.hosts[h.name] = HostInfo(ns, pair.ifname_a, mac_of(ns, pair.ifname_a).hex(":"), str(ip),
                                                cpus=h.cpus, memory_mb=h.memory_mb)
            self.state.write()
        for e in t.endpoints:
            host = self.state.hosts[e.host]
            ens = net.add_ns(e.name)
            pair = net.add_veth(ens, host.ns)
            net.add_route(ens, "default", gateway=pair.addr_b)
            _tx_off(ens, pair.ifname_a)
            _delay(ens, pair.ifname_a, e.impairment.delay_ms)
            _delay(host.ns, pair.ifname_b, e.impairment.delay_ms)
            if e.impairment.loss_pct:
                self._impair(ens, pair.ifname_a, e.impairment)
            (host.ingress if e.role == "client" else host.egress).append(pair.ifname_b)
            self.state.endpoints[e.name] = EndpointInfo(ens, e.host, e.role, pair.addr_a, pair.addr_b, pair.ifname_a)
            subnet_e = ipaddress.ip_interface(f"{pair.addr_a}/{pair.prefixlen}").network
            for other, info in self.state.hosts.items():
                if other != e.host:
                    net.add_route(info.ns, str(subnet_e), gateway=host.underlay_ip)
            self.state.write()
        return self.state

    def _impair(self, ns: str, ifname: str, imp: Impairment) -> None:
        """xdp_impair on ``ifname`` with its own loss setting (one object per link), and netem delay."""
        obj = self._xdp if not imp.loss_pct else load(XDP_IMPAIR)
        if obj is not self._xdp:
            self._objects.append(obj)
            obj.map("impair_cfg")[0] = {"loss_ppm": round(imp.loss_pct * 10_000)}
        att = attach_xdp(obj.program("xdp_impair"), ifname, ns=ns)
        self._attachments.append(att)
        self._links.append((f"{ns}/{ifname}", obj))
        _delay(ns, ifname, imp.delay_ms)

    def impair_counters(self) -> dict[str, tuple[int, int]]:
        """Frames (passed, dropped) per lossy link, by ``netns/ifname`` (links without loss share
        one program, and so one count, under ``"lossless"``)."""
        out = {}
        for where, obj in self._links:
            c = obj.map("impair_counters").as_array()["packets"]
            out["lossless" if obj is self._xdp else where] = (int(c[0]), int(c[1]))
        return out

    def start(self, key: str, ns: str | None, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        """Run ``argv`` in netns ``ns`` (an agent, an orchestrator); recorded for ``down``."""
        log.parent.mkdir(parents=True, exist_ok=True)
        cmd = ["ip", "netns", "exec", ns, *argv] if ns else list(argv)
        with open(log, "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self._processes[key] = proc
        self.state.agents[key] = {"pid": proc.pid, "ns": ns, "log": str(log)}
        self.state.write()
        return proc

    def stop(self, key: str, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        proc = self._processes.pop(key, None)
        self.state.agents.pop(key, None)
        if proc is not None:
            _terminate(proc.pid, sig, timeout)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(0.1)
        self.state.write()

    def wiring(self) -> dict[str, HostWiring]:
        return {h: info.wiring() for h, info in self.state.hosts.items()}

    def close(self) -> None:
        for key in list(self._processes):
            self.stop(key)
        for att in self._attachments:
            with contextlib.suppress(Exception):
                att.detach()
        self._attachments.clear()
        for obj in [*self._objects, *([self._xdp] if self._xdp else [])]:
            obj.close()
        self._objects.clear()
        self._xdp = None
        self.net.close()
        from vnfkit.emu.control_plane import remove_pins

        remove_pins(self.net.prefix)  # the agents leave their data path pinned on purpose
        with contextlib.suppress(FileNotFoundError):
            (STATE_DIR / f"{self.topology.name}.json").unlink()

    def __enter__(self) -> Emulation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return False


def _terminate(pid: int, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Signal ``pid``'s process group and wait; SIGKILL what is left after ``timeout``."""
    for s in (sig, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            try:
                os.killpg(pid, s)  # the process and what it started (ip netns exec ...)
            except ProcessLookupError:
                os.kill(pid, s)  # not a group leader
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        if not _alive(pid):
            return


def down(name: str, on_removed: Callable[[str], None] | None = None) -> list[str]:
    """Remove emulation ``name``: stop its supervisor (which cleans up), then whatever a crash
    left: processes, namespaces and interfaces of its prefix, its state file. Returns what was
    removed by hand (empty when the supervisor did it all)."""
    state = State.read(name)
    removed: list[str] = []
    if state.pid != os.getpid() and _alive(state.pid):
        _terminate(state.pid, signal.SIGTERM, timeout=15.0)
    for key, proc in state.agents.items():
        if _alive(proc["pid"]):
            _terminate(proc["pid"], signal.SIGTERM, timeout=5.0)
            removed.append(f"process {key} (pid {proc['pid']})")
    removed += netns.cleanup_stale(state.prefix)
    from vnfkit.emu.control_plane import remove_pins

    removed += remove_pins(state.prefix)  # what killed agents left pinned
    work = Path(state.extra.get("workdir", "/nonexistent"))
    if work.parent == STATE_DIR and work.is_dir():  # the control plane's certs, sockets and state
        shutil.rmtree(work, ignore_errors=True)
        removed.append(str(work))
    with contextlib.suppress(FileNotFoundError):
        (STATE_DIR / f"{name}.json").unlink()
    if on_removed:
        for r in removed:
            on_removed(r)
    return removed
