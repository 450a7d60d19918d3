"""What placing needs to know about the fleet, indexed once and kept as VMs come and go
(``add``/``remove``), so a decision costs O(hosts), not O(VMs).

The manager and the provisioner each keep one current from their own events; ``place``
builds a throw-away one when given plain lists.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from console.placement.config import PlacementConfig
from console.placement.model import HostView, VmView


@dataclass
class HostLoad:
    """What the VMs on one host hold."""

    memory_mib: int = 0
    vcpus: int = 0
    #: Of which placed since the host's last report of what it has free.
    unreported_mib: int = 0
    unreported_vcpus: int = 0
    groups: Counter[str] = field(default_factory=Counter)
    ha_sizes: Counter[tuple[int, int]] = field(default_factory=Counter)  # (MiB, vcpus)
    _largest: tuple[int, int] | None = None

    def largest_ha(self) -> tuple[int, int] | None:
        """(MiB, vCPUs) of its largest HA VM (memory first), None without any."""
        return self._largest

    def copy(self) -> HostLoad:
        return replace(self, groups=Counter(self.groups), ha_sizes=Counter(self.ha_sizes))


class Fleet:
    """Hosts by name, and what their VMs hold. Not thread-safe: its owner locks."""

    def __init__(self, hosts: Iterable[HostView] = (), vms: Iterable[VmView] = (),
                 config: PlacementConfig | None = None) -> None:
        self.config = config or PlacementConfig()
        self.hosts: dict[str, HostView] = {}
        self.load: dict[str, HostLoad] = {}
        #: group -> host -> members there
        self.group_hosts: dict[str, Counter[str]] = {}
        self._names: list[str] | None = None
        #: host -> (memory room, vCPU room), computed again when the host or its VMs
        #: change (``_stale``: hosts changed since)
        self._rooms: dict[str, tuple[int, int]] = {}
        self._stale: set[str] = set()
        self._ha_needs: dict[tuple[int, int], list[str]] | None = None
        for host in hosts:
            self.set_host(host)
        for vm in vms:
            self.add(vm)

    def copy(self) -> Fleet:
        """An independent copy (a plan's simulation changes it move by move): O(hosts),
        not O(VMs) as building one again would be."""
        other = Fleet.__new__(Fleet)
        other.config = self.config
        other.hosts = dict(self.hosts)
        other.load = {name: load.copy() for name, load in self.load.items()}
        other.group_hosts = {g: Counter(c) for g, c in self.group_hosts.items()}
        other._names = self._names  # replaced, never changed in place
        other._rooms = dict(self._rooms)
        other._stale = set(self._stale)
        other._ha_needs = None if self._ha_needs is None else {
            need: list(hosts) for need, hosts in self._ha_needs.items()}
        return other

    @contextmanager
    def configured(self, config: PlacementConfig | None) -> Iterator[Fleet]:
        """Decide under ``config`` for a while (a plan asking placement to consolidate),
        then go back to the fleet's own; rooms are computed again if it counts them
        differently."""
        if config is None or config == self.config:
            yield self
            return
        own = self.config
        recount = _room_terms(config) != _room_terms(own)
        self.config = config
        if recount:
            self._stale.update(self.hosts)
        try:
            yield self
        finally:
            self.config = own
            if recount:
                self._stale.update(self.hosts)

    def set_host(self, host: HostView) -> None:
        if host.name not in self.hosts:
            self._names = None
            self._ha_needs = None
        self.hosts[host.name] = host
        self.load.setdefault(host.name, HostLoad())
        self._stale.add(host.name)

    def drop_host(self, name: str) -> None:
        if self.hosts.pop(name, None) is not None:
            self._names = None
            self._ha_needs = None
            self._rooms.pop(name, None)
            self._stale.discard(name)

    def names(self) -> list[str]:
        """Host names in order: every answer is the same whatever order hosts came in."""
        if self._names is None:
            self._names = sorted(self.hosts)
        return self._names

    def add(self, vm: VmView, *, unreported: bool = False) -> None:
        """A VM now on its host. ``unreported``: placed after the host last reported what
        it has free, so it is taken from that too (until ``remove(unreported=True)``
        once a newer report counts it)."""
        if vm.holds_resources:
            self._count(vm, +1, unreported)

    def remove(self, vm: VmView, *, unreported: bool = False) -> None:
        if vm.holds_resources:
            self._count(vm, -1, unreported)

    def _count(self, vm: VmView, sign: int, unreported: bool) -> None:
        host, mib, vcpus = vm.host, vm.memory_mib, vm.vcpus
        if host in self.hosts:
            self._stale.add(host)
        load = self.load.setdefault(host, HostLoad())
        load.memory_mib += sign * mib
        load.vcpus += sign * vcpus
        if unreported:
            load.unreported_mib += sign * mib
            load.unreported_vcpus += sign * vcpus
        groups, ha = vm.groups, vm.ha
        for group in groups:
            load.groups[group] += sign
            members = self.group_hosts.setdefault(group, Counter())
            members[host] += sign
            if members[host] <= 0:
                del members[host]
                if not members:
                    del self.group_hosts[group]
            if load.groups[group] <= 0:
                del load.groups[group]
        if ha:
            before = load._largest
            load.ha_sizes[(mib, vcpus)] += sign
            if load.ha_sizes[(mib, vcpus)] <= 0:
                del load.ha_sizes[(mib, vcpus)]
            load._largest = max(load.ha_sizes) if load.ha_sizes else None
            if load._largest != before:
                self._need_moved(host, before, load._largest)

    def _need_moved(self, host: str, before: tuple[int, int] | None,
                    after: tuple[int, int] | None) -> None:
        """Keep ``ha_needs`` current as one host's largest HA VM changes (a decision
        adds and removes its VMs: rebuilding it each time cost O(hosts))."""
        needs = self._ha_needs
        if needs is None or host not in self.hosts:
            return
        if before is not None:
            needs[before].remove(host)
            if not needs[before]:
                del needs[before]
        if after is not None:
            if after in needs:
                bisect.insort(needs[after], host)
            else:
                needs[after] = [host]
                self._ha_needs = dict(sorted(needs.items()))

    def ha_needs(self) -> dict[tuple[int, int], list[str]]:
        """(MiB, vCPUs) of each host's largest HA VM -> those hosts, in order; kept
        until an HA VM or the set of hosts changes."""
        if self._ha_needs is None:
            needs: dict[tuple[int, int], list[str]] = {}
            for name in self.names():
                largest = self.load[name].largest_ha()
                if largest is not None:
                    needs.setdefault(largest, []).append(name)
            self._ha_needs = dict(sorted(needs.items()))
        return self._ha_needs

    # ------------------------------------------------------------------ room
    def room_table(self) -> dict[str, tuple[int, int]]:
        """Host -> (memory_room, vcpu_room) for every host, each computed once per change
        of the host or its VMs. Read it, never change it."""
        if self._stale:
            for name in self._stale:
                self._rooms[name] = (self._memory_room(name), self._vcpu_room(name))
            self._stale.clear()
        return self._rooms

    def rooms(self, name: str) -> tuple[int, int]:
        """(memory_room, vcpu_room) of one host."""
        return self.room_table()[name]

    def memory_room(self, name: str) -> int:
        """MiB a new VM may take on the host: its capacity (RAM times the overcommit,
        less the host's reserve) less what its VMs hold, and never more than the host
        itself reports free (less what was placed there since)."""
        return self.rooms(name)[0]

    def vcpu_room(self, name: str) -> int:
        """vCPUs a new VM may take: the host's vCPU capacity less what its VMs hold,
        never more than the host reports free (less what was placed there since)."""
        return self.rooms(name)[1]

    def _memory_room(self, name: str) -> int:
        host, load = self.hosts[name], self.load[name]
        cfg = self.config
        room = int(host.memory_mib * cfg.memory_overcommit) - cfg.host_reserved_memory_mib \
            - load.memory_mib
        if host.free_memory_mib is not None:
            room = min(room, host.free_memory_mib - load.unreported_mib)
        return room

    def vcpu_capacity(self, name: str) -> int:
        host = self.hosts[name]
        if host.vcpu_capacity is not None:
            return host.vcpu_capacity
        return int(host.cpus * self.config.vcpu_overcommit)

    def _vcpu_room(self, name: str) -> int:
        host, load = self.hosts[name], self.load[name]
        room = self.vcpu_capacity(name) - load.vcpus
        if host.free_vcpus is not None:
            room = min(room, host.free_vcpus - load.unreported_vcpus)
        return room


def _room_terms(config: PlacementConfig) -> tuple[float, float, int]:
    """What a host's room depends on in the configuration."""
    return config.vcpu_overcommit, config.memory_overcommit, config.host_reserved_memory_mib
