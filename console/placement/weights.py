"""Weights: each scores the hosts that passed the filters, 0.0 (worst) to 1.0 (best),
relative to the other candidates; the engine adds the scores times their factors
(``PlacementConfig.weights``) and takes the highest, ties to the first host by name.

``WEIGHTS`` is the registry.
"""

from __future__ import annotations

from collections.abc import Callable

from console.placement.filters import Step

Weight = Callable[[Step, list[str]], dict[str, float]]


def _relative(values: dict[str, float]) -> dict[str, float]:
    """Scaled so the best candidate scores 1.0 and one with nothing scores 0.0."""
    top = max(values.values(), default=0.0)
    if top <= 0:
        return dict.fromkeys(values, 0.0)
    return {name: value / top if value > 0 else 0.0 for name, value in values.items()}


def memory_free(step: Step, candidates: list[str]) -> dict[str, float]:
    """Spread: more memory left after placing scores higher."""
    rooms, need = step.fleet.room_table(), step.request.memory_mib
    return _relative({n: rooms[n][0] - need for n in candidates})


def vcpu_free(step: Step, candidates: list[str]) -> dict[str, float]:
    """Spread: more vCPUs left after placing scores higher."""
    rooms, need = step.fleet.room_table(), step.request.vcpus
    return _relative({n: rooms[n][1] - need for n in candidates})


def cpu_load(step: Step, candidates: list[str]) -> dict[str, float]:
    """Idle hosts score higher (a host with no load figure counts as half busy)."""
    hosts = step.fleet.hosts
    return {n: 0.5 if (load := hosts[n].cpu_load) is None else 0.0 if load >= 1 else 1.0 - load
            for n in candidates}


def consolidate(step: Step, candidates: list[str]) -> dict[str, float]:
    """Power saving: hosts already holding more of their memory score higher, so idle
    hosts stay empty (give it a factor above memory_free's to pack instead of spread)."""
    fleet = step.fleet
    used = {}
    for n in candidates:
        capacity = max(1, fleet.hosts[n].memory_mib)
        used[n] = 1.0 - max(0, step.memory_room(n)) / capacity
    return {n: min(1.0, max(0.0, v)) for n, v in used.items()}


#: Name -> weight.
WEIGHTS: dict[str, Weight] = {
    "memory_free": memory_free,
    "vcpu_free": vcpu_free,
    "cpu_load": cpu_load,
    "consolidate": consolidate,
}
