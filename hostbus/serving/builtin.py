"""The built-in agent ``agent`` that every daemon hosts: discovery and object queries."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hostbus import __version__
from hostbus.errors import ErrorCode, RemoteError
from hostbus.names import BUILTIN_AGENT
from hostbus.serving.agent import Agent, CallContext, as_text, method

if TYPE_CHECKING:
    from hostbus.serving.approvals import Approvals, Parked
    from hostbus.serving.dispatch import HostedAgent


@dataclass
class RuntimeInfo:
    host_id: str
    epoch: str
    started: str
    hosted: dict[str, HostedAgent]
    facts: Callable[[], dict[str, Any]]
    approvals: Approvals | None = None
    #: Runs an approved request (or refuses a denied one with the reason given),
    #: answers its requester, returns the reply body.
    release: Callable[[Parked, str], dict[str, Any]] | None = None
    #: Tells requesters and watchers about approvals that expired.
    expire: Callable[[], None] | None = None


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

    # -------------------------------------------------------------- approvals
    def _approvals(self) -> Approvals:
        if self.info.approvals is None:
            raise RemoteError(ErrorCode.UNSUPPORTED,
                              f"host {self.info.host_id} takes no approvals: it checks no "
                              "signatures ([security] trusted_keys is not set)")
        if self.info.expire is not None:
            self.info.expire()
        return self.info.approvals

    @method()
    def approvals(self, state: str) -> dict[str, Any]:
        desk = self._approvals()
        found = desk.store.list(include_decided=state == "all")
        return {"host": self.info.host_id,
                "approvals": [dict(p.to_wire(), host=self.info.host_id) for p in found]}

    @method()
    def approve(self, approval_id: str, digest: str, ctx: CallContext) -> dict[str, Any]:
        parked = self._approvals().take(approval_id, digest, ctx.caller or "")
        assert self.info.release is not None
        reply = self.info.release(parked, "")
        return {"approval_id": approval_id, "request_id": parked.request_id,
                "call": parked.call, "requester": parked.requester, "reply": reply}

    @method()
    def deny(self, approval_id: str, reason: str, ctx: CallContext) -> dict[str, Any]:
        parked = self._approvals().deny(approval_id, ctx.caller or "")
        assert self.info.release is not None
        self.info.release(parked, reason)  # tells the requester it was denied
        return {"approval_id": approval_id, "request_id": parked.request_id,
                "call": parked.call, "requester": parked.requester, "reason": reason}


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
