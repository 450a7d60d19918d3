"""What every benchmark shares: a throwaway vhost, percentiles, progress."""

from __future__ import annotations

import os
import statistics
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from hostbus.broker_admin import BrokerAdmin

AMQP = os.environ.get("HOSTBUS_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672")
ADMIN = os.environ.get("HOSTBUS_TEST_ADMIN_URL", "http://guest:guest@127.0.0.1:15672")


@dataclass
class Bench:
    admin: BrokerAdmin
    vhost: str
    amqp: str = AMQP  # without the vhost

    @property
    def url(self) -> str:
        return f"{self.amqp}/{self.vhost}"


@contextmanager
def bench_vhost(amqp: str = AMQP, admin_url: str = ADMIN) -> Iterator[Bench]:
    """A vhost of the benchmark's own, with the hostbus topology; removed afterwards."""
    admin = BrokerAdmin(admin_url)
    vhost = f"hostbus-bench-{uuid.uuid4().hex[:8]}"
    admin.setup(vhost)
    try:
        yield Bench(admin, vhost, amqp.rstrip("/"))
    finally:
        admin.delete_vhost(vhost)


def pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def summary(samples_ms: list[float]) -> dict[str, float]:
    return {"n": len(samples_ms), "p50": round(pct(samples_ms, 50), 3),
            "p90": round(pct(samples_ms, 90), 3), "p99": round(pct(samples_ms, 99), 3),
            "mean": round(statistics.fmean(samples_ms), 3)}


def progress(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


# Sides of a latency benchmark run in turns of this many calls, so that a change in the
# machine's speed during the run (this VM varies by up to 2x) falls on all sides alike.
BLOCK = 100


class Side(Protocol):
    """One way of making round trips: ``block(n)`` makes n and returns each one's time
    in milliseconds."""

    def block(self, n: int) -> list[float]: ...

    def close(self) -> None: ...


def in_turns(makers: dict[str, Callable[[], Side]], n: int, warm: int) -> dict[str, list[float]]:
    """Open every side, warm each up, then let them take turns of ``BLOCK`` round
    trips until each has made ``n``; every side is closed at the end."""
    sides: dict[str, Side] = {}
    samples: dict[str, list[float]] = {label: [] for label in makers}
    try:
        for label, make in makers.items():
            sides[label] = make()
            sides[label].block(warm)
        done = 0
        while done < n:
            turn = min(BLOCK, n - done)
            for label, side in sides.items():
                samples[label].extend(side.block(turn))
            done += turn
    finally:
        for side in sides.values():
            side.close()
    return samples
