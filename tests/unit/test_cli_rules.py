"""hostbus rules check FILE and hostbus rules test FILE --event JSON|-, offline; and the
older spellings (hostbus reactor --check-config, hostbus reactor test) still work."""

import json
from pathlib import Path

ETC = Path(__file__).resolve().parents[2] / "etc"

RULES = """
[[rule]]
name = "reboot an unhealthy VM"
events = ["health.*.check"]
when = "state=failing and vm=?*"
[rule.action]
call = "virt.domain.reboot"
args = { name = "{data.vm}" }
"""

FAILING = {"host": "kvm01", "agent": "health", "event": "check",
           "data": {"state": "failing", "vm": "web-a"}}


def write(tmp_path, text):
    path = tmp_path / "rules.toml"
    path.write_text(text)
    return str(path)


def test_the_shipped_configuration_passes_the_check(fleet):
    done = fleet.run("rules", "check", str(ETC / "reactor.toml"))
    assert done.exit_code == 0, done.stdout + done.stderr
    assert "ok    reboot an unhealthy VM: health.*.check -> virt.domain.reboot" in \
        done.stdout and "no problem" in done.stdout


def test_check_names_every_problem_with_its_fix(fleet, tmp_path):
    text = RULES.replace("health.*.check", "health.*.chek") + """
[[rule]]
name = "restart"
events = ["health.*.check"]
when = "stat=failing"
[rule.action]
call = "host.service.restart"
args = { name = "{data.chek}" }

[[rule]]
name = "bad window"
events = ["host.*.alert"]
count = 3
[rule.action]
call = "host.service.restart"
args = { name = "x" }
"""
    done = fleet.run("rules", "check", write(tmp_path, text), "--json")
    assert done.exit_code == 1, done.stderr
    report = json.loads(done.stdout)
    problems = {(p["rule"], p["problem"]): p["fix"] for p in report["problems"]}
    assert problems[("reboot an unhealthy VM", "events 'health.*.chek' matches no event "
                     "any agent sends")] == "use 'health.*.check'"
    assert problems[("restart", "when names stat, which the data of health.check does "
                     "not have")].startswith("did you mean state? its fields: check,")
    assert problems[("restart", "action names {data.chek}, which the data of health.check "
                     "does not have")].startswith("did you mean check?")
    [(_, window)] = [k for k in problems if k[0] == "bad window"]
    assert window == "count = 3 needs within_s (the window the events must fall in)"
    assert [r["name"] for r in report["rules"]] == ["reboot an unhealthy VM", "restart"]

    done = fleet.run("rules", "check", write(tmp_path, text))  # the same, for people
    assert done.exit_code == 1
    assert "FAIL  restart: health.*.check -> host.service.restart on {host}" in done.stdout
    assert "problem: restart: when names stat, which the data of health.check does not " \
           "have\n  fix: did you mean state?" in done.stdout
    assert done.stdout.rstrip().endswith("2 rule(s) read, 4 problem(s)")


def test_check_of_a_file_that_is_no_configuration_is_a_usage_error(fleet, tmp_path):
    done = fleet.run("rules", "check", str(tmp_path / "nothing.toml"))
    assert done.exit_code == 2 and "no such file" in done.stderr
    done = fleet.run("rules", "check", write(tmp_path, "[[rule]\n"))
    assert done.exit_code == 2 and "is not valid TOML" in done.stderr
    done = fleet.run("rules", "check", write(tmp_path, "[reactor]\n"))
    assert done.exit_code == 1 and "no [[rule]] in the file" in done.stdout


def test_an_agent_without_a_schema_here_is_a_warning_not_a_problem(fleet, tmp_path):
    text = RULES.replace("health.*.check", "acme.*.thing")
    done = fleet.run("rules", "check", write(tmp_path, text))
    assert done.exit_code == 0, done.stdout
    assert "warning: reboot an unhealthy VM: events 'acme.*.thing': no schema for agent " \
           "'acme' here" in done.stdout


def test_test_says_which_rules_act_and_what_they_would_send(fleet, tmp_path):
    path = write(tmp_path, RULES)
    done = fleet.run("rules", "test", path, "--event", json.dumps(FAILING))
    assert done.exit_code == 0, done.stderr
    assert done.stdout == ("reboot an unhealthy VM: fires (unless within its cooldown or "
                           "one is in flight): virt.domain.reboot on kvm01 "
                           '{"name": "web-a"}\n')
    passing = {**FAILING, "data": {"state": "passing", "vm": "web-a"}}
    done = fleet.run("rules", "test", path, "-e", "-", input=json.dumps(passing))
    assert done.exit_code == 1
    assert "its conditions (state=failing and vm=?*) do not hold" in done.stdout
    # JSON lines, as hostbus watch --json prints them: one answer per event
    lines = "\n".join(json.dumps(e) for e in (passing, FAILING))
    done = fleet.run("rules", "test", path, "-e", "-", "--json", input=lines)
    assert done.exit_code == 0
    found = json.loads(done.stdout)["events"]
    assert [e["rules"][0].get("outcome") is not None for e in found] == [False, True]


def test_test_refuses_what_is_not_an_event_and_says_what_to_give(fleet, tmp_path):
    path = write(tmp_path, RULES)
    done = fleet.run("rules", "test", path, "-e", "{nope")
    assert done.exit_code == 2 and "--event is not JSON" in done.stderr
    assert '"agent": "health"' in done.stderr
    done = fleet.run("rules", "test", path, "-e", '{"host": 1}')
    assert done.exit_code == 2 and "lacks agent, event, data" in done.stderr
    done = fleet.run("rules", "test", path, "-e", path)  # a file name: how to read it
    assert done.exit_code == 2 and f"read the file from stdin: --event - < {path}" in \
        done.stderr


def test_the_older_spellings_still_work_and_say_where_they_moved(fleet, tmp_path):
    path = write(tmp_path, RULES)
    done = fleet.run("reactor", "test", "-c", path, "-e", json.dumps(FAILING), "--json")
    assert done.exit_code == 0, done.stderr
    assert json.loads(done.stdout)["rules"][0]["action"]["host"] == "kvm01"
    assert "Moved to hostbus rules test" in fleet.run("reactor", "test", "--help").stdout
    assert "hostbus rules check FILE" in fleet.run("reactor", "--help").stdout
    done = fleet.run("reactor", "--config", path, "--check-config")
    assert done.exit_code == 0 and "1 rule(s)" in done.stdout


def test_actions_that_provision_or_publish_are_checked_and_tried_too(fleet, tmp_path):
    text = """
[[rule]]
name = "tell"
events = ["health.*.check"]
when = "state=failing"
[rule.action]
event = "vm.unhealthy"
data = { vm = "{data.vm}", said = "{data.outptu}" }

[[rule]]
name = "more"
events = ["health.*.check"]
when = "state=failing"
[rule.action]
provision = { template = "web", owner = "reactor", name_prefix = "{data.check}" }
"""
    path = write(tmp_path, text)
    done = fleet.run("rules", "check", path)
    assert done.exit_code == 1
    assert "FAIL  tell: health.*.check -> event vm.unhealthy\n" in done.stdout
    assert "ok    more: health.*.check -> provision\n" in done.stdout
    assert "action names {data.outptu}" in done.stdout and "did you mean output?" in \
        done.stdout
    done = fleet.run("rules", "test", write(tmp_path, text.replace("outptu", "output")),
                     "-e", json.dumps({**FAILING, "data": {**FAILING["data"], "check": "web",
                                                          "output": "503"}}))
    assert done.exit_code == 0, done.stderr
    assert 'tell: fires (unless within its cooldown or one is in flight): event ' \
           'vm.unhealthy {"vm": "web-a", "said": "503"}' in done.stdout
    assert 'more: fires (unless within its cooldown or one is in flight): provision ' \
           '{"template": "web", "owner": "reactor", "name_prefix": "web"}' in done.stdout
