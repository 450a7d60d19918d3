"""hostbus vm NAME migrate|abort-migration through click's runner, on virt agents that
run libvirt's test driver (which cannot migrate: the real migrations are in
tests/integration/test_live_migration.py)."""

import copy
import json

import pytest

from agents.virt import CONFIG_DEFAULTS
from agents.virt.agent import VirtAgent
from agents.virt.connection import open_connection
from agents.virt.templates import templates_from_config


@pytest.fixture
def virt_fleet(fleet):
    conns = []
    for host_id in ("kvm01", "kvm02"):
        cfg = copy.deepcopy(CONFIG_DEFAULTS)
        cfg["migration_uri"] = f"qemu+tls://{host_id}.example.net/system"
        conn = open_connection("")
        conns.append(conn)
        agent = VirtAgent(cfg, host_id=host_id, conn=conn,
                          templates=templates_from_config(cfg["templates"]))
        fleet.add(host_id, agents=[agent])
    done = fleet.run("call", "virt.domain.define", "name=web-1", "template=web", "start=true",
                     "-H", "kvm01", "--json")
    assert done.exit_code == 0, done.stdout
    yield fleet
    fleet.stop()
    for conn in conns:
        conn.close()


def test_a_migration_the_hypervisor_refuses_exits_1_with_the_reason(virt_fleet):
    done = virt_fleet.run("vm", "web-1", "migrate", "--to", "kvm02", "--yes")
    assert done.exit_code == 1
    assert "not supported by the connection driver" in done.stderr
    assert done.stderr.rstrip().endswith("[unsupported]")


def test_json_says_which_host_answered_and_with_what(virt_fleet):
    done = virt_fleet.run("vm", "web-1", "migrate", "--to", "kvm02", "--yes", "--json",
                          "--bandwidth", "50")
    assert done.exit_code == 1
    out = json.loads(done.stdout)
    assert out["host"] == "kvm01" and out["status"] == "error"
    assert out["error"]["details"]["target_uri"] == "qemu+tls://kvm02.example.net/system"


def test_a_dangerous_migration_without_a_terminal_needs_yes(virt_fleet):
    done = virt_fleet.run("vm", "web-1", "migrate", "--to", "kvm02")
    assert done.exit_code == 2
    assert "migrate web-1 from kvm01 to kvm02" in done.stderr and "--yes" in done.stderr


@pytest.mark.parametrize(("args", "words"), [
    (("vm", "web-1", "migrate", "--to", "nosuch", "--yes"), "no such target"),
    (("vm", "nosuch", "migrate", "--to", "kvm02", "--yes"), "no virt host has a domain"),
    (("vm", "nosuch", "abort-migration"), "no virt host has a domain"),
])
def test_what_is_not_there_exits_3_and_is_named(virt_fleet, args, words):
    done = virt_fleet.run(*args)
    assert done.exit_code == 3
    assert words in done.stderr


def test_the_vm_on_its_host_already_is_a_usage_error(virt_fleet):
    done = virt_fleet.run("vm", "web-1", "migrate", "--to", "kvm01", "--yes")
    assert done.exit_code == 2
    assert "already on kvm01" in done.stderr


def test_aborting_when_nothing_migrates_exits_1_and_says_so(virt_fleet):
    done = virt_fleet.run("vm", "web-1", "abort-migration")
    assert done.exit_code == 1
    assert "no migration of web-1 from this host is running" in done.stderr


def test_a_vm_is_found_by_its_name_for_its_lifecycle(virt_fleet):
    done = virt_fleet.run("vm", "web-1", "suspend")
    assert done.exit_code == 0, done.output
    assert done.stdout.startswith("kvm01  ok")
    shown = json.loads(virt_fleet.run("vm", "web-1", "show", "--json").stdout)
    assert shown["host"] == "kvm01" and shown["state"] == "paused"
    assert virt_fleet.run("vm", "web-1", "resume").exit_code == 0
    human = virt_fleet.run("vm", "web-1", "show").stdout
    assert "web-1 on kvm01" in human and "running" in human
    refused = virt_fleet.run("vm", "web-1", "destroy")  # no terminal: --yes needed
    assert refused.exit_code == 2 and "virt.domain.destroy name=web-1 is dangerous" in \
        refused.stderr
    assert virt_fleet.run("vm", "web-1", "destroy", "--yes").exit_code == 0
    gone = virt_fleet.run("vm", "web-1", "undefine", "--remove-storage", "--yes", "--json")
    assert gone.exit_code == 0, gone.output
    missing = virt_fleet.run("vm", "web-1", "show")
    assert missing.exit_code == 3 and "no virt host has a domain web-1" in missing.stderr
