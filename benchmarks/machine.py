"""The machine a benchmark ran on: its CPU, its cores, and what waking a thread costs.

A call that crosses threads pays a wake-up each time (the waiting thread is scheduled
again), and what that costs differs many times over between machines (a VM whose
vCPUs are descheduled while idle, a bare-metal box with idle cores spinning). Ratios
to a raw client, which crosses no thread, move with it; so the bench measures it in the
same run and reports it beside the ratios.
"""

from __future__ import annotations

import os
import platform
import queue
import selectors
import socket
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import summary


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name as the kernel reports it; else what ``platform`` knows."""
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "cpu model") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def describe() -> dict[str, Any]:
    """What names this machine in a report: CPU model, cores, kernel, architecture."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        usable = os.cpu_count() or 0
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "usable_cores": usable,
            "arch": platform.machine(), "kernel": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(),
            # How busy it was as the run began: other work shares the cores.
            "loadavg": [round(x, 2) for x in os.getloadavg()]}


def wakeup_latency(rounds: int = 2000, warm: int = 200) -> dict[str, Any]:
    """Two threads pass a token back and forth: each pass wakes a blocked thread. One
    way the woken thread waits on a ``queue.SimpleQueue`` (as a console's caller waits
    for its reply), the other in ``epoll`` on a socket (as an I/O loop waits, woken by
    a byte written to it: pika's ``add_callback_threadsafe``). Returns the one-way
    wake-up (half a round trip) in microseconds: p50, p90, p99, mean."""
    ping_r, ping_w = socket.socketpair()
    pong: queue.SimpleQueue[int] = queue.SimpleQueue()

    waiting = selectors.DefaultSelector()  # epoll: any descriptor number (select: < 1024)
    waiting.register(ping_r, selectors.EVENT_READ)

    def echo() -> None:
        while True:
            waiting.select()
            token = ping_r.recv(1)
            if token == b"q":
                return
            pong.put(1)

    thread = threading.Thread(target=echo, name="bench-wakeup", daemon=True)
    thread.start()
    samples: list[float] = []
    try:
        for i in range(warm + rounds):
            started = time.perf_counter()
            ping_w.send(b"x")
            pong.get()
            if i >= warm:
                samples.append((time.perf_counter() - started) * 1e6 / 2)
    finally:
        ping_w.send(b"q")
        thread.join(5)
        waiting.close()
        ping_r.close()
        ping_w.close()
    out: dict[str, Any] = dict(summary(samples))
    out["unit"] = "us, one way (half a ping-pong between two threads: socket, queue)"
    return out


def text(machine: dict[str, Any], wakeup: dict[str, Any] | None) -> str:
    """One line for a report's header."""
    line = (f"machine: {machine['cpu']}, {machine['cores']} cores "
            f"({machine['usable_cores']} usable), {machine['kernel']}")
    if machine.get("loadavg"):
        line += f", load {machine['loadavg'][0]:g}"
    if wakeup:
        line += (f"; thread wake-up {wakeup['p50']:.0f} us p50, {wakeup['p99']:.0f} us p99 "
                 "(each thread hand-off pays one)")
    return line
