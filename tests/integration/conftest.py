import threading
import uuid

import pytest

from agents.host.alerts import Threshold
from agents.host.power import RecordingPower
from agents.host.services import Systemd
from agents.runtime import AgentRuntime
from console.client import Console
from hostbus.transport.amqp091 import PikaTransport

pytestmark = pytest.mark.integration


class Waiter:
    """Collects events from a subscription; tests wait on a condition, never sleep."""

    def __init__(self):
        self.events = []
        self._cond = threading.Condition()

    def __call__(self, ev, note):
        with self._cond:
            self.events.append((ev, note))
            self._cond.notify_all()

    def wait_for(self, predicate, timeout=15.0):
        with self._cond:
            ok = self._cond.wait_for(lambda: any(predicate(e) for e, _ in self.events), timeout)
            assert ok, f"no matching event among {[e.full_name for e, _ in self.events]}"
            return next(e for e, _ in self.events if predicate(e))


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
        transport = PikaTransport(rabbitmq.url, connection_name=f"test agent {host_id}")
        transport.start()
        power = RecordingPower()
        host = HostAgent({"metrics_interval": metrics_interval}, host_id=host_id, ps=psutil,
                         power=power, services=Systemd(),
                         alerts=alerts or {"cpu_percent": Threshold(90, 80)})
        runtime = AgentRuntime(transport, host_id, [host], heartbeat_interval=heartbeat,
                               intervals={"host": {"metrics_interval": metrics_interval}},
                               facts=facts or {}, check_results=True)
        runtime.start()
        started.append(runtime)
        return runtime, power

    yield start
    for runtime in started:
        runtime.stop("test over")
