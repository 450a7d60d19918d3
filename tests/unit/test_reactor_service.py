"""The reactor as a service on the in-memory broker: a health agent's check fails, the
reactor restarts the service through the host agent, once, and the check passes again;
what a crash leaves behind is never sent twice; events that lie about their host are
ignored."""

import threading

import pytest

from agents.health import CONFIG_DEFAULTS, create
from console.reactor.actions import Actor
from console.reactor.engine import Engine
from console.reactor.rules import parse_rules
from console.reactor.service import Reactor, queue_patterns
from console.reactor.store import ReactorStore
from hostbus.envelope import Event
from hostbus.errors import HostbusError
from hostbus.publisher import Publisher
from hostbus.serving.runtime import AgentRuntime
from hostbus.transport.memory import MemoryTransport
from tests.fakes import FakeServices, make_host_agent, until
from tests.health_server import HealthServer

RESTART = {"name": "restart a failing service", "events": ["health.*.check"],
           "when": "state=failing and target=host", "cooldown_s": 600,
           "action": {"call": "host.service.restart", "args": {"name": "{data.check}"},
                      "timeout_s": 5}}


class HealingServices(FakeServices):
    """A service manager whose restart of nginx brings the web server back."""

    def __init__(self, server: HealthServer) -> None:
        super().__init__()
        self.server = server

    def control(self, action: str, name: str) -> None:
        super().control(action, name)
        if action == "restart":
            self.server.healthy = True


@pytest.fixture
def setup(memory_broker, tmp_path):
    memory_broker.enroll("web01", ["host", "health"])
    memory_broker.enroll_active_queue("reactor", queue_patterns(RESTART["events"]))
    made = []

    def reactor(rules=(RESTART,)):
        transport = MemoryTransport(memory_broker, user="reactor")
        transport.start()
        store = ReactorStore(tmp_path / "reactor.db")
        r = Reactor(transport, Engine(parse_rules(list(rules)), store), "reactor",
                    tick_interval=0.05)
        r.start()
        made.append((r, store))
        return r

    yield memory_broker, reactor
    for r, store in made:
        r.stop()
        store.close()


def test_a_failing_check_restarts_the_service_once_and_it_passes_again(setup):
    broker, reactor = setup
    with HealthServer(healthy=False) as server:
        services = HealingServices(server)
        host, _, _ = make_host_agent(services=services)
        health = create({**CONFIG_DEFAULTS, "checks": [
            {"name": "nginx", "kind": "http", "url": server.url, "interval": 0.1,
             "fall": 2}]}, host_id="web01")
        transport = MemoryTransport(broker, user="web01")
        transport.start()
        runtime = AgentRuntime(transport, "web01", [host, health], heartbeat_interval=10,
                               check_results=True)
        r = reactor()
        assert r.standby.wait_active(5)
        runtime.start()
        try:
            assert until(lambda: health.checks["nginx"].state == "passing" and
                  health.checks["nginx"].runs > 3, timeout=15)
        finally:
            runtime.stop("test over")
    assert services.actions == [("restart", "nginx.service")]
    [done] = r.engine.store.history(actions_only=True)
    assert done["state"] == "ok" and done["host"] == "web01" and done["request_id"]
    assert done["call"] == "host.service.restart" and done["args"] == {"name": "nginx"}


def test_an_event_from_another_host_is_ignored(setup):
    broker, reactor = setup
    r = reactor()
    assert r.standby.wait_active(5)
    liar = MemoryTransport(broker, user="web02")
    liar.start()
    body, props = Event(host="web01", agent="health", event="check", seq=1, epoch="x",
                        data={"check": "nginx", "state": "failing", "target": "host",
                              "vm": ""}).encode()
    Publisher(liar).publish("hostbus.event", "health.web01.check", body, props)
    assert until(lambda: r.dropped == 1)
    assert r.engine.store.history() == []
    liar.close()


def test_after_a_crash_a_decision_being_sent_is_not_sent_again_and_a_queued_one_is(tmp_path):
    store = ReactorStore(tmp_path / "reactor.db")
    engine = Engine(parse_rules([RESTART]), store)
    for seq, check in ((1, "nginx"), (2, "cron")):
        engine.consider(Event(host="web01", agent="health", event="check", seq=seq,
                              epoch="e", data={"check": check, "state": "failing",
                                               "target": "host", "vm": ""}))
    by_name = {row["args"]["name"]: row for row in store.in_state("queued")}
    sending, queued = by_name["nginx"], by_name["cron"]
    store.update(sending["id"], "sending")  # the crash came while this one was sent
    store.close()

    calls = []
    done = threading.Event()

    class Console:
        def approvals(self, hosts, *, timeout):
            return [], None

        def call(self, agent, method, args, *, host, timeout):
            calls.append((agent, method, args, host))
            done.set()
            raise HostbusError("the broker is away")

    store = ReactorStore(tmp_path / "reactor.db")  # the restart
    actor = Actor(Console(), store, workers=1)
    actor.start()
    actor.resume()
    assert done.wait(5)
    actor.stop()
    assert calls == [("host", "service.restart", {"name": "cron"}, "web01")]
    assert store.get(sending["id"])["state"] == "interrupted"
    assert store.get(queued["id"])["state"] == "failed"
    store.close()
