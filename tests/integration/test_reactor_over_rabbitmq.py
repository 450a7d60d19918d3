"""The reactor's seed scenario, end to end over the real broker, as an operator runs it:
a VM's application is seen unhealthy by the health agent -> the reactor asks for
virt.domain.reboot of that VM -> the agent's policy parks it for approval -> an operator
approves with `hostbus approvals approve` -> the reboot runs, once -> the check passes
again; and the chain (events, rule, request id, approval, outcome) is in the reactor's
history and the agent's audit log.

Everything runs as it would in production: the agent daemon (virt on libvirt's test
driver, and health) and the reactor as processes with their own enrolled broker users
and keys, the operator through the CLI. libvirt's test driver reboots nothing inside a
guest, so the test's application server (what the VM would serve) comes back once the
agent says the approved reboot ran."""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import orjson
import pytest

from console.reactor.store import ReactorStore
from hostbus.security.signing import generate
from tests.fakes import EventCollector, until
from tests.health_server import HealthServer

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


def test_an_unhealthy_vm_is_rebooted_once_after_a_second_persons_approval(
        rabbitmq, enroll, console, tmp_path):
    host = f"kvm-{uuid.uuid4().hex[:6]}"
    bob = f"bob-{uuid.uuid4().hex[:4]}"
    service = f"reactor-{uuid.uuid4().hex[:4]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOSTBUS_")}

    # identities and keys: the agent trusts bob's and the reactor's keys
    agent_cfg = tmp_path / f"{host}.toml"
    done = enroll.run("broker", "enroll", host, "--agents", "virt,health", "-o",
                      str(agent_cfg))
    assert done.returncode == 0, done.stderr
    bob_cfg, _ = enroll("console", bob)
    reactor_cfg = tmp_path / "reactor.toml"
    done = enroll.run("broker", "enroll-service", service, "--events", "health.*.check",
                      "--events", "agent.*.approval.decided", "-o", str(reactor_cfg))
    assert done.returncode == 0, done.stderr
    trusted = tmp_path / "trusted"
    for name in (bob, service):
        _, pub = generate(name, tmp_path / "keys")
        trusted.mkdir(exist_ok=True)
        (trusted / pub.name).write_text(pub.read_text())
    with bob_cfg.open("a") as fh:
        fh.write(f'\n[security]\nsigning_key = "{tmp_path / "keys" / (bob + ".key")}"\n')

    policy = tmp_path / "policy.toml"
    policy.write_text(f"""
[[rule]]
name = "bob approves and manages VMs"
callers = ["{bob}"]
agents = ["agent", "virt"]
allow = true
[[rule]]
name = "the reactor reboots VMs with a second person's approval"
callers = ["{service}"]
agents = ["virt"]
methods = ["domain.reboot"]
requires_approval = true
allow = true
""")
    try:
        with HealthServer() as app:
            with agent_cfg.open("a") as fh:
                fh.write(f'\n[[health.checks]]\nname = "web"\nkind = "http"\n'
                         f'url = "{app.url}"\nbody_match = "^ok$"\nvm = "vm1"\n'
                         f'interval = 0.2\ntimeout = 2.0\nfall = 3\n')
            with reactor_cfg.open("a") as fh:
                fh.write(f"""
[reactor]
host_id = "{service}"
state_dir = "{tmp_path / 'reactor-state'}"
tick_interval = 0.2
[security]
signing_key = "{tmp_path / 'keys' / (service + '.key')}"
multi_host_users = []
[[rule]]
name = "reboot an unhealthy VM"
events = ["health.*.check"]
when = "state=failing and vm=?*"
cooldown_s = 600
[rule.action]
call = "virt.domain.reboot"
args = {{ name = "{{data.vm}}" }}
""")
            _scenario(rabbitmq, console, env, host, bob, service, agent_cfg, bob_cfg,
                      reactor_cfg, policy, trusted, app, tmp_path)
    finally:
        rabbitmq.admin.revoke(service)
        rabbitmq.admin.revoke(host)


def _scenario(rabbitmq, console, env, host, bob, service, agent_cfg, bob_cfg, reactor_cfg,
              policy, trusted, app, tmp_path):
    def cli(config, *args):
        done = subprocess.run([str(BIN / "hostbus"), "--config", str(config), *args],
                              capture_output=True, text=True, env=env, timeout=60,
                              check=False)
        return done.returncode, done.stdout, done.stderr

    def reactor_cli(*args):
        done = subprocess.run([str(BIN / "hostbus"), "reactor", "--config", str(reactor_cfg),
                               *args], capture_output=True, text=True,
                              env={**env, **rabbitmq.env}, timeout=60, check=False)
        return done.returncode, done.stdout, done.stderr

    code, out, err = reactor_cli("--setup")  # as the administrator
    assert code == 0, out + err
    code, out, err = reactor_cli("--check-config")
    assert code == 0 and "reboot an unhealthy VM -> virt.domain.reboot" in out, out + err

    events = EventCollector()
    console.subscribe([f"agent.{host}.#", f"health.{host}.#", f"active.{service}.tick"],
                      events)
    audit = tmp_path / "audit.jsonl"
    agent = subprocess.Popen(
        [str(BIN / "hostbus-agent"), "--config", str(agent_cfg)], stderr=subprocess.PIPE,
        text=True, env={**env, "HOSTBUS_AGENT_AGENTS": "virt,health",
                        "HOSTBUS_SECURITY_POLICY": str(policy),
                        "HOSTBUS_SECURITY_TRUSTED_KEYS": str(trusted),
                        "HOSTBUS_AGENT_STATE_DIR": str(tmp_path / "agent-state"),
                        "HOSTBUS_SECURITY_AUDIT_LOG": str(audit)})
    reactor = None
    try:
        events.wait_for(lambda e: e.full_name == "agent.online", timeout=30)
        code, out, err = cli(bob_cfg, "call", "virt.domain.define", "name=vm1",
                             "template=web", "start=true", "-H", host, "--yes")
        assert code == 0, out + err
        events.wait_for(lambda e: e.full_name == "health.check" and
                        e.data["state"] == "passing")

        reactor = subprocess.Popen(
            [str(BIN / "hostbus"), "reactor", "--config", str(reactor_cfg)],
            stderr=subprocess.PIPE, text=True, env=env)
        events.wait_for(lambda e: e.full_name == "active.tick" and e.data["active"],
                        timeout=30)

        app.healthy = False  # the VM's application stops answering
        failing = events.wait_for(lambda e: e.full_name == "health.check" and
                                  e.data["state"] == "failing", timeout=30)
        assert failing.data["vm"] == "vm1" and "status 503" in failing.data["output"]
        pending = events.wait_for(lambda e: e.full_name == "agent.approval.pending",
                                  timeout=30)
        assert pending.data["requester"] == service
        assert pending.data["call"] == "virt.domain.reboot"
        approval_id = pending.data["approval_id"]

        # The operator sees what waits, and why, in the reactor's history ...
        code, out, err = reactor_cli("history", "--json")
        assert code == 0, err
        [waiting] = [d for d in json.loads(out)["decisions"] if d["decision"] == "fired"]
        assert waiting["state"] == "awaiting_approval" and \
            waiting["approval_id"] == approval_id
        assert waiting["host"] == host and waiting["args"] == {"name": "vm1"}
        assert waiting["events"] == [f"{host}/health/{failing.epoch}/{failing.seq}"]
        # ... and approves it: the second person
        code, out, err = cli(bob_cfg, "approvals", "approve", approval_id[:8], "-H", host,
                             "--yes", "--json")
        assert code == 0, out + err
        decided = events.wait_for(lambda e: e.full_name == "agent.approval.decided",
                                  timeout=30)
        assert decided.data["outcome"] == "ok" and decided.data["by"] == bob

        app.healthy = True  # the rebooted VM serves again
        events.wait_until(lambda evs: [e.data["state"] for e, _ in evs
                                       if e.full_name == "health.check"][-1:] == ["passing"]
                          and len([e for e, _ in evs if e.full_name == "health.check"
                                   and e.data["state"] == "passing"]) == 2, timeout=30)

        store = ReactorStore(tmp_path / "reactor-state" / f"reactor-{service}.db")
        assert until(lambda: store.get(waiting["id"])["state"] == "ok", timeout=15)
        done = store.get(waiting["id"])
        store.close()
        assert done["approved_by"] == bob and "approved by" in done["detail"]
    finally:
        if reactor is not None:
            reactor.terminate()
            reactor.wait(60)
        agent.terminate()
        agent.wait(60)
    reboots = [r for r in map(orjson.loads, audit.read_bytes().splitlines())
               if r.get("call") == "virt.domain.reboot" and r.get("executed")]
    assert len(reboots) == 1, reboots  # once
    assert reboots[0]["caller"] == service and reboots[0]["approved_by"] == bob
    assert reboots[0]["request_id"] == done["request_id"]
    log = reactor.stderr.read()
    assert reactor.returncode == 0, log
    assert f"waits for approval {approval_id}" in log and "approved by" in log, log
