"""Acting on ``even_distribution`` (``[policies] balance = true``): VMs moved off hosts
that stayed above their memory or CPU threshold, a few at a time, never back and forth.

What keeps it from thrashing:

- **a window** (``balance_window_s``): a host gives VMs only once it has been above the
  threshold at every check for that long (a spike moves nothing), and it starts again
  from zero each time it drops below;
- **a rate** (``balance_interval_s``, ``balance_max_moves``): at most that many moves a
  round, one round per interval, none while another job (an HA restart, an
  evacuation) runs;
- **targets kept below the threshold**: the plan never moves a VM where it would put
  its target above the threshold (so a target never becomes a giver because of it);
- **a cooldown** (``balance_cooldown_s``): a VM balancing moved is not moved again
  for that long.

The moves themselves are the plan's (``policies.plan``), carried out by ``Actions``
like maintenance moves (live where both hosts offer it, else cold).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from console.manager.fleet import ONLINE, Fleet
from console.manager.policies import Thresholds, over_threshold, plan
from console.placement import PlacementConfig

log = logging.getLogger("hostbus.manager")


@dataclass(frozen=True)
class Balancing:
    """[policies] balance*: whether and how fast the manager acts on even_distribution."""

    enabled: bool = False
    window_s: float = 300.0
    interval_s: float = 300.0
    max_moves: int = 2
    cooldown_s: float = 3600.0


class Balancer:
    """Called at each liveness check of the active instance (``tick``); hands the moves
    of a round to ``act``. ``busy()``: another job runs (the round waits)."""

    def __init__(self, fleet: Fleet, settings: Balancing, thresholds: Thresholds, *,
                 act: Callable[[list[dict[str, Any]]], None],
                 busy: Callable[[], bool] = lambda: False,
                 config: PlacementConfig | None = None) -> None:
        self.fleet = fleet
        self.settings = settings
        self.thresholds = thresholds
        self.act = act
        self.busy = busy
        self.config = config
        self._over_since: dict[str, float] = {}  # host -> first check it was over at
        self._moved: dict[str, float] = {}  # VM -> when balancing moved it
        self._next_round = 0.0

    def tick(self) -> list[dict[str, Any]]:
        """Note which hosts are over; on a round, plan and hand over its first moves.
        Returns them."""
        now = self.fleet.clock()
        over = {h.host for h in self.fleet.hosts()
                if h.state == ONLINE and not h.maintenance and
                over_threshold(h, self.thresholds)}
        self._over_since = {host: self._over_since.get(host, now) for host in over}
        cfg = self.settings
        if not cfg.enabled or now < self._next_round or self.busy():
            return []
        ripe = {host for host, since in self._over_since.items() if now - since >= cfg.window_s}
        if not ripe:
            return []
        self._next_round = now + cfg.interval_s
        self._moved = {vm: at for vm, at in self._moved.items() if now - at < cfg.cooldown_s}
        found = plan(self.fleet, "even_distribution", thresholds=self.thresholds,
                     config=self.config, givers=ripe, keep=set(self._moved))
        moves = found["moves"][:cfg.max_moves]
        for move in moves:
            self._moved[move["vm"]] = now
        if moves:
            log.info("balancing: moving %s", ", ".join(
                f"{m['vm']} {m['from_host']} -> {m['to_host']}" for m in moves))
            self.act(moves)
        return moves
