"""clang to BPF: diagnostics with file:line, and a cache keyed by what went into the build."""

from __future__ import annotations

from pathlib import Path

import pytest

from datapath import compiler
from datapath.compiler import compile_bpf
from datapath.errors import CompileError, EnvironmentProblem

pytestmark = pytest.mark.kernel

GOOD = """#include <vnfkit/bpf.h>
#include "local.h"
SEC("xdp") int prog(struct xdp_md *ctx) { return VERDICT; }
char LICENSE[] SEC("license") = "GPL";
"""


def test_compile_error_carries_file_and_line(tmp_path: Path) -> None:
    src = tmp_path / "broken.c"
    src.write_text('#include <vnfkit/bpf.h>\nSEC("xdp") int prog(struct xdp_md *ctx)\n{\n    return XDP_PASS\n}\n')
    with pytest.raises(CompileError) as info:
        compile_bpf(src)
    diag = [d for d in info.value.diagnostics if d.severity == "error"][0]
    assert diag.file.endswith("broken.c")
    assert diag.line == 4
    assert "expected ';'" in diag.message
    assert f"{src}:4:" in str(info.value)


def test_missing_source_is_named(tmp_path: Path) -> None:
    with pytest.raises(CompileError, match="nope.c"):
        compile_bpf(tmp_path / "nope.c")


def test_cache_hits_and_rebuilds_when_a_header_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VNFKIT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "local.h").write_text("#define VERDICT XDP_PASS\n")
    src = tmp_path / "prog.c"
    src.write_text(GOOD)
    first = compile_bpf(src)
    mtime = first.stat().st_mtime_ns
    again = compile_bpf(src)
    assert again == first and again.stat().st_mtime_ns == mtime  # cache hit, not rebuilt
    (tmp_path / "local.h").write_text("#define VERDICT XDP_DROP\n")
    changed = compile_bpf(src)
    assert changed != first  # a header edit is a new key
    assert compile_bpf(src, defines={"EXTRA": "1"}) not in (first, changed)  # so are flags


def test_missing_clang_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VNFKIT_CLANG", str(tmp_path / "no-clang"))
    src = tmp_path / "prog.c"
    src.write_text(GOOD)
    with pytest.raises(EnvironmentProblem, match="clang"):
        compiler.compile_bpf(src)
