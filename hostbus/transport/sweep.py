"""Clearing a queue of a message the broker cannot deliver over AMQP 0-9-1.

AMQP 1.0 lets a sender give a message a message-id, correlation-id, reply-to,
content-type or content-encoding longer than the 255 bytes AMQP 0-9-1 can carry, or a
numeric message-id. RabbitMQ takes such a message, and closes the connection of every
AMQP 0-9-1 consumer it tries to deliver it to, with 541 INTERNAL_ERROR (RabbitMQ 3.10:
``content_properties_shortstr_overflow`` in its log). The message goes back to its
queue, ahead of newer ones, and comes again on the next connection: one message would
keep an agent, a service or a durable subscriber off the bus for good.

The way out, measured on RabbitMQ 3.10 and 4.0 with classic and quorum queues:
``basic.get`` with ``no_ack`` removes the message at the head of a queue *before* the
broker frames it, so the connection still dies, but the message is gone. So after a 541
the next connection, before it consumes again, sweeps each durable queue it consumes:
it takes messages with ``no_ack`` while they are redeliveries (the ones that were out
when the connection died, the culprit among them: they come before any newer message)
and hands them to the handler as usual, up to and including the first new message. A
message the broker cannot frame closes that connection too, and is gone; a new
connection goes on sweeping at once, and so does one whose consumer meets another such
message right after a sweep that took messages off. The redelivered copies of messages this process
is still handling (received before the connection died, not settled since) are
dropped: their replies go out on the new connection, once. A copy of one it had
already answered is handed over again (its ack may have died with the connection, and
so may its reply): the agent's replay guard answers it with the earlier reply. Before
consuming again, the transport sends the replies to what the sweep handed over (waiting
a few seconds for their handlers), so that the next such message, closing that
connection, cannot take them along.

What it costs: nothing while nothing goes wrong (a dictionary entry per unsettled
request); per such message, one more connection. The swept messages are settled when
taken, so a quorum queue's delivery limit counts an innocent message at most once, and
only if it was out when the first connection died. The price: a message the sweep hands
over (redeliveries, and the one new message) is not delivered again if this process
dies while handling it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import pika.exceptions as pex

log = logging.getLogger(__name__)

INTERNAL_ERROR = 541
Fingerprint = tuple[str, str | None, int]  # queue, message_id, hash of the body

#: One durable queue to sweep, and what to do with a message taken from it:
#: ``deliver(method, properties, body)`` (pika's Basic.GetOk, BasicProperties, bytes).
SweptQueue = tuple[str, Callable[[Any, Any, bytes], None]]


class Swept(pex.AMQPConnectionError):
    """The sweep removed a message and the broker closed the connection doing it:
    reconnect at once (no backoff: each such connection clears one message) and go on."""


def is_internal_error(exc: BaseException) -> bool:
    """Whether the broker closed a connection or channel with 541 INTERNAL_ERROR."""
    return (isinstance(exc, pex.ConnectionClosedByBroker | pex.ChannelClosedByBroker)
            and exc.reply_code == INTERNAL_ERROR)


class Sweeper:
    """The sweep's state on one transport. Everything runs on the transport's I/O
    thread."""

    def __init__(self) -> None:
        #: A 541 was seen: sweep before consuming again.
        self.needed = False
        #: Messages removed by a sweep, since this transport started.
        self.removed = 0
        # A sweep took messages off since ``progressed`` was last asked.
        self._moved = False
        # Messages handed over by sweeps whose handlers have not said they are done;
        # from handler threads, hence the lock.
        self._handed = 0
        self._lock = threading.Lock()
        # Keys of requests in hand whose copies a sweep dropped, until they are settled.
        self._awaited: set[tuple[int, int]] = set()
        # (channel id, delivery tag) -> (queue, message_id, hash of the body): received
        # on the consuming channel and not yet settled.
        self._unsettled: dict[tuple[int, int], Fingerprint] = {}
        # The same, for those unsettled when a 541 closed their channel and not settled
        # since: still being handled, so their reply is still to come.
        self._in_hand: dict[tuple[int, int], Fingerprint] = {}

    def received(self, channel: object, tag: int, queue: str, message_id: str | None,
                 body: bytes) -> None:
        self._unsettled[(id(channel), tag)] = (queue, message_id, hash(body))

    def settled(self, channel: object, tag: int) -> None:
        key = (id(channel), tag)
        self._unsettled.pop(key, None)
        self._in_hand.pop(key, None)
        self._awaited.discard(key)

    def closed(self, exc: BaseException) -> None:
        """The consuming channel or its connection is gone: delivery tags mean nothing on
        a new one. After a 541, remember what was in hand and sweep before consuming
        again."""
        if is_internal_error(exc) or isinstance(exc, Swept):
            if not self.needed:
                log.warning("the broker closed the connection with 541 INTERNAL_ERROR, the "
                            "sign of a message it cannot deliver over AMQP 0-9-1; the "
                            "queues consumed are swept before consuming again")
            self.needed = True
            self._in_hand.update(self._unsettled)
        self._unsettled.clear()

    def hand_out(self) -> Callable[[], None]:
        """Count a message handed over; the function returned says its handler is done
        (its reply sent), once, from any thread."""
        with self._lock:
            self._handed += 1
        once = threading.Event()

        def done() -> None:
            if not once.is_set():
                once.set()
                with self._lock:
                    self._handed -= 1

        return done

    def handed_out(self) -> int:
        """Messages handed over by sweeps, and requests in hand whose copies a sweep
        dropped, that their handlers are not done with yet (their replies not sent)."""
        with self._lock:
            return self._handed + len(self._awaited)

    def progressed(self) -> bool:
        """Whether a sweep took messages off since the last call: a connection that
        failed after that may be tried again at once, since the queue moved on (each
        such retry follows progress, so a broker that fails for another reason gets
        the usual backoff)."""
        moved, self._moved = self._moved, False
        return moved

    def sweep(self, conn: Any, queues: list[SweptQueue]) -> None:
        """Take messages off each queue (``no_ack``) and hand them over, except copies
        of those still in hand. Raises ``Swept`` when the broker closed the connection
        while handing one out: that message is gone."""
        in_hand: dict[Fingerprint, list[tuple[int, int]]] = {}
        for key, found in self._in_hand.items():
            in_hand.setdefault(found, []).append(key)
        ch = conn.channel()
        for queue, deliver in queues:
            ch = self._sweep_queue(conn, ch, queue, deliver, in_hand)
        ch.close()
        self.needed = False
        self._in_hand.clear()

    def _sweep_queue(self, conn: Any, ch: Any, queue: str,
                     deliver: Callable[[Any, Any, bytes], None],
                     in_hand: dict[Fingerprint, list[tuple[int, int]]]) -> Any:
        while True:
            try:
                method, props, body = ch.basic_get(queue, auto_ack=True)
            except pex.ChannelClosedByBroker as exc:
                if exc.reply_code == INTERNAL_ERROR:  # only the channel died with it
                    self._removed(queue)
                    ch = conn.channel()
                    continue
                # The queue is gone or may not be read: consuming it will say so.
                return conn.channel()
            except pex.ConnectionClosedByBroker as exc:
                if exc.reply_code != INTERNAL_ERROR:
                    raise
                self._removed(queue)
                raise Swept(f"removed a message from {queue}") from None
            if method is None:
                return ch
            self._moved = True
            copy = (queue, props.message_id, hash(body))
            if method.redelivered and in_hand.get(copy):
                # Still being handled: its reply is to come, and is waited for too.
                self._awaited.add(in_hand[copy].pop())
                continue
            deliver(method, props, body)
            if not method.redelivered:
                return ch  # newer than every message out when the connection died

    def _removed(self, queue: str) -> None:
        self.removed += 1
        self._moved = True
        log.warning("removed a message from %s that the broker cannot deliver over AMQP "
                    "0-9-1 (it closed the connection: 541 INTERNAL_ERROR). An AMQP 1.0 "
                    "sender gave it a property AMQP 0-9-1 cannot carry (over 255 bytes, "
                    "or a numeric message-id); it was not handled and gets no answer "
                    "(%d removed so far)", queue, self.removed)
