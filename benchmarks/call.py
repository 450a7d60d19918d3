"""Call round trip: hostbus against raw pika request/reply, in the same run.

- raw: a pika server thread echoes on the default exchange (the floor);
- raw, hostbus topology: the same echo through a durable queue bound to a topic
  exchange, manual acks, replies through a direct exchange (what hostbus asks of the
  broker, without hostbus);
- hostbus: Console.call -> AgentRuntime (envelope, schema validation, policy hook,
  worker thread) -> reply, for the built-in agent's `ping`.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
import uuid
from typing import Any

import pika

from agents.runtime import AgentRuntime
from benchmarks.harness import Bench, summary
from console.client import Console
from hostbus.signing import Signer, Verifier, generate, read_public_key
from hostbus.transport.base import parse_url


def raw_round_trips(url: str, n: int, *, hostbus_topology: bool = False) -> list[float]:
    ready, stop = threading.Event(), threading.Event()
    server_queue = "bench.raw.server"
    host = f"raw{uuid.uuid4().hex[:6]}"

    def server() -> None:
        conn = pika.BlockingConnection(pika.URLParameters(url))
        ch = conn.channel()
        if hostbus_topology:
            ch.basic_qos(prefetch_count=64)
            queue = f"hostbus.host.{host}"
            ch.queue_declare(queue, durable=True, auto_delete=True)
            ch.queue_bind(queue, "hostbus.request", routing_key=f"agent.{host}")
        else:
            queue = ch.queue_declare(server_queue, exclusive=True).method.queue

        def on_request(channel: Any, method: Any, props: Any, body: bytes) -> None:
            exchange = "hostbus.reply" if hostbus_topology else ""
            channel.basic_publish(exchange, props.reply_to, body,
                                  pika.BasicProperties(correlation_id=props.correlation_id))
            if hostbus_topology:
                channel.basic_ack(method.delivery_tag)

        ch.basic_consume(queue, on_request, auto_ack=not hostbus_topology)
        ready.set()
        while not stop.is_set():
            conn.process_data_events(time_limit=0.2)
        conn.close()

    thread = threading.Thread(target=server, daemon=True)
    thread.start()
    ready.wait(10)
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    reply_q = f"hostbus.reply.{uuid.uuid4().hex}"
    ch.queue_declare(reply_q, exclusive=True)
    if hostbus_topology:
        ch.queue_bind(reply_q, "hostbus.reply", routing_key=reply_q)
    box: list[bytes] = []
    ch.basic_consume(reply_q, lambda c, m, p, b: box.append(b), auto_ack=True)
    exchange, key = ("hostbus.request", f"agent.{host}") if hostbus_topology else \
        ("", server_queue)
    payload = json.dumps({"v": 1, "method": "ping"}).encode()
    samples = []
    for _ in range(n):
        box.clear()
        started = time.perf_counter()
        ch.basic_publish(exchange, key, payload,
                         pika.BasicProperties(reply_to=reply_q, correlation_id="x"))
        while not box:
            conn.process_data_events(time_limit=None)
        samples.append((time.perf_counter() - started) * 1000)
    conn.close()
    stop.set()
    thread.join(5)
    return samples


class _ReplyKeys:
    """The console checks that a reply's host is its signer; in this benchmark every
    host runs as the one broker user, so the check is the signature alone."""

    def __init__(self, verifier: Verifier, host: str) -> None:
        self.verifier, self.host = verifier, host

    def verify(self, *args: Any, **kwargs: Any) -> str:
        self.verifier.verify(*args, **kwargs)
        return self.host


def hostbus_round_trips(bench: Bench, n: int, *, signed: bool = False,
                        queue_type: str = "classic", url: str | None = None) -> list[float]:
    url = url or bench.url
    host = f"bench{uuid.uuid4().hex[:6]}"
    bench.admin.enroll_host(bench.vhost, host, [], queue_type=queue_type)
    verifier = signer = agent_keys = None
    if signed:
        # Ed25519 both ways, as a locked-down fleet runs: the console signs the request
        # and the agent verifies it; the agent signs the reply and the console verifies
        # it. Both ends run under one broker user here, so one key pair serves both.
        with tempfile.TemporaryDirectory() as folder:
            user = parse_url(url).user
            key_path, pub_path = generate(user, folder)
            signer = Signer.load(key_path)
            verifier = Verifier(dict([read_public_key(pub_path)]))
            agent_keys = _ReplyKeys(verifier, host)
    runtime = AgentRuntime.serve(url, host, [], heartbeat_interval=0, verifier=verifier,
                                 signer=signer)
    console = Console.connect(url, signer=signer,
                              agent_keys=agent_keys)  # type: ignore[arg-type]
    samples = []
    try:
        for _ in range(n):
            started = time.perf_counter()
            res = console.call("agent", "ping", {}, host=host, timeout=5)
            samples.append((time.perf_counter() - started) * 1000)
            if res.status != "ok":
                raise RuntimeError(f"benchmark call failed: {res.to_dict()}")
    finally:
        console.close()
        runtime.stop("benchmark over")
    return samples


def run(bench: Bench, n: int) -> dict[str, Any]:
    warm = max(50, n // 20)
    out: dict[str, Any] = {}
    samples: dict[str, list[float]] = {}
    for label, fn in (("raw_pika", lambda k: raw_round_trips(bench.url, k)),
                      ("raw_pika_hostbus_topology",
                       lambda k: raw_round_trips(bench.url, k, hostbus_topology=True)),
                      ("hostbus", lambda k: hostbus_round_trips(bench, k)),
                      ("hostbus_signed", lambda k: hostbus_round_trips(bench, k, signed=True)),
                      ("hostbus_quorum", lambda k: hostbus_round_trips(
                          bench, k, queue_type="quorum"))):
        fn(warm)
        samples[label] = fn(n)
        out[label] = summary(samples[label])
    out["samples"] = {k: [round(x, 4) for x in v] for k, v in samples.items()}
    out["ratio_p50"] = round(out["hostbus"]["p50"] / out["raw_pika"]["p50"], 2)
    out["ratio_p99"] = round(out["hostbus"]["p99"] / out["raw_pika"]["p99"], 2)
    out["ratio_p50_vs_same_topology"] = round(
        out["hostbus"]["p50"] / out["raw_pika_hostbus_topology"]["p50"], 2)
    out["signed_over_unsigned_p50"] = round(out["hostbus_signed"]["p50"] / out["hostbus"]["p50"],
                                            2)
    out["quorum_over_classic_p50"] = round(out["hostbus_quorum"]["p50"] / out["hostbus"]["p50"],
                                           2)
    return out
