"""A VNF running for real: its BPF object loaded, configured and attached to interfaces.

This is what end-to-end tests (and the host agent, through chaining.host) use to put a VNF on the data
path: one instance, one set of tables, attached at XDP (or TC) on one or more interfaces,
so both directions of a flow can share its state (NAT mappings, load-balancer flows).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from datapath.attach import Attachment, attach_tc, attach_xdp
from datapath.errors import PinError
from datapath.maps import Map
from datapath.netns import ifindex
from datapath.objects import BpfObject, load
from datapath.pins import PinnedObject
from vnfkit.descriptor import Descriptor, config_values, load_descriptor
from vnfkit.executors import encode_config
from vnfkit.introspect import Introspection, introspect


class KernelInstance:
    """``with KernelInstance("vnfs/firewall", config={...}) as fw: fw.attach(ns, "eth0")``."""

    def __init__(self, folder: str | Path, config: dict[str, Any] | None = None, *,
                 reuse_maps: dict[str, Map] | None = None, adopt: PinnedObject | None = None) -> None:
        """Load (and verify) the VNF and write its config; or, with ``adopt``, take an object
        re-opened from pins (loaded and configured by another process) without changing it."""
        self.folder = Path(folder)
        self.descriptor: Descriptor = load_descriptor(self.folder)
        self.intro: Introspection = introspect(self.folder)
        self.attachments: list[Attachment] = []
        if adopt is not None:
            missing = sorted({"vk_counters", *self.intro.tables} - set(adopt.maps))
            if missing or "vnf_xdp" not in adopt.programs:
                raise PinError(f"{adopt.path} is not an instance of {self.folder.name}: it lacks "
                               f"{missing or ['program vnf_xdp']}")
            self.obj: BpfObject | PinnedObject = adopt
            return
        self.obj = load(self.intro.object_path, reuse_maps=reuse_maps)
        self.configure(config or {})

    @property
    def tables(self) -> dict[str, Map]:
        """The VNF's own tables (BPF maps), by name."""
        return {n: m for n, m in self.obj.maps.items() if n in self.intro.tables}

    def configure(self, overrides: dict[str, Any]) -> None:
        """Descriptor defaults plus ``overrides``, range-checked, written to the config table."""
        rec = encode_config(self.intro.config_dtype, config_values(self.descriptor, overrides))
        if rec is not None:
            self.obj.map("vk_config")[0] = rec

    def set_port(self, port: str, ns: str | None, ifname: str) -> None:
        """Point the named redirect port (``VNF_PORTS``) at an interface."""
        if port not in self.intro.ports:
            raise KeyError(f"{self.folder.name} has no port '{port}' (ports: {', '.join(self.intro.ports) or 'none'})")
        self.obj.map("vk_ports")[self.intro.ports.index(port)] = ifindex(ns, ifname)

    def attach(self, ns: str | None, ifname: str, *, hook: str = "xdp", mode: str = "auto") -> Attachment:
        """Attach at XDP (``hook="xdp"``) or TC ingress/egress (``"tc-ingress"``/``"tc-egress"``)."""
        if hook == "xdp":
            att = attach_xdp(self.obj.program("vnf_xdp"), ifname, ns=ns, mode=mode)
        else:
            direction = hook.removeprefix("tc-")
            att = attach_tc(self.obj.program("vnf_tc"), ifname, ns=ns, direction=direction)
        self.attachments.append(att)
        return att

    def counters(self) -> dict[str, tuple[int, int]]:
        """Every counter by name: (packets, bytes), summed over CPUs."""
        values = self.obj.map("vk_counters").as_array()
        return {name: (int(values[slot]["packets"]), int(values[slot]["bytes"]))
                for name, slot in self.intro.counter_ids.items()}

    def counter_array(self) -> np.ndarray:
        return self.obj.map("vk_counters").as_array()

    def close(self) -> None:
        for att in self.attachments:
            att.detach()
        self.attachments.clear()
        self.obj.close()

    def __enter__(self) -> KernelInstance:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
