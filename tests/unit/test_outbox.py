"""Events while the broker is away: spooled in order, sent after the reconnect, bounded
with periodic samples dropped first, and kept across an agent restart."""

from __future__ import annotations

import pytest

from console.client import Console
from hostbus.serving.outbox import Spool
from hostbus.serving.runtime import AgentRuntime
from hostbus.transport.memory import MemoryTransport
from tests.fakes import EventCollector, make_host_agent


@pytest.fixture
def setup(memory_broker, tmp_path):
    made = []

    def start(spool: Spool | None = None):
        memory_broker.enroll("web01", ["host"])
        transport = MemoryTransport(memory_broker, user="web01")
        transport.start()
        agent, _, _ = make_host_agent("web01")
        runtime = AgentRuntime(transport, "web01", [agent], heartbeat_interval=0,
                               spool=spool)
        runtime.start()
        made.append(runtime)
        return runtime, transport

    ct = MemoryTransport(memory_broker, user="ops")
    ct.start()
    console = Console(ct)
    console.open()
    seen = EventCollector()
    console.subscribe(["host.web01.#", "agent.web01.#"], seen)
    yield start, seen
    for runtime in made:
        runtime.stop("test over")
    console.close()


def alert(runtime, n):
    runtime.emit("host", "alert", {"metric": "cpu_percent", "state": "raised",
                                   "value": float(n), "threshold": 90.0})


def test_events_sent_while_the_broker_is_away_arrive_in_order_after_it_returns(setup):
    start, seen = setup
    runtime, transport = start()
    alert(runtime, 0)
    seen.wait_until(lambda evs: any(e.event == "alert" for e, _ in evs))
    transport.lose_connection()
    for n in range(1, 11):
        alert(runtime, n)
    transport.flush()  # the I/O thread has seen the loss and every failed publish
    assert runtime.outbox.status()["spooled"] == 10
    transport.restore_connection()
    events = seen.wait_until(lambda evs: sum(e.event == "alert" for e, _ in evs) == 11)
    values = [e.data["value"] for e, _ in events if e.event == "alert"]
    assert values == [float(n) for n in range(11)]
    assert [note for e, note in events if e.event == "alert"] == [None] * 11  # no gaps
    assert runtime.outbox.wait_confirmed(5) and runtime.outbox.status()["spooled"] == 0


def test_a_full_spool_drops_periodic_samples_oldest_first_and_says_so(setup):
    start, seen = setup
    runtime, transport = start(Spool(None, max_bytes=3000))
    transport.lose_connection()
    alert(runtime, 1)
    metrics = {"cpu_percent": 1.0, "load": [0.0, 0.0, 0.0], "memory_percent": 1.0,
               "swap_percent": 0.0}
    for n in range(20):
        runtime.emit("host", "metrics", {**metrics, "cpu_percent": float(n)})
    alert(runtime, 2)
    transport.flush()
    status = runtime.outbox.status()
    assert status["dropped"] > 0
    transport.restore_connection()
    seen.wait_for(lambda e: e.event == "alert" and e.data["value"] == 2.0)  # the last one
    runtime._heartbeat()
    beat = seen.wait_for(lambda e: e.event == "heartbeat")
    assert beat.data["events"]["dropped"] == status["dropped"]
    events = [e for e, _ in seen.events]
    assert [e.data["value"] for e in events if e.event == "alert"] == [1.0, 2.0]
    kept = [e.data["cpu_percent"] for e in events if e.event == "metrics"]
    assert kept == sorted(kept) and kept[-1] == 19.0 and len(kept) == 20 - status["dropped"]


def test_spooled_events_survive_an_agent_restart(setup, tmp_path):
    start, seen = setup
    runtime, transport = start(Spool(tmp_path / "spool.db"))
    transport.lose_connection()
    alert(runtime, 7)
    runtime.stop("crash")  # the broker is still away: the event stays on disk
    assert Spool(tmp_path / "spool.db").count >= 1
    again, _ = start(Spool(tmp_path / "spool.db"))
    ev = seen.wait_for(lambda e: e.event == "alert")
    assert ev.data["value"] == 7.0
    assert again.outbox.wait_confirmed(5) and Spool(tmp_path / "spool.db").count == 0
