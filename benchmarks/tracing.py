"""Trace context: what a call costs with tracing off (the default) and on, in turns in
the same run. On: the OpenTelemetry SDK records the console's publish span and the
agent's process and reply spans, and a batch processor hands them to an exporter that
drops them (what leaves the process is the collector's business, not the call's).

Off against the code before tracing existed is measured across two trees, in
alternating runs of ``hostbus bench --only call`` (benchmarks/README.md)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from benchmarks.harness import Bench, Side, in_turns, summary
from console.client import Console
from hostbus.serving.runtime import AgentRuntime


class _Dropped:
    """A span exporter that keeps nothing."""

    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class TracedSide:
    """``Console.call("agent", "ping")`` with tracing off or on at both ends."""

    def __init__(self, bench: Bench, *, traced: bool) -> None:
        self.tracer = None
        if traced:
            from hostbus.tracing import OtelTracer

            self.tracer = OtelTracer("bench", exporter=_Dropped())
        self.host = f"bench{uuid.uuid4().hex[:6]}"
        bench.admin.enroll_host(bench.vhost, self.host, [])
        self._runtime = AgentRuntime.serve(bench.url, self.host, [], heartbeat_interval=0,
                                           tracer=self.tracer)
        self._console = Console.connect(bench.url, tracer=self.tracer)

    def block(self, n: int) -> list[float]:
        out = []
        for _ in range(n):
            started = time.perf_counter()
            res = self._console.call("agent", "ping", {}, host=self.host, timeout=5)
            out.append((time.perf_counter() - started) * 1000)
            if res.status != "ok":
                raise RuntimeError(f"benchmark call failed: {res.to_dict()}")
        return out

    def close(self) -> None:
        self._console.close()
        self._runtime.stop("benchmark over")
        if self.tracer is not None:
            self.tracer.shutdown()


def run(bench: Bench, n: int) -> dict[str, Any]:
    makers: dict[str, Callable[[], Side]] = {
        "off": lambda: TracedSide(bench, traced=False),
        "on": lambda: TracedSide(bench, traced=True),
    }
    samples = in_turns(makers, n, warm=max(50, n // 20))
    out: dict[str, Any] = {label: summary(values) for label, values in samples.items()}
    out["on_over_off_p50"] = round(out["on"]["p50"] / out["off"]["p50"], 2)
    return out
