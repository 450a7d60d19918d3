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

Kept apart from ``hostbus.security.signing`` so an agent that checks no signatures never
loads the cryptography library.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import orjson

from hostbus.errors import ErrorCode, RemoteError
from hostbus.files import private_file

Key = tuple[str, str]  # (caller, message id)

# A row per request: written when checked, `started` set just before the method runs,
# `reply` once answered.
_SCHEMA = ("CREATE TABLE IF NOT EXISTS requests (caller TEXT NOT NULL, id TEXT NOT NULL, "
           "expires REAL NOT NULL, started INTEGER NOT NULL DEFAULT 0, reply BLOB, "
           "PRIMARY KEY (caller, id))")


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
        self._db: sqlite3.Connection | None = None
        if path is not None:
            self._db = sqlite3.connect(str(private_file(path)), check_same_thread=False,
                                       isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # Runs on the I/O thread for every request: NORMAL survives a crash of the
            # agent (not of the machine) and costs 74 us a request against 260 us for
            # FULL (measured); ids only live until their deadline anyway.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA cache_size=-256")  # KiB; the table is small
            # The table of releases that kept ids without their caller: its ids expire
            # within minutes, so it is dropped rather than converted.
            self._db.execute("DROP TABLE IF EXISTS seen")
            self._db.execute(_SCHEMA)
            now = time.time()
            self._db.execute("DELETE FROM requests WHERE expires <= ?", (now,))
            # Received but never started: the last run died before a worker took it.
            # Forgotten, so the copy the broker redelivers runs (once).
            self._db.execute("DELETE FROM requests WHERE started = 0 AND reply IS NULL")
            for caller, mid, expires, replied in self._db.execute(
                    "SELECT caller, id, expires, reply IS NOT NULL FROM requests"):
                self._seen[(caller, mid)] = expires
                if not replied:  # started, never answered: it may have acted
                    self._interrupted.add((caller, mid))

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
                details = {"earlier_reply": orjson.loads(earlier)} if earlier else {}
                raise RemoteError(ErrorCode.REPLAYED,
                                  f"request {message_id} was already received"
                                  + ("; its reply is in details.earlier_reply" if earlier
                                     else " and is still being handled")
                                  + ". Send a new message_id to repeat the action", details)
            expires = deadline_epoch + self.skew_s
            self._seen[key] = expires
            if self._db is not None:
                self._db.execute("INSERT OR REPLACE INTO requests (caller, id, expires) "
                                 "VALUES (?, ?, ?)", (caller, message_id, expires))

    def started(self, caller: str, message_id: str) -> None:
        """Just before the method runs: from here on, a crash makes it interrupted."""
        if self._db is None:
            return
        with self._lock:
            self._db.execute("UPDATE requests SET started = 1 WHERE caller = ? AND id = ?",
                             (caller, message_id))

    def remember_reply(self, caller: str, message_id: str, reply_body: bytes) -> None:
        """With a database the body goes to disk only (a busy agent would otherwise hold
        every reply of the last minutes in memory); only a repeat reads it back."""
        key = (caller, message_id)
        with self._lock:
            if key not in self._seen:
                return
            if self._db is not None:
                self._db.execute("UPDATE requests SET reply = ? WHERE caller = ? AND id = ?",
                                 (reply_body, caller, message_id))
            else:
                self._replies[key] = reply_body

    def _earlier_reply(self, key: Key) -> bytes | None:
        if self._db is None:
            return self._replies.get(key)
        row = self._db.execute("SELECT reply FROM requests WHERE caller = ? AND id = ?",
                               key).fetchone()
        return row[0] if row else None

    def _prune(self, now: float) -> None:
        self._seen = {k: v for k, v in self._seen.items() if v > now}
        self._replies = {k: v for k, v in self._replies.items() if k in self._seen}
        if self._db is not None:
            self._db.execute("DELETE FROM requests WHERE expires <= ?", (now,))
        self._next_prune = now + 10
