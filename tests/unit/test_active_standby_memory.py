"""One active instance among several, decided by the broker (hostbus.serving.active), on
the in-memory broker, which delivers a single-active-consumer queue as RabbitMQ does: to
the first consumer still there."""

from __future__ import annotations

import queue
from collections.abc import Iterator

import pytest

from hostbus import names
from hostbus.envelope import Event
from hostbus.errors import HostbusError
from hostbus.publisher import Publisher
from hostbus.serving.active import ActiveStandby
from hostbus.transport.base import Delivery
from hostbus.transport.memory import MemoryBroker, MemoryTransport
from tests.fakes import until

SERVICE = "manager"
WAIT = 5.0


class Instance:
    def __init__(self, broker: MemoryBroker, name: str) -> None:
        self.transport = MemoryTransport(broker, user=SERVICE)
        self.transport.start()
        self.changes: queue.SimpleQueue[bool] = queue.SimpleQueue()
        self.events: queue.SimpleQueue[Delivery] = queue.SimpleQueue()

        def on_event(delivery: Delivery) -> None:
            self.events.put(delivery)
            delivery.ack()

        self.standby = ActiveStandby(self.transport, Publisher(self.transport), SERVICE,
                                     instance=name, tick_interval=0.02, lease=0.5,
                                     on_change=self.changes.put, on_event=on_event)

    def next_change(self) -> bool:
        return self.changes.get(timeout=WAIT)

    def close(self) -> None:
        self.standby.stop()
        self.transport.close()


@pytest.fixture
def broker() -> MemoryBroker:
    broker = MemoryBroker()
    broker.enroll_active_queue(SERVICE, ["virt.*.domain.lifecycle"])
    return broker


@pytest.fixture
def instances(broker: MemoryBroker) -> Iterator[list[Instance]]:
    made: list[Instance] = []
    yield made
    for inst in made:
        inst.close()


def start(broker: MemoryBroker, instances: list[Instance], name: str) -> Instance:
    inst = Instance(broker, name)
    inst.standby.start()
    instances.append(inst)
    return inst


def lifecycle(broker: MemoryBroker, host: str, seq: int) -> None:
    """A virt agent's event, as it would publish it."""
    transport = MemoryTransport(broker, user=host)
    transport.start()
    ev = Event(host=host, agent="virt", event="domain.lifecycle", seq=seq, epoch="e1",
               data={"name": "web-1", "uuid": "u1", "event": "started", "detail": "booted"})
    body, props = ev.encode()
    Publisher(transport).publish(names.EVENT_EXCHANGE, ev.routing_key(), body, props)
    transport.close()


def test_the_first_instance_is_active_and_the_others_stand_by(broker, instances):
    first = start(broker, instances, "one")
    assert first.next_change() is True
    second = start(broker, instances, "two")
    third = start(broker, instances, "three")
    # The active one hears every instance's ticks: it lists them all.
    assert until(lambda: {p["instance"] for p in first.standby.status()["instances"]}
                 == {"one", "two", "three"})
    assert first.standby.active
    assert not second.standby.active and not third.standby.active
    assert second.standby.status() == {"instance": "two", "active": False,
                                       "active_for_s": None, "instances": []}
    assert second.changes.empty() and third.changes.empty()


def test_events_go_to_the_active_instance_only_and_to_the_next_when_it_dies(broker,
                                                                           instances):
    first = start(broker, instances, "one")
    assert first.next_change() is True
    second = start(broker, instances, "two")
    lifecycle(broker, "kvm01", 1)
    got = first.events.get(timeout=WAIT)
    assert got.routing_key == "virt.kvm01.domain.lifecycle"
    # The active instance dies: its consumer goes, the next consumer is given the queue,
    # learns it from the next tick, and receives the events from then on.
    first.transport.close()
    assert second.next_change() is True
    assert second.standby.active
    lifecycle(broker, "kvm01", 2)
    assert second.events.get(timeout=WAIT).routing_key == "virt.kvm01.domain.lifecycle"
    assert first.events.empty()


def test_events_waiting_while_no_instance_runs_reach_the_first_to_start(broker, instances):
    lifecycle(broker, "kvm01", 1)
    lifecycle(broker, "kvm02", 1)
    only = start(broker, instances, "one")
    keys = {only.events.get(timeout=WAIT).routing_key for _ in range(2)}
    assert keys == {"virt.kvm01.domain.lifecycle", "virt.kvm02.domain.lifecycle"}
    assert only.standby.wait_active(WAIT)


def test_a_lost_connection_stops_acting_at_once_and_it_resumes_as_the_broker_says(
        broker, instances):
    first = start(broker, instances, "one")
    assert first.next_change() is True
    first.transport.lose_connection()
    assert first.next_change() is False
    assert not first.standby.active
    # Back, and still the broker's first consumer here: active again with its next tick.
    first.transport.restore_connection()
    assert first.next_change() is True


def test_an_instance_whose_ticks_stop_coming_back_gives_up_within_its_lease(broker,
                                                                          instances):
    first = start(broker, instances, "one")
    assert first.next_change() is True
    # The broker no longer routes ticks to the queue (as if this connection were dead
    # without the client knowing yet): no tick comes back.
    with broker._lock:
        broker.bindings = [b for b in broker.bindings if b[1] != names.tick_key(SERVICE)]
    assert first.next_change() is False
    assert not first.standby.active


def test_events_arriving_keep_it_active_while_ticks_wait_behind_them(broker, instances):
    """A backlog: the ticks queue up behind the events, but every event the broker hands
    over shows this consumer holds the queue. Found with hostbus bench --only reactor:
    the reactor gave up and took over again every lease in a 10,000-event burst."""
    first = start(broker, instances, "one")
    assert first.next_change() is True
    with broker._lock:  # no tick comes back from now on
        broker.bindings = [b for b in broker.bindings if b[1] != names.tick_key(SERVICE)]
    for seq in range(1, 21):  # events for four leases, one every fifth of a lease
        lifecycle(broker, "kvm01", seq)
        first.events.get(timeout=WAIT)
        first.standby._stop.wait(0.1)  # pacing what arrives, not waiting for a result
    assert first.changes.empty() and first.standby.active
    assert first.next_change() is False  # events stop too: it gives up


def test_without_the_active_queue_it_names_the_enrollment_to_run(instances):
    bare = Instance(MemoryBroker(), "one")
    instances.append(bare)
    with pytest.raises(HostbusError) as err:
        bare.standby.start()
    assert "hostbus.active.manager" in str(err.value)
    assert "hostbus broker enroll-service manager --active" in str(err.value)
