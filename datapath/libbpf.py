"""The loaded libbpf binding plus the two things every caller needs: errno handling and
capture of libbpf's own log (which carries the verifier log when a load fails)."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

from datapath.errors import BpfError, EnvironmentProblem

try:
    from datapath._libbpf import ffi, lib
except ImportError as exc:  # the extension is built by `pip install` (setup.py cffi_modules)
    raise EnvironmentProblem(
        "the libbpf binding datapath._libbpf is not built; run `make setup` (or `pip install -e .`)"
    ) from exc

log = logging.getLogger("vnfkit.libbpf")
_captures = threading.local()


@ffi.def_extern()
def vk_on_libbpf_log(level: int, msg) -> None:  # noqa: ANN001 - cffi char*
    text = ffi.string(msg).decode(errors="replace")
    stack = getattr(_captures, "stack", None)
    if stack and level == lib.LIBBPF_WARN:  # INFO/DEBUG chatter would bury the reason
        stack[-1].append(text)
    elif level == lib.LIBBPF_WARN:
        log.debug("%s", text.rstrip())


lib.vk_capture_libbpf_log()


@contextlib.contextmanager
def captured_log() -> Iterator[list[str]]:
    """Collect libbpf's warnings (where its reasons for a failure are) on this thread."""
    stack = getattr(_captures, "stack", None)
    if stack is None:
        stack = _captures.stack = []
    lines: list[str] = []
    stack.append(lines)
    try:
        yield lines
    finally:
        stack.pop()


def check(ret: int, what: str, detail: str = "") -> int:
    """Raise BpfError if a libbpf call returned a negative errno (libbpf 1.x convention)."""
    if ret < 0:
        raise BpfError(what, -ret, detail)
    return ret


def check_ptr(ptr, what: str):  # noqa: ANN001, ANN201 - cffi pointer
    """libbpf 1.x returns NULL and sets errno for pointer-returning calls."""
    if ptr == ffi.NULL:
        raise BpfError(what, ffi.errno or 22)
    return ptr


def num_possible_cpus() -> int:
    return check(lib.libbpf_num_possible_cpus(), "counting possible CPUs")
