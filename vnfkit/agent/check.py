"""What this host offers the agent, and what stops it: the Capabilities reply and
``vnfkit-agent --check`` (which prints them and exits non-zero on a problem)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from chaining.local import MAX_FUNCTIONS, MAX_LOCAL_HOPS
from datapath.attach import xdp_query
from vnfkit.agent.config import AgentConfig
from vnfkit.agent.convert import known_vnfs
from vnfkit.proto import load

pb, _ = load()
VERSION = "0.1.0"
BTF = Path("/sys/kernel/btf/vmlinux")


def _interfaces() -> list[Any]:
    out = []
    with IPRoute() as ipr:
        addrs: dict[int, list[str]] = {}
        for a in ipr.get_addr():
            addrs.setdefault(a["index"], []).append(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
        for link in ipr.get_links():
            name = link.get_attr("IFLA_IFNAME")
            try:
                xdp = xdp_query(name)
            except Exception:  # noqa: BLE001 - an interface that went away meanwhile
                xdp = None
            out.append(pb.Interface(name=name, mac=link.get_attr("IFLA_ADDRESS") or "",
                                    addresses=addrs.get(link["index"], []), mtu=link.get_attr("IFLA_MTU") or 0,
                                    xdp_program_id=xdp[0] if xdp else 0))
    return out


def _bpffs() -> str | None:
    from datapath.pins import ensure_bpffs

    try:
        ensure_bpffs()
    except Exception as exc:  # noqa: BLE001 - the reason is the report
        return str(exc)
    return None


def capabilities(cfg: AgentConfig) -> Any:
    """HostCapabilities of the host this process runs on (its network namespace)."""
    problems = []
    root = os.geteuid() == 0
    if not root:
        problems.append("not root: loading BPF programs and attaching XDP needs CAP_BPF and CAP_NET_ADMIN")
    bpffs_problem = _bpffs()
    if bpffs_problem:
        problems.append(bpffs_problem)
    btf = BTF.is_file()
    if not btf:
        problems.append(f"no kernel BTF at {BTF}: the kernel was built without CONFIG_DEBUG_INFO_BTF")
    if not shutil.which("clang"):
        problems.append("clang is not installed: VNFs cannot be compiled (run `make setup`)")
    interfaces = _interfaces()
    have = {i.name for i in interfaces}
    for name in [*cfg.interfaces, *cfg.ingress, *cfg.egress, *([cfg.underlay] if cfg.underlay else [])]:
        if name not in have:
            problems.append(f"interface {name!r} (config 'interfaces') is missing")
    vnfs = known_vnfs(cfg.vnfs_dir)
    if not vnfs:
        problems.append(f"no VNF folders under {cfg.vnfs_dir} (config 'vnfs_dir')")
    if not cfg.insecure:
        for what in ("ca", "cert", "key"):
            path = getattr(cfg.tls, what)
            if not Path(path).is_file():
                problems.append(f"TLS {what} {path} is missing: `python -m vnfkit.agent.tls {Path(path).parent}` "
                                "makes development certificates (or run with --insecure, for development)")
    return pb.HostCapabilities(host=cfg.name, agent_version=VERSION, kernel=os.uname().release, root=root,
                               bpffs=bpffs_problem is None, btf=btf, interfaces=interfaces, vnfs=vnfs,
                               encaps=[pb.ENCAP_ETH, pb.ENCAP_VXLAN_GPE], max_functions=MAX_FUNCTIONS,
                               max_local_hops=MAX_LOCAL_HOPS, problems=problems, ingress=cfg.ingress,
                               egress=cfg.egress, underlay=cfg.underlay, cpus=cfg.cpus, memory_mb=cfg.memory_mb)
