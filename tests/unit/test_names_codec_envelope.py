import json
from datetime import UTC, datetime, timedelta

import pytest

from hostbus import codec, names
from hostbus.envelope import (
    REQUEST_TYPE,
    new_request,
    parse_event,
    parse_reply,
    parse_request,
)
from hostbus.errors import ErrorCode, RemoteError
from hostbus.transport.base import Delivery, Properties
from hostbus.transport.url import parse_url


@pytest.mark.parametrize(("pattern", "key", "expected"), [
    ("host.*.alert", "host.web01.alert", True),
    ("host.*.alert", "host.web01.metrics", False),
    ("virt.*.domain.#", "virt.h1.domain.lifecycle", True),
    ("virt.*.domain.#", "virt.h1.domain", True),
    ("#", "a.b.c", True),
    ("agent.#", "host.x.y", False),
    ("*.web01.#", "host.web01.metrics", True),
    ("a.*", "a", False),
])
def test_topic_matching_follows_amqp_rules(pattern, key, expected):
    assert names.topic_matches(pattern, key) is expected


@pytest.mark.parametrize("bad", ["", "Web01", "web.01", "-x", "a" * 64, "a b", "é", "a;rm",
                                 "web01\n"])
def test_hostile_or_invalid_host_ids_are_refused_with_a_reason(bad):
    with pytest.raises(ValueError, match="no dots"):
        names.validate_host_id(bad)


def test_good_host_ids_pass():
    for good in ["web01", "a", "db_2-east", "0" * 63]:
        assert names.validate_host_id(good) == good


def test_default_host_id_is_a_valid_id():
    assert names.HOST_ID_RE.match(names.default_host_id())


def test_url_parsing_defaults_the_vhost_and_redacts_the_password():
    url = parse_url("amqp://alice:s3cret@broker:5673")
    assert (url.host, url.port, url.vhost, url.user) == ("broker", 5673, "hostbus", "alice")
    assert "s3cret" not in url.redacted()
    assert parse_url("amqps://u:p@h/%2Fprod").vhost == "/prod"


def _delivery(body, **props):
    base = {"message_id": "m-1", "content_type": "application/json", "type": REQUEST_TYPE,
            "reply_to": "hostbus.reply.abc", "user_id": "alice"}
    base.update(props)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Delivery(raw, Properties(**base), "hostbus.request", "host.web01")


def _body(**over):
    body = {"v": 1, "agent": "host", "method": "identify", "args": {},
            "target": {"host": "web01"},
            "deadline": (datetime.now(UTC) + timedelta(seconds=5)).isoformat()}
    body.update(over)
    return body


def test_a_request_survives_encoding_and_parsing():
    req = new_request("host", "processes", {"limit": 3}, host="web01", timeout=5,
                      reply_to="hostbus.reply.x")
    body, props = req.encode()
    assert props.type == REQUEST_TYPE and props.content_type == "application/json"
    assert 0 < int(props.expiration) <= 5000
    props.user_id = "alice"  # the publisher sets it; the broker checks it
    parsed = parse_request(Delivery(body, props, "hostbus.request", req.routing_key()),
                           max_bytes=1 << 20)
    assert (parsed.agent, parsed.method, parsed.args, parsed.host) == (
        "host", "processes", {"limit": 3}, "web01")
    assert parsed.message_id == req.message_id
    assert req.routing_key() == "host.web01"


@pytest.mark.parametrize(("content_type", "kind"), [
    ("application/json; hostbus-sig=abc", REQUEST_TYPE),
    ("Application/JSON; charset=utf-8", None),
    ("application/json", "binary"),
])
def test_a_request_that_crossed_a_protocol_bridge_is_read(content_type, kind):
    """RabbitMQ 3.10 drops or rewrites `type` between AMQP 0-9-1 and 1.0; content_type may
    carry parameters (hostbus puts its signature there)."""
    req = new_request("host", "identify", host="web01")
    body, props = req.encode()
    props.content_type, props.type, props.user_id = content_type, kind, "alice"
    parsed = parse_request(Delivery(body, props, "", req.routing_key()), max_bytes=1 << 20)
    assert parsed.method == "identify"


def test_broadcast_requests_route_to_all_and_carry_their_filter():
    req = new_request("agent", "ping", host=None, filter={"host": "web*"})
    assert req.routing_key() == "agent._all"
    assert req.broadcast_filter == {"host": "web*"}


@pytest.mark.parametrize(("delivery", "code", "fragment"), [
    (_delivery(b"\xff\xfe"), ErrorCode.BAD_MESSAGE, "not valid UTF-8 JSON"),
    (_delivery(b"[1,2]"), ErrorCode.BAD_MESSAGE, "must be a JSON object"),
    (_delivery(b"{" + b" " * 2000 + b"}"), ErrorCode.TOO_LARGE, "at most 1000"),
    (_delivery(_body(), content_type="text/plain"), ErrorCode.BAD_MESSAGE, "content_type"),
    (_delivery(_body(), type="hostbus.reply/1"), ErrorCode.BAD_MESSAGE, "type property"),
    (_delivery(_body(), type="text"), ErrorCode.BAD_MESSAGE, "type property"),
    (_delivery(_body(), content_type="application/jsonx"), ErrorCode.BAD_MESSAGE,
     "content_type"),
    (_delivery(_body(), message_id=None), ErrorCode.BAD_MESSAGE, "message_id"),
    (_delivery({"v": 1}), ErrorCode.BAD_MESSAGE, "must contain"),
    (_delivery(_body(v=2)), ErrorCode.BAD_MESSAGE, "body.v"),
    (_delivery(_body(args=[])), ErrorCode.BAD_MESSAGE, "body.args"),
    (_delivery(_body(agent="../etc")), ErrorCode.BAD_MESSAGE, "body.agent"),
    (_delivery(_body(extra=1)), ErrorCode.BAD_MESSAGE, "must not contain {'extra'}"),
    (_delivery(_body(deadline="tomorrow")), ErrorCode.BAD_MESSAGE, "deadline"),
    (_delivery(_body(deadline="2030-01-01T00:00:00")), ErrorCode.BAD_MESSAGE, "body.deadline"),
    (_delivery(_body(target={"host": "web.01"})), ErrorCode.BAD_MESSAGE, "body.target"),
])
def test_malformed_requests_are_refused_with_the_documented_code(delivery, code, fragment):
    with pytest.raises(RemoteError) as info:
        parse_request(delivery, max_bytes=1000)
    assert info.value.code is code
    assert fragment in info.value.message


def test_an_unusable_reply_to_is_dropped_rather_than_routed():
    for hostile in ("x y", "hostbus.reply.a\n", "../x", "a" * 201):
        parsed = parse_request(_delivery(_body(), reply_to=hostile), max_bytes=1 << 20)
        assert parsed.reply_to is None


@pytest.mark.parametrize(("props", "fragment"), [
    ({"user_id": None}, "user_id property is missing"),
    ({"user_id": ""}, "user_id property is missing"),
    ({"message_id": "m" * 256}, "message_id property is 256 bytes long"),
    ({"message_id": "é" * 128}, "message_id property is 256 bytes long"),
    ({"message_id": 12345}, "message_id property is a int, not a string"),
    ({"reply_to": "r" * 1_000_000}, "reply_to property is 1000000 bytes long"),
    ({"correlation_id": "c" * 300}, "correlation_id property is 300 bytes long"),
    ({"content_type": "application/json; x=" + "a" * 300}, "content_type property is"),
])
def test_requests_without_a_user_or_with_oversize_properties_are_refused(props, fragment):
    """Over AMQP 1.0 these properties may be megabytes, or numbers; refused before the
    replay guard or the audit log keeps any of them. A request without user_id would
    run as nobody in particular, past rules that deny by caller."""
    with pytest.raises(RemoteError) as err:
        parse_request(_delivery(_body(), **props), max_bytes=1 << 20)
    assert err.value.code.value == "bad_message"
    assert fragment in err.value.message
    assert len(err.value.message) < 300  # the value itself is never echoed


def test_replies_and_events_round_trip():
    from hostbus.envelope import Event, Reply

    reply = Reply(host="web01", agent="host", method="identify", status="ok",
                  result={"a": 1}, correlation_id="m-1", elapsed_ms=1.23456)
    body, props = reply.encode()
    back = parse_reply(Delivery(body, props, "hostbus.reply", "q"))
    assert back.ok and back.result == {"a": 1} and back.correlation_id == "m-1"
    assert back.elapsed_ms == 1.235
    ev = Event(host="web01", agent="host", event="alert", data={"x": 1}, seq=3, epoch="e1")
    body, props = ev.encode()
    assert ev.routing_key() == "host.web01.alert"
    back_ev = parse_event(Delivery(body, props, "hostbus.event", ev.routing_key()))
    assert (back_ev.seq, back_ev.epoch, back_ev.full_name) == (3, "e1", "host.alert")


def test_an_error_reply_without_its_error_object_is_malformed():
    bad = codec.encode({"v": 1, "host": "h", "agent": "a", "status": "error"})
    with pytest.raises(RemoteError):
        parse_reply(Delivery(bad, Properties(), "hostbus.reply", "q"))


def test_reply_and_event_ids_are_uuid4s_and_do_not_repeat():
    import uuid

    from hostbus.envelope import fast_uuid4

    ids = [fast_uuid4() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    parsed = [uuid.UUID(i) for i in ids]
    assert all(u.version == 4 and u.variant == uuid.RFC_4122 for u in parsed)
    assert [str(u) for u in parsed] == ids  # canonical text
