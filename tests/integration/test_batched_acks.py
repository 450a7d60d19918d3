"""``Transport.ack_all``: a consumer that settles what it received in batches (the
historian, after each commit) hands the batch to the transport once. What it
acknowledged is gone from the queue; what it did not comes back on the next connection."""

from __future__ import annotations

import queue
import uuid

import pytest

from hostbus.envelope import parse_event
from hostbus.serving.runtime import AgentRuntime
from hostbus.transport import connect
from hostbus.transport.base import Delivery

pytestmark = [pytest.mark.integration, pytest.mark.hostbus_core, pytest.mark.timeout(120)]


def _next(got: queue.Queue[Delivery]) -> Delivery:
    return got.get(timeout=30)


def test_what_ack_all_settles_is_gone_and_the_rest_comes_back(rabbitmq):
    host = f"ba-{uuid.uuid4().hex[:6]}"
    events_queue = f"hostbus.test.{host}"
    rabbitmq.enroll(host, [])
    rabbitmq.admin.declare_event_queue(rabbitmq.vhost, events_queue, [f"*.{host}.*"],
                                       max_length=1000)
    agent = AgentRuntime.serve(rabbitmq.url, host, [], heartbeat_interval=0)
    consumer = connect(rabbitmq.url, connection_name="ack_all test", prefetch=100)
    consumer.start()
    got: queue.Queue[Delivery] = queue.Queue()
    try:
        consumer.consume(events_queue, got.put, manual_ack=True)
        for i in range(20):
            agent.emit("agent", "heartbeat", {"n": i})
        first = [_next(got) for _ in range(21)]  # online, then 20 heartbeats
        consumer.ack_all(first[:16])
        agent.emit("agent", "heartbeat", {"n": 20})  # after the acks: behind them all
        marker = _next(got)
    finally:
        consumer.close()
        agent.stop("test over")

    again = connect(rabbitmq.url, connection_name="ack_all test again", prefetch=100)
    again.start()
    try:
        got = queue.Queue()
        again.consume(events_queue, got.put, manual_ack=True)
        expected = {parse_event(d).seq for d in first[16:]} | {parse_event(marker).seq}
        back = {parse_event(_next(got)).seq for _ in range(len(expected) + 1)}  # + offline
        acked = {parse_event(d).seq for d in first[:16]}
        assert expected < back and not back & acked
    finally:
        again.close()
