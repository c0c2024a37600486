"""What this kernel offers, found by trying it, so callers choose instead of guessing.

Each probe loads a two-instruction program (no clang needed) and tries the feature on a veth
pair in a scratch network namespace, which is removed afterwards.
"""

from __future__ import annotations

import os
import platform
import socket
import struct
from dataclasses import asdict, dataclass, field

from datapath import netns
from datapath.errors import BpfError
from datapath.kernel import (
    BPF_F_TEST_XDP_LIVE_FRAMES,
    BPF_STATS_RUN_TIME,
    XDP_FLAGS_DRV_MODE,
    XDP_FLAGS_SKB_MODE,
    AttachType,
    ProgType,
)
from datapath.libbpf import ffi, lib

AF_XDP = 44


@dataclass
class Capabilities:
    kernel: str
    btf: bool
    bpffs: bool
    xdp_native_veth: bool
    xdp_generic: bool
    tcx: bool
    live_frames: bool
    af_xdp: bool
    bpf_stats: bool
    # Not probed: extension programs were refused with EPERM on these machines, and vnfkit
    # does not use them (it chains with tail calls instead).
    freplace: str = "not used by vnfkit"
    errors: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def _insns(*pairs: tuple[int, int]) -> bytes:
    """Encode (opcode, imm) instructions on r0: enough for 'return K'."""
    return b"".join(struct.pack("<BBhi", code, 0, 0, imm) for code, imm in pairs)


def load_return(prog_type: int, value: int) -> int:
    """Load 'return value' as a program of ``prog_type``; returns its fd."""
    code = _insns((0xB7, value), (0x95, 0))  # mov r0, value; exit
    buf = ffi.from_buffer(code)
    fd = lib.bpf_prog_load(prog_type, b"vk_probe", b"GPL", ffi.cast("struct bpf_insn *", buf), 2, ffi.NULL)
    if fd < 0:
        raise BpfError(f"loading a probe program of type {prog_type}", -fd)
    return fd


def _try_link(prog_fd: int, ifindex: int, attach_type: int, flags: int = 0) -> str | None:
    opts = ffi.new("struct bpf_link_create_opts *", {"sz": ffi.sizeof("struct bpf_link_create_opts"),
                                                     "flags": flags})
    fd = lib.bpf_link_create(prog_fd, ifindex, attach_type, opts)
    if fd < 0:
        return os.strerror(ffi.errno)
    lib.bpf_link_detach(fd)
    os.close(fd)
    return None


def probe() -> Capabilities:
    errors: dict[str, str] = {}
    caps = Capabilities(
        kernel=platform.release(),
        btf=os.path.exists("/sys/kernel/btf/vmlinux"),
        bpffs=_bpffs_mounted(),
        xdp_native_veth=False, xdp_generic=False, tcx=False, live_frames=False,
        af_xdp=_af_xdp(errors), bpf_stats=False, errors=errors,
    )
    fd = lib.bpf_enable_stats(BPF_STATS_RUN_TIME)
    caps.bpf_stats = fd >= 0
    if fd >= 0:
        os.close(fd)
    else:
        errors["bpf_stats"] = os.strerror(ffi.errno)
    try:
        xdp = load_return(ProgType.XDP, 1)  # XDP_DROP
        tc = load_return(ProgType.SCHED_CLS, 0)
    except BpfError as exc:
        errors["load"] = str(exc)
        return caps
    try:
        with netns.Topology() as topo:
            a = topo.add_ns("probe")
            pair = topo.add_veth(a, a)
            with netns.enter(a):
                for key, flags in (("xdp_native_veth", XDP_FLAGS_DRV_MODE), ("xdp_generic", XDP_FLAGS_SKB_MODE)):
                    err = _try_link(xdp, pair.ifindex_a, AttachType.XDP, flags)
                    setattr(caps, key, err is None)
                    if err:
                        errors[key] = err
                err = _try_link(tc, pair.ifindex_a, AttachType.TCX_INGRESS)
                caps.tcx = err is None
                if err:
                    errors["tcx"] = err
                caps.live_frames = _live_frames(xdp, pair.ifindex_a, errors)
    finally:
        os.close(xdp)
        os.close(tc)
    return caps


def _live_frames(prog_fd: int, ifindex: int, errors: dict[str, str]) -> bool:
    frame = bytes(64)
    ctx = ffi.new("struct xdp_md *", {"ingress_ifindex": ifindex, "data_end": len(frame)})
    opts = ffi.new("struct bpf_test_run_opts *")
    opts.sz = ffi.sizeof("struct bpf_test_run_opts")
    opts.data_in = ffi.from_buffer(frame)
    opts.data_size_in = len(frame)
    opts.ctx_in = ctx
    opts.ctx_size_in = ffi.sizeof("struct xdp_md")
    opts.repeat = 1
    opts.flags = BPF_F_TEST_XDP_LIVE_FRAMES
    ret = lib.bpf_prog_test_run_opts(prog_fd, opts)
    if ret < 0:
        errors["live_frames"] = os.strerror(-ret)
    return ret == 0


def _af_xdp(errors: dict[str, str]) -> bool:
    try:
        socket.socket(AF_XDP, socket.SOCK_RAW, 0).close()
        return True
    except OSError as exc:
        errors["af_xdp"] = exc.strerror or str(exc)
        return False


def _bpffs_mounted() -> bool:
    with open("/proc/self/mounts") as f:
        return any(ln.split()[2] == "bpf" for ln in f if len(ln.split()) > 2)
