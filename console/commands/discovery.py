"""Who is out there: ``hostbus agents`` and ``hostbus ping``."""

from __future__ import annotations

import click

from console.commands.common import (
    FANOUT,
    CliContext,
    CliError,
    Exit,
    check_columns,
    emit_json,
    exits,
    layout,
    out,
    plural,
)
from console.commands.options import (
    discovery_options,
    hosts_from_option,
    hosts_option,
    json_option,
    table_options,
)
from console.commands.targeting import discover, is_glob, read_hosts, refusal


@exits(*FANOUT)
@click.command()
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
    if not as_json:  # tables need rich; --json does not import it
        from console.render import AGENT_COLUMNS

        check_columns(columns, AGENT_COLUMNS)
    found = discover(ctx, hosts, agent, where, idle, timeout)
    infos = [i for i in found if not i.refused]
    refused = [i for i in found if i.refused]
    if as_json:
        emit_json({"agents": [i.to_dict() for i in infos], "count": len(infos),
                   "refused": [i.to_dict() for i in refused]})
    else:
        from rich.markup import escape

        from console.render import agents_table

        console = out()
        if infos:
            console.print(agents_table(infos, layout(console, wide, columns)))
        for info in refused:
            console.print(f"{escape(info.host)}  [red]refused[/red]  {escape(refusal(info))}")
        console.print(f"{plural(len(infos), 'host')} answered"
                      + (f", {len(refused)} refused" if refused else ""))
    if refused:
        return Exit.FAILED
    if not infos:
        asked = " ".join([*(f"-H {h}" for h in hosts), *(f"--where {w}" for w in where),
                          *([f"--agent {agent}"] if agent else [])])
        click.echo("hostbus: " + (f"no agent matched {asked} (`hostbus agents` lists them "
                                  "all)" if asked else
                                  "no agent answered. Start one with `hostbus-agent --config "
                                  "FILE` (after `hostbus broker enroll HOST`)."), err=True)
        return Exit.NOTHING
    return Exit.OK


@exits(*FANOUT)
@click.command()
@hosts_option()
@hosts_from_option
@discovery_options
@json_option
@click.pass_obj
def ping(ctx: CliContext, hosts: tuple[str, ...], hosts_from: str | None,
         where: tuple[str, ...], idle: float | None, timeout: float | None,
         as_json: bool) -> Exit:
    """Ping agents and show each one's round trip.

    With exact -H names, stops as soon as all of them answered; exits 4 when some did not,
    1 when some refused (the reason is shown: they are up, but will not serve you).
    """
    hosts = (*hosts, *read_hosts(hosts_from))
    from rich.markup import escape

    found = discover(ctx, hosts, None, where, idle, timeout)
    infos = [i for i in found if not i.refused]
    refused = [i for i in found if i.refused]
    exact = [h for h in hosts if not is_glob(h)]
    missing = sorted(set(exact) - {i.host for i in found})
    # why a named host is silent, when the broker can tell: nothing consumes its queue
    offline = ctx.console().offline_hosts("agent", missing) if missing else {}
    if as_json:
        emit_json({"replies": [{"host": i.host, "rtt_ms": round(i.rtt_ms, 3), "epoch": i.epoch}
                               for i in infos], "missing": missing,
                   "offline": sorted(offline),
                   "refused": [i.to_dict() for i in refused]})
    else:
        console = out()
        width = max((len(i.host) for i in found), default=0)
        width = max([width, *(len(h) for h in missing)])
        for info in infos:
            console.print(f"{escape(info.host):<{width}}  [green]ok[/green]       "
                          f"{info.rtt_ms:7.2f} ms")
        for info in refused:
            console.print(f"{escape(info.host):<{width}}  [red]refused[/red]  "
                          f"{info.rtt_ms:7.2f} ms  {escape(refusal(info))}")
        for host in missing:
            why = f"  {escape(offline[host])}" if host in offline else ""
            console.print(f"{escape(host):<{width}}  [yellow]no reply[/yellow]{why}",
                          highlight=False)
        console.print(f"{len(infos)} answered, " + (f"{len(refused)} refused, " if refused
                                                     else "") + f"{len(missing)} missing")
    if missing:
        return Exit.NO_REPLY
    if refused:
        return Exit.FAILED
    if not infos:
        asked = " ".join([*(f"-H {h}" for h in hosts), *(f"--where {w}" for w in where)])
        raise CliError(Exit.NOTHING, f"no host matched {asked} (`hostbus agents` lists "
                                     "those that answer)" if asked else
                       "no agent answered (is one running? `hostbus agents`)")
    return Exit.OK
