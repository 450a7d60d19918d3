"""Following events: ``hostbus watch``."""

from __future__ import annotations

import json
import signal
import threading
import time
from typing import Any

import click

from console.commands.common import EPILOG, CliContext, Exit, plural, usage
from console.commands.completion import complete_pattern
from console.commands.options import json_option
from hostbus import names


def known_events() -> list[tuple[str, str]]:
    """(agent, event) for every event the shipped schemas declare."""
    from hostbus.schema import available_agents, load_agent_schema

    return [(a, e) for a in available_agents() for e in load_agent_schema(a).events]


def _bind_named(ctx: CliContext, name: str, patterns: list[str]) -> str:
    """Bind subscription NAME's queue to exactly ``patterns`` through the management
    API (AMQP can add bindings, not list or remove them); what to add to the header."""
    from console.commands.broker import admin, vhost_of
    from console.commands.subscriptions import subscription_queue
    from hostbus.errors import HostbusError

    queue = subscription_queue(ctx, name)
    try:
        removed = admin(ctx, None).bind_subscription(vhost_of(ctx, None), queue, patterns)
    except HostbusError as exc:
        return (f" (patterns it was bound to before may remain: the management API "
                f"cannot be asked: {exc})")
    return f" (no longer bound to {', '.join(removed)})" if removed else ""


def check_pattern(pattern: str, events: list[tuple[str, str]]) -> None:
    """Refuse a pattern that matches no declared event's routing key
    (AGENT.HOST.EVENT), naming the pattern most likely meant."""
    words = pattern.split(".")
    # A host word in a key is matched by a wildcard or by one of the pattern's own words:
    # trying those (and any one name) decides whether some host's key matches.
    hosts = {w for w in words if w not in ("*", "#") and names.HOST_ID_RE.match(w)} | {"h"}
    if any(names.topic_matches(pattern, names.event_key(a, h, e))
           for a, e in events for h in hosts):
        return
    shapes = [f"{a}.*.{e}" for a, e in events]
    meant = [f"{a}.*.{e}" for a, e in events if pattern == f"{a}.{e}"]
    if not meant:
        import difflib

        meant = difflib.get_close_matches(pattern, shapes, n=1, cutoff=0.6)
    raise usage(f"{pattern!r} matches no event (keys are AGENT.HOST.EVENT)"
                + (f"; did you mean {' or '.join(meant)}?" if meant else
                   f"; events: {', '.join(shapes)}")
                + " (--no-validate subscribes anyway)")


@click.command(epilog=EPILOG)
@click.argument("patterns", nargs=-1, metavar="[PATTERN]...", shell_complete=complete_pattern)
@click.option("--count", "-n", type=click.IntRange(0), default=0, help="Stop after N events.")
@click.option("--duration", "-d", type=click.FloatRange(0), default=0, metavar="S",
              help="Stop after S seconds.")
@click.option("--name", metavar="NAME",
              help="Use the named, durable subscription queue hostbus.sub.USER.NAME, "
                   "bound to exactly these patterns (events are kept while you are away; "
                   "hostbus subscriptions list|delete).")
@click.option("--no-validate", is_flag=True,
              help="Subscribe even if a pattern matches no event the local schemas know "
                   "(another agent's events).")
@json_option
@click.pass_obj
def watch(ctx: CliContext, patterns: tuple[str, ...], count: int, duration: float,
          name: str | None, no_validate: bool, as_json: bool) -> Exit:
    """Print events as they arrive, until Ctrl-C, --count or --duration.

    \b
    PATTERN is an AMQP topic pattern on <agent>.<host>.<event> (default '#'):
      hostbus watch 'host.*.alert'          every host's alerts
      hostbus watch 'agent.#'               online, heartbeat, offline
      hostbus watch 'host.web01.#' -n 5     five events from web01
    Gaps in an agent's sequence numbers, events arriving late, agent restarts, and a
    subscription lost and restored (its queue deleted) are reported. A pattern that
    can match no event the schemas declare is refused, with the one likely meant.
    """
    if not no_validate:
        events = known_events()
        for pattern in patterns:
            check_pattern(pattern, events)
    wanted = list(patterns) or ["#"]
    rebound = _bind_named(ctx, name, wanted) if name is not None else None
    console = ctx.console()
    done = threading.Event()
    seen = [0]
    closed: list[OSError] = []  # the reader of stdout went away
    lock = threading.Lock()
    from console.render import event_line

    def on_event(ev: Any, note: str | None) -> None:
        with lock:
            if done.is_set():
                return
            if name is not None and not any(names.topic_matches(p, ev.routing_key())
                                            for p in wanted):
                return  # kept in the queue from patterns it had before
            try:
                if as_json:
                    line = {**ev.to_body(), **({"note": note} if note else {})}
                    click.echo(json.dumps(line, separators=(",", ":")))
                else:
                    if note:
                        click.echo(f"! {note}", err=True)
                    click.echo(event_line(ev))
            except BrokenPipeError as exc:  # on the I/O thread: handed to the main one
                closed.append(exc)
                done.set()
                return
            seen[0] += 1
            if count and seen[0] >= count:
                done.set()

    def on_notice(text: str) -> None:  # the subscription lost (its queue deleted), back
        with lock:
            click.echo(f"! {text}", err=True)

    queue_name = console.subscribe(wanted, on_event, name=name, durable=name is not None,
                                   on_notice=on_notice)
    if not as_json:
        where = (f"on durable queue {queue_name}{rebound}" if name is not None else
                 "(a private queue, gone when this stops)")
        click.echo(f"watching {' '.join(wanted)} {where} (Ctrl-C to stop)", err=True)
    signal.signal(signal.SIGINT, lambda *_: done.set())
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    started = time.monotonic()
    while not done.wait(0.2):
        if duration and time.monotonic() - started >= duration:
            break
    done.set()
    if closed:
        raise closed[0]
    if not as_json:
        click.echo(plural(seen[0], "event"), err=True)
    return Exit.OK
