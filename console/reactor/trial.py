"""``hostbus rules test`` (formerly ``hostbus reactor test``): what the rules would make
of one event, sending nothing."""

from __future__ import annotations

from typing import Any

from console.reactor.rules import Missing, Rule
from hostbus.envelope import Event
from hostbus.errors import ConfigError


def event_from(doc: Any) -> Event:
    """An event as ``hostbus watch --json`` prints it (or an event body): host, agent,
    event and data are needed."""
    if not isinstance(doc, dict):
        raise ConfigError("the event must be a JSON object with host, agent, event, data")
    missing = [k for k in ("host", "agent", "event", "data") if k not in doc]
    if missing or not isinstance(doc.get("data"), dict):
        raise ConfigError(f"the event lacks {', '.join(missing) or 'a data object'}: give "
                          "{\"host\": ..., \"agent\": ..., \"event\": ..., \"data\": {...}}")
    return Event(host=str(doc["host"]), agent=str(doc["agent"]), event=str(doc["event"]),
                 data=doc["data"], seq=int(doc.get("seq", 1)), epoch=str(doc.get("epoch", "")))


def explain(rules: list[Rule], event: Event) -> list[dict[str, Any]]:
    """For each rule: whether it looks at the event, whether its conditions hold, and
    the action it would send (or why it cannot be made)."""
    found = []
    for rule in rules:
        entry: dict[str, Any] = {"rule": rule.name, "selects": rule.selects(event),
                                 "when": rule.when.text or "none"}
        if entry["selects"]:
            entry["holds"] = rule.holds(event)
            try:
                target = rule.target(event)
                entry["action"] = {"call": target.call, "kind": target.kind,
                                   "host": target.host, "args": target.args}
            except Missing as why:
                entry["action"] = None
                entry["why"] = str(why)
            if entry["holds"] and entry["action"] is not None:
                entry["outcome"] = (
                    f"counts toward {rule.count} events within {rule.within_s:g} s"
                    if rule.count > 1 else f"starts waiting {rule.for_s:g} s" if rule.for_s
                    else f"starts its wait again: fires if no such event comes for "
                         f"{rule.absent_s:g} s" if rule.absent_s
                    else "fires (unless within its cooldown or one is in flight)")
                if rule.dry_run:
                    entry["outcome"] += "; dry run: nothing is sent"
        found.append(entry)
    return found
