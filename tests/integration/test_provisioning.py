"""Provisioning end to end on the real broker: a plain AMQP client, the provisioner as a
real process, and a virt agent on libvirt's test driver."""

import copy
import json
import os
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

pytestmark = [pytest.mark.integration, pytest.mark.hostbus_core]
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


class GatedUndefineVirtAgent(VirtAgent):
    """Undefines the VM, then holds the reply until the test opens the gate: the window
    in which a provisioner crash leaves a release half done."""

    gate: threading.Event

    def domain_undefine(self, name, remove_storage):
        result = super().domain_undefine(name, remove_storage)
        self.gate.wait(60)
        return result


@pytest.fixture
def virt_host(rabbitmq):
    started = []

    def start(gated=False, gated_class=GatedVirtAgent):
        host_id = f"kvm-{uuid.uuid4().hex[:8]}"
        rabbitmq.enroll(host_id, ["virt"])
        cfg = copy.deepcopy(virt.CONFIG_DEFAULTS)
        cfg["stats_interval"] = 0
        plain = virt.create(cfg, host_id=host_id)
        agent = plain
        if gated:
            agent = gated_class(cfg, host_id=host_id, conn=plain.conn,
                                templates=plain.templates)
            agent.gate = threading.Event()
        runtime = AgentRuntime.serve(rabbitmq.url, host_id, [agent], heartbeat_interval=3600)
        started.append((runtime, agent))
        return host_id, agent

    yield start
    for runtime, agent in started:
        if hasattr(agent, "gate"):
            agent.gate.set()
        runtime.stop("test over")
        agent.conn.close()


@pytest.fixture
def provisioner(rabbitmq, tmp_path):
    procs = []
    host_id = f"prov-{uuid.uuid4().hex[:6]}"
    rabbitmq.enroll(host_id, ["provision"])
    cfg = tmp_path / "provisioner.toml"

    def start(policy=DEMO_POLICY, max_vms=20):
        # Listings of the virt hosts an hour apart: within a test, only lifecycle events
        # (and the listing at start) keep the count of VMs current.
        cfg.write_text(f'[broker]\nurl = "{rabbitmq.url}"\n[provisioner]\n'
                       f'host_id = "{host_id}"\nstate_dir = "{tmp_path / "state"}"\n'
                       f'call_timeout = 30.0\nheartbeat_interval = 3600.0\n'
                       f'reconcile_interval = 3600.0\npolicy = "{policy or ""}"\n'
                       f'[quotas]\ndefault_max_vms = {max_vms}\n')
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
    # The queue hands messages out in order, so once a later request has been handled,
    # this one's redelivery was taken before it; a second copy of it would run after the
    # first under the same id (never beside it) and find it settled: any second reply
    # would be in the queue by the time the status says completed.
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


# ------------------------------------------------------------------ giving VMs back
def running_provisioner(console, provisioner, **options):
    online = wait_online(console, provisioner.host_id)
    proc = provisioner(**options)
    online.wait_for(lambda e: True, timeout=30)
    return proc


def quota_said(console, provisioner):
    """Collects the provisioner's quota events; ``.last(owner)`` is its latest count."""
    said = EventCollector()
    console.subscribe([f"provision.{provisioner.host_id}.quota"], said)

    def wait_count(owner, count):
        said.wait_until(lambda evs: [e.data["count"] for e, _ in evs
                                     if e.data["owner"] == owner][-1:] == [count], timeout=30)

    said.wait_count = wait_count
    return said


def test_destroying_every_vm_of_an_owner_frees_the_quota(rabbitmq, console, virt_host,
                                                         provisioner):
    """Bug: the quota counted completed requests, so an owner who destroyed every VM
    still "had" them, forever. Now it counts the VMs that exist, from the virt agents'
    lifecycle events."""
    host_id, agent = virt_host()
    running_provisioner(console, provisioner, max_vms=2)
    quota = quota_said(console, provisioner)
    body = {"v": 1, "template": "web", "count": 2, "owner": "erin"}
    _, reply = console.provision(body, timeout=120)
    assert reply.ok, reply.error
    _, refused = console.provision({**body, "count": 1}, timeout=120)
    assert refused.error["code"] == "unauthorized"
    assert "owner erin has 2 VMs of a quota of 2" in refused.error["message"]
    for vm in reply.result["vms"]:  # as another program, or `hostbus call`, would
        for method, args in (("domain.destroy", {"name": vm["name"]}),
                             ("domain.undefine", {"name": vm["name"], "remove_storage": True})):
            assert console.call("virt", method, args, host=host_id, timeout=30).reply.ok
    quota.wait_count("erin", 0)
    _, again = console.provision(body, timeout=120)
    assert again.ok, again.error
    assert len(agent.domain_objects()) == 2


def test_vms_removed_while_the_provisioner_was_down_stop_counting(rabbitmq, console,
                                                                  virt_host, provisioner):
    host_id, _agent = virt_host()
    first = running_provisioner(console, provisioner, max_vms=1)
    body = {"v": 1, "template": "web", "owner": "gina"}
    _, reply = console.provision(body, timeout=120)
    assert reply.ok, reply.error
    first.terminate()
    assert first.wait(timeout=30) == 0
    [vm] = reply.result["vms"]
    assert console.call("virt", "domain.destroy", {"name": vm["name"]}, host=host_id,
                        timeout=30).reply.ok
    assert console.call("virt", "domain.undefine", {"name": vm["name"]}, host=host_id,
                        timeout=30).reply.ok
    quota = quota_said(console, provisioner)
    running_provisioner(console, provisioner, max_vms=1)
    quota.wait_count("gina", 0)  # the listing at start found it gone
    _, again = console.provision(body, timeout=120)
    assert again.ok, again.error


def release_raw(url, request_id, *, release_id=None):
    """examples/raw_provision.py --release: plain pika, no hostbus code."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "raw_provision.py"), "--url", url,
         "--release", request_id, "--request-id", release_id or str(uuid.uuid4())],
        capture_output=True, text=True, timeout=120, check=False)
    return done.returncode, (json.loads(done.stdout) if done.stdout.strip() else None), \
        done.stderr


def test_vms_are_released_by_a_plain_amqp_client_and_by_the_cli(rabbitmq, console,
                                                                virt_host, provisioner):
    _host_id, agent = virt_host()
    running_provisioner(console, provisioner)
    progress = EventCollector()
    console.subscribe([f"provision.{provisioner.host_id}.release.#"], progress)
    made = {}
    for owner in ("hana", "ivan"):
        rid, reply = console.provision({"v": 1, "template": "web", "count": 2,
                                        "owner": owner}, timeout=120)
        assert reply.ok, reply.error
        made[owner] = (rid, sorted(v["name"] for v in reply.result["vms"]))
    volumes_before = {v["name"] for v in agent.volume_objects()}

    code, reply, err = release_raw(rabbitmq.raw_url, made["hana"][0])
    assert code == 0, err
    assert (reply["status"], reply["agent"], reply["method"]) == ("ok", "provision", "release")
    assert sorted(v["name"] for v in reply["result"]["vms"]) == made["hana"][1]
    assert {v["outcome"] for v in reply["result"]["vms"]} == {"released"}
    assert sorted(d["name"] for d in agent.domain_objects()) == made["ivan"][1]
    removed = {vol.split("/", 1)[1] for v in reply["result"]["vms"]
               for vol in v["removed_volumes"]}
    assert removed and removed <= volumes_before
    assert not removed & {v["name"] for v in agent.volume_objects()}
    progress.wait_for(lambda e: e.event == "release.completed"
                      and e.data["request_id"] == reply["result"]["request_id"])

    env = {**os.environ, "HOSTBUS_BROKER_URL": rabbitmq.url}
    cli = subprocess.run([str(BIN / "hostbus"), "provision", "release", made["ivan"][0],
                          "--yes", "--json"], capture_output=True, text=True, env=env,
                         timeout=120, check=False)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    out = json.loads(cli.stdout)
    assert out["status"] == "ok" and out["result"]["release_of"] == made["ivan"][0]
    assert agent.domain_objects() == []
    status = console.call("provision", "status", {"request_id": made["ivan"][0]},
                          host=provisioner.host_id)
    assert status.reply.result["status"] == "released"
    shown = subprocess.run([str(BIN / "hostbus"), "provision", "quota", "ivan",
                            "--provisioner", provisioner.host_id], capture_output=True,
                           text=True, env=env, timeout=60, check=False)
    assert shown.returncode == 0 and "ivan: 0 of 20 VMs" in shown.stdout, shown.stderr


def test_a_release_by_someone_the_policy_does_not_allow_is_refused_and_audited(
        rabbitmq, console, virt_host, provisioner, enroll, tmp_path):
    _host_id, agent = virt_host()
    policy = tmp_path / "provisioning-policy.toml"
    policy.write_text('[[rule]]\nname = "guest provisions and releases"\ncallers = ["guest"]\n'
                      'agents = ["provision", "agent"]\nallow = true\n')
    running_provisioner(console, provisioner, policy=policy)
    rid, reply = console.provision({"v": 1, "template": "web", "owner": "judy"}, timeout=120)
    assert reply.ok, reply.error
    app = f"mallory{uuid.uuid4().hex[:6]}"
    _, app_url = enroll("app", app)
    scheme, _, rest = app_url.partition("://")
    code, refused, err = release_raw(f"{scheme.replace('10', '')}://{rest}", rid)
    assert code == 1 and refused is not None, (app_url, err)
    assert (refused["method"], refused["error"]["code"]) == ("release", "unauthorized")
    assert "no rule allows" in refused["error"]["message"]
    assert [d["name"] for d in agent.domain_objects()] == [reply.result["vms"][0]["name"]]
    records = [json.loads(line) for line in provisioner.audit.read_text().splitlines()]
    assert any(r["call"] == "provision.release" and r["caller"] == app
               and r["owner"] == "judy" and r["event"] == "denied" for r in records)


def test_a_release_redelivered_after_a_provisioner_crash_does_not_fail(rabbitmq, console,
                                                                      virt_host, provisioner):
    host_id, agent = virt_host(gated=True, gated_class=GatedUndefineVirtAgent)
    first = running_provisioner(console, provisioner)
    rid, made = console.provision({"v": 1, "template": "web", "owner": "kim"}, timeout=120)
    assert made.ok, made.error
    lifecycle = EventCollector()
    console.subscribe([f"virt.{host_id}.domain.lifecycle"], lifecycle)

    conn = raw_connection(rabbitmq.url)
    ch = conn.channel()
    reply_queue = f"hostbus.reply.guest.raw{uuid.uuid4().hex[:8]}"
    ch.queue_declare(reply_queue, exclusive=True)
    ch.queue_bind(reply_queue, "hostbus.reply", routing_key=reply_queue)
    release_id = str(uuid.uuid4())
    ch.basic_publish("hostbus.provision", "provision", json.dumps(
        {"v": 1, "action": "release", "request_id": rid}).encode(), pika.BasicProperties(
        message_id=release_id, reply_to=reply_queue, content_type="application/json",
        type="hostbus.provision/1", delivery_mode=2, user_id="guest"))

    # The VM is undefined and the provisioner waits for the agent's answer: kill it now.
    lifecycle.wait_for(lambda e: e.data["event"] == "undefined", timeout=60)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    running_provisioner(console, provisioner)
    agent.gate.set()

    reply = next_reply(ch, reply_queue, timeout=90)
    assert reply["status"] == "ok", reply
    assert [v["outcome"] for v in reply["result"]["vms"]] == ["released"]
    assert agent.domain_objects() == []
    # One message at a time: once a later one is handled, any second reply is queued.
    failures = EventCollector()
    console.subscribe([f"provision.{provisioner.host_id}.failed"], failures)
    barrier = f"barrier-{uuid.uuid4().hex[:6]}"
    ch.basic_publish("hostbus.provision", "provision", b"{}", pika.BasicProperties(
        message_id=barrier, content_type="application/json", type="hostbus.provision/1",
        user_id="guest"))
    failures.wait_for(lambda e: e.data["request_id"] == barrier, timeout=60)
    method, _, _ = ch.basic_get(reply_queue, auto_ack=True)
    assert method is None, "a second reply was sent"
    conn.close()
