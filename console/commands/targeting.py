"""Which hosts a command acts on: -H names and globs, --all, --where, by discovery."""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING, Any

from console.args import parse_where
from console.commands.common import CliContext, CliError, Exit, emit_json, usage
from hostbus import names

if TYPE_CHECKING:
    from console.client import AgentInfo


def is_glob(host: str) -> bool:
    return any(c in host for c in "*?[")


def valid_host(host: str) -> str:
    try:
        return names.validate_host_id(host)
    except ValueError as exc:
        raise usage(str(exc)) from None


def discover(ctx: CliContext, hosts: tuple[str, ...], agent: str | None,
             where: tuple[str, ...], idle: float | None,
             timeout: float | None) -> list[AgentInfo]:
    """Broadcast discovery narrowed by -H (names or globs), --agent and --where."""
    facts = parse_where(where)
    bfilter: dict[str, Any] = {}
    if len(hosts) == 1:
        bfilter["host"] = hosts[0]
    if agent:
        bfilter["agent"] = agent
    if facts:
        bfilter["facts"] = facts
    exact = [h for h in hosts if not is_glob(h)]
    infos = ctx.console().discover(
        filter=bfilter, timeout=ctx.timeout(timeout), idle=ctx.idle(idle),
        expect=exact if len(exact) == len(hosts) else (),
    )
    if len(hosts) > 1:
        infos = [i for i in infos if any(fnmatch.fnmatchcase(i.host, g) for g in hosts)]
    return infos


def select_hosts(ctx: CliContext, hosts: tuple[str, ...], all_hosts: bool,
                 where: tuple[str, ...], agent: str | None, timeout: float | None,
                 idle: float | None, as_json: bool) -> list[str]:
    """-H names are used as given; -H globs, --all and --where go through discovery."""
    facts = parse_where(where)
    exact = [valid_host(h) for h in hosts if not is_glob(h)]
    globs = [h for h in hosts if is_glob(h)]
    if not hosts and not all_hosts:
        raise usage("say which hosts: -H HOST (repeatable, globs allowed) or --all "
                    "[--where FACT=VALUE]")
    if exact and not globs and not all_hosts and not facts:
        return exact
    infos = discover(ctx, tuple(globs), agent, where, idle, timeout)
    selected = list(dict.fromkeys([*exact, *(i.host for i in infos)]))
    if not selected:
        if as_json:
            emit_json({"results": [], "summary": {"hosts": 0, "ok": 0, "failed": 0,
                                                  "no_reply": 0}})
        raise CliError(Exit.NOTHING, "no matching hosts answered discovery (is an agent "
                                     "running? try `hostbus agents`)")
    return selected


def exit_for(summary: dict[str, Any]) -> Exit:
    """A fan-out's exit code from its summary."""
    if summary["hosts"] == 0:
        return Exit.NOTHING
    if summary["no_reply"]:
        return Exit.NO_REPLY
    if summary["failed"]:
        return Exit.FAILED
    return Exit.OK
