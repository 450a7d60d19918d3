"""Setting up the broker over its management HTTP API: ``hostbus broker ...``.

A new ``broker`` subcommand goes here: decorate it with ``@exits(*BROKER)`` over
``@broker.command()`` and use ``admin(ctx, admin_url)`` for the API (its failures exit
5 with the reason).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import click

from console.commands.common import CliContext, CliError, Exit, emit_json, exits, usage
from console.commands.options import json_option
from hostbus import names

#: What a broker command can end with: besides 0 and 2, failed, no such user, and the
#: management API unreachable or refusing (its reason is printed).
BROKER = (Exit.FAILED, Exit.NOTHING, Exit.CONNECT)

if TYPE_CHECKING:
    from hostbus.broker_admin import BrokerAdmin


@click.group()
def broker() -> None:
    """Set up the broker: topology, and a queue per host (management HTTP API)."""


@contextlib.contextmanager
def bad_names() -> Iterator[None]:
    """A name the broker would refuse is a usage error, found before anything is made."""
    try:
        yield
    except ValueError as exc:
        raise usage(str(exc)) from None


def admin(ctx: CliContext, admin_url: str | None) -> BrokerAdmin:
    from hostbus.broker_admin import BrokerAdmin
    from hostbus.errors import ConnectionFailed

    try:
        return BrokerAdmin(admin_url or ctx.cfg["console"]["admin_url"])
    except ConnectionFailed as exc:  # only the URL is checked here: a typo
        raise usage(str(exc)) from None


def vhost_of(ctx: CliContext, vhost: str | None) -> str:
    from hostbus.transport.url import parse_url

    return vhost or parse_url(ctx.url).vhost


admin_option = click.option("--admin-url", envvar="HOSTBUS_CONSOLE_ADMIN_URL", metavar="URL",
                            help="Management API, http://user:pass@host:15672 (an "
                                 "administrator).")
vhost_option = click.option("--vhost", metavar="NAME",
                            help="Virtual host (default: the broker URL's, 'hostbus').")


@exits(*BROKER)
@broker.command()
@admin_option
@vhost_option
@json_option
@click.pass_obj
def setup(ctx: CliContext, admin_url: str | None, vhost: str | None, as_json: bool) -> Exit:
    """Create the vhost and apply broker_config/definitions.json (idempotent).

    On an older install it also brings each enrolled identity's topic permissions up to
    date and turns hostbus.reply into a topic exchange (so each identity can bind only
    its own replies): live consoles keep their reply bindings, bindings to another
    identity's replies are dropped and listed, and replies published in the few
    milliseconds the exchange is made again are lost.
    """
    name = vhost_of(ctx, vhost)
    done = admin(ctx, admin_url).setup(name)
    if as_json:
        emit_json({"vhost": name, **done})
        return Exit.OK
    click.echo(f"vhost {name}: {done['exchanges']} exchanges, {done['queues']} queues, "
               f"{done['bindings']} bindings, {done['policies']} policies applied; "
               f"{len(done['identities'])} identities' topic permissions brought up to date")
    if done.get("reply_exchange_migrated"):
        click.echo(f"hostbus.reply is now a topic exchange: {done['reply_bindings_kept']} "
                   "reply bindings kept")
        for dropped in done["reply_bindings_dropped"]:
            click.echo(f"dropped a binding to another identity's replies: {dropped}")
    return Exit.OK


def _identity_url(ctx: CliContext, user: str, password: str, broker_url: str | None,
                  tls: tuple[Path, Path, Path] | None = None) -> str:
    """The URL an enrolled identity connects with: the console's broker (or
    --broker-url), with the new user's credentials: a password, or with ``tls`` (CA,
    certificate, key) a client certificate (SASL EXTERNAL, amqps only)."""
    from urllib.parse import quote, urlencode

    from hostbus.transport.url import parse_url

    base = parse_url(broker_url or ctx.url)
    where = f"{base.host}:{base.port}/{quote(base.vhost, safe='')}"
    if tls is None:
        return f"{base.scheme}://{quote(user, safe='')}:{quote(password, safe='')}@{where}"
    query = urlencode({"cafile": tls[0], "certfile": tls[1], "keyfile": tls[2]})
    return f"amqps://{quote(user, safe='')}@{where}?{query}"


def _issue_client_cert(ctx: CliContext, name: str, tls_dir: str | None,
                       broker_url: str | None) -> tuple[Path, Path, Path] | None:
    """Before any user is created: check the broker URL is amqps, then sign NAME's
    certificate with the CA in ``tls_dir``."""
    if tls_dir is None:
        return None
    from hostbus.devca import CA_CERT, issue
    from hostbus.transport.url import parse_url

    if parse_url(broker_url or ctx.url).scheme not in ("amqps", "amqps10"):
        raise usage("a client certificate needs TLS: give --broker-url "
                    "amqps://BROKER:5671/VHOST")
    cert, key = issue(tls_dir, name)
    return Path(tls_dir).resolve() / CA_CERT, cert.resolve(), key.resolve()


def write_secret_file(path: str, text: str, force: bool) -> None:
    """Create the file with mode 0600 from the start (it holds a password)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise usage(f"{path} exists; pass --force to replace it (the old password stops "
                    "working anyway)") from None
    except OSError as exc:
        raise CliError(Exit.FAILED, f"cannot write {path}: {exc}") from None
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)


def agent_config(host: str, url: str, agents: list[str]) -> str:
    """The agent config ``broker enroll`` writes: the host's credentials, nothing else."""
    return (f"# hostbus-agent configuration for host {host}, written by "
            f"`hostbus broker enroll`.\n# It holds this host's broker credentials: keep it "
            f"mode 0600. Every other setting is in etc/agent.toml.\n\n"
            f'[broker]\nurl = "{url}"\n\n'
            f'[agent]\nhost_id = "{host}"\nagents = {json.dumps(agents)}\n')


def check_writable(path: str, force: bool) -> None:
    """Before any user is created: a refusal later would leave a user nobody can use."""
    if os.path.exists(path) and not force:
        raise usage(f"{path} exists; pass --force to replace it (the old password stops "
                    "working anyway)")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.access(parent, os.W_OK):
        raise usage(f"cannot write {path}: {parent} is not writable")


def _create_identity(ctx: CliContext, kind: str, name: str, admin_url: str | None,
                     vhost: str | None, certificate: bool = False) -> str:
    """The new user's password."""
    with bad_names():
        return admin(ctx, admin_url).create_identity(vhost_of(ctx, vhost), kind, name,
                                                     certificate=certificate)


config_out_option = click.option("--config-out", "-o", metavar="FILE",
                                 help="Where to write the ready config (mode 0600). "
                                      "Default: ./NAME.toml")
force_option = click.option("--force", is_flag=True, help="Replace an existing file.")
broker_url_option = click.option("--broker-url", metavar="URL",
                                 help="The broker as this identity will reach it "
                                      "(default: the console's, e.g. amqps://broker:5671/hostbus).")
tls_dir_option = click.option(
    "--tls-dir", metavar="DIR", type=click.Path(file_okay=False),
    help="Authenticate with a client certificate instead of a password: sign NAME.pem "
         "with the CA in DIR (hostbus broker dev-ca DIR) and create the user without a "
         "password (SASL EXTERNAL over amqps).")


@exits(*BROKER)
@broker.command()
@click.argument("host", required=False)
@click.option("--from", "from_file", type=click.File("r"), metavar="FILE",
              help="Enroll every host listed in FILE ('-': standard input), one a line: "
                   "HOST [AGENT,AGENT...] (--agents where none are given); '#' starts a "
                   "comment. Thousands of hosts in a few definitions imports; with users, "
                   "each one's config is written to --config-dir.")
@click.option("--config-dir", type=click.Path(file_okay=False), metavar="DIR",
              help="With --from: the folder for each host's config, DIR/HOST.toml "
                   "(mode 0600; made if missing). Default: the current folder.")
@click.option("--agents", default="host", show_default=True, metavar="A,B",
              help="Agents this host runs (comma-separated).")
@click.option("--no-user", is_flag=True,
              help="Only the queue and bindings; no broker user (for a shared account).")
@click.option("--queue-type", type=click.Choice(["classic", "quorum"]), default="classic",
              show_default=True,
              help="quorum: the host's queue is replicated over a cluster's nodes and "
                   "survives losing one (broker_config/cluster/README.md).")
@config_out_option
@force_option
@broker_url_option
@tls_dir_option
@admin_option
@vhost_option
@json_option
@click.pass_obj
def enroll(ctx: CliContext, host: str | None, from_file: TextIO | None,
           config_dir: str | None, agents: str, no_user: bool, queue_type: str,
           config_out: str | None, force: bool, broker_url: str | None, tls_dir: str | None,
           admin_url: str | None, vhost: str | None, as_json: bool) -> Exit:
    """Create HOST's queue and bindings, and its own broker user (idempotent).

    The user may read only HOST's queue and publish only events for HOST and replies;
    it cannot publish requests or configure anything. A ready agent config with its
    password is written to --config-out (mode 0600).

    \b
    Many hosts at once (10,000 in well under a minute):
      hostbus broker enroll --from hosts.txt --config-dir configs/
    """
    if no_user:
        given = [opt for opt, value in (("--config-out", config_out), ("--tls-dir", tls_dir),
                                        ("--broker-url", broker_url)) if value]
        if given:  # they shape the user and its config file, which --no-user does not make
            raise usage(f"--no-user makes no broker user and writes no config file: leave "
                        f"out {' and '.join(given)}")
    agent_list = [a.strip() for a in agents.split(",") if a.strip()]
    if from_file is not None:
        from console.commands.broker_bulk import enroll_from_file

        if host is not None or config_out is not None or tls_dir is not None:
            raise usage("--from enrolls the hosts its file lists: give no HOST, and no "
                        "--config-out or --tls-dir (certificates are issued one host at a "
                        "time: `hostbus broker enroll HOST --tls-dir DIR`)")
        return enroll_from_file(
            admin(ctx, admin_url), vhost_of(ctx, vhost), from_file, agent_list,
            users=not no_user, queue_type=queue_type, config_dir=config_dir or ".",
            force=force, url_of=lambda h, pw: _identity_url(ctx, h, pw, broker_url),
            as_json=as_json)
    if host is None:
        raise usage("name the HOST to enroll, or give --from FILE")
    name = vhost_of(ctx, vhost)
    with bad_names():
        names.validate_host_id(host)
        for a in agent_list:
            names.validate_agent_name(a)
        if not no_user:
            admin(ctx, admin_url).check_free(name, host)  # before the queue is made
        keys = admin(ctx, admin_url).enroll_host(name, host, agent_list, queue_type=queue_type)
    result: dict[str, Any] = {"vhost": name, "host": host, "queue": names.host_queue(host),
                              "agent_queue": names.agent_queue(host), "routing_keys": keys}
    if not no_user:
        path = config_out or f"{host}.toml"
        check_writable(path, force)
        tls = _issue_client_cert(ctx, host, tls_dir, broker_url)
        password = _create_identity(ctx, "agent", host, admin_url, vhost,
                                    certificate=tls is not None)
        write_secret_file(path, agent_config(
            host, _identity_url(ctx, host, password, broker_url, tls), agent_list), force)
        result |= {"user": host, "config": path}
    if as_json:
        emit_json(result)
    else:
        click.echo(f"host {host} enrolled in vhost {name}: queues {names.host_queue(host)} "
                   f"and {names.agent_queue(host)} (the built-in agent's), bound to "
                   f"{', '.join(keys)}")
        if not no_user:
            click.echo(f"broker user {host} created; agent config written to "
                       f"{result['config']} (mode 0600): hostbus-agent --config "
                       f"{result['config']}")
    return Exit.OK


def _enroll_named(ctx: CliContext, kind: str, name: str, config_out: str | None, force: bool,
                  broker_url: str | None, tls_dir: str | None, admin_url: str | None,
                  vhost: str | None, as_json: bool, what: str) -> Exit:
    path = config_out or f"{name}.toml"
    check_writable(path, force)
    tls = _issue_client_cert(ctx, name, tls_dir, broker_url)
    password = _create_identity(ctx, kind, name, admin_url, vhost, certificate=tls is not None)
    url = _identity_url(ctx, name, password, broker_url, tls)
    write_secret_file(path, (
        f"# hostbus {kind} configuration for {name}, written by `hostbus broker "
        f"enroll-{kind}`.\n# It holds the broker password: keep it mode 0600.\n"
        f"# {what}\n\n[broker]\nurl = \"{url}\"\n"), force)
    if as_json:
        emit_json({"user": name, "kind": kind, "vhost": vhost_of(ctx, vhost), "config": path})
    else:
        click.echo(f"broker user {name} ({kind}) created; config written to {path} (mode 0600)")
    return Exit.OK


def identity_command(name: str) -> Callable[[Callable[..., Any]], Any]:
    """The options every enroll-* command for a named identity takes."""

    def wrap(fn: Callable[..., Any]) -> Any:
        for option in (click.pass_obj, json_option, vhost_option, admin_option,
                       tls_dir_option, broker_url_option, force_option, config_out_option,
                       click.argument("name"), broker.command(name), exits(*BROKER)):
            fn = option(fn)
        return fn

    return wrap


@identity_command("enroll-console")
def enroll_console(ctx: CliContext, name: str, config_out: str | None, force: bool,
                   broker_url: str | None, tls_dir: str | None, admin_url: str | None,
                   vhost: str | None, as_json: bool) -> Exit:
    """Create a console's broker user: it may send requests and provisioning requests,
    and declare and read its own reply and subscription queues (hostbus.reply.NAME.*,
    hostbus.sub.NAME.*). Use the written file with `hostbus --config FILE`."""
    return _enroll_named(ctx, "console", name, config_out, force, broker_url, tls_dir,
                         admin_url, vhost, as_json, "Use it with: hostbus --config THIS_FILE ...")


@identity_command("enroll-app")
def enroll_app(ctx: CliContext, name: str, config_out: str | None, force: bool,
               broker_url: str | None, tls_dir: str | None, admin_url: str | None,
               vhost: str | None, as_json: bool) -> Exit:
    """Create an application's broker user: it may post provisioning requests and read
    its own reply queue (hostbus.reply.NAME.*, bound to hostbus.reply), nothing else."""
    return _enroll_named(ctx, "app", name, config_out, force, broker_url, tls_dir, admin_url,
                         vhost, as_json, f"Post to exchange hostbus.provision; reply queue "
                                     f"hostbus.reply.{name}.<anything>.")


@exits(*BROKER)
@broker.command("enroll-service")
@click.argument("name")
@click.option("--agents", default="", metavar="A,B",
              help="The agents it serves besides the built-in one (the provisioner: "
                   "provision).")
@click.option("--queue", "queues", multiple=True, metavar="QUEUE",
              help="A shared queue it serves (the provisioner: hostbus.provision); "
                   "repeatable.")
@click.option("--events", "events", multiple=True, metavar="PATTERN",
              help="An event pattern it may subscribe to, exactly (the provisioner: "
                   "'virt.*.domain.lifecycle'); repeatable. Default: none.")
@click.option("--queue-type", type=click.Choice(["classic", "quorum"]), default="classic",
              show_default=True, help="Of its own queue, as for `broker enroll`.")
@click.option("--provision", "may_provision", is_flag=True,
              help="It may post provisioning requests (the reactor, when a rule's action "
                   "provisions); the provisioner's policy still decides.")
@click.option("--active", is_flag=True,
              help="Several instances, one active (the manager): make its active queue "
                   "hostbus.active.NAME (quorum, single active consumer) bound to the "
                   "--events patterns; the service then reads its events from it.")
@config_out_option
@force_option
@broker_url_option
@tls_dir_option
@admin_option
@vhost_option
@json_option
@click.pass_obj
def enroll_service(ctx: CliContext, name: str, agents: str, queues: tuple[str, ...],
                   events: tuple[str, ...], queue_type: str, may_provision: bool,
                   active: bool, config_out: str | None,
                   force: bool,
                   broker_url: str | None, tls_dir: str | None, admin_url: str | None,
                   vhost: str | None, as_json: bool) -> Exit:
    """Create a console-side service's queue and broker user (idempotent).

    \b
    The provisioner:
      hostbus broker enroll-service provisioner --agents provision \\
          --queue hostbus.provision --events 'virt.*.domain.lifecycle'
      hostbus provisioner --config provisioner.toml   # then add its other settings there
    The manager (`hostbus manager --help` lists every --events it needs):
      hostbus broker enroll-service manager --agents manager --active \\
          --events 'agent.*.heartbeat' --events 'virt.*.domain.lifecycle' ...

    It may read its own queue hostbus.host.NAME (its built-in agent and the agents
    given) and the --queue queues; call agents (publish requests, with reply queues
    hostbus.reply.NAME.* of its own); subscribe to the --events patterns; publish
    replies, and events as NAME only. It may not read other events or another
    identity's queues or replies, nor post provisioning requests (unless --provision).
    A ready config with its password is written to --config-out (mode 0600).
    """
    agent_list = [a.strip() for a in agents.split(",") if a.strip()]
    if active and not events:
        raise usage("--active needs the --events patterns the service acts on: its active "
                    "queue is bound to them")
    name_vhost = vhost_of(ctx, vhost)
    path = config_out or f"{name}.toml"
    with bad_names():
        names.validate_host_id(name)
        for a in agent_list:
            names.validate_agent_name(a)
        check_writable(path, force)
        admin(ctx, admin_url).check_free(name_vhost, name)  # before anything is made
        keys = admin(ctx, admin_url).enroll_service(name_vhost, name, agent_list, queues,
                                                    queue_type=queue_type, events=events)
        if active:
            admin(ctx, admin_url).enroll_active_queue(name_vhost, name, list(events))
        tls = _issue_client_cert(ctx, name, tls_dir, broker_url)
        password = admin(ctx, admin_url).create_identity(
            name_vhost, "service", name, certificate=tls is not None, queues=queues,
            events=events, provision=may_provision)
    provisioner = (f'\n# For `hostbus provisioner --config THIS_FILE` (etc/provisioner.toml has '
                   f'every key):\n[provisioner]\nhost_id = "{name}"\n'
                   if "provision" in agent_list else "")
    if "manager" in agent_list:
        provisioner = (f'\n# For `hostbus manager --config THIS_FILE` (etc/manager.toml has '
                       f'every key):\n[manager]\nhost_id = "{name}"\n')
    write_secret_file(path, (
        f"# hostbus service configuration for {name}, written by `hostbus broker "
        f"enroll-service`.\n# It holds the broker password: keep it mode 0600.\n\n"
        f'[broker]\nurl = "{_identity_url(ctx, name, password, broker_url, tls)}"\n'
        f"{provisioner}"), force)
    result = {"user": name, "kind": "service", "vhost": name_vhost,
              "queue": names.host_queue(name), "routing_keys": keys,
              "serves": list(queues), "events": list(events), "config": path,
              "active_queue": names.active_queue(name) if active else None}
    if as_json:
        emit_json(result)
    else:
        click.echo(f"service {name} enrolled in vhost {name_vhost}: queue "
                   f"{names.host_queue(name)} bound to {', '.join(keys)}"
                   + (f"; it serves {', '.join(queues)}" if queues else "")
                   + (f"; active queue {names.active_queue(name)}" if active else ""))
        click.echo(f"broker user {name} (service) created; config written to {path} "
                   "(mode 0600)")
    return Exit.OK


@exits(Exit.FAILED, configured=False)
@broker.command("dev-ca")
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--broker-name", "broker_names", multiple=True, metavar="NAME",
              help="A DNS name or IP address the broker is reached by (repeatable; "
                   "default: localhost and 127.0.0.1).")
@click.option("--client", "clients", multiple=True, metavar="USER",
              help="Also sign a client certificate for this broker user (repeatable).")
@json_option
def dev_ca(folder: str, broker_names: tuple[str, ...], clients: tuple[str, ...],
           as_json: bool) -> Exit:
    """Mint a development CA in FOLDER (once), the broker's certificate, and client
    certificates, for TLS and SASL EXTERNAL on a lab or test broker.

    \b
    Then point RabbitMQ at them (broker_config/rabbitmq-tls.conf shows how):
      ssl_options.cacertfile = FOLDER/ca.pem
      ssl_options.certfile   = FOLDER/broker.pem
      ssl_options.keyfile    = FOLDER/broker.key
    and enroll identities with certificates instead of passwords:
      hostbus broker enroll web01 --tls-dir FOLDER --broker-url amqps://broker:5671/hostbus
    Production brokers use the organisation's CA; the file layout is the same.
    """
    from hostbus.devca import CA_CERT, CA_KEY, create_ca, issue

    made: dict[str, Any] = {"folder": folder}
    with bad_names():
        for client in clients:  # before anything is written
            names.validate_host_id(client)
    if not (Path(folder) / CA_KEY).exists():
        create_ca(folder)
        made["ca_created"] = True
    made["ca"] = str(Path(folder) / CA_CERT)
    made["broker"] = [str(p) for p in issue(
        folder, "broker", server_names=list(broker_names) or ["localhost", "127.0.0.1"])]
    made["clients"] = {c: [str(p) for p in issue(folder, c)] for c in clients}
    if as_json:
        emit_json(made)
        return Exit.OK
    click.echo(f"CA {made['ca']}" + (" (new)" if made.get("ca_created") else " (existing)"))
    click.echo(f"broker certificate {made['broker'][0]}, key {made['broker'][1]} (mode 0600)")
    for client, (cert, key) in made["clients"].items():
        click.echo(f"client {client}: {cert}, key {key} (mode 0600)")
    return Exit.OK


@exits(*BROKER)
@broker.command()
@click.argument("name")
@admin_option
@json_option
@click.pass_obj
def revoke(ctx: CliContext, name: str, admin_url: str | None, as_json: bool) -> Exit:
    """Delete an identity's broker user; its connections are closed at once. (A host's
    queues stay: `broker enroll` it again to give it a new password; `broker unenroll`
    removes the host altogether.)"""
    with bad_names():
        existed = admin(ctx, admin_url).revoke(name)
    if as_json:
        emit_json({"user": name, "revoked": existed})
    elif existed:
        click.echo(f"broker user {name} revoked")
    else:
        raise CliError(Exit.NOTHING, f"there is no broker user {name}")
    return Exit.OK


@exits(*BROKER)
@broker.command()
@click.argument("host")
@vhost_option
@admin_option
@json_option
@click.pass_obj
def unenroll(ctx: CliContext, host: str, vhost: str | None, admin_url: str | None,
             as_json: bool) -> Exit:
    """Remove HOST from the fleet: its broker user (connections close at once) and its
    two queues, with any requests waiting in them. Requests for it are then refused at
    once (not enrolled, exit 6). `broker enroll` brings it back."""
    name = vhost_of(ctx, vhost)
    with bad_names():
        names.validate_host_id(host)
        api = admin(ctx, admin_url)
        removed = {"user": api.revoke(host),
                   "queues": [q for q in (names.host_queue(host), names.agent_queue(host))
                              if api.delete_queue(name, q)]}
    if as_json:
        emit_json({"vhost": name, "host": host, **removed})
    elif removed["user"] or removed["queues"]:
        parts = ([f"broker user {host}"] if removed["user"] else []) + [
            f"queue {q}" for q in removed["queues"]]
        click.echo(f"host {host} unenrolled from vhost {name}: removed {', '.join(parts)}")
    else:
        raise CliError(Exit.NOTHING, f"host {host} is not enrolled in vhost {name} (no user, "
                                     "no queue)")
    return Exit.OK
