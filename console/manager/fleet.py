"""The manager's live model of the fleet: virt hosts and their VMs, kept in SQLite so it
survives the manager's restart (and is what a standby instance starts from).

A host is in one of these states:

- ``online``: it heartbeats;
- ``unresponsive``: its heartbeats stopped for longer than the grace, or it said
  ``offline``; not yet known to be down (its VMs may still run);
- ``down``: confirmed down (no answer to a ping, and the fence step, when one is
  configured, succeeded): its VMs do not run, and HA VMs may be restarted elsewhere;
- ``maintenance`` (a flag kept apart from liveness): no new placements, its VMs are
  moved away;
- ``standby``: powered down on purpose by the manager (power saving).

Each change comes from one of three sources, none needing the others: events (agent
online, heartbeat, offline; host metrics; virt lifecycle; provisioning progress),
listings by call (``virt.node.info`` and ``virt.domain`` objects, every
``reconcile_interval``), and the manager's own decisions (HA restarts, moves).

The class is thread-safe; every change is written through at once. It keeps, beside
the records, the placement engine's index of them (``console.placement.Fleet``), changed
with each record, so a decision (``place_away``) costs O(hosts), not O(VMs): building
the index again for each decision cost 17-60 ms at 10,000 VMs.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from console.placement import (
    MAINTENANCE,
    OFFLINE,
    HostView,
    Placement,
    PlacementConfig,
    PlacementRequest,
    VmView,
    place,
)
from console.placement import Fleet as PlacementIndex
from hostbus.files import open_database

log = logging.getLogger("hostbus.manager")

ONLINE, UNRESPONSIVE, DOWN, STANDBY = "online", "unresponsive", "down", "standby"
HOST_STATES = (ONLINE, UNRESPONSIVE, DOWN, STANDBY)
#: libvirt states in which a domain holds its host's CPUs and memory.
RUNNING_STATES = frozenset({"running", "blocked", "paused", "shutdown", "crashed",
                            "pmsuspended", "nostate"})
#: Lifecycle events (schemas/agents/virt.json) and the state they leave a domain in.
EVENT_STATES = {"started": "running", "resumed": "running", "suspended": "paused",
                "pmsuspended": "pmsuspended", "stopped": "shutoff", "crashed": "crashed"}
#: A VM whose host is down and that has not run anywhere since.
LOST = "lost"
MIB = 1 << 20


@dataclass(frozen=True)
class HostRecord:
    """One virt host as the manager sees it (what placement reads)."""

    host: str
    state: str = ONLINE
    maintenance: bool = False
    cpus: int = 0
    memory_bytes: int = 0
    free_vcpus: int = 0
    unallocated_memory_bytes: int = 0
    vcpus_allocated: int = 0
    cpu_percent: float | None = None  # from host.metrics, when the host agent runs
    load1: float | None = None
    migration_uri: str = ""
    heartbeat_interval: float = 10.0
    last_seen: float = 0.0  # wall-clock time of the last word from it
    why: str = ""  # why it is in its state

    @property
    def placeable(self) -> bool:
        """Whether a VM may be put there: online and not in maintenance."""
        return self.state == ONLINE and not self.maintenance

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "last_seen": _rfc3339(self.last_seen)}


@dataclass(frozen=True)
class VmRecord:
    """One VM: where it is, its state, its size, whether it is highly available."""

    name: str
    host: str
    uuid: str = ""
    state: str = "shutoff"
    vcpus: int = 0
    memory_bytes: int = 0
    ha: bool = False
    ha_priority: int = 0
    owner: str = ""
    xml: str = field(default="", repr=False)  # the last known domain XML (HA restarts)
    updated: float = 0.0

    @property
    def running(self) -> bool:
        return self.state in RUNNING_STATES

    def to_dict(self, *, with_xml: bool = False) -> dict[str, Any]:
        data = asdict(self)
        if not with_xml:
            del data["xml"]
        return {**data, "updated": _rfc3339(self.updated)}


def _rfc3339(at: float) -> str | None:
    if not at:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def host_view(record: HostRecord) -> HostView:
    """A host as the placement engine sees it: ``down`` is its ``offline``, and a host
    in maintenance is ``maintenance`` whatever its liveness, so nothing new goes there."""
    state = MAINTENANCE if record.maintenance else (
        OFFLINE if record.state == DOWN else record.state)
    return HostView(
        name=record.host, state=state, cpus=record.cpus, memory_mib=record.memory_bytes // MIB,
        free_memory_mib=record.unallocated_memory_bytes // MIB if record.memory_bytes else None,
        free_vcpus=record.free_vcpus if record.cpus else None,
        cpu_load=record.cpu_percent / 100 if record.cpu_percent is not None else None)


def vm_view(record: VmRecord) -> VmView:
    return VmView(name=record.name, host=record.host, vcpus=record.vcpus,
                  memory_mib=record.memory_bytes // MIB, state=record.state, ha=record.ha,
                  owner=record.owner)


def place_away(vm: VmRecord, index: PlacementIndex, *,
               config: PlacementConfig | None = None) -> Placement:
    """Where ``vm`` (as it is now) would go, leaving the host it is on, in ``index`` (a
    placement index of the fleet, left as it was). Restarts and evacuations ask without
    the HA reservation: they are what the reservation was kept for."""
    request = PlacementRequest(vcpus=max(1, vm.vcpus), memory_mib=max(1, vm.memory_bytes // MIB),
                               names=(vm.name,), ha=vm.ha, ha_reservation=False,
                               owner=vm.owner, avoid_hosts=(vm.host,))
    with index.configured(config):
        return place(request, index)


class Fleet:
    """Hosts and VMs in memory, written through to SQLite (``path``). ``placement``:
    the engine's settings its decisions use by default."""

    def __init__(self, path: str | Path, *, clock: Any = time.time,
                 placement: PlacementConfig | None = None) -> None:
        self.path = Path(path)
        self.clock = clock
        self.placement = placement or PlacementConfig()
        self._lock = threading.RLock()
        self._db = open_database(self.path, synchronous="NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS hosts (host TEXT PRIMARY KEY, "
                         "data TEXT NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS vms (name TEXT PRIMARY KEY, "
                         "data TEXT NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS owners (request_id TEXT PRIMARY KEY, "
                         "owner TEXT NOT NULL)")
        self._hosts: dict[str, HostRecord] = {}
        self._vms: dict[str, VmRecord] = {}
        self._on: dict[str, dict[str, None]] = {}  # host -> names of its VMs
        self._index = PlacementIndex(config=self.placement)
        self.reload()

    def reload(self) -> None:
        """Read the state file again: what another instance sharing it wrote while this
        one was standby."""
        with self._lock:
            self._hosts = {h: HostRecord(**json.loads(d)) for h, d in
                           self._db.execute("SELECT host, data FROM hosts").fetchall()}
            self._vms = {n: VmRecord(**json.loads(d)) for n, d in
                         self._db.execute("SELECT name, data FROM vms").fetchall()}
            self._on = {}
            for vm in self._vms.values():
                self._on.setdefault(vm.host, {})[vm.name] = None
            self._index = PlacementIndex((host_view(h) for h in self._hosts.values()),
                                         (vm_view(v) for v in self._vms.values()),
                                         self.placement)

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------------ reading
    def hosts(self) -> list[HostRecord]:
        with self._lock:
            return sorted(self._hosts.values(), key=lambda h: h.host)

    def host(self, host: str) -> HostRecord | None:
        with self._lock:
            return self._hosts.get(host)

    def vms(self, host: str | None = None) -> list[VmRecord]:
        with self._lock:
            if host is not None:
                vms = self._vms
                return sorted((vms[n] for n in self._on.get(host, ())), key=lambda v: v.name)
            return sorted(self._vms.values(), key=lambda v: (v.host, v.name))

    def counts(self) -> dict[str, int]:
        """Host -> how many VMs the manager knows there."""
        with self._lock:
            return {host: len(names) for host, names in self._on.items() if names}

    # --------------------------------------------------------------- placing
    def place_away(self, vm: VmRecord, *, config: PlacementConfig | None = None) -> Placement:
        """Where ``vm`` would go, leaving its host, on the fleet as it is now (see the
        module's ``place_away``); ``config`` defaults to the fleet's ``placement``."""
        with self._lock:
            return place_away(vm, self._index, config=config)

    def snapshot(self) -> tuple[dict[str, HostRecord], dict[str, VmRecord], PlacementIndex]:
        """The hosts, the VMs and a copy of the placement index, at one instant (what a
        plan simulates its moves on)."""
        with self._lock:
            return dict(self._hosts), dict(self._vms), self._index.copy()

    def vm(self, name: str) -> VmRecord | None:
        with self._lock:
            return self._vms.get(name)

    # ---------------------------------------------------------------- writing
    def _put_host(self, view: HostRecord) -> HostRecord:
        before = self._hosts.get(view.host)
        self._hosts[view.host] = view
        seen = host_view(view)
        if before is None or host_view(before) != seen:
            self._index.set_host(seen)
        self._db.execute("INSERT OR REPLACE INTO hosts (host, data) VALUES (?, ?)",
                         (view.host, json.dumps(asdict(view))))
        return view

    def _put_vm(self, view: VmRecord) -> VmRecord:
        before = self._vms.get(view.name)
        self._vms[view.name] = view
        if before is not None:
            if before.host != view.host:
                self._forget_on(before)
            old, new = vm_view(before), vm_view(view)
            if old != new:
                self._index.remove(old)
                self._index.add(new)
        else:
            self._index.add(vm_view(view))
        self._on.setdefault(view.host, {})[view.name] = None
        self._db.execute("INSERT OR REPLACE INTO vms (name, data) VALUES (?, ?)",
                         (view.name, json.dumps(asdict(view))))
        return view

    def _forget_on(self, vm: VmRecord) -> None:
        names = self._on.get(vm.host)
        if names is not None:
            names.pop(vm.name, None)
            if not names:
                del self._on[vm.host]

    def _drop_vm(self, name: str) -> None:
        before = self._vms.pop(name, None)
        if before is not None:
            self._forget_on(before)
            self._index.remove(vm_view(before))
        self._db.execute("DELETE FROM vms WHERE name = ?", (name,))

    def update_host(self, host: str, **fields: Any) -> tuple[HostRecord | None, HostRecord]:
        """Change a host's fields (made if new); returns (before, after)."""
        with self._lock:
            before = self._hosts.get(host)
            after = replace(before or HostRecord(host=host), **fields)
            if after != before:
                self._put_host(after)
            return before, after

    def update_vm(self, name: str, **fields: Any) -> VmRecord | None:
        """Change a known VM's fields; None if the manager does not know it."""
        with self._lock:
            before = self._vms.get(name)
            if before is None:
                return None
            after = replace(before, **fields, updated=self.clock())
            return self._put_vm(after) if after != before else before

    def seen(self, host: str, *, interval: float | None = None) -> tuple[HostRecord | None,
                                                                          HostRecord]:
        """The host spoke (online, heartbeat, metrics, a reply): it is online, unless
        the manager put it in standby."""
        fields: dict[str, Any] = {"last_seen": self.clock()}
        if interval:
            fields["heartbeat_interval"] = float(interval)
        with self._lock:
            before = self._hosts.get(host)
            if before is None or before.state != STANDBY:
                fields.update(state=ONLINE, why="")
            return self.update_host(host, **fields)

    # ------------------------------------------------------------------ events
    def apply_lifecycle(self, host: str, data: dict[str, Any]) -> VmRecord | None:
        """A ``virt.HOST.domain.lifecycle`` event. A VM known elsewhere that now shows up
        here (defined, started) has moved; ``undefined`` on its own host forgets it."""
        name, event = str(data.get("name", "")), str(data.get("event", ""))
        if not name:
            return None
        with self._lock:
            vm = self._vms.get(name)
            if event == "undefined":
                if vm is not None and vm.host == host:
                    self._drop_vm(name)
                return None
            if vm is None:
                return self._put_vm(VmRecord(name=name, host=host, uuid=str(data.get("uuid", "")),
                                           state=EVENT_STATES.get(event, "shutoff"),
                                           updated=self.clock()))
            if vm.host != host and event not in ("defined", "started", "resumed"):
                return vm  # a late word from where it was: the new host speaks for it
            state = EVENT_STATES.get(event, vm.state if vm.host == host else "shutoff")
            return self._put_vm(replace(vm, host=host, state=state,
                                        uuid=str(data.get("uuid", vm.uuid)),
                                        updated=self.clock()))

    def provisioned(self, name: str, host: str, *, owner: str = "", ha: bool = False,
                    ha_priority: int = 0) -> VmRecord:
        """A VM the provisioner defined and started on ``host``: known from here (its
        host's events may come later), with its owner and, when ``ha``, marked highly
        available (a flag set otherwise is never cleared here)."""
        with self._lock:
            vm = self._vms.get(name)
            if vm is None:
                vm = VmRecord(name=name, host=host, state="running", updated=self.clock())
            fields: dict[str, Any] = {}
            if owner:
                fields["owner"] = owner
            if ha:
                fields.update(ha=True, ha_priority=ha_priority)
            after = replace(vm, **fields)
            return self._put_vm(after) if after != vm or name not in self._vms else vm

    def set_owner(self, request_id: str, owner: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO owners (request_id, owner) VALUES (?, ?)",
                             (request_id, owner))

    def owner_of(self, request_id: str) -> str:
        with self._lock:
            row = self._db.execute("SELECT owner FROM owners WHERE request_id = ?",
                                   (request_id,)).fetchone()
        return str(row[0]) if row else ""

    # ---------------------------------------------------------------- listings
    def reconcile(self, host: str, domains: Iterable[dict[str, Any]],
                  node: dict[str, Any] | None = None, *,
                  asked: float | None = None) -> tuple[list[VmRecord], list[str]]:
        """Settle one host from a full listing of its domains (``virt.domain`` objects)
        and its ``node.info``, asked for at time ``asked``: a VM changed since (by an
        event, or by the manager itself) is newer than the listing and left as it is.
        Returns (VMs added or changed, names forgotten: known on this host and no
        longer there)."""
        since = self.clock() if asked is None else asked
        changed: list[VmRecord] = []
        listed: set[str] = set()
        stale: list[str] = []
        with self._lock:
            if node is not None:
                self.update_host(host, **{k: int(node[k]) for k in (
                    "cpus", "memory_bytes", "free_vcpus", "unallocated_memory_bytes",
                    "vcpus_allocated") if isinstance(node.get(k), int)})
            for dom in domains:
                name = str(dom["name"])
                listed.add(name)
                vm = self._vms.get(name) or VmRecord(name=name, host=host)
                if vm.updated > since:
                    continue
                if vm.host != host and vm.running and dom.get("state") == "shutoff":
                    # A stale copy (a host back after its HA VMs were restarted
                    # elsewhere): the running one is the VM.
                    stale.append(name)
                    continue
                new = replace(vm, host=host, uuid=str(dom.get("uuid", vm.uuid)),
                              state=str(dom.get("state", vm.state)),
                              vcpus=int(dom.get("vcpus", vm.vcpus)),
                              memory_bytes=int(dom.get("memory_bytes", vm.memory_bytes)))
                if new != vm or name not in self._vms:
                    changed.append(self._put_vm(replace(new, updated=self.clock())))
            gone = [n for n in self._on.get(host, ()) if n not in listed
                    and self._vms[n].updated <= since]
            for name in gone:
                self._drop_vm(name)
        if stale:
            log.warning("host %s still has shut-off copies of VMs running elsewhere (left "
                        "alone; undefine them there once checked): %s", host,
                        ", ".join(stale))
        return changed, gone
