"""Who is out there: ``hostbus agents`` and ``hostbus ping``."""

from __future__ import annotations

import click

from console.commands.common import (
    EPILOG,
    CliContext,
    Exit,
    check_columns,
    emit_json,
    layout,
    out,
    plural,
)
from console.commands.options import discovery_options, hosts_option, json_option, table_options
from console.commands.targeting import discover, is_glob


@click.command(epilog=EPILOG)
@hosts_option()
@click.option("--agent", "-a", metavar="NAME", help="Only daemons hosting this agent.")
@discovery_options
@table_options
@json_option
@click.pass_obj
def agents(ctx: CliContext, hosts: tuple[str, ...], agent: str | None, where: tuple[str, ...],
           idle: float | None, timeout: float | None, wide: bool, columns: tuple[str, ...],
           as_json: bool) -> Exit:
    """Discover the running agents (broadcast ping) and list them.

    Stops as soon as no reply has come for --idle seconds, not after a fixed wait.
    """
    from console.render import AGENT_COLUMNS

    check_columns(columns, AGENT_COLUMNS)
    infos = discover(ctx, hosts, agent, where, idle, timeout)
    if as_json:
        emit_json({"agents": [i.to_dict() for i in infos], "count": len(infos)})
    else:
        from console.render import agents_table

        console = out()
        if infos:
            console.print(agents_table(infos, layout(console, wide, columns)))
        console.print(f"{plural(len(infos), 'host')} answered")
    if not infos:
        if not as_json:
            click.echo("hostbus: no agent answered. Start one with `hostbus-agent --config "
                       "FILE` (after `hostbus broker enroll HOST`).", err=True)
        return Exit.NOTHING
    return Exit.OK


@click.command(epilog=EPILOG)
@hosts_option()
@discovery_options
@json_option
@click.pass_obj
def ping(ctx: CliContext, hosts: tuple[str, ...], where: tuple[str, ...], idle: float | None,
         timeout: float | None, as_json: bool) -> Exit:
    """Ping agents and show each one's round trip.

    With exact -H names, stops as soon as all of them answered; exits 4 when some did not.
    """
    infos = discover(ctx, hosts, None, where, idle, timeout)
    exact = [h for h in hosts if not is_glob(h)]
    missing = sorted(set(exact) - {i.host for i in infos})
    if as_json:
        emit_json({"replies": [{"host": i.host, "rtt_ms": round(i.rtt_ms, 3), "epoch": i.epoch}
                               for i in infos], "missing": missing})
    else:
        console = out()
        for info in infos:
            console.print(f"{info.host:<24} [green]ok[/green]  {info.rtt_ms:7.2f} ms")
        for host in missing:
            console.print(f"{host:<24} [yellow]no reply[/yellow]")
        console.print(f"{len(infos)} answered, {len(missing)} missing")
    if missing:
        return Exit.NO_REPLY
    if not infos:
        return Exit.NOTHING
    return Exit.OK
