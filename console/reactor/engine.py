"""Turning events into decisions: windows, conditions held for a time, cooldowns and
de-duplication. No I/O but the store: the service feeds it events and sends what it
decides.

Each rule looks at the events it selects. For each, the rule's target (the action it
would send) is rendered from the event; then:

- the conditions hold: with ``count``/``within_s`` the event is counted in the target's
  window and the rule fires once ``count`` are in it; with ``for_s`` the target starts
  waiting (``due`` fires it once ``for_s`` has passed); with ``absent_s`` its wait
  starts again (``due`` fires it once no such event came for ``absent_s``: no
  heartbeat); else it fires at once;
- they do not: a waiting target stops waiting (the state it waited on ended).

Firing is decided against what the manager handles first (``handsoff``: an action on a
host or VM the manager is restarting, moving, fencing or has in maintenance is
``skipped``, with why), then against what was done before: nothing while an earlier action for
the same rule and target is in flight (sent, or waiting for approval: ``duplicate``),
nothing within ``cooldown_s`` of the last one (``cooldown``); else ``fired`` (queued
to be sent) or ``dry_run``. Every decision is recorded with its reasons and the ids of
the events behind it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from console.reactor.handsoff import HandsOff
from console.reactor.rules import Missing, Rule, Target, flatten
from console.reactor.store import IN_FLIGHT, ReactorStore
from hostbus.envelope import Event

log = logging.getLogger("hostbus.reactor")


def event_id(event: Event) -> str:
    """An event's identity across redeliveries and resends: host, agent, epoch, seq."""
    return f"{event.host}/{event.agent}/{event.epoch}/{event.seq}"


@dataclass(frozen=True)
class Decided:
    decision_id: str
    rule: str
    decision: str  # fired | dry_run | cooldown | duplicate | skipped
    target: str
    detail: str


class Engine:
    def __init__(self, rules: list[Rule], store: ReactorStore, *, dry_run: bool = False,
                 clock: Callable[[], float] | None = None,
                 hands_off: HandsOff | None = None) -> None:
        """``hands_off``: what the manager handles (None: nothing is held back)."""
        import time

        self.hands_off = hands_off
        self.rules = rules
        self.by_name = {r.name: r for r in rules}
        self.store = store
        self.dry_run = dry_run
        self.clock = clock or time.time

    def consider(self, event: Event) -> list[Decided]:
        """Handle one event, once (a repeat of a handled event decides nothing)."""
        return self.consider_many([event])

    def consider_many(self, events: list[Event]) -> list[Decided]:
        """Handle events in order, in one transaction (one write to disk for a batch:
        what a burst costs), each once."""
        now = self.clock()
        decided: list[Decided] = []
        with self.store.transaction():
            for event in events:
                eid = event_id(event)
                if self.store.handled(eid):
                    log.debug("event %s was handled before", eid)
                    continue
                if self.hands_off is not None and self.hands_off.applies(event):
                    self.hands_off.apply(event, eid, now)
                matched: dict[str, bool] = {}
                flat = flatten(event.data)
                for rule in self.rules:
                    if rule.selects(event, matched):
                        decided.extend(self._apply(rule, event, eid, now, flat))
                self.store.mark_handled(eid, now)
        return decided

    def _apply(self, rule: Rule, event: Event, eid: str, now: float,
               flat: dict[str, Any]) -> list[Decided]:
        holds = rule.holds(event, flat)
        if not holds and not rule.for_s:
            return []  # nothing to fire, and no waiting target to end
        try:
            target = rule.target(event)
        except Missing as why:
            if not holds:
                return []
            return [self._record(rule, None, [eid], "skipped",
                                 f"the action cannot be made from {event.routing_key()}: "
                                 f"{why}", now)]
        if not holds:
            if rule.for_s:
                self.store.stop_waiting(rule.name, target.key)
            return []
        if rule.for_s:
            self.store.start_waiting(rule.name, target.key, now, eid, target.host,
                                     target.call, target.args)
            return []
        if rule.absent_s:  # this event is what must keep coming: the wait starts again
            self.store.restart_waiting(rule.name, target.key, now, eid, target.host,
                                       target.call, target.args)
            return []
        events = [eid]
        if rule.count > 1:
            self.store.add_match(rule.name, target.key, eid, now)
            events = self.store.matches_since(rule.name, target.key, now - rule.within_s)
            if len(events) < rule.count:
                log.debug("rule %r: %d of %d events for %s", rule.name, len(events),
                          rule.count, target.key)
                return []
        why = (f"{len(events)} matching events within {rule.within_s:g} s"
               if rule.count > 1 else f"{event.routing_key()} matched")
        return [self._fire(rule, target, events, why, now)]

    def due(self) -> list[Decided]:
        """Fire the targets whose condition has held for their rule's ``for_s``."""
        now = self.clock()
        decided = []
        with self.store.transaction():
            for waiting in self.store.waiting():
                rule = self.by_name.get(waiting["rule"])
                wait = (rule.for_s or rule.absent_s) if rule is not None else 0.0
                if rule is None or not wait:  # the rule went from the config
                    self.store.stop_waiting(waiting["rule"], waiting["target"])
                    continue
                if now - waiting["since"] < wait:
                    continue
                action = rule.action
                target = Target(waiting["host"], action.agent, action.method,
                                waiting["args"], action.kind)
                self.store.stop_waiting(rule.name, target.key)
                why = (f"the condition held for {now - waiting['since']:.0f} s "
                       f"(for_s {rule.for_s:g})" if rule.for_s else
                       f"no matching event for {now - waiting['since']:.0f} s after "
                       f"{waiting['event_id']} (absent_s {rule.absent_s:g})")
                decided.append(self._fire(rule, target, [waiting["event_id"]], why, now))
        return decided

    def _fire(self, rule: Rule, target: Target, events: list[str], why: str,
              now: float) -> Decided:
        held = self.hands_off.why_not(target, now) if self.hands_off is not None else None
        if held is not None:
            self.store.clear_matches(rule.name, target.key)  # counted again afterwards
            return self._record(rule, target, events, "skipped",
                                f"{why}; not sent: {held}", now)
        last = self.store.last_action(rule.name, target.key)
        if last is not None and last["state"] in IN_FLIGHT:
            return self._record(rule, target, events, "duplicate",
                                f"{why}; decision {last['id'][:8]} for the same target is "
                                f"still {last['state']}", now)
        if last is not None and now - last["at"] < rule.cooldown_s:
            return self._record(rule, target, events, "cooldown",
                                f"{why}; the last action for this target was "
                                f"{now - last['at']:.0f} s ago (cooldown_s "
                                f"{rule.cooldown_s:g})", now)
        self.store.clear_matches(rule.name, target.key)  # the window is spent
        if rule.dry_run or self.dry_run:
            return self._record(rule, target, events, "dry_run", f"{why}; dry run: not sent",
                                now)
        return self._record(rule, target, events, "fired", why, now)

    def _record(self, rule: Rule, target: Target | None, events: list[str], decision: str,
                detail: str, now: float) -> Decided:
        state = {"fired": "queued", "dry_run": "not_sent"}.get(decision, "not_sent")
        args: dict[str, Any] = target.args if target else {}
        decision_id = self.store.decide(
            rule=rule.name, target=target.key if target else "", host=target.host if target
            else "", call=rule.action.call, args=args, events=events, decision=decision,
            state=state, detail=detail, now=now, kind=rule.action.kind)
        level = logging.WARNING if decision == "fired" else logging.INFO
        log.log(level, "rule %r %s %s on %s: %s (decision %s)", rule.name, decision,
                rule.action.call, target.host if target else "-", detail, decision_id[:8])
        return Decided(decision_id, rule.name, decision, target.key if target else "", detail)
