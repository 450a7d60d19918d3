"""AMQP 0-9-1 transport on pika.

One ``pika.BlockingConnection`` lives on one I/O thread and is touched by nothing else
(pika is not thread-safe). Other threads append work to a deque and wake the loop with
``add_callback_threadsafe``. Everything this transport declared or consumed is kept as
data (``_TopologyItem``) and replayed after a reconnect; reconnects back off
exponentially with jitter, capped. The first connection is not retried: it fails fast
with a message that says what to fix.

Publishes go out on one channel (confirmed ones on a second); each consumer has a
channel of its own, so that the broker ending one (its queue deleted: Basic.Cancel, or
a consume refused while the queue is missing) touches no other. A lost consumer is
restored at once where this transport declares its queue, and retried with backoff
where it does not (a host's queue, until ``broker enroll`` makes it again).
Connection.Blocked (a resource alarm) is reported and waited out: the connection stays
open, with no blocked-connection timeout.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import pika
import pika.exceptions as pex
from pika.adapters.blocking_connection import BlockingChannel

from hostbus import names
from hostbus.errors import (
    BrokerRefused,
    ConfigError,
    ConnectionFailed,
    HostbusError,
    TransportClosed,
)
from hostbus.transport.base import (
    DEFAULT_HEARTBEAT,
    DEFAULT_MAX_BACKOFF,
    Caller,
    Confirm,
    Delivery,
    Handler,
    Properties,
    Transport,
    named_exchange,
    reconnect_delay,
    refused_publishes,
    withdrawn,
)
from hostbus.transport.sweep import Sweeper, Swept, is_internal_error
from hostbus.transport.url import BrokerURL, broker_urls

log = logging.getLogger(__name__)
# Seconds a new consumer waits, after a sweep, for the handlers of what it handed over.
SETTLE_WAIT = 5.0
Task = Callable[[BlockingChannel], Any]  # _Publish is one too


@dataclass
class _TopologyItem:
    """Something to (re)declare and consume after every (re)connect, on a channel of
    its own."""

    queue: str
    handler: Handler
    # "broker": the broker forgets a message once sent (replies, transient events);
    # "after_handler": acked when the handler returns; "handler": the handler settles it.
    ack: Literal["broker", "after_handler", "handler"]
    declare: bool = False  # declare the queue (reply and subscription queues)
    exclusive: bool = False
    durable: bool = False
    bindings: tuple[tuple[str, str], ...] = ()  # (exchange, routing key)
    channel: BlockingChannel | None = None  # the one it consumes on
    consumer_tag: str | None = None  # None: not consuming (lost, or waiting to retry)
    lost: bool = False  # the broker ended it while the connection stayed up
    attempt: int = 0  # failed attempts to consume it again


@dataclass(frozen=True, slots=True)
class _Publish:
    """A publish. pika's BlockingChannel.basic_publish writes and flushes the socket for
    every message; on the I/O thread hostbus hands the frames to the channel underneath
    and flushes once per batch (benchmarks/README.md has the figures). With ``confirm``
    it goes out on the confirm channel; ``generation`` is the connection it was meant
    for: a publish that waited through a reconnect is reported failed, not sent, since
    its sender has already been told the connection was lost."""

    exchange: str
    routing_key: str
    body: bytes
    properties: pika.BasicProperties
    confirm: Confirm | None = None
    generation: int = 0
    mandatory: bool = False

    def __call__(self, ch: BlockingChannel) -> None:
        ch.basic_publish(self.exchange, self.routing_key, self.body, self.properties,
                         mandatory=self.mandatory)


def _to_pika(props: Properties, persistent: bool) -> pika.BasicProperties:
    return pika.BasicProperties(
        message_id=props.message_id,
        correlation_id=props.correlation_id,
        reply_to=props.reply_to,
        content_type=props.content_type,
        type=props.type,
        user_id=props.user_id,
        timestamp=props.timestamp,
        expiration=props.expiration,
        headers=props.headers or None,
        delivery_mode=2 if persistent else 1,
    )


def _from_pika(p: pika.BasicProperties) -> Properties:
    return Properties(
        message_id=p.message_id,
        correlation_id=p.correlation_id,
        reply_to=p.reply_to,
        content_type=p.content_type,
        type=p.type,
        user_id=p.user_id,
        timestamp=p.timestamp,
        expiration=p.expiration,
        headers=dict(p.headers) if p.headers else {},
    )


def _coalesce(conn: pika.BlockingConnection) -> None:
    """Join the frames waiting in pika's write buffer into one chunk, so the flush that
    follows is one send and one TCP segment instead of one per frame (a reply and its
    ack are four frames: method, header, body, ack). pika sends its buffer chunk by
    chunk; the chunks are whole frames in order, so joining them changes nothing on the
    wire but the segmenting. Skipped if pika's internals are not as expected."""
    transport = getattr(conn._impl, "_transport", None)
    chunks = getattr(transport, "_tx_buffers", None)
    if chunks is not None and len(chunks) > 1:
        joined = b"".join(chunks)
        chunks.clear()
        chunks.append(joined)


def translate_error(exc: BaseException, where: str) -> HostbusError:
    """Turn a pika exception into a hostbus error whose message says what to do."""
    if isinstance(exc, HostbusError):
        return exc
    if isinstance(exc, pex.ChannelClosedByBroker):
        return BrokerRefused(f"broker refused {exc.reply_code}: {exc.reply_text}")
    text = repr(exc)
    if isinstance(exc, pex.ProbableAuthenticationError | pex.AuthenticationError) or (
        "ACCESS_REFUSED" in text and "Login" in text
    ):
        return ConnectionFailed(
            f"{where}: the broker refused the user name or password (ACCESS_REFUSED). "
            "Check the credentials in the broker URL (with a client certificate: its "
            "common name must be an enrolled broker user)."
        )
    if isinstance(exc, pex.ProbableAccessDeniedError) or "NOT_ALLOWED" in text or (
        "vhost" in text and "not found" in text
    ):
        return ConnectionFailed(
            f"{where}: the virtual host does not exist or this user may not use it. "
            "Create it with `hostbus broker setup --vhost NAME` (as an administrator)."
        )
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return ConnectionFailed(
            f"{where}: the broker's TLS certificate does not verify (wrong CA, or it does "
            "not name this host). Give the CA that signed it: amqps://...?cafile=ca.pem")
    if "WRONG_VERSION_NUMBER" in text:
        return ConnectionFailed(
            f"{where}: that port does not speak TLS (is it the plain AMQP port? TLS is "
            "usually 5671; or use amqp:// for a plain port)")
    # With TLS 1.3 the broker may refuse a client certificate after the handshake: the
    # client then sees an alert, or (depending on timing) only an EOF on the TLS stream.
    if "SSL" in text and any(w in text.lower() for w in ("alert", "handshake",
                                                          "eof occurred")):
        return ConnectionFailed(
            f"{where}: the TLS handshake failed: {exc!r}. Does the broker trust the CA of "
            "this client certificate, and is it a TLS port (5671)?")
    if "EXTERNAL" in text or "auth mechanism" in text.lower():
        return ConnectionFailed(
            f"{where}: the broker does not offer SASL EXTERNAL: enable the "
            "rabbitmq_auth_mechanism_ssl plugin and auth_mechanisms.N = EXTERNAL "
            "(broker_config/rabbitmq-tls.conf)")
    if "ConnectionRefusedError" in text or "Connection refused" in text:
        return ConnectionFailed(
            f"{where}: connection refused. Is RabbitMQ running and listening there? "
            "(`./run.sh demo` installs and starts it on this machine)"
        )
    if isinstance(exc, socket.gaierror) or "gaierror" in text:
        host = urlsplit(where).hostname or where
        return ConnectionFailed(
            f"{where}: cannot resolve the broker's host name {host!r}: check the host in "
            "the broker URL, or the machine's DNS")
    if isinstance(exc, pex.AMQPConnectionError | OSError):
        return ConnectionFailed(f"{where}: cannot connect: {exc!r}")
    return HostbusError(f"{where}: {exc!r}")


def tls_context(url: BrokerURL) -> ssl.SSLContext:
    """Peer verification always on: the broker's certificate must chain to ``cafile``
    (or the system's CAs) and name the host connected to."""
    try:
        ctx = ssl.create_default_context(cafile=url.cafile)
        if url.certfile:
            ctx.load_cert_chain(url.certfile, url.keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the TLS files of {url.redacted()}: {exc}") from None
    return ctx


class PikaTransport(Transport):
    def __init__(
        self,
        url: str,
        *,
        connection_name: str = "hostbus",
        heartbeat: int = DEFAULT_HEARTBEAT,
        connect_timeout: float = 5.0,
        prefetch: int = 64,
        reconnect: bool = True,
        max_backoff: float = DEFAULT_MAX_BACKOFF,
        tls_context: ssl.SSLContext | None = None,
        wait_first: bool = False,
    ) -> None:
        """``wait_first``: if the broker cannot be reached at start, keep trying (with
        the reconnect backoff) instead of failing fast: for daemons that may start
        before their broker. ``close()`` ends the wait."""
        super().__init__()
        self.urls = broker_urls(url)
        self.url = self.urls[0]
        self.user = self.url.user
        self._first = 0  # where the next connection attempt starts in self.urls
        self.connected_to = ""
        self._name = connection_name
        self._heartbeat = heartbeat
        self._connect_timeout = connect_timeout
        self._prefetch = prefetch
        self._reconnect = reconnect
        self._max_backoff = max_backoff
        self._tls_context = tls_context
        self._wait_first = wait_first
        self._tasks: deque[tuple[Task, Future[Any] | None]] = deque()
        self._lock = threading.Lock()
        self._wake_scheduled = False
        self._in_drain = False
        self._in_handler = False
        self._in_dispatch = False  # in _serve's dispatch: handlers' output flushed after it
        self._frames_pending = False  # frames queued without a flush (acks)
        self._conn: pika.BlockingConnection | None = None
        self._ch: BlockingChannel | None = None
        # Publisher confirms live on a channel of their own, opened on first use, so
        # replies and requests on the main channel carry no confirm traffic.
        self._cch: BlockingChannel | None = None
        self._confirms_used = False
        # delivery tag -> (exchange, routing key, callback), in the order sent
        self._unconfirmed: dict[int, tuple[str, str, Confirm]] = {}
        self._next_tag = 1
        self._generation = 0
        self._topology: list[_TopologyItem] = []
        # Clears a queue of a message the broker cannot deliver over AMQP 0-9-1.
        self.sweeper = Sweeper()
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._start_error: HostbusError | None = None
        self._thread: threading.Thread | None = None

    def caller(self) -> Caller:
        from hostbus.transport.amqp091_caller import PikaCaller  # it builds on this module

        return PikaCaller(self)

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="hostbus-amqp091-io", daemon=True)
        self._thread.start()
        if self._wait_first:
            while not self._ready.wait(0.5):
                if self._stopping.is_set():
                    raise ConnectionFailed(f"{self.url.redacted()}: stopped while waiting for "
                                           "the broker")
        if not self._ready.wait(self._connect_timeout + 5):
            self._stopping.set()
            raise ConnectionFailed(f"{self.url.redacted()}: no answer within the connect timeout")
        if self._start_error is not None:
            raise self._start_error

    def close(self) -> None:
        if self._thread is None or self._stopping.is_set():
            return
        # Not while waiting for a first connection, nor while the connection is lost:
        # nothing would drain the flush until a reconnect (a command that ends after a
        # lost connection would wait, and log reconnect attempts, that long).
        if self._ready.is_set() and self._ch is not None:
            with contextlib.suppress(HostbusError):
                self.flush(timeout=5)
        self._stopping.set()
        self._wake()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def _params(self) -> list[pika.ConnectionParameters]:
        """One set of parameters per broker; pika tries them in turn. After a reconnect
        the list starts where the last working node was, so a dead node is not retried
        first every time."""
        order = self.urls[self._first:] + self.urls[:self._first]
        return [self._params_for(u) for u in order]

    def _params_for(self, url: Any) -> pika.ConnectionParameters:
        ssl_options = None
        credentials: Any = pika.PlainCredentials(url.user, url.password)
        if url.scheme == "amqps":
            ctx = self._tls_context or tls_context(url)
            ssl_options = pika.SSLOptions(ctx, server_hostname=url.host)
            if url.external:
                credentials = pika.credentials.ExternalCredentials()
        return pika.ConnectionParameters(
            host=url.host,
            port=url.port,
            virtual_host=url.vhost,
            credentials=credentials,
            heartbeat=self._heartbeat,
            # A resource alarm is waited out, however long: pika's timeout would drop
            # the connection and reconnect into the same alarm, over and over.
            blocked_connection_timeout=None,
            socket_timeout=self._connect_timeout,
            stack_timeout=self._connect_timeout + 2,
            connection_attempts=1,
            ssl_options=ssl_options,
            client_properties={"connection_name": self._name},
        )

    def _open(self) -> None:
        self._conn = pika.BlockingConnection(self._params())
        self._generation += 1
        self._cch = None
        self._blocked = None  # a new connection is blocked only once the broker says so
        # Called as the frame arrives (not deferred to the next dispatch), also while a
        # flush waits for a socket the blocked broker no longer reads.
        self._conn._impl.add_on_connection_blocked_callback(
            lambda _conn, frame: self._set_blocked(
                f"resource alarm ({frame.method.reason or 'no reason given'})"))
        self._conn._impl.add_on_connection_unblocked_callback(
            lambda _conn, _frame: self._set_blocked(None))
        params = self._conn._impl.params  # the node that answered
        self.connected_to = f"{params.host}:{params.port}"
        for i, url in enumerate(self.urls):
            if (url.host, url.port) == (params.host, params.port):
                # If this node goes away, the next attempt starts with the one after it.
                self._first = (i + 1) % len(self.urls)
        self._open_channel()
        items = list(self._topology)  # one added meanwhile is started by its own task
        if self.sweeper.needed:
            self.sweeper.sweep(self._conn, self._swept_queues(items))
            self._settle_swept()
        for item in items:
            item.channel, item.consumer_tag, item.lost, item.attempt = None, None, False, 0
            self._start(item)

    def _swept_queues(self, items: list[_TopologyItem]) -> list[Any]:
        """The durable queues among ``items`` (a private queue dies with its connection,
        and what was in it), with what to do with a message the sweep takes."""
        return [(item.queue, functools.partial(self._deliver_swept, item))
                for item in items if item.ack != "broker" and not item.exclusive]

    def _deliver_swept(self, item: _TopologyItem, method: Any, props: pika.BasicProperties,
                       body: bytes) -> None:
        """A message the sweep took (settled at the broker already: its ack only says
        that the handler is done with it)."""
        delivery = Delivery(body, _from_pika(props), method.exchange, method.routing_key,
                            method.redelivered)
        done = self.sweeper.hand_out()
        delivery.ack, delivery.nack = done, (lambda requeue=False: done())
        self._in_handler = True  # what it sends waits for _settle_swept
        try:
            item.handler(delivery)
        except Exception:  # a handler bug must not take the I/O thread down
            log.exception("message handler for queue %s failed", item.queue)
        finally:
            self._in_handler = False

    def _settle_swept(self) -> None:
        """Before consuming again: the replies to what a sweep handed over go out first
        (for a while, not for ever: a slow method must not keep the queue unserved), so
        that the next such message, closing the connection, cannot take them along. The
        broker routes them before it sees the consumes that follow."""
        assert self._conn is not None
        deadline = time.monotonic() + SETTLE_WAIT
        while True:
            self._drain()
            if not self.sweeper.handed_out() or time.monotonic() > deadline:
                return
            self._conn.process_data_events(time_limit=0.05)  # woken by each hand-off

    def _open_channel(self) -> None:
        """The channel publishes go out on."""
        assert self._conn is not None
        ch = self._conn.channel()
        ch._impl.add_on_return_callback(self._on_return)
        self._ch = ch

    def _confirm_channel(self) -> BlockingChannel:
        if self._cch is None or self._cch.is_closed:
            assert self._conn is not None
            self._fail_unconfirmed()  # delivery tags start again on a new channel
            self._cch = self._conn.channel()
            self._cch._impl.confirm_delivery(self._on_confirm)
            self._cch._impl.add_on_close_callback(self._on_confirm_channel_closed)
            self._cch._impl.add_on_return_callback(self._on_return)
            self._next_tag = 1
        return self._cch

    def _on_confirm_channel_closed(self, _channel: Any, reason: Exception) -> None:
        if not isinstance(reason, pex.ChannelClosedByBroker):
            return
        words = self._channel_refused(None, reason)
        # The publish refused is named by its routing key or exchange, at best: those
        # are refused (False, not sent again); what else was in flight on the channel
        # the broker dropped unread: unknown (None), sent again in order. The next
        # publish opens a new channel.
        pending, self._unconfirmed = self._unconfirmed, {}
        refused = refused_publishes(words, [(ex, key) for ex, key, _ in pending.values()])
        with self._telling():
            for (_, _, callback), was_refused in zip(pending.values(), refused, strict=True):
                self._report(callback, False if was_refused else None)

    @contextlib.contextmanager
    def _telling(self) -> Iterator[None]:
        """Outcomes told together: what their callbacks publish is queued and goes out
        after the last one is told, so a sender hears of every publish a closed channel
        refused before it sends anything again (else it sends a refused one again)."""
        was = self._in_handler
        self._in_handler = True  # _submit queues without draining
        try:
            yield
        finally:
            self._in_handler = was
        if not was:
            self._drain()

    def _on_return(self, _channel: Any, method: Any, props: pika.BasicProperties,
                   _body: bytes) -> None:
        """Basic.Return: a mandatory publish that no queue took."""
        self._unroutable(method.exchange, method.routing_key, _from_pika(props))

    def _channel_refused(self, channel: BlockingChannel | None,
                         reason: Exception | None = None) -> str:
        """The broker closed a channel: log its words, tell on_refused callbacks, and
        return the words."""
        if reason is None and channel is not None:
            reason = getattr(channel, "_closing_reason", None)
        if isinstance(reason, pex.ChannelClosedByBroker):
            words = f"{reason.reply_code} {reason.reply_text}"
        else:
            words = repr(reason) if reason is not None else "no reason given"
        exchange = named_exchange(words)
        log.error("the broker refused a publish%s: %s; carrying on with a new channel",
                  f" to {exchange}" if exchange else "", words)
        self._broker_refused(exchange, exchange or "?", words)
        return words

    def _on_confirm(self, frame: Any) -> None:
        """Basic.Ack or Basic.Nack from the broker: one tag, or every tag up to it."""
        method = frame.method
        ok = isinstance(method, pika.spec.Basic.Ack)
        if not method.multiple:
            sent = self._unconfirmed.pop(method.delivery_tag, None)
            if sent is not None:
                self._report(sent[2], ok)
            return
        # Tags were added in increasing order: settle from the oldest up to this one
        # without scanning the rest (thousands may be in flight).
        pending = self._unconfirmed
        while pending:
            tag = next(iter(pending))
            if tag > method.delivery_tag:
                break
            self._report(pending.pop(tag)[2], ok)

    def _fail_unconfirmed(self) -> None:
        pending, self._unconfirmed = self._unconfirmed, {}
        with self._telling():
            for _, _, callback in pending.values():
                self._report(callback, None)

    @staticmethod
    def _report(callback: Confirm, ok: bool | None) -> None:
        try:
            callback(ok)
        except Exception:  # the sender's bug must not take the I/O thread down
            log.exception("publish confirm callback failed")

    def _start(self, item: _TopologyItem, *, first: bool = False) -> None:
        """Consume ``item`` on a channel of its own (declaring its queue first where
        this transport declares it). A failure ``first`` time raises; later (after a
        reconnect, or once the broker ended the consumer) it is logged and retried
        with backoff: a missing host queue must not keep the connection down."""
        assert self._conn is not None
        if self.sweeper.needed:  # its channel alone was closed with 541
            self.sweeper.sweep(self._conn, self._swept_queues([item]))
        try:
            ch = item.channel
            if ch is None or not ch.is_open:
                ch = self._conn.channel()
                ch.basic_qos(prefetch_count=self._prefetch)
                ch.add_on_cancel_callback(
                    lambda frame: self._on_cancelled(item, frame.method.consumer_tag))
                ch._impl.add_on_close_callback(
                    lambda _ch, reason: self._on_consumer_channel_closed(item, ch, reason))
                item.channel = ch
            item.consumer_tag = self._consume(ch, item)
        except (pex.ChannelClosed, pex.ChannelWrongStateError) as exc:
            item.channel = item.consumer_tag = None
            if first:
                raise
            self._retry_later(item, exc)
            return
        item.attempt = 0
        if item.lost:
            item.lost = False
            log.warning("consuming %s again", item.queue)
            self._consumer_restored(item.queue)

    def _consume(self, ch: BlockingChannel, item: _TopologyItem) -> str:
        queue = item.queue
        if item.declare:
            # A connection's private (exclusive) queue is named by the broker, anew on
            # every connection; ``item.queue`` is then only the logical name (for replies:
            # the binding key that reply_to carries). After a failover it must not reuse
            # its old name: a surviving node deletes the dead node's transient queues by
            # name over some 40 ms after it sees the node down, and a console that
            # reconnected at once and re-declared its reply queue by name in that window
            # had the new queue deleted under it, and every reply lost (cluster test, CI;
            # the node log shows the deletion 26 ms after the reconnect).
            declared = ch.queue_declare(
                "" if item.exclusive else item.queue, durable=item.durable,
                exclusive=item.exclusive, auto_delete=not item.durable,
            )
            queue = declared.method.queue
            for exchange, key in item.bindings:
                ch.queue_bind(queue, exchange, routing_key=key)
        handler = item.handler

        def on_message(
            channel: BlockingChannel, method: Any, props: pika.BasicProperties, body: bytes
        ) -> None:
            delivery = Delivery(
                body, _from_pika(props), method.exchange, method.routing_key, method.redelivered
            )
            if item.ack == "handler":
                (delivery.ack, delivery.nack,
                 delivery.ack_on_io_thread) = self._settlers(channel, method.delivery_tag)
                self.sweeper.received(channel, method.delivery_tag, item.queue,
                                      props.message_id, body)
            # What the handler sends (a reply, an ack) is written after it returns, in
            # one flush, instead of one socket write each.
            self._in_handler = True
            try:
                handler(delivery)
            except Exception:  # a handler bug must not take the I/O thread down
                log.exception("message handler for queue %s failed", item.queue)
            finally:
                self._in_handler = False
            if item.ack == "after_handler":
                channel._impl.basic_ack(method.delivery_tag)
                self._frames_pending = True
            if not self._in_dispatch:
                self._drain()
            # else _serve drains once pika has dispatched the whole batch that came in
            # one read: a burst (a broadcast to the agents of one connection, a flood of
            # replies) goes out in one write, not one write and two epoll changes per
            # message, each a chance for another thread to take the interpreter lock.

        return str(ch.basic_consume(queue, on_message, auto_ack=item.ack == "broker",
                                    exclusive=item.exclusive))

    # A consumer the broker ended: Basic.Cancel (its queue deleted) or its channel
    # closed (a consume refused). Both arrive inside pika's dispatch, where channel
    # operations must not nest: the work is queued for the loop (see _serve).
    def _on_cancelled(self, item: _TopologyItem, consumer_tag: str) -> None:
        if item.consumer_tag != consumer_tag or item not in self._topology:
            return
        item.consumer_tag, item.lost = None, True
        log.warning("the broker cancelled the consumer of %s (was the queue deleted?); "
                    "%s", item.queue, "declaring it again" if item.declare
                    else "consuming it again as soon as it exists")
        self._consumer_lost(item.queue, "the broker cancelled the consumer (queue deleted?)")
        self._queue_task(self._restart(item))

    def _on_consumer_channel_closed(self, item: _TopologyItem, ch: BlockingChannel,
                                    reason: Exception) -> None:
        if (item.channel is not ch or item.consumer_tag is None
                or not isinstance(reason, pex.ChannelClosedByBroker)):
            return  # ours, the connection's, or a consume that failed (retried already)
        item.channel = item.consumer_tag = None
        item.lost = True
        self.sweeper.closed(reason)  # a 541 asks for a sweep before consuming again
        log.warning("the broker closed the consumer of %s: %s %s", item.queue,
                    reason.reply_code, reason.reply_text)
        self._consumer_lost(item.queue, f"{reason.reply_code} {reason.reply_text}")
        self._queue_task(self._restart(item))

    def _retry_later(self, item: _TopologyItem, exc: Exception) -> None:
        assert self._conn is not None
        delay = reconnect_delay(item.attempt, self._max_backoff)
        item.attempt += 1
        words = (f"{exc.reply_code} {exc.reply_text}"
                 if isinstance(exc, pex.ChannelClosedByBroker) else repr(exc))
        hint = ""
        if item.queue.startswith(names.HOST_QUEUE_PREFIX):
            host = item.queue[len(names.HOST_QUEUE_PREFIX):]
            hint = f" (`hostbus broker enroll {host}` makes it again)"
        (log.warning if item.attempt == 1 else log.debug)(
            "cannot consume %s: %s%s; trying again with backoff, next in %.1fs",
            item.queue, words, hint, delay)
        item.lost = True
        again = self._restart(item)
        self._conn.call_later(delay, lambda: self._queue_task(again))

    def _restart(self, item: _TopologyItem) -> Callable[[], None]:
        """``_start(item)`` for later, unless a reconnect (which starts every item) or
        another attempt has come first."""
        generation = self._generation

        def again() -> None:
            if generation == self._generation and item in self._topology \
                    and item.consumer_tag is None:
                self._start(item)

        return again

    def _queue_task(self, work: Callable[[], None]) -> None:
        """On the I/O thread, from inside pika's loop: run ``work`` once the loop has
        returned to ``_serve``."""
        self._tasks.append((lambda _ch: work(), None))
        if self._conn is not None:
            self._conn._request_channel_dispatch(-1)  # pika's "return from the loop"

    def _settlers(
        self, channel: BlockingChannel, tag: int
    ) -> tuple[Callable[[], None], Callable[[bool], None], Callable[[], None]]:
        """ack/nack for one delivery, safe to call from any thread, and the ack's work
        on the I/O thread (for ``ack_all``). A delivery tag only means something on its
        own channel: once that channel is closed (a reconnect) the broker redelivers the
        message anyway, so settling it is skipped."""

        def on_io_thread(ack: bool, requeue: bool) -> None:
            self.sweeper.settled(channel, tag)
            if not channel.is_open:
                log.info("delivery %d belonged to a closed channel; the broker "
                         "redelivers it", tag)
                return
            if ack:  # the frame only: the drain flushes once for the batch
                channel._impl.basic_ack(tag)
            else:
                channel._impl.basic_nack(tag, requeue=requeue)
            self._frames_pending = True

        def settle(ack: bool, requeue: bool) -> None:
            self._submit(lambda _ch: on_io_thread(ack, requeue), wait=False)

        return ((lambda: settle(True, False)), (lambda requeue=False: settle(False, requeue)),
                lambda: on_io_thread(True, False))

    def ack_all(self, deliveries: Sequence[Delivery]) -> None:
        direct = [d for d in deliveries if d.ack_on_io_thread is None]
        handed = [d.ack_on_io_thread for d in deliveries if d.ack_on_io_thread is not None]
        for delivery in direct:
            delivery.ack()
        if handed:
            def task(_ch: BlockingChannel) -> None:
                for ack in handed:
                    ack()

            self._submit(task, wait=False)

    def _run(self) -> None:
        where = self.url.redacted()
        attempt = 0
        first = True
        while not self._stopping.is_set():
            try:
                self._open()
            except Swept:
                continue  # one message fewer in the way: go on sweeping at once
            except Exception as exc:
                self.sweeper.closed(exc)
                if self.sweeper.progressed():
                    continue  # a sweep cleared messages: the next may be such a one too
                err = translate_error(exc, where)
                if (first and not self._wait_first) or not self._reconnect:
                    self._start_error = err
                    self._ready.set()
                    return
                delay = reconnect_delay(attempt, self._max_backoff)
                attempt += 1
                log.warning("%s %s failed (%s); next try in %.1fs",
                            "connecting to" if first else "reconnecting to", where, err, delay)
                self._stopping.wait(delay)
                continue
            if not first:
                log.info("reconnected to %s; %d of %d consumers restored", where,
                         sum(item.consumer_tag is not None for item in self._topology),
                         len(self._topology))
                self._connection_restored()
            first, attempt = False, 0
            self._ready.set()
            try:
                self._serve()
            except (pex.AMQPConnectionError, pex.ConnectionClosed, pex.StreamLostError,
                    OSError) as exc:
                self._ch = self._cch = None
                self.sweeper.closed(exc)
                if self._stopping.is_set():
                    self._fail_unconfirmed()
                    break
                log.warning("lost the connection to %s: %r", where, exc)
                self._connection_lost(exc)
                # After the callbacks: a sender learns of the loss first, then of each
                # publish it had in flight (which it has already set aside).
                self._fail_unconfirmed()
                if not self._reconnect:
                    break
        self._shutdown()

    def _serve(self) -> None:
        assert self._conn is not None
        with self._lock:
            self._wake_scheduled = False
        while not self._stopping.is_set():
            self._drain()
            # Blocks until I/O or a hand-off (close() hands one off too): no timer churn.
            self._in_dispatch = True
            try:
                self._conn.process_data_events(time_limit=None)
            finally:
                self._in_dispatch = False
            if self._ch is None or self._ch.is_closed:
                # The broker closed the channel (a publish to a missing exchange, a
                # forbidden routing key): say so and carry on with a fresh channel.
                self._channel_refused(self._ch)
                self._open_channel()
        self._drain()

    def _shutdown(self) -> None:
        pending = list(self._tasks)
        self._tasks.clear()
        for task, fut in pending:
            if fut is not None and not fut.done():
                fut.set_exception(TransportClosed("the transport was closed"))
            if isinstance(task, _Publish) and task.confirm is not None:
                self._report(task.confirm, None)
        self._fail_unconfirmed()
        try:
            if self._conn is not None and self._conn.is_open:
                self._conn.close()
        except Exception:  # closing a broken connection may fail; nothing to do then
            log.debug("error while closing the connection", exc_info=True)

    # ------------------------------------------------------------- task hand-off
    def _wake_callback(self) -> None:
        """On the I/O thread, inside pika's loop: only ask the loop to return, so that
        ``_serve`` drains the tasks outside it (running them here would nest pika's
        loop inside itself)."""
        with self._lock:
            self._wake_scheduled = False
        if self._conn is not None:
            self._conn._request_channel_dispatch(-1)  # pika's "return from the loop"

    def _wake(self) -> None:
        # The ioloop's own thread-safe callback, not BlockingConnection's: that one
        # turns the callback into a zero-delay timer that fires a loop pass later and
        # is then dispatched as a ready event, 70 us of a 730 us call here (measured).
        with self._lock:
            if self._wake_scheduled or self._conn is None:
                return
            self._wake_scheduled = True
        try:
            self._conn._impl.ioloop.add_callback_threadsafe(self._wake_callback)
        except Exception:  # connection closed: tasks run after the reconnect
            with self._lock:
                self._wake_scheduled = False

    def _submit(self, task: Task, *, wait: bool, timeout: float | None = None) -> Any:
        if self._stopping.is_set():
            raise TransportClosed("the transport is closed")
        fut: Future[Any] | None = Future() if wait else None
        on_io_thread = threading.current_thread() is self._thread
        self._tasks.append((task, fut))
        if on_io_thread:
            if fut is not None or not self._in_handler:  # else drained after the handler
                self._drain()
        else:
            self._wake()
        if fut is None:
            return None
        try:
            return fut.result(timeout=self._connect_timeout + 10 if timeout is None
                              else timeout)
        except TimeoutError:
            raise TransportClosed("the broker did not answer in time") from None

    def _drain(self) -> None:
        # Flushing runs pika's I/O loop, which may call back into hostbus (a publisher
        # confirm that makes the outbox send more): such calls only queue their work,
        # and this loop picks it up, so the stack never grows.
        if self._in_drain:
            return
        self._in_drain = True
        try:
            while True:
                queued = False
                try:
                    queued = self._drain_tasks() or self._frames_pending
                    self._frames_pending = False
                finally:
                    if queued and self._ch is not None and self._ch.is_open:
                        # Publishes queued their frames without a flush each (see
                        # _Publish); one flush writes the whole batch.
                        _coalesce(self._conn)
                        self._conn._flush_output(lambda: True)  # type: ignore[union-attr]
                if not self._tasks or self._ch is None:
                    break
        finally:
            self._in_drain = False

    def _drain_tasks(self) -> bool:
        queued = False
        while self._tasks and self._ch is not None:
            if self._ch.is_closed:
                # Closed by the broker since the last pass (a refused publish): report
                # it, and reopen before running more work on it.
                self._channel_refused(self._ch)
                self._open_channel()
            task, fut = self._tasks.popleft()
            if isinstance(task, _Publish):
                if task.confirm is not None:
                    queued |= self._publish_confirmed(task)
                    continue
                try:
                    self._ch._impl.basic_publish(task.exchange, task.routing_key, task.body,
                                                 task.properties, task.mandatory)
                    queued = True
                except Exception as exc:  # a closed channel: reopened on the next pass
                    log.error("publish to %s failed: %r", task.exchange, exc)
                continue
            try:
                result = task(self._ch)
            except (pex.ChannelClosed, pex.ChannelWrongStateError) as exc:
                err = translate_error(exc, self.url.redacted())
                if fut is not None:
                    fut.set_exception(err)
                else:
                    log.error("%s", err)
                if self._ch.is_closed:  # else it was another channel's (a consumer's)
                    self._open_channel()
                continue
            except Exception as exc:
                if fut is not None:
                    fut.set_exception(translate_error(exc, self.url.redacted()))
                    continue
                raise
            if fut is not None:
                fut.set_result(result)
        return queued

    def _publish_confirmed(self, task: _Publish) -> bool:
        assert task.confirm is not None
        if withdrawn(task.confirm):
            return False
        if task.generation != self._generation:
            self._report(task.confirm, None)  # meant for a connection that is gone
            return False
        try:
            ch = self._confirm_channel()
            ch._impl.basic_publish(task.exchange, task.routing_key, task.body,
                                   task.properties, task.mandatory)
        except Exception as exc:
            log.error("publish to %s failed: %r", task.exchange, exc)
            self._report(task.confirm, None)
            return False
        self._unconfirmed[self._next_tag] = (task.exchange, task.routing_key, task.confirm)
        self._next_tag += 1
        return True

    # ------------------------------------------------------------------ the API
    def publish(
        self, exchange: str, routing_key: str, body: bytes, properties: Properties,
        *, persistent: bool = False, confirm: Confirm | None = None,
        mandatory: bool = False,
    ) -> None:
        if properties.user_id is None:
            properties.user_id = self.user  # fresh per message; a copy cost 5 us
        task = _Publish(exchange, routing_key, body, _to_pika(properties, persistent),
                        confirm, self._generation, mandatory)
        try:
            self._submit(task, wait=False)
        except TransportClosed:
            if confirm is None:
                raise
            self._report(confirm, None)

    def _add(self, item: _TopologyItem) -> None:
        def task(_ch: BlockingChannel) -> None:
            try:
                self._start(item, first=True)
            except pex.ConnectionClosedByBroker as exc:
                if not is_internal_error(exc):
                    raise
                # The queue holds a message the broker cannot deliver over AMQP 0-9-1:
                # consumed once the sweep after the reconnect has removed it.
                self.sweeper.closed(exc)
            self._topology.append(item)

        self._submit(task, wait=True)

    def consume(self, queue: str, handler: Handler, *, manual_ack: bool = False) -> None:
        self._add(_TopologyItem(queue, handler,
                                ack="handler" if manual_ack else "after_handler"))

    def open_reply_queue(self, handler: Handler) -> str:
        name = names.new_reply_queue(self.user)  # what reply_to says: the binding key
        self._add(_TopologyItem(
            name, handler, ack="broker", declare=True, exclusive=True,
            bindings=((names.REPLY_EXCHANGE, name),),
        ))
        return name

    def subscribe(
        self, patterns: list[str], handler: Handler, *, name: str | None = None,
        durable: bool = False,
    ) -> str:
        qname = names.subscription_queue(self.user, name)
        self._add(_TopologyItem(
            qname, handler, ack="after_handler" if durable else "broker", declare=True,
            exclusive=not durable,
            durable=durable, bindings=tuple((names.EVENT_EXCHANGE, p) for p in patterns),
        ))
        return qname

    def queue_exists(self, queue: str) -> bool:
        """Passive declare: needs no configure permission. On a channel of its own: the
        broker closes the channel it answers "no" on, and publishes still unflushed on
        the publishing channel would go with it."""

        def task(_ch: BlockingChannel) -> bool:
            assert self._conn is not None
            probe = self._conn.channel()
            try:
                probe.queue_declare(queue, passive=True)
            except pex.ChannelClosedByBroker as exc:
                if exc.reply_code == 404:
                    return False
                raise
            probe.close()
            return True

        return bool(self._submit(task, wait=True))

    def queue_consumers(self, queue: str) -> int | None:
        """From a passive declare's answer, on a channel of its own (see queue_exists)."""

        def task(_ch: BlockingChannel) -> int | None:
            assert self._conn is not None
            probe = self._conn.channel()
            try:
                declared = probe.queue_declare(queue, passive=True)
            except pex.ChannelClosedByBroker:  # no such queue, or not this user's to see
                return None
            probe.close()
            return int(declared.method.consumer_count)

        return self._submit(task, wait=True)  # type: ignore[no-any-return]

    def flush(self, timeout: float = 5.0) -> None:
        if self._thread is None or threading.current_thread() is self._thread:
            return
        self._submit(lambda ch: None, wait=True, timeout=timeout)
