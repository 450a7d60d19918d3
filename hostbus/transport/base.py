"""The transport interface every backend implements, and the neutral message types.

A transport owns one connection and one I/O thread. Handlers run on that thread and must
return quickly (hand real work to a worker). Every public method is safe to call from any
thread: work is handed to the I/O thread, never done on the caller's.

Names given to a transport are logical exchange and queue names (``hostbus.names``); a
backend maps them onto its protocol's addresses.
"""

from __future__ import annotations

import abc
import logging
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Properties:
    message_id: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    content_type: str | None = None
    type: str | None = None
    user_id: str | None = None
    timestamp: int | None = None  # seconds since the epoch (AMQP 0-9-1 precision)
    expiration: str | None = None  # TTL in milliseconds, as a decimal string
    headers: dict[str, Any] = field(default_factory=dict)


def _run_all(callbacks: list[Callable[..., None]], what: str, *args: Any) -> None:
    for callback in callbacks:
        try:
            callback(*args)
        except Exception:
            log.exception("%s callback failed", what)


#: AMQP heartbeat, seconds. A dead peer (a silent network, a frozen broker) is noticed
#: by pika at its first check (every heartbeat + 5 s) that finds no byte received since
#: the previous one, while the broker sends something every heartbeat / 2 s: between
#: heartbeat + 5 and 2 x (heartbeat + 5) s, so 15 to 30 s. proton gives up once nothing
#: came for its idle timeout, the heartbeat: 10 s. (30 s took 69 s over 0-9-1.)
DEFAULT_HEARTBEAT = 10
#: The reconnect backoff's cap, seconds. An agent waiting at the cap tries again within
#: this long of the broker's return. A fleet of N agents at the cap makes about
#: N / (0.75 x cap) attempts a second (mean delay 0.75 x cap): 1,000 agents about 330
#: a second, the whole fleet back within 4 s. Raise it for fleets of many thousands.
DEFAULT_MAX_BACKOFF = 4.0


def reconnect_delay(attempt: int, max_backoff: float = DEFAULT_MAX_BACKOFF) -> float:
    """Capped exponential backoff with jitter: 0.5 s, 1 s, 2 s ... up to ``max_backoff``,
    each scaled by a random 0.5 to 1.0 so that a fleet does not retry in step."""
    return min(max_backoff, 0.5 * 2 ** min(attempt, 32)) * random.uniform(0.5, 1.0)


# How RabbitMQ names the exchange in a refusal: "access to exchange 'X' in vhost ...",
# "no exchange 'X' in vhost ...", "write access to topic 'K' in exchange 'X' ...".
_NAMED_EXCHANGE = re.compile(r"exchange '([^']*)'")
_NAMED_TOPIC = re.compile(r"topic '([^']*)'")


def refused_publishes(words: str, sent: list[tuple[str, str]]) -> list[bool]:
    """Which of the publishes in flight (exchange, routing key) a refusal in the broker's
    ``words`` is about, in order: those with the routing key it names (a topic
    permission), else those to the exchange it names (a missing exchange, no write
    permission). The others were not refused: their outcome is unknown (the channel or
    session closed under them), and a sender sends them again rather than losing them;
    so are all of them when the words name neither."""
    topic, exchange = _NAMED_TOPIC.search(words), _NAMED_EXCHANGE.search(words)
    if topic is not None:
        return [key == topic.group(1) and (exchange is None or ex == exchange.group(1))
                for ex, key in sent]
    if exchange is not None:
        return [ex == exchange.group(1) for ex, _ in sent]
    return [False] * len(sent)

def named_exchange(words: str) -> str:
    """The exchange a refusal in the broker's words names, or ""."""
    found = _NAMED_EXCHANGE.search(words)
    return found.group(1) if found else ""


def _settled(requeue: bool = False) -> None:
    """What ack/nack do for a delivery that was acknowledged on receipt."""


@dataclass(slots=True)
class Delivery:
    body: bytes
    properties: Properties
    exchange: str
    routing_key: str
    redelivered: bool = False
    #: With ``consume(..., manual_ack=True)``: settle the message, from any thread.
    #: ``nack(requeue=False)`` dead-letters it where the queue has a dead-letter exchange.
    ack: Callable[[], None] = field(default=_settled, repr=False)
    nack: Callable[[bool], None] = field(default=_settled, repr=False)
    #: The acknowledgement's own work, which ``ack`` hands to the transport's I/O
    #: thread; ``Transport.ack_all`` runs many of them in one hand-off. None where
    #: ``ack`` needs no hand-off.
    ack_on_io_thread: Callable[[], None] | None = field(default=None, repr=False)


Handler = Callable[[Delivery], None]
#: Called once per confirmed publish: True the broker took it, False the broker refused
#: it (Basic.Nack), None the outcome is unknown (the connection or channel went away
#: first, or the publish waited through a reconnect): the sender may send it again.
Confirm = Callable[[bool | None], None]


def withdrawn(confirm: Confirm | None) -> bool:
    """True for a confirmed publish its sender took back before the I/O thread sent it
    (a callable with a true ``withdrawn`` attribute: the outbox's, once the channel its
    events went out on was lost): the transport drops it unsent and reports nothing, so
    a copy queued before the loss cannot overtake the copies the sender sends again."""
    return confirm is not None and getattr(confirm, "withdrawn", False) is True


class Caller(Protocol):
    """A connection one calling thread owns and drives itself, for request/reply with no
    hand-off to an I/O thread (``Transport.caller``). Only that thread uses it."""

    user: str
    reply_to: str  # the binding key replies are sent to
    blocked: str | None  # a resource alarm's reason, while it lasts
    broken: bool  # failed: close it, open another
    replies: list[tuple[Delivery, float]]  # (reply, arrival time), taken out by the owner
    returned: list[tuple[str, str, Properties]]  # mandatory publishes no queue took

    def open(self) -> None: ...

    def publish(self, exchange: str, routing_key: str, body: bytes, properties: Properties,
                *, persistent: bool = False, confirm: Confirm | None = None,
                mandatory: bool = False) -> None: ...

    def wait(self, until: float, done: Callable[[], bool]) -> None: ...

    def pump(self) -> None: ...

    def unread(self) -> bool: ...

    def close(self) -> None: ...


class Transport(abc.ABC):
    """A connection to the broker with one I/O thread."""

    def caller(self) -> Caller | None:
        """A new connection of the calling thread's own for request/reply (not yet
        open), where this backend offers one; None where it does not (calls then go
        through the I/O thread)."""
        return None

    #: The broker user name; the broker checks it against ``user_id`` on every publish.
    user: str

    @abc.abstractmethod
    def start(self) -> None:
        """Connect. The first connection fails fast with ``ConnectionFailed``."""

    @abc.abstractmethod
    def close(self) -> None:
        """Flush what was published, then disconnect. Idempotent."""

    @abc.abstractmethod
    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Properties,
        *,
        persistent: bool = False,
        confirm: Confirm | None = None,
        mandatory: bool = False,
    ) -> None:
        """Hand a message to the I/O thread. ``user_id`` defaults to ``self.user``.

        With ``confirm`` the message goes out under publisher confirms, pipelined (many
        in flight, no wait per message): ``confirm(True)`` runs on the I/O thread once
        the broker has taken responsibility for it (written it to disk where the queue
        is durable and the message persistent), ``confirm(False)`` if it refused it,
        ``confirm(None)`` if the connection dropped first (see ``Confirm``).

        With ``mandatory``, a message that no queue takes (nothing is bound for its
        routing key) is reported to ``on_unroutable`` callbacks instead of vanishing,
        where the broker says so: over AMQP 0-9-1 always (basic.return), over AMQP 1.0
        on RabbitMQ 4.x (the ``released`` outcome); RabbitMQ 3.x accepts such a message
        over AMQP 1.0 and drops it without a word (``reports_unroutable`` is then
        False)."""

    @abc.abstractmethod
    def consume(self, queue: str, handler: Handler, *, manual_ack: bool = False) -> None:
        """Consume an existing queue (declared by ``broker setup``/``enroll``).

        By default a message is acknowledged once the handler returns. With
        ``manual_ack`` the handler (or a worker it hands the delivery to) must call
        ``delivery.ack()`` or ``delivery.nack(requeue)``; until then the broker holds the
        message and redelivers it if this process dies. Raises ``BrokerRefused`` when the
        queue does not exist or may not be read.
        """

    def ack_all(self, deliveries: Sequence[Delivery]) -> None:
        """Acknowledge these deliveries, as calling each one's ``ack`` does, from any
        thread. A transport with an I/O thread hands them over once, not once each: a
        consumer that settles in batches (the historian) saves a thread wake-up per
        message."""
        for delivery in deliveries:
            delivery.ack()

    @abc.abstractmethod
    def open_reply_queue(self, handler: Handler) -> str:
        """Create this process's reply queue, bound to ``hostbus.reply``; return its name."""

    @abc.abstractmethod
    def subscribe(
        self, patterns: list[str], handler: Handler, *, name: str | None = None,
        durable: bool = False,
    ) -> str:
        """Bind a subscription queue to ``hostbus.event``; return its name: the queue's
        for a durable one; for a transient one a label only, since the broker names
        its private queue anew on every connection (see PikaTransport._apply)."""

    @abc.abstractmethod
    def queue_exists(self, queue: str) -> bool:
        """Whether a queue exists (a passive check: needs no configure permission)."""

    def queue_consumers(self, queue: str) -> int | None:
        """How many consumers a queue has (a passive check), or None where the protocol
        does not say (AMQP 1.0) or the queue does not exist."""
        return None

    @abc.abstractmethod
    def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything published so far has been handed to the broker."""

    def on_connection_lost(self, callback: Callable[[Exception], None]) -> None:
        """Register a callback run (on the I/O thread) when the connection drops."""
        self._lost_callbacks.append(callback)

    def on_connection_restored(self, callback: Callable[[], None]) -> None:
        """Register a callback run (on the I/O thread) after a reconnect, once every
        consumer and queue this transport had has been restored."""
        self._restored_callbacks.append(callback)

    def on_unroutable(self, callback: Callable[[str, str, Properties], None]) -> None:
        """Register a callback run (on the I/O thread) with (exchange, routing key,
        properties) of a ``mandatory`` publish that no queue took."""
        self._unroutable_callbacks.append(callback)

    def on_blocked(self, callback: Callable[[str], None]) -> None:
        """Register a callback run (on the I/O thread) when the broker stops taking
        this connection's publishes (a resource alarm: memory or disk), with its reason.
        The connection stays open; what is published meanwhile waits, and goes out once
        the broker lets it (``on_unblocked``). ``blocked`` holds the reason meanwhile."""
        self._blocked_callbacks.append(callback)

    def on_unblocked(self, callback: Callable[[], None]) -> None:
        """Register a callback run (on the I/O thread) when publishes flow again."""
        self._unblocked_callbacks.append(callback)

    def on_consumer_lost(self, callback: Callable[[str, str], None]) -> None:
        """Register a callback run (on the I/O thread) when the broker ends one of this
        transport's consumers while the connection stays up (its queue was deleted, by
        an administrator say), with the queue's name as ``consume``, ``subscribe`` or
        ``open_reply_queue`` returned it, and the broker's words. The transport restores
        it by itself: it declares again what it declared (reply and subscription
        queues), and waits, retrying with backoff, for a queue it does not declare (a
        host's queue, until ``broker enroll`` makes it again)."""
        self._consumer_lost_callbacks.append(callback)

    def on_consumer_restored(self, callback: Callable[[str], None]) -> None:
        """Register a callback run (on the I/O thread) once a lost consumer consumes
        again, with the queue's name. Messages sent to a deleted queue are lost."""
        self._consumer_restored_callbacks.append(callback)

    @property
    def blocked(self) -> str | None:
        """Why the broker is not taking this connection's publishes now (a resource
        alarm), or None."""
        return self._blocked

    #: Whether ``mandatory`` publishes that no queue takes are reported (see publish).
    reports_unroutable: bool = True

    def on_refused(self, callback: Callable[[str, str], None]) -> None:
        """Register a callback run (on the I/O thread) when the broker refuses a publish,
        with the exchange ("" when the broker did not say which) and its reason. Over
        AMQP 0-9-1 a refusal closes the channel and names no message, so a sender that
        must know learns it here, at once, rather than by waiting for a reply."""
        self._refused_callbacks.append(callback)

    def __init__(self) -> None:
        self._lost_callbacks: list[Callable[[Exception], None]] = []
        self._restored_callbacks: list[Callable[[], None]] = []
        self._refused_callbacks: list[Callable[[str, str], None]] = []
        self._unroutable_callbacks: list[Callable[[str, str, Properties], None]] = []
        self._blocked_callbacks: list[Callable[[str], None]] = []
        self._unblocked_callbacks: list[Callable[[], None]] = []
        self._consumer_lost_callbacks: list[Callable[[str, str], None]] = []
        self._consumer_restored_callbacks: list[Callable[[str], None]] = []
        self._blocked: str | None = None
        #: The last refusal: (where, the broker's words).
        self.last_refusal: tuple[str, str] | None = None

    # What the backends call on their I/O thread; one failing callback must not stop
    # the others, nor the I/O thread.
    def _connection_lost(self, exc: Exception) -> None:
        _run_all(self._lost_callbacks, "connection-lost", exc)

    def _connection_restored(self) -> None:
        _run_all(self._restored_callbacks, "connection-restored")

    def _broker_refused(self, exchange: str, where: str, reason: str) -> None:
        self.last_refusal = (where, reason)
        _run_all(self._refused_callbacks, "refusal", exchange, reason)

    def _unroutable(self, exchange: str, routing_key: str, properties: Properties) -> None:
        _run_all(self._unroutable_callbacks, "unroutable", exchange, routing_key, properties)

    def _set_blocked(self, reason: str | None) -> None:
        """The broker stopped (a reason) or resumed (None) taking publishes: logged
        once per change, and told to the callbacks."""
        if reason == self._blocked:
            return
        was, self._blocked = self._blocked, reason
        if reason is not None:
            if was is None:
                log.warning("the broker is refusing publishes: %s; waiting for it to "
                            "clear (the connection stays open)", reason)
                _run_all(self._blocked_callbacks, "blocked", reason)
            return
        log.warning("the broker takes publishes again (%s cleared)", was)
        _run_all(self._unblocked_callbacks, "unblocked")

    def _consumer_lost(self, queue: str, reason: str) -> None:
        _run_all(self._consumer_lost_callbacks, "consumer-lost", queue, reason)

    def _consumer_restored(self, queue: str) -> None:
        _run_all(self._consumer_restored_callbacks, "consumer-restored", queue)

    def __enter__(self) -> Transport:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
