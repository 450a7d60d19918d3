"""Call round trip through hostbus against a raw pika request/reply, in the same run.

Run: .venv/bin/python benchmarks/call_latency.py [-n 2000] [--json]

Needs RabbitMQ with the management plugin (./run.sh demo or test sets it up). Uses a
throwaway vhost, removed afterwards. Both sides run in one process, each with its own
connection(s):
- raw: a pika server thread replies to a pika client, nothing else (the floor);
- hostbus: Console.call -> AgentRuntime (envelope, schema validation, policy hook,
  dispatch to a worker thread) -> reply, with the agent's method `agent.ping`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
import uuid

import pika

from agents.runtime import AgentRuntime
from console.client import Console
from hostbus.broker_admin import BrokerAdmin
from hostbus.transport.amqp091 import PikaTransport

AMQP = os.environ.get("HOSTBUS_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672")
ADMIN = os.environ.get("HOSTBUS_TEST_ADMIN_URL", "http://guest:guest@127.0.0.1:15672")


def pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def raw_round_trips(url: str, n: int) -> list[float]:
    ready = threading.Event()
    stop = threading.Event()

    def server() -> None:
        conn = pika.BlockingConnection(pika.URLParameters(url))
        ch = conn.channel()
        ch.queue_declare("bench.raw.server", exclusive=True)

        def on_request(channel, method, props, body):
            channel.basic_publish("", props.reply_to, body,
                                  pika.BasicProperties(correlation_id=props.correlation_id))

        ch.basic_consume("bench.raw.server", on_request, auto_ack=True)
        ready.set()
        while not stop.is_set():
            conn.process_data_events(time_limit=0.2)
        conn.close()

    thread = threading.Thread(target=server, daemon=True)
    thread.start()
    ready.wait(10)
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    reply_q = ch.queue_declare("", exclusive=True).method.queue
    box: list[bytes] = []
    ch.basic_consume(reply_q, lambda c, m, p, b: box.append(b), auto_ack=True)
    samples = []
    payload = json.dumps({"v": 1, "method": "ping"}).encode()
    for _ in range(n):
        box.clear()
        started = time.perf_counter()
        ch.basic_publish("", "bench.raw.server", payload,
                         pika.BasicProperties(reply_to=reply_q, correlation_id="x"))
        while not box:
            conn.process_data_events(time_limit=None)
        samples.append((time.perf_counter() - started) * 1000)
    conn.close()
    stop.set()
    thread.join(5)
    return samples


def hostbus_round_trips(url: str, admin: BrokerAdmin, vhost: str, n: int) -> list[float]:
    admin.enroll_host(vhost, "bench01", [])
    transport = PikaTransport(url, connection_name="bench agent")
    transport.start()
    runtime = AgentRuntime(transport, "bench01", [], heartbeat_interval=3600)
    runtime.start()
    console = Console.connect(url)
    samples = []
    try:
        for _ in range(n):
            started = time.perf_counter()
            res = console.call("agent", "ping", {}, host="bench01", timeout=5)
            samples.append((time.perf_counter() - started) * 1000)
            assert res.status == "ok", res
    finally:
        console.close()
        runtime.stop("benchmark over")
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description="hostbus call round trip vs raw pika")
    parser.add_argument("-n", type=int, default=2000, help="round trips per side")
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args()
    admin = BrokerAdmin(ADMIN)
    vhost = f"hostbus-bench-{uuid.uuid4().hex[:8]}"
    admin.setup(vhost)
    url = f"{AMQP}/{vhost}"
    try:
        warm = max(50, opts.n // 20)
        raw_round_trips(url, warm)
        raw = raw_round_trips(url, opts.n)
        hostbus_round_trips(url, admin, vhost, warm)
        hb = hostbus_round_trips(url, admin, vhost, opts.n)
    finally:
        admin.delete_vhost(vhost)
    report = {
        "n": opts.n,
        "raw_pika_ms": {"p50": round(pct(raw, 50), 3), "p99": round(pct(raw, 99), 3),
                        "mean": round(statistics.fmean(raw), 3)},
        "hostbus_ms": {"p50": round(pct(hb, 50), 3), "p99": round(pct(hb, 99), 3),
                       "mean": round(statistics.fmean(hb), 3)},
    }
    report["ratio_p50"] = round(report["hostbus_ms"]["p50"] / report["raw_pika_ms"]["p50"], 2)
    report["ratio_p99"] = round(report["hostbus_ms"]["p99"] / report["raw_pika_ms"]["p99"], 2)
    if opts.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{opts.n} round trips each, same broker, same run")
        for label, key in (("raw pika", "raw_pika_ms"), ("hostbus call", "hostbus_ms")):
            r = report[key]
            print(f"  {label:13} p50 {r['p50']:.3f} ms   p99 {r['p99']:.3f} ms")
        print(f"  ratio         p50 {report['ratio_p50']}x   p99 {report['ratio_p99']}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
