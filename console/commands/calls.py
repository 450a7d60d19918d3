"""Asking hosts: ``hostbus call AGENT.METHOD`` and ``hostbus query AGENT.CLASS``."""

from __future__ import annotations

import copy
import sys
from typing import TYPE_CHECKING, Any

import click

from console.args import method_help, parse_pairs
from console.commands.common import (
    EPILOG,
    CliContext,
    Exit,
    check_columns,
    emit_json,
    layout,
    out,
    progress,
    split_target,
    usage,
)
from console.commands.options import (
    discovery_options,
    hosts_option,
    json_option,
    table_options,
)
from console.commands.targeting import exit_for, select_hosts
from console.filters import check_keys, parse
from hostbus.errors import RemoteError

if TYPE_CHECKING:
    from console.client import FanoutResult, HostResult

QUERY_MAX = 10000  # the most objects agent.query returns per host


def _method_spec(agent: str, method: str) -> Any:
    from console.client import method_spec

    return method_spec(agent, method)


@click.command(add_help_option=False, epilog=EPILOG)
@click.argument("target", required=False, metavar="AGENT.METHOD")
@click.argument("pairs", nargs=-1, metavar="[KEY=VALUE]...")
@hosts_option("Target host (repeatable; a glob goes through discovery).")
@click.option("--all", "all_hosts", is_flag=True, help="Every host that has the agent.")
@click.option("--batch", type=click.IntRange(0), default=0, metavar="N",
              help="At most N requests outstanding at once (default 0: all at once).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before a dangerous method.")
@click.option("--no-validate", is_flag=True,
              help="Send even if the local schema does not know the method or arguments.")
@discovery_options
@table_options
@json_option
@click.option("--help", "-h", "show_help", is_flag=True,
              help="Show this help; with AGENT.METHOD, the method's own help.")
@click.pass_context
def call(click_ctx: click.Context, target: str | None, pairs: tuple[str, ...],
         hosts: tuple[str, ...], all_hosts: bool, batch: int, yes: bool, no_validate: bool,
         where: tuple[str, ...], idle: float | None, timeout: float | None, wide: bool,
         columns: tuple[str, ...], as_json: bool, show_help: bool) -> Exit:
    """Call AGENT.METHOD on one host, a list, or every matching host.

    \b
    Arguments are KEY=VALUE, typed by the method's schema (KEY:=JSON for raw JSON):
      hostbus call host.identify -H web01
      hostbus call host.processes name='python*' limit=5 --all --where role=web
      hostbus call host.processes --help      (the method's arguments)
    """
    ctx: CliContext = click_ctx.obj
    if show_help or target is None:
        if target is not None:
            agent, method = split_target(target, "method")
            click.echo(method_help(agent, _method_spec(agent, method)))
            click.echo("\nUsage: hostbus call AGENT.METHOD [KEY=VALUE]... (-H HOST | --all)")
        else:
            click.echo(click_ctx.get_help())
        return Exit.OK if show_help else Exit.USAGE
    agent, method = split_target(target, "method")
    spec = None
    try:
        spec = _method_spec(agent, method)
    except RemoteError:
        if not no_validate:
            raise
    args = parse_pairs(pairs, spec)
    if spec is not None and not no_validate:
        try:
            spec.validate_args(copy.deepcopy(args))
        except RemoteError as exc:
            raise usage(f"{exc.message} (see `hostbus call {target} --help`)") from None
    console = ctx.console(validate=not no_validate)
    selected = select_hosts(ctx, hosts, all_hosts, where, agent, timeout, idle, as_json)
    if spec is not None and spec.dangerous and not yes:
        if not sys.stdin.isatty():
            raise usage(f"{target} is dangerous; pass --yes to run it on "
                        f"{len(selected)} host(s)")
        shown = ", ".join(selected[:5]) + (" ..." if len(selected) > 5 else "")
        if not click.confirm(f"{target} is dangerous. Run it on {len(selected)} host(s): "
                             f"{shown}?"):
            raise usage("cancelled")
    advance, stop = progress(len(selected), target, not as_json)

    def on_result(res: HostResult) -> None:
        advance()

    try:
        result = console.fanout(agent, method, args, selected, timeout=ctx.timeout(timeout),
                                batch=batch, on_result=on_result)
    finally:
        stop()
    if as_json:
        emit_json({"agent": agent, "method": method,
                   "results": [r.to_dict() for r in result.results],
                   "summary": result.summary})
    else:
        from console.render import print_fanout

        console_out = out()
        print_fanout(console_out, result, layout(console_out, wide, columns))
        _warn_unknown_columns(columns, result)
    return exit_for(result.summary)


def _warn_unknown_columns(columns: tuple[str, ...], result: FanoutResult) -> None:
    """Results are typed loosely (their objects' fields are not all declared): a
    --columns name is checked against what came back."""
    seen = {key for r in result.results if r.reply and r.reply.result
            for value in r.reply.result.values() if isinstance(value, list)
            for item in value if isinstance(item, dict) for key in item}
    unknown = [c for c in columns if c not in seen]
    if unknown and seen:
        click.echo(f"hostbus: no result table has column {', '.join(unknown)}; columns: "
                   f"{', '.join(sorted(seen))}", err=True)


@click.command(epilog=EPILOG)
@click.argument("target", metavar="AGENT.CLASS")
@hosts_option("Only these hosts (default: every host that has the agent).")
@click.option("--filter", "-f", "filters", multiple=True, metavar="EXPR",
              help="Only objects whose fields match, e.g. name='python*', "
                   "'cpu_percent>50 and user!=root' (the --where grammar; repeatable: and).")
@click.option("--limit", type=click.IntRange(1, QUERY_MAX), default=1000,
              help="At most this many objects per host.")
@discovery_options
@table_options
@json_option
@click.pass_obj
def query(ctx: CliContext, target: str, hosts: tuple[str, ...], filters: tuple[str, ...],
          limit: int, where: tuple[str, ...], idle: float | None, timeout: float | None,
          wide: bool, columns: tuple[str, ...], as_json: bool) -> Exit:
    """List the objects of one class (AGENT.CLASS) across hosts.

    \b
      hostbus query host.disk                       every host's file systems
      hostbus query host.process --filter name='python*' -H web01
      hostbus query host.disk --where role=db       only hosts with that fact
    --filter selects objects by field (globs allowed); --where selects hosts by fact.
    """
    agent, class_name = split_target(target, "class")
    flt = parse(filters, "--filter")
    from hostbus.schema import available_agents, load_agent_schema

    fields: list[str] | None = None
    if agent in available_agents():
        schema = load_agent_schema(agent)
        spec = schema.classes.get(class_name)
        if spec is None:
            raise usage(f"agent {agent!r} has no object class {class_name!r}; classes: "
                        f"{', '.join(sorted(schema.classes)) or 'none'}")
        check_keys(flt, sorted(spec.fields), class_name, "--filter")
        fields = list(spec.fields)
        check_columns(columns, ["host", *fields])
    console = ctx.console()
    selected = select_hosts(ctx, hosts, not hosts, where, agent, timeout, idle, as_json)
    advance, stop = progress(len(selected), f"query {target}", not as_json)
    # Agents filter by exact values and globs; the rest of --filter is applied here, so
    # they are asked for every object (their maximum) and --limit is applied here too.
    whole = flt.sent_whole(globs=True)
    try:
        result = console.query(agent, class_name, where=flt.exact(globs=True), hosts=selected,
                               limit=limit if whole else QUERY_MAX,
                               timeout=ctx.timeout(timeout), on_result=lambda r: advance())
    finally:
        stop()
    rows = [{"host": r.host, **obj} for r in result.results if r.reply and r.reply.result
            for obj in [o for o in r.reply.result["objects"] if flt.matches(o)][:limit]]
    if as_json:
        emit_json({"agent": agent, "class_name": class_name, "objects": rows,
                   "results": [{k: v for k, v in r.to_dict().items() if k != "result"}
                               for r in result.results],
                   "summary": result.summary})
    else:
        from console.render import objects_table, print_host_result, print_summary

        console_out = out()
        if rows:
            console_out.print(objects_table(rows, layout(console_out, wide, columns),
                                            ["host", *fields] if fields else None))
        for r in result.results:
            if r.status != "ok":
                print_host_result(console_out, r)
        print_summary(console_out, result)
    return exit_for(result.summary)
