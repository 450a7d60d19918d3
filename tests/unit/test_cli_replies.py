"""What a reply says is shown as a person reads it: a dry run says so."""

from __future__ import annotations

import json

import pytest


def test_a_dry_run_reboot_says_nothing_was_done(fleet):
    fleet.add("web01")  # RecordingPower: what power_control = "dry-run" uses
    done = fleet.run("call", "host.reboot", "delay_s=300", "-H", "web01", "--yes")
    assert done.exit_code == 0, done.output
    assert "dry run: nothing was done" in done.stdout
    [res] = json.loads(fleet.run("call", "host.shutdown", "-H", "web01", "--yes",
                                 "--json").stdout)["results"]
    assert res["result"]["dry_run"] is True and res["result"]["action"] == "shutdown"


def test_a_real_power_controller_says_it_is_no_dry_run():
    from agents.host.power import SystemPower

    assert SystemPower.dry_run is False


def test_tables_show_sizes_and_durations_as_people_read_them_json_stays_raw(fleet):
    fleet.add("web01")
    done = fleet.run("call", "host.processes", "sort=memory", "limit=1", "-H", "web01")
    assert done.exit_code == 0, done.output
    assert "76.3 MiB" in done.stdout and "80000000" not in done.stdout  # rss 80,000,000
    [res] = json.loads(fleet.run("call", "host.processes", "sort=memory", "limit=1",
                                 "-H", "web01", "--json").stdout)["results"]
    assert res["result"]["processes"][0]["rss_bytes"] == 80_000_000
    done = fleet.run("call", "host.reboot", "delay_s=3900", "-H", "web01", "--yes")
    assert "1 h 5 min" in done.stdout


@pytest.mark.parametrize(("key", "value", "shown"), [
    ("memory.total_bytes", 25_324_732_416, "23.6 GiB"),
    ("rss_bytes", 512, "512 B"),
    ("memory_mib", 1024, "1.0 GiB"),
    ("bandwidth_mib_s", 100, "100.0 MiB/s"),
    ("memory_bytes_per_s", 2048, "2.0 KiB/s"),
    ("uptime_s", 1020, "17 min"),
    ("delay_s", 45, "45 s"),
    ("cpu_time_ns", 90 * 10**9, "1 min 30 s"),
    ("dirty_pages_per_s", 12, "12"),
    ("rtt_ms", 1.5, "1.5"),
    ("pid", 4242, "4242"),
    ("dry_run", True, "True"),
])
def test_humanized_units(key, value, shown):
    from console.render import humanized

    assert humanized(key, value) == shown


def test_a_failed_provisioning_event_does_not_say_failed_twice():
    from console.render import event_line
    from hostbus.envelope import Event

    ev = Event(agent="provision", host="prov01", event="failed", seq=3, epoch="e",
               time="2026-12-01T10:00:00.000Z",
               data={"request_id": "cc8dceb3", "code": "failed",
                     "reason": "no virt host offers template 'nosuch'; templates on offer: "
                               "db, web"})
    line = event_line(ev)
    assert "request cc8dceb3 failed: no virt host offers template 'nosuch'" in line
    assert "failed: failed" not in line and "templates on offer: db, web" in line
