"""``python -m datapath.xsk.worker SPEC``: one AF_XDP worker, started by ``datapath.xsk.service``.

SPEC is a JSON object: the extension to load (``so``), the shared mapping (``shm_fd``,
``shm_addr``, ``shm_len``; the fd is inherited), the netns and interface, the CPU to pin to,
and ``config`` (the fields of ``struct vk_xsk_config`` but ``ifindex``, resolved here, inside
the netns). Everything after the set-up runs in C (``vk_xsk_run``) until SIGTERM/SIGINT or the
parent's stop word; the exit status is 0 after a clean drain. Errors go to the shared header
(``error``) when it is mapped, and to stderr as one ``vnfkit-xsk-error:`` line in any case.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

ERROR_PREFIX = "vnfkit-xsk-error: "


def _fail(message: str, code: int = 2) -> int:
    print(ERROR_PREFIX + message, file=sys.stderr, flush=True)
    return code


def run(spec: dict[str, Any]) -> int:
    """Set up from ``spec`` and run the C loop; the process's exit status."""
    from datapath import netns
    from datapath.native import load_native

    if spec.get("cpu") is not None:
        os.sched_setaffinity(0, {int(spec["cpu"])})
    module = load_native(Path(spec["so"]))
    ffi, lib = module.ffi, module.lib
    ptr = lib.vk_xsk_shm_map(spec["shm_fd"], spec["shm_len"], spec["shm_addr"])
    if ptr == ffi.NULL:
        return _fail(f"mapping the shared tables at {spec['shm_addr']:#x} failed: {os.strerror(ffi.errno)}")
    os.close(spec["shm_fd"])  # the mapping holds the memory
    shm = ffi.cast("struct vk_xsk_shm *", ptr)
    err = lib.vk_xsk_shm_attach(shm)
    if err:
        return _fail(f"the shared mapping does not hold this VNF's tables: {os.strerror(-err)}")
    lib.vk_native_set_cpu(0)  # this worker is CPU slot 0 of its own tables
    cfg = ffi.new("struct vk_xsk_config *", spec["config"])
    try:
        with netns.enter(spec.get("ns")):
            # The socket is made inside vk_xsk_run, in this thread's netns: stay in it.
            cfg.ifindex = netns.ifindex(None, spec["ifname"])
            err = lib.vk_xsk_run(shm, cfg)
    except (LookupError, OSError) as exc:
        return _fail(str(exc))
    if err:
        return _fail(ffi.string(shm.error).decode(errors="replace"))
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        return _fail("usage: python -m datapath.xsk.worker SPEC_JSON")
    return run(json.loads(argv[0]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
