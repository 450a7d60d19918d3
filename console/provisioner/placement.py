"""Which host gets each VM: the host with the most room that offers the template and
fits the VM, one VM at a time, so a request spreads over the fleet."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hostbus.errors import ErrorCode, RemoteError


@dataclass
class Candidate:
    host: str
    unallocated_memory_bytes: int
    free_vcpus: int
    templates: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> template


def need(candidate: Candidate, template: str, vcpus: int | None,
         memory_mib: int | None) -> tuple[int, int] | None:
    """(vcpus, memory MiB) this host's template gives the VM, or None if it cannot."""
    tpl = candidate.templates.get(template)
    if tpl is None:
        return None
    cpus = vcpus or int(tpl["vcpus"])
    mib = memory_mib or int(tpl["memory_mib"])
    if cpus > int(tpl["max_vcpus"]) or mib > int(tpl["max_memory_mib"]):
        return None
    return cpus, mib


def place(names: list[str], *, template: str, vcpus: int | None, memory_mib: int | None,
          candidates: list[Candidate]) -> dict[str, str]:
    """A host for each name; raises ``RemoteError(failed)`` saying what was missing."""
    pool = [Candidate(c.host, c.unallocated_memory_bytes, c.free_vcpus, c.templates)
            for c in candidates]
    plan: dict[str, str] = {}
    for name in names:
        fitting = []
        for cand in pool:
            wanted = need(cand, template, vcpus, memory_mib)
            if wanted is None:
                continue
            cpus, mib = wanted
            if cand.free_vcpus >= cpus and cand.unallocated_memory_bytes >= mib << 20:
                fitting.append((cand, cpus, mib))
        if not fitting:
            offering = [c for c in pool if template in c.templates]
            if not pool:
                why = "no virt host answered discovery"
            elif not offering:
                why = f"no virt host offers template {template!r}"
            elif all(need(c, template, vcpus, memory_mib) is None for c in offering):
                limits = {(c.templates[template]["max_vcpus"],
                           c.templates[template]["max_memory_mib"]) for c in offering}
                shown = ", ".join(f"{cpus} vcpus and {mib} MiB" for cpus, mib in sorted(limits))
                why = (f"template {template!r} allows at most {shown}; asked for vcpus "
                       f"{vcpus or 'default'}, memory {memory_mib or 'default'} MiB")
            else:
                why = (f"no virt host has room for another VM of template {template!r} "
                       f"(vcpus {vcpus or 'default'}, memory {memory_mib or 'default'} MiB); "
                       f"{len(plan)} of {len(names)} placed")
            raise RemoteError(ErrorCode.FAILED, why, {"placed": len(plan),
                                                      "hosts_considered": len(pool)})
        best, cpus, mib = max(fitting, key=lambda f: (f[0].unallocated_memory_bytes,
                                                      f[0].free_vcpus, f[0].host))
        best.unallocated_memory_bytes -= mib << 20
        best.free_vcpus -= cpus
        plan[name] = best.host
    return plan
