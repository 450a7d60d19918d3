"""Fleet views: one node in one view (``hostbus inventory HOST``) and a fact's
distribution across the fleet (``hostbus facts [KEY]...``)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import click

from console.commands.common import (
    FANOUT,
    CliContext,
    CliError,
    Exit,
    emit_json,
    exits,
    layout,
    out,
    plural,
)
from console.commands.options import (
    discovery_options,
    hosts_option,
    json_option,
    table_options,
    timeout_option,
)
from console.commands.targeting import discover, refusal, valid_host

# What one node's view asks, per agent it runs: (section title, agent, method).
SECTIONS = (("identity", "host", "identify"), ("hardware", "host", "inventory"),
            ("now", "host", "metrics"), ("hypervisor", "virt", "node.info"))


@exits(*FANOUT)
@click.command()
@click.argument("host")
@timeout_option
@table_options
@json_option
@click.pass_obj
def inventory(ctx: CliContext, host: str, timeout: float | None, wide: bool,
              columns: tuple[str, ...], as_json: bool) -> Exit:
    """Everything about one HOST on one screen: its agents and facts, identity,
    hardware, current metrics and (with the virt agent) hypervisor capacity."""
    from rich.markup import escape

    valid_host(host)
    found = discover(ctx, (host,), None, (), None, timeout)
    if not found:
        raise CliError(Exit.NO_REPLY, f"{host} did not answer discovery (`hostbus agents` "
                                      "lists who is there)")
    info = found[0]
    if info.refused:
        raise CliError(Exit.FAILED, f"{host} refused: {refusal(info)}")
    console = ctx.console()
    asked = [(title, agent, method) for title, agent, method in SECTIONS
             if agent in info.agents]
    results = {title: console.call(agent, method, {}, host=host, timeout=ctx.timeout(timeout))
               for title, agent, method in asked}
    failed = {title: r for title, r in results.items() if r.status != "ok"}
    if as_json:
        emit_json({"host": host, "agent": info.to_dict(),
                   **{title: r.reply.result for title, r in results.items()
                      if r.reply is not None and r.reply.ok},
                   "errors": {title: r.to_dict() for title, r in failed.items()}})
    else:
        from console.render import print_result

        out_console = out()
        fit = layout(out_console, wide, columns)
        out_console.print(f"[bold]{escape(host)}[/bold]", highlight=False)
        # one line each: at 80 columns a single header line wrapped mid-value
        print_result(out_console, {"agents": ", ".join(info.agents), "hostbus": info.version,
                                   "started": info.started, "rtt_ms": round(info.rtt_ms, 1)},
                     fit)
        out_console.print("[bold]facts[/bold]")
        print_result(out_console, info.facts, fit)
        for title, agent, method in asked:
            res = results[title]
            out_console.print(f"[bold]{title}[/bold] [dim]({agent}.{method})[/dim]")
            if res.reply is None:
                out_console.print("  no reply before the timeout", style="yellow")
            elif not res.reply.ok:
                err = res.reply.error or {}
                out_console.print(f"  {escape(str(err.get('code')))}: "
                                  f"{escape(str(err.get('message')))}", style="red")
            else:
                print_result(out_console, res.reply.result or {}, fit)
    if any(r.reply is None for r in failed.values()):
        return Exit.NO_REPLY
    return Exit.FAILED if failed else Exit.OK


@exits(*FANOUT)
@click.command()
@click.argument("keys", nargs=-1, metavar="[KEY]...")
@hosts_option()
@click.option("--agent", "-a", metavar="NAME", help="Only daemons hosting this agent.")
@discovery_options
@table_options
@json_option
@click.pass_obj
def facts(ctx: CliContext, keys: tuple[str, ...], hosts: tuple[str, ...], agent: str | None,
          where: tuple[str, ...], idle: float | None, timeout: float | None, wide: bool,
          columns: tuple[str, ...], as_json: bool) -> Exit:
    """How facts are spread over the fleet: for each KEY, its values, how many hosts
    have each and which. Without KEY: every fact key and how many values it takes.

    \b
      hostbus facts                      the keys
      hostbus facts os kernel            each value of os and of kernel, with its hosts
      hostbus facts role --where cpus>=4
    """
    answered = [i for i in discover(ctx, hosts, agent, where, idle, timeout) if not i.refused]
    if not answered:
        raise CliError(Exit.NOTHING, "no agent answered discovery (`hostbus agents`)")
    if not keys:
        seen: dict[str, set[str]] = defaultdict(set)
        having: dict[str, int] = defaultdict(int)
        for info in answered:
            for key, value in info.facts.items():
                seen[key].add(str(value))
                having[key] += 1
        rows = [{"fact": k, "values": len(seen[k]), "hosts": having[k]} for k in sorted(seen)]
        return _show(rows, {"facts": rows, "hosts": len(answered)}, as_json, wide, columns,
                     f"{plural(len(answered), 'host')}; `hostbus facts KEY` shows a key's "
                     "values")
    spread: dict[str, list[dict[str, Any]]] = {}
    for key in keys:
        by_value: dict[str, list[str]] = defaultdict(list)
        for info in answered:
            value = info.facts.get(key)
            by_value["(missing)" if value is None else str(value)].append(info.host)
        spread[key] = [{"fact": key, "value": v, "count": len(h), "hosts": ", ".join(h)}
                       for v, h in sorted(by_value.items(), key=lambda kv: (-len(kv[1]),
                                                                            kv[0]))]
    rows = [row for key in keys for row in spread[key]]
    doc = {"facts": {k: [{**r, "hosts": r["hosts"].split(", ")} for r in v]
                     for k, v in spread.items()}, "hosts": len(answered)}
    return _show(rows, doc, as_json, wide, columns, f"{plural(len(answered), 'host')}")


def _show(rows: list[dict[str, Any]], doc: dict[str, Any], as_json: bool, wide: bool,
          columns: tuple[str, ...], footer: str) -> Exit:
    if as_json:
        emit_json(doc)
        return Exit.OK
    from console.render import objects_table

    console = out()
    console.print(objects_table(rows, layout(console, wide, columns)))
    console.print(footer)
    return Exit.OK
