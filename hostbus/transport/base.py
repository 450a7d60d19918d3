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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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


def reconnect_delay(attempt: int, max_backoff: float) -> float:
    """Capped exponential backoff with jitter: 0.5 s, 1 s, 2 s ... up to ``max_backoff``,
    each scaled by a random 0.5 to 1.0 so that a fleet does not retry in step."""
    return min(max_backoff, 0.5 * 2 ** attempt) * random.uniform(0.5, 1.0)


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


Handler = Callable[[Delivery], None]
#: Called once per confirmed publish: True the broker took it, False the broker refused
#: it (Basic.Nack), None the outcome is unknown (the connection or channel went away
#: first, or the publish waited through a reconnect): the sender may send it again.
Confirm = Callable[[bool | None], None]


class Transport(abc.ABC):
    """A connection to the broker with one I/O thread."""

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
    ) -> None:
        """Hand a message to the I/O thread. ``user_id`` defaults to ``self.user``.

        With ``confirm`` the message goes out under publisher confirms, pipelined (many
        in flight, no wait per message): ``confirm(True)`` runs on the I/O thread once
        the broker has taken responsibility for it (written it to disk where the queue
        is durable and the message persistent), ``confirm(False)`` if it refused it,
        ``confirm(None)`` if the connection dropped first (see ``Confirm``)."""

    @abc.abstractmethod
    def consume(self, queue: str, handler: Handler, *, manual_ack: bool = False) -> None:
        """Consume an existing queue (declared by ``broker setup``/``enroll``).

        By default a message is acknowledged once the handler returns. With
        ``manual_ack`` the handler (or a worker it hands the delivery to) must call
        ``delivery.ack()`` or ``delivery.nack(requeue)``; until then the broker holds the
        message and redelivers it if this process dies. Raises ``BrokerRefused`` when the
        queue does not exist or may not be read.
        """

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

    def __enter__(self) -> Transport:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
