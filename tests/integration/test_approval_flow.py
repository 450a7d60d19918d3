"""The two-person rule over the real broker: two enrolled consoles, each with its own
broker user and key, and an enrolled agent that signs what it sends."""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from hostbus.security.signing import generate
from tests.fakes import EventCollector

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


def test_an_approval_flow_run_by_two_enrolled_consoles(rabbitmq, enroll, console,
                                                       tmp_path):
    host = f"apr-{uuid.uuid4().hex[:6]}"
    alice, bob = f"alice-{uuid.uuid4().hex[:4]}", f"bob-{uuid.uuid4().hex[:4]}"
    agent_cfg, _ = enroll("agent", host)
    trusted, agent_keys = tmp_path / "trusted", tmp_path / "agent-keys"
    for person in (alice, bob):
        _, pub = generate(person, tmp_path / "keys")
        trusted.mkdir(exist_ok=True)
        (trusted / pub.name).write_text(pub.read_text())
    host_key, host_pub = generate(host, tmp_path / "host-keys")
    agent_keys.mkdir()
    (agent_keys / host_pub.name).write_text(host_pub.read_text())
    policy = tmp_path / "policy.toml"
    policy.write_text(f"""
[groups]
ops = ["{alice}", "{bob}"]
[[rule]]
name = "approvers decide"
callers = ["group:ops"]
agents = ["agent"]
allow = true
[[rule]]
name = "reboots need a second person"
callers = ["group:ops"]
agents = ["host"]
methods = ["reboot"]
requires_approval = true
allow = true
""")
    consoles = {}
    for person in (alice, bob):
        cfg, _ = enroll("console", person)
        with cfg.open("a") as fh:
            fh.write(f'\n[security]\nsigning_key = "{tmp_path / "keys" / (person + ".key")}"\n'
                     f'agent_keys = "{agent_keys}"\n')
        consoles[person] = cfg
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOSTBUS_")}
    online = EventCollector()
    console.subscribe([f"agent.{host}.#"], online)
    proc = subprocess.Popen(
        [str(BIN / "hostbus-agent"), "--config", str(agent_cfg)], stderr=subprocess.PIPE,
        text=True, env={**env, "HOSTBUS_HOST_POWER_CONTROL": "dry-run",
                        "HOSTBUS_SECURITY_POLICY": str(policy),
                        "HOSTBUS_SECURITY_TRUSTED_KEYS": str(trusted),
                        "HOSTBUS_SECURITY_SIGNING_KEY": str(host_key),
                        "HOSTBUS_AGENT_STATE_DIR": str(tmp_path / "state"),
                        "HOSTBUS_SECURITY_AUDIT_LOG": str(tmp_path / "audit.jsonl")})

    def cli(person, *args):
        done = subprocess.run([str(BIN / "hostbus"), "--config", str(consoles[person]), *args],
                              capture_output=True, text=True, env=env, timeout=60,
                              check=False)
        return done.returncode, done.stdout, done.stderr

    try:
        online.wait_for(lambda e: e.event == "online", timeout=30)
        code, out, _ = cli(alice, "call", "host.reboot", "delay_s=90", "-H", host, "--yes",
                           "--json")
        error = json.loads(out)["results"][0]["error"]
        assert code == 7 and error["code"] == "approval_required"
        approval_id = error["details"]["approval_id"]

        code, out, err = cli(bob, "approvals", "list", "-H", host, "--json")
        assert code == 0, err
        [listed] = json.loads(out)["approvals"]
        assert listed["approval_id"] == approval_id and listed["requester"] == alice
        assert listed["args"]["delay_s"] == 90

        code, out, err = cli(alice, "approvals", "approve", approval_id, "-H", host, "--yes")
        assert code == 1 and "two-person rule" in out + err
        # the first characters are enough, as with git's commit ids
        code, out, err = cli(bob, "approvals", "approve", approval_id[:6], "-H", host,
                             "--yes", "--json")
        assert code == 0, out + err
        released = json.loads(out)["result"]["reply"]
        assert released["status"] == "ok"
        assert released["result"]["dry_run"] is True  # power_control = "dry-run" says so
        code, out, err = cli(bob, "approvals", "approve", approval_id, "-H", host, "--yes")
        assert code == 1 and "already approved" in err
        decided = online.wait_for(lambda e: e.event == "approval.decided")
        assert decided.data["by"] == bob and decided.data["outcome"] == "ok"

        # --wait-approval: alice's call waits for bob's decision and prints the result
        waiting = subprocess.Popen(
            [str(BIN / "hostbus"), "--config", str(consoles[alice]), "call", "host.reboot",
             "delay_s=91", "-H", host, "--yes", "--wait-approval", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            parked = online.wait_for(lambda e: e.event == "approval.pending"
                                     and e.data["approval_id"] != approval_id)
            code, out, err = cli(bob, "approvals", "approve", parked.data["approval_id"],
                                 "-H", host, "--yes")
            assert code == 0, out + err
            out, err = waiting.communicate(timeout=60)
        finally:
            if waiting.poll() is None:
                waiting.kill()
        assert waiting.returncode == 0, out + err
        [result] = json.loads(out)["results"]
        assert result["status"] == "ok" and result["result"]["delay_s"] == 91
    finally:
        proc.terminate()
        proc.wait(30)
    log = proc.stderr.read()
    assert log.count("would reboot") == 2, log  # once per approved call, never more
