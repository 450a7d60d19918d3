"""An agent whose one method holds every call until the test opens the gate: a backlog of
work that lasts exactly as long as a test needs, without sleeping."""

from __future__ import annotations

import threading
from typing import Any

from hostbus.schema import AgentSchema
from hostbus.serving.agent import Agent, method

SCHEMA = AgentSchema.from_dict({
    "agent": "gate", "version": "1.0", "description": "calls that wait for a gate",
    "classes": {},
    "methods": {"hold": {
        "description": "wait until the test opens the gate",
        "args": {"type": "object", "additionalProperties": False, "properties": {}},
        "result": {"type": "object"}}},
    "events": {},
})


class GateAgent(Agent):
    name = "gate"

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = 0  # calls that started (and are held while the gate is shut)
        self._cond = threading.Condition()

    @method()
    def hold(self) -> dict[str, Any]:
        with self._cond:
            self.entered += 1
            self._cond.notify_all()
        if not self.gate.wait(300):
            raise TimeoutError("the test never opened the gate")
        return {"held": True}

    def wait_entered(self, count: int, timeout: float = 60) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: self.entered >= count, timeout), \
                f"{self.entered} of {count} calls started"
