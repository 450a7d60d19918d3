"""`hostbus bench`: run the benchmarks, each against its raw-client baseline."""

from __future__ import annotations

import gc
import os
import platform
import time
from dataclasses import dataclass, field
from typing import Any

from benchmarks import (
    amqp10,
    call,
    events,
    fanout,
    fanout10k,
    faults,
    footprint,
    history,
    machine,
    manager,
    peers,
    placement,
    provisioning,
    reactor,
    scale,
    soak,
    tracing,
)
from benchmarks.harness import bench_vhost, progress
from hostbus.envelope import now_rfc3339

ALL = ("call", "fanout", "events", "amqp10", "placement", "provisioning", "footprint",
       "tracing")
#: Run only when asked for (--only soak, --only faults, ...): minutes by design; faults
#: and scale start a RabbitMQ node of their own (root, a source checkout); peers
#: installs oslo.messaging and nameko into virtual environments of their own; fanout10k
#: starts 10,000 simulated agents on a node of its own (about 10 minutes here).
EXTRA = ("soak", "faults", "history", "scale", "peers", "reactor", "manager", "fanout10k")


@dataclass
class Plan:
    calls: int = 2000
    agents: list[int] = field(default_factory=lambda: [100, 1000, 5000])
    events: int = 20000
    provision_requests: int = 300
    provision_hosts: int = 100
    placement_hosts: int = 1000
    idle_s: float = 60.0
    storm_s: float = 10.0
    soak_minutes: float = 5.0
    alarm_s: float = 70.0  # outlasts pika's 60 s blocked-connection timeout
    history_stored: int = 10_000_000  # events in the store the queries run over
    history_postgres: str | None = None  # a server URL whose role may create databases
    scale_hosts: int = 10_000  # hosts enrolled by --only scale
    scale_agents: int = 200  # of which connected, a connection each
    peer_servers: int = 100  # servers a peer broadcast reaches
    peer_broadcasts: int = 20  # broadcasts per side
    peer_events: int = 5000  # events per run, per side
    peer_event_rounds: int = 3  # event runs per side
    reactor_events: int = 10_000  # a burst into the reactor, each seen by every rule
    reactor_rules: int = 100
    manager_hosts: int = 1000  # simulated virt hosts, ten VMs each
    manager_ha_vms: int = 50  # on the host the manager loses
    fanout10k_agents: int = 10_000  # simulated agents a broadcast reaches (--only fanout10k)
    only: tuple[str, ...] = ALL

    @classmethod
    def quick(cls) -> Plan:
        return cls(calls=200, agents=[10, 50], events=1000, provision_requests=3,
                   provision_hosts=2, placement_hosts=100, idle_s=2.0,
                   storm_s=1.0, alarm_s=10.0, history_stored=20_000, scale_hosts=1000,
                   scale_agents=20, peer_servers=10, peer_broadcasts=3, peer_events=300,
                   peer_event_rounds=1, reactor_events=1000, manager_hosts=20,
                   manager_ha_vms=5, fanout10k_agents=200)


def _redacted(url: str | None) -> str | None:
    """A database URL without its password, for the results."""
    if url is None:
        return None
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


def run(plan: Plan, *, amqp: str, admin_url: str) -> dict[str, Any]:
    results: dict[str, Any] = {"meta": {"when": now_rfc3339(), "cpus": os.cpu_count(),
                                        "python": platform.python_version(),
                                        "plan": plan.__dict__ | {
                                            "only": list(plan.only),
                                            "history_postgres": _redacted(
                                                plan.history_postgres)}}}
    results["meta"]["machine"] = machine.describe()
    # Measured first, before the benchmarks' threads and connections exist, and again at
    # the end: a machine whose load changed during the run shows it here.
    wakeup_before = machine.wakeup_latency()
    with bench_vhost(amqp, admin_url) as bench:
        try:
            overview = bench.admin._call("GET", "/api/overview")
            results["meta"]["broker"] = overview.get("rabbitmq_version")
        except Exception:  # the version is a nicety
            results["meta"]["broker"] = None
        started = time.perf_counter()
        if "call" in plan.only:
            progress(f"call round trips: {plan.calls} each, raw and hostbus")
            results["call"] = call.run(bench, plan.calls)
        if "fanout" in plan.only:
            results["fanout"] = fanout.run(bench, plan.agents)
        # Each benchmark starts from a clean heap: the simulated fleet leaves hundreds of
        # thousands of objects in reference cycles, and the collector's passes over
        # them halved the event rate measured next (10,446/s against 18,148/s alone).
        gc.collect()
        if "events" in plan.only:
            progress(f"events: {plan.events}, raw and hostbus")
            results["events"] = events.run(bench, plan.events)
        gc.collect()
        if "amqp10" in plan.only:
            results["amqp10"] = amqp10.run(bench, plan.calls, plan.events)
        gc.collect()
        if "placement" in plan.only:
            progress(f"placement: decisions over {plan.placement_hosts} simulated hosts")
            results["placement"] = placement.run(plan.placement_hosts)
        gc.collect()
        if "provisioning" in plan.only:
            results["provisioning"] = provisioning.run(bench, plan.provision_requests,
                                                       plan.provision_hosts)
        if "tracing" in plan.only:
            progress(f"tracing: {plan.calls} calls each, off and on")
            results["tracing"] = tracing.run(bench, plan.calls)
        if "footprint" in plan.only:
            results["footprint"] = footprint.run(bench, plan.idle_s, plan.storm_s)
        if "faults" in plan.only:
            results["faults"] = faults.run(plan.alarm_s)
        if "history" in plan.only:
            progress(f"history: ingest and queries over {plan.history_stored:,} events")
            results["history"] = history.run(bench, plan.events, plan.history_stored,
                                             plan.history_postgres,
                                             repeat=50 if plan.history_stored > 100_000 else 5)
        if "scale" in plan.only:
            results["scale"] = scale.run(plan.scale_hosts, plan.scale_agents, plan.idle_s)
        gc.collect()
        if "peers" in plan.only:
            results["peers"] = peers.run(bench, plan.calls, plan.peer_servers,
                                         plan.peer_broadcasts, plan.peer_events,
                                         plan.peer_event_rounds)
        if "fanout10k" in plan.only:
            results["fanout10k"] = fanout10k.run(plan.fanout10k_agents)
        gc.collect()
        if "reactor" in plan.only:
            results["reactor"] = reactor.run(bench, plan.reactor_events, plan.reactor_rules)
        gc.collect()
        if "manager" in plan.only:
            results["manager"] = manager.run(
                bench, plan.manager_hosts, plan.manager_hosts * 10, plan.manager_ha_vms,
                decisions=500 if plan.manager_hosts >= 100 else 100)
        if "soak" in plan.only:
            progress(f"soak: one agent under steady load for {plan.soak_minutes:g} min")
            results["soak"] = soak.run(bench, plan.soak_minutes)
        results["meta"]["seconds"] = round(time.perf_counter() - started, 1)
    results["meta"]["wakeup_us"] = {"before": wakeup_before, "after": machine.wakeup_latency()}
    return results
