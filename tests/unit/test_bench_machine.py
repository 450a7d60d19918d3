"""The bench names the machine it ran on and measures its thread wake-up latency."""

from pathlib import Path

from benchmarks import machine, report


def test_cpu_model_is_read_from_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\n"
                    "model name\t: AMD EPYC 7B13 64-Core Processor\n")
    assert machine.cpu_model(info) == "AMD EPYC 7B13 64-Core Processor"


def test_cpu_model_falls_back_when_cpuinfo_is_missing(tmp_path: Path) -> None:
    assert machine.cpu_model(tmp_path / "absent")  # platform's answer, never empty


def test_wakeup_latency_measures_every_round() -> None:
    wake = machine.wakeup_latency(rounds=300, warm=10)
    assert wake["n"] == 300
    assert 0 < wake["p50"] <= wake["p99"]


def test_report_names_the_machine_and_its_wakeup_latency() -> None:
    results = {"meta": {"when": "now", "cpus": 2, "broker": "3.10",
                        "machine": {"cpu": "Test CPU 9000", "cores": 2, "usable_cores": 2,
                                    "kernel": "Linux 6", "arch": "x86_64",
                                    "python": "3.11"},
                        "wakeup_us": {"before": {"p50": 41.2, "p99": 180.0},
                                      "after": {"p50": 55.0, "p99": 300.0}}}}
    text = report.text(results)
    assert "Test CPU 9000, 2 cores" in text
    assert "thread wake-up 41 us p50, 180 us p99" in text
    assert "thread wake-up 55 us p50, 300 us p99" in text


def test_report_holds_a_broadcast_to_the_raw_pika_fanout_of_the_same_run() -> None:
    row = {"agents": 1000, "replies": 1000, "all_replied": True, "last_reply_ms": 500.0,
           "return_ms_expected_hosts": 600.0, "return_ms_idle_window": 900.0,
           "replies_per_s": 2000.0, "raw_pika_ms": 250.0, "ratio_to_raw": 2.4}
    results = {"meta": {"when": "now", "cpus": 2}, "fanout": [row]}
    assert ("1,000 agents: every reply back / raw pika fan-out", "600 / 250 ms = 2.4x",
            "<= 2x", False) in report.checks(results)
    assert "250 ms   2.4x" in report.text(results)
