"""Which hosts a command acts on: -H names and globs, --all, --where, by discovery."""

from __future__ import annotations

import fnmatch
import json
import math
import random
import sys
from typing import TYPE_CHECKING, Any

import click

from console.commands.common import CliContext, CliError, Exit, emit_json, usage
from console.commands.completion import remember_hosts
from console.filters import parse
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
    """Broadcast discovery narrowed by -H (names or globs), --agent and --where. Hosts
    that refused are in the list too (``refused``, with their error; their facts are
    unknown). Agents filter exact facts themselves; the whole --where is checked here."""
    flt = parse(where, "--where")
    facts = flt.exact(globs=False)
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
        expect=exact if len(exact) == len(hosts) else (), refusals=True,
    )
    remember_hosts(ctx.url, [i.host for i in infos if not i.refused],
                   everyone=not bfilter and not hosts)
    if len(hosts) > 1:
        infos = [i for i in infos if any(fnmatch.fnmatchcase(i.host, g) for g in hosts)]
    return [i for i in infos if i.refused or flt.matches(i.facts)]


def select_hosts(ctx: CliContext, hosts: tuple[str, ...], all_hosts: bool,
                 where: tuple[str, ...], agent: str | None, timeout: float | None,
                 idle: float | None, as_json: bool) -> list[str]:
    """The hosts to act on. Exact -H names alone are used as given (no discovery);
    otherwise discovery finds them, and every filter given narrows the set: -H names
    and globs, --where facts and the agent all have to match."""
    parse(where, "--where")  # bad syntax is found before anything is sent
    for h in hosts:
        if not is_glob(h):
            valid_host(h)
    if not hosts and not all_hosts:
        raise usage("say which hosts: -H HOST (repeatable, globs allowed) or --all "
                    "[--where FACT=VALUE]")
    if hosts and not any(is_glob(h) for h in hosts) and not where:
        return list(dict.fromkeys(hosts))
    infos = discover(ctx, hosts, agent, where, idle, timeout)
    for info in infos:
        if info.refused:
            click.echo(f"hostbus: {info.host} refused discovery: {refusal(info)} (not "
                       "called)", err=True)
    selected = [i.host for i in infos if not i.refused]
    left_out = [h for h in dict.fromkeys(hosts) if not is_glob(h) and h not in selected]
    if left_out and selected:
        click.echo(f"hostbus: left out {', '.join(left_out)}: did not match "
                   f"{' '.join(f'--where {w}' for w in where) or 'the filters'} (or did not "
                   "answer discovery)", err=True)
    if not selected:
        if as_json:
            emit_json({"results": [], "summary": {"hosts": 0, "ok": 0, "failed": 0,
                                                  "no_reply": 0}})
        asked = " ".join([*(f"-H {h}" for h in hosts), *(f"--where {w}" for w in where)])
        having = f" with agent {agent!r}" if agent else ""
        raise CliError(Exit.NOTHING, f"no host matched {asked} (of the hosts{having} that "
                                     "answered discovery; `hostbus agents` lists them)" if asked
                       else f"no host{having} answered discovery (is an agent running? "
                            "try `hostbus agents`)")
    return selected


def refusal(info: AgentInfo) -> str:
    """Why a host refused: its error code and message."""
    error = info.error or {}
    return f"{error.get('code', 'refused')}: {error.get('message', '')}"


def exit_for(summary: dict[str, Any]) -> Exit:
    """A fan-out's exit code from its summary."""
    if summary["hosts"] == 0:
        return Exit.NOTHING
    # Most specific first: a host nobody enrolled is a mistake in the command, told by
    # the broker at once; silence may be a host that is down.
    if summary.get("not_enrolled"):
        return Exit.NOT_ENROLLED
    if summary["no_reply"]:
        return Exit.NO_REPLY
    if summary["failed"]:
        return Exit.FAILED
    # Not a failure, not done either: a script must not take it for a result.
    if summary.get("pending"):
        return Exit.PENDING
    return Exit.OK


def read_hosts(path: str | None) -> list[str]:
    """Host ids from a file (- for stdin): one per line (# comments), or the --json
    output of `hostbus agents`, `ping` or `call`."""
    if path is None:
        return []
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
    except OSError as exc:
        raise usage(f"--hosts-from {path}: {exc.strerror}") from None
    if text.lstrip().startswith("{"):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise usage(f"--hosts-from {path}: not valid JSON: {exc}") from None
        rows = [r for key in ("agents", "replies", "results") for r in doc.get(key, [])]
        found = [r["host"] for r in rows if isinstance(r, dict) and "host" in r]
    else:
        found = [line.split("#", 1)[0].strip() for line in text.splitlines()]
        found = [h for h in found if h]
    if not found:
        raise usage(f"--hosts-from {path}: no hosts in it")
    return [valid_host(h) for h in found]


def pick_subset(hosts: list[str], subset: tuple[int, bool] | None) -> list[str]:
    """--limit: N (or N%) of ``hosts`` at random, in their order."""
    if subset is None:
        return hosts
    number, percent = subset
    keep = max(1, math.ceil(len(hosts) * number / 100)) if percent else number
    if keep >= len(hosts):
        return hosts
    chosen = set(random.sample(hosts, keep))
    return [h for h in hosts if h in chosen]
