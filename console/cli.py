"""The ``hostbus`` command line: the root group and where each command lives.

The commands are in ``console/commands/``, one module per command group; a new command
goes into the module of its group (or a new module) and its name into ``COMMANDS``
below. Other installed packages add commands through the ``hostbus.commands`` entry
point group (``hostbus bench`` comes from the benchmarks that way). Modules are imported
only when their command runs, so ``hostbus --help`` and a single command start fast.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from console.commands.argv import (
    hoist_root_options,
    lower_command_options,
    refuse_repeated_options,
)
from console.commands.common import (
    EPILOG,
    CliContext,
    ConsoleFactory,
    Exit,
    exit_on_error,
)
from hostbus import __version__

COMMANDS: dict[str, str] = {
    "agents": "console.commands.discovery:agents",
    "ping": "console.commands.discovery:ping",
    "inventory": "console.commands.fleet:inventory",
    "facts": "console.commands.fleet:facts",
    "call": "console.commands.calls:call",
    "query": "console.commands.calls:query",
    "watch": "console.commands.watch:watch",
    "subscriptions": "console.commands.subscriptions:subscriptions",
    "schema": "console.commands.schema:schema",
    "broker": "console.commands.broker:broker",
    "provisioner": "console.commands.provision:provisioner",
    "provision": "console.commands.provision:provision",
    "approvals": "console.commands.approvals:approvals",
    "keys": "console.commands.keys:keys",
    "policy": "console.commands.policy:policy",
    "completion": "console.commands.completion:completion",
    "manpage": "console.commands.manpage:manpage",
    "vm": "console.commands.vm:vm",
    "historian": "console.commands.history:historian",
    "history": "console.commands.history:history",
    "exporter": "console.commands.exporter:exporter",
    "reactor": "console.commands.reactor:reactor",
    "rules": "console.commands.rules:rules",
    "health": "console.commands.reactor:health",
    "manager": "console.commands.manager:manager",
    "hosts": "console.commands.manager:hosts",
    "vms": "console.commands.manager:vms",
}
PLUGIN_GROUP = "hostbus.commands"


class RootGroup(click.Group):
    """Loads commands on demand and maps every error to its exit code (one place)."""

    def _plugins(self) -> dict[str, Any]:
        from importlib.metadata import entry_points  # 20 ms: only when listing or unknown

        return {ep.name: ep for ep in entry_points(group=PLUGIN_GROUP)
                if ep.name not in COMMANDS}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *self._plugins()})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in COMMANDS:
            module, _, attr = COMMANDS[cmd_name].partition(":")
            return getattr(importlib.import_module(module), attr)
        plugin = self._plugins().get(cmd_name)
        return plugin.load() if plugin is not None else None

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        args = hoist_root_options(self, ctx, lower_command_options(self, ctx, args))
        refuse_repeated_options(self, ctx, args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        with exit_on_error():
            code = super().invoke(ctx)
        # Commands return their exit code; nothing returned is success.
        if code:
            raise click.exceptions.Exit(int(code))
        return None


@click.group(cls=RootGroup, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", envvar="HOSTBUS_BROKER_URL", metavar="URL",
              help="Broker URL amqp://user:pass@host:port/vhost (env HOSTBUS_BROKER_URL). "
                   "amqps:// for TLS; amqp10:// or amqps10:// to speak AMQP 1.0.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), metavar="FILE",
              envvar="HOSTBUS_CONSOLE_CONFIG", help="Console config file (TOML).")
@click.version_option(__version__, prog_name="hostbus")
@click.pass_context
def cli(ctx: click.Context, url: str | None, config_file: str | None) -> None:
    """Manage hosts and their VMs through the hostbus message bus.

    \b
    Start here:
      hostbus agents                      who is out there
      hostbus call host.identify -H web01 ask one host
      hostbus call host.metrics --all     ask every host
      hostbus query host.disk --filter fstype=ext4
      hostbus watch 'host.*.alert'        follow events
      hostbus schema host.processes       what a method takes
    """
    # A program (or a test) that embeds the CLI passes its console factory as obj.
    factory: ConsoleFactory | None = ctx.obj if callable(ctx.obj) else None
    state = CliContext.load(config_file, url, factory)
    ctx.obj = state
    ctx.call_on_close(state.close)
    ctx.with_resource(state.traced(ctx.invoked_subcommand))


def main() -> None:
    cli(prog_name="hostbus")


__all__ = ["Exit", "cli", "hoist_root_options", "main"]

if __name__ == "__main__":
    main()
