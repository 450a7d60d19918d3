"""Event history: the service (``hostbus historian``) and its client (``hostbus history``).

``watch --since`` replays through the same client (console/history/client.py)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from console.commands.common import (
    FANOUT,
    CliContext,
    CliError,
    Exit,
    exits,
    plural,
    service_exits,
    usage,
)
from console.commands.completion import complete_pattern
from console.commands.options import json_option, timeout_option

_SPAN = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, *, now: datetime | None = None) -> str:
    """``10m``, ``1h``, ``2d`` (ago) or an RFC 3339 time: an RFC 3339 time in UTC."""
    now = now or datetime.now(UTC)
    found = _SPAN.match(text.strip())
    if found:
        moment = now - timedelta(seconds=float(found[1]) * _UNITS[found[2]])
    else:
        try:
            moment = datetime.fromisoformat(text.strip())
        except ValueError:
            raise usage(f"{text!r}: give a span back from now (30s, 10m, 1h, 2d, 1w) or an "
                        "RFC 3339 time (2026-11-21T10:00:00Z)") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def historian_of(ctx: CliContext, historian: str | None, timeout: float) -> str:
    """``--historian``, else the first historian discovery finds."""
    if historian:
        return historian
    from console.history.client import find_historian

    found = find_historian(ctx.console(), timeout)
    if found is None:
        raise CliError(Exit.NOTHING, "no historian answered discovery: start one (hostbus "
                                     "historian --config FILE) or name it with --historian")
    return found


def unavailable(exc: Exception) -> CliError:
    """The exit code for a historian that cannot answer."""
    from console.history.client import HistoryUnavailable

    assert isinstance(exc, HistoryUnavailable)
    code = {"no_reply": Exit.NO_REPLY, "not_enrolled": Exit.NOT_ENROLLED}.get(
        exc.status, Exit.FAILED)
    return CliError(code, str(exc))


historian_option = click.option(
    "--historian", metavar="HOST", help="The historian's host id (default: discovered).")
since_option = click.option(
    "--since", "-s", metavar="WHEN",
    help="From this time: a span back from now (30s, 10m, 1h, 2d) or an RFC 3339 time.")


@service_exits()
@click.command("historian")
@click.option("--config", "-c", "config_file", type=click.Path(dir_okay=False),
              metavar="FILE", help="Historian config (see etc/historian.toml).")
@click.option("--check-config", is_flag=True,
              help="Check the configuration, its policy and keys, and open the store; "
                   "then exit (0 good, 1 not).")
@click.option("--setup", is_flag=True,
              help="Make the queue the historian reads (hostbus.history, bound to every "
                   "event) through the management API, as an administrator; then exit.")
@click.option("--admin-url", envvar="HOSTBUS_CONSOLE_ADMIN_URL", metavar="URL",
              help="With --setup: the management API (default [console] admin_url).")
@click.option("--max-backlog", type=click.IntRange(1000), default=1_000_000,
              show_default=True, metavar="N",
              help="With --setup: events the queue keeps while no historian reads it "
                   "(the oldest go first beyond that).")
@click.option("--queue", default="hostbus.history", show_default=True, metavar="NAME",
              help="With --setup: the queue's name. Each historian reads a queue of its "
                   "own ([historian] queue): two on one queue would share the events.")
@click.pass_obj
def historian(ctx: CliContext, config_file: str | None, check_config: bool, setup: bool,
              admin_url: str | None, max_backlog: int, queue: str) -> int:
    """Store every event (SQLite, or PostgreSQL by URL) until SIGTERM/SIGINT, and answer
    hostbus history and hostbus watch --since.

    \b
    Once, as an administrator:
      hostbus historian --setup
      hostbus broker enroll-service historian --agents history --queue hostbus.history
    Then, with the written config's broker URL in etc/historian.toml:
      hostbus historian --config /etc/hostbus/historian.toml
    """
    if setup:
        from console.commands.broker import admin, vhost_of

        if not re.fullmatch(r"hostbus\.[a-z][a-z0-9_]{0,62}", queue):
            raise usage(f"--queue {queue!r}: a shared queue is named hostbus.WORD (a-z, "
                        "0-9, _), such as hostbus.history")
        vhost = vhost_of(ctx, None)
        made = admin(ctx, admin_url).declare_event_queue(
            vhost, queue, ["#"], max_length=max_backlog)
        click.echo(f"queue {queue} in vhost {vhost}: "
                   + ("made" if made else "already there")
                   + f", bound to every event, keeping up to {max_backlog:,} while unread")
        return Exit.OK
    if check_config:
        from console.history.main import check
        from hostbus.errors import ConfigError

        try:
            for line in check(config_file):
                click.echo(line)
        except ConfigError as exc:
            raise CliError(Exit.FAILED, str(exc)) from None
        return Exit.OK
    from console.history.main import run

    return run(config_file)


@exits(*FANOUT, Exit.NOT_ENROLLED)
@click.command("history")
@click.argument("patterns", nargs=-1, metavar="[PATTERN]...", shell_complete=complete_pattern)
@since_option
@click.option("--until", "-u", metavar="WHEN", help="Up to this time (as --since).")
@click.option("--host", "-H", "hosts", multiple=True, metavar="HOST",
              help="Only these hosts (repeatable; globs such as 'web*').")
@click.option("--event", "-e", "events", multiple=True, metavar="AGENT.EVENT",
              help="Only these events: host.alert, virt.domain.lifecycle (repeatable).")
@click.option("--limit", "-n", type=click.IntRange(1), default=None, metavar="N",
              help="Stop after N events.")
@click.option("--no-validate", is_flag=True,
              help="Ask even if a pattern or event matches nothing the local schemas "
                   "declare (another agent's events).")
@historian_option
@timeout_option
@json_option
@click.pass_obj
def history(ctx: CliContext, patterns: tuple[str, ...], since: str | None, until: str | None,
            hosts: tuple[str, ...], events: tuple[str, ...], limit: int | None,
            no_validate: bool, historian: str | None, timeout: float | None,
            as_json: bool) -> Exit:
    """Print stored events, oldest first (the last hour unless --since says otherwise):
    every event published before you asked, once the historian has stored it.

    \b
    PATTERN is an AMQP topic pattern on <agent>.<host>.<event>, as hostbus watch takes:
      hostbus history 'host.*.alert' --since 1d        the last day's alerts
      hostbus history --host web01 --since 2h          all of web01's events
      hostbus history --event agent.offline -s 1w      who went away this week
      hostbus history 'virt.#' --since 2026-11-21T10:00:00Z --until 2026-11-21T11:00:00Z
    --json prints one JSON object per line: the event's envelope, its message_id and
    user_id, and when the historian received it.
    """
    from console.commands.watch import check_pattern, known_events
    from console.history.client import HistoryUnavailable, event_of, pages

    declared = known_events()
    for pattern in () if no_validate else patterns:
        check_pattern(pattern, declared)
    for event in events:
        agent, _, name = event.partition(".")
        if not name or (not no_validate and (agent, name) not in declared):
            raise usage(f"--event {event!r}: no such event (AGENT.EVENT); events: "
                        + ", ".join(f"{a}.{e}" for a, e in declared)
                        + " (--no-validate asks anyway)")
    args: dict[str, Any] = {"patterns": list(patterns) or ["#"], "hosts": list(hosts),
                            "events": list(events), "since": parse_since(since or "1h")}
    if until:
        args["until"] = parse_since(until)
    wait = ctx.timeout(timeout)
    where = historian_of(ctx, historian, wait)
    from console.render import event_line

    shown = 0
    try:
        for page, _ in pages(ctx.console(), where, args, timeout=wait, sync=True):
            for record in page:
                if as_json:
                    click.echo(json.dumps(record, separators=(",", ":")))
                else:
                    click.echo(event_line(event_of(record)))
                shown += 1
                if limit and shown >= limit:
                    break
            if limit and shown >= limit:
                break
    except HistoryUnavailable as exc:
        raise unavailable(exc) from None
    if not as_json:
        click.echo(plural(shown, "event"), err=True)
    return Exit.OK
