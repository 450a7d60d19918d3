"""A three-node RabbitMQ cluster started by the test on this machine: the node every
component is connected to is killed while an agent publishes events and a provisioning
request is in flight; all move to other nodes, and nothing is lost or done twice."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pika
import pytest

from agents import virt
from console.client import Console
from hostbus.serving.runtime import AgentRuntime
from tests.fakes import EventCollector, make_host_agent, post_provision_raw
from tests.integration.test_provisioning import GatedVirtAgent
from tests.rabbit_node import (
    RabbitNode,
    alerts_in_two_parts,
    kill,
    rabbitmq4_root,
    start_cluster,
    started,
    stop_all,
)

# Starting RabbitMQ nodes of their own takes 10 s or more each (counted in the timeout).
pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["rabbitmq3", "rabbitmq4"])
def cluster(request, tmp_path_factory):
    # A fresh cluster for each run: a node killed and restarted by the run before can
    # still be recovering its queues, and RabbitMQ 3.10's AMQP 1.0 plugin closes the
    # connection of a publisher whose message the broker nacks in that state
    # (docs/amqp10-interop.md, "Limits"). The machine's RabbitMQ (3.10), and RabbitMQ 4
    # from the Debian 13 root.
    root = started("the RabbitMQ 4 root", rabbitmq4_root) \
        if request.param == "rabbitmq4" else None
    folder = tmp_path_factory.mktemp("cluster")
    nodes = started(f"a {request.param} cluster", lambda: start_cluster(folder, root=root))
    nodes[0].admin.setup("hostbus")  # after clustering: quorum queues span all three
    yield nodes
    stop_all(nodes)


@pytest.mark.parametrize("scheme", ["amqp", "amqp10"], ids=["amqp091", "amqp10"])
def test_killing_the_node_everything_is_on_loses_nothing(cluster: list[RabbitNode],
                                                         tmp_path, scheme):
    """The agents and the provisioner speak ``scheme``; the console and the plain
    client stay on 0-9-1 (a durable subscription binds its queue)."""
    a, b, c = cluster
    status = a.ctl("cluster_status")
    assert b.node in status and c.node in status
    tag = uuid.uuid4().hex[:6]
    host, virt_host, prov = f"cl-{tag}", f"clv-{tag}", f"clp-{tag}"
    for name, agents in ((host, ["host"]), (virt_host, ["virt"]), (prov, ["provision"])):
        a.admin.enroll_host("hostbus", name, agents, queue_type="quorum")
    # A cluster: tried in turn.
    urls = ",".join(n.url().replace("amqp://", f"{scheme}://") for n in (a, b, c))
    on_a = f"127.0.0.1:{a.amqp_port}"

    agent, _, _ = make_host_agent(host)
    runtime = AgentRuntime.serve(urls, host, [agent], heartbeat_interval=0)
    moved = threading.Event()
    runtime.transport.on_connection_restored(moved.set)
    cfg = dict(virt.CONFIG_DEFAULTS, stats_interval=0)
    plain = virt.create(cfg, host_id=virt_host)
    virt_agent = GatedVirtAgent(cfg, host_id=virt_host, conn=plain.conn,
                                templates=plain.templates)
    virt_agent.gate = threading.Event()
    virt_runtime = AgentRuntime.serve(urls, virt_host, [virt_agent], heartbeat_interval=0)
    assert runtime.transport.connected_to == on_a == virt_runtime.transport.connected_to

    console = Console.connect(c.url())  # a node that stays up
    # A console on the node that dies: its reply queue dies with it, and the one it
    # gets on the next node must not be the dead node's (replies would be lost).
    moving_console = Console.connect(urls)
    console_moved = threading.Event()
    moving_console.transport.on_connection_restored(console_moved.set)
    seen = EventCollector()
    console.subscribe([f"host.{host}.alert"], seen, name=f"cl-{host}", durable=True)
    watch = EventCollector()
    console.subscribe([f"agent.{prov}.online", f"virt.{virt_host}.domain.lifecycle"], watch)
    prov_cfg = tmp_path / "provisioner.toml"
    prov_cfg.write_text(f'[broker]\nurl = "{urls}"\n[provisioner]\nhost_id = "{prov}"\n'
                        f'state_dir = "{tmp_path / "state"}"\ncall_timeout = 30.0\n'
                        f'heartbeat_interval = 3600.0\n'
                        f'policy = "{ROOT / "etc" / "policy-demo.toml"}"\n')
    prov_log = tmp_path / "provisioner.log"
    provisioner = subprocess.Popen([str(BIN / "hostbus"), "provisioner", "--config",
                                    str(prov_cfg)], stdout=prov_log.open("w"),
                                   stderr=subprocess.STDOUT, text=True)
    publisher, first_part_out, go_on = alerts_in_two_parts(agent.emit, 300, split_at=100)
    conn = pika.BlockingConnection(pika.URLParameters(c.url()))
    try:
        watch.wait_for(lambda e: e.event == "online", timeout=60)
        ch = conn.channel()
        reply_queue, rid = post_provision_raw(ch, "erin")
        # The VM is defined and the provisioner waits for the agent's answer.
        watch.wait_for(lambda e: e.event == "domain.lifecycle"
                       and e.data["event"] == "defined", timeout=60)
        publisher.start()
        assert first_part_out.wait(60)
        kill(a)  # the node the agents and the provisioner are connected to
        go_on.set()  # the other 200 while the agent looks for another node
        assert moved.wait(90), "the agent did not reconnect to another node"
        assert runtime.transport.connected_to != on_a
        virt_agent.gate.set()

        publisher.join(120)
        events = seen.wait_until(lambda evs: len(evs) >= 300, timeout=120)
        assert [e.data["value"] for e, _ in events] == [float(n) for n in range(300)]
        # Requests reach the hosts through their replicated queues, now led elsewhere.
        assert console.call("agent", "ping", host=host, timeout=30).status == "ok"
        assert console_moved.wait(90), "the console did not reconnect to another node"
        assert moving_console.call("agent", "ping", host=host, timeout=30).status == "ok"

        # The provisioning request, posted before the crash, completes once.
        for _m, props, body in ch.consume(reply_queue, inactivity_timeout=120):
            assert body is not None, ("no provisioning reply after the node was killed; "
                                      f"provisioner log:\n{prov_log.read_text()[-3000:]}")
            assert props.correlation_id == rid
            assert json.loads(body)["status"] == "ok", body
            break
        ch.cancel()
        names = [d["name"] for d in virt_agent.domain_objects()]
        assert names == [f"web-{rid.replace('-', '')[:8]}-1"]
    finally:
        virt_agent.gate.set()
        go_on.set()
        if publisher.is_alive():
            publisher.join(120)
        provisioner.terminate()
        provisioner.wait(30)
        moving_console.close()
        runtime.stop("test over")
        virt_runtime.stop("test over")
        plain.conn.close()
        console.close()
        if conn.is_open:
            conn.close()
