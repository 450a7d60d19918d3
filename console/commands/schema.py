"""The contract, offline: ``hostbus schema [AGENT[.METHOD]]``."""

from __future__ import annotations

import click

from console.args import method_help
from console.commands.common import Exit, emit_json, exits, layout, out, usage
from console.commands.completion import complete_schema_target
from console.commands.options import json_option, table_options


@exits(configured=False)
@click.command()
@click.argument("target", required=False, metavar="[AGENT[.METHOD]]",
                shell_complete=complete_schema_target)
@table_options
@json_option
def schema(target: str | None, wide: bool, columns: tuple[str, ...], as_json: bool) -> Exit:
    """Show the contract: agents, their methods, object classes and events.

    Read from the schemas shipped with hostbus: no broker is needed.
    """
    from console.render import objects_table
    from hostbus.schema import available_agents, load_agent_schema

    console = out()
    fit = layout(console, wide, columns)

    if target is None:
        rows = [{"agent": a, "version": load_agent_schema(a).version,
                 "description": load_agent_schema(a).description} for a in available_agents()]
        if as_json:
            emit_json({"agents": rows})
        else:
            console.print(objects_table(rows, fit))
        return Exit.OK
    agent, _, method = target.partition(".")
    if agent not in available_agents():
        raise usage(f"no schema for agent {agent!r}; known: {', '.join(available_agents())}")
    sch = load_agent_schema(agent)
    if method:
        spec = sch.methods.get(method)
        if spec is None:
            raise usage(f"agent {agent!r} has no method {method!r}; methods: "
                        f"{', '.join(sorted(sch.methods))}")
        if as_json:
            emit_json(sch.raw["methods"][method])
        else:
            click.echo(method_help(agent, spec))
        return Exit.OK
    if as_json:
        emit_json(sch.raw)
        return Exit.OK
    console.print(f"[bold]{agent}[/bold] {sch.version}: {sch.description}")
    console.print(objects_table(
        [{"method": m.name, "dangerous": "yes" if m.dangerous else "",
          "description": m.description} for m in sch.methods.values()], fit, title="methods"))
    if sch.classes:
        console.print(objects_table(
            [{"class": c.name, "key": c.key, "fields": ", ".join(c.fields)}
             for c in sch.classes.values()], fit, title="object classes (hostbus query)"))
    console.print(objects_table(
        [{"event": f"{agent}.{e.name}", "routing key": f"{agent}.<host>.{e.name}",
          "description": e.description} for e in sch.events.values()], fit, title="events"))
    return Exit.OK
