"""C to BPF object files with clang, cached by what actually went into the build.

The cache key hashes the source, every header the preprocessor pulled in (from ``clang -M``),
the flags and the compiler's version, so an edit to any included header rebuilds and
nothing else does.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import subprocess
import sysconfig
import tempfile
from pathlib import Path

from datapath.errors import CompileError, Diagnostic, EnvironmentProblem

INCLUDE_DIR = Path(__file__).parent / "include"
PROGS_DIR = Path(__file__).parent / "progs"
_DIAG = re.compile(
    r"^(?P<file>[^:\n]+):(?P<line>\d+):(?P<col>\d+): (?P<sev>fatal error|error|warning|note): (?P<msg>.*)$"
)


def cache_dir() -> Path:
    root = os.environ.get("VNFKIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "vnfkit")
    return Path(root) / "bpf"


def clang() -> str:
    """The clang to use: $VNFKIT_CLANG, else the one on PATH."""
    wanted = os.environ.get("VNFKIT_CLANG", "clang")
    path = shutil.which(wanted)
    if not path:
        raise EnvironmentProblem(f"clang not found ({wanted!r}): install Debian's clang (`make setup` does it)")
    return path


def clang_version() -> str:
    return _version_of(clang())


@functools.cache
def _version_of(path: str) -> str:
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=True).stdout
    return out.splitlines()[0]


def bpf_flags(include_dirs: tuple[Path, ...] = (), defines: dict[str, str] | None = None) -> list[str]:
    """The flags every BPF build uses: BTF (-g) for typed maps and verifier line info, -O2
    because the verifier cannot follow unoptimised stack traffic."""
    flags = ["-target", "bpf", "-O2", "-g", "-Wall", "-Werror=implicit-function-declaration"]
    multiarch = sysconfig.get_config_var("MULTIARCH")  # asm/types.h lives under the multiarch dir
    if multiarch:
        flags += ["-idirafter", f"/usr/include/{multiarch}"]
    for d in (*include_dirs, INCLUDE_DIR):
        flags += ["-I", str(d)]
    for name, value in sorted((defines or {}).items()):
        flags.append(f"-D{name}={value}")
    return flags


def _dependencies(source: Path, flags: list[str]) -> list[Path]:
    """Files the build reads, from the preprocessor; empty if preprocessing itself fails
    (then the real compile reports the error)."""
    res = subprocess.run([clang(), *flags, "-M", str(source)], capture_output=True, text=True)
    if res.returncode != 0:
        return []
    words = res.stdout.replace("\\\n", " ").split(":", 1)[-1].split()
    return [Path(w) for w in words]


def parse_diagnostics(output: str) -> list[Diagnostic]:
    diags = []
    for line in output.splitlines():
        m = _DIAG.match(line)
        if m:
            diags.append(Diagnostic(m["file"], int(m["line"]), int(m["col"]), m["sev"], m["msg"]))
    return diags


def compile_bpf(
    source: str | os.PathLike[str],
    include_dirs: tuple[str | os.PathLike[str], ...] = (),
    defines: dict[str, str] | None = None,
    *,
    use_cache: bool = True,
) -> Path:
    """Compile one C file to a BPF object; return the cached ``.o`` path.

    Raises CompileError with clang's ``file:line:col`` diagnostics when clang refuses it.
    """
    src = Path(source).resolve()
    if not src.is_file():
        raise CompileError(str(source), [], f"{source}: no such file")
    flags = bpf_flags(tuple(Path(d).resolve() for d in include_dirs), defines)
    deps = _dependencies(src, flags) or [src]
    h = hashlib.sha256()
    h.update(clang_version().encode())
    h.update("\0".join(flags).encode())
    for dep in sorted(set(deps)):
        h.update(str(dep).encode())
        try:
            h.update(dep.read_bytes())
        except OSError:
            h.update(b"<missing>")
    out = cache_dir() / f"{src.stem}-{h.hexdigest()[:20]}.o"
    if use_cache and out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".o", dir=out.parent)
    os.close(fd)
    try:
        res = subprocess.run([clang(), *flags, "-c", str(src), "-o", tmp], capture_output=True, text=True)
        if res.returncode != 0:
            raise CompileError(str(src), parse_diagnostics(res.stderr), res.stderr)
        os.replace(tmp, out)  # atomic: a concurrent build never sees half an object
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out
