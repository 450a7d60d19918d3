import uuid

import pytest

from agents.host.alerts import Threshold
from agents.host.power import RecordingPower
from agents.host.services import Systemd
from agents.runtime import AgentRuntime
from console.client import Console

pytestmark = pytest.mark.integration


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
