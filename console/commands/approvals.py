"""The two-person rule: ``hostbus approvals list|approve|deny``."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from console.commands.common import (
    FANOUT,
    CliContext,
    CliError,
    Exit,
    check_columns,
    emit_json,
    exits,
    layout,
    out,
    plural,
    resolve_prefix,
    usage,
)
from console.commands.options import (
    hosts_option,
    json_option,
    table_options,
    timeout_option,
    yes_option,
)
from console.commands.targeting import exit_for, select_hosts
from hostbus.errors import ErrorCode

APPROVAL_COLUMNS = ["approval_id", "host", "requester", "call", "args", "expires", "state",
                    "decided_by", "outcome"]


@click.group()
def approvals() -> None:
    """The two-person rule: requests that wait for someone else's approval.

    \b
    A policy rule with requires_approval = true parks a request on its host and
    answers approval_required with an approval id. Another person, whose key the
    agent trusts and whom the policy allows to call agent.approve, releases it:
      hostbus approvals list
      hostbus approvals approve 3f9c1a7be402
      hostbus approvals deny 3f9c1a7be402 --reason "not during the sale"
    The approval is signed with your [security] signing_key and bound to the exact
    request listed; the agent checks both signatures before the request runs.
    """


approval_hosts_option = hosts_option(
    "Only these hosts (repeatable, globs allowed; default: every host).")


def _approvals_on(ctx: CliContext, hosts: tuple[str, ...], which: str,
                  timeout: float | None) -> tuple[list[dict[str, Any]], Any]:
    selected = select_hosts(ctx, hosts, not hosts, (), None, timeout, None, False)
    return ctx.console().approvals(selected, state=which, timeout=ctx.timeout(timeout))


@exits(*FANOUT, Exit.NOT_ENROLLED)
@approvals.command("list")
@approval_hosts_option
@click.option("--all", "every_state", is_flag=True,
              help="Also approved, denied and expired ones (last 7 days).")
@timeout_option
@table_options
@json_option
@click.pass_obj
def approvals_list(ctx: CliContext, hosts: tuple[str, ...], every_state: bool,
                   timeout: float | None, wide: bool, columns: tuple[str, ...],
                   as_json: bool) -> Exit:
    """List parked requests, oldest first, with what each would run."""
    check_columns(columns, APPROVAL_COLUMNS)
    found, result = _approvals_on(ctx, hosts, "all" if every_state else "pending", timeout)
    # A host that checks no signatures takes no approvals: nothing is parked there, and
    # that is not a failure.
    without = [r.host for r in result.results if r.reply is not None and not r.reply.ok
               and (r.reply.error or {}).get("code") == ErrorCode.UNSUPPORTED]
    failed = [r for r in result.results if r.status != "ok" and r.host not in without]
    if as_json:
        emit_json({"approvals": found, "summary": result.summary, "no_approvals": without,
                   "errors": [r.to_dict() for r in failed]})
    else:
        from console.render import objects_table

        console_out = out()
        if found:
            console_out.print(objects_table(found, layout(console_out, wide, columns),
                                            APPROVAL_COLUMNS))
        else:
            taking = len(result.results) - len(without)
            console_out.print("no approvals " + ("" if every_state else "pending ") +
                              (f"on {plural(taking, 'host')}" if taking else
                               "(none of these hosts takes approvals)"))
        if without:
            console_out.print(f"{', '.join(without)} take{'s' if len(without) == 1 else ''} "
                              "no approvals (they check no signatures: \\[security] "
                              "trusted_keys is not set)", style="dim")
        for r in failed:
            why = r.reply.error["message"] if r.reply and r.reply.error else "no reply"
            click.echo(f"hostbus: {r.host}: {why}", err=True)
    counted = [r for r in result.results if r.host not in without]
    return exit_for({"hosts": len(result.results),
                     "failed": sum(r.status == "error" for r in counted),
                     "no_reply": sum(r.status == "no_reply" for r in counted)})


def _find_approval(ctx: CliContext, approval_id: str, hosts: tuple[str, ...],
                   timeout: float | None) -> dict[str, Any]:
    found, result = _approvals_on(ctx, hosts, "all", timeout)
    try:
        approval_id = resolve_prefix(approval_id, [a["approval_id"] for a in found],
                                     "approval")
    except CliError as exc:
        if exc.code != Exit.NOTHING:
            raise
    matches = [a for a in found if a["approval_id"] == approval_id]
    if not matches:
        refused = sorted({r.reply.error["message"] for r in result.results
                          if r.reply is not None and r.reply.error})
        why = "".join(f"\n  {m}" for m in refused[:5])
        raise CliError(Exit.NOTHING, f"no approval {approval_id} on any host that answered "
                                     f"(see `hostbus approvals list --all`)"
                                     + (f"; some hosts said:{why}" if why else ""))
    approval = matches[0]
    if approval["state"] != "pending":
        raise CliError(Exit.FAILED, f"approval {approval_id} was already {approval['state']}"
                       + (f" by {approval['decided_by']}" if approval.get("decided_by")
                          else ""))
    return approval


def _decide(ctx: CliContext, approval: dict[str, Any], verb: str, reason: str,
            timeout: float | None, as_json: bool) -> Exit:
    console = ctx.console()
    if console.signer is None:
        raise usage("an approval must be signed: set [security] signing_key in the console's "
                    "config (hostbus keys generate NAME)")
    res = (console.approve(approval, timeout=ctx.timeout(timeout)) if verb == "approve"
           else console.deny(approval, reason, timeout=ctx.timeout(timeout)))
    released = (res.reply.result or {}).get("reply", {}) if res.reply and res.reply.ok else {}
    code = (Exit.NO_REPLY if res.reply is None else
            Exit.OK if res.reply.ok and released.get("status", "ok") == "ok" else Exit.FAILED)
    what = f"{approval['approval_id']}: {approval['call']}"
    if as_json:
        emit_json(res.to_dict())
    elif res.reply is None:
        click.echo(f"hostbus: {approval['host']} did not answer within the timeout", err=True)
    elif not res.reply.ok:
        from console.client import FanoutResult
        from console.render import print_fanout

        print_fanout(out(), FanoutResult([res], res.elapsed_ms or 0.0))
    elif verb == "deny":
        click.echo(f"denied {what} by {approval['requester']} on {approval['host']} will "
                   "not run")
    elif code == Exit.OK:
        from console.render import print_result

        click.echo(f"approved {what} ran on {approval['host']}")
        print_result(out(), released.get("result") or {})
    else:
        err = released.get("error") or {}
        click.echo(f"approved {what} failed: {err.get('code')}: {err.get('message')}",
                   err=True)
    return code


@exits(*FANOUT)
@approvals.command("approve")
@click.argument("approval_id")
@approval_hosts_option
@yes_option
@timeout_option
@json_option
@click.pass_obj
def approvals_approve(ctx: CliContext, approval_id: str, hosts: tuple[str, ...], yes: bool,
                      timeout: float | None, as_json: bool) -> Exit:
    """Approve APPROVAL_ID (or its first characters): the parked request runs now, once."""
    approval = _find_approval(ctx, approval_id, hosts, timeout)
    summary = (f"{approval['requester']} asks to run {approval['call']} "
               f"{json.dumps(approval['args'], separators=(',', ':'))} on {approval['host']}")
    if not yes:
        if not sys.stdin.isatty():
            raise usage(f"{summary}; pass --yes to approve it")
        if not click.confirm(f"{summary}. Approve?"):
            raise usage("cancelled")
    return _decide(ctx, approval, "approve", "", timeout, as_json)


@exits(*FANOUT)
@approvals.command("deny")
@click.argument("approval_id")
@click.option("--reason", "-r", default="", help="Told to the requester.")
@approval_hosts_option
@timeout_option
@json_option
@click.pass_obj
def approvals_deny(ctx: CliContext, approval_id: str, reason: str, hosts: tuple[str, ...],
                   timeout: float | None, as_json: bool) -> Exit:
    """Deny APPROVAL_ID (or its first characters): the parked request never runs; its
    requester is told why."""
    approval = _find_approval(ctx, approval_id, hosts, timeout)
    return _decide(ctx, approval, "deny", reason, timeout, as_json)
