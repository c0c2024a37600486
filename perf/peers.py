"""What a user would otherwise run, configured to do the benchmark's jobs: the firewall's rule
language translated to nftables and iptables, NAT with conntrack, nftables load balancing,
nftables policing, and user-space forwarders (pure Python over AF_PACKET, DPDK's testpmd).

The translator covers the subset of the firewall's rule language the benchmark uses (and a
little more): IPv4 prefixes (lists too), one protocol or any, tcp/udp port lists and ranges.
Anything else (IPv6, TCP flags, several protocols in one rule) is refused with the rule's
number and text, never approximated: a peer doing a different job would be a wrong number.

Every set-up here lives in a benchmark namespace (nftables and iptables state is per netns)
and goes with it; user-space peers are processes this module starts and stops.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perf.report import REPO
from perf.sinks import in_ns
from vnfkit.pyfile import import_file

_rules = import_file(REPO / "vnfs" / "firewall" / "rules.py", "the firewall's rule language", RuntimeError)
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp"}
TABLE = "vnfkit_bench"


class TranslateError(ValueError):
    """A firewall rule outside the subset the translator handles."""


# ---- the firewall's rule language -> nftables / iptables --------------------------------------
def _check(rule: Any) -> tuple[str | None, list[str] | None, list[str] | None]:
    """(protocol name or None, source prefixes or None, destination prefixes or None)."""
    where = f"rule {rule.index} ({rule.written or rule.text!r})"
    if rule.families != frozenset({4}) and (rule.src is not None or rule.dst is not None):
        raise TranslateError(f"{where}: only IPv4 addresses are translated")
    if rule.flags is not None:
        raise TranslateError(f"{where}: TCP flags are not translated")
    proto = None
    if rule.protos is not None:
        if len(rule.protos) != 1 or next(iter(rule.protos)) not in PROTO_NAMES:
            raise TranslateError(f"{where}: only one of {sorted(PROTO_NAMES.values())} (or any) is translated")
        proto = PROTO_NAMES[next(iter(rule.protos))]
    if (rule.sport or rule.dport) and proto not in ("tcp", "udp"):
        raise TranslateError(f"{where}: ports need tcp or udp")

    def nets(value: Any) -> list[str] | None:
        if value is None:
            return None
        if any(n.version != 4 for n in value):
            raise TranslateError(f"{where}: only IPv4 addresses are translated")
        return [str(n) if n.prefixlen < 32 else str(n.network_address) for n in value]
    return proto, nets(rule.src), nets(rule.dst)


def _ports(ranges: Sequence[tuple[int, int]], sep: str) -> list[str]:
    return [str(a) if a == b else f"{a}{sep}{b}" for a, b in ranges]


def _nft_set(items: list[str]) -> str:
    return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"


def nft_rule(rule: Any) -> str:
    """One firewall rule as an nftables rule body (``ip saddr ... udp dport 9 drop``)."""
    proto, src, dst = _check(rule)
    parts = ["meta nfproto ipv4"] if rule.families == frozenset({4}) and not (src or dst) else []
    if src:
        parts.append(f"ip saddr {_nft_set(src)}")
    if dst:
        parts.append(f"ip daddr {_nft_set(dst)}")
    if proto and not (rule.sport or rule.dport):
        parts.append(f"ip protocol {proto}")
    if rule.sport:
        parts.append(f"{proto} sport {_nft_set(_ports(rule.sport, '-'))}")
    if rule.dport:
        parts.append(f"{proto} dport {_nft_set(_ports(rule.dport, '-'))}")
    parts.append("accept" if rule.allow else "drop")
    return " ".join(parts)


def nft_firewall(rule_text: Iterable[str], ifname: str, default: str = "accept") -> str:
    """A netdev-ingress chain on ``ifname`` holding the rules in order (first match wins, as in
    the firewall): the earliest hook nftables has, so its strongest answer to XDP."""
    body = "\n".join(f"        {nft_rule(r)}" for r in _rules.parse_rules(list(rule_text)))
    return (f"table netdev {TABLE} {{\n    chain ingress {{\n        type filter hook ingress device \"{ifname}\" "
            f"priority filter; policy {default};\n{body}\n    }}\n}}\n")


def iptables_rules(rule: Any, chain: str) -> list[str]:
    """One firewall rule as ``iptables-restore`` lines (a prefix list becomes one line per
    source x destination, which is what iptables itself does with ``-s a,b``)."""
    proto, src, dst = _check(rule)
    base = [f"-A {chain}"] + ([f"-p {proto}"] if proto else [])
    if rule.sport or rule.dport:
        for flag, ranges in (("--sport", rule.sport), ("--dport", rule.dport)):
            if not ranges:
                continue
            items = _ports(ranges, ":")
            base.append(f"{flag} {items[0]}" if len(items) == 1 else f"-m multiport {flag}s {','.join(items)}")
    target = "-j ACCEPT" if rule.allow else "-j DROP"
    out = []
    for s in src or [None]:
        for d in dst or [None]:
            out.append(" ".join([*base[:1], *([f"-s {s}"] if s else []), *([f"-d {d}"] if d else []), *base[1:],
                                 target]))
    return out


def iptables_firewall(rule_text: Iterable[str], ifname: str) -> str:
    """An ``iptables-restore`` document: the rules in the raw table's PREROUTING (the earliest
    iptables hook, before conntrack), matching frames that arrive on ``ifname``."""
    chain = "VNFKIT_BENCH"
    lines = ["*raw", ":PREROUTING ACCEPT [0:0]", f":{chain} - [0:0]", f"-A PREROUTING -i {ifname} -j {chain}"]
    for r in _rules.parse_rules(list(rule_text)):
        lines += iptables_rules(r, chain)
    return "\n".join([*lines, "COMMIT", ""])


def iptables_command() -> str:
    """``iptables-legacy-restore`` where it exists: Debian's plain ``iptables`` is the nf_tables
    back end, which would measure nftables a second time."""
    for name in ("iptables-legacy-restore", "iptables-restore"):
        if shutil.which(name):
            return name
    raise RuntimeError("no iptables-restore on this host (Debian: apt-get install iptables)")


def load_nft(ns: str, ruleset: str) -> None:
    in_ns(ns, "nft", "-f", "-", stdin=ruleset)


def load_iptables(ns: str, document: str) -> str:
    """Load an iptables-restore document in ``ns``; return the command's version line."""
    cmd = iptables_command()
    in_ns(ns, cmd, stdin=document)
    return in_ns(ns, cmd.replace("-restore", ""), "-V").strip()


def nft_counter_rules(ns: str) -> int:
    """How many rules the benchmark table holds in ``ns`` (a check that all were loaded)."""
    out = in_ns(ns, "nft", "-a", "list", "table", "netdev", TABLE)
    return sum(1 for line in out.splitlines() if "# handle" in line and ("accept" in line or "drop" in line))


# ---- NAT, load balancing, policing in nftables -----------------------------------------------
def nft_snat(egress: str, pool: str) -> str:
    """Source NAT with conntrack, as a Linux router does it: every new flow gets a conntrack
    entry and the pool address in postrouting; the rest of the flow follows conntrack."""
    return (f"table ip {TABLE} {{\n    chain postrouting {{\n        type nat hook postrouting priority srcnat; "
            f"policy accept;\n        oifname \"{egress}\" snat to {pool}\n    }}\n}}\n")


def nft_lb(vip: str, port: int, backends: Sequence[str], how: str = "jhash") -> str:
    """DNAT of a UDP VIP to backends chosen by ``jhash`` of the flow's source (flow-consistent,
    like Maglev's) or ``numgen`` (round robin), with conntrack keeping a flow on its backend."""
    table = ", ".join(f"{i} : {b}" for i, b in enumerate(backends))
    if how == "jhash":
        pick = f"jhash ip saddr . udp sport mod {len(backends)}"
    elif how == "numgen":
        pick = f"numgen inc mod {len(backends)}"
    else:
        raise ValueError(f"load balancing by {how!r}: jhash or numgen")
    return (f"table ip {TABLE} {{\n    chain prerouting {{\n        type nat hook prerouting priority dstnat; "
            f"policy accept;\n        ip daddr {vip} udp dport {port} dnat to {pick} map {{ {table} }}\n    }}\n}}\n")


def nft_limit(ifname: str, prefix: str, rate_pps: int, burst: int) -> str:
    """A packet-rate policer on a source prefix at netdev ingress, excess dropped: what this
    kernel offers in place of ``tc police`` (CONFIG_NET_ACT_POLICE is not built here)."""
    return (f"table netdev {TABLE} {{\n    chain ingress {{\n        type filter hook ingress device \"{ifname}\" "
            f"priority filter; policy accept;\n        ip saddr {prefix} limit rate over {rate_pps}/second "
            f"burst {burst} packets drop\n    }}\n}}\n")


def kernel_config(option: str) -> str | None:
    """``y``/``m`` for a kernel option, ``None`` if not set, ``"unknown"`` without /proc/config.gz."""
    import gzip

    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            for line in f:
                if line.startswith(option + "="):
                    return line.strip().split("=", 1)[1]
    except OSError:
        return "unknown"
    return None


def tc_police_available() -> tuple[bool, str]:
    """Whether ``tc ... action police`` can work here, and why not."""
    value = kernel_config("CONFIG_NET_ACT_POLICE")
    if value in ("y", "m"):
        return True, "CONFIG_NET_ACT_POLICE=" + value
    if value == "unknown":
        return False, "no /proc/config.gz to tell whether CONFIG_NET_ACT_POLICE is built"
    return False, ("CONFIG_NET_ACT_POLICE is not set in this kernel (nor matchall/flower classifiers, gact), "
                   "so tc cannot police; nftables' limit is the policer measured instead")


# ---- user-space forwarders -------------------------------------------------------------------
@dataclass
class Process:
    """A peer running as a process in a namespace, pinned to a CPU. Its stdin stays open
    (testpmd exits when its stdin ends); its output is read once it has exited."""

    name: str
    proc: subprocess.Popen[str]
    command: list[str]
    _output: str | None = None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        """What it printed (once it has exited; "" before)."""
        if self._output is None and not self.alive():
            out, _ = self.proc.communicate()
            self._output = (out or "").strip()
        return self._output or ""

    def pause(self) -> None:
        """SIGSTOP: a stopped peer takes no CPU from the scenarios measured meanwhile."""
        if self.alive():
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if not self.alive():
            raise RuntimeError(f"{self.name} has exited ({self.proc.returncode}): {self.output()[-800:]}")
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> str:
        """SIGINT (testpmd prints its stats and exits), then SIGKILL; what it printed."""
        if self.alive():
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.output()


@contextlib.contextmanager
def started(name: str, ns: str, cmd: list[str], cpus: str, ready: float = 0.5) -> Iterator[Process]:
    """Run ``cmd`` in ``ns`` pinned to ``cpus`` (a taskset list); stop it on exit. Raises if it
    dies within ``ready`` seconds."""
    full = ["ip", "netns", "exec", ns, "taskset", "-c", cpus, *cmd]
    proc = subprocess.Popen(full, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    p = Process(name, proc, full)
    try:
        deadline = time.monotonic() + ready
        while time.monotonic() < deadline and p.alive():
            time.sleep(0.05)
        if not p.alive():
            raise RuntimeError(f"{name} exited at start ({proc.returncode}): {p.output()[-800:]}")
        yield p
    finally:
        p.stop()


def python_forwarder(in_if: str, out_if: str) -> list[str]:
    """The pure-Python AF_PACKET forwarder (``python -m perf.pyfwd``)."""
    return [sys.executable, "-m", "perf.pyfwd", in_if, out_if]


TESTPMD = "dpdk-testpmd"


def testpmd_available() -> tuple[bool, str]:
    path = shutil.which(TESTPMD)
    if path is None:
        return False, "dpdk-testpmd is not installed (Debian: apt-get install dpdk-dev)"
    return True, path


DPDK_RUN = Path("/var/run/dpdk")


def testpmd_prefix(driver: str) -> str:
    """The EAL file prefix of this process's testpmd for ``driver``: its runtime folder is
    DPDK_RUN / prefix, which testpmd leaves behind (``remove_runtime`` takes it away)."""
    return f"vnfkit-bench-{os.getpid()}-{driver}"


def remove_runtime(driver: str) -> None:
    shutil.rmtree(DPDK_RUN / testpmd_prefix(driver), ignore_errors=True)


def testpmd(driver: str, in_if: str, out_if: str, cpu: int, main_cpu: int) -> list[str]:
    """``dpdk-testpmd`` forwarding (io mode, no rewriting) from ``in_if`` to ``out_if`` over the
    ``af_packet`` or ``af_xdp`` poll-mode driver, without hugepages (none are set up here).
    The forwarding lcore is the path CPU and busy-polls, as DPDK does; the main lcore (on
    ``main_cpu``) only waits on stdin."""
    if driver not in ("af_packet", "af_xdp"):
        raise ValueError(f"testpmd driver {driver!r}: af_packet or af_xdp")
    vdevs = []
    for i, ifname in enumerate((in_if, out_if)):
        if driver == "af_packet":
            vdevs += ["--vdev", f"net_af_packet{i},iface={ifname},blocksz=4096,framesz=2048,framecnt=512,qpairs=1"]
        else:
            vdevs += ["--vdev", f"net_af_xdp{i},iface={ifname},start_queue=0,queue_count=1"]
    return [TESTPMD, "-l", f"{main_cpu},{cpu}", "--main-lcore", str(main_cpu), "--no-huge", "-m", "512",
            "--no-pci", "--file-prefix", testpmd_prefix(driver), "--log-level", "lib.eal:error",
            *vdevs, "--",
            "--total-num-mbufs=16384", "--forward-mode=io", "--auto-start", "--stats-period=0",
            "--nb-cores=1", "--txq=1", "--rxq=1", "--no-mlockall"]


def iptables_version() -> str:
    cmd = iptables_command().replace("-restore", "")
    try:
        return subprocess.run([cmd, "-V"], capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        return "unknown"

