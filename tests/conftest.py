from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest
from hypothesis import HealthCheck, settings

from hostbus.testing.pytest_plugin import BrokerServer, in_ci

# The `fleet` fixture: the CLI through click's runner on the in-memory broker.
pytest_plugins = ["tests.cli_fleet"]

# CI runs the fuzz tests harder than a developer's quick run.
settings.register_profile("ci", max_examples=10000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=200, deadline=None)
settings.load_profile("ci" if in_ci() else "dev")


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
