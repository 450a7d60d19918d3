"""host.service.*: systemd service control through a fixed systemctl command line, over
the in-memory broker (the dispatcher's schema check, policy-free runtime) and directly."""

import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from agents.host.services import Systemd, unit_name
from console.client import Console
from hostbus.errors import RemoteError
from hostbus.schema import load_agent_schema
from hostbus.serving.runtime import AgentRuntime
from hostbus.transport.memory import MemoryTransport
from tests.fakes import FakeServices, make_host_agent

SCHEMA = load_agent_schema("host")

SHOW_NGINX = ("Id=nginx.service\nDescription=web server\nLoadState=loaded\n"
              "ActiveState=active\nSubState=running\nUnitFileState=enabled\nMainPID=812\n"
              "ExecMainStatus=0\nActiveEnterTimestamp=Sat 2026-11-21 10:00:00 UTC\n"
              "NRestarts=2\n")
HOSTILE = ["nginx; reboot", "--now", "-H", "nginx service", "../../etc/passwd", "a\nb",
           "nginx.service other.service", "$(reboot)", "*", "x" * 300, ""]


class RecordingSystemctl:
    """Answers like systemctl and keeps every command line it was given."""

    def __init__(self, show: str = SHOW_NGINX, fail: dict[str, str] | None = None) -> None:
        self.argvs: list[list[str]] = []
        self.show = show
        self.fail = fail or {}

    def __call__(self, argv: list[str]) -> tuple[int, str, str]:
        self.argvs.append(argv)
        verb = argv[1] if argv[1] != "--no-ask-password" else argv[2]
        if verb in self.fail:
            return 1, "", self.fail[verb]
        return 0, (self.show if verb == "show" else ""), ""


@pytest.fixture
def host(memory_broker):
    """One host agent with a recording systemctl behind it, and a console."""
    memory_broker.enroll("web01", ["host"])
    transport = MemoryTransport(memory_broker, user="web01")
    transport.start()
    systemctl = RecordingSystemctl()
    agent, _, _ = make_host_agent(services=Systemd(run=systemctl, booted=lambda: True))
    runtime = AgentRuntime(transport, "web01", [agent], heartbeat_interval=10,
                           check_results=True)
    runtime.start()
    ct = MemoryTransport(memory_broker, user="console")
    ct.start()
    console = Console(ct, validate=False)  # hostile names must reach the agent
    console.open()
    yield console, systemctl
    runtime.stop("test over")
    console.close()


def test_restart_runs_one_fixed_systemctl_command_and_answers_the_state_after(host):
    console, systemctl = host
    res = console.call("host", "service.restart", {"name": "nginx"}, host="web01")
    assert res.status == "ok", res.reply.error
    assert res.reply.result["action"] == "restart"
    assert res.reply.result["active"] == "active" and res.reply.result["restarts"] == 2
    acted = [argv for argv in systemctl.argvs if "show" not in argv]
    assert acted == [["systemctl", "--no-ask-password", "restart", "--", "nginx.service"]]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_unit_names_are_refused_and_nothing_runs(host, name):
    console, systemctl = host
    for action in ("status", "start", "stop", "restart"):
        res = console.call("host", f"service.{action}", {"name": name}, host="web01")
        assert res.status == "error" and res.reply.error["code"] == "invalid_args", name
    assert systemctl.argvs == []


@pytest.mark.parametrize("name", HOSTILE)
def test_the_agent_refuses_hostile_names_without_the_schema_too(name):
    systemctl = RecordingSystemctl()
    systemd = Systemd(run=systemctl, booted=lambda: True)
    with pytest.raises(RemoteError) as err:
        systemd.control("stop", name)
    assert err.value.code == "invalid_args"
    assert systemctl.argvs == []


def test_unit_names_systemd_accepts_pass():
    assert unit_name("nginx") == "nginx.service"
    assert unit_name("getty@tty1.service") == "getty@tty1.service"
    assert unit_name("systemd-fsck@dev-disk-by\\x2duuid-1.service").endswith(".service")


def test_a_unit_the_host_lacks_is_not_found_and_never_acted_on():
    systemctl = RecordingSystemctl(show="Id=nope.service\nLoadState=not-found\n")
    systemd = Systemd(run=systemctl, booted=lambda: True)
    with pytest.raises(RemoteError) as err:
        systemd.control("restart", "nope")
    assert err.value.code == "not_found" and "nope.service" in err.value.message
    assert all("restart" not in argv for argv in systemctl.argvs)


def test_systemctl_refusing_is_failed_with_its_words():
    systemctl = RecordingSystemctl(fail={"start": "Job for nginx.service failed."})
    with pytest.raises(RemoteError) as err:
        Systemd(run=systemctl, booted=lambda: True).control("start", "nginx")
    assert err.value.code == "failed" and "Job for nginx.service failed" in err.value.message


def test_without_systemd_control_is_unsupported():
    systemctl = RecordingSystemctl()
    with pytest.raises(RemoteError) as err:
        Systemd(run=systemctl, booted=lambda: False).control("restart", "nginx")
    assert err.value.code == "unsupported" and systemctl.argvs == []


def test_stop_restart_and_disable_are_dangerous_the_others_not():
    dangerous = {m.removeprefix("service.") for m, spec in SCHEMA.methods.items()
                 if m.startswith("service.") and spec.dangerous}
    assert dangerous == {"stop", "restart", "disable"}


def test_the_fake_service_manager_acts_like_systemd():
    services = FakeServices()
    agent, _, _ = make_host_agent(services=services)
    spec = SCHEMA.methods["service.start"]
    result = agent.service_start(**spec.validate_args({"name": "cron"}))
    spec.result_validator.validate(result)
    assert result["active"] == "active" and services.actions == [("start", "cron.service")]
    with pytest.raises(RemoteError) as err:
        agent.service_stop("absent")
    assert err.value.code == "not_found"


def _systemd_state() -> str:
    if shutil.which("systemctl") is None:
        return "no systemctl"
    done = subprocess.run(["systemctl", "is-system-running"], capture_output=True, text=True,
                          check=False)
    return done.stdout.strip() or done.stderr.strip()


def test_a_real_systemd_unit_is_started_stopped_and_restarted():
    """On a machine that runs systemd: a transient unit of the test's own."""
    state = _systemd_state()
    if state not in ("running", "degraded"):
        pytest.skip(f"this machine does not run systemd (`systemctl is-system-running`: "
                    f"{state}): containers without systemd as PID 1 cannot run units")
    unit = f"hostbus-test-{uuid.uuid4().hex[:8]}"
    path = Path(f"/run/systemd/system/{unit}.service")
    path.write_text(f"[Unit]\nDescription=hostbus test unit\n[Service]\n"
                    f"ExecStart={shutil.which('sleep')} 600\n")
    subprocess.run(["systemctl", "daemon-reload"], check=True)
    try:
        systemd = Systemd()
        systemd.control("start", unit)
        assert systemd.status(unit)["active"] == "active"
        pid = systemd.status(unit)["main_pid"]
        systemd.control("restart", unit)
        after = systemd.status(unit)
        assert after["active"] == "active" and after["main_pid"] not in (0, pid)
        systemd.control("stop", unit)
        assert systemd.status(unit)["active"] in ("inactive", "failed")
    finally:
        subprocess.run(["systemctl", "stop", unit], check=False)
        path.unlink(missing_ok=True)
        subprocess.run(["systemctl", "daemon-reload"], check=False)
