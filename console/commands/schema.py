"""The contract, offline: ``hostbus schema [AGENT[.METHOD]]``."""

from __future__ import annotations

import click

from console.args import method_help
from console.commands.common import Exit, emit_json, out, usage
from console.commands.options import json_option


@click.command()
@click.argument("target", required=False, metavar="[AGENT[.METHOD]]")
@json_option
def schema(target: str | None, as_json: bool) -> Exit:
    """Show the contract: agents, their methods, object classes and events.

    Read from the schemas shipped with hostbus: no broker is needed.
    """
    from console.render import objects_table
    from hostbus.schema import available_agents, load_agent_schema

    if target is None:
        rows = [{"agent": a, "version": load_agent_schema(a).version,
                 "description": load_agent_schema(a).description} for a in available_agents()]
        if as_json:
            emit_json({"agents": rows})
        else:
            out().print(objects_table(rows))
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
    console = out()
    console.print(f"[bold]{agent}[/bold] {sch.version}: {sch.description}")
    console.print(objects_table(
        [{"method": m.name, "dangerous": "yes" if m.dangerous else "",
          "description": m.description} for m in sch.methods.values()], title="methods"))
    if sch.classes:
        console.print(objects_table(
            [{"class": c.name, "key": c.key, "fields": ", ".join(c.fields)}
             for c in sch.classes.values()], title="object classes (hostbus query)"))
    console.print(objects_table(
        [{"event": f"{agent}.{e.name}", "routing key": f"{agent}.<host>.{e.name}",
          "description": e.description} for e in sch.events.values()], title="events"))
    return Exit.OK
