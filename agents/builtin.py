"""The built-in agent ``agent`` that every daemon hosts: discovery and object queries."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agents.base import Agent, as_text, method
from hostbus import __version__
from hostbus.errors import ErrorCode, RemoteError
from hostbus.names import BUILTIN_AGENT

if TYPE_CHECKING:
    from agents.dispatch import HostedAgent


@dataclass
class RuntimeInfo:
    host_id: str
    epoch: str
    started: str
    hosted: dict[str, HostedAgent]
    facts: Callable[[], dict[str, Any]]


class BuiltinAgent(Agent):
    name = BUILTIN_AGENT

    def __init__(self, info: RuntimeInfo) -> None:
        super().__init__()
        self.info = info

    def _agent_names(self) -> list[str]:
        return sorted(n for n in self.info.hosted if n != BUILTIN_AGENT)

    @method(inline=True)
    def ping(self) -> dict[str, Any]:
        return {
            "host": self.info.host_id, "agents": self._agent_names(), "version": __version__,
            "epoch": self.info.epoch, "started": self.info.started, "facts": self.info.facts(),
        }

    @method(inline=True)
    def describe(self) -> dict[str, Any]:
        agents = {}
        for name, hosted in sorted(self.info.hosted.items()):
            agents[name] = {
                "schema_version": hosted.schema.version,
                "methods": sorted(hosted.schema.methods),
                "classes": sorted(hosted.schema.classes),
                "events": sorted(hosted.schema.events),
            }
        return {"host": self.info.host_id, "version": __version__, "agents": agents}

    @method()
    def query(self, agent: str, class_name: str, where: dict[str, Any],
              limit: int) -> dict[str, Any]:
        hosted = self.info.hosted.get(agent)
        if hosted is None:
            raise RemoteError(ErrorCode.UNKNOWN_AGENT,
                              f"agent {agent!r} is not enabled on host {self.info.host_id!r}")
        spec = hosted.schema.classes.get(class_name)
        provider = hosted.agent.object_providers().get(class_name)
        if spec is None or provider is None:
            raise RemoteError(
                ErrorCode.UNKNOWN_METHOD,
                f"agent {agent!r} has no object class {class_name!r}; "
                f"classes: {', '.join(sorted(hosted.schema.classes)) or 'none'}",
            )
        unknown = sorted(set(where) - set(spec.fields))
        if unknown:
            raise RemoteError(
                ErrorCode.INVALID_ARGS,
                f"{class_name} has no field {', '.join(map(repr, unknown))}; "
                f"fields: {', '.join(sorted(spec.fields))}",
                {"path": f"args.where.{unknown[0]}"},
            )
        found = [obj for obj in provider() if _matches(obj, where)]
        return {"agent": agent, "class_name": class_name, "total": len(found),
                "objects": found[:limit]}


def _matches(obj: dict[str, Any], where: dict[str, Any]) -> bool:
    """Equality compared as text; a value with '*' or '?' is a glob."""
    for key, wanted in where.items():
        have_s, wanted_s = as_text(obj.get(key)), as_text(wanted)
        if any(c in wanted_s for c in "*?["):
            if not fnmatch.fnmatchcase(have_s, wanted_s):
                return False
        elif have_s != wanted_s:
            return False
    return True
