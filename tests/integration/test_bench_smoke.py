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
    assert {"meta", "call", "fanout", "events", "provisioning", "footprint",
            "targets"} <= set(results)
    assert results["call"]["hostbus"]["n"] == 200
    assert [f["agents"] for f in results["fanout"]] == [10, 50]
    assert all(f["all_replied"] for f in results["fanout"])
    assert results["provisioning"]["requests"] == 3
    assert {t["what"] for t in results["targets"]} >= {"call round trip p50",
                                                       "events / raw pika"}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
