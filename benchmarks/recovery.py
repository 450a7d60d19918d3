"""How fast agents notice a broker that went silent and come back when it returns, and
how fast a call nobody can take is answered: measured on a RabbitMQ node of this
script's own, over both protocols, with the transports' defaults (heartbeat 10 s,
backoff cap 4 s). From a source checkout, as root (it starts RabbitMQ nodes the way the
tests do, tests/rabbit_node.py):

    .venv/bin/python -m benchmarks.recovery                 # every scenario, both protocols
    .venv/bin/python -m benchmarks.recovery --only frozen --protocol amqp10 --json

Scenarios:
- frozen: the broker is SIGSTOPped (as behind a silent network): seconds until the
  agent notices; then SIGCONTed: seconds until it is back.
- return: the broker is stopped for --outage-seconds (the agents reach their backoff
  cap) and started: seconds from `rabbitmqctl await_startup` until each of --agents
  agents is back (negative: before await_startup returned).
- unroutable: a call to a host nobody enrolled: seconds until it is answered.
`hostbus bench --only faults` measures crashes, alarms and deleted queues. Nothing here
is asserted (tests/integration/test_broker_faults.py checks the behaviour).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from console.client import Console
from hostbus.serving.runtime import AgentRuntime
from tests.fakes import make_host_agent
from tests.rabbit_node import RabbitNode, hostbus_node

SCENARIOS = ("frozen", "return", "unroutable")
PROTOCOLS = {"amqp091": "amqp", "amqp10": "amqp10"}


def progress(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


def url_for(node: RabbitNode, protocol: str) -> str:
    return node.url().replace("amqp://", f"{PROTOCOLS[protocol]}://")


def waited(event: threading.Event, since: float, timeout: float) -> float | None:
    """Seconds from ``since`` until ``event`` was set, or None if it was not."""
    if not event.wait(timeout):
        return None
    return round(time.monotonic() - since, 2)


def stamp(event: threading.Event, at: dict[str, float], key: str) -> Callable[..., None]:
    def fire(*_: Any) -> None:
        at.setdefault(key, time.monotonic())
        event.set()
    return fire


def enrolled_agent(node: RabbitNode, protocol: str) -> AgentRuntime:
    host = f"f-{uuid.uuid4().hex[:6]}"
    node.admin.enroll_host("hostbus", host, ["host"])
    agent, _, _ = make_host_agent(host)
    return AgentRuntime.serve(url_for(node, protocol), host, [agent], heartbeat_interval=0)


# ---------------------------------------------------------------------- scenarios
def frozen(node: RabbitNode, protocol: str) -> dict[str, Any]:
    runtime = enrolled_agent(node, protocol)
    lost, back = threading.Event(), threading.Event()
    at: dict[str, float] = {}
    runtime.transport.on_connection_lost(stamp(lost, at, "lost"))
    runtime.transport.on_connection_restored(stamp(back, at, "back"))
    pid = int((node.folder / "pid").read_text())
    try:
        os.kill(pid, signal.SIGSTOP)
        stopped = time.monotonic()
        noticed = waited(lost, stopped, 180)
        os.kill(pid, signal.SIGCONT)
        thawed = time.monotonic()
        return {"noticed_s": noticed, "back_after_thaw_s": waited(back, thawed, 120)}
    finally:
        os.kill(pid, signal.SIGCONT)
        runtime.stop("bench over")


def broker_return(node: RabbitNode, protocol: str, agents: int,
                  outage_s: float) -> dict[str, Any]:
    fleet = [enrolled_agent(node, protocol) for _ in range(agents)]
    backs: list[threading.Event] = []
    at: list[dict[str, float]] = []
    for runtime in fleet:
        back, stamps = threading.Event(), {}
        runtime.transport.on_connection_restored(stamp(back, stamps, "back"))
        backs.append(back)
        at.append(stamps)
    try:
        node.ctl("stop_app")
        threading.Event().wait(outage_s)  # long enough for every agent to reach its cap
        node.ctl("start_app")
        node.ctl("await_startup")
        ready = time.monotonic()
        for back in backs:
            back.wait(120)
        after = sorted(round(s["back"] - ready, 2) for s in at if "back" in s)
        return {"agents": agents, "outage_s": outage_s, "back": len(after),
                "after_broker_ready_s": {"min": after[0], "median": statistics.median(after),
                                         "max": after[-1]} if after else None}
    finally:
        for runtime in fleet:
            runtime.stop("bench over")


def unroutable(node: RabbitNode, protocol: str) -> dict[str, Any]:
    console = Console.connect(url_for(node, protocol))
    try:
        t0 = time.monotonic()
        res = console.call("agent", "ping", host=f"ghost-{uuid.uuid4().hex[:6]}", timeout=10)
        return {"answer": res.status, "seconds": round(time.monotonic() - t0, 3),
                "broker_says_so": console.transport.reports_unroutable}
    finally:
        console.close()


# ---------------------------------------------------------------------------- main
def run(only: tuple[str, ...], protocols: tuple[str, ...], args: argparse.Namespace,
        folder: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with hostbus_node(folder / "node", "a RabbitMQ node") as node:
        results["broker"] = node.admin.version()
        for protocol in protocols:
            out = results.setdefault(protocol, {})
            for scenario in only:
                progress(f"{scenario} over {protocol}")
                if scenario == "frozen":
                    out[scenario] = frozen(node, protocol)
                elif scenario == "return":
                    out[scenario] = broker_return(node, protocol, args.agents,
                                                  args.outage_seconds)
                elif scenario == "unroutable":
                    out[scenario] = unroutable(node, protocol)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.recovery",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=SCENARIOS,
                        help="one scenario (repeatable); default: all")
    parser.add_argument("--protocol", action="append", choices=tuple(PROTOCOLS),
                        help="one protocol (repeatable); default: both")
    parser.add_argument("--agents", type=int, default=20, help="agents in return (20)")
    parser.add_argument("--outage-seconds", type=float, default=20.0,
                        help="broker down in return (20)")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args(argv)
    # The scenarios break connections on purpose: pika and proton narrate each one.
    logging.basicConfig(level=logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="hostbus-recovery-") as folder:
        results = run(tuple(args.only or SCENARIOS), tuple(args.protocol or PROTOCOLS),
                      args, Path(folder))
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"RabbitMQ {results.pop('broker')}")
    for protocol, scenarios in results.items():
        for scenario, figures in scenarios.items():
            print(f"{protocol:8} {scenario:14} {json.dumps(figures)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
