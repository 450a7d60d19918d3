"""Reactor rules, offline: ``hostbus rules check FILE`` and ``hostbus rules test FILE
--event JSON|-``. Nothing is sent and no broker is needed."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from console.commands.common import Exit, emit_json, exits, usage
from console.commands.options import json_option

file_argument = click.argument("file", metavar="FILE", type=click.Path(dir_okay=False))


@click.group()
def rules() -> None:
    """Check a reactor's rules and try them on an event, without a broker.

    FILE is the reactor's configuration (etc/reactor.toml) or any file of [[rule]]
    tables.

    \b
      hostbus rules check /etc/hostbus/reactor.toml
      hostbus rules test /etc/hostbus/reactor.toml --event - < event.json
      hostbus watch 'health.*.check' -n 1 --json | hostbus rules test reactor.toml -e -
    """


@exits(Exit.FAILED, configured=False)
@rules.command("check")
@file_argument
@json_option
def check(file: str, as_json: bool) -> Exit:
    """Check FILE's rules as the reactor reads them, and their references against the
    agents' schemas: each events pattern matches an event some agent sends, and each
    field a condition (when) or an action ({data.FIELD}) names is in that event's data.
    Every problem is listed with its fix. Exit 0 if there is none, 1 if there is one.

    \b
      hostbus rules check etc/reactor.toml
      hostbus rules check rules.toml --json | jq '.problems[].fix'

    \b
    A problem reads, for instance (the rule, what is wrong, then the fix):
      problem: reboot an unhealthy VM: when names stat, which the data of
          health.check does not have
        fix: did you mean state? its fields: check, consecutive_failures, ...
    """
    from console.reactor.checking import check_file

    report = check_file(file)  # ConfigError: the file is not a configuration (exit 2)
    if as_json:
        emit_json(report.to_dict())
        return Exit.OK if report.ok else Exit.FAILED
    for rule in report.rules:
        bad = any(p.rule == rule["name"] for p in report.problems)
        action = rule["action"]
        where = f" on {action['host']}" if action["host"] else ""
        click.echo(f"{'FAIL' if bad else 'ok  '}  {rule['name']}: "
                   f"{' '.join(rule['events'])} -> {action['call']}{where}"
                   + (" (dry run)" if rule["dry_run"] else ""))
    for finding in report.problems:
        click.echo(f"problem: {finding.rule + ': ' if finding.rule else ''}"
                   f"{finding.problem}")
        if finding.fix:
            click.echo(f"  fix: {finding.fix}")
    for finding in report.warnings:
        click.echo(f"warning: {finding.rule}: {finding.problem}")
    problems = len(report.problems)
    click.echo(f"{file}: {len(report.rules)} rule(s) read, "
               + (f"{problems} problem(s)" if problems else "no problem"))
    return Exit.OK if report.ok else Exit.FAILED


def read_events(text: str) -> list[Any]:
    """One JSON document, or JSON lines (hostbus watch --json prints one per line)."""
    try:
        return [json.loads(text)]
    except json.JSONDecodeError as whole:
        lines = [line for line in text.splitlines() if line.strip()]
        if len(lines) == 1 and "{" not in text and Path(text.strip()).is_file():
            raise usage(f"--event {text.strip()} is a file name: give the event itself, or "
                        f"read the file from stdin: --event - < {text.strip()}") from None
        if len(lines) < 2:
            raise usage(f"--event is not JSON ({whole}); give one event such as "
                        "'{\"host\": \"kvm01\", \"agent\": \"health\", \"event\": \"check\", "
                        "\"data\": {\"state\": \"failing\", \"vm\": \"web-a\"}}', or - and "
                        "the event on stdin") from None
        found = []
        for n, line in enumerate(lines, 1):
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise usage(f"--event line {n} is not JSON ({exc}): give one event per "
                            "line, as hostbus watch --json prints them") from None
        return found


def explain_text(entry: dict[str, Any]) -> str:
    if not entry["selects"]:
        return f"{entry['rule']}: not this event"
    if not entry["holds"]:
        return f"{entry['rule']}: its conditions ({entry['when']}) do not hold"
    if entry["action"] is None:
        return f"{entry['rule']}: cannot make its action: {entry['why']}"
    action = entry["action"]
    where = f" on {action['host']}" if action["host"] else ""
    return (f"{entry['rule']}: {entry['outcome']}: {action['call']}{where} "
            f"{json.dumps(action['args'])}")


def run_test(file: str, event_text: str, as_json: bool) -> Exit:
    """``rules test`` (and ``reactor test``, its older spelling)."""
    from console.reactor.main import load_config, load_rules
    from console.reactor.trial import event_from, explain

    text = sys.stdin.read() if event_text == "-" else event_text
    docs = read_events(text)
    found_rules = load_rules(load_config(file))  # ConfigError: exit 2 with its message
    acting = False
    reports = []
    for doc in docs:
        event = event_from(doc)
        entries = explain(found_rules, event)
        acting = acting or any(e.get("outcome") for e in entries)
        reports.append({"event": event.routing_key(), "rules": entries})
    if as_json:
        emit_json(reports[0] if len(reports) == 1 else {"events": reports})
    else:
        for report in reports:
            if len(reports) > 1:
                click.echo(f"{report['event']}:")
            for entry in report["rules"]:
                click.echo(("  " if len(reports) > 1 else "") + explain_text(entry))
    return Exit.OK if acting else Exit.FAILED


#: The event ``rules test`` (and the older ``reactor test``) tries the rules on.
event_option = click.option(
    "--event", "-e", "event_text", required=True, metavar="JSON|-",
    help="The event: JSON as hostbus watch --json prints it (host, agent, event, data), "
         "or - to read it (or one per line) from stdin.")


@exits(Exit.FAILED, configured=False)
@rules.command("test")
@file_argument
@event_option
@json_option
def test(file: str, event_text: str, as_json: bool) -> Exit:
    """Which of FILE's rules act on an event, and what each would send (call, host,
    arguments); nothing is sent. A rule with a window says the event counts toward it.
    Exit 0 if a rule would act, 1 if none.

    \b
      hostbus rules test etc/reactor.toml -e '{"host": "kvm01", "agent": "health",
          "event": "check", "data": {"state": "failing", "vm": "web-a"}}'
      reboot an unhealthy VM: fires (unless within its cooldown or one is in
          flight): virt.domain.reboot on kvm01 {"name": "web-a"}
    \b
    A real event, from the bus or the historian:
      hostbus watch 'health.*.check' -n 1 --json | hostbus rules test reactor.toml -e -
      hostbus history 'health.*.check' --since 1h --json | hostbus rules test r.toml -e -
    """
    return run_test(file, event_text, as_json)
