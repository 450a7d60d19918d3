"""The manager on RabbitMQ, as an operator runs it: enrolled as a service with an active
queue, two simulated hosts (hostbus-agent with the virt agent on libvirt's test driver,
whose hypervisor lives in the agent's process: killing the agent kills the host), the
CLI. One host's agent is SIGKILLed: its HA VM is defined and started on the other host,
once, and the events say so; its other VM is reported lost. A host put in maintenance
is emptied by cold migration."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from console.manager.service import EVENT_PATTERNS
from tests.fakes import EventCollector, until

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


@pytest.fixture
def fleet(rabbitmq, enroll, tmp_path):
    """Start virt hosts and the manager as processes; all stopped afterwards."""
    procs: list[subprocess.Popen[str]] = []
    policy = tmp_path / "policy.toml"

    def host() -> tuple[str, subprocess.Popen[str]]:
        host_id = f"kvm-{uuid.uuid4().hex[:6]}"
        rabbitmq.enroll(host_id, ["virt"])
        cfg = tmp_path / f"{host_id}.toml"
        cfg.write_text(f'[broker]\nurl = "{rabbitmq.url}"\n[agent]\nhost_id = "{host_id}"\n'
                       f'agents = ["virt"]\nheartbeat_interval = 0.5\n'
                       f'state_dir = "{tmp_path / host_id}"\n[virt]\nstats_interval = 0\n'
                       f'[security]\npolicy = "{policy}"\n')
        with open(tmp_path / f"{host_id}.log", "w") as out:
            proc = subprocess.Popen([str(BIN / "hostbus-agent"), "--config", str(cfg)],
                                    stdout=out, stderr=subprocess.STDOUT, text=True)
        procs.append(proc)
        return host_id, proc

    name = f"mgr-{uuid.uuid4().hex[:6]}"
    events = [arg for pattern in EVENT_PATTERNS for arg in ("--events", pattern)]
    done = enroll.run("broker", "enroll-service", name, "--agents", "manager", "--active",
                      *events, "-o", str(tmp_path / f"{name}.toml"))
    assert done.returncode == 0, done.stderr
    enrolled = (tmp_path / f"{name}.toml").read_text()
    assert f'host_id = "{name}"' in enrolled
    # The agents let the manager and the test (guest) do anything; the manager lets
    # guest (the CLI here) call it.
    policy.write_text(f'[[rule]]\nname = "test"\ncallers = ["guest", "{name}"]\n'
                      'allow = true\n')
    config = tmp_path / "manager.toml"
    config.write_text(enrolled + f'state_dir = "{tmp_path / "manager"}"\n'
                      'heartbeat_grace = 1.0\nping_timeout = 1.0\ncheck_interval = 0.2\n'
                      'reconcile_interval = 3600.0\ncall_timeout = 20.0\n'
                      f'shutdown_timeout = 10.0\ntick_interval = 0.5\npolicy = "{policy}"\n')

    def manager(extra: str = "") -> subprocess.Popen[str]:
        """A manager instance; ``extra``: more [manager] keys."""
        if extra:
            config.write_text(config.read_text() + extra)
        log = tmp_path / f"manager-{len(procs)}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen([str(BIN / "hostbus"), "manager", "--config",
                                     str(config)], stdout=out, stderr=subprocess.STDOUT,
                                    text=True)
        proc.log = log  # type: ignore[attr-defined]
        procs.append(proc)
        return proc

    yield {"host": host, "manager": manager, "name": name}
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    rabbitmq.admin.revoke(name)


def cli(rabbitmq, *args: str, code: int = 0) -> Any:
    done = subprocess.run([str(BIN / "hostbus"), "--url", rabbitmq.url, *args],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == code, f"hostbus {' '.join(args)}: {done.stdout}{done.stderr}"
    if code:
        return done.stderr
    return json.loads(done.stdout) if "--json" in args else done.stdout


def define(console, host: str, name: str, start: bool = True) -> None:
    res = console.call("virt", "domain.define", {"name": name, "template": "web",
                                                 "start": start}, host=host, timeout=30)
    assert res.status == "ok", res.to_dict()


def vms_of(rabbitmq) -> dict[str, tuple[str, str]]:
    return {v["name"]: (v["host"], v["state"]) for v in cli(rabbitmq, "vms", "--json")["vms"]}


def test_a_killed_hosts_ha_vm_runs_on_the_other_host_once(rabbitmq, console, fleet):
    manager_events, lifecycle = EventCollector(), EventCollector()
    console.subscribe([f"manager.{fleet['name']}.#", f"agent.{fleet['name']}.online"],
                      manager_events)
    console.subscribe(["virt.*.domain.lifecycle"], lifecycle)
    host_a, agent_a = fleet["host"]()
    host_b, _ = fleet["host"]()
    fleet["manager"]()
    manager_events.wait_for(lambda e: e.event == "online", timeout=60)
    assert until(lambda: len(console.discover(filter={"agent": "virt"},
                                              expect=[host_a, host_b])) == 2, timeout=30)
    define(console, host_a, "ha-1")
    define(console, host_a, "plain-1")
    assert until(lambda: vms_of(rabbitmq).get("plain-1") == (host_a, "running"), timeout=30)
    assert "HA on" in cli(rabbitmq, "vm", "ha-1", "ha", "on")
    hosts = {h["host"]: h["state"] for h in cli(rabbitmq, "hosts", "--json")["hosts"]}
    assert hosts == {host_a: "online", host_b: "online"}
    planned = cli(rabbitmq, "manager", "plan", "--host-down", host_a, "--json")
    assert [(m["vm"], m["to_host"]) for m in planned["moves"]] == [("ha-1", host_b)]
    assert [m["vm"] for m in planned["left"]] == ["plain-1"]

    agent_a.send_signal(signal.SIGKILL)  # the host dies with its hypervisor
    agent_a.wait(timeout=30)
    done = manager_events.wait_for(
        lambda e: e.event == "ha.restart" and e.data["status"] == "completed", timeout=60)
    assert done.data == {"vm": "ha-1", "from_host": host_a, "to_host": host_b,
                         "status": "completed"}
    listed = console.query("virt", "domain", hosts=[host_b], timeout=10).results[0]
    assert {o["name"]: o["state"] for o in listed.reply.result["objects"]} == \
        {"ha-1": "running"}
    # Exactly once: one define, one start on the surviving host, one restart reported.
    on_b = [e.data["event"] for e, _ in lifecycle.events
            if e.host == host_b and e.data["name"] == "ha-1"]
    assert on_b.count("defined") == 1 and on_b.count("started") == 1
    assert vms_of(rabbitmq) == {"ha-1": (host_b, "running"), "plain-1": (host_a, "lost")}
    seen = [(e.event, e.data.get("vm") or e.data.get("host"), e.data.get("status") or
             e.data.get("state")) for e, _ in manager_events.events if e.event != "online"]
    assert seen == [("vm.ha", "ha-1", None), ("host.state", host_a, "unresponsive"),
                    ("host.state", host_a, "down"), ("ha.restart", "ha-1", "started"),
                    ("ha.restart", "ha-1", "completed"), ("ha.restart", "plain-1", "not_ha")]
    hosts = {h["host"]: h["state"] for h in cli(rabbitmq, "hosts", "--json")["hosts"]}
    assert hosts == {host_a: "down", host_b: "online"}


def test_a_host_in_maintenance_is_emptied_onto_the_other(rabbitmq, console, fleet):
    moves = EventCollector()
    console.subscribe([f"manager.{fleet['name']}.#"], moves)
    host_a, _ = fleet["host"]()
    host_b, _ = fleet["host"]()
    fleet["manager"]()
    assert until(lambda: len(console.discover(filter={"agent": "manager"})) == 1, timeout=60)
    define(console, host_a, "app-1")
    assert until(lambda: vms_of(rabbitmq).get("app-1") == (host_a, "running"), timeout=30)
    assert "being moved away" in cli(rabbitmq, "hosts", "maintenance", host_a)
    done = moves.wait_for(lambda e: e.event == "maintenance" and
                          e.data["status"] in ("evacuated", "incomplete"), timeout=60)
    assert done.data == {"host": host_a, "status": "evacuated", "moved": 1, "failed": 0}
    steps = [e.data["step"] for e, _ in moves.events if e.event == "move"]
    assert steps == ["started", "shut_down", "started_on_target", "undefined_on_source",
                     "completed"]
    assert until(lambda: vms_of(rabbitmq).get("app-1") == (host_b, "running"), timeout=30)
    hosts = {h["host"]: h["maintenance"] for h in cli(rabbitmq, "hosts", "--json")["hosts"]}
    assert hosts == {host_a: True, host_b: False}
    cli(rabbitmq, "hosts", "activate", host_a)
    hosts = {h["host"]: h["maintenance"] for h in cli(rabbitmq, "hosts", "--json")["hosts"]}
    assert hosts == {host_a: False, host_b: False}


def test_the_standby_manager_takes_over_and_restarts_the_ha_vm(rabbitmq, console, fleet):
    """Two instances sharing a state folder; the active one SIGKILLed, then a host: the
    standby, now active, knows the HA flag set through the first and restarts the VM."""
    online, restarts = EventCollector(), EventCollector()
    console.subscribe([f"agent.{fleet['name']}.online"], online)
    console.subscribe([f"manager.{fleet['name']}.ha.restart"], restarts)
    host_a, agent_a = fleet["host"]()
    host_b, _ = fleet["host"]()
    first = fleet["manager"]()
    online.wait_for(lambda e: True, timeout=60)
    second = fleet["manager"]()
    assert until(lambda: "waiting to be the active instance" in second.log.read_text(),
                 timeout=60)
    define(console, host_a, "ha-2")
    assert until(lambda: "ha-2" in vms_of(rabbitmq), timeout=30)
    cli(rabbitmq, "vm", "ha-2", "ha", "on")
    assert cli(rabbitmq, "vms", "--json")["manager"]["active"] is True

    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    online.wait_until(lambda events: len(events) == 2, timeout=60)  # the second serves
    agent_a.send_signal(signal.SIGKILL)
    agent_a.wait(timeout=30)
    try:
        done = restarts.wait_for(lambda e: e.data["status"] == "completed", timeout=60)
    except AssertionError:
        raise AssertionError(second.log.read_text()) from None  # what it did instead
    assert (done.data["vm"], done.data["to_host"]) == ("ha-2", host_b)
    assert [e.data["status"] for e, _ in restarts.events] == ["started", "completed"]
    assert vms_of(rabbitmq)["ha-2"] == (host_b, "running")


def test_a_failed_fence_restarts_nothing_until_an_operator_confirms(rabbitmq, console, fleet):
    events = EventCollector()
    console.subscribe([f"manager.{fleet['name']}.#"], events)
    host_a, agent_a = fleet["host"]()
    host_b, _ = fleet["host"]()
    fleet["manager"]('fence_command = ["false"]\n')
    assert until(lambda: len(console.discover(filter={"agent": "manager"})) == 1, timeout=60)
    define(console, host_a, "ha-3")
    assert until(lambda: "ha-3" in vms_of(rabbitmq), timeout=30)
    cli(rabbitmq, "vm", "ha-3", "ha", "on")
    # A working host cannot be confirmed down.
    assert "is online, not unresponsive" in cli(rabbitmq, "hosts", "confirm-down", host_b,
                                                "--yes", code=1)
    agent_a.send_signal(signal.SIGKILL)
    agent_a.wait(timeout=30)
    failed = events.wait_for(lambda e: e.event == "host.fence_failed", timeout=60)
    assert failed.data == {"host": host_a, "error": "fence command false exited 1"}
    hosts = {h["host"]: h for h in cli(rabbitmq, "hosts", "--json")["hosts"]}
    assert hosts[host_a]["state"] == "unresponsive"
    assert "the fence step failed" in hosts[host_a]["why"]
    assert not [e for e, _ in events.events if e.event == "ha.restart"]
    on_b = console.query("virt", "domain", hosts=[host_b], timeout=10).results[0]
    assert on_b.reply.result["objects"] == []

    out = cli(rabbitmq, "hosts", "confirm-down", host_a, "--yes")
    assert f"{host_a} is down (confirmed down by guest" in out
    done = events.wait_for(lambda e: e.event == "ha.restart" and
                           e.data["status"] == "completed", timeout=60)
    assert (done.data["vm"], done.data["to_host"]) == ("ha-3", host_b)
    assert vms_of(rabbitmq)["ha-3"] == (host_b, "running")
