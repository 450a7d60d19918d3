"""The reactor's rules and engine: windows, conditions held for a time, cooldowns,
de-duplication, idempotency by event id, and what survives a restart (the store's file
opened again)."""

import pytest

from console.reactor.engine import Engine
from console.reactor.main import load_config, load_rules
from console.reactor.rules import parse_rules
from console.reactor.store import ReactorStore
from hostbus.envelope import Event
from hostbus.errors import ConfigError

REBOOT = {"name": "reboot", "events": ["health.*.check"], "when": "state=failing and vm=?*",
          "cooldown_s": 600,
          "action": {"call": "virt.domain.reboot", "args": {"name": "{data.vm}"}}}


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Agent:
    """Numbers events as one agent does (host, epoch, seq)."""

    def __init__(self, host: str = "kvm01") -> None:
        self.host, self.seq = host, 0

    def check(self, state: str, vm: str = "web-a", **data) -> Event:
        self.seq += 1
        return Event(host=self.host, agent="health", event="check", seq=self.seq,
                     epoch="e1", data={"check": "web", "state": state, "vm": vm,
                                       "target": f"vm:{vm}" if vm else "host", **data})


def engine(tmp_path, *rules, clock=None, dry_run=False):
    store = ReactorStore(tmp_path / "reactor.db")
    return Engine(parse_rules(list(rules)), store, dry_run=dry_run, clock=clock or Clock())


def test_a_failing_check_fires_its_action_with_the_events_fields(tmp_path):
    e = engine(tmp_path, REBOOT)
    agent = Agent()
    assert e.consider(agent.check("warning")) == []
    [decided] = e.consider(agent.check("failing"))
    assert decided.decision == "fired"
    row = e.store.get(decided.decision_id)
    assert (row["host"], row["call"], row["args"], row["state"]) == (
        "kvm01", "virt.domain.reboot", {"name": "web-a"}, "queued")
    assert row["events"] == ["kvm01/health/e1/2"]


def test_the_cooldown_holds_back_a_second_action_for_the_same_target_only(tmp_path):
    clock = Clock()
    e = engine(tmp_path, REBOOT, clock=clock)
    agent = Agent()
    first = e.consider(agent.check("failing"))[0]
    e.store.update(first.decision_id, "ok")
    clock.now += 60
    assert [d.decision for d in e.consider(agent.check("failing"))] == ["cooldown"]
    assert [d.decision for d in e.consider(agent.check("failing", vm="web-b"))] == ["fired"]
    clock.now += 600
    assert [d.decision for d in e.consider(agent.check("failing"))] == ["fired"]


def test_nothing_more_is_sent_while_an_action_waits_for_approval(tmp_path):
    clock = Clock()
    e = engine(tmp_path, REBOOT, clock=clock)
    agent = Agent()
    first = e.consider(agent.check("failing"))[0]
    e.store.update(first.decision_id, "awaiting_approval", approval_id="ab12")
    clock.now += 3600  # past the cooldown: still one in flight
    [held] = e.consider(agent.check("failing"))
    assert held.decision == "duplicate" and "awaiting_approval" in held.detail


def test_n_events_within_t_seconds(tmp_path):
    clock = Clock()
    rule = {**REBOOT, "when": "state=warning or state=failing", "count": 3, "within_s": 60}
    e = engine(tmp_path, rule, clock=clock)
    agent = Agent()
    e.consider(agent.check("warning"))
    clock.now += 50
    e.consider(agent.check("failing"))
    clock.now += 20  # the first fell out of the window
    assert e.consider(agent.check("warning")) == []
    clock.now += 5
    [fired] = e.consider(agent.check("failing"))
    assert fired.decision == "fired" and len(e.store.get(fired.decision_id)["events"]) == 3


def test_a_state_that_lasts_for_s_fires_and_one_that_ends_does_not(tmp_path):
    clock = Clock()
    rule = {**REBOOT, "for_s": 120}
    e = engine(tmp_path, rule, clock=clock)
    agent = Agent()
    e.consider(agent.check("failing", vm="a"))
    e.consider(agent.check("failing", vm="b"))
    clock.now += 60
    e.consider(agent.check("passing", vm="b"))  # b recovered
    assert e.due() == []
    clock.now += 61
    [fired] = e.due()
    assert fired.decision == "fired" and e.store.get(fired.decision_id)["args"] == {"name": "a"}
    assert e.due() == []


def test_a_repeated_event_is_handled_once_even_after_a_restart(tmp_path):
    clock = Clock()
    e = engine(tmp_path, REBOOT, clock=clock)
    agent = Agent()
    event = agent.check("failing")
    assert len(e.consider(event)) == 1
    assert e.consider(event) == []
    e.store.close()
    again = engine(tmp_path, REBOOT, clock=clock)  # the same file: a restart
    assert again.consider(event) == []
    clock.now += 10
    assert [d.decision for d in again.consider(agent.check("failing"))] == ["duplicate"]
    assert len(again.store.history(actions_only=True)) == 1


def test_an_event_without_the_field_the_action_needs_is_skipped_and_said(tmp_path):
    rule = {**REBOOT, "when": "state=failing"}
    e = engine(tmp_path, rule)
    [skipped] = e.consider(Agent().check("failing", vm=""))
    assert skipped.decision == "skipped" and "data.vm is empty" in skipped.detail
    assert e.store.history(actions_only=True) == []


def test_dry_run_records_and_sends_nothing(tmp_path):
    e = engine(tmp_path, REBOOT, dry_run=True)
    [decided] = e.consider(Agent().check("failing"))
    assert decided.decision == "dry_run"
    assert e.store.get(decided.decision_id)["state"] == "not_sent"


@pytest.mark.parametrize("change, words", [
    ({"events": ["health.*.check("]}, "routing patterns"),
    ({"when": "state=failing and ("}, "when"),
    ({"action": {"call": "virt.domain.explode", "args": {"name": "x"}}}, "no method"),
    ({"action": {"call": "virt.domain.reboot", "args": {"nme": "{data.vm}"}}},
     "takes no argument"),
    ({"action": {"call": "virt.domain.reboot"}}, "needs name"),
    ({"action": {"call": "virt.domain.reboot", "args": {"name": "{os.system}"}}},
     "{data.FIELD}"),
    ({"count": 3}, "needs within_s"),
    ({"cooldown_s": -1}, "cooldown_s = -1"),
    ({"colour": "red"}, "unknown key"),
    ({"action": "reboot"}, "give an action"),
])
def test_rule_mistakes_are_named(change, words):
    with pytest.raises(ConfigError) as err:
        parse_rules([{**REBOOT, **change}])
    assert words in str(err.value)


def test_the_shipped_config_checks():
    rules = load_rules(load_config("etc/reactor.toml"))
    assert [r.action.call for r in rules] == ["virt.domain.reboot"]
