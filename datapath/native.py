"""The native executor's build: a VNF's fastpath.c compiled by cffi into a shared object.

The same C source that clang turns into BPF is compiled here for the host, in one
translation unit with ``datapath/native/vk_runtime.c`` (the entry point and verdict
bookkeeping), linked with ``vk_tables.c`` (tables with the kernel's semantics). The
result is an API-mode cffi extension, cached by a hash of everything that went into it.

A ``Runtime`` adds C of its own to the extension (the AF_XDP runtime, ``datapath/xsk``): more
sources compiled and linked beside the VNF, and the entry points they add to the cdef.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import cffi

from datapath.compiler import INCLUDE_DIR, cache_dir, parse_diagnostics
from datapath.errors import CompileError
from datapath.native_tables import NATIVE_TABLES_CDEF

NATIVE_DIR = Path(__file__).parent / "native"
RUNTIME_HEADER = NATIVE_DIR / "vk_runtime.h"
RUNTIME = NATIVE_DIR / "vk_runtime.c"
TABLES = NATIVE_DIR / "vk_tables.c"
CFLAGS = ["-O2", "-std=gnu11", "-fno-strict-aliasing", "-Wall", "-Wno-unused-function", "-Wno-address-of-packed-member"]

# The runtime's entry points (vk_runtime.c) on top of the tables' whole header.
CDEF = NATIVE_TABLES_CDEF + """
struct vk_result { uint32_t verdict; uint32_t port; uint32_t offset; uint32_t len; };

int vk_native_init(uint32_t ncpus);
int vk_native_table_count(void);
struct vk_table *vk_native_table(int i);
void vk_native_set_cpu(uint32_t cpu);
void vk_native_run(uint8_t *buf, uint32_t offset, uint32_t len, struct vk_result *res);
void vk_native_run_batch(uint8_t *buf, uint32_t slot_size, uint32_t n, const uint32_t *offsets,
                         const uint32_t *lens, struct vk_result *res);
void vk_native_run_vec(uint8_t *const *bufs, const uint32_t *offsets, const uint32_t *lens, uint32_t n,
                       struct vk_result *res);
"""


@dataclass(frozen=True)
class Runtime:
    """C built into a VNF's extension beside ``vk_runtime.c``: ``sources`` are compiled as
    their own translation units (they reach the VNF only through ``vk_runtime.h``), with
    ``include_dirs``; ``cdef`` declares what they add for Python, from ``headers`` (which the
    extension's own translation unit includes, after the VNF)."""

    name: str
    sources: tuple[Path, ...]
    headers: tuple[Path, ...]
    cdef: str
    include_dirs: tuple[Path, ...] = ()


def _cc() -> list[str]:
    return (sysconfig.get_config_var("CC") or "cc").split()


def _dependencies(source: Path, include_dirs: list[Path]) -> list[Path]:
    """Every file the preprocessor reads for the native build (for the cache key)."""
    flags = [f"-I{d}" for d in include_dirs]
    res = subprocess.run([*_cc(), *flags, "-M", str(source)], capture_output=True, text=True)
    if res.returncode != 0:
        return [source]
    return [Path(w) for w in res.stdout.replace("\\\n", " ").split(":", 1)[-1].split()]


def build_native(source: str | os.PathLike[str], include_dirs: tuple[str | os.PathLike[str], ...] = (),
                 runtime: Runtime | None = None) -> Path:
    """Compile ``source`` (a VNF's fastpath.c) into a cffi extension, with ``runtime``'s C
    when given; return the .so path.

    Raises CompileError with the compiler's ``file:line`` diagnostics.
    """
    src = Path(source).resolve()
    if not src.is_file():
        raise CompileError(str(source), [], f"{source}: no such file")
    incs = [src.parent, *(Path(d).resolve() for d in include_dirs), INCLUDE_DIR]
    extra = runtime or Runtime("", (), (), "")
    cdef = CDEF + extra.cdef
    rt_incs = [NATIVE_DIR, *extra.include_dirs, INCLUDE_DIR]
    h = hashlib.sha256()
    cc_version = subprocess.run([*_cc(), "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    for part in (cdef, " ".join(CFLAGS), cffi.__version__, sys.version, *cc_version):
        h.update(part.encode())
    rt_deps = [d for s in extra.sources for d in _dependencies(s, rt_incs)]
    for dep in sorted({*_dependencies(src, incs), *rt_deps, *extra.sources, *extra.headers, RUNTIME,
                       RUNTIME_HEADER, TABLES, Path(__file__)}):
        h.update(str(dep).encode())
        h.update(dep.read_bytes() if dep.exists() else b"<missing>")
    digest = h.hexdigest()[:16]
    modname = f"_vnf_{''.join(c if c.isalnum() else '_' for c in src.parent.name)}{extra.name}_{digest}"
    outdir = cache_dir().parent / "native" / digest
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    target = outdir / f"{modname}{suffix}"
    if target.exists():
        return target
    outdir.mkdir(parents=True, exist_ok=True)
    ffi = cffi.FFI()
    ffi.cdef(cdef)
    # One search path for every translation unit: the VNF's, then the runtime's (vk_runtime.h).
    preamble = "".join(f'#include "{f}"\n' for f in (src, RUNTIME, *extra.headers))
    ffi.set_source(modname, preamble,
                   sources=[str(TABLES), *map(str, extra.sources)],
                   include_dirs=[str(d) for d in dict.fromkeys([*incs, *rt_incs])], extra_compile_args=CFLAGS)
    with tempfile.TemporaryDirectory(dir=outdir) as tmp:
        try:
            built = ffi.compile(tmpdir=tmp, verbose=False)
        except Exception as exc:  # noqa: BLE001 - distutils raises CompileError/LinkError of its own
            raise _compile_error(src, incs, exc) from None
        os.replace(built, target)  # atomic: a concurrent build never sees half a module
    return target


def _compile_error(src: Path, incs: list[Path], exc: Exception) -> CompileError:
    """Re-run the compiler on the VNF alone to get its diagnostics (distutils only says
    'command failed')."""
    flags = [f"-I{d}" for d in incs]
    res = subprocess.run([*_cc(), *CFLAGS, *flags, "-fsyntax-only", "-include", str(src), str(RUNTIME)],
                         capture_output=True, text=True)
    output = res.stderr or str(exc)
    return CompileError(str(src), parse_diagnostics(output), output)


def load_native(so_path: Path) -> ModuleType:
    """Import a built extension (once per process: its tables are process-wide state)."""
    name = so_path.name.split(".")[0]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, so_path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[name] = module
    return module
