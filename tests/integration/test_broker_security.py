"""Layer 1, broker least privilege: each identity gets its own broker user with the
rights DESIGN section 7 gives it, and the broker itself refuses the rest (tested with a
plain AMQP client and the enrolled credentials)."""

import json
import os
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path

import pika
import pytest

from tests.fakes import EventCollector, raw_connection

pytestmark = [pytest.mark.integration, pytest.mark.hostbus_core]
BIN = Path(sys.executable).parent


def refusal(url, action):
    """Run ``action(channel)``; return the broker's refusal code (None if allowed)."""
    conn = raw_connection(url)
    ch = conn.channel()
    try:
        action(ch)
        ch.basic_qos(prefetch_count=1)  # a round trip: an asynchronous refusal shows here
        return None
    except pika.exceptions.ChannelClosedByBroker as exc:
        return exc.reply_code
    finally:
        if conn.is_open:
            conn.close()


def name(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def test_the_broker_refuses_an_agent_anything_outside_its_grant(rabbitmq, enroll):
    host, other = name("sec"), name("sec")
    rabbitmq.enroll(other, ["host"])
    _, url = enroll("agent", host)
    props = pika.BasicProperties(user_id=host)
    assert refusal(url, lambda ch: ch.basic_publish(
        "hostbus.event", f"host.{host}.metrics", b"{}", props)) is None
    assert refusal(url, lambda ch: ch.basic_publish("hostbus.reply", "hostbus.reply.x.y",
                                                    b"{}", props)) is None
    assert refusal(url, lambda ch: ch.basic_consume(f"hostbus.host.{host}",
                                                    lambda *a: None)) is None
    assert refusal(url, lambda ch: ch.basic_consume(f"hostbus.host.{host}.agent",
                                                    lambda *a: None)) is None
    # ...and nothing else:
    assert refusal(url, lambda ch: ch.basic_publish(
        "hostbus.event", f"host.{other}.metrics", b"{}", props)) == 403  # as another host
    assert refusal(url, lambda ch: ch.basic_publish(
        "hostbus.request", f"host.{other}", b"{}", props)) == 403  # any request
    assert refusal(url, lambda ch: ch.basic_publish(
        "", f"hostbus.host.{other}", b"{}", props)) == 403  # around the exchanges
    assert refusal(url, lambda ch: ch.basic_consume(
        f"hostbus.host.{other}", lambda *a: None)) == 403  # another host's queue
    assert refusal(url, lambda ch: ch.basic_consume(
        f"hostbus.host.{other}.agent", lambda *a: None)) == 403  # ...either of them
    assert refusal(url, lambda ch: ch.queue_declare("hostbus.sub.x")) == 403  # configure
    assert refusal(url, lambda ch: ch.basic_publish(
        "hostbus.event", f"host.{host}.metrics", b"{}",
        pika.BasicProperties(user_id="someone-else"))) == 406  # a forged user_id


def test_the_broker_refuses_an_app_anything_but_provisioning(rabbitmq, enroll):
    app = name("app")
    _, url = enroll("app", app)
    own = f"hostbus.reply.{app}.q1"

    def own_reply_queue(ch):
        ch.queue_declare(own, exclusive=True)
        ch.queue_bind(own, "hostbus.reply", routing_key=own)

    assert refusal(url, own_reply_queue) is None
    assert refusal(url, lambda ch: ch.basic_publish(
        "hostbus.provision", "provision", b"{}", pika.BasicProperties(user_id=app))) is None
    assert refusal(url, lambda ch: ch.basic_publish(
        "hostbus.request", "host.any", b"{}")) == 403
    assert refusal(url, lambda ch: ch.queue_declare(f"hostbus.reply.{name('other')}.q")) == 403
    assert refusal(url, lambda ch: ch.queue_declare(f"hostbus.sub.{app}.x")) == 403

    def spy_on_events(ch):
        ch.queue_declare(own, exclusive=True)
        ch.queue_bind(own, "hostbus.event", routing_key="#")

    assert refusal(url, spy_on_events) == 403
    assert refusal(url, lambda ch: ch.basic_consume("hostbus.provision",
                                                    lambda *a: None)) == 403


def test_a_request_the_broker_refuses_fails_at_once_with_the_brokers_words(rabbitmq,
                                                                          enroll):
    """An app may not send requests: the caller hears the broker's reason straight away,
    over either transport, instead of waiting out its timeout for a reply."""
    from console.client import Console
    from hostbus.errors import BrokerRefused

    app = name("app")
    _, url = enroll("app", app)
    console = Console.connect(url)
    try:
        with pytest.raises(BrokerRefused) as info:
            console.call("agent", "ping", host="web01", timeout=120)
        # RabbitMQ 3.x says ACCESS_REFUSED; 4.x over AMQP 1.0, amqp:unauthorized-access
        assert "ACCESS_REFUSED" in str(info.value) or "unauthorized" in str(info.value)
        assert "access to exchange 'hostbus.request'" in str(info.value)
        assert f"user '{app}'" in str(info.value)
    finally:
        console.close()


def test_enrolled_agent_and_console_work_with_their_own_users(rabbitmq, enroll, tmp_path,
                                                              console):
    host, operator = name("sec"), name("ops")
    agent_cfg, _ = enroll("agent", host)
    console_cfg, console_url = enroll("console", operator)
    assert tomllib.loads(agent_cfg.read_text())["agent"] == {"host_id": host,
                                                             "agents": ["host"]}
    online = EventCollector()
    console.subscribe([f"agent.{host}.online"], online)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOSTBUS_")}
    policy = tmp_path / "policy.toml"
    policy.write_text(f'[[rule]]\nname = "operator"\ncallers = ["{operator}"]\nallow = true\n')
    proc = subprocess.Popen([str(BIN / "hostbus-agent"), "--config", str(agent_cfg)],
                            stderr=subprocess.PIPE, text=True,
                            env={**env, "HOSTBUS_HOST_POWER_CONTROL": "dry-run",
                                 "HOSTBUS_SECURITY_POLICY": str(policy),
                                 "HOSTBUS_SECURITY_AUDIT_LOG": str(tmp_path / "audit.jsonl")})
    try:
        event = online.wait_for(lambda e: True, timeout=30)
        assert event.user_id == host  # the broker checked who published it
        done = subprocess.run([str(BIN / "hostbus"), "--config", str(console_cfg), "call",
                               "host.identify", "-H", host, "--json"], capture_output=True,
                              text=True, env=env, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["results"][0]["result"]["host_id"] == host
        found = subprocess.run([str(BIN / "hostbus"), "--config", str(console_cfg), "agents",
                                "-H", host, "--json"], capture_output=True, text=True,
                               env=env, timeout=60, check=False)
        assert found.returncode == 0 and json.loads(found.stdout)["count"] == 1
    finally:
        proc.terminate()
        proc.wait(30)
    # The console's own rights do not stretch to another console's queues.
    assert refusal(console_url, lambda ch: ch.queue_declare(
        f"hostbus.reply.{name('someone')}.x", exclusive=True)) == 403


def test_revoked_identities_cannot_connect(rabbitmq, enroll):
    who = name("gone")
    _, url = enroll("console", who)
    done = enroll.run("broker", "revoke", who, "--json")
    assert done.returncode == 0 and json.loads(done.stdout) == {"user": who, "revoked": True}
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        raw_connection(url)
    again = enroll.run("broker", "revoke", who)
    assert again.returncode == 3 and f"no broker user {who}" in again.stderr
    dup = name("dup")
    existing = enroll.run("broker", "enroll-console", dup, "-o", "/dev/null")
    assert existing.returncode == 2 and "pass --force" in existing.stderr
    assert not rabbitmq.admin.revoke(dup), "a refused enrollment left a broker user behind"
