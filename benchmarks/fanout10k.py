"""`hostbus bench --only fanout10k`: a broadcast answered by 10,000 simulated agents,
with what it costs the console and the broker in memory.

On a RabbitMQ node of the bench's own (10,000 hosts are 20,000 durable queues: not for a
broker that other work shares), in three processes' worth of roles:

- the agents: ``--fanout10k-agents`` (10,000) simulated agents, as in the fan-out
  benchmark (``fanout.SimulatedFleet``: each a real ``AgentRuntime`` with its own host
  queues, 500 to a connection, one worker pool), in the bench's process;
- the console: ``Console.connect`` and a broadcast ping that knows whom to expect
  (``discover(expect=...)``), in a process of its own (benchmarks/broadcast_console.py),
  so that its memory is its own (VmRSS before it imports the console, connected, after
  each broadcast, and its peak, VmHWM);
- the baseline: the fan-out benchmark's raw pika fan-out (``fanout.RawFanout``: N echo
  consumers behind a fanout exchange, a client that counts N replies), in the bench's
  process, after the console's broadcasts (not in turns: see ``measure``).

The broker's memory is what the node reports through the management API (``mem_used``)
and its Erlang VM's RSS (/proc): before, with the hosts enrolled, with the agents
consuming, after the broadcasts.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.broadcast_console import proc_memory_kib
from benchmarks.fanout import RawFanout, SimulatedFleet
from benchmarks.faults import NoNode, private_node
from benchmarks.harness import Bench, progress
from benchmarks.scale import MEMORY_TIMEOUT_S

ROUNDS = 3  # broadcasts per side, in turns
TIMEOUT_S = 180.0  # a broadcast not answered by then fails the benchmark


class ConsoleProcess:
    """A console in a process of its own that broadcasts when told (one line on its
    stdin) and answers with the time, the replies and its memory (one JSON line)."""

    def __init__(self, url: str, prefix: str, n: int) -> None:
        self._log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in close())
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.broadcast_console", url, prefix, str(n),
             str(TIMEOUT_S)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True,
            bufsize=1, cwd=Path(__file__).resolve().parents[1])
        self.started = self._answer()

    def _answer(self) -> dict[str, Any]:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            self._log.seek(0)
            raise RuntimeError(f"the console process ended (exit {self._proc.wait()}): "
                               f"{self._log.read()[-2000:]}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def broadcast(self) -> dict[str, Any]:
        assert self._proc.stdin is not None
        self._proc.stdin.write("broadcast\n")
        self._proc.stdin.flush()
        return self._answer()

    def close(self) -> None:
        if self._proc.poll() is None:
            assert self._proc.stdin is not None
            try:
                self._proc.stdin.write("quit\n")
                self._proc.stdin.close()
                self._proc.wait(30)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()
        self._log.close()


def run(n: int, rounds: int = ROUNDS) -> dict[str, Any]:
    """On a RabbitMQ node of the bench's own."""
    try:
        with private_node("fanout10k") as node:
            bench = Bench(node.admin, "hostbus",
                          f"amqp://guest:guest@127.0.0.1:{node.amqp_port}")
            return measure(bench, n, rounds, node.node,
                           pid=int((node.folder / "pid").read_text().strip()))
    except NoNode as exc:
        return {"error": f"no RabbitMQ node of the bench's own: {exc}"}


def measure(bench: Bench, n: int, rounds: int = ROUNDS, node: str | None = None,
            pid: int | None = None) -> dict[str, Any]:
    """In ``bench``'s vhost. The broker's memory: node ``node``'s (the API's first)
    ``mem_used`` as the management API reports it (cheap: the memory breakdown,
    ``?memory=true``, took over 5 minutes from a node with 20,000 channels at load 20),
    and the RSS of its Erlang VM when its ``pid`` is known (a node of the bench's own)."""
    out: dict[str, Any] = {"agents": n, "rounds": rounds, "broker": bench.admin.version()}
    name = node or bench.admin._call("GET", "/api/nodes", timeout=MEMORY_TIMEOUT_S)[0]["name"]

    def node_memory_now() -> dict[str, int]:
        found = bench.admin._call("GET", f"/api/nodes/{name}", timeout=MEMORY_TIMEOUT_S)
        for _ in range(60):  # a node just started reports it with its first statistics
            if "mem_used" in found:
                break
            time.sleep(0.5)
            found = bench.admin._call("GET", f"/api/nodes/{name}", timeout=MEMORY_TIMEOUT_S)
        memory = {"mem_used": int(found["mem_used"])}
        if pid is not None:
            memory["rss"] = proc_memory_kib(pid)["rss"] * 1024
        return memory

    broker = {"before": node_memory_now()}
    agents_before = proc_memory_kib()["rss"]
    progress(f"fanout10k: enrolling and starting {n:,} simulated agents")
    t0 = time.perf_counter()
    marks: dict[str, float] = {}

    def enrolled() -> None:
        marks["enrolled"] = time.perf_counter()
        broker["enrolled"] = node_memory_now()

    fleet = SimulatedFleet(bench, n, after_enroll=enrolled)
    out["setup_s"] = {"enroll": round(marks["enrolled"] - t0, 1),
                      "start": round(time.perf_counter() - marks["enrolled"], 1)}
    try:
        broker["consuming"] = node_memory_now()
        agents_after = proc_memory_kib()["rss"]
        out["agents_process_kib"] = {
            "before": agents_before, "with_agents": agents_after,
            "per_agent": round((agents_after - agents_before) / n, 1)}
        progress(f"fanout10k: {n:,} agents in {out['setup_s']['enroll']} + "
                 f"{out['setup_s']['start']} s; a console of its own connecting")
        console = ConsoleProcess(bench.url, fleet.prefix, n)
        try:
            # hostbus's broadcasts first, then the raw fan-out's: not in turns at this
            # size. In turns, the raw fan-out's echo threads (in the agents' process)
            # were followed by broadcasts the simulated agents no longer answered
            # (951 requests unacknowledged, none moving; docs/NOTES.md, session 6).
            warm = console.broadcast()
            progress(f"fanout10k: warm-up: {warm['ms']:.0f} ms, {warm['replies']:,} replies")
            if warm["replies"] != n:
                raise RuntimeError(f"fanout10k: {warm['replies']} replies of {n}")
            hostbus: list[dict[str, Any]] = []
            for i in range(rounds):
                hostbus.append(console.broadcast())
                progress(f"fanout10k: hostbus {i + 1}: {hostbus[-1]['ms']:.0f} ms "
                         f"({hostbus[-1]['replies']:,} replies; console RSS "
                         f"{hostbus[-1]['rss_kib']} KiB, peak {hostbus[-1]['peak_kib']} KiB)")
            broker["after_broadcasts"] = node_memory_now()
            progress(f"fanout10k: broker memory (bytes): {broker}")
        finally:
            console.close()
        raw = RawFanout(bench.url, n)
        try:
            raw.broadcast(timeout=TIMEOUT_S)  # warm-up
            raw_ms: list[float] = []
            for i in range(rounds):
                raw_ms.append(raw.broadcast(timeout=TIMEOUT_S))
                progress(f"fanout10k: raw pika {i + 1}: {raw_ms[-1]:.0f} ms")
        finally:
            raw.close()
    finally:
        fleet.close()
    median = statistics.median(h["ms"] for h in hostbus)
    raw_median = statistics.median(raw_ms)
    out.update({
        "all_replied": all(h["replies"] == n for h in hostbus),
        "return_ms": round(median, 1), "return_ms_each": [h["ms"] for h in hostbus],
        "last_reply_ms_each": [h["last_reply_ms"] for h in hostbus],
        "raw_pika_ms": round(raw_median, 1), "raw_pika_ms_each": [round(x, 1) for x in raw_ms],
        "ratio_to_raw": round(median / raw_median, 2),
        "console_kib": {"before_import": console.started["before_import_kib"],
                        "imported": console.started["imported_kib"],
                        "connected": console.started["connected_kib"],
                        "after_broadcasts": hostbus[-1]["rss_kib"],
                        "peak": max(h["peak_kib"] for h in hostbus)},
        "broker_kib": {k: {m: v // 1024 for m, v in mem.items()} for k, mem in broker.items()},
        "broker_per_agent_kib": {
            "enrolled": {m: round((broker["enrolled"][m] - broker["before"][m]) / n / 1024, 1)
                         for m in broker["before"]},
            "consuming": {m: round((broker["consuming"][m] - broker["enrolled"][m]) / n / 1024,
                                   1) for m in broker["before"]}},
    })
    return out


def text(r: dict[str, Any]) -> list[str]:
    if "error" in r:
        return [f"fanout10k: not measured: {r['error']}"]
    c, b, per = r["console_kib"], r["broker_kib"], r["broker_per_agent_kib"]
    mib = 1024
    return [
        f"broadcast to {r['agents']:,} simulated agents (RabbitMQ {r['broker']}, a node of the "
        f"bench's own; agents set up in {r['setup_s']['enroll']} s enrolling + "
        f"{r['setup_s']['start']} s starting):",
        f"  every reply back: {r['return_ms']:.0f} ms median of {r['rounds']} "
        f"({', '.join(f'{x:.0f}' for x in r['return_ms_each'])}); raw pika fan-out "
        f"{r['raw_pika_ms']:.0f} ms: {r['ratio_to_raw']}x; all replied: {r['all_replied']}",
        f"  console (a process of its own): {c['connected'] / mib:.1f} MiB connected, "
        f"{c['after_broadcasts'] / mib:.1f} MiB after the broadcasts, peak "
        f"{c['peak'] / mib:.1f} MiB",
        f"  agents' process: {r['agents_process_kib']['per_agent']} KiB a simulated agent",
        f"  broker (mem_used as it reports it): {b['before']['mem_used'] / mib:.0f} MiB before, "
        f"{b['enrolled']['mem_used'] / mib:.0f} enrolled, "
        f"{b['consuming']['mem_used'] / mib:.0f} with the agents consuming, "
        f"{b['after_broadcasts']['mem_used'] / mib:.0f} after the broadcasts; a host "
        f"{per['enrolled']['mem_used']} KiB enrolled + {per['consuming']['mem_used']} KiB "
        f"consuming" + (f"; RSS {b['consuming']['rss'] / mib:.0f} MiB with the agents "
                        f"consuming" if "rss" in b["consuming"] else ""),
    ]


