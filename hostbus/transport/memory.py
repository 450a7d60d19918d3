"""An in-process broker and transport for unit tests: no network, same semantics.

``MemoryBroker`` routes like RabbitMQ (topic, direct and fanout exchanges; unroutable
messages are dropped, or returned when published mandatory; a publish to a missing
exchange is refused; deleting a queue cancels its consumers, which their transports
restore as the real ones do). Each
``MemoryTransport`` has its own I/O thread, so handler threading matches the real
transports and tests exercise the same hand-offs.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from hostbus import names, topology
from hostbus.errors import BrokerRefused, TransportClosed
from hostbus.transport.base import Confirm, Delivery, Handler, Properties, Transport

log = logging.getLogger(__name__)


def _noop(*_args: object) -> None:
    """Settling a message that needs no settling."""


@dataclass
class _Queue:
    name: str
    exclusive_owner: MemoryTransport | None = None
    dead_letter_exchange: str | None = None
    #: x-single-active-consumer: every message goes to the first consumer still there.
    single_active: bool = False
    messages: deque[Delivery] = field(default_factory=deque)
    consumers: list[tuple[MemoryTransport, Handler]] = field(default_factory=list)
    _rr: itertools.count = field(default_factory=itertools.count)


class MemoryBroker:
    """A broker in memory, pre-loaded with the hostbus topology."""

    def __init__(self, *, load_topology: bool = True) -> None:
        self._lock = threading.RLock()
        self.exchanges: dict[str, str] = {}
        self.queues: dict[str, _Queue] = {}
        self.bindings: list[tuple[str, str, str]] = []  # (exchange, key, queue)
        self.published: list[tuple[str, str, Delivery]] = []  # every accepted publish
        # Consumers of deleted queues, restored when the queue is made again.
        self._waiting: dict[str, list[tuple[MemoryTransport, Handler]]] = {}
        if load_topology:
            defs = topology.definitions()
            for ex in defs["exchanges"]:
                self.declare_exchange(ex["name"], ex["type"])
            for q in defs["queues"]:
                self.declare_queue(q["name"])
                self.queues[q["name"]].dead_letter_exchange = q["arguments"].get(
                    "x-dead-letter-exchange")
            for b in defs["bindings"]:
                self.bind(b["source"], b["routing_key"], b["destination"])

    # -- administration (what `broker setup` / `enroll` do on RabbitMQ) --
    def declare_exchange(self, name: str, kind: str) -> None:
        with self._lock:
            self.exchanges[name] = kind

    def declare_queue(self, name: str, owner: MemoryTransport | None = None, *,
                      single_active: bool = False) -> None:
        with self._lock:
            made = name not in self.queues
            self.queues.setdefault(name, _Queue(name, owner, single_active=single_active))
            waiting = self._waiting.pop(name, []) if made else []
        for transport, handler in waiting:  # consumers that lost it come back
            transport._restore(name, handler)

    def delete_queue(self, name: str) -> None:
        """As an administrator would: its consumers are cancelled."""
        with self._lock:
            q = self.queues.pop(name, None)
            self.bindings = [b for b in self.bindings if b[2] != name]
            cancelled = q.consumers if q is not None else []
            if q is not None and q.exclusive_owner is None:
                self._waiting.setdefault(name, []).extend(cancelled)
        for transport, handler in cancelled:
            transport._cancelled(name, handler, exclusive=q is not None
                                 and q.exclusive_owner is not None)

    def bind(self, exchange: str, key: str, queue_name: str) -> None:
        with self._lock:
            if (exchange, key, queue_name) not in self.bindings:
                self.bindings.append((exchange, key, queue_name))

    def enroll(self, host_id: str, agents: list[str]) -> None:
        """Create a host's queues and bindings, as ``hostbus broker enroll`` does."""
        for q, bindings in topology.host_queues(host_id, agents).items():
            self.declare_queue(q)
            for exchange, key in bindings:
                self.bind(exchange, key, q)

    def enroll_active_queue(self, service: str, patterns: list[str]) -> None:
        """A service's active queue, as ``BrokerAdmin.enroll_active_queue`` makes it."""
        queue, pairs = topology.active_queue(service, patterns)
        self.declare_queue(queue, single_active=True)
        for exchange, key in pairs:
            self.bind(exchange, key, queue)

    @staticmethod
    def _consumer(q: _Queue) -> tuple[MemoryTransport, Handler]:
        if q.single_active:
            return q.consumers[0]
        return q.consumers[next(q._rr) % len(q.consumers)]

    # -- routing --
    def route(self, exchange: str, delivery: Delivery) -> int:
        """Route a message; returns how many queues took it."""
        with self._lock:
            kind = self.exchanges.get(exchange)
            if kind is None:
                raise BrokerRefused(f"NOT_FOUND - no exchange '{exchange}'")
            self.published.append((exchange, delivery.routing_key, delivery))
            targets: list[str] = []
            for ex, key, qname in self.bindings:
                if ex != exchange or qname in targets:
                    continue
                if (
                    kind == "fanout"
                    or (kind == "direct" and key == delivery.routing_key)
                    or (kind == "topic" and names.topic_matches(key, delivery.routing_key))
                ):
                    targets.append(qname)
            for qname in targets:
                q = self.queues.get(qname)
                if q is None:
                    continue
                if q.consumers:
                    transport, handler = self._consumer(q)
                    transport._deliver(handler, replace(delivery))
                else:
                    q.messages.append(replace(delivery))
            return sum(1 for qname in targets if qname in self.queues)

    def dead_letter(self, queue_name: str, delivery: Delivery) -> None:
        """What RabbitMQ does with a message rejected without requeue."""
        q = self.queues.get(queue_name)
        if q is not None and q.dead_letter_exchange:
            self.route(q.dead_letter_exchange, replace(delivery, ack=_noop, nack=_noop))

    def requeue(self, queue_name: str, delivery: Delivery) -> None:
        with self._lock:
            q = self.queues.get(queue_name)
            if q is None:
                return
            again = replace(delivery, redelivered=True)
            if q.consumers:
                transport, handler = self._consumer(q)
                transport._deliver(handler, again)
            else:
                q.messages.appendleft(again)

    def add_consumer(self, queue_name: str, transport: MemoryTransport, handler: Handler) -> None:
        with self._lock:
            q = self.queues.get(queue_name)
            if q is None:
                raise BrokerRefused(f"NOT_FOUND - no queue '{queue_name}'")
            if q.exclusive_owner not in (None, transport):
                raise BrokerRefused(f"RESOURCE_LOCKED - queue '{queue_name}' is exclusive")
            q.consumers.append((transport, handler))
            if q.single_active:  # the messages wait for the active consumer
                transport, handler = q.consumers[0]
            while q.messages:
                transport._deliver(handler, q.messages.popleft())

    def drop_transport(self, transport: MemoryTransport) -> None:
        with self._lock:
            for qname, q in list(self.queues.items()):
                q.consumers = [c for c in q.consumers if c[0] is not transport]
                if q.exclusive_owner is transport:
                    self.delete_queue(qname)
                elif q.consumers and q.messages:  # the next single active consumer
                    successor, handler = self._consumer(q)
                    while q.messages:
                        successor._deliver(handler, q.messages.popleft())


class MemoryTransport(Transport):
    """A transport connected to a ``MemoryBroker``."""

    def __init__(self, broker: MemoryBroker, *, user: str = "guest") -> None:
        super().__init__()
        self.broker = broker
        self.user = user
        self._work: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.offline = False  # see lose_connection()
        # What this transport declared: queue -> its bindings (exchange, key).
        self._declared: dict[str, list[tuple[str, str]]] = {}

    def lose_connection(self) -> None:
        """Act as if the broker went away: publishes are lost (confirmed ones report
        failure) until ``restore_connection``. Callbacks run on the I/O thread, as
        with a real broker."""
        self.offline = True
        err = ConnectionError("memory broker: connection lost (simulated)")
        self._work.put(lambda: self._connection_lost(err))

    def restore_connection(self) -> None:
        self.offline = False
        self._work.put(self._connection_restored)

    def block(self, reason: str = "low on memory") -> None:
        """Act as if a resource alarm blocked this connection (see unblock())."""
        self._work.put(lambda: self._set_blocked(reason))

    def unblock(self) -> None:
        self._work.put(lambda: self._set_blocked(None))

    def _cancelled(self, queue: str, handler: Handler, *, exclusive: bool) -> None:
        """The broker deleted a queue this transport consumed: say so, and declare
        again what this transport declared (the memory broker restores the rest when
        the queue is made again)."""
        def run() -> None:
            self._consumer_lost(queue, f"queue '{queue}' deleted")
            bindings = self._declared.get(queue)
            if bindings is not None:
                self.broker.declare_queue(queue, owner=self if exclusive else None)
                for exchange, key in bindings:
                    self.broker.bind(exchange, key, queue)
                self._restore(queue, handler)

        self._work.put(run)

    def _restore(self, queue: str, handler: Handler) -> None:
        if self._closed:
            return
        with self.broker._lock:
            q = self.broker.queues.get(queue)
            if q is None or any(c == (self, handler) for c in q.consumers):
                return
            q.consumers.append((self, handler))
        self._work.put(lambda: self._consumer_restored(queue))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="hostbus-memory-io", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            task = self._work.get()
            if task is None:
                return
            try:
                task()
            except Exception:  # a handler bug must not kill the I/O thread
                log.exception("handler failed on the memory transport")
            finally:
                self._work.task_done()

    def _deliver(self, handler: Handler, delivery: Delivery) -> None:
        if not self._closed:
            self._work.put(lambda: handler(delivery))

    def close(self) -> None:
        if self._closed:
            return
        self.flush()
        self._closed = True
        self.broker.drop_transport(self)
        self._work.put(None)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _check_open(self) -> None:
        if self._closed or self._thread is None:
            raise TransportClosed("the memory transport is not started or already closed")

    def publish(
        self, exchange: str, routing_key: str, body: bytes, properties: Properties,
        *, persistent: bool = False, confirm: Confirm | None = None,
        mandatory: bool = False,
    ) -> None:
        self._check_open()
        if self.offline:
            if confirm is not None:
                self._work.put(lambda: confirm(None))
            return
        if properties.user_id is None:
            properties = replace(properties, user_id=self.user)
        elif properties.user_id != self.user:
            raise BrokerRefused(
                f"PRECONDITION_FAILED - user_id property set to '{properties.user_id}' "
                f"but authenticated user was '{self.user}'"
            )
        taken = self.broker.route(exchange, Delivery(bytes(body), properties, exchange,
                                                     routing_key))
        if mandatory and not taken:
            self._work.put(lambda: self._unroutable(exchange, routing_key, properties))
        if confirm is not None:
            self._work.put(lambda: confirm(True))

    def consume(self, queue: str, handler: Handler, *, manual_ack: bool = False) -> None:
        self._check_open()
        if not manual_ack:
            self.broker.add_consumer(queue, self, handler)
            return
        broker = self.broker

        def with_settlers(delivery: Delivery) -> None:
            def nack(requeue: bool = False) -> None:
                if requeue:
                    broker.requeue(queue, delivery)
                else:
                    broker.dead_letter(queue, delivery)

            handler(replace(delivery, ack=_noop, nack=nack))

        self.broker.add_consumer(queue, self, with_settlers)

    def open_reply_queue(self, handler: Handler) -> str:
        self._check_open()
        name = names.new_reply_queue(self.user)
        self.broker.declare_queue(name, owner=self)
        self.broker.bind(names.REPLY_EXCHANGE, name, name)
        self._declared[name] = [(names.REPLY_EXCHANGE, name)]
        self.broker.add_consumer(name, self, handler)
        return name

    def subscribe(
        self, patterns: list[str], handler: Handler, *, name: str | None = None,
        durable: bool = False,
    ) -> str:
        self._check_open()
        qname = names.subscription_queue(self.user, name)
        self.broker.declare_queue(qname, owner=None if durable else self)
        for pattern in patterns:
            self.broker.bind(names.EVENT_EXCHANGE, pattern, qname)
        self._declared[qname] = [(names.EVENT_EXCHANGE, p) for p in patterns]
        self.broker.add_consumer(qname, self, handler)
        return qname

    def queue_exists(self, queue: str) -> bool:
        return queue in self.broker.queues

    def queue_consumers(self, queue: str) -> int | None:
        with self.broker._lock:
            q = self.broker.queues.get(queue)
            return None if q is None else len(q.consumers)

    def flush(self, timeout: float = 5.0) -> None:
        # Routing is synchronous; what remains is work queued for this I/O thread.
        if self._thread is not None and threading.current_thread() is not self._thread:
            done = threading.Event()
            self._work.put(done.set)
            done.wait(timeout)
