"""What the placement engine decides from and what it decides: plain, immutable views
of hosts and VMs (built by whoever keeps the fleet's state), a request, and a placement.

Memory is in MiB throughout; CPU load is the fraction of the host's CPUs busy (0.0-1.0)
averaged over the load window (``load_over_window`` computes it from samples).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: Host states. Only an ``online`` host takes new VMs.
ONLINE, OFFLINE, UNRESPONSIVE, MAINTENANCE, STANDBY = (
    "online", "offline", "unresponsive", "maintenance", "standby")
HOST_STATES = (ONLINE, OFFLINE, UNRESPONSIVE, MAINTENANCE, STANDBY)

#: VM states that hold no memory or vCPUs on their host (a VM shut off or gone). Any
#: other state (running, paused, starting, migrating, defined-and-about-to-start ...)
#: holds its full size: placing counts what the VM can use, not what it uses now.
IDLE_VM_STATES = frozenset({"shutoff", "inactive", "gone", "crashed"})


@dataclass(frozen=True)
class TemplateLimits:
    """What a host's template allows a VM made from it (virt ``template.list``), and
    whether such a VM is highly available (and its restart priority)."""

    vcpus: int
    memory_mib: int
    max_vcpus: int
    max_memory_mib: int
    ha: bool = False
    ha_priority: int = 0


@dataclass(frozen=True)
class HostView:
    """One host as the engine sees it.

    ``free_memory_mib``, ``free_vcpus``: what the host itself reports it can still give
    (for the virt agent, ``unallocated_memory_bytes`` and ``free_vcpus``), at the time
    of the report; None: unknown, so only what the VMs the engine is told of hold
    counts. VMs placed since the report are subtracted (``Fleet.add(unreported=True)``).
    ``cpu_load``: None when no sample fell in the window.
    ``labels``: the host's facts and operator labels, matched by ``PlacementRequest.labels``.
    ``templates``: the templates it offers (None: the request's template is not checked).
    ``vcpu_capacity``: vCPUs it may hand out when the host states its own overcommit
    (the virt agent's ``vcpu_ratio``); None: ``cpus`` times the configured ratio.
    """

    name: str
    state: str = ONLINE
    cpus: int = 0
    memory_mib: int = 0
    free_memory_mib: int | None = None
    free_vcpus: int | None = None
    cpu_load: float | None = None
    labels: Mapping[str, Any] = field(default_factory=dict)
    templates: Mapping[str, TemplateLimits] | None = None
    vcpu_capacity: int | None = None


@dataclass(frozen=True)
class VmView:
    """One VM: where it is and what it holds there."""

    name: str
    host: str
    vcpus: int = 0
    memory_mib: int = 0
    state: str = "running"
    ha: bool = False
    owner: str = ""
    groups: tuple[str, ...] = ()  # affinity group names it belongs to

    @property
    def holds_resources(self) -> bool:
        return self.state not in IDLE_VM_STATES


@dataclass(frozen=True)
class PlacementRequest:
    """``count`` VMs of one size (``names``, if given, names them, else vm-1, vm-2, ...).

    ``pinned_hosts``: only these hosts (empty: any). ``affinity_groups``: the new VMs
    join these groups and must share a host with every running member (hard positive
    affinity); ``anti_affinity_groups``: they join these and must not share a host with
    any member, each other included. ``ha``: the new VMs are highly available.
    ``ha_reservation``: refuse a host if, afterwards, some host's largest HA VM could
    no longer be restarted on any other host. ``template``: a host must offer it (when
    the host lists templates) and allow this size; ``labels``: facts a host must have,
    equal (a list value: one of). ``avoid_hosts``: hosts not considered at all, not even
    to say why not (the host a VM leaves).
    """

    vcpus: int
    memory_mib: int
    count: int = 1
    names: tuple[str, ...] = ()
    pinned_hosts: tuple[str, ...] = ()
    affinity_groups: tuple[str, ...] = ()
    anti_affinity_groups: tuple[str, ...] = ()
    ha: bool = False
    ha_reservation: bool = True
    template: str | None = None
    labels: Mapping[str, Any] = field(default_factory=dict)
    owner: str = ""
    avoid_hosts: tuple[str, ...] = ()

    def vm_names(self) -> list[str]:
        if self.names:
            return list(self.names)
        return [f"vm-{n}" for n in range(1, self.count + 1)]

    def groups(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.affinity_groups + self.anti_affinity_groups))


@dataclass(frozen=True)
class Placement:
    """The decision. ``chosen``: VM name -> host, in the request's order, for every VM
    placed. When not every VM could be placed, ``refused_vm`` is the first that could
    not, and ``filtered`` says, for every host, why it was ruled out for that VM (in
    host-name order); ``chosen`` then holds the VMs placed before it, which the caller
    may use or drop."""

    chosen: dict[str, str]
    refused_vm: str | None = None
    filtered: dict[str, str] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)  # last VM placed: host -> score

    @property
    def ok(self) -> bool:
        return self.refused_vm is None

    def explain(self) -> str:
        """One line an operator can act on."""
        if self.ok:
            return "; ".join(f"{vm} -> {host}" for vm, host in self.chosen.items()) or \
                "nothing to place"
        if not self.filtered:
            return f"no host for {self.refused_vm}: no hosts known"
        reasons = "; ".join(f"{host} {why}" for host, why in self.filtered.items())
        placed = f" ({len(self.chosen)} placed before it)" if self.chosen else ""
        return f"no host for {self.refused_vm}{placed}: {reasons}"

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "chosen": dict(self.chosen), "refused_vm": self.refused_vm,
                "filtered": dict(self.filtered), "explain": self.explain()}


def load_over_window(samples: Iterable[tuple[float, float]], now: float,
                     window_s: float) -> float | None:
    """The mean of the (time, load) samples taken in the last ``window_s`` seconds before
    ``now``; None if there are none (a host with no recent metrics is not "idle")."""
    recent = [load for at, load in samples if now - window_s <= at <= now]
    return sum(recent) / len(recent) if recent else None
