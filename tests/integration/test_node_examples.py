"""The Node.js clients of examples/node (amqplib for AMQP 0-9-1, rhea for AMQP 1.0),
written from docs/protocol.md only, against the real broker: each runs as an enrolled
identity of its own, signs its requests for an agent that requires signatures, verifies
the agent's signed replies and events, and posts a provisioning request. Each test runs
both clients, against agents on the transport under test: mixed fleets both ways."""

import base64
import json
import os
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pika
import pytest

from tests.fakes import EventCollector, raw_connection
from tests.integration import test_provisioning
from tests.node_packages import NODE_EXAMPLES, installed, node

pytestmark = [pytest.mark.integration, pytest.mark.hostbus_core]
BIN = Path(sys.executable).parent
CLIENTS = ("amqp091.mjs", "amqp10.mjs")
# The provisioning tests' fixtures: a virt agent on libvirt's test driver, a provisioner.
virt_host, provisioner = test_provisioning.virt_host, test_provisioning.provisioner


@pytest.fixture(scope="session")
def examples():
    return installed(NODE_EXAMPLES)


def as_amqp(url: str) -> str:
    """An enrolled identity's URL for the plain clients: the same user, 0-9-1 scheme
    (rhea takes the host, port, user and vhost from it; the protocol is its own)."""
    scheme, _, rest = url.partition("://")
    return f"{'amqps' if scheme.startswith('amqps') else 'amqp'}://{rest}"


def run_node(examples, client, *args, timeout=60):
    return subprocess.run([node(), str(examples / client), *args], capture_output=True,
                          text=True, timeout=timeout, check=False, cwd=examples)


def keys_for(name, folder):
    done = subprocess.run([str(BIN / "hostbus"), "keys", "generate", name, "--out",
                           str(folder)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    return folder / f"{name}.key", folder / f"{name}.pub"


def broker_major(admin: str) -> int:
    parts = urllib.parse.urlsplit(admin)
    request = urllib.request.Request(f"{parts.scheme}://{parts.hostname}:{parts.port}"
                                     "/api/overview")
    token = f"{parts.username}:{parts.password}".encode()
    request.add_header("Authorization", "Basic " + base64.b64encode(token).decode())
    with urllib.request.urlopen(request, timeout=10) as resp:
        return int(json.load(resp)["rabbitmq_version"].split(".")[0])


@pytest.fixture
def signed_fleet(enroll, console, tmp_path, examples):
    """A host agent that runs only requests signed by the Node identity, signs its own
    replies and events, and sends a heartbeat every half second."""
    name = f"node-{uuid.uuid4().hex[:6]}"
    _, url = enroll("console", name)
    host = f"nh-{uuid.uuid4().hex[:6]}"
    _, agent_url = enroll("agent", host)  # its own broker user: replies carry user_id host
    trusted, agent_keys = tmp_path / "trusted", tmp_path / "agent-keys"
    trusted.mkdir()
    agent_keys.mkdir()
    key, pub = keys_for(name, tmp_path / "keys")
    (trusted / pub.name).write_text(pub.read_text())
    host_key, host_pub = keys_for(host, tmp_path / "keys")
    (agent_keys / host_pub.name).write_text(host_pub.read_text())
    (tmp_path / "policy.toml").write_text('[[rule]]\nname = "all"\nallow = true\n')
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'[broker]\nurl = "{agent_url}"\n[agent]\nhost_id = "{host}"\n'
        f'heartbeat_interval = 0.5\nstate_dir = "{tmp_path / "state"}"\n'
        f'[security]\npolicy = "policy.toml"\ntrusted_keys = "trusted"\n'
        f'signing_key = "{host_key}"\naudit_log = "audit.jsonl"\n'
        f'[host]\npower_control = "dry-run"\n')
    online = EventCollector()
    console.subscribe([f"agent.{host}.online"], online)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOSTBUS_")}
    proc = subprocess.Popen([str(BIN / "hostbus-agent"), "--config", str(cfg)],
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        online.wait_for(lambda e: True, timeout=30)
        yield {"name": name, "url": as_amqp(url), "key": key, "agent_keys": agent_keys,
               "host": host, "audit": tmp_path / "audit.jsonl"}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_node_clients_sign_calls_and_verify_the_agents_signed_replies(examples,
                                                                      signed_fleet):
    f = signed_fleet
    for client in CLIENTS:
        done = run_node(examples, client, "call", "host.identify", "--host", f["host"],
                        "--url", f["url"], "--key", str(f["key"]),
                        "--agent-keys", str(f["agent_keys"]))
        assert done.returncode == 0, client + done.stdout + done.stderr
        reply = json.loads(done.stdout)
        assert reply["status"] == "ok" and reply["result"]["host_id"] == f["host"]
        assert reply["signed_by"] == f["host"]
        unsigned = run_node(examples, client, "call", "host.identify", "--host", f["host"],
                            "--url", f["url"], "--agent-keys", str(f["agent_keys"]))
        assert unsigned.returncode == 1, client + unsigned.stdout + unsigned.stderr
        refused = json.loads(unsigned.stdout)
        assert refused["error"]["code"] == "bad_signature"
        assert refused["signed_by"] == f["host"]  # refusals are signed too
    # The agent knew who called: the broker-checked user_id the clients set.
    calls = [json.loads(line) for line in f["audit"].read_text().splitlines()]
    identify = [c for c in calls if c["call"] == "host.identify"]
    assert [c["caller"] for c in identify] == [f["name"]] * 4
    assert [c["executed"] for c in identify] == [True, False, True, False]


def test_node_clients_end_a_broadcast_when_every_expected_host_answered(examples,
                                                                        signed_fleet):
    f = signed_fleet
    for client in CLIENTS:
        # --idle 30: only the expected host ends the collection, not the idle time.
        done = run_node(examples, client, "call", "agent.ping", "--all", "--filter",
                        json.dumps({"host": f["host"]}), "--expect", f["host"],
                        "--idle", "30", "--timeout", "30", "--url", f["url"],
                        "--key", str(f["key"]), "--agent-keys", str(f["agent_keys"]),
                        timeout=20)
        assert done.returncode == 0, client + done.stdout + done.stderr
        [reply] = [json.loads(line) for line in done.stdout.splitlines()]
        assert reply["host"] == f["host"] and reply["result"]["agents"] == ["host"]


def test_a_request_no_host_takes_is_reported_at_once(rabbitmq, examples, signed_fleet):
    f = signed_fleet
    args = ("call", "host.identify", "--host", "nosuchhost", "--url", f["url"],
            "--key", str(f["key"]), "--timeout", "30")
    done = run_node(examples, "amqp091.mjs", *args, timeout=20)  # far less than 30 s
    assert done.returncode == 3, done.stdout + done.stderr
    assert done.stderr.strip() == "no host 'nosuchhost' has the agent 'host' enrolled"
    if broker_major(rabbitmq.admin_url) >= 4:  # the unroutable outcome is `released`
        done = run_node(examples, "amqp10.mjs", *args, timeout=20)
        assert done.returncode == 3, done.stdout + done.stderr
        assert done.stderr.strip() == "no host 'nosuchhost' has the agent 'host' enrolled"
    else:  # RabbitMQ 3.x accepts an unroutable AMQP 1.0 message: the caller cannot tell
        done = run_node(examples, "amqp10.mjs", *args[:-1], "1", timeout=20)
        assert done.returncode == 4, done.stdout + done.stderr
        assert "does not report unroutable AMQP 1.0 messages" in done.stderr


def test_node_clients_read_signed_events_in_order_and_drop_impostors(rabbitmq, examples,
                                                                     signed_fleet):
    f = signed_fleet
    for client in CLIENTS:
        reader = subprocess.Popen(
            [node(), str(examples / client), "events", f"agent.{f['host']}.#", "--count", "3",
             "--url", f["url"], "--agent-keys", str(f["agent_keys"])],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=examples)
        try:
            assert json.loads(reader.stdout.readline()) == {"subscribed":
                                                            [f"agent.{f['host']}.#"]}
            # An event whose body names another host than its routing key, unsigned.
            conn = raw_connection(rabbitmq.url)
            forged = {"v": 1, "host": "impostor", "agent": "agent", "event": "heartbeat",
                      "time": "2026-11-21T10:00:00.000Z", "seq": 1, "epoch": "x", "data": {}}
            conn.channel().basic_publish(
                "hostbus.event", f"agent.{f['host']}.heartbeat", json.dumps(forged).encode(),
                pika.BasicProperties(content_type="application/json", type="hostbus.event/1",
                                     message_id=str(uuid.uuid4())))
            conn.close()
            out, err = reader.communicate(timeout=30)
        finally:
            if reader.poll() is None:
                reader.kill()
        assert reader.returncode == 0, client + err
        events = [json.loads(line) for line in out.splitlines()]
        assert [e["host"] for e in events] == [f["host"]] * 3
        assert {e["signed_by"] for e in events} == {f["host"]}
        seqs = [e["seq"] for e in events]
        assert seqs == list(range(seqs[0], seqs[0] + 3)), seqs  # one counter, no gap
        assert "does not match the body" in err, client + err


def test_node_clients_post_provisioning_requests(enroll, console, virt_host, provisioner,
                                                 examples, tmp_path):
    app = f"nodeapp-{uuid.uuid4().hex[:6]}"
    _, url = enroll("app", app)
    policy = tmp_path / "provision-policy.toml"  # the provisioner denies by default
    policy.write_text(f'[[rule]]\nname = "the node app provisions web VMs"\n'
                      f'callers = ["{app}"]\nagents = ["provision"]\nmethods = ["submit"]\n'
                      f'args = {{ template = {{ one_of = ["web"] }} }}\nallow = true\n')
    online = test_provisioning.wait_online(console, provisioner.host_id)
    host_id, agent = virt_host()
    provisioner(policy)
    online.wait_for(lambda e: True, timeout=30)
    for client, owner in zip(CLIENTS, ("erin", "frank"), strict=True):
        rid = str(uuid.uuid4())
        done = run_node(examples, client, "provision", "web", "--owner", owner, "--count",
                        "2", "--request-id", rid, "--url", as_amqp(url), timeout=150)
        assert done.returncode == 0, client + done.stdout + done.stderr
        reply = json.loads(done.stdout)
        assert reply["agent"] == "provision" and reply["method"] == "submit"
        result = reply["result"]
        assert result["request_id"] == rid and result["owner"] == owner
        assert [vm["host"] for vm in result["vms"]] == [host_id, host_id]
        running = {d["name"]: d["state"] for d in agent.domain_objects()}
        assert all(running[vm["name"]] == "running" for vm in result["vms"])
