"""`broker setup`'s migration of hostbus.reply (direct -> topic) against a scripted
management API: which bindings come back depends on who reads each queue, known only
from the broker's statistics, and those may lag behind a queue's consumer."""

from __future__ import annotations

from typing import Any

import pytest

from hostbus.broker_admin import BrokerAdmin
from hostbus.errors import BrokerRefused

ALICE_KEY = "hostbus.reply.alice.0123abcd"
CONSOLE_QUEUE = "amq.gen-console"  # what RabbitMQ 3.x makes for an AMQP 1.0 reply source


class Clock:
    """time.monotonic and time.sleep for the admin: sleeping moves the clock on."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def time(self) -> float:
        return self.now


class ScriptedAdmin(BrokerAdmin):
    """The management API of an old install: hostbus.reply is direct, and alice's AMQP
    1.0 console consumes a broker-named queue bound with her reply key. Its statistics
    list that queue with no consumer until ``consumer_known_after`` seconds."""

    def __init__(self, clock: Clock, consumer_known_after: float | None) -> None:
        super().__init__("http://guest:guest@127.0.0.1:15672")
        self.clock, self.started = clock, clock.now
        self.consumer_known_after = consumer_known_after
        self.changes: list[tuple[str, str, Any]] = []

    def _get(self, path: str, **_: Any) -> Any:
        if path.endswith("/hostbus.reply"):
            return {"name": "hostbus.reply", "type": "direct"}
        if path.endswith(f"/{CONSOLE_QUEUE}"):
            known = self.consumer_known_after is not None and \
                self.clock.now - self.started >= self.consumer_known_after
            readers = [{"channel_details": {"user": "alice"}}] if known else []
            # (the statistics made when the queue was declared, before its consumer)
            return {"name": CONSOLE_QUEUE, "exclusive": False, "consumers": len(readers),
                    "consumer_details": readers}
        raise AssertionError(f"unexpected GET {path}")

    def _call(self, method: str, path: str, body: Any = None, **_: Any) -> Any:
        if method == "GET" and path.endswith("/bindings/source"):
            return [{"source": "hostbus.reply", "destination": CONSOLE_QUEUE,
                     "destination_type": "queue", "routing_key": ALICE_KEY,
                     "arguments": {}}]
        if method == "GET" and path == "/api/users":
            return [{"name": "alice", "tags": ["hostbus-console"]}]
        self.changes.append((method, path, body))
        return None

    def _exists(self, method: str, path: str, **_: Any) -> bool:
        self.changes.append((method, path, None))
        return True


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    made = Clock()
    monkeypatch.setattr("hostbus.broker_admin.time", made)
    return made


def test_a_consoles_reply_queue_listed_without_its_consumer_keeps_its_binding(clock):
    """RabbitMQ 3.10 lists an AMQP 1.0 console's reply queue (amq.gen-*) with 0
    consumers and no consumer details for a while after the link opened (half a second
    on a quiet broker, longer on a busy one). The migration took that for a queue read
    by nobody and dropped its binding: the console's next call got no reply (the
    migration test, [amqp10] on 3.10, about 4 runs in 24 and once in CI). Now a queue
    whose reader only its consumers tell must show none for a while first."""
    admin = ScriptedAdmin(clock, consumer_known_after=3.0)
    report = admin.migrate_replies("hostbus")
    assert report["reply_bindings_dropped"] == []
    assert report["reply_bindings_kept"] == 1
    rebound = [c for c in admin.changes if c[0] == "POST"]
    assert rebound == [("POST", f"/api/bindings/hostbus/e/hostbus.reply/q/{CONSOLE_QUEUE}",
                        {"routing_key": ALICE_KEY, "arguments": {}})]


def test_a_queue_nobody_reads_loses_its_binding_once_that_has_held(clock):
    admin = ScriptedAdmin(clock, consumer_known_after=None)
    report = admin.migrate_replies("hostbus")
    assert report["reply_bindings_kept"] == 0
    assert [d for d in report["reply_bindings_dropped"] if CONSOLE_QUEUE in d]
    assert clock.now - admin.started >= BrokerAdmin.STATS_SETTLE_S


def test_statistics_that_never_describe_a_queue_change_nothing(clock):
    """Rather than drop a binding whose reader is unknown, setup stops before the
    exchange is touched, and says to run it again."""

    class Silent(ScriptedAdmin):
        def _get(self, path: str, **kw: Any) -> Any:
            found = super()._get(path, **kw)
            if path.endswith(f"/{CONSOLE_QUEUE}"):
                found.pop("consumers")  # not yet in the statistics at all
            return found

    admin = Silent(clock, consumer_known_after=None)
    with pytest.raises(BrokerRefused, match="nothing was changed"):
        admin.migrate_replies("hostbus")
    assert admin.changes == []
