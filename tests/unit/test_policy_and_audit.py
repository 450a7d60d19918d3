import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from hostbus.envelope import REQUEST_TYPE
from hostbus.errors import ConfigError
from hostbus.schema import load_agent_schema
from hostbus.security.audit import AuditLog, args_digest
from hostbus.security.policy import DiscoveryOnly, RulesPolicy
from hostbus.serving.dispatch import Dispatcher, HostedAgent
from hostbus.serving.runtime import AgentRuntime
from hostbus.transport.base import Delivery, Properties
from hostbus.transport.memory import MemoryTransport
from tests.fakes import make_host_agent

RULES = """
[groups]
ops = ["alice"]

[[rule]]
name = "nobody touches db hosts"
hosts = ["db*"]
allow = false

[[rule]]
name = "read"
methods = ["identify", "metrics"]
allow = true

[[rule]]
name = "ops reboot slowly"
callers = ["group:ops"]
methods = ["reboot"]
args = { delay_s = { min = 60, max = 3600 }, reason = { pattern = "[a-z ]+" } }
allow = true

[[rule]]
name = "ops shut down with approval"
callers = ["group:ops"]
methods = ["shutdown"]
requires_approval = true
allow = true
"""


@pytest.fixture
def rules(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text(RULES)
    return RulesPolicy.load(path, "web01")


@pytest.mark.parametrize(("caller", "method", "args", "host", "verdict", "rule"), [
    ("anyone", "identify", {}, "web01", True, "read"),
    ("anyone", "identify", {}, "db01", False, "nobody touches db hosts"),
    ("alice", "reboot", {"delay_s": 120, "reason": "patch"}, "web01", True,
     "ops reboot slowly"),
    ("alice", "reboot", {"delay_s": 5, "reason": "patch"}, "web01", False, "default-deny"),
    ("alice", "reboot", {"delay_s": 120, "reason": "PATCH!"}, "web01", False, "default-deny"),
    ("bob", "reboot", {"delay_s": 120, "reason": "patch"}, "web01", False, "default-deny"),
    ("alice", "shutdown", {}, "web01", False, "ops shut down with approval"),
])
def test_the_first_matching_rule_decides_and_nothing_matching_is_denied(
        rules, caller, method, args, host, verdict, rule):
    decision, trail = rules.explain(caller, "host", method, args, host)
    assert (decision.allowed, decision.rule) == (verdict, rule)
    assert trail, "the explanation lists the rules it tried"


def test_approval_is_a_refusal_that_says_so(rules):
    decision, _ = rules.explain("alice", "host", "shutdown", {})
    assert decision.requires_approval and "approval" in decision.reason


def test_mistakes_in_the_rules_file_are_named(tmp_path):
    path = tmp_path / "p.toml"
    for text, message in (("[[rule]]\nname = 'x'\n", "allow = true or allow = false"),
                          ("[[rule]]\nallow = true\nmethod = ['x']\n", "unknown key 'method'"),
                          ("[[rule]]\nallow = true\nargs = { a = { pattern = '(' } }\n",
                           "bad args constraint"),
                          ("[[rule\n", "not valid TOML")):
        path.write_text(text)
        with pytest.raises(ConfigError, match=message):
            RulesPolicy.load(path, "web01")


def request(method, args, user="mallory", agent="host"):
    body = {"v": 1, "agent": agent, "method": method, "args": args,
            "target": {"host": "web01"},
            "deadline": (datetime.now(UTC) + timedelta(seconds=30)).isoformat()}
    return Delivery(json.dumps(body).encode(), Properties(
        message_id=f"r-{method}-{uuid.uuid4().hex[:8]}", reply_to="hostbus.reply.t.x",
        content_type="application/json", type=REQUEST_TYPE, user_id=user),
        "hostbus.request", "host.web01")


def test_denials_and_approvals_carry_their_code_and_nothing_runs(rules):
    agent, _, power = make_host_agent("web01")
    dispatcher = Dispatcher("web01", {"host": HostedAgent(agent, load_agent_schema("host"))},
                            facts=dict, policy=rules)
    denied = dispatcher.handle(request("reboot", {"delay_s": 120}, user="mallory"))
    assert denied.reply.error["code"] == "unauthorized"
    assert denied.reply.error["details"] == {"rule": "default-deny"}
    parked = dispatcher.handle(request("shutdown", {}, user="alice"))
    assert parked.reply.error["code"] == "approval_required"
    assert power.calls == []
    allowed = dispatcher.handle(request("reboot", {"delay_s": 120, "reason": "patch"},
                                        user="alice"))
    assert allowed.reply.ok and power.calls == [("reboot", 120, "patch")]


QUERIES = """
[[rule]]
name = "support sees the top processes"
callers = ["support"]
agents = ["host"]
methods = ["processes"]
args = { limit = { max = 5 } }
allow = true

[[rule]]
name = "ops read process objects"
callers = ["ops"]
agents = ["host"]
methods = ["class.process"]
allow = true
"""


def test_a_query_is_authorized_as_the_class_it_reads(tmp_path):
    """agent.query host.process exposes what host.processes does, unfiltered: it is
    decided as host's pseudo-method class.process, not as agent.query."""
    path = tmp_path / "p.toml"
    path.write_text(QUERIES)
    agent, _, _ = make_host_agent("web01")
    hosted = {"host": HostedAgent(agent, load_agent_schema("host"))}
    from hostbus.serving.builtin import BuiltinAgent, RuntimeInfo

    info = RuntimeInfo("web01", "e", "now", hosted, dict, None, None, None)
    hosted["agent"] = HostedAgent(BuiltinAgent(info), load_agent_schema("agent"))
    dispatcher = Dispatcher("web01", hosted, facts=dict,
                            policy=RulesPolicy.load(path, "web01"))
    query = {"agent": "host", "class_name": "process", "where": {}, "limit": 1000}
    narrow = dispatcher.handle(request("processes", {"limit": 5}, user="support"))
    assert narrow.reply.ok
    sneaky = dispatcher.handle(request("query", query, user="support", agent="agent"))
    assert sneaky.reply.error["code"] == "unauthorized"
    assert "host.class.process" in sneaky.reply.error["message"]
    allowed = dispatcher.handle(request("query", query, user="ops", agent="agent"))
    assert allowed.reply.ok and allowed.reply.result["class_name"] == "process"


def test_without_a_rules_file_only_discovery_is_answered():
    agent, _, power = make_host_agent("web01")
    assert power.calls == []
    dispatcher = Dispatcher("web01", {"host": HostedAgent(agent, load_agent_schema("host"))},
                            facts=dict, policy=DiscoveryOnly())
    out = dispatcher.handle(request("identify", {}))
    assert out.reply.error["code"] == "unauthorized"
    assert "[security] policy" in out.reply.error["message"]
    assert power.calls == []


def test_every_decision_is_audited_without_the_arguments(memory_broker, rules, tmp_path):
    audit = AuditLog(tmp_path / "audit.jsonl")
    memory_broker.enroll("web01", ["host"])
    transport = MemoryTransport(memory_broker, user="x")
    transport.start()
    agent, _, _ = make_host_agent("web01")
    runtime = AgentRuntime(transport, "web01", [agent], heartbeat_interval=0, policy=rules,
                           audit=audit)
    runtime.start()
    secret = {"delay_s": 120, "reason": "secret reason"}
    for delivery in (request("identify", {}, user="bob"), request("reboot", secret),
                     request("reboot", secret, user="alice"), Delivery(
                         b"junk", Properties(message_id="j", reply_to="hostbus.reply.t.x",
                                             user_id="eve"),
                         "hostbus.request", "host.web01")):
        runtime._on_delivery(delivery)
    transport.flush()
    runtime.stop("test over")
    text = (tmp_path / "audit.jsonl").read_text()
    assert "secret reason" not in text
    records = [json.loads(line) for line in text.splitlines()]
    # Refusals are answered on the I/O thread, allowed calls on workers: compare unordered.
    by_caller = {r["caller"]: r for r in records}
    assert sorted(((r["caller"] or ""), r["call"] or "", r["decision"], r["rule"] or "",
                   r["outcome"]) for r in records) == [
        ("alice", "host.reboot", "allowed", "ops reboot slowly", "ok"),
        ("bob", "host.identify", "allowed", "read", "ok"),
        ("eve", "", "refused", "", "bad_message"),  # unparsed, still under its sender
        ("mallory", "host.reboot", "denied", "default-deny", "unauthorized"),
    ]
    assert by_caller["mallory"]["args_digest"] == by_caller["alice"]["args_digest"] == \
        args_digest(secret)
    assert by_caller["alice"]["executed"] and not by_caller["mallory"]["executed"]
    assert all(r["time"] and r["host"] == "web01" for r in records)


def test_the_audit_log_survives_rotation(tmp_path):
    audit = AuditLog(tmp_path / "audit.jsonl")
    audit.write({"n": 1})
    (tmp_path / "audit.jsonl").rename(tmp_path / "audit.jsonl.1")  # logrotate
    audit.write({"n": 2})
    assert json.loads((tmp_path / "audit.jsonl.1").read_text())["n"] == 1
    assert json.loads((tmp_path / "audit.jsonl").read_text())["n"] == 2


HOURS = """
[[rule]]
name = "reboots in the maintenance window"
methods = ["reboot"]
hours = "22:00-06:00"
days = ["sat", "sun"]
timezone = "Europe/Berlin"
allow = true
"""


@pytest.mark.parametrize(("moment", "verdict", "why"), [
    ("2026-11-21T21:30:00Z", True, None),              # Saturday 22:30 in Berlin
    ("2026-11-22T04:59:00Z", True, None),              # Sunday 05:59, past midnight
    ("2026-11-21T12:00:00Z", False, "13:00 is outside 22:00-06:00"),
    ("2026-11-20T21:30:00Z", False, "fri is outside"),  # Friday night
])
def test_rules_with_hours_apply_only_inside_their_window(tmp_path, moment, verdict, why):
    path = tmp_path / "p.toml"
    path.write_text(HOURS)
    rules = RulesPolicy.load(path, "web01")
    decision, trail = rules.explain("alice", "host", "reboot", {}, "web01",
                                    datetime.fromisoformat(moment))
    assert decision.allowed is verdict
    if why:
        assert why in trail[0][1]


@pytest.mark.parametrize(("extra", "fragment"), [
    ('hours = "8-18"', "is not like"),
    ('hours = "08:00-25:00"', "is not like"),
    ('days = ["funday"]', "unknown day"),
    ('timezone = "Mars/Olympus"', "unknown timezone"),
])
def test_bad_time_windows_are_config_errors(tmp_path, extra, fragment):
    path = tmp_path / "p.toml"
    path.write_text(f'[[rule]]\nname = "x"\nallow = true\n{extra}\n')
    with pytest.raises(ConfigError, match=fragment):
        RulesPolicy.load(path, "web01")


def test_a_flood_of_refusals_cannot_fill_the_disk(tmp_path):
    """10 lines per identical refusal per minute, then a count; long values are cut;
    what ran is always written."""
    audit = AuditLog(tmp_path / "audit.jsonl")
    refusal = {"host": "web01", "caller": "mallory", "call": "host.reboot",
               "decision": "denied", "rule": "default-deny", "outcome": "unauthorized",
               "executed": False}
    for n in range(5000):
        audit.write({**refusal, "request_id": f"r{n}"})
    audit.write({**refusal, "caller": "x" * 100_000, "request_id": "long"})
    audit.write({"host": "web01", "caller": "alice", "call": "host.identify",
                 "decision": "allowed", "outcome": "ok", "executed": True})
    audit.close()
    lines = (tmp_path / "audit.jsonl").read_bytes().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 10 + 1 + 1 + 1
    assert all(len(line) <= 4096 for line in lines)
    [long] = [r for r in records if r.get("request_id") == "long"]
    assert long["truncated"] and len(long["caller"]) < 400
    [summary] = [r for r in records if r.get("event") == "repeated"]
    assert summary["count"] == 4990 and summary["caller"] == "mallory"
    assert any(r.get("caller") == "alice" for r in records)
