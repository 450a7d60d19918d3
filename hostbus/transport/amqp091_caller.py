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

While it waits for a reply over a plain socket it does not run pika's loop: it polls the
socket itself with the time left and hands what arrived to pika's transport, whose frame
decoding calls the consumer (registered on pika's channel underneath, not on the
blocking one) at once. pika's loop costs a timer, an event-dispatch pass and a queued
delivery per call, which a connection with no timers, one consumer and one waiting
thread does not need. Anything else (TLS, output a full socket left in pika's buffer,
a connection pika is closing) goes through pika's loop as before.
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
        #: pika's plain-socket transport and a poller on its socket, when waiting may
        #: bypass pika's loop (``_read_direct``); None otherwise.
        self._direct: tuple[Any, select.poll] | None = None
        self._looping = False  # in pika's loop (``_pika_loop``): callbacks must end it

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
            # On pika's channel underneath: a reply is handed over as its frames are
            # decoded, not queued for the blocking channel's dispatch.
            consuming: list[bool] = []
            ch._impl.basic_consume(queue, self._delivered, auto_ack=True, exclusive=True,
                                   callback=lambda _frame: consuming.append(True))
            ch._flush_output(lambda: bool(consuming))  # raises if the broker refuses
        except Exception as exc:
            self.close()
            raise translate_error(exc, self._params[0].host) from None
        self._ch, self.reply_to = ch._impl, key
        self._direct = self._direct_reader(conn)

    # ------------------------------------------------------------- pika's callbacks
    # These run inside pika's loop on frames that dispatch nothing to a channel: each asks
    # the loop to return, so that ``wait`` sees what changed at once.
    def _wake(self) -> None:
        # Only inside pika's loop: a request left from a direct read would end the next
        # loop before it read anything (a pump that never sees the broker's close).
        if self._looping and self._conn is not None:
            self._conn._request_channel_dispatch(-1)  # pika's "return from the loop"

    def _pika_loop(self, time_limit: float) -> None:
        assert self._conn is not None
        self._looping = True
        try:
            self._conn.process_data_events(time_limit=time_limit)
        finally:
            self._looping = False

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
        self._wake()  # when pika's loop runs (``pump``, or a wait through it)

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
                if not self._read_direct(remaining):
                    self._pika_loop(remaining)
            except Exception as exc:
                raise self._failed(exc) from None
        self._check()

    @staticmethod
    def _direct_reader(conn: pika.BlockingConnection) -> tuple[Any, select.poll] | None:
        """pika's transport and a poller on its socket if pika's internals are as
        expected and the socket is plain (TLS keeps decrypted bytes a poll cannot see)."""
        transport = getattr(conn._impl, "_transport", None)
        sock = getattr(transport, "_sock", None)
        if sock is None or isinstance(sock, ssl.SSLSocket) or not all(
                hasattr(transport, name) for name in
                ("_on_socket_readable", "_tx_buffers", "_state", "_STATE_ACTIVE")):
            return None
        poller = select.poll()  # any descriptor number (select() refuses those >= 1024)
        poller.register(sock.fileno(), select.POLLIN)
        return transport, poller

    def _closing(self) -> bool:
        """Whether pika is closing this connection or has closed it. A close read
        directly leaves the connection open until pika's loop runs its end; the
        transport is inactive from the start."""
        assert self._conn is not None
        if not self._conn._impl.is_open:
            return True
        return self._direct is not None and \
            self._direct[0]._state != self._direct[0]._STATE_ACTIVE

    def _read_direct(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the socket to be readable and hand what
        arrived to pika's transport, as pika's loop would: the frames are decoded and
        the callbacks (``_delivered``, ``_returned``, a close) run before it returns.
        False, having done nothing, where pika's loop must run instead: no direct
        reader, output still buffered (a full socket), the transport no longer active,
        or the connection closing (pika finishes the close in its loop, and raises)."""
        assert self._conn is not None
        if self._direct is None:
            return False
        transport, poller = self._direct
        if transport._tx_buffers or self._closing():
            return False
        if poller.poll(max(0, int(timeout * 1000) + 1)):
            transport._on_socket_readable()
        return True

    def pump(self) -> None:
        """Read what has arrived without waiting (an alarm's end, say)."""
        assert self._conn is not None
        try:
            if not self._read_direct(0):
                self._pika_loop(0)
            if self._closing():  # the broker closed it (read just now)
                raise ConnectionLost("the broker closed this thread's connection")
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
        conn, self._conn, self._ch, self._direct = self._conn, None, None, None
        if conn is None:
            return
        try:
            if conn.is_open:
                conn.close()
        except Exception:  # a broken connection may fail to close; nothing to do then
            log.debug("error while closing a caller connection", exc_info=True)
