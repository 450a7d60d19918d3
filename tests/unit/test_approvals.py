"""The two-person rule: a request that needs approval is parked, runs only after someone
else approves exactly that request, and never runs when the approval is wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from console.client import Console
from hostbus import codec
from hostbus.security.audit import AuditLog
from hostbus.security.policy import Rule, RulesPolicy
from hostbus.security.signing import Signer, Verifier, generate, read_public_key
from hostbus.serving.approvals import Approvals, ApprovalStore
from hostbus.serving.runtime import AgentRuntime
from hostbus.transport.memory import MemoryTransport
from tests.fakes import EventCollector, make_host_agent

POLICY = """
[groups]
ops = ["alice", "bob", "carol"]
approvers = ["bob", "carol"]

[[rule]]
name = "approvers decide"
callers = ["group:approvers", "alice"]
agents = ["agent"]
methods = ["approvals", "approve", "deny", "ping"]
allow = true

[[rule]]
name = "reboots need a second person"
callers = ["group:ops"]
agents = ["host"]
methods = ["reboot"]
allow = true
requires_approval = true

[[rule]]
name = "ops read"
callers = ["group:ops"]
agents = ["host"]
methods = ["identify"]
allow = true
"""


class Fleet:
    """One host agent (fakes for power) and a console per person, on the memory broker."""

    def __init__(self, broker: Any, tmp: Path, ttl_s: float = 3600.0) -> None:
        self.broker, self.tmp = broker, tmp
        self.signers: dict[str, Signer] = {}
        trusted = {}
        for name in ("alice", "bob", "carol", "mallory"):
            key, pub = generate(name, tmp / "keys")
            self.signers[name] = Signer.load(key)
            if name != "mallory":
                trusted[name] = read_public_key(pub)[1]
        self.verifier = Verifier(trusted)
        (tmp / "policy.toml").write_text(POLICY)
        broker.enroll("web01", ["host"])
        self.store = ApprovalStore(tmp / "approvals.db", ttl_s)
        self.audit = AuditLog(tmp / "audit.jsonl")
        self.agent, _, self.power = make_host_agent("web01")
        transport = MemoryTransport(broker, user="web01")
        transport.start()
        self.runtime = AgentRuntime(
            transport, "web01", [self.agent], heartbeat_interval=0,
            policy=RulesPolicy.load(tmp / "policy.toml", "web01"), verifier=self.verifier,
            approvals=Approvals(self.store, self.verifier), audit=self.audit)
        self.runtime.start()
        self.consoles: dict[str, Console] = {}
        watcher = self.console("carol")
        self.events = EventCollector()
        watcher.subscribe(["agent.web01.approval.#"], self.events)

    def console(self, name: str) -> Console:
        if name not in self.consoles:
            transport = MemoryTransport(self.broker, user=name)
            transport.start()
            console = Console(transport, signer=self.signers[name])
            console.open()
            self.consoles[name] = console
        return self.consoles[name]

    def ask_reboot(self, who: str = "alice") -> dict[str, Any]:
        res = self.console(who).call("host", "reboot", {"delay_s": 60}, host="web01")
        assert res.reply.error["code"] == "approval_required", res.reply.error
        return res.reply.error["details"]

    def listed(self, approval_id: str, state: str = "pending") -> dict[str, Any]:
        found, _ = self.console("bob").approvals(["web01"], state=state)
        return next(a for a in found if a["approval_id"] == approval_id)

    def close(self) -> None:
        self.runtime.stop("test over")
        for console in self.consoles.values():
            console.close()


@pytest.fixture
def fleet(memory_broker, tmp_path):
    made = Fleet(memory_broker, tmp_path)
    yield made
    made.close()


def test_a_request_needing_approval_is_parked_and_told_so(fleet):
    details = fleet.ask_reboot()
    assert fleet.power.calls == []
    assert details["rule"] == "reboots need a second person"
    listed = fleet.listed(details["approval_id"])
    assert listed["requester"] == "alice" and listed["call"] == "host.reboot"
    assert listed["args"]["delay_s"] == 60 and listed["digest"] == details["digest"]
    ev = fleet.events.wait_for(lambda e: e.event == "approval.pending")
    assert ev.data["approval_id"] == details["approval_id"]


def test_a_second_person_approves_and_the_request_runs_once(fleet):
    details = fleet.ask_reboot()
    approval = fleet.listed(details["approval_id"])
    res = fleet.console("bob").approve(approval)
    assert res.status == "ok", res.reply.error
    assert res.reply.result["reply"]["status"] == "ok"
    assert res.reply.result["requester"] == "alice"
    assert fleet.power.calls == [("reboot", 60, "requested through hostbus")]
    again = fleet.console("carol").approve(approval)
    assert again.reply.error["code"] == "replayed" and "already approved by bob" in \
        again.reply.error["message"]
    assert len(fleet.power.calls) == 1
    decided = fleet.events.wait_for(lambda e: e.event == "approval.decided")
    assert decided.data == {"approval_id": details["approval_id"], "requester": "alice",
                            "call": "host.reboot", "decision": "approved", "by": "bob",
                            "outcome": "ok"}
    assert fleet.listed(details["approval_id"], "all")["state"] == "approved"
    records = [codec.decode_object(line.encode())
               for line in (fleet.tmp / "audit.jsonl").read_text().splitlines()]
    ran = [r for r in records if r["call"] == "host.reboot" and r["executed"]]
    assert len(ran) == 1 and ran[0]["approved_by"] == "bob" and ran[0]["caller"] == "alice"


def test_the_requester_cannot_approve_their_own_request(fleet):
    details = fleet.ask_reboot("bob")
    res = fleet.console("bob").approve(fleet.listed(details["approval_id"]))
    assert res.reply.error["code"] == "unauthorized"
    assert "two-person rule" in res.reply.error["message"]
    assert fleet.power.calls == []
    assert fleet.listed(details["approval_id"])["state"] == "pending"


def test_an_approval_for_a_different_request_releases_nothing(fleet):
    first = fleet.ask_reboot()
    second = fleet.ask_reboot()
    swapped = dict(fleet.listed(first["approval_id"]), digest=second["digest"])
    res = fleet.console("bob").approve(swapped)
    assert res.reply.error["code"] == "unauthorized"
    assert "different request" in res.reply.error["message"]
    assert fleet.power.calls == []


def test_an_unsigned_or_untrusted_approval_is_refused(fleet):
    details = fleet.ask_reboot()
    approval = fleet.listed(details["approval_id"])
    unsigned = fleet.console("bob")
    unsigned.signer = None
    assert unsigned.approve(approval).reply.error["code"] == "bad_signature"
    assert fleet.console("mallory").approve(approval).reply.error["code"] == "bad_signature"
    assert fleet.power.calls == []


def test_someone_the_policy_does_not_name_cannot_approve(fleet):
    details = fleet.ask_reboot()
    fleet.verifier.trusted["dave"] = fleet.verifier.trusted["bob"]
    fleet.signers["dave"] = fleet.signers["bob"]
    res = fleet.console("dave").approve(fleet.listed(details["approval_id"]))
    assert res.reply.error["code"] == "unauthorized" and "default deny" in \
        res.reply.error["message"]
    assert fleet.power.calls == []


def test_a_denied_request_never_runs_and_its_requester_learns_why(fleet):
    details = fleet.ask_reboot()
    res = fleet.console("bob").deny(fleet.listed(details["approval_id"]), "not today")
    assert res.status == "ok"
    assert fleet.console("carol").approve(fleet.listed(details["approval_id"], "all")) \
        .reply.error["code"] == "replayed"
    assert fleet.power.calls == []
    decided = fleet.events.wait_for(lambda e: e.event == "approval.decided")
    assert decided.data["decision"] == "denied" and decided.data["outcome"] == "unauthorized"


def test_a_revoked_requester_key_stops_the_release(fleet):
    details = fleet.ask_reboot()
    del fleet.verifier.trusted["alice"]
    res = fleet.console("bob").approve(fleet.listed(details["approval_id"]))
    assert res.reply.error["code"] == "bad_signature" and "alice" in res.reply.error["message"]
    assert fleet.power.calls == []


def test_pending_approvals_expire_and_cannot_be_approved(memory_broker, tmp_path):
    fleet = Fleet(memory_broker, tmp_path, ttl_s=0)
    try:
        details = fleet.ask_reboot()
        res = fleet.console("bob").approve({"host": "web01", **details})
        assert res.reply.error["code"] == "expired"
        assert "ask again" in res.reply.error["message"]
        decided = fleet.events.wait_for(lambda e: e.event == "approval.decided")
        assert decided.data["decision"] == "expired"
        assert fleet.power.calls == []
    finally:
        fleet.close()


def test_parked_requests_survive_an_agent_restart(fleet):
    details = fleet.ask_reboot()
    reopened = ApprovalStore(fleet.tmp / "approvals.db")
    [parked] = reopened.list()
    assert parked.approval_id == details["approval_id"]
    assert parked.body and parked.properties["user_id"] == "alice"


def test_an_agent_without_trusted_keys_refuses_approvals_and_says_why(memory_broker):
    memory_broker.enroll("web02", ["host"])
    transport = MemoryTransport(memory_broker, user="web02")
    transport.start()
    agent, _, power = make_host_agent("web02")
    policy = RulesPolicy([Rule("needs approval", True, requires_approval=True)], {}, "web02")
    runtime = AgentRuntime(transport, "web02", [agent], heartbeat_interval=0, policy=policy)
    runtime.start()
    t = MemoryTransport(memory_broker, user="alice")
    t.start()
    console = Console(t)
    console.open()
    try:
        res = console.call("host", "reboot", {"delay_s": 60}, host="web02")
        assert res.reply.error["code"] == "approval_required"
        assert "trusted_keys" in res.reply.error["message"]
        assert power.calls == []
    finally:
        runtime.stop("test over")
        console.close()
