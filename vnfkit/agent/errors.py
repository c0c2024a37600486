"""The agent's refusals, each with the gRPC status code it travels as."""

from __future__ import annotations

from datapath.errors import VnfkitError

# Status code names (grpc.StatusCode members): the agent's logic does not import grpc.
INVALID_ARGUMENT = "INVALID_ARGUMENT"
FAILED_PRECONDITION = "FAILED_PRECONDITION"
ALREADY_EXISTS = "ALREADY_EXISTS"
NOT_FOUND = "NOT_FOUND"
RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"


class AgentError(VnfkitError):
    """A request the agent refuses; nothing was changed. ``code`` names its gRPC status."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
