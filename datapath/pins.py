"""The project's bpffs folder: programs, maps and links pinned so they outlive a process.

Layout: ``<bpffs>/vnfkit/<group>/{progs,maps,links}/<name>``. A group is one unit of
ownership (a test run, a chain segment, the demo); removing it detaches its links and
unpins everything, leaving nothing of the project's behind. bpffs is one per mount, not
per network namespace, so emulated hosts sharing a machine each get their own group.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from datapath.attach import Attachment
from datapath.errors import EnvironmentProblem, PinError
from datapath.libbpf import ffi, lib
from datapath.maps import Map
from datapath.objects import BpfObject, Program

_NAME = re.compile(r"^[A-Za-z0-9_.@:-]{1,200}$")
KINDS = ("progs", "maps", "links")


def bpffs_root() -> Path:
    return Path(os.environ.get("VNFKIT_BPFFS", "/sys/fs/bpf"))


def project_root() -> Path:
    return bpffs_root() / "vnfkit"


def ensure_bpffs() -> Path:
    """The bpffs mount point, or EnvironmentProblem saying how to mount it."""
    root = bpffs_root()
    real = os.path.realpath(root)
    with open("/proc/self/mounts") as f:
        mounted = any(parts[1] == real and parts[2] == "bpf" for parts in (ln.split() for ln in f))
    if not mounted:
        raise EnvironmentProblem(f"bpffs is not mounted at {root}: run `mount -t bpf bpf {root}` "
                                 "(`make setup` does it)")
    return root


def _check_name(name: str, what: str) -> str:
    if not _NAME.match(name):
        raise PinError(f"{what} name {name!r} is not usable as a pin name (letters, digits, _ . @ : -)")
    return name


class PinGroup:
    """One folder of pins under ``<bpffs>/vnfkit/``."""

    def __init__(self, group: str) -> None:
        self.name = _check_name(group, "pin group")
        self.path = project_root() / group

    def __repr__(self) -> str:
        return f"<PinGroup {self.path}>"

    def _slot(self, kind: str, name: str) -> Path:
        ensure_bpffs()
        folder = self.path / kind
        folder.mkdir(parents=True, exist_ok=True)
        return folder / _check_name(name, kind[:-1])

    def _pin_fd(self, fd: int, kind: str, name: str) -> Path:
        path = self._slot(kind, name)
        if lib.bpf_obj_pin(fd, os.fsencode(path)) < 0:
            raise PinError(f"pinning {kind[:-1]} '{name}' at {path}: {os.strerror(ffi.errno)}")
        return path

    # ---- pinning ----
    def pin_program(self, prog: Program, name: str | None = None) -> Path:
        return self._pin_fd(prog.fd, "progs", name or prog.name)

    def pin_map(self, m: Map, name: str | None = None) -> Path:
        return self._pin_fd(m.fd, "maps", name or m.name)

    def pin_object(self, obj: BpfObject | PinnedObject, prefix: str | None = None) -> None:
        """Pin every program and map of a loaded object under their own names, or as
        ``<prefix>@<name>`` (several objects in one group; ``open_object(prefix)`` re-opens them).
        bpffs refuses names with a dot: an internal map's ``x.rodata`` is pinned as ``x_rodata``."""
        at = f"{_check_name(prefix, 'object prefix')}@" if prefix else ""
        for name, prog in obj.programs.items():
            self.pin_program(prog, at + name.replace(".", "_"))
        for name, m in obj.maps.items():
            self.pin_map(m, at + name.replace(".", "_"))

    def open_object(self, prefix: str) -> PinnedObject:
        """The programs and maps pinned by ``pin_object(obj, prefix)``, re-opened (another
        process may have pinned them): an object to use like the loaded one."""
        at = f"{prefix}@"
        progs = {n[len(at):]: self.program(n) for n in self.names("progs") if n.startswith(at)}
        maps = {n[len(at):]: Map.from_fd(self._get("maps", n), owns_fd=True, name=n[len(at):])
                for n in self.names("maps") if n.startswith(at)}
        if not progs and not maps:
            raise PinError(f"nothing pinned as '{prefix}' in {self.path}")
        return PinnedObject(self.path / prefix, progs, maps)

    def has_object(self, prefix: str) -> bool:
        return any(n.startswith(f"{prefix}@") for kind in ("progs", "maps") for n in self.names(kind))

    def unpin_object(self, prefix: str) -> None:
        """Remove the pins of ``pin_object(obj, prefix)``; what nothing else holds is freed."""
        for kind in ("progs", "maps"):
            for n in self.names(kind):
                if n.startswith(f"{prefix}@"):
                    self.unpin(kind, n)

    def unpin(self, kind: str, name: str) -> None:
        try:
            os.unlink(self.path / kind / name)
        except FileNotFoundError:
            pass

    def pin_link(self, att: Attachment, name: str) -> Path:
        path = self._slot("links", name)
        att.pin(path)
        return path

    # ---- re-opening ----
    def _get(self, kind: str, name: str) -> int:
        path = self.path / kind / name
        fd = lib.bpf_obj_get(os.fsencode(path))
        if fd < 0:
            raise PinError(f"nothing pinned at {path}: {os.strerror(ffi.errno)}")
        return fd

    def program(self, name: str) -> Program:
        return Program(self._get("progs", name), owns_fd=True)

    def map(self, name: str) -> Map:
        return Map.from_fd(self._get("maps", name), owns_fd=True, name=name)

    def link(self, name: str) -> Attachment:
        return Attachment.from_pin(self.path / "links" / name)

    def names(self, kind: str) -> list[str]:
        folder = self.path / kind
        return sorted(os.listdir(folder)) if folder.is_dir() else []

    def exists(self) -> bool:
        return self.path.is_dir()

    # ---- removal ----
    def remove(self) -> None:
        """Detach every pinned link, unpin everything, remove the folder. Idempotent."""
        if not self.path.exists():
            return
        for name in self.names("links"):
            try:
                self.link(name).detach()
            except PinError:
                pass
        shutil.rmtree(self.path, ignore_errors=True)  # unlinking a pin releases its object
        if self.path.exists():
            raise PinError(f"could not remove {self.path}")
        try:
            self.path.parent.rmdir()  # the last group takes the project folder with it
        except OSError:
            pass  # other groups remain


class PinnedObject:
    """Programs and maps re-opened from pins, used where a loaded ``BpfObject`` would be (a
    restarted agent adopting the data path its predecessor left running)."""

    def __init__(self, path: Path, programs: dict[str, Program], maps: dict[str, Map]) -> None:
        self.path = path
        self.programs = programs
        self.maps = maps

    def program(self, name: str) -> Program:
        try:
            return self.programs[name]
        except KeyError:
            raise PinError(f"{self.path}: no program '{name}' pinned (pinned: {sorted(self.programs)})") from None

    def map(self, name: str) -> Map:
        try:
            return self.maps[name]
        except KeyError:
            raise PinError(f"{self.path}: no map '{name}' pinned (pinned: {sorted(self.maps)})") from None

    def close(self) -> None:
        """Close this process's fds; the pinned objects stay."""
        for m in self.maps.values():
            m.close()
        for p in self.programs.values():
            p.close()

    def __enter__(self) -> PinnedObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def groups() -> Iterator[PinGroup]:
    root = project_root()
    if root.is_dir():
        for name in sorted(os.listdir(root)):
            yield PinGroup(name)


def list_attachments() -> list[dict]:
    """Every link the project has pinned on this host, with what it attaches where."""
    out = []
    for group in groups():
        for name in group.names("links"):
            try:
                att = group.link(name)
            except PinError as exc:
                out.append({"group": group.name, "link": name, "error": str(exc)})
                continue
            out.append({"group": group.name, "link": name, "hook": att.hook, "ifindex": att.ifindex,
                        "program": att.prog_name, "prog_id": att.prog_id, "link_id": att.link_id,
                        "live": att.ifindex != 0})
            att.close()
    return out
