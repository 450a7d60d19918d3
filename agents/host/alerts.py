"""Threshold alerts with hysteresis: raise at one level, clear at a lower one.

A value that wobbles around a single threshold would raise and clear on every sample;
two levels make the alert change state only when the value really moved.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Threshold:
    raise_at: float
    clear_at: float

    def __post_init__(self) -> None:
        if not self.clear_at < self.raise_at:
            raise ValueError(
                f"alert threshold: clear ({self.clear_at}) must be below raise ({self.raise_at})"
            )


class AlertTracker:
    def __init__(self, thresholds: dict[str, Threshold]) -> None:
        self.thresholds = thresholds
        self._raised: set[tuple[str, str]] = set()

    def update(self, metric: str, value: float, resource: str = "") -> dict[str, Any] | None:
        """Feed one sample; return the alert event's data when the state changes."""
        limit = self.thresholds.get(metric)
        if limit is None:
            return None
        key = (metric, resource)
        if key not in self._raised and value >= limit.raise_at:
            self._raised.add(key)
            state = "raised"
        elif key in self._raised and value <= limit.clear_at:
            self._raised.discard(key)
            state = "cleared"
        else:
            return None
        return {"metric": metric, "resource": resource, "state": state,
                "value": round(float(value), 2), "raise_at": limit.raise_at,
                "clear_at": limit.clear_at}

    @property
    def active(self) -> list[tuple[str, str]]:
        return sorted(self._raised)


def thresholds_from_config(section: dict[str, Any]) -> dict[str, Threshold]:
    out = {}
    for metric, levels in section.items():
        try:
            out[metric] = Threshold(float(levels["raise"]), float(levels["clear"]))
        except (KeyError, TypeError) as exc:
            raise ValueError(
                f"[host.alerts] {metric}: expected {{ raise = N, clear = M }}, got {levels!r}"
            ) from exc
    return out
