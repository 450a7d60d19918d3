"""``place``: filters, then weights, one VM at a time, each VM placed counted before the
next (so a request of several VMs spreads, and its anti-affinity holds among them)."""

from __future__ import annotations

from collections.abc import Iterable

from console.placement.config import PlacementConfig
from console.placement.filters import FILTERS, Step
from console.placement.fleet import Fleet
from console.placement.model import HostView, Placement, PlacementRequest, VmView
from console.placement.weights import WEIGHTS


def place(request: PlacementRequest, hosts: Iterable[HostView] | Fleet,
          vms: Iterable[VmView] = (), *, config: PlacementConfig | None = None) -> Placement:
    """Choose a host for each VM of ``request``. ``hosts`` is either plain views (with
    ``vms`` on them) or a ``Fleet`` kept current by the caller, which is left as it was:
    the decision is only a plan."""
    fleet = hosts if isinstance(hosts, Fleet) else Fleet(hosts, vms, config)
    planned: list[VmView] = []
    try:
        return _place(request, fleet, planned)
    finally:
        for vm in planned:
            fleet.remove(vm, unreported=True)


def _place(request: PlacementRequest, fleet: Fleet, planned: list[VmView]) -> Placement:
    cfg = fleet.config
    filters = [(n, FILTERS[n]) for n in (cfg.filters or FILTERS)]
    weights = [(WEIGHTS[n], f) for n, f in cfg.weights.items() if f > 0]
    names = fleet.names()
    chosen: dict[str, str] = {}
    scores: dict[str, float] = {}
    for vm_name in request.vm_names():
        step = Step(fleet, request)
        candidates, filtered = [], {}
        for host in names:
            reasons = [why for _, check in filters if (why := check(step, host)) is not None]
            if reasons:
                filtered[host] = "; ".join(reasons) if len(reasons) == 1 else \
                    reasons[0] + "".join(f", {r}" for r in reasons[1:])
            else:
                candidates.append(host)
        if not candidates:
            return Placement(chosen, refused_vm=vm_name, filtered=filtered)
        scores = dict.fromkeys(candidates, 0.0)
        for weight, factor in weights:
            for host, score in weight(step, candidates).items():
                scores[host] += factor * score
        # Highest score; ties to the first by name (candidates are in name order and
        # max keeps the first of equals).
        best = max(candidates, key=lambda h: scores[h])
        chosen[vm_name] = best
        vm = VmView(vm_name, best, request.vcpus, request.memory_mib, "defined",
                    request.ha, request.owner, request.groups())
        fleet.add(vm, unreported=True)
        planned.append(vm)
    return Placement(chosen, scores=scores)
