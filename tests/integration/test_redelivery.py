"""A caller never sees an error for an action that ran, nor two results: when an agent's
connection drops with a request unacknowledged, the broker hands the request to the
agent again, and the agent answers that copy ``replayed``. The console takes that
answer for what it says: the earlier reply, if it carries one, or nothing yet (the
first copy's own reply follows). The connection is dropped by a TCP proxy between agent
and broker; the broker stays up."""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any

import pytest

from hostbus.serving.runtime import AgentRuntime
from tests.gate_agent import SCHEMA, GateAgent
from tests.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


class LogWatch(logging.Handler):
    """Set once a log record of ``logger`` contains ``text``: a test waits on what the
    agent says it did."""

    def __init__(self, logger: str, text: str) -> None:
        super().__init__(logging.DEBUG)
        self.text, self.seen = text, threading.Event()
        self.logger = logging.getLogger(logger)
        self.level_before = self.logger.level
        self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()

    def close(self) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self.level_before)
        super().close()


@pytest.fixture
def proxy(rabbitmq):
    made = TcpProxy.to(rabbitmq.url)
    yield made
    made.close()


@pytest.fixture
def gate_agent(rabbitmq, proxy):
    """An agent with the gate method, connected through the proxy."""
    host = f"rd-{uuid.uuid4().hex[:6]}"
    rabbitmq.enroll(host, ["gate"])
    gate = GateAgent()
    runtime = AgentRuntime.serve(proxy.url(rabbitmq.url), host, [gate], heartbeat_interval=0,
                                 schemas={"gate": SCHEMA})
    yield runtime, gate
    gate.gate.set()
    runtime.stop("test over")


def call_in_background(console, host: str) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def run() -> None:
        result["call"] = console.call("gate", "hold", {}, host=host, timeout=90)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


@pytest.fixture
def console(rabbitmq):
    from console.client import Console

    c = Console.connect(rabbitmq.url, schemas={"gate": SCHEMA})
    yield c
    c.close()


def test_a_request_redelivered_while_it_runs_gets_its_own_reply_only(console, proxy,
                                                                     gate_agent):
    runtime, gate = gate_agent
    restored = threading.Event()
    runtime.transport.on_connection_restored(restored.set)
    replayed = LogWatch("hostbus.dispatch", "replayed")
    try:
        caller, result = call_in_background(console, runtime.host_id)
        gate.wait_entered(1)
        proxy.cut()  # the agent's connection drops with the request unacknowledged
        assert restored.wait(60)
        assert replayed.seen.wait(60), "the broker's copy never reached the agent"
        gate.gate.set()  # only now does the first copy finish, and answer
        caller.join(120)
        res = result["call"]
        assert res.status == "ok", res.reply
        assert res.reply.result == {"held": True}
        assert gate.entered == 1  # it ran once
    finally:
        replayed.close()


def test_a_request_whose_reply_was_lost_gets_the_earlier_reply(console, proxy, gate_agent):
    runtime, gate = gate_agent
    ran = LogWatch("hostbus.dispatch", "gate.hold from")
    try:
        caller, result = call_in_background(console, runtime.host_id)
        gate.wait_entered(1)
        proxy.blackhole()  # what the agent sends from now on never reaches the broker
        gate.gate.set()
        assert ran.seen.wait(60)
        assert proxy.wait_swallowed(), "the agent's reply never left it"
        proxy.cut()  # reply and acknowledgement lost: the broker hands the request back
        caller.join(120)
        res = result["call"]
        assert res.status == "ok", res.reply
        assert res.reply.result == {"held": True}
        assert gate.entered == 1
    finally:
        ran.close()
