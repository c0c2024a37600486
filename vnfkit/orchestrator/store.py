"""The orchestrator's desired state on disk (SQLite): registered agents and deployed services.

Written before the orchestrator acts, so a restarted orchestrator knows which agents it had
and which services should run where; agents re-register on their next heartbeat.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS agents (
    host TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    capabilities TEXT NOT NULL,     -- JSON, as the agent reported them
    registered REAL NOT NULL,
    last_seen REAL NOT NULL         -- time.time() of the last register or heartbeat
);
CREATE TABLE IF NOT EXISTS services (
    name TEXT PRIMARY KEY,
    source TEXT NOT NULL,           -- the service.yaml it was deployed from
    generation INTEGER NOT NULL,
    placement TEXT NOT NULL,        -- JSON: function id -> host
    spis TEXT NOT NULL,             -- JSON: the SPIs its paths hold
    hosts TEXT NOT NULL,            -- JSON: the hosts it has a segment on
    state TEXT NOT NULL,            -- deploying | deployed | failed | removing
    error TEXT NOT NULL DEFAULT '',
    updated REAL NOT NULL,
    plans TEXT NOT NULL DEFAULT '{}' -- JSON: host -> HostPlan.to_dict(), what each host was sent
);
-- Parts of a parent orchestrator's services this orchestrator runs as a child domain
-- (vnfkit.orchestrator.domain): what the parent asked, and where it went in the domain.
CREATE TABLE IF NOT EXISTS delegated (
    name TEXT PRIMARY KEY,          -- the parent's service
    generation INTEGER NOT NULL,
    digest TEXT NOT NULL,           -- of the parent's Segment without its generation
    segment BLOB NOT NULL,          -- the parent's Segment (protobuf), as it came
    placement TEXT NOT NULL,        -- JSON: function id -> host of this domain
    hosts TEXT NOT NULL,            -- JSON: the hosts of this domain with a part
    spis TEXT NOT NULL,             -- JSON: the parent's SPIs, held on our hosts
    usage TEXT NOT NULL,            -- JSON: host -> [cpus, memory MB] the part takes
    updated REAL NOT NULL
);
"""


@dataclass
class AgentRecord:
    host: str
    address: str
    capabilities: dict[str, Any]
    registered: float
    last_seen: float


@dataclass
class ServiceRecord:
    name: str
    source: str
    generation: int
    placement: dict[str, str] = field(default_factory=dict)
    spis: list[int] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    state: str = "deploying"
    error: str = ""
    updated: float = 0.0
    plans: dict[str, Any] = field(default_factory=dict)  # host -> HostPlan.to_dict()


@dataclass
class DelegatedRecord:
    """A parent's service part run by this domain (named like a ServiceRecord where they meet)."""

    name: str
    generation: int
    digest: str
    segment: bytes
    placement: dict[str, str] = field(default_factory=dict)
    hosts: list[str] = field(default_factory=list)
    spis: list[int] = field(default_factory=list)
    usage: dict[str, list[float]] = field(default_factory=dict)
    updated: float = 0.0
    state: str = "deployed"  # only committed parts are recorded
    error: str = ""


class Store:
    """``Store(path)``; every write is one transaction."""

    def __init__(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()  # one connection shared by the gRPC threads
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(SCHEMA)
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(services)")}
            if "plans" not in columns:  # a store written before plans were kept
                self._db.execute("ALTER TABLE services ADD COLUMN plans TEXT NOT NULL DEFAULT '{}'")

    def _write(self, sql: str, args: tuple[Any, ...]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(sql, args)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    # ---- agents ----------------------------------------------------------------------------
    def put_agent(self, host: str, address: str, capabilities: dict[str, Any]) -> None:
        now = time.time()
        self._write("INSERT INTO agents VALUES (?, ?, ?, ?, ?) ON CONFLICT(host) DO UPDATE SET "
                    "address=excluded.address, capabilities=excluded.capabilities, last_seen=excluded.last_seen",
                    (host, address, json.dumps(capabilities), now, now))

    def touch_agent(self, host: str) -> bool:
        with self._lock:
            cur = self._db.execute("UPDATE agents SET last_seen=? WHERE host=?", (time.time(), host))
            return cur.rowcount > 0

    def agents(self) -> list[AgentRecord]:
        with self._lock:
            rows = self._db.execute("SELECT host, address, capabilities, registered, last_seen FROM agents "
                                    "ORDER BY registered, host").fetchall()
        return [AgentRecord(h, a, json.loads(c), r, s) for h, a, c, r, s in rows]

    def delete_agent(self, host: str) -> None:
        self._write("DELETE FROM agents WHERE host=?", (host,))

    # ---- services --------------------------------------------------------------------------
    def put_service(self, rec: ServiceRecord) -> None:
        rec.updated = time.time()
        self._write("INSERT OR REPLACE INTO services (name, source, generation, placement, spis, hosts, state, "
                    "error, updated, plans) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (rec.name, rec.source, rec.generation, json.dumps(rec.placement), json.dumps(rec.spis),
                     json.dumps(rec.hosts), rec.state, rec.error, rec.updated, json.dumps(rec.plans)))

    def service(self, name: str) -> ServiceRecord | None:
        with self._lock:
            row = self._db.execute(f"SELECT {COLUMNS} FROM services WHERE name=?", (name,)).fetchone()
        return _service(row) if row else None

    def services(self) -> list[ServiceRecord]:
        with self._lock:
            rows = self._db.execute(f"SELECT {COLUMNS} FROM services ORDER BY name").fetchall()
        return [_service(r) for r in rows]

    def delete_service(self, name: str) -> None:
        self._write("DELETE FROM services WHERE name=?", (name,))

    # ---- a parent's parts (child domain) --------------------------------------------------------
    def put_delegated(self, rec: DelegatedRecord) -> None:
        rec.updated = time.time()
        self._write("INSERT OR REPLACE INTO delegated VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (rec.name, rec.generation, rec.digest, rec.segment, json.dumps(rec.placement),
                     json.dumps(rec.hosts), json.dumps(rec.spis), json.dumps(rec.usage), rec.updated))

    def delegated(self) -> list[DelegatedRecord]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM delegated ORDER BY name").fetchall()
        return [_delegated(r) for r in rows]

    def delegated_service(self, name: str) -> DelegatedRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM delegated WHERE name=?", (name,)).fetchone()
        return _delegated(row) if row else None

    def delete_delegated(self, name: str) -> None:
        self._write("DELETE FROM delegated WHERE name=?", (name,))

    def close(self) -> None:
        with self._lock:
            self._db.close()


COLUMNS = "name, source, generation, placement, spis, hosts, state, error, updated, plans"


def _service(row: tuple[Any, ...]) -> ServiceRecord:
    name, source, gen, placement, spis, hosts, state, error, updated, plans = row
    return ServiceRecord(name, source, gen, json.loads(placement), json.loads(spis), json.loads(hosts), state,
                         error, updated, json.loads(plans))


def _delegated(row: tuple[Any, ...]) -> DelegatedRecord:
    name, gen, digest, segment, placement, hosts, spis, usage, updated = row
    return DelegatedRecord(name, gen, digest, bytes(segment), json.loads(placement), json.loads(hosts),
                           json.loads(spis), json.loads(usage), updated)
