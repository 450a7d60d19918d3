"""Provisioning throughput end to end on libvirt's test driver: N requests of one VM
each posted at once, time until every ``provision.completed``, against the same VMs
defined by direct ``virt.domain.define`` calls from as many threads as the provisioner
has workers (the floor: what the virt agents themselves take).

The virt hosts are real virt agents, each with its own test-driver node (8 CPUs,
16 GiB), sharing a process, a worker pool and a connection per 50, as the fan-out
benchmark's simulated agents do. The provisioner runs in this process too.
"""

from __future__ import annotations

import copy
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from agents import virt
from benchmarks.harness import Bench, progress, summary
from console.client import Console
from console.provisioner.agent import ProvisionAgent
from console.provisioner.ledger import VmLedger
from console.provisioner.quotas import Quotas
from console.provisioner.service import Provisioner, consume_requests
from console.provisioner.store import RequestStore
from hostbus.security.policy import AllowAll
from hostbus.serving.runtime import AgentRuntime
from hostbus.transport import connect
from hostbus.transport.base import Transport

PER_CONNECTION = 50
WORKERS = 8


class VirtFleet:
    """``n`` virt agents on the test driver, enrolled in the bench's vhost."""

    def __init__(self, bench: Bench, n: int) -> None:
        prefix = f"pv{uuid.uuid4().hex[:4]}"
        self.hosts = [f"{prefix}-{i:04d}" for i in range(n)]
        bench.admin.enroll_many(bench.vhost, [(host, ["virt"]) for host in self.hosts])
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="virt-worker")
        self.transports: list[Transport] = []
        self.runtimes: list[AgentRuntime] = []
        cfg = copy.deepcopy(virt.CONFIG_DEFAULTS)
        cfg["stats_interval"] = 0
        for start in range(0, n, PER_CONNECTION):
            transport = connect(bench.url, connection_name="benchmark virt hosts", prefetch=16)
            transport.start()
            self.transports.append(transport)
            for host in self.hosts[start:start + PER_CONNECTION]:
                runtime = AgentRuntime(transport, host, [virt.create(cfg, host_id=host)],
                                       heartbeat_interval=0, executor=self.pool)
                runtime.start()
                self.runtimes.append(runtime)

    def close(self) -> None:
        for runtime in self.runtimes:
            runtime.stop("benchmark over", close_transport=False)
        for transport in self.transports:
            transport.close()
        self.pool.shutdown()


def direct_defines(bench: Bench, hosts: list[str], n: int) -> dict[str, Any]:
    """The floor: ``n`` VMs defined and started by plain calls, round robin over the
    hosts, ``WORKERS`` at once."""
    console = Console.connect(bench.url)
    try:
        done: list[float] = []
        lock = threading.Lock()
        names = [f"direct-{uuid.uuid4().hex[:6]}-{i}" for i in range(n)]
        t0 = time.perf_counter()

        def define(i: int) -> None:
            res = console.call("virt", "domain.define", {"name": names[i], "template": "web",
                                                         "start": True},
                               host=hosts[i % len(hosts)], timeout=60)
            if res.reply is None or not res.reply.ok:
                raise RuntimeError(f"direct define failed: {res.status}")
            with lock:
                done.append((time.perf_counter() - t0) * 1000)

        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            list(pool.map(define, range(n)))
        elapsed = max(done) / 1000
        return {"vms": n, "elapsed_s": round(elapsed, 2), "vms_per_s": round(n / elapsed, 2),
                "completion_ms": summary(done)}
    finally:
        console.close()


def run(bench: Bench, requests: int, hosts: int = 100) -> dict[str, Any]:
    started_objs: list[Any] = []
    tmp = tempfile.TemporaryDirectory()
    fleet: VirtFleet | None = None
    try:
        progress(f"provisioning: starting {hosts} virt agents (test driver)")
        fleet = VirtFleet(bench, hosts)
        prov_id = f"prov-{uuid.uuid4().hex[:4]}"
        bench.admin.enroll_host(bench.vhost, prov_id, ["provision"])
        store = RequestStore(Path(tmp.name) / "p.db")
        ledger = VmLedger(store.path)
        quotas = Quotas(10**6, {})
        pagent = ProvisionAgent(store, ledger, quotas)
        pruntime = AgentRuntime.serve(bench.url, prov_id, [pagent], prefetch=WORKERS,
                                      heartbeat_interval=0)
        started_objs.append(pruntime)
        pconsole = Console.connect(bench.url)
        provisioner = Provisioner(console=pconsole, publisher=pruntime.publisher,
                                  store=store, ledger=ledger, agent=pagent, host_id=prov_id,
                                  quotas=quotas, policy=AllowAll(), audit=None,
                                  discovery_idle=0.05, workers=WORKERS)
        provisioner.start()
        if not provisioner.hosts.refreshed.wait(60):
            raise RuntimeError("the provisioner never heard from the virt hosts")
        consume_requests(pruntime.transport, provisioner.on_message)

        client = Console.connect(bench.url)
        started_objs += [client, provisioner, pconsole]
        finished: dict[str, tuple[str, float]] = {}
        cond = threading.Condition()

        def on_event(ev: Any, note: str | None) -> None:
            with cond:
                finished[ev.data["request_id"]] = (ev.event, time.perf_counter())
                cond.notify_all()

        client.subscribe([f"provision.{prov_id}.completed", f"provision.{prov_id}.failed"],
                         on_event)
        body = {"v": 1, "template": "web", "count": 1, "owner": "bench"}
        progress(f"provisioning: {requests} requests over {hosts} hosts")
        t0 = time.perf_counter()
        ids = [client.provision(body, wait=False)[0] for _ in range(requests)]
        with cond:
            if not cond.wait_for(lambda: all(i in finished for i in ids), timeout=300):
                raise RuntimeError("provisioning requests did not all finish within 300 s")
        failed = [i for i in ids if finished[i][0] != "completed"]
        if failed:
            raise RuntimeError(f"{len(failed)} provisioning requests failed")
        latencies = [(finished[i][1] - t0) * 1000 for i in ids]
        elapsed = max(finished[i][1] for i in ids) - t0
        progress(f"provisioning: the same {requests} VMs by direct domain.define calls")
        floor = direct_defines(bench, fleet.hosts, requests)
        per_s = requests / elapsed
        return {"hosts": hosts, "workers": WORKERS, "requests": requests, "vms": requests,
                "elapsed_s": round(elapsed, 2), "requests_per_s": round(per_s, 2),
                "completion_ms": summary(latencies), "direct_defines": floor,
                "ratio_to_direct": round(per_s / floor["vms_per_s"], 2)}
    finally:
        for obj in reversed(started_objs):
            if isinstance(obj, AgentRuntime):
                obj.stop("benchmark over")
            else:
                obj.close()
        if fleet is not None:
            fleet.close()
        tmp.cleanup()
