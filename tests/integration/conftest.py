import stat
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path

import pytest

from agents.host.alerts import Threshold
from agents.host.power import RecordingPower
from agents.host.services import Systemd
from console.client import Console
from hostbus.serving.runtime import AgentRuntime

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


@pytest.fixture
def console(rabbitmq):
    c = Console.connect(rabbitmq.url)
    yield c
    c.close()


@pytest.fixture
def start_agent(rabbitmq):
    """Start an in-process agent on the real broker: real psutil, recording power."""
    started = []

    def start(*, alerts=None, metrics_interval=0.0, heartbeat=10.0, facts=None):
        import psutil

        from agents.host.agent import HostAgent

        host_id = f"it-{uuid.uuid4().hex[:8]}"
        rabbitmq.enroll(host_id, ["host"])
        power = RecordingPower()
        host = HostAgent({"metrics_interval": metrics_interval}, host_id=host_id, ps=psutil,
                         power=power, services=Systemd(),
                         alerts=alerts or {"cpu_percent": Threshold(90, 80)})
        runtime = AgentRuntime.serve(
            rabbitmq.url, host_id, [host], heartbeat_interval=heartbeat,
            intervals={"host": {"metrics_interval": metrics_interval}}, facts=facts or {},
            check_results=True)
        started.append(runtime)
        return runtime, power

    yield start
    for runtime in started:
        runtime.stop("test over")


@pytest.fixture
def enroll(rabbitmq, tmp_path):
    """Enroll identities through the CLI; revoke them afterwards (users are global)."""
    made = []

    def run(*args):
        env = rabbitmq.env
        return subprocess.run([str(BIN / "hostbus"), *args], capture_output=True, text=True,
                              env=env, timeout=60, check=False)

    def make(kind, name, *extra):
        path = tmp_path / f"{name}.toml"
        command = {"agent": ["broker", "enroll", name, "--agents", "host"],
                   "console": ["broker", "enroll-console", name],
                   "app": ["broker", "enroll-app", name],
                   "service": ["broker", "enroll-service", name, "--agents", "provision",
                               "--queue", "hostbus.provision",
                               "--events", "virt.*.domain.lifecycle"]}[kind]
        done = run(*command, "-o", str(path), *extra)
        assert done.returncode == 0, done.stderr
        made.append(name)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        return path, tomllib.loads(path.read_text())["broker"]["url"]

    make.run = run
    yield make
    for name in made:
        rabbitmq.admin.revoke(name)
