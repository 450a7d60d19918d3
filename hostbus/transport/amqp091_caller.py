"""A calling thread's own AMQP 0-9-1 connection: a request goes out and its reply comes
back on the thread that waits for it, with no hand-off to an I/O thread.

A ``PikaTransport`` crosses threads twice per call: the caller hands its publish to the
I/O thread, and the I/O thread hands the reply back. On a machine where waking a thread
is dear that is most of what separates a call from a raw pika round trip. A
``PikaCaller`` is a ``pika.BlockingConnection`` that one thread owns and drives itself
(pika must never be touched by two threads): it publishes, then processes the
connection's data events on that thread until the reply is in.

It opens no I/O thread and sends no heartbeats (it is idle between calls, when nothing
reads it): the transport it was made from watches the broker, and the owner of both
throws a caller away once that transport has lost its connection. A broken or refused
caller raises, and is thrown away too; the next call opens a fresh one.
"""

from __future__ import annotations

import logging
import select
import ssl
import time
from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions as pex

from hostbus import names
from hostbus.errors import BrokerRefused, ConnectionLost
from hostbus.transport.amqp091 import (
    PikaTransport,
    _coalesce,
    _from_pika,
    _to_pika,
    translate_error,
)
from hostbus.transport.base import Confirm, Delivery, Properties, named_exchange

log = logging.getLogger(__name__)


class PikaCaller:
    """One thread's connection for request/reply. Only the thread that opened it may
    use it (``publish`` and ``wait``); ``close`` too, or any thread once that one no
    longer does."""

    def __init__(self, transport: PikaTransport) -> None:
        self.user = transport.user
        self._params = transport._params()
        for params in self._params:
            # Idle between calls, nobody reads it then: heartbeats would time out. The
            # transport's own connection watches the broker instead.
            params.heartbeat = 0
            params.client_properties = {"connection_name": f"{transport._name} (calls)"}
        self._conn: pika.BlockingConnection | None = None
        self._ch: Any = None  # pika's channel underneath the blocking one
        self.reply_to = ""
        self.blocked: str | None = None
        self._refused: str | None = None
        #: Replies as they arrive, each with its arrival time (``time.perf_counter``);
        #: the owner takes them out.
        self.replies: list[tuple[Delivery, float]] = []
        #: Mandatory publishes no queue took: (exchange, routing key, properties).
        self.returned: list[tuple[str, str, Properties]] = []
        self.broken = False

    def open(self) -> None:
        """Connect, declare a private reply queue bound to ``hostbus.reply`` and consume
        it (auto-ack: a reply is the broker's to forget once sent, as on the transport)."""
        try:
            conn = self._conn = pika.BlockingConnection(self._params)
            conn._impl.add_on_connection_blocked_callback(
                lambda _c, frame: self._set_blocked(frame.method.reason or "no reason given"))
            conn._impl.add_on_connection_unblocked_callback(
                lambda _c, _f: self._set_blocked(None))
            ch = conn.channel()
            ch._impl.add_on_return_callback(self._returned)
            ch._impl.add_on_close_callback(self._channel_closed)
            key = names.new_reply_queue(self.user)  # what reply_to says: the binding key
            queue = ch.queue_declare("", exclusive=True, auto_delete=True).method.queue
            ch.queue_bind(queue, names.REPLY_EXCHANGE, routing_key=key)
            ch.basic_consume(queue, self._delivered, auto_ack=True, exclusive=True)
        except Exception as exc:
            self.close()
            raise translate_error(exc, self._params[0].host) from None
        self._ch, self.reply_to = ch._impl, key

    # ------------------------------------------------------------- pika's callbacks
    # These run inside pika's loop on frames that dispatch nothing to a channel: each asks
    # the loop to return, so that ``wait`` sees what changed at once.
    def _wake(self) -> None:
        if self._conn is not None:
            self._conn._request_channel_dispatch(-1)  # pika's "return from the loop"

    def _set_blocked(self, reason: str | None) -> None:
        self.blocked = None if reason is None else f"resource alarm ({reason})"
        self._wake()

    def _returned(self, _channel: Any, method: Any, props: pika.BasicProperties,
                  _body: bytes) -> None:
        self.returned.append((method.exchange, method.routing_key, _from_pika(props)))
        self._wake()

    def _channel_closed(self, _channel: Any, reason: Exception) -> None:
        if isinstance(reason, pex.ChannelClosedByBroker):
            self._refused = f"{reason.reply_code} {reason.reply_text}"
            self._wake()

    def _delivered(self, _channel: Any, method: Any, props: pika.BasicProperties,
                   body: bytes) -> None:
        self.replies.append((Delivery(body, _from_pika(props), method.exchange,
                                      method.routing_key, method.redelivered),
                             time.perf_counter()))

    # ------------------------------------------------------------------ the API
    def publish(self, exchange: str, routing_key: str, body: bytes, properties: Properties,
                *, persistent: bool = False, confirm: Confirm | None = None,
                mandatory: bool = False) -> None:
        """Write one message and flush it (the ``Transport.publish`` signature, for the
        ``Publisher``; no confirms here)."""
        if confirm is not None:
            raise ValueError("a caller connection does not confirm publishes")
        if properties.user_id is None:
            properties.user_id = self.user
        assert self._conn is not None and self._ch is not None
        try:
            self._ch.basic_publish(exchange, routing_key, body,
                                   _to_pika(properties, persistent), mandatory)
            _coalesce(self._conn)
            self._send_now()
        except Exception as exc:
            raise self._failed(exc) from None

    def _send_now(self) -> None:
        """Write the frames to the socket now. Over a plain socket: what pika's loop does
        once it finds the socket writable, without the loop pass that finds it (a poll);
        what a full socket does not take is written by ``wait``'s loop, as pika would.
        Over TLS, or if pika's internals are not as expected: pika's own flush."""
        assert self._conn is not None
        transport = getattr(self._conn._impl, "_transport", None)
        writable = getattr(transport, "_on_socket_writable", None)
        if writable is not None and not isinstance(getattr(transport, "_sock", None),
                                                   ssl.SSLSocket) \
                and getattr(transport, "_tx_buffers", None):
            writable()
            return
        self._conn._flush_output(lambda: True)

    def wait(self, until: float, done: Callable[[], bool]) -> None:
        """Process this connection's data events on this thread until ``done()`` or
        ``until`` (``time.monotonic``) has passed. Raises ``BrokerRefused`` (the broker
        closed the channel: a publish it refused) or ``ConnectionLost``; the caller is
        then ``broken``, to be closed and not used again. A resource alarm shows in
        ``blocked`` (for ``done`` to look at): the connection stays open meanwhile."""
        assert self._conn is not None
        while not done():
            self._check()
            remaining = until - time.monotonic()
            if remaining <= 0:
                return
            try:
                self._conn.process_data_events(time_limit=remaining)
            except Exception as exc:
                raise self._failed(exc) from None
        self._check()

    def pump(self) -> None:
        """Read what has arrived without waiting (an alarm's end, say)."""
        assert self._conn is not None
        try:
            self._conn.process_data_events(time_limit=0)
        except Exception as exc:
            raise self._failed(exc) from None
        self._check()

    def unread(self) -> bool:
        """Whether the broker sent something nobody has read yet (a select on the
        socket, a microsecond or two: between calls nothing is expected)."""
        if self._conn is None:
            return True
        sock = getattr(getattr(self._conn._impl, "_transport", None), "_sock", None)
        if sock is None:
            return True  # not as expected: read it to be sure
        pending = getattr(sock, "pending", None)  # TLS: decrypted, not yet read
        if pending is not None and pending():
            return True
        try:
            return bool(select.select([sock], [], [], 0)[0])
        except (OSError, ValueError):  # closed
            return True

    def _check(self) -> None:
        if self._refused is not None:
            self.broken = True
            words = self._refused
            exchange = named_exchange(words)
            log.error("the broker refused a request%s: %s", f" to {exchange}" if exchange
                      else "", words)
            raise BrokerRefused(f"the broker refused the request: {words}")

    def _failed(self, exc: Exception) -> Exception:
        self.broken = True
        if isinstance(exc, BrokerRefused | ConnectionLost):
            return exc
        return ConnectionLost(f"the broker connection was lost: {exc!r}")

    def close(self) -> None:
        conn, self._conn, self._ch = self._conn, None, None
        if conn is None:
            return
        try:
            if conn.is_open:
                conn.close()
        except Exception:  # a broken connection may fail to close; nothing to do then
            log.debug("error while closing a caller connection", exc_info=True)
