"""Structured logs: one JSON object per line on stderr (journald keeps them as they are).

    {"ts": "2026-11-25T06:31:02.123Z", "level": "info", "logger": "vnfkit.agent",
     "msg": "applied", "service": "web", "generation": 3}

``event(log, "applied", service="web")`` logs a message with fields.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        out.update(getattr(record, "fields", {}))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup(level: str = "info") -> None:
    """JSON lines on stderr for the ``vnfkit`` loggers."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("vnfkit")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def event(log: logging.Logger, msg: str, *, level: int = logging.INFO, **fields: Any) -> None:
    log.log(level, msg, extra={"fields": fields})
