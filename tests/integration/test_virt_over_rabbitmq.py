"""The virt agent on the real broker, with libvirt's test driver."""

import copy
import uuid

import pytest

from agents import virt
from hostbus.schema import load_agent_schema
from hostbus.serving.runtime import AgentRuntime
from tests.fakes import EventCollector

pytestmark = pytest.mark.integration
SCHEMA = load_agent_schema("virt")


@pytest.fixture
def virt_host(rabbitmq):
    host_id = f"kvm-{uuid.uuid4().hex[:8]}"
    rabbitmq.enroll(host_id, ["virt"])
    cfg = copy.deepcopy(virt.CONFIG_DEFAULTS)
    cfg["stats_interval"] = 0.2
    agent = virt.create(cfg, host_id=host_id)
    runtime = AgentRuntime.serve(rabbitmq.url, host_id, [agent], heartbeat_interval=0.3,
                                 intervals={"virt": cfg}, check_results=True)
    yield host_id
    runtime.stop("test over")
    agent.conn.close()


def ok(console, method, host, **args):
    res = console.call("virt", method, args, host=host, timeout=15)
    assert res.status == "ok", res.reply.error
    return res.reply.result


def test_every_virt_method_over_the_wire_with_lifecycle_events(console, virt_host):
    events = EventCollector()
    console.subscribe([f"virt.{virt_host}.domain.#"], events)
    host = virt_host
    assert ok(console, "node.info", host)["cpus"] == 8
    assert {t["name"] for t in ok(console, "template.list", host)["templates"]} == {"web", "db"}
    defined = ok(console, "domain.define", host, name="vm1", template="web")
    assert defined["volume"] == "vm1.qcow2"
    ok(console, "domain.start", host, name="vm1")
    ok(console, "domain.suspend", host, name="vm1")
    ok(console, "domain.resume", host, name="vm1")
    ok(console, "snapshot.create", host, name="vm1", snapshot="s1")
    assert ok(console, "snapshot.list", host, name="vm1")["snapshots"][0]["snapshot"] == "s1"
    ok(console, "snapshot.revert", host, name="vm1", snapshot="s1")
    ok(console, "snapshot.delete", host, name="vm1", snapshot="s1")
    assert "<name>vm1</name>" in ok(console, "domain.xml", host, name="vm1")["xml"]
    ok(console, "domain.reboot", host, name="vm1")
    assert ok(console, "domain.shutdown", host, name="vm1", timeout_s=10)["state"] == "shutoff"
    ok(console, "domain.start", host, name="vm1")
    ok(console, "domain.destroy", host, name="vm1")
    ok(console, "domain.undefine", host, name="vm1", remove_storage=True)
    events.wait_for(lambda e: e.event == "domain.lifecycle" and e.data["event"] == "undefined")
    lifecycle = [e.data["event"] for e, _ in events.events if e.event == "domain.lifecycle"]
    for expected in ("defined", "started", "suspended", "resumed", "stopped", "undefined"):
        assert expected in lifecycle
    assert all(note is None for _, note in events.events)  # in order, none lost


def test_domain_stats_events_and_queries(console, virt_host):
    events = EventCollector()
    console.subscribe([f"virt.{virt_host}.domain.stats"], events)
    ok(console, "domain.define", virt_host, name="busy", template="db", start=True)
    stats = events.wait_for(lambda e: any(d["name"] == "busy" for d in e.data["domains"]))
    SCHEMA.events["domain.stats"].data_validator.validate(stats.data)
    for class_name in SCHEMA.classes:
        result = console.query("virt", class_name, hosts=[virt_host])
        assert result.results[0].status == "ok", result.results[0].reply.error
    running = console.query("virt", "domain", where={"state": "running"}, hosts=[virt_host])
    assert [o["name"] for o in running.results[0].reply.result["objects"]] == ["busy"]


def test_heartbeats_carry_capacity_for_placement(console, virt_host):
    beats = EventCollector()
    console.subscribe([f"agent.{virt_host}.heartbeat"], beats)
    beat = beats.wait_for(lambda e: "status" in e.data)
    status = beat.data["status"]["virt"]
    assert status["templates"] == ["db", "web"] and status["free_vcpus"] == 32


@pytest.mark.parametrize(("args", "code"), [
    ({"name": "a'; rm -rf /", "template": "web"}, "invalid_args"),
    ({"name": "</name><devices>", "template": "web"}, "invalid_args"),
    ({"name": "n" * 300, "template": "web"}, "invalid_args"),
    ({"name": "neg", "template": "web", "memory_mib": -1}, "invalid_args"),
    ({"name": "huge", "template": "web", "memory_mib": 10**9}, "invalid_args"),
    ({"name": "what", "template": "windows-xp"}, "invalid_args"),
])
def test_hostile_values_over_the_wire_change_nothing(console, virt_host, args, code):
    console.validate = False  # send it anyway: the agent must refuse it itself
    res = console.call("virt", "domain.define", args, host=virt_host)
    assert res.status == "error" and res.reply.error["code"] == code
    assert res.reply.error["message"]
    domains = console.query("virt", "domain", hosts=[virt_host]).results[0]
    assert domains.reply.result["objects"] == []
    volumes = console.query("virt", "volume", hosts=[virt_host]).results[0]
    assert {v["name"] for v in volumes.reply.result["objects"]} == {"base-web.qcow2",
                                                                    "base-db.qcow2"}
