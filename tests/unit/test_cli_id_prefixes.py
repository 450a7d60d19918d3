"""Ids are long: a unique prefix names one, as in git."""

import json

import pytest

from console.commands.common import CliError, Exit, resolve_prefix
from console.provisioner.agent import ProvisionAgent
from console.provisioner.ledger import VmLedger
from console.provisioner.quotas import Quotas
from console.provisioner.store import RequestStore

RIDS = ["6ba2c4e8-dd00-4d01-9f30-2f903cd8df11", "6ba2d000-0000-4000-8000-000000000000",
        "cc8dceb3-1111-4111-8111-111111111111"]


@pytest.fixture
def provisioner(fleet, tmp_path):
    store = RequestStore(tmp_path / "requests.db")
    for rid in RIDS:
        store.accept(rid, "ops", "web", 1)
    ledger = VmLedger(store.path)
    fleet.add("provisioner", agents=[ProvisionAgent(store, ledger, Quotas(20, {}))])
    yield store
    ledger.close()
    store.close()


def test_provision_status_takes_a_unique_prefix(fleet, provisioner):
    done = fleet.run("provision", "status", "cc8dceb3", "--json")
    assert done.exit_code == 0, done.stderr
    assert json.loads(done.stdout)["request_id"] == RIDS[2]
    whole = fleet.run("provision", "status", RIDS[0], "--json")
    assert json.loads(whole.stdout)["request_id"] == RIDS[0]


def test_an_ambiguous_or_unknown_prefix_is_named(fleet, provisioner):
    both = fleet.run("provision", "status", "6ba2")
    assert both.exit_code == 2
    assert "6ba2 is ambiguous" in both.stderr and RIDS[0] in both.stderr and RIDS[1] in both.stderr
    none = fleet.run("provision", "status", "deadbeef")
    assert none.exit_code == 3 and "no provisioning request deadbeef" in none.stderr


def test_prefixes_must_be_long_enough_to_mean_something():
    with pytest.raises(CliError) as short:
        resolve_prefix("6b", RIDS, "provisioning request")
    assert short.value.code == Exit.USAGE and "at least 4" in short.value.message
    assert resolve_prefix("6BA2C4", RIDS, "x") == RIDS[0]  # ids are compared lowercased


def test_a_named_provisioner_that_is_none_or_offline_is_said_at_once(fleet):
    fleet.add("web01")  # a host agent, no provisioner
    done = fleet.run("provision", "list", "--provisioner", "web01", "-t", "30")
    assert done.exit_code == 6, done.output
    assert "no host 'web01' has the agent 'provision' enrolled" in done.stderr
    assert "leave out --provisioner" in done.stderr
    fleet.broker.enroll("prov01", ["provision"])  # enrolled; its service is not running
    done = fleet.run("provision", "status", "3f0c2b1e-0000-4000-8000-000000000001",
                     "--provisioner", "prov01", "-t", "30")
    assert done.exit_code == 4, done.output
    assert "prov01 is offline: nothing consumes its queue" in done.stderr
