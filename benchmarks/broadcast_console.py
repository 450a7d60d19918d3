"""A console in a process of its own for the fanout10k benchmark: it imports only the
console, so that its memory is the console's. ``python -m benchmarks.broadcast_console
URL PREFIX N TIMEOUT_S``: connects, says so (one JSON line on stdout), then broadcasts a
ping that expects hosts ``PREFIX-00000`` ... for each ``broadcast`` line read on stdin
and answers with the time, the replies and its memory, until ``quit`` or the end of
stdin."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


def proc_memory_kib(pid: int | str = "self") -> dict[str, int]:
    """A process's resident memory now (VmRSS) and its peak so far (VmHWM), in KiB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0])
    return {"rss": found["VmRSS"], "peak": found["VmHWM"]}


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main(url: str, prefix: str, n: int, timeout: float) -> None:
    before = proc_memory_kib()
    from console.client import Console

    imported = proc_memory_kib()
    console = Console.connect(url)
    hosts = [f"{prefix}-{i:05d}" for i in range(n)]  # fanout.SimulatedFleet's names
    _say({"ready": True, "before_import_kib": before["rss"], "imported_kib": imported["rss"],
          "connected_kib": proc_memory_kib()["rss"]})
    try:
        for line in sys.stdin:
            if line.strip() != "broadcast":
                break
            started = time.perf_counter()
            found = console.discover(filter={"facts": {"fleet": prefix}}, expect=hosts,
                                     timeout=timeout, idle=10.0)
            elapsed = (time.perf_counter() - started) * 1000
            memory = proc_memory_kib()
            _say({"ms": round(elapsed, 1), "replies": len(found),
                  "last_reply_ms": round(max((a.rtt_ms for a in found), default=0.0), 1),
                  "rss_kib": memory["rss"], "peak_kib": memory["peak"]})
            del found
    finally:
        console.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
