"""The manager's loop: events in, the fleet model kept current, hosts' liveness judged,
and the work that follows (HA restarts, moves) handed to ``Actions``.

Events reach the active instance through its active queue (``hostbus.serving.active``):
at least once, and what a dead instance held goes to the next. Each is applied on the
loop's thread and acknowledged afterwards. Listings by call (``reconcile``) settle the
model at activation, every ``reconcile_interval`` and after a virt agent restarts.

A host's liveness: online while it heartbeats; ``unresponsive`` once nothing came from
it for its heartbeat interval plus ``heartbeat_grace`` (or it said offline); then it is
pinged (its agent queue, ``ping_timeout``): an answer makes it online again, silence
runs the fence step (``Fencer``), and only a fence that succeeds makes it ``down``,
which is what lets its HA VMs be restarted elsewhere.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from console.client import Console
from console.manager.fencing import Fencer
from console.manager.fleet import DOWN, ONLINE, UNRESPONSIVE, Fleet
from console.manager.policies import n_plus_one
from console.provisioner.tracker import well_formed
from hostbus.envelope import Event, parse_event
from hostbus.errors import ErrorCode, HostbusError, RemoteError
from hostbus.security.provenance import why_not_from
from hostbus.transport.base import Delivery

if TYPE_CHECKING:
    from console.manager.balancing import Balancer
    from console.placement import PlacementConfig
    from hostbus.security.signing import Verifier

log = logging.getLogger("hostbus.manager")

#: What the manager's active queue is bound to (``hostbus broker enroll-service manager
#: --active --events ...`` with each of these).
EVENT_PATTERNS = ("agent.*.online", "agent.*.heartbeat", "agent.*.offline",
                  "host.*.metrics", "virt.*.domain.lifecycle", "provision.*.accepted",
                  "provision.*.progress")
LISTING_LIMIT = 10000
#: Longest wait before fencing a silent host again after a failed attempt.
FENCE_RETRY_MAX_S = 300.0
_STOP = object()


class Manager:
    def __init__(self, console: Console, fleet: Fleet, *, fencer: Fencer,
                 heartbeat_grace: float = 30.0, ping_timeout: float = 5.0,
                 reconcile_interval: float = 60.0, check_interval: float = 1.0,
                 call_timeout: float = 60.0, discovery_idle: float = 0.3,
                 multi_host_users: frozenset[str] = frozenset({"guest"}),
                 agent_keys: Verifier | None = None,
                 placement: PlacementConfig | None = None,
                 emit: Callable[[str, dict[str, Any]], None] = lambda event, data: None,
                 on_down: Callable[[str], None] = lambda host: None,
                 on_maintenance: Callable[[str], None] = lambda host: None,
                 balancer: Balancer | None = None) -> None:
        """``emit(event, data)`` publishes a manager event; ``on_down(host)`` runs (on
        the loop's thread) when a host is confirmed down, and at each listing for each
        host down with HA VMs on it; ``on_maintenance(host)`` at each listing for each
        host in maintenance with VMs on it (an evacuation an earlier instance left).
        ``balancer``: ticked after each liveness check while active (``balancing``)."""
        self.console = console
        self.fleet = fleet
        self.fencer = fencer
        self.heartbeat_grace = heartbeat_grace
        self.ping_timeout = ping_timeout
        self.reconcile_interval = reconcile_interval
        self.check_interval = check_interval
        self.call_timeout = call_timeout
        #: Listings and reads are quick calls: a host silent this long is left as it was.
        self.listing_timeout = min(call_timeout, 10.0)
        self.discovery_idle = discovery_idle
        self.multi_host_users = multi_host_users
        self.agent_keys = agent_keys  # with them, only signed events count
        self.placement = placement
        self.emit = emit
        self.on_down = on_down
        self.on_maintenance = on_maintenance
        self.balancer = balancer
        self.active = threading.Event()
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._listing_wanted = threading.Event()  # wakes the lister
        self._full_listing = threading.Event()  # ... for a listing of every host
        self._xml_wanted: set[str] = set()  # ... for these HA VMs' XML
        self._xml_lock = threading.Lock()
        self.dropped = 0  # events refused as spoofed or malformed
        self._retry: dict[str, tuple[int, float]] = {}  # host -> (failed fences, next try)
        self._capacity: dict[str, Any] | None = None  # the last n+1 finding told
        #: Set after each completed listing (tests and the CLI's freshness).
        self.reconciled = threading.Event()

    # ------------------------------------------------------------------ running
    def start(self) -> None:
        """The loop (events, liveness) and the lister (listings by call) on threads of
        their own: a listing waiting on a host that just died never delays an event."""
        self._stop.clear()
        for target, label in ((self._run, "manager"), (self._list, "manager-lister")):
            thread = threading.Thread(target=target, name=f"hostbus-{label}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        self._inbox.put(_STOP)
        self._listing_wanted.set()
        loop, lister = self._threads or (None, None)
        if loop is not None:
            loop.join(timeout=self.call_timeout + 5)  # the event being applied, if any
        if lister is not None:
            # A listing waiting on a silent host is abandoned: it only reads the fleet.
            lister.join(timeout=1.0)
        self._threads = []

    def set_active(self, active: bool) -> None:
        """Called when this instance becomes (or stops being) the active one."""
        if active:
            self.fleet.reload()  # an instance sharing the state file may have written it
            # Liveness waits for a first listing: every host's last word in the state
            # file is as old as the takeover, and judging them before discovery has
            # heard them would make live hosts unresponsive (and no target for an HA
            # restart) until they answered a ping.
            self.reconciled.clear()
            self.active.set()
            self.reconcile_soon()
        else:
            self.active.clear()

    def on_event(self, delivery: Delivery) -> None:
        """On the transport's I/O thread: hand over; settled once applied."""
        self._inbox.put(delivery)

    def reconcile_soon(self) -> None:
        self._full_listing.set()
        self._listing_wanted.set()

    def want_xml(self, name: str) -> None:
        """Read an HA VM's XML soon, on the lister's thread (a call must not hold up
        events)."""
        with self._xml_lock:
            self._xml_wanted.add(name)
        self._listing_wanted.set()

    def _learn_wanted(self) -> None:
        with self._xml_lock:
            names, self._xml_wanted = sorted(self._xml_wanted), set()
        for name in names:
            vm = self.fleet.vm(name)
            if vm is not None and vm.ha and not vm.xml and not self._stop.is_set():
                self.learn_xml(vm.name, vm.host)  # if not, the next listing does

    def _run(self) -> None:
        next_check = time.monotonic()
        while True:
            try:
                item = self._inbox.get(timeout=max(0.0, next_check - time.monotonic()))
            except queue.Empty:
                item = None
            if item is _STOP:
                return
            if isinstance(item, Delivery):
                self._apply(item)
            if time.monotonic() < next_check:
                continue
            next_check = time.monotonic() + self.check_interval
            if self.active.is_set() and self.reconciled.is_set():
                try:
                    self.check_liveness()
                except HostbusError as exc:
                    log.warning("could not check the hosts' liveness: %s", exc)
                if self.balancer is not None:
                    try:
                        self.balancer.tick()
                    except Exception:
                        log.exception("balancing failed")

    def _list(self) -> None:
        failures = 0
        while not self._stop.is_set():
            wait = self.reconcile_interval if failures == 0 else \
                min(self.reconcile_interval, 2.0 ** min(failures, 6))
            woke = self._listing_wanted.wait(wait)
            self._listing_wanted.clear()
            if self._stop.is_set() or not self.active.is_set():
                continue
            full = not woke or self._full_listing.is_set()
            try:
                self._learn_wanted()
                if not full:
                    continue
                self._full_listing.clear()
                self.reconcile()
                failures = 0
            except Exception as exc:
                if self._stop.is_set():
                    return  # stopping: the connection or the state file closed under it
                if not isinstance(exc, HostbusError):
                    raise
                failures += 1
                log.warning("could not list the virt hosts (%s); trying again", exc)

    # ------------------------------------------------------------------- events
    def _apply(self, delivery: Delivery) -> None:
        try:
            event = parse_event(delivery)
        except RemoteError as err:
            self.dropped += 1
            log.warning("ignored a malformed event on %s: %s", delivery.routing_key,
                        err.message)
            delivery.ack()
            return
        why = why_not_from(delivery, event.host, routing_key=event.routing_key(),
                           multi_host_users=self.multi_host_users, verifier=self.agent_keys,
                           who="the manager")
        if why is not None:
            self.dropped += 1
            log.warning("dropped event %s claiming host %r: %s", delivery.routing_key,
                        event.host, why)
            delivery.ack()
            return
        try:
            self.apply(event)
        except Exception:
            log.exception("could not apply event %s", delivery.routing_key)
        delivery.ack()

    def apply(self, event: Event) -> None:
        """One fleet event (already checked) into the model."""
        host, data, name = event.host, event.data, event.full_name
        known = self.fleet.host(host) is not None
        if name in ("agent.online", "agent.heartbeat"):
            if "virt" not in data.get("agents", ()):
                return
            before, after = self.fleet.seen(host, interval=data.get("interval_s"))
            if name == "agent.online":
                facts = data.get("facts") or {}
                self.fleet.update_host(host, migration_uri=str(facts.get("migration_uri", "")))
            status = (data.get("status") or {}).get("virt") or {}
            capacity = {k: int(status[k]) for k in ("free_vcpus", "unallocated_memory_bytes")
                        if isinstance(status.get(k), int)}
            if capacity:
                self.fleet.update_host(host, **capacity)
            self._changed(before, after.state, "it heartbeats again")
            if before is None:
                self.reconcile_soon()  # a new host: its size comes from node.info
            if name == "agent.online" and before is not None:
                self.reconcile_soon()  # what happened while its agent was away
        elif name == "agent.offline" and known:
            before, after = self.fleet.update_host(
                host, state=UNRESPONSIVE,
                why=f"its agent said offline ({data.get('reason', 'no reason')})")
            self._changed(before, after.state, after.why)
        elif name == "host.metrics" and known:
            load = data.get("load") or [None]
            self.fleet.update_host(host, cpu_percent=_number(data.get("cpu_percent")),
                                   load1=_number(load[0]))
        elif name == "virt.domain.lifecycle":
            self.fleet.apply_lifecycle(host, data)
        elif name == "provision.accepted" and isinstance(data.get("owner"), str):
            self.fleet.set_owner(str(data.get("request_id")), data["owner"])
        elif name == "provision.progress" and isinstance(data.get("vm"), str) and \
                isinstance(data.get("host"), str):
            # A VM the provisioner made: its owner (from the request's accepted event)
            # and, when the request or its template said so, its HA flag; the VM is
            # known from here even if its host's lifecycle events come later.
            ha = data.get("ha") is True
            priority = data.get("ha_priority")
            vm = self.fleet.provisioned(
                data["vm"], data["host"], owner=self.fleet.owner_of(str(data.get("request_id"))),
                ha=ha, ha_priority=priority if isinstance(priority, int) and
                not isinstance(priority, bool) else 0)
            if ha and not vm.xml:
                self.want_xml(vm.name)

    def _changed(self, before: Any, state: str, why: str) -> None:
        if before is not None and before.state != state:
            log.info("host %s: %s -> %s (%s)", before.host, before.state, state, why)
            self.emit("host.state", {"host": before.host, "state": state,
                                     "previous": before.state, "why": why})

    # ---------------------------------------------------------------- liveness
    def check_liveness(self) -> None:
        """Online hosts silent too long become unresponsive; unresponsive ones are
        pinged, and fenced if silent."""
        now = self.fleet.clock()
        for h in self.fleet.hosts():
            silent = now - h.last_seen
            if h.state == ONLINE and silent > h.heartbeat_interval + self.heartbeat_grace:
                before, after = self.fleet.update_host(
                    h.host, state=UNRESPONSIVE,
                    why=f"no heartbeat for {silent:.1f} s (interval {h.heartbeat_interval:g} s"
                        f" + grace {self.heartbeat_grace:g} s)")
                self._changed(before, after.state, after.why)
        for h in self.fleet.hosts():
            if h.state == UNRESPONSIVE and now - h.last_seen > h.heartbeat_interval + \
                    self.heartbeat_grace and now >= self._retry.get(h.host, (0, 0.0))[1]:
                self._confirm(h.host)
            elif h.state != UNRESPONSIVE:
                self._retry.pop(h.host, None)

    def _confirm(self, host: str) -> None:
        res = self.console.call("agent", "ping", {}, host=host, timeout=self.ping_timeout)
        if res.reply is not None:
            before, after = self.fleet.seen(host)
            self._changed(before, after.state, "it answered a ping")
            return
        fenced, how = self.fencer.fence(host)
        if not fenced:
            # Again later, backing off: a fence command is a power switch, not a probe.
            failures = self._retry.get(host, (0, 0.0))[0] + 1
            self._retry[host] = (failures, self.fleet.clock() + min(
                FENCE_RETRY_MAX_S, self.check_interval * 2.0 ** failures))
            why = f"silent and unanswered ping, but the fence step failed: {how}"
            before, after = self.fleet.update_host(host, why=why)
            if before is None or before.why != why:
                log.error("host %s is not confirmed down, so its VMs are not restarted: %s",
                          host, how)
                self.emit("host.fence_failed", {"host": host, "error": how})
            return
        before, after = self.fleet.update_host(
            host, state=DOWN, why=f"no heartbeat, no answer to a ping within "
                                  f"{self.ping_timeout:g} s; {how}")
        self._changed(before, DOWN, after.why)
        self.on_down(host)

    def confirm_down(self, host: str, who: str) -> str:
        """An operator says the host is off (the way one confirms a host was rebooted
        when no fence step can): after a ping goes unanswered, it is ``down`` and its HA
        VMs restart elsewhere. Raises ``RemoteError`` when that would be wrong."""
        h = self.fleet.host(host)
        if h is None:
            raise RemoteError(ErrorCode.NOT_FOUND, f"the manager knows no virt host {host!r}")
        if h.state == DOWN:
            return h.why
        if h.state != UNRESPONSIVE:
            raise RemoteError(ErrorCode.CONFLICT,
                              f"{host} is {h.state}, not unresponsive: only a silent host can "
                              "be confirmed down (to empty a working host, put it in "
                              "maintenance)", {"state": h.state})
        res = self.console.call("agent", "ping", {}, host=host, timeout=self.ping_timeout)
        if res.reply is not None:
            before, after = self.fleet.seen(host)
            self._changed(before, after.state, "it answered a ping")
            raise RemoteError(ErrorCode.CONFLICT, f"{host} answered a ping just now: it is "
                                                  "up, so it is not confirmed down")
        why = f"confirmed down by {who} (no answer to a ping within {self.ping_timeout:g} s)"
        before, after = self.fleet.update_host(host, state=DOWN, why=why)
        log.warning("host %s %s", host, why)
        self._changed(before, DOWN, why)
        self.on_down(host)
        return why

    # ---------------------------------------------------------------- listings
    def reconcile(self) -> int:
        """Settle every virt host that answers from its node.info and domain listing,
        and learn the XML of HA VMs not known or changed since. Returns how many hosts
        were settled."""
        asked = self.fleet.clock()
        found = self.console.discover(filter={"agent": "virt"}, idle=self.discovery_idle)
        hosts = [a.host for a in found]
        for info in found:
            before, after = self.fleet.seen(info.host)
            self.fleet.update_host(info.host, migration_uri=str(
                info.facts.get("migration_uri", "")))
            self._changed(before, after.state, "it answered discovery")
        settled = 0
        changes: set[str] = set()
        if hosts:
            nodes = self.console.fanout("virt", "node.info", {}, hosts,
                                        timeout=self.listing_timeout)
            listing = self.console.query("virt", "domain", hosts=hosts, limit=LISTING_LIMIT,
                                         timeout=self.listing_timeout)
            node_of = {r.host: r.reply.result for r in nodes.results
                       if r.reply is not None and r.reply.ok}
            for res in listing.results:
                if res.reply is None or not res.reply.ok:
                    continue
                result = res.reply.result or {}
                objects = result.get("objects", [])
                if result.get("total", len(objects)) > len(objects):
                    log.warning("virt host %s has more than %d domains: not settled",
                                res.host, len(objects))
                    continue
                changed, _ = self.fleet.reconcile(res.host, well_formed(objects),
                                                  node_of.get(res.host), asked=asked)
                changes.update(vm.name for vm in changed)
                settled += 1
        # An HA VM's XML is read when unknown or when the listing found the VM changed
        # (reading every one at each listing took 6.5 s of 16.5 at 2,000 HA VMs).
        answered = set(hosts)
        for vm in self.fleet.vms():
            if vm.ha and vm.host in answered and (not vm.xml or vm.name in changes):
                self.learn_xml(vm.name, vm.host)
        for h in self.fleet.hosts():
            if h.state == DOWN and any(v.ha for v in self.fleet.vms(h.host)):
                self.on_down(h.host)  # taken over from an instance that did not finish
            elif h.maintenance and h.state != DOWN and self.fleet.vms(h.host):
                self.on_maintenance(h.host)
        self.check_capacity()
        self.reconciled.set()
        return settled

    def check_capacity(self) -> dict[str, Any]:
        """n+1: warn (log and event, once per change) when the fleet could not restart
        the HA VMs of its largest host if it lost it now."""
        found = n_plus_one(self.fleet, config=self.placement)
        if found != self._capacity:
            self._capacity = found
            if not found["ok"]:
                log.warning("losing %s now would leave HA VMs with nowhere to go: %s",
                            found["largest_host"], ", ".join(found["unplaced"]))
            self.emit("capacity", found)
        return found

    def learn_xml(self, name: str, host: str) -> bool:
        """Keep the VM's domain XML: what restarts it elsewhere if its host dies."""
        res = self.console.call("virt", "domain.xml", {"name": name}, host=host,
                                timeout=self.listing_timeout)
        if res.reply is None or not res.reply.ok:
            return False
        xml = (res.reply.result or {}).get("xml")
        if isinstance(xml, str) and xml:
            self.fleet.update_vm(name, xml=xml)
            return True
        return False


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        else None
