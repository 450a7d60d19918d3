"""An agent process with one slow method, for the crash tests: ``python -m
tests.slow_agent URL HOST STATE_DIR MARKER [WORKERS]``. Each run of ``slow.work`` appends its
request id to MARKER before it starts working, so a test can count how often it ran."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

from hostbus.schema import AgentSchema
from hostbus.security.replay import ReplayGuard
from hostbus.serving.agent import Agent, CallContext, method
from hostbus.serving.runtime import AgentRuntime

SCHEMA = AgentSchema.from_dict({
    "agent": "slow", "version": "1.0", "description": "a slow method, for crash tests",
    "classes": {},
    "methods": {"work": {
        "description": "note the call, then work for a while",
        "args": {"type": "object", "additionalProperties": False,
                 "properties": {"seconds": {"type": "number", "default": 60}}},
        "result": {"type": "object"}}},
    "events": {"started": {"description": "work began", "data": {"type": "object"}}},
})


class SlowAgent(Agent):
    name = "slow"

    def __init__(self, marker: Path) -> None:
        super().__init__()
        self.marker = marker

    @method()
    def work(self, seconds: float, ctx: CallContext) -> dict[str, Any]:
        with self.marker.open("a") as fh:
            fh.write(ctx.request_id + "\n")
        self.emit("started", {"request_id": ctx.request_id})
        time.sleep(seconds)  # the work itself: what a crash interrupts
        return {"worked_s": seconds}


def main(url: str, host: str, state_dir: str, marker: str, workers: str = "4") -> None:
    runtime = AgentRuntime.serve(
        url, host, [SlowAgent(Path(marker))], heartbeat_interval=0, workers=int(workers),
        schemas={"slow": SCHEMA},
        replay=ReplayGuard(path=Path(state_dir) / f"recent-{host}.db"))
    print("serving", flush=True)
    threading.Event().wait()  # until killed
    runtime.stop()


if __name__ == "__main__":
    main(*sys.argv[1:6])
