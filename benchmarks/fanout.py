"""Broadcast discovery to N simulated agents.

Each simulated agent is a real AgentRuntime (the real dispatch path: envelope, schema,
filter, policy hook, the built-in agent's ping) with its own durable host queue; many
share a process, a worker pool and a connection (one connection per 500 agents).
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from benchmarks.harness import Bench, progress
from console.client import Console
from hostbus.serving.runtime import AgentRuntime
from hostbus.transport import connect
from hostbus.transport.base import Transport

PER_CONNECTION = 500


class SimulatedFleet:
    def __init__(self, bench: Bench, n: int) -> None:
        self.prefix = f"sim{uuid.uuid4().hex[:4]}"
        self.hosts = [f"{self.prefix}-{i:05d}" for i in range(n)]
        bench.admin.enroll_many(bench.vhost, [(host, []) for host in self.hosts])
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="sim-worker")
        self.transports: list[Transport] = []
        self.runtimes: list[AgentRuntime] = []
        for start in range(0, n, PER_CONNECTION):
            transport = connect(bench.url, connection_name="simulated agents", prefetch=16)
            transport.start()
            self.transports.append(transport)
            for host in self.hosts[start:start + PER_CONNECTION]:
                runtime = AgentRuntime(transport, host, [], heartbeat_interval=0,
                                       executor=self.pool, facts={"fleet": self.prefix})
                runtime.start()
                self.runtimes.append(runtime)

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
                started = time.perf_counter()
                found = console.discover(filter=bfilter, expect=fleet.hosts, timeout=30,
                                         idle=5.0)
                with_expect = (time.perf_counter() - started) * 1000
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
                    "return_ms_idle_window": round(with_idle, 1),
                    "idle_window_ms": idle * 1000,
                    "replies_per_s": round(n / (last / 1000), 0) if last else None,
                })
                progress(f"{n} agents: last reply {last:.0f} ms, returned {with_idle:.0f} ms")
            finally:
                fleet.close()
    finally:
        console.close()
    return results
