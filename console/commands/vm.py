"""One VM, wherever it runs: ``hostbus vm NAME migrate --to HOST``,
``hostbus vm NAME abort-migration`` and ``hostbus vm NAME ha on|off`` (asked of the
manager).

The console finds the host the VM runs on and the target's libvirt URI (its agent's
``migration_uri`` fact) through ``console.migration``; the source host's virt agent
does the migration and reports its progress as ``virt.<host>.domain.migration`` events.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from console.commands.common import (
    FANOUT,
    CliContext,
    CliError,
    Exit,
    emit_json,
    exits,
    out,
    usage,
)
from console.commands.completion import complete_host
from console.commands.options import json_option, yes_option
from hostbus.errors import ErrorCode, RemoteError

MIB = 1 << 20


@exits(*FANOUT)
@click.group()
@click.argument("name", metavar="NAME")
@click.pass_context
def vm(ctx: click.Context, name: str) -> None:
    """Act on the VM called NAME, on whichever host runs it.

    \b
      hostbus vm web-1 migrate --to kvm02      move it there while it runs
      hostbus vm web-1 abort-migration         stop that, it stays where it was
      hostbus vm web-1 ha on                   restart it elsewhere if its host dies
      hostbus vm web-1 show                    where it is, its state
      hostbus vm web-1 suspend                 (resume, start, shutdown, reboot,
                                               destroy, undefine)
    """
    ctx.meta["vm"] = name


@exits(*FANOUT)
@vm.command("migrate")
@click.option("--to", "target", required=True, metavar="HOST", shell_complete=complete_host,
              help="The host to move it to (its virt agent offers migration_uri).")
@click.option("--from", "source", metavar="HOST", shell_complete=complete_host,
              help="The host it runs on (default: asked of every virt host).")
@click.option("--uri", metavar="URI",
              help="The target's libvirt URI, instead of its migration_uri fact.")
@click.option("--copy-storage", type=click.Choice(["auto", "none", "all", "incremental"]),
              default="auto", show_default=True,
              help="auto copies the disks when one is not on shared storage.")
@click.option("--bandwidth", "bandwidth_mib_s", type=click.IntRange(1), metavar="MIB_S",
              help="Send at most MIB_S MiB a second (default: no limit).")
@click.option("--max-downtime", "max_downtime_ms", type=click.IntRange(1, 600000),
              default=300, show_default=True, metavar="MS",
              help="Longest pause of the guest at the switch-over QEMU aims for.")
@click.option("--auto-converge/--no-auto-converge", default=True, show_default=True,
              help="Slow the guest's vCPUs if it writes memory faster than it is sent.")
@click.option("--live/--paused", default=True, show_default=True,
              help="--paused stops the guest for the whole migration.")
@click.option("--timeout", "-t", type=click.FloatRange(0, min_open=True), default=600.0,
              show_default=True, metavar="S",
              help="How long to wait for the migration (the source agent refuses more than "
                   "its [security] max_deadline_s, 600 by default).")
@yes_option
@json_option
@click.pass_context
def migrate(ctx: click.Context, target: str, source: str | None, uri: str | None,
            copy_storage: str, bandwidth_mib_s: int | None, max_downtime_ms: int,
            auto_converge: bool, live: bool, timeout: float, yes: bool,
            as_json: bool) -> Exit:
    """Move the VM to another host while it runs (live migration, peer to peer).

    It runs on the target afterwards (defined there, undefined where it was). A
    failure leaves it where it was and says why. Progress is shown as it goes.
    """
    from console import migration

    name = ctx.meta["vm"]
    state: CliContext = ctx.obj
    console = state.console()
    try:
        route = migration.plan(console, name, target, source=source, uri=uri,
                               timeout=state.timeout(None))
    except RemoteError as exc:
        raise CliError(Exit.NOTHING if exc.code == ErrorCode.NOT_FOUND else Exit.USAGE,
                       exc.message) from None
    if not yes:
        what = f"migrate {name} from {route.source} to {route.target} ({route.target_uri})"
        if not sys.stdin.isatty():
            raise usage(f"{what} is dangerous; pass --yes")
        if not click.confirm(f"{what.capitalize()}?"):
            raise usage("cancelled")

    stop_bar = _progress(console, route, enabled=not as_json)
    try:
        res = migration.migrate(console, route, timeout=timeout, live=live,
                                copy_storage=copy_storage, bandwidth_mib_s=bandwidth_mib_s,
                                max_downtime_ms=max_downtime_ms, auto_converge=auto_converge)
    finally:
        stop_bar()
    if as_json:
        emit_json(res.to_dict())
    if res.status == "no_reply":
        if not as_json:
            click.echo(f"hostbus: {route.source} did not answer within {timeout:g} s; the "
                       f"migration may go on: hostbus watch 'virt.{route.source}.domain.*'",
                       err=True)
        return Exit.NO_REPLY
    if res.status != "ok" or res.reply is None:
        if not as_json:
            error = (res.reply.error if res.reply else None) or {}
            reason = (error.get("details") or {}).get("reason")
            click.echo(f"hostbus: {error.get('message', 'failed')}"
                       + (f" [{reason}]" if reason else ""), err=True)
        return Exit.FAILED
    if not as_json:
        out().print(_summary(res.reply.result), highlight=False)
    return Exit.OK


@exits(*FANOUT)
@vm.command("abort-migration")
@click.option("--from", "source", metavar="HOST", shell_complete=complete_host,
              help="The host migrating it (default: asked of every virt host).")
@json_option
@click.pass_context
def abort_migration(ctx: click.Context, source: str | None, as_json: bool) -> Exit:
    """Stop the VM's running migration; it keeps running where it was."""
    from console import migration

    name = ctx.meta["vm"]
    state: CliContext = ctx.obj
    console = state.console()
    try:
        source = source or migration.find_domain(console, name, timeout=state.timeout(None))
    except RemoteError as exc:
        raise CliError(Exit.NOTHING, exc.message) from None
    res = console.call("virt", "domain.migrate_abort", {"name": name}, host=source,
                       timeout=state.timeout(None))
    if as_json:
        emit_json(res.to_dict())
    elif res.status == "ok":
        click.echo(f"aborted the migration of {name} from {source}; it runs there")
    else:
        error = (res.reply.error if res.reply else None) or {"message": "no reply"}
        click.echo(f"hostbus: {error['message']}", err=True)
    return Exit.OK if res.status == "ok" else (
        Exit.NO_REPLY if res.status == "no_reply" else Exit.FAILED)


@exits(*FANOUT)
@vm.command("ha")
@click.argument("setting", type=click.Choice(["on", "off"]))
@click.option("--priority", type=click.IntRange(0, 100), default=0, show_default=True,
              help="Higher priorities are restarted first.")
@click.option("--manager", "manager_host", metavar="HOST",
              help="The manager's host id (default: discovered).")
@json_option
@click.pass_context
def ha(ctx: click.Context, setting: str, priority: int, manager_host: str | None,
       as_json: bool) -> Exit:
    """Mark the VM highly available (on) or not (off): the manager restarts an HA VM on
    another host when its host is confirmed down."""
    from console.commands.manager import ask_manager

    name = ctx.meta["vm"]
    result = ask_manager(ctx.obj, "ha", {"name": name, "enabled": setting == "on",
                                         "priority": priority}, manager_host, None)
    if as_json:
        emit_json(result)
    else:
        click.echo(f"{name} on {result['host']}: HA {setting}"
                   + (f" (priority {priority})" if setting == "on" else ""))
    return Exit.OK


def _summary(result: dict[str, Any]) -> str:
    job = result.get("job") or {}
    parts = [f"{result['name']} moved from {result['source_host']} to "
             f"{result['target_host'] or result['target_uri']} in "
             f"{result['call_ms'] / 1000:.1f} s"]
    if "elapsed_ms" in job:
        parts.append(f"migration {job['elapsed_ms']} ms")
    if "downtime_ms" in job:
        parts.append(f"downtime {job['downtime_ms']} ms")
    if "data_processed_bytes" in job:
        parts.append(f"{job['data_processed_bytes'] / MIB:.1f} MiB sent")
    if result.get("copied_disks"):
        parts.append(f"disks copied: {', '.join(result['copied_disks'])}")
    return "; ".join(parts)


def _progress(console: Any, route: Any, enabled: bool) -> Any:
    """A bar of the data sent, fed by the source's domain.migration events, on a
    terminal only: (stop)."""
    from rich.console import Console as RichConsole

    terminal = RichConsole(stderr=True)
    if not enabled or not terminal.is_terminal:
        return lambda: None
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeElapsedColumn

    from console import migration

    bar = Progress("[progress.description]{task.description}", BarColumn(),
                   DownloadColumn(binary_units=True), TimeElapsedColumn(), console=terminal,
                   transient=True)
    task = bar.add_task(f"{route.name} to {route.target}", total=None)

    def on_event(event: Any, note: str | None) -> None:
        data = event.data
        if data.get("name") != route.name or "data_total_bytes" not in data:
            return
        bar.update(task, total=data["data_total_bytes"],
                   completed=data.get("data_processed_bytes", 0))

    console.subscribe([migration.progress_pattern(route)], on_event)
    bar.start()
    return bar.stop


from console.commands.vm_lifecycle import add_lifecycle  # noqa: E402 (after the group)

add_lifecycle(vm)
