"""The AMQP 1.0 transport (python-qpid-proton) on a RabbitMQ node of the test's own with
the rabbitmq_amqp1_0 plugin: an agent and a console both on AMQP 1.0, mixed fleets (a
proton agent driven by a pika console and the reverse, with their own broker users and
signatures both ways), and broker refusals reported with the broker's reason within a
bounded time, never a bare timeout. The rest of the integration suite runs over both
transports through the parametrized ``rabbitmq`` fixture."""

from __future__ import annotations

import queue
import re
import threading
import time
from typing import Any

import pytest

from console.client import Console
from hostbus.errors import BrokerRefused, ConnectionFailed
from hostbus.serving.runtime import AgentRuntime
from hostbus.transport import connect
from hostbus.transport.base import Properties
from tests.fakes import EventCollector, make_host_agent
from tests.rabbit_node import RabbitNode, hostbus_node, rabbitmq4_root, started

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture(scope="module", params=["rabbitmq3", "rabbitmq4"])
def node(request, tmp_path_factory):
    """A node of the machine's RabbitMQ (3.10, the AMQP 1.0 plugin), and one of
    RabbitMQ 4 (AMQP 1.0 built in, v2 addresses) from the Debian 13 root."""
    root = started("the RabbitMQ 4 root", rabbitmq4_root) \
        if request.param == "rabbitmq4" else None
    with hostbus_node(tmp_path_factory.mktemp("amqp10") / "node",
                      f"a {request.param} node with AMQP 1.0", root=root) as made:
        yield made


def url10(node: RabbitNode, user: str = "guest", password: str = "guest") -> str:
    return f"amqp10://{user}:{password}@127.0.0.1:{node.amqp_port}/hostbus"


def test_an_agent_and_a_console_on_amqp10(node):
    node.admin.enroll_host("hostbus", "one0", ["host"])
    agent, _, _ = make_host_agent("one0")
    runtime = AgentRuntime.serve(url10(node), "one0", [agent], heartbeat_interval=0)
    console = Console.connect(url10(node))
    try:
        seen = EventCollector()
        console.subscribe(["host.one0.#"], seen)
        found = console.discover(expect=["one0"], timeout=10)
        assert [a.host for a in found] == ["one0"]
        res = console.call("host", "identify", host="one0", timeout=10)
        assert res.status == "ok" and res.reply.result["host_id"] == "one0"
        assert res.reply.user_id == "guest"  # the broker-checked sender, over 1.0
        agent.emit("alert", {"metric": "cpu_percent", "state": "raised", "value": 95.0,
                             "threshold": 90.0})
        ev = seen.wait_for(lambda e: e.event == "alert", timeout=10)
        assert ev.data["value"] == 95.0 and ev.seq >= 1
    finally:
        console.close()
        runtime.stop("test over")


def url091(node: RabbitNode, user: str = "guest", password: str = "guest") -> str:
    return f"amqp://{user}:{password}@127.0.0.1:{node.amqp_port}/hostbus"


@pytest.mark.parametrize(("agent_url", "console_url"), [
    pytest.param(url10, url091, id="proton-agent-pika-console"),
    pytest.param(url091, url10, id="pika-agent-proton-console"),
])
def test_a_mixed_fleet_with_own_users_and_signatures_both_ways(node, tmp_path, agent_url,
                                                               console_url):
    """What RabbitMQ 3.10 drops between the protocols (type, headers, a 0-9-1 user_id
    towards 1.0) must not matter: the caller is still known by its broker-checked user,
    signatures verify both ways, and events cross."""
    from hostbus.security.policy import RulesPolicy
    from hostbus.security.signing import Signer, Verifier, generate, read_public_key

    host, operator = f"mix{agent_url.__name__[-2:]}", f"ops{console_url.__name__[-2:]}"
    node.admin.enroll_host("hostbus", host, ["host"])
    agent_password = node.admin.create_identity("hostbus", "agent", host)
    console_password = node.admin.create_identity("hostbus", "console", operator)
    keys = {name: generate(name, tmp_path / "keys") for name in (host, operator)}
    agent, _, power = make_host_agent(host)
    (tmp_path / "policy.toml").write_text(  # the caller, by name: its user_id must cross
        f'[[rule]]\nallow = true\ncallers = ["{operator}"]\nagents = ["agent", "host"]\n'
        'methods = ["ping", "describe", "reboot"]\n')
    policy = RulesPolicy.load(tmp_path / "policy.toml", host)
    runtime = AgentRuntime.serve(
        agent_url(node, host, agent_password), host, [agent], heartbeat_interval=0,
        policy=policy, signer=Signer.load(keys[host][0]),
        verifier=Verifier(dict([read_public_key(keys[operator][1])])))
    console = Console.connect(console_url(node, operator, console_password),
                              signer=Signer.load(keys[operator][0]),
                              agent_keys=Verifier(dict([read_public_key(keys[host][1])])))
    try:
        seen = EventCollector()
        console.subscribe([f"host.{host}.alert"], seen)
        assert [a.host for a in console.discover(expect=[host], timeout=10)] == [host]
        res = console.call("host", "reboot", {"delay_s": 60}, host=host, timeout=10)
        assert res.status == "ok", res.to_dict()
        assert power.calls == [("reboot", 60, "requested through hostbus")]
        assert res.reply.user_id == host  # the agent's broker user, checked on publish
        agent.emit("alert", {"metric": "cpu_percent", "state": "raised", "value": 97.0,
                             "threshold": 90.0})
        ev = seen.wait_for(lambda e: e.event == "alert", timeout=10)
        assert ev.host == host and ev.data["value"] == 97.0
    finally:
        console.close()
        runtime.stop("test over")
        node.admin.revoke(host)
        node.admin.revoke(operator)


@pytest.mark.parametrize("body", ['{"v": 1}', {"v": 1, "agent": "agent"}, None, 5],
                         ids=["a string", "a map", "nothing", "a number"])
def test_amqp_value_bodies_are_refused_and_the_agent_carries_on(node, body):
    """Bodies must be one Data section of JSON bytes. An AmqpValue instead (a plain
    proton client's default for a str or dict) gets bad_message; it once crashed the
    agent's I/O thread. (An AmqpSequence makes RabbitMQ 3.10 drop the sender.)"""
    import json
    import uuid

    from proton import Message, Timeout
    from proton.utils import BlockingConnection

    host = f"val{uuid.uuid4().hex[:5]}"
    node.admin.enroll_host("hostbus", host, ["host"])
    agent, _, _ = make_host_agent(host)
    runtime = AgentRuntime.serve(url10(node), host, [agent], heartbeat_interval=0)
    conn = BlockingConnection(f"amqp://127.0.0.1:{node.amqp_port}", user="guest",
                              password="guest", allowed_mechs="PLAIN",
                              virtual_host="vhost:hostbus", timeout=10)
    try:
        reply_name = f"hostbus.reply.guest.{uuid.uuid4().hex}"
        replies = conn.create_receiver(f"/exchange/hostbus.reply/{reply_name}")
        sender = conn.create_sender(f"/exchange/hostbus.request/host.{host}")
        message = Message(body=body, id=str(uuid.uuid4()), reply_to=reply_name,
                          user_id=b"guest", content_type="application/json")
        if body is None and node.version.startswith("4."):
            # RabbitMQ 4 never settles a message without a body: it reaches no agent.
            with pytest.raises(Timeout):
                sender.send(message, timeout=5)
            return
        sender.send(message)
        got = replies.receive(timeout=10)  # kept: its body is a view into it
        reply = json.loads(bytes(got.body))
        assert reply["status"] == "error" and reply["error"]["code"] == "bad_message"
        assert "not valid UTF-8 JSON" in reply["error"]["message"]
        console = Console.connect(url10(node))
        try:
            assert console.call("agent", "ping", host=host, timeout=10).status == "ok"
        finally:
            console.close()
    finally:
        conn.close()
        runtime.stop("test over")


def test_a_publish_to_a_missing_exchange_is_refused_with_the_reason(node):
    transport = connect(url10(node))
    transport.start()
    outcome: queue.Queue[bool | None] = queue.Queue()
    try:
        transport.publish("no.such.exchange", "x", b"{}", Properties(), confirm=outcome.put)
        assert outcome.get(timeout=10) is False  # bounded: not a timeout
        address, reason = transport.last_refusal
        if node.version.startswith("4."):  # a sender without target; the message's `to`
            assert address == "/exchanges/no.such.exchange/x" and "not-found" in reason
        else:
            assert address == "/exchange/no.such.exchange" and "NOT_FOUND" in reason
    finally:
        transport.close()


def test_an_agent_identity_may_not_publish_requests_over_amqp10(node):
    node.admin.enroll_host("hostbus", "lim0", ["host"])
    password = node.admin.create_identity("hostbus", "agent", "lim0")
    transport = connect(url10(node, "lim0", password))
    transport.start()
    outcome: queue.Queue[bool | None] = queue.Queue()
    try:
        transport.publish("hostbus.request", "host.other", b"{}", Properties(),
                          confirm=outcome.put)
        assert outcome.get(timeout=10) is False
        # RabbitMQ 3.x says ACCESS_REFUSED, 4.x amqp:unauthorized-access
        assert re.search("ACCESS_REFUSED|unauthorized", transport.last_refusal[1])
        with pytest.raises(BrokerRefused, match=r"hostbus\.host\.other"):
            transport.consume("hostbus.host.other", lambda d: None)
    finally:
        transport.close()
        node.admin.revoke("lim0")


def test_a_wrong_password_fails_at_once_and_says_so(node):
    transport = connect(url10(node, "guest", "wrong"), connect_timeout=5)
    with pytest.raises(ConnectionFailed) as info:
        transport.start()
    assert "amqp:unauthorized-access: Authentication failed [mech=PLAIN]; check the " \
        "user and password in the broker URL" in str(info.value)


def test_agent_and_console_on_amqp10_come_back_after_a_broker_restart(node):

    node.admin.enroll_host("hostbus", "back0", ["host"])
    agent, _, _ = make_host_agent("back0")
    runtime = AgentRuntime.serve(url10(node), "back0", [agent], heartbeat_interval=0)
    console = Console.connect(url10(node))
    back = {"agent": threading.Event(), "console": threading.Event()}
    runtime.transport.on_connection_restored(back["agent"].set)
    console.transport.on_connection_restored(back["console"].set)
    try:
        assert console.call("agent", "ping", host="back0", timeout=10).status == "ok"
        node.ctl("stop_app")
        node.ctl("start_app")
        node.ctl("await_startup")
        assert back["agent"].wait(60) and back["console"].wait(60)
        res = console.call("host", "identify", host="back0", timeout=10)
        assert res.status == "ok" and res.reply.result["host_id"] == "back0"
    finally:
        console.close()
        runtime.stop("test over")


def test_a_broker_without_amqp10_is_named_as_such(tmp_path):
    plain = RabbitNode(tmp_path / "node")  # no rabbitmq_amqp1_0 plugin
    started("a RabbitMQ node", plain.start)
    try:
        transport = connect(url10(plain), connect_timeout=5)
        with pytest.raises(ConnectionFailed, match="rabbitmq-plugins enable rabbitmq_amqp1_0"):
            transport.start()
    finally:
        plain.stop()


def test_an_agent_answering_many_consoles_over_amqp10_keeps_few_sessions(node):
    """Each console has a reply queue of its own. An agent that opened a sender (and a
    session) per reply queue kept every one of them open: a new one for every CLI
    call, for as long as the agent ran. The broker lists an AMQP 1.0 client once per
    session."""
    node.admin.enroll_host("hostbus", "many0", ["host"])
    password = node.admin.create_identity("hostbus", "agent", "many0")
    agent, _, _ = make_host_agent("many0")
    runtime = AgentRuntime.serve(url10(node, "many0", password), "many0", [agent],
                                 heartbeat_interval=0)
    try:
        for _ in range(12):
            console = Console.connect(url10(node))  # as each `hostbus call` does
            try:
                assert console.call("agent", "ping", host="many0", timeout=10).status == "ok"
            finally:
                console.close()
        # The management plugin lists connections when its statistics tick comes (every
        # few seconds): wait, bounded, for the agent's to show (each look is a request
        # to the broker), then count them.
        deadline = time.monotonic() + 30
        sessions: list[dict[str, Any]] = []
        while not sessions and time.monotonic() < deadline:
            sessions = [c for c in node.admin.connections("hostbus")
                        if c.get("user") == "many0"]
        # the host and agent queues' consumers, the reply sender, the event sender for
        # `online`
        assert 1 <= len(sessions) <= 4, [c.get("name") for c in sessions]
    finally:
        runtime.stop("test over")
        node.admin.revoke("many0")


def test_a_subscription_outside_the_users_topic_permission_is_refused_at_once(node):
    """Both versions check a binding key against the user's topic read permission: 3.x
    when the source address binds, 4.x when the management node is asked to bind (it
    ends the session instead of answering: the console has its reason). 3.x drops the
    whole connection without a reason: the console says what that means. Either way at
    once, not after the attach's timeout, and its other consumers carry on."""
    import base64
    import json
    import urllib.request

    password = node.admin.create_identity("hostbus", "console", "narrow0")
    request = urllib.request.Request(
        f"http://127.0.0.1:{node.mgmt_port}/api/topic-permissions/hostbus/narrow0",
        method="PUT", data=json.dumps({"exchange": "hostbus.event", "write": "^$",
                                       "read": r"^host\.web01\."}).encode())
    request.add_header("Authorization", f"Basic {base64.b64encode(b'guest:guest').decode()}")
    request.add_header("Content-Type", "application/json")
    urllib.request.urlopen(request, timeout=10).close()
    console = Console.connect(url10(node, "narrow0", password))
    try:
        console.subscribe(["host.web01.alert"], lambda event, note: None)
        back = threading.Event()
        console.transport.on_connection_restored(back.set)
        # (the attach's own timeout would say "did not answer the attach in time")
        with pytest.raises(BrokerRefused, match=r"access to topic 'host\.web02\.alert'|"
                           r"closed the connection while this consumer was attaching"):
            console.subscribe(["host.web02.alert"], lambda event, note: None)
        if not node.version.startswith("4."):
            assert back.wait(30), "the console did not reconnect after 3.x dropped it"
        node.admin.enroll_host("hostbus", "narrow-h", ["host"])
        agent, _, _ = make_host_agent("narrow-h")
        runtime = AgentRuntime.serve(url10(node), "narrow-h", [agent], heartbeat_interval=0)
        try:  # the console's reply queue still works (restored after 3.x's drop)
            assert console.call("agent", "ping", host="narrow-h", timeout=10).status == "ok"
        finally:
            runtime.stop("test over")
    finally:
        console.close()
        node.admin.revoke("narrow0")


def test_every_attach_is_answered_after_links_close_on_the_connection(node):
    """An agent starts by probing its host and agent queues, then consumes them. The
    transport used to end each probe's session, and the next link began a session on the
    channel number just freed: RabbitMQ 4.0 sometimes never answered the attach there (3
    starts in 100; the agent then took its own queue for missing, and calls to it went
    unanswered). Sessions now stay open for the next link: every attach is answered."""
    import pika

    setup = pika.BlockingConnection(pika.URLParameters(url091(node)))
    for queue_name in ("cycles.host", "cycles.agent"):
        setup.channel().queue_declare(queue_name, durable=True)
    setup.close()
    unanswered = []
    for start in range(200):
        transport = connect(url10(node), reconnect=False, connect_timeout=2)
        transport.start()
        try:
            found = [transport.queue_exists("cycles.host"),
                     transport.queue_exists("cycles.agent")]
            try:
                transport.consume("cycles.agent", lambda delivery: None)
                found.append(True)
            except BrokerRefused:
                found.append(False)
            if found != [True, True, True]:
                unanswered.append((start, found, transport.last_refusal))
        finally:
            transport.close()
    assert unanswered == []


def test_a_connection_dropped_under_a_first_attach_is_no_refusal_and_close_ends_it(node):
    """A queue consumed by name binds nothing, so a connection dropped while its consumer
    attaches is no refused binding: the consumer is attached after the reconnect and
    consume() returns. Seen about one manager start in ten on RabbitMQ 3.10: its active
    queue's attach met a dropped connection and was reported as "RabbitMQ 3.x does so when
    it refuses a binding: check the user's topic permissions", and the manager gave up.
    Then, offline and reconnecting, close() ends the transport's I/O thread."""
    import pika

    from tests.tcp_proxy import TcpProxy

    setup = pika.BlockingConnection(pika.URLParameters(url091(node)))
    setup.channel().queue_declare("dropped.attach", durable=True)
    proxy = TcpProxy("127.0.0.1", node.amqp_port)
    transport = connect(proxy.url(url10(node)), connect_timeout=5)
    lost, back = threading.Event(), threading.Event()
    transport.on_connection_lost(lambda exc: lost.set())
    transport.on_connection_restored(back.set)
    transport.start()
    try:
        got: queue.Queue[Any] = queue.Queue()
        proxy.blackhole()  # the attach never reaches the broker; then the connection drops

        def drop() -> None:
            proxy.wait_swallowed()
            proxy.cut()

        threading.Thread(target=drop, daemon=True).start()
        transport.consume("dropped.attach", got.put)
        assert lost.is_set() and back.wait(30)
        setup.channel().basic_publish("", "dropped.attach", b"after the drop")
        assert got.get(timeout=30).body == b"after the drop"

        lost.clear()
        proxy.refuse()
        proxy.cut()
        assert lost.wait(30)
    finally:
        transport.close()
        proxy.close()
        setup.close()
    assert transport._thread is not None and not transport._thread.is_alive()


def test_a_closed_transport_leaves_no_descriptor_behind(node):
    """Proton never closes its event injector's pipe: every closed AMQP 1.0 transport
    left two descriptors open, and a process that had made about a thousand could not
    connect over AMQP 1.0 again (proton's loop uses select(), limited to 1,024)."""
    import gc
    import os

    def open_descriptors():
        gc.collect()
        return len(os.listdir("/proc/self/fd"))

    warm = connect(url10(node), reconnect=False, connect_timeout=5)
    warm.start()
    warm.close()
    before = open_descriptors()
    for _ in range(50):
        transport = connect(url10(node), reconnect=False, connect_timeout=5)
        transport.start()
        transport.close()
    assert open_descriptors() - before < 10  # 100 or more when each left its pipe
