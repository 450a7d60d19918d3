"""A RabbitMQ node of the tests' own, beside the machine's broker: its own node name,
ports, data folder and configuration (TLS, or a cluster of several nodes sharing one
Erlang cookie). Started and stopped by the test that needs it.

Two brokers: the machine's RabbitMQ (3.10 on Debian 12), and RabbitMQ 4 from a Debian 13
root that `./run.sh test` builds once with debootstrap (``.cache/rabbitmq4-root``, or
``HOSTBUS_TEST_RABBITMQ4_ROOT``). A node from a root runs chrooted in a mount namespace
of its own (``unshare --mount``): /proc and the node's folders are mounted into the root
there, so nothing is left mounted when the node is gone, and several nodes share one
root, each seeing only its own folder (always at /hostbus-node inside). Same network:
its ports are this machine's, and it registers with the machine's epmd."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import string
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from hostbus.broker_admin import BrokerAdmin

T = TypeVar("T")
# AMQP 1.0 as broker_config/ ships it: the plugin (built in and kept as an empty plugin on
# 4.x), and no anonymous login (amqp10_config).
AMQP10_PLUGINS = ("rabbitmq_amqp1_0",)
SBIN = Path("/usr/lib/rabbitmq/bin")  # Debian's; /usr/sbin's wrappers switch user
REPO = Path(__file__).resolve().parents[1]
# Where a rooted node sees its own folder and its HOME (the Erlang cookie).
NODE_DIR, HOME_DIR = "/hostbus-node", "/hostbus-home"


def rabbitmq4_root() -> Path:
    """The Debian 13 root with RabbitMQ 4 that `./run.sh test` builds. Raises
    RuntimeError (a missing service: tests skip locally, fail in CI) when it is not
    built."""
    root = Path(os.environ.get("HOSTBUS_TEST_RABBITMQ4_ROOT")
                or REPO / ".cache" / "rabbitmq4-root")
    if not (root / ".hostbus-ready").exists():
        raise RuntimeError(f"no RabbitMQ 4 root in {root}: `./run.sh test` builds it "
                           "(debootstrap, about 30 s), or set HOSTBUS_TEST_RABBITMQ4_ROOT")
    if os.geteuid() != 0:
        raise RuntimeError("a RabbitMQ 4 node runs chrooted: the tests must run as root")
    return root


def installed_version(root: Path | None = None) -> str:
    """The RabbitMQ version installed on this machine, or in ``root``."""
    lib = (root or Path("/")) / "usr/lib/rabbitmq/lib"
    found = sorted(lib.glob("rabbitmq_server-*"))
    if not found:
        raise RuntimeError(f"no RabbitMQ in {lib}: install rabbitmq-server (./run.sh test does)")
    return found[-1].name.removeprefix("rabbitmq_server-")


def amqp10_config(root: Path | None = None) -> str:
    """broker_config's AMQP 1.0 settings for the RabbitMQ of this machine or ``root``."""
    from hostbus.resources import data_dir

    major = installed_version(root).split(".")[0]
    return (data_dir("broker_config") / f"amqp10-rabbitmq{major}.conf").read_text()


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


# Run inside a new mount namespace: mount what the node needs into the root, then chroot
# and run the command in the node's folder with the given environment. Names resolve
# from a hosts file of the node's own (this machine's names, on IPv4 and IPv6) and never
# through DNS: a test node needs no other name, and the root's copy of this machine's
# resolv.conf names a server that may not answer (a waiting node's resolver was seen
# restarting every 23 s on lookup timeouts).
_ENTER_ROOT = """set -e
root=$1 folder=$2 home=$3; shift 3
mount -t proc proc "$root/proc"
mount --bind "$folder" "$root/hostbus-node"
mount --bind "$home" "$root/hostbus-home"
mount --bind -o ro "$folder/etc-hosts" "$root/etc/hosts"
mount --bind -o ro "$folder/etc-resolv.conf" "$root/etc/resolv.conf"
exec chroot "$root" /usr/bin/env -i "$@"
"""


class RabbitNode:
    def __init__(self, folder: Path, *, config: str = "", plugins: tuple[str, ...] = (),
                 home: Path | None = None, name: str | None = None,
                 root: Path | None = None) -> None:
        """``root``: a Debian root to run the node from (``rabbitmq4_root()``); without
        it, the machine's RabbitMQ."""
        self.folder = folder
        self.home = home or folder  # the Erlang cookie lives here; a cluster shares it
        self.root = root
        self.node = f"{name or 'hbtest-' + uuid.uuid4().hex[:6]}@localhost"
        self.amqp_port, self.mgmt_port, self.dist_port = free_port(), free_port(), free_port()
        self.config = config
        self.plugins = ("rabbitmq_management", *plugins)

    @property
    def env(self) -> dict[str, str]:
        """The node's environment, with its folders as the node sees them."""
        folder = NODE_DIR if self.root else str(self.folder)
        home = (HOME_DIR if self.home != self.folder else NODE_DIR) if self.root \
            else str(self.home)
        base = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"} if self.root \
            else dict(os.environ)
        return {**base, "HOME": home, "RABBITMQ_NODENAME": self.node,
                "RABBITMQ_NODE_PORT": str(self.amqp_port),
                "RABBITMQ_DIST_PORT": str(self.dist_port),
                "RABBITMQ_CONFIG_FILE": f"{folder}/rabbitmq",
                "RABBITMQ_MNESIA_BASE": f"{folder}/mnesia",
                "RABBITMQ_LOG_BASE": f"{folder}/log",
                "RABBITMQ_ENABLED_PLUGINS_FILE": f"{folder}/enabled_plugins",
                "RABBITMQ_PID_FILE": f"{folder}/pid"}

    @property
    def version(self) -> str:
        """The running node's RabbitMQ version, as its management API reports it."""
        import base64
        import json
        import urllib.request

        request = urllib.request.Request(f"http://127.0.0.1:{self.mgmt_port}/api/overview")
        request.add_header("Authorization", f"Basic {base64.b64encode(b'guest:guest').decode()}")
        with urllib.request.urlopen(request, timeout=10) as answer:
            return str(json.load(answer)["rabbitmq_version"])

    def _command(self, tool: str, *args: str) -> tuple[list[str], dict[str, str] | None]:
        """How to run one of RabbitMQ's tools for this node: the machine's, or the
        root's inside it (see the module's docstring). (argv, environment)"""
        if self.root is None:
            return [_tool(tool), *args], self.env
        for mount_point in (NODE_DIR, HOME_DIR):
            (self.root / mount_point.lstrip("/")).mkdir(exist_ok=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        names = " ".join(dict.fromkeys(["localhost", socket.gethostname()]))
        (self.folder / "etc-hosts").write_text(f"127.0.0.1 {names}\n::1 {names}\n")
        (self.folder / "etc-resolv.conf").write_text("# no DNS for a test node\n")
        inside = [f"{k}={v}" for k, v in self.env.items()]
        return (["unshare", "--mount", "--propagation", "private", "sh", "-c", _ENTER_ROOT,
                 "-", str(self.root), str(self.folder), str(self.home), *inside,
                 # cwd: a node that dies writes its MnesiaCore dump into it.
                 "sh", "-c", f'cd {NODE_DIR} && exec "$@"', "-", str(SBIN / tool), *args],
                None)

    def _run(self, tool: str, *args: str, timeout: float) -> subprocess.CompletedProcess:
        argv, env = self._command(tool, *args)
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout,
                              check=False, cwd=self.folder)

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
        # In the foreground (not -detached), its output kept in boot.log: a node that
        # does not boot (a setting its version does not know, say) says why there, and
        # is seen to exit instead of waited for until the timeout. Its own session: it
        # outlives nothing but is stopped by stop() or kill().
        argv, env = self._command("rabbitmq-server")
        with (self.folder / "boot.log").open("wb") as boot_log:
            # cwd: a node that dies writes its MnesiaCore dump into the working directory.
            server = subprocess.Popen(argv, env=env, cwd=self.folder, stdin=subprocess.DEVNULL,
                                      stdout=boot_log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        # `wait` follows the pid file until the node has booted (await_startup fails at
        # once while the node is not yet registered); it does not notice a node that
        # died, so the server's exit ends the wait too.
        argv, env = self._command("rabbitmqctl", "-n", self.node, "wait",
                                  self.env["RABBITMQ_PID_FILE"], "--timeout", str(timeout))
        waiter = subprocess.Popen(argv, env=env, cwd=self.folder, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, start_new_session=True)

        def end_wait_if_server_exits() -> None:
            server.wait()  # also reaps it whenever it ends
            if waiter.poll() is None:  # the whole group: rabbitmqctl is a script
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(waiter.pid, signal.SIGKILL)

        threading.Thread(target=end_wait_if_server_exits, name=f"reap-{self.node}",
                         daemon=True).start()
        try:
            output, _ = waiter.communicate(timeout=timeout + 10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(waiter.pid, signal.SIGKILL)
            output, _ = waiter.communicate()
        if waiter.returncode != 0:
            # The reason is near the start (a bad key: line 7); the crash comes after.
            boot = (self.folder / "boot.log").read_text(errors="replace")
            if len(boot) > 4000:
                boot = f"{boot[:2500]}\n[...]\n{boot[-1500:]}"
            state = "exited" if server.poll() is not None else "did not boot in time"
            if state != "exited":
                kill(self)
            raise RuntimeError(f"RabbitMQ node {self.node} {state}: {output}\n"
                               f"--- its output ---\n{boot}")

    def ctl(self, *args: str, timeout: float = 60) -> str:
        done = self._run("rabbitmqctl", "-n", self.node, *args, timeout=timeout)
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


def start_cluster(folder: Path, size: int = 3, *,
                  root: Path | None = None) -> list[RabbitNode]:
    """``size`` nodes on this machine, clustered with the shipped
    broker_config/cluster/rabbitmq-cluster.conf (its node names replaced by these):
    one Erlang cookie (a shared home), distinct names and ports; from ``root`` if given.
    Stops what it started if anything fails."""
    from hostbus.resources import data_dir

    tag = uuid.uuid4().hex[:4]
    home = folder / "home"
    home.mkdir(parents=True, exist_ok=True)
    # The shared Erlang cookie, made before the nodes start together: left to them, each
    # VM (and each rabbitmqctl) that finds none writes one, and a node that read another's
    # refuses the CLI ("Invalid challenge reply"; a 3.10 cluster failed to start in CI).
    cookie = home / ".erlang.cookie"
    if not cookie.exists():
        fd = os.open(cookie, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with os.fdopen(fd, "w") as out:
            out.write("".join(secrets.choice(string.ascii_uppercase) for _ in range(20)))
    names = [f"hbc{i}-{tag}" for i in range(1, size + 1)]
    config = (data_dir("broker_config") / "cluster" / "rabbitmq-cluster.conf").read_text()
    for i, name in enumerate(names, 1):
        config = config.replace(f"rabbit@mq{i}", f"{name}@localhost")
    config += "\n" + amqp10_config(root)
    nodes = [RabbitNode(folder / f"n{i}", home=home, name=name, config=config,
                        plugins=AMQP10_PLUGINS, root=root)
             for i, name in enumerate(names, 1)]
    started: list[RabbitNode] = []
    try:
        # All at once, as machines of a cluster start: RabbitMQ 4's peer discovery waits
        # for every listed node to be up before a new node boots (one by one, the first
        # never did); 3.10's takes a cluster-wide lock (since 3.8.18), so one node forms
        # the cluster and the others join it, whichever boots first. One by one, 3.10
        # took 27 to 29 s for three.
        def start(node: RabbitNode) -> None:
            node.start()
            started.append(node)

        failures = in_parallel(start, nodes)
        if failures:
            raise failures[0]
        running = nodes[0].ctl("cluster_status", "--formatter", "json")
        missing = [n.node for n in nodes if n.node not in running.split("running_nodes")[1]]
        if missing:
            raise RuntimeError(f"nodes did not join the cluster: {missing}\n{running}")
    except BaseException:
        stop_all(started)
        raise
    return nodes


def in_parallel(action: Callable[[RabbitNode], object],
                nodes: list[RabbitNode]) -> list[BaseException]:
    """``action`` on each node, each on a thread of its own; what each raised."""
    failures: list[BaseException] = []

    def run(node: RabbitNode) -> None:
        try:
            action(node)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(n,), name=f"node-{n.node}") for n in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return failures


def stop_all(nodes: list[RabbitNode]) -> None:
    """Stop ``nodes`` at once: each ``rabbitmqctl stop`` waits for its node's shutdown
    (a few seconds; a killed node's stop fails first, then kills nothing)."""
    in_parallel(RabbitNode.stop, nodes)


def kill(node: RabbitNode) -> None:
    """SIGKILL the node's Erlang VM: a crash, not a clean stop. A node already gone is
    left alone."""
    with contextlib.suppress(FileNotFoundError, ProcessLookupError, ValueError):
        os.kill(int((node.folder / "pid").read_text().strip()), signal.SIGKILL)


@contextmanager
def hostbus_node(folder: Path, what: str, *, root: Path | None = None) -> Iterator[RabbitNode]:
    """A node with AMQP 1.0 as shipped and the hostbus vhost set up; stopped after.
    From ``root`` if given (``rabbitmq4_root()``), else the machine's RabbitMQ."""
    node = RabbitNode(folder, plugins=AMQP10_PLUGINS, config=amqp10_config(root), root=root)
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
