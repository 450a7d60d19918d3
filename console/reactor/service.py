"""The reactor on one transport: events from its active queue, decisions from the
engine, actions through the actor; one instance active among several.

Every instance consumes the active queue ``hostbus.active.NAME`` (bound to the rules'
event patterns and to ``agent.*.approval.decided``, where the outcome of an action
that waited for approval comes from); the broker delivers to one, the active instance
(``hostbus.serving.active``). Events are handled one at a time, in the order they
arrive (so in order per host), on a thread of their own, and acknowledged once their
decisions are stored: an instance that dies leaves the rest to the next one.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import TYPE_CHECKING, Any

from console.client import Console
from console.reactor.actions import Actor, Notices
from console.reactor.engine import Engine
from hostbus import names
from hostbus.envelope import Event, parse_event
from hostbus.errors import HostbusError, RemoteError
from hostbus.security.provenance import why_not_from
from hostbus.serving.active import ActiveStandby

if TYPE_CHECKING:
    from hostbus.security.signing import Signer, Verifier
    from hostbus.transport.base import Delivery, Transport

log = logging.getLogger("hostbus.reactor")

#: Where the outcome of an approved (or denied, or expired) action comes from.
APPROVAL_DECIDED = "agent.*.approval.decided"

_STOP = object()


def queue_patterns(patterns: list[str]) -> list[str]:
    """What the reactor's active queue is bound to: its rules' patterns and approvals."""
    return list(dict.fromkeys([*patterns, APPROVAL_DECIDED]))


class Reactor:
    def __init__(self, transport: Transport, engine: Engine, service: str, *,
                 signer: Signer | None = None, agent_keys: Verifier | None = None,
                 multi_host_users: frozenset[str] = frozenset(), workers: int = 4,
                 tick_interval: float = 1.0) -> None:
        self.transport = transport
        self.engine = engine
        self.service = service
        self.agent_keys = agent_keys
        self.multi_host_users = multi_host_users
        self.console = Console(transport, signer=signer, agent_keys=agent_keys,
                               multi_host_users=multi_host_users)
        timeouts = {r.name: r.action.timeout_s for r in engine.rules}
        self.actor = Actor(self.console, engine.store, workers=workers,
                           timeouts=lambda rule: timeouts.get(rule, 30.0),
                           hands_off=engine.hands_off,
                           notices=Notices(self.console.publisher, service))
        self.standby = ActiveStandby(transport, self.console.publisher, service,
                                     tick_interval=tick_interval,
                                     on_change=self._changed, on_event=self._on_delivery)
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.handled = 0
        self.dropped = 0

    def start(self) -> None:
        """Raises ``HostbusError`` naming the enrollment to run when the active queue is
        missing or may not be read."""
        self.console.open()
        self.actor.start()
        for target, label in ((self._intake, "events"), (self._timer, "timer")):
            thread = threading.Thread(target=target, name=f"hostbus-reactor-{label}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)
        self.standby.start()

    def stop(self) -> None:
        self.standby.stop()
        self._stop.set()
        self._inbox.put(_STOP)
        for thread in self._threads:
            thread.join(timeout=30)
        self.actor.stop()
        self.transport.close()

    @property
    def active(self) -> bool:
        return self.standby.active

    def _changed(self, active: bool) -> None:
        if active:
            log.info("active: handling events for %d rule(s)", len(self.engine.rules))
            if self.engine.hands_off is not None:
                # what the manager handles now: another instance may have seen it start
                self.engine.hands_off.seed(self.console, time.time())
            self.actor.resume()

    # ------------------------------------------------------------------ events
    def _on_delivery(self, delivery: Delivery) -> None:
        """On the transport's I/O thread: hand over, keep it short."""
        self._inbox.put(delivery)

    def _intake(self) -> None:
        while True:
            batch = [self._inbox.get()]
            # What else has arrived goes in the same transaction: a burst costs one
            # write to disk per batch, not per event (at most the prefetch window).
            while len(batch) < 256 and batch[-1] is not _STOP:
                try:
                    batch.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            stop = batch[-1] is _STOP
            deliveries = [d for d in batch if d is not _STOP]
            if deliveries:
                self._handle_batch(deliveries)
            if stop:
                return

    def _handle_batch(self, deliveries: list[Delivery]) -> None:
        try:
            self.handle_many(deliveries)
        except Exception:
            # The store failed (disk?): not acknowledged, so the broker keeps them for
            # this instance's successor; this one goes on with the next.
            log.exception("could not handle %d event(s); left to the broker",
                          len(deliveries))
            return
        for delivery in deliveries:  # only once their decisions are stored
            try:
                delivery.ack()
            except HostbusError as exc:  # the connection went: the broker hands it on
                log.info("could not acknowledge an event (%s)", exc)
                return

    def handle(self, delivery: Delivery) -> None:
        self.handle_many([delivery])

    def handle_many(self, deliveries: list[Delivery]) -> None:
        """Decide on these events, in order; send what fired."""
        events: list[Event] = []
        for delivery in deliveries:
            event = self._trusted(delivery)
            if event is None:
                self.dropped += 1
            elif event.full_name == "agent.approval.decided":
                self.handled += 1
                if event.data.get("requester") == self.transport.user:
                    self.actor.approval_decided(event.data, event.host)
            else:
                events.append(event)
        decided = self.engine.consider_many(events) if events else []
        self.handled += len(events)
        for d in decided:
            if d.decision == "fired":
                self.actor.submit(d.decision_id)

    def _trusted(self, delivery: Delivery) -> Event | None:
        """The event, if it speaks for its sender (hostbus.security.provenance); else
        None (logged)."""
        try:
            event = parse_event(delivery)
        except RemoteError as err:
            log.warning("ignored a malformed event on %s: %s", delivery.routing_key,
                        err.message)
            return None
        why = why_not_from(delivery, event.host, routing_key=event.routing_key(),
                           multi_host_users=self.multi_host_users, verifier=self.agent_keys,
                           who="the reactor")
        if why is not None:
            log.warning("ignored event %s claiming host %r: %s", event.full_name, event.host,
                        why)
            return None
        return event

    def _timer(self) -> None:
        """Rules with ``for_s`` or ``absent_s`` fire when their time has come, not on an
        event."""
        if not any(r.for_s or r.absent_s for r in self.engine.rules):
            return
        while not self._stop.wait(1.0):
            if not self.standby.active:
                continue
            try:
                for decided in self.engine.due():
                    if decided.decision == "fired":
                        self.actor.submit(decided.decision_id)
            except Exception:
                log.exception("checking the rules that wait (for_s) failed")

    def status(self) -> dict[str, Any]:
        return {"service": self.service, **self.standby.status(), "handled": self.handled,
                "dropped": self.dropped, "sent": self.actor.sent,
                "queue": names.active_queue(self.service)}
