"""``hostbus reactor`` (the service, its rules and its decisions) and ``hostbus health``
(the health checks across the fleet)."""

from __future__ import annotations

from datetime import UTC, datetime
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
    service_exits,
)
from console.commands.options import (
    discovery_options,
    hosts_option,
    json_option,
    table_options,
)
from console.commands.rules import event_option

config_option = click.option("--config", "-c", "config_file", type=click.Path(dir_okay=False),
                             metavar="FILE", help="Reactor config (see etc/reactor.toml).")


def _config_error(exc: Exception) -> CliError:
    return CliError(Exit.FAILED, str(exc))


@service_exits()
@click.group("reactor", invoke_without_command=True)
@config_option
@click.option("--check-config", is_flag=True,
              help="Check the configuration, its keys and its rules (calls against the "
                   "schemas), then exit (0 good, 1 not). The rules alone, each problem "
                   "with its fix: hostbus rules check FILE.")
@click.option("--setup", is_flag=True,
              help="Make the reactor's active queue hostbus.active.NAME, bound to what its "
                   "rules need, through the management API, as an administrator; then exit.")
@click.option("--admin-url", envvar="HOSTBUS_CONSOLE_ADMIN_URL", metavar="URL",
              help="With --setup: the management API (default [console] admin_url).")
@click.pass_context
def reactor(click_ctx: click.Context, config_file: str | None, check_config: bool,
            setup: bool, admin_url: str | None) -> int:
    """Turn events into actions by rules, until SIGTERM/SIGINT: a health check failing
    becomes a VM's reboot or a service's restart, sent as a request from the reactor's
    own identity, so the agent's policy decides (and may park it for a person's
    approval). One instance acts among several; what it fired survives a restart.

    \b
    Once, as an administrator (the rules say which events it needs):
      hostbus reactor --config reactor.toml --setup
      hostbus broker enroll-service reactor --active --events 'health.*.check' \\
          --events 'agent.*.approval.decided'
    Then, with the written config's broker URL in etc/reactor.toml:
      hostbus reactor --config /etc/hostbus/reactor.toml
      hostbus reactor rules --config ...      what the rules are
      hostbus reactor history --config ...    what it decided, and what came of it
    The rules, offline (formerly --check-config and reactor test):
      hostbus rules check reactor.toml        each problem, with its fix
      hostbus rules test reactor.toml -e JSON what the rules make of one event
    """
    click_ctx.meta["reactor_config"] = config_file
    if click_ctx.invoked_subcommand is not None:
        return Exit.OK
    from console.reactor.main import check, load_config, load_rules, patterns, run
    from hostbus.errors import ConfigError

    if setup:
        from console.commands.broker import admin, vhost_of

        ctx: CliContext = click_ctx.obj
        try:
            cfg = load_config(config_file)
            wanted = patterns(load_rules(cfg), cfg["reactor"]["manager"])
        except (ConfigError, ValueError) as exc:
            raise _config_error(exc) from None
        vhost = vhost_of(ctx, None)
        service = cfg["reactor"]["host_id"]
        keys = admin(ctx, admin_url).enroll_active_queue(vhost, service, wanted)
        click.echo(f"active queue hostbus.active.{service} in vhost {vhost} bound to "
                   f"{' '.join(keys)}")
        events = " ".join(f"--events '{p}'" for p in wanted)
        provisions = any(r.action.kind == "provision" for r in load_rules(cfg))
        click.echo(f"enroll the reactor, if not yet (then copy its [broker] url into the "
                   f"reactor's config): hostbus broker enroll-service {service} "
                   f"--active {events}{' --provision' if provisions else ''} "
                   f"-o {service}-broker.toml")
        return Exit.OK
    if check_config:
        try:
            for line in check(config_file):
                click.echo(line)
        except (ConfigError, ValueError) as exc:
            raise _config_error(exc) from None
        return Exit.OK
    return run(config_file)


def _store(click_ctx: click.Context, config_file: str | None) -> Any:
    from console.reactor.main import load_config, store_path
    from console.reactor.store import ReactorStore
    from hostbus.errors import ConfigError

    path = config_file or click_ctx.meta.get("reactor_config")
    try:
        cfg = load_config(path)
    except (ConfigError, ValueError) as exc:
        raise _config_error(exc) from None
    where = store_path(cfg)
    if not where.exists():
        raise CliError(Exit.FAILED, f"no reactor store at {where}: the reactor has not run "
                                    "with this configuration ([reactor] state_dir, host_id)")
    return ReactorStore(where)


@exits(Exit.FAILED, configured=False)
@reactor.command("rules")
@config_option
@json_option
@table_options
@click.pass_context
def rules(click_ctx: click.Context, config_file: str | None, as_json: bool, wide: bool,
          columns: tuple[str, ...]) -> int:
    """The rules of a reactor configuration, checked (as --check-config does)."""
    from console.reactor.main import load_config, load_rules
    from hostbus.errors import ConfigError

    try:
        found = [r.describe() for r in load_rules(load_config(
            config_file or click_ctx.meta.get("reactor_config")))]
    except (ConfigError, ValueError) as exc:
        raise _config_error(exc) from None
    if as_json:
        emit_json({"rules": found})
        return Exit.OK
    from console.render import objects_table

    rows = [{"name": r["name"], "events": " ".join(r["events"]), "when": r["when"],
             "window": (f"{r['count']} in {r['within_s']:g}s" if r["count"] > 1 else
                        f"for {r['for_s']:g}s" if r["for_s"] else
                        f"absent {r['absent_s']:g}s" if r["absent_s"] else "each"),
             "cooldown_s": r["cooldown_s"], "action": r["action"]["call"],
             "on": r["action"]["host"], "args": r["action"]["args"],
             "dry_run": r["dry_run"]} for r in found]
    console = out()
    console.print(objects_table(rows, layout(console, wide, columns), list(columns) or None))
    return Exit.OK


@exits(Exit.FAILED, Exit.NOTHING, configured=False)
@reactor.command("history")
@click.argument("decision", required=False, metavar="[DECISION]")
@config_option
@click.option("--limit", "-n", type=click.IntRange(1), default=50, show_default=True,
              metavar="N", help="The newest N decisions.")
@click.option("--rule", "rule_name", metavar="NAME", help="Only this rule's decisions.")
@click.option("--actions", is_flag=True,
              help="Only decisions that acted (fired, or would have: dry run), not those "
                   "held back by a cooldown or a duplicate.")
@json_option
@table_options
@click.pass_context
def history(click_ctx: click.Context, decision: str | None, config_file: str | None,
            limit: int, rule_name: str | None, actions: bool, as_json: bool, wide: bool,
            columns: tuple[str, ...]) -> int:
    """What the reactor decided, newest first: the rule, the triggering events, the call
    and its host, and what became of it (ok, awaiting_approval and its approval id,
    denied, failed, skipped and why, ...) with the request id the agent's audit log
    knows it by. Reads the reactor's store, on the reactor's machine.

    \b
    One DECISION (its id, or its first characters), its whole chain:
      hostbus reactor history b75ebaa4 -c reactor.toml
      decision     b75ebaa4-4451-4324-96fc-e1332f58c812 (fired, 2026-12-01T22:14:07.887Z)
      rule         reboot a VM whose web check fails
      events       kvm01/health/804a85ed27c84088/3
      action       virt.domain.reboot on kvm01 {"name": "web-a"}
      request      90c63816-310e-4d79-a2dc-a10bbcfa558e (in kvm01's audit log)
      approval     b150f52275f0, approved by bob
      outcome      ok: approved by bob; the action ran: ok (2026-12-01T22:14:23.116Z)
    """
    store = _store(click_ctx, config_file)
    try:
        if decision is not None:
            from console.commands.common import resolve_prefix

            found = [store.get(resolve_prefix(decision, store.ids_starting(decision.lower()),
                                              "decision"))]
        else:
            found = store.history(limit=limit, rule=rule_name, actions_only=actions)
    finally:
        store.close()
    for row in found:
        for key in ("at", "updated"):
            row[key] = datetime.fromtimestamp(row[key], UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z")
    if as_json:
        emit_json({"decisions": found})
        return Exit.OK
    if decision is not None:
        _chain(found[0])
        return Exit.OK
    from console.render import objects_table

    rows = [{"at": r["at"], "decision_id": r["id"][:8], "rule": r["rule"],
             "events": " ".join(r["events"]), "decision": r["decision"], "state": r["state"],
             "call": r["call"], "host": r["host"], "args": r["args"],
             "approval_id": r["approval_id"] or "", "approved_by": r["approved_by"] or "",
             "request_id": r["request_id"] or "", "detail": r["detail"]} for r in found]
    console = out()
    if not rows:
        console.print("no decisions yet")
        return Exit.OK
    console.print(objects_table(rows, layout(console, wide, columns), list(columns) or None))
    return Exit.OK


def _chain(row: dict[str, Any]) -> None:
    """One decision, from the events behind it to what came of it."""
    import json

    where = f" on {row['host']}" if row["host"] else ""
    lines = [("decision", f"{row['id']} ({row['decision']}, {row['at']})"),
             ("rule", row["rule"]), ("events", " ".join(row["events"]) or "-"),
             ("action", f"{row['call']}{where} {json.dumps(row['args'])}")]
    if row["request_id"]:
        audit = f" (in {row['host']}'s audit log)" if row["kind"] == "call" else ""
        lines.append(("request", f"{row['request_id']}{audit}"))
    if row["approval_id"]:
        lines.append(("approval", row["approval_id"] + (
            f", approved by {row['approved_by']}" if row["approved_by"] else "")))
    lines.append(("outcome", f"{row['state']}: {row['detail']} ({row['updated']})"))
    for key, value in lines:
        click.echo(f"{key:<12} {value}")


@exits(Exit.FAILED, configured=False)
@reactor.command("test")
@config_option
@event_option
@json_option
@click.pass_context
def trial(click_ctx: click.Context, config_file: str | None, event_text: str,
          as_json: bool) -> int:
    """Moved to hostbus rules test FILE --event JSON|- (this older spelling still
    works, with the reactor's --config as FILE). Which rules would act on one event, and
    what they would send; nothing is sent. Exit 0 if a rule would act, 1 if none.

    \b
      hostbus rules test reactor.toml -e '{"host": "kvm01", "agent": "health",
          "event": "check", "data": {"state": "failing", "vm": "web-a"}}'
    """
    from console.commands.rules import run_test

    path = config_file or click_ctx.meta.get("reactor_config")
    if path is None:
        raise CliError(Exit.USAGE, "give the rules: hostbus rules test FILE --event JSON "
                                   "(hostbus reactor test needs --config FILE)")
    return run_test(path, event_text, as_json)


@exits(*FANOUT)
@click.command("health")
@hosts_option()
@click.option("--state", type=click.Choice(["any", "passing", "warning", "failing",
                                            "unknown"]), default="any", show_default=True,
              help="Only checks in this state.")
@click.option("--check", metavar="GLOB", help="Only checks whose name matches.")
@discovery_options
@table_options
@json_option
@click.pass_obj
def health(ctx: CliContext, hosts: tuple[str, ...], state: str, check: str | None,
           where: tuple[str, ...], idle: float | None, timeout: float | None, wide: bool,
           columns: tuple[str, ...], as_json: bool) -> int:
    """The health checks across the fleet (health.status on every host with the health
    agent, or the -H hosts): one line per check with its state, since when, and what its
    last run said. Exit 1 when a check shown is failing."""
    from console.commands.targeting import discover

    found = [i for i in discover(ctx, hosts, "health", where, idle, timeout) if not i.refused]
    if not found:
        raise CliError(Exit.NOTHING, "no host with the health agent answered discovery "
                                     "(agents = [\"host\", \"health\"] in its config)")
    args: dict[str, Any] = {"state": state}
    if check:
        args["check"] = check
    result = ctx.console().fanout("health", "status", args, [i.host for i in found],
                                  timeout=ctx.timeout(timeout))
    rows = [{"host": r.host, **c} for r in result.by_status("ok") if r.reply
            for c in (r.reply.result or {}).get("checks", [])]
    if as_json:
        emit_json({"checks": rows, "results": [r.to_dict() for r in result.results
                                               if r.status != "ok"]})
    else:
        from console.render import objects_table

        console = out()
        shown = [{k: row[k] for k in ("host", "check", "target", "state", "since",
                                      "consecutive_failures", "output")} for row in rows]
        console.print(objects_table(shown, layout(console, wide, columns),
                                    list(columns) or None) if shown else "no checks")
        for r in result.results:
            if r.status != "ok":
                console.print(f"{r.host}: {r.status}", style="yellow")
    if any(r.status == "no_reply" for r in result.results):
        return Exit.NO_REPLY
    if any(r.status != "ok" for r in result.results) or \
            any(row["state"] == "failing" for row in rows):
        return Exit.FAILED
    return Exit.OK
