"""Provisioning throughput end to end on libvirt's test driver: K requests posted at once,
time until every reply is in. Two virt agents and the provisioner run in this process."""

from __future__ import annotations

import copy
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from agents import virt
from benchmarks.harness import Bench, summary
from console.client import Console
from console.provisioner.agent import ProvisionAgent
from console.provisioner.ledger import VmLedger
from console.provisioner.quotas import Quotas
from console.provisioner.service import Provisioner, consume_requests
from console.provisioner.store import RequestStore
from hostbus.security.policy import AllowAll
from hostbus.serving.runtime import AgentRuntime


def run(bench: Bench, requests: int) -> dict[str, Any]:
    started_objs: list[Any] = []
    tmp = tempfile.TemporaryDirectory()
    try:
        for i in range(2):
            host = f"pvirt{i}-{uuid.uuid4().hex[:4]}"
            bench.admin.enroll_host(bench.vhost, host, ["virt"])
            cfg = copy.deepcopy(virt.CONFIG_DEFAULTS)
            cfg["stats_interval"] = 0
            started_objs.append(AgentRuntime.serve(
                bench.url, host, [virt.create(cfg, host_id=host)], heartbeat_interval=0))
        prov_id = f"prov-{uuid.uuid4().hex[:4]}"
        bench.admin.enroll_host(bench.vhost, prov_id, ["provision"])
        store = RequestStore(Path(tmp.name) / "p.db")
        ledger = VmLedger(store.path)
        quotas = Quotas(10**6, {})
        pagent = ProvisionAgent(store, ledger, quotas)
        pruntime = AgentRuntime.serve(bench.url, prov_id, [pagent], prefetch=1,
                                      heartbeat_interval=0)
        started_objs.append(pruntime)
        pconsole = Console.connect(bench.url)
        provisioner = Provisioner(console=pconsole, publisher=pruntime.publisher,
                                  store=store, ledger=ledger, agent=pagent, host_id=prov_id,
                                  quotas=quotas, policy=AllowAll(), audit=None,
                                  discovery_idle=0.05)
        provisioner.start()
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
        return {"requests": requests, "vms": requests, "elapsed_s": round(elapsed, 2),
                "requests_per_s": round(requests / elapsed, 2),
                "completion_ms": summary(latencies)}
    finally:
        for obj in reversed(started_objs):
            if isinstance(obj, AgentRuntime):
                obj.stop("benchmark over")
            else:
                obj.close()
        tmp.cleanup()
