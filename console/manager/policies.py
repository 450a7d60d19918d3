"""Balancing policies as plans over the placement engine: which moves the manager would
make, and why, on the fleet as it is now. Nothing here acts (``hostbus manager plan``);
each plan is simulated move by move, every move counted before the next.

- ``host_down``: what losing one host now would do to its VMs (HA ones restarted where,
  the others left down);
- ``even_distribution``: hosts above a memory (or CPU) threshold give VMs, smallest
  first, to the hosts placement chooses, until they are below it; no move may push its
  target above the threshold (so moves never thrash between two hosts);
- ``power_saving``: hosts below a low threshold are emptied onto the others (placement
  asked to consolidate) and would go to standby; a host is emptied only if all of its
  VMs fit elsewhere.

Memory is what decides in the simulation: a VM's share of its host's CPU is not known
(hosts report their load, not each VM's), so CPU only picks the hosts that give VMs.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, replace
from typing import Any

from console.manager.fleet import (
    DOWN,
    ONLINE,
    STANDBY,
    Fleet,
    HostRecord,
    VmRecord,
    host_view,
    place_away,
    vm_view,
)
from console.placement import PlacementConfig

POLICIES = ("host_down", "even_distribution", "power_saving")


@dataclass(frozen=True)
class Thresholds:
    #: even_distribution: a host using more than this fraction of its memory (or CPU)
    #: gives VMs away.
    balance_memory: float = 0.8
    balance_cpu: float = 0.8
    #: power_saving: a host using less than this fraction of memory and CPU is emptied.
    power_saving: float = 0.2


def memory_used(h: HostRecord) -> float | None:
    if not h.memory_bytes:
        return None
    return 1.0 - h.unallocated_memory_bytes / h.memory_bytes


class Simulation:
    """The fleet as a plan leaves it, move after move: records, and a copy of the
    fleet's placement index changed with them (a move costs O(hosts), not O(VMs))."""

    def __init__(self, fleet: Fleet, config: PlacementConfig | None) -> None:
        self.hosts, self.vms, self.index = fleet.snapshot()
        self.config = config
        self.moves: list[dict[str, Any]] = []
        self._on: dict[str, dict[str, None]] = {}
        for vm in self.vms.values():
            self._on.setdefault(vm.host, {})[vm.name] = None
        #: What ``undo`` puts back: (VM before, hosts before), one per change.
        self._undo: list[tuple[VmRecord | None, list[HostRecord]]] = []

    def on(self, host: str) -> list[VmRecord]:
        return sorted((self.vms[n] for n in self._on.get(host, ())),
                      key=lambda v: (v.memory_bytes, v.name))

    def target(self, vm: VmRecord, config: PlacementConfig | None = None) -> tuple[str | None,
                                                                                   str]:
        decision = place_away(vm, self.index, config=config or self.config)
        if not decision.ok:
            return None, decision.explain()
        return decision.chosen[vm.name], ""

    def set_host(self, record: HostRecord) -> None:
        self._undo.append((None, [self.hosts[record.host]]))
        self._put_host(record)

    def _put_host(self, record: HostRecord) -> None:
        self.hosts[record.host] = record
        self.index.set_host(host_view(record))

    def _put_vm(self, vm: VmRecord) -> None:
        before = self.vms[vm.name]
        self.vms[vm.name] = vm
        self.index.remove(vm_view(before))
        self.index.add(vm_view(vm))
        if before.host != vm.host:
            del self._on[before.host][vm.name]
            self._on.setdefault(vm.host, {})[vm.name] = None

    def move(self, vm: VmRecord, target: str, why: str) -> None:
        source = vm.host
        self._undo.append((self.vms[vm.name], [self.hosts[source], self.hosts[target]]))
        if vm.running:
            for host, sign in ((source, 1), (target, -1)):
                h = self.hosts[host]
                self._put_host(replace(
                    h, free_vcpus=h.free_vcpus + sign * vm.vcpus,
                    unallocated_memory_bytes=h.unallocated_memory_bytes
                    + sign * vm.memory_bytes))
        self._put_vm(replace(vm, host=target))
        self.moves.append({"vm": vm.name, "from_host": source, "to_host": target,
                           "ha": vm.ha, "why": why})

    def mark(self) -> tuple[int, int]:
        return len(self._undo), len(self.moves)

    def undo(self, mark: tuple[int, int]) -> None:
        """Back to how it was at ``mark()``, changes undone newest first."""
        changes, moves = mark
        while len(self._undo) > changes:
            vm, hosts = self._undo.pop()
            for h in reversed(hosts):
                self._put_host(h)
            if vm is not None:
                self._put_vm(vm)
        del self.moves[moves:]


def _active(h: HostRecord) -> bool:
    return h.state == ONLINE and not h.maintenance


def over_threshold(h: HostRecord, limits: Thresholds) -> bool:
    """even_distribution: the host uses more of its memory or CPU than it should."""
    used = memory_used(h)
    return (used is not None and used > limits.balance_memory) or (
        h.cpu_percent is not None and h.cpu_percent / 100 > limits.balance_cpu)


def plan(fleet: Fleet, policy: str, *, host_down: str | None = None,
         thresholds: Thresholds | None = None, config: PlacementConfig | None = None,
         givers: Collection[str] | None = None, keep: Collection[str] = ()) -> dict[str, Any]:
    """The moves ``policy`` would make now: ``{"policy", "moves": [{vm, from_host,
    to_host, ha, why}], "standby": [hosts], "left": [{vm, why}]}``. even_distribution
    only: ``givers``, the hosts that may give VMs (None: any above the threshold);
    ``keep``, VMs not to move (moved a moment ago)."""
    limits = thresholds or Thresholds()
    sim = Simulation(fleet, config)
    left: list[dict[str, Any]] = []
    standby: list[str] = []
    if policy == "host_down":
        if host_down is None or host_down not in sim.hosts:
            raise ValueError(f"no virt host {host_down!r} to plan the loss of")
        sim.set_host(replace(sim.hosts[host_down], state=DOWN))
        for vm in sorted(sim.on(host_down), key=lambda v: (-v.ha_priority, v.name)):
            if not vm.ha:
                left.append({"vm": vm.name, "why": "not HA: stays down with its host"})
                continue
            target, why = sim.target(vm)
            if target is None:
                left.append({"vm": vm.name, "why": why})
            else:
                sim.move(replace(vm, state="running"), target,
                         f"HA restart (priority {vm.ha_priority})")
    elif policy == "even_distribution":
        busy = sorted((h for h in sim.hosts.values() if _active(h) and over_threshold(h, limits)
                       and (givers is None or h.host in givers)),
                      key=lambda h: -(memory_used(h) or 0.0))
        for h in busy:
            for vm in sim.on(h.host):
                if not over_threshold(sim.hosts[h.host], limits):
                    break
                if not vm.running or vm.name in keep:
                    continue
                target, why = sim.target(vm)
                if target is None:
                    left.append({"vm": vm.name, "why": why})
                    continue
                after = sim.hosts[target]
                room = after.unallocated_memory_bytes - vm.memory_bytes
                if after.memory_bytes and 1 - room / after.memory_bytes > limits.balance_memory:
                    left.append({"vm": vm.name, "why": f"{target} would be above the "
                                 f"threshold ({limits.balance_memory:.0%}) in its turn"})
                    continue
                used = memory_used(sim.hosts[h.host]) or 0.0
                sim.move(vm, target, f"{h.host} uses {used:.0%} of its memory (threshold "
                                     f"{limits.balance_memory:.0%})")
    elif policy == "power_saving":
        consolidate = replace(config or PlacementConfig(), weights={
            "memory_free": 0.0, "vcpu_free": 0.0, "cpu_load": 0.0, "consolidate": 1.0})
        idle = sorted((h for h in sim.hosts.values() if _active(h)
                       and (memory_used(h) or 0.0) < limits.power_saving
                       and (h.cpu_percent is None or h.cpu_percent / 100 < limits.power_saving)),
                      key=lambda h: (len(sim.on(h.host)), h.host))
        active = sum(1 for o in sim.hosts.values() if _active(o))
        for h in idle:
            if active <= 1:
                break
            if any(m["to_host"] == h.host for m in sim.moves):
                continue  # it took VMs from a host emptied before it: it stays
            mark = sim.mark()
            sim.set_host(replace(h, state=STANDBY))  # nothing new goes there
            emptied = True
            for vm in sim.on(h.host):
                target, why = sim.target(vm, consolidate)
                if target is None:
                    emptied = False
                    break
                sim.move(vm, target, f"empty {h.host} ({memory_used(h) or 0.0:.0%} of its "
                                     f"memory used, threshold {limits.power_saving:.0%})")
            if emptied:
                standby.append(h.host)
                active -= 1
            else:
                sim.undo(mark)
    else:
        raise ValueError(f"unknown policy {policy!r}: {', '.join(POLICIES)}")
    return {"policy": policy, "host_down": host_down, "moves": sim.moves,
            "standby": standby, "left": left}


def n_plus_one(fleet: Fleet, *, config: PlacementConfig | None = None) -> dict[str, Any]:
    """Whether the fleet could restart every HA VM of its largest host (by memory) if it
    lost it now: ``{"ok", "largest_host", "unplaced": [VM names]}``."""
    hosts = [h for h in fleet.hosts() if h.state == ONLINE and h.memory_bytes]
    if len(hosts) < 2:
        return {"ok": len(hosts) == 0 or not any(v.ha for v in fleet.vms()),
                "largest_host": hosts[0].host if hosts else None,
                "unplaced": [v.name for v in fleet.vms() if v.ha]}
    largest = max(hosts, key=lambda h: (h.memory_bytes, h.host))
    result = plan(fleet, "host_down", host_down=largest.host, config=config)
    ha_left = {v.name for v in fleet.vms(largest.host) if v.ha}
    unplaced = sorted(m["vm"] for m in result["left"] if m["vm"] in ha_left)
    return {"ok": not unplaced, "largest_host": largest.host, "unplaced": unplaced}
