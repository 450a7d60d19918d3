"""A rule's action other than a call: a provisioning request (to the real provisioner
and virt agents on the in-memory broker; its request id the decision's, so it is never
done twice) and an event of the reactor's own (reactor.ID.notice, signed with its key,
through its one publisher)."""

import json

import pytest

from console.client import Console
from console.provisioner.service import consume_requests
from console.reactor.actions import Actor
from console.reactor.engine import Engine
from console.reactor.rules import parse_rules
from console.reactor.service import Reactor, queue_patterns
from console.reactor.store import ReactorStore
from hostbus.envelope import EVENT_TYPE, Event
from hostbus.errors import ConfigError
from hostbus.publisher import Publisher
from hostbus.security.signing import Signer, Verifier, generate, read_public_key
from hostbus.transport.memory import MemoryTransport
from tests.fakes import until
from tests.unit.test_provisioner import domains, fleet  # noqa: F401 (a fixture)

MORE_WEB = {"name": "one more web VM when the pool is short", "events": ["health.*.check"],
            "when": "state=failing and check=pool", "cooldown_s": 600,
            "action": {"provision": {"template": "web", "count": 1, "owner": "reactor",
                                     "name_prefix": "{data.check}"}, "timeout_s": 30}}
TELL = {"name": "tell the ticket system", "events": ["health.*.check"],
        "when": "state=failing", "cooldown_s": 0,
        "action": {"event": "vm.unhealthy",
                   "data": {"vm": "{data.vm}", "host": "{host}", "said": "{data.output}"}}}


def failing(check="pool", seq=1, host="web01", vm="") -> Event:
    return Event(host=host, agent="health", event="check", seq=seq, epoch="e",
                 data={"check": check, "state": "failing", "vm": vm, "output": "503",
                       "target": "host"})


def test_a_rule_asks_for_vms_once_with_the_decision_as_the_request_id(
        fleet, memory_broker, tmp_path):  # noqa: F811
    prov, agents, _, _, _ = fleet
    serving = MemoryTransport(memory_broker, user="provisioner")
    serving.start()
    consume_requests(serving, prov.on_message)  # hostbus.provision, as in production
    store = ReactorStore(tmp_path / "reactor.db")
    engine = Engine(parse_rules([MORE_WEB]), store)
    [fired] = engine.consider(failing())
    assert fired.decision == "fired"
    transport = MemoryTransport(memory_broker, user="reactor")
    transport.start()
    console = Console(transport)
    console.open()
    actor = Actor(console, store)
    actor.act(fired.decision_id)
    row = store.get(fired.decision_id)
    assert row["kind"] == "provision" and row["call"] == "provision"
    assert row["state"] == "ok", row["detail"]
    assert row["request_id"] == fired.decision_id
    made = [name for name, _ in domains(agents)]
    assert made == [f"pool-{fired.decision_id[:8]}-1"]
    assert f"provisioned (completed): {made[0]} on kvm0" in row["detail"]
    # Posted again (a decision is never sent twice, but by hand it can be): the same
    # request, no more VMs; the provisioner, having answered once, stays silent
    store.update(fired.decision_id, "queued")
    Actor(console, store, timeouts=lambda rule: 1.0).act(fired.decision_id)
    assert [name for name, _ in domains(agents)] == made
    again = store.get(fired.decision_id)
    assert again["state"] == "no_reply"
    assert f"hostbus provision status {fired.decision_id} says how it went" in again["detail"]
    console.close()
    serving.close()
    store.close()


def test_a_provisioning_request_the_event_cannot_complete_is_skipped_with_why(tmp_path):
    rule = {**MORE_WEB, "action": {"provision": {"template": "web", "owner": "reactor",
                                                 "count": "{data.count}"}}}
    engine = Engine(parse_rules([rule]), ReactorStore(tmp_path / "r.db"))
    [skipped] = engine.consider(Event(host="web01", agent="health", event="check", seq=1,
                                      epoch="e", data={"check": "pool", "state": "failing",
                                                       "count": "many"}))
    assert skipped.decision == "skipped"
    assert "the provisioning request is not valid: provision.count must be integer" in \
        skipped.detail


@pytest.mark.parametrize(("action", "error"), [
    ({"provision": {"template": "web"}}, "provision must contain ['owner'] properties"),
    ({"provision": {"template": "web", "owner": "r", "colour": "red"}},
     "must not contain {'colour'} properties"),
    ({"provision": {"template": "web", "owner": "r"}, "host": "{host}"},
     "action provision is a table of the request's fields"),
    ({"event": "Vm Unhealthy"}, "action event = 'Vm Unhealthy': give a name such as"),
    ({"event": "vm.unhealthy", "call": "virt.domain.reboot"},
     "an action is one of call, provision or event, not call and event"),
    ({"event": "vm.unhealthy", "data": {"vm": "{vm}"}}, "{vm}: use {host}, {agent}"),
])
def test_a_wrong_action_is_named_at_load(action, error):
    with pytest.raises(ConfigError) as found:
        parse_rules([{**TELL, "action": action}])
    assert error in str(found.value)


def test_a_rule_publishes_an_event_of_its_own_signed_with_the_reactors_key(
        memory_broker, tmp_path):
    key, pub = generate("reactor", tmp_path / "keys")
    memory_broker.enroll("web01", ["health"])
    memory_broker.enroll_active_queue("reactor", queue_patterns(TELL["events"]))
    memory_broker.declare_queue("notices")
    memory_broker.bind("hostbus.event", "reactor.#", "notices")
    seen = []
    listener = MemoryTransport(memory_broker, user="listener")
    listener.start()
    listener.consume("notices", seen.append)
    transport = MemoryTransport(memory_broker, user="reactor")
    transport.start()
    store = ReactorStore(tmp_path / "reactor.db")
    reactor = Reactor(transport, Engine(parse_rules([TELL]), store), "reactor",
                      signer=Signer.load(key), tick_interval=0.05)
    reactor.start()
    agent = MemoryTransport(memory_broker, user="web01")
    agent.start()
    try:
        assert reactor.standby.wait_active(5)
        for seq, vm in ((1, "web-a"), (2, "web-b")):
            body, props = failing("web", seq, vm=vm).encode()
            Publisher(agent).publish("hostbus.event", "health.web01.check", body, props)
        assert until(lambda: len(seen) == 2, timeout=10)
    finally:
        reactor.stop()
        agent.close()
    verifier = Verifier(dict([read_public_key(pub)]))
    notices = []
    for delivery in seen:
        assert delivery.routing_key == "reactor.reactor.notice"
        assert delivery.properties.user_id == "reactor"
        assert verifier.verify("hostbus.event", delivery.routing_key, delivery.properties,
                               delivery.body, kind=EVENT_TYPE, what="event") == "reactor"
        notices.append(json.loads(delivery.body))
    # numbered in the order they left (the actions run side by side: either first)
    assert [n["seq"] for n in notices] == [1, 2] and notices[0]["epoch"] == notices[1]["epoch"]
    first = next(n["data"] for n in notices if n["data"]["data"]["vm"] == "web-a")
    decisions = {d["id"]: d for d in store.history()}
    assert first["name"] == "vm.unhealthy" and first["rule"] == TELL["name"]
    assert first["data"] == {"vm": "web-a", "host": "web01", "said": "503"}
    assert first["triggered_by"] == ["web01/health/e/1"]
    done = decisions[first["decision_id"]]
    assert done["kind"] == "event" and done["state"] == "ok"
    assert done["detail"].startswith("published reactor.reactor.notice (epoch ")
    store.close()
    listener.close()


def test_a_store_from_before_other_actions_is_migrated(tmp_path):
    import sqlite3

    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE decisions (id TEXT PRIMARY KEY, at REAL NOT NULL, rule TEXT NOT "
               "NULL, target TEXT NOT NULL, host TEXT NOT NULL, call TEXT NOT NULL, args TEXT "
               "NOT NULL, events TEXT NOT NULL, decision TEXT NOT NULL, state TEXT NOT NULL, "
               "detail TEXT NOT NULL DEFAULT '', request_id TEXT, approval_id TEXT, "
               "approved_by TEXT, updated REAL NOT NULL)")
    db.execute("INSERT INTO decisions VALUES ('d1', 1, 'r', 't', 'kvm01', 'virt.domain.reboot',"
               " '{}', '[]', 'fired', 'ok', '', NULL, NULL, NULL, 1)")
    db.commit()
    db.close()
    store = ReactorStore(path)
    assert store.get("d1")["kind"] == "call"
    store.close()
