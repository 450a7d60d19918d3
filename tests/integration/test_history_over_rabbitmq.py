"""The historian over RabbitMQ with each store: `hostbus historian --setup`, the daemon,
`hostbus history` after an agent restart, and `hostbus watch --since`."""

import json
import os
import re
import subprocess
import tomllib
import uuid

import pytest

from console.history.store import Query, Row, SQLiteStore, open_store
from hostbus import codec
from hostbus.serving.runtime import AgentRuntime
from tests.integration.conftest import BIN

ALERT = {"metric": "cpu_percent", "resource": "", "state": "raised", "value": 95.0,
         "raise_at": 90.0, "clear_at": 80.0}


@pytest.fixture(params=["sqlite", "postgresql"])
def store_at(request, tmp_path):
    """Where a store lives: an SQLite file, or a PostgreSQL database of the test's own."""
    if request.param == "sqlite":
        return str(tmp_path / "history.db")
    return request.getfixturevalue("postgres_url")


def row(seq, t_ms, host="web01", epoch="e1"):
    body = codec.encode({"seq": seq, "pad": "x" * 200})
    return Row(host, "host", "alert", epoch, seq, t_ms, t_ms, f"m{seq}", host, body)


def test_each_store_keeps_a_repeat_once_pages_and_forgets_by_age_and_size(store_at):
    store = open_store(store_at)
    try:
        assert store.insert([row(i, i * 1000) for i in range(1, 101)]) == 100
        assert store.insert([row(5, 5000), row(101, 101_000)]) == 1  # one repeat
        st = store.stats()
        assert st.events == 101 and st.oldest_ms == 1000 and st.newest_ms == 101_000
        first = store.query(Query(since_ms=10_000, limit=40))
        rest = store.query(Query(since_ms=10_000, limit=1000,
                                 after=(first[-1][1].time_ms, first[-1][0])))
        assert [r.seq for _, r in first + rest] == list(range(10, 102))
        assert store.apply_retention(max_age_s=50, max_bytes=0, now_ms=101_000) == 50
        assert store.stats().oldest_ms == 51_000
        keep = sum(r.size for r in [row(i, 0) for i in range(91, 102)])
        store.apply_retention(max_age_s=0, max_bytes=keep)
        assert [r.seq for _, r in store.query(Query())] == list(range(91, 102))
        assert store.stats().bytes == keep
    finally:
        store.close()


def test_a_store_opened_again_has_what_it_had(tmp_path):
    store = SQLiteStore(tmp_path / "h.db")
    store.insert([row(1, 1000)])
    store.close()
    again = SQLiteStore(tmp_path / "h.db")
    assert again.stats().events == 1 and again.insert([row(1, 1000)]) == 0
    again.close()


def cli(rabbitmq, *args, timeout=60):
    env = {**os.environ, "HOSTBUS_BROKER_URL": rabbitmq.url}
    return subprocess.run([str(BIN / "hostbus"), *args], capture_output=True, text=True,
                          env=env, timeout=timeout, check=False)


@pytest.fixture
def historian(rabbitmq, tmp_path, postgres_url):
    """`hostbus historian --setup`, enrolled as a service of its own (it may read its
    queue and publish its own events, nothing else), then the daemon on PostgreSQL."""
    host_id = f"hist-{uuid.uuid4().hex[:6]}"
    setup = cli(rabbitmq, "historian", "--setup", "--admin-url", rabbitmq.admin_url)
    assert setup.returncode == 0, setup.stderr
    assert "hostbus.history" in setup.stdout and "made" in setup.stdout
    written = tmp_path / "enrolled.toml"
    enrolled = cli(rabbitmq, "broker", "enroll-service", host_id, "--agents", "history",
                   "--queue", "hostbus.history", "-o", str(written), "--admin-url",
                   rabbitmq.admin_url)
    assert enrolled.returncode == 0, enrolled.stderr
    url = tomllib.loads(written.read_text())["broker"]["url"]
    if rabbitmq.transport == "amqp10":
        url = url.replace("amqp://", "amqp10://", 1)
    (tmp_path / "policy.toml").write_text('[[rule]]\nname = "tests"\nallow = true\n')
    cfg = tmp_path / "historian.toml"
    cfg.write_text(f'[broker]\nurl = "{url}"\n[historian]\nhost_id = "{host_id}"\n'
                   f'store = "{postgres_url}"\nstate_dir = "{tmp_path / "state"}"\n'
                   f'policy = "policy.toml"\nheartbeat_interval = 3600.0\n')
    check = subprocess.run([str(BIN / "hostbus"), "historian", "--config", str(cfg),
                            "--check-config"], capture_output=True, text=True, timeout=60,
                           check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "policy: 1 rules" in check.stdout and "127.0.0.1:5432/hostbus_test_" in check.stdout
    proc = subprocess.Popen([str(BIN / "hostbus"), "historian", "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if "storing hostbus.history" in line:
            break
    else:
        pytest.fail(f"the historian did not start (exit {proc.wait()})")
    try:
        yield host_id
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
        rabbitmq.admin.revoke(host_id)  # broker users are global, vhosts are not


@pytest.mark.hostbus_core
def test_history_after_an_agent_restart_and_watch_since(rabbitmq, historian):
    host_id = f"web-{uuid.uuid4().hex[:6]}"
    rabbitmq.enroll(host_id, ["host"])
    first = AgentRuntime.serve(rabbitmq.url, host_id, [], heartbeat_interval=0)
    first.emit("agent", "heartbeat", {"agents": [], "version": "t", "epoch": first.epoch,
                                      "uptime_s": 1.0, "interval_s": 10.0})
    first.stop("restarting")
    second = AgentRuntime.serve(rabbitmq.url, host_id, [], heartbeat_interval=0)
    try:
        wanted = ["online", "heartbeat", "offline", "online"]
        done = cli(rabbitmq, "history", f"agent.{host_id}.#", "--json",
                   "--historian", historian)
        assert done.returncode == 0, done.stderr
        got = [json.loads(line) for line in done.stdout.splitlines()]
        assert [e["event"] for e in got] == wanted
        assert [e["seq"] for e in got] == [1, 2, 3, 1]
        assert got[0]["epoch"] == got[2]["epoch"] == first.epoch != got[3]["epoch"]
        assert got[3]["epoch"] == second.epoch and got[0]["user_id"] == "guest"

        # watch --since: the four above from the history, then live ones, each once
        watch = subprocess.Popen(
            [str(BIN / "hostbus"), "watch", f"agent.{host_id}.#", "--since", "1h",
             "-n", "14", "--historian", historian],
            env={**os.environ, "HOSTBUS_BROKER_URL": rabbitmq.url},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert "watching" in watch.stderr.readline()  # subscribed: now publish
        for _ in range(10):
            second.emit("agent", "heartbeat", {"agents": [], "version": "t",
                                               "epoch": second.epoch, "uptime_s": 1.0,
                                               "interval_s": 10.0})
        out, err = watch.communicate(timeout=60)
        assert watch.returncode == 0, err
        seqs = [int(m) for m in re.findall(r"  #(\d+)  ", out)]
        assert seqs == [1, 2, 3, *range(1, 12)], out
        assert "gap" not in err
    finally:
        second.stop("test over")
