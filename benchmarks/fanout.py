"""Broadcast discovery to N simulated agents, against a raw pika fan-out in the same run.

Each simulated agent is a real AgentRuntime (the real dispatch path: envelope, schema,
filter, policy hook, the built-in agent's ping) with its own durable host queue; many
share a process, a worker pool and a connection (one connection per 500 agents).

The baseline: raw pika echo consumers on N queues bound to one fanout exchange (as many
per connection, each connection on a thread of its own), a raw pika client that
publishes one message there and reads its reply queue until all N replies are in. The
two take turns, so the ratio compares broadcasts made in the same minutes.
"""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pika

from benchmarks.harness import Bench, progress
from console.client import Console
from hostbus.serving.runtime import AgentRuntime
from hostbus.transport import connect
from hostbus.transport.base import Transport

PER_CONNECTION = 500
ROUNDS = 3  # broadcasts per side and size, in turns


class RawFanout:
    """N raw pika echo consumers behind a fanout exchange, and a client that broadcasts
    and counts replies (the floor for a broadcast with every reply back)."""

    def __init__(self, url: str, n: int) -> None:
        self.url, self.n = url, n
        tag = uuid.uuid4().hex[:8]
        self.exchange = f"bench.rawfan.{tag}"
        self._stop = threading.Event()
        setup = pika.BlockingConnection(pika.URLParameters(url))
        ch = setup.channel()
        ch.exchange_declare(self.exchange, "fanout", auto_delete=True)
        self.queues = [f"bench.rawfan.{tag}.{i:05d}" for i in range(n)]
        for queue in self.queues:
            ch.queue_declare(queue, auto_delete=True)
            ch.queue_bind(queue, self.exchange)
        setup.close()
        self._threads: list[threading.Thread] = []
        ready = threading.Barrier((n + PER_CONNECTION - 1) // PER_CONNECTION + 1)
        for start in range(0, n, PER_CONNECTION):
            thread = threading.Thread(target=self._serve,
                                      args=(self.queues[start:start + PER_CONNECTION], ready),
                                      daemon=True, name="raw-fanout")
            thread.start()
            self._threads.append(thread)
        ready.wait(120)
        self._conn = pika.BlockingConnection(pika.URLParameters(url))
        self._ch = self._conn.channel()
        self._reply_q = self._ch.queue_declare("", exclusive=True).method.queue
        self._count = 0

        def counted(*_args: Any) -> None:
            self._count += 1

        self._ch.basic_consume(self._reply_q, counted, auto_ack=True)

    def _serve(self, queues: list[str], ready: threading.Barrier) -> None:
        conn = pika.BlockingConnection(pika.URLParameters(self.url))
        ch = conn.channel()

        def echo(channel: Any, _method: Any, props: Any, body: bytes) -> None:
            channel.basic_publish("", props.reply_to, body,
                                  pika.BasicProperties(correlation_id=props.correlation_id))

        for queue in queues:
            ch.basic_consume(queue, echo, auto_ack=True)
        ready.wait(120)
        while not self._stop.is_set():
            conn.process_data_events(time_limit=0.2)
        conn.close()

    def broadcast(self, timeout: float = 60) -> float:
        """Milliseconds from the publish to the last of the N replies."""
        self._count = 0
        started = time.perf_counter()
        self._ch.basic_publish(self.exchange, "", b'{"v": 1, "method": "ping"}',
                               pika.BasicProperties(reply_to=self._reply_q,
                                                    correlation_id="x"))
        deadline = started + timeout
        while self._count < self.n:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise RuntimeError(f"raw fan-out: {self._count} of {self.n} replies")
            self._conn.process_data_events(time_limit=left)
        return (time.perf_counter() - started) * 1000

    def close(self) -> None:
        self._conn.close()
        self._stop.set()
        for thread in self._threads:
            thread.join(5)


class SimulatedFleet:
    """N simulated agents, hosts ``PREFIX-00000`` ... with the fact ``fleet: PREFIX``."""

    def __init__(self, bench: Bench, n: int,
                 after_enroll: Callable[[], None] | None = None) -> None:
        """``after_enroll``: called once the hosts are enrolled, before any agent starts
        (the fanout10k benchmark reads the broker's memory there)."""
        self.prefix = f"sim{uuid.uuid4().hex[:4]}"
        self.hosts = [f"{self.prefix}-{i:05d}" for i in range(n)]
        bench.admin.enroll_many(bench.vhost, [(host, []) for host in self.hosts])
        if after_enroll is not None:
            after_enroll()
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="sim-worker")
        self.transports: list[Transport] = []
        self.runtimes: list[AgentRuntime] = []
        batches = [self.hosts[i:i + PER_CONNECTION] for i in range(0, n, PER_CONNECTION)]
        for _ in batches:
            transport = connect(bench.url, connection_name="simulated agents", prefetch=16)
            transport.start()
            self.transports.append(transport)

        def start(transport: Transport, hosts: list[str]) -> list[AgentRuntime]:
            started = []
            for host in hosts:
                runtime = AgentRuntime(transport, host, [], heartbeat_interval=0,
                                       executor=self.pool, facts={"fleet": self.prefix})
                runtime.start()  # its channels and consumers: round trips, one by one
                started.append(runtime)
            return started

        # A connection's agents start one after another, the connections side by side:
        # each start waits on round trips through its connection's I/O thread, and
        # 10,000 agents one by one took 16 minutes on a busy 2-core machine.
        with ThreadPoolExecutor(max_workers=len(batches),
                                thread_name_prefix="sim-start") as starting:
            for started in starting.map(start, self.transports, batches):
                self.runtimes.extend(started)

    def close(self) -> None:
        for runtime in self.runtimes:
            runtime.stop("benchmark over", close_transport=False)
        for transport in self.transports:
            transport.close()
        self.pool.shutdown()


def run(bench: Bench, sizes: list[int], idle: float = 0.3) -> list[dict[str, Any]]:
    results = []
    console = Console.connect(bench.url)
    try:
        for n in sizes:
            progress(f"starting {n} simulated agents")
            t0 = time.perf_counter()
            fleet = SimulatedFleet(bench, n)
            setup_s = time.perf_counter() - t0
            try:
                bfilter = {"facts": {"fleet": fleet.prefix}}
                console.discover(filter=bfilter, expect=fleet.hosts, timeout=30)  # warm up
                raw_ms, hostbus_ms, found = [], [], []
                raw = RawFanout(bench.url, n)
                try:
                    raw.broadcast()  # warm up
                    for _ in range(ROUNDS):
                        raw_ms.append(raw.broadcast())
                        started = time.perf_counter()
                        found = console.discover(filter=bfilter, expect=fleet.hosts,
                                                 timeout=30, idle=5.0)
                        hostbus_ms.append((time.perf_counter() - started) * 1000)
                finally:
                    raw.close()
                with_expect = statistics.median(hostbus_ms)
                raw_median = statistics.median(raw_ms)
                started = time.perf_counter()
                idle_found = console.discover(filter=bfilter, idle=idle, timeout=30)
                with_idle = (time.perf_counter() - started) * 1000
                last = max((a.rtt_ms for a in idle_found), default=0.0)
                results.append({
                    "agents": n, "setup_s": round(setup_s, 1),
                    "replies": len(idle_found), "all_replied": len(idle_found) == n and
                    len(found) == n,
                    "last_reply_ms": round(last, 1),
                    "return_ms_expected_hosts": round(with_expect, 1),
                    "return_ms_expected_hosts_each": [round(x, 1) for x in hostbus_ms],
                    "raw_pika_ms": round(raw_median, 1),
                    "raw_pika_ms_each": [round(x, 1) for x in raw_ms],
                    "ratio_to_raw": round(with_expect / raw_median, 2),
                    "return_ms_idle_window": round(with_idle, 1),
                    "idle_window_ms": idle * 1000,
                    "replies_per_s": round(n / (last / 1000), 0) if last else None,
                })
                progress(f"{n} agents: last reply {last:.0f} ms, returned {with_idle:.0f} ms; "
                         f"all answered {with_expect:.0f} ms against raw pika "
                         f"{raw_median:.0f} ms ({with_expect / raw_median:.2f}x)")
            finally:
                fleet.close()
    finally:
        console.close()
    return results
