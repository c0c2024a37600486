"""The verdict set, with the same numbers as ``enum vk_verdict`` in ``datapath/include/vnfkit.h``
(a test reads the C enum from BTF and compares)."""

from enum import IntEnum


class Verdict(IntEnum):
    DROP = 0      # discard
    PASS = 1      # to the host's network stack
    TX = 2        # back out of the interface it came in on
    NEXT = 3      # on to the next function of the chain
    REDIRECT = 4  # out of a named port
    ABORTED = 5   # a bug or impossible state: dropped and counted apart


BUILTIN_COUNTERS = ("rx", "drop", "pass", "tx", "next", "redirect", "aborted")
"""Counter slots every VNF has, in C order: RX, then one per verdict."""
