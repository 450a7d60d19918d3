"""`hostbus bench --only faults`: what the faults operators meet do to an agent, measured
on a RabbitMQ node of the bench's own (never the machine's broker), once with the agent
on AMQP 0-9-1 and once on AMQP 1.0.

Each scenario streams numbered events from an agent (two event names, so two routing
keys, under one numbering) while the fault happens, then reads
everything the broker delivered from a durable queue of its own and counts events
lost, duplicated and reordered; and it times how long the agent takes to answer a ping
again once the fault is over (recovery seconds; None when it did not within the limit).

- crash: the broker's Erlang VM is SIGKILLed mid-stream, then started again.
- alarm: a memory alarm (the watermark set near zero) blocks every publisher for
  ``alarm_s`` seconds, then is cleared. A ping is sent during the alarm too.
- queue_deleted: an administrator deletes the host's queues mid-stream, then enrolls the
  host again (what an operator would do).
- backlog: a ping behind 100 calls that wait for the agent's workers (held until the
  ping is answered), with one worker and with four.

The raw side of these figures is the broker itself: the counts are of what it delivered,
read with plain pika, so the console's own filtering (it drops repeats) hides nothing.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pika

from benchmarks.harness import progress
from console.client import Console
from hostbus import names
from hostbus.schema import AgentSchema
from hostbus.serving.agent import Agent, method
from hostbus.serving.runtime import AgentRuntime

SCHEMA = AgentSchema.from_dict({
    "agent": "fault", "version": "1.0", "description": "numbered events and held calls",
    "classes": {},
    "methods": {"hold": {
        "description": "wait until the bench lets go",
        "args": {"type": "object", "additionalProperties": False, "properties": {}},
        "result": {"type": "object"}}},
    "events": {"tick": {"description": "an even-numbered event", "data": {"type": "object"}},
               "tock": {"description": "an odd-numbered event", "data": {"type": "object"}}},
})
RATE = 200  # events per second while a fault happens
LIMIT_S = 90.0  # how long recovery is waited for before it counts as "did not"


class FaultAgent(Agent):
    name = "fault"

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = 0
        self._lock = threading.Lock()

    @method()
    def hold(self) -> dict[str, Any]:
        with self._lock:
            self.entered += 1
        self.gate.wait(300)
        return {}


class NoNode(Exception):
    """No RabbitMQ node of the bench's own could be started (root, a source checkout
    and rabbitmq-server are needed)."""


def rabbit_node() -> Any:
    """The test suite's private-node runner (tests/rabbit_node.py) of this checkout."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "tests" / "rabbit_node.py").exists():
        raise NoNode("the faults benchmark starts a RabbitMQ node of its own with "
                     "tests/rabbit_node.py: run it from a source checkout")
    if str(root) not in sys.path:
        sys.path.append(str(root))
    import tests.rabbit_node

    return tests.rabbit_node


@contextlib.contextmanager
def private_node(label: str = "faults") -> Iterator[Any]:
    """A RabbitMQ node of the bench's own, with the hostbus topology; stopped after."""
    nodes = rabbit_node()
    with tempfile.TemporaryDirectory(prefix=f"hostbus-{label}-") as folder:
        node = nodes.RabbitNode(Path(folder) / "node", plugins=nodes.AMQP10_PLUGINS,
                                config=nodes.amqp10_config())
        progress(f"{label}: starting a RabbitMQ node of the bench's own")
        try:
            node.start()
            node.admin.setup("hostbus")
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            node.stop()
            raise NoNode(str(exc)) from None
        try:
            yield node
        finally:
            node.stop()


class Stream:
    """Numbered events from one agent at a steady rate, on a thread, until stopped."""

    def __init__(self, agent: FaultAgent, rate: float = RATE) -> None:
        self.agent, self.pause = agent, 1.0 / rate
        self.sent = 0
        self.failed = 0  # emit raised (the runtime refused or broke)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fault-stream", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.pause):
            try:  # two routing keys, as an agent's metrics and alerts: one numbering
                self.agent.emit("tock" if self.sent % 2 else "tick", {"n": self.sent})
            except Exception:
                self.failed += 1
                continue
            self.sent += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


class Watch:
    """A durable queue on the node bound to the agent's events: what the broker kept."""

    def __init__(self, node: Any, host: str) -> None:
        self.url, self.queue = node.url(), f"bench.faults.{host}"
        with self._channel() as ch:
            ch.queue_declare(self.queue, durable=True)
            ch.queue_bind(self.queue, names.EVENT_EXCHANGE, f"fault.{host}.#")

    @contextlib.contextmanager
    def _channel(self) -> Iterator[Any]:
        conn = pika.BlockingConnection(pika.URLParameters(self.url))
        try:
            yield conn.channel()
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    def drain(self) -> list[int]:
        """Every event number in the queue, in the order the broker delivers them. Called
        once the agent has stopped, so what the queue holds is all it will: that many
        are read, with no idle wait for more (2 s of silence stays the backstop)."""
        got: list[int] = []
        with self._channel() as ch:
            held = ch.queue_declare(self.queue, passive=True).method.message_count
            for _m, _p, body in ch.consume(self.queue, auto_ack=True, inactivity_timeout=2):
                if body is None:
                    break
                got.append(int(json.loads(body)["data"]["n"]))
                if len(got) >= held:
                    break
            ch.cancel()
            ch.queue_delete(self.queue)
        return got


def counts(sent: int, got: list[int]) -> dict[str, int]:
    seen: set[int] = set()
    duplicated = reordered = 0
    highest = -1
    for n in got:
        if n in seen:
            duplicated += 1
            continue
        seen.add(n)
        if n < highest:
            reordered += 1
        highest = max(highest, n)
    return {"sent": sent, "delivered": len(got), "lost": len(set(range(sent)) - seen),
            "duplicated": duplicated, "reordered": reordered}


def agent_url(node: Any, protocol: str) -> str:
    url = node.url()
    return url if protocol == "amqp091" else url.replace("amqp://", "amqp10://", 1)


def start_agent(node: Any, protocol: str, **options: Any) -> tuple[AgentRuntime, FaultAgent]:
    host = f"fault-{uuid.uuid4().hex[:6]}"
    node.admin.enroll_host("hostbus", host, ["fault"])
    agent = FaultAgent()
    runtime = AgentRuntime.serve(agent_url(node, protocol), host, [agent],
                                 heartbeat_interval=0, schemas={"fault": SCHEMA}, **options)
    return runtime, agent


def until_ping(node: Any, host: str, limit: float = LIMIT_S) -> float | None:
    """Seconds until ``host`` answers a ping (a console connecting anew as needed);
    None if it did not within ``limit``."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        try:
            with Console.connect(node.url(), connect_timeout=2) as console:
                while time.monotonic() - started < limit:
                    if console.call("agent", "ping", host=host, timeout=1).status == "ok":
                        return round(time.monotonic() - started, 2)
        except Exception:  # the broker is not back yet, or dropped us again
            time.sleep(0.2)  # bounded polling: a broker coming back has no event
    return None


def settle(runtime: AgentRuntime, limit: float = LIMIT_S) -> None:
    """Until the agent has nothing left to send (or ``limit``)."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        status = runtime.outbox.status()
        if not status["spooled"] and not status["unconfirmed"]:
            return
        time.sleep(0.2)


def finish(node: Any, runtime: AgentRuntime, stream: Stream, watch: Watch,
           drops: list[Any]) -> dict[str, Any]:
    stream.stop()
    settle(runtime)
    runtime.stop("bench over")
    return {**counts(stream.sent, watch.drain()), "emit_failed": stream.failed,
            "connection_drops": len(drops)}


def crash(node: Any, protocol: str) -> dict[str, Any]:
    runtime, agent = start_agent(node, protocol)
    drops: list[Any] = []
    runtime.transport.on_connection_lost(drops.append)
    watch = Watch(node, runtime.host_id)
    stream = Stream(agent)
    time.sleep(2)  # a stream in full flow when the broker dies
    rabbit_node().kill(node)
    time.sleep(2)  # the agent spools while the broker is gone
    node.start()
    recovery = until_ping(node, runtime.host_id)
    time.sleep(1)
    return {**finish(node, runtime, stream, watch, drops), "recovery_s": recovery}


def alarm(node: Any, protocol: str, seconds: float) -> dict[str, Any]:
    runtime, agent = start_agent(node, protocol)
    drops: list[Any] = []
    runtime.transport.on_connection_lost(drops.append)
    watch = Watch(node, runtime.host_id)
    stream = Stream(agent)
    time.sleep(1)
    node.ctl("set_vm_memory_high_watermark", "absolute", "1")
    during: dict[str, Any] = {}
    try:
        with Console.connect(node.url()) as console:
            res = console.call("agent", "ping", host=runtime.host_id, timeout=5)
            during = {"status": res.status,
                      "error": (res.reply.error or {}).get("message") if res.reply else None}
    except Exception as exc:  # a console that knows of the alarm says so at once
        during = {"status": "refused", "error": str(exc)}
    time.sleep(max(0.0, seconds - 5))
    node.ctl("set_vm_memory_high_watermark", "0.4")
    recovery = until_ping(node, runtime.host_id)
    time.sleep(1)
    return {**finish(node, runtime, stream, watch, drops), "alarm_s": seconds,
            "ping_during_alarm": during, "recovery_s": recovery}


def queue_deleted(node: Any, protocol: str) -> dict[str, Any]:
    runtime, agent = start_agent(node, protocol)
    drops: list[Any] = []
    runtime.transport.on_connection_lost(drops.append)
    watch = Watch(node, runtime.host_id)
    stream = Stream(agent)
    time.sleep(1)
    for queue in (names.host_queue(runtime.host_id), names.agent_queue(runtime.host_id)):
        node.admin.delete_queue("hostbus", queue)
    node.admin.enroll_host("hostbus", runtime.host_id, ["fault"])
    recovery = until_ping(node, runtime.host_id, limit=30)
    return {**finish(node, runtime, stream, watch, drops), "recovery_s": recovery,
            "recovery_limit_s": 30}


def backlog(node: Any, protocol: str, workers: int, calls: int = 100) -> dict[str, Any]:
    runtime, agent = start_agent(node, protocol, workers=workers)
    try:
        with Console.connect(node.url(), schemas={"fault": SCHEMA}) as console:
            t0 = time.perf_counter()
            console.call("agent", "ping", host=runtime.host_id, timeout=10)
            idle_ms = (time.perf_counter() - t0) * 1000
            conn = pika.BlockingConnection(pika.URLParameters(node.url()))
            ch = conn.channel()
            ch.confirm_delivery()
            deadline = datetime.now(UTC) + timedelta(seconds=300)
            body = json.dumps({"v": 1, "agent": "fault", "method": "hold", "args": {},
                               "target": {"host": runtime.host_id},
                               "deadline": deadline.isoformat()}).encode()
            for _ in range(calls):
                ch.basic_publish(names.REQUEST_EXCHANGE, f"fault.{runtime.host_id}", body,
                                 pika.BasicProperties(message_id=str(uuid.uuid4()),
                                                      user_id="guest",
                                                      content_type="application/json",
                                                      type="hostbus.request/1"))
            conn.close()
            t0 = time.perf_counter()
            res = console.call("agent", "ping", host=runtime.host_id, timeout=30)
            busy_ms = (time.perf_counter() - t0) * 1000
            held = agent.entered
    finally:
        agent.gate.set()
        runtime.stop("bench over")
    return {"workers": workers, "calls_waiting": calls, "idle_ping_ms": round(idle_ms, 1),
            "ping_status": res.status, "ping_ms": round(busy_ms, 1),
            "calls_started_meanwhile": held}


def run(alarm_s: float = 70.0) -> dict[str, Any]:
    """Every scenario with the agent on each protocol. The default alarm outlasts
    pika's 60 s blocked-connection timeout."""
    results: dict[str, Any] = {}
    try:
        with private_node() as node:
            for protocol in ("amqp091", "amqp10"):
                progress(f"faults ({protocol}): broker crash")
                row: dict[str, Any] = {"crash": crash(node, protocol)}
                progress(f"faults ({protocol}): memory alarm for {alarm_s:g} s")
                row["alarm"] = alarm(node, protocol, alarm_s)
                progress(f"faults ({protocol}): host queues deleted, host enrolled again")
                row["queue_deleted"] = queue_deleted(node, protocol)
                progress(f"faults ({protocol}): ping behind 100 held calls")
                row["backlog"] = [backlog(node, protocol, w) for w in (1, 4)]
                results[protocol] = row
    except NoNode as exc:
        return {"error": f"no RabbitMQ node of the bench's own: {exc}"}
    return results


def text(results: dict[str, Any]) -> list[str]:
    if "error" in results:
        return [f"faults: not measured: {results['error']}"]
    lines = ["faults (a RabbitMQ node of the bench's own; events counted as the broker "
             "delivered them)",
             "  agent    scenario        sent  lost  dup  reord  drops  recovery",
             ]
    for protocol, row in results.items():
        for name in ("crash", "alarm", "queue_deleted"):
            r = row[name]
            rec = f"{r['recovery_s']} s" if r["recovery_s"] is not None else "none"
            lines.append(f"  {protocol:8} {name:13} {r['sent']:6} {r['lost']:5} "
                         f"{r['duplicated']:4} {r['reordered']:6} {r['connection_drops']:6}"
                         f"  {rec}")
        during = row["alarm"]["ping_during_alarm"]
        said = f" ({during['error'][:70]}...)" if during.get("error") else ""
        lines.append(f"  {protocol:8} ping during the alarm: {during.get('status')}{said}")
        for b in row["backlog"]:
            lines.append(f"  {protocol:8} ping behind {b['calls_waiting']} held calls, "
                         f"{b['workers']} worker(s): {b['ping_status']} in {b['ping_ms']} ms "
                         f"(idle {b['idle_ping_ms']} ms)")
    return lines
