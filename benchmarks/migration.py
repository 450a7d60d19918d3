"""Live migration: how long it takes and how long the guest is paused, through hostbus
and with libvirt alone, in the same run on the same two hypervisors.

    sudo .venv/bin/python -m benchmarks.migration                  # 32 and 128 MiB guests
    sudo .venv/bin/python -m benchmarks.migration --memory-mib 64 --rounds 5 --json out.json

It sets up the hypervisor pair (scripts/hypervisor_pair.py: two libvirt daemons in
namespaces of their own, linked by a veth pair) with a hostbus-agent each in a vhost of
its own, starts the counter guest (QEMU, software emulation) at each memory size, and
moves it there and back: one way with ``virt.domain.migrate`` through the broker, the
other way with libvirt's own ``migrateToURI3`` (what ``virsh migrate --live --p2p
--persistent --undefinesource --copy-storage-all`` does), with the same flags and
maximum downtime and no bandwidth limit; the two swap directions every round. Each
migration reports libvirt's job statistics (time, downtime, data sent), the wall time of
the call that made it, and the pause the daemons report (from the source's "suspended,
migrated" event to the target's "resumed, migrated", both received by this process).
Needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.harness import ADMIN, AMQP, bench_vhost, progress


def run(amqp: str, admin_url: str, memory_mib: list[int], rounds: int) -> dict[str, Any]:
    import libvirt

    from agents.virt import migration as rules
    from agents.virt.connection import open_connection
    from console import migration
    from console.client import Console
    from scripts.hypervisor_pair import Pair

    results: dict[str, Any] = {"meta": {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                              time.gmtime()),
                                        "cpus": os.cpu_count(), "rounds": rounds,
                                        "guest": "scripts/counter_guest.s under TCG",
                                        "link": "veth pair between two network namespaces",
                                        "bandwidth_limit": None},
                               "sizes": []}
    tag = uuid.uuid4().hex[:6]
    directory = Path(f"/tmp/hostbus-bench-migration-{tag}")
    with bench_vhost(amqp, admin_url) as bench:
        pair = Pair.up(directory, (f"bench{tag}-a", f"bench{tag}-b"))
        try:
            for host in pair.hosts:
                bench.admin.enroll_host(bench.vhost, host.name, ["virt"])
            pair.start_agents(bench.url)
            a, b = pair.hosts
            raw = {h.name: open_connection(h.local_uri) for h in pair.hosts}
            completed: dict[str, dict[str, Any]] = {}
            arrived = threading.Condition()

            def on_completed(conn: Any, dom: Any, stats: dict[str, Any], _: Any) -> None:
                with arrived:
                    completed[dom.UUIDString()] = stats
                    arrived.notify_all()

            # The guest's pause as the two daemons report it: from "suspended, migrated"
            # on the source to "resumed, migrated" on the target, both taken here.
            paused_at: dict[str, float] = {}
            resumed_at: dict[str, float] = {}

            def on_lifecycle(conn: Any, dom: Any, event: int, detail: int, _: Any) -> None:
                now = time.perf_counter()
                if (event, detail) == (libvirt.VIR_DOMAIN_EVENT_SUSPENDED,
                                       libvirt.VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED):
                    paused_at[dom.UUIDString()] = now
                elif (event, detail) == (libvirt.VIR_DOMAIN_EVENT_RESUMED,
                                         libvirt.VIR_DOMAIN_EVENT_RESUMED_MIGRATED):
                    with arrived:
                        resumed_at[dom.UUIDString()] = now
                        arrived.notify_all()

            def pause_ms(dom_uuid: str) -> dict[str, float]:
                with arrived:
                    arrived.wait_for(lambda: dom_uuid in resumed_at, 10)
                if dom_uuid in resumed_at and dom_uuid in paused_at:
                    return {"paused_ms": round(
                        (resumed_at.pop(dom_uuid) - paused_at.pop(dom_uuid)) * 1000, 1)}
                return {}

            for conn in raw.values():
                conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED,
                                            on_completed, None)
                conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                            on_lifecycle, None)
            with Console.connect(bench.url) as console:

                def via_hostbus(name: str, source: Any, target: Any) -> dict[str, Any]:
                    route = migration.plan(console, name, target.name, source=source.name)
                    started = time.perf_counter()
                    res = migration.migrate(console, route, timeout=600)
                    wall = (time.perf_counter() - started) * 1000
                    if res.status != "ok" or res.reply is None:
                        raise RuntimeError(f"hostbus migration failed: {res.reply}")
                    return {"wall_ms": round(wall, 1), **res.reply.result["job"],
                            **pause_ms(res.reply.result["uuid"])}

                def via_libvirt(name: str, source: Any, target: Any) -> dict[str, Any]:
                    dom = raw[source.name].lookupByName(name)
                    plan = rules.Plan(target.migration_uri, live=True, copy_storage="all",
                                      bandwidth_mib_s=None, auto_converge=True)
                    dom_uuid = dom.UUIDString()
                    dom.migrateSetMaxDowntime(300, 0)   # what the agent sets
                    started = time.perf_counter()
                    dom.migrateToURI3(plan.target_uri, plan.params, plan.flags)
                    wall = (time.perf_counter() - started) * 1000
                    with arrived:
                        arrived.wait_for(lambda: dom_uuid in completed, 10)
                        stats = completed.pop(dom_uuid, {})
                    return {"wall_ms": round(wall, 1), **rules.job_figures(stats),
                            **pause_ms(dom_uuid)}

                paths = {"hostbus": via_hostbus, "libvirt": via_libvirt}
                for size in memory_mib:
                    name = f"bench-{size}m-{tag}"
                    progress(f"migration: {size} MiB guest, {rounds} round trips")
                    pair.define_guest(a.name, name, memory_mib=size)
                    _wait_counting(pair, a.name, name)
                    samples: list[dict[str, Any]] = []
                    for round_no in range(rounds):
                        # Each round goes there and back; the paths swap directions every
                        # round, so that neither gets only one direction.
                        order = ["hostbus", "libvirt"][::1 if round_no % 2 == 0 else -1]
                        for path, (source, target) in zip(order, ((a, b), (b, a)),
                                                          strict=True):
                            figures = paths[path](name, source, target)
                            samples.append({"path": path, "from": source.name,
                                            "to": target.name, **figures})
                            _wait_counting(pair, target.name, name)
                    pair.virsh(a.name, "destroy", name)
                    pair.virsh(a.name, "undefine", name, "--remove-all-storage")
                    results["sizes"].append({"memory_mib": size, "samples": samples,
                                             "summary": _summary(samples)})
            for conn in raw.values():
                conn.close()
        finally:
            pair.down()
    return results


def _wait_counting(pair: Any, host: str, name: str) -> None:
    """Until the guest printed a count on ``host`` after the last one seen there: it has
    filled its memory and runs (a serial console file has no event to wait on)."""
    from scripts.hypervisor_pair import wait_until

    seen = len(pair.counts(host, name))
    wait_until(lambda: len(pair.counts(host, name)) > seen, time.monotonic() + 120,
          f"{name} to count on {host}")


def _summary(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Per path: the median of each figure, and the range of the ones that vary most."""
    out: dict[str, Any] = {}
    for path in ("hostbus", "libvirt"):
        mine = [s for s in samples if s["path"] == path]
        figures: dict[str, Any] = {}
        for key in ("wall_ms", "elapsed_ms", "downtime_ms", "paused_ms",
                    "data_processed_bytes", "memory_total_bytes"):
            values = [s[key] for s in mine if key in s]
            if values and len(values) == len(mine):
                figures[key] = round(statistics.median(values), 1)
                if key in ("wall_ms", "downtime_ms"):
                    figures[key.replace("_ms", "_range_ms")] = [min(values), max(values)]
        out[path] = figures
    if out["hostbus"].get("wall_ms") and out["libvirt"].get("wall_ms"):
        out["wall_ratio"] = round(out["hostbus"]["wall_ms"] / out["libvirt"]["wall_ms"], 2)
    return out


def print_table(results: dict[str, Any]) -> None:
    print(f"{'memory':>7} {'path':<8} {'wall ms':>8} {'libvirt ms':>10} "
          f"{'downtime ms (range)':>20} {'paused ms':>9} {'sent MiB':>8}")
    for size in results["sizes"]:
        for path in ("hostbus", "libvirt"):
            s = size["summary"][path]
            low, high = s.get("downtime_range_ms", [0, 0])
            downtime = f"{s.get('downtime_ms', 0):.0f} ({low}-{high})"
            print(f"{size['memory_mib']:>5} MiB {path:<8} {s.get('wall_ms', 0):>8.0f} "
                  f"{s.get('elapsed_ms', 0):>10.0f} {downtime:>20} "
                  f"{s.get('paused_ms', 0):>9.0f} "
                  f"{s.get('data_processed_bytes', 0) / (1 << 20):>8.1f}")
        if "wall_ratio" in size["summary"]:
            print(f"{'':>9} hostbus / libvirt wall time: {size['summary']['wall_ratio']}x")
    print(f"(medians of {results['meta']['rounds']} migrations per path and size)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--memory-mib", default="32,128",
                        help="guest memory sizes, comma-separated (default 32,128)")
    parser.add_argument("--rounds", type=int, default=4,
                        help="round trips per size; each path goes each way in turn "
                             "(default 4)")
    parser.add_argument("--json", metavar="PATH", help="also write the results here")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("benchmarks.migration: needs root (network and mount namespaces)",
              file=sys.stderr)
        return 2
    sizes = [int(x) for x in args.memory_mib.split(",") if x.strip()]
    results = run(AMQP, ADMIN, sizes, max(1, args.rounds))
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
