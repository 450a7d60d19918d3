"""The health agent: runs the checks its config declares, each on a thread of its own,
and says when one changes state.

A check is ``unknown`` until its first run. A failed run makes a passing (or unknown)
check ``warning``; ``fall`` failed runs in a row make it ``failing``; ``rise`` passed
runs in a row make a failing check ``passing`` again (one passed run is enough for the
others). Every change is a ``check`` event (with the
run's output, bounded), so a subscriber sees a flap once each way and never a stream of
identical results; ``summary`` events repeat the whole picture every
``summary_interval`` seconds; ``health.status`` answers it on demand.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from agents.health.checks import CheckSpec, Outcome, Probe, run_probe
from hostbus.envelope import now_rfc3339
from hostbus.serving.agent import Agent, method, periodic

log = logging.getLogger("hostbus.health")

STATES = ("unknown", "passing", "warning", "failing")


@dataclass
class CheckState:
    spec: CheckSpec
    state: str = "unknown"
    since: str = ""
    failures: int = 0  # consecutive failed runs
    passes: int = 0  # consecutive passed runs
    runs: int = 0
    last: Outcome | None = None
    last_run: str = ""

    def record(self, outcome: Outcome) -> str | None:
        """Count one run; returns the previous state if this run changed it."""
        self.runs += 1
        self.last, self.last_run = outcome, now_rfc3339()
        if outcome.passed:
            self.passes, self.failures = self.passes + 1, 0
            # rise guards the way back from failing; short of that one pass is enough
            new = "passing" if self.state != "failing" or self.passes >= self.spec.rise \
                else self.state
        else:
            self.failures, self.passes = self.failures + 1, 0
            new = "failing" if self.failures >= self.spec.fall else \
                ("warning" if self.state in ("passing", "unknown") else self.state)
        if new == self.state:
            return None
        previous, self.state, self.since = self.state, new, self.last_run
        return previous

    def to_wire(self) -> dict[str, Any]:
        return {
            "check": self.spec.name, "kind": self.spec.kind, "target": self.spec.target,
            "vm": self.spec.vm, "state": self.state, "since": self.since or None,
            "consecutive_failures": self.failures, "consecutive_passes": self.passes,
            "runs": self.runs, "last_run": self.last_run or None,
            "output": self.last.output if self.last else "",
            "duration_ms": self.last.duration_ms if self.last else None,
        }


class HealthAgent(Agent):
    name = "health"

    def __init__(self, config: dict[str, Any], *, checks: list[CheckSpec],
                 probes: dict[str, Probe]) -> None:
        super().__init__(config)
        missing = {c.kind for c in checks} - set(probes)
        if missing:
            raise ValueError(f"no probe for check kind(s) {', '.join(sorted(missing))}")
        self.probes = probes
        self.checks = {c.name: CheckState(c) for c in checks}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # ---------------------------------------------------------------- running
    def start(self) -> None:
        self._stop.clear()
        for name in self.checks:
            thread = threading.Thread(target=self._loop, args=(name,), daemon=True,
                                      name=f"hostbus-health-{name}")
            thread.start()
            self._threads.append(thread)
        log.info("running %d health check(s): %s", len(self.checks),
                 ", ".join(self.checks) or "none")

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()

    def _loop(self, name: str) -> None:
        spec = self.checks[name].spec
        while not self._stop.is_set():
            started = time.monotonic()
            self.run_check(name)
            # Runs start every interval; one that took longer starts the next at once.
            if self._stop.wait(max(0.0, spec.interval - (time.monotonic() - started))):
                return

    def run_check(self, name: str) -> dict[str, Any]:
        """Run one check now; emit ``check`` if its state changed. Returns its state."""
        state = self.checks[name]
        outcome = run_probe(self.probes[state.spec.kind], state.spec)
        with self._lock:
            previous = state.record(outcome)
            wire = state.to_wire()
        if previous is not None:
            log.log(logging.WARNING if wire["state"] == "failing" else logging.INFO,
                    "check %s (%s): %s -> %s: %s", name, state.spec.target, previous,
                    wire["state"], outcome.output)
            self.emit("check", {**wire, "previous": previous})
        return wire

    # ---------------------------------------------------------------- methods
    @method()
    def status(self, check: str | None, state: str) -> dict[str, Any]:
        with self._lock:
            found = [s.to_wire() for s in self.checks.values()
                     if (check is None or fnmatch.fnmatchcase(s.spec.name, check))
                     and (state == "any" or s.state == state)]
        return {"total": len(found), "counts": _counts(found), "checks": found}

    # --------------------------------------------------------------- periodic
    @periodic("summary_interval")
    def publish_summary(self) -> None:
        with self._lock:
            found = [{"check": s.spec.name, "target": s.spec.target, "state": s.state,
                      "since": s.since or None} for s in self.checks.values()]
        self.emit("summary", {"time": now_rfc3339(), "counts": _counts(found),
                              "checks": found})


def _counts(checks: list[dict[str, Any]]) -> dict[str, int]:
    return {state: sum(c["state"] == state for c in checks) for state in STATES}
