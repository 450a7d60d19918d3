"""Keeps a ``VmLedger`` current from the bus: the virt agents' lifecycle events as they
come, and full domain listings of the virt hosts (``virt.domain`` objects) at start,
every ``interval`` seconds, after the console reconnects or a virt agent restarts
(events may have been missed meanwhile), and whenever ``reconcile`` is called.

Events are applied on the tracker's own thread, never on the transport's I/O thread.
Only a host's own events change the VMs recorded on it (the console has already
dropped events a host sent for another); a VM that moved host is found by its UUID at
the next listing.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from console.client import Console
from console.provisioner.ledger import VmLedger
from hostbus.envelope import Event
from hostbus.errors import HostbusError

log = logging.getLogger("hostbus.provisioner")

LIFECYCLE = "virt.*.domain.lifecycle"
#: Domains asked for per host in one listing (the most agent.query gives). A host with
#: more is left unsettled rather than read as missing VMs.
LISTING_LIMIT = 10000
_RECONCILE = object()
_STOP = object()


def well_formed(objects: Any) -> list[dict[str, Any]]:
    """The domain objects of a listing that name, identify and describe a domain (what a
    virt agent's schema promises); anything else is left out, never trusted."""
    if not isinstance(objects, list):
        return []
    return [o for o in objects if isinstance(o, dict)
            and all(isinstance(o.get(k), str) for k in ("name", "uuid", "state"))]


class VmTracker:
    def __init__(self, console: Console, ledger: VmLedger, *, interval: float = 60.0,
                 call_timeout: float = 60.0, discovery_idle: float = 0.3,
                 on_change: Callable[[set[str]], None] = lambda owners: None,
                 on_host_event: Callable[[str], None] = lambda host: None) -> None:
        """``on_change(owners)`` runs after a change of what the quota counts for those
        owners, on whichever thread made it; ``on_host_event(host)`` after each
        lifecycle event of a host, on the tracker's thread (keep it short)."""
        self.console = console
        self.ledger = ledger
        self.interval = interval
        self.call_timeout = call_timeout
        self.discovery_idle = discovery_idle
        self.on_change = on_change
        self.on_host_event = on_host_event
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        #: Set once a first listing has settled the ledger after ``start``.
        self.settled = threading.Event()

    # ------------------------------------------------------------------ running
    def start(self) -> None:
        """Subscribe to lifecycle events, then settle everything from a listing."""
        self.console.subscribe([LIFECYCLE], self._on_event)
        self.console.transport.on_connection_restored(self.reconcile_soon)
        self._thread = threading.Thread(target=self._run, name="hostbus-vm-tracker",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._inbox.put(_STOP)
            self._thread.join(timeout=self.call_timeout + 5)
            self._thread = None

    def reconcile_soon(self) -> None:
        self._inbox.put(_RECONCILE)

    def _on_event(self, event: Event, note: str | None) -> None:
        """On the transport's I/O thread: hand over only."""
        self._inbox.put((event.host, event.data))
        if note is not None and "restarted" in note:
            self._inbox.put(_RECONCILE)  # events of its down time are lost

    def _run(self) -> None:
        due = time.monotonic()  # a listing first: what changed while we were away
        failures = 0
        while True:
            try:
                item = self._inbox.get(timeout=max(0.0, due - time.monotonic()))
            except queue.Empty:
                item = None
            if item is _STOP:
                return
            if item is _RECONCILE:
                due = time.monotonic()
            elif item is not None:
                host, data = item
                try:
                    self._changed(self.ledger.apply_event(host, data))
                    self.on_host_event(host)
                except Exception:
                    log.exception("could not apply a lifecycle event from %s", host)
            if time.monotonic() < due:
                continue
            try:
                self.reconcile()
                self.settled.set()
                failures = 0
                due = time.monotonic() + self.interval
            except Exception as exc:
                failures += 1
                wait = min(self.interval, 2.0 ** min(failures, 8))
                log.warning("could not list the virt hosts' domains (%s); trying again in "
                            "%g s", exc, wait)
                due = time.monotonic() + wait

    # ---------------------------------------------------------------- listings
    def reconcile(self) -> int:
        """Settle every VM from a listing of every virt host that answers now; returns
        how many hosts were settled. Raises ``HostbusError`` if the broker is not there."""
        marker = self.ledger.marker()
        hosts = [a.host for a in self.console.discover(filter={"agent": "virt"},
                                                       idle=self.discovery_idle)]
        listings: dict[str, list[dict[str, Any]]] = {}
        if hosts:
            result = self.console.query("virt", "domain", hosts=hosts, limit=LISTING_LIMIT,
                                        timeout=self.call_timeout)
            for res in result.results:
                if res.reply is None or not res.reply.ok:
                    log.info("virt host %s did not list its domains (%s); its VMs stay as "
                             "they were", res.host,
                             "no reply" if res.reply is None else res.reply.error_code)
                    continue
                found = res.reply.result or {}
                objects = found.get("objects", [])
                if found.get("total", len(objects)) > len(objects):
                    log.warning("virt host %s has more than %d domains; its VMs are not "
                                "reconciled", res.host, len(objects))
                    continue
                listings[res.host] = [{"name": o["name"], "uuid": o["uuid"],
                                       "state": o["state"]} for o in well_formed(objects)]
        self._changed(self.ledger.reconcile(listings, marker))
        return len(listings)

    def _changed(self, owners: set[str]) -> None:
        if owners:
            try:
                self.on_change(owners)
            except HostbusError as exc:
                log.warning("could not announce a quota change: %s", exc)
