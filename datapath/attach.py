"""Attaching programs to interfaces: XDP (native or generic) and TC (tcx, or clsact).

Everything the engine attaches is a BPF link where the kernel has one (XDP links; tcx links
since 6.6), so an attachment can be pinned to outlive the process and is detached by one
call. Only the clsact fallback for kernels without tcx is netlink state instead of a link.

Interfaces are named by (netns, ifname). The bpf() calls run with the thread inside that
namespace, because the kernel resolves an ifindex in the caller's network namespace.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field

from datapath import netns
from datapath.errors import AttachError, PinError
from datapath.kernel import (
    XDP_ATTACHED_DRV,
    XDP_ATTACHED_HW,
    XDP_ATTACHED_MULTI,
    XDP_ATTACHED_SKB,
    XDP_FLAGS_DRV_MODE,
    XDP_FLAGS_SKB_MODE,
    AttachType,
    LinkType,
)
from datapath.libbpf import ffi, lib
from datapath.objects import Program

XDP_MODES = ("auto", "native", "generic")
TC_MODES = ("auto", "tcx", "clsact")
_ATTACHED_MODE = {XDP_ATTACHED_DRV: "native", XDP_ATTACHED_SKB: "generic", XDP_ATTACHED_HW: "offload",
                  XDP_ATTACHED_MULTI: "multi"}


@dataclass
class Attachment:
    """A program attached to an interface hook.

    ``hook`` is "xdp", "tc-ingress" or "tc-egress"; ``mode`` says how: "native"/"generic"
    for XDP, "tcx"/"clsact" for TC.
    """

    hook: str
    mode: str
    ifindex: int
    ifname: str | None
    netns: str | None
    prog_id: int
    prog_name: str
    link_fd: int = -1  # -1 for clsact filters, which are not links
    link_id: int = 0
    pin_path: str | None = None
    _tc: tuple[int, int, int, bool] | None = field(default=None, repr=False)  # clsact: point, handle, prio, made qdisc

    def pin(self, path: str | os.PathLike[str]) -> None:
        """Pin the link so the attachment outlives this process."""
        if self.link_fd < 0:
            raise PinError(f"{self.hook} on {self.ifname}: clsact filters are netlink state, not links, "
                           "and cannot be pinned (they persist without a pin)")
        if lib.bpf_obj_pin(self.link_fd, os.fsencode(path)) < 0:
            raise PinError(f"pinning {self.hook} link of '{self.prog_name}' at {path}: {os.strerror(ffi.errno)}")
        self.pin_path = str(path)

    def detach(self) -> None:
        """Detach now (even if pinned or held elsewhere) and remove the pin."""
        if self.link_fd >= 0:
            lib.bpf_link_detach(self.link_fd)  # a link whose device is gone is already detached
            os.close(self.link_fd)
            self.link_fd = -1
        elif self._tc is not None:
            point, handle, prio, made_qdisc = self._tc
            with netns.enter(self.netns):
                hook = _tc_hook(self.ifindex, point)
                opts = ffi.new("struct bpf_tc_opts *", {"sz": ffi.sizeof("struct bpf_tc_opts"),
                                                        "handle": handle, "priority": prio})
                lib.bpf_tc_detach(hook, opts)
                if made_qdisc:  # leave the host as it was: the qdisc goes if we made it
                    lib.bpf_tc_hook_destroy(_tc_hook(self.ifindex, 3))
            self._tc = None
        if self.pin_path and os.path.exists(self.pin_path):
            os.unlink(self.pin_path)
        self.pin_path = None

    def close(self) -> None:
        """Drop this process's hold; an unpinned link detaches, a pinned one stays."""
        if self.link_fd >= 0:
            os.close(self.link_fd)
            self.link_fd = -1

    @classmethod
    def from_pin(cls, path: str | os.PathLike[str]) -> Attachment:
        """Re-open a pinned link (from any process) as an Attachment."""
        fd = lib.bpf_obj_get(os.fsencode(path))
        if fd < 0:
            raise PinError(f"no pinned link at {path}: {os.strerror(ffi.errno)}")
        att = _from_link_fd(fd)
        att.pin_path = str(path)
        return att


def _from_link_fd(fd: int) -> Attachment:
    info = ffi.new("struct bpf_link_info *")
    size = ffi.new("__u32 *", ffi.sizeof("struct bpf_link_info"))
    if lib.bpf_obj_get_info_by_fd(fd, info, size) < 0:
        err = ffi.errno
        os.close(fd)
        raise PinError(f"link fd {fd}: cannot read link info: {os.strerror(err)}")
    ifindex = lib.vk_link_info_u32(info, 0)
    if info.type == LinkType.XDP:
        hook, mode = "xdp", "link"
    elif info.type == LinkType.TCX:
        direction = lib.vk_link_info_u32(info, 1)
        hook, mode = ("tc-ingress" if direction == AttachType.TCX_INGRESS else "tc-egress"), "tcx"
    else:
        hook, mode = f"link-type-{info.type}", "link"
    prog_name = _prog_name(info.prog_id)
    return Attachment(hook=hook, mode=mode, ifindex=ifindex, ifname=None, netns=None, prog_id=info.prog_id,
                      prog_name=prog_name, link_fd=fd, link_id=info.id)


def _prog_name(prog_id: int) -> str:
    if not prog_id:
        return ""
    fd = lib.bpf_prog_get_fd_by_id(prog_id)
    if fd < 0:
        return f"id {prog_id}"
    try:
        return Program(fd, owns_fd=False).name
    finally:
        os.close(fd)


def _ifindex(ifname: str, ns: str | None) -> int:
    try:
        return netns.ifindex(ns, ifname)
    except LookupError as exc:
        raise AttachError(str(exc)) from None


def xdp_query(ifname: str, ns: str | None = None) -> tuple[int, str] | None:
    """(program id, mode) of the XDP program on an interface, or None."""
    idx = _ifindex(ifname, ns)
    opts = ffi.new("struct bpf_xdp_query_opts *", {"sz": ffi.sizeof("struct bpf_xdp_query_opts")})
    with netns.enter(ns):
        if lib.bpf_xdp_query(idx, 0, opts) < 0:
            raise AttachError(f"querying XDP on '{ifname}': {os.strerror(ffi.errno)}")
    if not opts.prog_id and not opts.attach_mode:
        return None
    return opts.prog_id, _ATTACHED_MODE.get(opts.attach_mode, str(opts.attach_mode))


def attach_xdp(prog: Program, ifname: str, *, ns: str | None = None, mode: str = "auto") -> Attachment:
    """Attach an XDP program by a link. ``mode``: "native" (driver), "generic" (skb) or
    "auto" (native, else generic; the result's ``mode`` says which)."""
    if mode not in XDP_MODES:
        raise AttachError(f"XDP mode must be one of {XDP_MODES}, not {mode!r}")
    idx = _ifindex(ifname, ns)
    where = f"'{ifname}'" + (f" in netns '{ns}'" if ns else "")
    existing = xdp_query(ifname, ns)
    if existing:
        pid, pmode = existing
        raise AttachError(f"{where} already has XDP program id {pid} ('{_prog_name(pid)}', {pmode} mode); "
                          "vnfkit does not replace a program it did not attach: detach that one first")
    tries = {"native": ["native"], "generic": ["generic"], "auto": ["native", "generic"]}[mode]
    last = 0
    for m in tries:
        flags = XDP_FLAGS_DRV_MODE if m == "native" else XDP_FLAGS_SKB_MODE
        opts = ffi.new("struct bpf_link_create_opts *", {"sz": ffi.sizeof("struct bpf_link_create_opts"),
                                                         "flags": flags})
        with netns.enter(ns):
            fd = lib.bpf_link_create(prog.fd, idx, AttachType.XDP, opts)
        if fd >= 0:
            att = _from_link_fd(fd)
            att.mode, att.ifname, att.netns = m, ifname, ns
            return att
        last = ffi.errno
        if last not in (errno.EOPNOTSUPP, errno.EINVAL):
            break
    raise AttachError(f"attaching XDP program '{prog.name}' to {where} ({mode} mode) failed: {os.strerror(last)}")


def _tc_hook(ifindex: int, point: int):  # noqa: ANN202 - cffi struct
    return ffi.new("struct bpf_tc_hook *", {"sz": ffi.sizeof("struct bpf_tc_hook"), "ifindex": ifindex,
                                            "attach_point": point})


def attach_tc(prog: Program, ifname: str, *, direction: str = "ingress", ns: str | None = None,
              mode: str = "auto") -> Attachment:
    """Attach a TC (sched_cls) program: a tcx link where the kernel has tcx (6.6+), else a
    clsact filter in direct-action mode. ``mode`` forces one of "tcx"/"clsact"."""
    if direction not in ("ingress", "egress"):
        raise AttachError(f"TC direction must be 'ingress' or 'egress', not {direction!r}")
    if mode not in TC_MODES:
        raise AttachError(f"TC mode must be one of {TC_MODES}, not {mode!r}")
    idx = _ifindex(ifname, ns)
    where = f"'{ifname}'" + (f" in netns '{ns}'" if ns else "")
    if mode in ("auto", "tcx"):
        atype = AttachType.TCX_INGRESS if direction == "ingress" else AttachType.TCX_EGRESS
        with netns.enter(ns):
            fd = lib.bpf_link_create(prog.fd, idx, atype, ffi.NULL)
        if fd >= 0:
            att = _from_link_fd(fd)
            att.ifname, att.netns = ifname, ns
            return att
        err = ffi.errno
        if mode == "tcx" or err != errno.EINVAL:  # EINVAL: a kernel without tcx
            raise AttachError(f"attaching TC program '{prog.name}' to {where} {direction} (tcx) failed: "
                              f"{os.strerror(err)}")
    point = 1 if direction == "ingress" else 2
    with netns.enter(ns):
        hook = _tc_hook(idx, point)
        ret = lib.bpf_tc_hook_create(hook)
        if ret < 0 and ret != -errno.EEXIST:
            raise AttachError(f"creating clsact qdisc on {where}: {os.strerror(-ret)}")
        made_qdisc = ret == 0
        opts = ffi.new("struct bpf_tc_opts *", {"sz": ffi.sizeof("struct bpf_tc_opts"), "prog_fd": prog.fd})
        ret = lib.bpf_tc_attach(hook, opts)
        if ret < 0:
            if made_qdisc:
                lib.bpf_tc_hook_destroy(_tc_hook(idx, 3))
            raise AttachError(f"attaching TC program '{prog.name}' to {where} {direction} (clsact) failed: "
                              f"{os.strerror(-ret)}")
    return Attachment(hook=f"tc-{direction}", mode="clsact", ifindex=idx, ifname=ifname, netns=ns,
                      prog_id=prog.id, prog_name=prog.name, _tc=(point, opts.handle, opts.priority, made_qdisc))
