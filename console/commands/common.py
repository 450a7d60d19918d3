"""What every command shares: exit codes, the one error type commands raise, the CLI
context (configuration and the console, made by an injectable factory) and output.

Commands and their helpers never exit the process: they raise ``CliError`` (or let a
``HostbusError`` through), and ``exit_on_error`` in the root group turns every error
into its message and exit code, in one place.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from hostbus import config
from hostbus.errors import ConfigError, ConnectionFailed, HostbusError, RemoteError, SchemaError
from hostbus.names import InvalidName
from hostbus.security.keys import keys_from_config

if TYPE_CHECKING:
    from rich.console import Console as RichConsole

    from console.client import Console
    from console.render import Layout
    from hostbus.tracing import Tracer


C = TypeVar("C", bound=click.Command)


class Exit(IntEnum):
    OK = 0
    FAILED = 1  # some hosts failed
    USAGE = 2  # bad input: nothing was sent
    NOTHING = 3  # nothing discovered / no target
    NO_REPLY = 4  # some hosts did not reply (takes precedence over FAILED)
    CONNECT = 5  # cannot reach the broker (or its management API), or it refused
    NOT_ENROLLED = 6  # a host named has no queue for the agent: told at once by the broker
    PENDING = 7  # some calls wait for a second person's approval (parked on the host)
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), after what arrived was printed
    PIPE = 141  # the output was closed (128 + SIGPIPE), as other Unix tools


#: What each exit code means, as --help and docs/errors.md say it (a contract test
#: keeps the three in step).
EXIT_MEANING: dict[Exit, str] = {
    Exit.OK: "all ok",
    Exit.FAILED: "failed (some hosts, or the action)",
    Exit.USAGE: "usage error: nothing was sent",
    Exit.NOTHING: "nothing discovered or found",
    Exit.NO_REPLY: "some hosts did not reply",
    Exit.CONNECT: "cannot reach the broker (or its management API), or it refused",
    Exit.NOT_ENROLLED: "a host named is not enrolled (for that agent)",
    Exit.PENDING: "some calls wait for a second person's approval",
    Exit.INTERRUPTED: "interrupted (Ctrl-C)",
    Exit.PIPE: "the output was closed",
}
CONFIGURATION = """Configuration: --config FILE, else ~/.config/hostbus/console.toml if present;
environment: HOSTBUS_BROKER_URL, HOSTBUS_CONSOLE_TIMEOUT, ... (see etc/console.toml)."""
#: What a command that asks hosts can end with (besides 0, 2, 130 and 141).
FANOUT = (Exit.FAILED, Exit.NOTHING, Exit.NO_REPLY, Exit.CONNECT)


def exit_codes_text(codes: Iterable[Exit]) -> str:
    """``Exit codes:`` and one line per code: these and those every command has."""
    every = sorted({Exit.OK, Exit.USAGE, Exit.INTERRUPTED, Exit.PIPE, *codes})
    return "Exit codes:\n" + "\n".join(f"  {int(c):<4} {EXIT_MEANING[c]}" for c in every)


def exits(*codes: Exit, configured: bool = True) -> Callable[[C], C]:
    """Put under a command's decorators (so it is applied last): its --help ends with
    the exit codes it can end with (and, if it reads the console configuration, where
    that comes from)."""

    def wrap(command: C) -> C:
        lines = [CONFIGURATION] if configured else []
        command.epilog = "\b\n" + "\n".join([*lines, exit_codes_text(codes)])
        return command

    return wrap


def service_exits(refused: bool = True) -> Callable[[C], C]:
    """``exits`` for a long-running service (provisioner, historian, exporter): a
    supervisor reads its exit codes, which are the agent's (docs/operations.md)."""
    codes = ["  0    stopped by SIGTERM or SIGINT (--check-config: the configuration is good)",
             "  1    a configuration error: not worth restarting",
             "  2    the broker (or its store) cannot be reached: restart later"]
    if refused:
        codes.append("  3    refused: not enrolled, or a queue it needs is missing")

    def wrap(command: C) -> C:
        command.epilog = "\b\nExit codes:\n" + "\n".join(codes)
        return command

    return wrap


#: The root group's: every code.
EPILOG = "\b\n" + CONFIGURATION + "\n" + exit_codes_text(EXIT_MEANING)

CONSOLE_DEFAULTS: dict[str, Any] = {
    "broker": {"url": "amqp://guest:guest@127.0.0.1:5672/hostbus", "connect_timeout": 5.0},
    "console": {"timeout": 10.0, "idle": 0.3, "admin_url": "http://guest:guest@127.0.0.1:15672"},
    "security": {"signing_key": "", "agent_keys": "", "multi_host_users": ["guest"]},
    "tracing": {"otlp_endpoint": ""},
}
USER_CONFIG = Path.home() / ".config" / "hostbus" / "console.toml"


class CliError(Exception):
    """A command cannot go on: ``message`` is printed as ``hostbus: message`` on stderr
    and the process exits with ``code``."""

    def __init__(self, code: Exit, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def usage(message: str) -> CliError:
    """Bad input: nothing was sent."""
    return CliError(Exit.USAGE, message)


# ------------------------------------------------------------------ the one place
def exit_code_for(exc: BaseException) -> tuple[Exit, str | None]:
    """The exit code and message for an error that reached the top of a command."""
    if isinstance(exc, CliError):
        return exc.code, exc.message
    from console.args import ArgumentError

    if isinstance(exc, ArgumentError | ConfigError):
        return Exit.USAGE, str(exc)
    if isinstance(exc, RemoteError):  # the local schema refused the request
        return Exit.USAGE, exc.message
    if isinstance(exc, SchemaError | InvalidName):  # a host named on the command line
        return Exit.USAGE, str(exc)
    if isinstance(exc, HostbusError):  # connection failed, lost or refused
        return Exit.CONNECT, str(exc)
    if isinstance(exc, KeyboardInterrupt | click.Abort):
        return Exit.INTERRUPTED, "interrupted"
    if isinstance(exc, OSError) and exc.errno == errno.EPIPE:
        return Exit.PIPE, None
    raise exc


@contextlib.contextmanager
def exit_on_error() -> Iterator[None]:
    """Run a command: its errors become a message on stderr and an exit code. Click's
    own exits and usage errors pass through."""
    try:
        yield
    except (click.exceptions.Exit, click.ClickException):
        raise
    except (Exception, KeyboardInterrupt, click.Abort) as exc:
        code, message = exit_code_for(exc)
        if code == Exit.PIPE:
            output_closed()
        elif message:
            with contextlib.suppress(OSError):
                click.echo(f"hostbus: {message}", err=True)
        raise click.exceptions.Exit(code) from None


def output_closed() -> None:
    """The reader of stdout went away (``hostbus watch | head -1``): point stdout at
    /dev/null so nothing more (not even the interpreter's final flush) complains."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


# ---------------------------------------------------------------------- context
ConsoleFactory = Callable[["CliContext", bool], "Console"]


def connect_console(ctx: CliContext, validate: bool) -> Console:
    """The console over the configured broker, with the configured keys."""
    from console.client import Console

    sec = ctx.cfg["security"]
    signer, agent_keys = keys_from_config(sec, ctx.config_path)
    try:
        return Console.connect(ctx.url, connect_timeout=float(ctx.cfg["broker"]["connect_timeout"]),
                               reconnect=ctx.keep_connected, validate=validate, signer=signer,
                               agent_keys=agent_keys, multi_host_users=sec["multi_host_users"],
                               tracer=ctx.tracer)
    except ConnectionFailed as exc:  # it says where and why already
        raise CliError(Exit.CONNECT, str(exc)) from None
    except ConfigError:
        raise
    except HostbusError as exc:
        raise CliError(Exit.CONNECT, f"broker error: {exc}") from None


class CliContext:
    """What the root group hands every command: the configuration, and the console,
    connected on first use by ``factory`` (tests pass one over the in-memory broker)."""

    def __init__(self, cfg: dict[str, Any], config_path: str | None = None,
                 factory: ConsoleFactory = connect_console) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self._factory = factory
        self._console: Console | None = None
        #: Whether the console reconnects after a lost connection: only for a command
        #: that goes on (watch). Any other ends with the loss, with no retries logged.
        self.keep_connected = False
        self.tracer: Tracer | None = None
        if cfg["tracing"]["otlp_endpoint"]:
            from hostbus.tracing import from_config

            # a collector that does not answer delays the command's exit by this much
            self.tracer = from_config(cfg["tracing"], "hostbus-cli", export_timeout_s=2.0)

    def traced(self, command: str | None) -> contextlib.AbstractContextManager[Any]:
        """One command, one trace (every request it sends is a child of its span)."""
        if self.tracer is None:
            return contextlib.nullcontext()
        return self.tracer.span(f"hostbus {command or ''}".strip())

    @classmethod
    def load(cls, config_file: str | None, url: str | None,
             factory: ConsoleFactory | None = None) -> CliContext:
        path = config_file or (str(USER_CONFIG) if USER_CONFIG.exists() else None)
        cfg = config.load(CONSOLE_DEFAULTS, path)
        if url:
            cfg["broker"]["url"] = url
        return cls(cfg, path, factory or connect_console)

    @property
    def url(self) -> str:
        return self.cfg["broker"]["url"]

    def console(self, *, validate: bool | None = None) -> Console:
        """The connected console (one per command). ``validate=False`` sends what the
        local schema does not know (from then on; None leaves it as it is)."""
        if self._console is None:
            self._console = self._factory(self, True if validate is None else validate)
        if validate is not None:
            self._console.validate = validate
        return self._console

    def timeout(self, value: float | None) -> float:
        return float(value if value is not None else self.cfg["console"]["timeout"])

    def idle(self, value: float | None) -> float:
        return float(value if value is not None else self.cfg["console"]["idle"])

    def close(self) -> None:
        if self._console is not None:
            self._console.close()
            self._console = None
        if self.tracer is not None:
            self.tracer.shutdown()  # what is recorded goes out before the process ends
            self.tracer = None


# ----------------------------------------------------------------------- output
def out() -> RichConsole:
    """Where tables go: stdout. On a terminal its width; otherwise wide enough that
    nothing wraps (tables for pipes are plain lines, see console.render)."""
    console = _output_class()(highlight=False, soft_wrap=False)
    if not console.is_terminal:  # TTY_COMPATIBLE=1 (or FORCE_COLOR) makes it one
        console.width = 100_000
    return console


@functools.cache
def _output_class() -> type[RichConsole]:
    """rich's console, whose closed pipe goes to the one error mapping (made on first
    use: rich is not imported for commands that print no tables)."""
    from rich.console import Console as RichConsole

    class Output(RichConsole):
        def on_broken_pipe(self) -> None:
            # rich would exit 1 itself; the error goes to exit_on_error instead (141)
            raise BrokenPipeError(errno.EPIPE, "the output was closed")

    return Output


def layout(console: RichConsole, wide: bool = False, columns: tuple[str, ...] = ()) -> Layout:
    """How tables fit ``console`` (see console.render.Layout)."""
    from console.render import Layout

    return Layout.of(console, wide=wide, columns=columns)


def check_columns(columns: tuple[str, ...], known: list[str]) -> None:
    """--columns names only columns the table has."""
    unknown = [c for c in columns if c not in known]
    if unknown:
        raise usage(f"no column {unknown[0]!r}; columns: {', '.join(known)}")


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def progress(total: int, label: str, enabled: bool, beside: RichConsole | None = None
             ) -> tuple[Callable[[], None], Callable[[], None]]:
    """A progress bar for people (not for pipes or --json): (advance, stop). It is drawn
    on ``beside`` when that is a terminal (what is printed there then appears above the
    bar, not through it), else on stderr."""
    if not enabled or total < 2:
        return (lambda: None), (lambda: None)
    from rich.console import Console as RichConsole

    console = beside if beside is not None and beside.is_terminal else RichConsole(stderr=True)
    if not console.is_terminal:
        return (lambda: None), (lambda: None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    bar = Progress("[progress.description]{task.description}", BarColumn(),
                   MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                   transient=True)
    task = bar.add_task(label, total=total)
    bar.start()
    return (lambda: bar.advance(task)), bar.stop


def split_target(target: str, kind: str) -> tuple[str, str]:
    """``(agent, name)`` of AGENT.METHOD (``kind`` "method") or AGENT.CLASS ("class").
    A bare name is refused with the full name it most likely meant."""
    agent, sep, rest = target.partition(".")
    if sep and agent and rest:
        return agent, rest
    from hostbus.schema import available_agents, load_agent_schema

    known = [f"{a}.{n}" for a in available_agents() for n in (
        load_agent_schema(a).methods if kind == "method" else load_agent_schema(a).classes)]
    what = f"AGENT.{kind.upper()}"
    meant = [k for k in known if k.partition(".")[2] == target.strip(".")]
    if not meant:
        import difflib

        meant = difflib.get_close_matches(target, known, n=3, cutoff=0.6)
    if meant:
        raise usage(f"{target!r}: expected {what}; did you mean {' or '.join(meant)}?")
    raise usage(f"{target!r}: expected {what}, e.g. "
                f"{'host.identify' if kind == 'method' else 'host.disk'}")


def confirm_dangerous(target: str, args: dict[str, Any], selected: list[str]) -> None:
    """Ask before a dangerous method, showing the whole call; without a terminal,
    refuse (--yes says it was meant)."""
    what = " ".join([target, *(f"{k}={json.dumps(v) if not isinstance(v, str) else v}"
                               for k, v in args.items())])
    if not sys.stdin.isatty():
        raise usage(f"{what} is dangerous; pass --yes to run it on {len(selected)} host(s)")
    hosts = ", ".join(selected[:5]) + (" ..." if len(selected) > 5 else "")
    if not click.confirm(f"{what} is dangerous. Run it on {len(selected)} host(s): {hosts}?"):
        raise usage("cancelled")


MIN_PREFIX = 4


def resolve_prefix(prefix: str, ids: Iterable[str], what: str) -> str:
    """The one id in ``ids`` that starts with ``prefix`` (as git takes a commit's):
    usage error if it is too short or ambiguous, ``Exit.NOTHING`` if none does."""
    wanted = prefix.lower()
    known = list(dict.fromkeys(ids))
    if wanted in known:
        return wanted
    if len(wanted) < MIN_PREFIX:
        raise usage(f"{prefix}: give at least {MIN_PREFIX} characters of the {what} id")
    matches = [i for i in known if i.lower().startswith(wanted)]
    if len(matches) > 1:
        raise usage(f"{prefix} is ambiguous: {', '.join(matches[:10])}"
                    + (" ..." if len(matches) > 10 else ""))
    if not matches:
        raise CliError(Exit.NOTHING, f"no {what} {prefix}")
    return matches[0]
