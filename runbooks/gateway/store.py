"""Durable state of the gateway in SQLite: open incidents by fingerprint, signatures seen (replays), the
outbox of Prefect events not yet delivered, and the dead letters (events Prefect refused with a 4xx, kept until an
operator replays them). Every accept is one transaction, committed before the 202."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runbooks.gateway.models import NormalizedAlert, event_payload

SCHEMA = """
CREATE TABLE IF NOT EXISTS incidents (
    incident_id TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, name TEXT NOT NULL, status TEXT NOT NULL,
    severity TEXT, opened_at REAL NOT NULL, resolved_at REAL, last_seen REAL NOT NULL, alerts INTEGER NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS incidents_open ON incidents(fingerprint) WHERE status = 'open';
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, event TEXT NOT NULL, created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL, delivered_at REAL, last_error TEXT);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(delivered_at, next_attempt_at);
CREATE TABLE IF NOT EXISTS signatures (signature TEXT PRIMARY KEY, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY, event TEXT NOT NULL, created_at REAL NOT NULL, attempts INTEGER NOT NULL,
    status INTEGER NOT NULL, reason TEXT NOT NULL, dead_at REAL NOT NULL);
"""


@dataclass(frozen=True)
class DeadLetter:
    """An event Prefect refused (a 4xx other than 408/429): its outbox id, what it was about, and why."""

    id: int
    event: str
    incident_id: str
    status: int
    reason: str  # the refusal's body, cut and redacted (kernel.redact.quote_body)
    dead_at: float


@dataclass(frozen=True)
class OutboxCounts:
    pending: int
    delivered: int
    dead_lettered: int


@dataclass(frozen=True)
class Outcome:
    incident_id: str
    fingerprint: str
    action: str  # opened | repeated | resolved | ignored


class GatewayStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        # Durability of a 202: in WAL mode with synchronous=FULL, COMMIT returns only after the WAL (holding the
        # transaction) is fsynced, so an acknowledged alert survives a crash of the process AND of the machine.
        # synchronous=NORMAL would fsync only at checkpoints: faster, but a power cut could lose the last acknowledged
        # alerts, which the gateway promises never to do. The cost is one fsync per group commit, shared by every
        # request of the batch (see ``Committer``), not one per alert.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    def remember_signature(self, signature: str, ttl_s: float) -> bool:
        """False when this signature was already used (a replay)."""
        now = time.time()
        try:
            with self._transaction():
                self._db.execute("DELETE FROM signatures WHERE expires_at < ?", (now,))
                self._db.execute("INSERT INTO signatures VALUES (?, ?)", (signature, now + ttl_s))
        except sqlite3.IntegrityError:
            return False
        return True

    def accept(self, alerts: list[NormalizedAlert]) -> list[Outcome]:
        """Deduplicate and queue the events, all in one committed transaction."""
        return self.accept_batches([alerts])[0]

    def accept_batches(self, batches: list[list[NormalizedAlert]]) -> list[list[Outcome]]:
        """Several requests' alerts in ONE committed transaction (group commit: one fsync for all of them)."""
        now = time.time()
        with self._transaction():
            return [[self._accept_one(alert, now) for alert in alerts] for alerts in batches]

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One explicit transaction under the lock. Without it every statement of an ``executemany`` would be a
        transaction (and an fsync) of its own: 200 outbox rows marked failed held the lock for ~350 ms."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _accept_one(self, alert: NormalizedAlert, now: float) -> Outcome:
        row = self._db.execute(
            "SELECT incident_id FROM incidents WHERE fingerprint = ? AND status = 'open'", (alert.fingerprint,)
        ).fetchone()
        if alert.status == "firing":
            if row:
                self._db.execute(
                    "UPDATE incidents SET last_seen = ?, alerts = alerts + 1 WHERE incident_id = ?", (now, row[0])
                )
                return Outcome(row[0], alert.fingerprint, "repeated")
            incident_id = f"inc-{uuid.uuid4().hex[:12]}"
            self._db.execute(
                "INSERT INTO incidents VALUES (?, ?, ?, 'open', ?, ?, NULL, ?, 1)",
                (incident_id, alert.fingerprint, alert.name, alert.severity, now, now),
            )
            self._enqueue("runbooks.incident.opened", incident_id, alert, now)
            return Outcome(incident_id, alert.fingerprint, "opened")
        if not row:
            return Outcome("", alert.fingerprint, "ignored")
        self._db.execute(
            "UPDATE incidents SET status = 'resolved', resolved_at = ?, last_seen = ? WHERE incident_id = ?",
            (now, now, row[0]),
        )
        self._enqueue("runbooks.incident.resolved", row[0], alert, now)
        return Outcome(row[0], alert.fingerprint, "resolved")

    def _enqueue(self, name: str, incident_id: str, alert: NormalizedAlert, now: float) -> None:
        event = {
            "id": str(uuid.uuid4()),
            "occurred": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z",
            "event": name,
            "resource": {
                "prefect.resource.id": f"runbooks.incident.{incident_id}",
                "prefect.resource.name": alert.name,
                "runbooks.alert.name": alert.name,
                "runbooks.alert.fingerprint": alert.fingerprint,
            },
            "related": [],
            "payload": event_payload(alert, incident_id),
        }
        self._db.execute(
            "INSERT INTO outbox (event, created_at, next_attempt_at) VALUES (?, ?, ?)", (json.dumps(event), now, now)
        )

    def due(self, limit: int = 200) -> list[tuple[int, dict[str, Any]]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, event FROM outbox WHERE delivered_at IS NULL AND next_attempt_at <= ? ORDER BY id LIMIT ?",
                (time.time(), limit),
            ).fetchall()
        return [(row[0], json.loads(row[1])) for row in rows]

    def delivered(self, ids: list[int]) -> None:
        with self._transaction():
            self._db.executemany("UPDATE outbox SET delivered_at = ? WHERE id = ?", [(time.time(), i) for i in ids])

    def failed(self, ids: list[int], error: str, backoff_s: float) -> None:
        with self._transaction():
            self._db.executemany(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?, last_error = ? WHERE id = ?",
                [(time.time() + backoff_s, error[:500], i) for i in ids],
            )

    def dead_letter(self, ids: list[int], status: int, reason: str) -> None:
        """Move outbox rows to the dead letters (``reason`` already redacted), out of the delivery's way."""
        now = time.time()
        with self._transaction():
            self._db.executemany(
                "INSERT OR REPLACE INTO dead_letters (id, event, created_at, attempts, status, reason, dead_at) "
                "SELECT id, event, created_at, attempts + 1, ?, ?, ? FROM outbox WHERE id = ? AND delivered_at IS NULL",
                [(status, reason[:1000], now, i) for i in ids],
            )
            self._db.executemany("DELETE FROM outbox WHERE id = ? AND delivered_at IS NULL", [(i,) for i in ids])

    def dead_letters(self) -> list[DeadLetter]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, event, status, reason, dead_at FROM dead_letters ORDER BY id"
            ).fetchall()
        letters = []
        for row_id, raw, status, reason, dead_at in rows:
            event = json.loads(raw)
            incident = str(event.get("payload", {}).get("incident_id", ""))
            letters.append(DeadLetter(row_id, str(event.get("event", "")), incident, status, reason, dead_at))
        return letters

    def replay(self, ids: list[int] | None = None) -> list[int]:
        """Move dead letters back to the outbox, due now, at its tail (all of them when ``ids`` is None).
        Returns the ids replayed; an id that is not a dead letter is left out."""
        now = time.time()
        with self._transaction():
            if ids is None:
                found = [row[0] for row in self._db.execute("SELECT id FROM dead_letters ORDER BY id")]
            else:
                found = [i for i in ids if self._db.execute("SELECT 1 FROM dead_letters WHERE id = ?", (i,)).fetchone()]
            for i in found:
                self._db.execute(
                    "INSERT INTO outbox (event, created_at, next_attempt_at) "
                    "SELECT event, created_at, ? FROM dead_letters WHERE id = ?",
                    (now, i),
                )
                self._db.execute("DELETE FROM dead_letters WHERE id = ?", (i,))
        return found

    def prune(self, retention_s: float) -> int:
        """Delete the delivered events older than ``retention_s``; the pending and the dead letters stay."""
        with self._transaction():
            cursor = self._db.execute(
                "DELETE FROM outbox WHERE delivered_at IS NOT NULL AND delivered_at < ?", (time.time() - retention_s,)
            )
        return cursor.rowcount

    def counts(self) -> OutboxCounts:
        with self._lock:
            pending, delivered = self._db.execute(
                "SELECT count(*) FILTER (WHERE delivered_at IS NULL), count(*) FILTER (WHERE delivered_at IS NOT NULL) "
                "FROM outbox"
            ).fetchone()
            dead = self._db.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
        return OutboxCounts(int(pending), int(delivered), int(dead))

    def pending(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT count(*) FROM outbox WHERE delivered_at IS NULL").fetchone()
        return int(row[0])

    def incidents(self, status: str | None = None) -> list[dict[str, Any]]:
        query = "SELECT incident_id, fingerprint, name, status, severity, opened_at, resolved_at, alerts FROM incidents"
        args: tuple[Any, ...] = ()
        if status:
            query += " WHERE status = ?"
            args = (status,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY opened_at", args).fetchall()
        keys = ("incident_id", "fingerprint", "name", "status", "severity", "opened_at", "resolved_at", "alerts")
        return [dict(zip(keys, row, strict=True)) for row in rows]
