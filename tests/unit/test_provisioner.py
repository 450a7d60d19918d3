"""The provisioner on the in-memory broker, driving two real virt agents (test driver)."""

import copy
import json
import uuid

import pytest

from agents import virt
from console.client import Console
from console.provisioner.agent import ProvisionAgent
from console.provisioner.placement import Candidate, place
from console.provisioner.service import Provisioner, Quotas
from console.provisioner.store import RequestStore
from hostbus.envelope import PROVISION_TYPE
from hostbus.errors import RemoteError
from hostbus.security.policy import AllowAll
from hostbus.serving.runtime import AgentRuntime
from hostbus.transport.base import Delivery, Properties
from hostbus.transport.memory import MemoryTransport
from tests.fakes import EventCollector

WEB = {"name": "web", "vcpus": 1, "memory_mib": 1024, "max_vcpus": 4, "max_memory_mib": 8192}


def test_placement_spreads_and_respects_room_and_templates():
    gib = 1 << 30
    hosts = [Candidate("a", 4 * gib, 8, {"web": WEB}), Candidate("b", 3 * gib, 8, {"web": WEB}),
             Candidate("c", 64 * gib, 64, {"db": {**WEB, "name": "db"}})]
    plan = place(["v1", "v2", "v3", "v4"], template="web", vcpus=None, memory_mib=None,
                 candidates=hosts)
    assert sorted(plan.values()) == ["a", "a", "b", "b"]  # spread, never c
    with pytest.raises(RemoteError, match="no virt host has room"):
        place([f"v{i}" for i in range(8)], template="web", vcpus=None, memory_mib=None,
              candidates=hosts)
    with pytest.raises(RemoteError, match="allows at most 4 vcpus and 8192 MiB"):
        place(["x"], template="web", vcpus=None, memory_mib=9000, candidates=hosts)
    with pytest.raises(RemoteError, match="no virt host offers template 'gpu'"):
        place(["x"], template="gpu", vcpus=None, memory_mib=None, candidates=hosts)
    with pytest.raises(RemoteError, match="no virt host answered"):
        place(["x"], template="web", vcpus=None, memory_mib=None, candidates=[])


def test_the_store_survives_reopening(tmp_path):
    store = RequestStore(tmp_path / "p.db")
    store.accept("r1", "alice", "web", 2)
    store.save_plan("r1", {"a": "h1", "b": "h2"})
    store.complete("r1", [{"name": "a", "host": "h1"}, {"name": "b", "host": "h2"}])
    store.close()
    again = RequestStore(tmp_path / "p.db")
    record = again.get("r1")
    assert record.status == "completed" and record.plan == {"a": "h1", "b": "h2"}
    assert not record.replied and again.vms_owned("alice") == 2
    assert [r.request_id for r in again.list(owner="alice")] == ["r1"]


class Settled:
    """A delivery whose ack/nack a test can read."""

    def __init__(self, body, rid, **props):
        base = {"message_id": rid, "reply_to": "hostbus.reply.app", "user_id": "app",
                "content_type": "application/json", "type": PROVISION_TYPE}
        base.update(props)
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.outcome = None
        self.delivery = Delivery(raw, Properties(**base), "hostbus.provision", "provision",
                                 ack=lambda: self._set("ack"),
                                 nack=lambda requeue=False: self._set(
                                     "requeue" if requeue else "dead"))

    def _set(self, outcome):
        self.outcome = outcome


@pytest.fixture
def fleet(memory_broker, tmp_path):
    runtimes, agents = [], {}
    for host_id in ("kvm01", "kvm02"):
        memory_broker.enroll(host_id, ["virt"])
        t = MemoryTransport(memory_broker, user=host_id)
        t.start()
        agent = virt.create(copy.deepcopy(virt.CONFIG_DEFAULTS), host_id=host_id)
        rt = AgentRuntime(t, host_id, [agent], heartbeat_interval=3600)
        rt.start()
        runtimes.append(rt)
        agents[host_id] = agent
    memory_broker.enroll("provisioner", ["provision"])
    pt = MemoryTransport(memory_broker, user="provisioner")
    pt.start()
    store = RequestStore(tmp_path / "prov.db")
    prov_agent = ProvisionAgent(store)
    prov_rt = AgentRuntime(pt, "provisioner", [prov_agent], heartbeat_interval=3600)
    prov_rt.start()
    ct = MemoryTransport(memory_broker, user="provisioner")
    ct.start()
    console = Console(ct)
    console.open()
    events = EventCollector()
    console.subscribe(["provision.#"], events)
    replies = []
    app = MemoryTransport(memory_broker, user="app")
    app.start()
    memory_broker.declare_queue("hostbus.reply.app")
    memory_broker.bind("hostbus.reply", "hostbus.reply.app", "hostbus.reply.app")
    app.consume("hostbus.reply.app", replies.append)

    def received():
        """Reply bodies so far. In-memory routing is synchronous, so once the app's I/O
        thread has drained its work, every reply published so far is here."""
        app.flush()
        return [json.loads(d.body) for d in replies]

    received.deliveries = replies

    prov = Provisioner(console=console, publisher=prov_rt.publisher, store=store,
                       agent=prov_agent, host_id="provisioner", quotas=Quotas(5, {"big": 100}),
                       policy=AllowAll(), audit=None, call_timeout=10, discovery_idle=0.1)
    yield prov, agents, events, received, store
    prov.close()
    for rt in [*runtimes, prov_rt]:
        rt.stop("test over")
    console.close()
    app.close()


def domains(agents):
    return sorted((d["name"], host) for host, a in agents.items() for d in a.domain_objects())


def request(**over):
    body = {"v": 1, "template": "web", "count": 2, "name_prefix": "shop", "owner": "alice"}
    body.update(over)
    return body


def test_a_request_is_placed_spread_started_replied_and_acked(fleet):
    prov, agents, events, received, store = fleet
    msg = Settled(request(count=3), "11111111-aaaa")
    prov.process(msg.delivery)
    assert msg.outcome == "ack"
    names = domains(agents)
    assert [n for n, _ in names] == ["shop-11111111-1", "shop-11111111-2", "shop-11111111-3"]
    assert {h for _, h in names} == {"kvm01", "kvm02"}
    assert all(d["state"] == "running" for a in agents.values() for d in a.domain_objects())
    events.wait_until(lambda evs: any(e.event == "completed" for e, _ in evs))
    kinds = [e.event for e, _ in events.events]
    assert kinds == ["accepted", "progress", "progress", "progress", "completed"]
    [reply] = received()
    assert reply["status"] == "ok" and len(reply["result"]["vms"]) == 3
    assert store.get("11111111-aaaa").replied


def test_the_reply_leaves_signed_with_the_provisioners_key(fleet, tmp_path):
    from hostbus.envelope import REPLY_TYPE
    from hostbus.security.signing import Signer, Verifier, generate, read_public_key

    key, pub = generate("provisioner", tmp_path / "keys")
    prov, _, _, received, _ = fleet
    prov.publisher.signer = Signer.load(key)
    prov.process(Settled(request(count=1), "44444444-dddd").delivery)
    [reply] = received()
    assert reply["status"] == "ok"
    delivery = received.deliveries[-1]
    assert delivery.properties.user_id == "provisioner"
    signer = Verifier(dict([read_public_key(pub)])).verify(
        "hostbus.reply", delivery.routing_key, delivery.properties, delivery.body,
        kind=REPLY_TYPE, what="reply")
    assert signer == "provisioner"


def test_a_redelivery_after_completion_sends_no_second_reply_and_makes_no_vm(fleet):
    prov, agents, _, received, _ = fleet
    first = Settled(request(), "22222222-bbbb")
    prov.process(first.delivery)
    again = Settled(request(), "22222222-bbbb")  # the broker redelivers: no ack arrived
    prov.process(again.delivery)
    assert (first.outcome, again.outcome) == ("ack", "ack")
    assert len(domains(agents)) == 2 and len(received()) == 1


def test_a_vm_defined_before_a_crash_is_adopted_not_duplicated(fleet):
    prov, agents, _, received, store = fleet
    rid = "33333333-cccc"
    # The crashed attempt had placed both VMs and defined the first one on kvm02.
    store.accept(rid, "alice", "web", 2)
    store.save_plan(rid, {"shop-33333333-1": "kvm02", "shop-33333333-2": "kvm01"})
    agents["kvm02"].domain_define("shop-33333333-1", "web", None, None, None, False)
    msg = Settled(request(), rid)
    prov.process(msg.delivery)
    assert msg.outcome == "ack"
    assert domains(agents) == [("shop-33333333-1", "kvm02"), ("shop-33333333-2", "kvm01")]
    assert all(d["state"] == "running" for a in agents.values() for d in a.domain_objects())
    assert received()[-1]["status"] == "ok"


@pytest.mark.parametrize(("body", "props", "fragment"), [
    (b"{not json", {}, "not valid UTF-8 JSON"),
    ({"v": 1, "template": "web"}, {}, "owner"),
    (request(count=0), {}, "count"),
    (request(template="</name><devices>"), {}, "template"),
    (request(owner="a'; rm -rf /"), {}, "owner"),
    (request(), {"type": "hostbus.request/1"}, "type"),
    (request(name="one", count=2), {}, "name is for one VM"),
])
def test_poison_messages_are_dead_lettered_with_a_reason(fleet, body, props, fragment):
    prov, agents, events, received, _ = fleet
    msg = Settled(body, f"poison-{uuid.uuid4().hex[:6]}", **props)
    prov.process(msg.delivery)
    assert msg.outcome == "dead"
    failed = events.wait_for(lambda e: e.event == "failed")
    assert fragment in failed.data["reason"]
    reply = received()[-1]
    assert reply["status"] == "error" and fragment in reply["error"]["message"]
    assert domains(agents) == []


def test_a_missing_request_id_is_dead_lettered(fleet):
    prov, _, events, _, _ = fleet
    msg = Settled(request(), None)
    prov.process(msg.delivery)
    assert msg.outcome == "dead"
    assert "message_id is missing" in events.wait_for(lambda e: e.event == "failed")\
        .data["reason"]


def test_quotas_and_name_conflicts_fail_cleanly_and_roll_nothing_in(fleet):
    prov, agents, _events, received, store = fleet
    over = Settled(request(count=6), "44444444-dddd")
    prov.process(over.delivery)
    assert over.outcome == "dead" and received()[-1]["error"]["code"] == "unauthorized"
    assert domains(agents) == []
    agents["kvm01"].domain_define("taken", "web", None, None, None, False)
    named = {"v": 1, "template": "web", "name": "taken", "owner": "alice"}
    clash = Settled(named, "55555555-eeee")
    prov.process(clash.delivery)
    assert clash.outcome == "dead" and received()[-1]["error"]["code"] == "conflict"
    assert store.get("55555555-eeee").status == "failed"
    assert domains(agents) == [("taken", "kvm01")]


def test_status_and_list_through_the_provision_agent(fleet):
    prov, _, _, _, _ = fleet
    prov.process(Settled(request(owner="big", count=1), "66666666-ffff").delivery)
    status = prov.console.call("provision", "status", {"request_id": "66666666-ffff"},
                               host="provisioner")
    assert status.reply.result["status"] == "completed"
    missing = prov.console.call("provision", "status", {"request_id": "nope"},
                                host="provisioner")
    assert missing.reply.error["code"] == "not_found"
    listed = prov.console.call("provision", "list", {"owner": "big"}, host="provisioner")
    assert [r["request_id"] for r in listed.reply.result["requests"]] == ["66666666-ffff"]


def test_the_provisioning_policy_decides_on_sender_and_request(fleet, tmp_path):
    from hostbus.security.audit import AuditLog
    from hostbus.security.policy import RulesPolicy

    prov, agents, _, received, _ = fleet
    rules = tmp_path / "policy.toml"
    rules.write_text('[[rule]]\nname = "alice: up to 2 web VMs"\ncallers = ["alice"]\n'
                     'args = { template = { one_of = ["web"] }, count = { max = 2 } }\n'
                     'allow = true\n')
    prov.policy = RulesPolicy.load(rules, "provisioner")
    prov.audit = AuditLog(tmp_path / "audit.jsonl")
    outcomes = []
    for user, body in (("alice", request(count=1)), ("alice", request(template="db")),
                       ("alice", request(count=3)), ("mallory", request(count=1))):
        msg = Settled(body, f"pol-{uuid.uuid4().hex[:8]}", user_id=user)
        prov.process(msg.delivery)
        outcomes.append((msg.outcome, received()[-1]["status"],
                         (received()[-1].get("error") or {}).get("code")))
    assert outcomes == [("ack", "ok", None), ("dead", "error", "unauthorized"),
                        ("dead", "error", "unauthorized"), ("dead", "error", "unauthorized")]
    assert len(domains(agents)) == 1
    events = [json.loads(line)["event"] for line in
              (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert events == ["allowed", "completed", "denied", "failed", "denied", "failed",
                      "denied", "failed"]


def test_a_domain_list_lost_on_the_way_is_asked_for_again(fleet):
    """A request published while a quorum host queue elects a new leader can vanish
    (requests are not confirmed); the duplicate check is a read and is asked again."""
    prov, agents, _, received, _ = fleet
    transport = prov.console.transport
    publish = transport.publish
    dropped = []

    def lossy(exchange, routing_key, body, props, **kw):
        if routing_key == "agent.kvm01" and b'"query"' in body and not dropped:
            dropped.append(routing_key)  # lost in the broker
            return None
        return publish(exchange, routing_key, body, props, **kw)

    transport.publish = lossy
    prov.call_timeout = 0.5
    msg = Settled(request(), "44444444-dddd")
    prov.process(msg.delivery)
    assert dropped == ["agent.kvm01"]
    assert msg.outcome == "ack" and len(domains(agents)) == 2
    [reply] = received()
    assert reply["status"] == "ok"
