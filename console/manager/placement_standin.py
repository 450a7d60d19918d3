"""A stand-in for the placement engine (``console.placement``) until it lands: the same
entry point, ``place(request, hosts, vms)``, choosing the placeable host with the most
unallocated memory that fits the VM."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from console.manager.fleet import HostView, VmView


@dataclass(frozen=True)
class PlacementRequest:
    vcpus: int
    memory_bytes: int
    avoid_hosts: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Placement:
    host: str | None
    reasons: dict[str, str] = field(default_factory=dict)  # host -> why it was left out


def place(request: PlacementRequest, hosts: Sequence[HostView],
          vms: Sequence[VmView]) -> Placement:
    reasons: dict[str, str] = {}
    fitting = []
    for h in hosts:
        if h.host in request.avoid_hosts:
            reasons[h.host] = "excluded"
        elif not h.placeable:
            reasons[h.host] = "in maintenance" if h.maintenance else h.state
        elif h.free_vcpus < request.vcpus:
            reasons[h.host] = f"{h.free_vcpus} free vCPUs, {request.vcpus} needed"
        elif h.unallocated_memory_bytes < request.memory_bytes:
            reasons[h.host] = (f"{h.unallocated_memory_bytes >> 20} MiB free, "
                               f"{request.memory_bytes >> 20} MiB needed")
        else:
            fitting.append(h)
    if not fitting:
        return Placement(None, reasons)
    best = max(fitting, key=lambda h: (h.unallocated_memory_bytes, h.free_vcpus, h.host))
    return Placement(best.host, reasons)
