"""What the reactor must not forget: the events it has handled, the matches inside each
rule's window, conditions waiting out their ``for_s``, and every decision with what
became of it (``state_dir/reactor.db``, SQLite, synchronous FULL).

A decision is written before its action leaves, and an event is marked handled in the
same transaction as the decisions it caused, before the broker is told (ack). So after
a crash: an event handled is not handled again (the broker may deliver it again), a
decision ``queued`` was never sent and is sent at start, and one ``sending`` may have
left: it is marked ``interrupted`` and never sent again (at most once).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from hostbus.files import open_database

#: States of a decision whose action is on its way or waits for a person.
IN_FLIGHT = ("queued", "sending", "awaiting_approval")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS handled (event_id TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS matches (
    rule TEXT NOT NULL, target TEXT NOT NULL, event_id TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS matches_by_target ON matches (rule, target, at);
CREATE TABLE IF NOT EXISTS waiting (
    rule TEXT NOT NULL, target TEXT NOT NULL, since REAL NOT NULL, event_id TEXT NOT NULL,
    host TEXT NOT NULL, call TEXT NOT NULL, args TEXT NOT NULL,
    PRIMARY KEY (rule, target));
CREATE TABLE IF NOT EXISTS decisions (
    id TEXT PRIMARY KEY, at REAL NOT NULL, rule TEXT NOT NULL, target TEXT NOT NULL,
    host TEXT NOT NULL, call TEXT NOT NULL, args TEXT NOT NULL, events TEXT NOT NULL,
    decision TEXT NOT NULL, state TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '',
    request_id TEXT, approval_id TEXT, approved_by TEXT, updated REAL NOT NULL,
    kind TEXT NOT NULL DEFAULT 'call');
CREATE INDEX IF NOT EXISTS decisions_by_target ON decisions (rule, target, at);
CREATE INDEX IF NOT EXISTS decisions_by_approval ON decisions (approval_id);
CREATE TABLE IF NOT EXISTS manager_holds (
    kind TEXT NOT NULL, name TEXT NOT NULL, cause TEXT NOT NULL, reason TEXT NOT NULL,
    since REAL NOT NULL, until REAL, event_id TEXT NOT NULL,
    PRIMARY KEY (kind, name, cause));
"""


class ReactorStore:
    def __init__(self, path: str | Path | None) -> None:
        self.path = str(path) if path is not None else ":memory:"
        self._db = open_database(path, synchronous="FULL")
        self._db.executescript(_SCHEMA)
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(decisions)")}
        if "kind" not in columns:  # a store from before actions other than calls
            self._db.execute("ALTER TABLE decisions ADD COLUMN kind TEXT NOT NULL "
                             "DEFAULT 'call'")
        self._lock = threading.RLock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Everything inside commits together, or not at all."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # ------------------------------------------------------------------ events
    def handled(self, event_id: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM handled WHERE event_id = ?",
                                    (event_id,)).fetchone() is not None

    def mark_handled(self, event_id: str, now: float) -> None:
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO handled VALUES (?, ?)", (event_id, now))

    # ----------------------------------------------------------------- windows
    def add_match(self, rule: str, target: str, event_id: str, now: float) -> None:
        with self._lock:
            self._db.execute("INSERT INTO matches VALUES (?, ?, ?, ?)",
                             (rule, target, event_id, now))

    def matches_since(self, rule: str, target: str, since: float) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute(
                "SELECT event_id FROM matches WHERE rule = ? AND target = ? AND at >= ? "
                "ORDER BY at", (rule, target, since))]

    def clear_matches(self, rule: str, target: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM matches WHERE rule = ? AND target = ?",
                             (rule, target))

    def start_waiting(self, rule: str, target: str, since: float, event_id: str, host: str,
                      call: str, args: dict[str, Any]) -> None:
        """The condition began to hold (kept if it already did: since stays)."""
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO waiting VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (rule, target, since, event_id, host, call,
                              orjson.dumps(args).decode()))

    def restart_waiting(self, rule: str, target: str, since: float, event_id: str,
                        host: str, call: str, args: dict[str, Any]) -> None:
        """Wait afresh from ``since`` (an event came: the absence starts again)."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO waiting VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (rule, target, since, event_id, host, call,
                              orjson.dumps(args).decode()))

    def stop_waiting(self, rule: str, target: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM waiting WHERE rule = ? AND target = ?",
                             (rule, target))

    def waiting(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT rule, target, since, event_id, host, call, args "
                                    "FROM waiting").fetchall()
        return [{"rule": r[0], "target": r[1], "since": r[2], "event_id": r[3], "host": r[4],
                 "call": r[5], "args": orjson.loads(r[6])} for r in rows]

    # ----------------------------------------------------- what the manager handles
    def hold(self, kind: str, name: str, cause: str, reason: str, since: float,
             event_id: str) -> None:
        """The manager handles this host or VM (``kind``) for ``cause``, from ``since``
        until released (a repeat keeps the first ``since``)."""
        with self._lock:
            self._db.execute(
                "INSERT INTO manager_holds VALUES (?, ?, ?, ?, ?, NULL, ?) ON CONFLICT "
                "(kind, name, cause) DO UPDATE SET reason = excluded.reason, until = NULL, "
                "event_id = excluded.event_id, since = CASE WHEN until IS NULL THEN since "
                "ELSE excluded.since END", (kind, name, cause, reason, since, event_id))

    def release(self, kind: str, name: str, cause: str, until: float, reason: str) -> None:
        """The manager is done: the hold lasts until ``until`` (a settling time)."""
        with self._lock:
            self._db.execute(
                "UPDATE manager_holds SET until = ?, reason = ? WHERE kind = ? AND name = ? "
                "AND cause = ? AND until IS NULL", (until, reason, kind, name, cause))

    def holds(self, kind: str, name: str, now: float) -> list[dict[str, Any]]:
        """The holds on this host or VM in force at ``now``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT cause, reason, since, until, event_id FROM manager_holds WHERE "
                "kind = ? AND name = ? AND (until IS NULL OR until > ?) ORDER BY since",
                (kind, name, now)).fetchall()
        return [{"cause": r[0], "reason": r[1], "since": r[2], "until": r[3],
                 "event_id": r[4]} for r in rows]

    def all_holds(self, now: float) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT kind, name, cause, reason, since, until, event_id FROM manager_holds"
                " WHERE until IS NULL OR until > ? ORDER BY since", (now,)).fetchall()
        return [dict(zip(("kind", "name", "cause", "reason", "since", "until", "event_id"),
                         r, strict=True)) for r in rows]

    # --------------------------------------------------------------- decisions
    def decide(self, *, rule: str, target: str, host: str, call: str, args: dict[str, Any],
               events: list[str], decision: str, state: str, detail: str,
               now: float, kind: str = "call") -> str:
        decision_id = str(uuid.uuid4())
        with self._lock:
            self._db.execute(
                "INSERT INTO decisions (id, at, rule, target, host, call, args, events, "
                "decision, state, detail, updated, kind) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (decision_id, now, rule, target, host, call, orjson.dumps(args).decode(),
                 orjson.dumps(events).decode(), decision, state, detail, now, kind))
        return decision_id

    def last_action(self, rule: str, target: str) -> dict[str, Any] | None:
        """The latest decision that acted (or would have, dry run) for this target."""
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM decisions WHERE rule = ? AND target = ? AND decision IN "
                "('fired', 'dry_run') AND state != 'skipped' ORDER BY at DESC LIMIT 1",
                (rule, target)).fetchone()
        return self._row(row) if row else None

    def update(self, decision_id: str, state: str, detail: str | None = None, *,
               request_id: str | None = None, approval_id: str | None = None,
               approved_by: str | None = None) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE decisions SET state = ?, detail = COALESCE(?, detail), "
                "request_id = COALESCE(?, request_id), approval_id = COALESCE(?, approval_id),"
                " approved_by = COALESCE(?, approved_by), updated = ? WHERE id = ?",
                (state, detail, request_id, approval_id, approved_by, time.time(),
                 decision_id))

    def get(self, decision_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM decisions WHERE id = ?",
                                   (decision_id,)).fetchone()
        return self._row(row) if row else None

    def ids_starting(self, prefix: str) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute(
                "SELECT id FROM decisions WHERE id LIKE ? ESCAPE '\\' LIMIT 11",
                (prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                 + "%",))]

    def by_approval(self, approval_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM decisions WHERE approval_id = ?",
                                   (approval_id,)).fetchone()
        return self._row(row) if row else None

    def in_state(self, *states: str) -> list[dict[str, Any]]:
        marks = ",".join("?" * len(states))
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM decisions WHERE state IN ({marks}) "
                                    "ORDER BY at", states).fetchall()
        return [self._row(r) for r in rows]

    def history(self, *, limit: int = 100, rule: str | None = None,
                actions_only: bool = False) -> list[dict[str, Any]]:
        """The newest decisions first."""
        where, params = [], []
        if rule is not None:
            where.append("rule = ?")
            params.append(rule)
        if actions_only:
            where.append("decision IN ('fired', 'dry_run')")
        sql = "SELECT * FROM decisions" + (" WHERE " + " AND ".join(where) if where else "") \
            + " ORDER BY at DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(sql, (*params, limit)).fetchall()
        return [self._row(r) for r in rows]

    def prune(self, before: float) -> None:
        """Forget what is older than ``before`` (decisions still in flight stay)."""
        with self._lock:
            self._db.execute("DELETE FROM handled WHERE at < ?", (before,))
            self._db.execute("DELETE FROM matches WHERE at < ?", (before,))
            self._db.execute("DELETE FROM manager_holds WHERE until < ?", (before,))
            self._db.execute("DELETE FROM decisions WHERE updated < ? AND state NOT IN "
                             "('queued', 'sending', 'awaiting_approval')", (before,))

    _COLUMNS = ("id", "at", "rule", "target", "host", "call", "args", "events", "decision",
                "state", "detail", "request_id", "approval_id", "approved_by", "updated",
                "kind")

    def _row(self, row: sqlite3.Row | tuple[Any, ...]) -> dict[str, Any]:
        found = dict(zip(self._COLUMNS, row, strict=True))
        found["args"] = orjson.loads(found["args"])
        found["events"] = orjson.loads(found["events"])
        return found
