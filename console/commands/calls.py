"""Asking hosts: ``hostbus call AGENT.METHOD`` and ``hostbus query AGENT.CLASS``."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from console.args import method_help, parse_pairs
from console.commands.common import (
    FANOUT,
    CliContext,
    CliError,
    Exit,
    check_columns,
    confirm_dangerous,
    emit_json,
    exit_codes_text,
    exits,
    layout,
    out,
    progress,
    split_target,
    usage,
)
from console.commands.completion import complete_argument, complete_class, complete_method
from console.commands.options import (
    discovery_options,
    hosts_from_option,
    hosts_option,
    json_option,
    parse_subset,
    table_options,
)
from console.commands.targeting import (
    exit_for,
    is_glob,
    pick_subset,
    read_hosts,
    select_hosts,
)
from console.filters import check_keys, parse
from hostbus.errors import RemoteError

if TYPE_CHECKING:
    from console.client import Console, FanoutResult, HostResult

QUERY_MAX = 10000  # the most objects agent.query returns per host
CALL_EXITS = (*FANOUT, Exit.NOT_ENROLLED, Exit.PENDING)
OFFLINE_CHECK_MAX = 20  # hosts named with -H checked for a running agent before a call


def _method_spec(agent: str, method: str) -> Any:
    from console.client import method_spec

    return method_spec(agent, method)


@exits(*CALL_EXITS)
@click.command(add_help_option=False)
@click.argument("target", required=False, metavar="AGENT.METHOD",
                shell_complete=complete_method)
@click.argument("pairs", nargs=-1, metavar="[KEY=VALUE]...", shell_complete=complete_argument)
@hosts_option("Target host (repeatable; a glob goes through discovery).")
@hosts_from_option
@click.option("--all", "all_hosts", is_flag=True, help="Every host that has the agent.")
@click.option("--limit", "subset", metavar="N|N%", callback=parse_subset,
              help="Only N (or N%) of the selected hosts, chosen at random.")
@click.option("--batch", type=click.IntRange(0), default=0, metavar="N",
              help="At most N requests outstanding at once (default 0: all at once).")
@click.option("--batch-sleep", type=click.FloatRange(0, min_open=True), metavar="S",
              help="Send in groups of --batch N hosts, waiting S seconds after each group "
                   "has answered (or timed out).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before a dangerous method.")
@click.option("--no-validate", is_flag=True,
              help="Send even if the local schema does not know the method or arguments.")
@click.option("--wait-approval", is_flag=True,
              help="When a host parks the call for a second person's approval (exit 7, "
                   "pending), wait until it is decided and print its result (until the "
                   "approval expires; Ctrl-C stops waiting, the call stays parked).")
@discovery_options
@click.option("--display", type=click.Choice(["all", "ok", "failed"]), default="all",
              show_default=True,
              help="Whose results to print: failed means errors and silence. The summary "
                   "names the failed and silent hosts whatever this says.")
@click.option("--collect", is_flag=True,
              help="Print every result at the end, in host order, instead of each as it "
                   "arrives.")
@table_options
@json_option
@click.option("--help", "-h", "show_help", is_flag=True,
              help="Show this help; with AGENT.METHOD, the method's own help.")
@click.pass_context
def call(click_ctx: click.Context, target: str | None, pairs: tuple[str, ...],
         hosts: tuple[str, ...], hosts_from: str | None, all_hosts: bool,
         subset: tuple[int, bool] | None, batch: int, batch_sleep: float | None, yes: bool,
         no_validate: bool, wait_approval: bool, where: tuple[str, ...], idle: float | None,
         timeout: float | None,
         display: str, collect: bool, wide: bool, columns: tuple[str, ...], as_json: bool,
         show_help: bool) -> Exit:
    """Call AGENT.METHOD on one host, a list, or every matching host.

    \b
    Arguments are KEY=VALUE, typed by the method's schema (KEY:=JSON for raw JSON):
      hostbus call host.identify -H web01
      hostbus call host.processes name='python*' limit=5 --all --where role=web
      hostbus call host.processes --help      (the method's arguments)
      hostbus agents --where role=web --json | hostbus call host.identify --hosts-from -
    Each host's result is printed as it arrives, with its request id (the id in the
    host's audit log); Ctrl-C prints what arrived and exits 130. A call the host's
    policy parks for a second person's approval is pending (exit 7): the approval id is
    printed, someone else approves it, and it runs then; --wait-approval waits for that.
    """
    ctx: CliContext = click_ctx.obj
    if show_help or target is None:
        if target is not None:
            agent, method = split_target(target, "method")
            click.echo(method_help(agent, _method_spec(agent, method)))
            click.echo("\nUsage: hostbus call AGENT.METHOD [KEY=VALUE]... (-H HOST | --all)")
            click.echo("\n" + exit_codes_text(CALL_EXITS))
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
    if batch_sleep and not batch:
        raise usage("--batch-sleep needs --batch N: the size of each group")
    hosts = (*hosts, *read_hosts(hosts_from))
    console = ctx.console(validate=not no_validate)
    selected = pick_subset(select_hosts(ctx, hosts, all_hosts, where, agent, timeout, idle,
                                        as_json), subset)
    # Hosts named exactly were not discovered: one whose agent is not running would cost
    # the whole timeout (its queue keeps the request). Discovered hosts just answered.
    named = not all_hosts and not where and not any(is_glob(h) for h in hosts)
    offline = {host: f"{why}; not sent" for host, why in (
        console.offline_hosts(agent, selected) if named and len(selected) <= OFFLINE_CHECK_MAX
        else {}).items()}
    if spec is not None and spec.dangerous and not yes:
        confirm_dangerous(target, args, selected)
    from console.client import FanoutResult

    console_out = fit = None
    if not as_json:  # rich is not even imported for --json
        from console.render import print_host_result, shown

        console_out = out()
        fit = layout(console_out, wide, columns)
    advance, stop = progress(len(selected), target, not as_json, console_out)
    arrived: list[HostResult] = []
    started = time.perf_counter()

    def on_result(res: HostResult) -> None:
        advance()
        arrived.append(res)
        if console_out is not None and not collect and shown(res, display):
            print_host_result(console_out, res, fit)

    try:
        try:
            from console.client import HostResult

            for host, why in offline.items():
                on_result(HostResult(host, None, offline=why))
            result = _fanout(console, agent, method, args,
                             [h for h in selected if h not in offline], ctx.timeout(timeout),
                             batch, batch_sleep, on_result, wait_approval)
            if offline:
                answered = {r.host: r for r in result.results}
                result = FanoutResult([answered.get(h) or HostResult(h, None, offline=offline[h])
                                       for h in selected], result.elapsed_ms)
        finally:
            stop()
    except KeyboardInterrupt:
        partial = FanoutResult(arrived, (time.perf_counter() - started) * 1000)
        _print_results(agent, method, partial, as_json, collect, display, console_out, fit,
                       interrupted=len(selected) - len(arrived))
        raise CliError(Exit.INTERRUPTED, f"interrupted: {len(arrived)} of "
                                         f"{len(selected)} hosts answered") from None
    if wait_approval and result.by_status("pending"):
        result = _await_approval(console, result, as_json,
                                 on_result if not collect else (lambda _r: None),
                                 lambda partial: _print_results(
                                     agent, method, partial, as_json, collect, display,
                                     console_out, fit))
    _print_results(agent, method, result, as_json, collect, display, console_out, fit)
    if not as_json:
        _warn_unknown_columns(columns, result)
    return exit_for(result.summary)


def _print_results(agent: str, method: str, result: FanoutResult, as_json: bool,
                   collect: bool, display: str, console_out: Any, fit: Any,
                   interrupted: int = 0) -> None:
    """Everything, for --json and --collect; otherwise the summary (results were printed
    as they came)."""
    if as_json:
        emit_json({"agent": agent, "method": method,
                   "results": [r.to_dict() for r in result.results],
                   "summary": result.summary, **({"interrupted": interrupted}
                                                 if interrupted else {})})
        return
    from console.render import print_host_result, print_summary, shown

    if collect:
        for res in result.results:
            if shown(res, display):
                print_host_result(console_out, res, fit)
    print_summary(console_out, result, interrupted)


APPROVAL_GRACE_S = 30.0  # past an approval's expiry: the agent's "expired" reply


def _await_approval(console: Console, result: FanoutResult, as_json: bool,
                    on_result: Callable[[HostResult], None],
                    on_interrupt: Callable[[FanoutResult], None]) -> FanoutResult:
    """--wait-approval: the fan-out's result with each pending call replaced by its
    outcome, as it is decided (until the last approval expires)."""
    from datetime import UTC, datetime

    from console.client import FanoutResult

    pending = result.by_status("pending")
    left = 0.0
    for res in pending:
        assert res.approval is not None
        try:
            expires = datetime.fromisoformat(str(res.approval.get("expires")))
            left = max(left, (expires - datetime.now(UTC)).total_seconds())
        except (TypeError, ValueError):  # no expiry said: the agents' default, 1 h
            left = max(left, 3600.0)
    if not as_json:
        ids = ", ".join(f"{r.host} ({r.approval['approval_id']})" for r in pending
                        if r.approval is not None)
        click.echo(f"hostbus: waiting for approval of {ids}; Ctrl-C stops waiting (the "
                   "call stays parked)", err=True)
    started = time.perf_counter()
    decided: list[HostResult] = []

    def merged() -> FanoutResult:
        by_id = {r.request_id: r for r in decided}
        return FanoutResult([by_id.get(r.request_id, r) for r in result.results],
                            result.elapsed_ms + (time.perf_counter() - started) * 1000)

    def on_decided(res: HostResult) -> None:
        decided.append(res)
        on_result(res)

    try:
        console.await_decisions(pending, until=time.monotonic() + left + APPROVAL_GRACE_S,
                                on_result=on_decided)
    except KeyboardInterrupt:
        on_interrupt(merged())
        raise CliError(Exit.INTERRUPTED, "stopped waiting: what is still pending stays "
                                         "parked until it is approved or expires") from None
    return merged()


def _fanout(console: Console, agent: str, method: str, args: dict[str, Any],
            hosts: list[str], timeout: float, batch: int, batch_sleep: float | None,
            on_result: Callable[[HostResult], None], keep_parked: bool = False
            ) -> FanoutResult:
    """One fan-out (at most ``batch`` outstanding), or with ``batch_sleep`` groups of
    ``batch`` hosts, one after the other, with a pause between them. ``keep_parked``:
    see ``Console.fanout``."""
    if not batch_sleep:
        return console.fanout(agent, method, args, hosts, timeout=timeout, batch=batch,
                              on_result=on_result, keep_parked=keep_parked)
    from console.client import FanoutResult

    started = time.perf_counter()
    results: list[HostResult] = []
    for first in range(0, len(hosts), batch):
        if first:
            time.sleep(batch_sleep)  # the pause operators ask for, between groups
        group = console.fanout(agent, method, args, hosts[first:first + batch],
                               timeout=timeout, on_result=on_result,
                               keep_parked=keep_parked)
        results += group.results
    return FanoutResult(results, (time.perf_counter() - started) * 1000)


def _warn_unknown_columns(columns: tuple[str, ...], result: FanoutResult) -> None:
    """Results are typed loosely (their objects' fields are not all declared): a
    --columns name is checked against what came back."""
    seen = {key for r in result.results if r.reply and r.reply.result
            for value in r.reply.result.values() if isinstance(value, list)
            for item in value if isinstance(item, dict) for key in item}
    if columns and not seen:
        click.echo("hostbus: --columns chooses columns of result tables (lists of objects, "
                   "as host.processes returns); this result has none", err=True)
        return
    unknown = [c for c in columns if c not in seen]
    if unknown and seen:
        click.echo(f"hostbus: no result table has column {', '.join(unknown)}; columns: "
                   f"{', '.join(sorted(seen))}", err=True)


@exits(*FANOUT, Exit.NOT_ENROLLED)
@click.command()
@click.argument("target", metavar="AGENT.CLASS", shell_complete=complete_class)
@hosts_option("Only these hosts (default: every host that has the agent).")
@hosts_from_option
@click.option("--filter", "-f", "filters", multiple=True, metavar="EXPR",
              help="Only objects whose fields match, e.g. name='python*', "
                   "'cpu_percent>50 and user!=root' (the --where grammar; repeatable: and).")
@click.option("--limit", type=click.IntRange(1, QUERY_MAX), default=1000,
              help="At most this many objects per host.")
@discovery_options
@table_options
@json_option
@click.pass_obj
def query(ctx: CliContext, target: str, hosts: tuple[str, ...], hosts_from: str | None,
          filters: tuple[str, ...],
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
    hosts = (*hosts, *read_hosts(hosts_from))
    console = ctx.console()
    selected = select_hosts(ctx, hosts, not hosts, where, agent, timeout, idle, as_json)
    named = bool(hosts) and not where and not any(is_glob(h) for h in hosts)
    offline = {host: f"{why}; not sent" for host, why in (
        console.offline_hosts("agent", selected) if named and len(selected) <= OFFLINE_CHECK_MAX
        else {}).items()}
    advance, stop = progress(len(selected), f"query {target}", not as_json)
    # Agents filter by exact values and globs; the rest of --filter is applied here, so
    # they are asked for every object (their maximum) and --limit is applied here too.
    whole = flt.sent_whole(globs=True)
    try:
        result = console.query(agent, class_name, where=flt.exact(globs=True),
                               hosts=[h for h in selected if h not in offline],
                               limit=limit if whole else QUERY_MAX,
                               timeout=ctx.timeout(timeout), on_result=lambda r: advance())
    finally:
        stop()
    if offline:
        from console.client import FanoutResult, HostResult

        answered = {r.host: r for r in result.results}
        result = FanoutResult([answered.get(h) or HostResult(h, None, offline=offline[h])
                               for h in selected], result.elapsed_ms)
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
        elif result.by_status("ok"):
            matching = f" matching {' and '.join(filters)}" if filters else ""
            console_out.print(f"0 {class_name} objects{matching}", highlight=False)
        for r in result.results:
            if r.status != "ok":
                print_host_result(console_out, r)
        print_summary(console_out, result)
    return exit_for(result.summary)
