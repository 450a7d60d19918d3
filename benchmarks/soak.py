"""A soak run: one real agent process under a steady load (calls, and metrics and
heartbeat events every second) for minutes, its memory sampled throughout. Memory must
stay flat: after a warm-up, the growth and the fitted slope are reported, and a leak
(a cache that only grows, a reply kept per request) shows as a steady climb."""

from __future__ import annotations

import threading
import time
from typing import Any

from benchmarks.footprint import _mem, agent_process
from benchmarks.harness import Bench, progress


def _slope_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB), in MB per minute."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    den = sum((t - mx) ** 2 for t, _ in points)
    return 0.0 if den == 0 else 60 * sum((t - mx) * (v - my) for t, v in points) / den


def run(bench: Bench, minutes: float, *, calls_per_s: float = 50.0,
        sample_s: float = 10.0) -> dict[str, Any]:
    extra = ('heartbeat_interval = 1.0\n[host]\nmetrics_interval = 1.0\n'
             'power_control = "dry-run"\n')
    seconds = minutes * 60
    with agent_process(bench, ["host"], extra=extra) as (host, ps, console):
        stop = threading.Event()
        done = [0, 0]  # ok, failed

        def load() -> None:
            pause = 1.0 / calls_per_s
            while not stop.is_set():
                res = console.call("host", "identify", {}, host=host, timeout=5)
                done[0 if res.status == "ok" else 1] += 1
                stop.wait(pause)  # a steady rate, not a storm

        thread = threading.Thread(target=load, daemon=True)
        thread.start()
        samples = []
        started = time.monotonic()
        try:
            while True:
                elapsed = time.monotonic() - started
                samples.append({"t_s": round(elapsed, 1), **_mem(ps)})
                progress(f"soak: {elapsed / 60:.1f} of {minutes:g} min, "
                         f"RSS {samples[-1]['rss_mb']} MB, {done[0]} calls")
                if elapsed >= seconds:
                    break
                time.sleep(min(sample_s, seconds - elapsed))  # the sampling period
        finally:
            stop.set()
            thread.join(10)
    warm = [s for s in samples if s["t_s"] >= min(60.0, seconds / 4)] or samples
    rss = [(s["t_s"], s["rss_mb"]) for s in warm]
    growth = round(warm[-1]["rss_mb"] - warm[0]["rss_mb"], 1)
    slope = round(_slope_per_min(rss), 3)
    return {"minutes": minutes, "calls_ok": done[0], "calls_failed": done[1],
            "calls_per_s": round(done[0] / seconds, 1), "samples": samples,
            "after_warmup": {"from_s": warm[0]["t_s"], "rss_growth_mb": growth,
                             "rss_slope_mb_per_min": slope},
            # Flat: under 1 MB of growth after the warm-up, whatever the run's length.
            "flat": abs(growth) < 1.0 and abs(slope) * minutes < 1.0}
