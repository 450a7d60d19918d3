"""A fleet on one RabbitMQ node: enrolling it, and what the broker holds for it.

On a node of the bench's own (so nothing else's queues or connections are counted):
1. ``--scale-hosts`` hosts enrolled with ``broker enroll --from``'s path (definitions
   imports of 500: two queues, their bindings and a user each), against the same work
   one host at a time through the management API (``enroll_host`` and the agent user,
   what ``broker enroll HOST`` does) for a sample, in the same run;
2. the node's memory before and after (the node measures it on demand), per host;
3. ``--scale-agents`` idle agents connected, each with its own user and connection and
   the default heartbeat (what a real fleet has; the fan-out benchmark shares a
   connection among 500 simulated agents instead): the node's memory per connected
   agent, and its CPU over ``--idle`` seconds with the hosts enrolled and nobody
   connected, then with the agents connected (the difference, per agent);
4. the same CPU measurements again after the node is restarted with its statistics
   interval raised (``collect_statistics_interval`` from RabbitMQ's default 5 s to 60 s:
   how often every queue, channel and connection reports its figures to the management
   plugin), so both are in one run, on the same node and hosts.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from benchmarks.faults import private_node
from benchmarks.harness import progress
from hostbus.broker_admin import BrokerAdmin
from hostbus.serving.runtime import AgentRuntime

CHUNK = 500
ONE_BY_ONE = 50  # the sample enrolled one host at a time
RAISED_STATS_MS = 60_000  # the second phase's (a setting RabbitMQ 3.10 and 4.x both know)
SETTLE_S = 10.0  # before each idle measurement
MEMORY_TIMEOUT_S = 300.0  # for the node's memory report (computed when asked)


def node_memory(admin: BrokerAdmin, node: str | None = None) -> dict[str, int]:
    """A node's memory now, in bytes, Erlang-accounted and RSS (the management API
    computes it when asked). ``node``: its name; the API's first node by default. A node
    busy opening 20,000 channels took more than the API's default 10 s to answer."""
    node = node or admin._call("GET", "/api/nodes", timeout=MEMORY_TIMEOUT_S)[0]["name"]
    found = admin._call("GET", f"/api/nodes/{node}?memory=true",
                        timeout=MEMORY_TIMEOUT_S)["memory"]
    return {"erlang": int(found["total"]["erlang"]), "rss": int(found["total"]["rss"])}


def _cpu_seconds(node: Any) -> float:
    """User and system CPU of the node's Erlang VM so far."""
    pid = (node.folder / "pid").read_text().strip()
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()  # noqa: SIM115
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _idle_cpu(node: Any, seconds: float) -> float:
    """The node's CPU over a quiet window, as a share of one core."""
    cpu0, t0 = _cpu_seconds(node), time.perf_counter()
    time.sleep(seconds)  # idle by design: what the node spends with nothing to do
    return (_cpu_seconds(node) - cpu0) / (time.perf_counter() - t0)


def run(n_hosts: int, n_agents: int, idle_s: float) -> dict[str, Any]:
    with private_node("scale") as node:
        admin, vhost = node.admin, "hostbus"
        prefix = f"sc{uuid.uuid4().hex[:4]}"
        out: dict[str, Any] = {"hosts": n_hosts, "agents": n_agents, "idle_s": idle_s,
                               "broker": admin.version()}

        progress(f"scale: {ONE_BY_ONE} hosts enrolled one at a time")
        started = time.perf_counter()
        for i in range(ONE_BY_ONE):
            host = f"{prefix}-one-{i:03d}"
            admin.enroll_host(vhost, host, ["host"])
            admin.create_identity(vhost, "agent", host, f"pw-{host}")
        one_by_one = (time.perf_counter() - started) / ONE_BY_ONE

        hosts = [(f"{prefix}-{i:05d}", ["host"]) for i in range(n_hosts)]
        passwords = {h: f"pw-{h}" for h, _ in hosts}
        before = node_memory(node.admin, node.node)
        progress(f"scale: {n_hosts:,} hosts enrolled in imports of {CHUNK}")
        started = time.perf_counter()
        admin.enroll_many(vhost, hosts, passwords=passwords, chunk=CHUNK,
                          progress=lambda done, total: progress(
                              f"scale: {done:,} of {total:,} enrolled") if done % 5000 == 0
                          else None)
        bulk_s = time.perf_counter() - started
        enrolled = node_memory(node.admin, node.node)
        out["enroll"] = {
            "bulk_s": round(bulk_s, 2), "bulk_per_host_ms": round(bulk_s / n_hosts * 1000, 3),
            "one_by_one_per_host_ms": round(one_by_one * 1000, 2),
            "one_by_one_extrapolated_s": round(one_by_one * n_hosts, 1),
            "speedup": round(one_by_one * n_hosts / bulk_s, 1)}
        out["memory_per_enrolled_host_kib"] = {
            k: round((enrolled[k] - before[k]) / n_hosts / 1024, 2) for k in before}

        phase = _idle_phase(node, vhost, hosts[:n_agents], passwords, idle_s)
        connected = phase.pop("memory_connected")
        out["memory_per_connected_agent_kib"] = {
            k: round((connected[k] - enrolled[k]) / n_agents / 1024, 1) for k in before}
        out["idle_cpu"] = {"collect_statistics_interval_ms": _stats_interval_ms(node), **phase}
        out["memory"] = {"before": before, "enrolled": enrolled, "connected": connected}

        # The same node, the same hosts and agents, with the statistics interval raised:
        # the node is stopped, its config given the setting, and started again (its
        # durable queues and users are kept), so both phases are in one run.
        progress(f"scale: restarting the node with collect_statistics_interval = "
                 f"{RAISED_STATS_MS} ms")
        started = time.perf_counter()
        node.stop()
        node.config += f"\ncollect_statistics_interval = {RAISED_STATS_MS}\n"
        node.start(timeout=900)  # 2 x --scale-hosts durable queues are recovered first
        out["restart_s"] = round(time.perf_counter() - started, 1)
        raised = _idle_phase(node, vhost, hosts[:n_agents], passwords, idle_s)
        raised.pop("memory_connected")
        out["idle_cpu_stats_raised"] = {"collect_statistics_interval_ms":
                                        _stats_interval_ms(node), **raised}
        return out


def _stats_interval_ms(node: Any) -> int | None:
    """The statistics interval the running node uses, as it says (None: unreadable)."""
    found = node.ctl("eval", "application:get_env(rabbit, collect_statistics_interval).")
    digits = "".join(ch for ch in found if ch.isdigit())  # {ok,5000}
    return int(digits) if digits else None


def _idle_phase(node: Any, vhost: str, agents: list[tuple[str, list[str]]],
                passwords: dict[str, str], idle_s: float) -> dict[str, Any]:
    """The node's CPU idle with the hosts enrolled and nobody connected, then with
    ``agents`` connected as idle agents (a connection and user each); and its memory
    with them connected (``memory_connected``)."""
    time.sleep(min(SETTLE_S, idle_s))  # the import's or the boot's after-work is not idle
    progress(f"scale: hosts enrolled, none connected, for {idle_s:g} s")
    enrolled_cpu = _idle_cpu(node, idle_s)
    progress(f"scale: {len(agents)} idle agents connecting, a connection each")
    runtimes: list[AgentRuntime] = []
    try:
        for host, _ in agents:
            runtimes.append(AgentRuntime.serve(
                f"amqp://{host}:{passwords[host]}@127.0.0.1:{node.amqp_port}/{vhost}",
                host, [], heartbeat_interval=0))
        connected = node_memory(node.admin, node.node)
        progress(f"scale: {len(agents)} agents idle for {idle_s:g} s")
        connected_cpu = _idle_cpu(node, idle_s)
    finally:
        for runtime in runtimes:
            runtime.stop("benchmark over")
    return {"enrolled_percent_of_a_core": round(enrolled_cpu * 100, 2),
            "connected_percent_of_a_core": round(connected_cpu * 100, 2),
            "per_agent_percent": round((connected_cpu - enrolled_cpu) * 100 / len(agents), 4),
            "memory_connected": connected}


def text(r: dict[str, Any]) -> list[str]:
    e, h = r["enroll"], r["memory_per_enrolled_host_kib"]
    a = r["memory_per_connected_agent_kib"]
    lines = [
        f"scale (RabbitMQ {r['broker']}, a node of the bench's own):",
        f"  enroll {r['hosts']:,} hosts in imports of {CHUNK}: {e['bulk_s']} s "
        f"({e['bulk_per_host_ms']} ms a host); one at a time {e['one_by_one_per_host_ms']} ms "
        f"a host ({e['one_by_one_extrapolated_s']} s for all): {e['speedup']}x",
        f"  broker memory per enrolled host: {h['erlang']} KiB (Erlang), {h['rss']} KiB (RSS)",
        f"  per connected idle agent: {a['erlang']} KiB (Erlang), {a['rss']} KiB (RSS)",
    ]
    for key in ("idle_cpu", "idle_cpu_stats_raised"):
        c = r.get(key)
        if c:
            lines.append(
                f"  the node's CPU, idle, statistics every "
                f"{c['collect_statistics_interval_ms'] / 1000:g} s: "
                f"{c['enrolled_percent_of_a_core']}% of a core with the hosts enrolled, "
                f"{c['connected_percent_of_a_core']}% with {r['agents']} of them connected "
                f"({c['per_agent_percent']}% a connected agent)")
    if "restart_s" in r:
        lines.append(f"  (the node restarted with the raised interval in {r['restart_s']} s)")
    return lines
