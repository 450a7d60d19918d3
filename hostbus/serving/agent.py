"""What an agent module is made of: the ``Agent`` base class and three decorators.

The decorators only attach metadata; decorated methods stay plain callables that unit
tests call directly. Host access (psutil, libvirt, power control) is passed to the
agent's constructor, so tests substitute fakes.

    class HostAgent(Agent):
        name = "host"

        @method()
        def identify(self) -> dict: ...

        @objects("disk")
        def disks(self) -> list[dict]: ...

        @periodic("metrics_interval")
        def publish_metrics(self) -> None: ...
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar

from hostbus.errors import SchemaError
from hostbus.schema import AgentSchema

F = TypeVar("F", bound=Callable[..., Any])

_METHOD = "__hostbus_method__"
_OBJECTS = "__hostbus_objects__"
_PERIODIC = "__hostbus_periodic__"
_INLINE = "__hostbus_inline__"


def method(name: str | None = None, *, inline: bool = False) -> Callable[[F], F]:
    """Expose a method. ``name`` defaults to the function name with '__' read as '.'.

    ``inline`` methods are quick and never block (``ping``): they run on the transport's
    I/O thread instead of waiting for a worker, so they answer even when every worker
    is busy with slow work.
    """

    def mark(fn: F) -> F:
        setattr(fn, _METHOD, name or fn.__name__.replace("__", "."))
        setattr(fn, _INLINE, inline)
        return fn

    return mark


def objects(class_name: str) -> Callable[[F], F]:
    """Provide the objects of one class of the agent's schema (for ``query``)."""

    def mark(fn: F) -> F:
        setattr(fn, _OBJECTS, class_name)
        return fn

    return mark


def periodic(interval_setting: str) -> Callable[[F], F]:
    """Run every N seconds, N read from the agent's config key ``interval_setting``
    (0 disables it)."""

    def mark(fn: F) -> F:
        setattr(fn, _PERIODIC, interval_setting)
        return fn

    return mark


class EventSink(Protocol):
    def __call__(self, agent: str, event: str, data: dict[str, Any]) -> None: ...


def _discard(agent: str, event: str, data: dict[str, Any]) -> None:
    """The sink of an agent not attached to a runtime (unit tests)."""


@dataclass(frozen=True)
class CallContext:
    """Who is calling; passed to methods that declare a ``ctx`` parameter."""

    request_id: str
    caller: str | None
    agent: str
    method: str


class Agent:
    name: ClassVar[str]
    config: dict[str, Any]

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        self.config = config or {}
        self._sink: EventSink = _discard

    def attach(self, sink: EventSink) -> None:
        self._sink = sink

    def emit(self, event: str, data: dict[str, Any]) -> None:
        self._sink(self.name, event, data)

    def facts(self) -> dict[str, Any]:
        """Facts this agent contributes to discovery filters (``--where os=linux``)."""
        return {}

    def heartbeat_status(self) -> dict[str, Any] | None:
        """What this agent adds to each heartbeat (capacity for placement, say)."""
        return None

    def start(self) -> None:
        """Called once the runtime is connected, before requests are served."""

    def stop(self) -> None:
        """Called on shutdown, after requests stopped."""

    # -- introspection used by the runtime --
    def methods(self) -> dict[str, Callable[..., Any]]:
        return self._marked(_METHOD)

    def inline_methods(self) -> set[str]:
        return {name for name, fn in self.methods().items() if getattr(fn, _INLINE, False)}

    def object_providers(self) -> dict[str, Callable[[], list[dict[str, Any]]]]:
        return self._marked(_OBJECTS)

    def periodic_tasks(self) -> list[tuple[str, Callable[[], None]]]:
        return [(setting, fn) for setting, fn in self._marked(_PERIODIC).items()]

    def _marked(self, attr: str) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for klass in reversed(type(self).__mro__):
            for attr_name, value in vars(klass).items():
                label = getattr(value, attr, None)
                if label is not None:
                    found[label] = getattr(self, attr_name)
        return found


def as_text(value: Any) -> str:
    """How filters compare values: as text, booleans as true/false, None as empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def check_agent_against_schema(agent: Agent, schema: AgentSchema) -> None:
    """Refuse an agent whose code and schema disagree; the message lists every mismatch."""
    problems: list[str] = []
    code_methods = agent.methods()
    for name in sorted(set(schema.methods) - set(code_methods)):
        problems.append(f"method {name!r} is in the schema but not implemented")
    for name in sorted(set(code_methods) - set(schema.methods)):
        problems.append(f"method {name!r} is implemented but not in the schema")
    for name in sorted(set(schema.methods) & set(code_methods)):
        problems.extend(_check_signature(name, code_methods[name], schema.methods[name].args))
    providers = agent.object_providers()
    for name in sorted(set(schema.classes) ^ set(providers)):
        side = "schema" if name in schema.classes else "code"
        problems.append(f"object class {name!r} exists only in the {side}")
    if problems:
        raise SchemaError(
            f"agent {agent.name!r} disagrees with schemas/agents/{schema.name}.json:\n  - "
            + "\n  - ".join(problems)
        )


def _check_signature(name: str, fn: Callable[..., Any], args_schema: dict[str, Any]) -> list[str]:
    sig = inspect.signature(fn)
    params = {p: v for p, v in sig.parameters.items() if p != "ctx"}
    if any(v.kind is inspect.Parameter.VAR_KEYWORD for v in params.values()):
        return []
    props = set(args_schema.get("properties", {}))
    required = set(args_schema.get("required", []))
    with_default = {k for k, v in args_schema.get("properties", {}).items()
                    if isinstance(v, dict) and "default" in v}
    problems = [f"method {name!r}: schema argument {arg!r} is not a parameter"
                for arg in sorted(props - set(params))]
    for pname, param in params.items():
        if pname not in props:
            problems.append(f"method {name!r}: parameter {pname!r} is not in the schema")
        elif param.default is inspect.Parameter.empty and pname not in required | with_default:
            problems.append(
                f"method {name!r}: parameter {pname!r} has no default, so the schema must "
                "make it required or give it a default"
            )
    if args_schema.get("additionalProperties", True) is not False:
        problems.append(f"method {name!r}: args schema must set additionalProperties: false")
    return problems
