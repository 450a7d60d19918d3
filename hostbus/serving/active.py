"""One active instance among several of a service, decided by the broker.

Every instance of a service consumes the service's active queue
(``hostbus.active.NAME``, made at enrollment: quorum, single active consumer, bound to
the events the service acts on and to its instances' ticks). RabbitMQ delivers a single
active consumer queue's messages to one consumer only, and hands the queue (with what
that consumer held unacknowledged) to the next one when its channel or connection goes.
So an instance that receives from the queue is the active one. Each instance publishes
a tick into the queue every ``tick_interval`` seconds (an event ``active.NAME.tick`` of
the service's own identity), so leadership is known within a tick even when no events
flow: a standby that receives a tick has become active.

An instance stops being active, at once, when its connection drops or the broker ends
its consumer (the broker may already be handing the queue to another), and when no tick
at all, not even its own, came back for ``lease`` seconds (its connection may be dead
without it knowing yet: the broker notices a dead client only after missed heartbeats,
so an active instance cut off gives up long before another one is given the queue).

Using it in a service (the manager does; docs/NOTES.md says more):

    standby = ActiveStandby(transport, publisher, "reactor", on_change=changed,
                            on_event=handle)
    standby.start()          # after the transport is started
    ...                      # act only while standby.active
    standby.stop()

``on_event(delivery)`` gets every other message of the queue (the events it is bound
to), on the transport's I/O thread: hand it over, and settle it (``delivery.ack()``)
once acted on; unsettled ones go to the next active instance if this one dies.
``on_change(active)`` runs on a thread of its own, in order, once per change.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from hostbus import names
from hostbus.envelope import Event, now_rfc3339, parse_event
from hostbus.errors import ConnectionFailed, HostbusError, RemoteError
from hostbus.publisher import Publisher
from hostbus.transport.base import Delivery, Transport

log = logging.getLogger("hostbus.active")

_STOP = object()


class ActiveStandby:
    def __init__(self, transport: Transport, publisher: Publisher, service: str, *,
                 instance: str | None = None, tick_interval: float = 1.0,
                 lease: float | None = None,
                 on_change: Callable[[bool], None] | None = None,
                 on_event: Callable[[Delivery], None] | None = None,
                 about: Callable[[], dict[str, Any]] | None = None) -> None:
        """``service`` is the service's identity (its host id); ``instance`` names this
        process among its peers (default: host name, pid and a random suffix).
        ``lease`` defaults to three ticks. ``about()`` adds to each tick what peers
        should know of this instance (the active one lists its peers' ticks)."""
        names.validate_host_id(service)
        if tick_interval <= 0:
            raise ValueError("tick_interval must be above 0 seconds")
        self.transport = transport
        self.publisher = publisher
        self.service = service
        self.instance = instance or \
            f"{socket.gethostname().split('.')[0]}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
        self.tick_interval = tick_interval
        self.lease = lease if lease is not None else 3 * tick_interval
        self.on_change = on_change or (lambda active: None)
        self.on_event = on_event
        self.about = about or (lambda: {})
        self.queue = names.active_queue(service)
        self._tick_key = names.tick_key(service)
        self._epoch = uuid.uuid4().hex[:16]
        self._seq = 0
        self._lock = threading.Lock()
        self._active = False
        self._since: float | None = None  # monotonic time it became active
        self._last_tick = 0.0  # monotonic time of the last tick received
        self._peers: dict[str, tuple[float, dict[str, Any]]] = {}
        self._became = threading.Condition(self._lock)
        self._changes: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ running
    def start(self) -> None:
        """Consume the active queue and start ticking. Raises ``HostbusError`` naming
        the enrollment to run when the queue does not exist or may not be read."""
        try:
            exists = self.transport.queue_exists(self.queue)
        except ConnectionFailed:
            raise  # the connection, not the queue: the caller may try again
        except HostbusError as exc:
            exists, why = False, str(exc)
        else:
            why = "it does not exist"
        if not exists:
            raise HostbusError(
                f"cannot use the active queue {self.queue}: {why}. An administrator makes "
                f"it: `hostbus broker enroll-service {self.service} --active ...` (with the "
                "service's --events)")
        self.transport.on_connection_lost(lambda exc: self._demote(f"connection lost ({exc})"))
        self.transport.on_consumer_lost(self._on_consumer_lost)
        self.transport.consume(self.queue, self._on_delivery, manual_ack=True)
        for target, label in ((self._tick_loop, "tick"), (self._change_loop, "leadership")):
            thread = threading.Thread(target=target, name=f"hostbus-active-{label}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop ticking and acting (the consumer goes with the transport's close)."""
        if self._stop.is_set():
            return
        self._demote("stopping")
        self._stop.set()
        self._changes.put(_STOP)
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=5)

    @property
    def active(self) -> bool:
        with self._lock:
            return self._active

    def wait_active(self, timeout: float) -> bool:
        """Wait until this instance is the active one (True) or ``timeout`` passed."""
        with self._became:
            return self._became.wait_for(lambda: self._active, timeout)

    def status(self) -> dict[str, Any]:
        """This instance, whether it is active and since when, and (known only to the
        active one, which receives every tick) the instances heard from within the lease."""
        now = time.monotonic()
        with self._lock:
            peers = [{"instance": name, "last_tick_s": round(now - seen, 2), **info}
                     for name, (seen, info) in sorted(self._peers.items())
                     if now - seen <= 2 * self.lease]
            return {"instance": self.instance, "active": self._active,
                    "active_for_s": round(now - self._since, 2) if self._since else None,
                    "instances": peers if self._active else []}

    # ---------------------------------------------------------------- the queue
    def _on_delivery(self, delivery: Delivery) -> None:
        """On the I/O thread: any message means this consumer is the active one."""
        if delivery.routing_key == self._tick_key:
            self._on_tick(delivery)
            with contextlib.suppress(HostbusError):  # closing: the broker forgets ticks
                delivery.ack()
            return
        with self._lock:
            # The broker handed this consumer a message: it holds the queue. Under a
            # backlog the ticks wait behind the events, so events count as ticks here
            # (else the active instance would give up in the middle of a burst).
            self._last_tick = time.monotonic()
        self._promote()
        if self.on_event is None:
            delivery.ack()
        else:
            self.on_event(delivery)

    def _on_tick(self, delivery: Delivery) -> None:
        try:
            tick = parse_event(delivery)
            sender = str(tick.data.get("instance", ""))[:200]
            info = {k: v for k, v in tick.data.items() if k != "instance"}
        except (RemoteError, AttributeError):
            sender, info = "", {}
        now = time.monotonic()
        with self._lock:
            self._last_tick = now
            if sender and delivery.properties.user_id in (self.transport.user, None):
                self._peers[sender] = (now, info)
                if len(self._peers) > 1000:  # bounded, whatever arrives
                    oldest = min(self._peers, key=lambda k: self._peers[k][0])
                    del self._peers[oldest]
        self._promote()

    def _on_consumer_lost(self, queue_name: str, reason: str) -> None:
        if queue_name == self.queue:
            self._demote(f"the broker ended the consumer ({reason})")

    # -------------------------------------------------------------- transitions
    def _promote(self) -> None:
        with self._lock:
            if self._active or self._stop.is_set():
                return
            self._active = True
            self._since = time.monotonic()
            self._last_tick = max(self._last_tick, self._since)
            self._became.notify_all()
        log.info("%s is now the active instance of %s", self.instance, self.service)
        self._changes.put(True)

    def _demote(self, why: str) -> None:
        with self._lock:
            if not self._active:
                return
            self._active = False
            self._since = None
            self._peers.clear()
        log.warning("%s is no longer the active instance of %s: %s", self.instance,
                    self.service, why)
        self._changes.put(False)

    def _change_loop(self) -> None:
        while True:
            change = self._changes.get()
            if change is _STOP:
                return
            try:
                self.on_change(bool(change))
            except Exception:
                log.exception("the service failed to handle becoming %s",
                              "active" if change else "standby")

    def _tick_loop(self) -> None:
        while True:
            try:
                self._tick()
            except HostbusError as exc:  # the transport is reconnecting: it says so
                log.debug("could not send a tick: %s", exc)
            with self._lock:
                silent = time.monotonic() - self._last_tick
                expired = self._active and silent > self.lease
            if expired:
                self._demote(f"no tick came back for {silent:.1f} s (lease {self.lease:g} s); "
                             "the broker may be giving the queue to another instance")
            if self._stop.wait(self.tick_interval):
                return

    def _tick(self) -> None:
        self._seq += 1
        tick = Event(host=self.service, agent=names.ACTIVE_AGENT, event=names.TICK_EVENT,
                     data={**self.about(), "instance": self.instance, "active": self.active,
                           "sent": now_rfc3339()},
                     seq=self._seq, epoch=self._epoch)
        body, props = tick.encode()
        self.publisher.publish(names.EVENT_EXCHANGE, self._tick_key, body, props)
