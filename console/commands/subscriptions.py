"""Named, durable event subscriptions (``hostbus watch --name``): list and delete them.

Their queues are hostbus.sub.USER.NAME. AMQP cannot list a queue's bindings, so these
commands (and ``watch --name``, to bind exactly its patterns) use the broker's
management API ([console] admin_url).
"""

from __future__ import annotations

import click

from console.commands.broker import admin, admin_option, vhost_of
from console.commands.common import CliContext, CliError, Exit, emit_json, exits, layout, out, usage
from console.commands.options import json_option
from hostbus import names


def subscription_queue(ctx: CliContext, name: str, user: str | None = None) -> str:
    """The queue of subscription NAME of ``user`` (default: the console's broker user)."""
    from hostbus.transport.url import parse_url

    if not names.HOST_ID_RE.match(name):
        raise usage(f"invalid subscription name {name!r}: use 1-63 of a-z 0-9 _ -")
    return names.subscription_queue(user or parse_url(ctx.url).user, name)


@click.group()
def subscriptions() -> None:
    """Named subscriptions (hostbus watch --name NAME): their events wait in a durable
    queue while nobody watches.

    \b
    Exit codes: 0 done, 2 bad input, 3 no such subscription, 5 the management API is
    unreachable or refused.
    """


@exits(Exit.NOTHING, Exit.CONNECT)
@subscriptions.command("list")
@click.option("--all", "everyone", is_flag=True, help="Every user's, not only yours.")
@admin_option
@json_option
@click.pass_obj
def subscriptions_list(ctx: CliContext, everyone: bool, admin_url: str | None,
                       as_json: bool) -> Exit:
    """List named subscriptions: their patterns and the events waiting in them."""
    from hostbus.transport.url import parse_url

    mine = f"hostbus.sub.{parse_url(ctx.url).user}."
    found = [{"name": s["queue"].removeprefix(mine) if s["queue"].startswith(mine)
              else s["queue"].removeprefix("hostbus.sub."), **s}
             for s in admin(ctx, admin_url).subscriptions(vhost_of(ctx, None))
             if everyone or s["queue"].startswith(mine)]
    if as_json:
        emit_json({"subscriptions": found})
        return Exit.OK
    from console.render import objects_table

    console = out()
    if found:
        console.print(objects_table(found, layout(console),
                                    ["name", "patterns", "messages", "consumers", "queue"]))
    console.print(f"{len(found)} named subscription{'' if len(found) == 1 else 's'}")
    return Exit.OK


@exits(Exit.NOTHING, Exit.CONNECT)
@subscriptions.command("delete")
@click.argument("name")
@click.option("--user", metavar="USER", help="Another user's subscription (default: yours).")
@admin_option
@json_option
@click.pass_obj
def subscriptions_delete(ctx: CliContext, name: str, user: str | None, admin_url: str | None,
                         as_json: bool) -> Exit:
    """Delete subscription NAME: its queue, and the events waiting in it."""
    queue = subscription_queue(ctx, name, user)
    existed = admin(ctx, admin_url).delete_queue(vhost_of(ctx, None), queue)
    if not existed:
        raise CliError(Exit.NOTHING, f"there is no subscription {name!r} ({queue}); "
                                     "`hostbus subscriptions list` shows them")
    if as_json:
        emit_json({"name": name, "queue": queue, "deleted": True})
    else:
        click.echo(f"deleted subscription {name} ({queue})")
    return Exit.OK
