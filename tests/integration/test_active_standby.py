"""One active instance of a service through the broker (hostbus.serving.active) on
RabbitMQ: the active queue as enrollment makes it (quorum, single active consumer), an
instance SIGKILLed, the standby taking over with the events the dead one held."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator

import pytest

from hostbus import names
from hostbus.envelope import Event
from hostbus.publisher import Publisher
from hostbus.serving.active import ActiveStandby
from hostbus.transport import connect
from hostbus.transport.base import Delivery
from tests.fakes import until

pytestmark = [pytest.mark.integration, pytest.mark.hostbus_core]
PATTERN = "virt.*.domain.lifecycle"


class Lines:
    """A child process's stdout, line by line, waited on with a timeout."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        assert proc.stdout is not None
        threading.Thread(target=lambda: [self.lines.put(line.strip())
                                         for line in proc.stdout], daemon=True).start()

    def wait_for(self, wanted: str, timeout: float = 30.0) -> list[str]:
        seen = []
        while True:
            line = self.lines.get(timeout=timeout)
            seen.append(line)
            if line == wanted:
                return seen


@pytest.fixture
def service(rabbitmq) -> str:
    name = f"svc-{uuid.uuid4().hex[:6]}"
    keys = rabbitmq.admin.enroll_active_queue(rabbitmq.vhost, name, [PATTERN])
    assert keys == [PATTERN, names.tick_key(name)]
    return name


@pytest.fixture
def publish(rabbitmq) -> Iterator:
    transport = connect(rabbitmq.url)
    transport.start()
    publisher = Publisher(transport)

    def send(host: str, seq: int) -> str:
        ev = Event(host=host, agent="virt", event="domain.lifecycle", seq=seq, epoch="e1",
                   data={"name": "web-1", "uuid": str(uuid.uuid4()), "event": "started",
                         "detail": "booted"})
        body, props = ev.encode()
        publisher.publish(names.EVENT_EXCHANGE, ev.routing_key(), body, props)
        transport.flush()
        return ev.routing_key()

    yield send
    transport.close()


def test_the_standby_takes_over_with_the_events_the_killed_instance_held(rabbitmq, service,
                                                                         publish):
    first = subprocess.Popen([sys.executable, "-m", "tests.active_instance", rabbitmq.url,
                              service, "first"], stdout=subprocess.PIPE, text=True)
    transport = connect(rabbitmq.url, prefetch=16)
    received: queue.SimpleQueue[Delivery] = queue.SimpleQueue()
    second = ActiveStandby(transport, Publisher(transport), service, instance="second",
                           tick_interval=0.2, on_event=received.put)
    try:
        out = Lines(first)
        out.wait_for("active")
        transport.start()
        second.start()
        key = publish("kvm01", 1)
        out.wait_for(f"event {key}")  # the active one has it, unacknowledged
        assert not second.active and received.empty()
        first.kill()  # SIGKILL: its connection drops, the broker hands the queue over
        assert second.wait_active(30)
        # What the dead instance held comes to the new active one, then what follows.
        assert received.get(timeout=30).routing_key == key
        key2 = publish("kvm02", 1)
        assert received.get(timeout=30).routing_key == key2
    finally:
        first.kill()
        first.wait(timeout=30)
        second.stop()
        transport.close()


def test_a_second_instance_started_later_stays_standby_while_the_first_lives(rabbitmq,
                                                                             service):
    transports, instances = [], []
    try:
        for name in ("one", "two"):
            transport = connect(rabbitmq.url, prefetch=16)
            transport.start()
            standby = ActiveStandby(transport, Publisher(transport), service, instance=name,
                                    tick_interval=0.2)
            standby.start()
            transports.append(transport)
            instances.append(standby)
            if name == "one":
                assert standby.wait_active(30)
        one, two = instances
        # The active one hears both instances' ticks: by then two has had its chances.
        assert until(lambda: {p["instance"] for p in one.status()["instances"]}
                     == {"one", "two"}, timeout=30)
        assert one.active and not two.active
        transports[0].close()  # a clean goodbye: the broker moves the queue at once
        assert two.wait_active(30)
    finally:
        for standby, transport in zip(instances, transports, strict=True):
            standby.stop()
            transport.close()
