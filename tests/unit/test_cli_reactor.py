"""hostbus health, hostbus reactor rules|history|--check-config, through the CLI."""

import json

from agents.health import CONFIG_DEFAULTS, create
from console.reactor.engine import Engine
from console.reactor.main import load_config, load_rules
from console.reactor.store import ReactorStore
from hostbus.envelope import Event
from tests.health_server import HealthServer

REACTOR_TOML = """
[reactor]
state_dir = "{state}"
[[rule]]
name = "reboot an unhealthy VM"
events = ["health.*.check"]
when = "state=failing and vm=?*"
[rule.action]
call = "virt.domain.reboot"
args = {{ name = "{{data.vm}}" }}
"""


def health_agent(url):
    agent = create({**CONFIG_DEFAULTS, "checks": [
        {"name": "web", "kind": "http", "url": url, "vm": "web-a", "fall": 1},
        {"name": "ssh", "kind": "tcp", "host": "127.0.0.1", "port": 9, "fall": 1}]},
        host_id="kvm01")
    return agent


def test_health_lists_every_check_and_exits_1_when_one_is_failing(fleet):
    with HealthServer() as server:
        agent = health_agent(server.url)
        fleet.add("kvm01", agents=[agent])
        agent.run_check("web")
        agent.run_check("ssh")
        done = fleet.run("health", "--json")
        assert done.exit_code == 1, done.stderr
        checks = {c["check"]: c for c in json.loads(done.stdout)["checks"]}
        assert checks["web"]["state"] == "passing" and checks["web"]["host"] == "kvm01"
        assert checks["ssh"]["state"] == "failing" and "cannot connect" in \
            checks["ssh"]["output"]
        done = fleet.run("health", "--state", "passing")
        assert done.exit_code == 0, done.stderr
        assert "web" in done.stdout and "ssh" not in done.stdout


def test_health_without_health_agents_says_how_to_add_one(fleet):
    fleet.add("web01")
    done = fleet.run("health")
    assert done.exit_code == 3 and 'agents = ["host", "health"]' in done.stderr


def test_reactor_check_config_rules_and_history(fleet, tmp_path):
    config = tmp_path / "reactor.toml"
    config.write_text(REACTOR_TOML.format(state=tmp_path / "state"))
    done = fleet.run("reactor", "--config", str(config), "--check-config")
    assert done.exit_code == 0, done.stderr
    assert "1 rule(s): reboot an unhealthy VM -> virt.domain.reboot" in done.stdout
    done = fleet.run("reactor", "rules", "--config", str(config), "--json")
    [rule] = json.loads(done.stdout)["rules"]
    assert rule["action"] == {"call": "virt.domain.reboot", "kind": "call", "host": "{host}",
                              "args": {"name": "{data.vm}"}, "timeout_s": 30.0}
    done = fleet.run("reactor", "history", "--config", str(config))
    assert done.exit_code == 1 and "has not run" in done.stderr

    cfg = load_config(str(config))
    store = ReactorStore(tmp_path / "state" / "reactor-reactor.db")
    Engine(load_rules(cfg), store).consider(Event(
        host="kvm01", agent="health", event="check", seq=1, epoch="e",
        data={"check": "web", "state": "failing", "vm": "web-a"}))
    store.close()
    done = fleet.run("reactor", "--config", str(config), "history", "--json")
    assert done.exit_code == 0, done.stderr
    [decision] = json.loads(done.stdout)["decisions"]
    assert decision["decision"] == "fired" and decision["state"] == "queued"
    assert decision["events"] == ["kvm01/health/e/1"] and decision["at"].endswith("Z")
    done = fleet.run("reactor", "history", "--config", str(config))
    assert "virt.domain.reboot" in done.stdout and "kvm01" in done.stdout


def test_a_bad_rule_is_named_with_exit_1(fleet, tmp_path):
    config = tmp_path / "reactor.toml"
    config.write_text(REACTOR_TOML.format(state=tmp_path).replace("domain.reboot",
                                                                   "domain.explode"))
    done = fleet.run("reactor", "--config", str(config), "--check-config")
    assert done.exit_code == 1 and "no method 'domain.explode'" in done.stderr


def test_reactor_test_says_which_rules_act_on_an_event_and_sends_nothing(fleet, tmp_path):
    config = tmp_path / "reactor.toml"
    config.write_text(REACTOR_TOML.format(state=tmp_path / "state"))
    event = {"host": "kvm01", "agent": "health", "event": "check",
             "data": {"state": "failing", "vm": "web-a"}}
    done = fleet.run("reactor", "test", "-c", str(config), "-e", json.dumps(event), "--json")
    assert done.exit_code == 0, done.stderr
    [rule] = json.loads(done.stdout)["rules"]
    assert rule["action"] == {"call": "virt.domain.reboot", "kind": "call", "host": "kvm01",
                              "args": {"name": "web-a"}}
    event["data"]["state"] = "passing"
    done = fleet.run("reactor", "test", "-c", str(config), "-e", "-", input=json.dumps(event))
    assert done.exit_code == 1 and "conditions (state=failing and vm=?*) do not hold" \
        in done.stdout
    done = fleet.run("reactor", "test", "-c", str(config), "-e", '{"host": 1}')
    assert done.exit_code == 2 and "lacks agent, event, data" in done.stderr
    assert not (tmp_path / "state").exists()  # nothing stored


def test_history_of_one_decision_shows_its_chain(fleet, tmp_path):
    config = tmp_path / "reactor.toml"
    config.write_text(REACTOR_TOML.format(state=tmp_path / "state"))
    store = ReactorStore(tmp_path / "state" / "reactor-reactor.db")
    [fired] = Engine(load_rules(load_config(str(config))), store).consider(Event(
        host="kvm01", agent="health", event="check", seq=7, epoch="e",
        data={"check": "web", "state": "failing", "vm": "web-a"}))
    store.update(fired.decision_id, "awaiting_approval", "parked", request_id="r-1",
                 approval_id="b150f52275f0")
    store.update(fired.decision_id, "ok", "approved by bob; the action ran: ok",
                 approved_by="bob")
    store.close()
    done = fleet.run("reactor", "history", fired.decision_id[:6], "-c", str(config))
    assert done.exit_code == 0, done.stderr
    lines = dict(line.split(None, 1) for line in done.stdout.splitlines())
    assert lines["rule"] == "reboot an unhealthy VM"
    assert lines["events"] == "kvm01/health/e/7"
    assert lines["action"] == 'virt.domain.reboot on kvm01 {"name": "web-a"}'
    assert lines["request"] == "r-1 (in kvm01's audit log)"
    assert lines["approval"] == "b150f52275f0, approved by bob"
    assert lines["outcome"].startswith("ok: approved by bob; the action ran: ok (")
    done = fleet.run("reactor", "history", "ffffffff", "-c", str(config))
    assert done.exit_code == 3 and "no decision ffffffff" in done.stderr
    done = fleet.run("reactor", "history", "-c", str(config))  # the table has the chain
    assert "kvm01/health/e/7" in done.stdout and "bob" in done.stdout
