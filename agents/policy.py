"""The authorization hook every request passes through before it runs.

The security issue replaces ``AllowAll`` with the default-deny rules engine; the
dispatcher already calls ``decide`` for every request and reports the outcome.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from hostbus.envelope import Request
from hostbus.schema import MethodSpec


@dataclass(frozen=True)
class Decision:
    allowed: bool
    rule: str
    reason: str
    requires_approval: bool = False


class Policy(Protocol):
    def decide(self, request: Request, method: MethodSpec) -> Decision: ...


class AllowAll:
    """Allows everything. Only for development until the policy engine lands."""

    def decide(self, request: Request, method: MethodSpec) -> Decision:
        return Decision(True, "allow-all", "no policy configured (development default)")
