"""pytest fixtures for hostbus and for programs built on it (registered as ``hostbus``).

- ``memory_broker``: an in-process broker with the hostbus topology (fast unit tests).
- ``rabbitmq``: a real RabbitMQ vhost of its own for the whole test run, with the
  topology applied; removed afterwards. It is parametrized over the transports, so
  every test that uses it runs once over AMQP 0-9-1 (pika) and once over AMQP 1.0
  (proton); ``rabbitmq.url`` has the scheme of the one under test, ``rabbitmq.amqp``
  is always 0-9-1 (for raw clients). Locally it skips when no broker is reachable;
  with ``CI=true`` it fails instead, because CI must not skip integration tests.
- Brokers: ``rabbitmq`` is parametrized over brokers too. The first is the configured
  one (``HOSTBUS_TEST_AMQP``); every test runs on it. Other brokers are named in the
  ``hostbus_brokers`` ini option (or ``HOSTBUS_TEST_BROKERS``, comma-separated; its
  first name is the default broker's), and a session fixture ``rabbitmq_server`` that
  the project provides returns a ``BrokerServer`` for each other name (starting it on
  first use). On those, only tests marked ``hostbus_core`` run; their ids say the
  broker (``test_x[rabbitmq4-amqp10]``), the default's do not (``test_x[amqp10]``).

Settings (environment): ``HOSTBUS_TEST_AMQP`` (default amqp://guest:guest@127.0.0.1:5672),
``HOSTBUS_TEST_ADMIN_URL`` (default http://guest:guest@127.0.0.1:15672),
``HOSTBUS_TEST_TRANSPORTS`` (default ``amqp091,amqp10``) and ``HOSTBUS_TEST_BROKERS``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from hostbus.broker_admin import BrokerAdmin
from hostbus.errors import HostbusError
from hostbus.transport.memory import MemoryBroker

TRANSPORTS = {"amqp091": "amqp", "amqp10": "amqp10"}  # test id -> URL scheme
CORE = "hostbus_core"  # the marker of tests that also run on the other brokers


@dataclass(frozen=True)
class BrokerServer:
    """Where a broker is: its AMQP 0-9-1 URL without the vhost, and its management API."""

    amqp: str
    admin_url: str


@dataclass
class TestBroker:
    vhost: str
    amqp: str  # AMQP 0-9-1, without the vhost
    admin: BrokerAdmin
    transport: str = "amqp091"
    broker: str = ""  # the broker's name in hostbus_brokers; the default one's is first
    admin_url: str = "http://guest:guest@127.0.0.1:15672"

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

    @property
    def env(self) -> dict[str, str]:
        """The environment for a hostbus program run on this broker: this process's, with
        the broker URL and the management API's (for ``hostbus broker ...``)."""
        return {**os.environ, "HOSTBUS_BROKER_URL": self.url,
                "HOSTBUS_CONSOLE_ADMIN_URL": self.admin_url}

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


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("hostbus_brokers", "broker names for the rabbitmq fixture; the first is "
                  "the configured broker (HOSTBUS_TEST_AMQP), the others come from the "
                  "rabbitmq_server fixture and run the tests marked hostbus_core",
                  type="args", default=["default"])


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{CORE}: also run on every broker in hostbus_brokers "
                            "(the rest run on the default broker only)")
    wanted = os.environ.get("HOSTBUS_TEST_BROKERS")
    brokers = ([b.strip() for b in wanted.split(",") if b.strip()] if wanted
               else list(config.getini("hostbus_brokers")))
    if not brokers:
        raise pytest.UsageError("HOSTBUS_TEST_BROKERS names no broker")
    config.stash[_BROKERS] = brokers


_BROKERS = pytest.StashKey[list]()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """The rabbitmq fixture's parameters: each broker by each transport; the brokers
    after the default one for tests marked hostbus_core only."""
    if "rabbitmq" not in metafunc.fixturenames:
        return
    brokers = metafunc.config.stash[_BROKERS]
    if metafunc.definition.get_closest_marker(CORE) is None:
        brokers = brokers[:1]
    params = [(b, t) for b in brokers for t in _transports()]
    default = metafunc.config.stash[_BROKERS][0]
    ids = [t if b == default else f"{b}-{t}" for b, t in params]
    metafunc.parametrize("rabbitmq", params, ids=ids, indirect=True, scope="session")


def _transports() -> list[str]:
    wanted = os.environ.get("HOSTBUS_TEST_TRANSPORTS", ",".join(TRANSPORTS))
    chosen = [t.strip() for t in wanted.split(",") if t.strip()]
    unknown = set(chosen) - set(TRANSPORTS)
    if unknown or not chosen:
        raise pytest.UsageError(f"HOSTBUS_TEST_TRANSPORTS={wanted!r}: choose from "
                                f"{', '.join(TRANSPORTS)}")
    return chosen


@pytest.fixture(scope="session")
def rabbitmq_server() -> Callable[[str], BrokerServer]:
    """The brokers after the default one, by name; a project that names some in
    hostbus_brokers provides this fixture (its own conftest.py)."""
    def none_known(name: str) -> BrokerServer:
        raise pytest.UsageError(f"broker {name!r} is named in hostbus_brokers, but no "
                                "rabbitmq_server fixture says where it is")
    return none_known


@pytest.fixture(scope="session")
def rabbitmq(request: pytest.FixtureRequest) -> Iterator[TestBroker]:
    name, transport = request.param
    if name == request.config.stash[_BROKERS][0]:
        server = BrokerServer(
            os.environ.get("HOSTBUS_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672"),
            os.environ.get("HOSTBUS_TEST_ADMIN_URL", "http://guest:guest@127.0.0.1:15672"))
    else:
        server = request.getfixturevalue("rabbitmq_server")(name)
    admin = BrokerAdmin(server.admin_url)
    vhost = f"hostbus-test-{uuid.uuid4().hex[:8]}"
    try:
        admin.setup(vhost)
    except HostbusError as exc:
        fail_or_skip(f"RabbitMQ ({name}) is not available for integration tests: {exc}")
    broker = TestBroker(vhost, server.amqp, admin, transport, name, server.admin_url)
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
