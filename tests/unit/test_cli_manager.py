"""hostbus hosts, vms, vm NAME ha|start|shutdown, hosts maintenance|activate|confirm-down
and manager plan through click's runner: the manager agent and two virt agents (libvirt's
test driver) on the in-memory broker."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from agents.virt import CONFIG_DEFAULTS
from agents.virt.agent import VirtAgent
from agents.virt.connection import open_connection
from agents.virt.templates import templates_from_config
from console.client import Console
from console.manager.actions import Actions
from console.manager.agent import ManagerAgent
from console.manager.fencing import Fencer
from console.manager.fleet import Fleet
from console.manager.service import Manager
from hostbus.transport.memory import MemoryTransport


@pytest.fixture
def managed(fleet, tmp_path: Path):
    conns = []
    for host_id in ("kvm01", "kvm02"):
        cfg = copy.deepcopy(CONFIG_DEFAULTS)
        conn = open_connection("")
        conns.append(conn)
        fleet.add(host_id, agents=[VirtAgent(cfg, host_id=host_id, conn=conn,
                                             templates=templates_from_config(cfg["templates"]))])
    for name, start in (("web-1", "true"), ("web-2", "false")):
        done = fleet.run("call", "virt.domain.define", f"name={name}", "template=web",
                         f"start={start}", "-H", "kvm01", "--json")
        assert done.exit_code == 0, done.stdout
    transport = MemoryTransport(fleet.broker, user="manager")
    transport.start()
    console = Console(transport)
    console.open()
    model = Fleet(tmp_path / "manager.db")
    manager = Manager(console, model, fencer=Fencer(), discovery_idle=0.05, call_timeout=5)
    actions = Actions(console, model, call_timeout=5, shutdown_timeout=5)
    actions.start()
    manager.reconcile()
    fleet.add("manager", agents=[ManagerAgent(
        model, actions, status=lambda: {"instance": "test", "active": True},
        learn_xml=manager.learn_xml, confirm_down=manager.confirm_down)])
    yield fleet, model, actions
    actions.stop()
    fleet.stop()
    console.close()
    for conn in conns:
        conn.close()


def test_hosts_and_vms_as_tables_and_json(managed):
    fleet, _, _ = managed
    done = fleet.run("hosts")
    assert done.exit_code == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:4] == ["host", "state", "maintenance", "vms"]
    assert lines[1].split()[:3] == ["kvm01", "online", "2"]
    assert lines[-1] == "2 hosts"
    done = fleet.run("vms", "--json")
    vms = {v["name"]: (v["host"], v["state"], v["ha"]) for v in json.loads(done.stdout)["vms"]}
    assert vms == {"web-1": ("kvm01", "running", False), "web-2": ("kvm01", "shutoff", False)}
    done = fleet.run("vms", "-H", "kvm02")
    assert done.stdout.splitlines()[-1] == "0 VMs"


def test_ha_on_then_a_plan_and_maintenance(managed):
    fleet, model, actions = managed
    done = fleet.run("vm", "web-1", "ha", "on", "--priority", "3")
    assert done.exit_code == 0 and done.stdout.strip() == "web-1 on kvm01: HA on (priority 3)"
    assert model.vm("web-1").ha and "<name>web-1</name>" in model.vm("web-1").xml
    done = fleet.run("manager", "plan", "--host-down", "kvm01")
    assert done.exit_code == 0, done.stderr
    rows = [line.split()[:3] for line in done.stdout.splitlines()[1:-1]]
    assert rows == [["web-1", "kvm01", "kvm02"], ["web-2", "-", "not"]]
    done = fleet.run("vm", "nosuch", "ha", "on")
    assert done.exit_code == 3 and "knows no VM 'nosuch'" in done.stderr
    done = fleet.run("hosts", "maintenance", "kvm01")
    assert done.exit_code == 0 and "kvm01 is in maintenance" in done.stdout
    assert actions.idle.wait(30)
    assert {v.name: v.host for v in model.vms()} == {"web-1": "kvm02", "web-2": "kvm02"}
    assert fleet.run("hosts", "activate", "kvm01").exit_code == 0
    assert not model.host("kvm01").maintenance


def test_confirm_down_refuses_a_host_that_works_and_asks_first(managed):
    fleet, _, _ = managed
    done = fleet.run("hosts", "confirm-down", "kvm01")
    assert done.exit_code == 2 and "--yes" in done.stderr
    done = fleet.run("hosts", "confirm-down", "kvm01", "--yes")
    assert done.exit_code == 1 and "kvm01 is online, not unresponsive" in done.stderr


def test_lifecycle_by_name_finds_the_host(managed):
    fleet, _, _ = managed
    done = fleet.run("vm", "web-2", "start")
    assert done.exit_code == 0 and done.stdout.startswith("kvm01  ok"), done.stdout
    assert "running" in done.stdout
    done = fleet.run("vm", "web-2", "destroy")
    assert done.exit_code == 2 and "dangerous" in done.stderr, done.stderr
    done = fleet.run("vm", "web-2", "destroy", "--yes", "--json")
    assert "shutoff" in done.stdout, done.stdout
    assert fleet.run("vm", "nosuch", "start").exit_code == 3
