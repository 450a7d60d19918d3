"""A full state disk: the agent keeps answering, counts what it cannot keep, says so once
(and in its heartbeat), and catches up by itself once the disk has room, without sending
anything twice. The state folder is a real small filesystem (tmpfs) that the test fills
and frees; the agent reaches the broker through a TCP proxy, so it can be cut off while
the disk is full."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from console.client import Console
from hostbus import codec
from hostbus.security.audit import AuditLog
from hostbus.security.replay import ReplayGuard
from hostbus.serving.approvals import ApprovalStore
from hostbus.serving.outbox import Spool
from hostbus.serving.runtime import AgentRuntime
from hostbus.testing.pytest_plugin import fail_or_skip
from hostbus.transport.base import Delivery, Properties
from tests.fakes import PROBE_SCHEMA, EventCollector, ProbeAgent, make_host_agent
from tests.raw_caller import RawCaller
from tests.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


class SmallDisk:
    """A filesystem of ``size`` mounted at ``path``, with a file that fills it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / "filler"

    def fill(self) -> None:
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for chunk in (65536, 4096, 512, 1):
                with contextlib.suppress(OSError):
                    while True:
                        os.write(fd, b"\0" * chunk)
        finally:
            os.close(fd)
        probe = self.path / "probe"
        with pytest.raises(OSError), open(probe, "wb") as fh:
            fh.write(b"x" * 4096)
            fh.flush()
        probe.unlink(missing_ok=True)

    def free(self) -> None:
        self.filler.unlink()


@pytest.fixture
def small_disk(tmp_path) -> Iterator[SmallDisk]:
    path = tmp_path / "state"
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs",
                              str(path)], capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        fail_or_skip(f"cannot mount a small filesystem for the state disk (needs root): "
                     f"{mounted.stderr.strip()}")
    try:
        yield SmallDisk(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


class Warnings(logging.Handler):
    """Every warning and error the agent logs, to count them."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def saying(self, text: str) -> list[logging.LogRecord]:
        return [r for r in self.records if text in r.getMessage()]


@pytest.fixture
def warnings() -> Iterator[Warnings]:
    handler = Warnings()
    logger = logging.getLogger("hostbus")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def beat(heartbeats: EventCollector, ok: bool, timeout: float = 60) -> dict:
    """The first heartbeat from now on whose state_disk.ok is ``ok``."""
    seen = len(heartbeats.events)
    heartbeats.wait_until(lambda evs: any(e.data["state_disk"]["ok"] is ok
                                          for e, _ in evs[seen:]), timeout)
    return next(e.data for e, _ in heartbeats.events[seen:]
                if e.data["state_disk"]["ok"] is ok)


def alerts(collector: EventCollector) -> list[float]:
    return [e.data["value"] for e, _ in collector.events if e.event == "alert"]


def test_an_agent_on_a_full_state_disk_keeps_serving_and_catches_up(
        rabbitmq, small_disk, warnings):
    host = f"sd-{uuid.uuid4().hex[:6]}"
    rabbitmq.enroll(host, ["host", "probe"])
    state = small_disk.path
    proxy = TcpProxy.to(rabbitmq.url)
    console = Console.connect(rabbitmq.url, schemas={"probe": PROBE_SCHEMA})
    heartbeats, seen = EventCollector(), EventCollector()
    console.subscribe([f"agent.{host}.heartbeat"], heartbeats)
    console.subscribe([f"host.{host}.alert"], seen)
    agent, _, _ = make_host_agent(host)
    audit = AuditLog(state / "audit.jsonl")
    runtime = AgentRuntime.serve(
        proxy.url(rabbitmq.url), host, [agent, ProbeAgent()], heartbeat_interval=0.3,
        schemas={"probe": PROBE_SCHEMA}, audit=audit,
        replay=ReplayGuard(path=state / "recent.db"), spool=Spool(state / "spool.db"))
    caller = RawCaller(rabbitmq.raw_url)

    def emit(first: int, count: int) -> None:
        for n in range(first, first + count):
            agent.emit("alert", {"metric": "cpu_percent", "state": "raised",
                                 "value": float(n), "threshold": 90.0})

    try:
        assert console.call("probe", "echo", {"text": "a"}, host=host).status == "ok"
        # Cut off from the broker: 40 events wait in the spool file, then the disk
        # fills and 40 more wait in memory.
        lost = runtime.transport.on_connection_lost
        offline = threading.Event()
        lost(lambda exc: offline.set())
        proxy.refuse()
        proxy.cut()
        assert offline.wait(60)
        emit(0, 40)
        small_disk.fill()
        emit(40, 40)
        restored = threading.Event()
        runtime.transport.on_connection_restored(restored.set)
        proxy.refuse(False)
        assert restored.wait(60)

        # Every request is answered on the full disk, and every event arrives once,
        # in order.
        assert console.call("agent", "ping", host=host).status == "ok"
        echoed = console.call("probe", "echo", {"text": "b"}, host=host)
        assert echoed.status == "ok", echoed.reply
        # Enough requests to need more room than the audit log's last page had.
        posted = [caller.post("probe", "echo", host, {"text": "c"}) for _ in range(40)]
        replies = caller.replies(set(posted), 60)
        assert [replies[mid][0]["status"] for mid in posted] == ["ok"] * 40
        answered_full = posted[-1]
        seen.wait_until(lambda evs: len(alerts(seen)) >= 80, 60)
        assert alerts(seen) == [float(n) for n in range(80)]
        failing = beat(heartbeats, ok=False)["state_disk"]["failing"]
        assert {"recent_requests", "audit_log", "event_spool"} <= set(failing), failing
        assert "full" in failing["audit_log"] or "space" in failing["audit_log"]
        assert runtime.outbox.status()["dropped"] == 0

        small_disk.free()
        back = beat(heartbeats, ok=True)
        assert back["state_disk"]["audit_records_lost"] > 0
        assert console.call("probe", "echo", {"text": "d"}, host=host).status == "ok"
    finally:
        runtime.stop("test over")
        caller.close()
        console.close()
        proxy.close()

    # Said once per store, going down and coming back; no tracebacks.
    for store in ("recent.db", "spool.db", "audit.jsonl"):
        assert len(warnings.saying(f"cannot write {state / store}")) == 1, store
        assert len(warnings.saying(f"{state / store} takes writes again")) == 1, store
    assert not [r for r in warnings.records if r.exc_info], "a traceback was logged"
    # Nothing stranded: a restart finds no event to send again...
    assert Spool(state / "spool.db").count == 0
    # ...and remembers the request answered while the disk was full.
    guard = ReplayGuard(path=state / "recent.db")
    with pytest.raises(Exception, match="already received"):
        guard.check("guest", answered_full, time.time() + 60)
    # The audit log says how many records it lost, and since when.
    lines = [codec.decode_object(line.encode())
             for line in (state / "audit.jsonl").read_text().splitlines()]
    gaps = [line for line in lines if line.get("event") == "lost"]
    assert len(gaps) == 1 and gaps[0]["count"] == audit.lost > 0


def test_approvals_are_refused_not_parked_on_a_full_disk_and_parked_again_after(small_disk):
    store = ApprovalStore(small_disk.path / "approvals.db")
    delivery = Delivery(b"{}", Properties(message_id="m1", user_id="alice"),
                        "hostbus.request", "host.web01")

    class Request:
        message_id, user_id, agent, method, args = "m1", "alice", "host", "reboot", {}

    small_disk.fill()
    with pytest.raises(Exception, match=r"cannot park host\.reboot") as refused:
        store.park(delivery, Request(), "rule", "sha256:x")  # type: ignore[arg-type]
    assert refused.value.code.value == "failed"
    assert store.list() == []
    small_disk.free()
    store.durability._next_try = 0  # no waiting for the backoff in a unit of one store
    store.retry()
    assert store.durability.ok
    store.park(delivery, Request(), "rule", "sha256:x")  # type: ignore[arg-type]
    assert [p.call for p in store.list()] == ["host.reboot"]
    with sqlite3.connect(small_disk.path / "approvals.db") as db:
        assert db.execute("SELECT count(*) FROM parked").fetchone()[0] == 1


def test_an_agent_starts_on_a_full_state_disk_and_writes_once_it_has_room(
        rabbitmq, small_disk, console, warnings):
    """A host rebooted with its state disk full: the daemon's agent comes up, answers,
    and makes its state files once the disk has room."""
    from agents import daemon
    from hostbus.transport import connect

    host = f"sd-{uuid.uuid4().hex[:6]}"
    rabbitmq.enroll(host, ["host"])
    small_disk.fill()
    cfg = daemon.load_config(None)
    cfg["agent"].update(host_id=host, state_dir=str(small_disk.path), heartbeat_interval=0.3)
    cfg["host"]["metrics_interval"] = 0.0
    heartbeats = EventCollector()
    console.subscribe([f"agent.{host}.heartbeat"], heartbeats)
    transport = connect(rabbitmq.url)
    transport.start()
    runtime = daemon.build_runtime(cfg, transport)
    runtime.start()
    try:
        assert console.call("agent", "ping", host=host).status == "ok"
        failing = beat(heartbeats, ok=False)["state_disk"]["failing"]
        assert {"recent_requests", "event_spool"} <= set(failing), failing
        small_disk.free()
        beat(heartbeats, ok=True)
        assert console.call("agent", "ping", host=host).status == "ok"
    finally:
        runtime.stop("test over")
    with sqlite3.connect(small_disk.path / f"recent-{host}.db") as db:
        assert db.execute("SELECT count(*) FROM requests").fetchone()[0] >= 1
    assert not [r for r in warnings.records if r.exc_info], "a traceback was logged"
