"""A VNF in user space, fed by AF_XDP: the parent's side.

``XskFunction`` builds the VNF with the AF_XDP runtime (``build.py``), makes each queue's
tables in shared memory (``shared.py``), attaches the XSKMAP redirect program
(``xsk_redirect.c``) to the interface, and starts one worker process per queue
(``worker.py``), pinned to a CPU when asked::

    with XskFunction("vnfs/firewall", ns, "eth0", options=XskOptions(batch=64)) as fw:
        control.apply(fw.tables, rules)            # tables of queue 0; fw.queues[i].tables
        fw.start()
        ...
        with fw.paused():                          # no frame in flight: a consistent update
            control.apply(fw.tables, new_rules)
        fw.counters(), fw.stats()                  # the VNF's and the runtime's, live

A user-space function is a bump in the wire: what the VNF passes (PASS, NEXT or TX) leaves by
the interface it came in on; DROP and ABORTED are dropped; REDIRECT is counted and dropped
(an AF_XDP socket transmits only on its own device). In a chain (``chain=ChainPort(...)``)
PASS and NEXT go on along the path instead (``chaining/user.py``).

Each queue's worker has tables of its own (one writer per table: vk_tables.c has no locks);
control-plane writes while it runs are as unsynchronised as a BPF map update, so use
``paused()`` when a rule set must change atomically. A worker that dies (a crash in the VNF)
takes only itself down: the kernel removes its socket from the XSKMAP, its queue's frames go
to the stack again, and ``failures()`` says what happened; its counters stay readable.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from datapath import netns
from datapath.attach import Attachment, attach_xdp
from datapath.errors import AttachError
from datapath.native import load_native
from datapath.native_tables import NativeTable
from datapath.objects import BpfObject, load
from datapath.xsk.build import XSK_DIR, build_xsk
from datapath.xsk.errors import XskError, XskWorkerDied
from datapath.xsk.shared import DEFAULT_RESERVE, SharedTables
from datapath.xsk.worker import ERROR_PREFIX
from vnfkit.descriptor import config_values, load_descriptor
from vnfkit.executors import encode_config
from vnfkit.introspect import introspect

log = logging.getLogger("vnfkit.xsk")

REDIRECT_PROG = XSK_DIR / "xsk_redirect.c"
MODES = ("wakeup", "busy-poll")
ZEROCOPY = {"off": 0, "try": 1, "require": 2}
STARTUP_LIMIT_S = 30.0   # a worker that is neither running nor failed by then is broken
STOP_LIMIT_S = 10.0      # the drain takes at most ~2 s; then it is killed
XSK_COUNTERS = ("redirected", "no_socket", "not_nsh")  # xsk_redirect.c's enum xsk_counter
SIOCETHTOOL, ETHTOOL_GCHANNELS = 0x8946, 0x3C


@dataclass(frozen=True)
class XskOptions:
    """How each worker runs. ``batch``: frames per VNF call, 1..256 (changeable while running,
    ``set_batch``). ``mode``: "wakeup" (poll() and XDP_USE_NEED_WAKEUP: the worker sleeps when
    idle) or "busy-poll" (spins on the rings: a core of its own, no syscalls on RX).
    ``zerocopy``: "try" (zero-copy, else copy mode; the log says which), "require" or "off".
    ``frames`` × ``frame_size`` is the UMEM; ring sizes are entries, powers of two.
    ``cpus``: the CPU of each queue's worker, in queue order (None: not pinned)."""

    batch: int = 64
    mode: str = "wakeup"
    zerocopy: str = "try"
    frames: int = 4096
    frame_size: int = 2048
    fill_size: int = 2048
    comp_size: int = 2048
    rx_size: int = 2048
    tx_size: int = 2048
    cpus: tuple[int, ...] | None = None
    table_memory: int = DEFAULT_RESERVE

    def check(self, nqueues: int) -> None:
        """Raise XskError naming the first option out of range."""
        if not 1 <= self.batch <= 256:
            raise XskError(f"batch {self.batch}: must be 1..256 frames")
        if self.mode not in MODES:
            raise XskError(f"mode {self.mode!r}: must be one of {', '.join(MODES)}")
        if self.zerocopy not in ZEROCOPY:
            raise XskError(f"zerocopy {self.zerocopy!r}: must be one of {', '.join(ZEROCOPY)}")
        if self.frame_size not in (2048, 4096):
            raise XskError(f"frame_size {self.frame_size}: AF_XDP chunks here are 2048 or 4096 bytes")
        if self.frames < 1:
            raise XskError(f"frames {self.frames}: the UMEM needs at least one frame")
        for name in ("fill_size", "comp_size", "rx_size", "tx_size"):
            n = getattr(self, name)
            if n < 1 or n & (n - 1) or n > 1 << 20:
                raise XskError(f"{name} {n}: ring sizes are powers of two up to 2^20")
        if self.cpus is not None:
            allowed = os.sched_getaffinity(0)
            if len(self.cpus) != nqueues:
                raise XskError(f"cpus {list(self.cpus)}: one CPU per queue ({nqueues})")
            bad = [c for c in self.cpus if c not in allowed]
            if bad:
                raise XskError(f"cpus {bad} are not allowed for this process (allowed: {sorted(allowed)})")


@dataclass(frozen=True)
class ChainPort:
    """A worker that is a chain hop: frames come in under an NSH (``chaining/progs/user_hop.c``)
    and what the VNF passes goes back with one from ``smac`` to ``dmac`` (6 bytes each)."""

    dmac: bytes
    smac: bytes


def rx_queues(ns: str | None, ifname: str) -> int:
    """How many RX queues an interface has in use: ethtool's channel count (veth allocates a
    queue per CPU but uses one), else rtnetlink's IFLA_NUM_RX_QUEUES for drivers without it."""
    idx = netns.ifindex(ns, ifname)
    channels = array.array("I", [ETHTOOL_GCHANNELS] + [0] * 8)
    with netns.enter(ns):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            addr, _ = channels.buffer_info()
            try:
                fcntl.ioctl(s.fileno(), SIOCETHTOOL, struct.pack("=16sQ", ifname.encode(), addr))
                rx, combined = channels[5], channels[8]  # rx_count, combined_count
                if rx + combined:
                    return rx + combined
            except OSError:
                pass  # EOPNOTSUPP: the driver has no channels to report
        with IPRoute() as ipr:
            return int(ipr.get_links(idx)[0].get_attr("IFLA_NUM_RX_QUEUES") or 1)


class XskQueue:
    """One queue: its shared tables and counters, and its worker process."""

    def __init__(self, fn: XskFunction, queue: int, shared: SharedTables) -> None:
        self.fn, self.queue, self.shared = fn, queue, shared
        self.tables: dict[str, NativeTable] = shared.tables
        self.proc: subprocess.Popen[bytes] | None = None
        self.failure: str | None = None
        self.mode: str | None = None  # "zero-copy" or "copy", once bound
        self._stderr: Any = None
        self._stopping = False
        self._watcher: threading.Thread | None = None

    @property
    def where(self) -> str:
        return f"{self.fn.ifname}" + (f" in netns {self.fn.ns}" if self.fn.ns else "") + f", queue {self.queue}"

    def counters(self) -> dict[str, tuple[int, int]]:
        """The VNF's counters of this queue, (packets, bytes) by name."""
        values = self.tables["vk_counters"].as_array()
        return {name: (int(values[slot]["packets"]), int(values[slot]["bytes"]))
                for name, slot in self.fn.intro.counter_ids.items()}

    def stats(self) -> dict[str, int]:
        """The runtime's counters of this queue (``vk_xsk.h``)."""
        return self.shared.stats()

    def _stderr_text(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def _reason(self) -> str:
        """Why the worker failed: its own words if it had any, else how it ended."""
        text = self._stderr_text()
        said = [ln[len(ERROR_PREFIX):] for ln in text.splitlines() if ln.startswith(ERROR_PREFIX)]
        if said:
            return said[-1]
        if int(self.shared.ctl.state) == 4:  # VK_XSK_FAILED
            return self.shared.error()
        rc = self.proc.returncode if self.proc else None
        if rc is not None and rc < 0:
            sig = signal.Signals(-rc).name
            return f"killed by {sig}" + (" (a crash in the VNF or the runtime)" if sig in ("SIGSEGV", "SIGBUS",
                                                                                         "SIGFPE", "SIGILL",
                                                                                         "SIGABRT") else "")
        tail = text.strip().splitlines()[-5:]
        return f"exited with status {rc}" + (": " + " | ".join(tail) if tail else "")

    def start(self, so_path: Path, xskmap_fd: int) -> None:
        o, fn = self.fn.options, self.fn
        cpu = o.cpus[fn.queue_ids.index(self.queue)] if o.cpus is not None else None
        config = {"queue": self.queue, "frames": o.frames, "frame_size": o.frame_size, "fill_size": o.fill_size,
                  "comp_size": o.comp_size, "rx_size": o.rx_size, "tx_size": o.tx_size,
                  "busy_poll": int(o.mode == "busy-poll"), "zerocopy": ZEROCOPY[o.zerocopy],
                  "chain": int(fn.chain is not None), "xskmap_fd": xskmap_fd,
                  "chain_dmac": list(fn.chain.dmac) if fn.chain else [0] * 6,
                  "chain_smac": list(fn.chain.smac) if fn.chain else [0] * 6}
        spec = {"so": str(so_path), "shm_fd": self.shared.fd, "shm_addr": self.shared.addr,
                "shm_len": self.shared.worker_size, "ns": fn.ns, "ifname": fn.ifname, "cpu": cpu, "config": config}
        self.shared.ctl.batch = o.batch
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-m", "datapath.xsk.worker", json.dumps(spec)],
                                     pass_fds=(self.shared.fd, xskmap_fd), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self._stderr, cwd=Path(__file__).parents[2])
        deadline = time.monotonic() + STARTUP_LIMIT_S
        while int(self.shared.ctl.state) != 1:  # VK_XSK_RUNNING
            if self.proc.poll() is not None:
                raise XskError(f"the AF_XDP worker for {self.where} failed: {self._reason()}")
            if time.monotonic() > deadline:
                self._kill()
                raise XskError(f"the AF_XDP worker for {self.where} did not start within {STARTUP_LIMIT_S:.0f} s")
            time.sleep(0.005)
        self.mode = "zero-copy" if self.shared.ctl.zerocopy else "copy"
        log.info("%s: AF_XDP socket bound in %s mode, %s, batch %d%s (worker pid %d)", self.where, self.mode,
                 o.mode, o.batch, f", CPU {cpu}" if cpu is not None else "", self.proc.pid)
        if o.zerocopy == "try" and not self.shared.ctl.zerocopy:
            log.info("%s: the driver has no AF_XDP zero-copy; copy mode it is", self.where)
        self._watcher = threading.Thread(target=self._watch, name=f"xsk-watch-q{self.queue}", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        assert self.proc is not None
        self.proc.wait()
        if self._stopping and self.proc.returncode == 0:
            return
        if self.proc.returncode == 0:  # SIGTERM/SIGINT from someone else: it drained and left
            self.failure = "stopped on its own (a signal not from this process; drained cleanly, status 0)"
            log.warning("the AF_XDP worker for %s %s; its queue's frames go to the stack now", self.where,
                        self.failure)
            return
        self.failure = self._reason()
        if not self._stopping:
            log.error("the AF_XDP worker for %s died: %s; its queue's frames go to the stack now",
                      self.where, self.failure)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        """SIGTERM: the worker stops RX, drains and exits; killed if it does not in time."""
        if self.proc is None:
            return
        self._stopping = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_LIMIT_S)
            except subprocess.TimeoutExpired:
                self._kill()
                self.failure = f"did not stop within {STOP_LIMIT_S:.0f} s of SIGTERM: killed"
        if self._watcher is not None:
            self._watcher.join()

    def close(self) -> None:
        self.stop()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        self.shared.close()


class XskFunction:
    """A VNF (folder with vnf.yaml and fastpath.c) in user space on ``ifname``'s queues."""

    def __init__(self, folder: str | Path, ns: str | None, ifname: str, *, queues: tuple[int, ...] = (0,),
                 config: dict[str, Any] | None = None, options: XskOptions | None = None,
                 xdp_mode: str = "auto", chain: ChainPort | None = None) -> None:
        self.folder, self.ns, self.ifname = Path(folder), ns, ifname
        self.options = options or XskOptions()
        self.queue_ids = tuple(queues)
        self.xdp_mode, self.chain = xdp_mode, chain
        if not self.queue_ids or len(set(self.queue_ids)) != len(self.queue_ids):
            raise XskError(f"queues {list(self.queue_ids)}: give each queue once, at least one")
        self.options.check(len(self.queue_ids))
        try:
            have = rx_queues(ns, ifname)
        except LookupError as exc:
            raise XskError(str(exc)) from None
        missing = [q for q in self.queue_ids if not 0 <= q < have]
        if missing:
            raise XskError(f"{ifname}" + (f" in netns {ns}" if ns else "") + f" has {have} RX queue(s) "
                           f"(0..{have - 1}); there is no queue {', '.join(map(str, missing))}")
        self.descriptor = load_descriptor(self.folder)
        self.intro = introspect(self.folder)
        self.so_path = build_xsk(self.folder / "fastpath.c")
        self.module = load_native(self.so_path)
        infos = {**self.intro.tables, **self.intro.internal}
        self.queues: list[XskQueue] = []
        self.redirect: BpfObject | None = None
        self.attachment: Attachment | None = None
        try:
            for q in self.queue_ids:
                shared = SharedTables(self.module, f"{self.folder.name}-q{q}", infos, self.options.table_memory)
                self.queues.append(XskQueue(self, q, shared))
            self.configure(config or {})
        except BaseException:
            self.close()
            raise

    # ---- tables and counters, as KernelInstance has them ----------------------------------------
    @property
    def tables(self) -> dict[str, NativeTable]:
        """Queue 0's VNF tables (each queue has its own: ``queues[i].tables``)."""
        return {n: t for n, t in self.queues[0].tables.items() if n in self.intro.tables}

    def configure(self, overrides: dict[str, Any]) -> None:
        """Descriptor defaults plus ``overrides``, range-checked, written to every queue's config."""
        rec = encode_config(self.intro.config_dtype, config_values(self.descriptor, overrides))
        if rec is not None:
            for q in self.queues:
                q.tables["vk_config"][0] = rec

    def counters(self) -> dict[str, tuple[int, int]]:
        """The VNF's counters summed over queues: (packets, bytes) by name."""
        out: dict[str, tuple[int, int]] = {}
        for q in self.queues:
            for name, (p, b) in q.counters().items():
                op, ob = out.get(name, (0, 0))
                out[name] = (op + p, ob + b)
        return out

    def stats(self) -> dict[str, int]:
        """The runtime's counters summed over queues."""
        out: dict[str, int] = {}
        for q in self.queues:
            for name, v in q.stats().items():
                out[name] = out.get(name, 0) + v
        return out

    def redirect_counters(self) -> dict[str, int]:
        """The XDP side: frames sent to a socket, passed for want of one, passed without metadata."""
        if self.redirect is None:
            return dict.fromkeys(XSK_COUNTERS, 0)
        packets = self.redirect.map("xsk_counters").as_array()["packets"]
        return {n: int(packets[i]) for i, n in enumerate(XSK_COUNTERS)}

    # ---- running ------------------------------------------------------------------------------
    def start(self) -> None:
        """Attach the redirect program and start every queue's worker. On failure nothing
        stays attached or running."""
        if self.attachment is not None:
            raise XskError(f"{self.folder.name} on {self.ifname} is already started")
        try:
            self.redirect = load(REDIRECT_PROG)
            prog = self.redirect.program("xsk_redirect_chain" if self.chain else "xsk_redirect")
            try:
                self.attachment = attach_xdp(prog, self.ifname, ns=self.ns, mode=self.xdp_mode)
            except AttachError as exc:
                raise XskError(f"{self.ifname}: cannot put the AF_XDP redirect program at XDP: {exc}") from None
            if self.attachment.mode == "generic":
                log.info("%s: no native XDP in its driver; generic XDP (slow), AF_XDP in copy mode", self.ifname)
            xskmap_fd = self.redirect.map("xsks").fd
            for q in self.queues:
                q.start(self.so_path, xskmap_fd)
        except BaseException:
            self.stop()
            raise

    def set_batch(self, batch: int) -> None:
        """Frames per VNF call from the next batch on, every queue."""
        if not 1 <= batch <= 256:
            raise XskError(f"batch {batch}: must be 1..256 frames")
        for q in self.queues:
            q.shared.ctl.batch = batch

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Every worker between batches, taking no frames (they wait on the RX ring): tables
        can be changed as one step."""
        for q in self.queues:
            q.shared.ctl.pause = 1
        try:
            deadline = time.monotonic() + STARTUP_LIMIT_S
            for q in self.queues:
                while q.alive() and not q.shared.ctl.paused:
                    if time.monotonic() > deadline:
                        raise XskError(f"the AF_XDP worker for {q.where} did not pause")
                    time.sleep(0.0005)
            yield
        finally:
            for q in self.queues:
                q.shared.ctl.pause = 0

    def failures(self) -> dict[int, str]:
        """Queues whose worker died on its own (or would not stop), with the reason."""
        return {q.queue: q.failure for q in self.queues if q.failure}

    def check(self) -> None:
        """Raise XskWorkerDied if a worker is gone that should be running."""
        dead = {q.queue: q.failure or q._reason() for q in self.queues if q.proc is not None and not q.alive()
                and not q._stopping}
        if dead:
            raise XskWorkerDied("; ".join(f"the AF_XDP worker for {self.ifname} queue {q} died: {why}"
                                          for q, why in dead.items()))

    def stop(self) -> dict[str, int]:
        """Stop every worker (each drains first), detach, unload; the final runtime counters."""
        for q in self.queues:
            q.stop()
        if self.attachment is not None:
            self.attachment.detach()
            self.attachment = None
        if self.redirect is not None:
            final = self.redirect_counters()
            self.redirect.close()
            self.redirect = None
            log.debug("%s: redirect program counters at stop: %s", self.ifname, final)
        return self.stats()

    def close(self) -> None:
        self.stop()
        for q in self.queues:
            q.close()
        self.queues = []

    def __enter__(self) -> XskFunction:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
