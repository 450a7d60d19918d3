"""The reactor's rules: which events, on what conditions, over what window, do what.

Rules live in the reactor's config file as ``[[rule]]`` tables (etc/reactor.toml has
commented examples):

    [[rule]]
    name = "reboot a VM whose web check fails"
    events = ["health.*.check"]            # routing patterns (agent.host.event)
    hosts = ["kvm*"]                       # optional: host globs
    when = "state=failing and vm=?*"       # conditions on the event's data (below)
    count = 1                              # matching events ...
    within_s = 0                           # ... within this many seconds (0: any time)
    for_s = 0                              # or: the condition held this long, no event
                                           #   of the same target saying otherwise
    absent_s = 0                           # or: no matching event for the target came
                                           #   this long after the last (no heartbeat)
    cooldown_s = 600                       # at most one action per target this often
    dry_run = false                        # decide and record, send nothing
    [rule.action]
    call = "virt.domain.reboot"            # AGENT.METHOD
    host = "{host}"                        # the host the event names (the default)
    args = { name = "{data.vm}" }          # values from the event: {host} {agent}
                                           #   {event} {data.FIELD} (nested: a.b)

Instead of ``call``, an action may be ``provision = { template = "web", owner =
"reactor", ... }`` (a provisioning request, schemas/envelope/provision.v1.json, its
request id the decision's: never done twice) or ``event = "NAME"`` with ``data = {...}``
(the reactor's own event ``reactor.ID.notice``, signed as every message it sends).

Conditions use the console's filter grammar (console/filters.py): ``state=failing``,
globs ``vm=web*``, ``vm=?*`` (present and not empty), ``!=``, regular expressions
``output=~timeout``, numbers ``consecutive_failures>=3``, ``and``, ``or``, ``not``,
parentheses. Nothing is evaluated as code. Nested data fields are named with dots
(``memory.percent``).

A rule's *target* is the action it would send (host, call and arguments, rendered from
the event): windows, cooldowns and de-duplication are per rule and target, so one VM
failing does not hold back another's action.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from console.args import ArgumentError
from console.filters import Filter, parse
from hostbus import names
from hostbus.envelope import Event
from hostbus.errors import ConfigError, ErrorCode, RemoteError, SchemaError
from hostbus.schema import load_agent_schema

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._:/()-]{0,99}")
_CALL = re.compile(r"[a-z][a-z0-9_]{0,31}\.[a-z][a-z0-9_.]{0,63}")
_PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*(?:\.[A-Za-z0-9_-]+)*)\}")
_PATTERN = re.compile(r"(\*|#|[a-z0-9_-]+)(\.(\*|#|[a-z0-9_-]+))*")
_RULE_KEYS = {"name", "events", "hosts", "when", "count", "within_s", "for_s",
              "absent_s", "cooldown_s", "dry_run", "action", "description"}
_ACTION_KEYS = {"call", "host", "args", "timeout_s", "provision", "event", "data"}
_EVENT_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}(\.[a-z][a-z0-9_]{0,31}){0,3}")
#: The reactor's own events: ``reactor.ID.notice`` (schemas/agents/reactor.json).
NOTICE = "notice"


class Missing(Exception):
    """An event lacks a field a rule's action needs."""


@dataclass(frozen=True)
class Action:
    """What a rule does: ``kind`` call (``agent.method`` on ``host`` with ``args``),
    provision (``args`` is the provisioning request's body) or event (the reactor's
    own ``reactor.ID.notice`` named ``method``, with ``args`` as its data)."""

    agent: str
    method: str
    host: str = "{host}"
    args: dict[str, Any] = field(default_factory=dict)
    timeout_s: float = 30.0
    kind: str = "call"

    @property
    def call(self) -> str:
        if self.kind == "provision":
            return "provision"
        if self.kind == "event":
            return f"event {self.method}"
        return f"{self.agent}.{self.method}"


@dataclass(frozen=True)
class Target:
    """One action rendered from one event: what is sent, and the key it is known by."""

    host: str
    agent: str
    method: str
    args: dict[str, Any]
    kind: str = "call"

    @property
    def call(self) -> str:
        return Action(self.agent, self.method, kind=self.kind).call

    @property
    def key(self) -> str:
        return f"{self.host}/{self.call}/" + \
            orjson.dumps(self.args, option=orjson.OPT_SORT_KEYS).decode()


@dataclass(frozen=True)
class Rule:
    name: str
    events: tuple[str, ...]
    action: Action
    hosts: tuple[str, ...] = ()
    when: Filter = field(default_factory=lambda: parse([]))
    count: int = 1
    within_s: float = 0.0
    for_s: float = 0.0
    absent_s: float = 0.0
    cooldown_s: float = 300.0
    dry_run: bool = False
    description: str = ""

    def selects(self, event: Event, matched: dict[str, bool] | None = None) -> bool:
        """The event is one this rule looks at (pattern and host), whatever its data.
        ``matched``: pattern -> whether it matches this event, shared by the rules that
        look at one event (many rules, few patterns)."""
        key = event.routing_key()
        seen = matched if matched is not None else {}
        for pattern in self.events:
            if pattern not in seen:
                seen[pattern] = names.topic_matches(pattern, key)
        return any(seen[p] for p in self.events) and \
            (not self.hosts or any(fnmatch.fnmatchcase(event.host, h) for h in self.hosts))

    def holds(self, event: Event, flat: dict[str, Any] | None = None) -> bool:
        """The conditions hold for this event's data (``flat``: the data flattened once
        for all the rules that look at one event)."""
        return self.when.matches(flat if flat is not None else flatten(event.data))

    def target(self, event: Event) -> Target:
        """The action for this event; ``Missing`` names a field the event lacks (or,
        for a provisioning request, what its body lacks)."""
        if self.action.kind != "call":
            args = {k: render(v, event) for k, v in self.action.args.items()}
            if self.action.kind == "provision":
                check_provision(args)
            return Target("", self.action.agent, self.action.method, args, self.action.kind)
        host = render(self.action.host, event)
        if not isinstance(host, str):
            raise Missing(f"action host {self.action.host!r} is not a host id: {host!r}")
        try:
            names.validate_host_id(host)
        except (ValueError, SchemaError) as exc:
            raise Missing(f"action host {host!r}: {exc}") from None
        return Target(host, self.action.agent, self.action.method,
                      {k: render(v, event) for k, v in self.action.args.items()})

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "events": list(self.events), "hosts": list(self.hosts),
                "when": self.when.text, "count": self.count, "within_s": self.within_s,
                "for_s": self.for_s, "absent_s": self.absent_s,
                "cooldown_s": self.cooldown_s, "dry_run": self.dry_run,
                "action": {"call": self.action.call, "kind": self.action.kind,
                           "host": self.action.host if self.action.kind == "call" else "",
                           "args": self.action.args, "timeout_s": self.action.timeout_s},
                "description": self.description}


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested data as dotted keys (``memory.percent``), as conditions name them."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def lookup(path: str, event: Event) -> Any:
    if path in ("host", "agent", "event"):
        return getattr(event, path)
    head, _, rest = path.partition(".")
    if head != "data" or not rest:
        raise Missing(f"{{{path}}}: use {{host}}, {{agent}}, {{event}} or {{data.FIELD}}")
    value: Any = event.data
    for part in rest.split("."):
        if not isinstance(value, dict) or part not in value:
            raise Missing(f"the event has no data field {rest!r}")
        value = value[part]
    return value


def render(template: Any, event: Event) -> Any:
    """A value of the action with the event's fields put in: a string that is exactly
    one placeholder keeps the field's type; placeholders inside text become text."""
    if isinstance(template, list):
        return [render(item, event) for item in template]
    if isinstance(template, dict):
        return {k: render(v, event) for k, v in template.items()}
    if not isinstance(template, str):
        return template
    whole = _PLACEHOLDER.fullmatch(template)
    if whole:
        value = lookup(whole[1], event)
        if value is None or value == "":
            raise Missing(f"the event's {whole[1]} is empty")
        return value
    return _PLACEHOLDER.sub(lambda m: str(lookup(m[1], event)), template)


# ------------------------------------------------------------------------ loading
def parse_rules(tables: list[Any], *, check_calls: bool = True) -> list[Rule]:
    """The rules of ``[[rule]]``; ``ConfigError`` names the rule and what is wrong.
    ``check_calls``: each action's call and fixed arguments are checked against the
    agent's schema (where the schema is known here)."""
    rules: list[Rule] = []
    for i, table in enumerate(tables):
        where = f"[[rule]] #{i + 1}"
        if not isinstance(table, dict):
            raise ConfigError(f"{where} must be a table")
        name = table.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ConfigError(f"{where}: name = {name!r}: give a name (letters, digits, "
                              "spaces and ._:/()-, at most 100)")
        where = f"[[rule]] {name!r}"
        if any(r.name == name for r in rules):
            raise ConfigError(f"{where}: two rules have this name")
        unknown = set(table) - _RULE_KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} "
                              f"(known: {', '.join(sorted(_RULE_KEYS))})")
        rules.append(_rule(where, table, check_calls))
    return rules


def _rule(where: str, table: dict[str, Any], check_calls: bool) -> Rule:
    events = table.get("events")
    if isinstance(events, str):
        events = [events]
    if not isinstance(events, list) or not events or not all(
            isinstance(p, str) and _PATTERN.fullmatch(p) and len(p) <= 255 for p in events):
        raise ConfigError(f"{where}: events = {events!r}: give routing patterns "
                          "AGENT.HOST.EVENT, * for one word and # for any (health.*.check)")
    hosts = table.get("hosts", [])
    if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
        raise ConfigError(f"{where}: hosts = {hosts!r}: a list of host globs")
    when_text = table.get("when", "")
    if not isinstance(when_text, str):
        raise ConfigError(f"{where}: when must be a string such as \"state=failing\"")
    try:
        when = parse([when_text] if when_text.strip() else [], option="when")
    except (ArgumentError, re.error) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    numbers: dict[str, float] = {}
    for key, default, low in (("count", 1, 1), ("within_s", 0.0, 0.0), ("for_s", 0.0, 0.0),
                              ("absent_s", 0.0, 0.0), ("cooldown_s", 300.0, 0.0)):
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < low:
            raise ConfigError(f"{where}: {key} = {value!r}: give a number of at least {low:g}")
        numbers[key] = value
    if numbers["count"] > 1 and numbers["within_s"] <= 0:
        raise ConfigError(f"{where}: count = {numbers['count']:g} needs within_s (the "
                          "window the events must fall in)")
    if sum(bool(x) for x in (numbers["for_s"], numbers["absent_s"],
                             numbers["count"] > 1)) > 1:
        raise ConfigError(f"{where}: give one window: count/within_s, for_s or absent_s")
    dry_run = table.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise ConfigError(f"{where}: dry_run must be true or false")
    action = _action(where, table.get("action"), check_calls)
    return Rule(name=table["name"], events=tuple(events), hosts=tuple(hosts), when=when,
                count=int(numbers["count"]), within_s=float(numbers["within_s"]),
                for_s=float(numbers["for_s"]), absent_s=float(numbers["absent_s"]),
                cooldown_s=float(numbers["cooldown_s"]),
                dry_run=dry_run, action=action,
                description=str(table.get("description", "")))


def check_provision(body: dict[str, Any]) -> None:
    """A provisioning request's body (without ``v``) as the provisioner takes it;
    ``Missing`` says what is wrong."""
    from hostbus.schema import Validator, envelope_schema

    schema = envelope_schema("provision")
    submit = {**schema["definitions"]["submit"], "definitions": schema["definitions"]}
    try:
        Validator(submit, prefix="provision", code=ErrorCode.INVALID_ARGS).validate(
            {"v": 1, **body})
    except RemoteError as exc:
        raise Missing(f"the provisioning request is not valid: {exc.message}") from None


def _other_action(where: str, table: dict[str, Any]) -> Action:
    """A provisioning request or an event of the reactor's own."""
    timeout = table.get("timeout_s", 300.0 if "provision" in table else 30.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or \
            not 0 < timeout <= 600:
        raise ConfigError(f"{where}: action timeout_s must be a number of seconds up to 600")
    if "provision" in table:
        body = table["provision"]
        extra = set(table) - {"provision", "timeout_s"}
        if extra or not isinstance(body, dict):
            raise ConfigError(f"{where}: action provision is a table of the request's "
                              "fields (provision = { template = \"web\", owner = "
                              "\"reactor\" }), with timeout_s beside it; not "
                              f"{', '.join(sorted(extra)) or repr(body)}")
        fixed = {k: v for k, v in body.items() if not strings_in(v) or
                 not any(_PLACEHOLDER.search(x) for x in strings_in(v))}
        try:
            # the fields without placeholders now, the whole request at each firing
            check_provision({**{k: _sample(k) for k in body if k not in fixed}, **fixed})
        except Missing as why:
            raise ConfigError(f"{where}: {why} (schemas/envelope/provision.v1.json)") \
                from None
        _check_placeholders(where, body)
        return Action("provision", "submit", "", dict(body), float(timeout), "provision")
    name, data = table.get("event"), table.get("data", {})
    extra = set(table) - {"event", "data", "timeout_s"}
    if extra:
        raise ConfigError(f"{where}: an event action takes event, data and timeout_s, not "
                          f"{', '.join(sorted(extra))}")
    if not isinstance(name, str) or not _EVENT_NAME.fullmatch(name):
        raise ConfigError(f"{where}: action event = {name!r}: give a name such as "
                          "\"vm.unhealthy\" (lower-case words, dots between)")
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: action data must be a table")
    _check_placeholders(where, data)
    return Action("reactor", name, "", dict(data), float(timeout), "event")


def _sample(key: str) -> Any:
    """A stand-in for a field given by a placeholder, to check the rest of the body."""
    return 1 if key in ("count", "vcpus", "memory_mib", "disk_gib") else "x"


def _check_placeholders(where: str, value: Any) -> None:
    for text in strings_in(value):
        for found in _PLACEHOLDER.finditer(text):
            path = found[1]
            if path not in ("host", "agent", "event") and not path.startswith("data."):
                raise ConfigError(f"{where}: {{{path}}}: use {{host}}, {{agent}}, {{event}} "
                                  "or {data.FIELD}")


def _action(where: str, table: Any, check_calls: bool) -> Action:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: give an action: [rule.action] call = \"AGENT.METHOD\"")
    unknown = set(table) - _ACTION_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown action key(s) {', '.join(sorted(unknown))} "
                          f"(known: {', '.join(sorted(_ACTION_KEYS))})")
    kinds = [k for k in ("call", "provision", "event") if k in table]
    if len(kinds) > 1:
        raise ConfigError(f"{where}: an action is one of call, provision or event, not "
                          f"{' and '.join(kinds)}")
    if kinds and kinds[0] != "call":
        return _other_action(where, table)
    call = table.get("call")
    if not isinstance(call, str) or not _CALL.fullmatch(call):
        raise ConfigError(f"{where}: action call = {call!r}: give AGENT.METHOD "
                          "(virt.domain.reboot, host.service.restart), or instead of call "
                          "provision = {{ template = ... }} or event = \"NAME\"")
    agent, _, method = call.partition(".")
    args = table.get("args", {})
    if not isinstance(args, dict):
        raise ConfigError(f"{where}: action args must be a table")
    host = table.get("host", "{host}")
    timeout = table.get("timeout_s", 30.0)
    if not isinstance(host, str) or isinstance(timeout, bool) or \
            not isinstance(timeout, int | float) or not 0 < timeout <= 600:
        raise ConfigError(f"{where}: action host must be a string and timeout_s a number "
                          "of seconds up to 600")
    _check_placeholders(where, args)
    if check_calls:
        _check_against_schema(where, agent, method, args)
    return Action(agent, method, host, args, float(timeout))


def strings_in(value: Any) -> list[str]:
    """Every string in a value of nested dicts and lists (where placeholders may be)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings_in(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings_in(v)]
    return []


def _check_against_schema(where: str, agent: str, method: str, args: dict[str, Any]) -> None:
    try:
        schema = load_agent_schema(agent)
    except (SchemaError, OSError):
        return  # an agent this installation has no schema for: checked by the agent
    spec = schema.methods.get(method)
    if spec is None:
        raise ConfigError(f"{where}: agent {agent!r} has no method {method!r}; it has "
                          f"{', '.join(sorted(schema.methods))}")
    known = set(spec.args.get("properties", {}))
    unknown = set(args) - known
    if unknown:
        raise ConfigError(f"{where}: {agent}.{method} takes no argument(s) "
                          f"{', '.join(sorted(unknown))} (it takes {', '.join(sorted(known))})")
    missing = set(spec.args.get("required", [])) - set(args)
    if missing:
        raise ConfigError(f"{where}: {agent}.{method} needs {', '.join(sorted(missing))}")
