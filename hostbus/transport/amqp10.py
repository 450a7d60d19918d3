"""The AMQP 1.0 transport (python-qpid-proton), behind the same interface as the pika one.

Chosen by the URL scheme: ``amqp10://user:pass@host:5672/vhost`` (``amqps10://`` for
TLS, with the same ``cafile``/``certfile``/``keyfile`` query as amqps). One proton
``Container`` runs on one I/O thread; other threads hand it work through an
``EventInjector`` (proton is not thread-safe). Addresses come from
``hostbus.transport.addresses``.

Every link has a session of its own: RabbitMQ answers a refused attach or publish by
closing the session, and that must not take the consumers down with it. Sessions are
never ended by hostbus while the connection lasts, but kept for the next link
(``amqp10_sessions``: RabbitMQ 4.0 lost attaches on a channel number reused). A refusal
arrives as a session or link error carrying the broker's words; it is logged, kept in
``last_refusal`` and reported to confirm callbacks within milliseconds: False for the
publishes it names, None (unknown: send again) for the others in flight on that link.

One sender per exchange, each message routed by its subject (RabbitMQ 3.x; on 4.x one
sender without a target, each message routed by its own `to`), so an agent's events
leave in the order of their numbers (a sender per routing key let an agent's metrics
and alerts overtake each other on their way to the broker; consoles took the late ones
for repeats). A consumer the broker ends while the connection stays up (its queue
deleted: RabbitMQ 3.x ends the session with amqp:not-found, 4.x detaches the link with
amqp:resource-deleted) is attached again, with backoff while its queue is missing.
Under a resource alarm RabbitMQ says nothing over AMQP 1.0: 3.x stops reading the
connection, 4.x closes the session's incoming window. Both leave publishes unsettled,
so a publish unsettled for ``BLOCKED_AFTER_S`` counts as blocked until one settles.

Mixed fleets (docs/amqp10-interop.md): RabbitMQ 3.10 drops ``type`` and headers
between the protocols, so the envelope does not depend on them (the signature is a
content_type parameter). It passes a 0-9-1 ``user_id`` on as a string where AMQP 1.0
wants binary, which proton's decoder discards; ``_Deliveries`` recovers it with
``amqp10_messages.text_user_id``, where messages are converted both ways.

A lost connection is reported (lost callbacks, unconfirmed publishes as None) and
re-established with capped, jittered backoff; consumers are attached again.

The address scheme (v1 on RabbitMQ 3.x, v2 on 4.x) is chosen from the broker's open
frame on every connection (``addresses.for_broker``). On 4.x a consumer of what an
exchange routes gets a queue declared and bound through the broker's management node
(``amqp10_management``) before it attaches, on every attach.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from ssl import get_default_verify_paths as default_verify_paths
from typing import Any

from proton import (
    Condition,
    Endpoint,
    Message,
    SSLDomain,
)
from proton import Handler as ProtonHandler
from proton.handlers import (
    IncomingMessageHandler,
    MessagingHandler,
    OutgoingMessageHandler,
)
from proton.reactor import ApplicationEvent, Container, EventInjector

from hostbus import names
from hostbus.errors import BrokerRefused, ConfigError, ConnectionFailed, TransportClosed
from hostbus.transport.addresses import RabbitMQv1, RabbitMQv2, for_broker
from hostbus.transport.amqp10_management import Management, run_in_turn
from hostbus.transport.amqp10_messages import encode_message, from_message, text_user_id
from hostbus.transport.amqp10_sessions import Sessions
from hostbus.transport.base import (
    DEFAULT_HEARTBEAT,
    DEFAULT_MAX_BACKOFF,
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
from hostbus.transport.url import broker_urls

log = logging.getLogger(__name__)
Task = Callable[[], Any]
#: A publish the broker has not settled for this long means it is not taking them (a
#: resource alarm, the only cause seen); the transport then reports itself blocked.
BLOCKED_AFTER_S = 5.0


class _Deliveries(ProtonHandler):  # type: ignore[misc]
    """Both directions of proton's delivery events in one handler, in place of
    MessagingHandler's incoming and outgoing helpers: one ``.link`` lookup each (every
    lookup builds a new wrapper and runs an import), and no second dispatch per
    message. Incoming: decoded here, plus the user_id proton would drop (see
    amqp10_messages.text_user_id). Outgoing: the broker's outcome, then settled."""

    def __init__(self, events: _Events) -> None:
        self.events = events

    def on_delivery(self, event: Any) -> None:
        dlv = event.delivery
        link = dlv.link
        if link.is_sender:
            if dlv.updated:
                self.events.outcome(dlv, dlv.remote_state)
                if dlv.settled:
                    dlv.settle()
            return
        if dlv.aborted:
            dlv.settle()
            return
        if not dlv.readable or dlv.partial:
            return
        raw = link.recv(dlv.pending)
        link.advance()
        if link.state & Endpoint.LOCAL_CLOSED:  # a consumer being closed: back it goes
            dlv.update(dlv.RELEASED)
            dlv.settle()
            return
        msg = Message()
        try:
            msg.decode(raw)
            if not msg.user_id:
                user = text_user_id(bytes(raw))
                if user:
                    msg.user_id = user.encode()
        except Exception as exc:  # a broken or hostile frame must not stop the I/O thread
            log.error("undecodable AMQP 1.0 message on %s (%s): rejected", link.name, exc)
            _settle(dlv, link, dlv.REJECTED)
            return
        self.events.received(link, dlv, msg)


def _settle(dlv: Any, receiver: Any, outcome: Any) -> None:
    """Settle an incoming delivery and give its link the credit back."""
    dlv.update(outcome)
    dlv.settle()
    receiver.flow(1)


def _confirm(callback: Confirm, ok: bool | None) -> None:
    """Tell a publisher the outcome; its failure must not stop the I/O thread."""
    try:
        callback(ok)
    except Exception:
        log.exception("confirm callback failed")


def _describe(condition: Condition | None) -> str:
    if condition is None:
        return "closed by the broker"
    return f"{condition.name}: {condition.description}"


_names = itertools.count(1)


@dataclass(slots=True)
class _Sent:
    """A publish awaiting the broker's outcome."""

    link: str  # the sender's name
    exchange: str
    routing_key: str
    at: float  # time.monotonic() when handed to proton
    confirm: Confirm | None = None
    properties: Properties | None = None  # kept for a mandatory publish only


# Outcome conditions that refuse an exchange, not one message.
_EXCHANGE_REFUSALS = frozenset({"amqp:unauthorized-access", "amqp:not-found"})
# What a consumer needs made before it attaches, on a broker without binding addresses
# (RabbitMQ 4): its source address, and the management requests (method, path, body).
Prepare = Callable[[], tuple[str, list[tuple[str, str, Any]]]]


class _Link:
    """A consumer, kept to re-attach after the connection comes back or the broker
    ends it."""

    def __init__(self, source: str, handler: Handler, ack: str, credit: int,
                 label: str, prepare: Prepare | None = None, *, binds: bool = False) -> None:
        self.name = ""  # the receiver's, new on every attach (see _attach)
        self.source = source
        # Its source address makes the broker bind a queue (v1 /exchange/X/P), which
        # RabbitMQ 3.x refuses by dropping the connection; a queue consumed by name
        # binds nothing.
        self.binds = binds
        self.prepare = prepare  # run before every attach (each connection anew)
        self.label = label  # the name consume/subscribe/open_reply_queue returned
        self.handler = handler
        self.ack = ack  # broker | after_handler | handler
        self.credit = credit
        self.receiver: Any = None
        self.opened: Future[None] = Future()
        self.waited = True  # someone waits on ``opened`` (the first attach only)
        self.lost = False  # the broker ended it while the connection stayed up
        self.attempt = 0  # failed attempts to attach it again


class _Timer(ProtonHandler):  # type: ignore[misc]
    """Runs a function on the I/O thread when a scheduled time comes."""

    def __init__(self, run: Callable[[], None]) -> None:
        self.run = run

    def on_timer_task(self, event: Any) -> None:
        self.run()


class ProtonTransport(Transport):
    def __init__(self, url: str, *, connection_name: str = "hostbus",
                 heartbeat: int = DEFAULT_HEARTBEAT, connect_timeout: float = 5.0,
                 prefetch: int = 64, reconnect: bool = True,
                 max_backoff: float = DEFAULT_MAX_BACKOFF, wait_first: bool = False,
                 **_: Any) -> None:
        super().__init__()
        self.urls = broker_urls(url)
        self.url = self.urls[0]
        self.user = self.url.user
        # The broker's address scheme: v1 until the broker's open frame says otherwise
        # (addresses.for_broker), on every connection.
        self.addresses: RabbitMQv1 = RabbitMQv1()
        self._management: Management | None = None  # RabbitMQ 4's, opened on first use
        self._name = connection_name
        self._reconnect = reconnect
        self._wait_first = wait_first
        self._max_backoff = max_backoff
        self._attempt = 0
        self._current = 0  # index in self.urls of the broker being tried
        self._open_index = 0  # index in self.urls of the broker of the open connection
        self._generation = 0  # counts connections opened
        self._tried = 0  # brokers tried since the last success or backoff
        self.connected_to = ""
        self._connected = False
        self._retry_scheduled = False
        self._heartbeat = heartbeat
        self._connect_timeout = connect_timeout
        self._prefetch = prefetch
        self._tasks: deque[Task] = deque()
        self._wake_lock = threading.Lock()
        self._wake_pending = False
        self._loop_ended = False  # the I/O loop returned and closed the injector's pipe
        self._injector = EventInjector()
        self._conn: Any = None
        self._sessions: Sessions | None = None  # the connection's (amqp10_sessions)
        self._letting_go: dict[str, Future[None]] = {}  # links closed by us, by name
        self._container: Container | None = None
        self._senders: dict[str | None, Any] = {}
        # Outgoing deliveries awaiting the broker's outcome, by tag (ours, unique across
        # links: proton hands out a new wrapper object for the same delivery each time),
        # oldest first.
        self._unsettled: dict[str, _Sent] = {}
        self._deferred: list[Task] | None = None  # publishes held while _tell runs
        #: Whether the broker says that a mandatory publish went nowhere: RabbitMQ 4.x
        #: does (released), 3.x accepts it without a word. Known once connected.
        self.reports_unroutable = False
        self._tags = itertools.count(1)
        self._links: list[_Link] = []
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._start_error: Exception | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self._container = Container(_Events(self))
        self._container.selectable(self._injector)
        self._thread = threading.Thread(target=self._run_loop,
                                        name="hostbus-amqp10-io", daemon=True)
        self._thread.start()
        if self._wait_first:
            while not self._ready.wait(0.5):
                if self._stopping.is_set():
                    raise ConnectionFailed(f"{self.url.redacted()}: stopped while waiting "
                                           "for the broker")
        if not self._ready.wait((self._connect_timeout + 5) * len(self.urls)):
            self.close()
            raise ConnectionFailed(f"{self.url.redacted()}: no answer within the connect "
                                   "timeout (is the rabbitmq_amqp1_0 plugin enabled?)")
        if self._start_error is not None:
            raise self._start_error

    def _run_loop(self) -> None:
        """The I/O thread. When its loop ends, the injector's pipe is closed: proton
        never closes it, so every transport left two descriptors behind (a process that
        made and closed a thousand crossed select()'s limit of 1,024 and could not
        connect over AMQP 1.0 again)."""
        assert self._container is not None
        try:
            self._container.run()
        finally:
            with self._wake_lock:
                self._loop_ended = True
                for fd in self._injector.pipe:
                    with contextlib.suppress(OSError):
                        os.close(fd)

    def _connect(self, container: Container) -> None:
        url = self.urls[self._current]
        ssl = None
        if url.scheme == "amqps10":
            ssl = SSLDomain(SSLDomain.MODE_CLIENT)
            # The CAs to verify the broker with (set_peer_authentication's own argument
            # is what a server offers its clients); without cafile, the system's.
            ssl.set_trusted_ca_db(url.cafile or default_verify_paths().cafile or "")
            ssl.set_peer_authentication(SSLDomain.VERIFY_PEER_NAME)
            if url.certfile:
                ssl.set_credentials(url.certfile, url.keyfile, None)
        options: dict[str, Any] = {
            "url": f"{'amqps' if ssl else 'amqp'}://{url.host}:{url.port}",
            "virtual_host": f"vhost:{url.vhost}", "heartbeat": float(self._heartbeat),
            "reconnect": False, "ssl_domain": ssl,
            "sasl_enabled": True, "allowed_mechs": "EXTERNAL" if url.external else "PLAIN",
        }
        if ssl is not None:
            # The broker's name to verify: proton would take the open frame's hostname,
            # which RabbitMQ needs to be "vhost:NAME" (found by a TLS test).
            options["sni"] = url.host
        if not url.external:
            options |= {"user": url.user, "password": url.password}
        self._conn = container.connect(**options)
        self._sessions = Sessions(self._conn)

    def _next_broker(self) -> bool:
        """Move on to the next URL; False once every one was tried in this round."""
        self._tried += 1
        self._current = (self._current + 1) % len(self.urls)
        return self._tried < len(self.urls)

    def close(self) -> None:
        if self._thread is None or self._stopping.is_set():
            return
        self._stopping.set()

        def stop() -> None:
            pending, self._unsettled = self._unsettled, {}
            for sent in pending.values():
                if sent.confirm is not None:
                    _confirm(sent.confirm, None)
            assert self._container is not None
            if self._conn is not None and self._connected:
                # Stop once the broker has answered the close and the socket is shut
                # (_Events.on_transport_closed), or after a grace period. Stopped at once,
                # the loop left the socket open: the broker kept the connection, with
                # its consumers and the messages they held, until the process exited.
                self._conn.close()
                self._container.schedule(2.0, _Timer(self._container.stop))
                return
            if self._conn is not None:
                self._conn.close()
            self._container.stop()

        self._hand_off(stop)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    # ------------------------------------------------------------- hand-off
    def _submit(self, task: Task, *, wait: bool = False, timeout: float | None = None) -> Any:
        if self._stopping.is_set():
            raise TransportClosed("the transport is closed")
        if threading.current_thread() is self._thread:
            if not wait and self._deferred is not None:
                self._deferred.append(task)  # after the outcomes being told (_tell)
                return None
            # Already on the I/O thread (a handler replying or settling): do it now.
            # Through the injector it would wait for another turn of the event loop,
            # a wake-up through a pipe each time (measured: a reply and an ack each).
            return task()
        if not wait:
            self._hand_off(task)
            return None
        fut: Future[Any] = Future()

        def run() -> None:
            try:
                fut.set_result(task())
            except Exception as exc:
                fut.set_exception(exc)

        self._hand_off(run)
        try:
            return fut.result(timeout=timeout or self._connect_timeout + 10)
        except TimeoutError:
            raise TransportClosed("the broker did not answer in time") from None

    def _hand_off(self, task: Task) -> None:
        """Queue ``task`` for the I/O thread, waking it once per batch: an injector
        trigger is a pipe write and a loop turn, and a burst of publishes needs one."""
        with self._wake_lock:
            if self._loop_ended:  # nobody reads the pipe (closed, its number reusable)
                return
            self._tasks.append(task)
            if self._wake_pending:
                return
            self._wake_pending = True
            # Under the lock: the pipe cannot be closed between the check and the write.
            self._injector.trigger(ApplicationEvent("hostbus_task"))

    def _drain(self) -> None:
        with self._wake_lock:
            self._wake_pending = False  # what is queued after this wakes us again
        while self._tasks:
            task = self._tasks.popleft()
            try:
                task()
            except Exception:  # one bad task must not stop the I/O thread
                log.exception("AMQP 1.0 I/O task failed")

    def _session(self) -> Any:
        assert self._sessions is not None
        return self._sessions.take()

    # ------------------------------------------------------------------ API
    def publish(self, exchange: str, routing_key: str, body: bytes, properties: Properties,
                *, persistent: bool = False, confirm: Confirm | None = None,
                mandatory: bool = False) -> None:
        if properties.user_id is None:
            properties.user_id = self.user
        address = self.addresses.send_to(exchange, routing_key)  # the message's `to`
        data = encode_message(properties, body, persistent, address, routing_key)
        target = self._sender_target(exchange, address)
        generation = self._generation

        def send() -> None:
            if withdrawn(confirm):
                return
            if not self._connected or (confirm is not None and generation != self._generation):
                # No connection, or meant for one that is gone: not sent. A confirm says
                # "unknown", and the outbox sends it again, in order, as over 0-9-1
                # (sent now on the new connection, it could overtake events the outbox
                # took back when the old one dropped; found by the cluster test).
                if confirm is not None:
                    _confirm(confirm, None)
                return
            sender = self._senders.get(target)
            if sender is None:
                assert self._container is not None
                sender = self._container.create_sender(
                    self._session(), target, name=f"hostbus-out-{next(_names)}")
                self._senders[target] = sender
            tag = str(next(self._tags))
            sender.delivery(tag)
            sender.stream(data)
            sender.advance()
            # Every publish is tracked until the broker settles it (it settles them all):
            # the oldest one's age tells a blocked broker (see _check_blocked).
            self._unsettled[tag] = _Sent(sender.name, exchange, routing_key,
                                         time.monotonic(), confirm,
                                         properties if mandatory else None)

        try:
            self._submit(send)
        except TransportClosed:
            if confirm is None:
                raise
            _confirm(confirm, None)

    def _sender_target(self, exchange: str, address: str) -> str | None:
        """Where a sender for this publish attaches: one sender per exchange, the
        broker routing each message by its subject (the routing key). A sender per
        routing key made an agent keep a session and link open for every reply queue it
        ever answered (each console has its own), and a console opened one per host it
        called (1.86 s for a first fan-out to 1,000 hosts, 0.49 s with the links open).
        For events it broke their order: one agent's events share one sequence, and on
        links of their own a later one could reach the broker first (0.9% of events
        without any fault, 6.7% across a broker restart; consoles dropped them as
        repeats). On one link they reach the broker in the order sent. A refused
        routing key (a topic permission) ends that link's session: the refusal names
        the key, so only its publishes count as refused, and the others in flight are
        reported unknown and sent again, in order (_refused). RabbitMQ 4.x: None, one
        sender without a target for every exchange, each message routed by its `to` (a
        sender on /exchanges/X publishes with an empty routing key); a refusal there is
        the rejected outcome of that message alone (outcome)."""
        return self.addresses.send_to_exchange(exchange)

    def _attach(self, link: _Link, *, wait: bool) -> None:
        def open_receiver() -> None:
            assert self._container is not None
            # A new name on every attach: the broker may not have forgotten the last
            # one yet, and deliveries to an old receiver are told apart (received()).
            link.name = f"hostbus-in-{next(_names)}"
            link.receiver = self._container.create_receiver(self._session(), link.source,
                                                            name=link.name)
            link.receiver.flow(link.credit)

        def attach() -> None:
            if link.prepare is None:
                open_receiver()
                return
            source, requests = link.prepare()

            def prepared(failure: str | None) -> None:
                if failure is None:
                    link.source = source
                    open_receiver()
                elif not link.opened.done() and link.waited:
                    link.opened.set_exception(BrokerRefused(failure))
                else:
                    self._consumer_ended(link, failure)

            run_in_turn(self._management_node(), requests, prepared)

        self._submit(attach)
        if wait:
            try:
                link.opened.result(timeout=self._connect_timeout + 5)
            except TimeoutError:
                if not self._connected:  # dropped under it and not back yet: transient
                    raise ConnectionFailed(f"{link.source}: the connection was lost while "
                                           "this consumer was attaching") from None
                raise BrokerRefused(f"{link.source}: the broker did not answer the "
                                    "attach in time") from None

    def _reattach(self, link: _Link) -> None:
        """On the I/O thread: attach ``link`` again, nobody waiting on the outcome (a
        refusal retries it with backoff, see _consumer_ended). A first attach the
        connection dropped under is still waited for: its caller hears of this one."""
        if not (link.waited and not link.opened.done()):
            link.opened, link.waited = Future(), False
        self._attach(link, wait=False)

    def _management_node(self) -> Management:
        """RabbitMQ 4's management node on this connection (I/O thread)."""
        if self._management is None:
            assert self._container is not None and isinstance(self.addresses, RabbitMQv2)
            self._management = Management(self._container, self._session(),
                                          self.addresses.MANAGEMENT)
        return self._management

    def _bound_queue(self, exchange: str, patterns: list[str], handler: Handler,
                     queue: Callable[[], str], label: str, *, durable: bool = False,
                     ack: str = "broker") -> list[_Link]:
        """Consumers of what ``exchange`` routes with ``patterns``. RabbitMQ 3.x: one
        source address per pattern, for which the broker makes a private queue.
        RabbitMQ 4.x: one queue, named by ``queue()`` for each attach, declared
        exclusive to the connection (deleted with it; durable ones stay) and bound
        through the management node, then consumed."""
        if self.addresses.binds_by_attach:
            return [_Link(self.addresses.bound(exchange, p), handler, ack, 1000, label,
                          binds=True) for p in patterns]
        mapping = self.addresses

        def prepare() -> tuple[str, list[tuple[str, str, Any]]]:
            name = queue()
            declare = {"durable": durable, "exclusive": not durable, "auto_delete": False,
                       "arguments": {}}
            return mapping.queue(name), [
                ("PUT", mapping.queue_path(name), declare),
                *[("POST", mapping.BINDINGS, mapping.binding(exchange, p, name))
                  for p in patterns]]

        return [_Link("", handler, ack, 1000, label, prepare)]

    def _add(self, link: _Link) -> None:
        self._links.append(link)
        try:
            self._attach(link, wait=True)
        except (BrokerRefused, ConnectionFailed):
            if link in self._links:  # (the I/O thread may have dropped it already)
                self._links.remove(link)
            raise

    def consume(self, queue: str, handler: Handler, *, manual_ack: bool = False) -> None:
        self._add(_Link(self.addresses.queue(queue), handler,
                        "handler" if manual_ack else "after_handler", self._prefetch, queue))

    def open_reply_queue(self, handler: Handler) -> str:
        """The logical reply queue name (what reply_to carries: the routing key on
        hostbus.reply); on RabbitMQ 4 the queue bound with it gets a new name on every
        attach, as over 0-9-1 (a re-declared name can be deleted by a cluster still
        cleaning up after the old connection)."""
        name = names.new_reply_queue(self.user)
        for link in self._bound_queue(names.REPLY_EXCHANGE, [name], handler,
                                      lambda: names.new_reply_queue(self.user), name):
            self._add(link)
        return name

    def subscribe(self, patterns: list[str], handler: Handler, *, name: str | None = None,
                  durable: bool = False) -> str:
        qname = names.subscription_queue(self.user, name)
        if durable and not self.addresses.binds_by_attach:  # RabbitMQ 4: made here
            for link in self._bound_queue(names.EVENT_EXCHANGE, patterns, handler,
                                          lambda: qname, qname, durable=True,
                                          ack="after_handler"):
                self._add(link)
            return qname
        if durable:
            if not self.queue_exists(qname):
                raise ConfigError(f"a durable subscription over AMQP 1.0 on RabbitMQ 3.x "
                                  f"needs its queue {qname} made beforehand (its AMQP 1.0 "
                                  "cannot bind queues)")
            self._add(_Link(self.addresses.queue(qname), handler, "after_handler", 1000,
                            qname))
            return qname
        for link in self._bound_queue(names.EVENT_EXCHANGE, patterns, handler,
                                      lambda: names.subscription_queue(self.user), qname):
            self._add(link)
        return qname

    def queue_exists(self, queue: str) -> bool:
        """Attach to the queue without credit, and let go: passive, as over 0-9-1."""
        probe = _Link(self.addresses.queue(queue), lambda d: None, "handler", 0, queue)
        self._links.append(probe)
        try:
            self._attach(probe, wait=True)
        except BrokerRefused:
            return False
        finally:
            self._links.remove(probe)
        # Let go, and wait until the broker has detached it: its session then takes the
        # next link (amqp10_sessions) instead of a new one beside it (an agent probes
        # two queues, then consumes them).
        gone: Future[None] = Future()

        def let_go() -> None:
            self._letting_go[probe.name] = gone
            probe.receiver.close()

        self._submit(let_go)
        try:
            gone.result(timeout=self._connect_timeout)
        except TimeoutError:
            pass  # its session stays busy; the next link takes another
        finally:
            self._submit(lambda: self._letting_go.pop(probe.name, None))
        return True

    def flush(self, timeout: float = 5.0) -> None:
        if self._thread is not None and threading.current_thread() is not self._thread:
            self._submit(lambda: None, wait=True, timeout=timeout)

    def ack_all(self, deliveries: Sequence[Delivery]) -> None:
        direct = [d for d in deliveries if d.ack_on_io_thread is None]
        handed = [d.ack_on_io_thread for d in deliveries if d.ack_on_io_thread is not None]
        for delivery in direct:
            delivery.ack()
        if handed:
            def task() -> None:
                for ack in handed:
                    ack()

            self._submit(task)

    # -------------------------------------------------- events (I/O thread)
    def _deliver(self, link: _Link, receiver: Any, dlv: Any, msg: Message) -> None:
        try:
            body, props = from_message(msg)
            exchange, routing_key = self.addresses.route_of(msg.address, msg.subject,
                                                            msg.annotations)
        except Exception:  # whatever arrives, the I/O thread carries on
            log.exception("unreadable message on %s: rejected", link.source)
            _settle(dlv, receiver, dlv.REJECTED)
            return
        delivery = Delivery(body, props, exchange, routing_key, redelivered=False)
        if link.ack == "handler":
            def settle(ok: bool, requeue: bool = False) -> None:
                outcome = dlv.ACCEPTED if ok else dlv.RELEASED if requeue else dlv.REJECTED
                self._submit(lambda: _settle(dlv, receiver, outcome))

            delivery.ack = lambda: settle(True)
            delivery.nack = lambda requeue=False: settle(False, requeue)
            delivery.ack_on_io_thread = lambda: _settle(dlv, receiver, dlv.ACCEPTED)
        try:
            link.handler(delivery)
        except Exception:
            log.exception("message handler for %s failed", link.source)
        if link.ack != "handler":
            _settle(dlv, receiver, dlv.ACCEPTED)

    def _refused(self, link: Any, condition: Condition | None) -> None:
        address = link.target.address if link.is_sender else link.source.address
        reason = _describe(condition)
        if link.name.startswith(Management.PREFIX):
            # RabbitMQ 4 answers a refused management request (a binding key outside
            # the user's topic permissions, say) by ending the session: the requests
            # waiting fail with its reason; the next one opens a new pair.
            if self._management is not None and link.name == self._management.name:
                self.last_refusal = (address or "?", reason)
                log.error("the broker's management node refused: %s", reason)
                self._management.fail_all(reason)
                self._management = None
            return
        if link.is_sender:
            self.last_refusal = (address or "?", reason)
            log.error("the broker refused a publish to %s: %s", address, reason)
            # (a sender without a target, RabbitMQ 4: the broker's words name it)
            exchange = self.addresses.route_of(address, None)[0] or named_exchange(reason)
            self._broker_refused(exchange, address or "?", reason)
            self._senders = {a: s for a, s in self._senders.items() if s.name != link.name}
            ours = [t for t, sent in self._unsettled.items() if sent.link == link.name]
            gone = [self._unsettled.pop(t) for t in ours]
            refused = refused_publishes(reason, [(s.exchange, s.routing_key) for s in gone])
            self._tell([(sent.confirm, False if was_refused else None)
                        for sent, was_refused in zip(gone, refused, strict=True)])
            return
        for item in self._links:
            if item.name != link.name:
                continue
            if not item.opened.done() and item.waited:  # a first attach: its caller says
                self.last_refusal = (address or "?", reason)
                item.opened.set_exception(BrokerRefused(f"{address}: {reason}"))
            else:
                self._consumer_ended(item, reason)
            return

    def _sender_gone(self, link: Any) -> None:
        self._senders = {a: s for a, s in self._senders.items() if s.name != link.name}
        gone = [self._unsettled.pop(t) for t, sent in list(self._unsettled.items())
                if sent.link == link.name]
        self._tell([(sent.confirm, None) for sent in gone])

    def _tell(self, outcomes: list[tuple[Confirm | None, bool | None]]) -> None:
        """Outcomes told together: what their callbacks publish runs after the last one
        is told, so a sender hears of every publish a link's end refused before it
        sends anything again (else it sends a refused one again)."""
        if self._deferred is not None:  # within another _tell: its caller runs them
            for confirm, ok in outcomes:
                if confirm is not None:
                    _confirm(confirm, ok)
            return
        self._deferred = deferred = []
        try:
            for confirm, ok in outcomes:
                if confirm is not None:
                    _confirm(confirm, ok)
        finally:
            self._deferred = None
        for task in deferred:
            try:
                task()
            except Exception:  # a publish's own failure: the I/O thread carries on
                log.exception("a publish sent after a link ended failed")

    def _consumer_ended(self, link: _Link, reason: str) -> None:
        """The broker ended a consumer (or refused attaching it again): attach it again,
        at once the first time, then with backoff while it refuses (its queue is
        missing, until ``broker enroll`` or the console makes it again)."""
        if not self._connected or self._stopping.is_set():
            return  # the connection is going: on_connection_opened attaches it again
        attaching_again = link.lost
        if not link.lost:
            link.lost = True
            log.warning("the broker ended the consumer of %s: %s; attaching it again",
                        link.label, reason)
            self._consumer_lost(link.label, reason)
        delay = reconnect_delay(link.attempt, self._max_backoff) if attaching_again else 0.0
        if attaching_again:
            link.attempt += 1
            (log.warning if link.attempt == 1 else log.debug)(
                "cannot consume %s: %s; trying again with backoff, next in %.1fs",
                link.label, reason, delay)
        generation = self._generation

        def again() -> None:
            if generation == self._generation and link in self._links and self._connected:
                self._reattach(link)

        assert self._container is not None
        self._container.schedule(delay, _Timer(again))

    def _consumer_opened(self, link: _Link) -> None:
        link.attempt = 0
        if link.lost:
            link.lost = False
            log.warning("consuming %s again", link.label)
            self._consumer_restored(link.label)

    def _tell_restored_once_attached(self, where: str) -> None:
        """On the I/O thread, after a reconnect: the restored callbacks run once every
        consumer is attached again (or after the attach timeout, for one the broker
        refuses and that retries with backoff). On RabbitMQ 4 a reply queue is declared
        and bound through the management node first: told at once, a console sent its
        next request before its reply queue was bound, and the reply went nowhere
        (the first call after a reconnect, about one in three)."""
        generation, waiting = self._generation, [link.opened for link in self._links]
        remaining, told = len(waiting), False

        def tell() -> None:
            nonlocal told
            if told or generation != self._generation or not self._connected:
                return
            told = True
            log.info("reconnected to %s; %d consumers restored", where, len(self._links))
            self._connection_restored()

        def attached(_: Future[None]) -> None:  # set on the I/O thread, so called there
            nonlocal remaining
            remaining -= 1
            if remaining == 0:
                tell()

        if not waiting:
            tell()
            return
        assert self._container is not None
        self._container.schedule(self._connect_timeout + 5, _Timer(tell))
        for opened in waiting:
            opened.add_done_callback(attached)

    def _check_blocked(self) -> None:
        """Every second while connected: a publish unsettled for BLOCKED_AFTER_S means
        the broker is not taking them (see the module's docstring)."""
        oldest = next(iter(self._unsettled.values()), None)
        if oldest is not None and time.monotonic() - oldest.at >= BLOCKED_AFTER_S:
            self._set_blocked(f"the broker has settled no publish for {BLOCKED_AFTER_S:.0f}"
                              " s (a resource alarm?)")


class _Events(MessagingHandler):  # type: ignore[misc]
    """proton's callbacks, all on the I/O thread, forwarded to the transport."""

    def __init__(self, transport: ProtonTransport) -> None:
        super().__init__(prefetch=0, auto_accept=False, auto_settle=True)
        self.handlers = [h for h in self.handlers if not isinstance(
            h, IncomingMessageHandler | OutgoingMessageHandler)] + [_Deliveries(self)]
        self.t = transport

    def on_start(self, event: Any) -> None:
        self.t._connect(event.container)

    def on_connection_opened(self, event: Any) -> None:
        t = self.t
        reconnected = t._ready.is_set() and not t._connected
        url = t.urls[t._current]
        t.connected_to = f"{url.host}:{url.port}"
        t._open_index = t._current
        t._generation += 1
        # If this broker goes away, the next attempt starts with the one after it.
        t._current = (t._current + 1) % len(t.urls)
        # Connected before the restored callbacks run: they publish (the outbox sends
        # what it kept), and a publish while not connected is handed back unsent.
        t._connected, t._attempt, t._tried = True, 0, 0
        t._blocked = None  # a new connection is blocked only once publishes stall
        t.addresses = for_broker(event.connection.remote_properties)
        t.reports_unroutable = t.addresses.released_means_unroutable
        t._management = None
        generation = t._generation

        def watch() -> None:
            if generation == t._generation and t._connected:
                t._check_blocked()
                event.container.schedule(1.0, _Timer(watch))

        event.container.schedule(1.0, _Timer(watch))
        if reconnected:  # consumers come back, then whoever waited hears of it
            for link in t._links:
                link.lost, link.attempt = False, 0
                t._reattach(link)
            t._tell_restored_once_attached(url.redacted())
        t._ready.set()

    def on_disconnected(self, event: Any) -> None:
        if self.t._connected:
            self._failed(None)

    def on_transport_closed(self, event: Any) -> None:
        if self.t._stopping.is_set():  # closed by close(): the socket is shut, done
            event.container.stop()

    def on_timer_task(self, event: Any) -> None:
        self.t._retry_scheduled = False
        if not self.t._stopping.is_set():
            self.t._connect(event.container)

    def on_hostbus_task(self, event: Any) -> None:
        self.t._drain()

    def on_link_opened(self, event: Any) -> None:
        for link in self.t._links:
            if link.name == event.link.name and not link.opened.done():
                link.opened.set_result(None)
                self.t._consumer_opened(link)

    def on_link_remote_detach(self, event: Any) -> None:
        # RabbitMQ 3.x answers our closing detach with a detach that does not close:
        # for a link we closed, the same as closed.
        if event.link.state & Endpoint.LOCAL_CLOSED:
            self.on_link_closed(event)

    def on_link_closed(self, event: Any) -> None:
        # Closed at both ends (by us or by the broker): its session may take another.
        sessions = self.t._sessions
        if sessions is not None and sessions.connection == event.connection:
            sessions.link_closed(event.link)
        gone = self.t._letting_go.pop(event.link.name, None)
        if gone is not None:
            gone.set_result(None)

    def on_link_closing(self, event: Any) -> None:
        # The broker detached one of our links without an error (proton closes our end
        # next): a consumer is attached again; a sender is dropped (the next publish
        # opens a new one), and what it had in flight is unknown: sent again.
        if event.link.is_receiver:
            self.t._refused(event.link, None)
        else:
            self.t._sender_gone(event.link)

    def received(self, receiver: Any, dlv: Any, msg: Message) -> None:
        """From ``_Deliveries``: a decoded message for one of our consumers."""
        name = receiver.name
        management = self.t._management
        if management is not None and name == management.name:
            dlv.settle()  # pre-settled by the broker
            management.answered(msg)
            return
        for link in self.t._links:
            if link.name == name:
                self.t._deliver(link, receiver, dlv, msg)
                return
        _settle(dlv, receiver, dlv.RELEASED)  # a consumer we no longer keep

    def outcome(self, dlv: Any, state: Any) -> None:
        """The broker's word on one of our publishes: accepted (True), rejected
        (False, with its reason logged), released: RabbitMQ 4.x routed it to no queue
        (True, as a 0-9-1 broker confirms such a message; and reported unroutable if
        it was mandatory), modified (None: unknown)."""
        if state in (dlv.ACCEPTED, dlv.RELEASED):
            ok: bool | None = True
        elif state == dlv.REJECTED:
            ok = False
        elif state == dlv.MODIFIED:
            ok = None
        else:  # not a final outcome: keep waiting for one
            return
        t = self.t
        sent = t._unsettled.pop(dlv.tag, None)
        if t._blocked is not None:
            t._set_blocked(None)  # the broker settles publishes again
        if sent is None:
            return
        if ok is False:
            condition = dlv.remote.condition
            reason = _describe(condition)
            address = t.addresses.send_to(sent.exchange, sent.routing_key)
            log.error("the broker rejected a message to %s: %s", address, reason)
            t.last_refusal = (address, reason)
            # What a v1 broker says by ending the session (the exchange is missing or
            # forbidden), RabbitMQ 4 says per message to a sender without a target:
            # tell who listens for refusals, as then. Not a message refused for itself
            # (a full queue's reject-publish): that is its publisher's alone.
            if condition is not None and condition.name in _EXCHANGE_REFUSALS:
                t._broker_refused(sent.exchange, address, reason)
        if state == dlv.RELEASED and sent.properties is not None:
            t._unroutable(sent.exchange, sent.routing_key, sent.properties)
        if sent.confirm is not None:
            _confirm(sent.confirm, ok)

    def on_link_error(self, event: Any) -> None:
        self.t._refused(event.link, event.link.remote_condition)

    def on_session_error(self, event: Any) -> None:
        # RabbitMQ refuses a publish or an attach by ending the session, with its
        # reason; every link on that session (one: a link per session) is done. Not
        # the connection: proton's default would close it.
        link = event.connection.link_head(0)
        while link is not None:
            if link.session == event.session:
                self.t._refused(link, event.session.remote_condition)
            link = link.next(0)

    def on_connection_error(self, event: Any) -> None:
        self._failed(event.connection.remote_condition)

    def on_transport_error(self, event: Any) -> None:
        self._failed(event.transport.condition)

    def _failed(self, condition: Condition | None) -> None:
        t = self.t
        hint = ""
        if condition is not None and condition.name == "amqp:unauthorized-access":
            hint = "; check the user and password in the broker URL"
        elif condition is not None and "Unknown protocol ['AMQP" in (condition.description
                                                                   or ""):
            hint = ("; the broker answered in AMQP 0-9-1: it has no AMQP 1.0 on this port. "
                    "Enable it with `rabbitmq-plugins enable rabbitmq_amqp1_0`, or use "
                    "amqp:// for 0-9-1")
        elif condition is not None and "SSL Failure" in (condition.description or ""):
            # OpenSSL's words vary ("certificate verify failed", "EVP lib" for a CA of
            # the same name as the right one): say what to check.
            hint = ("; the TLS handshake failed: the broker's certificate does not verify "
                    "(wrong CA, or it does not name this host; give the CA that signed it: "
                    "amqps10://...?cafile=ca.pem), or the broker refused this client's "
                    "certificate")
        where = t.urls[t._open_index if t._connected else t._current]
        err = ConnectionFailed(f"{where.redacted()}: {_describe(condition)}"
                               f"{hint}")
        if t._stopping.is_set():
            return
        if not t._connected and t._next_broker():
            log.warning("%s; trying %s", err, t.urls[t._current].redacted())
            assert t._container is not None
            t._connect(t._container)
            return
        if not t._ready.is_set() and not t._wait_first:
            t._start_error = err
            t._ready.set()
            return
        lost = t._connected
        if t._management is not None:
            t._management.fail_all(str(err))
            t._management = None
        if lost:
            # A consumer whose first attach is still waited for and whose source binds:
            # RabbitMQ 3.x refuses a binding it may not make (a key outside the user's
            # topic read permission) by dropping the whole connection, without a
            # reason. Fail its attach now, and do not attach it again after the
            # reconnect (it would take the connection down again). Any other consumer
            # stays and comes back with the connection: one consuming a queue by name
            # binds nothing, so a connection dropped under its first attach is no
            # refusal (it was reported as one: the manager gave up its start), and its
            # caller's wait ends when it is attached after the reconnect.
            for link in [k for k in t._links
                         if k.waited and not k.opened.done() and k.binds]:
                t._links.remove(link)
                link.opened.set_exception(BrokerRefused(
                    f"{link.source}: the broker closed the connection while this consumer "
                    f"was attaching ({_describe(condition)}); RabbitMQ 3.x does so when "
                    "it refuses a binding: check the user's topic permissions"))
        if lost:
            t._connected = False
            log.warning("lost the AMQP 1.0 connection: %s", err)
            t._senders.clear()
            t._connection_lost(err)
        # After the lost callbacks, as in amqp091; and after a failed attempt too, for
        # anything sent on a connection that never opened.
        pending, t._unsettled = t._unsettled, {}
        for sent in pending.values():
            if sent.confirm is not None:
                _confirm(sent.confirm, None)
        if not t._reconnect or t._retry_scheduled:
            return
        t._retry_scheduled, t._tried = True, 0
        delay = reconnect_delay(t._attempt, t._max_backoff)
        t._attempt += 1
        if lost:
            log.warning("reconnecting to %s in %.1fs", t.urls[t._current].redacted(), delay)
        else:  # the same words as the 0-9-1 transport
            log.warning("%s %s failed (%s); next try in %.1fs",
                        "reconnecting to" if t._ready.is_set() else "connecting to",
                        t.urls[t._current].redacted(), err, delay)
        assert t._container is not None
        t._container.schedule(delay, self)
