"""Provisioning end to end on the real broker: a plain AMQP client, the provisioner as a
real process, and a virt agent on libvirt's test driver."""

import copy
import json
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pika
import pytest

from agents import virt
from agents.virt.agent import VirtAgent
from console.client import Console
from hostbus.serving.runtime import AgentRuntime
from tests.fakes import EventCollector, post_provision_raw, raw_connection

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DEMO_POLICY = ROOT / "etc" / "policy-demo.toml"  # guest may do anything


class GatedVirtAgent(VirtAgent):
    """Defines the VM, then holds the reply until the test opens the gate: the window in
    which a provisioner crash leaves a VM behind without knowing it."""

    gate: threading.Event

    def domain_define(self, name, template, xml, vcpus, memory_mib, start):
        result = super().domain_define(name, template, xml, vcpus, memory_mib, start)
        self.gate.wait(60)
        return result


@pytest.fixture
def virt_host(rabbitmq):
    started = []

    def start(gated=False):
        host_id = f"kvm-{uuid.uuid4().hex[:8]}"
        rabbitmq.enroll(host_id, ["virt"])
        cfg = copy.deepcopy(virt.CONFIG_DEFAULTS)
        cfg["stats_interval"] = 0
        plain = virt.create(cfg, host_id=host_id)
        agent = plain
        if gated:
            agent = GatedVirtAgent(cfg, host_id=host_id, conn=plain.conn,
                                   templates=plain.templates)
            agent.gate = threading.Event()
        runtime = AgentRuntime.serve(rabbitmq.url, host_id, [agent], heartbeat_interval=3600)
        started.append((runtime, agent))
        return host_id, agent

    yield start
    for runtime, agent in started:
        if isinstance(agent, GatedVirtAgent):
            agent.gate.set()
        runtime.stop("test over")
        agent.conn.close()


@pytest.fixture
def provisioner(rabbitmq, tmp_path):
    procs = []
    host_id = f"prov-{uuid.uuid4().hex[:6]}"
    rabbitmq.enroll(host_id, ["provision"])
    cfg = tmp_path / "provisioner.toml"

    def start(policy=DEMO_POLICY):
        cfg.write_text(f'[broker]\nurl = "{rabbitmq.url}"\n[provisioner]\n'
                       f'host_id = "{host_id}"\nstate_dir = "{tmp_path / "state"}"\n'
                       f'call_timeout = 30.0\nheartbeat_interval = 3600.0\n'
                       f'policy = "{policy or ""}"\n')
        proc = subprocess.Popen([str(BIN / "hostbus"), "provisioner", "--config", str(cfg)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        procs.append(proc)
        return proc

    start.host_id = host_id
    start.audit = tmp_path / "state" / f"audit-{host_id}.jsonl"
    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)


def wait_online(console, host_id):
    events = EventCollector()
    console.subscribe([f"agent.{host_id}.online"], events)
    return events


def test_a_plain_amqp_client_gets_running_vms_and_events(rabbitmq, console, virt_host,
                                                          provisioner):
    online = wait_online(console, provisioner.host_id)
    host_id, agent = virt_host()
    provisioner()
    online.wait_for(lambda e: True, timeout=30)
    progress = EventCollector()
    console.subscribe(["provision.#"], progress)
    rid = str(uuid.uuid4())
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "raw_provision.py"), "--url", rabbitmq.raw_url,
         "--template", "web", "--count", "2", "--owner", "carol", "--request-id", rid],
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    reply = json.loads(done.stdout)
    assert reply["status"] == "ok" and reply["agent"] == "provision"
    vms = reply["result"]["vms"]
    assert [v["host"] for v in vms] == [host_id, host_id]
    running = {d["name"]: d["state"] for d in agent.domain_objects()}
    assert {v["name"]: "running" for v in vms} == running
    progress.wait_for(lambda e: e.event == "completed" and e.data["request_id"] == rid)
    ours = [e.event for e, _ in progress.events if e.data.get("request_id") == rid]
    assert ours == ["accepted", "progress", "progress", "completed"]


def test_a_request_posted_over_amqp10_by_a_plain_client_is_handled(rabbitmq, console,
                                                                   virt_host, provisioner):
    """examples/raw_provision_amqp10.py: plain python-qpid-proton, no hostbus code. With
    the provisioner on 0-9-1 this crosses protocols; on 1.0 it does not."""
    online = wait_online(console, provisioner.host_id)
    host_id, agent = virt_host()
    provisioner()
    online.wait_for(lambda e: True, timeout=30)
    script = ROOT / "examples" / "raw_provision_amqp10.py"
    assert "import hostbus" not in script.read_text()
    assert "from hostbus" not in script.read_text()
    rid = str(uuid.uuid4())
    done = subprocess.run(
        [sys.executable, str(script), "--url", rabbitmq.raw_url, "--template", "web",
         "--owner", "dave", "--request-id", rid],
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    reply = json.loads(done.stdout)
    assert reply["status"] == "ok"
    [vm] = reply["result"]["vms"]
    assert vm["host"] == host_id
    assert {d["name"]: d["state"] for d in agent.domain_objects()} == {vm["name"]: "running"}


def test_a_killed_provisioner_finishes_the_job_once(rabbitmq, console, virt_host,
                                                    provisioner):
    online = wait_online(console, provisioner.host_id)
    host_id, agent = virt_host(gated=True)
    first = provisioner()
    online.wait_for(lambda e: True, timeout=30)
    lifecycle = EventCollector()
    console.subscribe([f"virt.{host_id}.domain.lifecycle"], lifecycle)

    conn = raw_connection(rabbitmq.url)
    ch = conn.channel()
    reply_queue, rid = post_provision_raw(ch, "dave")

    # The VM is defined and the provisioner waits for the agent's answer: kill it now.
    lifecycle.wait_for(lambda e: e.data["event"] == "defined", timeout=60)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    online2 = EventCollector()
    console.subscribe([f"agent.{provisioner.host_id}.online"], online2)
    provisioner()
    online2.wait_for(lambda e: True, timeout=30)
    agent.gate.set()

    replies = []
    for _m, props, body in ch.consume(reply_queue, inactivity_timeout=90):
        assert body is not None, "no reply after the restart"
        replies.append((props.correlation_id, json.loads(body)))
        break
    ch.cancel()
    assert replies[0][0] == rid and replies[0][1]["status"] == "ok"
    assert [d["name"] for d in agent.domain_objects()] == [f"web-{rid.replace('-', '')[:8]}-1"]
    # The provisioner takes one request at a time, so once a later request has been
    # handled, this one is settled: any second reply would be in the queue by then.
    failures = EventCollector()
    console.subscribe([f"provision.{provisioner.host_id}.failed"], failures)
    barrier = f"barrier-{uuid.uuid4().hex[:6]}"
    ch.basic_publish("hostbus.provision", "provision", b"{}", pika.BasicProperties(
        message_id=barrier, content_type="application/json", type="hostbus.provision/1",
        user_id="guest"))
    failures.wait_for(lambda e: e.data["request_id"] == barrier, timeout=60)
    status = console.call("provision", "status", {"request_id": rid},
                          host=provisioner.host_id)
    assert status.reply.result["status"] == "completed"
    method, _, _ = ch.basic_get(reply_queue, auto_ack=True)
    assert method is None, "a second reply was sent"
    conn.close()


def test_a_poison_message_lands_in_dead_letters_with_its_reason(rabbitmq, console,
                                                                provisioner):
    online = wait_online(console, provisioner.host_id)
    provisioner()
    online.wait_for(lambda e: True, timeout=30)
    failures = EventCollector()
    console.subscribe(["provision.*.failed"], failures)
    conn = raw_connection(rabbitmq.url)
    ch = conn.channel()
    rid = f"poison-{uuid.uuid4().hex[:8]}"
    ch.basic_publish("hostbus.provision", "provision", b'{"v": 1, "template": "</x>"}',
                     pika.BasicProperties(message_id=rid, content_type="application/json",
                                          type="hostbus.provision/1", delivery_mode=2,
                                          user_id="guest"))
    failed = failures.wait_for(lambda e: e.data["request_id"] == rid)
    assert "template" in failed.data["reason"] or "owner" in failed.data["reason"]
    for method, props, _body in ch.consume("hostbus.dead", inactivity_timeout=30):
        assert method is not None, "the poison message never reached hostbus.dead"
        ch.basic_ack(method.delivery_tag)
        if props.message_id == rid:
            death = props.headers["x-death"][0]
            assert death["reason"] == "rejected" and death["queue"] == "hostbus.provision"
            break
    ch.cancel()
    conn.close()


def test_the_provisioner_denies_by_default_and_audits_every_decision(rabbitmq, console,
                                                                     provisioner, enroll,
                                                                     tmp_path):
    """Without a policy file nothing is provisioned; with one, an identity it does not
    name can neither provision nor list other owners' requests."""
    online = wait_online(console, provisioner.host_id)
    first = provisioner(policy=None)
    online.wait_for(lambda e: True, timeout=30)
    conn = raw_connection(rabbitmq.url)
    ch = conn.channel()
    reply_queue, _ = post_provision_raw(ch, "dave")
    reply = next_reply(ch, reply_queue)
    assert reply["status"] == "error" and reply["error"]["code"] == "unauthorized"
    assert "[provisioner] policy" in reply["error"]["message"]
    listing = console.call("provision", "list", {}, host=provisioner.host_id)
    assert listing.reply.error["code"] == "unauthorized"
    first.terminate()
    first.wait(30)

    policy = tmp_path / "provisioning-policy.toml"
    policy.write_text('[[rule]]\nname = "guest provisions"\ncallers = ["guest"]\n'
                      'agents = ["provision", "agent"]\nallow = true\n')
    online = wait_online(console, provisioner.host_id)
    provisioner(policy=policy)
    online.wait_for(lambda e: True, timeout=30)
    _, snoop_url = enroll("console", f"snoop{uuid.uuid4().hex[:6]}")
    snoop = Console.connect(snoop_url.replace("amqp://", rabbitmq.url.split("://")[0] + "://"))
    try:
        res = snoop.call("provision", "list", {}, host=provisioner.host_id)
        assert res.reply.error["code"] == "unauthorized"
    finally:
        snoop.close()
    records = [json.loads(line) for line in provisioner.audit.read_text().splitlines()]
    assert any(r.get("call") == "provision.list" and r.get("decision") == "denied"
               and r.get("caller", "").startswith("snoop") for r in records)
    assert any(r.get("call") == "provision.submit" and r.get("event") == "denied"
               and r.get("caller") == "guest" for r in records)
    conn.close()


def next_reply(ch, queue, timeout=30):
    for _method, _props, payload in ch.consume(queue, inactivity_timeout=timeout):
        ch.cancel()
        assert payload is not None, f"no reply within {timeout} s"
        return json.loads(payload)
    return None
