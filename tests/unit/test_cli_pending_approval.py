"""A call the host's policy parks for a second person's approval is pending: shown as
such with the approval id and how it gets approved, exit 7; --wait-approval waits for
the result it has once approved (or its refusal, once denied)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from console.client import Console
from hostbus.security.policy import RulesPolicy
from hostbus.security.signing import Signer, Verifier, generate, read_public_key
from hostbus.serving.approvals import Approvals, ApprovalStore
from hostbus.transport.memory import MemoryTransport
from tests.cli_fleet import Fleet
from tests.fakes import EventCollector

POLICY = """
[[rule]]
name = "reboots need a second person"
callers = ["alice", "bob"]
agents = ["host"]
methods = ["reboot"]
allow = true
requires_approval = true

[[rule]]
name = "the rest is allowed"
callers = ["alice", "bob"]
allow = true
"""


@pytest.fixture
def guarded(fleet: Fleet, tmp_path: Path) -> Fleet:
    """web01 with the two-person rule for reboots; the CLI runs as alice."""
    trusted = {}
    for name in ("alice", "bob"):
        key, pub = generate(name, tmp_path / "keys")
        fleet.signers[name] = Signer.load(key)
        trusted[name] = read_public_key(pub)[1]
    (tmp_path / "policy.toml").write_text(POLICY)
    verifier = Verifier(trusted)
    fleet.add("web01", policy=RulesPolicy.load(tmp_path / "policy.toml", "web01"),
              verifier=verifier,
              approvals=Approvals(ApprovalStore(tmp_path / "approvals.db", 3600), verifier))
    fleet.user = "alice"
    return fleet


def _person(fleet: Fleet, name: str) -> Console:
    transport = MemoryTransport(fleet.broker, user=name)
    transport.start()
    console = Console(transport, signer=fleet.signers[name])
    console.open()
    fleet.consoles.append(console)
    return console


def test_a_parked_call_is_pending_with_its_approval_id_and_exits_7(guarded):
    done = guarded.run("call", "host.reboot", "delay_s=60", "-H", "web01", "--yes")
    assert done.exit_code == 7, done.output
    [aid] = [w for w in done.stdout.split() if len(w) == 12 and w.isalnum()][:1]
    assert "web01  pending" in done.stdout
    assert f"hostbus approvals approve {aid}" in done.stdout
    assert "1 pending approval" in done.stdout and f"web01 ({aid})" in done.stdout
    assert "failed:" not in done.stdout and guarded.power["web01"].calls == []
    as_json = json.loads(guarded.run("call", "host.reboot", "delay_s=60", "-H", "web01",
                                     "--yes", "--json").stdout)
    [res] = as_json["results"]
    assert res["status"] == "pending" and res["approval_id"]
    assert as_json["summary"]["pending"] == 1 and as_json["summary"]["failed"] == 0


def test_an_agent_that_cannot_take_approvals_is_an_error_not_pending(fleet, tmp_path):
    (tmp_path / "policy.toml").write_text(POLICY.replace('"alice", "bob"', '"console"'))
    fleet.add("web01", policy=RulesPolicy.load(tmp_path / "policy.toml", "web01"))
    done = fleet.run("call", "host.reboot", "delay_s=60", "-H", "web01", "--yes")
    assert done.exit_code == 1, done.output
    assert "web01  error" in done.stdout and "trusted_keys" in done.stdout


def _approve_when_parked(fleet: Fleet, decide: str) -> threading.Thread:
    """bob approves (or denies) the first call parked on web01, once it is."""
    bob = _person(fleet, "bob")
    parked = EventCollector()
    bob.subscribe(["agent.web01.approval.pending"], parked)

    def run() -> None:
        event = parked.wait_for(lambda e: e.event == "approval.pending")
        found, _ = bob.approvals(["web01"])
        approval: dict[str, Any] = next(a for a in found
                                        if a["approval_id"] == event.data["approval_id"])
        if decide == "approve":
            bob.approve(approval)
        else:
            bob.deny(approval, "not today")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_wait_approval_prints_the_result_once_approved(guarded):
    approver = _approve_when_parked(guarded, "approve")
    done = guarded.run("call", "host.reboot", "delay_s=60", "-H", "web01", "--yes",
                       "--wait-approval")
    approver.join(10)
    assert done.exit_code == 0, done.output
    assert "waiting for approval of web01" in done.stderr
    assert "web01  pending" in done.stdout and "web01  ok" in done.stdout
    assert done.stdout.rstrip().splitlines()[-1].startswith("1 host: 1 ok, 0 failed")
    assert [a for a, *_ in guarded.power["web01"].calls] == ["reboot"]


def test_wait_approval_json_carries_the_outcome_of_a_denial(guarded):
    approver = _approve_when_parked(guarded, "deny")
    done = guarded.run("call", "host.reboot", "delay_s=60", "-H", "web01", "--yes",
                       "--wait-approval", "--json")
    approver.join(10)
    assert done.exit_code == 1, done.output
    [res] = json.loads(done.stdout)["results"]
    assert res["status"] == "error" and res["error"]["code"] == "unauthorized"
    assert "bob denied" in res["error"]["message"] and "not today" in res["error"]["message"]
    assert guarded.power["web01"].calls == []


def test_ctrl_c_while_waiting_for_approval_leaves_it_parked_and_says_so(guarded, monkeypatch):
    def interrupted(self, parked, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(Console, "await_decisions", interrupted)
    done = guarded.run("call", "host.reboot", "delay_s=60", "-H", "web01", "--yes",
                       "--wait-approval")
    assert done.exit_code == 130, done.output
    assert "1 pending approval" in done.stdout
    assert "stopped waiting: what is still pending stays parked" in done.stderr
    assert guarded.power["web01"].calls == []
