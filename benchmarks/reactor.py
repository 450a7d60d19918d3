"""The reactor under a burst, against raw pika in the same run:

- **burst**: ``events`` health check events (none of which fires a rule) published at
  once into the reactor's active queue, with ``rules`` rules each looking at every one;
  time from the first publish until the reactor has handled (evaluated, stored as
  handled, acknowledged) the last. Rules evaluated per second = rules x events / time.
  Baseline: a raw pika consumer draining the same events from a queue of the same kind
  (quorum, single active consumer), decoding and acknowledging each. Memory: the
  process's RSS before, after the burst and after a second one (flat: no growth
  proportional to what went through). Every event must be handled: none dropped.
- **latency**: one failing check at a time; from its publish to the host agent's
  service manager being asked to restart (the reactor's request crossed the broker and
  was dispatched), p50 and p90. Baseline: the same two hops with raw pika (a consumer
  of the event publishes a message to a queue another consumer reads).
"""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pika
import psutil

from agents.host.agent import HostAgent
from agents.host.power import RecordingPower
from benchmarks.harness import Bench, pct, progress
from console.reactor.engine import Engine
from console.reactor.rules import parse_rules
from console.reactor.service import Reactor, queue_patterns
from console.reactor.store import ReactorStore
from hostbus import codec
from hostbus.envelope import Event
from hostbus.serving.runtime import AgentRuntime
from hostbus.transport import connect

SERVICE = "reactor-bench"
HOST = "bench-web"


class _Restarts:
    """A service manager that notes when it was asked to act."""

    def __init__(self) -> None:
        self.at: list[float] = []
        self.acted = threading.Event()

    def list(self) -> list[dict[str, Any]]:
        return []

    def status(self, name: str) -> dict[str, Any]:
        return {"name": name.removesuffix(".service"), "unit": name, "description": "",
                "load": "loaded", "active": "active", "sub": "running", "enabled": "enabled",
                "main_pid": 1, "exit_status": 0, "restarts": 0, "active_since": ""}

    def control(self, action: str, name: str) -> None:
        self.at.append(time.perf_counter())
        self.acted.set()


def _rules(n: int) -> list[dict[str, Any]]:
    return [{"name": f"restart svc{i}", "events": ["health.*.check"],
             "when": f"check=svc{i} and state=failing and consecutive_failures>=3",
             "cooldown_s": 0,
             "action": {"call": "host.service.restart", "args": {"name": "{data.check}"},
                        "timeout_s": 10}} for i in range(n)]


def _body(seq: int, check: str, state: str) -> bytes:
    body, _ = Event(host=HOST, agent="health", event="check", seq=seq + 1, epoch="bench",
                    data={"check": check, "state": state, "target": "host", "vm": "",
                          "consecutive_failures": 3 if state == "failing" else 0}).encode()
    return body


def _publish(ch: Any, key: str, bodies: list[bytes]) -> None:
    props = pika.BasicProperties(content_type="application/json", type="hostbus.event/1",
                                 user_id="guest")
    for body in bodies:
        ch.basic_publish("hostbus.event", key, body, props)


def _raw_drain(url: str, n: int, bodies: list[bytes]) -> float:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    queue = f"bench-raw-{uuid.uuid4().hex[:6]}"
    ch.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum",
                                                     "x-single-active-consumer": True})
    ch.queue_bind(queue, "hostbus.event", routing_key="rawbench.*.check")
    ch.basic_qos(prefetch_count=64)
    got = [0, 0.0]

    def on(channel: Any, method: Any, props: Any, payload: bytes) -> None:
        codec.decode_object(payload)
        channel.basic_ack(method.delivery_tag)
        got[0] += 1
        got[1] = time.perf_counter()

    ch.basic_consume(queue, on)
    started = time.perf_counter()
    _publish(ch, f"rawbench.{HOST}.check", bodies)
    while got[0] < n:
        conn.process_data_events(time_limit=1)
    ch.queue_delete(queue)
    conn.close()
    return got[1] - started


def _raw_relay_latency(url: str, samples: int) -> list[float]:
    """Two hops with raw pika: the event to a relay, the relay's message to a reader."""
    relay_conn = pika.BlockingConnection(pika.URLParameters(url))
    relay = relay_conn.channel()
    q1 = relay.queue_declare("", exclusive=True).method.queue
    relay.queue_bind(q1, "hostbus.event", routing_key="rawrelay.#")
    q2 = relay.queue_declare("", exclusive=True).method.queue
    arrived = threading.Event()
    times: list[float] = []
    stop = threading.Event()

    def on_event(channel: Any, method: Any, props: Any, payload: bytes) -> None:
        codec.decode_object(payload)
        channel.basic_ack(method.delivery_tag)
        channel.basic_publish("", q2, payload)

    def on_request(channel: Any, method: Any, props: Any, payload: bytes) -> None:
        times.append(time.perf_counter())
        arrived.set()

    relay.basic_consume(q1, on_event)
    relay.basic_consume(q2, on_request, auto_ack=True)

    def loop() -> None:
        while not stop.is_set():
            relay_conn.process_data_events(time_limit=0.05)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    pub_conn = pika.BlockingConnection(pika.URLParameters(url))
    pub = pub_conn.channel()
    latencies = []
    for i in range(samples):
        arrived.clear()
        started = time.perf_counter()
        _publish(pub, f"rawrelay.{HOST}.check", [_body(i, "svc0", "failing")])
        if not arrived.wait(10):
            raise RuntimeError("the raw relay lost a message")
        latencies.append((times[-1] - started) * 1000)
    stop.set()
    thread.join(5)
    pub_conn.close()
    relay_conn.close()
    return latencies


def run(bench: Bench, events: int, rules: int, samples: int = 200) -> dict[str, Any]:
    bench.admin.enroll_active_queue(bench.vhost, SERVICE, queue_patterns(["health.*.check"]))
    bench.admin.enroll_host(bench.vhost, HOST, ["host"])
    restarts = _Restarts()
    host = HostAgent({}, host_id=HOST, ps=psutil, power=RecordingPower(), services=restarts,
                     alerts={})
    runtime = AgentRuntime.serve(bench.url, HOST, [host], heartbeat_interval=60)
    process = psutil.Process()
    with tempfile.TemporaryDirectory() as folder:
        store = ReactorStore(Path(folder) / "reactor.db")
        transport = connect(bench.url, connection_name="hostbus-reactor bench", prefetch=64)
        transport.start()
        reactor = Reactor(transport, Engine(parse_rules(_rules(rules)), store), SERVICE,
                          multi_host_users=frozenset({"guest"}), workers=4)
        reactor.start()
        try:
            if not reactor.standby.wait_active(30):
                raise RuntimeError("the reactor did not become active")
            conn = pika.BlockingConnection(pika.URLParameters(bench.url))
            ch = conn.channel()
            rss = [process.memory_info().rss]
            bursts = []
            for burst in range(2):
                progress(f"reactor: burst {burst + 1} of {events:,} events, {rules} rules")
                bodies = [_body(burst * events + i, f"svc{i % rules}", "passing")
                          for i in range(events)]
                before = reactor.handled + reactor.dropped
                started = time.perf_counter()
                _publish(ch, f"health.{HOST}.check", bodies)
                while reactor.handled + reactor.dropped - before < events:
                    time.sleep(0.01)  # the benchmark polls a counter of its own process
                bursts.append(time.perf_counter() - started)
                rss.append(process.memory_info().rss)
            progress(f"reactor: {samples} failing checks one at a time, event to action")
            latencies = []
            for i in range(samples):
                restarts.acted.clear()
                started = time.perf_counter()
                _publish(ch, f"health.{HOST}.check",
                         [_body(10 * events + i, f"svc{i % rules}", "failing")])
                if not restarts.acted.wait(30):
                    raise RuntimeError(f"the reactor did not act on failing check {i}")
                latencies.append((restarts.at[-1] - started) * 1000)
            conn.close()
        finally:
            reactor.stop()
            runtime.stop("bench over")
            store.close()
    progress("reactor: the raw baselines")
    raw_s = _raw_drain(bench.url, events, [_body(i, f"svc{i % rules}", "passing")
                                           for i in range(events)])
    raw_latency = _raw_relay_latency(bench.url, samples)
    rate = events / bursts[0]
    return {
        "events": events, "rules": rules, "dropped": reactor.dropped,
        "burst_s": [round(b, 3) for b in bursts],
        "events_per_s": round(rate), "rules_evaluated_per_s": round(rate * rules),
        "raw_events_per_s": round(events / raw_s),
        "ratio_to_raw": round(rate / (events / raw_s), 3),
        "rss_mb": [round(r / 2**20, 1) for r in rss],
        "latency_ms": {"p50": round(pct(latencies, 50), 2), "p90": round(pct(latencies, 90), 2)},
        "raw_two_hops_ms": {"p50": round(pct(raw_latency, 50), 2),
                            "p90": round(pct(raw_latency, 90), 2)},
        "latency_ratio": round(pct(latencies, 50) / pct(raw_latency, 50), 2),
        "actions": len(restarts.at),
    }
