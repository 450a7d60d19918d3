"""Where events leave an agent: under publisher confirms while the broker is there, into
a bounded spool on disk while it is not, and from the spool in order once it is back.

An event counts as sent only when the broker confirmed it (pipelined: many in flight,
no wait per event). Until then it is held in memory; if the connection drops, or the
channel (AMQP 1.0: the link) the events go out on (the broker ends it when it refuses an
event), whatever is unconfirmed goes to the spool ahead of anything newer, keeping its
number, and any copy of it still waiting for the I/O thread is withdrawn, so the order
per agent survives. While the spool holds anything, new events join it at the
back, and the spool drains through the same confirmed path, a window at a time; a row
leaves the spool only when the broker has confirmed it, so events survive an agent
restart during an outage too. A copy may reach the broker twice (sent, connection
lost before its confirm): consumers drop repeats by (epoch, seq).

When the spool is full, periodic samples (schema: ``"periodic": true``: metrics,
heartbeats) are dropped, oldest first; other events (lifecycle, alerts, provisioning)
are never dropped: they are kept beyond the limit, with a warning. The counts go into
every heartbeat.
"""

from __future__ import annotations

import itertools
import logging
import sqlite3
import threading
from dataclasses import dataclass, field, fields
from pathlib import Path

import orjson

from hostbus.files import Durability, disk_trouble, open_database
from hostbus.publisher import Publisher
from hostbus.transport.base import Properties

log = logging.getLogger("hostbus.outbox")

_PROPS = [f.name for f in fields(Properties)]


@dataclass(slots=True)
class Outgoing:
    oid: int  # the outbox's own order; a respooled event keeps it
    exchange: str
    routing_key: str
    body: bytes
    props: Properties
    periodic: bool = False
    size: int = field(init=False)

    def __post_init__(self) -> None:
        self.size = len(self.body) + 200  # properties and row overhead, roughly


class Spool:
    """Events waiting for the broker, in a SQLite file (in memory without a path).

    If the file cannot be written (a full disk), events go to memory instead, and rows
    sent since stay in the file marked gone; ``retry`` writes the former and deletes the
    latter once the disk takes writes again, so nothing is lost meanwhile (unless the
    agent dies) and nothing sent is sent again after a restart."""

    def __init__(self, path: str | Path | None, max_bytes: int = 64 << 20) -> None:
        self.max_bytes = max_bytes
        self.dropped = 0
        self._warned = False
        self._path = Path(path) if path is not None else None
        self._mem: dict[int, Outgoing] = {}  # events the file did not take
        self._gone: set[int] = set()  # rows sent, still in the file
        self._db: sqlite3.Connection | None = None
        self._ready = False
        self.durability = Durability(
            "event_spool", path or ":memory:",
            "events that wait for the broker are kept in memory (lost if the agent dies)")
        self.count = self.bytes = 0
        try:
            self._open()
            self.count, self.bytes = self._db.execute(  # type: ignore[union-attr]
                "SELECT count(*), coalesce(sum(size), 0) FROM spool").fetchone()
        except (sqlite3.Error, OSError) as exc:
            self._trouble(exc)

    def _open(self) -> None:
        if self._db is None:  # NORMAL: survives an agent crash
            self._db = open_database(self._path, synchronous="NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS spool (oid INTEGER PRIMARY KEY, "
                         "periodic INTEGER, exchange TEXT, routing_key TEXT, props BLOB, "
                         "body BLOB, size INTEGER)")
        self._ready = True

    def _trouble(self, exc: BaseException) -> None:
        reason = disk_trouble(exc)
        if reason is None:
            raise exc
        self.durability.failed(reason)

    def _writable(self) -> bool:
        return self._ready and self.durability.ok

    def max_oid(self) -> int:
        found = 0
        if self._ready:
            assert self._db is not None
            found = int(self._db.execute("SELECT coalesce(max(oid), 0) FROM spool"
                                         ).fetchone()[0])
        return max(found, *self._mem, 0)

    def _oldest_periodic(self) -> tuple[int, int] | None:
        """(oid, size) of the oldest periodic sample waiting, file or memory."""
        found = None
        if self._ready:
            assert self._db is not None
            for oid, size in self._db.execute(
                    "SELECT oid, size FROM spool WHERE periodic = 1 ORDER BY oid"):
                if oid not in self._gone:
                    found = (oid, size)
                    break
        kept = min((r.oid for r in self._mem.values() if r.periodic), default=None)
        if kept is not None and (found is None or kept < found[0]):
            found = (kept, self._mem[kept].size)
        return found

    def put(self, rec: Outgoing) -> bool:
        """Store ``rec``, dropping periodic samples oldest first to stay in bounds;
        False if ``rec`` itself was dropped."""
        while self.bytes + rec.size > self.max_bytes:
            oldest = self._oldest_periodic()
            if oldest is None:
                break
            self._delete(*oldest)
            self.dropped += 1
        if self.bytes + rec.size > self.max_bytes:
            if rec.periodic:
                self.dropped += 1
                return False
            if not self._warned:
                log.warning("the event spool is over its limit of %d bytes with events "
                            "that are never dropped; keeping them", self.max_bytes)
                self._warned = True
        if rec.oid in self._mem:
            return True
        if self._writable():
            assert self._db is not None
            props = orjson.dumps({k: getattr(rec.props, k) for k in _PROPS})
            try:
                cur = self._db.execute(
                    "INSERT OR IGNORE INTO spool VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (rec.oid, int(rec.periodic), rec.exchange, rec.routing_key, props,
                     rec.body, rec.size))
            except sqlite3.Error as exc:
                self._trouble(exc)
            else:
                if cur.rowcount:
                    self.count += 1
                    self.bytes += rec.size
                return True
        self._mem[rec.oid] = rec
        self.count += 1
        self.bytes += rec.size
        return True

    def after(self, oid: int, limit: int) -> list[Outgoing]:
        found: list[Outgoing] = []
        if self._ready:
            assert self._db is not None
            rows = self._db.execute(
                "SELECT oid, periodic, exchange, routing_key, props, body FROM spool "
                "WHERE oid > ? ORDER BY oid LIMIT ?", (oid, limit + len(self._gone)))
            found = [Outgoing(r[0], r[2], r[3], r[5], Properties(**orjson.loads(r[4])),
                              bool(r[1]))
                     for r in rows if r[0] not in self._gone and r[0] not in self._mem]
        found += [r for r in self._mem.values() if r.oid > oid]
        found.sort(key=lambda r: r.oid)
        return found[:limit]

    def remove(self, oid: int) -> None:
        kept = self._mem.get(oid)
        if kept is not None:
            self._delete(oid, kept.size)
            return
        if not self._ready or oid in self._gone:
            return
        assert self._db is not None
        row = self._db.execute("SELECT size FROM spool WHERE oid = ?", (oid,)).fetchone()
        if row is not None:
            self._delete(oid, row[0])

    def _delete(self, oid: int, size: int) -> None:
        if self._mem.pop(oid, None) is None:
            deleted = False
            if self._writable():
                assert self._db is not None
                try:
                    self._db.execute("DELETE FROM spool WHERE oid = ?", (oid,))
                    deleted = True
                except sqlite3.Error as exc:
                    self._trouble(exc)
            if not deleted:
                self._gone.add(oid)  # deleted from the file once it takes writes
        self.count -= 1
        self.bytes -= size
        if self.count == 0:
            self._warned = False

    def retry(self) -> None:
        """Periodically: once the disk takes writes again, move the events kept in
        memory to the file and delete the rows sent meanwhile (attempts spaced out)."""
        if not self.durability.due():
            return
        try:
            self._open()
            assert self._db is not None
            self._db.execute("BEGIN")
            try:
                self._db.executemany("DELETE FROM spool WHERE oid = ?",
                                     [(oid,) for oid in self._gone])
                self._db.executemany(
                    "INSERT OR IGNORE INTO spool VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(r.oid, int(r.periodic), r.exchange, r.routing_key,
                      orjson.dumps({k: getattr(r.props, k) for k in _PROPS}), r.body, r.size)
                     for r in self._mem.values()])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except (sqlite3.Error, OSError) as exc:
            self._trouble(exc)
            return
        self._gone.clear()
        self._mem.clear()
        self.durability.recovered()


class _Attempt:
    """One publish of one event, and its confirm callback. When the outbox takes events
    back (their channel or connection went away), it withdraws their attempts: a
    transport drops a withdrawn publish it has not sent yet (a copy queued before the
    loss would otherwise overtake the copies sent again in order), and the outbox
    ignores what is reported later of a withdrawn attempt."""

    __slots__ = ("_outbox", "oid", "withdrawn")

    def __init__(self, outbox: EventOutbox, oid: int) -> None:
        self.oid = oid
        self.withdrawn = False
        self._outbox = outbox

    def __call__(self, ok: bool | None) -> None:
        self._outbox._confirmed(self, ok)


class EventOutbox:
    def __init__(self, publisher: Publisher, spool: Spool | None = None, *,
                 window: int = 256) -> None:
        self.publisher = publisher
        transport = publisher.transport
        self.spool = spool or Spool(None)
        self.window = window
        self.rejected = 0  # refused by the broker (a Basic.Nack): logged, not retried
        self._lock = threading.RLock()
        self._ids = itertools.count(self.spool.max_oid() + 1)
        self._online = True
        self._inflight: dict[int, Outgoing] = {}  # fast path: sent, not yet confirmed
        self._draining: set[int] = set()  # spool rows sent, not yet confirmed
        self._attempts: dict[int, _Attempt] = {}  # the live publish of each of those
        self._cursor = 0  # the last spool row sent in this pass
        self._takebacks = 0  # how many times events were taken back (ends a pump)
        self._pumping = False
        self._idle = threading.Condition(self._lock)
        transport.on_connection_lost(self._on_lost)
        transport.on_connection_restored(self._on_restored)
        if self.spool.count:
            log.info("%d events from before a restart wait in the spool", self.spool.count)

    def send(self, exchange: str, routing_key: str, body: bytes, props: Properties, *,
             periodic: bool = False) -> None:
        with self._lock:
            rec = Outgoing(next(self._ids), exchange, routing_key, body, props, periodic)
            if self._online and not self.spool.count and not self._draining:
                self._inflight[rec.oid] = rec
                self._publish(rec)
                return
            self.spool.put(rec)
            if self._online:
                self._pump()

    def status(self) -> dict[str, int]:
        """For the heartbeat."""
        with self._lock:
            return {"spooled": self.spool.count, "dropped": self.spool.dropped,
                    "rejected": self.rejected, "unconfirmed": len(self._inflight)}

    def wait_confirmed(self, timeout: float) -> bool:
        """Until every event sent so far is confirmed (or spooled): for a clean stop."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._inflight and not self._draining,
                                       timeout)

    # ------------------------------------------------------------------ inside
    def _publish(self, rec: Outgoing) -> None:
        attempt = self._attempts[rec.oid] = _Attempt(self, rec.oid)
        self.publisher.publish(rec.exchange, rec.routing_key, rec.body, rec.props,
                               persistent=True, confirm=attempt)

    def _confirmed(self, attempt: _Attempt, ok: bool | None) -> None:
        """On the I/O thread. True: sent. False: the broker refused it (not retried,
        counted), whichever copy it was. None: unknown, the connection or channel went
        away first: then so did everything sent with it, and every event not confirmed
        goes (back) to the spool under its own number, to be sent again in order."""
        with self._lock:
            oid = attempt.oid
            current = self._attempts.get(oid) is attempt
            if ok is False:
                self._refused(oid)
            elif not current:
                pass  # a copy taken back already: its event is spooled or sent again
            elif ok:
                del self._attempts[oid]
                self._inflight.pop(oid, None)
                if oid in self._draining:
                    self._draining.discard(oid)
                    self.spool.remove(oid)
            else:
                self._take_back()
            if self._online and self.spool.count:
                self._pump()
            if not self._inflight and not self._draining:
                self._idle.notify_all()

    def _refused(self, oid: int) -> None:
        rec = self._inflight.pop(oid, None)
        self.rejected += 1
        log.error("the broker refused event %s (%s); it is not sent again",
                  oid, rec.routing_key if rec else "from the spool")
        attempt = self._attempts.pop(oid, None)
        if attempt is not None:
            attempt.withdrawn = True  # a copy sent again, not out yet: it stays here
        self._draining.discard(oid)
        self.spool.remove(oid)

    def _take_back(self) -> None:
        """Every event sent and not confirmed goes to the spool, its attempt withdrawn;
        the next pump sends them again from the oldest."""
        for oid in sorted(self._inflight):
            self.spool.put(self._inflight[oid])
        for attempt in self._attempts.values():
            attempt.withdrawn = True
        self._attempts.clear()
        self._inflight.clear()
        self._draining.clear()  # still in the spool
        self._cursor = 0
        self._takebacks += 1

    def _pump(self) -> None:
        # Not re-entered: a publish that fails at once reports None from inside this
        # loop, which takes everything back; the loop then stops until the next event.
        if self._pumping:
            return
        self._pumping = True
        try:
            takebacks = self._takebacks
            room = self.window - len(self._draining)
            if room <= 0:
                return
            for rec in self.spool.after(self._cursor, room + len(self._draining)):
                if self._takebacks != takebacks:
                    return
                self._cursor = rec.oid
                if rec.oid in self._draining:
                    continue  # already on its way
                self._draining.add(rec.oid)
                self._publish(rec)
                room -= 1
                if room == 0:
                    break
        finally:
            self._pumping = False

    def _on_lost(self, exc: Exception) -> None:
        with self._lock:
            self._online = False
            if self._inflight:
                log.info("broker connection lost: %d unconfirmed events kept in the spool "
                         "(%d waiting in all)", len(self._inflight),
                         self.spool.count + len(self._inflight))
            self._take_back()  # sent again after the reconnect
            self._idle.notify_all()

    def retry(self) -> None:
        """Periodically: the spool writes out what it kept in memory while its disk was
        full, once it can (and sends on if the broker is there)."""
        with self._lock:
            self.spool.retry()
            if self._online and self.spool.count:
                self._pump()

    def resume(self) -> None:
        """Once the transport is connected: send what an earlier run left spooled."""
        self._on_restored()

    def _on_restored(self) -> None:
        with self._lock:
            self._online = True
            if self.spool.count:
                log.info("broker back: sending %d spooled events in order", self.spool.count)
                self._pump()
