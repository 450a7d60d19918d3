"""A RabbitMQ node of the tests' own, beside the machine's broker: its own node name,
ports, data folder and configuration (TLS, or a cluster of several nodes sharing one
Erlang cookie). Started and stopped by the test that needs it."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from hostbus.broker_admin import BrokerAdmin

T = TypeVar("T")
# AMQP 1.0 as broker_config/ ships it: the plugin, and no anonymous login.
AMQP10_PLUGINS = ("rabbitmq_amqp1_0",)
AMQP10_CONFIG = "amqp1_0.default_user = none\n"
SBIN = Path("/usr/lib/rabbitmq/bin")  # Debian's; /usr/sbin's wrappers switch user


def _tool(name: str) -> str:
    path = SBIN / name
    found = str(path) if path.exists() else shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found: install rabbitmq-server (./run.sh test does)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RabbitNode:
    def __init__(self, folder: Path, *, config: str = "", plugins: tuple[str, ...] = (),
                 home: Path | None = None, name: str | None = None) -> None:
        self.folder = folder
        self.home = home or folder  # the Erlang cookie lives here; a cluster shares it
        self.node = f"{name or 'hbtest-' + uuid.uuid4().hex[:6]}@localhost"
        self.amqp_port, self.mgmt_port, self.dist_port = free_port(), free_port(), free_port()
        self.config = config
        self.plugins = ("rabbitmq_management", *plugins)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "HOME": str(self.home), "RABBITMQ_NODENAME": self.node,
                "RABBITMQ_NODE_PORT": str(self.amqp_port),
                "RABBITMQ_DIST_PORT": str(self.dist_port),
                "RABBITMQ_CONFIG_FILE": str(self.folder / "rabbitmq"),
                "RABBITMQ_MNESIA_BASE": str(self.folder / "mnesia"),
                "RABBITMQ_LOG_BASE": str(self.folder / "log"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.folder / "enabled_plugins"),
                "RABBITMQ_PID_FILE": str(self.folder / "pid")}

    @property
    def admin(self) -> BrokerAdmin:
        return BrokerAdmin(f"http://guest:guest@127.0.0.1:{self.mgmt_port}")

    def url(self, vhost: str = "hostbus") -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/{vhost}"

    def start(self, timeout: int = 120) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        # The node's own ports last: a later key wins, so a shipped file can go first.
        (self.folder / "rabbitmq.conf").write_text(
            f"{self.config}\nlisteners.tcp.default = {self.amqp_port}\n"
            f"management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {self.mgmt_port}\n")
        (self.folder / "enabled_plugins").write_text(f"[{','.join(self.plugins)}].\n")
        # cwd: a node that dies writes its MnesiaCore dump into the working directory.
        subprocess.run([_tool("rabbitmq-server"), "-detached"], env=self.env, check=True,
                       capture_output=True, timeout=30, cwd=self.folder)
        # `wait` follows the pid file until the node has booted (await_startup fails at
        # once while the node is not yet registered).
        self.ctl("wait", str(self.folder / "pid"), "--timeout", str(timeout),
                 timeout=timeout + 10)

    def ctl(self, *args: str, timeout: float = 60) -> str:
        done = subprocess.run([_tool("rabbitmqctl"), "-n", self.node, *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout, check=False,
                              cwd=self.folder)
        if done.returncode != 0:
            log = self.folder / "log" / f"{self.node}.log"
            tail = log.read_text()[-3000:] if log.exists() else "(no log)"
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} on {self.node} failed: "
                               f"{done.stdout}{done.stderr}\n--- node log ---\n{tail}")
        return done.stdout

    def stop(self) -> None:
        try:
            self.ctl("stop", timeout=60)
        except (RuntimeError, subprocess.TimeoutExpired):
            kill(self)


def start_cluster(folder: Path, size: int = 3) -> list[RabbitNode]:
    """``size`` nodes on this machine, clustered with the shipped
    broker_config/cluster/rabbitmq-cluster.conf (its node names replaced by these):
    one Erlang cookie (a shared home), distinct names and ports. Stops what it started
    if anything fails."""
    from hostbus.resources import data_dir

    tag = uuid.uuid4().hex[:4]
    home = folder / "home"
    home.mkdir(parents=True, exist_ok=True)
    names = [f"hbc{i}-{tag}" for i in range(1, size + 1)]
    config = (data_dir("broker_config") / "cluster" / "rabbitmq-cluster.conf").read_text()
    for i, name in enumerate(names, 1):
        config = config.replace(f"rabbit@mq{i}", f"{name}@localhost")
    config += "\n" + AMQP10_CONFIG
    nodes = [RabbitNode(folder / f"n{i}", home=home, name=name, config=config,
                        plugins=AMQP10_PLUGINS)
             for i, name in enumerate(names, 1)]
    started: list[RabbitNode] = []
    try:
        for node in nodes:
            node.start()  # each one after the first finds the others and joins them
            started.append(node)
        running = nodes[0].ctl("cluster_status", "--formatter", "json")
        missing = [n.node for n in nodes if n.node not in running.split("running_nodes")[1]]
        if missing:
            raise RuntimeError(f"nodes did not join the cluster: {missing}\n{running}")
    except BaseException:
        for node in started:
            node.stop()
        raise
    return nodes


def kill(node: RabbitNode) -> None:
    """SIGKILL the node's Erlang VM: a crash, not a clean stop. A node already gone is
    left alone."""
    with contextlib.suppress(FileNotFoundError, ProcessLookupError, ValueError):
        os.kill(int((node.folder / "pid").read_text().strip()), signal.SIGKILL)


@contextmanager
def hostbus_node(folder: Path, what: str) -> Iterator[RabbitNode]:
    """A node with AMQP 1.0 as shipped and the hostbus vhost set up; stopped after."""
    node = RabbitNode(folder, plugins=AMQP10_PLUGINS, config=AMQP10_CONFIG)
    started(what, node.start)
    try:
        node.admin.setup("hostbus")
        yield node
    finally:
        node.stop()


def started(what: str, start: Callable[[], T]) -> T:
    """``start()``, or the test is skipped (locally) or failed (CI=true: a missing
    service fails the run, never skips it) with the reason."""
    from hostbus.testing.pytest_plugin import fail_or_skip

    try:
        return start()
    except (RuntimeError, subprocess.SubprocessError) as exc:
        fail_or_skip(f"could not start {what}: {exc}")
        raise  # not reached: fail_or_skip raises


def alerts_in_two_parts(emit: Callable[[str, dict], None], count: int, *,
                        split_at: int) -> tuple[threading.Thread, threading.Event,
                                                threading.Event]:
    """A thread that emits ``count`` numbered host.alert events: the first ``split_at``,
    then, once the test has pulled the plug and set ``go_on``, the rest. Returns the
    thread, an event set when the first part is out, and ``go_on``."""
    first_part_out, go_on = threading.Event(), threading.Event()

    def emit_alert(n: int) -> None:
        emit("alert", {"metric": "cpu_percent", "state": "raised", "value": float(n),
                       "threshold": 90.0})

    def run() -> None:
        for n in range(split_at):
            emit_alert(n)
        first_part_out.set()
        if not go_on.wait(300):
            return  # the test failed before it let us go on; it reports why
        for n in range(split_at, count):
            emit_alert(n)

    return threading.Thread(target=run, name="numbered-alerts"), first_part_out, go_on
