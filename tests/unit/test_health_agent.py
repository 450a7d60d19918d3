"""The health agent against real local TCP and HTTP servers, real commands and
libvirt's test driver."""

import socket
import sys

import pytest

from agents.health import CONFIG_DEFAULTS, create
from agents.health.checks import MAX_OUTPUT, parse_checks
from hostbus.errors import ConfigError
from hostbus.schema import load_agent_schema
from hostbus.serving.runtime import AgentRuntime
from hostbus.transport.memory import MemoryTransport
from tests.fakes import EventCollector
from tests.health_server import HealthServer

SCHEMA = load_agent_schema("health")


def agent_with(*checks, **settings):
    config = {**CONFIG_DEFAULTS, **settings, "checks": list(checks)}
    agent = create(config, host_id="web01")
    seen = []
    agent.attach(lambda a, e, d: seen.append((e, d)))
    return agent, seen


def states(seen):
    return [(d["previous"], d["state"]) for e, d in seen if e == "check"]


def test_an_http_check_warns_then_fails_after_fall_runs_and_passes_again():
    with HealthServer() as server:
        agent, seen = agent_with({"name": "web", "kind": "http", "url": server.url,
                                  "body_match": "^ok$", "vm": "web01-a", "fall": 3,
                                  "rise": 2})
        agent.run_check("web")
        server.healthy = False
        for _ in range(5):
            agent.run_check("web")
        server.healthy = True
        agent.run_check("web")
        assert states(seen) == [("unknown", "passing"), ("passing", "warning"),
                                ("warning", "failing")]
        agent.run_check("web")
    assert states(seen)[-1] == ("failing", "passing")
    failing = next(d for e, d in seen if e == "check" and d["state"] == "failing")
    SCHEMA.events["check"].data_validator.validate(failing)
    assert failing["target"] == "vm:web01-a" and failing["consecutive_failures"] == 3
    assert "status 503, expected 200" in failing["output"]
    assert len(failing["output"]) <= MAX_OUTPUT  # the server sent 2,000 bytes


def test_a_body_that_does_not_match_fails_with_the_pattern_named():
    with HealthServer(body="degraded") as server:
        agent, _ = agent_with({"name": "web", "kind": "http", "url": server.url,
                               "body_match": "^ok", "fall": 1})
        result = agent.run_check("web")
    assert result["state"] == "failing" and "does not match '^ok'" in result["output"]


def test_a_tcp_check_passes_on_a_listening_port_and_fails_on_a_closed_one():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    agent, _ = agent_with({"name": "db", "kind": "tcp", "host": "127.0.0.1", "port": port,
                           "fall": 1})
    assert agent.run_check("db")["state"] == "passing"
    listener.close()
    result = agent.run_check("db")
    assert result["state"] == "failing" and "cannot connect" in result["output"]


def test_a_command_check_reads_the_exit_code_and_bounds_the_output():
    agent, _ = agent_with(
        {"name": "ok", "kind": "command", "argv": [sys.executable, "-c", "print('fine')"]},
        {"name": "loud", "kind": "command", "fall": 1,
         "argv": [sys.executable, "-c", "print('y' * 5000); raise SystemExit(2)"]},
        {"name": "slow", "kind": "command", "fall": 1, "timeout": 0.2,
         "argv": [sys.executable, "-c", "import time; time.sleep(30)"]})
    assert agent.run_check("ok")["output"] == "exit 0: fine"
    loud = agent.run_check("loud")
    assert loud["state"] == "failing" and loud["output"].startswith("exit 2: yyy")
    assert len(loud["output"]) == MAX_OUTPUT
    assert "did not finish within 0.2 s" in agent.run_check("slow")["output"]


def test_a_guest_agent_check_says_what_libvirt_said():
    agent, _ = agent_with({"name": "ga", "kind": "guest_agent", "vm": "test", "fall": 1},
                          libvirt_uri="test:///default")
    result = agent.run_check("ga")
    assert result["state"] == "failing" and result["target"] == "vm:test"
    assert "guest agent of test" in result["output"] and "not supported" in result["output"]


def test_status_answers_every_check_with_counts():
    with HealthServer(healthy=False) as server:
        agent, _ = agent_with({"name": "web", "kind": "http", "url": server.url, "fall": 1},
                              {"name": "never", "kind": "tcp", "host": "127.0.0.1",
                               "port": 9})
        agent.run_check("web")
    spec = SCHEMA.methods["status"]
    everything = agent.status(**spec.validate_args({}))
    spec.result_validator.validate(everything)
    assert everything["counts"] == {"unknown": 1, "passing": 0, "warning": 0, "failing": 1}
    assert [c["check"] for c in agent.status(**spec.validate_args(
        {"state": "failing"}))["checks"]] == ["web"]
    agent.publish_summary()


@pytest.mark.parametrize("table, words", [
    ({"name": "x", "kind": "ping"}, "kind = 'ping'"),
    ({"name": "x", "kind": "command", "argv": ["true"]}, "/absolute/path"),
    ({"name": "x", "kind": "command", "argv": "/bin/true"}, "argv"),
    ({"name": "x", "kind": "tcp", "host": "a", "port": 70000}, "port = N"),
    ({"name": "x", "kind": "http", "url": "file:///etc/passwd"}, "http(s)://"),
    ({"name": "x", "kind": "http", "url": "http://a", "body_match": "("}, "regular"),
    ({"name": "x", "kind": "http", "url": "http://a", "argv": ["/bin/sh"]}, "unknown key"),
    ({"name": "x", "kind": "guest_agent"}, "vm ="),
    ({"name": "x; y", "kind": "tcp"}, "give a name"),
    ({"name": "x", "kind": "tcp", "host": "a", "port": 1, "fall": 0}, "fall = 0"),
])
def test_config_mistakes_are_named(table, words):
    with pytest.raises(ConfigError) as err:
        parse_checks([table], CONFIG_DEFAULTS)
    assert words in str(err.value)


def test_running_checks_publish_health_events_on_the_bus(memory_broker):
    memory_broker.enroll("web01", ["health"])
    transport = MemoryTransport(memory_broker, user="web01")
    transport.start()
    listener = MemoryTransport(memory_broker, user="console")
    listener.start()
    from console.client import Console

    console = Console(listener)
    console.open()
    collector = EventCollector()
    console.subscribe(["health.*.#"], collector)
    with HealthServer() as server:
        agent, _ = agent_with({"name": "web", "kind": "http", "url": server.url,
                               "interval": 0.1, "fall": 2})
        runtime = AgentRuntime(transport, "web01", [agent], heartbeat_interval=10,
                               check_results=True)
        runtime.start()
        try:
            collector.wait_for(lambda e: e.full_name == "health.check"
                               and e.data["state"] == "passing")
            server.healthy = False
            failing = collector.wait_for(lambda e: e.full_name == "health.check"
                                         and e.data["state"] == "failing")
        finally:
            runtime.stop("test over")
            console.close()
    assert failing.routing_key() == "health.web01.check"
    assert failing.data["previous"] == "warning"
