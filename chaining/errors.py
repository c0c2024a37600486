"""The error the chaining layer raises (paths, the classifier's rules), in a module of its own
so the classifier and the local chain that uses it share it."""

from __future__ import annotations

from datapath.errors import VnfkitError


class ChainError(VnfkitError):
    """A path or a classifier rule that cannot be installed as asked."""
