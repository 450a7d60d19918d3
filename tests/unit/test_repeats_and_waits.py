"""Copies of one request, and requests that wait for a worker: what the agent answers,
and how a console reads a ``replayed`` answer."""

from __future__ import annotations

import json
import queue
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from hostbus import names
from hostbus.envelope import REQUEST_TYPE, Reply, earlier_reply
from hostbus.serving.dispatch import Dispatcher, HostedAgent
from hostbus.serving.runtime import AgentRuntime
from hostbus.transport.base import Properties
from hostbus.transport.memory import MemoryTransport
from tests.fakes import PROBE_SCHEMA, ProbeAgent
from tests.unit.test_dispatch import deliver, request


@pytest.fixture
def agent(memory_broker):
    memory_broker.enroll("web01", ["probe"])
    transport = MemoryTransport(memory_broker, user="web01")
    transport.start()
    probe = ProbeAgent()
    runtime = AgentRuntime(transport, "web01", [probe], heartbeat_interval=0,
                           schemas={"probe": PROBE_SCHEMA})
    runtime.start()
    client = MemoryTransport(memory_broker, user="alice")
    client.start()
    replies: queue.SimpleQueue[dict] = queue.SimpleQueue()
    reply_to = client.open_reply_queue(lambda d: replies.put(json.loads(d.body)))
    yield client, reply_to, replies, probe
    runtime.stop("test over")
    client.close()


def test_every_copy_of_a_request_is_told_the_first_ones_reply(agent):
    """A copy's own answer (replayed) is not remembered as the request's reply: a third
    copy is told the first one's outcome, not the second one's refusal."""
    client, reply_to, replies, probe = agent
    body = json.dumps(request(args={"text": "a", "times": 1})).encode()
    props = dict(message_id=str(uuid.uuid4()), reply_to=reply_to, user_id="alice",
                 content_type="application/json", type=REQUEST_TYPE)
    answers = []
    for _ in range(3):
        client.publish(names.REQUEST_EXCHANGE, "probe.web01", body, Properties(**props))
        answers.append(replies.get(timeout=10))
    first, *repeats = answers
    assert first["status"] == "ok"
    for answer in repeats:
        assert answer["error"]["code"] == "replayed"
        assert answer["error"]["details"]["earlier_reply"] == first
    assert probe.executed == ["echo"]


def test_a_request_whose_deadline_passed_while_it_waited_for_a_worker_is_not_run():
    probe = ProbeAgent()
    dispatcher = Dispatcher("web01", {"probe": HostedAgent(probe, PROBE_SCHEMA)},
                            facts=dict)
    checked = dispatcher.check(deliver(request(args={"text": "a", "times": 1})))
    assert dispatcher.late(checked) is None  # in time: it may run
    checked.request = replace(checked.request,
                              deadline=datetime.now(UTC) - timedelta(seconds=1))
    late = dispatcher.late(checked)
    assert late is not None and late.reply.error_code == "expired"
    assert "waited for a worker" in late.reply.error["message"]
    assert probe.executed == []


def ok_body(host: str = "web01") -> dict:
    return {"v": 1, "host": host, "agent": "probe", "method": "echo", "status": "ok",
            "result": {"text": "a"}}


def replayed(host: str = "web01", earlier: dict | None = None) -> Reply:
    details = {"earlier_reply": earlier} if earlier is not None else {"in_progress": True}
    return Reply(host=host, agent="probe", method="echo", status="error",
                 error={"code": "replayed", "message": "seen", "details": details},
                 correlation_id="req-1", user_id=host)


def test_a_replayed_answer_stands_for_the_reply_it_carries():
    outcome = earlier_reply(replayed(earlier=ok_body()))
    assert outcome is not None and outcome.ok and outcome.result == {"text": "a"}
    assert (outcome.correlation_id, outcome.user_id) == ("req-1", "web01")
    nested = replayed(earlier=replayed(earlier=ok_body()).to_body())  # older agents
    assert earlier_reply(nested).result == {"text": "a"}


@pytest.mark.parametrize("answer", [
    replayed(),  # the first copy is still running: its own reply is to come
    replayed(earlier=ok_body(host="web02")),  # not this host's reply
    replayed(earlier={"v": 1, "host": "web01"}),  # not a reply at all
], ids=["still-running", "other-host", "malformed"])
def test_a_replayed_answer_without_a_usable_reply_is_no_outcome(answer):
    assert earlier_reply(answer) is None


def test_other_replies_are_their_own_outcome():
    reply = Reply(host="web01", agent="probe", status="ok", result={})
    assert earlier_reply(reply) is reply
    twice = Reply(host="web01", agent="agent", method="approve", status="error",
                  error={"code": "replayed", "message": "approval 1 was already approved"})
    assert earlier_reply(twice) is twice  # not about a copy of the request: an answer
