"""The reactor's seed scenario, end to end over the real broker, as an operator runs it:
a VM's application is seen unhealthy by the health agent -> the reactor asks for
virt.domain.reboot of that VM -> the agent's policy parks it for approval -> an operator
approves with `hostbus approvals approve` -> the reboot runs, once -> the check passes
again; and the chain (events, rule, request id, approval, outcome) is in the reactor's
history and the agent's audit log. Then the same with two reactor instances, the active
one SIGKILLed while its action waits for approval.

Everything runs as it would in production: the agent daemon (virt on libvirt's test
driver, and health) and the reactor as processes with their own enrolled broker users
and keys, the operator through the CLI. libvirt's test driver reboots nothing inside a
guest, so the test's application server (what the VM would serve) comes back once the
agent says the approved reboot ran."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from console.manager.service import EVENT_PATTERNS as MANAGER_EVENTS
from console.reactor.store import ReactorStore
from hostbus.security.signing import generate
from tests.fakes import EventCollector, until
from tests.health_server import HealthServer

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


@dataclass
class Scene:
    rabbitmq: Any
    tmp: Path
    app: HealthServer
    host: str
    bob: str
    service: str
    bob_cfg: Path
    reactor_cfg: Path
    audit: Path
    events: EventCollector
    env: dict[str, str]
    manager: str = ""
    manager_cfg: Path | None = None
    reactors: list[subprocess.Popen] = field(default_factory=list)
    users: list[str] = field(default_factory=list)  # revoked afterwards

    def cli(self, *args: str) -> tuple[int, str, str]:
        """The operator (bob)."""
        done = subprocess.run([str(BIN / "hostbus"), "--config", str(self.bob_cfg), *args],
                              capture_output=True, text=True, env=self.env, timeout=60,
                              check=False)
        return done.returncode, done.stdout, done.stderr

    def reactor_cli(self, *args: str, state: str = "reactor-state") -> tuple[int, str, str]:
        env = {**self.env, **self.rabbitmq.env,
               "HOSTBUS_REACTOR_STATE_DIR": str(self.tmp / state)}
        done = subprocess.run([str(BIN / "hostbus"), "reactor", "--config",
                               str(self.reactor_cfg), *args], capture_output=True, text=True,
                              env=env, timeout=60, check=False)
        return done.returncode, done.stdout, done.stderr

    def start_reactor(self, state: str = "reactor-state") -> subprocess.Popen:
        # Its log to a file: a pipe nobody reads while it runs would stop it once full.
        with (self.tmp / f"{state}.log").open("w") as log:
            proc = subprocess.Popen(
                [str(BIN / "hostbus"), "reactor", "--config", str(self.reactor_cfg)],
                stderr=log, text=True,
                env={**self.env, "HOSTBUS_REACTOR_STATE_DIR": str(self.tmp / state)})
        self.reactors.append(proc)
        return proc

    def start_host(self, enroll: Any) -> str:
        """Another virt host (no VM, no checks), under the same policy and keys."""
        host = f"kvm-{uuid.uuid4().hex[:6]}"
        cfg = self.tmp / f"{host}.toml"
        done = enroll.run("broker", "enroll", host, "--agents", "virt", "-o", str(cfg))
        assert done.returncode == 0, done.stderr
        self.users.append(host)
        with (self.tmp / f"{host}.log").open("w") as log:
            proc = subprocess.Popen(
                [str(BIN / "hostbus-agent"), "--config", str(cfg)], stderr=log, text=True,
                env={**self.env, "HOSTBUS_SECURITY_POLICY": str(self.tmp / "policy.toml"),
                     "HOSTBUS_SECURITY_TRUSTED_KEYS": str(self.tmp / "trusted"),
                     "HOSTBUS_AGENT_STATE_DIR": str(self.tmp / f"{host}-state"),
                     "HOSTBUS_SECURITY_AUDIT_LOG": str(self.tmp / f"audit-{host}.jsonl")})
        self.reactors.append(proc)  # stopped with them
        return host

    def start_manager(self) -> subprocess.Popen:
        assert self.manager_cfg is not None
        with (self.tmp / "manager.log").open("w") as log:
            proc = subprocess.Popen([str(BIN / "hostbus"), "manager", "--config",
                                     str(self.manager_cfg)], stderr=log, stdout=log,
                                    text=True, env=self.env)
        self.reactors.append(proc)  # stopped with them
        return proc

    def reactor_log(self, state: str = "reactor-state") -> str:
        return (self.tmp / f"{state}.log").read_text()

    def store(self, state: str = "reactor-state") -> ReactorStore:
        return ReactorStore(self.tmp / state / f"reactor-{self.service}.db")

    def checks(self, state: str) -> list[Any]:
        return [e for e, _ in self.events.events
                if e.full_name == "health.check" and e.data["state"] == state]

    def executed(self, call: str) -> list[dict[str, Any]]:
        return [r for r in map(orjson.loads, self.audit.read_bytes().splitlines())
                if r.get("call") == call and r.get("executed")]


@pytest.fixture
def scene(request, rabbitmq, enroll, console, tmp_path):
    """An agent daemon (virt with a running VM vm1, health checking the VM's web server)
    whose policy makes the reactor's reboots wait for a second person (bob); the
    reactor enrolled, its active queue made, its config written, not started. With
    ``{"manager": True}`` (indirect parameter), a manager too, enrolled and configured
    (not started), that bob may ask to put the host in maintenance, and whose events
    the reactor listens to."""
    with_manager = getattr(request, "param", {}).get("manager", False)
    if with_manager and rabbitmq.transport == "amqp10":
        pytest.skip("the manager's events reach the reactor as any other's: one protocol "
                    "is enough (the CI budget)")
    host = f"kvm-{uuid.uuid4().hex[:6]}"
    bob = f"bob-{uuid.uuid4().hex[:4]}"
    service = f"reactor-{uuid.uuid4().hex[:4]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOSTBUS_")}
    agent_cfg, reactor_cfg = tmp_path / f"{host}.toml", tmp_path / "reactor.toml"
    done = enroll.run("broker", "enroll", host, "--agents", "virt,health", "-o",
                      str(agent_cfg))
    assert done.returncode == 0, done.stderr
    bob_cfg, _ = enroll("console", bob)
    done = enroll.run("broker", "enroll-service", service, "--events", "health.*.check",
                      "--events", "agent.*.approval.decided", "-o", str(reactor_cfg))
    assert done.returncode == 0, done.stderr
    mgr = f"mgr-{uuid.uuid4().hex[:4]}" if with_manager else ""
    manager_cfg = None
    if with_manager:
        manager_cfg = tmp_path / "manager.toml"
        events = [a for p in MANAGER_EVENTS for a in ("--events", p)]
        done = enroll.run("broker", "enroll-service", mgr, "--agents", "manager",
                          "--active", *events, "-o", str(manager_cfg))
        assert done.returncode == 0, done.stderr
    trusted = tmp_path / "trusted"
    for name in (bob, service, *([mgr] if mgr else [])):
        _, pub = generate(name, tmp_path / "keys")
        trusted.mkdir(exist_ok=True)
        (trusted / pub.name).write_text(pub.read_text())
    with bob_cfg.open("a") as fh:
        fh.write(f'\n[security]\nsigning_key = "{tmp_path / "keys" / (bob + ".key")}"\n')
    policy = tmp_path / "policy.toml"
    policy.write_text(f"""
[[rule]]
name = "bob approves and manages VMs (and hosts, through the manager)"
callers = ["{bob}"]
agents = ["agent", "virt", "manager"]
allow = true
[[rule]]
name = "the manager manages VMs; the reactor asks it which hosts it handles"
callers = ["{mgr or 'no-manager'}"]
agents = ["agent", "virt"]
allow = true
[[rule]]
name = "the reactor asks the manager which hosts it handles"
callers = ["{service}"]
agents = ["manager"]
methods = ["hosts"]
allow = true
[[rule]]
name = "the reactor sees what waits for approval"
callers = ["{service}"]
agents = ["agent"]
methods = ["approvals"]
allow = true
[[rule]]
name = "the reactor reboots VMs with a second person's approval"
callers = ["{service}"]
agents = ["virt"]
methods = ["domain.reboot"]
requires_approval = true
allow = true
""")
    agent = None
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
tick_interval = 0.2
manager = "{mgr}"
manager_settle_s = 0
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
            if manager_cfg is not None:
                with manager_cfg.open("a") as fh:  # its [manager] section is the last
                    fh.write(f'state_dir = "{tmp_path / "manager"}"\n'
                             f'policy = "{policy}"\ntick_interval = 0.2\n'
                             'reconcile_interval = 3600.0\ncall_timeout = 20.0\n'
                             f'[security]\nsigning_key = "{tmp_path / "keys" / mgr}.key"\n')
            events = EventCollector()
            console.subscribe([f"agent.{host}.#", f"health.{host}.#",
                               f"active.{service}.tick",
                               *([f"manager.{mgr}.#"] if mgr else [])], events)
            s = Scene(rabbitmq, tmp_path, app, host, bob, service, bob_cfg, reactor_cfg,
                      tmp_path / "audit.jsonl", events, env, mgr, manager_cfg)
            code, out, err = s.reactor_cli("--setup")  # as the administrator
            assert code == 0, out + err
            code, out, err = s.reactor_cli("--check-config")
            assert code == 0 and "reboot an unhealthy VM -> virt.domain.reboot" in out, \
                out + err
            with (tmp_path / "agent.log").open("w") as agent_log:  # a pipe could fill
                agent = subprocess.Popen(
                    [str(BIN / "hostbus-agent"), "--config", str(agent_cfg)],
                    stderr=agent_log, text=True,
                    env={**env, "HOSTBUS_SECURITY_POLICY": str(policy),
                         "HOSTBUS_SECURITY_TRUSTED_KEYS": str(trusted),
                         "HOSTBUS_AGENT_STATE_DIR": str(tmp_path / "agent-state"),
                         "HOSTBUS_SECURITY_AUDIT_LOG": str(s.audit)})
            events.wait_for(lambda e: e.full_name == "agent.online", timeout=30)
            code, out, err = s.cli("call", "virt.domain.define", "name=vm1", "template=web",
                                   "start=true", "-H", host, "--yes")
            assert code == 0, out + err
            events.wait_for(lambda e: e.full_name == "health.check" and
                            e.data["state"] == "passing")
            yield s
    finally:
        for proc in [*s.reactors, agent] if agent is not None else []:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(60)
        rabbitmq.admin.revoke(service)
        rabbitmq.admin.revoke(host)
        if mgr:
            rabbitmq.admin.revoke(mgr)
        for user in s.users if agent is not None else []:
            rabbitmq.admin.revoke(user)


def test_an_unhealthy_vm_is_rebooted_once_after_a_second_persons_approval(scene):
    s = scene
    reactor = s.start_reactor()
    s.events.wait_for(lambda e: e.full_name == "active.tick" and e.data["active"], timeout=30)

    s.app.healthy = False  # the VM's application stops answering
    failing = s.events.wait_for(lambda e: e.full_name == "health.check" and
                                e.data["state"] == "failing", timeout=30)
    assert failing.data["vm"] == "vm1" and "status 503" in failing.data["output"]
    pending = s.events.wait_for(lambda e: e.full_name == "agent.approval.pending",
                                timeout=30)
    assert pending.data["requester"] == s.service
    assert pending.data["call"] == "virt.domain.reboot"
    approval_id = pending.data["approval_id"]

    # The operator sees what waits, and why, in the reactor's history ...
    code, out, err = s.reactor_cli("history", "--json")
    assert code == 0, err
    [waiting] = [d for d in json.loads(out)["decisions"] if d["decision"] == "fired"]
    assert waiting["state"] == "awaiting_approval" and waiting["approval_id"] == approval_id
    assert waiting["host"] == s.host and waiting["args"] == {"name": "vm1"}
    assert waiting["events"] == [f"{s.host}/health/{failing.epoch}/{failing.seq}"]
    # ... and approves it: the second person
    code, out, err = s.cli("approvals", "approve", approval_id[:8], "-H", s.host, "--yes",
                           "--json")
    assert code == 0, out + err
    decided = s.events.wait_for(lambda e: e.full_name == "agent.approval.decided",
                                timeout=30)
    assert decided.data["outcome"] == "ok" and decided.data["by"] == s.bob

    s.app.healthy = True  # the rebooted VM serves again
    s.events.wait_until(lambda evs: len(s.checks("passing")) == 2, timeout=30)

    store = s.store()
    assert until(lambda: store.get(waiting["id"])["state"] == "ok", timeout=15)
    done = store.get(waiting["id"])
    store.close()
    assert done["approved_by"] == s.bob and "approved by" in done["detail"]
    reactor.terminate()
    assert reactor.wait(60) == 0, s.reactor_log()
    log = s.reactor_log()
    assert f"waits for approval {approval_id}" in log and "approved by" in log, log
    [reboot] = s.executed("virt.domain.reboot")  # once
    assert reboot["caller"] == s.service and reboot["approved_by"] == s.bob
    assert reboot["request_id"] == done["request_id"]


def test_a_standby_that_takes_over_asks_no_second_approval(scene):
    """Two instances with a store each; the active one is SIGKILLed while its reboot
    waits for approval; the check flaps; the new active instance finds the approval
    pending at the agent and does not ask again; one approval, one reboot."""
    s = scene
    first, second = s.start_reactor("state-a"), s.start_reactor("state-b")
    tick = s.events.wait_for(lambda e: e.full_name == "active.tick" and e.data["active"],
                             timeout=30)
    by_pid = {str(p.pid): p for p in (first, second)}
    active = by_pid[tick.data["instance"].split("-")[-2]]
    standby = second if active is first else first

    s.app.healthy = False
    pending = s.events.wait_for(lambda e: e.full_name == "agent.approval.pending",
                                timeout=30)
    os.kill(active.pid, signal.SIGKILL)
    active.wait(30)
    s.events.wait_for(lambda e: e.full_name == "active.tick" and e.data["active"] and
                      e.data["instance"].split("-")[-2] == str(standby.pid), timeout=30)

    s.app.healthy = True  # a flap: passing, then failing again, seen by the new one
    s.events.wait_until(lambda evs: len(s.checks("passing")) == 2, timeout=30)
    s.app.healthy = False
    s.events.wait_until(lambda evs: len(s.checks("failing")) == 2, timeout=30)
    state = "state-b" if standby is second else "state-a"
    store = s.store(state)
    assert until(lambda: any(d["decision"] == "fired" and d["state"] != "queued" and
                             d["state"] != "sending" for d in store.history()), timeout=30)
    [adopted] = [d for d in store.history() if d["decision"] == "fired"]
    store.close()
    assert adopted["state"] == "awaiting_approval"
    assert adopted["approval_id"] == pending.data["approval_id"]
    assert "waits at" in adopted["detail"]
    assert len([e for e, _ in s.events.events
                if e.full_name == "agent.approval.pending"]) == 1

    code, out, err = s.cli("approvals", "approve", pending.data["approval_id"], "-H",
                           s.host, "--yes")
    assert code == 0, out + err
    s.events.wait_for(lambda e: e.full_name == "agent.approval.decided", timeout=30)
    assert len(s.executed("virt.domain.reboot")) == 1
    store = s.store(state)
    assert until(lambda: store.get(adopted["id"])["state"] == "ok", timeout=15)
    store.close()
    with contextlib.suppress(ProcessLookupError):
        standby.terminate()
    assert standby.wait(60) == 0


@pytest.mark.parametrize("scene", [{"manager": True}], indirect=True)
def test_the_reactor_keeps_its_hands_off_a_host_the_manager_has_in_maintenance(scene,
                                                                                enroll):
    """A small fleet: two virt hosts, the manager (a process, enrolled as a service),
    the reactor, the operator. The manager puts the first host in maintenance and moves
    its VM to the other (the reactor hears the move); the VM's check fails: the reactor
    skips its reboot, says why in its history, and asks nobody's approval. The
    maintenance ends: the next failure asks for the reboot as before."""
    s = scene
    other = s.start_host(enroll)
    s.start_manager()
    s.start_reactor()  # side by side (what it asks the manager at once may go unanswered)
    s.events.wait_for(lambda e: e.full_name == "active.tick" and e.data["active"], timeout=30)
    assert until(lambda: all(h in s.cli("hosts", "--json")[1] for h in (s.host, other)),
                 timeout=60)

    code, out, err = s.cli("hosts", "maintenance", s.host)
    assert code == 0, out + err
    evacuated = s.events.wait_for(lambda e: e.full_name == "manager.maintenance" and
                                  e.data["status"] in ("evacuated", "incomplete"),
                                  timeout=60)
    assert evacuated.data == {"host": s.host, "status": "evacuated", "moved": 1,
                              "failed": 0}
    assert until(lambda: f"hands off vm vm1: the manager is moving VM vm1 from {s.host} "
                         f"to {other}" in s.reactor_log(), timeout=30)
    s.app.healthy = False
    failing = s.events.wait_for(lambda e: e.full_name == "health.check" and
                                e.data["state"] == "failing", timeout=30)
    store = s.store()
    assert until(lambda: any(d["decision"] == "skipped" for d in store.history()),
                 timeout=30)
    [skipped] = store.history()
    store.close()
    assert skipped["events"] == [f"{s.host}/health/{failing.epoch}/{failing.seq}"]
    assert f"not sent: the manager has host {s.host} in maintenance" in skipped["detail"]
    assert skipped["state"] == "not_sent"
    code, out, err = s.reactor_cli("history")
    assert code == 0 and "skipped" in out and "in maintenance" in out, out + err

    code, out, err = s.cli("hosts", "activate", s.host)
    assert code == 0, out + err
    s.events.wait_for(lambda e: e.full_name == "manager.maintenance" and
                      e.data["status"] == "ended", timeout=30)
    s.app.healthy = True  # it flaps: the next failure is the reactor's again
    s.events.wait_until(lambda evs: len(s.checks("passing")) == 2, timeout=30)
    s.app.healthy = False
    pending = s.events.wait_for(lambda e: e.full_name == "agent.approval.pending",
                                timeout=30)
    assert pending.data["requester"] == s.service
    assert [e.data["state"] for e in s.checks("failing")] == ["failing", "failing"]
    assert len([e for e, _ in s.events.events
                if e.full_name == "agent.approval.pending"]) == 1
