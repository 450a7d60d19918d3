"""TLS end to end: a RabbitMQ node of the test's own with broker_config/rabbitmq-tls.conf
settings and a development CA; an agent enrolled with a client certificate (SASL
EXTERNAL, no password) serves a console that connects over amqps with peer
verification; wrong certificates are refused with messages that say what is wrong."""

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest

from console.client import Console
from hostbus.errors import ConnectionFailed
from tests.fakes import EventCollector
from tests.rabbit_node import AMQP10_PLUGINS, RabbitNode, amqp10_config, free_port, started

# Starting RabbitMQ nodes of their own takes 10 s or more each (counted in the timeout).
pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
BIN = Path(sys.executable).parent


def hostbus(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOSTBUS_")}
    return subprocess.run([str(BIN / "hostbus"), *args], capture_output=True, text=True,
                          env=env, timeout=120, check=False)


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    tls = folder / "ca"
    made = hostbus("broker", "dev-ca", str(tls), "--json")
    assert made.returncode == 0, made.stderr
    port = free_port()
    node = RabbitNode(folder / "node", plugins=("rabbitmq_auth_mechanism_ssl",
                                                *AMQP10_PLUGINS), config=amqp10_config() + f"""
listeners.ssl.default = {port}
ssl_options.cacertfile = {tls}/ca.pem
ssl_options.certfile = {tls}/broker.pem
ssl_options.keyfile = {tls}/broker.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
auth_mechanisms.1 = EXTERNAL
auth_mechanisms.2 = PLAIN
ssl_cert_login_from = common_name
""")
    started("a TLS RabbitMQ node", node.start)
    admin = f"http://guest:guest@127.0.0.1:{node.mgmt_port}"
    done = hostbus("broker", "setup", "--admin-url", admin)
    assert done.returncode == 0, done.stderr
    yield SimpleNamespace(node=node, ca=tls, port=port, admin=admin)
    node.stop()


def enroll_with_certificate(b: SimpleNamespace, host: str, cfg: Path) -> str:
    """`broker enroll --tls-dir`: the agent's config at ``cfg``; its broker URL."""
    done = hostbus("broker", "enroll", host, "--tls-dir", str(b.ca), "--admin-url", b.admin,
                   "--broker-url", f"amqps://localhost:{b.port}/hostbus", "-o", str(cfg))
    assert done.returncode == 0, done.stderr
    return tomllib.loads(cfg.read_text())["broker"]["url"]


def test_an_agent_with_a_client_certificate_serves_a_console_over_tls(tls_broker, tmp_path):
    b = tls_broker
    host = "tls-web01"
    cfg = tmp_path / "agent.toml"
    url = enroll_with_certificate(b, host, cfg)
    assert url.startswith(f"amqps://{host}@localhost:{b.port}/hostbus?") and "certfile=" in url
    (tmp_path / "policy.toml").write_text('[[rule]]\nname = "all"\nallow = true\n')
    console_url = f"amqps://guest:guest@localhost:{b.port}/hostbus?cafile={b.ca}/ca.pem"
    console = Console.connect(console_url)
    online = EventCollector()
    console.subscribe([f"agent.{host}.online"], online)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOSTBUS_")}
    proc = subprocess.Popen(
        [str(BIN / "hostbus-agent"), "--config", str(cfg)], stderr=subprocess.PIPE, text=True,
        env={**env, "HOSTBUS_SECURITY_POLICY": str(tmp_path / "policy.toml"),
             "HOSTBUS_HOST_POWER_CONTROL": "dry-run",
             "HOSTBUS_AGENT_STATE_DIR": str(tmp_path / "state")})
    try:
        event = online.wait_for(lambda e: True, timeout=60)
        assert event.user_id == host  # the broker took the user from the certificate
        res = console.call("host", "identify", host=host, timeout=15)
        assert res.status == "ok" and res.reply.result["host_id"] == host
        assert res.reply.user_id == host
        cli = hostbus("--url", console_url, "call", "host.identify", "-H", host, "--json")
        assert cli.returncode == 0, cli.stderr
        assert json.loads(cli.stdout)["results"][0]["result"]["host_id"] == host
    finally:
        proc.terminate()
        proc.wait(30)
        console.close()


def test_amqp10_over_tls_with_a_client_certificate(tls_broker, tmp_path):
    """amqps10://: the same URL options as amqps://, SASL EXTERNAL from the certificate,
    the broker's certificate verified; a mixed pair (agent on 1.0, console on 0-9-1)."""
    from hostbus.serving.runtime import AgentRuntime
    from tests.fakes import make_host_agent

    b = tls_broker
    host = "tls10-web01"
    url = enroll_with_certificate(b, host, tmp_path / "agent.toml")
    url10 = url.replace("amqps://", "amqps10://")
    agent, _, _ = make_host_agent(host)
    runtime = AgentRuntime.serve(url10, host, [agent], heartbeat_interval=0)
    consoles = [Console.connect(f"{scheme}://guest:guest@localhost:{b.port}/hostbus?"
                                f"cafile={b.ca}/ca.pem") for scheme in ("amqps", "amqps10")]
    try:
        for console in consoles:
            res = console.call("host", "identify", host=host, timeout=10)
            assert res.status == "ok" and res.reply.result["host_id"] == host
            assert res.reply.user_id == host  # the broker took the user from the certificate
    finally:
        for console in consoles:
            console.close()
        runtime.stop("test over")


@pytest.mark.parametrize("scheme", ["amqps", "amqps10"])
def test_a_broker_certificate_from_another_ca_is_refused_clearly(tls_broker, tmp_path,
                                                                 scheme):
    b = tls_broker
    other = tmp_path / "other-ca"
    assert hostbus("broker", "dev-ca", str(other)).returncode == 0
    with pytest.raises(ConnectionFailed, match="certificate does not verify"):
        Console.connect(f"{scheme}://guest:guest@localhost:{b.port}/hostbus"
                        f"?cafile={other}/ca.pem", connect_timeout=10)


def test_a_client_certificate_from_another_ca_cannot_log_in(tls_broker, tmp_path):
    b = tls_broker
    other = tmp_path / "rogue-ca"
    assert hostbus("broker", "dev-ca", str(other), "--client", "tls-web01").returncode == 0
    with pytest.raises(ConnectionFailed) as info:
        Console.connect(f"amqps://tls-web01@localhost:{b.port}/hostbus?cafile={b.ca}/ca.pem"
                        f"&certfile={other}/tls-web01.pem&keyfile={other}/tls-web01.key",
                        connect_timeout=10)
    assert "TLS handshake failed" in str(info.value)


def test_enrolling_with_a_certificate_needs_an_amqps_url(tls_broker, tmp_path):
    b = tls_broker
    done = hostbus("broker", "enroll", "tls-web02", "--tls-dir", str(b.ca), "--admin-url",
                   b.admin, "--broker-url", f"amqp://localhost:{b.node.amqp_port}/hostbus",
                   "-o", str(tmp_path / "x.toml"))
    assert done.returncode == 2 and "needs TLS" in done.stderr
    assert not (tmp_path / "x.toml").exists()
