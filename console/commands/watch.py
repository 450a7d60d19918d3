"""Following events: ``hostbus watch``."""

from __future__ import annotations

import json
import signal
import threading
import time
from typing import Any

import click

from console.commands.common import CliContext, Exit, exits, plural, usage
from console.commands.completion import complete_pattern
from console.commands.history import historian_option, parse_since, since_option
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
                + " (--no-validate takes it anyway)")


@exits(Exit.CONNECT)
@click.command()
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
@since_option
@historian_option
@json_option
@click.pass_obj
def watch(ctx: CliContext, patterns: tuple[str, ...], count: int, duration: float,
          name: str | None, no_validate: bool, since: str | None, historian: str | None,
          as_json: bool) -> Exit:
    """Print events as they arrive, until Ctrl-C, --count or --duration.

    \b
    PATTERN is an AMQP topic pattern on <agent>.<host>.<event> (default '#'):
      hostbus watch 'host.*.alert'          every host's alerts
      hostbus watch 'agent.#'               online, heartbeat, offline
      hostbus watch 'host.web01.#' -n 5     five events from web01
      hostbus watch 'host.*.alert' --since 1h   the last hour's first (the historian's)
    With --since, stored events come first, then live ones, with none missing or
    shown twice where they meet. Gaps in an agent's sequence numbers, events arriving
    late, agent restarts, and a subscription lost and restored (its queue deleted) are
    reported. A pattern that can match no event the schemas declare is refused, with
    the one likely meant.
    """
    if not no_validate:
        events = known_events()
        for pattern in patterns:
            check_pattern(pattern, events)
    wanted = list(patterns) or ["#"]
    start = parse_since(since) if since is not None else None
    rebound = _bind_named(ctx, name, wanted) if name is not None else None
    ctx.keep_connected = True  # a broker restart is waited out, and said
    console = ctx.console()
    done = threading.Event()
    seen = [0]
    closed: list[OSError] = []  # the reader of stdout went away
    lock = threading.Lock()
    from console.history.client import Seam
    from console.render import event_line

    # --since: live events wait here until the replay is printed (see Seam)
    seam = Seam()
    waiting: list[tuple[Any, str | None]] = []
    replaying = [since is not None]

    def show(ev: Any, note: str | None) -> None:
        """Print one event (under ``lock``)."""
        if done.is_set():
            return
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

    def on_event(ev: Any, note: str | None) -> None:
        with lock:
            if name is not None and not any(names.topic_matches(p, ev.routing_key())
                                            for p in wanted):
                return  # kept in the queue from patterns it had before
            if replaying[0]:
                waiting.append((ev, note))
                return
            fresh, seam_note = seam.live(ev)
            if fresh:
                show(ev, seam_note or note)

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
    if start is not None:
        _replay(ctx, console, wanted, start, historian, seam, show, lock, waiting, replaying,
                done)
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


def _replay(ctx: CliContext, console: Any, patterns: list[str], start: str,
            historian: str | None, seam: Any, show: Any, lock: threading.Lock,
            waiting: list[tuple[Any, str | None]], replaying: list[bool],
            done: threading.Event) -> None:
    """Print the stored events from ``start`` (the subscription is bound already),
    then the live ones that waited, each once; from then on ``on_event`` prints."""
    from console.commands.history import historian_of, unavailable
    from console.history.client import HistoryUnavailable, event_of, pages

    wait = ctx.timeout(None)
    where = historian_of(ctx, historian, wait)
    args = {"patterns": patterns, "hosts": [], "events": [], "since": start}
    try:
        for n, (page, synced) in enumerate(pages(console, where, args, timeout=wait,
                                                 sync=True)):
            if n == 0 and not synced:
                click.echo(f"! historian {where} did not catch up in time: events from "
                           "just before this watch may be missing", err=True)
            with lock:
                for record in page:
                    ev = event_of(record)
                    seam.replayed(ev)
                    show(ev, None)
            if done.is_set():
                break
    except HistoryUnavailable as exc:
        raise unavailable(exc) from None
    with lock:
        for ev, note in waiting:
            fresh, seam_note = seam.live(ev)
            if fresh:
                show(ev, seam_note or note)
        waiting.clear()
        replaying[0] = False
