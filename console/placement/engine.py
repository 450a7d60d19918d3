"""``place``: filters, then weights, one VM at a time, each VM placed counted before the
next (so a request of several VMs spreads, and its anti-affinity holds among them)."""

from __future__ import annotations

from collections.abc import Iterable

from console.placement.config import PlacementConfig
from console.placement.filters import FILTERS, Step, applies, batch
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
    # Only the filters this request can fail (no pinning asked: no pinning filter).
    active = [n for n in (cfg.filters or FILTERS) if applies(n, request)]
    filters = [FILTERS[n] for n in active]
    batches = [batch(n) for n in active]
    weights = [(WEIGHTS[n], f) for n, f in cfg.weights.items() if f > 0]
    names = fleet.names()
    if request.avoid_hosts:
        avoid = frozenset(request.avoid_hosts)
        names = [n for n in names if n not in avoid]
    chosen: dict[str, str] = {}
    scores: dict[str, float] = {}
    for vm_name in request.vm_names():
        step = Step(fleet, request)
        # A host is out at its first failing filter; every reason is gathered only for
        # a refusal, which is rare and must explain itself.
        candidates = names
        for keep in batches:
            candidates = keep(step, candidates)
        if not candidates:
            filtered = {}
            for host in names:
                reasons = [why for check in filters if (why := check(step, host)) is not None]
                filtered[host] = ", ".join(reasons)
            return Placement(chosen, refused_vm=vm_name, filtered=filtered)
        scores = dict.fromkeys(candidates, 0.0)
        for weight, factor in weights:
            part = weight(step, candidates)
            scores = {host: total + factor * part[host] for host, total in scores.items()}
        # Highest score; ties to the first by name (the scores are in name order and
        # max keeps the first of equals).
        best = max(scores, key=scores.__getitem__)
        chosen[vm_name] = best
        vm = VmView(vm_name, best, request.vcpus, request.memory_mib, "defined",
                    request.ha, request.owner, request.groups())
        fleet.add(vm, unreported=True)
        planned.append(vm)
    return Placement(chosen, scores=scores)
