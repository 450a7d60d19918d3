"""What the manager does to VMs, one job at a time on a thread of its own: restarting the
HA VMs of a host confirmed down, and moving every VM off a host going into maintenance.

Every step is an event (``manager.<id>.ha.restart``, ``manager.<id>.move``), and every
step can be repeated: before a host's HA VMs are defined anywhere, every virt host that
answers lists its domains (once for the job), and a VM found on one (an earlier attempt,
by this instance or one that died) is adopted, not defined again. So a restart happens
once even when the job runs twice.

Moves (``parallel_moves`` at once, each target chosen and its room taken before the
next choice) use live migration (``virt.domain.migrate``) when both hosts offer a
``migration_uri``, and otherwise a cold migration: shut down (destroyed after
``shutdown_timeout``), define on the target from the source's XML, start there, undefine
on the source (its disks stay: a cold migration assumes storage both hosts reach at the
same path, as live migration without copying does).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from console.client import Console, HostResult
from console.manager.fleet import DOWN, LOST, Fleet, VmRecord
from console.manager.service import LISTING_LIMIT
from console.placement import PlacementConfig

log = logging.getLogger("hostbus.manager")
_STOP = object()


class StepFailed(Exception):
    """A call of a move or restart failed; the message says which and why."""


class Actions:
    def __init__(self, console: Console, fleet: Fleet, *, call_timeout: float = 60.0,
                 shutdown_timeout: float = 120.0,
                 emit: Callable[[str, dict[str, Any]], None] = lambda event, data: None,
                 allowed: Callable[[], bool] = lambda: True,
                 placement: PlacementConfig | None = None, parallel_moves: int = 2) -> None:
        """``parallel_moves``: VMs moved at once off a host in maintenance.
        ``allowed()`` says whether this instance may act now (it is the active one);
        a job taken while it may not is dropped (the next active instance redoes it)."""
        self.console = console
        self.fleet = fleet
        self.call_timeout = call_timeout
        self.shutdown_timeout = shutdown_timeout
        self.emit = emit
        self.allowed = allowed
        self.placement = placement
        self.parallel_moves = max(1, parallel_moves)
        self._placing = threading.RLock()
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._queued: set[tuple[str, str]] = set()
        self._balancing: list[dict[str, Any]] = []  # moves rebalance() handed over
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.idle = threading.Event()
        self.idle.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="hostbus-manager-actions",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._jobs.put(_STOP)
            self._thread.join(timeout=self.shutdown_timeout + self.call_timeout)
            self._thread = None

    def _submit(self, kind: str, host: str) -> None:
        with self._lock:
            if (kind, host) in self._queued:
                return
            self._queued.add((kind, host))
            self.idle.clear()
        self._jobs.put((kind, host))

    def restart_ha(self, host: str) -> None:
        """Queue the HA restarts of a host confirmed down (once while queued)."""
        self._submit("ha", host)

    def evacuate(self, host: str) -> None:
        """Queue moving every VM off a host in maintenance."""
        self._submit("evacuate", host)

    def rebalance(self, moves: list[dict[str, Any]]) -> None:
        """Queue a balancing round's moves ({vm, from_host, to_host, why}, a plan's)."""
        with self._lock:
            self._balancing.extend(moves)
        self._submit("balance", "")

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            kind, host = job
            try:
                if self.allowed():
                    {"ha": self._restart_host, "evacuate": self._evacuate,
                     "balance": self._balance}[kind](host)
            except Exception:
                log.exception("the %s job for host %s failed", kind, host)
            finally:
                with self._lock:
                    self._queued.discard(job)
                    if not self._queued:
                        self.idle.set()

    # ------------------------------------------------------------------ calls
    def _call(self, host: str, method: str, args: dict[str, Any],
              timeout: float | None = None) -> HostResult:
        return self.console.call("virt", method, args, host=host,
                                 timeout=timeout or self.call_timeout)

    def _ok(self, host: str, method: str, args: dict[str, Any],
            timeout: float | None = None) -> dict[str, Any]:
        res = self._call(host, method, args, timeout)
        if res.reply is None:
            raise StepFailed(f"{host} did not answer virt.{method}")
        if not res.reply.ok:
            err = res.reply.error or {}
            raise StepFailed(f"virt.{method} on {host}: {err.get('code')}: "
                             f"{err.get('message')}")
        return res.reply.result or {}

    def _where_are(self, names: set[str], exclude: str) -> dict[str, tuple[str, str]]:
        """VM name -> (host, state) for each of ``names`` that a virt host that answers
        (but ``exclude``) has: one listing of every host's domains, however many VMs
        are asked about (a query per VM to every host cost 1.3 s a VM at 1,000 hosts)."""
        hosts = [h.host for h in self.fleet.hosts() if h.host != exclude and h.state != DOWN]
        if not hosts or not names:
            return {}
        found: dict[str, tuple[str, str]] = {}
        listing = self.console.query("virt", "domain", hosts=hosts, limit=LISTING_LIMIT,
                                     timeout=self.call_timeout)
        for res in listing.results:
            objects = (res.reply.result or {}).get("objects", []) \
                if res.reply is not None and res.reply.ok else []
            for obj in objects:
                if isinstance(obj, dict) and obj.get("name") in names:
                    found[str(obj["name"])] = (res.host, str(obj.get("state", "")))
        return found

    def _choose(self, vm: VmRecord) -> tuple[str | None, str]:
        """A host for ``vm`` other than its own, or None and why not."""
        decision = self.fleet.place_away(vm, config=self.placement)
        if not decision.ok:
            return None, decision.explain()
        return decision.chosen[vm.name], ""

    def _took(self, host: str, vm: VmRecord, *, give_back: bool = False) -> None:
        """Count a VM going to ``host`` against its room until its next heartbeat (or
        give that room back: the move failed)."""
        sign = -1 if give_back else 1
        with self._placing:
            h = self.fleet.host(host)
            if h is not None:
                self.fleet.update_host(
                    host, free_vcpus=max(0, h.free_vcpus - sign * vm.vcpus),
                    unallocated_memory_bytes=max(
                        0, h.unallocated_memory_bytes - sign * vm.memory_bytes))

    # ------------------------------------------------------------- HA restart
    def _restart_host(self, host: str) -> None:
        h = self.fleet.host(host)
        if h is None or h.state != DOWN:
            return  # it came back: nothing to restart
        vms = self.fleet.vms(host)
        found: dict[str, tuple[str, str]] | None = None
        for vm in sorted(vms, key=lambda v: (-v.ha_priority, v.name)):
            if not vm.ha:
                if vm.state != LOST:
                    self.fleet.update_vm(vm.name, state=LOST)
                    self.emit("ha.restart", {"vm": vm.name, "from_host": host,
                                             "to_host": None, "status": "not_ha",
                                             "why": "not marked HA: it stays down with "
                                                    "its host"})
                continue
            if not self.allowed():
                return
            if found is None:  # asked once, before the first restart
                found = self._where_are({v.name for v in vms if v.ha}, host)
            self._restart(vm, host, found.get(vm.name))

    def _restart(self, vm: VmRecord, dead: str, existing: tuple[str, str] | None) -> None:
        """``existing``: (host, state) of a VM of that name another host already has."""
        event = {"vm": vm.name, "from_host": dead, "to_host": None}
        if existing is not None:
            target, state = existing
            log.info("HA VM %s is already on %s (%s): adopted", vm.name, target, state)
            event["to_host"] = target
            try:
                if state == "shutoff":
                    self._ok(target, "domain.start", {"name": vm.name})
            except StepFailed as exc:
                self.emit("ha.restart", {**event, "status": "failed", "why": str(exc)})
                return
            self.fleet.update_vm(vm.name, host=target, state="running")
            self.emit("ha.restart", {**event, "status": "completed",
                                     "why": "found already defined there"})
            return
        if not vm.xml:
            self.emit("ha.restart", {**event, "status": "failed",
                                     "why": "its domain XML was never learnt, so it cannot "
                                            "be defined elsewhere"})
            return
        target, why = self._choose(vm)
        if target is None:
            self.emit("ha.restart", {**event, "status": "failed", "why": why})
            log.error("cannot restart HA VM %s of %s: %s", vm.name, dead, why)
            return
        event["to_host"] = target
        self.emit("ha.restart", {**event, "status": "started"})
        try:
            self._ok(target, "domain.define", {"name": vm.name, "xml": vm.xml, "start": True})
        except StepFailed as exc:
            self.emit("ha.restart", {**event, "status": "failed", "why": str(exc)})
            log.error("HA restart of %s on %s failed: %s", vm.name, target, exc)
            return
        self.fleet.update_vm(vm.name, host=target, state="running")
        self._took(target, vm)
        log.info("HA VM %s of %s restarted on %s", vm.name, dead, target)
        self.emit("ha.restart", {**event, "status": "completed"})

    # ------------------------------------------------------------- maintenance
    def _evacuate(self, host: str) -> None:
        h = self.fleet.host(host)
        if h is None or not h.maintenance:
            return
        def one(vm: VmRecord) -> bool | None:
            if not self.allowed() or not (self.fleet.host(host) or h).maintenance:
                return None  # no longer ours to do, or maintenance ended
            return self._move(vm, host)

        with ThreadPoolExecutor(max_workers=self.parallel_moves,
                                thread_name_prefix="hostbus-manager-move") as pool:
            outcomes = list(pool.map(one, self.fleet.vms(host)))
        if None in outcomes:
            return
        moved, failed = outcomes.count(True), outcomes.count(False)
        self.emit("maintenance", {"host": host, "status": "evacuated" if not failed
                                  else "incomplete", "moved": moved, "failed": failed})

    def _balance(self, _: str) -> None:
        """A balancing round: each planned move that still makes sense (the VM still
        runs where the plan saw it, the target still takes VMs), one after the other."""
        with self._lock:
            moves, self._balancing = self._balancing, []
        for move in moves:
            vm, target = self.fleet.vm(move["vm"]), self.fleet.host(move["to_host"])
            if vm is None or vm.host != move["from_host"] or not vm.running or \
                    target is None or not target.placeable or not self.allowed():
                continue
            self._move(vm, vm.host, to=target.host, reason=f"balance: {move['why']}")

    def _move(self, vm: VmRecord, source: str, *, to: str | None = None,
              reason: str = "") -> bool:
        """Move ``vm`` off ``source``: to ``to`` (a plan's choice), or where placement
        chooses now. ``reason`` goes into the started event's ``why``."""
        with self._placing:  # one choice at a time, its room taken before the next
            target, why = (to, "") if to is not None else self._choose(vm)
            if target is not None:
                self._took(target, vm)
        event: dict[str, Any] = {"vm": vm.name, "from_host": source, "to_host": target}
        if target is None:
            self.emit("move", {**event, "step": "failed", "why": why})
            return False
        src, dst = self.fleet.host(source), self.fleet.host(target)
        live = bool(src and dst and src.migration_uri and dst.migration_uri and vm.running)
        self.emit("move", {**event, "step": "started", "how": "live" if live else "cold",
                           **({"why": reason} if reason else {})})
        try:
            if live:
                assert dst is not None
                self._ok(source, "domain.migrate",
                         {"name": vm.name, "target_uri": dst.migration_uri,
                          "target_host": target}, timeout=600.0)
            else:
                self._cold(vm, source, target, event)
        except StepFailed as exc:
            self._took(target, vm, give_back=True)
            self.emit("move", {**event, "step": "failed", "why": str(exc)})
            log.error("moving %s from %s to %s failed: %s", vm.name, source, target, exc)
            return False
        self.fleet.update_vm(vm.name, host=target)
        self.emit("move", {**event, "step": "completed"})
        return True

    def _cold(self, vm: VmRecord, source: str, target: str, event: dict[str, Any]) -> None:
        described = self._ok(source, "domain.xml", {"name": vm.name})
        xml = str(described.get("xml", ""))
        was_running = vm.running
        if was_running:
            res = self._call(source, "domain.shutdown",
                             {"name": vm.name, "timeout_s": self.shutdown_timeout},
                             timeout=self.shutdown_timeout + self.call_timeout)
            if res.reply is None or not res.reply.ok:
                self._ok(source, "domain.destroy", {"name": vm.name})
                self.emit("move", {**event, "step": "destroyed",
                                   "why": "it did not shut down in time"})
            else:
                self.emit("move", {**event, "step": "shut_down"})
        try:
            self._ok(target, "domain.define", {"name": vm.name, "xml": xml,
                                               "start": was_running})
        except StepFailed:
            if was_running:  # put it back as it was
                self._call(source, "domain.start", {"name": vm.name})
            raise
        self.emit("move", {**event, "step": "started_on_target" if was_running
                           else "defined_on_target"})
        self._ok(source, "domain.undefine", {"name": vm.name, "remove_storage": False})
        self.emit("move", {**event, "step": "undefined_on_source"})
        self.fleet.update_vm(vm.name, xml=xml if vm.ha else vm.xml)
