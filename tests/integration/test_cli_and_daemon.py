"""The real entry points as subprocesses: hostbus-agent and the hostbus CLI."""

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.fakes import EventCollector, raw_connection

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Hosts found by discovery are noted for completion: here, not in the user's cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def run_cli(rabbitmq, *args, timeout=60):
    env = rabbitmq.env
    return subprocess.run([str(BIN / "hostbus"), *args], capture_output=True, text=True,
                          env=env, timeout=timeout, check=False)


@pytest.fixture
def daemon(rabbitmq, tmp_path):
    """Start hostbus-agent from a config file, as an operator would."""
    procs = []

    def start(host_id=None, enroll=True, extra="", policy=True):
        host_id = host_id or f"it-{uuid.uuid4().hex[:8]}"
        if enroll:
            rabbitmq.enroll(host_id, ["host"])
        rules = tmp_path / "policy.toml"
        rules.write_text('[[rule]]\nname = "tests may do anything"\nallow = true\n')
        cfg = tmp_path / f"{host_id}.toml"
        cfg.write_text(
            f'[broker]\nurl = "{rabbitmq.url}"\n'
            f'[agent]\nhost_id = "{host_id}"\nheartbeat_interval = 0.5\n'
            f'state_dir = "state"\n'
            f'[agent.facts]\nsuite = "cli"\n'
            f'[security]\npolicy = "{"policy.toml" if policy else ""}"\n'
            f'audit_log = "audit-{host_id}.jsonl"\n'
            f'[host]\nmetrics_interval = 0.5\npower_control = "dry-run"\n{extra}'
        )
        proc = subprocess.Popen([str(BIN / "hostbus-agent"), "--config", str(cfg)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        return host_id, proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_daemon_goes_online_serves_the_cli_and_goes_offline_on_sigterm(
        rabbitmq, console, daemon):
    waiter = EventCollector()
    console.subscribe(["agent.#"], waiter)
    host, proc = daemon()
    waiter.wait_for(lambda e: e.host == host and e.event == "online")

    agents = run_cli(rabbitmq, "agents", "--where", "suite=cli", "--json")
    assert agents.returncode == 0, agents.stderr
    listed = json.loads(agents.stdout)
    assert host in [a["host"] for a in listed["agents"]]

    ident = run_cli(rabbitmq, "call", "host.identify", "-H", host, "--json")
    assert ident.returncode == 0, ident.stderr
    out = json.loads(ident.stdout)
    assert out["results"][0]["status"] == "ok"
    assert out["results"][0]["result"]["host_id"] == host
    assert out["summary"] == {**out["summary"], "hosts": 1, "ok": 1, "failed": 0,
                              "no_reply": 0}

    human = run_cli(rabbitmq, "call", "host.processes", "limit=2", "-H", host)
    assert human.returncode == 0 and "1 host: 1 ok" in human.stdout

    query = run_cli(rabbitmq, "query", "host.disk", "-H", host, "--json")
    assert query.returncode == 0
    assert any(o["mountpoint"] == "/" for o in json.loads(query.stdout)["objects"])

    watch = run_cli(rabbitmq, "watch", f"agent.{host}.heartbeat", "-n", "2", "--json")
    assert watch.returncode == 0
    beats = [json.loads(line) for line in watch.stdout.splitlines()]
    assert [b["event"] for b in beats] == ["heartbeat", "heartbeat"]
    assert beats[1]["seq"] == beats[0]["seq"] + 1

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    offline = waiter.wait_for(lambda e: e.host == host and e.event == "offline")
    assert offline.data == {"reason": "SIGTERM"}
    log = proc.stderr.read()
    assert f"online as host {host}" in log and "offline (SIGTERM)" in log


def test_exit_codes_say_what_happened(rabbitmq, daemon, console):
    waiter = EventCollector()
    console.subscribe(["agent.#"], waiter)
    host, _ = daemon()
    waiter.wait_for(lambda e: e.host == host and e.event == "online")

    rabbitmq.enroll("it-ghost", ["host"])  # enrolled, but no agent runs there
    missing = run_cli(rabbitmq, "call", "host.identify", "-H", host, "-H", "it-ghost",
                      "--timeout", "1", "--json")
    assert missing.returncode == 4
    statuses = {r["host"]: r["status"] for r in json.loads(missing.stdout)["results"]}
    assert statuses == {host: "ok", "it-ghost": "no_reply"}

    failed = run_cli(rabbitmq, "call", "host.services", "-H", host, "--json")
    services_ok = json.loads(failed.stdout)["results"][0]["status"] == "ok"  # systemd or not
    assert failed.returncode == (0 if services_ok else 1)

    nothing = run_cli(rabbitmq, "agents", "--where", "suite=nosuchsuite", "--json")
    assert nothing.returncode == 3 and json.loads(nothing.stdout)["count"] == 0

    bad_arg = run_cli(rabbitmq, "call", "host.processes", "limit=many", "-H", host)
    assert bad_arg.returncode == 2 and "limit='many': expected integer" in bad_arg.stderr

    dangerous = run_cli(rabbitmq, "call", "host.reboot", "-H", host)
    assert dangerous.returncode == 2 and "pass --yes" in dangerous.stderr

    env = {**os.environ, "HOSTBUS_BROKER_URL": "amqp://guest:guest@127.0.0.1:1/hostbus"}
    down = subprocess.run([str(BIN / "hostbus"), "agents"], capture_output=True, text=True,
                          env=env, timeout=30, check=False)
    assert down.returncode == 5 and "connection refused" in down.stderr


def test_an_unenrolled_host_is_told_how_to_enroll(daemon):
    host, proc = daemon(enroll=False)
    assert proc.wait(timeout=30) == 3
    assert f"hostbus broker enroll {host} --agents host" in proc.stderr.read()


def test_a_config_mistake_is_named_and_the_daemon_does_not_start(daemon):
    _, proc = daemon(extra="[host.alerts]\ncpu_percnt = { raise = 1, clear = 0 }\n")
    assert proc.wait(timeout=30) == 1
    assert "unknown key 'host.alerts.cpu_percnt'" in proc.stderr.read()


def test_broker_setup_and_enroll_are_idempotent(rabbitmq):
    for _ in range(2):
        setup = run_cli(rabbitmq, "broker", "setup", "--vhost", rabbitmq.vhost, "--json")
        assert setup.returncode == 0, setup.stderr
        assert json.loads(setup.stdout)["exchanges"] == 5
    host = f"it-{uuid.uuid4().hex[:8]}"
    for _ in range(2):
        enroll = run_cli(rabbitmq, "broker", "enroll", host, "--agents", "host", "--no-user",
                         "--json")
        assert enroll.returncode == 0, enroll.stderr
    assert json.loads(enroll.stdout)["routing_keys"] == [
        f"host.{host}", "host._all", f"agent.{host}", "agent._all"]
    for queue, keys in ((f"hostbus.host.{host}", [f"host.{host}", "host._all"]),
                        (f"hostbus.host.{host}.agent", [f"agent.{host}", "agent._all"])):
        bindings = rabbitmq.admin._call("GET",
                                        f"/api/queues/{rabbitmq.vhost}/{queue}/bindings")
        assert sorted(b["routing_key"] for b in bindings
                      if b["source"] == "hostbus.request") == sorted(keys)
    bad = run_cli(rabbitmq, "broker", "enroll", "Bad.Host")
    assert bad.returncode == 2 and "no dots" in bad.stderr


def test_the_readme_examples_work_without_hostbus(rabbitmq, daemon, console):
    """examples/raw_*.py use only pika and the documented contract."""
    waiter = EventCollector()
    console.subscribe(["agent.#"], waiter)
    host, _ = daemon()
    waiter.wait_for(lambda e: e.host == host and e.event == "online")
    root = Path(__file__).resolve().parents[2]
    for script in ("raw_call.py", "raw_events.py"):
        assert "import hostbus" not in (root / "examples" / script).read_text()
    call = subprocess.run(
        [sys.executable, str(root / "examples" / "raw_call.py"), "--url", rabbitmq.raw_url,
         "--host", host, "host.processes", '{"limit": 2}'],
        capture_output=True, text=True, timeout=30, check=False)
    assert call.returncode == 0, call.stderr
    reply = json.loads(call.stdout)
    assert reply["status"] == "ok" and len(reply["result"]["processes"]) == 2
    events = subprocess.run(
        [sys.executable, str(root / "examples" / "raw_events.py"), f"agent.{host}.heartbeat",
         "--url", rabbitmq.raw_url, "--count", "2"],
        capture_output=True, text=True, timeout=30, check=False)
    assert events.returncode == 0, events.stderr
    assert events.stdout.count(f"agent.{host}.heartbeat") == 2


def test_an_agent_without_a_policy_answers_discovery_only_and_audits(rabbitmq, daemon,
                                                                     console, tmp_path):
    events = EventCollector()
    console.subscribe(["agent.#"], events)
    host, proc = daemon(extra="", policy=False)
    events.wait_for(lambda e: e.host == host and e.event == "online")
    assert console.discover(expect=[host], filter={"host": host})  # discovery: yes
    refused = console.call("host", "identify", host=host)
    if refused.reply is None:
        proc.terminate()
        pytest.fail(f"no reply; the agent said: {proc.communicate(timeout=30)[1][-2000:]}")
    assert refused.reply.error["code"] == "unauthorized"
    assert "[security] policy" in refused.reply.error["message"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    records = [json.loads(line) for line in
               (tmp_path / f"audit-{host}.jsonl").read_text().splitlines()]
    identify = [r for r in records if r["call"] == "host.identify"]
    assert identify and identify[0]["decision"] == "denied"
    assert identify[0]["rule"] == "no-policy" and identify[0]["caller"] == "guest"
    assert not identify[0]["executed"]


def test_a_request_repeated_after_an_agent_restart_does_not_run_twice(rabbitmq, daemon,
                                                                      console):
    import pika

    from hostbus import names
    from hostbus.envelope import new_request

    events = EventCollector()
    console.subscribe(["agent.#"], events)
    host, first = daemon()
    events.wait_for(lambda e: e.host == host and e.event == "online")
    conn = raw_connection(rabbitmq.url)
    ch = conn.channel()
    reply_q = f"hostbus.reply.guest.{uuid.uuid4().hex[:8]}"
    ch.queue_declare(reply_q, exclusive=True)
    ch.queue_bind(reply_q, "hostbus.reply", routing_key=reply_q)
    req = new_request("host", "reboot", {"delay_s": 60}, host=host, timeout=120,
                      reply_to=reply_q)
    body, props = req.encode()
    pika_props = pika.BasicProperties(message_id=props.message_id, reply_to=reply_q,
                                      content_type=props.content_type, type=props.type,
                                      user_id="guest")

    def send_and_read():
        ch.basic_publish(names.REQUEST_EXCHANGE, req.routing_key(), body, pika_props)
        for _m, _p, raw in ch.consume(reply_q, inactivity_timeout=20):
            ch.cancel()
            assert raw is not None, "no reply"
            return json.loads(raw)
        return None

    assert send_and_read()["status"] == "ok"
    first.send_signal(signal.SIGTERM)
    assert first.wait(30) == 0
    epoch = next(e for e, _ in events.events if e.host == host and e.event == "online").epoch
    host, second = daemon(host_id=host, enroll=False)  # same state folder
    events.wait_for(lambda e: e.host == host and e.event == "online" and e.epoch != epoch)
    repeat = send_and_read()
    conn.close()
    assert repeat["error"]["code"] == "replayed"
    assert repeat["error"]["details"]["earlier_reply"]["status"] == "ok"
    second.send_signal(signal.SIGTERM)
    second.wait(30)
    logs = first.stderr.read() + second.stderr.read()
    assert logs.count("would reboot") == 1, "the repeated request ran again"


def test_watch_ends_quietly_when_its_reader_goes_away(rabbitmq, daemon, console):
    """`hostbus watch | head -1`: the events keep coming, the reader is gone."""
    waiter = EventCollector()
    console.subscribe(["agent.#"], waiter)
    host, _ = daemon()  # a heartbeat every 0.5 s
    waiter.wait_for(lambda e: e.host == host and e.event == "online")
    env = {**os.environ, "HOSTBUS_BROKER_URL": rabbitmq.url}
    watch = subprocess.Popen([str(BIN / "hostbus"), "watch", f"agent.{host}.heartbeat"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        assert b"heartbeat" in watch.stdout.readline()
        watch.stdout.close()  # as head -1 does after its line
        assert watch.wait(timeout=30) == 141
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    stderr = watch.stderr.read().decode()
    assert "Traceback" not in stderr and "Broken pipe" not in stderr, stderr


def test_a_named_watch_is_bound_to_exactly_its_patterns_and_can_be_deleted(rabbitmq, daemon,
                                                                           console):
    waiter = EventCollector()
    console.subscribe(["agent.#"], waiter)
    host, _ = daemon()  # metrics and heartbeats every 0.5 s
    waiter.wait_for(lambda e: e.host == host and e.event == "online")
    name = f"it{uuid.uuid4().hex[:6]}"
    first = run_cli(rabbitmq, "watch", "--name", name, f"host.{host}.metrics", "-n", "1")
    assert first.returncode == 0, first.stderr
    second = run_cli(rabbitmq, "watch", "--name", name, f"agent.{host}.heartbeat", "-n", "3",
                     "--json")
    assert second.returncode == 0, second.stderr
    assert [json.loads(line)["event"] for line in second.stdout.splitlines()] == [
        "heartbeat"] * 3
    header = run_cli(rabbitmq, "watch", "--name", name, f"host.{host}.alert", "-d", "0.1")
    assert f"no longer bound to agent.{host}.heartbeat" in header.stderr

    listed = run_cli(rabbitmq, "subscriptions", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    mine = [s for s in json.loads(listed.stdout)["subscriptions"] if s["name"] == name]
    assert [s["patterns"] for s in mine] == [[f"host.{host}.alert"]]
    assert run_cli(rabbitmq, "subscriptions", "delete", name).returncode == 0
    again = run_cli(rabbitmq, "subscriptions", "delete", name)
    assert again.returncode == 3 and "no subscription" in again.stderr


def test_ctrl_c_during_a_call_prints_what_arrived_and_exits_130(rabbitmq, daemon, console):
    waiter = EventCollector()
    console.subscribe(["agent.#"], waiter)
    host, _ = daemon()
    waiter.wait_for(lambda e: e.host == host and e.event == "online")
    env = {**os.environ, "HOSTBUS_BROKER_URL": rabbitmq.url}
    rabbitmq.enroll("it-ghost", ["host"])
    hung = raw_connection(rabbitmq.url)  # a hung agent: takes requests, never answers
    hung.channel().basic_consume("hostbus.host.it-ghost", lambda *_msg: None)
    call = subprocess.Popen([str(BIN / "hostbus"), "call", "host.identify", "-H", host,
                             "-H", "it-ghost", "-t", "60"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        first = call.stdout.readline()  # the answering host's result, as it arrived
        assert first.startswith(host) and " ok " in first, first
        call.send_signal(signal.SIGINT)
        assert call.wait(timeout=30) == 130
    finally:
        if call.poll() is None:
            call.kill()
            call.wait()
        hung.close()
    rest = call.stdout.read()
    assert "1 host: 1 ok" in rest and "interrupted: 1 host not waited for" in rest
    assert "interrupted: 1 of 2 hosts answered" in call.stderr.read()


def test_a_call_that_loses_the_broker_ends_at_once_without_reconnect_chatter(rabbitmq):
    from hostbus import names
    from tests.tcp_proxy import TcpProxy

    host = f"ghost-{uuid.uuid4().hex[:6]}"
    rabbitmq.enroll(host, ["host"])  # no agent: the call waits for its timeout
    proxy = TcpProxy.to(rabbitmq.url)
    conn = raw_connection(rabbitmq.url)
    arrived = []
    conn.channel().basic_consume(names.host_queue(host),
                                 lambda *msg: arrived.append(msg), auto_ack=True)
    proc = subprocess.Popen(
        [str(BIN / "hostbus"), "call", "host.identify", "-H", host, "-t", "120"],
        env={**rabbitmq.env, "HOSTBUS_BROKER_URL": proxy.url(rabbitmq.url)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):  # the request is out: the CLI waits for its reply
            conn.process_data_events(time_limit=0.1)
            if arrived or proc.poll() is not None:
                break
        assert arrived, proc.communicate()
        proxy.refuse()  # the broker is gone for good, for this client
        proxy.cut()
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        conn.close()
        proxy.close()
    assert proc.returncode == 5, err
    assert "hostbus: the broker connection was lost" in err
    assert "reconnecting" not in err and "next try" not in err, err


def test_a_named_host_whose_agent_is_not_running_is_said_offline(rabbitmq):
    host = f"off-{uuid.uuid4().hex[:6]}"
    rabbitmq.enroll(host, ["host"])  # its queue exists; no agent consumes it
    done = run_cli(rabbitmq, "call", "host.identify", "-H", host, "-t", "3", "--json")
    assert done.returncode == 4, done.stderr
    [res] = json.loads(done.stdout)["results"]
    if rabbitmq.transport == "amqp10":  # AMQP 1.0 cannot ask a queue's consumers
        assert "error" not in res
    else:
        assert f"{host} is offline: nothing consumes its queue" in res["error"]["message"]


def test_unenroll_removes_a_host_and_requests_for_it_are_refused_at_once(rabbitmq):
    host = f"gone-{uuid.uuid4().hex[:6]}"
    done = run_cli(rabbitmq, "broker", "enroll", host, "--no-user")
    assert done.returncode == 0, done.stderr
    done = run_cli(rabbitmq, "broker", "unenroll", host, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["queues"] == [f"hostbus.host.{host}",
                                                 f"hostbus.host.{host}.agent"]
    again = run_cli(rabbitmq, "broker", "unenroll", host)
    assert again.returncode == 3 and "is not enrolled" in again.stderr
    if rabbitmq.transport != "amqp10":  # RabbitMQ 3.10 drops unroutable 1.0 messages
        call = run_cli(rabbitmq, "call", "host.identify", "-H", host, "-t", "30")
        assert call.returncode == 6, call.stdout + call.stderr
