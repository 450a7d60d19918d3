"""The manager: the service (``hostbus manager``), its what-if (``hostbus manager plan``)
and the fleet it keeps (``hostbus hosts``, ``hostbus vms``, ``hostbus hosts maintenance
HOST``, ``hostbus hosts activate HOST``). Every client command is a call to the active
manager's ``manager`` agent, found by discovery (or ``--manager HOST``)."""

from __future__ import annotations

from typing import Any

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
    service_exits,
    usage,
)
from console.commands.options import json_option, table_options, timeout_option, yes_option

GIB = 1 << 30
HOST_COLUMNS = ["host", "state", "maintenance", "vms", "free_vcpus", "cpus", "free_mem_gib",
                "mem_gib", "cpu_percent", "why"]
VM_COLUMNS = ["name", "host", "state", "vcpus", "mem_gib", "ha", "owner"]

manager_option = click.option("--manager", "manager_host", metavar="HOST",
                              help="The manager's host id (default: discovered).")


def find_manager(ctx: CliContext, timeout: float | None) -> str:
    """The host id of the manager that answers discovery (only the active instance
    serves the agent)."""
    found = ctx.console().discover(filter={"agent": "manager"}, timeout=ctx.timeout(timeout))
    if not found:
        raise CliError(Exit.NOTHING, "no manager answered (start one: hostbus manager "
                                     "--config FILE; a standby instance does not answer)")
    return found[0].host


def ask_manager(ctx: CliContext, method: str, args: dict[str, Any], manager_host: str | None,
                timeout: float | None) -> Any:
    """Call ``manager.METHOD``; its result, or a ``CliError`` saying why there is none."""
    where = manager_host or find_manager(ctx, timeout)
    res = ctx.console().call("manager", method, args, host=where, timeout=ctx.timeout(timeout))
    if res.reply is None:
        raise CliError(Exit.NO_REPLY, f"manager {where} did not answer")
    if not res.reply.ok:
        err = res.reply.error or {}
        code = Exit.NOTHING if err.get("code") == "not_found" else Exit.FAILED
        raise CliError(code, f"{err.get('code')}: {err.get('message')}")
    return res.reply.result


def _table(rows: list[dict[str, Any]], known: list[str], wide: bool,
           columns: tuple[str, ...], noun: str) -> None:
    from console.render import objects_table

    console_out = out()
    console_out.print(objects_table(rows, layout(console_out, wide, columns), known))
    click.echo(f"{len(rows)} {noun}{'s' if len(rows) != 1 else ''}")


# ------------------------------------------------------------------ the service
@service_exits()
@click.group("manager", invoke_without_command=True)
@click.option("--config", "-c", "config_file", type=click.Path(dir_okay=False),
              metavar="FILE", help="Manager config (see etc/manager.toml).")
@click.option("--check-config", is_flag=True,
              help="Check the configuration, its policy and key without connecting; then "
                   "exit (0 good, 1 not).")
@click.pass_context
def manager(ctx: click.Context, config_file: str | None, check_config: bool) -> int | None:
    """Run a manager instance until SIGTERM/SIGINT (or see `plan`).

    It keeps the fleet's state (hosts, VMs), restarts HA VMs of hosts confirmed down
    elsewhere and empties hosts put in maintenance. Several instances may run: one is
    active. Enroll it once, as a service with an active queue (it writes manager.toml):

    \b
      hostbus broker enroll-service manager --agents manager --active \\
          --events 'agent.*.online' --events 'agent.*.heartbeat' \\
          --events 'agent.*.offline' --events 'host.*.metrics' \\
          --events 'virt.*.domain.lifecycle' --events 'provision.*.accepted' \\
          --events 'provision.*.progress'
    """
    if ctx.invoked_subcommand is not None:
        return None
    if check_config:
        from console.manager.main import check
        from hostbus.errors import ConfigError

        try:
            click.echo("\n".join(check(config_file)))
        except (ConfigError, ValueError) as exc:
            raise CliError(Exit.FAILED, str(exc)) from None
        return Exit.OK
    from console.manager.main import run

    return run(config_file)


@exits(*FANOUT)
@manager.command("plan")
@click.option("--policy", type=click.Choice(["host_down", "even_distribution", "power_saving"]),
              default=None, help="What to plan (default: host_down with --host-down, else "
                                 "even_distribution).")
@click.option("--host-down", metavar="HOST", help="What losing this host now would do to "
                                                  "its VMs.")
@manager_option
@timeout_option
@table_options
@json_option
@click.pass_obj
def plan(ctx: CliContext, policy: str | None, host_down: str | None,
         manager_host: str | None, timeout: float | None, wide: bool,
         columns: tuple[str, ...], as_json: bool) -> Exit:
    """Show the moves the manager would make, and why, without making any.

    \b
      hostbus manager plan --host-down kvm01          its HA VMs restarted where
      hostbus manager plan --policy even_distribution off hosts above the threshold
      hostbus manager plan --policy power_saving      hosts it would empty and stand by
    """
    policy = policy or ("host_down" if host_down else "even_distribution")
    if policy == "host_down" and not host_down:
        raise usage("--policy host_down needs --host-down HOST")
    result = ask_manager(ctx, "plan", {"policy": policy, "host_down": host_down},
                         manager_host, timeout)
    if as_json:
        emit_json(result)
        return Exit.OK
    rows = [{"vm": m["vm"], "from_host": m["from_host"], "to_host": m["to_host"],
             "ha": "yes" if m["ha"] else "", "why": m["why"]} for m in result["moves"]]
    rows += [{"vm": m["vm"], "from_host": "", "to_host": "-", "ha": "", "why": m["why"]}
             for m in result["left"]]
    _table(rows, ["vm", "from_host", "to_host", "ha", "why"], wide, columns, "VM")
    if result["standby"]:
        click.echo(f"standby afterwards: {', '.join(result['standby'])}")
    return Exit.OK


# -------------------------------------------------------------------- the fleet
@exits(*FANOUT)
@click.group("hosts", invoke_without_command=True)
@manager_option
@timeout_option
@table_options
@json_option
@click.pass_context
def hosts(ctx: click.Context, manager_host: str | None, timeout: float | None, wide: bool,
          columns: tuple[str, ...], as_json: bool) -> Exit | None:
    """List the virt hosts as the manager sees them: state (online, unresponsive, down,
    standby), maintenance, VMs, room and load.

    \b
      hostbus hosts maintenance kvm01     move its VMs away, place nothing there
      hostbus hosts activate kvm01        end its maintenance
      hostbus hosts confirm-down kvm01    it is off: restart its HA VMs elsewhere
    """
    ctx.meta["manager_host"] = manager_host
    if ctx.invoked_subcommand is not None:
        return None
    state: CliContext = ctx.obj
    check_columns(columns, HOST_COLUMNS)
    result = ask_manager(state, "hosts", {}, manager_host, timeout)
    if as_json:
        emit_json(result)
        return Exit.OK
    rows = [{**h, "free_mem_gib": round(h["unallocated_memory_bytes"] / GIB, 1),
             "mem_gib": round(h["memory_bytes"] / GIB, 1),
             "maintenance": "yes" if h["maintenance"] else ""} for h in result["hosts"]]
    _table(rows, HOST_COLUMNS, wide, columns, "host")
    return Exit.OK


def _maintenance(ctx: click.Context, host: str, enabled: bool, timeout: float | None,
                 as_json: bool) -> Exit:
    result = ask_manager(ctx.obj, "maintenance", {"host": host, "enabled": enabled},
                         ctx.meta.get("manager_host"), timeout)
    if as_json:
        emit_json(result)
    elif enabled:
        click.echo(f"{host} is in maintenance: nothing new is placed there, and its "
                   f"{result['vms']} VMs are being moved away (hostbus watch "
                   "'manager.*.move')")
    else:
        click.echo(f"{host} is active again: VMs may be placed there")
    return Exit.OK


@exits(*FANOUT)
@hosts.command("maintenance")
@click.argument("host")
@timeout_option
@json_option
@click.pass_context
def maintenance(ctx: click.Context, host: str, timeout: float | None, as_json: bool) -> Exit:
    """Put HOST in maintenance: no new placements, and every VM on it moved to the best
    other host (live where both offer a migration_uri, else shut down, defined and
    started there). Follow it with `hostbus watch 'manager.*.move'`."""
    return _maintenance(ctx, host, True, timeout, as_json)


@exits(*FANOUT)
@hosts.command("activate")
@click.argument("host")
@timeout_option
@json_option
@click.pass_context
def activate(ctx: click.Context, host: str, timeout: float | None, as_json: bool) -> Exit:
    """End HOST's maintenance: VMs may be placed there again."""
    return _maintenance(ctx, host, False, timeout, as_json)


@exits(*FANOUT)
@hosts.command("confirm-down")
@click.argument("host")
@yes_option
@timeout_option
@json_option
@click.pass_context
def confirm_down(ctx: click.Context, host: str, yes: bool, timeout: float | None,
                 as_json: bool) -> Exit:
    """Tell the manager that HOST, silent, is off (powered down by hand, say), where its
    fence step failed or there is none: its HA VMs are then started elsewhere.

    Only an unresponsive host that does not answer a ping is accepted. If it still runs
    its VMs, they will run twice and their disks be corrupted: check first.
    """
    import sys

    if not yes:
        what = (f"confirm that {host} is off; its HA VMs will be started on other hosts. "
                "If it still runs them, their disks will be corrupted")
        if not sys.stdin.isatty():
            raise usage(f"{what}: pass --yes")
        if not click.confirm(f"{what[0].upper()}{what[1:]}. Go on?"):
            raise usage("cancelled")
    result = ask_manager(ctx.obj, "confirm_down", {"host": host},
                         ctx.meta.get("manager_host"), timeout)
    if as_json:
        emit_json(result)
    else:
        click.echo(f"{host} is down ({result['why']}); its HA VMs are being restarted "
                   "elsewhere (hostbus watch 'manager.*.ha.restart')")
    return Exit.OK


@exits(*FANOUT)
@click.command("vms")
@click.option("--host", "-H", "on_host", metavar="HOST", help="Only this host's VMs.")
@manager_option
@timeout_option
@table_options
@json_option
@click.pass_obj
def vms(ctx: CliContext, on_host: str | None, manager_host: str | None,
        timeout: float | None, wide: bool, columns: tuple[str, ...], as_json: bool) -> Exit:
    """List the VMs as the manager sees them: host, state, size, HA flag, owner."""
    check_columns(columns, VM_COLUMNS)
    result = ask_manager(ctx, "vms", {"host": on_host}, manager_host, timeout)
    if as_json:
        emit_json(result)
        return Exit.OK
    rows = [{**v, "mem_gib": round(v["memory_bytes"] / GIB, 2),
             "ha": f"yes ({v['ha_priority']})" if v["ha"] else ""} for v in result["vms"]]
    _table(rows, VM_COLUMNS, wide, columns, "VM")
    return Exit.OK
