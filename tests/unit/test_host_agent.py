import pytest

from agents.host.alerts import AlertTracker, Threshold, thresholds_from_config
from agents.host.services import Systemd, parse_list_units
from hostbus.errors import RemoteError
from hostbus.schema import load_agent_schema
from tests.fakes import NT, FakePs, make_host_agent

SCHEMA = load_agent_schema("host")


def call(agent, method_name, /, **args):
    """Call a method as the dispatcher would: schema defaults filled, result checked."""
    spec = SCHEMA.methods[method_name]
    result = getattr(agent, method_name)(**spec.validate_args(args))
    spec.result_validator.validate(result)
    return result


def test_alerts_raise_once_and_clear_only_below_the_clear_level():
    tracker = AlertTracker({"cpu_percent": Threshold(90, 80)})
    states = [tracker.update("cpu_percent", v) for v in (50, 91, 95, 85, 89, 92, 79, 85, 91)]
    assert [s and s["state"] for s in states] == [
        None, "raised", None, None, None, None, "cleared", None, "raised"]
    assert states[1] == {"metric": "cpu_percent", "resource": "", "state": "raised",
                         "value": 91.0, "raise_at": 90, "clear_at": 80}


def test_disk_alerts_are_tracked_per_mount_point():
    tracker = AlertTracker({"disk_percent": Threshold(90, 85)})
    assert tracker.update("disk_percent", 95, "/var")["resource"] == "/var"
    assert tracker.update("disk_percent", 95, "/") is not None
    assert tracker.update("disk_percent", 95, "/var") is None
    assert tracker.active == [("disk_percent", "/"), ("disk_percent", "/var")]


def test_alert_levels_must_leave_room_for_hysteresis():
    with pytest.raises(ValueError, match="must be below raise"):
        Threshold(80, 80)
    with pytest.raises(ValueError, match="raise = N, clear = M"):
        thresholds_from_config({"cpu_percent": {"high": 1}})


def test_metrics_events_carry_the_sample_and_alerts_follow_the_levels():
    agent, ps, _ = make_host_agent()
    seen = []
    agent.attach(lambda a, e, d: seen.append((a, e, d)))
    agent.publish_metrics()
    assert [e for _, e, _ in seen] == ["metrics"]
    SCHEMA.events["metrics"].data_validator.validate(seen[0][2])
    ps.mem_percent, ps.disks["/var"] = 95.0, 97.0
    agent.publish_metrics()
    alerts = [d for _, e, d in seen if e == "alert"]
    assert {(a["metric"], a["resource"], a["state"]) for a in alerts} == {
        ("memory_percent", "", "raised"), ("disk_percent", "/var", "raised")}
    for data in alerts:
        SCHEMA.events["alert"].data_validator.validate(data)
    seen.clear()
    ps.mem_percent = 85.0  # between the levels: no flapping
    agent.publish_metrics()
    assert [e for _, e, _ in seen] == ["metrics"]
    ps.mem_percent = 70.0
    agent.publish_metrics()
    assert [(d["metric"], d["state"]) for _, e, d in seen if e == "alert"] == [
        ("memory_percent", "cleared")]


class PsutilLikePs(FakePs):
    """As psutil: a process's CPU percent is measured from its previous reading, so
    the first reading of each process has nothing to measure from (0.0)."""

    def __init__(self):
        super().__init__()
        self.read = set()

    def process_iter(self, attrs):
        listing = []
        for proc in self.procs:
            info = dict(proc)
            if proc["pid"] not in self.read:
                info["cpu_percent"] = 0.0
                self.read.add(proc["pid"])
            listing.append(NT(info=info))
        return listing


def test_the_first_process_listing_reports_cpu_sampled_over_an_interval():
    agent, _, _ = make_host_agent(ps=PsutilLikePs(), config={"process_cpu_sample_s": 0.01})
    top = call(agent, "processes", limit=1)["processes"][0]  # sort=cpu by default
    assert (top["pid"], top["cpu_percent"]) == (200, 35.0)


def test_processes_filter_sort_and_limit():
    agent, _, _ = make_host_agent()
    result = call(agent, "processes", name="python*")
    assert [p["pid"] for p in result["processes"]] == [200, 300]  # by cpu, highest first
    assert result["total"] == 2
    assert call(agent, "processes", user="www")["processes"][0]["name"] == "nginx"
    limited = call(agent, "processes", sort="memory", limit=1)
    assert limited["total"] == 4 and [p["pid"] for p in limited["processes"]] == [200]
    assert call(agent, "processes", min_rss_bytes=30_000_000, sort="pid")["total"] == 2


def test_identify_inventory_and_metrics_match_their_schemas():
    agent, _, _ = make_host_agent("web01")
    assert call(agent, "identify")["host_id"] == "web01"
    inv = call(agent, "inventory")
    assert [d["mountpoint"] for d in inv["disks"]] == ["/", "/var"]  # tmpfs left out
    assert inv["interfaces"][0]["mac"] == "52:54:00:12:34:56"
    assert call(agent, "metrics")["load_per_cpu"] == 0.12


def test_object_classes_match_their_schemas():
    agent, _, _ = make_host_agent()
    for name, provider in agent.object_providers().items():
        objects = provider()
        assert objects, name
        for obj in objects:
            SCHEMA.classes[name].object_validator.validate(obj)


def test_services_filter_by_glob_and_state():
    agent, _, _ = make_host_agent()
    assert call(agent, "services", state="failed")["services"][0]["name"] == "cron"
    assert call(agent, "services", name="ng*")["total"] == 1


def test_services_without_systemd_say_unsupported():
    systemd = Systemd(runner=lambda argv: "", booted=lambda: False)
    agent, _, _ = make_host_agent(services=systemd)
    with pytest.raises(RemoteError) as info:
        agent.services(None, "any")
    assert info.value.code.value == "unsupported" and "systemd" in info.value.message


def test_systemd_output_is_parsed():
    text = ("nginx.service loaded active running A high performance web server\n"
            "cron.service  loaded failed failed  Regular background program\n"
            "garbage\n")
    systemd = Systemd(runner=lambda argv: text, booted=lambda: True)
    assert systemd.list() == parse_list_units(text)
    assert systemd.list()[1] == {"name": "cron", "load": "loaded", "active": "failed",
                                 "sub": "failed", "description": "Regular background program"}


def test_reboot_and_shutdown_go_through_the_power_controller_only():
    agent, _, power = make_host_agent()
    result = call(agent, "reboot", delay_s=30, reason="kernel")
    assert result["action"] == "reboot" and result["delay_s"] == 30
    call(agent, "shutdown")
    assert power.calls == [("reboot", 30, "kernel"),
                           ("shutdown", 60, "requested through hostbus")]
    assert SCHEMA.methods["reboot"].dangerous and SCHEMA.methods["shutdown"].dangerous


@pytest.mark.parametrize("reason", ["-P", "--poweroff", "-c", "-k now", "patch night"])
def test_a_reboot_reason_is_never_read_as_an_option(reason):
    """shutdown(8) parses options anywhere on its line (GNU getopt permutes): a reason
    of "-P" once turned a reboot into a poweroff. Parsed the way shutdown parses it, the
    line holds -r only, and the reason arrives whole as the wall message."""
    import getopt

    from agents.host.power import shutdown_argv

    argv = shutdown_argv("/sbin/shutdown", "reboot", reason)
    options, operands = getopt.gnu_getopt(argv[1:], "HPrhkc", ["poweroff", "reboot",
                                                               "halt", "no-wall"])
    assert options == [("-r", "")]
    assert operands == ["now", reason]
