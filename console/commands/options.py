"""Options that several commands take, defined once so they read the same everywhere."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True,
                        help="Print JSON for scripts instead of tables.")(fn)


def timeout_option(fn: F) -> F:
    return click.option("--timeout", "-t", type=click.FloatRange(0, min_open=True),
                        default=None, metavar="S",
                        help="Give up waiting for replies after S seconds (default 10, "
                             "[console] timeout).")(fn)


def idle_option(fn: F) -> F:
    return click.option("--idle", type=click.FloatRange(0, min_open=True), default=None,
                        metavar="S",
                        help="Stop discovery S seconds after the last reply (default 0.3, "
                             "[console] idle).")(fn)


def where_option(fn: F) -> F:
    return click.option("--where", "-w", multiple=True, metavar="EXPR",
                        help="Only hosts whose facts match: role=web, os=lin*, role!=db, "
                             "kernel=~^6, cpus>=4, 'role=web and not env=prod' (repeatable: "
                             "all must match).")(fn)


def hosts_option(help_text: str = "Only hosts whose id matches (repeatable, globs allowed)."
                 ) -> Callable[[F], F]:
    """-H/--host: host ids or globs."""

    def wrap(fn: F) -> F:
        from console.commands.completion import complete_host

        return click.option("-H", "--host", "hosts", multiple=True, metavar="HOST",
                            help=help_text, shell_complete=complete_host)(fn)

    return wrap


def discovery_options(fn: F) -> F:
    """What selects hosts by discovery: --where, --idle, --timeout."""
    return where_option(idle_option(timeout_option(fn)))


def yes_option(fn: F) -> F:
    return click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")(fn)


def table_options(fn: F) -> F:
    """--wide and --columns: how much of a table to show."""
    fn = click.option("--columns", "columns", metavar="A,B,...", default="",
                      callback=lambda _ctx, _param, value: tuple(
                          c.strip() for c in value.split(",") if c.strip()),
                      help="Only these table columns, in this order (comma-separated).")(fn)
    return click.option("--wide", is_flag=True,
                        help="Show every column in full: long text wraps instead of being "
                             "cut (tables that still do not fit become one block per "
                             "record).")(fn)


def hosts_from_option(fn: F) -> F:
    return click.option(
        "--hosts-from", metavar="FILE",
        help="Also the hosts listed in FILE (- for stdin): one per line, or the --json "
             "output of hostbus agents, ping or call.")(fn)


def parse_subset(_ctx: click.Context, _param: click.Parameter,
                 value: str | None) -> tuple[int, bool] | None:
    """--limit N or N%: (N, is a percentage)."""
    if value is None:
        return None
    number, percent = value.removesuffix("%"), value.endswith("%")
    if not number.isdigit() or int(number) < 1 or (percent and int(number) > 100):
        raise click.BadParameter(f"{value!r}: a number of hosts (5) or a percentage (10%)")
    return int(number), percent
