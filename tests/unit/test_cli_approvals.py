"""`hostbus approvals`: nothing pending is not a failure, nor is a host without approvals."""

import json


def test_nothing_pending_exits_0_and_hosts_without_approvals_are_not_failures(fleet):
    fleet.add("web01")  # checks no signatures: takes no approvals
    fleet.add("web02")
    done = fleet.run("approvals", "list")
    assert done.exit_code == 0, done.output
    assert "no approvals pending" in done.stdout
    assert "web01, web02 take no approvals" in done.stdout
    assert "failed" not in done.output and done.stderr == ""
    listed = json.loads(fleet.run("approvals", "list", "--json").stdout)
    assert listed["approvals"] == [] and listed["errors"] == []
    assert listed["no_approvals"] == ["web01", "web02"]


def test_a_silent_host_still_counts(fleet):
    fleet.add("web01")
    fleet.broker.enroll("ghost", ["host"])  # enrolled, but no agent runs there
    done = fleet.run("approvals", "list", "-H", "web01", "-H", "ghost", "-t", "0.3")
    assert done.exit_code == 4
    assert "ghost: no reply" in done.stderr
