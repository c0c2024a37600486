"""What the AF_XDP runtime raises."""

from __future__ import annotations

from datapath.errors import VnfkitError


class XskError(VnfkitError):
    """A user-space function could not be set up, or its worker failed."""


class XskWorkerDied(XskError):
    """A worker process ended on its own: a crash in the VNF or the runtime, or a kill."""
