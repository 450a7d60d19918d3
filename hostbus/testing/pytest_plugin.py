"""pytest fixtures for hostbus and for programs built on it (registered as ``hostbus``).

- ``memory_broker``: an in-process broker with the hostbus topology (fast unit tests).
- ``rabbitmq``: a real RabbitMQ vhost of its own for the whole test run, with the
  topology applied; removed afterwards. It is parametrized over the transports, so
  every test that uses it runs once over AMQP 0-9-1 (pika) and once over AMQP 1.0
  (proton); ``rabbitmq.url`` has the scheme of the one under test, ``rabbitmq.amqp``
  is always 0-9-1 (for raw clients). Locally it skips when no broker is reachable;
  with ``CI=true`` it fails instead, because CI must not skip integration tests.

Settings (environment): ``HOSTBUS_TEST_AMQP`` (default amqp://guest:guest@127.0.0.1:5672),
``HOSTBUS_TEST_ADMIN_URL`` (default http://guest:guest@127.0.0.1:15672) and
``HOSTBUS_TEST_TRANSPORTS`` (default ``amqp091,amqp10``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from hostbus.broker_admin import BrokerAdmin
from hostbus.errors import HostbusError
from hostbus.transport.memory import MemoryBroker

TRANSPORTS = {"amqp091": "amqp", "amqp10": "amqp10"}  # test id -> URL scheme


@dataclass
class TestBroker:
    vhost: str
    amqp: str  # AMQP 0-9-1, without the vhost
    admin: BrokerAdmin
    transport: str = "amqp091"

    __test__ = False  # not a test class, whatever pytest thinks of the name

    @property
    def raw_url(self) -> str:
        """The vhost's AMQP 0-9-1 URL, for plain clients that know nothing of hostbus."""
        return f"{self.amqp}/{self.vhost}"

    @property
    def url(self) -> str:
        """The vhost's URL for the transport under test."""
        scheme, _, rest = self.amqp.partition("://")
        return f"{TRANSPORTS[self.transport]}{'s' * scheme.endswith('s')}://{rest}/{self.vhost}"

    def enroll(self, host_id: str, agents: list[str]) -> None:
        self.admin.enroll_host(self.vhost, host_id, agents)


def in_ci() -> bool:
    """CI=true (or 1, yes): a missing service fails the run instead of skipping."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def fail_or_skip(message: str) -> None:
    """In CI a test that cannot get its service fails; elsewhere it is skipped."""
    if in_ci():
        pytest.fail(message + " (CI=true: nothing is skipped for a missing service)")
    pytest.skip(message)


@pytest.fixture
def memory_broker() -> MemoryBroker:
    return MemoryBroker()


def _transports() -> list[str]:
    wanted = os.environ.get("HOSTBUS_TEST_TRANSPORTS", ",".join(TRANSPORTS))
    chosen = [t.strip() for t in wanted.split(",") if t.strip()]
    unknown = set(chosen) - set(TRANSPORTS)
    if unknown or not chosen:
        raise pytest.UsageError(f"HOSTBUS_TEST_TRANSPORTS={wanted!r}: choose from "
                                f"{', '.join(TRANSPORTS)}")
    return chosen


@pytest.fixture(scope="session", params=_transports())
def rabbitmq(request: pytest.FixtureRequest) -> Iterator[TestBroker]:
    amqp = os.environ.get("HOSTBUS_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672")
    admin = BrokerAdmin(os.environ.get("HOSTBUS_TEST_ADMIN_URL",
                                       "http://guest:guest@127.0.0.1:15672"))
    vhost = f"hostbus-test-{uuid.uuid4().hex[:8]}"
    try:
        admin.setup(vhost)
    except HostbusError as exc:
        fail_or_skip(f"RabbitMQ is not available for integration tests: {exc}")
    broker = TestBroker(vhost, amqp, admin, request.param)
    try:
        if broker.transport == "amqp10":
            _probe(broker.url)
        yield broker
    finally:
        admin.delete_vhost(vhost)


def _probe(url: str) -> None:
    from hostbus.transport import connect

    transport = connect(url, reconnect=False)
    try:
        transport.start()
    except HostbusError as exc:
        fail_or_skip(f"the broker does not speak AMQP 1.0 to hostbus: {exc} (./run.sh test "
                     "enables the plugin)")
    finally:
        transport.close()
