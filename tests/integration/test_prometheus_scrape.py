"""A real Prometheus (Debian's package, on a free port of the test's own) scrapes
`hostbus exporter` over RabbitMQ and answers PromQL about a running agent; it loads the
shipped alerting rules and fires the host alert."""

import json
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from agents.host.alerts import Threshold
from console.client import Console
from console.exporter.main import Exporter
from hostbus.testing.pytest_plugin import fail_or_skip
from tests.rabbit_node import free_port

ETC = Path(__file__).resolve().parents[2] / "etc"


class Prometheus:
    def __init__(self, folder: Path, target: int) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            fail_or_skip("prometheus is missing: ./run.sh test installs Debian's package")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(ETC / "prometheus" / "hostbus-alerts.yml", folder / "rules.yml")
        (folder / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "rule_files: [rules.yml]\n"
            "scrape_configs:\n  - job_name: hostbus\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{target}']\n")
        self.port = free_port()
        self._pause = threading.Event()
        self.proc = subprocess.Popen(
            [binary, f"--config.file={folder / 'prometheus.yml'}",
             f"--storage.tsdb.path={folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=(folder / "prometheus.log").open("w"))

    def api(self, path: str, **params: str) -> dict:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=5) as resp:
            answer = json.loads(resp.read())
        assert answer["status"] == "success", answer
        return answer["data"]

    def until(self, what: str, found, timeout: float = 60.0):
        """Ask ``what`` (a query, or 'alerts') until ``found(data)`` is truthy."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.api("alerts") if what == "alerts" else self.api(
                    "query", query=what)
                result = found(last)
                if result:
                    return result
            except OSError:
                pass  # still starting
            if self.proc.poll() is not None:
                pytest.fail(f"prometheus exited {self.proc.returncode}")
            self._pause.wait(0.5)  # it scrapes and evaluates every second: ask again
        pytest.fail(f"Prometheus never answered {what!r} as expected; last: {last}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def sample(host):
    """The value of a query's one series for ``host``, if there is one."""
    def find(data):
        for series in data["result"]:
            if series["metric"].get("host") == host:
                return float(series["value"][1]) + 1e-9  # truthy even when 0
        return None
    return find


def test_prometheus_scrapes_the_exporter_and_fires_the_host_alert(rabbitmq, start_agent,
                                                                  tmp_path):
    console = Console.connect(rabbitmq.url)
    exporter = Exporter(console, listen=("127.0.0.1", 0), patterns=["#"], probe_interval=0.5)
    exporter.start()
    prometheus = Prometheus(tmp_path / "prometheus", exporter.port)
    try:
        runtime, _ = start_agent(metrics_interval=0.5, heartbeat=1.0,
                                 alerts={"cpu_percent": Threshold(-1, -2)})  # always raised
        host = runtime.host_id
        assert prometheus.until(f'hostbus_agent_up{{host="{host}"}}', sample(host)) > 1
        cpu = prometheus.until(f'hostbus_host_cpu_usage_ratio{{host="{host}"}}', sample(host))
        assert 0 < cpu <= 1.01
        assert prometheus.until(f'hostbus_host_memory_total_bytes{{host="{host}"}}',
                                sample(host)) > 1 << 20
        events = 'sum(hostbus_events_total{agent="host", event="metrics"})'
        assert prometheus.until(events, lambda d: d["result"] and float(
            d["result"][0]["value"][1]) >= 2)
        p50 = ("histogram_quantile(0.5, sum by (le) "
               "(rate(hostbus_call_duration_seconds_bucket[1m])))")
        assert prometheus.until(p50, lambda d: d["result"] and d["result"][0]["value"][1]
                                not in ("NaN", "+Inf"))

        def firing(data):
            return [a for a in data["alerts"] if a["labels"]["alertname"] ==
                    "HostbusHostAlertRaised" and a["labels"].get("host") == host
                    and a["state"] == "firing"]

        alert = prometheus.until("alerts", firing)[0]
        assert alert["labels"]["metric"] == "cpu_percent"
        rules = prometheus.api("rules")["groups"][0]["rules"]
        assert {r["name"] for r in rules} >= {"HostbusAgentDown", "HostbusSpoolDropping"}
        assert all(r["health"] == "ok" for r in rules)

        runtime.stop("test over")  # agent.offline: down at the next scrape
        down = f'hostbus_agent_up{{host="{host}"}} == 0'
        assert prometheus.until(down, sample(host))
    finally:
        prometheus.stop()
        exporter.stop()
        console.close()
