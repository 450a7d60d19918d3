"""Discovery behind a backlog of work: 100 calls wait for the agent's workers, and a ping
is answered at once, with one worker or several, over both protocols. The built-in
agent's requests have a queue of their own (``hostbus.host.HOST.agent``): in the host
queue a ping waited behind every call queued before it, since the broker hands an
agent only a window (prefetch) of unacknowledged requests and a request is
acknowledged once answered."""

from __future__ import annotations

import logging
import uuid
from urllib.parse import urlsplit

import pytest

from hostbus import names
from hostbus.broker_admin import grant_for
from hostbus.serving.runtime import AgentRuntime
from tests.gate_agent import SCHEMA, GateAgent
from tests.raw_caller import RawCaller

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
BACKLOG = 100


@pytest.mark.parametrize("workers", [1, 4])
def test_a_ping_is_answered_at_once_behind_a_backlog_of_work(rabbitmq, console, workers):
    host = f"bl-{uuid.uuid4().hex[:6]}"
    rabbitmq.enroll(host, ["gate"])
    gate = GateAgent()
    runtime = AgentRuntime.serve(rabbitmq.url, host, [gate], heartbeat_interval=0,
                                 workers=workers, schemas={"gate": SCHEMA})
    caller = RawCaller(rabbitmq.raw_url)
    try:
        calls = {caller.post("gate", "hold", host) for _ in range(BACKLOG)}
        gate.wait_entered(workers)  # every worker holds a call; the rest waits

        pinged = console.call("agent", "ping", host=host, timeout=60)

        assert pinged.status == "ok", pinged.reply
        assert gate.entered == workers, "the ping waited for work to finish"
        gate.gate.set()
        replies = caller.replies(calls, timeout=120)
        assert set(replies) == calls  # every call ran: no worker count loses work
        assert all(len(r) == 1 and r[0]["status"] == "ok" for r in replies.values())
        assert gate.entered == BACKLOG
    finally:
        gate.gate.set()
        caller.close()
        runtime.stop("test over")


def test_a_host_enrolled_by_an_earlier_release_is_still_discovered_and_moves_on(
        rabbitmq, enroll, console, caplog):
    """Enrolled with one queue for everything (as before the agent queue), a new agent
    answers discovery from the host queue and says what to run; enrolling again adds
    the agent queue and gives the host's user the right to read it, password kept."""
    host = f"old-{uuid.uuid4().hex[:6]}"
    _, url = enroll("agent", host)
    admin, vhost = rabbitmq.admin, rabbitmq.vhost
    agent_queue, host_queue = names.agent_queue(host), names.host_queue(host)
    # What an earlier release left behind: no agent queue, the built-in agent's keys on
    # the host queue, and a user that may read the host queue only.
    admin.delete_queue(vhost, agent_queue)
    for key in (f"agent.{host}", "agent._all"):
        admin._call("POST", f"/api/bindings/{vhost}/e/hostbus.request/q/{host_queue}",
                    {"routing_key": key, "arguments": {}})
    grant = grant_for("agent", host)
    admin._call("PUT", f"/api/permissions/{vhost}/{host}",
                {"configure": grant.configure, "write": grant.write,
                 "read": rf"^hostbus\.host\.{host}$"})
    own_url = rabbitmq.url.replace(urlsplit(rabbitmq.url).netloc,
                                   urlsplit(url).netloc)

    with caplog.at_level(logging.WARNING, logger="hostbus.agent"):
        runtime = AgentRuntime.serve(own_url, host, [], heartbeat_interval=0)
    try:
        assert f"there is no queue {agent_queue}" in caplog.text
        assert f"hostbus broker enroll {host}" in caplog.text
        assert console.call("agent", "ping", host=host, timeout=30).status == "ok"
    finally:
        runtime.stop("test over")

    admin.enroll_host(vhost, host, [])  # what `broker enroll HOST --no-user` does
    caplog.clear()
    runtime = AgentRuntime.serve(own_url, host, [], heartbeat_interval=0)  # same password
    try:
        assert "wait behind" not in caplog.text  # it reads the agent queue now
        bound = {b["routing_key"] for b in
                 admin._call("GET", f"/api/queues/{vhost}/{host_queue}/bindings")}
        assert not {f"agent.{host}", "agent._all"} & bound
        assert console.call("agent", "ping", host=host, timeout=30).status == "ok"
    finally:
        runtime.stop("test over")
