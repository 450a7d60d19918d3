"""broker_config/ and run.sh's broker settings on each RabbitMQ version hostbus supports:
a node booted with them boots, refuses AMQP 1.0 clients that do not log in, and boots
again after a restart (a setting the version does not know shows only at boot)."""

import subprocess
from pathlib import Path

import pytest
from proton import ConnectionException
from proton.utils import BlockingConnection

from hostbus.resources import data_dir
from tests.rabbit_node import REPO, RabbitNode, installed_version, rabbitmq4_root, started

pytestmark = pytest.mark.integration
BROKERS = ["rabbitmq3", "rabbitmq4"]  # the machine's (3.10), and Debian 13's (4.0)


def broker_root(broker: str) -> Path | None:
    return started("the RabbitMQ 4 root", rabbitmq4_root) if broker == "rabbitmq4" else None


def shipped_plugins() -> tuple[str, ...]:
    listed = (data_dir("broker_config") / "enabled_plugins").read_text()
    return tuple(p for p in listed.strip().strip("[].").split(",") if p != "rabbitmq_management")


def assert_amqp10_needs_a_login(node: RabbitNode) -> None:
    url = f"amqp://127.0.0.1:{node.amqp_port}"
    for anonymous in ({"allowed_mechs": "ANONYMOUS"}, {"sasl_enabled": False}):
        with pytest.raises(ConnectionException, match=r"unauthorized-access|framing-error"):
            BlockingConnection(url, virtual_host="vhost:/", timeout=10, **anonymous).close()
    # The same node lets a client in that logs in: the refusals above are about the login.
    BlockingConnection(url, virtual_host="vhost:/", timeout=10, allowed_mechs="PLAIN",
                       user="guest", password="guest").close()


def boot_twice(node: RabbitNode, what: str) -> None:
    """Start the node, check it, restart it, check again; stopped after."""
    started(what, node.start)
    try:
        assert_amqp10_needs_a_login(node)
        # guest stays loopback-only, as rabbitmq.conf says
        env = node.ctl("environment").replace(" ", "").replace("\n", "")
        assert '{loopback_users,[<<"guest">>]}' in env
        node.ctl("stop")
        try:
            node.start()
        except RuntimeError as exc:
            pytest.fail(f"{what} booted once but not after a restart: {exc}")
        assert_amqp10_needs_a_login(node)
    finally:
        node.stop()


@pytest.mark.parametrize("broker", BROKERS)
def test_the_shipped_config_boots_refuses_anonymous_amqp10_and_boots_again(tmp_path, broker):
    """rabbitmq.conf, the AMQP 1.0 settings for the version, and enabled_plugins: the
    version accepts every key (an unknown one stops it from booting)."""
    root = broker_root(broker)
    shipped = data_dir("broker_config")
    major = installed_version(root).split(".")[0]
    config = ((shipped / "rabbitmq.conf").read_text()
              + (shipped / f"amqp10-rabbitmq{major}.conf").read_text())
    node = RabbitNode(tmp_path / "node", config=config, plugins=shipped_plugins(), root=root)
    boot_twice(node, f"RabbitMQ {installed_version(root)} with the shipped configuration")


@pytest.mark.parametrize("broker", BROKERS)
def test_run_sh_secures_amqp10_the_way_the_version_wants(tmp_path, broker):
    """What run.sh writes into a broker's rabbitmq.conf, on a file an older run.sh left
    (with the 3.x key): the node boots, refuses anonymous AMQP 1.0, and boots again. On
    4.x the old file did not boot at all ("unknown variable: amqp1_0.default_user")."""
    root = broker_root(broker)
    version = installed_version(root)
    conf = tmp_path / "system-rabbitmq.conf"
    conf.write_text((data_dir("broker_config") / "rabbitmq.conf").read_text()
                    + "\n# hostbus: AMQP 1.0 clients must log in (no anonymous guest)\n"
                    "amqp1_0.default_user = none\n")
    done = subprocess.run(["bash", "-c", 'source ./run.sh && write_amqp10_conf "$1" "$2"', "-",
                           version, str(conf)], cwd=REPO, capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    node = RabbitNode(tmp_path / "node", config=conf.read_text(), plugins=shipped_plugins(),
                      root=root)
    boot_twice(node, f"RabbitMQ {version} with run.sh's rabbitmq.conf")


def test_the_3x_setting_stops_rabbitmq4_from_booting(tmp_path):
    """Why broker_config/ and run.sh keep one AMQP 1.0 file per version."""
    root = broker_root("rabbitmq4")
    node = RabbitNode(tmp_path / "node", root=root,
                      config=(data_dir("broker_config") / "amqp10-rabbitmq3.conf").read_text())
    with pytest.raises(RuntimeError, match="unknown variable"):
        node.start(timeout=60)
    node.stop()
