"""Fleet views: one node on one screen, a fact's spread over the fleet."""

import json
import re


def test_inventory_shows_one_host_in_one_view(fleet):
    fleet.add("web01", {"role": "web"})
    done = fleet.run("inventory", "web01")
    assert done.exit_code == 0, done.stderr
    for section in ("facts", "identity (host.identify)", "hardware (host.inventory)",
                    "now (host.metrics)"):
        assert section in done.stdout
    assert "hypervisor" not in done.stdout  # no virt agent there
    doc = json.loads(fleet.run("inventory", "web01", "--json").stdout)
    assert doc["identity"]["host_id"] == "web01" and doc["agent"]["facts"]["role"] == "web"
    assert doc["errors"] == {}


def test_inventory_of_a_host_that_is_not_there(fleet):
    done = fleet.run("inventory", "ghost", "-t", "0.3")
    assert done.exit_code == 4 and "ghost did not answer discovery" in done.stderr


def test_facts_counts_each_value_and_names_its_hosts(fleet):
    fleet.add("web01", {"role": "web"})
    fleet.add("web02", {"role": "web"})
    fleet.add("db01", {"role": "db"})
    fleet.add("bare01")
    doc = json.loads(fleet.run("facts", "role", "--json").stdout)
    assert [(r["value"], r["count"], r["hosts"]) for r in doc["facts"]["role"]] == [
        ("web", 2, ["web01", "web02"]), ("(missing)", 1, ["bare01"]), ("db", 1, ["db01"])]
    keys = json.loads(fleet.run("facts", "--json").stdout)["facts"]
    assert {"fact": "role", "values": 2, "hosts": 3} in keys
    narrowed = json.loads(fleet.run("facts", "role", "--where", "role!=web", "--json").stdout)
    assert [r["value"] for r in narrowed["facts"]["role"]] == ["(missing)", "db"]


def test_inventory_fits_80_columns(fleet):
    fleet.add("web01", {"role": "web"})
    done = fleet.run("inventory", "web01", env={"TTY_COMPATIBLE": "1", "COLUMNS": "80",
                                                 "NO_COLOR": "1"})
    assert done.exit_code == 0, done.stderr
    plain = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in done.stdout.splitlines()]
    assert plain[0] == "web01"
    assert any(line.split()[:2] == ["agents", "host"] for line in plain)
    assert all(len(line.rstrip()) <= 80 for line in plain), plain
