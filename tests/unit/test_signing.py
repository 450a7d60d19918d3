"""Signed requests: the agent verifies before anything else it does, refuses with
bad_signature or replayed, and executes nothing it refused."""

from datetime import UTC, datetime, timedelta

import pytest

from hostbus import names
from hostbus.envelope import new_request
from hostbus.errors import RemoteError
from hostbus.schema import load_agent_schema
from hostbus.security.replay import ReplayGuard
from hostbus.security.signing import Signer, Verifier, generate, read_public_key
from hostbus.serving.dispatch import Dispatcher, HostedAgent
from hostbus.transport.base import Delivery
from tests.fakes import make_host_agent


@pytest.fixture
def keys(tmp_path):
    made = {}
    for name in ("alice", "eve"):
        key_path, pub_path = generate(name, tmp_path)
        made[name] = (Signer.load(key_path), read_public_key(pub_path)[1])
    return made


@pytest.fixture
def setup(keys):
    agent, _, power = make_host_agent("web01")
    dispatcher = Dispatcher("web01", {"host": HostedAgent(agent, load_agent_schema("host"))},
                            facts=dict, verifier=Verifier({"alice": keys["alice"][1]}))
    return dispatcher, power


def signed(signer, *, user="alice", method="reboot", args=None, deadline_s=10.0,
           routing_key=None, tamper=None):
    req = new_request("host", method, args if args is not None else {"delay_s": 60},
                      host="web01", timeout=deadline_s, reply_to="hostbus.reply.alice.x")
    body, props = req.encode()
    props.user_id = user
    key = routing_key or req.routing_key()
    if signer is not None:
        signer.sign(names.REQUEST_EXCHANGE, req.routing_key(), props, body)
    if tamper == "body":
        body = body.replace(b'"delay_s":60', b'"delay_s":0')
    return Delivery(body, props, names.REQUEST_EXCHANGE, key)


def test_a_request_signed_by_its_senders_trusted_key_runs(setup, keys):
    dispatcher, power = setup
    out = dispatcher.handle(signed(keys["alice"][0]))
    assert out.reply.ok and power.calls == [("reboot", 60, "requested through hostbus")]


@pytest.mark.parametrize(("make", "fragment"), [
    (lambda k: signed(None), "not signed"),
    (lambda k: signed(k["alice"][0], tamper="body"), "does not match"),
    (lambda k: signed(k["alice"][0], routing_key="host._all"), "does not match"),
    (lambda k: signed(k["eve"][0]), "does not match alice's trusted key"),
    (lambda k: signed(k["eve"][0], user="eve"), "trusts no key for 'eve'"),
])
def test_unsigned_forged_and_untrusted_requests_are_refused(setup, keys, make, fragment):
    dispatcher, power = setup
    out = dispatcher.handle(make(keys))
    assert out.reply.error["code"] == "bad_signature"
    assert fragment in out.reply.error["message"]
    assert power.calls == []


@pytest.mark.parametrize("content_type", [
    "application/json; hostbus-sig=%%%-not-base64",
    "application/json; hostbus-sig=",
    "application/json; hostbus-sig=" + "A" * 200,
    "application/json; hostbus-sig=QUJD",  # valid base64url, not a signature
])
def test_a_garbled_signature_is_a_bad_signature_not_a_crash(setup, keys, content_type):
    dispatcher, power = setup
    delivery = signed(keys["alice"][0])
    delivery.properties.content_type = content_type
    assert dispatcher.handle(delivery).reply.error["code"] == "bad_signature"
    assert power.calls == []


def test_the_signature_travels_in_content_type_which_stays_json(keys):
    delivery = signed(keys["alice"][0])
    media, _, param = delivery.properties.content_type.partition(";")
    assert media == "application/json" and param.strip().startswith("hostbus-sig=")
    assert not delivery.properties.headers


def test_a_request_from_across_a_protocol_bridge_still_verifies_and_runs(setup, keys):
    """RabbitMQ 3.10 drops `type` and hides the exchange when a 0-9-1 publish reaches an
    AMQP 1.0 consumer: the kind and exchange expected where it arrived are checked."""
    dispatcher, power = setup
    delivery = signed(keys["alice"][0])
    delivery.properties.type = None
    delivery.exchange = ""
    out = dispatcher.handle(delivery)
    assert out.reply.ok and len(power.calls) == 1


def test_a_message_signed_as_another_kind_is_not_a_request(setup, keys):
    """With `type` gone, a signed reply or event re-sent to a host queue must still fail:
    the kind is part of what is signed."""
    dispatcher, power = setup
    req = new_request("host", "reboot", {"delay_s": 60}, host="web01",
                      reply_to="hostbus.reply.alice.x")
    body, props = req.encode()
    props.user_id, props.type = "alice", "hostbus.event/1"
    keys["alice"][0].sign(names.REQUEST_EXCHANGE, req.routing_key(), props, body)
    props.type = None  # as a protocol bridge would leave it
    out = dispatcher.handle(Delivery(body, props, names.REQUEST_EXCHANGE, req.routing_key()))
    assert out.reply.error["code"] == "bad_signature" and power.calls == []


def test_a_replayed_request_is_refused_and_runs_once(setup, keys):
    dispatcher, power = setup
    delivery = signed(keys["alice"][0])
    first = dispatcher.handle(delivery)
    again = dispatcher.handle(delivery)
    assert first.reply.ok and again.reply.error["code"] == "replayed"
    assert len(power.calls) == 1


def test_a_signed_request_cannot_stay_valid_for_long(setup, keys):
    dispatcher, power = setup
    out = dispatcher.handle(signed(keys["alice"][0], deadline_s=86400))
    assert out.reply.error["code"] == "bad_message" and "ahead" in out.reply.error["message"]
    assert power.calls == []


def test_the_replay_guard_forgets_ids_after_their_deadline():
    guard = ReplayGuard(skew_s=0, max_ahead_s=600)
    past = (datetime.now(UTC) - timedelta(seconds=1)).timestamp()
    guard.check("alice", "old", past)
    guard._next_prune = 0  # prune on the next check
    guard.check("alice", "new", past + 100)
    assert ("alice", "old") not in guard._seen
    with pytest.raises(RemoteError, match="already received"):
        guard.check("alice", "new", past + 100)


def test_the_console_signs_what_it_sends(memory_broker, keys):
    from console.client import Console
    from hostbus.serving.runtime import AgentRuntime
    from hostbus.transport.memory import MemoryTransport

    memory_broker.enroll("web01", ["host"])
    agent_t = MemoryTransport(memory_broker, user="web01")
    agent_t.start()
    agent, _, power = make_host_agent("web01")
    runtime = AgentRuntime(agent_t, "web01", [agent], heartbeat_interval=0,
                           verifier=Verifier({"alice": keys["alice"][1]}))
    runtime.start()
    results = {}
    for who, signer in (("alice", keys["alice"][0]), ("unsigned", None)):
        t = MemoryTransport(memory_broker, user="alice")
        t.start()
        console = Console(t, signer=signer)
        console.open()
        results[who] = console.call("host", "identify", host="web01")
        console.close()
    runtime.stop("test over")
    assert power.calls == []  # identify only
    assert results["alice"].status == "ok"
    assert results["unsigned"].reply.error["code"] == "bad_signature"
    assert results["alice"].reply.result["host_id"] == "web01"


def test_a_repeat_gets_the_earlier_reply_even_after_a_restart(tmp_path, keys):
    future = (datetime.now(UTC) + timedelta(seconds=60)).timestamp()
    guard = ReplayGuard(path=tmp_path / "recent.db")
    guard.check("alice", "r1", future)
    with pytest.raises(RemoteError, match="still being handled"):
        guard.check("alice", "r1", future)
    guard.remember_reply("alice", "r1", b'{"v":1,"status":"ok","result":{"done":true}}')
    restarted = ReplayGuard(path=tmp_path / "recent.db")  # a new agent process
    with pytest.raises(RemoteError) as info:
        restarted.check("alice", "r1", future)
    assert info.value.code.value == "replayed"
    assert info.value.details["earlier_reply"]["result"] == {"done": True}
    restarted.check("alice", "r2", future)  # new ids are fine


def test_another_callers_id_is_neither_blocked_nor_answered_with_their_reply(tmp_path):
    """Keyed by (caller, id): mallory reusing alice's request id neither gets alice's
    reply nor stops alice's request; it is mallory's own, new request."""
    future = (datetime.now(UTC) + timedelta(seconds=60)).timestamp()
    guard = ReplayGuard(path=tmp_path / "recent.db")
    guard.check("alice", "r1", future)
    guard.remember_reply("alice", "r1", b'{"v":1,"status":"ok","result":{"secret":1}}')
    guard.check("mallory", "r1", future)  # not refused: a different request
    with pytest.raises(RemoteError) as info:
        guard.check("mallory", "r1", future)
    assert "earlier_reply" not in info.value.details  # mallory's own, still unanswered


def test_after_a_crash_a_started_request_is_interrupted_and_a_waiting_one_runs(tmp_path):
    future = (datetime.now(UTC) + timedelta(seconds=60)).timestamp()
    guard = ReplayGuard(path=tmp_path / "recent.db")
    guard.check("alice", "running", future)
    guard.started("alice", "running")
    guard.check("alice", "queued", future)  # received; no worker had taken it yet
    restarted = ReplayGuard(path=tmp_path / "recent.db")  # the agent was SIGKILLed
    with pytest.raises(RemoteError) as info:
        restarted.check("alice", "running", future)
    assert info.value.details == {"interrupted": True}
    restarted.check("alice", "queued", future)  # runs, once
    with pytest.raises(RemoteError, match="already received"):
        restarted.check("alice", "queued", future)


def test_a_retried_request_does_not_run_twice_and_learns_the_outcome(setup, keys):
    dispatcher, power = setup
    delivery = signed(keys["alice"][0])
    first = dispatcher.handle(delivery)
    body, _ = first.reply.encode()
    dispatcher.replay.remember_reply("alice", first.request.message_id, body)
    again = dispatcher.handle(delivery)
    assert again.reply.error["code"] == "replayed"
    assert again.reply.error["details"]["earlier_reply"]["status"] == "ok"
    assert len(power.calls) == 1


def test_signed_replies_and_events_are_checked_by_the_console(memory_broker, tmp_path):
    """A console holding the agents' keys accepts what a host signed for itself and
    nothing else: not another key's reply, not an event one host forged for another."""
    from console.client import Console
    from hostbus.envelope import Event
    from hostbus.serving.runtime import AgentRuntime
    from hostbus.transport.memory import MemoryTransport
    from tests.fakes import EventCollector

    web01_key, web01_pub = generate("web01", tmp_path / "a")
    web02_key, web02_pub = generate("web02", tmp_path / "b")
    memory_broker.enroll("web01", ["host"])
    agent_t = MemoryTransport(memory_broker, user="web01")
    agent_t.start()
    agent, _, _ = make_host_agent("web01")
    runtime = AgentRuntime(agent_t, "web01", [agent], heartbeat_interval=0,
                           signer=Signer.load(web01_key))
    runtime.start()

    def console_trusting(keys):
        t = MemoryTransport(memory_broker, user="ops")
        t.start()
        c = Console(t, agent_keys=Verifier(dict(read_public_key(k) for k in keys)))
        c.open()
        return c

    good = console_trusting([web01_pub, web02_pub])
    wrong = Verifier({"web01": read_public_key(web02_pub)[1]})
    fooled = console_trusting([])
    fooled.agent_keys = wrong
    try:
        assert good.call("host", "identify", host="web01", timeout=5).status == "ok"
        res = fooled.call("host", "identify", host="web01", timeout=1)
        assert res.reply.error["code"] == "bad_signature"
        assert "does not match web01's trusted key" in res.reply.error["message"]

        seen = EventCollector()
        good.subscribe(["host.#"], seen)
        forger = MemoryTransport(memory_broker, user="web02")
        forger.start()
        forged = Event(host="web01", agent="host", event="alert", seq=1, epoch="x",
                       data={"metric": "cpu_percent", "state": "raised"})
        honest = Event(host="web02", agent="host", event="alert", seq=1, epoch="y",
                       data={"metric": "cpu_percent", "state": "raised"})
        for ev in (forged, honest):
            body, props = ev.encode()
            props.user_id = "web02"
            Signer.load(web02_key).sign(names.EVENT_EXCHANGE, ev.routing_key(), props, body)
            forger.publish(names.EVENT_EXCHANGE, ev.routing_key(), body, props)
        got = seen.wait_for(lambda e: True)
        assert got.host == "web02"  # the forged one, sent first, was dropped
        assert [e.host for e, _ in seen.events] == ["web02"]
    finally:
        runtime.stop("test over")
        good.close()
        fooled.close()


def test_a_field_with_a_line_feed_is_neither_signed_nor_verified(keys):
    """Fields are separated by line feeds: one holding a line feed could be re-split
    into other fields under the same signature."""
    from hostbus.envelope import new_request

    req = new_request("host", "identify", host="web01", reply_to="hostbus.reply.a")
    body, props = req.encode()
    props.user_id, props.message_id = "alice", "m1\nhostbus.request/1"
    with pytest.raises(ValueError, match="line feeds"):
        keys["alice"][0].sign("hostbus.request", "host.web01", props, body)
    props.content_type = "application/json; hostbus-sig=QUJD"
    with pytest.raises(RemoteError) as err:
        Verifier({"alice": keys["alice"][1]}).verify("hostbus.request", "host.web01", props,
                                                     body, kind="hostbus.request/1")
    assert err.value.code.value == "bad_signature" and "line feed" in err.value.message
