"""The manager's questions to the placement engine (``console.placement``): its records
turned into the engine's views, and one VM placed away from a host.

A host ``down`` is the engine's ``offline``; one in maintenance is ``maintenance``
whatever its liveness, so nothing new goes there. Restarts and evacuations ask without
the HA reservation: they are what the reservation was kept for.
"""

from __future__ import annotations

from collections.abc import Iterable

from console.manager.fleet import DOWN, HostRecord, VmRecord
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

MIB = 1 << 20


def host_view(record: HostRecord) -> HostView:
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


def place_away(vm: VmRecord, hosts: Iterable[HostRecord], vms: Iterable[VmRecord], *,
               config: PlacementConfig | None = None) -> Placement:
    """Where ``vm`` (as it is now) would go, leaving the host it is on."""
    request = PlacementRequest(vcpus=max(1, vm.vcpus), memory_mib=max(1, vm.memory_bytes // MIB),
                               names=(vm.name,), ha=vm.ha, ha_reservation=False,
                               owner=vm.owner)
    views = [host_view(h) for h in hosts if h.host != vm.host]
    return place(request, views, [vm_view(v) for v in vms if v.name != vm.name],
                 config=config)
