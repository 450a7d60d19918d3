"""Provisioning: the service (``hostbus provisioner``) and its clients
(``hostbus provision submit|status|list|release|quota``).

A new ``provision`` subcommand goes here, with ``@provision.command(...)``; find the
provisioner with ``find_provisioner`` and ask it through ``ask_provisioner``.
"""

from __future__ import annotations

import os
import sys
import uuid
from typing import TYPE_CHECKING, Any

import click

from console.args import parse_where
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
    resolve_prefix,
    service_exits,
    usage,
)
from console.commands.options import json_option, table_options, timeout_option
from hostbus.errors import ConnectionLost, RemoteError

if TYPE_CHECKING:
    from hostbus.envelope import Reply

REQUEST_COLUMNS = ["request_id", "owner", "template", "count", "status", "vms", "updated"]


@service_exits()
@click.command("provisioner")
@click.option("--config", "-c", "config_file", type=click.Path(dir_okay=False),
              metavar="FILE", help="Provisioner config (see etc/provisioner.toml).")
@click.option("--check-config", is_flag=True,
              help="Check the configuration, its policy and key without connecting; then "
                   "exit (0 good, 1 not).")
def provisioner(config_file: str | None, check_config: bool) -> int:
    """Run the provisioning service until SIGTERM/SIGINT.

    It consumes the queue hostbus.provision, places each VM on a virt host with room,
    drives the virt agents, publishes provision.* events and replies when the VMs run.
    Enroll it once first, as a service with a broker user of its own (it writes
    provisioner.toml):

    \b
      hostbus broker enroll-service provisioner --agents provision \\
          --queue hostbus.provision --events 'virt.*.domain.lifecycle'
    """
    if check_config:
        from console.provisioner.main import check
        from hostbus.errors import ConfigError

        try:
            click.echo("\n".join(check(config_file)))
        except (ConfigError, ValueError) as exc:
            raise CliError(Exit.FAILED, str(exc)) from None
        return Exit.OK
    from console.provisioner.main import run

    return run(config_file)


@click.group()
def provision() -> None:
    """Post provisioning requests and follow them (the provisioner does the work)."""


@exits(*FANOUT, Exit.NOT_ENROLLED)
@provision.command("submit")
@click.option("--template", "-T", required=True, help="Template name (virt.template.list).")
@click.option("--count", "-n", type=click.IntRange(1, 50), default=1, show_default=True,
              help="How many VMs.")
@click.option("--name", help="The VM's exact name (one VM).")
@click.option("--prefix", help="Name prefix: VMs are PREFIX-<request id>-N.")
@click.option("--vcpus", type=click.IntRange(1, 256), help="Default: the template's.")
@click.option("--memory-mib", type=click.IntRange(64), help="Default: the template's.")
@click.option("--owner", default=lambda: os.environ.get("USER") or "unknown",
              help="Who the VMs are for (quotas count per owner). Default: $USER.")
@click.option("--ha/--no-ha", default=None,
              help="Highly available: the manager restarts them elsewhere if their host "
                   "dies. Default: the template's `ha`.")
@click.option("--ha-priority", type=click.IntRange(0, 100), metavar="0-100",
              help="Restart order among HA VMs, higher first. Default: the template's.")
@click.option("-H", "--host", "hosts", multiple=True, metavar="HOST",
              help="Only place on these hosts (repeatable).")
@click.option("--where", "-w", multiple=True, metavar="FACT=VALUE",
              help="Only place on hosts with this fact (repeatable).")
@click.option("--request-id", help="Your own request id (the idempotency key; a uuid4).")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait for the reply (the VMs run) or return once posted.")
@click.option("--timeout", "-t", type=click.FloatRange(0, min_open=True), default=300.0,
              show_default=True, metavar="S", help="How long to wait for the reply.")
@json_option
@click.pass_obj
def provision_submit(ctx: CliContext, template: str, count: int, name: str | None,
                     prefix: str | None, vcpus: int | None, memory_mib: int | None, owner: str,
                     ha: bool | None, ha_priority: int | None, hosts: tuple[str, ...],
                     where: tuple[str, ...], request_id: str | None, wait: bool,
                     timeout: float, as_json: bool) -> Exit:
    """Ask for VMs from a template; no host needs to be named.

    \b
      hostbus provision submit -T web -n 2 --prefix shop --owner alice
      hostbus provision submit -T db --name orders-db --where rack=b12 --ha
    Exit codes: 0 the VMs run, 1 the request failed, 4 no reply within --timeout.
    """
    if name and count != 1:
        raise usage("--name is for one VM; use --prefix with --count")
    body: dict[str, Any] = {"v": 1, "template": template, "count": count, "owner": owner}
    for key, value in (("name", name), ("name_prefix", prefix), ("vcpus", vcpus),
                       ("memory_mib", memory_mib), ("ha", ha), ("ha_priority", ha_priority)):
        if value is not None:
            body[key] = value
    constraints: dict[str, Any] = {}
    if hosts:
        constraints["hosts"] = list(hosts)
    if where:
        constraints["facts"] = parse_where(where)
    if constraints:
        body["constraints"] = constraints
    _check(body)
    rid, reply = _post_and_follow(ctx, body, request_id, wait=wait, timeout=timeout,
                                  as_json=as_json, what="")
    if reply is None:
        return Exit.OK
    if as_json:
        emit_json({"request_id": rid, **reply.to_body()})
    elif reply.ok:
        from console.render import objects_table

        console_out = out()
        console_out.print(f"request {rid}: completed")
        console_out.print(objects_table((reply.result or {}).get("vms", []),
                                        layout(console_out)))
    else:
        err = reply.error or {}
        code = "" if err.get("code") == "failed" else f"{err.get('code')}: "  # not twice
        click.echo(f"request {rid} failed: {code}{err.get('message')}", err=True)
    return Exit.OK if reply.ok else Exit.FAILED


def _is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text.lower()
    except ValueError:
        return False


def find_provisioner(ctx: CliContext, timeout: float | None) -> str:
    """The host id of the first provisioner that answers discovery."""
    found = ctx.console().discover(filter={"agent": "provision"}, timeout=ctx.timeout(timeout))
    if not found:
        raise CliError(Exit.NOTHING, "no provisioner answered (start one: hostbus "
                                     "provisioner --config FILE)")
    return found[0].host


def ask_provisioner(ctx: CliContext, method: str, args: dict[str, Any], provisioner: str,
                    timeout: float | None) -> Any:
    """Call ``provision.METHOD`` on ``provisioner``; its result, or a ``CliError``
    saying why there is none."""
    console = ctx.console()
    offline = console.offline_hosts("provision", [provisioner])
    if offline:
        raise CliError(Exit.NO_REPLY, f"provisioner {offline[provisioner]}")
    res = console.call("provision", method, args, host=provisioner,
                       timeout=ctx.timeout(timeout))
    if res.not_enrolled is not None:
        raise CliError(Exit.NOT_ENROLLED, f"{res.not_enrolled}: {provisioner} is no "
                                          "provisioner (leave out --provisioner to find it)")
    if res.reply is None:
        raise CliError(Exit.NO_REPLY, f"provisioner {provisioner} did not answer")
    if not res.reply.ok:
        err = res.reply.error or {}
        raise CliError(Exit.FAILED, f"{err.get('code')}: {err.get('message')}")
    return res.reply.result


provisioner_option = click.option("--provisioner", metavar="HOST",
                                  help="The provisioner's host id (default: discovered).")


@exits(*FANOUT, Exit.NOT_ENROLLED)
@provision.command("status")
@click.argument("request_id")
@provisioner_option
@timeout_option
@json_option
@click.pass_obj
def provision_status(ctx: CliContext, request_id: str, provisioner: str | None,
                     timeout: float | None, as_json: bool) -> Exit:
    """Show one request: accepted (in progress), completed, failed (and why) or
    released. REQUEST_ID may be its first characters (at least 4), as in VM names."""
    provisioner = provisioner or find_provisioner(ctx, timeout)
    if not _is_uuid(request_id):
        known = ask_provisioner(ctx, "list", {"owner": None, "status": None, "limit": 1000},
                                provisioner, timeout)
        request_id = resolve_prefix(request_id, [r["request_id"] for r in known["requests"]],
                                    "provisioning request")
    result = ask_provisioner(ctx, "status", {"request_id": request_id}, provisioner, timeout)
    if as_json:
        emit_json(result)
        return Exit.OK
    from console.render import print_result

    print_result(out(), result)
    return Exit.OK


@exits(*FANOUT, Exit.NOT_ENROLLED)
@provision.command("list")
@click.option("--owner", help="Only this owner's requests.")
@click.option("--status", type=click.Choice(["accepted", "completed", "failed", "released"]),
              help="Only requests in this state.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True,
              help="At most this many requests.")
@provisioner_option
@timeout_option
@table_options
@json_option
@click.pass_obj
def provision_list(ctx: CliContext, owner: str | None, status: str | None, limit: int,
                   provisioner: str | None, timeout: float | None, wide: bool,
                   columns: tuple[str, ...], as_json: bool) -> Exit:
    """List recent requests, newest first."""
    check_columns(columns, REQUEST_COLUMNS)
    provisioner = provisioner or find_provisioner(ctx, timeout)
    result = ask_provisioner(ctx, "list", {"owner": owner, "status": status, "limit": limit},
                             provisioner, timeout)
    if as_json:
        emit_json(result)
        return Exit.OK
    from console.render import objects_table

    rows = [{**{c: r.get(c) for c in REQUEST_COLUMNS},
             "vms": ", ".join(f"{v['name']}@{v['host']}" for v in r["vms"])}
            for r in result["requests"]]
    console_out = out()
    console_out.print(objects_table(rows, layout(console_out, wide, columns), REQUEST_COLUMNS))
    click.echo(f"{len(rows)} request{'s' if len(rows) != 1 else ''}")
    return Exit.OK


@exits(*FANOUT, Exit.NOT_ENROLLED)
@provision.command("release")
@click.argument("request_id", required=False)
@click.option("--vm", "vms", multiple=True, metavar="NAME",
              help="Release just this VM (repeatable) instead of a whole request.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask first.")
@click.option("--release-id", help="Your own id for this release (its idempotency key; a "
              "uuid4). Posting it again never releases twice.")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait for the reply (the VMs are gone) or return once posted.")
@click.option("--timeout", "-t", type=click.FloatRange(0, min_open=True), default=300.0,
              show_default=True, metavar="S", help="How long to wait for the reply.")
@provisioner_option
@json_option
@click.pass_obj
def provision_release(ctx: CliContext, request_id: str | None, vms: tuple[str, ...],
                      yes: bool, release_id: str | None, wait: bool, timeout: float,
                      provisioner: str | None, as_json: bool) -> Exit:
    """Give VMs back: destroy and undefine them, with their storage.

    \b
      hostbus provision release 9b2f6a4e-1c3d-4e5f-8a7b-6c5d4e3f2a1b
      hostbus provision release 9b2f6a4e --yes
      hostbus provision release --vm shop-9b2f6a4e-2 --yes
    REQUEST_ID may be its first characters (at least 4), as in VM names. Only
    VMs the provisioner made are released; a VM already removed counts as done.
    They stop counting for their owner's quota. The provisioner's policy decides
    who may release whose VMs (the call provision.release).
    Exit codes: 0 released, 1 the release failed or was refused, 4 no reply
    within --timeout.
    """
    if bool(request_id) == bool(vms):
        raise usage("give the REQUEST_ID whose VMs to release, or --vm NAME, not both")
    listed: list[dict[str, Any]] | None = None
    if request_id and not _is_uuid(request_id):
        provisioner = provisioner or find_provisioner(ctx, None)
        known = ask_provisioner(ctx, "list", {"owner": None, "status": None, "limit": 1000},
                                provisioner, None)["requests"]
        request_id = resolve_prefix(request_id, [r["request_id"] for r in known],
                                    "provisioning request")
        listed = [r for r in known if r["request_id"] == request_id]
    body: dict[str, Any] = {"v": 1, "action": "release"}
    if request_id:
        body["request_id"] = request_id
    else:
        body["vms"] = list(vms)
    _check(body)
    if not yes:
        _confirm_release(ctx, request_id, vms, listed, provisioner)
    rid, reply = _post_and_follow(ctx, body, release_id, wait=wait, timeout=timeout,
                                  as_json=as_json, what="release ")
    if reply is None:
        return Exit.OK
    if as_json:
        emit_json({"request_id": rid, **reply.to_body()})
    elif reply.ok:
        from console.render import objects_table

        console_out = out()
        console_out.print(f"release {rid}: completed")
        rows = [{"name": v["name"], "host": v["host"], "owner": v["owner"],
                 "outcome": v["outcome"], "removed_volumes": ", ".join(v["removed_volumes"])}
                for v in (reply.result or {}).get("vms", [])]
        console_out.print(objects_table(rows, layout(console_out)))
    else:
        err = reply.error or {}
        click.echo(f"release {rid} failed: {err.get('code')}: {err.get('message')}", err=True)
    return Exit.OK if reply.ok else Exit.FAILED


def _confirm_release(ctx: CliContext, request_id: str | None, vms: tuple[str, ...],
                     listed: list[dict[str, Any]] | None, provisioner: str | None) -> None:
    """Ask before destroying, naming what goes; without a terminal, insist on --yes."""
    if not sys.stdin.isatty():
        raise usage("releasing destroys VMs and their storage; pass --yes")
    what = ", ".join(vms)
    if request_id:
        if listed is None:
            provisioner = provisioner or find_provisioner(ctx, None)
            listed = [ask_provisioner(ctx, "status", {"request_id": request_id},
                                      provisioner, None)]
        names = [f"{v['name']}@{v['host']}" for record in listed for v in record["vms"]
                 if v.get("state") not in ("released", "gone")]
        what = f"the VMs of request {request_id} ({', '.join(names) or 'none left'})"
    if not click.confirm(f"Release {what}: destroy and undefine them with their storage?"):
        raise usage("cancelled")


@exits(*FANOUT, Exit.NOT_ENROLLED)
@provision.command("quota")
@click.argument("owner", default=lambda: os.environ.get("USER") or "unknown")
@provisioner_option
@timeout_option
@json_option
@click.pass_obj
def provision_quota(ctx: CliContext, owner: str, provisioner: str | None,
                    timeout: float | None, as_json: bool) -> Exit:
    """Show what OWNER's quota counts (default: $USER): the VMs that exist and are not
    shut off, and the limit."""
    provisioner = provisioner or find_provisioner(ctx, timeout)
    result = ask_provisioner(ctx, "quota", {"owner": owner}, provisioner, timeout)
    if as_json:
        emit_json(result)
        return Exit.OK
    click.echo(f"{owner}: {result['count']} of {result['max_vms']} VMs")
    if result["vms"]:
        from console.render import objects_table

        console_out = out()
        console_out.print(objects_table(result["vms"], layout(console_out)))
    return Exit.OK


def _check(body: dict[str, Any]) -> None:
    """The body against the provisioning schema, before anything is sent."""
    from hostbus.schema import envelope_validator

    try:
        envelope_validator("provision").validate(dict(body))
    except RemoteError as exc:
        raise usage(exc.message.replace("body.", "")) from None


def _post_and_follow(ctx: CliContext, body: dict[str, Any], request_id: str | None, *,
                     wait: bool, timeout: float, as_json: bool,
                     what: str) -> tuple[str, Reply | None]:
    """Post a provisioning message and, with ``wait``, print its provision.* events as
    they come and return its reply. (rid, None) once posted without waiting; a reply that
    does not come in time is a CliError (exit 4)."""
    console = ctx.console()
    rid = request_id or str(uuid.uuid4())
    if not as_json and wait:
        from console.render import event_line

        def on_event(ev: Any, note: str | None) -> None:
            if ev.data.get("request_id") == rid:
                click.echo(event_line(ev), err=True)

        console.subscribe(["provision.*.#"], on_event)
    try:
        rid, reply = console.provision(body, request_id=rid, timeout=timeout, wait=wait)
    except ConnectionLost as exc:  # only while waiting: the broker had confirmed it
        raise CliError(Exit.CONNECT, f"{exc}; {what}{rid} was posted and the broker keeps "
                                     f"it: `hostbus provision status {rid}` once it is "
                                     "back") from None
    if not wait:
        if as_json:
            emit_json({"request_id": rid, "status": "posted"})
        else:
            click.echo(f"posted {what}{rid}; follow it with `hostbus provision status {rid}`")
        return rid, None
    if reply is None:
        if as_json:
            emit_json({"request_id": rid, "status": "no_reply"})
        raise CliError(Exit.NO_REPLY, f"no reply to {what}{rid} within {timeout:g} s (is "
                                      f"`hostbus provisioner` running? `hostbus provision "
                                      f"status {rid}` tells later)")
    return rid, reply
