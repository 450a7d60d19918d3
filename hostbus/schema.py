"""Loading the JSON Schema files of ``schemas/`` and validating against them.

The files are the single contract: agents check their methods against them at start-up
and validate arguments before dispatch; consoles validate before sending and build help
from them. Validators are compiled to Python by fastjsonschema (about a microsecond for a
typical request; see ``benchmarks/validator_cost.py``), which also fills in schema
``default`` values, so defaults are declared once, in the schema.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import fastjsonschema

from hostbus.errors import ErrorCode, RemoteError, SchemaError
from hostbus.names import validate_agent_name
from hostbus.resources import data_dir


class Validator:
    """A compiled schema. ``validate`` returns the data with defaults filled in, or
    raises ``RemoteError(code)`` naming the offending path."""

    def __init__(self, schema: dict[str, Any], *, prefix: str, code: ErrorCode) -> None:
        try:
            self._fn: Callable[[Any], Any] = fastjsonschema.compile(schema)
        except fastjsonschema.JsonSchemaDefinitionException as exc:
            raise SchemaError(f"{prefix}: invalid schema: {exc}") from None
        self.schema = schema
        self.prefix = prefix
        self.code = code

    def validate(self, data: Any) -> Any:
        try:
            return self._fn(data)
        except fastjsonschema.JsonSchemaValueException as exc:
            path = exc.name.replace("data", self.prefix, 1) if exc.name else self.prefix
            message = exc.message.replace("data", self.prefix, 1)
            raise RemoteError(self.code, message, {"path": path}) from None


def as_integers(schema: dict[str, Any], data: Any) -> Any:
    """``data`` (already valid against ``schema``) with each float that the schema
    types as an integer turned into an int, in objects and arrays at any depth."""
    kind = schema.get("type")
    if type(data) is float and (kind == "integer" or (isinstance(kind, list)
                                                       and "integer" in kind)):
        return int(data)
    if isinstance(data, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, value in data.items():
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if sub is not None and isinstance(value, float | dict | list):
                data[key] = as_integers(sub, value)
    elif isinstance(data, list) and isinstance(schema.get("items"), dict):
        for i, value in enumerate(data):
            if isinstance(value, float | dict | list):
                data[i] = as_integers(schema["items"], value)
    return data


@dataclass(frozen=True)
class MethodSpec:
    name: str
    description: str
    args: dict[str, Any]
    result: dict[str, Any]
    dangerous: bool = False
    examples: list[dict[str, Any]] = field(default_factory=list)

    @functools.cached_property
    def args_validator(self) -> Validator:
        return Validator(self.args, prefix="args", code=ErrorCode.INVALID_ARGS)

    @functools.cached_property
    def result_validator(self) -> Validator:
        return Validator(self.result, prefix="result", code=ErrorCode.INTERNAL)

    @functools.cached_property
    def _has_integers(self) -> bool:
        return '"integer"' in json.dumps(self.args)

    def validate_args(self, args: dict[str, Any]) -> dict[str, Any]:
        """The arguments with defaults filled in. JSON Schema counts 5.0 as an integer
        (and a program in another language may well send it); the method gets 5, not a
        float it would fail on."""
        checked = self.args_validator.validate(args)
        return as_integers(self.args, checked) if self._has_integers else checked


@dataclass(frozen=True)
class ClassSpec:
    name: str
    description: str
    key: str
    properties: dict[str, Any]
    statistics: dict[str, Any]

    @property
    def fields(self) -> dict[str, Any]:
        return {**self.properties, **self.statistics}

    @functools.cached_property
    def object_validator(self) -> Validator:
        schema = {"type": "object", "required": [self.key], "properties": self.fields,
                  "additionalProperties": False}
        return Validator(schema, prefix=self.name, code=ErrorCode.INTERNAL)


@dataclass(frozen=True)
class EventSpec:
    name: str
    description: str
    data: dict[str, Any]
    examples: list[dict[str, Any]] = field(default_factory=list)
    periodic: bool = False

    @functools.cached_property
    def data_validator(self) -> Validator:
        return Validator(self.data, prefix="data", code=ErrorCode.INTERNAL)


@dataclass(frozen=True)
class AgentSchema:
    name: str
    version: str
    description: str
    methods: dict[str, MethodSpec]
    classes: dict[str, ClassSpec]
    events: dict[str, EventSpec]
    raw: dict[str, Any]

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> AgentSchema:
        try:
            name = validate_agent_name(doc["agent"])
            methods = {
                m: MethodSpec(
                    name=m, description=spec.get("description", ""), args=spec["args"],
                    result=spec["result"], dangerous=bool(spec.get("dangerous", False)),
                    examples=spec.get("examples", []),
                )
                for m, spec in doc.get("methods", {}).items()
            }
            classes = {
                c: ClassSpec(
                    name=c, description=spec.get("description", ""), key=spec["key"],
                    properties=spec.get("properties", {}), statistics=spec.get("statistics", {}),
                )
                for c, spec in doc.get("classes", {}).items()
            }
            events = {
                e: EventSpec(name=e, description=spec.get("description", ""),
                             data=spec["data"], examples=spec.get("examples", []),
                             periodic=bool(spec.get("periodic", False)))
                for e, spec in doc.get("events", {}).items()
            }
            return cls(name, str(doc.get("version", "1")), doc.get("description", ""),
                       methods, classes, events, doc)
        except (KeyError, TypeError, ValueError) as exc:
            raise SchemaError(f"agent schema {doc.get('agent')!r} is malformed: {exc!r}") from None


def _read_json(*parts: str) -> dict[str, Any]:
    node = data_dir("schemas")
    for part in parts:
        node = node.joinpath(part)
    try:
        return json.loads(node.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SchemaError(f"schema file {'/'.join(parts)} not found") from None
    except json.JSONDecodeError as exc:
        raise SchemaError(f"schema file {'/'.join(parts)} is not valid JSON: {exc}") from None


@functools.cache
def _agent_files() -> tuple[str, ...]:
    folder = data_dir("schemas").joinpath("agents")
    return tuple(sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json")))


def available_agents() -> list[str]:
    """Agents with a schema file shipped in ``schemas/agents``."""
    return list(_agent_files())


@functools.cache
def load_agent_schema(name: str) -> AgentSchema:
    validate_agent_name(name)
    return AgentSchema.from_dict(_read_json("agents", f"{name}.json"))


@functools.cache
def envelope_schema(kind: str) -> dict[str, Any]:
    return _read_json("envelope", f"{kind}.v1.json")


@functools.cache
def envelope_validator(kind: str) -> Validator:
    """``kind`` is request, reply or event."""
    return Validator(envelope_schema(kind), prefix="body", code=ErrorCode.BAD_MESSAGE)
