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

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from console.manager.fleet import DOWN, ONLINE, STANDBY, Fleet, HostRecord, VmRecord
from console.manager.placing import place_away
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
    """The fleet as a plan leaves it, move after move."""

    def __init__(self, hosts: Iterable[HostRecord], vms: Iterable[VmRecord],
                 config: PlacementConfig | None) -> None:
        self.hosts = {h.host: h for h in hosts}
        self.vms = {v.name: v for v in vms}
        self.config = config
        self.moves: list[dict[str, Any]] = []

    def on(self, host: str) -> list[VmRecord]:
        return sorted((v for v in self.vms.values() if v.host == host),
                      key=lambda v: (v.memory_bytes, v.name))

    def target(self, vm: VmRecord, config: PlacementConfig | None = None) -> tuple[str | None,
                                                                                   str]:
        decision = place_away(vm, self.hosts.values(), self.vms.values(),
                              config=config or self.config)
        if not decision.ok:
            return None, decision.explain()
        return decision.chosen[vm.name], ""

    def move(self, vm: VmRecord, target: str, why: str) -> None:
        source = vm.host
        holds = vm.running
        if holds:
            for host, sign in ((source, 1), (target, -1)):
                h = self.hosts[host]
                self.hosts[host] = replace(
                    h, free_vcpus=h.free_vcpus + sign * vm.vcpus,
                    unallocated_memory_bytes=h.unallocated_memory_bytes
                    + sign * vm.memory_bytes)
        self.vms[vm.name] = replace(vm, host=target)
        self.moves.append({"vm": vm.name, "from_host": source, "to_host": target,
                           "ha": vm.ha, "why": why})


def _active(h: HostRecord) -> bool:
    return h.state == ONLINE and not h.maintenance


def plan(fleet: Fleet, policy: str, *, host_down: str | None = None,
         thresholds: Thresholds | None = None,
         config: PlacementConfig | None = None) -> dict[str, Any]:
    """The moves ``policy`` would make now: ``{"policy", "moves": [{vm, from_host,
    to_host, ha, why}], "standby": [hosts], "left": [{vm, why}]}``."""
    limits = thresholds or Thresholds()
    sim = Simulation(fleet.hosts(), fleet.vms(), config)
    left: list[dict[str, Any]] = []
    standby: list[str] = []
    if policy == "host_down":
        if host_down is None or host_down not in sim.hosts:
            raise ValueError(f"no virt host {host_down!r} to plan the loss of")
        sim.hosts[host_down] = replace(sim.hosts[host_down], state=DOWN)
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
        def over(h: HostRecord) -> bool:
            used = memory_used(h)
            return (used is not None and used > limits.balance_memory) or (
                h.cpu_percent is not None and h.cpu_percent / 100 > limits.balance_cpu)

        busy = sorted((h for h in sim.hosts.values() if _active(h) and over(h)),
                      key=lambda h: -(memory_used(h) or 0.0))
        for h in busy:
            for vm in sim.on(h.host):
                if not over(sim.hosts[h.host]):
                    break
                if not vm.running:
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
        for h in idle:
            if sum(1 for o in sim.hosts.values() if _active(o)) <= 1:
                break
            before = (dict(sim.hosts), dict(sim.vms), len(sim.moves))
            sim.hosts[h.host] = replace(h, state=STANDBY)  # nothing new goes there
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
            else:
                sim.hosts, sim.vms = before[0], before[1]
                del sim.moves[before[2]:]
    else:
        raise ValueError(f"unknown policy {policy!r}: {', '.join(POLICIES)}")
    return {"policy": policy, "host_down": host_down, "moves": sim.moves,
            "standby": standby, "left": left}
