"""The virt agent against libvirt's test driver: real libvirt, no hypervisor, no broker."""

import copy
import threading

import pytest

from agents.virt import CONFIG_DEFAULTS
from agents.virt.agent import VirtAgent
from agents.virt.connection import open_connection
from agents.virt.templates import GENERIC_SKELETON, templates_from_config
from agents.virt.xml import DomainSpec, build_domain_xml
from hostbus.errors import RemoteError
from hostbus.schema import load_agent_schema

SCHEMA = load_agent_schema("virt")


class Events:
    def __init__(self):
        self.items = []
        self.cond = threading.Condition()

    def __call__(self, agent, event, data):
        with self.cond:
            self.items.append((event, data))
            self.cond.notify_all()

    def wait_for(self, name, event, timeout=10):
        def seen():
            return any(e == "domain.lifecycle" and d["name"] == name and d["event"] == event
                       for e, d in self.items)
        with self.cond:
            assert self.cond.wait_for(seen, timeout), self.items
        return next(d for e, d in self.items if e == "domain.lifecycle" and d["name"] == name
                    and d["event"] == event)


@pytest.fixture
def virt():
    cfg = copy.deepcopy(CONFIG_DEFAULTS)
    conn = open_connection("")  # each open of a node file is a fresh, private hypervisor
    agent = VirtAgent(cfg, host_id="kvm01", conn=conn,
                      templates=templates_from_config(cfg["templates"]))
    events = Events()
    agent.attach(events)
    agent.start()
    yield agent, events
    agent.stop()
    conn.close()


def call(agent, method_name, /, **args):
    spec = SCHEMA.methods[method_name]
    fn = agent.methods()[method_name]
    result = fn(**spec.validate_args(args))
    spec.result_validator.validate(result)
    return result


def test_define_from_a_template_clones_the_disk_with_fresh_identity(virt):
    agent, events = virt
    one = call(agent, "domain.define", name="web-1", template="web", start=True)
    two = call(agent, "domain.define", name="web-2", template="web", vcpus=2, memory_mib=2048)
    assert one["state"] == "running" and two["state"] == "shutoff"
    assert one["uuid"] != two["uuid"] and two["vcpus"] == 2
    assert two["memory_bytes"] == 2048 << 20
    macs = [call(agent, "domain.xml", name=n)["xml"].split("mac address='")[1][:17]
            for n in ("web-1", "web-2")]
    assert macs[0] != macs[1] and all(m.startswith("52:54:00:") for m in macs)
    volumes = {v["name"] for v in agent.volume_objects()}
    assert {"web-1.qcow2", "web-2.qcow2", "base-web.qcow2"} <= volumes
    events.wait_for("web-1", "defined")
    assert events.wait_for("web-1", "started")["detail"] == "booted"


def test_the_whole_lifecycle_emits_events_in_order(virt):
    agent, events = virt
    call(agent, "domain.define", name="life", template="db")
    call(agent, "domain.start", name="life")
    assert call(agent, "domain.suspend", name="life")["state"] == "paused"
    assert call(agent, "domain.resume", name="life")["state"] == "running"
    call(agent, "snapshot.create", name="life", snapshot="s1", description="first")
    assert call(agent, "snapshot.list", name="life")["snapshots"] == [
        {"snapshot": "s1", "current": True}]
    call(agent, "snapshot.revert", name="life", snapshot="s1")
    call(agent, "snapshot.delete", name="life", snapshot="s1")
    call(agent, "domain.reboot", name="life")
    stopped = call(agent, "domain.shutdown", name="life", timeout_s=10)
    assert stopped["state"] == "shutoff"
    call(agent, "domain.start", name="life")
    assert call(agent, "domain.destroy", name="life")["reason"] == "destroyed"
    removed = call(agent, "domain.undefine", name="life", remove_storage=True)
    assert removed["removed_volumes"] == ["default/life.qcow2"]
    events.wait_for("life", "undefined")
    seen = [d["event"] for e, d in events.items if e == "domain.lifecycle"
            and d["name"] == "life"]
    for expected in ("defined", "started", "suspended", "resumed", "stopped", "undefined"):
        assert expected in seen
    assert seen.index("defined") < seen.index("started") < seen.index("suspended") \
        < seen.index("resumed") < seen.index("undefined")
    for e, d in events.items:
        SCHEMA.events[e].data_validator.validate(d)
    assert "life.qcow2" not in {v["name"] for v in agent.volume_objects()}


def test_define_from_xml(virt):
    agent, _ = virt
    xml = build_domain_xml(GENERIC_SKELETON.read_text(), DomainSpec.new(
        name="fromxml", vcpus=1, memory_mib=256, domain_type="test", pool="default",
        volume="base-db.qcow2", network=None))
    result = call(agent, "domain.define", name="fromxml", xml=xml)
    assert result["template"] is None and result["memory_bytes"] == 256 << 20


@pytest.mark.parametrize(("args", "code", "fragment"), [
    ({"name": "a'; rm -rf /", "template": "web"}, "invalid_args", "args.name"),
    ({"name": "</name><devices>", "template": "web"}, "invalid_args", "args.name"),
    ({"name": "x" * 300, "template": "web"}, "invalid_args", "args.name"),
    ({"name": "ok", "template": "web", "memory_mib": -5}, "invalid_args", "memory_mib"),
    ({"name": "ok", "template": "web", "memory_mib": 10**12}, "invalid_args", "memory_mib"),
    ({"name": "ok", "template": "web", "memory_mib": 9000}, "invalid_args", "at most 8192"),
    ({"name": "ok", "template": "web", "vcpus": 5}, "invalid_args", "at most 4 vcpus"),
    ({"name": "ok", "template": "nosuch"}, "invalid_args", "no template 'nosuch'"),
    ({"name": "ok"}, "invalid_args", "exactly one of template"),
    ({"name": "ok", "xml": "<domain><name>other</name></domain>"}, "invalid_args",
     "does not match"),
    ({"name": "ok", "xml": "<domain><name>ok"}, "invalid_args", "not well-formed"),
    ({"name": "ok", "xml": "<network><name>ok</name></network>"}, "invalid_args",
     "must be a <domain>"),
    ({"name": "ok", "xml": '<!DOCTYPE d [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
                           "<domain><name>&e;</name></domain>"}, "invalid_args",
     "not well-formed"),
])
def test_hostile_define_requests_are_refused_and_change_nothing(virt, args, code, fragment):
    agent, _ = virt
    before = ({d["name"] for d in agent.domain_objects()},
              {v["name"] for v in agent.volume_objects()})
    spec = SCHEMA.methods["domain.define"]
    with pytest.raises(RemoteError) as info:
        agent.domain_define(**spec.validate_args(args))
    assert info.value.code.value == code
    assert fragment in info.value.message or fragment in str(info.value.details)
    after = ({d["name"] for d in agent.domain_objects()},
             {v["name"] for v in agent.volume_objects()})
    assert after == before


def test_errors_say_not_found_and_conflict(virt):
    agent, _ = virt
    with pytest.raises(RemoteError) as missing:
        call(agent, "domain.start", name="ghost")
    assert missing.value.code.value == "not_found"
    call(agent, "domain.define", name="dup", template="web", start=True)
    with pytest.raises(RemoteError) as again:
        call(agent, "domain.define", name="dup", template="web")
    assert again.value.code.value == "conflict"
    with pytest.raises(RemoteError) as running:
        call(agent, "domain.undefine", name="dup")
    assert running.value.code.value == "conflict" and "running" in running.value.message
    with pytest.raises(RemoteError) as started:
        call(agent, "domain.start", name="dup")
    assert started.value.code.value == "conflict"


def test_objects_and_capacity_follow_running_domains(virt):
    agent, _ = virt
    before = call(agent, "node.info")
    call(agent, "domain.define", name="big", template="db", memory_mib=4096, vcpus=4,
         start=True)
    after = call(agent, "node.info")
    assert before["unallocated_memory_bytes"] - after["unallocated_memory_bytes"] == 4096 << 20
    assert before["free_vcpus"] - after["free_vcpus"] == 4
    assert agent.heartbeat_status()["templates"] == ["db", "web"]
    for class_name, provider in agent.object_providers().items():
        for obj in provider():
            SCHEMA.classes[class_name].object_validator.validate(obj)
    stats = agent.domain_stats()
    assert [s["name"] for s in stats] == ["big"]
    SCHEMA.events["domain.stats"].data_validator.validate({"domains": stats})


def test_template_config_mistakes_are_named():
    with pytest.raises(ValueError, match="unknown key 'base'"):
        templates_from_config({"t": {"base": "x"}})
    with pytest.raises(ValueError, match="base_volume is required"):
        templates_from_config({"t": {}})
    with pytest.raises(ValueError, match="vcpus must be between"):
        templates_from_config({"t": {"base_volume": "b", "vcpus": 9, "max_vcpus": 2}})
    with pytest.raises(ValueError, match="ha must be true or false"):
        templates_from_config({"t": {"base_volume": "b", "ha": "yes"}})
    with pytest.raises(ValueError, match="ha_priority must be a whole number from 0 to 100"):
        templates_from_config({"t": {"base_volume": "b", "ha": True, "ha_priority": 101}})


def test_a_templates_ha_flag_is_listed():
    catalog = templates_from_config({"t": {"base_volume": "b", "ha": True, "ha_priority": 5},
                                     "u": {"base_volume": "b"}})
    assert [(d["ha"], d["ha_priority"]) for d in (catalog["t"].to_dict(),
                                                  catalog["u"].to_dict())] == [(True, 5),
                                                                              (False, 0)]
