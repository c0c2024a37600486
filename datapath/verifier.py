"""Reading a verifier log: the complaint, the instructions that led to it, and the C line.

Since kernel 6.x the verifier interleaves BTF line info as ``; <C text> @ file.c:LINE`` before
the instructions of each source line, so the last such line before the complaint is where
in the C source the rejection happened.
"""

from __future__ import annotations

import re

from datapath.errors import VerifierReport

_INSN = re.compile(r"^\d+: \([0-9a-f]{2}\)")
_SOURCE = re.compile(r"^; (?P<text>.*?)(?: @ (?P<file>\S+):(?P<line>\d+))?$")
_TRAILER = re.compile(r"^(processed \d+ insns|verification time|stack depth|-- END PROG LOAD LOG --)")


def parse_log(program: str, log: str, keep_insns: int = 8) -> VerifierReport:
    """Split a verifier log into message, last instructions and source line."""
    lines = [ln.rstrip() for ln in log.splitlines()]
    while lines and (not lines[-1] or _TRAILER.match(lines[-1])):
        lines.pop()
    # The complaint: trailing lines that are neither instructions nor source annotations.
    message: list[str] = []
    while lines and not _INSN.match(lines[-1]) and not lines[-1].startswith(";"):
        message.insert(0, lines.pop())
        if len(message) >= 6:
            break
    insns: list[str] = []
    source_line = None
    for ln in reversed(lines):
        if _INSN.match(ln) and len(insns) < keep_insns:
            insns.insert(0, ln.split("\t;")[0].split("  ;")[0].rstrip())
        elif ln.startswith(";") and source_line is None:
            m = _SOURCE.match(ln)
            if m and m["file"]:
                source_line = f"{m['file']}:{m['line']}: {m['text'].strip()}"
            elif m:
                source_line = m["text"].strip()
        if source_line and len(insns) >= keep_insns:
            break
    text = " / ".join(message) if message else "(the verifier gave no message; see the full log)"
    return VerifierReport(program=program, message=text, instructions=insns, source_line=source_line, log=log)
