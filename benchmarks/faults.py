"""The faults operators meet, measured on a RabbitMQ node of this script's own, over both
protocols: what a subscriber lost, saw twice or out of order, and how many seconds each
recovery took. From a source checkout, as root (it starts RabbitMQ nodes the way the
tests do, tests/rabbit_node.py):

    .venv/bin/python -m benchmarks.faults                 # every scenario, both protocols
    .venv/bin/python -m benchmarks.faults --only crash --only alarm --json

Scenarios:
- crash: one agent emits events under two names (one sequence), the broker is
  SIGKILLed mid-stream and restarted; a durable 0-9-1 subscriber counts what arrived at
  the wire (repeats included: at-least-once) and what reached its handler.
- alarm: a memory alarm (set_vm_memory_high_watermark) held for --alarm-seconds: when
  the agent notices, what a call meanwhile answers, whether a connection dropped.
- deleted-queue: the host's queue is deleted by an administrator and enrolled again: when
  the agent notices, and how long from the enroll to an answered ping.
- frozen: the broker is SIGSTOPped (a silent network): when the agent notices; then
  SIGCONTed: how long until it is back.
- return: the broker is stopped for --outage-seconds (the agents wait at their backoff
  cap) and started: how long each of --agents agents takes to be back after it.
- unroutable: a call to a host nobody enrolled: how long until it is answered.
Nothing here is asserted (tests/integration/test_broker_faults.py checks behaviour).
"""

from __future__ import annotations

import argparse
import itertools
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
from hostbus.envelope import parse_event
from hostbus.errors import HostbusError
from hostbus.serving.runtime import AgentRuntime
from hostbus.transport import connect
from hostbus.transport.base import Delivery
from tests.fakes import make_host_agent
from tests.rabbit_node import RabbitNode, hostbus_node, kill

SCENARIOS = ("crash", "alarm", "deleted-queue", "frozen", "return", "unroutable")
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


def interleaved(agent: Any, first: int, last: int) -> None:
    for n in range(first, last):
        if n % 2:
            agent.emit("alert", {"metric": "cpu_percent", "resource": "cpu", "state": "raised",
                                 "value": float(n), "raise_at": 90.0, "clear_at": 80.0})
        else:
            agent.emit("metrics", {"time": "2026-01-01T00:00:00Z", "cpu_percent": float(n),
                                   "load": [0.0, 0.0, 0.0], "memory": {}, "disks": []})


def enrolled_agent(node: RabbitNode, protocol: str, **options: Any) -> tuple[str, Any,
                                                                             AgentRuntime]:
    host = f"f-{uuid.uuid4().hex[:6]}"
    node.admin.enroll_host("hostbus", host, ["host"])
    agent, _, _ = make_host_agent(host)
    options.setdefault("heartbeat_interval", 0)
    return host, agent, AgentRuntime.serve(url_for(node, protocol), host, [agent], **options)


# ---------------------------------------------------------------------- scenarios
def crash(node: RabbitNode, protocol: str, events: int) -> dict[str, Any]:
    host, agent, runtime = enrolled_agent(node, protocol)
    wire: list[int] = []  # seqs as they arrived, repeats included
    handed: list[int] = []  # what the console's subscriber handler got
    done = threading.Event()
    queue = f"crash-{host}"
    console = Console.connect(node.url())
    console.subscribe([f"host.{host}.*"], lambda ev, note: (
        handed.append(ev.seq), len(handed) >= events and done.set()), name=queue,
        durable=True)
    raw = connect(node.url())
    raw.start()

    def on_wire(delivery: Delivery) -> None:
        wire.append(parse_event(delivery).seq)

    raw.subscribe([f"host.{host}.*"], on_wire)
    lost, back = threading.Event(), threading.Event()
    at: dict[str, float] = {}
    runtime.transport.on_connection_lost(stamp(lost, at, "lost"))
    runtime.transport.on_connection_restored(stamp(back, at, "back"))
    try:
        interleaved(agent, 0, events // 2)
        kill(node)
        lost.wait(60)
        interleaved(agent, events // 2, events)  # into the spool
        (node.folder / "pid").unlink(missing_ok=True)
        node.start()
        started = time.monotonic()
        back_s = waited(back, started, 120)
        done.wait(180)
        return {"events": events, "handed": len(handed),
                "lost": len(set(range(1, events + 1)) - set(handed)),
                "duplicated": len(handed) - len(set(handed)),
                "reordered": sum(1 for a, b in itertools.pairwise(handed)
                                 if b < a),
                # The raw subscriber's own queue is transient: it sees what was sent
                # while it was connected, resends included.
                "raw_repeats": len(wire) - len(set(wire)),
                "agent_back_after_broker_s": back_s}
    finally:
        runtime.stop("bench over")
        console.close()
        raw.close()
        node.admin.delete_queue("hostbus", f"hostbus.sub.guest.{queue}")


def alarm(node: RabbitNode, protocol: str, hold_s: float) -> dict[str, Any]:
    host, _, runtime = enrolled_agent(node, protocol, heartbeat_interval=1.0)
    console = Console.connect(url_for(node, protocol))
    lost = threading.Event()
    drops = [0]
    for transport in (runtime.transport, console.transport):
        transport.on_connection_lost(lambda exc: (drops.__setitem__(0, drops[0] + 1),
                                                  lost.set()))
    blocked, unblocked = threading.Event(), threading.Event()
    at: dict[str, float] = {}
    runtime.transport.on_blocked(stamp(blocked, at, "blocked"))
    runtime.transport.on_unblocked(stamp(unblocked, at, "unblocked"))
    try:
        node.ctl("set_vm_memory_high_watermark", "0.0000001")
        set_at = time.monotonic()
        noticed = waited(blocked, set_at, 30)
        calls = []
        for _ in range(2):
            t0 = time.monotonic()
            try:
                res = console.call("agent", "ping", host=host, timeout=30)
                outcome = res.status
            except HostbusError as exc:
                outcome = f"{type(exc).__name__}: {exc}"
            calls.append({"answer": outcome[:120], "seconds": round(time.monotonic() - t0, 2)})
            if outcome != "ok" and not outcome.startswith("no_reply"):
                break
        threading.Event().wait(max(0.0, hold_s - (time.monotonic() - set_at)))
        node.ctl("set_vm_memory_high_watermark", "0.4")
        cleared = time.monotonic()
        return {"held_s": round(cleared - set_at, 1), "agent_noticed_s": noticed,
                "calls_meanwhile": calls, "agent_unblocked_s": waited(unblocked, cleared, 60),
                "connections_dropped": drops[0],
                "call_after": console.call("agent", "ping", host=host, timeout=30).status}
    finally:
        node.ctl("set_vm_memory_high_watermark", "0.4")
        runtime.stop("bench over")
        console.close()


def deleted_queue(node: RabbitNode, protocol: str) -> dict[str, Any]:
    host, _, runtime = enrolled_agent(node, protocol)
    console = Console.connect(node.url())
    lost = threading.Event()
    at: dict[str, float] = {}
    runtime.transport.on_consumer_lost(stamp(lost, at, "lost"))
    try:
        deleted = time.monotonic()
        node.admin.delete_queue("hostbus", f"hostbus.host.{host}")
        noticed = waited(lost, deleted, 60)
        node.admin.enroll_host("hostbus", host, ["host"])
        enrolled = time.monotonic()
        res = console.call("agent", "ping", host=host, timeout=60)
        return {"agent_noticed_s": noticed, "ping_after_enroll": res.status,
                "ping_answered_after_enroll_s": round(time.monotonic() - enrolled, 2)}
    finally:
        runtime.stop("bench over")
        console.close()


def frozen(node: RabbitNode, protocol: str) -> dict[str, Any]:
    _, _, runtime = enrolled_agent(node, protocol)
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
    for _, _, runtime in fleet:
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
        for _, _, runtime in fleet:
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
                if scenario == "crash":
                    out[scenario] = crash(node, protocol, args.events)
                elif scenario == "alarm":
                    out[scenario] = alarm(node, protocol, args.alarm_seconds)
                elif scenario == "deleted-queue":
                    out[scenario] = deleted_queue(node, protocol)
                elif scenario == "frozen":
                    out[scenario] = frozen(node, protocol)
                elif scenario == "return":
                    out[scenario] = broker_return(node, protocol, args.agents,
                                                  args.outage_seconds)
                elif scenario == "unroutable":
                    out[scenario] = unroutable(node, protocol)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.faults",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=SCENARIOS,
                        help="one scenario (repeatable); default: all")
    parser.add_argument("--protocol", action="append", choices=tuple(PROTOCOLS),
                        help="one protocol (repeatable); default: both")
    parser.add_argument("--events", type=int, default=2000, help="events in crash (2000)")
    parser.add_argument("--alarm-seconds", type=float, default=20.0,
                        help="how long the alarm holds (20)")
    parser.add_argument("--agents", type=int, default=20, help="agents in return (20)")
    parser.add_argument("--outage-seconds", type=float, default=20.0,
                        help="broker down in return (20)")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args(argv)
    # The scenarios break connections on purpose: pika and proton narrate each one.
    logging.basicConfig(level=logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="hostbus-faults-") as folder:
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
