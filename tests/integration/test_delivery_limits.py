"""What happens to a message that kills its consumer, in every quorum queue hostbus
makes (the provisioning queue; host queues enrolled with --queue-type quorum): after
x-delivery-limit + 1 deliveries it is dead-lettered to hostbus.dead with x-death reason
"delivery_limit", on RabbitMQ 3.x (no limit by default: redelivered for ever) and 4.x
(a default limit of 20, and then dropped without a trace when no dead-letter exchange
is set) alike."""

import dataclasses
import queue
import threading
import uuid

import pika
import pytest

from hostbus.broker_admin import QUORUM_HOST_QUEUE
from hostbus.transport import connect
from hostbus.transport.base import Properties

pytestmark = [pytest.mark.integration, pytest.mark.hostbus_core, pytest.mark.timeout(300)]


@pytest.fixture
def own_vhost(rabbitmq):
    """A vhost of this test's own, with the shipped topology: hostbus.dead holds only
    what this test puts there."""
    broker = dataclasses.replace(rabbitmq, vhost=f"{rabbitmq.vhost}-dl{uuid.uuid4().hex[:4]}")
    broker.admin.setup(broker.vhost)
    yield broker
    broker.admin.delete_vhost(broker.vhost)


def dies_holding_it(url: str, queue: str) -> str:
    """A consumer (the transport under test) that takes one message and goes away
    without settling it, as an agent killed by it would. Returns its message id."""
    transport = connect(url, reconnect=False)
    got: list[str] = []
    arrived = threading.Event()

    def take(delivery) -> None:  # never acked
        got.append(delivery.properties.message_id or "")
        arrived.set()

    transport.start()
    try:
        transport.consume(queue, take, manual_ack=True)
        assert arrived.wait(30), f"{queue} delivered nothing"
    finally:
        transport.close()
    return got[0]


@pytest.mark.parametrize("kind", ["host", "provision"])
def test_a_message_that_kills_its_consumer_is_dead_lettered_at_the_limit(own_vhost, kind):
    limit = {"host": QUORUM_HOST_QUEUE["x-delivery-limit"], "provision": 5}[kind]
    if kind == "host":
        own_vhost.admin.enroll_host(own_vhost.vhost, "dl01", ["host"], queue_type="quorum")
        exchange, key, name = "hostbus.request", "host.dl01", "hostbus.host.dl01"
    else:
        exchange, key, name = "hostbus.provision", "provision", "hostbus.provision"
    message_id = str(uuid.uuid4())
    publisher = connect(own_vhost.url, reconnect=False)
    publisher.start()
    try:
        confirmed: queue.Queue[bool | None] = queue.Queue()
        publisher.publish(exchange, key, b'{"v": 1}', Properties(message_id=message_id),
                          persistent=True, confirm=confirmed.put)
        assert confirmed.get(timeout=10) is True
    finally:
        publisher.close()
    for delivery in range(1, limit + 2):
        assert dies_holding_it(own_vhost.url, name) == message_id, f"delivery {delivery}"
    with pika.BlockingConnection(pika.URLParameters(own_vhost.raw_url)) as raw:
        channel = raw.channel()
        assert channel.queue_declare(name, passive=True).method.message_count == 0
        method, props, _ = channel.basic_get("hostbus.dead", auto_ack=True)
        assert method is not None, f"not in hostbus.dead after {limit + 1} deliveries"
        assert props.message_id == message_id
        death = props.headers["x-death"][0]
        assert death["reason"] == "delivery_limit" and death["queue"] == name
