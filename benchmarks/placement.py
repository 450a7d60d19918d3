"""Placement decisions over a simulated fleet (no broker): ``--placement-hosts`` (1,000)
hosts and ten VMs a host, 20% of them HA and 30% in one of 200 anti-affinity groups.
Three kinds of request, each decided ``n`` times on a ``Fleet`` kept between decisions
(as the provisioner and the manager keep theirs): a plain one, one HA VM that joins an
anti-affinity group, and one pinned to ten hosts.

The baseline, in the same turns, is the simplest placement that could work: one loop
over the same host views keeping the online host with the most memory left among those
with room for memory and vCPUs (no reasons, no weights, no HA reservation). Its ratio
says what the engine's filters, weights and explanations cost.
"""

from __future__ import annotations

import gc
import random
import time
from collections.abc import Callable
from typing import Any

from benchmarks.harness import summary
from console.placement import ONLINE, Fleet, HostView, PlacementRequest, VmView, place


def fleet_of(hosts: int, seed: int = 17) -> Fleet:
    rnd = random.Random(seed)
    views = [HostView(f"h{i:05d}", cpus=64, memory_mib=512 * 1024,
                      cpu_load=rnd.random() * 0.8, labels={"rack": f"r{i % 20}"})
             for i in range(hosts)]
    vms = [VmView(f"vm{i}", f"h{rnd.randrange(hosts):05d}", rnd.choice([1, 2, 4]),
                  rnd.choice([1024, 2048, 4096, 8192]), ha=rnd.random() < 0.2,
                  groups=(f"g{rnd.randrange(200)}",) if rnd.random() < 0.3 else ())
           for i in range(hosts * 10)]
    return Fleet(views, vms)


def naive(fleet: Fleet, vcpus: int, memory_mib: int) -> str | None:
    best, room = None, -1
    for name in fleet.names():
        mem, cpus = fleet.rooms(name)
        if fleet.hosts[name].state == ONLINE and mem >= memory_mib and cpus >= vcpus \
                and mem > room:
            best, room = name, mem
    return best


def timed(n: int, decide: Callable[[int], Any]) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        decide(i)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def run(hosts: int = 1000, n: int = 500) -> dict[str, Any]:
    t0 = time.perf_counter()
    fleet = fleet_of(hosts)
    index_ms = (time.perf_counter() - t0) * 1000
    names = fleet.names()
    kinds: dict[str, Callable[[int], PlacementRequest]] = {
        "plain": lambda i: PlacementRequest(vcpus=2, memory_mib=4096),
        "ha_anti_affinity": lambda i: PlacementRequest(
            vcpus=2, memory_mib=4096, ha=True, anti_affinity_groups=(f"g{i % 200}",)),
        "pinned_10": lambda i: PlacementRequest(
            vcpus=2, memory_mib=4096, pinned_hosts=tuple(names[i % 90::100][:10])),
    }
    samples: dict[str, list[float]] = {k: [] for k in kinds}
    samples["naive"] = []
    gc.collect()
    for start in range(0, n, 100):  # in turns, so a slow spell falls on every side
        block = min(100, n - start)
        for kind, make in kinds.items():
            samples[kind] += timed(block, lambda i, make=make, at=start: place(make(at + i),
                                                                               fleet))
        samples["naive"] += timed(block, lambda i: naive(fleet, 2, 4096))
    out: dict[str, Any] = {"hosts": hosts, "vms": hosts * 10, "decisions": n,
                           "index_ms": round(index_ms, 1)}
    for kind, got in samples.items():
        out[kind] = summary(got)
    out["ratio_plain_to_naive_p50"] = round(out["plain"]["p50"] / out["naive"]["p50"], 2)
    return out
