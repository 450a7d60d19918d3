"""The state stores on a disk that refuses writes, without a real full disk (the
integration tests have one): a connection wrapper fails every write as SQLite does on a
full disk (SQLITE_FULL), until the test frees it."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import pytest

from hostbus.files import disk_trouble
from hostbus.security.replay import ReplayGuard
from hostbus.serving.outbox import Outgoing, Spool
from hostbus.transport.base import Properties

WRITES = ("INSERT", "UPDATE", "DELETE", "BEGIN", "CREATE", "DROP", "PRAGMA")


class FlakyDisk:
    """A sqlite3 connection whose writes fail while ``full``."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db, self.full = db, False

    def _check(self, sql: str) -> None:
        if self.full and sql.lstrip().upper().startswith(WRITES):
            exc = sqlite3.OperationalError("database or disk is full")
            exc.sqlite_errorcode = 13  # SQLITE_FULL
            raise exc

    def execute(self, sql: str, *args: Any) -> Any:
        self._check(sql)
        return self.db.execute(sql, *args)

    def executemany(self, sql: str, rows: Any) -> Any:
        self._check(sql)
        return self.db.executemany(sql, rows)


def event(oid: int, periodic: bool = False) -> Outgoing:
    return Outgoing(oid, "hostbus.event", "host.web01.alert", b'{"n": %d}' % oid,
                    Properties(message_id=str(oid)), periodic)


def test_disk_trouble_is_told_from_a_bug():
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = 13
    assert disk_trouble(full) == "database or disk is full"
    assert disk_trouble(OSError(28, "No space left on device")) == "No space left on device"
    assert disk_trouble(sqlite3.OperationalError("no such table: x")) is None
    assert disk_trouble(ValueError("a bug")) is None


def test_a_spool_on_a_full_disk_keeps_events_in_order_and_strands_none(tmp_path):
    spool = Spool(tmp_path / "spool.db")
    disk = spool._db = FlakyDisk(spool._db)  # type: ignore[assignment]
    for oid in (1, 2, 3):
        spool.put(event(oid))  # in the file
    disk.full = True
    for oid in (4, 5):
        assert spool.put(event(oid))  # in memory
    assert spool.durability.reason == "database or disk is full"
    assert [r.oid for r in spool.after(0, 10)] == [1, 2, 3, 4, 5]
    spool.remove(1)  # sent: marked gone, still in the file
    spool.remove(4)
    assert (spool.count, [r.oid for r in spool.after(0, 10)]) == (3, [2, 3, 5])
    assert [r.oid for r in spool.after(2, 1)] == [3]

    disk.full = False
    spool.durability._next_try = 0  # the test does not wait out the backoff
    spool.retry()
    assert spool.durability.ok
    rows = [r[0] for r in disk.db.execute("SELECT oid FROM spool ORDER BY oid")]
    assert rows == [2, 3, 5]  # what a restart would send: nothing sent twice, none lost
    assert Spool(tmp_path / "spool.db").count == 3


def test_a_full_spool_drops_the_oldest_periodic_sample_wherever_it_is(tmp_path):
    spool = Spool(tmp_path / "spool.db", max_bytes=3 * event(0).size)
    disk = spool._db = FlakyDisk(spool._db)  # type: ignore[assignment]
    spool.put(event(1, periodic=True))
    disk.full = True
    spool.put(event(2, periodic=True))
    spool.put(event(3))
    spool.put(event(4))  # over the limit: the oldest sample (in the file) goes
    assert [r.oid for r in spool.after(0, 10)] == [2, 3, 4]
    assert spool.dropped == 1


def test_the_replay_guard_on_a_full_disk_answers_and_writes_later(tmp_path):
    guard = ReplayGuard(path=tmp_path / "recent.db")
    disk = guard._db = FlakyDisk(guard._db)  # type: ignore[assignment]
    deadline = time.time() + 60
    guard.check("alice", "m1", deadline)
    disk.full = True
    guard.check("alice", "m2", deadline)  # no error: kept in memory
    guard.started("alice", "m1")
    guard.remember_reply("alice", "m1", b'{"v": 1, "status": "ok"}')
    guard.started("alice", "m2")
    assert guard.durability is not None and not guard.durability.ok
    with pytest.raises(Exception, match="still being handled"):
        guard.check("alice", "m2", deadline)
    with pytest.raises(Exception, match=r"details\.earlier_reply"):
        guard.check("alice", "m1", deadline)

    disk.full = False
    guard.durability._next_try = 0
    guard.retry()
    assert guard.durability.ok
    rows = dict((mid, (started, reply)) for mid, started, reply in disk.db.execute(
        "SELECT id, started, reply FROM requests"))
    assert rows == {"m1": (1, b'{"v": 1, "status": "ok"}'), "m2": (1, None)}


def test_the_heartbeat_names_the_stores_that_cannot_write_as_its_schema_says(memory_broker,
                                                                            tmp_path):
    import jsonschema

    from hostbus.schema import load_agent_schema
    from hostbus.security.audit import AuditLog
    from hostbus.serving.runtime import AgentRuntime
    from hostbus.transport.memory import MemoryTransport
    from tests.fakes import make_host_agent

    memory_broker.enroll("web01", ["host"])
    transport = MemoryTransport(memory_broker, user="web01")
    transport.start()
    agent, _, _ = make_host_agent("web01")
    guard = ReplayGuard(path=tmp_path / "recent.db")
    runtime = AgentRuntime(transport, "web01", [agent], heartbeat_interval=0, replay=guard,
                           spool=Spool(tmp_path / "spool.db"),
                           audit=AuditLog(tmp_path / "audit.jsonl"))
    assert runtime.state_disk() == {"ok": True, "failing": {}, "audit_records_lost": 0}
    disk = guard._db = FlakyDisk(guard._db)  # type: ignore[assignment]
    disk.full = True
    guard.check("alice", "m1", time.time() + 60)
    state = runtime.state_disk()
    assert state == {"ok": False, "failing": {"recent_requests": "database or disk is full"},
                     "audit_records_lost": 0}
    data_schema = load_agent_schema("agent").raw["events"]["heartbeat"]["data"]
    jsonschema.validate({"agents": ["host"], "version": "1", "epoch": "e", "uptime_s": 1,
                         "interval_s": 10, "state_disk": state}, data_schema)
    transport.close()
