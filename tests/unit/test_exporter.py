"""The exporter's metrics from events, their names, and the dashboard and alerting rules
shipped in etc/ checked against them (promtool parses and tests the rules)."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from console.exporter.metrics import FleetMetrics
from hostbus.envelope import Event
from hostbus.testing.pytest_plugin import fail_or_skip

ETC = Path(__file__).resolve().parents[2] / "etc"
HEARTBEAT = {"agents": ["host", "virt"], "version": "0.1.0", "epoch": "e1", "uptime_s": 60.0,
             "interval_s": 10.0, "requests": 7,
             "events": {"spooled": 3, "dropped": 2, "rejected": 1, "unconfirmed": 4},
             "status": {"virt": {"unallocated_memory_bytes": 8 << 30, "free_vcpus": 6,
                                 "domains_running": 2, "templates": ["web"]},
                        "history": {"stored": 100, "repeats": 0, "refused": 0}}}
METRICS = {"time": "2026-11-21T10:00:00.000Z", "cpu_percent": 25.0, "load": [0.5, 0.4, 0.3],
           "memory": {"total_bytes": 1000, "available_bytes": 600, "used_bytes": 400,
                      "percent": 40.0},
           "disks": [{"mountpoint": "/", "percent": 81.0}]}
ALERT = {"metric": "disk_percent", "resource": "/var", "state": "raised", "value": 91.0,
         "raise_at": 90.0, "clear_at": 85.0}


class Clock:
    now = 1000.0

    def __call__(self):
        return self.now


def ev(agent, event, data, host="web01", seq=1):
    return Event(host=host, agent=agent, event=event, data=data, seq=seq, epoch="e1")


def scrape(registry):
    """{(sample name, labels as a sorted tuple): value} as Prometheus would read it."""
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples, name, **labels):
    return samples[(name, tuple(sorted(labels.items())))]


def a_fleet():
    """A registry fed one of every event the exporter reads."""
    clock = Clock()
    registry = CollectorRegistry()
    fleet = FleetMetrics(registry, clock=clock)
    fleet.observe(ev("provision", "accepted", {"request_id": "r1", "owner": "a",
                                               "template": "web", "count": 1}, host="prov"))
    clock.now += 42.0
    fleet.observe(ev("provision", "completed", {"request_id": "r1", "vms": []}, host="prov",
                     seq=2))
    fleet.observe(ev("agent", "online", {"agents": ["host"], "version": "0.1.0",
                                         "epoch": "e1", "facts": {}}))
    fleet.observe(ev("agent", "heartbeat", HEARTBEAT, seq=2))
    fleet.observe(ev("host", "metrics", METRICS))
    fleet.observe(ev("host", "alert", ALERT, seq=2))
    fleet.calls.labels("agent", "ping").observe(0.0008)
    return registry, fleet, clock


def test_what_the_events_said_is_exported_in_base_units():
    registry, _, _ = a_fleet()
    s = scrape(registry)
    assert value(s, "hostbus_agent_up", host="web01") == 1
    assert value(s, "hostbus_host_cpu_usage_ratio", host="web01") == 0.25
    assert value(s, "hostbus_host_load_average", host="web01", period="5m") == 0.4
    assert value(s, "hostbus_host_memory_used_bytes", host="web01") == 400
    assert value(s, "hostbus_host_disk_used_ratio", host="web01", mountpoint="/") == 0.81
    assert value(s, "hostbus_host_alert_active", host="web01", metric="disk_percent",
                 resource="/var") == 1
    assert value(s, "hostbus_agent_events_dropped_total", host="web01") == 2
    assert value(s, "hostbus_agent_events_spooled", host="web01") == 3
    assert value(s, "hostbus_agent_requests_total", host="web01") == 7
    assert value(s, "hostbus_virt_memory_unallocated_bytes", host="web01") == 8 << 30
    assert value(s, "hostbus_history_events_stored_total", host="web01") == 100
    assert value(s, "hostbus_events_total", agent="host", event="alert") == 1
    assert value(s, "hostbus_provision_duration_seconds_count", outcome="completed") == 1
    assert value(s, "hostbus_provision_duration_seconds_sum", outcome="completed") == 42.0
    assert value(s, "hostbus_provision_requests_total", outcome="completed") == 1
    assert value(s, "hostbus_call_duration_seconds_bucket", agent="agent", method="ping",
                 le="0.001") == 1


def test_an_agent_is_down_after_offline_or_three_missed_heartbeats():
    registry, fleet, clock = a_fleet()
    beat = clock.now
    clock.now = beat + 29.0  # 29 s after the last heartbeat (interval 10 s): still up
    assert value(scrape(registry), "hostbus_agent_up", host="web01") == 1
    clock.now = beat + 31.0
    s = scrape(registry)
    assert value(s, "hostbus_agent_up", host="web01") == 0
    assert value(s, "hostbus_agent_heartbeat_age_seconds", host="web01") == 31.0
    fleet.observe(ev("agent", "heartbeat", HEARTBEAT, seq=3))
    assert value(scrape(registry), "hostbus_agent_up", host="web01") == 1
    fleet.observe(ev("agent", "offline", {"reason": "SIGTERM"}, seq=4))
    assert value(scrape(registry), "hostbus_agent_up", host="web01") == 0


def test_a_cleared_alert_reads_zero_and_a_long_silent_host_is_forgotten():
    registry, fleet, clock = a_fleet()
    fleet.observe(ev("host", "alert", {**ALERT, "state": "cleared", "value": 80.0}, seq=3))
    assert value(scrape(registry), "hostbus_host_alert_active", host="web01",
                 metric="disk_percent", resource="/var") == 0
    clock.now += 86400.0 + 1
    assert not any(labels and dict(labels).get("host") == "web01"
                   for _, labels in scrape(registry))


def test_malformed_event_data_is_skipped_and_scrapes_go_on():
    registry, fleet, _ = a_fleet()
    fleet.observe(ev("host", "metrics", {**METRICS, "cpu_percent": "lots"}, seq=5))
    fleet.observe(ev("host", "alert", {"state": "raised"}, seq=6))
    fleet.observe(ev("agent", "heartbeat", {**HEARTBEAT, "events": "none"}, seq=7))
    s = scrape(registry)
    assert value(s, "hostbus_host_cpu_usage_ratio", host="web01") == 0.25  # the last good
    assert value(s, "hostbus_agent_up", host="web01") == 1


def test_labels_stay_bounded_whatever_a_host_sends():
    registry, fleet, _ = a_fleet()
    for i in range(300):
        fleet.observe(ev("host", f"made_up_{i}", {}, seq=10 + i))
        fleet.observe(ev("host", "alert", {**ALERT, "resource": f"/x{i}"}, seq=400 + i))
    fleet.observe(ev("host", "metrics", {**METRICS, "disks": [
        {"mountpoint": f"/d{i}", "percent": 1.0} for i in range(300)]}, seq=900))
    s = scrape(registry)
    assert value(s, "hostbus_events_total", agent="other", event="other") == 300
    alerts = [k for k in s if k[0] == "hostbus_host_alert_active"]
    disks = [k for k in s if k[0] == "hostbus_host_disk_used_ratio"]
    assert len(alerts) == len(disks) == 100


def exported_names():
    registry, _, _ = a_fleet()
    text = generate_latest(registry).decode()
    families = list(text_string_to_metric_families(text))
    return families, {s.name for f in families for s in f.samples}


def test_names_follow_prometheus_conventions():
    families, _ = exported_names()
    unbounded = {"request_id", "vm", "name", "epoch", "message_id", "user_id"}
    for family in families:
        assert family.name.startswith("hostbus_"), family.name
        assert family.documentation, family.name
        for sample in family.samples:
            assert not unbounded & set(sample.labels), sample
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples)
        for unit in ("_percent", "_ms", "_kb", "_mb"):
            assert unit not in family.name, f"{family.name}: base units (ratio, seconds, bytes)"


def promql_of_dashboard():
    dashboard = json.loads((ETC / "grafana" / "hostbus-dashboard.json").read_text())
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p["targets"]]


def rules():
    doc = yaml.safe_load((ETC / "prometheus" / "hostbus-alerts.yml").read_text())
    return [r for group in doc["groups"] for r in group["rules"]]


def test_every_dashboard_and_alert_query_names_only_exported_metrics():
    _, names = exported_names()
    queries = promql_of_dashboard() + [(r["alert"], r["expr"]) for r in rules()]
    assert len(queries) >= 20
    for title, expr in queries:
        used = set(re.findall(r"\bhostbus_[a-z0-9_]+\b", expr))
        assert used, f"{title}: {expr} reads no hostbus metric"
        assert used <= names, f"{title}: {sorted(used - names)} are not exported"
    alerts = {r["alert"] for r in rules()}
    assert {"HostbusAgentDown", "HostbusSpoolDropping", "HostbusHostAlertRaised"} <= alerts


def promtool():
    tool = shutil.which("promtool")
    if tool is None:
        fail_or_skip("promtool is missing: ./run.sh test installs Debian's prometheus")
    return tool


def test_promtool_parses_every_dashboard_query(tmp_path):
    """Each panel's PromQL as a recording rule: promtool refuses one that does not parse."""
    recorded = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:panel_{i}", "expr": expr}
        for i, (_, expr) in enumerate(promql_of_dashboard())]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(recorded))
    done = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    path.write_text(yaml.safe_dump({"groups": [{"name": "bad", "rules": [
        {"record": "x:y", "expr": "sum(hostbus_agent_up"}]}]}))  # the check can fail
    assert subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True,
                          timeout=60, check=False).returncode != 0


def test_the_alerting_rules_check_and_pass_their_unit_tests():
    check = subprocess.run([promtool(), "check", "rules", "hostbus-alerts.yml"],
                           cwd=ETC / "prometheus", capture_output=True, text=True, timeout=60,
                           check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    tested = subprocess.run([promtool(), "test", "rules", "hostbus-alerts.test.yml"],
                            cwd=ETC / "prometheus", capture_output=True, text=True,
                            timeout=60, check=False)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_shipped_prometheus_config_checks(tmp_path):
    text = (ETC / "prometheus" / "prometheus.yml").read_text().replace(
        "/etc/prometheus/hostbus-alerts.yml", str(ETC / "prometheus" / "hostbus-alerts.yml"))
    path = tmp_path / "prometheus.yml"
    path.write_text(text)
    done = subprocess.run([promtool(), "check", "config", str(path)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 5 rules found" in done.stdout + done.stderr
