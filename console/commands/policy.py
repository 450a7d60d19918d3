"""Policy files, offline: ``hostbus policy check``."""

from __future__ import annotations

import click

from console.args import parse_pairs
from console.commands.common import Exit, emit_json, exits, split_target, usage
from console.commands.options import json_option
from console.commands.targeting import valid_host


@click.group()
def policy() -> None:
    """Check what an agent's policy file allows, without sending anything."""


@exits(Exit.FAILED, configured=False)
@policy.command("check")
@click.argument("caller")
@click.argument("target", metavar="AGENT.METHOD")
@click.argument("pairs", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--policy", "policy_file", required=True, type=click.Path(dir_okay=False),
              metavar="FILE", help="The rules file the agent uses.")
@click.option("--host", default="web01", show_default=True,
              help="The host the agent runs on (for rules with hosts = [...]).")
@click.option("--at", "at_text", metavar="TIME",
              help="Judge rules with hours/days at this RFC 3339 time (default: now), "
                   "e.g. 2026-11-21T22:30:00Z.")
@json_option
def policy_check(caller: str, target: str, pairs: tuple[str, ...], policy_file: str,
                 host: str, at_text: str | None, as_json: bool) -> Exit:
    """Explain which rule decides CALLER's AGENT.METHOD call, and why the rules before it
    did not apply. Arguments are typed and defaulted by the method's schema, as the
    agent sees them. Exit 0 allowed, 1 denied (or needs approval)."""
    from console.client import method_spec
    from hostbus.security.policy import RulesPolicy

    agent, method = split_target(target, "method")
    spec = method_spec(agent, method)
    args = spec.validate_args(parse_pairs(pairs, spec))
    try:
        rules = RulesPolicy.load(policy_file, valid_host(host))
    except ValueError as exc:
        raise usage(str(exc)) from None
    at = None
    if at_text:
        from hostbus.envelope import parse_rfc3339

        at = parse_rfc3339(at_text, "--at")
    decision, trail = rules.explain(caller, agent, method, args, host, at)
    verdict = ("needs approval" if decision.requires_approval else
               "allowed" if decision.allowed else "denied")
    if as_json:
        emit_json({"caller": caller, "call": target, "host": host, "args": args,
                   "decision": verdict, "rule": decision.rule, "reason": decision.reason,
                   "groups": sorted(rules.groups_of(caller)),
                   "trail": [{"rule": r, "result": why} for r, why in trail]})
    else:
        groups = ", ".join(sorted(rules.groups_of(caller))) or "none"
        click.echo(f"{caller} (groups: {groups}) {target} on {host}: {verdict.upper()}")
        click.echo(f"  {decision.reason}")
        for rule_name, why in trail:
            click.echo(f"  - {rule_name}: {why}")
    return Exit.OK if decision.allowed else Exit.FAILED
