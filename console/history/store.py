"""Where the historian keeps events: SQLite by default (one file, nothing to install),
PostgreSQL through a ``postgresql://`` URL for fleets that outgrow one file.

One table, ``events``: the event's envelope as received (``body``, the exact JSON), its
identifying properties (``message_id``, ``user_id``), the fields queries select on, the
time it arrived and its stored size. ``(host, agent, epoch, seq)`` is unique, so an
event delivered twice (at-least-once) is stored once. Rows are read back in the order
of their event time, then of their arrival (``id``), which is also the paging cursor.

Retention: by age (``max_age_s``, on the event's time) and by size (``max_bytes``, the
events' stored bytes: body and properties; the indexes add to the files, measured in
benchmarks/README.md). The oldest events go first.
"""

from __future__ import annotations

import abc
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hostbus import codec

#: Bytes counted per row beyond its body and properties (the fields queries use).
ROW_OVERHEAD = 64
#: Retention deletes at most this many rows per transaction.
DELETE_BATCH = 10_000


@dataclass(frozen=True, slots=True)
class Row:
    """One event as stored."""

    host: str
    agent: str
    event: str
    epoch: str
    seq: int
    time_ms: int
    received_ms: int
    message_id: str | None
    user_id: str | None
    body: bytes  # the envelope as it arrived

    @property
    def size(self) -> int:
        return len(self.body) + len(self.message_id or "") + len(self.user_id or "") \
            + ROW_OVERHEAD

    def record(self) -> dict[str, Any]:
        """The envelope, with where it came from (what ``history.query`` returns)."""
        return {**codec.decode_object(self.body), "message_id": self.message_id,
                "user_id": self.user_id, "received": ms_to_rfc3339(self.received_ms)}


def time_ms(text: str) -> int:
    """An event's RFC 3339 time as milliseconds since the epoch."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def ms_to_rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Query:
    """What to read. Each field narrows; None means any. ``after`` is the cursor
    (time_ms, id) of the last row of the previous page."""

    since_ms: int | None = None
    until_ms: int | None = None
    hosts: tuple[str, ...] = ()
    agent: str | None = None
    event: str | None = None  # an exact event name (``alert``, ``domain.lifecycle``)
    event_prefix: str | None = None  # names under ``domain.`` (from a pattern's ``#``)
    after: tuple[int, int] | None = None
    limit: int = 1000


@dataclass(frozen=True)
class Stats:
    events: int
    bytes: int
    oldest_ms: int | None
    newest_ms: int | None


class EventStore(abc.ABC):
    """The historian's storage. Thread-safe: the writer thread inserts, the agent's
    workers query, the retention task deletes."""

    url: str

    @abc.abstractmethod
    def insert(self, rows: Sequence[Row]) -> int:
        """Store ``rows`` in one transaction; repeats of stored events are skipped.
        Returns how many were new."""

    @abc.abstractmethod
    def query(self, q: Query) -> list[tuple[int, Row]]:
        """(id, row) pairs in (time, id) order after ``q.after``, at most ``q.limit``."""

    @abc.abstractmethod
    def stats(self) -> Stats: ...

    @abc.abstractmethod
    def delete_before(self, time_ms: int, limit: int) -> int:
        """Delete at most ``limit`` of the events older than ``time_ms``, oldest first;
        how many went."""

    @abc.abstractmethod
    def delete_oldest(self, n: int) -> int:
        """Delete the ``n`` oldest events; how many went."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def apply_retention(self, *, max_age_s: float, max_bytes: int,
                        now_ms: int | None = None) -> int:
        """Drop what is too old, then the oldest until the size fits; how many went."""
        gone = 0
        if max_age_s > 0:
            now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
            # In transactions of at most DELETE_BATCH rows, so inserts and queries are
            # not held up for long (a first pass over a big store may delete millions).
            while (n := self.delete_before(now_ms - int(max_age_s * 1000),
                                           DELETE_BATCH)) > 0:
                gone += n
                if n < DELETE_BATCH:
                    break
        if max_bytes > 0:
            while True:
                st = self.stats()
                if st.bytes <= max_bytes or st.events == 0:
                    break
                # Delete about the excess (by the mean row), at least 1, at most
                # DELETE_BATCH per transaction.
                mean = st.bytes / st.events
                n = min(DELETE_BATCH, max(1, int((st.bytes - max_bytes) / mean) + 1))
                gone += self.delete_oldest(n)
        return gone


def open_store(where: str) -> EventStore:
    """``postgresql://...`` (or ``postgres://``): PostgreSQL; anything else is the path of
    an SQLite file (made if missing)."""
    if where.startswith(("postgresql://", "postgres://")):
        return PostgresStore(where)
    return SQLiteStore(Path(where))


def _where(q: Query, param: str) -> tuple[str, list[Any]]:
    """The WHERE clause of ``q`` (``param`` is the driver's placeholder)."""
    terms: list[str] = []
    args: list[Any] = []
    if q.since_ms is not None:
        terms.append(f"time_ms >= {param}")
        args.append(q.since_ms)
    if q.until_ms is not None:
        terms.append(f"time_ms < {param}")
        args.append(q.until_ms)
    if q.hosts:
        terms.append(f"host IN ({', '.join([param] * len(q.hosts))})")
        args.extend(q.hosts)
    if q.agent is not None:
        terms.append(f"agent = {param}")
        args.append(q.agent)
    if q.event is not None:
        terms.append(f"event = {param}")
        args.append(q.event)
    elif q.event_prefix is not None:
        # event names are [a-z0-9_.] only: a range instead of LIKE, so an index serves it
        terms.append(f"event >= {param} AND event < {param}")
        args.extend([q.event_prefix, q.event_prefix + "\x7f"])
    if q.after is not None:
        terms.append(f"(time_ms > {param} OR (time_ms = {param} AND id > {param}))")
        args.extend([q.after[0], q.after[0], q.after[1]])
    return (" WHERE " + " AND ".join(terms)) if terms else "", args


_COLUMNS = "id, host, agent, event, epoch, seq, time_ms, received_ms, message_id, user_id, body"


def _row(record: Sequence[Any]) -> tuple[int, Row]:
    body = record[10]
    return int(record[0]), Row(record[1], record[2], record[3], record[4], int(record[5]),
                               int(record[6]), int(record[7]), record[8], record[9],
                               bytes(body) if not isinstance(body, bytes) else body)


def _values(rows: Iterable[Row]) -> list[tuple[Any, ...]]:
    return [(r.host, r.agent, r.event, r.epoch, r.seq, r.time_ms, r.received_ms,
             r.message_id, r.user_id, r.body, r.size) for r in rows]


# ------------------------------------------------------------------------- SQLite
class SQLiteStore(EventStore):
    """One file in WAL mode: readers never wait for the writer. One connection, used
    under a lock (Python's sqlite3 objects are not to be shared between threads
    unguarded); a batch insert holds it for a few milliseconds."""

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS events (
        id INTEGER PRIMARY KEY,
        host TEXT NOT NULL, agent TEXT NOT NULL, event TEXT NOT NULL,
        epoch TEXT NOT NULL, seq INTEGER NOT NULL,
        time_ms INTEGER NOT NULL, received_ms INTEGER NOT NULL,
        message_id TEXT, user_id TEXT, body BLOB NOT NULL, size INTEGER NOT NULL,
        UNIQUE (host, agent, epoch, seq)
    );
    CREATE INDEX IF NOT EXISTS events_time ON events (time_ms);
    CREATE INDEX IF NOT EXISTS events_host_time ON events (host, time_ms);
    CREATE INDEX IF NOT EXISTS events_name_time ON events (agent, event, time_ms);
    CREATE TABLE IF NOT EXISTS totals (one INTEGER PRIMARY KEY CHECK (one = 1),
                                       events INTEGER NOT NULL, bytes INTEGER NOT NULL);
    INSERT OR IGNORE INTO totals VALUES (1, 0, 0);
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.url = str(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL: a commit is durable once the WAL is synced at checkpoint; a power cut
        # may lose the last batches, which the broker then redelivers (acked only after
        # the commit returns) -- but not corrupt the file.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(self.SCHEMA)

    def insert(self, rows: Sequence[Row]) -> int:
        if not rows:
            return 0
        values = _values(rows)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                before = self._db.total_changes
                self._db.executemany(
                    "INSERT OR IGNORE INTO events (host, agent, event, epoch, seq, time_ms, "
                    "received_ms, message_id, user_id, body, size) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", values)
                added = self._db.total_changes - before
                if added == len(values):
                    self._db.execute("UPDATE totals SET events = events + ?, "
                                     "bytes = bytes + ?",
                                     (added, sum(v[-1] for v in values)))
                elif added:  # some were repeats: which ones is not told; count again
                    self._recount()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return added

    def _recount(self) -> None:
        self._db.execute("UPDATE totals SET events = (SELECT count(*) FROM events), "
                         "bytes = (SELECT coalesce(sum(size), 0) FROM events)")

    def query(self, q: Query) -> list[tuple[int, Row]]:
        where, args = _where(q, "?")
        sql = f"SELECT {_COLUMNS} FROM events{where} ORDER BY time_ms, id LIMIT ?"
        with self._lock:
            return [_row(r) for r in self._db.execute(sql, [*args, q.limit])]

    def stats(self) -> Stats:
        with self._lock:
            events, size = self._db.execute("SELECT events, bytes FROM totals").fetchone()
            oldest, newest = self._db.execute(
                "SELECT min(time_ms), max(time_ms) FROM events").fetchone()
        return Stats(int(events), int(size), oldest, newest)

    def _delete(self, where: str, args: Sequence[Any]) -> int:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                gone, size = self._db.execute(
                    f"SELECT count(*), coalesce(sum(size), 0) FROM events WHERE {where}",
                    args).fetchone()
                self._db.execute(f"DELETE FROM events WHERE {where}", args)
                self._db.execute("UPDATE totals SET events = events - ?, bytes = bytes - ?",
                                 (gone, size))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return int(gone)

    def delete_before(self, time_ms: int, limit: int) -> int:
        return self._delete("id IN (SELECT id FROM events WHERE time_ms < ? "
                            "ORDER BY time_ms, id LIMIT ?)", (time_ms, limit))

    def delete_oldest(self, n: int) -> int:
        return self._delete("id IN (SELECT id FROM events ORDER BY time_ms, id LIMIT ?)",
                            (n,))

    def close(self) -> None:
        with self._lock:
            self._db.close()


# --------------------------------------------------------------------- PostgreSQL
class PostgresStore(EventStore):
    """The same table in PostgreSQL (psycopg 3, the ``history`` extra). One connection
    for writes and one for reads, each under its own lock, so a long query does not
    hold up ingestion."""

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS events (
        id BIGSERIAL PRIMARY KEY,
        host TEXT NOT NULL, agent TEXT NOT NULL, event TEXT NOT NULL,
        epoch TEXT NOT NULL, seq BIGINT NOT NULL,
        time_ms BIGINT NOT NULL, received_ms BIGINT NOT NULL,
        message_id TEXT, user_id TEXT, body BYTEA NOT NULL, size INTEGER NOT NULL,
        UNIQUE (host, agent, epoch, seq)
    );
    CREATE INDEX IF NOT EXISTS events_time ON events (time_ms, id);
    CREATE INDEX IF NOT EXISTS events_host_time ON events (host, time_ms, id);
    CREATE INDEX IF NOT EXISTS events_name_time ON events (agent, event, time_ms, id);
    CREATE TABLE IF NOT EXISTS totals (one INTEGER PRIMARY KEY CHECK (one = 1),
                                       events BIGINT NOT NULL, bytes BIGINT NOT NULL);
    INSERT INTO totals VALUES (1, 0, 0) ON CONFLICT DO NOTHING;
    """

    def __init__(self, url: str) -> None:
        try:
            import psycopg
        except ImportError:
            from hostbus.errors import ConfigError

            raise ConfigError("a postgresql:// store needs psycopg: pip install "
                              "'hostbus[history]'") from None
        self.url = url
        self._writer = psycopg.connect(url, autocommit=False)
        self._reader = psycopg.connect(url, autocommit=True)
        self._wlock = threading.Lock()
        self._rlock = threading.Lock()
        with self._writer.transaction():
            self._writer.execute("SELECT pg_advisory_xact_lock(7248331)")  # one creator
            for statement in filter(str.strip, self.SCHEMA.split(";")):
                self._writer.execute(statement)  # type: ignore[arg-type]

    def insert(self, rows: Sequence[Row]) -> int:
        if not rows:
            return 0
        values = _values(rows)
        with self._wlock, self._writer.transaction(), self._writer.cursor() as cur:
            # One statement for the batch: unnest of column arrays, RETURNING what was
            # new, so the totals count exactly those.
            columns = list(zip(*values, strict=True))
            cur.execute(
                "INSERT INTO events (host, agent, event, epoch, seq, time_ms, received_ms, "
                "message_id, user_id, body, size) SELECT * FROM unnest("
                "%s::text[], %s::text[], %s::text[], %s::text[], %s::bigint[], "
                "%s::bigint[], %s::bigint[], %s::text[], %s::text[], %s::bytea[], "
                "%s::int[]) ON CONFLICT DO NOTHING RETURNING size",
                [list(c) for c in columns])
            sizes = [r[0] for r in cur.fetchall()]
            if sizes:
                cur.execute("UPDATE totals SET events = events + %s, bytes = bytes + %s",
                            (len(sizes), sum(sizes)))
        return len(sizes)

    def query(self, q: Query) -> list[tuple[int, Row]]:
        where, args = _where(q, "%s")
        sql = f"SELECT {_COLUMNS} FROM events{where} ORDER BY time_ms, id LIMIT %s"
        with self._rlock:
            return [_row(r) for r in self._reader.execute(sql, [*args, q.limit])]  # type: ignore[arg-type]

    def stats(self) -> Stats:
        with self._rlock:
            events, size = self._reader.execute(
                "SELECT events, bytes FROM totals").fetchone()  # type: ignore[misc]
            oldest, newest = self._reader.execute(
                "SELECT min(time_ms), max(time_ms) FROM events").fetchone()  # type: ignore[misc]
        return Stats(int(events), int(size), oldest, newest)

    def _delete(self, where: str, args: Sequence[Any]) -> int:
        with self._wlock, self._writer.transaction(), self._writer.cursor() as cur:
            cur.execute(f"DELETE FROM events WHERE {where} RETURNING size", args)  # type: ignore[arg-type]
            sizes = [r[0] for r in cur.fetchall()]
            if sizes:
                cur.execute("UPDATE totals SET events = events - %s, bytes = bytes - %s",
                            (len(sizes), sum(sizes)))
        return len(sizes)

    def delete_before(self, time_ms: int, limit: int) -> int:
        return self._delete("id IN (SELECT id FROM events WHERE time_ms < %s "
                            "ORDER BY time_ms, id LIMIT %s)", (time_ms, limit))

    def delete_oldest(self, n: int) -> int:
        return self._delete("id IN (SELECT id FROM events ORDER BY time_ms, id LIMIT %s)",
                            (n,))

    def close(self) -> None:
        with self._wlock, self._rlock:
            self._writer.close()
            self._reader.close()
