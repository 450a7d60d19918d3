"""The ``hostbus`` command line: a thin layer over ``console.client``.

Exit codes (every command):
  0 all ok    1 some hosts failed    2 usage error    3 nothing discovered / no target
  4 some hosts did not reply (takes precedence over 1)    5 cannot reach the broker
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import click

from console.args import ArgumentError, method_help, parse_pairs, parse_where
from console.client import Console, FanoutResult, HostResult, method_spec
from hostbus import __version__, config, names
from hostbus.errors import ConfigError, ConnectionFailed, HostbusError, RemoteError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOTHING, EXIT_NO_REPLY, EXIT_CONNECT = 0, 1, 2, 3, 4, 5

CONSOLE_DEFAULTS: dict[str, Any] = {
    "broker": {"url": "amqp://guest:guest@127.0.0.1:5672/hostbus", "connect_timeout": 5.0},
    "console": {"timeout": 10.0, "idle": 0.3, "admin_url": "http://guest:guest@127.0.0.1:15672"},
    "security": {"signing_key": "", "agent_keys": ""},
}
USER_CONFIG = Path.home() / ".config" / "hostbus" / "console.toml"

EPILOG = """\b
Exit codes: 0 all ok, 1 some failed, 2 usage error, 3 nothing discovered,
4 some hosts did not reply, 5 cannot reach the broker.
Configuration: --config FILE, else ~/.config/hostbus/console.toml if present;
environment: HOSTBUS_BROKER_URL, HOSTBUS_CONSOLE_TIMEOUT, ... (see etc/console.toml).
"""


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"hostbus: {message}", err=True)
    sys.exit(code)


class State:
    def __init__(self, cfg: dict[str, Any], config_path: str | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self._console: Console | None = None

    @property
    def url(self) -> str:
        return self.cfg["broker"]["url"]

    def console(self, *, validate: bool = True) -> Console:
        if self._console is None:
            signer = agent_keys = None
            sec = self.cfg["security"]
            if sec["signing_key"] or sec["agent_keys"]:
                from hostbus.security.signing import Signer, Verifier

                try:
                    if sec["signing_key"]:
                        signer = Signer.load(config.resolve(sec["signing_key"],
                                                            self.config_path))
                    if sec["agent_keys"]:
                        agent_keys = Verifier.from_folder(config.resolve(sec["agent_keys"],
                                                                         self.config_path))
                except ConfigError as exc:
                    fail(str(exc), EXIT_USAGE)
            try:
                self._console = Console.connect(
                    self.url, connect_timeout=float(self.cfg["broker"]["connect_timeout"]),
                    validate=validate, signer=signer, agent_keys=agent_keys,
                )
            except ConnectionFailed as exc:
                fail(f"cannot connect: {exc}", EXIT_CONNECT)
            except ConfigError as exc:
                fail(str(exc), EXIT_USAGE)
            except HostbusError as exc:
                fail(f"broker error: {exc}", EXIT_CONNECT)
        return self._console

    def close(self) -> None:
        if self._console is not None:
            self._console.close()


def _out() -> Any:
    from rich.console import Console as RichConsole

    # Piped output is read by people in pagers and logs: give tables room.
    width = None if sys.stdout.isatty() else 200
    return RichConsole(highlight=False, soft_wrap=False, width=width)


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def json_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True,
                        help="Print JSON for scripts instead of tables.")(fn)


def discovery_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--where", "-w", multiple=True, metavar="FACT=VALUE",
                      help="Only hosts with this fact (repeatable; all must match).")(fn)
    fn = click.option("--idle", type=click.FloatRange(0, min_open=True), default=None,
                      metavar="S",
                      help="Stop discovery this long after the last reply (default 0.3).")(fn)
    fn = click.option("--timeout", "-t", type=click.FloatRange(0, min_open=True), default=None,
                      metavar="S",
                      help="Give up after this many seconds (default 10).")(fn)
    return fn


@click.group(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
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
    path = config_file or (str(USER_CONFIG) if USER_CONFIG.exists() else None)
    try:
        cfg = config.load(CONSOLE_DEFAULTS, path)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    if url:
        cfg["broker"]["url"] = url
    state = State(cfg, path)
    ctx.obj = state
    ctx.call_on_close(state.close)


def _timeout(state: State, value: float | None) -> float:
    return float(value if value is not None else state.cfg["console"]["timeout"])


def _progress(
    total: int, label: str, enabled: bool
) -> tuple[Callable[[], None], Callable[[], None]]:
    """A progress bar on stderr for people (not for pipes or --json)."""
    if not enabled or total < 2 or not sys.stderr.isatty():
        return (lambda: None), (lambda: None)
    from rich.console import Console as RichConsole
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    progress = Progress("[progress.description]{task.description}", BarColumn(),
                        MofNCompleteColumn(), TimeElapsedColumn(),
                        console=RichConsole(stderr=True), transient=True)
    task = progress.add_task(label, total=total)
    progress.start()
    return (lambda: progress.advance(task)), progress.stop


def _select_hosts(state: State, hosts: tuple[str, ...], all_hosts: bool,
                  where: tuple[str, ...], agent: str | None, timeout: float | None,
                  idle: float | None, as_json: bool) -> list[str]:
    """-H names are used as given; -H globs, --all and --where go through discovery."""
    try:
        facts = parse_where(where)
    except ArgumentError as exc:
        fail(str(exc), EXIT_USAGE)
    exact = [h for h in hosts if not any(c in h for c in "*?[")]
    globs = [h for h in hosts if h not in exact]
    for h in exact:
        try:
            names.validate_host_id(h)
        except ValueError as exc:
            fail(str(exc), EXIT_USAGE)
    if not hosts and not all_hosts:
        fail("say which hosts: -H HOST (repeatable, globs allowed) or --all "
             "[--where FACT=VALUE]", EXIT_USAGE)
    if exact and not globs and not all_hosts and not facts:
        return exact
    infos = _discover(state, tuple(globs), agent, where, idle, timeout)
    selected = list(dict.fromkeys([*exact, *(i.host for i in infos)]))
    if not selected:
        if as_json:
            _emit_json({"results": [], "summary": {"hosts": 0, "ok": 0, "failed": 0,
                                                   "no_reply": 0}})
        fail("no matching hosts answered discovery (is an agent running? try `hostbus agents`)",
             EXIT_NOTHING)
    return selected


def _exit_for(result: FanoutResult) -> int:
    s = result.summary
    if s["hosts"] == 0:
        return EXIT_NOTHING
    if s["no_reply"]:
        return EXIT_NO_REPLY
    if s["failed"]:
        return EXIT_FAILED
    return EXIT_OK


# --------------------------------------------------------------------- discovery
@cli.command(epilog=EPILOG)
@click.option("-H", "--host", "hosts", multiple=True, metavar="GLOB",
              help="Only hosts whose id matches (repeatable).")
@click.option("--agent", "-a", metavar="NAME", help="Only daemons hosting this agent.")
@discovery_options
@json_option
@click.pass_obj
def agents(state: State, hosts: tuple[str, ...], agent: str | None, where: tuple[str, ...],
           idle: float | None, timeout: float | None, as_json: bool) -> None:
    """Discover the running agents (broadcast ping) and list them.

    Stops as soon as no reply has come for --idle seconds, not after a fixed wait.
    """
    infos = _discover(state, hosts, agent, where, idle, timeout)
    if as_json:
        _emit_json({"agents": [i.to_dict() for i in infos], "count": len(infos)})
    else:
        from console.render import agents_table

        out = _out()
        if infos:
            out.print(agents_table(infos))
        out.print(f"{len(infos)} host{'s' if len(infos) != 1 else ''} answered")
    if not infos:
        if not as_json:
            click.echo("hostbus: no agent answered. Start one with `hostbus-agent --config "
                       "FILE` (after `hostbus broker enroll HOST`).", err=True)
        sys.exit(EXIT_NOTHING)


def _discover(state: State, hosts: tuple[str, ...], agent: str | None, where: tuple[str, ...],
              idle: float | None, timeout: float | None) -> list[Any]:
    try:
        facts = parse_where(where)
    except ArgumentError as exc:
        fail(str(exc), EXIT_USAGE)
    bfilter: dict[str, Any] = {}
    if len(hosts) == 1:
        bfilter["host"] = hosts[0]
    if agent:
        bfilter["agent"] = agent
    if facts:
        bfilter["facts"] = facts
    console = state.console()
    exact = [h for h in hosts if not any(c in h for c in "*?[")]
    infos = console.discover(
        filter=bfilter, timeout=_timeout(state, timeout),
        idle=float(idle if idle is not None else state.cfg["console"]["idle"]),
        expect=exact if len(exact) == len(hosts) else (),
    )
    if len(hosts) > 1:
        infos = [i for i in infos if any(fnmatch.fnmatchcase(i.host, g) for g in hosts)]
    return infos


@cli.command(epilog=EPILOG)
@click.option("-H", "--host", "hosts", multiple=True, metavar="GLOB",
              help="Only hosts whose id matches (repeatable).")
@discovery_options
@json_option
@click.pass_obj
def ping(state: State, hosts: tuple[str, ...], where: tuple[str, ...], idle: float | None,
         timeout: float | None, as_json: bool) -> None:
    """Ping agents and show each one's round trip.

    With exact -H names, stops as soon as all of them answered; exits 4 when some did not.
    """
    infos = _discover(state, hosts, None, where, idle, timeout)
    exact = [h for h in hosts if not any(c in h for c in "*?[")]
    missing = sorted(set(exact) - {i.host for i in infos})
    if as_json:
        _emit_json({"replies": [{"host": i.host, "rtt_ms": round(i.rtt_ms, 3), "epoch": i.epoch}
                                for i in infos], "missing": missing})
    else:
        out = _out()
        for info in infos:
            out.print(f"{info.host:<24} [green]ok[/green]  {info.rtt_ms:7.2f} ms")
        for host in missing:
            out.print(f"{host:<24} [yellow]no reply[/yellow]")
        out.print(f"{len(infos)} answered, {len(missing)} missing")
    if missing:
        sys.exit(EXIT_NO_REPLY)
    if not infos:
        sys.exit(EXIT_NOTHING)


# ------------------------------------------------------------------------- calls
def _split(target: str, what: str) -> tuple[str, str]:
    agent, sep, rest = target.partition(".")
    if not sep or not agent or not rest:
        fail(f"{target!r}: expected {what}, e.g. host.identify", EXIT_USAGE)
    return agent, rest


@cli.command(add_help_option=False, epilog=EPILOG)
@click.argument("target", required=False, metavar="AGENT.METHOD")
@click.argument("pairs", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("-H", "--host", "hosts", multiple=True, metavar="HOST",
              help="Target host (repeatable; a glob goes through discovery).")
@click.option("--all", "all_hosts", is_flag=True, help="Every host that has the agent.")
@click.option("--batch", type=click.IntRange(0), default=0, metavar="N",
              help="At most N requests outstanding at once (default: all).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before a dangerous method.")
@click.option("--no-validate", is_flag=True,
              help="Send even if the local schema does not know the method or arguments.")
@discovery_options
@json_option
@click.option("--help", "-h", "show_help", is_flag=True,
              help="Show this help; with AGENT.METHOD, the method's own help.")
@click.pass_context
def call(ctx: click.Context, target: str | None, pairs: tuple[str, ...], hosts: tuple[str, ...],
         all_hosts: bool, batch: int, yes: bool, no_validate: bool, where: tuple[str, ...],
         idle: float | None, timeout: float | None, as_json: bool, show_help: bool) -> None:
    """Call AGENT.METHOD on one host, a list, or every matching host.

    \b
    Arguments are KEY=VALUE, typed by the method's schema (KEY:=JSON for raw JSON):
      hostbus call host.identify -H web01
      hostbus call host.processes name='python*' limit=5 --all --where role=web
      hostbus call host.processes --help      (the method's arguments)
    """
    state: State = ctx.obj
    if show_help or target is None:
        if target is not None:
            agent, method = _split(target, "AGENT.METHOD")
            try:
                click.echo(method_help(agent, method_spec(agent, method)))
            except RemoteError as exc:
                fail(exc.message, EXIT_USAGE)
            click.echo("\nUsage: hostbus call AGENT.METHOD [KEY=VALUE]... (-H HOST | --all)")
        else:
            click.echo(ctx.get_help())
        ctx.exit(EXIT_OK if show_help else EXIT_USAGE)
    agent, method = _split(target, "AGENT.METHOD")
    spec = None
    try:
        spec = method_spec(agent, method)
    except RemoteError as exc:
        if not no_validate:
            fail(exc.message, EXIT_USAGE)
    try:
        args = parse_pairs(pairs, spec)
        if spec is not None and not no_validate:
            import copy

            spec.validate_args(copy.deepcopy(args))
    except ArgumentError as exc:
        fail(str(exc), EXIT_USAGE)
    except RemoteError as exc:
        fail(f"{exc.message} (see `hostbus call {target} --help`)", EXIT_USAGE)
    console = state.console(validate=not no_validate)
    selected = _select_hosts(state, hosts, all_hosts, where, agent, timeout, idle,
                             as_json)
    if spec is not None and spec.dangerous and not yes:
        if not sys.stdin.isatty():
            fail(f"{target} is dangerous; pass --yes to run it on {len(selected)} host(s)",
                 EXIT_USAGE)
        shown = ", ".join(selected[:5]) + (" ..." if len(selected) > 5 else "")
        if not click.confirm(f"{target} is dangerous. Run it on {len(selected)} host(s): "
                             f"{shown}?"):
            fail("cancelled", EXIT_USAGE)
    result = _run_fanout(state, console, agent, method, args, selected, timeout, batch, as_json)
    sys.exit(_exit_for(result))


def _run_fanout(state: State, console: Console, agent: str, method: str, args: dict[str, Any],
                hosts: list[str], timeout: float | None, batch: int,
                as_json: bool) -> FanoutResult:
    advance, stop = _progress(len(hosts), f"{agent}.{method}", not as_json)

    def on_result(res: HostResult) -> None:
        advance()

    try:
        result = console.fanout(agent, method, args, hosts, timeout=_timeout(state, timeout),
                                batch=batch, on_result=on_result)
    except RemoteError as exc:
        stop()
        fail(exc.message, EXIT_USAGE)
    except HostbusError as exc:
        stop()
        fail(str(exc), EXIT_CONNECT)
    stop()
    if as_json:
        _emit_json({"agent": agent, "method": method,
                    "results": [r.to_dict() for r in result.results],
                    "summary": result.summary})
    else:
        from console.render import print_fanout

        print_fanout(_out(), result)
    return result


@cli.command(epilog=EPILOG)
@click.argument("target", metavar="AGENT.CLASS")
@click.option("-H", "--host", "hosts", multiple=True, metavar="HOST",
              help="Only these hosts (default: every host that has the agent).")
@click.option("--filter", "-f", "filters", multiple=True, metavar="FIELD=VALUE",
              help="Only objects whose field matches (globs allowed; repeatable).")
@click.option("--limit", type=click.IntRange(1, 10000), default=1000,
              help="At most this many objects per host.")
@discovery_options
@json_option
@click.pass_obj
def query(state: State, target: str, hosts: tuple[str, ...], filters: tuple[str, ...],
          limit: int, where: tuple[str, ...], idle: float | None, timeout: float | None,
          as_json: bool) -> None:
    """List the objects of one class (AGENT.CLASS) across hosts.

    \b
      hostbus query host.disk                       every host's file systems
      hostbus query host.process --filter name='python*' -H web01
      hostbus query host.disk --where role=db       only hosts with that fact
    --filter selects objects by field (globs allowed); --where selects hosts by fact.
    """
    agent, class_name = _split(target, "AGENT.CLASS")
    try:
        obj_filter = parse_where(filters)
    except ArgumentError as exc:
        fail(str(exc).replace("--where", "--filter"), EXIT_USAGE)
    console = state.console()
    from hostbus.schema import available_agents, load_agent_schema

    if agent in available_agents():
        schema = load_agent_schema(agent)
        spec = schema.classes.get(class_name)
        if spec is None:
            fail(f"agent {agent!r} has no object class {class_name!r}; classes: "
                 f"{', '.join(sorted(schema.classes)) or 'none'}", EXIT_USAGE)
        unknown = sorted(set(obj_filter) - set(spec.fields))
        if unknown:
            fail(f"{class_name} has no field {unknown[0]!r}; fields: "
                 f"{', '.join(sorted(spec.fields))}", EXIT_USAGE)
        columns = list(spec.fields)
    else:
        columns = None
    selected = _select_hosts(state, hosts, not hosts, where, agent, timeout, idle,
                             as_json)
    advance, stop = _progress(len(selected), f"query {target}", not as_json)
    try:
        result = console.query(agent, class_name, where=obj_filter, hosts=selected, limit=limit,
                               timeout=_timeout(state, timeout), on_result=lambda r: advance())
    except RemoteError as exc:
        stop()
        fail(exc.message, EXIT_USAGE)
    stop()
    rows = [{"host": r.host, **obj} for r in result.results if r.reply and r.reply.result
            for obj in r.reply.result["objects"]]
    if as_json:
        _emit_json({"agent": agent, "class_name": class_name, "objects": rows,
                    "results": [{k: v for k, v in r.to_dict().items() if k != "result"}
                                for r in result.results],
                    "summary": result.summary})
    else:
        from console.render import objects_table, print_host_result, print_summary

        out = _out()
        if rows:
            out.print(objects_table(rows, ["host", *(columns or [])] if columns else None))
        for r in result.results:
            if r.status != "ok":
                print_host_result(out, r)
        print_summary(out, result)
    sys.exit(_exit_for(result))


# ------------------------------------------------------------------------ events
@cli.command(epilog=EPILOG)
@click.argument("patterns", nargs=-1, metavar="[PATTERN]...")
@click.option("--count", "-n", type=click.IntRange(0), default=0, help="Stop after N events.")
@click.option("--duration", "-d", type=click.FloatRange(0), default=0, metavar="S",
              help="Stop after S seconds.")
@click.option("--name", metavar="NAME",
              help="Use the named, durable subscription queue hostbus.sub.USER.NAME "
                   "(events are kept while you are away).")
@json_option
@click.pass_obj
def watch(state: State, patterns: tuple[str, ...], count: int, duration: float,
          name: str | None, as_json: bool) -> None:
    """Print events as they arrive, until Ctrl-C, --count or --duration.

    \b
    PATTERN is an AMQP topic pattern on <agent>.<host>.<event> (default '#'):
      hostbus watch 'host.*.alert'          every host's alerts
      hostbus watch 'agent.#'               online, heartbeat, offline
      hostbus watch 'host.web01.#' -n 5     five events from web01
    Gaps in an agent's sequence numbers and agent restarts are reported.
    """
    console = state.console()
    done = threading.Event()
    seen = [0]
    lock = threading.Lock()
    from console.render import event_line

    def on_event(ev: Any, note: str | None) -> None:
        with lock:
            if done.is_set():
                return
            if as_json:
                line = {**ev.to_body(), **({"note": note} if note else {})}
                click.echo(json.dumps(line, separators=(",", ":")))
            else:
                if note:
                    click.echo(f"! {note}", err=True)
                click.echo(event_line(ev))
            seen[0] += 1
            if count and seen[0] >= count:
                done.set()

    try:
        queue_name = console.subscribe(list(patterns) or ["#"], on_event, name=name,
                                       durable=name is not None)
    except HostbusError as exc:
        fail(str(exc), EXIT_CONNECT)
    if not as_json:
        where = (f"on durable queue {queue_name}" if name is not None else
                 "(a private queue, gone when this stops)")
        click.echo(f"watching {' '.join(patterns) or '#'} {where} (Ctrl-C to stop)",
                   err=True)
    signal.signal(signal.SIGINT, lambda *_: done.set())
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    started = time.monotonic()
    while not done.wait(0.2):
        if duration and time.monotonic() - started >= duration:
            break
    done.set()
    if not as_json:
        click.echo(f"{seen[0]} event{'s' if seen[0] != 1 else ''}", err=True)


# ------------------------------------------------------------------------ schema
@cli.command(epilog=EPILOG)
@click.argument("target", required=False, metavar="[AGENT[.METHOD]]")
@json_option
def schema(target: str | None, as_json: bool) -> None:
    """Show the contract: agents, their methods, object classes and events."""
    from hostbus.schema import available_agents, load_agent_schema

    if target is None:
        rows = [{"agent": a, "version": load_agent_schema(a).version,
                 "description": load_agent_schema(a).description} for a in available_agents()]
        if as_json:
            _emit_json({"agents": rows})
        else:
            from console.render import objects_table

            _out().print(objects_table(rows))
        return
    agent, _, method = target.partition(".")
    if agent not in available_agents():
        fail(f"no schema for agent {agent!r}; known: {', '.join(available_agents())}",
             EXIT_USAGE)
    sch = load_agent_schema(agent)
    if method:
        spec = sch.methods.get(method)
        if spec is None:
            fail(f"agent {agent!r} has no method {method!r}; methods: "
                 f"{', '.join(sorted(sch.methods))}", EXIT_USAGE)
        if as_json:
            _emit_json(sch.raw["methods"][method])
        else:
            click.echo(method_help(agent, spec))
        return
    if as_json:
        _emit_json(sch.raw)
        return
    from console.render import objects_table

    out = _out()
    out.print(f"[bold]{agent}[/bold] {sch.version}: {sch.description}")
    out.print(objects_table(
        [{"method": m.name, "dangerous": "yes" if m.dangerous else "",
          "description": m.description} for m in sch.methods.values()], title="methods"))
    if sch.classes:
        out.print(objects_table(
            [{"class": c.name, "key": c.key, "fields": ", ".join(c.fields)}
             for c in sch.classes.values()], title="object classes (hostbus query)"))
    out.print(objects_table(
        [{"event": f"{agent}.{e.name}", "routing key": f"{agent}.<host>.{e.name}",
          "description": e.description} for e in sch.events.values()], title="events"))


# ------------------------------------------------------------------------ broker
@cli.group()
def broker() -> None:
    """Set up the broker: topology, and a queue per host (management HTTP API)."""


@contextlib.contextmanager
def admin_errors() -> Iterator[None]:
    """What a management-API failure means for the exit code."""
    try:
        yield
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)


def _admin(state: State, admin_url: str | None) -> Any:
    from hostbus.broker_admin import BrokerAdmin

    try:
        return BrokerAdmin(admin_url or state.cfg["console"]["admin_url"])
    except HostbusError as exc:
        fail(str(exc), EXIT_USAGE)


def _vhost(state: State, vhost: str | None) -> str:
    from hostbus.transport.url import parse_url

    return vhost or parse_url(state.url).vhost


admin_option = click.option("--admin-url", envvar="HOSTBUS_CONSOLE_ADMIN_URL", metavar="URL",
                            help="Management API, http://user:pass@host:15672 (an "
                                 "administrator).")
vhost_option = click.option("--vhost", metavar="NAME",
                            help="Virtual host (default: the broker URL's, 'hostbus').")


@broker.command()
@admin_option
@vhost_option
@json_option
@click.pass_obj
def setup(state: State, admin_url: str | None, vhost: str | None, as_json: bool) -> None:
    """Create the vhost and apply broker_config/definitions.json (idempotent)."""
    name = _vhost(state, vhost)
    with admin_errors():
        counts = _admin(state, admin_url).setup(name)
    if as_json:
        _emit_json({"vhost": name, **counts})
    else:
        click.echo(f"vhost {name}: {counts['exchanges']} exchanges, {counts['queues']} queues, "
                   f"{counts['bindings']} bindings, {counts['policies']} policies applied")


def _identity_url(state: State, user: str, password: str, broker_url: str | None,
                  tls: tuple[Path, Path, Path] | None = None) -> str:
    """The URL an enrolled identity connects with: the console's broker (or
    --broker-url), with the new user's credentials: a password, or with ``tls`` (CA,
    certificate, key) a client certificate (SASL EXTERNAL, amqps only)."""
    from urllib.parse import quote, urlencode

    from hostbus.transport.url import parse_url

    base = parse_url(broker_url or state.url)
    where = f"{base.host}:{base.port}/{quote(base.vhost, safe='')}"
    if tls is None:
        return f"{base.scheme}://{quote(user, safe='')}:{quote(password, safe='')}@{where}"
    query = urlencode({"cafile": tls[0], "certfile": tls[1], "keyfile": tls[2]})
    return f"amqps://{quote(user, safe='')}@{where}?{query}"


def _issue_client_cert(state: State, name: str, tls_dir: str | None,
                       broker_url: str | None) -> tuple[Path, Path, Path] | None:
    """Before any user is created: check the broker URL is amqps, then sign NAME's
    certificate with the CA in ``tls_dir``."""
    if tls_dir is None:
        return None
    from hostbus.devca import CA_CERT, issue
    from hostbus.transport.url import parse_url

    if parse_url(broker_url or state.url).scheme not in ("amqps", "amqps10"):
        fail("a client certificate needs TLS: give --broker-url amqps://BROKER:5671/VHOST",
             EXIT_USAGE)
    try:
        cert, key = issue(tls_dir, name)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    return Path(tls_dir).resolve() / CA_CERT, cert.resolve(), key.resolve()


def _write_secret_file(path: str, text: str, force: bool) -> None:
    """Create the file with mode 0600 from the start (it holds a password)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        fail(f"{path} exists; pass --force to replace it (the old password stops working "
             "anyway)", EXIT_USAGE)
    except OSError as exc:
        fail(f"cannot write {path}: {exc}", EXIT_FAILED)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)


def _check_writable(path: str, force: bool) -> None:
    """Before any user is created: a refusal later would leave a user nobody can use."""
    if os.path.exists(path) and not force:
        fail(f"{path} exists; pass --force to replace it (the old password stops working "
             "anyway)", EXIT_USAGE)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.access(parent, os.W_OK):
        fail(f"cannot write {path}: {parent} is not writable", EXIT_USAGE)


def _enroll_identity(state: State, kind: str, name: str, admin_url: str | None,
                     vhost: str | None, certificate: bool = False) -> tuple[str, str]:
    with admin_errors():
        password = _admin(state, admin_url).create_identity(_vhost(state, vhost), kind, name,
                                                            certificate=certificate)
    return name, password


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


@broker.command()
@click.argument("host")
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
def enroll(state: State, host: str, agents: str, no_user: bool, queue_type: str,
           config_out: str | None,
           force: bool, broker_url: str | None, tls_dir: str | None, admin_url: str | None,
           vhost: str | None, as_json: bool) -> None:
    """Create HOST's queue and bindings, and its own broker user (idempotent).

    The user may read only HOST's queue and publish only events for HOST and replies;
    it cannot publish requests or configure anything. A ready agent config with its
    password is written to --config-out (mode 0600).
    """
    agent_list = [a.strip() for a in agents.split(",") if a.strip()]
    name = _vhost(state, vhost)
    with admin_errors():  # a bad name is a usage error, like the broker's refusal
        names.validate_host_id(host)
        for a in agent_list:
            names.validate_agent_name(a)
        keys = _admin(state, admin_url).enroll_host(name, host, agent_list,
                                                    queue_type=queue_type)
    out: dict[str, Any] = {"vhost": name, "host": host, "queue": names.host_queue(host),
                           "agent_queue": names.agent_queue(host), "routing_keys": keys}
    if not no_user:
        _check_writable(config_out or f"{host}.toml", force)
        tls = _issue_client_cert(state, host, tls_dir, broker_url)
        _, password = _enroll_identity(state, "agent", host, admin_url, vhost,
                                       certificate=tls is not None)
        path = config_out or f"{host}.toml"
        _write_secret_file(path, (
            f"# hostbus-agent configuration for host {host}, written by "
            f"`hostbus broker enroll`.\n# It holds this host's broker credentials: keep it "
            f"mode 0600. Every other setting is in etc/agent.toml.\n\n"
            f'[broker]\nurl = "{_identity_url(state, host, password, broker_url, tls)}"\n\n'
            f'[agent]\nhost_id = "{host}"\nagents = {json.dumps(agent_list)}\n'), force)
        out |= {"user": host, "config": path}
    if as_json:
        _emit_json(out)
    else:
        click.echo(f"host {host} enrolled in vhost {name}: queues {names.host_queue(host)} "
                   f"and {names.agent_queue(host)} (the built-in agent's), bound to "
                   f"{', '.join(keys)}")
        if not no_user:
            click.echo(f"broker user {host} created; agent config written to {out['config']} "
                       "(mode 0600): hostbus-agent --config " + out["config"])


def _enroll_named(state: State, kind: str, name: str, config_out: str | None, force: bool,
                  broker_url: str | None, tls_dir: str | None, admin_url: str | None,
                  vhost: str | None, as_json: bool, what: str) -> None:
    path = config_out or f"{name}.toml"
    _check_writable(path, force)
    tls = _issue_client_cert(state, name, tls_dir, broker_url)
    _, password = _enroll_identity(state, kind, name, admin_url, vhost,
                                   certificate=tls is not None)
    url = _identity_url(state, name, password, broker_url, tls)
    _write_secret_file(path, (
        f"# hostbus {kind} configuration for {name}, written by `hostbus broker "
        f"enroll-{kind}`.\n# It holds the broker password: keep it mode 0600.\n"
        f"# {what}\n\n[broker]\nurl = \"{url}\"\n"), force)
    if as_json:
        _emit_json({"user": name, "kind": kind, "vhost": _vhost(state, vhost), "config": path})
    else:
        click.echo(f"broker user {name} ({kind}) created; config written to {path} (mode 0600)")


def identity_command(name: str) -> Callable[[Callable[..., Any]], Any]:
    """The options every enroll-* command for a named identity takes."""

    def wrap(fn: Callable[..., Any]) -> Any:
        for option in (click.pass_obj, json_option, vhost_option, admin_option,
                       tls_dir_option, broker_url_option, force_option, config_out_option,
                       click.argument("name"), broker.command(name)):
            fn = option(fn)
        return fn

    return wrap


@identity_command("enroll-console")
def enroll_console(state: State, name: str, config_out: str | None, force: bool,
                   broker_url: str | None, tls_dir: str | None, admin_url: str | None,
                   vhost: str | None, as_json: bool) -> None:
    """Create a console's broker user: it may send requests and provisioning requests,
    and declare and read its own reply and subscription queues (hostbus.reply.NAME.*,
    hostbus.sub.NAME.*). Use the written file with `hostbus --config FILE`."""
    _enroll_named(state, "console", name, config_out, force, broker_url, tls_dir, admin_url,
                  vhost, as_json, "Use it with: hostbus --config THIS_FILE ...")


@identity_command("enroll-app")
def enroll_app(state: State, name: str, config_out: str | None, force: bool,
               broker_url: str | None, tls_dir: str | None, admin_url: str | None,
               vhost: str | None, as_json: bool) -> None:
    """Create an application's broker user: it may post provisioning requests and read
    its own reply queue (hostbus.reply.NAME.*, bound to hostbus.reply), nothing else."""
    _enroll_named(state, "app", name, config_out, force, broker_url, tls_dir, admin_url,
                  vhost, as_json, f"Post to exchange hostbus.provision; reply queue "
                           f"hostbus.reply.{name}.<anything>.")


@broker.command("dev-ca")
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--broker-name", "broker_names", multiple=True, metavar="NAME",
              help="A DNS name or IP address the broker is reached by (repeatable; "
                   "default: localhost and 127.0.0.1).")
@click.option("--client", "clients", multiple=True, metavar="USER",
              help="Also sign a client certificate for this broker user (repeatable).")
@json_option
def dev_ca(folder: str, broker_names: tuple[str, ...], clients: tuple[str, ...],
           as_json: bool) -> None:
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
    try:
        for client in clients:  # before anything is written
            names.validate_host_id(client)
        if not (Path(folder) / CA_KEY).exists():
            create_ca(folder)
            made["ca_created"] = True
        made["ca"] = str(Path(folder) / CA_CERT)
        made["broker"] = [str(p) for p in issue(
            folder, "broker", server_names=list(broker_names) or ["localhost", "127.0.0.1"])]
        made["clients"] = {c: [str(p) for p in issue(folder, names.validate_host_id(c))]
                           for c in clients}
    except (ConfigError, ValueError) as exc:
        fail(str(exc), EXIT_USAGE)
    if as_json:
        _emit_json(made)
        return
    click.echo(f"CA {made['ca']}" + (" (new)" if made.get("ca_created") else " (existing)"))
    click.echo(f"broker certificate {made['broker'][0]}, key {made['broker'][1]} (mode 0600)")
    for client, (cert, key) in made["clients"].items():
        click.echo(f"client {client}: {cert}, key {key} (mode 0600)")


@broker.command()
@click.argument("name")
@admin_option
@json_option
@click.pass_obj
def revoke(state: State, name: str, admin_url: str | None, as_json: bool) -> None:
    """Delete an identity's broker user; its connections are closed at once. (A host's
    queue stays: `broker enroll` it again to give it a new password.)"""
    with admin_errors():
        existed = _admin(state, admin_url).revoke(name)
    if as_json:
        _emit_json({"user": name, "revoked": existed})
    elif existed:
        click.echo(f"broker user {name} revoked")
    else:
        fail(f"there is no broker user {name}", EXIT_NOTHING)


# ------------------------------------------------------------------ provisioning
@cli.command("provisioner", epilog=EPILOG)
@click.option("--config", "-c", "config_file", type=click.Path(dir_okay=False),
              metavar="FILE", help="Provisioner config (see etc/provisioner.toml).")
def provisioner_cmd(config_file: str | None) -> None:
    """Run the provisioning service until SIGTERM/SIGINT.

    It consumes the queue hostbus.provision, places each VM on a virt host with room,
    drives the virt agents, publishes provision.* events and replies when the VMs run.
    Enroll it once first: hostbus broker enroll provisioner --agents provision
    """
    from console.provisioner.main import run

    sys.exit(run(config_file))


@cli.group()
def provision() -> None:
    """Post provisioning requests and follow them (the provisioner does the work)."""


@provision.command("submit", epilog=EPILOG)
@click.option("--template", "-T", required=True, help="Template name (virt.template.list).")
@click.option("--count", "-n", type=click.IntRange(1, 50), default=1, show_default=True)
@click.option("--name", help="The VM's exact name (one VM).")
@click.option("--prefix", help="Name prefix: VMs are PREFIX-<request id>-N.")
@click.option("--vcpus", type=click.IntRange(1, 256), help="Default: the template's.")
@click.option("--memory-mib", type=click.IntRange(64), help="Default: the template's.")
@click.option("--owner", default=lambda: os.environ.get("USER") or "unknown",
              help="Who the VMs are for (quotas count per owner). Default: $USER.")
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
def provision_submit(state: State, template: str, count: int, name: str | None,
                     prefix: str | None, vcpus: int | None, memory_mib: int | None, owner: str,
                     hosts: tuple[str, ...], where: tuple[str, ...], request_id: str | None,
                     wait: bool, timeout: float, as_json: bool) -> None:
    """Ask for VMs from a template; no host needs to be named.

    \b
      hostbus provision submit -T web -n 2 --prefix shop --owner alice
      hostbus provision submit -T db --name orders-db --where rack=b12
    Exit codes: 0 the VMs run, 1 the request failed, 4 no reply within --timeout.
    """
    if name and count != 1:
        fail("--name is for one VM; use --prefix with --count", EXIT_USAGE)
    body: dict[str, Any] = {"v": 1, "template": template, "count": count, "owner": owner}
    for key, value in (("name", name), ("name_prefix", prefix), ("vcpus", vcpus),
                       ("memory_mib", memory_mib)):
        if value is not None:
            body[key] = value
    constraints: dict[str, Any] = {}
    if hosts:
        constraints["hosts"] = list(hosts)
    try:
        if where:
            constraints["facts"] = parse_where(where)
    except ArgumentError as exc:
        fail(str(exc), EXIT_USAGE)
    if constraints:
        body["constraints"] = constraints
    from hostbus.schema import envelope_validator

    try:
        envelope_validator("provision").validate(dict(body))
    except RemoteError as exc:
        fail(exc.message.replace("body.", ""), EXIT_USAGE)
    console = state.console()
    rid = request_id or str(uuid.uuid4())
    if not as_json and wait:
        from console.render import event_line

        def on_event(ev: Any, note: str | None) -> None:
            if ev.data.get("request_id") == rid:
                click.echo(event_line(ev), err=True)

        console.subscribe(["provision.*.#"], on_event)
    try:
        rid, reply = console.provision(body, request_id=rid, timeout=timeout, wait=wait)
    except RemoteError as exc:
        fail(exc.message, EXIT_USAGE)
    except HostbusError as exc:
        fail(str(exc), EXIT_CONNECT)
    if not wait:
        if as_json:
            _emit_json({"request_id": rid, "status": "posted"})
        else:
            click.echo(f"posted {rid}; follow it with `hostbus provision status {rid}`")
        return
    if reply is None:
        if as_json:
            _emit_json({"request_id": rid, "status": "no_reply"})
        fail(f"no reply to {rid} within {timeout:g} s (is `hostbus provisioner` running? "
             f"`hostbus provision status {rid}` tells later)", EXIT_NO_REPLY)
    if as_json:
        _emit_json({"request_id": rid, **reply.to_body()})
    elif reply.ok:
        from console.render import objects_table

        out = _out()
        out.print(f"request {rid}: completed")
        out.print(objects_table((reply.result or {}).get("vms", [])))
    else:
        err = reply.error or {}
        click.echo(f"request {rid} failed: {err.get('code')}: {err.get('message')}", err=True)
    sys.exit(EXIT_OK if reply.ok else EXIT_FAILED)


def _ask_provisioner(state: State, method: str, args: dict[str, Any],
                     provisioner: str | None, timeout: float | None) -> Any:
    console = state.console()
    if provisioner is None:
        found = console.discover(filter={"agent": "provision"},
                                 timeout=_timeout(state, timeout))
        if not found:
            fail("no provisioner answered (start one: hostbus provisioner --config FILE)",
                 EXIT_NOTHING)
        provisioner = found[0].host
    res = console.call("provision", method, args, host=provisioner,
                       timeout=_timeout(state, timeout))
    if res.reply is None:
        fail(f"provisioner {provisioner} did not answer", EXIT_NO_REPLY)
    if not res.reply.ok:
        err = res.reply.error or {}
        fail(f"{err.get('code')}: {err.get('message')}", EXIT_FAILED)
    return res.reply.result


provisioner_option = click.option("--provisioner", metavar="HOST",
                                  help="The provisioner's host id (default: discovered).")


@provision.command("status", epilog=EPILOG)
@click.argument("request_id")
@provisioner_option
@click.option("--timeout", "-t", type=click.FloatRange(0, min_open=True), default=None)
@json_option
@click.pass_obj
def provision_status(state: State, request_id: str, provisioner: str | None,
                     timeout: float | None, as_json: bool) -> None:
    """Show one request: accepted (in progress), completed or failed (and why)."""
    result = _ask_provisioner(state, "status", {"request_id": request_id}, provisioner, timeout)
    if as_json:
        _emit_json(result)
        return
    from console.render import print_result

    print_result(_out(), result)


@provision.command("list", epilog=EPILOG)
@click.option("--owner", help="Only this owner's requests.")
@click.option("--status", type=click.Choice(["accepted", "completed", "failed"]))
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@provisioner_option
@click.option("--timeout", "-t", type=click.FloatRange(0, min_open=True), default=None)
@json_option
@click.pass_obj
def provision_list(state: State, owner: str | None, status: str | None, limit: int,
                   provisioner: str | None, timeout: float | None, as_json: bool) -> None:
    """List recent requests, newest first."""
    result = _ask_provisioner(state, "list", {"owner": owner, "status": status,
                                              "limit": limit}, provisioner, timeout)
    if as_json:
        _emit_json(result)
        return
    from console.render import objects_table

    rows = [{"request_id": r["request_id"], "owner": r["owner"], "template": r["template"],
             "count": r["count"], "status": r["status"],
             "vms": ", ".join(f"{v['name']}@{v['host']}" for v in r["vms"]),
             "updated": r["updated"]} for r in result["requests"]]
    _out().print(objects_table(rows))
    click.echo(f"{len(rows)} request{'s' if len(rows) != 1 else ''}")


# -------------------------------------------------------------------------- keys
# --------------------------------------------------------------------- approvals
@cli.group()
def approvals() -> None:
    """The two-person rule: requests that wait for someone else's approval.

    \b
    A policy rule with requires_approval = true parks a request on its host and
    answers approval_required with an approval id. Another person, whose key the
    agent trusts and whom the policy allows to call agent.approve, releases it:
      hostbus approvals list
      hostbus approvals approve 3f9c1a7be402
      hostbus approvals deny 3f9c1a7be402 --reason "not during the sale"
    The approval is signed with your [security] signing_key and bound to the exact
    request listed; the agent checks both signatures before the request runs.
    """


approval_hosts_option = click.option(
    "-H", "--host", "hosts", multiple=True, metavar="GLOB",
    help="Only these hosts (repeatable, globs allowed; default: every host).")


def _approvals_on(state: State, hosts: tuple[str, ...], which: str,
                  timeout: float | None) -> tuple[list[dict[str, Any]], FanoutResult]:
    selected = _select_hosts(state, hosts, not hosts, (), None, timeout, None, False)
    try:
        return state.console().approvals(selected, state=which, timeout=_timeout(state, timeout))
    except HostbusError as exc:
        fail(str(exc), EXIT_CONNECT)


@approvals.command("list", epilog=EPILOG)
@approval_hosts_option
@click.option("--all", "every_state", is_flag=True,
              help="Also approved, denied and expired ones (last 7 days).")
@click.option("--timeout", "-t", type=click.FloatRange(0, min_open=True), default=None)
@json_option
@click.pass_obj
def approvals_list(state: State, hosts: tuple[str, ...], every_state: bool,
                   timeout: float | None, as_json: bool) -> None:
    """List parked requests, oldest first, with what each would run."""
    found, result = _approvals_on(state, hosts, "all" if every_state else "pending", timeout)
    if as_json:
        _emit_json({"approvals": found, "summary": result.summary,
                    "errors": [r.to_dict() for r in result.results if r.status != "ok"]})
    else:
        from console.render import objects_table

        out = _out()
        if found:
            out.print(objects_table(found, ["approval_id", "host", "requester", "call", "args",
                                            "expires", "state", "decided_by", "outcome"]))
        else:
            out.print("no approvals " + ("" if every_state else "pending ") +
                      f"on {len(result.results)} host(s)")
        for r in result.results:
            if r.status != "ok":
                why = r.reply.error["message"] if r.reply and r.reply.error else "no reply"
                click.echo(f"hostbus: {r.host}: {why}", err=True)
    sys.exit(_exit_for(result))


def _find_approval(state: State, approval_id: str, hosts: tuple[str, ...],
                   timeout: float | None) -> dict[str, Any]:
    found, result = _approvals_on(state, hosts, "all", timeout)
    matches = [a for a in found if a["approval_id"] == approval_id]
    if not matches:
        refused = sorted({r.reply.error["message"] for r in result.results
                          if r.reply is not None and r.reply.error})
        why = "".join(f"\n  {m}" for m in refused[:5])
        fail(f"no approval {approval_id} on any host that answered (see `hostbus approvals "
             f"list --all`)" + (f"; some hosts said:{why}" if why else ""), EXIT_NOTHING)
    approval = matches[0]
    if approval["state"] != "pending":
        fail(f"approval {approval_id} was already {approval['state']}"
             + (f" by {approval['decided_by']}" if approval.get("decided_by") else ""),
             EXIT_FAILED)
    return approval


def _decide(state: State, approval: dict[str, Any], verb: str, reason: str,
            timeout: float | None, as_json: bool) -> None:
    console = state.console()
    if console.signer is None:
        fail("an approval must be signed: set [security] signing_key in the console's "
             "config (hostbus keys generate NAME)", EXIT_USAGE)
    try:
        res = (console.approve(approval, timeout=_timeout(state, timeout)) if verb == "approve"
               else console.deny(approval, reason, timeout=_timeout(state, timeout)))
    except HostbusError as exc:
        fail(str(exc), EXIT_CONNECT)
    released = (res.reply.result or {}).get("reply", {}) if res.reply and res.reply.ok else {}
    code = (EXIT_NO_REPLY if res.reply is None else
            EXIT_OK if res.reply.ok and released.get("status", "ok") == "ok" else EXIT_FAILED)
    what = f"{approval['approval_id']}: {approval['call']}"
    if as_json:
        _emit_json(res.to_dict())
    elif res.reply is None:
        click.echo(f"hostbus: {approval['host']} did not answer within the timeout", err=True)
    elif not res.reply.ok:
        from console.render import print_fanout

        print_fanout(_out(), FanoutResult([res], res.elapsed_ms or 0.0))
    elif verb == "deny":
        click.echo(f"denied {what} by {approval['requester']} on {approval['host']} will "
                   "not run")
    elif code == EXIT_OK:
        from console.render import print_result

        click.echo(f"approved {what} ran on {approval['host']}")
        print_result(_out(), released.get("result") or {})
    else:
        err = released.get("error") or {}
        click.echo(f"approved {what} failed: {err.get('code')}: {err.get('message')}",
                   err=True)
    sys.exit(code)


@approvals.command("approve", epilog=EPILOG)
@click.argument("approval_id")
@approval_hosts_option
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--timeout", "-t", type=click.FloatRange(0, min_open=True), default=None)
@json_option
@click.pass_obj
def approvals_approve(state: State, approval_id: str, hosts: tuple[str, ...], yes: bool,
                      timeout: float | None, as_json: bool) -> None:
    """Approve APPROVAL_ID: the parked request runs now, once."""
    approval = _find_approval(state, approval_id, hosts, timeout)
    summary = (f"{approval['requester']} asks to run {approval['call']} "
               f"{json.dumps(approval['args'], separators=(',', ':'))} on {approval['host']}")
    if not yes:
        if not sys.stdin.isatty():
            fail(f"{summary}; pass --yes to approve it", EXIT_USAGE)
        if not click.confirm(f"{summary}. Approve?"):
            fail("cancelled", EXIT_USAGE)
    _decide(state, approval, "approve", "", timeout, as_json)


@approvals.command("deny", epilog=EPILOG)
@click.argument("approval_id")
@click.option("--reason", "-r", default="", help="Told to the requester.")
@approval_hosts_option
@click.option("--timeout", "-t", type=click.FloatRange(0, min_open=True), default=None)
@json_option
@click.pass_obj
def approvals_deny(state: State, approval_id: str, reason: str, hosts: tuple[str, ...],
                   timeout: float | None, as_json: bool) -> None:
    """Deny APPROVAL_ID: the parked request never runs; its requester is told why."""
    approval = _find_approval(state, approval_id, hosts, timeout)
    _decide(state, approval, "deny", reason, timeout, as_json)


@cli.group()
def keys() -> None:
    """Ed25519 keys for signing requests."""


@keys.command("generate")
@click.argument("name")
@click.option("--out", "folder", default=".", show_default=True, type=click.Path(),
              help="Folder for NAME.key (private, mode 0600) and NAME.pub.")
@json_option
def keys_generate(name: str, folder: str, as_json: bool) -> None:
    """Make a key pair for the identity NAME (its broker user name).

    \b
    The console signs with NAME.key:   [security] signing_key = "NAME.key"
    Agents that should obey NAME get NAME.pub in their trusted keys folder:
                                       [security] trusted_keys = "/etc/hostbus/trusted"
    """
    from hostbus.broker_admin import IDENTITY_RE
    from hostbus.security.signing import generate

    if not IDENTITY_RE.match(name):
        fail(f"invalid name {name!r}: use the identity's broker user name (a-z 0-9 _ -)",
             EXIT_USAGE)
    try:
        key_path, pub_path = generate(name, folder)
    except FileExistsError:
        fail(f"{folder}/{name}.key exists; a key is not overwritten (move it away first)",
             EXIT_USAGE)
    except OSError as exc:
        fail(f"cannot write to {folder}: {exc}", EXIT_FAILED)
    if as_json:
        _emit_json({"name": name, "private": str(key_path), "public": str(pub_path)})
    else:
        click.echo(f"private key {key_path} (mode 0600): keep it on {name}'s machine only")
        click.echo(f"public key  {pub_path}: copy it into the trusted keys folder of each "
                   "agent that should obey it")


# ------------------------------------------------------------------------ policy
@cli.group()
def policy() -> None:
    """Check what an agent's policy file allows, without sending anything."""


@policy.command("check", epilog=EPILOG)
@click.argument("caller")
@click.argument("target", metavar="AGENT.METHOD")
@click.argument("pairs", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--policy", "policy_file", required=True, type=click.Path(dir_okay=False),
              metavar="FILE", help="The rules file the agent uses.")
@click.option("--host", default="web01", show_default=True,
              help="The host the agent runs on (for rules with hosts = [...]).")
@click.option("--at", "at_text", metavar="TIME",
              help="Judge rules with hours/days at this RFC 3339 time (default: now), "
                   "e.g. 2026-11-21T22:30:00Z.")
@json_option
def policy_check(caller: str, target: str, pairs: tuple[str, ...], policy_file: str,
                 host: str, at_text: str | None, as_json: bool) -> None:
    """Explain which rule decides CALLER's AGENT.METHOD call, and why the rules before it
    did not apply. Arguments are typed and defaulted by the method's schema, as the
    agent sees them. Exit 0 allowed, 1 denied (or needs approval)."""
    from hostbus.security.policy import RulesPolicy

    agent, method = _split(target, "AGENT.METHOD")
    try:
        spec = method_spec(agent, method)
        args = spec.validate_args(parse_pairs(pairs, spec))
        rules = RulesPolicy.load(policy_file, names.validate_host_id(host))
    except (ArgumentError, ValueError) as exc:
        fail(str(exc), EXIT_USAGE)
    except RemoteError as exc:
        fail(exc.message, EXIT_USAGE)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    at = None
    if at_text:
        from hostbus.envelope import parse_rfc3339

        try:
            at = parse_rfc3339(at_text, "--at")
        except RemoteError as exc:
            fail(exc.message, EXIT_USAGE)
    decision, trail = rules.explain(caller, agent, method, args, host, at)
    verdict = ("needs approval" if decision.requires_approval else
               "allowed" if decision.allowed else "denied")
    if as_json:
        _emit_json({"caller": caller, "call": target, "host": host, "args": args,
                    "decision": verdict, "rule": decision.rule, "reason": decision.reason,
                    "groups": sorted(rules.groups_of(caller)),
                    "trail": [{"rule": r, "result": why} for r, why in trail]})
    else:
        groups = ", ".join(sorted(rules.groups_of(caller))) or "none"
        click.echo(f"{caller} (groups: {groups}) {target} on {host}: {verdict.upper()}")
        click.echo(f"  {decision.reason}")
        for rule_name, why in trail:
            click.echo(f"  - {rule_name}: {why}")
    sys.exit(EXIT_OK if decision.allowed else EXIT_FAILED)


# ------------------------------------------------------------------------- bench
@cli.command(epilog=EPILOG)
@click.option("--quick", is_flag=True, help="Small sizes: a smoke run of every benchmark.")
@click.option("--only", multiple=True,
              type=click.Choice(["call", "fanout", "events", "amqp10", "provisioning",
                                 "footprint", "soak", "faults"]),
              help="Run only these (repeatable). Default: all but soak and faults.")
@click.option("--calls", type=click.IntRange(10), help="Round trips per side (2000).")
@click.option("--agents", metavar="N,N,...",
              help="Simulated agent counts for broadcast ping (100,1000,5000).")
@click.option("--events", "n_events", type=click.IntRange(100), help="Events (20000).")
@click.option("--idle", "idle_s", type=click.FloatRange(1), help="Idle agent seconds (60).")
@click.option("--soak-minutes", type=click.FloatRange(0.5), metavar="MIN",
              help="Length of --only soak: one agent under steady load, memory sampled (5).")
@click.option("--alarm-seconds", type=click.FloatRange(5), metavar="S",
              help="Length of the memory alarm in --only faults (70: past pika's 60 s "
                   "blocked-connection timeout; --quick: 10).")
@click.option("--png", type=click.Path(dir_okay=False), metavar="PATH",
              help="Write a chart (latency distribution, scaling with N) to PATH.")
@admin_option
@json_option
@click.pass_obj
def bench(state: State, quick: bool, only: tuple[str, ...], calls: int | None,
          agents: str | None, n_events: int | None, idle_s: float | None,
          soak_minutes: float | None, alarm_seconds: float | None, png: str | None,
          admin_url: str | None, as_json: bool) -> None:
    """Measure hostbus against raw pika and raw proton on this broker, in a throwaway vhost.

    Call round trips, broadcast ping to N simulated agents (the real dispatch path),
    event throughput, the same calls and events over AMQP 1.0 against raw proton
    (amqp10; needs the rabbitmq_amqp1_0 plugin), provisioning on libvirt's test driver,
    and one real agent's memory and CPU against a bare Python floor. Takes a few
    minutes (--quick: seconds). Whatever the console's URL scheme, the broker is
    reached over both protocols on its one port.
    `--only soak --soak-minutes 10` runs one agent under steady load and reports
    whether its memory stays flat. `--only faults` starts a RabbitMQ node of its own
    (root, a source checkout) and reports events lost, duplicated and reordered and the
    seconds to recover when the broker crashes, raises a memory alarm or loses a host's
    queues, and how fast a ping is answered behind 100 waiting calls.
    """
    from benchmarks import report
    from benchmarks.run import ALL, Plan, run
    from hostbus.transport.url import parse_url

    plan = Plan.quick() if quick else Plan()
    if only:
        plan.only = tuple(only)
    else:
        plan.only = ALL
    if calls:
        plan.calls = calls
    if agents:
        try:
            plan.agents = [int(x) for x in agents.split(",") if x.strip()]
        except ValueError:
            fail(f"--agents {agents!r}: expected numbers like 100,1000", EXIT_USAGE)
    if n_events:
        plan.events = n_events
    if idle_s:
        plan.idle_s = idle_s
    if soak_minutes:
        plan.soak_minutes = soak_minutes
    if alarm_seconds:
        plan.alarm_s = alarm_seconds
    url = parse_url(state.url)
    scheme = url.scheme.removesuffix("10")  # the baselines are 0-9-1; amqp10 gets its own
    amqp = f"{scheme}://{url.user}:{url.password}@{url.host}:{url.port}"
    try:
        results = run(plan, amqp=amqp, admin_url=admin_url or state.cfg["console"]["admin_url"])
    except ConnectionFailed as exc:
        fail(str(exc), EXIT_CONNECT)
    if png:
        report.chart(results, png)
    shown = {k: v for k, v in results.items()}
    if "call" in shown:
        shown["call"] = {k: v for k, v in shown["call"].items() if k != "samples"}
    if "amqp10" in shown:
        shown["amqp10"] = {k: v for k, v in shown["amqp10"].items() if k != "samples"}
    if as_json:
        shown["targets"] = [{"what": w, "measured": m, "target": t, "met": ok}
                            for w, m, t, ok in report.checks(results)]
        _emit_json(shown)
    else:
        click.echo(report.text(results))
        if png:
            click.echo(f"\nchart: {png}")


def main() -> None:
    cli(prog_name="hostbus")


if __name__ == "__main__":
    main()
