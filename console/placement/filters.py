"""Filters: each rules a host in or out for one VM, and says why not in words an operator
can act on ("memory 512 MiB free < 1024 needed"). A filter returns None to pass.

``FILTERS`` is the registry, in the order they run (cheap and decisive first); the
engine runs all of them on every host, so a refusal lists every reason of every host.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from console.placement.fleet import Fleet
from console.placement.model import ONLINE, PlacementRequest
from hostbus.serving.agent import as_text


@dataclass
class Step:
    """Placing one VM of a request: the fleet as it stands with the VMs of the request
    already placed, and what the filters share (computed once per step, not per host)."""

    fleet: Fleet
    request: PlacementRequest
    _fitting: dict[tuple[int, int], list[str]] = field(default_factory=dict)

    def memory_room(self, name: str) -> int:
        return self.fleet.rooms(name)[0]

    def vcpu_room(self, name: str) -> int:
        return self.fleet.rooms(name)[1]

    @cached_property
    def ha_critical(self) -> frozenset[str]:
        """Hosts among the few with room for some host's largest HA VM: the only ones
        where placing can take that room away."""
        return frozenset(h for need in self.ha_needs for h in self.fitting(need))

    @property
    def ha_needs(self) -> dict[tuple[int, int], list[str]]:
        """HA room needed: (MiB, vCPUs) of each host's largest HA VM -> those hosts."""
        return self.fleet.ha_needs()

    def fitting(self, need: tuple[int, int]) -> list[str]:
        """Up to three online hosts with room for a VM of ``need`` (MiB, vCPUs) now:
        enough to tell whether one other than a given host, or two given hosts, has."""
        found = self._fitting.get(need)
        if found is None:
            found = []
            for name in self.fleet.names():
                if _fits(self, name, need):
                    found.append(name)
                    if len(found) == 3:
                        break
            self._fitting[need] = found
        return found


def _fits(step: Step, name: str, need: tuple[int, int], less: tuple[int, int] = (0, 0),
          ) -> bool:
    if step.fleet.hosts[name].state != ONLINE:
        return False
    return step.memory_room(name) - less[0] >= need[0] and \
        step.vcpu_room(name) - less[1] >= need[1]


Filter = Callable[[Step, str], "str | None"]


def host_state(step: Step, name: str) -> str | None:
    state = step.fleet.hosts[name].state
    return None if state == ONLINE else state


def pinning(step: Step, name: str) -> str | None:
    pinned = step.request.pinned_hosts
    if pinned and name not in pinned:
        return f"not among the pinned hosts ({', '.join(pinned)})"
    return None


def labels(step: Step, name: str) -> str | None:
    """Facts compare as text, as a broadcast filter compares them (a list: any of)."""
    have = step.fleet.hosts[name].labels
    for key, want in step.request.labels.items():
        value = as_text(have.get(key))
        if isinstance(want, list | tuple):
            if value not in [as_text(w) for w in want]:
                return f"{key} is {value!r}, not one of {[as_text(w) for w in want]!r}"
        elif value != as_text(want):
            return f"{key} is {value!r}, not {as_text(want)!r}"
    return None


def template(step: Step, name: str) -> str | None:
    wanted, offered = step.request.template, step.fleet.hosts[name].templates
    if wanted is None or offered is None:
        return None
    limits = offered.get(wanted)
    if limits is None:
        return f"does not offer template {wanted!r}"
    req = step.request
    if req.vcpus > limits.max_vcpus or req.memory_mib > limits.max_memory_mib:
        return (f"template {wanted!r} allows at most {limits.max_vcpus} vCPUs and "
                f"{limits.max_memory_mib} MiB, not {req.vcpus} and {req.memory_mib}")
    return None


def memory(step: Step, name: str) -> str | None:
    room, need = step.memory_room(name), step.request.memory_mib
    return None if room >= need else f"memory {max(room, 0)} MiB free < {need} needed"


def vcpus(step: Step, name: str) -> str | None:
    room, need = step.vcpu_room(name), step.request.vcpus
    if room >= need:
        return None
    return (f"vCPUs {max(room, 0)} free < {need} needed (capacity "
            f"{step.fleet.vcpu_capacity(name)})")


def cpu_load(step: Step, name: str) -> str | None:
    load, limit = step.fleet.hosts[name].cpu_load, step.fleet.config.max_cpu_load
    if load is not None and load > limit:
        return (f"CPU load {load:.0%} over the last {step.fleet.config.cpu_load_window_s:g} s "
                f"> {limit:.0%}")
    return None


def affinity(step: Step, name: str) -> str | None:
    for group in step.request.affinity_groups:
        members = step.fleet.group_hosts.get(group)
        if not members:
            continue  # the first member goes anywhere
        if len(members) > 1:
            return (f"affinity group {group} is split over {', '.join(sorted(members))}; "
                    "move its VMs together first")
        if name not in members:
            return f"affinity group {group} runs on {next(iter(members))}"
    return None


def anti_affinity(step: Step, name: str) -> str | None:
    here = step.fleet.load[name].groups
    for group in step.request.anti_affinity_groups:
        if here.get(group):
            return f"already runs a VM of anti-affinity group {group}"
    return None


def ha_reservation(step: Step, name: str) -> str | None:
    """Afterwards, every host's largest HA VM must still fit on some other online host,
    so losing any one host leaves room to restart at least its largest HA VM. A
    reservation the fleet already cannot keep does not block placing elsewhere."""
    req = step.request
    if not req.ha_reservation:
        return None
    fleet = step.fleet
    taken = (req.memory_mib, req.vcpus)
    before = fleet.load[name].largest_ha()
    # The new VM may become this host's largest HA VM: someone else must fit it.
    if req.ha and (before is None or taken > before) and \
            not [h for h in step.fitting(taken) if h != name]:
        return (f"HA reservation: no other host could restart this HA VM "
                    f"({taken[0]} MiB, {taken[1]} vCPUs) if it failed")
    if name not in step.ha_critical:
        return None
    for need, hosts in step.ha_needs.items():
        fitting = step.fitting(need)
        if name not in fitting or _fits(step, name, need, taken):
            continue  # this placement leaves the hosts that fit ``need`` as they are
        for lost in hosts:
            if lost != name and [h for h in fitting if h != lost] == [name]:
                return (f"HA reservation: it is the only host with room to restart the "
                        f"largest HA VM of {lost} ({need[0]} MiB, {need[1]} vCPUs)")
    return None


#: Filters a request cannot fail unless it asks for what they check.
_ONLY_WHEN: dict[str, Callable[[PlacementRequest], bool]] = {
    "pinning": lambda r: bool(r.pinned_hosts),
    "labels": lambda r: bool(r.labels),
    "template": lambda r: r.template is not None,
    "affinity": lambda r: bool(r.affinity_groups),
    "anti_affinity": lambda r: bool(r.anti_affinity_groups),
    "ha_reservation": lambda r: r.ha_reservation,
}


def applies(name: str, request: PlacementRequest) -> bool:
    when = _ONLY_WHEN.get(name)
    return when is None or when(request)


# ----------------------------------------------------------- whole-list forms
# The same rules over a list of hosts in one pass, for the engine's first pass (a
# decision over a thousand hosts stays around a millisecond); each must keep exactly
# the hosts its filter passes (the property tests compare the two).
Batch = Callable[[Step, list[str]], list[str]]


def _host_state_batch(step: Step, names: list[str]) -> list[str]:
    hosts = step.fleet.hosts
    return [n for n in names if hosts[n].state == ONLINE]


def _memory_batch(step: Step, names: list[str]) -> list[str]:
    rooms, need = step.fleet.room_table(), step.request.memory_mib
    return [n for n in names if rooms[n][0] >= need]


def _vcpus_batch(step: Step, names: list[str]) -> list[str]:
    rooms, need = step.fleet.room_table(), step.request.vcpus
    return [n for n in names if rooms[n][1] >= need]


def _cpu_load_batch(step: Step, names: list[str]) -> list[str]:
    hosts, limit = step.fleet.hosts, step.fleet.config.max_cpu_load
    return [n for n in names if (load := hosts[n].cpu_load) is None or load <= limit]


def _ha_reservation_batch(step: Step, names: list[str]) -> list[str]:
    req = step.request
    if req.ha and len(step.fitting((req.memory_mib, req.vcpus))) < 2:
        return [n for n in names if ha_reservation(step, n) is None]
    # Otherwise a host can fail only if it is one of the few with room for some need.
    critical = step.ha_critical
    return [n for n in names if n not in critical or ha_reservation(step, n) is None]


def _anti_affinity_batch(step: Step, names: list[str]) -> list[str]:
    groups = step.fleet.group_hosts
    taken: set[str] = set()
    for group in step.request.anti_affinity_groups:
        taken.update(groups.get(group, ()))
    return [n for n in names if n not in taken] if taken else names


BATCHES: dict[str, Batch] = {
    "host_state": _host_state_batch,
    "memory": _memory_batch,
    "vcpus": _vcpus_batch,
    "cpu_load": _cpu_load_batch,
    "anti_affinity": _anti_affinity_batch,
    "ha_reservation": _ha_reservation_batch,
}


def batch(name: str) -> Batch:
    """The whole-list form of filter ``name`` (a loop over the filter if it has none)."""
    found = BATCHES.get(name)
    if found is not None:
        return found
    check = FILTERS[name]
    return lambda step, names: [n for n in names if check(step, n) is None]


#: Name -> filter, in the order they run.
FILTERS: dict[str, Filter] = {
    "host_state": host_state,
    "pinning": pinning,
    "labels": labels,
    "template": template,
    "memory": memory,
    "vcpus": vcpus,
    "cpu_load": cpu_load,
    "affinity": affinity,
    "anti_affinity": anti_affinity,
    "ha_reservation": ha_reservation,
}


def describe() -> list[dict[str, Any]]:
    return [{"name": n, "doc": (f.__doc__ or "").strip()} for n, f in FILTERS.items()]
