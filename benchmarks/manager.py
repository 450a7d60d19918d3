"""The manager at fleet scale, in process: ``hosts`` simulated virt hosts (1,000) holding
``vms`` VMs (10,000; a fifth of them HA), each host a real ``AgentRuntime`` on the
benchmark's broker with a simulated virt agent (the virt agent's schema and methods,
domains kept in a dict: no libvirt), 500 to a connection as the fan-out benchmark has
them; and one ``ManagerService`` (model, election, listings, actions) on the same
broker, in the same process.

- **decisions**: ``Fleet.place_away`` (where a VM of the fleet would go off its host:
  an HA restart's or a move's question) on the index the manager keeps, against the
  same decision on an index built from every record for it (what the manager did
  before it kept one), in turns;
- **plan**: ``manager plan --policy even_distribution`` over the whole fleet (hosts
  hold 64 GiB and VMs of 1-8 GiB fall on them at random, so some are above the 80%
  threshold), and ``--host-down`` of the host with the 50 HA VMs;
- **HA restart**: the first host holds ``ha_vms`` (50) HA VMs; its agent is stopped, an
  operator confirms it down, and the time runs from the manager's ``on_down`` until
  every one of them was defined and started on another simulated host;
- **RSS**: the process's resident memory before the manager started (the simulated
  fleet alone) and after its first listing with every VM known; the difference is
  the manager's;
- **restart**: the manager stopped and a new instance started on the same state
  file: the state file read, the instance active (the broker's election), and its
  first listing of every host done (the liveness checks wait for it).
"""

from __future__ import annotations

import gc
import random
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

from agents.virt.agent import VirtAgent
from benchmarks.harness import Bench, progress, summary
from console.client import Console
from console.manager.fleet import MIB, Fleet, host_view, vm_view
from console.manager.main import DEFAULTS, ManagerService
from console.manager.policies import Thresholds, plan
from console.manager.service import EVENT_PATTERNS
from console.placement import Fleet as PlacementIndex
from console.placement import PlacementConfig, PlacementRequest, place
from hostbus.security.audit import AuditLog
from hostbus.security.policy import DiscoveryOnly
from hostbus.serving.agent import Agent
from hostbus.serving.runtime import AgentRuntime
from hostbus.transport import connect
from hostbus.transport.base import Transport

GIB = 1 << 30
PER_CONNECTION = 500
HOST_MEMORY = 64 * GIB
HOST_CPUS = 32
SIZES = (1, 2, 4, 8)  # GiB


class SimVirt(VirtAgent):
    """The virt agent's face (its schema, methods and objects) over a dict of domains:
    what the manager asks a virt host, answered without libvirt."""

    def __init__(self, host_id: str, on_started: Callable[[str, str], None]) -> None:
        Agent.__init__(self, {})
        self.host_id = host_id
        self.templates = {}
        self.uri = "test:///simulated"
        self.domain_type = "test"
        self.vcpu_ratio = 4.0
        self.migration_uri = ""
        self.domains: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.on_started = on_started

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def facts(self) -> dict[str, Any]:
        return {"hypervisor": "test"}

    def add(self, name: str, vcpus: int, memory_bytes: int) -> None:
        self.domains[name] = {"name": name, "uuid": str(uuid.uuid4()), "state": "running",
                              "reason": "booted", "vcpus": vcpus,
                              "memory_bytes": memory_bytes, "autostart": False,
                              "persistent": True, "cpu_time_ns": 0}

    def node_info(self) -> dict[str, Any]:
        with self.lock:
            running = [d for d in self.domains.values() if d["state"] == "running"]
            total = len(self.domains)
        used_mem = sum(d["memory_bytes"] for d in running)
        used_vcpus = sum(d["vcpus"] for d in running)
        return {"host": self.host_id, "uri": self.uri, "hypervisor": "Test",
                "cpu_model": "sim", "cpus": HOST_CPUS, "mhz": 2000,
                "memory_bytes": HOST_MEMORY,
                "unallocated_memory_bytes": max(0, HOST_MEMORY - used_mem),
                "vcpus_allocated": used_vcpus,
                "free_vcpus": max(0, int(HOST_CPUS * self.vcpu_ratio) - used_vcpus),
                "domains_running": len(running), "domains_total": total}

    def domain_define(self, name: str, template: str | None, xml: str | None,
                      vcpus: int | None, memory_mib: int | None, start: bool) -> dict[str, Any]:
        with self.lock:
            self.add(name, vcpus or 1, (memory_mib or 1024) * MIB)
            dom = self.domains[name]
            dom["state"] = "running" if start else "shutoff"
            described = dict(dom)
        self.emit("domain.lifecycle", {"name": name, "uuid": dom["uuid"], "event": "defined",
                                       "detail": "added"})
        if start:
            self.emit("domain.lifecycle", {"name": name, "uuid": dom["uuid"],
                                           "event": "started", "detail": "booted"})
            self.on_started(self.host_id, name)
        return {**described, "template": template, "volume": None}

    def domain_start(self, name: str) -> dict[str, Any]:
        with self.lock:
            self.domains[name]["state"] = "running"
            described = dict(self.domains[name])
        self.on_started(self.host_id, name)
        return described

    def domain_xml(self, name: str) -> dict[str, Any]:
        with self.lock:
            dom = self.domains[name]
        return {"name": name, "xml": f"<domain type='test'><name>{name}</name><uuid>"
                                     f"{dom['uuid']}</uuid><memory unit='KiB'>"
                                     f"{dom['memory_bytes'] // 1024}</memory><vcpu>"
                                     f"{dom['vcpus']}</vcpu></domain>"}

    def domain_objects(self) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(d) for d in self.domains.values()]


class SimulatedVirtFleet:
    """``hosts`` runtimes with a SimVirt each; the first holds ``ha_vms`` VMs, the
    other ``vms - ha_vms`` fall on the others at random."""

    def __init__(self, bench: Bench, hosts: int, vms: int, ha_vms: int, seed: int = 17) -> None:
        rnd = random.Random(seed)
        self.prefix = f"mgr{uuid.uuid4().hex[:4]}"
        self.hosts = [f"{self.prefix}-{i:05d}" for i in range(hosts)]
        bench.admin.enroll_many(bench.vhost, [(host, ["virt"]) for host in self.hosts])
        self.started: dict[str, str] = {}  # VM -> host it was started on
        self.started_lock = threading.Lock()
        self.all_started = threading.Event()
        self.waiting_for: set[str] = set()
        self.agents = {host: SimVirt(host, self._started) for host in self.hosts}
        self.ha = [f"ha-{i:03d}" for i in range(ha_vms)]
        for name in self.ha:
            self.agents[self.hosts[0]].add(name, 2, 2 * GIB)
        self.sizes: dict[str, tuple[int, int]] = {}
        for i in range(vms - ha_vms):
            host = self.hosts[1 + rnd.randrange(hosts - 1)]
            gib = rnd.choice(SIZES)
            self.agents[host].add(f"vm-{i:05d}", max(1, gib // 2), gib * GIB)
        self.marked_ha = [f"vm-{i:05d}" for i in range(vms - ha_vms) if i % 5 == 0]
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="sim-virt")
        self.transports: list[Transport] = []
        self.runtimes: dict[str, AgentRuntime] = {}
        self.killed = False
        # The first host (the one lost) has a connection of its own: closing it is the
        # host's death (no word, as a SIGKILL), the others share one per 500.
        groups = [self.hosts[:1]] + [self.hosts[start:start + PER_CONNECTION]
                                     for start in range(1, hosts, PER_CONNECTION)]
        for group in groups:
            transport = connect(bench.url, connection_name="simulated virt hosts", prefetch=16)
            transport.start()
            self.transports.append(transport)
            for host in group:
                runtime = AgentRuntime(transport, host, [self.agents[host]],
                                       heartbeat_interval=0, executor=self.pool)
                runtime.start()
                self.runtimes[host] = runtime

    def _started(self, host: str, name: str) -> None:
        with self.started_lock:
            self.started[name] = host
            if self.waiting_for and self.waiting_for <= self.started.keys():
                self.all_started.set()

    def expect(self, names: list[str]) -> None:
        with self.started_lock:
            self.waiting_for = set(names)
            self.all_started.clear()

    def kill(self) -> None:
        """The first host is gone: its agent answers nothing more, and says nothing."""
        self.transports[0].close()
        self.killed = True

    def close(self) -> None:
        for host, runtime in self.runtimes.items():
            if host != self.hosts[0] or not self.killed:
                runtime.stop("benchmark over", close_transport=False)
        for transport in self.transports:
            transport.close()
        self.pool.shutdown()


def _config(bench: Bench, name: str, state_dir: str) -> dict[str, Any]:
    cfg: dict[str, Any] = {section: dict(values) for section, values in DEFAULTS.items()}
    cfg["broker"]["url"] = bench.url
    cfg["manager"].update(host_id=name, state_dir=state_dir, heartbeat_grace=3600.0,
                          ping_timeout=0.5, reconcile_interval=3600.0, call_timeout=30.0,
                          tick_interval=0.5, heartbeat_interval=0.0, parallel_moves=2)
    cfg["placement_config"] = PlacementConfig()
    cfg["thresholds"] = Thresholds()
    return cfg


class _Instance:
    """One manager instance on the state file in ``folder``."""

    def __init__(self, bench: Bench, cfg: dict[str, Any], folder: Path,
                 console: Console) -> None:
        t0 = time.perf_counter()
        self.fleet = Fleet(folder / "manager.db", placement=cfg["placement_config"])
        self.load_s = time.perf_counter() - t0
        self.service = ManagerService(cfg, console=console, fleet=self.fleet,
                                      policy=DiscoveryOnly("service"),
                                      audit=AuditLog(folder / "audit.jsonl"))

    def start(self, timeout: float) -> tuple[float, float]:
        """Seconds until active, and until its first listing is done."""
        t0 = time.perf_counter()
        self.service.start()
        if not self.service.standby.wait_active(timeout):
            raise RuntimeError("the manager did not become active")
        active = time.perf_counter() - t0
        if not self.service.manager.reconciled.wait(timeout):
            raise RuntimeError("the manager's first listing did not finish")
        return active, time.perf_counter() - t0

    def stop(self) -> None:
        self.service.stop("benchmark")
        self.fleet.close()


def _decisions(fleet: Fleet, n: int, rebuilt_n: int) -> dict[str, Any]:
    """The kept index against one built from every record for each decision."""
    vms = fleet.vms()
    rnd = random.Random(5)
    picks = [rnd.choice(vms) for _ in range(n)]
    kept: list[float] = []
    rebuilt: list[float] = []
    config = fleet.placement
    per_turn = max(1, rebuilt_n * 100 // n)
    for start in range(0, n, 100):
        for vm in picks[start:start + 100]:
            t0 = time.perf_counter()
            fleet.place_away(vm)
            kept.append((time.perf_counter() - t0) * 1000)
        for vm in picks[start:start + per_turn]:
            if len(rebuilt) >= rebuilt_n:
                break
            t0 = time.perf_counter()
            index = PlacementIndex([host_view(h) for h in fleet.hosts() if h.host != vm.host],
                                   [vm_view(v) for v in fleet.vms() if v.name != vm.name],
                                   config)
            place(PlacementRequest(vcpus=max(1, vm.vcpus),
                                   memory_mib=max(1, vm.memory_bytes // MIB),
                                   names=(vm.name,), ha=vm.ha, ha_reservation=False), index)
            rebuilt.append((time.perf_counter() - t0) * 1000)
    # The machine's speed at that moment: the placement benchmark's bare loop (online
    # host with the most memory left among those with room) on the same index.
    from benchmarks.placement import naive

    bare = []
    with fleet._lock:
        for vm in picks[:100]:
            t0 = time.perf_counter()
            naive(fleet._index, max(1, vm.vcpus), max(1, vm.memory_bytes // MIB))
            bare.append((time.perf_counter() - t0) * 1000)
    return {"kept_index": summary(kept), "rebuilt_per_decision": summary(rebuilt),
            "ratio_p50": round(summary(rebuilt)["p50"] / summary(kept)["p50"], 1),
            "bare_loop": summary(bare),
            "kept_to_bare_loop_p50": round(summary(kept)["p50"] / summary(bare)["p50"], 1)}


def run(bench: Bench, hosts: int = 1000, vms: int = 10_000, ha_vms: int = 50,
        decisions: int = 500) -> dict[str, Any]:
    process = psutil.Process()
    name = f"mgr-bench-{uuid.uuid4().hex[:4]}"
    bench.admin.enroll_active_queue(bench.vhost, name, list(EVENT_PATTERNS))
    bench.admin.enroll_host(bench.vhost, name, ["manager"])
    progress(f"manager: {hosts} simulated virt hosts, {vms} VMs")
    sim = SimulatedVirtFleet(bench, hosts, vms, ha_vms)
    console = Console.connect(bench.url)
    out: dict[str, Any] = {"hosts": hosts, "vms": vms, "ha_vms_on_lost_host": ha_vms}
    instance: _Instance | None = None
    try:
        with tempfile.TemporaryDirectory() as folder:
            cfg = _config(bench, name, folder)
            gc.collect()
            rss_before = process.memory_info().rss
            instance = _Instance(bench, cfg, Path(folder), console)
            active_s, listed_s = instance.start(600)
            fleet = instance.fleet
            out["first_start_s"] = {"active": round(active_s, 2), "listed": round(listed_s, 2)}
            known = (len(fleet.hosts()), len(fleet.vms()))
            if known != (hosts, vms):
                raise RuntimeError(f"the manager knows {known[0]} hosts and {known[1]} VMs, "
                                   f"not {hosts} and {vms}")
            for vm in sim.ha + sim.marked_ha:
                fleet.update_vm(vm, ha=True)
            progress(f"manager: a listing that learns {len(sim.ha) + len(sim.marked_ha)} "
                     "HA VMs' XML")
            t0 = time.perf_counter()
            instance.service.manager.reconcile()
            out["listing_with_ha_xml_s"] = round(time.perf_counter() - t0, 2)
            gc.collect()
            rss_after = process.memory_info().rss
            out["rss_mb"] = {"fleet_alone": round(rss_before / 2**20, 1),
                             "with_manager": round(rss_after / 2**20, 1),
                             "manager": round((rss_after - rss_before) / 2**20, 1)}

            progress(f"manager: {decisions} placement decisions, kept index and rebuilt")
            out["decision_ms"] = _decisions(fleet, decisions, max(5, decisions // 25))

            progress("manager: plans over the whole fleet")
            t0 = time.perf_counter()
            balance = plan(fleet, "even_distribution", config=cfg["placement_config"])
            balance_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            lost = plan(fleet, "host_down", host_down=sim.hosts[0])
            out["plan"] = {"even_distribution_s": round(balance_s, 3),
                           "moves": len(balance["moves"]), "left": len(balance["left"]),
                           "host_down_s": round(time.perf_counter() - t0, 3),
                           "host_down_moves": len(lost["moves"])}

            progress("manager: restarted on its state file")
            instance.stop()
            instance = _Instance(bench, cfg, Path(folder), console)
            active_s, listed_s = instance.start(600)
            out["restart_s"] = {"state_read": round(instance.load_s, 3),
                                "active": round(active_s, 2), "listed": round(listed_s, 2)}
            fleet = instance.fleet

            progress(f"manager: {sim.hosts[0]} lost, {ha_vms} HA VMs to restart")
            lost_at: list[float] = []
            manager = instance.service.manager
            on_down = manager.on_down

            def timed_down(host: str) -> None:
                lost_at.append(time.perf_counter())
                on_down(host)

            manager.on_down = timed_down
            sim.expect(sim.ha)
            sim.kill()
            fleet.update_host(sim.hosts[0], state="unresponsive", why="benchmark")
            manager.confirm_down(sim.hosts[0], "benchmark")
            if not sim.all_started.wait(600):
                raise RuntimeError(f"{len(sim.waiting_for - sim.started.keys())} HA VMs "
                                   "were not restarted")
            restarted_s = time.perf_counter() - lost_at[0]
            elsewhere = {sim.started[v] for v in sim.ha}
            out["ha_restart"] = {"vms": ha_vms, "seconds": round(restarted_s, 2),
                                 "per_vm_ms": round(restarted_s * 1000 / ha_vms, 1),
                                 "target_hosts": len(elsewhere),
                                 "on_lost_host": sim.hosts[0] in elsewhere}
            progress(f"manager: {ha_vms} HA VMs running elsewhere after {restarted_s:.2f} s")
            instance.stop()
            instance = None
    finally:
        if instance is not None:
            instance.stop()
        console.close()
        sim.close()
    return out
