"""The provisioner's durable record of provisioning messages (SQLite, one file): the
requests that make VMs and the releases that give them back.

Every step that must survive a crash is committed before the provisioner moves on: the
plan (which VM goes where) before any VM is defined, the VMs a release will remove
before it removes any, the result before the reply, the reply before the
acknowledgement.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hostbus.envelope import now_rfc3339
from hostbus.files import open_database


@dataclass
class Record:
    request_id: str
    owner: str
    template: str
    count: int
    status: str  # accepted | completed | failed | released
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
        self.path = Path(path)
        self._lock = threading.Lock()
        # FULL: a committed step survives power loss
        self._db = open_database(self.path, synchronous="FULL")
        self._db.execute("""CREATE TABLE IF NOT EXISTS requests (
            request_id TEXT PRIMARY KEY, owner TEXT NOT NULL, template TEXT NOT NULL,
            count INTEGER NOT NULL, status TEXT NOT NULL, plan TEXT NOT NULL DEFAULT '{}',
            vms TEXT NOT NULL DEFAULT '[]', error TEXT, replied INTEGER NOT NULL DEFAULT 0,
            created TEXT NOT NULL, updated TEXT NOT NULL)""")
        self._db.execute("""CREATE TABLE IF NOT EXISTS releases (
            release_id TEXT PRIMARY KEY, caller TEXT NOT NULL, release_of TEXT,
            status TEXT NOT NULL, targets TEXT NOT NULL DEFAULT '[]', error TEXT,
            replied INTEGER NOT NULL DEFAULT 0, created TEXT NOT NULL, updated TEXT NOT NULL)""")

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

    def release_vms(self, request_id: str, outcomes: dict[str, str], *,
                    all_gone: bool) -> None:
        """A release removed some of this request's VMs (name -> ``released`` or
        ``gone``); with ``all_gone`` a completed request becomes ``released``."""
        record = self.get(request_id)
        if record is None:
            return
        # A VM an earlier release removed stays "released" when a later one finds it gone.
        vms = [{**v, "state": outcomes[v["name"]]}
               if v.get("name") in outcomes and v.get("state") != "released" else v
               for v in record.vms]
        status = "released" if all_gone and record.status == "completed" else record.status
        self._update(request_id, vms=json.dumps(vms), status=status)

    # ---------------------------------------------------------------- releases
    def get_release(self, release_id: str) -> ReleaseRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM releases WHERE release_id = ?",
                                   (release_id,)).fetchone()
        if row is None:
            return None
        rid, caller, release_of, status, targets, error, replied, created, updated = row
        return ReleaseRecord(rid, caller, release_of, status, json.loads(targets),
                             json.loads(error) if error else None, bool(replied), created,
                             updated)

    def accept_release(self, release_id: str, caller: str, release_of: str | None,
                       targets: list[dict[str, Any]], *, status: str = "accepted",
                       error: dict[str, Any] | None = None) -> ReleaseRecord:
        now = now_rfc3339()
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO releases (release_id, caller, release_of, status, "
                "targets, error, created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (release_id, caller, release_of, status, json.dumps(targets),
                 json.dumps(error) if error else None, now, now))
        record = self.get_release(release_id)
        assert record is not None
        return record

    def _update_release(self, release_id: str, **fields: Any) -> None:
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._lock:
            self._db.execute(f"UPDATE releases SET {cols}, updated = ? WHERE release_id = ?",
                             (*fields.values(), now_rfc3339(), release_id))

    def save_release(self, release_id: str, targets: list[dict[str, Any]]) -> None:
        """The targets with the outcome of each so far."""
        self._update_release(release_id, targets=json.dumps(targets))

    def complete_release(self, release_id: str) -> None:
        self._update_release(release_id, status="completed", error=None)

    def fail_release(self, release_id: str, error: dict[str, Any]) -> None:
        self._update_release(release_id, status="failed", error=json.dumps(error))

    def mark_release_replied(self, release_id: str) -> None:
        self._update_release(release_id, replied=1)


@dataclass
class ReleaseRecord:
    """A release: which VMs it removes (``targets``, each with its ``outcome`` once
    known: ``releasing`` while the removal runs, then ``released`` or ``already_gone``)."""

    release_id: str
    caller: str
    release_of: str | None  # the request whose VMs it releases; None: named VMs
    status: str  # accepted | completed | failed
    targets: list[dict[str, Any]]
    error: dict[str, Any] | None
    replied: bool
    created: str
    updated: str

    def to_dict(self) -> dict[str, Any]:
        vms = [{"name": t["name"], "host": t["host"], "owner": t["owner"],
                "request_id": t["request_id"], "outcome": t.get("outcome") or "pending",
                "removed_volumes": t.get("removed_volumes", [])} for t in self.targets]
        return {"request_id": self.release_id, "release_of": self.release_of,
                "status": self.status, "vms": vms, "error": self.error,
                "created": self.created, "updated": self.updated}
