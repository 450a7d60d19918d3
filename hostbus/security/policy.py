"""Authorization at the agent: default deny, a rules file, and an explanation.

The first rule that matches a request decides; no match denies. A rule matches when
every condition it states holds: callers (broker user names, or ``group:NAME``), agents,
method globs, host globs, and argument constraints. The caller is the broker-validated
``user_id``: the broker refuses a message whose user_id is not the sender's.

    [groups]
    ops = ["alice", "bob"]

    [[rule]]
    name = "ops may reboot web hosts, with a delay"
    callers = ["group:ops"]
    agents = ["host"]
    methods = ["reboot"]
    hosts = ["web*"]
    args = { delay_s = { min = 60 } }
    hours = "08:00-18:00"          # optional: only in this window (end exclusive)
    days = ["mon", "tue", "wed", "thu", "fri"]
    timezone = "Europe/Berlin"     # of hours and days; default UTC
    allow = true
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, tzinfo
from pathlib import Path
from typing import Any, Protocol

from hostbus.envelope import Request
from hostbus.errors import ConfigError
from hostbus.schema import MethodSpec

# What a daemon without a rules file still answers: discovery, nothing that acts.
DISCOVERY = {("agent", "ping"), ("agent", "describe")}


@dataclass(frozen=True)
class Decision:
    allowed: bool
    rule: str
    reason: str
    requires_approval: bool = False


class Policy(Protocol):
    def decide(self, request: Request, method: MethodSpec) -> Decision:
        """A request that reached an agent (or a service's built-in agent)."""
        ...

    def decide_call(self, caller: str, agent: str, method: str,
                    args: dict[str, Any]) -> Decision:
        """A call that arrives otherwise: a provisioning message is the call
        provision.submit with the message's fields as arguments."""
        ...


class AllowAll:
    """Allows everything: for tests and programs that embed a runtime and decide
    elsewhere. Daemons and services never use it."""

    def decide(self, request: Request, method: MethodSpec) -> Decision:
        return Decision(True, "allow-all", "this runtime was built without a policy")

    def decide_call(self, caller: str, agent: str, method: str,
                    args: dict[str, Any]) -> Decision:
        return Decision(True, "allow-all", "this runtime was built without a policy")


class DiscoveryOnly:
    """A daemon or service with no rules file: answers discovery, refuses the rest and
    says which setting to add."""

    def __init__(self, what: str = "agent", setting: str = "[security] policy",
                 example: str = "etc/policy.toml") -> None:
        self.what = what
        self.setting = setting
        self.example = example

    def decide(self, request: Request, method: MethodSpec) -> Decision:
        return self.decide_call(request.user_id or "", request.agent, request.method,
                                request.args)

    def decide_call(self, caller: str, agent: str, method: str,
                    args: dict[str, Any]) -> Decision:
        if (agent, method) in DISCOVERY:
            return Decision(True, "discovery", "discovery is always answered")
        return Decision(False, "no-policy",
                        f"this {self.what} has no policy file, so it only answers discovery "
                        "(default deny); "
                        f"set {self.setting} = \"/etc/hostbus/policy.toml\" (see "
                        f"{self.example})")


@dataclass(frozen=True)
class ArgRule:
    min: float | None = None
    max: float | None = None
    pattern: str | None = None
    one_of: tuple[Any, ...] | None = None

    def check(self, name: str, value: Any) -> str | None:
        """None if the value is acceptable, else why not."""
        if self.one_of is not None and value not in self.one_of:
            return f"{name}={value!r} is not one of {list(self.one_of)}"
        if self.min is not None or self.max is not None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                return f"{name}={value!r} is not a number"
            if self.min is not None and value < self.min:
                return f"{name}={value!r} is below {self.min:g}"
            if self.max is not None and value > self.max:
                return f"{name}={value!r} is above {self.max:g}"
        if self.pattern is not None and (
                not isinstance(value, str) or not re.fullmatch(self.pattern, value)):
            return f"{name}={value!r} does not match {self.pattern!r}"
        return None


DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class TimeWindow:
    """When a rule applies: hours of the day (a window may wrap past midnight, as in
    "22:00-06:00") and days of the week, in one time zone."""

    start: time | None = None
    end: time | None = None
    days: tuple[str, ...] = DAYS
    zone: tzinfo = UTC
    text: str = "any time"

    @classmethod
    def parse(cls, hours: str | None, days: list[str] | None, zone: str | None) -> TimeWindow:
        tz: tzinfo = UTC
        if zone:
            from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

            try:
                tz = ZoneInfo(zone)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown timezone {zone!r} (e.g. \"UTC\", "
                                 "\"Europe/Berlin\")") from None
        start = end = None
        if hours:
            m = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*", hours)
            if not m or int(m[1]) > 24 or int(m[3]) > 24 or int(m[2]) > 59 or int(m[4]) > 59:
                raise ValueError(f"hours {hours!r} is not like \"08:00-18:00\"")
            start = time(int(m[1]) % 24, int(m[2]))
            end = time(int(m[3]) % 24, int(m[4]))
        wanted = tuple(d.lower()[:3] for d in (days or DAYS))
        unknown = [d for d in wanted if d not in DAYS]
        if unknown:
            raise ValueError(f"unknown day {unknown[0]!r}; days are {', '.join(DAYS)}")
        text = " ".join(filter(None, [hours, ",".join(wanted) if days else None,
                                      zone if (hours or days) else None])) or "any time"
        return cls(start, end, wanted, tz, text)

    def why_not(self, moment: datetime) -> str | None:
        local = moment.astimezone(self.zone)
        if DAYS[local.weekday()] not in self.days:
            return f"{DAYS[local.weekday()]} is outside {self.text}"
        if self.start is not None and self.end is not None:
            now = local.time().replace(tzinfo=None)
            inside = (self.start <= now < self.end if self.start < self.end
                      else now >= self.start or now < self.end)
            if not inside:
                return f"{now.strftime('%H:%M')} is outside {self.text}"
        return None


ANY_TIME = TimeWindow()


@dataclass(frozen=True)
class Rule:
    name: str
    allow: bool
    callers: tuple[str, ...] = ("*",)
    agents: tuple[str, ...] = ("*",)
    methods: tuple[str, ...] = ("*",)
    hosts: tuple[str, ...] = ("*",)
    args: dict[str, ArgRule] = field(default_factory=dict)
    requires_approval: bool = False
    when: TimeWindow = ANY_TIME

    def mismatch(self, caller: str, groups: set[str], agent: str, method: str, host: str,
                 args: dict[str, Any], at: datetime | None = None) -> str | None:
        """None if the rule applies to this request, else the first reason it does not."""
        who = {caller, *(f"group:{g}" for g in groups)}
        if not any(fnmatch.fnmatchcase(w, pattern) for w in who for pattern in self.callers):
            return f"caller {caller} is not in {list(self.callers)}"
        if not any(fnmatch.fnmatchcase(agent, p) for p in self.agents):
            return f"agent {agent} is not in {list(self.agents)}"
        if not any(fnmatch.fnmatchcase(method, p) for p in self.methods):
            return f"method {method} is not in {list(self.methods)}"
        if not any(fnmatch.fnmatchcase(host, p) for p in self.hosts):
            return f"host {host} is not in {list(self.hosts)}"
        for name, constraint in self.args.items():
            if name in args and (why := constraint.check(name, args[name])) is not None:
                return why
        if self.when is not ANY_TIME:
            return self.when.why_not(at or datetime.now(UTC))
        return None


_RULE_KEYS = {"name", "allow", "callers", "agents", "methods", "hosts", "args",
              "requires_approval", "hours", "days", "timezone"}


class RulesPolicy:
    def __init__(self, rules: list[Rule], groups: dict[str, set[str]], host_id: str) -> None:
        self.rules = rules
        self.groups = groups
        self.host_id = host_id

    @classmethod
    def load(cls, path: str | Path, host_id: str) -> RulesPolicy:
        path = Path(path)
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"policy file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"policy file {path} is not valid TOML: {exc}") from None
        groups = {str(g): {str(m) for m in members}
                  for g, members in doc.get("groups", {}).items()}
        rules = []
        for i, raw in enumerate(doc.get("rule", []), 1):
            where = f"{path}: rule {i}"
            unknown = sorted(set(raw) - _RULE_KEYS)
            if unknown:
                raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: "
                                  f"{', '.join(sorted(_RULE_KEYS))})")
            if not isinstance(raw.get("allow"), bool):
                raise ConfigError(f"{where}: say allow = true or allow = false")
            try:
                args = {k: ArgRule(v.get("min"), v.get("max"), v.get("pattern"),
                                   tuple(v["one_of"]) if "one_of" in v else None)
                        for k, v in raw.get("args", {}).items()}
                for rule_arg in args.values():
                    if rule_arg.pattern is not None:
                        re.compile(rule_arg.pattern)
            except (AttributeError, re.error) as exc:
                raise ConfigError(f"{where}: bad args constraint: {exc}") from None
            try:
                when = (TimeWindow.parse(raw.get("hours"), raw.get("days"), raw.get("timezone"))
                        if {"hours", "days", "timezone"} & set(raw) else ANY_TIME)
            except (ValueError, TypeError, AttributeError) as exc:
                raise ConfigError(f"{where}: {exc}") from None
            rules.append(Rule(
                name=str(raw.get("name", f"rule {i}")), allow=raw["allow"],
                callers=tuple(raw.get("callers", ["*"])), agents=tuple(raw.get("agents", ["*"])),
                methods=tuple(raw.get("methods", ["*"])), hosts=tuple(raw.get("hosts", ["*"])),
                args=args, requires_approval=bool(raw.get("requires_approval", False)),
                when=when,
            ))
        return cls(rules, groups, host_id)

    def groups_of(self, caller: str) -> set[str]:
        return {g for g, members in self.groups.items() if caller in members}

    def explain(self, caller: str, agent: str, method: str, args: dict[str, Any],
                host: str | None = None, at: datetime | None = None,
                ) -> tuple[Decision, list[tuple[str, str]]]:
        """The decision and, for each rule tried, why it did or did not apply. ``at``
        (default now) is the moment rules with hours or days are judged at."""
        host = host or self.host_id
        groups = self.groups_of(caller)
        trail = []
        for rule in self.rules:
            why_not = rule.mismatch(caller, groups, agent, method, host, args, at)
            if why_not is None:
                verdict = ("denies" if not rule.allow else
                           "allows, with a second person's approval" if rule.requires_approval
                           else "allows")
                trail.append((rule.name, f"matches: {verdict}"))
                if not rule.allow:
                    return Decision(False, rule.name,
                                    f"rule {rule.name!r} denies {caller} {agent}.{method}"), trail
                if rule.requires_approval:
                    return Decision(False, rule.name,
                                    f"rule {rule.name!r} requires a second person's approval "
                                    f"for {agent}.{method}", requires_approval=True), trail
                return Decision(True, rule.name,
                                f"rule {rule.name!r} allows {caller} {agent}.{method}"), trail
            trail.append((rule.name, why_not))
        return Decision(False, "default-deny",
                        f"no rule allows {caller} to call {agent}.{method} on {host} "
                        "(default deny)"), trail

    def decide(self, request: Request, method: MethodSpec) -> Decision:
        return self.explain(request.user_id or "", request.agent, request.method,
                            request.args)[0]

    def decide_call(self, caller: str, agent: str, method: str,
                    args: dict[str, Any]) -> Decision:
        return self.explain(caller, agent, method, args)[0]
