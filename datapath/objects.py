"""Loading BPF objects with libbpf, and the programs they hold.

``load()`` opens and loads a ``.o`` (or compiles a ``.c`` first). A verifier rejection
becomes a ``VerifierError`` carrying the verifier's own words; any other libbpf failure a
``LoadError`` carrying libbpf's messages.
"""

from __future__ import annotations

import errno as errno_mod
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datapath.compiler import compile_bpf
from datapath.errors import BpfError, LoadError, VerifierError
from datapath.kernel import BPF_F_TEST_XDP_LIVE_FRAMES, ProgType, TcAction, XdpAction
from datapath.libbpf import captured_log, ffi, lib
from datapath.maps import Map
from datapath.verifier import parse_log

LOG_SIZE = 4 << 20  # the kernel keeps the tail of a longer log (rotating mode, 6.4+)
_FAILED_PROG = re.compile(r"prog '([^']+)': BPF program load failed")


@dataclass
class RunResult:
    """What BPF_PROG_TEST_RUN returned for one packet."""

    retval: int
    data: bytes
    duration_ns: int  # average per repetition, measured by the kernel
    prog_type: int

    @property
    def verdict(self) -> str:
        enum = XdpAction if self.prog_type == ProgType.XDP else TcAction
        try:
            return enum(self.retval).name
        except ValueError:
            return str(self.retval)


@dataclass
class ProgStats:
    run_cnt: int
    run_time_ns: int

    @property
    def ns_per_run(self) -> float:
        return self.run_time_ns / self.run_cnt if self.run_cnt else 0.0


class Program:
    """A loaded BPF program, by fd. Runs packets with BPF_PROG_TEST_RUN."""

    def __init__(self, fd: int, *, owns_fd: bool, name: str | None = None, keepalive: Any = None) -> None:
        self.fd = fd
        self._owns_fd = owns_fd
        self._keepalive = keepalive  # the BpfObject whose fd this is
        info = self._info()
        self.id = info.id
        self.type = info.type
        self.name = name or ffi.string(info.name).decode()
        self.tag = bytes(info.tag).hex()

    def _info(self):  # noqa: ANN202 - cffi struct
        info = ffi.new("struct bpf_prog_info *")
        size = ffi.new("__u32 *", ffi.sizeof("struct bpf_prog_info"))
        if lib.bpf_obj_get_info_by_fd(self.fd, info, size) < 0:
            raise BpfError(f"reading info of program fd {self.fd}", ffi.errno)
        return info

    def stats(self) -> ProgStats:
        """Run count and total run time; non-zero only while bpf stats are enabled."""
        info = self._info()
        return ProgStats(run_cnt=info.run_cnt, run_time_ns=info.run_time_ns)

    def sizes(self) -> tuple[int, int]:
        """(instructions after verification, instructions the verifier processed)."""
        info = self._info()
        return info.xlated_prog_len // 8, info.verified_insns

    def close(self) -> None:
        if self._owns_fd and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __repr__(self) -> str:
        return f"<Program {self.name!r} type={self.type} id={self.id}>"

    def test_run(self, packet: Any, repeat: int = 1, *, ctx: Any = None) -> RunResult:
        """Run the program on one packet (bytes or a scapy packet) in the kernel.

        ``repeat`` > 1 runs it that many times and reports the average ns per run.
        """
        data = bytes(packet)
        out = ffi.new("char[]", min(len(data) + 4096, 65535))
        opts = ffi.new("struct bpf_test_run_opts *")
        opts.sz = ffi.sizeof("struct bpf_test_run_opts")
        opts.data_in = ffi.from_buffer(data)
        opts.data_size_in = len(data)
        opts.data_out = out
        opts.data_size_out = len(out)
        opts.repeat = repeat
        if ctx is not None:
            opts.ctx_in = ctx
            opts.ctx_size_in = ffi.sizeof(ctx[0])
        ret = lib.bpf_prog_test_run_opts(self.fd, opts)
        if ret < 0:
            raise BpfError(f"test-run of program '{self.name}' on a {len(data)}-byte packet", -ret)
        return RunResult(opts.retval, ffi.buffer(out, opts.data_size_out)[:], opts.duration, self.type)

    def send_live(self, frame: Any, count: int, ingress_ifindex: int, batch_size: int = 64) -> None:
        """XDP live-frames mode: run the program ``count`` times on real frames that a
        returned XDP_TX/XDP_REDIRECT transmits, an in-kernel packet generator.

        The calling thread must be in the network namespace of ``ingress_ifindex``
        (``datapath.netns.enter``). Pages are recycled without re-initialising their data, so a
        program that rewrites headers must rewrite them on every run.
        """
        if self.type != ProgType.XDP:
            raise BpfError(f"live frames need an XDP program; '{self.name}' is type {self.type}", 22)
        data = bytes(frame)
        # The kernel insists that the context describes the frame exactly (data_end == size).
        ctx = ffi.new("struct xdp_md *", {"ingress_ifindex": ingress_ifindex, "data_end": len(data)})
        opts = ffi.new("struct bpf_test_run_opts *")
        opts.sz = ffi.sizeof("struct bpf_test_run_opts")
        opts.data_in = ffi.from_buffer(data)
        opts.data_size_in = len(data)
        opts.ctx_in = ctx
        opts.ctx_size_in = ffi.sizeof("struct xdp_md")
        opts.repeat = count
        opts.flags = BPF_F_TEST_XDP_LIVE_FRAMES
        opts.batch_size = batch_size
        ret = lib.bpf_prog_test_run_opts(self.fd, opts)
        if ret < 0:
            raise BpfError(f"live-frames run of '{self.name}' on ifindex {ingress_ifindex}", -ret)


class BpfObject:
    """A loaded BPF object file: its programs and maps by name. Close (or use ``with``) to
    release everything that is not pinned or attached."""

    def __init__(self, path: Path, obj: Any) -> None:
        self.path = path
        self._obj = obj
        self.programs: dict[str, Program] = {}
        self.maps: dict[str, Map] = {}
        prog = lib.bpf_object__next_program(obj, ffi.NULL)
        while prog != ffi.NULL:
            name = ffi.string(lib.bpf_program__name(prog)).decode()
            fd = lib.bpf_program__fd(prog)
            if fd >= 0:
                self.programs[name] = Program(fd, owns_fd=False, name=name, keepalive=self)
            prog = lib.bpf_object__next_program(obj, prog)
        m = lib.bpf_object__next_map(obj, ffi.NULL)
        while m != ffi.NULL:
            name = ffi.string(lib.bpf_map__name(m)).decode()
            fd = lib.bpf_map__fd(m)
            if fd >= 0:
                self.maps[name] = Map.from_fd(fd, name=name)
            m = lib.bpf_object__next_map(obj, m)

    def program(self, name: str | None = None) -> Program:
        """The program called ``name``, or the only one."""
        if name is None:
            if len(self.programs) != 1:
                raise LoadError(f"{self.path} has programs {sorted(self.programs)}: name the one you want")
            return next(iter(self.programs.values()))
        try:
            return self.programs[name]
        except KeyError:
            raise LoadError(f"{self.path} has no program '{name}' (it has {sorted(self.programs)})") from None

    def map(self, name: str) -> Map:
        try:
            return self.maps[name]
        except KeyError:
            raise LoadError(f"{self.path} has no map '{name}' (it has {sorted(self.maps)})") from None

    def close(self) -> None:
        if self._obj is not None:
            for m in self.maps.values():
                m.close()
            lib.bpf_object__close(self._obj)
            self._obj = None
            for p in self.programs.values():
                p.fd = -1

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass


def load(
    source: str | os.PathLike[str],
    *,
    include_dirs: tuple[str | os.PathLike[str], ...] = (),
    defines: dict[str, str] | None = None,
    log_level: int = 0,
    reuse_maps: dict[str, Map] | None = None,
) -> BpfObject:
    """Load a BPF object into the kernel (compiling it first if ``source`` is a ``.c``).

    ``log_level`` > 0 asks the verifier for its log even on success (2 = every state).
    ``reuse_maps`` makes the object's maps of those names be existing maps instead of new
    ones (how programs loaded separately share state, e.g. a chain's program array).
    """
    path = Path(source)
    if path.suffix == ".c":
        path = compile_bpf(path, include_dirs, defines)
    if not path.is_file():
        raise LoadError(f"{source}: no such object file")
    log_buf = ffi.new("char[]", LOG_SIZE)
    opts = ffi.new("struct bpf_object_open_opts *")
    opts.sz = ffi.sizeof("struct bpf_object_open_opts")
    opts.kernel_log_buf = log_buf
    opts.kernel_log_size = LOG_SIZE
    opts.kernel_log_level = log_level
    shown = str(source)
    with captured_log() as messages:
        obj = lib.bpf_object__open_file(str(path).encode(), opts)
        if obj == ffi.NULL:
            raise LoadError(f"libbpf could not open {shown}: {os.strerror(ffi.errno)}\n" + "".join(messages))
        for name, existing in (reuse_maps or {}).items():
            m = lib.bpf_object__find_map_by_name(obj, name.encode())
            if m == ffi.NULL or lib.bpf_map__reuse_fd(m, existing.fd) < 0:
                lib.bpf_object__close(obj)
                raise LoadError(f"{shown}: cannot reuse map '{name}' "
                                f"({'no such map' if m == ffi.NULL else os.strerror(ffi.errno)})")
        ret = lib.bpf_object__load(obj)
    if ret < 0:
        lib.bpf_object__close(obj)
        err = -ret
        log = ffi.string(log_buf).decode(errors="replace")
        failed = next((m.group(1) for m in map(_FAILED_PROG.search, messages) if m), None)
        errno_name = errno_mod.errorcode.get(err, str(err))
        if failed and log.strip():
            raise VerifierError(shown, parse_log(failed, log), errno_name)
        detail = "".join(messages).strip() or os.strerror(err)
        raise LoadError(f"loading {shown} failed ({errno_name}):\n{detail}")
    return BpfObject(Path(source), obj)
