"""The engine's settings ([placement] in a service's config; etc/provisioner.toml
documents each key)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hostbus.errors import ConfigError

DEFAULT_WEIGHTS: dict[str, float] = {"memory_free": 1.0, "vcpu_free": 0.5, "cpu_load": 1.0,
                                     "consolidate": 0.0}


@dataclass(frozen=True)
class PlacementConfig:
    #: vCPUs handed out per physical CPU, for hosts that do not state their own capacity.
    vcpu_overcommit: float = 4.0
    #: Memory handed out per MiB of RAM (1.0: none; KSM and ballooning are not assumed).
    memory_overcommit: float = 1.0
    #: MiB each host keeps for itself (hypervisor, agents, page cache).
    host_reserved_memory_mib: int = 0
    #: A host busier than this over the load window takes no new VM.
    max_cpu_load: float = 0.9
    #: Seconds the CPU load is averaged over (see ``load_over_window``).
    cpu_load_window_s: float = 300.0
    #: Filters applied, by name (filters.FILTERS); None: all of them.
    filters: tuple[str, ...] | None = None
    #: Weight name -> factor (weights.WEIGHTS); a factor of 0 turns a weight off.
    weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], where: str = "[placement]") -> PlacementConfig:
        """From a config section; raises ``ConfigError`` naming the key and the fix."""
        from console.placement.filters import FILTERS
        from console.placement.weights import WEIGHTS

        known = {"vcpu_overcommit", "memory_overcommit", "host_reserved_memory_mib",
                 "max_cpu_load", "cpu_load_window_s", "filters", "weights"}
        for key in doc:
            if key not in known:
                raise ConfigError(f"{where} {key}: unknown key; known: {', '.join(sorted(known))}")
        out: dict[str, Any] = {}
        for key in ("vcpu_overcommit", "memory_overcommit", "cpu_load_window_s"):
            if key in doc:
                value = float(doc[key])
                if value <= 0:
                    raise ConfigError(f"{where} {key} = {value:g}: give a number above 0")
                out[key] = value
        if "max_cpu_load" in doc:
            value = float(doc["max_cpu_load"])
            if not 0 < value <= 1:
                raise ConfigError(f"{where} max_cpu_load = {value:g}: give a fraction of the "
                                  "host's CPUs, above 0 and at most 1")
            out["max_cpu_load"] = value
        if "host_reserved_memory_mib" in doc:
            value = int(doc["host_reserved_memory_mib"])
            if value < 0:
                raise ConfigError(f"{where} host_reserved_memory_mib = {value}: give 0 or more")
            out["host_reserved_memory_mib"] = value
        if "filters" in doc:
            names = tuple(str(n) for n in doc["filters"])
            unknown = [n for n in names if n not in FILTERS]
            if unknown:
                raise ConfigError(f"{where} filters: unknown {', '.join(unknown)}; known: "
                                  f"{', '.join(FILTERS)}")
            out["filters"] = names
        if "weights" in doc:
            weights = dict(DEFAULT_WEIGHTS)
            for name, factor in dict(doc["weights"]).items():
                if name not in WEIGHTS:
                    raise ConfigError(f"{where} weights.{name}: unknown weight; known: "
                                      f"{', '.join(WEIGHTS)}")
                if float(factor) < 0:
                    raise ConfigError(f"{where} weights.{name} = {factor}: give 0 or more")
                weights[name] = float(factor)
            out["weights"] = weights
        return cls(**out)
