"""Signed requests over the real broker: the daemon requires signatures, the CLI signs
with its key, and forged or replayed messages posted with a plain client are refused."""

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pika
import pytest

from hostbus import names
from hostbus.envelope import new_request
from hostbus.security.signing import Signer, generate
from tests.fakes import EventCollector, raw_connection

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


def test_signed_cli_calls_run_and_forged_or_replayed_requests_do_not(rabbitmq, console,
                                                                     tmp_path):
    host = f"sig-{uuid.uuid4().hex[:6]}"
    rabbitmq.enroll(host, ["host"])
    trusted = tmp_path / "trusted"
    key_path, pub_path = generate("guest", tmp_path / "keys")  # the tests' broker user
    trusted.mkdir()
    (trusted / "guest.pub").write_text(pub_path.read_text())
    (tmp_path / "policy.toml").write_text('[[rule]]\nname = "all"\nallow = true\n')
    agent_cfg = tmp_path / "agent.toml"
    agent_cfg.write_text(
        f'[broker]\nurl = "{rabbitmq.url}"\n[agent]\nhost_id = "{host}"\n'
        f'[security]\npolicy = "policy.toml"\ntrusted_keys = "trusted"\n'
        f'audit_log = "audit.jsonl"\n[host]\npower_control = "dry-run"\n')
    console_cfg = tmp_path / "console.toml"
    console_cfg.write_text(f'[broker]\nurl = "{rabbitmq.url}"\n'
                           f'[security]\nsigning_key = "{key_path}"\n')
    online = EventCollector()
    console.subscribe([f"agent.{host}.online"], online)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOSTBUS_")}
    proc = subprocess.Popen([str(BIN / "hostbus-agent"), "--config", str(agent_cfg)],
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        online.wait_for(lambda e: True, timeout=30)

        def cli(*args, config=None):
            extra = ["--config", str(config)] if config else ["--url", rabbitmq.url]
            return subprocess.run([str(BIN / "hostbus"), *extra, *args], capture_output=True,
                                  text=True, env=env, timeout=60, check=False)

        signed = cli("call", "host.identify", "-H", host, "--json", config=console_cfg)
        assert signed.returncode == 0, signed.stdout + signed.stderr
        unsigned = cli("call", "host.identify", "-H", host, "--json")
        assert unsigned.returncode == 1
        error = json.loads(unsigned.stdout)["results"][0]["error"]
        assert error["code"] == "bad_signature" and "not signed" in error["message"]
        # the host is up and refuses the unsigned ping: refused, with why, not "no reply"
        ping = cli("ping", "-H", host)
        assert ping.returncode == 1, ping.stdout + ping.stderr
        assert "refused" in ping.stdout and "bad_signature" in ping.stdout

        # A plain client replays a signed request it captured, and forges another.
        conn = raw_connection(rabbitmq.url)
        ch = conn.channel()
        reply_q = f"hostbus.reply.guest.{uuid.uuid4().hex[:8]}"
        ch.queue_declare(reply_q, exclusive=True)
        ch.queue_bind(reply_q, "hostbus.reply", routing_key=reply_q)
        req = new_request("host", "reboot", {"delay_s": 60}, host=host, reply_to=reply_q)
        body, props = req.encode()
        props.user_id = "guest"
        Signer.load(key_path).sign(names.REQUEST_EXCHANGE, req.routing_key(), props, body)
        pika_props = pika.BasicProperties(
            message_id=props.message_id, reply_to=reply_q, content_type=props.content_type,
            type=props.type, user_id="guest", headers=props.headers)
        forged = body.replace(b'"delay_s":60', b'"delay_s":0')
        for payload in (body, body, forged):
            ch.basic_publish(names.REQUEST_EXCHANGE, req.routing_key(), payload, pika_props)
        codes = []
        for _m, _p, raw in ch.consume(reply_q, inactivity_timeout=15):
            assert raw is not None, f"missing replies: {codes}"
            reply = json.loads(raw)
            codes.append(reply["error"]["code"] if reply["status"] == "error" else "ok")
            if len(codes) == 3:
                break
        conn.close()
        # The copy is refused as a replay; the altered copy fails verification first.
        # Refusals are answered on the I/O thread, the call on a worker: any order.
        assert sorted(codes) == ["bad_signature", "ok", "replayed"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    log = proc.stderr.read()
    assert log.count("would reboot") == 1, "the replayed request ran again"
    assert "signatures required; trusted keys: guest" in log
