import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest
from hypothesis import HealthCheck, settings

from hostbus.testing.pytest_plugin import BrokerServer, in_ci

# The `fleet` fixture: the CLI through click's runner on the in-memory broker; `historian`:
# the historian beside it; `postgres_url`: a PostgreSQL database of a test's own.
pytest_plugins = ["tests.cli_fleet", "tests.history_fleet", "tests.postgres"]

# The fuzz tests (tests/fuzz): 200 examples a test locally, 2,000 in CI (about 7 s a
# test on a quiet machine of two cores; the 10,000 CI ran before took 31 to 35 s each,
# over two minutes of the suite's 30). HOSTBUS_FUZZ_EXAMPLES=N runs N a test, locally or
# in CI: a long session before a release, say. Tests with settings of their own keep
# theirs.
settings.register_profile("ci", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=200, deadline=None)
settings.load_profile("ci" if in_ci() else "dev")
if os.environ.get("HOSTBUS_FUZZ_EXAMPLES"):
    settings.register_profile("asked", max_examples=int(os.environ["HOSTBUS_FUZZ_EXAMPLES"]),
                              deadline=None, suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile("asked")


@pytest.fixture(scope="session")
def rabbitmq_server(tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[Callable[[str], BrokerServer]]:
    """The brokers after the machine's (pyproject's hostbus_brokers): ``rabbitmq4``, a
    node from the Debian 13 root, started on first use and stopped after the run."""
    from tests.rabbit_node import RabbitNode, hostbus_node, rabbitmq4_root, started

    nodes: dict[str, RabbitNode] = {}
    with ExitStack() as stack:
        def server(name: str) -> BrokerServer:
            if name != "rabbitmq4":
                raise pytest.UsageError(f"unknown broker {name!r} in hostbus_brokers")
            if name not in nodes:
                root = started("the RabbitMQ 4 root", rabbitmq4_root)
                nodes[name] = stack.enter_context(hostbus_node(
                    tmp_path_factory.mktemp(name) / "node", "a RabbitMQ 4 node", root=root))
            node = nodes[name]
            return BrokerServer(f"amqp://guest:guest@127.0.0.1:{node.amqp_port}",
                                f"http://guest:guest@127.0.0.1:{node.mgmt_port}")

        yield server
