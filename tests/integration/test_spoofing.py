"""A host may only speak for itself. An enrolled host identity, with a plain AMQP client,
tries to answer discovery as an invented host and to raise alerts as another host;
consoles drop both (and count them), signatures or not."""

import json
import threading
import uuid
from datetime import UTC, datetime

import pika
import pytest

from console.client import Console
from tests.fakes import EventCollector, raw_connection

pytestmark = pytest.mark.integration


@pytest.fixture
def evil_host(rabbitmq):
    """An enrolled agent identity `evil-…` with its own password, as `broker enroll`
    makes it: a plain pika connection to its host queue."""
    name = f"evil-{uuid.uuid4().hex[:6]}"
    rabbitmq.enroll(name, ["host"])
    password = rabbitmq.admin.create_identity(rabbitmq.vhost, "agent", name)
    url = rabbitmq.raw_url.replace("guest:guest@", f"{name}:{password}@")
    conn = raw_connection(url)
    yield name, conn.channel()
    conn.close()
    rabbitmq.admin.revoke(name)


def publish(ch, exchange, key, body, **props):
    ch.basic_publish(exchange, key, json.dumps(body).encode(), pika.BasicProperties(
        content_type="application/json", message_id=str(uuid.uuid4()), **props))


def test_a_host_cannot_answer_discovery_as_an_invented_host(rabbitmq, evil_host):
    name, ch = evil_host
    console = Console.connect(rabbitmq.url)
    try:
        answered = []

        def answer(channel, method, props, body):
            request = json.loads(body)
            if request["method"] == "ping":
                for claimed in ("invented", name):
                    publish(channel, "hostbus.reply", props.reply_to, {
                        "v": 1, "host": claimed, "agent": "agent", "status": "ok",
                        "result": {"agents": ["host"], "version": "9", "epoch": "e",
                                   "started": "now", "facts": {}}},
                            correlation_id=props.message_id, type="hostbus.reply/1",
                            user_id=name)
                answered.append(True)
            channel.basic_ack(method.delivery_tag)

        ch.basic_consume(f"hostbus.host.{name}.agent", answer)  # where pings arrive
        found = []
        # The console waits for replies on its own thread; the evil host answers on this
        # one: serve it until discovery has finished.
        done = threading.Event()

        def discover():
            found.extend(a.host for a in console.discover(expect=[name], timeout=10))
            done.set()

        threading.Thread(target=discover).start()
        while not done.is_set():
            ch.connection.process_data_events(time_limit=0.05)
        assert answered, "the broadcast never reached the evil host"
        assert name in found and "invented" not in found
        assert console.spoofed >= 1
    finally:
        console.close()


def test_a_host_cannot_raise_alerts_as_another_host(rabbitmq, evil_host):
    name, ch = evil_host
    console = Console.connect(rabbitmq.url)
    seen = EventCollector()
    console.subscribe(["host.#"], seen)
    try:
        def alert(host, seq):
            return {"v": 1, "host": host, "agent": "host", "event": "alert",
                    "time": datetime.now(UTC).isoformat(), "seq": seq, "epoch": "e1",
                    "data": {"metric": "cpu_percent", "state": "raised", "value": 99.0,
                             "threshold": 90.0}}

        props = {"type": "hostbus.event/1", "user_id": name}
        # Its own routing key (topic permissions allow no other), someone else's name.
        publish(ch, "hostbus.event", f"host.{name}.alert", alert("web01", 1), **props)
        publish(ch, "hostbus.event", f"host.{name}.alert", alert(name, 2), **props)
        ev = seen.wait_for(lambda e: True)
        assert (ev.host, ev.seq) == (name, 2)
        assert [e.host for e, _ in seen.events] == [name]
        assert console.spoofed == 1
    finally:
        console.close()
