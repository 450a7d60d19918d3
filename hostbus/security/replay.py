"""The replay guard: every agent remembers recent requests, with their replies.

Invariants:
- A request is known by its caller (the broker-checked user_id) and its message id: one
  caller cannot block, nor read the reply of, another caller's request by reusing its id.
- A request id is remembered until its deadline (plus clock skew) has passed; a repeat
  within that window is refused as ``replayed``, carrying the earlier reply once there
  is one, so a caller retrying after a lost reply learns the outcome without the action
  running twice.
- With a file, the memory survives a restart, and a request is marked *started* before
  its method runs: after a crash, one that had started is answered as interrupted (it
  may have acted; it is never run again), while one that was only received and waited
  for a worker runs once, as if it had just arrived.

- If the file cannot be written (a full disk), rows the disk would not take are kept in
  memory, written out once it takes them again (``retry``), and consulted meanwhile:
  every request is still answered. Until then a crash forgets them.

Kept apart from ``hostbus.security.signing`` so an agent that checks no signatures never
loads the cryptography library.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from hostbus.errors import ErrorCode, RemoteError
from hostbus.files import Durability, disk_trouble, open_database

Key = tuple[str, str]  # (caller, message id)

# A row per request: written when checked, `started` set just before the method runs,
# `reply` once answered.
_SCHEMA = ("CREATE TABLE IF NOT EXISTS requests (caller TEXT NOT NULL, id TEXT NOT NULL, "
           "expires REAL NOT NULL, started INTEGER NOT NULL DEFAULT 0, reply BLOB, "
           "PRIMARY KEY (caller, id))")
# Rows kept in memory while the disk refused them, written out when it takes them: a
# field known only in the file (started, reply) is never overwritten with "unknown".
_UPSERT = ("INSERT INTO requests (caller, id, expires, started, reply) VALUES (?, ?, ?, ?, ?) "
           "ON CONFLICT (caller, id) DO UPDATE SET expires = excluded.expires, "
           "started = max(started, excluded.started), reply = coalesce(excluded.reply, reply)")


class ReplayGuard:
    def __init__(self, skew_s: float = 30.0, max_ahead_s: float = 600.0,
                 path: str | Path | None = None) -> None:
        self.skew_s = skew_s
        self.max_ahead_s = max_ahead_s
        self._seen: dict[Key, float] = {}
        self._replies: dict[Key, bytes] = {}
        self._lock = threading.Lock()
        self._next_prune = 0.0
        self._interrupted: set[Key] = set()
        self._path = Path(path) if path is not None else None
        self._db: sqlite3.Connection | None = None
        self._ready = False  # the file has its table
        #: Rows the file has not taken yet: key -> [expires, started, reply].
        self._unsaved: dict[Key, list[Any]] = {}
        self.durability: Durability | None = None
        if self._path is not None:
            self.durability = Durability(
                "recent_requests", self._path,
                "recent request ids and replies are kept in memory only (after a crash, "
                "a request that was running could run again)")
            try:
                self._open()
                self._load()
            except (sqlite3.Error, OSError) as exc:
                self._trouble(exc)

    def _open(self) -> None:
        assert self._path is not None
        if self._db is None:
            # Runs on the I/O thread for every request: NORMAL survives a crash of the
            # agent (not of the machine) and costs 74 us a request against 260 us for
            # FULL (measured); ids only live until their deadline anyway.
            self._db = open_database(self._path, synchronous="NORMAL")
        self._db.execute("PRAGMA cache_size=-256")  # KiB; the table is small
        # The table of releases that kept ids without their caller: its ids expire
        # within minutes, so it is dropped rather than converted.
        self._db.execute("DROP TABLE IF EXISTS seen")
        self._db.execute(_SCHEMA)
        self._ready = True

    def _load(self) -> None:
        """What the last run left: ids not yet expired. One that was received but never
        started is forgotten, so the copy the broker redelivers runs (once)."""
        assert self._db is not None
        now = time.time()
        try:
            self._db.execute("DELETE FROM requests WHERE expires <= ?", (now,))
            self._db.execute("DELETE FROM requests WHERE started = 0 AND reply IS NULL")
        except sqlite3.Error as exc:  # a full disk: the reading below leaves them out
            self._trouble(exc)
        for caller, mid, expires, replied in self._db.execute(
                "SELECT caller, id, expires, reply IS NOT NULL FROM requests "
                "WHERE expires > ? AND (started = 1 OR reply IS NOT NULL)", (now,)):
            self._seen[(caller, mid)] = expires
            if not replied:  # started, never answered: it may have acted
                self._interrupted.add((caller, mid))

    def _trouble(self, exc: BaseException) -> None:
        """A write failed: the disk's fault is noted (and survived), anything else raised."""
        reason = disk_trouble(exc)
        if reason is None or self.durability is None:
            raise exc
        self.durability.failed(reason)

    def _write(self, key: Key, sql: str, params: tuple[Any, ...], row: list[Any]) -> None:
        """Under the lock: ``sql`` on the file, or, while the disk refuses writes, the
        row's known fields into memory (merged into what is kept for the key)."""
        kept = self._unsaved.get(key)
        if self._db is not None and self._ready and kept is None \
                and self.durability is not None and self.durability.ok:
            try:
                self._db.execute(sql, params)
                return
            except sqlite3.Error as exc:
                self._trouble(exc)
        if kept is None:
            self._unsaved[key] = row
        else:
            kept[0] = row[0]
            kept[1] = max(kept[1], row[1])
            kept[2] = row[2] if row[2] is not None else kept[2]

    def check(self, caller: str, message_id: str, deadline_epoch: float) -> None:
        now = time.time()
        if deadline_epoch > now + self.max_ahead_s + self.skew_s:
            raise RemoteError(ErrorCode.BAD_MESSAGE,
                              f"the deadline is more than {self.max_ahead_s:g} s ahead; a "
                              "request may only be valid for a short window",
                              {"max_ahead_s": self.max_ahead_s})
        key = (caller, message_id)
        with self._lock:
            if now >= self._next_prune:
                self._prune(now)
            if key in self._interrupted:
                self._interrupted.discard(key)
                raise RemoteError(ErrorCode.FAILED,
                                  f"request {message_id} was interrupted: the agent stopped "
                                  "while it was running, and it is not run again. Check what "
                                  "it did, then send a new request if needed",
                                  {"interrupted": True})
            if key in self._seen:
                earlier = self._earlier_reply(key)
                # Either the outcome, or word that it is still to come: a console that
                # gets this for its own request knows which (envelope.earlier_reply).
                details = ({"earlier_reply": orjson.loads(earlier)} if earlier
                           else {"in_progress": True})
                raise RemoteError(ErrorCode.REPLAYED,
                                  f"request {message_id} was already received"
                                  + ("; its reply is in details.earlier_reply" if earlier
                                     else " and is still being handled")
                                  + ". Send a new message_id to repeat the action", details)
            expires = deadline_epoch + self.skew_s
            self._seen[key] = expires
            if self._path is not None:
                self._write(key, "INSERT OR REPLACE INTO requests (caller, id, expires) "
                            "VALUES (?, ?, ?)", (caller, message_id, expires),
                            [expires, 0, None])

    def started(self, caller: str, message_id: str) -> None:
        """Just before the method runs: from here on, a crash makes it interrupted."""
        if self._path is None:
            return
        key = (caller, message_id)
        with self._lock:
            if key in self._seen:
                self._write(key, "UPDATE requests SET started = 1 WHERE caller = ? AND id = ?",
                            key, [self._seen[key], 1, None])

    def remember_reply(self, caller: str, message_id: str, reply_body: bytes) -> None:
        """With a database the body goes to disk only (a busy agent would otherwise hold
        every reply of the last minutes in memory); only a repeat reads it back."""
        key = (caller, message_id)
        with self._lock:
            if key not in self._seen:
                return
            if self._path is not None:
                self._write(key, "UPDATE requests SET reply = ? WHERE caller = ? AND id = ?",
                            (reply_body, caller, message_id), [self._seen[key], 0, reply_body])
            else:
                self._replies[key] = reply_body

    def retry(self) -> None:
        """Periodically: once the disk takes writes again, write out what was kept in
        memory meanwhile (attempts spaced out by ``durability``)."""
        if self.durability is None or not self.durability.due():
            return
        with self._lock:
            try:
                self._open()
                assert self._db is not None
                self._db.execute("BEGIN")
                try:
                    self._db.executemany(_UPSERT, [
                        (caller, mid, row[0], row[1], row[2])
                        for (caller, mid), row in self._unsaved.items()])
                    self._db.execute("DELETE FROM requests WHERE expires <= ?", (time.time(),))
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except (sqlite3.Error, OSError) as exc:
                self._trouble(exc)
                return
            self._unsaved.clear()
            self.durability.recovered()

    def _earlier_reply(self, key: Key) -> bytes | None:
        kept = self._unsaved.get(key)
        if kept is not None and kept[2] is not None:
            return bytes(kept[2])
        if self._path is None:
            return self._replies.get(key)
        if self._db is None or not self._ready:
            return None
        row = self._db.execute("SELECT reply FROM requests WHERE caller = ? AND id = ?",
                               key).fetchone()
        return row[0] if row else None

    def _prune(self, now: float) -> None:
        self._seen = {k: v for k, v in self._seen.items() if v > now}
        self._replies = {k: v for k, v in self._replies.items() if k in self._seen}
        self._unsaved = {k: v for k, v in self._unsaved.items() if k in self._seen}
        if self._ready and self.durability is not None and self.durability.ok:
            assert self._db is not None
            try:
                self._db.execute("DELETE FROM requests WHERE expires <= ?", (now,))
            except sqlite3.Error as exc:
                self._trouble(exc)
        self._next_prune = now + 10
