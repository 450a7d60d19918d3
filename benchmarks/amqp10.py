"""AMQP 1.0: hostbus over python-qpid-proton against raw proton, in the same run.

- raw proton call: an echo server and a client, each an event-driven proton Container
  on a thread of its own; the client sends the next request from the reply's callback
  (no thread hand-off at all: the floor). Queues on the default exchange, as the raw
  pika baseline.
- raw proton call, blocking: the same through ``proton.utils.BlockingConnection``, the
  simple synchronous client most programs would write.
- hostbus call: Console.call -> AgentRuntime, both on amqp10://, the built-in `ping`.
- events: a raw proton sender (unsettled sends: the broker accepts each) into one raw
  receiver in another process, against an agent's emit over amqp10:// into a console
  subscriber over amqp10:// in another process.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pika
from proton import Message
from proton.handlers import MessagingHandler
from proton.reactor import Container
from proton.utils import BlockingConnection

from benchmarks import call, events
from benchmarks.harness import BLOCK, Bench, in_turns, progress, summary
from hostbus import codec
from hostbus.envelope import Event
from hostbus.transport.url import parse_url


def _connect_args(url: str) -> dict[str, Any]:
    u = parse_url(url)
    return {"url": f"amqp://{u.host}:{u.port}", "user": u.user, "password": u.password,
            "virtual_host": f"vhost:{u.vhost}", "allowed_mechs": "PLAIN"}


def _queues(bench: Bench, *names: str) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(bench.url))
    ch = conn.channel()
    for name in names:
        ch.queue_declare(name, auto_delete=False)
    conn.close()


class _Echo(MessagingHandler):  # type: ignore[misc]
    def __init__(self, url: str, queue: str, ready: threading.Event) -> None:
        super().__init__()
        self.url, self.queue, self.ready = url, queue, ready
        self.senders: dict[str, Any] = {}
        self.conn: Any = None

    def on_start(self, event: Any) -> None:
        self.conn = event.container.connect(**_connect_args(self.url))
        event.container.create_receiver(self.conn, f"/amq/queue/{self.queue}")

    def on_link_opened(self, event: Any) -> None:
        if event.receiver:
            self.ready.set()

    def on_message(self, event: Any) -> None:
        msg = event.message
        sender = self.senders.get(msg.reply_to)
        if sender is None:
            sender = self.senders[msg.reply_to] = event.container.create_sender(
                self.conn, msg.reply_to)
        sender.send(Message(body=msg.body, correlation_id=msg.correlation_id, inferred=True))


class _Client(MessagingHandler):  # type: ignore[misc]
    def __init__(self, url: str, server: str, reply: str, n: int) -> None:
        super().__init__()
        self.url, self.server, self.reply, self.n = url, server, reply, n
        self.samples: list[float] = []
        self.opened = 0
        self.sender: Any = None
        self.started = 0.0
        self.payload = codec.encode({"v": 1, "method": "ping"})

    def on_start(self, event: Any) -> None:
        conn = event.container.connect(**_connect_args(self.url))
        event.container.create_receiver(conn, f"/amq/queue/{self.reply}")
        self.sender = event.container.create_sender(conn, f"/amq/queue/{self.server}")

    def on_link_opened(self, event: Any) -> None:
        self.opened += 1
        if self.opened == 2:
            self._send()

    def _send(self) -> None:
        self.started = time.perf_counter()
        self.sender.send(Message(body=self.payload, inferred=True, correlation_id="x",
                                 reply_to=f"/amq/queue/{self.reply}"))

    def on_message(self, event: Any) -> None:
        self.samples.append((time.perf_counter() - self.started) * 1000)
        if len(self.samples) < self.n:
            self._send()
        else:
            event.connection.close()


@contextmanager
def _echo_server(bench: Bench) -> Iterator[tuple[str, str, str]]:
    """A raw proton echo server on a thread of its own: (url, server queue, reply queue)."""
    url = bench.url.replace("amqp://", "amqp10://", 1)
    server, reply = f"bench.raw10.{uuid.uuid4().hex[:6]}", f"bench.raw10r.{uuid.uuid4().hex}"
    _queues(bench, server, reply)
    ready = threading.Event()
    echo = Container(_Echo(url, server, ready))
    thread = threading.Thread(target=echo.run, daemon=True)
    thread.start()
    try:
        if not ready.wait(10):
            raise RuntimeError("the raw proton echo server did not attach")
        yield url, server, reply
    finally:
        echo.stop()
        thread.join(5)


class _RawProtonSide:
    """The raw proton echo server, and a client that runs a Container of its own for
    each block of calls (connected anew each time; only the round trips are timed)."""

    def __init__(self, bench: Bench) -> None:
        self._stack = ExitStack()
        self._url, self._queue, self._reply = self._stack.enter_context(_echo_server(bench))

    def block(self, n: int) -> list[float]:
        client = _Client(self._url, self._queue, self._reply, n)
        Container(client).run()
        return client.samples

    def close(self) -> None:
        self._stack.close()


class _RawBlockingSide:
    """The same echo through proton.utils.BlockingConnection, one connection for all."""

    def __init__(self, bench: Bench) -> None:
        self._stack = ExitStack()
        url, queue, self._reply = self._stack.enter_context(_echo_server(bench))
        args = _connect_args(url)
        self._conn = BlockingConnection(args.pop("url"), timeout=10, **args)
        self._stack.callback(self._conn.close)
        self._sender = self._conn.create_sender(f"/amq/queue/{queue}")
        self._receiver = self._conn.create_receiver(f"/amq/queue/{self._reply}")
        self._payload = codec.encode({"v": 1, "method": "ping"})

    def block(self, n: int) -> list[float]:
        samples = []
        for _ in range(n):
            started = time.perf_counter()
            self._sender.send(Message(body=self._payload, inferred=True, correlation_id="x",
                                      reply_to=f"/amq/queue/{self._reply}"))
            self._receiver.receive(timeout=10)
            self._receiver.accept()
            samples.append((time.perf_counter() - started) * 1000)
        return samples

    def close(self) -> None:
        self._stack.close()


# ------------------------------------------------------------------------ events
def _raw_subscriber(url: str, key: str, n: int, pipe: Any) -> None:
    class Receiver(MessagingHandler):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(prefetch=1000)
            self.got, self.last = 0, 0.0

        def on_start(self, event: Any) -> None:
            conn = event.container.connect(**_connect_args(url))
            event.container.create_receiver(conn, f"/exchange/hostbus.event/{key}")

        def on_link_opened(self, event: Any) -> None:
            pipe.send("ready")

        def on_message(self, event: Any) -> None:
            codec.decode_object(bytes(event.message.body))  # a subscriber reads what it gets
            self.got += 1
            self.last = time.time()
            if self.got >= n:
                event.connection.close()

    handler = Receiver()
    Container(handler).run()
    pipe.send((handler.got, handler.last))


class _Publisher(MessagingHandler):  # type: ignore[misc]
    def __init__(self, url: str, body: bytes, n: int) -> None:
        super().__init__()
        self.url, self.body, self.n = url, body, n
        self.sent = self.accepted = 0

    def on_start(self, event: Any) -> None:
        conn = event.container.connect(**_connect_args(self.url))
        event.container.create_sender(conn, "/exchange/hostbus.event/host.raw10.metrics")

    def on_sendable(self, event: Any) -> None:
        while event.sender.credit and self.sent < self.n:
            event.sender.send(Message(body=self.body, inferred=True,
                                      content_type="application/json"))
            self.sent += 1

    def on_accepted(self, event: Any) -> None:
        self.accepted += 1
        if self.accepted == self.n:
            event.connection.close()


def raw_rate(bench: Bench, n: int) -> float:
    url = bench.url.replace("amqp://", "amqp10://", 1)
    body = codec.encode(Event(host="raw10", agent="host", event="metrics", data=events.DATA,
                              seq=1, epoch="e").to_body())
    rate, _ = events._measure(_raw_subscriber, (url, "host.raw10.#", n),
                              lambda: Container(_Publisher(url, body, n)).run())
    return rate


def run(bench: Bench, n_calls: int, n_events: int) -> dict[str, Any]:
    url10 = bench.url.replace("amqp://", "amqp10://", 1)
    warm = max(50, n_calls // 20)
    out: dict[str, Any] = {}
    progress(f"AMQP 1.0 call round trips: {n_calls} each, raw proton and hostbus, in "
             f"turns of {BLOCK}")
    samples = in_turns({"raw_proton": lambda: _RawProtonSide(bench),
                        "raw_proton_blocking": lambda: _RawBlockingSide(bench),
                        "hostbus": lambda: call.HostbusSide(bench, url=url10)},
                       n_calls, warm)
    out.update({label: summary(values) for label, values in samples.items()})
    out["samples"] = {k: [round(x, 4) for x in v] for k, v in samples.items()}
    out["ratio_p50"] = round(out["hostbus"]["p50"] / out["raw_proton"]["p50"], 2)
    out["ratio_p99"] = round(out["hostbus"]["p99"] / out["raw_proton"]["p99"], 2)
    out["ratio_p50_vs_blocking"] = round(
        out["hostbus"]["p50"] / out["raw_proton_blocking"]["p50"], 2)
    progress(f"AMQP 1.0 events: {n_events}, raw proton and hostbus")
    warm_events = max(500, n_events // 10)
    raw_rate(bench, warm_events)
    raw = raw_rate(bench, n_events)
    events.hostbus_rate(bench, warm_events, url=url10)
    hb = events.hostbus_rate(bench, n_events, url=url10)
    out["events"] = {"events": n_events, "raw_proton_per_s": round(raw),
                     "hostbus_per_s": round(hb), "ratio": round(hb / raw, 2)}
    return out
