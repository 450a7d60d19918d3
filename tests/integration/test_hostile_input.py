"""Hostile input posted with a plain AMQP client (no hostbus code on the sending side).

Each message gets its documented error reply, nothing is executed, and the agent goes
on serving the next request.
"""

import json
import uuid
from datetime import UTC, datetime, timedelta

import pika
import pytest

from tests.fakes import raw_connection

pytestmark = [pytest.mark.integration, pytest.mark.hostbus_core]


def deadline(seconds=10):
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


@pytest.fixture
def raw(rabbitmq):
    conn = raw_connection(rabbitmq.url)
    ch = conn.channel()
    reply_queue = f"hostbus.reply.raw-{uuid.uuid4().hex[:8]}"
    ch.queue_declare(reply_queue, exclusive=True)
    ch.queue_bind(reply_queue, "hostbus.reply", routing_key=reply_queue)

    def send(body, routing_key, **props):
        base = {"message_id": str(uuid.uuid4()), "reply_to": reply_queue,
                "content_type": "application/json", "type": "hostbus.request/1",
                "user_id": "guest"}
        base.update(props)
        base = {k: v for k, v in base.items() if v is not None}
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        ch.basic_publish("hostbus.request", routing_key, data, pika.BasicProperties(**base))
        for _method, props_in, payload in ch.consume(reply_queue, inactivity_timeout=10):
            ch.cancel()
            assert payload is not None, "no reply within 10 s"
            assert props_in.correlation_id == base.get("message_id")
            return json.loads(payload)
        return None

    yield send
    conn.close()


def good(host, method="identify", args=None, **over):
    body = {"v": 1, "agent": "host", "method": method, "args": args or {},
            "target": {"host": host}, "deadline": deadline()}
    body.update(over)
    return body


def test_hostile_messages_get_documented_errors_and_nothing_runs(raw, start_agent, rabbitmq):
    runtime, power = start_agent()
    host = runtime.host_id
    key = f"host.{host}"
    corpus = [
        ("malformed JSON", b'{"v": 1, "agent": ', {}, "bad_message"),
        ("non-JSON bytes", bytes(range(256)), {}, "bad_message"),
        ("a JSON array", b"[1, 2, 3]", {}, "bad_message"),
        ("wrong content type", good(host), {"content_type": "text/plain"}, "bad_message"),
        ("wrong type property", good(host), {"type": "hostbus.request/7"}, "bad_message"),
        ("missing fields", {"v": 1, "agent": "host"}, {}, "bad_message"),
        ("wrong argument types", good(host, "reboot", {"delay_s": "now"}), {}, "invalid_args"),
        ("unknown argument", good(host, "reboot", {"delay_s": 1, "force": True}), {},
         "invalid_args"),
        ("shell metacharacters", good(host, "reboot", {"reason": "x" * 201}), {},
         "invalid_args"),
        ("unknown agent", {**good(host), "agent": "virt"}, {}, "unknown_agent"),
        ("unknown method", good(host, "format_disks"), {}, "unknown_method"),
        ("hostile method name", good(host, "reboot; rm -rf /"), {}, "bad_message"),
        ("over the size limit", b"{" + b" " * (2 << 20) + b"}", {}, "too_large"),
        ("expired deadline", good(host, "reboot", {"delay_s": 0},
                                  deadline="2020-01-01T00:00:00Z"), {}, "expired"),
        ("another host's target", good("someone-else", "reboot"), {}, "bad_message"),
        # Without user_id it would run as nobody in particular, past rules by caller.
        ("no user_id", good(host, "reboot", {"delay_s": 60}), {"user_id": None},
         "bad_message"),
    ]
    if rabbitmq.transport == "amqp10":
        # RabbitMQ 3.10 drops `type` on the way to an AMQP 1.0 consumer, so an agent on
        # 1.0 cannot see a wrong one; the body's envelope schema still decides.
        corpus = [row for row in corpus if row[0] != "wrong type property"]
    for label, body, props, code in corpus:
        reply = raw(body, key, **props)
        assert reply["status"] == "error", label
        assert reply["error"]["code"] == code, (label, reply)
        assert reply["error"]["message"], label
        assert reply["host"] == host
    assert power.calls == [], "a refused request was executed"
    ok = raw(good(host), key)
    assert ok["status"] == "ok" and ok["result"]["host_id"] == host


def test_a_forged_user_id_is_refused_by_the_broker(rabbitmq):
    """The broker checks user_id, so a caller cannot claim to be someone else."""
    conn = raw_connection(rabbitmq.url)
    ch = conn.channel()
    ch.basic_publish("hostbus.request", "host.nobody", b"{}",
                     pika.BasicProperties(user_id="admin", content_type="application/json"))
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.queue_declare("", exclusive=True)  # the next call sees the channel closed
    assert info.value.reply_code == 406 and "user_id" in info.value.reply_text
    conn.close()
