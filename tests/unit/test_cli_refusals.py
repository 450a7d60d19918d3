"""A host that refuses you is up: `ping` and `agents` say it refused, and why."""

import json

from hostbus.security.signing import Verifier


def _strict(fleet, host):
    """An agent that trusts no key: every unsigned request is refused (bad_signature)."""
    fleet.add(host, verifier=Verifier({}))


def test_ping_shows_a_refusing_host_as_refused_with_its_reason(fleet):
    fleet.add("web01")
    _strict(fleet, "secure01")
    done = fleet.run("ping", "-H", "web01", "-H", "secure01")
    assert done.exit_code == 1, done.stdout
    line = next(line for line in done.stdout.splitlines() if line.startswith("secure01"))
    assert "refused" in line and "bad_signature" in line and "no reply" not in line
    assert "1 answered, 1 refused, 0 missing" in done.stdout
    as_json = json.loads(fleet.run("ping", "-H", "secure01", "--json").stdout)
    assert as_json["refused"][0]["host"] == "secure01"
    assert as_json["refused"][0]["error"]["code"] == "bad_signature"
    assert as_json["missing"] == []


def test_agents_lists_a_refusing_host_instead_of_dropping_it(fleet):
    fleet.add("web01")
    _strict(fleet, "secure01")
    done = fleet.run("agents")
    assert done.exit_code == 1
    line = next(line for line in done.stdout.splitlines() if line.startswith("secure01"))
    assert "refused" in line
    assert "bad_signature" in done.stdout
    listed = json.loads(fleet.run("agents", "--json").stdout)
    assert [a["host"] for a in listed["agents"]] == ["web01"]
    assert [(r["host"], r["error"]["code"]) for r in listed["refused"]] == [
        ("secure01", "bad_signature")]


def test_a_call_target_that_refuses_discovery_is_named_not_called(fleet):
    fleet.add("web01")
    _strict(fleet, "secure01")
    done = fleet.run("call", "host.identify", "--all", "--json")
    assert done.exit_code == 0
    assert [r["host"] for r in json.loads(done.stdout)["results"]] == ["web01"]
    assert "secure01 refused discovery: bad_signature" in done.stderr


def test_ping_says_why_a_named_host_is_silent_when_its_agent_is_not_running(fleet):
    fleet.add("web01")
    fleet.broker.enroll("ghost", ["host"])  # enrolled; no agent consumes its queues
    done = fleet.run("ping", "-H", "web01", "-H", "ghost")
    assert done.exit_code == 4, done.output
    line = next(line for line in done.stdout.splitlines() if line.startswith("ghost"))
    assert "no reply" in line and "is offline: nothing consumes its queue" in line
    as_json = json.loads(fleet.run("ping", "-H", "web01", "-H", "ghost", "--json").stdout)
    assert as_json["missing"] == ["ghost"] and as_json["offline"] == ["ghost"]


def test_ping_that_matches_nobody_says_what_matched_nothing(fleet):
    fleet.add("web01")
    done = fleet.run("ping", "-H", "db*")
    assert done.exit_code == 3
    assert "no host matched -H db*" in done.stderr
