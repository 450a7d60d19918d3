"""One VM's lifecycle by its name, wherever it runs: ``hostbus vm NAME show|start|
shutdown|reboot|suspend|resume|destroy|undefine``. The host is found by asking every
virt agent (or given with ``--on``); the call is that host's ``virt.domain.VERB``."""

from __future__ import annotations

from typing import Any

import click

from console.commands.common import (
    FANOUT,
    CliContext,
    CliError,
    Exit,
    confirm_dangerous,
    emit_json,
    exits,
    out,
)
from console.commands.completion import complete_host
from console.commands.options import json_option, timeout_option, yes_option
from hostbus.errors import ErrorCode, RemoteError

#: verb -> what its help says (the method is virt.domain.VERB)
VERBS = {
    "start": "Start the VM.",
    "shutdown": "Ask the guest to shut down (ACPI) and wait until it has stopped.",
    "reboot": "Ask the guest to reboot.",
    "suspend": "Pause the VM's vCPUs.",
    "resume": "Resume a paused VM.",
    "destroy": "Force the VM off at once, like pulling the plug (dangerous).",
    "undefine": "Remove a stopped VM's definition; --remove-storage deletes its disks "
                "too (dangerous).",
}

on_option = click.option("--on", "host", metavar="HOST", shell_complete=complete_host,
                         help="The host it is on (default: asked of every virt host).")


def _locate(state: CliContext, name: str, host: str | None, timeout: float | None) -> str:
    if host is not None:
        from console.commands.targeting import valid_host

        return valid_host(host)
    from console import migration

    try:
        return migration.find_domain(state.console(), name, timeout=state.timeout(timeout))
    except RemoteError as exc:
        code = Exit.NOTHING if exc.code == ErrorCode.NOT_FOUND else Exit.USAGE
        raise CliError(code, exc.message + (" (say which with --on HOST)"
                                            if exc.code == ErrorCode.CONFLICT else "")) from None


def _verb(verb: str) -> click.Command:
    @exits(*FANOUT, Exit.NOT_ENROLLED, Exit.PENDING)
    @click.command(verb, help=VERBS[verb] + " The host is found by the VM's name.")
    @on_option
    @yes_option
    @timeout_option
    @json_option
    @click.pass_context
    def command(ctx: click.Context, host: str | None, yes: bool, timeout: float | None,
                as_json: bool, **extra: Any) -> Exit:
        from console.client import method_spec
        from console.commands.targeting import exit_for

        name = ctx.meta["vm"]
        state: CliContext = ctx.obj
        host = _locate(state, name, host, timeout)
        args = {"name": name, **{k: v for k, v in extra.items() if v}}
        if method_spec("virt", f"domain.{verb}").dangerous and not yes:
            confirm_dangerous(f"virt.domain.{verb}", args, [host])
        res = state.console().call("virt", f"domain.{verb}", args, host=host,
                                   timeout=state.timeout(timeout))
        if as_json:
            emit_json(res.to_dict())
        else:
            from console.render import print_host_result

            print_host_result(out(), res)
        from console.client import FanoutResult

        return exit_for(FanoutResult([res], 0.0).summary)

    if verb == "undefine":
        command = click.option("--remove-storage", is_flag=True,
                               help="Also delete the volumes its disks use.")(command)
    return command


@exits(*FANOUT)
@click.command("show")
@on_option
@timeout_option
@json_option
@click.pass_context
def show(ctx: click.Context, host: str | None, timeout: float | None, as_json: bool) -> Exit:
    """Where the VM is and its state, vCPUs, memory and CPU time."""
    name = ctx.meta["vm"]
    state: CliContext = ctx.obj
    host = _locate(state, name, host, timeout)
    found = state.console().query("virt", "domain", where={"name": name}, hosts=[host],
                                  timeout=state.timeout(timeout))
    objects = [o for r in found.by_status("ok") if r.reply
               for o in (r.reply.result or {}).get("objects", [])]
    if not objects:
        raise CliError(Exit.NOTHING, f"{host} has no domain {name}")
    if as_json:
        emit_json({"host": host, **objects[0]})
        return Exit.OK
    from console.render import print_result

    console_out = out()
    console_out.print(f"[bold]{name}[/bold] on {host}", highlight=False)
    print_result(console_out, objects[0])
    return Exit.OK


def add_lifecycle(group: click.Group) -> None:
    """Put the lifecycle verbs on ``hostbus vm NAME``."""
    group.add_command(show)
    for verb in VERBS:
        group.add_command(_verb(verb))
