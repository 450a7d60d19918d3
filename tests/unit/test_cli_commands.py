"""The CLI's commands through click's runner on the in-memory broker."""

import json

from hostbus.errors import ErrorCode, RemoteError


def test_agents_lists_every_host_with_its_facts(fleet):
    fleet.add("web01", {"role": "web"})
    fleet.add("db01", {"role": "db"})
    done = fleet.run("agents", "--json")
    assert done.exit_code == 0, done.stderr
    listed = {a["host"]: a for a in json.loads(done.stdout)["agents"]}
    assert set(listed) == {"web01", "db01"}
    assert listed["web01"]["facts"]["role"] == "web"


def test_call_runs_on_the_named_host_and_reports_it(fleet):
    fleet.add("web01")
    done = fleet.run("call", "host.identify", "-H", "web01", "--json")
    assert done.exit_code == 0, done.stderr
    out = json.loads(done.stdout)
    assert [(r["host"], r["status"]) for r in out["results"]] == [("web01", "ok")]
    assert out["results"][0]["result"]["host_id"] == "web01"


class BrokenServices:
    def list(self):
        raise RemoteError(ErrorCode.FAILED, "systemctl list-units failed: no bus")


def test_a_silent_host_exits_4_and_a_failed_one_1(fleet):
    fleet.add("web01", agent_kw={"services": BrokenServices()})
    fleet.add_silent("ghost")  # takes requests, never answers
    silent = fleet.run("call", "host.identify", "-H", "web01", "-H", "ghost", "-t", "0.3",
                       "--json")
    assert silent.exit_code == 4
    assert {r["host"]: r["status"] for r in json.loads(silent.stdout)["results"]} == {
        "web01": "ok", "ghost": "no_reply"}
    failed = fleet.run("call", "host.services", "-H", "web01")
    assert failed.exit_code == 1, failed.stdout
    assert "failed: systemctl list-units failed: no bus" in failed.stdout


def test_nothing_discovered_exits_3_with_a_message(fleet):
    done = fleet.run("call", "host.identify", "--all")
    assert done.exit_code == 3
    assert "no host with agent 'host' answered discovery" in done.stderr


def test_query_lists_objects_of_every_host(fleet):
    fleet.add("web01")
    fleet.add("web02")
    done = fleet.run("query", "host.disk", "--json")
    assert done.exit_code == 0, done.stderr
    objects = json.loads(done.stdout)["objects"]
    assert {(o["host"], o["mountpoint"]) for o in objects} >= {("web01", "/"), ("web02", "/")}


def test_a_filter_that_matches_nobody_says_so_not_that_nobody_runs(fleet):
    fleet.add("web01", {"role": "web"})
    done = fleet.run("agents", "--where", "role=db")
    assert done.exit_code == 3
    assert "no agent matched --where role=db" in done.stderr
    assert "Start one" not in done.stderr


def test_a_target_without_its_agent_gets_the_right_suggestion(fleet):
    query = fleet.run("query", "disk")
    assert query.exit_code == 2
    assert "'disk': expected AGENT.CLASS; did you mean host.disk?" in query.stderr
    call = fleet.run("call", "identify", "-H", "web01")
    assert call.exit_code == 2
    assert "'identify': expected AGENT.METHOD; did you mean host.identify?" in call.stderr
    other = fleet.run("query", "nosuch")
    assert "expected AGENT.CLASS, e.g. host.disk" in other.stderr


def test_no_validate_sends_what_the_local_schema_does_not_know(fleet):
    fleet.add("web01")
    done = fleet.run("call", "host.nosuch", "--all", "--no-validate", "--json")
    assert done.exit_code == 1, done.stderr  # the agent answered: it has no such method
    assert json.loads(done.stdout)["results"][0]["error"]["code"] == "unknown_method"


def test_a_host_nobody_enrolled_is_said_at_once_and_does_not_pass_for_ok(fleet):
    fleet.add("web01")
    done = fleet.run("call", "host.identify", "-H", "web01", "-H", "ghost", "-t", "30")
    assert done.exit_code == 6, done.stdout  # not enrolled: its own code, at once
    assert "no host 'ghost' has the agent 'host' enrolled" in done.stdout
    assert "1 not enrolled" in done.stdout


def test_a_query_that_matches_no_object_says_so(fleet):
    fleet.add("web01")
    done = fleet.run("query", "host.process", "--filter", "name=nosuch*", "-H", "web01")
    assert done.exit_code == 0, done.output
    assert done.stdout.splitlines()[0] == "0 process objects matching name=nosuch*"
