"""Call round trip: hostbus against raw pika request/reply, in the same run.

- raw: a pika server thread echoes on the default exchange (the floor);
- raw, hostbus topology: the same echo through a durable queue bound to a topic
  exchange, manual acks, replies through a direct exchange (what hostbus asks of the
  broker, without hostbus);
- hostbus: Console.call -> AgentRuntime (envelope, schema validation, policy hook,
  dispatch) -> reply, for the built-in agent's `ping`; also signed both ways, with a
  quorum host queue, and through the console's I/O thread (a fan-out to one host: two
  thread hand-offs a call, as every call made before calls ran on the calling thread).

All sides are open at once and take turns of ``harness.BLOCK`` calls, so the ratios
compare calls made in the same seconds.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pika

from benchmarks.harness import Bench, Side, in_turns, summary
from console.client import Console
from hostbus.security.signing import Signer, Verifier, generate, read_public_key
from hostbus.serving.runtime import AgentRuntime
from hostbus.transport.url import parse_url


class RawPikaSide:
    """Raw pika request/reply, the floor every call is compared with (here and in the
    peers benchmark): an echo server thread and a client. ``hostbus_topology``: a
    durable queue behind the topic exchange, manual acks, replies through a direct
    exchange (what hostbus asks of the broker); otherwise the default exchange (the
    floor)."""

    def __init__(self, url: str, *, hostbus_topology: bool = False) -> None:
        self.url, self.hostbus_topology = url, hostbus_topology
        self._ready, self._stop = threading.Event(), threading.Event()
        self._server_queue = f"bench.raw.{uuid.uuid4().hex[:8]}"
        self._host = f"raw{uuid.uuid4().hex[:6]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the raw pika echo server did not start")
        self._conn = pika.BlockingConnection(pika.URLParameters(url))
        ch = self._ch = self._conn.channel()
        self._reply_q = f"hostbus.reply.{uuid.uuid4().hex}"
        ch.queue_declare(self._reply_q, exclusive=True)
        if hostbus_topology:
            ch.queue_bind(self._reply_q, "hostbus.reply", routing_key=self._reply_q)
        self._box: list[bytes] = []
        ch.basic_consume(self._reply_q, lambda c, m, p, b: self._box.append(b), auto_ack=True)
        self._target = (("hostbus.request", f"agent.{self._host}") if hostbus_topology
                        else ("", self._server_queue))
        self._payload = json.dumps({"v": 1, "method": "ping"}).encode()

    def _serve(self) -> None:
        conn = pika.BlockingConnection(pika.URLParameters(self.url))
        ch = conn.channel()
        if self.hostbus_topology:
            ch.basic_qos(prefetch_count=64)
            queue = f"hostbus.host.{self._host}"
            ch.queue_declare(queue, durable=True, auto_delete=True)
            ch.queue_bind(queue, "hostbus.request", routing_key=f"agent.{self._host}")
        else:
            queue = ch.queue_declare(self._server_queue, exclusive=True).method.queue

        def on_request(channel: Any, method: Any, props: Any, body: bytes) -> None:
            exchange = "hostbus.reply" if self.hostbus_topology else ""
            channel.basic_publish(exchange, props.reply_to, body,
                                  pika.BasicProperties(correlation_id=props.correlation_id))
            if self.hostbus_topology:
                channel.basic_ack(method.delivery_tag)

        ch.basic_consume(queue, on_request, auto_ack=not self.hostbus_topology)
        self._ready.set()
        while not self._stop.is_set():
            conn.process_data_events(time_limit=0.2)
        conn.close()

    def block(self, n: int) -> list[float]:
        return [self._one() for _ in range(n)]

    def _one(self) -> float:
        self._box.clear()
        started = time.perf_counter()
        self._ch.basic_publish(*self._target, self._payload,
                               pika.BasicProperties(reply_to=self._reply_q,
                                                    correlation_id="x"))
        while not self._box:
            self._conn.process_data_events(time_limit=None)
        return (time.perf_counter() - started) * 1000

    def close(self) -> None:
        self._conn.close()
        self._stop.set()
        self._thread.join(5)


class _ReplyKeys:
    """The console checks that a reply's host is its signer; in this benchmark every
    host runs as the one broker user, so the check is the signature alone."""

    def __init__(self, verifier: Verifier, host: str) -> None:
        self.verifier, self.host = verifier, host

    def verify(self, *args: Any, **kwargs: Any) -> str:
        self.verifier.verify(*args, **kwargs)
        return self.host


class HostbusSide:
    """``Console.call("agent", "ping")`` to an ``AgentRuntime`` on its own connection."""

    def __init__(self, bench: Bench, *, signed: bool = False, queue_type: str = "classic",
                 url: str | None = None, io_thread: bool = False) -> None:
        """``io_thread``: through the console's I/O thread (a fan-out to one host: the
        way every call went before calls ran on the calling thread), for comparison."""
        url = url or bench.url
        self._io_thread = io_thread
        self.host = f"bench{uuid.uuid4().hex[:6]}"
        bench.admin.enroll_host(bench.vhost, self.host, [], queue_type=queue_type)
        verifier = signer = agent_keys = None
        if signed:
            # Ed25519 both ways, as a locked-down fleet runs: the console signs the
            # request and the agent verifies it; the agent signs the reply and the console
            # verifies it. Both ends run under one broker user here, so one key pair
            # serves both.
            with tempfile.TemporaryDirectory() as folder:
                user = parse_url(url).user
                key_path, pub_path = generate(user, folder)
                signer = Signer.load(key_path)
                verifier = Verifier(dict([read_public_key(pub_path)]))
                agent_keys = _ReplyKeys(verifier, self.host)
        self._runtime = AgentRuntime.serve(url, self.host, [], heartbeat_interval=0,
                                           verifier=verifier, signer=signer)
        try:
            self._console = Console.connect(url, signer=signer,
                                            agent_keys=agent_keys)  # type: ignore[arg-type]
        except Exception:
            self._runtime.stop("benchmark failed")
            raise

    def block(self, n: int) -> list[float]:
        return [self._one() for _ in range(n)]

    def _one(self) -> float:
        started = time.perf_counter()
        if self._io_thread:
            res = self._console.fanout("agent", "ping", {}, [self.host], timeout=5).results[0]
        else:
            res = self._console.call("agent", "ping", {}, host=self.host, timeout=5)
        elapsed = (time.perf_counter() - started) * 1000
        if res.status != "ok":
            raise RuntimeError(f"benchmark call failed: {res.to_dict()}")
        return elapsed

    def close(self) -> None:
        self._console.close()
        self._runtime.stop("benchmark over")


def run(bench: Bench, n: int) -> dict[str, Any]:
    makers: dict[str, Callable[[], Side]] = {
        "raw_pika": lambda: RawPikaSide(bench.url),
        "raw_pika_hostbus_topology": lambda: RawPikaSide(bench.url, hostbus_topology=True),
        "hostbus": lambda: HostbusSide(bench),
        "hostbus_io_thread": lambda: HostbusSide(bench, io_thread=True),
        "hostbus_signed": lambda: HostbusSide(bench, signed=True),
        "hostbus_quorum": lambda: HostbusSide(bench, queue_type="quorum"),
    }
    samples = in_turns(makers, n, warm=max(50, n // 20))
    out: dict[str, Any] = {label: summary(values) for label, values in samples.items()}
    out["samples"] = {k: [round(x, 4) for x in v] for k, v in samples.items()}
    out["ratio_p50"] = round(out["hostbus"]["p50"] / out["raw_pika"]["p50"], 2)
    out["ratio_p99"] = round(out["hostbus"]["p99"] / out["raw_pika"]["p99"], 2)
    out["ratio_p50_vs_same_topology"] = round(
        out["hostbus"]["p50"] / out["raw_pika_hostbus_topology"]["p50"], 2)
    out["io_thread_over_calling_thread_p50"] = round(
        out["hostbus_io_thread"]["p50"] / out["hostbus"]["p50"], 2)
    out["signed_over_unsigned_p50"] = round(out["hostbus_signed"]["p50"] / out["hostbus"]["p50"],
                                            2)
    out["quorum_over_classic_p50"] = round(out["hostbus_quorum"]["p50"] / out["hostbus"]["p50"],
                                           2)
    return out
