"""The provisioner's durable record of requests (SQLite, one file).

Every step that must survive a crash is committed before the provisioner moves on: the
plan (which VM goes where) before any VM is defined, the result before the reply, the
reply before the acknowledgement.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hostbus.envelope import now_rfc3339
from hostbus.files import private_file


@dataclass
class Record:
    request_id: str
    owner: str
    template: str
    count: int
    status: str  # accepted | completed | failed
    plan: dict[str, str]  # vm name -> host
    vms: list[dict[str, Any]]
    error: dict[str, Any] | None
    replied: bool
    created: str
    updated: str

    def to_dict(self) -> dict[str, Any]:
        vms = self.vms or [{"name": n, "host": h} for n, h in self.plan.items()]
        return {"request_id": self.request_id, "owner": self.owner, "template": self.template,
                "count": self.count, "status": self.status, "vms": vms, "error": self.error,
                "created": self.created, "updated": self.updated}


class RequestStore:
    def __init__(self, path: str | Path) -> None:
        self.path = private_file(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False,
                                   isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a committed step survives power loss
        self._db.execute("""CREATE TABLE IF NOT EXISTS requests (
            request_id TEXT PRIMARY KEY, owner TEXT NOT NULL, template TEXT NOT NULL,
            count INTEGER NOT NULL, status TEXT NOT NULL, plan TEXT NOT NULL DEFAULT '{}',
            vms TEXT NOT NULL DEFAULT '[]', error TEXT, replied INTEGER NOT NULL DEFAULT 0,
            created TEXT NOT NULL, updated TEXT NOT NULL)""")

    def close(self) -> None:
        self._db.close()

    def _row(self, row: tuple[Any, ...] | None) -> Record | None:
        if row is None:
            return None
        rid, owner, template, count, status, plan, vms, error, replied, created, updated = row
        return Record(rid, owner, template, count, status, json.loads(plan), json.loads(vms),
                      json.loads(error) if error else None, bool(replied), created, updated)

    def get(self, request_id: str) -> Record | None:
        with self._lock:
            return self._row(self._db.execute(
                "SELECT * FROM requests WHERE request_id = ?", (request_id,)).fetchone())

    def accept(self, request_id: str, owner: str, template: str, count: int) -> Record:
        now = now_rfc3339()
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO requests (request_id, owner, template, count, status, "
                "created, updated) VALUES (?, ?, ?, ?, 'accepted', ?, ?)",
                (request_id, owner, template, count, now, now))
        record = self.get(request_id)
        assert record is not None
        return record

    def _update(self, request_id: str, **fields: Any) -> None:
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._lock:
            self._db.execute(f"UPDATE requests SET {cols}, updated = ? WHERE request_id = ?",
                             (*fields.values(), now_rfc3339(), request_id))

    def save_plan(self, request_id: str, plan: dict[str, str]) -> None:
        self._update(request_id, plan=json.dumps(plan))

    def complete(self, request_id: str, vms: list[dict[str, Any]]) -> None:
        self._update(request_id, status="completed", vms=json.dumps(vms), error=None)

    def fail(self, request_id: str, error: dict[str, Any]) -> None:
        self._update(request_id, status="failed", error=json.dumps(error))

    def mark_replied(self, request_id: str) -> None:
        self._update(request_id, replied=1)

    def list(self, *, owner: str | None = None, status: str | None = None,
             limit: int = 50) -> list[Record]:
        query, params = "SELECT * FROM requests WHERE 1=1", []
        if owner is not None:
            query += " AND owner = ?"
            params.append(owner)
        if status is not None:
            query += " AND status = ?"
            params.append(status)
        query += " ORDER BY created DESC, request_id LIMIT ?"
        with self._lock:
            rows = self._db.execute(query, (*params, limit)).fetchall()
        return [r for r in (self._row(row) for row in rows) if r is not None]

    def vms_owned(self, owner: str) -> int:
        """VMs of this owner's completed requests: what quotas count."""
        with self._lock:
            rows = self._db.execute(
                "SELECT vms FROM requests WHERE owner = ? AND status = 'completed'",
                (owner,)).fetchall()
        return sum(len(json.loads(vms)) for (vms,) in rows)
