"""Which host gets each VM of a provisioning request: the placement engine
(console/placement) on the provisioner's view of the virt hosts, with a refusal in the
words the provisioner has always used ("no virt host offers template ...") followed
by the engine's reasons for each host."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from console.placement import (
    ONLINE,
    Fleet,
    HostView,
    Placement,
    PlacementConfig,
    PlacementRequest,
    TemplateLimits,
)
from console.placement import (
    place as engine_place,
)
from hostbus.errors import ErrorCode, RemoteError


def ha_of(body: dict[str, Any], hosts: list[HostView]) -> tuple[bool, int]:
    """(highly available, restart priority) of a request's VMs: the request's ``ha`` and
    ``ha_priority`` when it gives them, else its template's (on the first host, by name,
    that offers it and says; templates of one name are meant to agree)."""
    template = body["template"]
    offered = [h.templates[template] for h in sorted(hosts, key=lambda h: h.name)
               if h.templates and template in h.templates]
    ha = body["ha"] if isinstance(body.get("ha"), bool) else any(t.ha for t in offered[:1])
    priority = body.get("ha_priority")
    if not isinstance(priority, int):
        priority = offered[0].ha_priority if offered else 0
    return ha, priority if ha else 0


def request_for(names: list[str], *, template: str, vcpus: int | None,
                memory_mib: int | None, hosts: list[HostView],
                constraints: dict[str, Any] | None = None, owner: str = "",
                ha: bool = False) -> PlacementRequest:
    """The engine's request. A size left to the template is the largest default of the
    hosts offering it, so the room held is never less than the VM takes. ``ha``: the VMs
    are highly available (the HA reservation then keeps room to restart them)."""
    offered = [h.templates[template] for h in hosts if h.templates and template in h.templates]
    constraints = constraints or {}
    return PlacementRequest(
        vcpus=vcpus or max((t.vcpus for t in offered), default=1),
        memory_mib=memory_mib or max((t.memory_mib for t in offered), default=1),
        count=len(names), names=tuple(names), template=template,
        pinned_hosts=tuple(constraints.get("hosts") or ()),
        labels=dict(constraints.get("facts") or {}), owner=owner, ha=ha)


def refusal(decision: Placement, request: PlacementRequest, hosts: list[HostView], *,
            vcpus: int | None, memory_mib: int | None) -> RemoteError:
    """Why nothing (or not everything) could be placed, as ``RemoteError(failed)``."""
    template = request.template or ""
    online = [h for h in hosts if h.state == ONLINE]
    offering = [h for h in online if h.templates and template in h.templates]
    asked = f"vcpus {vcpus or 'default'}, memory {memory_mib or 'default'} MiB"
    if not online:
        why = "no virt host answered discovery"
    elif not offering:
        offered = sorted({t for h in online for t in (h.templates or {})})
        why = f"no virt host offers template {template!r}" + (
            f"; templates on offer: {', '.join(offered)}" if offered else "")
    elif all(_over_limits(h.templates[template], vcpus, memory_mib) for h in offering):
        limits = {(h.templates[template].max_vcpus, h.templates[template].max_memory_mib)
                  for h in offering}
        shown = ", ".join(f"{cpus} vcpus and {mib} MiB" for cpus, mib in sorted(limits))
        why = f"template {template!r} allows at most {shown}; asked for {asked}"
    else:
        why = (f"no virt host has room for another VM of template {template!r} ({asked}); "
               f"{len(decision.chosen)} of {request.count} placed. {decision.explain()}")
    return RemoteError(ErrorCode.FAILED, why, {"placed": len(decision.chosen),
                                               "hosts_considered": len(online),
                                               "filtered": decision.filtered})


def _over_limits(limits: TemplateLimits, vcpus: int | None, memory_mib: int | None) -> bool:
    return (vcpus or limits.vcpus) > limits.max_vcpus or \
        (memory_mib or limits.memory_mib) > limits.max_memory_mib


# ------------------------------------------------- candidates from a plain listing
@dataclass
class Candidate:
    """A host as its ``node.info`` and ``template.list`` describe it."""

    host: str
    unallocated_memory_bytes: int
    free_vcpus: int
    templates: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> template

    def view(self) -> HostView:
        mib = self.unallocated_memory_bytes >> 20
        return HostView(self.host, cpus=0, memory_mib=mib, free_memory_mib=mib,
                        free_vcpus=self.free_vcpus, vcpu_capacity=self.free_vcpus,
                        templates={n: TemplateLimits(int(t["vcpus"]), int(t["memory_mib"]),
                                                     int(t["max_vcpus"]),
                                                     int(t["max_memory_mib"]))
                                   for n, t in self.templates.items()})


def place(names: list[str], *, template: str, vcpus: int | None, memory_mib: int | None,
          candidates: list[Candidate], config: PlacementConfig | None = None,
          ) -> dict[str, str]:
    """A host for each name; raises ``RemoteError(failed)`` saying what was missing."""
    hosts = [c.view() for c in candidates]
    request = request_for(names, template=template, vcpus=vcpus, memory_mib=memory_mib,
                          hosts=hosts)
    decision = engine_place(request, Fleet(hosts, config=config))
    if not decision.ok:
        raise refusal(decision, request, hosts, vcpus=vcpus, memory_mib=memory_mib)
    return decision.chosen
