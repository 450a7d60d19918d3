"""The command line before click parses it: root options given after the command, the
options most commands share given before it, and single-valued options given twice."""

from __future__ import annotations

import click

ROOT_OPTIONS = ("--url", "--config")  # the root group's options that take a value
#: Options most commands take, accepted before the command too (``hostbus --json
#: agents``): they move after it. Whether each takes a value.
COMMAND_OPTIONS = {"--json": False, "--timeout": True, "-t": True}


def lower_command_options(group: click.Group, ctx: click.Context,
                          args: list[str]) -> list[str]:
    """``hostbus --json -t 3 agents`` as ``hostbus agents --json -t 3``; a command
    without such an option is told so."""
    root: list[str] = []
    lowered: list[str] = []
    i = 0
    while i < len(args) and args[i].startswith("-"):
        arg, name = args[i], args[i].split("=", 1)[0]
        if name in COMMAND_OPTIONS:
            width = 2 if COMMAND_OPTIONS[name] and "=" not in arg else 1
            lowered += args[i:i + width]
        else:
            width = 2 if arg in ROOT_OPTIONS else 1
            root += args[i:i + width]
        i += width
    if not lowered:
        return args
    if any(a in ("-h", "--help", "--version") for a in root):
        return [*root, *args[i:]]  # what is asked for is the root's help or version
    rest = args[i:]
    command, start = _leaf(group, ctx, rest)
    if command is None:
        raise click.UsageError(f"{lowered[0]} goes with a command: hostbus COMMAND "
                               f"{' '.join(lowered)} (hostbus --help lists them)")
    known = {o for p in command.params for o in p.opts}
    for opt in lowered:
        name = opt.split("=", 1)[0]
        if name in COMMAND_OPTIONS and name not in known:
            raise click.UsageError(f"hostbus {command.name} has no {name} option")
    return [*root, *rest[:start], *lowered, *rest[start:]]


def hoist_root_options(group: click.Group, ctx: click.Context, args: list[str]) -> list[str]:
    """``hostbus agents --url URL`` as ``hostbus --url URL agents``: operators append
    options. A root option after the command moves before it, unless that command has
    an option of the same name (``hostbus provisioner --config``: the provisioner's)."""
    i = 0
    while i < len(args) and args[i].startswith("-"):  # the root's own, before the command
        i += 2 if args[i] in ROOT_OPTIONS else 1
    command: click.Command | None = group
    names: set[str] = set()
    j = i
    while isinstance(command, click.Group) and j < len(args):
        command = command.get_command(ctx, args[j]) if not args[j].startswith("-") else None
        j += 1
        if command is not None:
            names |= {o for p in command.params for o in p.opts}
    hoisted: list[str] = []
    rest = list(args[:i + 1])
    k = i + 1
    while k < len(args):
        arg = args[k]
        if arg == "--":
            rest += args[k:]
            break
        name = arg.split("=", 1)[0]
        if name in ROOT_OPTIONS and name not in names:
            if "=" in arg:
                hoisted.append(arg)
                k += 1
            else:
                hoisted += args[k:k + 2]
                k += 2
            continue
        rest.append(arg)
        k += 1
    return [*hoisted, *rest] if hoisted else args


def _leaf(group: click.Group, ctx: click.Context, args: list[str]
          ) -> tuple[click.Command | None, int]:
    """The command ``args`` run (``broker enroll``: enroll) and where its own arguments
    start."""
    i = 0
    while i < len(args) and args[i].startswith("-"):
        i += 2 if args[i] in ROOT_OPTIONS else 1
    command: click.Command | None = group
    while isinstance(command, click.Group) and i < len(args) and \
            not args[i].startswith("-"):
        command = command.get_command(ctx, args[i])
        i += 1
    return (None if command is group else command), i


def refuse_repeated_options(group: click.Group, ctx: click.Context, args: list[str]) -> None:
    """An option that takes one value, given twice (``-t 1 -t 5``), is a usage error:
    click would take the last in silence."""
    command, i = _leaf(group, ctx, args)
    if command is None:
        return
    takes_value: dict[str, click.Option] = {}
    for param in command.params:
        if isinstance(param, click.Option) and not param.is_flag and not param.count:
            for opt in (*param.opts, *param.secondary_opts):
                takes_value[opt] = param
    seen: dict[str, str] = {}  # parameter name -> how it was given
    while i < len(args):
        arg = args[i]
        if arg == "--":
            return
        name, eq, value = arg.partition("=")
        if not eq and len(arg) > 2 and arg[1] != "-" and arg[:2] in takes_value:
            name, value = arg[:2], arg[2:]  # -t5
        param = takes_value.get(name) if arg.startswith("-") else None
        if param is None:
            i += 1
            continue
        if not eq and name == arg:
            value = args[i + 1] if i + 1 < len(args) else ""
            i += 1
        i += 1
        if param.multiple or param.nargs != 1:
            continue
        if param.name in seen:
            raise click.UsageError(
                f"hostbus {command.name}: {'/'.join(param.opts)} is given twice "
                f"({seen[param.name]} and {name} {value}); give it once")
        seen[str(param.name)] = f"{name} {value}"
