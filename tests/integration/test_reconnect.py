"""The broker goes away and comes back (RabbitMQ's application stopped and started, so
every connection is closed): calls in flight fail at once with a clear error, and
agents and consoles reconnect by themselves and serve again."""

import os
import shutil
import subprocess
import threading
import uuid

import pytest

from console.client import Console
from hostbus.errors import HostbusError
from hostbus.serving.runtime import AgentRuntime
from hostbus.testing.pytest_plugin import fail_or_skip

pytestmark = pytest.mark.integration


def rabbitmqctl(*args):
    return subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.fixture
def broker_control():
    if shutil.which("rabbitmqctl") is None or os.geteuid() != 0:
        fail_or_skip("restarting RabbitMQ needs rabbitmqctl and root")
    yield rabbitmqctl
    rabbitmqctl("start_app")  # whatever happened, leave the broker running
    rabbitmqctl("await_startup")


@pytest.fixture(autouse=True)
def management_api_back(rabbitmq):
    """Later tests use the management API, which listens again a little after AMQP."""
    yield
    for _ in range(150):  # a service start has no event to await: bounded polling
        try:
            if rabbitmq.admin.vhost_exists(rabbitmq.vhost):
                return
        except HostbusError:
            pass
        threading.Event().wait(0.2)
    pytest.fail("the RabbitMQ management API did not come back within 30 s")


def test_agents_and_consoles_reconnect_and_in_flight_calls_fail_fast(rabbitmq,
                                                                    broker_control):
    host = f"rc-{uuid.uuid4().hex[:6]}"
    rabbitmq.enroll(host, [])
    runtime = AgentRuntime.serve(rabbitmq.url, host, [], heartbeat_interval=0)
    console = Console.connect(rabbitmq.url)
    try:
        assert console.call("agent", "ping", host=host).status == "ok"
        restored = {"agent": threading.Event(), "console": threading.Event()}
        runtime.transport.on_connection_restored(restored["agent"].set)
        console.transport.on_connection_restored(restored["console"].set)
        lost = threading.Event()
        console.transport.on_connection_lost(lambda exc: lost.set())

        # A call waiting on a host that will never answer, when the broker goes away.
        rabbitmq.enroll("rc-ghost", [])  # enrolled, but no agent runs there
        outcome = {}

        def waiting_call():
            try:
                outcome["result"] = console.call("agent", "ping", host="rc-ghost", timeout=60)
            except HostbusError as exc:
                outcome["error"] = str(exc)

        caller = threading.Thread(target=waiting_call)
        caller.start()
        assert broker_control("stop_app").returncode == 0
        assert lost.wait(30), "the console never noticed the broker going away"
        caller.join(30)
        assert not caller.is_alive(), "an in-flight call hung when the broker went away"
        assert "connection was lost" in outcome.get("error", ""), outcome

        assert broker_control("start_app").returncode == 0
        assert restored["agent"].wait(90) and restored["console"].wait(90)
        again = console.call("agent", "ping", host=host, timeout=10)
        assert again.status == "ok", "the agent does not serve after reconnecting"
        assert again.reply.result["epoch"] == runtime.epoch  # same process, same epoch
    finally:
        console.close()
        runtime.stop("test over")


def test_several_broker_urls_are_tried_in_turn(rabbitmq):
    host = f"rc-{uuid.uuid4().hex[:6]}"
    rabbitmq.enroll(host, [])
    from hostbus.transport.url import parse_url

    live = parse_url(rabbitmq.url)
    # nothing listens on port 1
    dead = f"{live.scheme}://{live.user}:{live.password}@{live.host}:1/{live.vhost}"
    runtime = AgentRuntime.serve(f"{dead}, {rabbitmq.url}", host, [], heartbeat_interval=0)
    console = Console.connect(f"{dead},{rabbitmq.url}")
    try:
        assert runtime.transport.connected_to == f"{live.host}:{live.port}"
        assert console.call("agent", "ping", host=host).status == "ok"
    finally:
        console.close()
        runtime.stop("test over")
