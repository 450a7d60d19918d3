"""`hostbus bench --quick` completes and writes valid JSON (speed is not asserted:
benchmarks measure, tests check)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_bench_quick_completes_and_writes_json_and_a_chart(rabbitmq, tmp_path):
    """Whatever the console's URL scheme, the bench measures the same things (its
    baselines over 0-9-1, AMQP 1.0 in a section of its own): the whole quick run once,
    and with an amqp10:// URL only that such a URL is taken and the broker reached."""
    if rabbitmq.transport != "amqp091":
        done = subprocess.run([str(Path(sys.executable).parent / "hostbus"), "bench",
                               "--quick", "--only", "call", "--calls", "10", "--json"],
                              capture_output=True, text=True, env=rabbitmq.env, timeout=300,
                              check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads(done.stdout)["call"]["hostbus"]["n"] == 10
        return
    png = tmp_path / "bench.png"
    env = rabbitmq.env
    done = subprocess.run([str(Path(sys.executable).parent / "hostbus"), "bench", "--quick",
                           "--json", "--png", str(png)], capture_output=True, text=True,
                          env=env, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout)
    assert {"meta", "call", "fanout", "events", "placement", "provisioning", "footprint",
            "tracing", "targets"} <= set(results)
    assert results["tracing"]["on"]["n"] == results["tracing"]["off"]["n"] == 200
    assert results["call"]["hostbus"]["n"] == 200
    assert [f["agents"] for f in results["fanout"]] == [10, 50]
    assert all(f["all_replied"] for f in results["fanout"])
    assert all(f["raw_pika_ms"] > 0 and f["ratio_to_raw"] > 0 for f in results["fanout"])
    assert results["meta"]["machine"]["cores"] >= 1 and results["meta"]["machine"]["cpu"]
    assert results["meta"]["wakeup_us"]["before"]["p50"] > 0
    assert results["provisioning"]["requests"] == 3
    assert results["provisioning"]["direct_defines"]["vms"] == 3
    assert results["placement"]["hosts"] == 100 and results["placement"]["plain"]["n"] == 500
    assert {t["what"] for t in results["targets"]} >= {"call round trip p50",
                                                       "events / raw pika"}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_history_measures_both_stores_and_the_stream(rabbitmq, postgres_url):
    """`hostbus bench --only history --quick`: each store against its raw driver,
    ingest through the broker, queries, the stream question (the figures are the
    benchmark's business)."""
    from tests.postgres import SERVER

    done = subprocess.run([str(Path(sys.executable).parent / "hostbus"), "bench", "--quick",
                           "--only", "history", "--json", "--history-postgres", SERVER],
                          capture_output=True, text=True, env=rabbitmq.env, timeout=600,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    history = json.loads(done.stdout)["history"]
    assert set(history["insert"]) == set(history["query"]) == {"sqlite", "postgresql"}
    assert history["ingest"]["sqlite_per_s"] > 0 and history["ingest"]["postgresql_per_s"] > 0
    for store in history["query"].values():
        assert store["stored"] == 20_000 and len(store["queries"]) == 4
    assert set(history["stream"]) == {"classic", "stream"}


@pytest.mark.timeout(900)  # a node of its own, and a 5 s alarm per protocol
def test_bench_faults_reports_every_scenario_on_both_protocols():
    """`hostbus bench --only faults --quick` on a RabbitMQ node of its own: every
    scenario reports its counts (what they are is the benchmark's business). The
    shortest alarm the option takes: the smoke checks the scenario runs and reports,
    --quick's 10 s measure nothing more here."""
    from hostbus.testing.pytest_plugin import fail_or_skip

    done = subprocess.run([str(Path(sys.executable).parent / "hostbus"), "bench", "--quick",
                           "--only", "faults", "--alarm-seconds", "5", "--json"],
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    faults = json.loads(done.stdout)["faults"]
    if "error" in faults:
        fail_or_skip(faults["error"])
    assert set(faults) == {"amqp091", "amqp10"}
    for row in faults.values():
        for scenario in ("crash", "alarm", "queue_deleted"):
            counts = row[scenario]
            assert counts["sent"] > 0 and counts["delivered"] >= counts["sent"] - counts["lost"]
            assert {"lost", "duplicated", "reordered", "recovery_s"} <= set(counts)
        assert row["alarm"]["alarm_s"] == 5
        assert [b["workers"] for b in row["backlog"]] == [1, 4]


def test_bench_reactor_handles_the_whole_burst_and_acts_on_each_failing_check(rabbitmq):
    """`hostbus bench --only reactor --quick`: every event handled (none dropped), one
    action per failing check, against raw pika."""
    if rabbitmq.transport != "amqp091":
        pytest.skip("the benchmark speaks 0-9-1 whatever the test's transport: run once")
    done = subprocess.run([str(Path(sys.executable).parent / "hostbus"), "bench", "--quick",
                           "--only", "reactor", "--json"], capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)["reactor"]
    assert result["dropped"] == 0 and result["events"] == 1000 and result["rules"] == 100
    assert result["actions"] == 200
    assert result["rules_evaluated_per_s"] > 0 and result["raw_events_per_s"] > 0


def test_bench_manager_restarts_every_ha_vm_of_the_lost_host_elsewhere(rabbitmq):
    """`hostbus bench --only manager --quick` (20 simulated virt hosts, 200 VMs): the
    manager knows them all, decides, plans, restarts on its state file, and the 5 HA VMs
    of the host it loses run on other hosts (the figures are the benchmark's)."""
    if rabbitmq.transport != "amqp091":
        pytest.skip("the benchmark speaks 0-9-1 whatever the test's transport: run once")
    done = subprocess.run([str(Path(sys.executable).parent / "hostbus"), "bench", "--quick",
                           "--only", "manager", "--json"], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)["manager"]
    assert (result["hosts"], result["vms"]) == (20, 200)
    assert result["ha_restart"]["vms"] == 5 and result["ha_restart"]["on_lost_host"] is False
    assert result["decision_ms"]["kept_index"]["n"] == 100
    assert result["plan"]["host_down_moves"] == 5
    assert result["restart_s"]["listed"] >= result["restart_s"]["active"] > 0
    assert result["rss_mb"]["with_manager"] > 0


@pytest.mark.timeout(600)  # a node of its own
def test_bench_scale_enrolls_in_bulk_and_reports_the_brokers_cost():
    """`hostbus bench --only scale --quick` on a RabbitMQ node of its own: the hosts are
    enrolled both ways and the agents connected (the figures are the benchmark's)."""
    done = subprocess.run([str(Path(sys.executable).parent / "hostbus"), "bench", "--quick",
                           "--only", "scale", "--scale-hosts", "600", "--scale-agents", "5",
                           "--json"], capture_output=True, text=True, timeout=600,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    scale = json.loads(done.stdout)["scale"]
    assert scale["hosts"] == 600 and scale["agents"] == 5
    assert scale["enroll"]["bulk_s"] > 0 and scale["enroll"]["one_by_one_per_host_ms"] > 0
    assert {"erlang", "rss"} == set(scale["memory_per_connected_agent_kib"])
    # both idle phases in the one run, the second on the node restarted with the
    # statistics interval raised, as the node itself reports it
    assert scale["idle_cpu"]["collect_statistics_interval_ms"] == 5000
    assert scale["idle_cpu_stats_raised"]["collect_statistics_interval_ms"] == 60_000
    for phase in (scale["idle_cpu"], scale["idle_cpu_stats_raised"]):
        assert phase["connected_percent_of_a_core"] > 0


@pytest.mark.timeout(1200)  # the first run installs oslo.messaging and nameko
def test_bench_peers_measures_hostbus_and_both_peers_in_one_run():
    """`hostbus bench --only peers --quick`: call, broadcast and events for raw pika,
    hostbus, oslo.messaging and nameko on the test broker, each peer from a virtual
    environment of its own (installed on first use), never from hostbus's. The peers
    speak AMQP 0-9-1 only, so this runs once, not once per transport (the bench makes
    a vhost of its own)."""
    import importlib.util

    done = subprocess.run([str(Path(sys.executable).parent / "hostbus"), "bench", "--quick",
                           "--only", "peers", "--json"], capture_output=True, text=True,
                          env=_bench_env(), timeout=1200, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout)
    peers = results["peers"]
    sides = {"raw_pika", "hostbus", "oslo.messaging", "nameko"}
    assert set(peers["peers"]) == {"oslo.messaging", "nameko"}
    for side in sides:
        assert peers["call"][side]["n"] == 200
        assert peers["broadcast"][side]["n"] == 3
        assert len(peers["events"][side]["per_s"]) == 1 and peers["events"][side]["per_s"][0] > 0
    assert peers["broadcast"]["servers"] == 10
    assert set(peers["call"]["over_hostbus"]) == sides - {"hostbus"}
    assert {"oslo.messaging call p50 / hostbus call p50",
            "nameko events/s / hostbus's"} <= {t["what"] for t in results["targets"]}
    for module in ("oslo_messaging", "nameko", "eventlet"):  # never in hostbus's environment
        assert importlib.util.find_spec(module) is None


def _bench_env(**extra: str) -> dict[str, str]:
    return {**os.environ,
            "HOSTBUS_BROKER_URL": os.environ.get("HOSTBUS_TEST_AMQP",
                                                 "amqp://guest:guest@127.0.0.1:5672"),
            "HOSTBUS_CONSOLE_ADMIN_URL": os.environ.get("HOSTBUS_TEST_ADMIN_URL",
                                                        "http://guest:guest@127.0.0.1:15672"),
            **extra}


def test_bench_peers_that_cannot_be_installed_are_named_and_leave_nothing(tmp_path):
    """No package index: `hostbus bench --only peers` exits 1 with pip's reason and the
    peer it could not install, and leaves no half-made venv in its cache."""
    cache = tmp_path / "peers"
    done = subprocess.run([str(Path(sys.executable).parent / "hostbus"), "bench", "--quick",
                           "--only", "peers"], capture_output=True, text=True, timeout=300,
                          env=_bench_env(HOSTBUS_BENCH_PEERS_CACHE=str(cache), PIP_NO_INDEX="1",
                                         PIP_FIND_LINKS=str(tmp_path / "no-wheels")),
                          check=False)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "could not pip install oslo.messaging==18.3.1" in done.stderr
    assert "No matching distribution" in done.stderr
    assert "Traceback" not in done.stderr
    assert list(cache.iterdir()) == []


def test_bench_fanout10k_broadcast_reports_the_consoles_and_the_brokers_memory(rabbitmq):
    """`hostbus bench --only fanout10k`'s measurement at 20 agents in the test's vhost
    (the benchmark itself starts a node of its own for 10,000): every reply back in each
    round, the console's memory from a process of its own, the broker's at each step."""
    if rabbitmq.transport != "amqp091":
        pytest.skip("the benchmark speaks 0-9-1 whatever the test's transport: run once")
    from benchmarks.fanout10k import measure, text
    from benchmarks.harness import Bench

    result = measure(Bench(rabbitmq.admin, rabbitmq.vhost, rabbitmq.amqp), 20, rounds=1)
    assert result["all_replied"] and len(result["return_ms_each"]) == 1
    assert result["raw_pika_ms"] > 0 and result["ratio_to_raw"] > 0
    console = result["console_kib"]
    assert 0 < console["before_import"] < console["imported"] <= console["peak"]
    assert set(result["broker_kib"]) == {"before", "enrolled", "consuming",
                                         "after_broadcasts"}
    assert all(m["mem_used"] > 0 for m in result["broker_kib"].values())
    assert "20 simulated agents" in text(result)[0]
