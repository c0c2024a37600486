"""The errors the engine raises. Each names the thing at fault (file, program, map, interface)."""

from __future__ import annotations

from dataclasses import dataclass, field


class VnfkitError(Exception):
    """Base of every error vnfkit raises on purpose."""


class EnvironmentProblem(VnfkitError):
    """The host lacks something the engine needs (clang, a mounted bpffs, root)."""


@dataclass
class Diagnostic:
    """One compiler message: ``file:line:col: severity: message``."""

    file: str
    line: int
    column: int
    severity: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.severity}: {self.message}"


class CompileError(VnfkitError):
    """clang refused a source file; ``diagnostics`` holds its ``file:line`` messages."""

    def __init__(self, source: str, diagnostics: list[Diagnostic], output: str) -> None:
        self.source = source
        self.diagnostics = diagnostics
        self.output = output
        errors = [d for d in diagnostics if d.severity in ("error", "fatal error")] or diagnostics
        lines = "\n".join(f"  {d}" for d in errors) or output.strip()
        super().__init__(f"compiling {source} failed:\n{lines}")


@dataclass
class VerifierReport:
    """What matters in a verifier log: the complaint, what led to it and where in the C source."""

    program: str
    message: str
    instructions: list[str] = field(default_factory=list)
    source_line: str | None = None  # "file.c:12: <C text>" from BTF line info
    log: str = ""


class VerifierError(VnfkitError):
    """The kernel verifier rejected a program. ``report.log`` keeps the full log for --verbose."""

    def __init__(self, obj: str, report: VerifierReport, errno_name: str) -> None:
        self.report = report
        self.errno_name = errno_name
        parts = [f"verifier rejected program '{report.program}' in {obj} ({errno_name}): {report.message}"]
        if report.source_line:
            parts.append(f"  at {report.source_line}")
        if report.instructions:
            parts.append("  last instructions:")
            parts.extend(f"    {insn}" for insn in report.instructions)
        super().__init__("\n".join(parts))

    @property
    def log(self) -> str:
        return self.report.log


class BpfError(VnfkitError):
    """A bpf() or netlink operation failed; ``errno`` is the positive errno."""

    def __init__(self, what: str, errno: int, detail: str = "") -> None:
        import os

        self.errno = errno
        self.what = what
        reason = os.strerror(errno) if errno else "unknown error"
        super().__init__(f"{what}: {reason}" + (f" ({detail})" if detail else ""))


class LoadError(VnfkitError):
    """libbpf could not open or load an object for a reason other than the verifier."""


class AttachError(VnfkitError):
    """A program could not be attached to (or detached from) an interface."""


class MapError(VnfkitError):
    """Wrong key or value for a map, or a failed map operation."""


class PinError(VnfkitError):
    """Something under the project's bpffs folder is missing, foreign or unreadable."""
