"""Messages the broker cannot hand to an AMQP 0-9-1 consumer.

AMQP 1.0 lets a sender give a message a message-id, correlation-id, reply-to,
content-type or content-encoding longer than the 255 bytes AMQP 0-9-1 can carry, or a
numeric message-id. RabbitMQ 3.10 accepts such a message, and closes the connection of
every AMQP 0-9-1 consumer it tries to deliver it to (541 INTERNAL_ERROR). The message
goes back to its queue and comes again on the next connection, so without a defence one
message from any enrolled console takes an agent, a durable subscriber or a service off
the bus for good. The attackers here are enrolled identities with a plain proton client.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote, urlsplit

import pika
import pytest

from hostbus import names
from hostbus.serving.runtime import AgentRuntime
from tests.fakes import EventCollector, make_host_agent, raw_connection
from tests.slow_agent import SCHEMA as SLOW_SCHEMA
from tests.slow_agent import SlowAgent

proton = pytest.importorskip("proton")
from proton import Message, ulong  # noqa: E402
from proton.utils import BlockingConnection  # noqa: E402

# On every broker (RabbitMQ 3.10 and 4.x): the broker's behaviour is the subject.
pytestmark = [pytest.mark.integration, pytest.mark.hostbus_core, pytest.mark.timeout(300)]

LONG = 300  # bytes: AMQP 0-9-1's short strings end at 255
# What RabbitMQ 3.10 cannot convert for an AMQP 0-9-1 consumer (each one measured: it
# closes the consumer's connection with 541 INTERNAL_ERROR).
POISON: dict[str, dict[str, Any]] = {
    "long message-id": {"id": "m" * LONG},
    "numeric message-id": {"id": ulong(7)},
    "long binary message-id": {"id": b"b" * LONG},
    "long correlation-id": {"correlation_id": "c" * LONG},
    "numeric correlation-id": {"correlation_id": ulong(9)},
    "long reply-to": {"reply_to": "r" * LONG},
    "long content-type": {"content_type": "application/json; x=" + "t" * LONG},
    "long content-encoding": {"content_encoding": "e" * LONG},
}


def name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


@contextmanager
def amqp10(url: str, timeout: float = 30) -> Iterator[BlockingConnection]:
    """A plain proton connection with the credentials and vhost of a hostbus URL."""
    parts = urlsplit(url)
    conn = BlockingConnection(
        f"amqp://{parts.hostname}:{parts.port or 5672}", timeout=timeout,
        user=unquote(parts.username or ""), password=unquote(parts.password or ""),
        allowed_mechs="PLAIN", virtual_host=f"vhost:{unquote(parts.path.lstrip('/'))}")
    try:
        yield conn
    finally:
        with contextlib.suppress(proton.ConnectionException, proton.Timeout):  # the broker may have
            conn.close()  # dropped it: RabbitMQ 3.10 does so on a refused attach


def user_of(url: str) -> str:
    return unquote(urlsplit(url).username or "")


def request_body(host: str, agent: str = "agent", method: str = "ping",
                 args: dict[str, Any] | None = None) -> bytes:
    return json.dumps({"v": 1, "agent": agent, "method": method, "args": args or {},
                       "target": {"host": host},
                       "deadline": (datetime.now(UTC) + timedelta(seconds=120)).isoformat(),
                       }).encode()


def send_poison(sender: Any, user: str, body: bytes, props: dict[str, Any]) -> None:
    """Send one message and wait until the broker has taken it (it is in the queue)."""
    sender.send(Message(body=body, inferred=True, user_id=user.encode(),
                        **{"content_type": "application/json", **props}))


class RawCaller:
    """A plain pika client with a reply queue: posts requests, collects the replies."""

    def __init__(self, url: str) -> None:
        self.conn = raw_connection(url)
        self.ch = self.conn.channel()
        self.user = user_of(url)
        self.key = f"hostbus.reply.{self.user}.{uuid.uuid4().hex}"
        self.queue = self.ch.queue_declare("", exclusive=True).method.queue
        self.ch.queue_bind(self.queue, names.REPLY_EXCHANGE, routing_key=self.key)

    def post(self, routing_key: str, body: bytes) -> str:
        mid = str(uuid.uuid4())
        self.ch.basic_publish(names.REQUEST_EXCHANGE, routing_key, body, pika.BasicProperties(
            message_id=mid, reply_to=self.key, content_type="application/json",
            type="hostbus.request/1", user_id=self.user))
        return mid

    def replies(self, wanted: set[str], timeout: float) -> dict[str, list[dict[str, Any]]]:
        """Every reply to the ids in ``wanted``, until each has one (or ``timeout``)."""
        got: dict[str, list[dict[str, Any]]] = {}
        end = time.monotonic() + timeout
        while not wanted <= set(got) and time.monotonic() < end:
            for _m, props, body in self.ch.consume(self.queue, auto_ack=True,
                                                   inactivity_timeout=1):
                if body is not None:
                    got.setdefault(props.correlation_id, []).append(json.loads(body))
                break
        self.ch.cancel()
        return got

    def close(self) -> None:
        if self.conn.is_open:
            self.conn.close()


def carries_result(reply: dict[str, Any]) -> bool:
    """The reply is the result, or a repeat that gives the earlier one."""
    if reply["status"] == "ok":
        return True
    earlier = (reply.get("error") or {}).get("details", {}).get("earlier_reply") or {}
    return reply["error"]["code"] == "replayed" and earlier.get("status") == "ok"


@pytest.fixture
def caller(rabbitmq):
    c = RawCaller(rabbitmq.raw_url)
    yield c
    c.close()


def ready(rabbitmq, queue: str) -> int:
    """Messages waiting in a queue (a passive declare: the broker's count now)."""
    conn = raw_connection(rabbitmq.raw_url)
    try:
        return conn.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        conn.close()


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_a_stream_of_messages_091_cannot_carry_leaves_an_agent_serving(
        rabbitmq, enroll, caller, console, queue_type):
    """Every kind of such message, 25 times over (200), each followed by an innocent
    request: every innocent request is answered with its result, and the agent serves
    on. (A quorum host queue, as a cluster has, answers its consumers more slowly: a
    reply sent just before the next such message closed the connection was lost once.)"""
    host = name("stream")
    rabbitmq.admin.enroll_host(rabbitmq.vhost, host, ["host"], queue_type=queue_type)
    agent, _ps, _power = make_host_agent(host)
    runtime = AgentRuntime.serve(rabbitmq.url, host, [agent], heartbeat_interval=0)
    _, attacker = enroll("console", name("mallory"))
    innocent = []
    try:
        with amqp10(attacker) as conn:
            sender = conn.create_sender(f"/exchange/hostbus.request/agent.{host}")
            for _round in range(25):
                for props in POISON.values():
                    send_poison(sender, user_of(attacker), request_body(host), props)
                    innocent.append(caller.post(f"agent.{host}", request_body(host)))
        replies = caller.replies(set(innocent), timeout=120)
        unanswered = [mid for mid in innocent if mid not in replies]
        assert not unanswered, f"{len(unanswered)} of {len(innocent)} innocent requests unanswered"
        for mid in innocent:
            # An answered request whose ack died with a connection comes again, and the
            # agent's replay guard answers that copy with the earlier reply.
            assert all(carries_result(reply) for reply in replies[mid]), replies[mid]
        assert console.call("agent", "ping", host=host, timeout=30).status == "ok"
        assert ready(rabbitmq, names.host_queue(host)) == 0, "such messages are still queued"
    finally:
        runtime.stop("test over")


def test_an_agent_whose_queue_already_holds_such_a_message_starts_and_serves(
        rabbitmq, enroll, console):
    host = name("waiting")
    rabbitmq.enroll(host, ["host"])
    _, attacker = enroll("console", name("mallory"))
    with amqp10(attacker) as conn:
        send_poison(conn.create_sender(f"/exchange/hostbus.request/agent.{host}"),
                    user_of(attacker), request_body(host), POISON["long message-id"])
    agent, _ps, _power = make_host_agent(host)
    runtime = AgentRuntime.serve(rabbitmq.url, host, [agent], heartbeat_interval=0)
    try:
        assert console.call("agent", "ping", host=host, timeout=30).status == "ok"
    finally:
        runtime.stop("test over")


def test_requests_in_flight_with_such_messages_get_their_own_answers(
        rabbitmq, enroll, caller, console, tmp_path):
    """Slow requests are running when a stream of such messages arrives, on a quorum host
    queue with a delivery limit of 2 (every unacknowledged message returned when a
    connection dies may have its delivery count raised): each slow request gets its
    real result, once, runs once, and is not dead-lettered."""
    host = name("inflight")
    admin, vhost = rabbitmq.admin, rabbitmq.vhost
    admin.enroll_host(vhost, host, ["slow"], queue_type="quorum")
    queue = names.host_queue(host)
    policy = f"/api/policies/{admin._q(vhost)}/{admin._q('limit-' + host)}"
    admin._call("PUT", policy, {
        "pattern": f"^{queue.replace('.', '[.]')}$", "apply-to": "queues", "priority": 5,
        "definition": {"delivery-limit": 2, "dead-letter-exchange": names.DEAD_EXCHANGE}})
    dead = f"dead-{host}"  # a copy of what gets dead-lettered, for this test to read
    setup = raw_connection(rabbitmq.raw_url)
    setup.channel().queue_declare(dead, auto_delete=False)
    setup.channel().queue_bind(dead, names.DEAD_EXCHANGE)
    started = EventCollector()
    console.subscribe([f"slow.{host}.started"], started)
    runtime = AgentRuntime.serve(rabbitmq.url, host, [SlowAgent(tmp_path / "ran")],
                                 heartbeat_interval=0, schemas={"slow": SLOW_SCHEMA})
    try:
        slow = {caller.post(f"slow.{host}", request_body(host, "slow", "work",
                                                         {"seconds": 4}))
                for _ in range(2)}
        started.wait_until(lambda events: len(events) == 2, timeout=30)  # both running
        _, attacker = enroll("console", name("mallory"))
        with amqp10(attacker) as conn:
            sender = conn.create_sender(f"/exchange/hostbus.request/agent.{host}")
            for props in POISON.values():
                send_poison(sender, user_of(attacker), request_body(host), props)
        after = caller.post(f"agent.{host}", request_body(host))
        replies = caller.replies({*slow, after}, timeout=120)
        for mid in slow:
            assert [r["status"] for r in replies.get(mid, [])] == ["ok"], replies.get(mid)
        assert [r["status"] for r in replies.get(after, [])] == ["ok"]
        assert sorted((tmp_path / "ran").read_text().split()) == sorted(slow), \
            "a slow request ran twice"
        # Read what was dead-lettered over AMQP 1.0, which can carry any of it.
        count = ready(rabbitmq, dead)
        with amqp10(rabbitmq.raw_url) as conn:
            receiver = conn.create_receiver(f"/amq/queue/{dead}")
            dead_ids = set()
            for _ in range(count):
                dead_ids.add(receiver.receive(timeout=30).id)
                receiver.accept()
        assert not slow & dead_ids, "an innocent request was dead-lettered"
    finally:
        runtime.stop("test over")
        setup.channel().queue_delete(dead)
        setup.close()
        admin._call("DELETE", policy)


def test_a_durable_subscriber_survives_an_event_it_cannot_receive(rabbitmq, enroll, console):
    """An enrolled agent may publish events for its own host; one it sends over AMQP 1.0
    with a long message-id must not cut a durable subscription off for good."""
    host = name("evil")
    _, agent_url = enroll("agent", host)
    seen = EventCollector()
    pattern, queue = f"agent.{host}.#", names.subscription_queue("guest", f"poison-{host}")
    made = raw_connection(rabbitmq.raw_url)  # made beforehand, as AMQP 1.0 needs
    made.channel().queue_declare(queue, durable=True)
    made.channel().queue_bind(queue, names.EVENT_EXCHANGE, routing_key=pattern)
    made.close()
    console.subscribe([pattern], seen, name=f"poison-{host}", durable=True)
    agent, _ps, _power = make_host_agent(host)
    runtime = AgentRuntime.serve(rabbitmq.url, host, [agent], heartbeat_interval=0.5)
    try:
        first = seen.wait_for(lambda e: e.event == "heartbeat", timeout=30)
        with amqp10(agent_url) as conn:
            sender = conn.create_sender(f"/exchange/hostbus.event/agent.{host}.heartbeat")
            for props in POISON.values():
                send_poison(sender, host, b"{}", props)
        later = seen.wait_for(lambda e: e.event == "heartbeat" and e.seq > first.seq + 4,
                              timeout=90)
        assert later.host == host
    finally:
        runtime.stop("test over")
