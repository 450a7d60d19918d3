"""The broker goes away and comes back (RabbitMQ's application stopped and started, so
every connection is closed): calls in flight fail at once with a clear error, and
agents and consoles reconnect by themselves and serve again. On a node of the tests'
own: the machine's broker, and whoever else uses it, is never restarted."""

import threading
import uuid

import pytest

from console.client import Console
from hostbus.errors import HostbusError
from hostbus.serving.runtime import AgentRuntime
from tests.rabbit_node import hostbus_node

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    with hostbus_node(tmp_path_factory.mktemp("reconnect") / "node", "a RabbitMQ node") as made:
        yield made


@pytest.mark.timeout(300)  # a node of its own boots in about 10 s
@pytest.mark.parametrize("scheme", ["amqp", "amqp10"])
def test_agents_and_consoles_reconnect_and_in_flight_calls_fail_fast(node, scheme):
    url = node.url().replace("amqp://", f"{scheme}://")
    host = f"rc-{uuid.uuid4().hex[:6]}"
    node.admin.enroll_host("hostbus", host, [])
    runtime = AgentRuntime.serve(url, host, [], heartbeat_interval=0)
    console = Console.connect(url)
    try:
        assert console.call("agent", "ping", host=host).status == "ok"
        restored = {"agent": threading.Event(), "console": threading.Event()}
        runtime.transport.on_connection_restored(restored["agent"].set)
        console.transport.on_connection_restored(restored["console"].set)
        lost = threading.Event()
        console.transport.on_connection_lost(lambda exc: lost.set())

        # A call waiting on a host that will never answer, when the broker goes away.
        node.admin.enroll_host("hostbus", "rc-ghost", [])  # enrolled, no agent runs there
        outcome = {}

        def waiting_call():
            try:
                outcome["result"] = console.call("agent", "ping", host="rc-ghost", timeout=60)
            except HostbusError as exc:
                outcome["error"] = str(exc)

        caller = threading.Thread(target=waiting_call)
        caller.start()
        node.ctl("stop_app")
        assert lost.wait(30), "the console never noticed the broker going away"
        caller.join(30)
        assert not caller.is_alive(), "an in-flight call hung when the broker went away"
        assert "connection was lost" in outcome.get("error", ""), outcome

        node.ctl("start_app")
        assert restored["agent"].wait(90) and restored["console"].wait(90)
        again = console.call("agent", "ping", host=host, timeout=10)
        assert again.status == "ok", "the agent does not serve after reconnecting"
        assert again.reply.result["epoch"] == runtime.epoch  # same process, same epoch
    finally:
        node.ctl("start_app")  # whatever happened, leave the node running
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
