"""Where an event enters the historian: ``Ingest.on_delivery`` (the transport's I/O
thread) checks it and hands it to the writer thread, which stores what has gathered
in one transaction (group commit: the busier the bus, the larger the batches) and only
then acknowledges those messages. A historian that dies loses nothing: the broker hands
what was not acknowledged to the next start, and repeats are stored once.

Only events a subscriber would accept are stored: a valid envelope, whose routing key
agrees with its body, sent by the host it names (or by a broker user that serves many
hosts, as a console's ``multi_host_users``), and, with agent keys, signed by that host.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from console.history.store import EventStore, Row, time_ms
from hostbus.envelope import parse_event
from hostbus.errors import RemoteError
from hostbus.security.provenance import why_not_from
from hostbus.transport.base import Delivery

if TYPE_CHECKING:
    from hostbus.security.signing import Verifier

log = logging.getLogger("hostbus.historian")

#: Larger events are not stored (an agent's own requests are refused above this size).
MAX_EVENT_BYTES = 1 << 20
#: A historian's marker (``history.<id>.sync``): its own is waited for; none is stored.
SYNC_EVENT = ("history", "sync")


@dataclass
class Counters:
    stored: int = 0
    repeats: int = 0
    refused: int = 0


@dataclass
class _Item:
    delivery: Delivery
    row: Row | None  # None: a sync marker
    token: str | None = None


@dataclass
class Ingest:
    store: EventStore
    host_id: str  # the historian's own host id (its sync markers)
    multi_host_users: frozenset[str] = frozenset({"guest"})
    agent_keys: Verifier | None = None
    batch_size: int = 1000
    counters: Counters = field(default_factory=Counters)
    #: Settles a stored batch (``Transport.ack_all``: one hand-off to the transport's
    #: I/O thread for the batch); by default each delivery's own ``ack``.
    ack_all: Callable[[Sequence[Delivery]], None] | None = None

    def __post_init__(self) -> None:
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._synced: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._refusals_logged = 0

    # ------------------------------------------------------------ I/O thread
    def on_delivery(self, delivery: Delivery) -> None:
        if len(delivery.body) > MAX_EVENT_BYTES:
            self._refuse(delivery, f"{len(delivery.body)} bytes; events of at most "
                                   f"{MAX_EVENT_BYTES} are stored")
            return
        try:
            ev = parse_event(delivery)
        except RemoteError as err:
            self._refuse(delivery, f"not a valid event: {err.message}")
            return
        if (ev.agent, ev.event) == SYNC_EVENT:
            if ev.host == self.host_id:  # ours: acknowledged once what came before is stored
                self._queue.put(_Item(delivery, None, str(ev.data.get("token", ""))))
            else:  # another historian's marker: never stored
                delivery.ack()
            return
        why = self._why_not(delivery, ev.host, ev.routing_key())
        if why is not None:
            self._refuse(delivery, why)
            return
        props = delivery.properties
        row = Row(ev.host, ev.agent, ev.event, ev.epoch, ev.seq, time_ms(ev.time),
                  int(time.time() * 1000), props.message_id, props.user_id, delivery.body)
        self._queue.put(_Item(delivery, row))

    def _why_not(self, delivery: Delivery, host: str, routing_key: str) -> str | None:
        """Why this event may not be stored, or None: the same rules as a console's."""
        return why_not_from(delivery, host, routing_key=routing_key,
                            multi_host_users=self.multi_host_users, verifier=self.agent_keys,
                            who="this historian")

    def _refuse(self, delivery: Delivery, why: str) -> None:
        with self._lock:
            self.counters.refused += 1
            self._refusals_logged += 1
            logged = self._refusals_logged
        if logged <= 100 or logged % 1000 == 0:
            log.warning("not stored: a message on %s: %s (%d refused so far)",
                        delivery.routing_key, why, self.counters.refused)
        delivery.ack()  # never stored, never redelivered: it will not become valid

    # ---------------------------------------------------------------- writer
    def start(self) -> None:
        self._thread = threading.Thread(target=self._write, name="hostbus-history-writer",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Store what was received, then stop the writer."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    def _write(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stopping = False
            while len(batch) < self.batch_size:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            self._store(batch)
            if stopping:
                return

    def _store(self, batch: list[_Item]) -> None:
        rows = [item.row for item in batch if item.row is not None]
        delay = 0.5
        while True:
            try:
                added = self.store.insert(rows)
                break
            except Exception:
                # The database is away (PostgreSQL restarting, a full disk): keep the
                # batch, unacknowledged, and try again; the broker holds the rest.
                log.exception("could not store %d events; trying again in %.1f s",
                              len(rows), delay)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
        with self._lock:
            self.counters.stored += added
            self.counters.repeats += len(rows) - added
        deliveries = [item.delivery for item in batch]
        if self.ack_all is not None:
            self.ack_all(deliveries)
        else:
            for delivery in deliveries:
                delivery.ack()
        for item in batch:
            if item.token is not None:
                done = self._synced.pop(item.token, None)
                if done is not None:
                    done.set()

    # ------------------------------------------------------------------ sync
    def expect_marker(self) -> tuple[str, threading.Event]:
        """A new marker token, and what is set once everything before it is stored."""
        token = uuid.uuid4().hex
        done = threading.Event()
        self._synced[token] = done
        return token, done

    def forget_marker(self, token: str) -> None:
        self._synced.pop(token, None)
