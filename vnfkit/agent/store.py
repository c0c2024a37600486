"""The agent's desired state on disk: SQLite (stdlib), each change one transaction.

``segments`` holds what the agent was asked for, one row per service (the Segment message as
sent, its generation and digest, and whether it runs); it is written before the agent acts, so
a restart knows what should be. ``snapshot`` holds what the data path was last made to hold
(``HostDataPath.snapshot()``, written just before each commit), which is what a restarted agent
adopts. ``meta`` holds small values (the counters' reset epoch).

A write that fails (a full disk, a read-only file system) raises StoreError and changes nothing:
the transaction rolls back and the agent refuses the request; the data path is not touched.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vnfkit.agent.errors import RESOURCE_EXHAUSTED, AgentError

SCHEMA = """
CREATE TABLE IF NOT EXISTS segments (
    service TEXT PRIMARY KEY,
    generation INTEGER NOT NULL,
    digest TEXT NOT NULL,
    segment BLOB NOT NULL,          -- vnfkit.v1.Segment, serialized
    phase TEXT NOT NULL,            -- 'applied' or 'failed'
    message TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS snapshot (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    data TEXT NOT NULL              -- JSON: HostDataPath.snapshot()
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


class StoreError(AgentError):
    """The desired state could not be written; nothing changed."""

    def __init__(self, message: str) -> None:
        super().__init__(RESOURCE_EXHAUSTED, message)


@dataclass(frozen=True)
class Stored:
    service: str
    generation: int
    digest: str
    segment: bytes
    phase: str
    message: str = ""


class Store:
    """``Store(state_dir / "agent.db")``; callers serialise access (the agent holds a lock)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the state file {path}: {exc}") from exc

    def _write(self, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        """Run ``statements`` as one transaction: all of them or, on any failure, none."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in statements:
                    self.db.execute(sql, args)
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write the desired state to {self.path}: {exc}; "
                             "the request is refused and the data path runs on unchanged") from exc

    # ---- segments ---------------------------------------------------------------------------
    def segments(self) -> dict[str, Stored]:
        rows = self.db.execute("SELECT service, generation, digest, segment, phase, message FROM segments "
                               "ORDER BY service").fetchall()
        return {r[0]: Stored(*r) for r in rows}

    def put(self, seg: Stored, snapshot: dict[str, Any] | None = None) -> None:
        """Record ``seg`` (replacing the service's row), and the data path snapshot with it."""
        ops = [("INSERT OR REPLACE INTO segments VALUES (?, ?, ?, ?, ?, ?)",
                (seg.service, seg.generation, seg.digest, seg.segment, seg.phase, seg.message))]
        if snapshot is not None:
            ops.append(self._snapshot_op(snapshot))
        self._write(ops)

    def restore(self, service: str, previous: Stored | None) -> None:
        """Put the service's row back as it was before a refused request."""
        if previous is None:
            self._write([("DELETE FROM segments WHERE service = ?", (service,))])
        else:
            self.put(previous)

    def delete(self, service: str) -> None:
        self._write([("DELETE FROM segments WHERE service = ?", (service,))])

    def set_phase(self, service: str, phase: str, message: str = "") -> None:
        self._write([("UPDATE segments SET phase = ?, message = ? WHERE service = ?", (phase, message, service))])

    # ---- snapshot and meta ------------------------------------------------------------------
    @staticmethod
    def _snapshot_op(snapshot: dict[str, Any]) -> tuple[str, tuple[Any, ...]]:
        return "INSERT OR REPLACE INTO snapshot VALUES (1, ?)", (json.dumps(snapshot, sort_keys=True),)

    def snapshot(self) -> dict[str, Any] | None:
        row = self.db.execute("SELECT data FROM snapshot WHERE id = 1").fetchone()
        return json.loads(row[0]) if row else None

    def put_snapshot(self, snapshot: dict[str, Any]) -> None:
        self._write([self._snapshot_op(snapshot)])

    def get(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set(self, **values: str) -> None:
        self._write([("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, v)) for k, v in values.items()])

    def close(self) -> None:
        self.db.close()
