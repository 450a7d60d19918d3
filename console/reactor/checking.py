"""``hostbus rules check FILE``: a rules file read as the reactor reads it, then checked
against the agents' schemas shipped here, every problem at once, each with its fix.

What is checked, rule by rule:

- the syntax (what the reactor itself refuses at start: keys, types, windows, the
  condition's grammar, the action's call and fixed arguments against the method's
  schema);
- each ``events`` pattern matches an event some agent's schema declares (a typo such as
  ``health.*.chek`` would wait for ever);
- each field the conditions (``when``) and the action (``{data.FIELD}``) name is in the
  data of the events the rule looks at.

A pattern whose agent this installation has no schema for, or that matches no event
whose data is described, is a warning: it cannot be checked here.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from console.reactor.rules import strings_in
from hostbus import names
from hostbus.errors import ConfigError, SchemaError
from hostbus.schema import EventSpec, available_agents, load_agent_schema

_DATA_FIELD = re.compile(r"\{data\.([A-Za-z0-9_.-]+)\}")


@dataclass
class Finding:
    rule: str | None
    problem: str
    fix: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "problem": self.problem, "fix": self.fix}


@dataclass
class Report:
    path: str
    rules: list[dict[str, Any]] = field(default_factory=list)
    problems: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.path, "ok": self.ok, "rules": self.rules,
                "problems": [p.to_dict() for p in self.problems],
                "warnings": [w.to_dict() for w in self.warnings]}


def known_events() -> dict[str, EventSpec]:
    """Every event the shipped schemas declare, by AGENT.EVENT."""
    found: dict[str, EventSpec] = {}
    for agent in available_agents():
        try:
            schema = load_agent_schema(agent)
        except SchemaError:
            continue
        for name, spec in schema.events.items():
            found[f"{agent}.{name}"] = spec
    return found


def data_fields(schema: dict[str, Any], prefix: str = "") -> set[str]:
    """The fields of an event's data as conditions name them (nested: dotted)."""
    found: set[str] = set()
    for key, sub in (schema.get("properties") or {}).items():
        found.add(f"{prefix}{key}")
        if isinstance(sub, dict) and sub.get("properties"):
            found |= data_fields(sub, f"{prefix}{key}.")
    return found


def _open(schema: dict[str, Any]) -> bool:
    """The schema does not say which fields the data carries."""
    return not schema.get("properties")


def matching(pattern: str, events: dict[str, EventSpec]) -> list[str]:
    """The AGENT.EVENT names whose routing key (AGENT.HOST.EVENT) the pattern matches
    for some host (as ``hostbus watch`` decides it: a host word is matched by a
    wildcard or by one of the pattern's own words)."""
    words = pattern.split(".")
    hosts = {w for w in words if w not in ("*", "#") and names.HOST_ID_RE.match(w)} | {"h"}
    found = []
    for name in events:
        agent, _, event = name.partition(".")
        if any(names.topic_matches(pattern, names.event_key(agent, h, event))
               for h in hosts):
            found.append(name)
    return found


def check_file(path: str) -> Report:
    """Read and check ``path``; ``ConfigError`` only when the file cannot be read as a
    reactor configuration at all (missing, not TOML, an unknown section)."""
    from console.reactor.main import load_config
    from console.reactor.rules import parse_rules

    if not Path(path).is_file():
        raise ConfigError(f"{path}: no such file (give the reactor's configuration, or a "
                          "file of [[rule]] tables)")
    cfg = load_config(path)
    report = Report(path)
    tables = cfg["rule"]
    if not tables:
        report.problems.append(Finding(None, "no [[rule]] in the file: the reactor would do "
                                             "nothing", "add a [[rule]] table "
                                             "(etc/reactor.toml has commented examples)"))
        return report
    events = known_events()
    seen: set[str] = set()
    for i, table in enumerate(tables):
        label = table.get("name") if isinstance(table, dict) else None
        label = label if isinstance(label, str) else f"#{i + 1}"
        if label in seen:
            report.problems.append(Finding(label, "two rules have this name",
                                           "give each rule a name of its own (history and "
                                           "cooldowns are kept by name)"))
            continue
        seen.add(label)
        try:
            [rule] = parse_rules([table])
        except ConfigError as exc:
            report.problems.append(Finding(label, _without_where(str(exc))))
            continue
        report.rules.append(rule.describe())
        _references(report, rule, events)
    return report


def _without_where(message: str) -> str:
    """parse_rules' message names the rule first; the report does already."""
    return re.sub(r"^\[\[rule\]\] (#\d+|'[^']*'|\"[^\"]*\"): ", "", message)


def _references(report: Report, rule: Any, events: dict[str, EventSpec]) -> None:
    looked_at: list[str] = []
    for pattern in rule.events:
        found = matching(pattern, events)
        agent = pattern.split(".")[0]
        if found:
            looked_at.extend(found)
            continue
        if agent not in ("*", "#") and agent not in available_agents():
            report.warnings.append(Finding(
                rule.name, f"events {pattern!r}: no schema for agent {agent!r} here, so "
                           "its events are not checked"))
            continue
        candidates = [f"{n.partition('.')[0]}.*.{n.partition('.')[2]}" for n in events
                      if agent in ("*", "#") or n.startswith(f"{agent}.")]
        close = difflib.get_close_matches(pattern, candidates, n=1, cutoff=0.6)
        report.problems.append(Finding(
            rule.name, f"events {pattern!r} matches no event any agent sends",
            f"use {' or '.join(repr(c) for c in close)}" if close else
            "patterns are AGENT.HOST.EVENT; the events are: " +
            ", ".join(sorted(candidates)[:30])))
    specs = [events[name] for name in dict.fromkeys(looked_at)]
    if not specs or any(_open(s.data) for s in specs):
        return  # some data is not described: its fields cannot be checked
    fields = set().union(*(data_fields(s.data) for s in specs))
    which = ", ".join(dict.fromkeys(looked_at))
    for key in sorted(rule.when.keys()):
        if key not in fields:
            report.problems.append(_unknown_field(rule.name, "when", key, which, fields))
    for value in [*strings_in(rule.action.args), rule.action.host]:
        for found in _DATA_FIELD.finditer(value):
            if found[1] not in fields:
                report.problems.append(_unknown_field(rule.name, "action", found[1], which,
                                                      fields))


def _unknown_field(rule: str, where: str, key: str, which: str, fields: set[str]) -> Finding:
    close = difflib.get_close_matches(key, sorted(fields), n=1, cutoff=0.6)
    what = f"{{data.{key}}}" if where == "action" else key
    return Finding(rule, f"{where} names {what}, which the data of {which} does not have",
                   (f"did you mean {close[0]}? " if close else "") +
                   f"its fields: {', '.join(sorted(fields))}")

