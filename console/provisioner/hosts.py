"""The virt hosts as the provisioner places on them, kept between requests so a request
asks no host anything before its VMs are defined.

``refresh`` (at start, every ``interval`` seconds, and when a request finds no room)
discovers the virt hosts and asks each for ``node.info`` and ``template.list``: O(hosts)
calls per interval, not per request. A host's VM lifecycle events (``changed``, from
the tracker) have just that host asked for ``node.info`` again, a moment later and
once for a burst of events, so room freed or taken by anyone shows within a second.
What the provisioner itself places is held back from each host's last report
(``Fleet.add(unreported=True)``) until a report asked for after that VM was defined
counts it; a report older than the one a host has is never applied. What a host was
given in the moment before its report shows a VM someone else started is not checked
again: the virt agent defines what it is asked (a hypervisor that cannot start it fails
that request, which says so).

Thread-safe: requests reserve and settle concurrently under one lock, and the lock is
never held over a call to a host.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from console.client import Console
from console.placement import (
    OFFLINE,
    ONLINE,
    UNRESPONSIVE,
    Fleet,
    HostView,
    Placement,
    PlacementConfig,
    PlacementRequest,
    TemplateLimits,
    VmView,
    place,
)

log = logging.getLogger("hostbus.provisioner")


@dataclass
class Reservation:
    vm: VmView
    defined_at: float | None = None  # monotonic; None while its define is in flight


@dataclass
class HostBook:
    console: Console
    config: PlacementConfig = field(default_factory=PlacementConfig)
    call_timeout: float = 60.0
    discovery_idle: float = 0.3
    interval: float = 10.0
    #: Seconds a host's events are gathered before it is asked again.
    settle_delay: float = 0.3

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.fleet = Fleet(config=self.config)
        self._held: dict[str, list[Reservation]] = {}  # host -> VMs not in its report
        self._asked_at: dict[str, float] = {}  # host -> when its view's report was asked
        self._last_full = float("-inf")  # when the last full refresh was asked
        self._refreshing = threading.Lock()  # one refresh at a time
        self._changed: set[str] = set()  # hosts whose events came since they were asked
        self._wake = threading.Event()
        #: Set once the hosts have been asked at least once.
        self.refreshed = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, *, after: threading.Event | None = None) -> None:
        """Ask the hosts now (once ``after`` is set, or ``call_timeout`` has passed),
        then every ``interval`` seconds, on a thread of its own."""
        self._thread = threading.Thread(target=self._run, args=(after,),
                                        name="hostbus-host-book", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.call_timeout + 5)
            self._thread = None

    def changed(self, host: str) -> None:
        """A VM of ``host`` changed (a lifecycle event): ask it again soon."""
        with self._lock:
            self._changed.add(host)
        self._wake.set()

    def _run(self, after: threading.Event | None) -> None:
        if after is not None:
            # One discovery at a time at start: two at once on a busy machine can each
            # end their idle window before a slow host answers.
            after.wait(self.call_timeout)
        failures = 0
        due = time.monotonic()
        while not self._stop.is_set():
            self._wake.wait(max(0.0, due - time.monotonic()))
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                if time.monotonic() >= due:
                    online = self.refresh()
                    log.debug("%d virt hosts online", online)
                    due = time.monotonic() + self.interval
                elif self._changed and not self._stop.wait(self.settle_delay):
                    with self._lock:
                        hosts, self._changed = sorted(self._changed), set()
                    self.refresh_hosts(hosts)
                failures = 0
            except Exception as exc:
                failures += 1
                wait = min(self.interval, 2.0 ** min(failures, 8) / 4)
                log.warning("could not ask the virt hosts what they have free (%s); trying "
                            "again in %g s", exc, wait)
                due = time.monotonic() + wait

    # ------------------------------------------------------------- refreshes
    def refresh(self, *, unless_since: float | None = None) -> int:
        """Ask every virt host what it has free; returns how many answered in full.
        ``unless_since``: skip it if a full refresh was asked since then (requests that
        all found no room at once share one). Raises ``HostbusError`` if the broker is
        not there."""
        with self._refreshing:
            if unless_since is not None and self._last_full >= unless_since:
                return len(self.online())
            asked = time.monotonic()
            found = self.console.discover(filter={"agent": "virt"}, idle=self.discovery_idle)
            facts = {a.host: a.facts for a in found}
            views = self._ask([a.host for a in found], facts, with_templates=True)
            with self._lock:
                for name in list(self.fleet.hosts):
                    if name not in views:  # did not answer discovery: gone or down
                        old = self.fleet.hosts[name]
                        views[name] = HostView(name, OFFLINE, old.cpus, old.memory_mib,
                                               labels=old.labels, templates=old.templates)
                self._apply(views, asked)
                self._last_full = asked
        self.refreshed.set()
        return sum(1 for v in views.values() if v.state == ONLINE)

    def refresh_hosts(self, hosts: list[str]) -> None:
        """Ask just these (known) hosts for ``node.info`` again."""
        with self._lock:
            known = {h: self.fleet.hosts[h] for h in hosts if h in self.fleet.hosts}
        if not known:
            return
        asked = time.monotonic()
        views = self._ask(sorted(known), {h: v.labels for h, v in known.items()},
                          templates={h: v.templates for h, v in known.items()})
        with self._lock:
            self._apply(views, asked)

    def _ask(self, names: list[str], facts: dict[str, Any], *, with_templates: bool = False,
             templates: dict[str, Any] | None = None) -> dict[str, HostView]:
        if not names:
            return {}
        nodes = self.console.fanout("virt", "node.info", {}, names, timeout=self.call_timeout)
        catalogs: dict[str, dict[str, TemplateLimits]] = dict(templates or {})
        if with_templates:
            tpls = self.console.fanout("virt", "template.list", {}, names,
                                       timeout=self.call_timeout)
            for res in tpls.results:
                if res.reply is not None and res.reply.ok:
                    catalogs[res.host] = templates_of(res.reply.result or {})
        views: dict[str, HostView] = {}
        for res in nodes.results:
            ok = res.reply is not None and res.reply.ok and res.host in catalogs
            views[res.host] = host_view(res.host, res.reply.result if ok and res.reply else None,
                                        catalogs.get(res.host), dict(facts.get(res.host, {})))
        return views

    def _apply(self, views: dict[str, HostView], asked: float) -> None:
        """Take reports asked for at ``asked``, unless a host has a newer one (call with
        ``_lock`` held)."""
        for name, view in views.items():
            if self._asked_at.get(name, float("-inf")) > asked:
                continue
            self._asked_at[name] = asked
            self.fleet.set_host(view)
            if view.state == ONLINE:
                self._settle(name, asked)

    def _settle(self, host: str, asked: float) -> None:
        """Drop what a report asked for at ``asked`` already counts: VMs whose define
        was answered before. One answered after may be in the report too; it stays held
        (counted twice: less room, never more) until the next report of that host, which
        its own lifecycle events bring within a second."""
        kept = []
        for held in self._held.get(host, []):
            if held.defined_at is not None and held.defined_at < asked:
                self.fleet.remove(held.vm, unreported=True)
            else:
                kept.append(held)
        self._held[host] = kept

    # ------------------------------------------------------------- placing
    def reserve(self, request: PlacementRequest) -> Placement:
        """Place ``request`` and hold its room until ``defined`` or ``cancel``; a refusal
        holds nothing."""
        with self._lock:
            decision = place(request, self.fleet)
            if decision.ok:
                for name, host in decision.chosen.items():
                    self._hold(VmView(name, host, request.vcpus, request.memory_mib,
                                      "defining", owner=request.owner))
            return decision

    def hold(self, name: str, host: str, vcpus: int, memory_mib: int) -> None:
        """Hold room for a VM placed by an earlier attempt (a redelivered request)."""
        with self._lock:
            if not self._find(name, host):
                self._hold(VmView(name, host, vcpus, memory_mib, "defining"))

    def _hold(self, vm: VmView) -> None:
        if vm.host not in self.fleet.hosts:
            return  # a host not seen yet: its first report will count the VM
        self.fleet.add(vm, unreported=True)
        self._held.setdefault(vm.host, []).append(Reservation(vm))

    def _find(self, name: str, host: str) -> Reservation | None:
        for held in self._held.get(host, []):
            if held.vm.name == name:
                return held
        return None

    def defined(self, name: str, host: str) -> None:
        """The VM exists on ``host``: the next report asked for from now counts it."""
        with self._lock:
            held = self._find(name, host)
            if held is not None and held.defined_at is None:
                held.defined_at = time.monotonic()

    def cancel(self, name: str, host: str) -> None:
        """The VM was removed again (a roll back): give its room back."""
        with self._lock:
            held = self._find(name, host)
            if held is not None:
                self._held[host].remove(held)
                self.fleet.remove(held.vm, unreported=True)

    def settle(self, name: str, host: str) -> None:
        """A request is done with this VM: room held for it but never used (its define
        failed or never came) is given back; a defined VM stays held until a report."""
        with self._lock:
            held = self._find(name, host)
            if held is not None and held.defined_at is None:
                self._held[host].remove(held)
                self.fleet.remove(held.vm, unreported=True)

    def online(self) -> list[str]:
        with self._lock:
            return sorted(n for n, h in self.fleet.hosts.items() if h.state == ONLINE)

    def views(self) -> list[HostView]:
        with self._lock:
            return [self.fleet.hosts[n] for n in sorted(self.fleet.hosts)]


def templates_of(listed: dict[str, Any]) -> dict[str, TemplateLimits]:
    out = {}
    for tpl in listed.get("templates", []):
        try:
            out[str(tpl["name"])] = TemplateLimits(
                int(tpl["vcpus"]), int(tpl["memory_mib"]), int(tpl["max_vcpus"]),
                int(tpl["max_memory_mib"]), ha=tpl.get("ha") is True,
                ha_priority=int(tpl.get("ha_priority") or 0))
        except (KeyError, TypeError, ValueError):
            continue  # a template the agent describes badly is not offered
    return out


def host_view(name: str, node: dict[str, Any] | None,
              templates: dict[str, TemplateLimits] | None,
              facts: dict[str, Any]) -> HostView:
    """A virt agent's ``node.info`` as the engine sees it (None: it did not answer)."""
    if node is None:
        return HostView(name, UNRESPONSIVE, labels=facts, templates=templates or {})
    try:
        memory = int(node["memory_bytes"]) >> 20
        free = int(node["unallocated_memory_bytes"]) >> 20
        cpus = int(node["cpus"])
        free_vcpus = int(node["free_vcpus"])
        allocated = int(node.get("vcpus_allocated", 0))
    except (KeyError, TypeError, ValueError):
        return HostView(name, UNRESPONSIVE, labels=facts, templates=templates or {})
    return HostView(name, ONLINE, cpus=cpus, memory_mib=memory, free_memory_mib=free,
                    free_vcpus=free_vcpus, labels=facts, templates=templates or {},
                    vcpu_capacity=free_vcpus + allocated)
