"""The fleet as Prometheus metrics, built from events (and the exporter's own probes).

Names follow Prometheus' conventions: the ``hostbus_`` prefix, base units (seconds,
bytes, ratios 0..1), ``_total`` for counters, and labels with a bounded set of values
(host ids, mount points, an agent's event names; never request ids or VM names). What a
heartbeat reports as running totals since the agent started (requests, dropped events)
is exported as a counter: Prometheus' ``rate()`` takes the restart (a reset) in its
stride.

``FleetMetrics.observe`` runs on the console's I/O thread for every event; ``collect``
runs on the HTTP server's thread for every scrape. One lock between them; both are
short.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hostbus.envelope import Event

log = logging.getLogger("hostbus.exporter")

#: How many heartbeat intervals of silence make an agent count as down.
MISSED_BEATS = 3.0
#: Latency buckets (seconds): a call on a LAN takes about a millisecond; a provisioning
#: request from seconds to many minutes.
CALL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                5.0)
PROVISION_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
#: At most this many alert or disk series per host: labels stay bounded whatever a
#: host sends.
PER_HOST_SERIES = 100


def declared_events() -> frozenset[tuple[str, str]]:
    """(agent, event) for every event the shipped schemas declare."""
    from hostbus.schema import available_agents, load_agent_schema

    return frozenset((a, e) for a in available_agents() for e in load_agent_schema(a).events)


@dataclass
class _Host:
    """What the last events of one host said."""

    seen: float = 0.0  # monotonic time of its last heartbeat or online
    interval_s: float = 10.0
    offline: bool = False
    version: str = ""
    uptime_s: float | None = None
    requests: float | None = None
    outbox: dict[str, float] = field(default_factory=dict)
    blocked: bool = False
    status: dict[str, dict[str, float]] = field(default_factory=dict)  # numbers only
    metrics: dict[str, Any] | None = None
    alerts: dict[tuple[str, str], bool] = field(default_factory=dict)


def _number(value: Any) -> float | None:
    """``value`` as a float if it is a number (not a bool), else None."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


class FleetMetrics(Collector):
    def __init__(self, registry: CollectorRegistry, *,
                 clock: Callable[[], float] = time.monotonic,
                 forget_after_s: float = 86400.0) -> None:
        """``forget_after_s``: a host silent that long leaves the metrics (its series
        end), so hosts that are gone for good do not stay forever."""
        self._lock = threading.Lock()
        self._clock = clock
        self.forget_after_s = forget_after_s
        self._hosts: dict[str, _Host] = {}
        self._events: dict[tuple[str, str], int] = {}
        self._declared = declared_events()
        self._provisions: dict[str, float] = {}  # request id -> accepted at (monotonic)
        self._provision_outcomes: dict[str, int] = {}
        self.calls = Histogram(
            "hostbus_call_duration_seconds",
            "Round trip of the exporter's own calls to each agent (agent.ping, every "
            "probe interval), as a console sees it.",
            ["agent", "method"], buckets=CALL_BUCKETS, registry=registry)
        self.provisions = Histogram(
            "hostbus_provision_duration_seconds",
            "From a provisioning request's accepted event to its completed or failed one.",
            ["outcome"], buckets=PROVISION_BUCKETS, registry=registry)
        registry.register(self)

    # ---------------------------------------------------------------- events
    def observe(self, ev: Event) -> None:
        now = self._clock()
        with self._lock:
            key = (ev.agent, ev.event)
            # An agent may publish any event name under its own host: only names the
            # schemas declare become label values, the rest count as "other".
            counted = key if key in self._declared else ("other", "other")
            self._events[counted] = self._events.get(counted, 0) + 1
            host = self._hosts.setdefault(ev.host, _Host())
            handler = _HANDLERS.get(key)
            if handler is not None:
                handler(self, host, ev.data, now)

    def _agent_alive(self, host: _Host, data: dict[str, Any], now: float) -> None:
        host.seen, host.offline = now, False
        host.version = str(data.get("version", host.version))

    def _heartbeat(self, host: _Host, data: dict[str, Any], now: float) -> None:
        # Read defensively (event data is not checked against the agent's schema on
        # the way in): what is not a number is left out, never a failed scrape.
        self._agent_alive(host, data, now)
        host.interval_s = _number(data.get("interval_s")) or host.interval_s
        host.uptime_s = _number(data.get("uptime_s"))
        host.requests = _number(data.get("requests"))
        outbox = data.get("events")
        host.outbox = {k: n for k in ("spooled", "dropped", "rejected", "unconfirmed")
                       if (n := _number(outbox.get(k))) is not None} \
            if isinstance(outbox, dict) else {}
        host.blocked = "broker_blocked" in data
        status = data.get("status")
        host.status = {agent: {k: n for k, v in values.items()
                               if (n := _number(v)) is not None}
                       for agent, values in status.items() if isinstance(values, dict)} \
            if isinstance(status, dict) else {}

    def _offline(self, host: _Host, data: dict[str, Any], now: float) -> None:
        host.offline = True

    def _host_metrics(self, host: _Host, data: dict[str, Any], now: float) -> None:
        """Kept as numbers, read now: a malformed sample (event data is not checked
        against the agent's schema on the way in) is skipped here, never a failed scrape."""
        try:
            memory = data.get("memory") or {}
            host.metrics = {
                "cpu": float(data["cpu_percent"]) / 100,
                "load": [float(x) for x in (data.get("load") or [])[:3]],
                "memory": {k: float(memory[k]) for k in
                           ("total_bytes", "available_bytes", "used_bytes") if k in memory},
                "disks": {str(d["mountpoint"]): float(d["percent"]) / 100
                          for d in (data.get("disks") or [])[:PER_HOST_SERIES]
                          if isinstance(d, dict) and "mountpoint" in d and "percent" in d},
            }
        except (KeyError, TypeError, ValueError, AttributeError):
            log.warning("skipped a malformed host.metrics sample (%s)", str(data)[:200])

    def _alert(self, host: _Host, data: dict[str, Any], now: float) -> None:
        # Event data is not checked against the agent's schema on the way in: a buggy
        # or foreign agent's alert without a metric is skipped, not an error per event,
        # and a host that invents resources gets at most PER_HOST_SERIES of them.
        metric, resource = data.get("metric"), data.get("resource", "")
        if not (isinstance(metric, str) and isinstance(resource, str)):
            return
        if (metric, resource) in host.alerts or len(host.alerts) < PER_HOST_SERIES:
            host.alerts[(metric, resource)] = data.get("state") == "raised"

    def _provision_accepted(self, host: _Host, data: dict[str, Any], now: float) -> None:
        if len(self._provisions) < 10_000:  # bounded: requests whose end never came
            self._provisions[str(data.get("request_id"))] = now

    def _provision_ended(self, outcome: str, data: dict[str, Any], now: float) -> None:
        self._provision_outcomes[outcome] = self._provision_outcomes.get(outcome, 0) + 1
        started = self._provisions.pop(str(data.get("request_id")), None)
        if started is not None:
            self.provisions.labels(outcome).observe(now - started)

    def _provision_completed(self, host: _Host, data: dict[str, Any], now: float) -> None:
        self._provision_ended("completed", data, now)

    def _provision_failed(self, host: _Host, data: dict[str, Any], now: float) -> None:
        self._provision_ended("failed", data, now)

    # -------------------------------------------------------------- scrapes
    def collect(self) -> Iterator[Metric]:
        now = self._clock()
        with self._lock:
            for name in [n for n, h in self._hosts.items()
                         if h.seen and now - h.seen > self.forget_after_s]:
                del self._hosts[name]
            yield from self._agent_metrics(now)
            yield from self._host_metrics_families()
            events = CounterMetricFamily("hostbus_events", "Events received, by agent and "
                                         "event name.", labels=["agent", "event"])
            for (agent, event), n in sorted(self._events.items()):
                events.add_metric([agent, event], n)
            yield events
            ended = CounterMetricFamily("hostbus_provision_requests",
                                        "Provisioning requests that ended, by outcome.",
                                        labels=["outcome"])
            for outcome, n in sorted(self._provision_outcomes.items()):
                ended.add_metric([outcome], n)
            yield ended

    def _agent_metrics(self, now: float) -> Iterator[Metric]:
        up = GaugeMetricFamily("hostbus_agent_up", "1 while the agent's heartbeats come "
                               f"(none missed {MISSED_BEATS:g} times running), 0 after "
                               "agent.offline or that silence.", labels=["host"])
        age = GaugeMetricFamily("hostbus_agent_heartbeat_age_seconds",
                                "Seconds since the agent's last heartbeat (or online).",
                                labels=["host"])
        info = GaugeMetricFamily("hostbus_agent_info", "The agent's version (always 1).",
                                 labels=["host", "version"])
        uptime = GaugeMetricFamily("hostbus_agent_uptime_seconds",
                                   "Seconds since the agent started, at its last heartbeat.",
                                   labels=["host"])
        requests = CounterMetricFamily("hostbus_agent_requests",
                                       "Requests the agent handled since it started.",
                                       labels=["host"])
        spooled = GaugeMetricFamily("hostbus_agent_events_spooled", "Events waiting in "
                                    "the agent's spool for the broker.", labels=["host"])
        unconfirmed = GaugeMetricFamily("hostbus_agent_events_unconfirmed", "Events sent "
                                        "and not yet confirmed by the broker.",
                                        labels=["host"])
        dropped = CounterMetricFamily("hostbus_agent_events_dropped", "Periodic samples "
                                      "the agent dropped because its spool was full.",
                                      labels=["host"])
        rejected = CounterMetricFamily("hostbus_agent_events_rejected", "Events the "
                                       "broker refused from the agent.", labels=["host"])
        blocked = GaugeMetricFamily("hostbus_agent_broker_blocked", "1 when the agent's "
                                    "last heartbeat said the broker refused its publishes "
                                    "(a resource alarm).", labels=["host"])
        free_mem = GaugeMetricFamily("hostbus_virt_memory_unallocated_bytes",
                                     "Memory of a virt host no running VM has.",
                                     labels=["host"])
        free_cpus = GaugeMetricFamily("hostbus_virt_vcpus_free", "CPUs of a virt host no "
                                      "running VM has.", labels=["host"])
        domains = GaugeMetricFamily("hostbus_virt_domains_running",
                                    "VMs running on a virt host.", labels=["host"])
        stored = CounterMetricFamily("hostbus_history_events_stored", "Events a historian "
                                     "stored since it started.", labels=["host"])
        for name, h in sorted(self._hosts.items()):
            if not h.seen:
                continue  # events, but never an online or a heartbeat: not an agent's
            silent = now - h.seen
            alive = not h.offline and silent <= MISSED_BEATS * max(h.interval_s, 1.0)
            up.add_metric([name], 1.0 if alive else 0.0)
            age.add_metric([name], silent)
            info.add_metric([name, h.version], 1.0)
            if h.uptime_s is not None:
                uptime.add_metric([name], h.uptime_s)
            if h.requests is not None:
                requests.add_metric([name], h.requests)
            for family, key in ((spooled, "spooled"), (unconfirmed, "unconfirmed"),
                                (dropped, "dropped"), (rejected, "rejected")):
                if key in h.outbox:
                    family.add_metric([name], h.outbox[key])
            blocked.add_metric([name], 1.0 if h.blocked else 0.0)
            virt = h.status.get("virt", {})
            for family, key in ((free_mem, "unallocated_memory_bytes"),
                                (free_cpus, "free_vcpus"), (domains, "domains_running")):
                if key in virt:
                    family.add_metric([name], virt[key])
            if "stored" in h.status.get("history", {}):
                stored.add_metric([name], h.status["history"]["stored"])
        yield from (up, age, info, uptime, requests, spooled, unconfirmed, dropped, rejected,
                    blocked, free_mem, free_cpus, domains, stored)

    def _host_metrics_families(self) -> Iterator[Metric]:
        cpu = GaugeMetricFamily("hostbus_host_cpu_usage_ratio", "CPU busy, 0 to 1, over "
                                "the host agent's last sample.", labels=["host"])
        load = GaugeMetricFamily("hostbus_host_load_average", "Load average over 1, 5 "
                                 "and 15 minutes.", labels=["host", "period"])
        mem_total = GaugeMetricFamily("hostbus_host_memory_total_bytes", "Memory.",
                                      labels=["host"])
        mem_avail = GaugeMetricFamily("hostbus_host_memory_available_bytes",
                                      "Memory available to programs.", labels=["host"])
        mem_used = GaugeMetricFamily("hostbus_host_memory_used_bytes", "Memory in use.",
                                     labels=["host"])
        disk = GaugeMetricFamily("hostbus_host_disk_used_ratio", "A file system's space "
                                 "in use, 0 to 1.", labels=["host", "mountpoint"])
        alert = GaugeMetricFamily("hostbus_host_alert_active", "1 while a host alert is "
                                  "raised (until its clear event), else 0.",
                                  labels=["host", "metric", "resource"])
        for name, h in sorted(self._hosts.items()):
            m = h.metrics
            if m is not None:
                cpu.add_metric([name], m["cpu"])
                for period, value in zip(("1m", "5m", "15m"), m["load"], strict=False):
                    load.add_metric([name, period], value)
                for family, key in ((mem_total, "total_bytes"),
                                    (mem_avail, "available_bytes"), (mem_used, "used_bytes")):
                    if key in m["memory"]:
                        family.add_metric([name], m["memory"][key])
                for mountpoint, ratio in sorted(m["disks"].items()):
                    disk.add_metric([name, mountpoint], ratio)
            for (metric, resource), raised in sorted(h.alerts.items()):
                alert.add_metric([name, metric, resource], 1.0 if raised else 0.0)
        yield from (cpu, load, mem_total, mem_avail, mem_used, disk, alert)


_HANDLERS: dict[tuple[str, str], Callable[..., None]] = {
    ("agent", "online"): FleetMetrics._agent_alive,
    ("agent", "heartbeat"): FleetMetrics._heartbeat,
    ("agent", "offline"): FleetMetrics._offline,
    ("host", "metrics"): FleetMetrics._host_metrics,
    ("host", "alert"): FleetMetrics._alert,
    ("provision", "accepted"): FleetMetrics._provision_accepted,
    ("provision", "completed"): FleetMetrics._provision_completed,
    ("provision", "failed"): FleetMetrics._provision_failed,
}
