"""Event throughput from an agent to one console subscriber in another process, against
raw pika publish/consume of the same bodies through the same exchange, in the same run.

Rate = events / (last receipt in the subscriber - first publish), wall clock."""

from __future__ import annotations

import multiprocessing as mp
import time
import uuid
from typing import Any

import pika

from benchmarks.harness import Bench
from hostbus import codec
from hostbus.envelope import Event
from hostbus.serving.runtime import AgentRuntime

DATA = {"agents": [], "version": "bench", "epoch": "e", "uptime_s": 1.0, "interval_s": 1.0,
        "requests": 0}


def _raw_subscriber(url: str, key: str, n: int, conn: Any) -> None:
    c = pika.BlockingConnection(pika.URLParameters(url))
    ch = c.channel()
    queue = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(queue, "hostbus.event", routing_key=key)
    ch.basic_qos(prefetch_count=1000)
    got = [0, 0.0]

    def on(channel: Any, method: Any, props: Any, payload: bytes) -> None:
        codec.decode_object(payload)  # a subscriber reads what it gets
        got[0] += 1
        got[1] = time.time()

    ch.basic_consume(queue, on, auto_ack=True)
    conn.send("ready")
    while got[0] < n:
        c.process_data_events(time_limit=1)
    conn.send((got[0], got[1]))
    c.close()


def _hostbus_subscriber(url: str, pattern: str, n: int, conn: Any) -> None:
    from console.client import Console

    console = Console.connect(url)
    got = [0, 0.0, 0]

    def on(ev: Any, note: str | None) -> None:
        got[0] += 1
        got[1] = time.time()
        if note:
            got[2] += 1

    console.subscribe([pattern], on)
    conn.send("ready")
    while got[0] < n:
        time.sleep(0.05)  # polling a counter in the benchmark's own child, not a test
    conn.send((got[0], got[1], got[2]))
    console.close()


def _measure(target: Any, args: tuple[Any, ...], publish: Any) -> tuple[float, tuple[Any, ...]]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=target, args=(*args, child), daemon=True)
    proc.start()
    if not parent.poll(30) or parent.recv() != "ready":
        raise RuntimeError("the subscriber process did not start")
    started = time.time()
    publish()
    if not parent.poll(120):
        proc.kill()
        raise RuntimeError("the subscriber did not receive every event within 120 s")
    result = parent.recv()
    proc.join(10)
    return result[0] / (result[1] - started), result


def raw_rate(url: str, n: int) -> float:
    body = codec.encode(Event(host="raw", agent="host", event="metrics", data=DATA, seq=1,
                              epoch="e").to_body())
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    props = pika.BasicProperties(content_type="application/json", type="hostbus.event/1")

    def publish() -> None:
        for _ in range(n):
            ch.basic_publish("hostbus.event", "host.raw.metrics", body, props)

    rate, _ = _measure(_raw_subscriber, (url, "host.raw.#", n), publish)
    conn.close()
    return rate


def hostbus_rate(bench: Bench, n: int, *, url: str | None = None) -> float:
    url = url or bench.url
    host = f"ev{uuid.uuid4().hex[:6]}"
    bench.admin.enroll_host(bench.vhost, host, [])
    runtime = AgentRuntime.serve(url, host, [], heartbeat_interval=0)

    def publish() -> None:
        for _ in range(n):
            runtime.emit("agent", "heartbeat", DATA)

    try:
        rate, result = _measure(_hostbus_subscriber,
                                (url, f"agent.{host}.heartbeat", n), publish)
    finally:
        runtime.stop("benchmark over")
    if result[2]:
        raise RuntimeError(f"{result[2]} sequence gaps in the benchmark's events")
    return rate


def run(bench: Bench, n: int) -> dict[str, Any]:
    warm = max(500, n // 10)  # both sides warm up the same way
    raw_rate(bench.url, warm)
    raw = raw_rate(bench.url, n)
    hostbus_rate(bench, warm)
    hb = hostbus_rate(bench, n)
    return {"events": n, "raw_pika_per_s": round(raw), "hostbus_per_s": round(hb),
            "ratio": round(hb / raw, 2)}
