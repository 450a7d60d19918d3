"""`hostbus bench --quick` completes and writes valid JSON (speed is not asserted:
benchmarks measure, tests check)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_bench_quick_completes_and_writes_json_and_a_chart(rabbitmq, tmp_path):
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


@pytest.mark.timeout(900)  # a node of its own, and a 10 s alarm per protocol
def test_bench_faults_reports_every_scenario_on_both_protocols():
    """`hostbus bench --only faults --quick` on a RabbitMQ node of its own: every
    scenario reports its counts (what they are is the benchmark's business)."""
    from hostbus.testing.pytest_plugin import fail_or_skip

    done = subprocess.run([str(Path(sys.executable).parent / "hostbus"), "bench", "--quick",
                           "--only", "faults", "--json"], capture_output=True, text=True,
                          timeout=900, check=False)
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
        assert [b["workers"] for b in row["backlog"]] == [1, 4]


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
