"""Broker outages on a RabbitMQ node of the tests' own (so the machine's broker is never
disturbed): an agent that starts before its broker, events across a broker restart,
and an agent killed in the middle of a method."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from console.client import Console
from hostbus.serving.runtime import AgentRuntime
from tests.fakes import EventCollector, make_host_agent
from tests.rabbit_node import alerts_in_two_parts, hostbus_node

# Starting RabbitMQ nodes of their own takes 10 s or more each (counted in the timeout).
pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    with hostbus_node(tmp_path_factory.mktemp("outage") / "node", "a RabbitMQ node") as made:
        yield made


def host_id() -> str:
    return f"out-{uuid.uuid4().hex[:6]}"


# The agent's protocol; consoles stay on 0-9-1 (durable subscriptions bind their queue),
# so the AMQP 1.0 cases are mixed fleets too.
over_both = pytest.mark.parametrize("agent_url", [
    pytest.param(lambda node: node.url(), id="agent-amqp091"),
    pytest.param(lambda node: node.url().replace("amqp://", "amqp10://"), id="agent-amqp10"),
])


@over_both
def test_an_agent_started_before_its_broker_comes_online_by_itself(node, tmp_path, agent_url):
    host = host_id()
    node.admin.enroll_host("hostbus", host, ["host"])
    console = Console.connect(node.url())
    seen = EventCollector()
    console.subscribe([f"agent.{host}.online"], seen, name=f"wait-{host}", durable=True)
    node.ctl("stop_app")  # the broker is down: nothing listens on its port
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOSTBUS_")}
    proc = subprocess.Popen(
        [str(BIN / "hostbus-agent")], stderr=subprocess.PIPE, text=True,
        env={**env, "HOSTBUS_BROKER_URL": agent_url(node), "HOSTBUS_AGENT_HOST_ID": host,
             "HOSTBUS_AGENT_STATE_DIR": str(tmp_path), "HOSTBUS_BROKER_CONNECT_TIMEOUT": "2"})
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # it says it is waiting, and keeps going
            if "connecting to" in line and "next try in" in line:
                break
        assert proc.poll() is None, "the agent gave up instead of waiting"
        node.ctl("start_app")
        online = seen.wait_for(lambda e: True, timeout=90)
        assert online.host == host
        assert console.call("agent", "ping", host=host, timeout=10).status == "ok"
    finally:
        proc.terminate()
        proc.wait(30)
        console.close()


@over_both
def test_events_published_across_a_broker_restart_all_arrive_once_in_order(node, agent_url):
    host = host_id()
    node.admin.enroll_host("hostbus", host, ["host"])
    console = Console.connect(node.url())
    seen = EventCollector()
    console.subscribe([f"host.{host}.alert"], seen, name=f"steady-{host}", durable=True)
    agent, _, _ = make_host_agent(host)
    runtime = AgentRuntime.serve(agent_url(node), host, [agent], heartbeat_interval=0)
    lost = threading.Event()
    runtime.transport.on_connection_lost(lambda exc: lost.set())
    # 300 events, then the broker stops; the other 700 are emitted while it is down.
    publisher, first_part_out, go_on = alerts_in_two_parts(agent.emit, 1000, split_at=300)
    publisher.start()
    try:
        assert first_part_out.wait(60)
        node.ctl("stop_app")
        assert lost.wait(60)  # the agent did lose its connection
        go_on.set()
        publisher.join(120)
        assert not publisher.is_alive()
        node.ctl("start_app")
        node.ctl("await_startup")
        events = seen.wait_until(lambda evs: len(evs) >= 1000, timeout=120)
        values = [e.data["value"] for e, _ in events]
        assert values == [float(n) for n in range(1000)]  # all, once each, in order
        status = runtime.outbox.status()
        assert status["dropped"] == 0 and status["rejected"] == 0
    finally:
        go_on.set()
        publisher.join(120)
        runtime.stop("test over")
        console.close()


def wait_unacked(node, queue: str, count: int, timeout: float = 30) -> None:
    """Until the broker says ``count`` messages of ``queue`` are with a consumer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listing = node.ctl("list_queues", "-p", "hostbus", "name", "messages_unacknowledged",
                           "--no-table-headers", "--quiet")
        for line in listing.splitlines():
            name, _, unacked = line.partition("\t")
            if name == queue and int(unacked or 0) >= count:
                return
        threading.Event().wait(0.1)
    raise AssertionError(f"{queue} never had {count} unacknowledged messages")


@over_both
def test_an_agent_killed_mid_method_does_not_run_it_again_and_says_so(node, tmp_path,
                                                                      agent_url):
    """The request that was running is answered as interrupted and never runs again;
    the one that only waited for the (single) worker runs once after the restart."""
    host = host_id()
    node.admin.enroll_host("hostbus", host, ["slow"])
    marker = tmp_path / "runs.txt"
    command = [sys.executable, "-m", "tests.slow_agent", agent_url(node), host, str(tmp_path),
               str(marker), "1"]

    def start() -> subprocess.Popen[str]:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "serving"
        return proc

    from tests.slow_agent import SCHEMA

    console = Console.connect(node.url(), schemas={"slow": SCHEMA})
    started = EventCollector()
    console.subscribe([f"slow.{host}.started"], started)
    agent = start()
    result: dict = {}

    def call(name: str, seconds: float) -> threading.Thread:
        def run() -> None:
            result[name] = console.call("slow", "work", {"seconds": seconds}, host=host,
                                        timeout=90)
        thread = threading.Thread(target=run)
        thread.start()
        return thread

    running = call("running", 60)
    try:
        started.wait_for(lambda e: True, timeout=30)
        queued = call("queued", 0)  # waits for the one worker
        wait_unacked(node, f"hostbus.host.{host}", 2)  # both are with the agent
        agent.kill()  # SIGKILL, mid-method
        agent.wait(30)
        agent = start()  # the broker hands the unacknowledged requests to the new run
        running.join(120)
        queued.join(120)
        res = result["running"]
        assert res.reply is not None, "no reply: the caller was left waiting"
        assert res.reply.error["code"] == "failed"
        assert res.reply.error["details"] == {"interrupted": True}
        assert result["queued"].status == "ok", result["queued"].reply
        runs = marker.read_text().split()
        assert len(runs) == 2 and len(set(runs)) == 2  # each ran once, never again
    finally:
        agent.kill()
        agent.wait(30)
        console.close()
