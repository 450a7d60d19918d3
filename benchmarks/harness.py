"""What every benchmark shares: a throwaway vhost, percentiles, progress."""

from __future__ import annotations

import os
import statistics
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

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
