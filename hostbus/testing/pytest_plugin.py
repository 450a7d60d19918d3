"""pytest fixtures for hostbus and for programs built on it (registered as ``hostbus``).

- ``memory_broker``: an in-process broker with the hostbus topology (fast unit tests).
- ``rabbitmq``: a real RabbitMQ vhost of its own for the whole test run, with the
  topology applied; removed afterwards. Locally it skips when no broker is reachable;
  with ``CI=true`` it fails instead, because CI must not skip integration tests.

Settings (environment): ``HOSTBUS_TEST_AMQP`` (default amqp://guest:guest@127.0.0.1:5672)
and ``HOSTBUS_TEST_ADMIN_URL`` (default http://guest:guest@127.0.0.1:15672).
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


@dataclass
class TestBroker:
    vhost: str
    amqp: str  # without the vhost
    admin: BrokerAdmin

    __test__ = False  # not a test class, whatever pytest thinks of the name

    @property
    def url(self) -> str:
        return f"{self.amqp}/{self.vhost}"

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


@pytest.fixture(scope="session")
def rabbitmq() -> Iterator[TestBroker]:
    amqp = os.environ.get("HOSTBUS_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672")
    admin = BrokerAdmin(os.environ.get("HOSTBUS_TEST_ADMIN_URL",
                                       "http://guest:guest@127.0.0.1:15672"))
    vhost = f"hostbus-test-{uuid.uuid4().hex[:8]}"
    try:
        admin.setup(vhost)
    except HostbusError as exc:
        fail_or_skip(f"RabbitMQ is not available for integration tests: {exc}")
    try:
        yield TestBroker(vhost, amqp, admin)
    finally:
        admin.delete_vhost(vhost)
