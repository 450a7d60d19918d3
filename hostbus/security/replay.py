"""The replay guard: every agent remembers recent request ids, with their replies.

Kept apart from ``hostbus.security.signing`` so an agent that checks no signatures never loads
the cryptography library.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import orjson

from hostbus.errors import ErrorCode, RemoteError


class ReplayGuard:
    """Remembers request ids until their deadline (plus skew) has passed, and the reply
    each one got. A repeat is refused as ``replayed`` and carries the earlier reply, so
    a caller retrying after a lost reply learns the outcome without the action running
    twice. With ``path`` the memory is a SQLite file and survives a restart."""

    def __init__(self, skew_s: float = 30.0, max_ahead_s: float = 600.0,
                 path: str | Path | None = None) -> None:
        self.skew_s = skew_s
        self.max_ahead_s = max_ahead_s
        self._seen: dict[str, float] = {}
        self._replies: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._next_prune = 0.0
        self._interrupted: set[str] = set()
        self._db: sqlite3.Connection | None = None
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), check_same_thread=False,
                                       isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # Runs on the I/O thread for every request: NORMAL survives a crash of the
            # agent (not of the machine) and costs 74 us a request against 260 us for
            # FULL (measured); ids only live until their deadline anyway.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA cache_size=-256")  # KiB; the table is small
            self._db.execute("CREATE TABLE IF NOT EXISTS seen (id TEXT PRIMARY KEY, "
                             "expires REAL NOT NULL, reply BLOB)")
            now = time.time()
            self._db.execute("DELETE FROM seen WHERE expires <= ?", (now,))
            for mid, expires, replied in self._db.execute(
                    "SELECT id, expires, reply IS NOT NULL FROM seen"):
                self._seen[mid] = expires
                if not replied:  # the last run stopped before answering it
                    self._interrupted.add(mid)

    def check(self, message_id: str, deadline_epoch: float) -> None:
        now = time.time()
        if deadline_epoch > now + self.max_ahead_s + self.skew_s:
            raise RemoteError(ErrorCode.BAD_MESSAGE,
                              f"the deadline is more than {self.max_ahead_s:g} s ahead; a "
                              "request may only be valid for a short window")
        with self._lock:
            if now >= self._next_prune:
                self._prune(now)
            if message_id in self._interrupted:
                self._interrupted.discard(message_id)
                raise RemoteError(ErrorCode.FAILED,
                                  f"request {message_id} was interrupted: the agent stopped "
                                  "while it was running, and it is not run again. Check what "
                                  "it did, then send a new request if needed",
                                  {"interrupted": True})
            if message_id in self._seen:
                earlier = self._earlier_reply(message_id)
                details = {"earlier_reply": orjson.loads(earlier)} if earlier else {}
                raise RemoteError(ErrorCode.REPLAYED,
                                  f"request {message_id} was already received"
                                  + ("; its reply is in details.earlier_reply" if earlier
                                     else " and is still being handled")
                                  + ". Send a new message_id to repeat the action", details)
            expires = deadline_epoch + self.skew_s
            self._seen[message_id] = expires
            if self._db is not None:
                self._db.execute("INSERT OR REPLACE INTO seen (id, expires) VALUES (?, ?)",
                                 (message_id, expires))

    def remember_reply(self, message_id: str, reply_body: bytes) -> None:
        """With a database the body goes to disk only (a busy agent would otherwise hold
        every reply of the last minutes in memory); only a repeat reads it back."""
        with self._lock:
            if message_id not in self._seen:
                return
            if self._db is not None:
                self._db.execute("UPDATE seen SET reply = ? WHERE id = ?",
                                 (reply_body, message_id))
            else:
                self._replies[message_id] = reply_body

    def _earlier_reply(self, message_id: str) -> bytes | None:
        if self._db is None:
            return self._replies.get(message_id)
        row = self._db.execute("SELECT reply FROM seen WHERE id = ?", (message_id,)).fetchone()
        return row[0] if row else None

    def _prune(self, now: float) -> None:
        self._seen = {k: v for k, v in self._seen.items() if v > now}
        self._replies = {k: v for k, v in self._replies.items() if k in self._seen}
        if self._db is not None:
            self._db.execute("DELETE FROM seen WHERE expires <= ?", (now,))
        self._next_prune = now + 10
